//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Portcullis: a LAN HTTP forward proxy that only lets clients reach the destination ports
/// you allow, and logs who used which port and how much.
///
/// Without options it listens on 0.0.0.0:3128 with the built-in defaults
/// (documented in config/portcullis.toml).
#[derive(Debug, Parser)]
#[command(name = "portcullis", version)]
pub struct Cli {
    /// Read the configuration from this TOML file.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Listen on this address instead of the configured ones (repeatable).
    #[arg(short, long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
}
