//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Portcullis: a LAN HTTP forward proxy that only lets clients reach the destination ports
/// you allow, and logs who used which port and how much.
///
/// Without options it listens on 0.0.0.0:3128 with the built-in defaults
/// (documented in config/portcullis.toml).
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Read the configuration from this TOML file.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Listen on this address instead of the configured ones (repeatable).
    #[arg(short, long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,

    /// Something other than running the proxy.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands; without one, `portcullis` runs the proxy.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add or replace USER's entry in the htpasswd FILE (bcrypt), creating the file if needed.
    ///
    /// The password is read twice without echo from the terminal, or from the first line of
    /// standard input when it is not a terminal: `printf '%s\n' "$PW" | portcullis passwd FILE USER`.
    Passwd {
        /// The htpasswd file (created with mode 0600 if it does not exist).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The user name (no ':' and no whitespace).
        #[arg(value_name = "USER")]
        user: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subcommands_are_optional() {
        type Case<'a> = (&'a [&'a str], Option<(&'a str, &'a str)>, Option<&'a str>);
        let cases: &[Case] = &[
            // (arguments, passwd FILE USER, --config)
            (&["portcullis"], None, None),
            (&["portcullis", "--config", "p.toml"], None, Some("p.toml")),
            (&["portcullis", "-l", "127.0.0.1:0"], None, None),
            (
                &["portcullis", "passwd", "users.htpasswd", "alice"],
                Some(("users.htpasswd", "alice")),
                None,
            ),
        ];
        for (args, passwd, config) in cases {
            let cli = Cli::try_parse_from(*args).unwrap();
            let got = cli
                .command
                .as_ref()
                .map(|Command::Passwd { file, user }| (file.to_str().unwrap(), user.as_str()));
            assert_eq!(got, *passwd, "{args:?}");
            assert_eq!(cli.config.as_deref(), config.map(std::path::Path::new));
        }
        for bad in [
            &["portcullis", "passwd", "users.htpasswd"][..],
            &["portcullis", "passwd"],
            &["portcullis", "--config", "p.toml", "passwd", "f", "u"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
