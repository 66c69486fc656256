//! The `portcullis` binary: reads the command line and configuration, binds the listeners,
//! installs logging and signals, and runs the proxy until SIGINT or SIGTERM.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use portcullis::cli::{Cli, Command};
use portcullis::{Config, Recorder};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Passwd { file, user }) => return passwd(file, user),
        None => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stdout)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<()> {
    let (mut config, origin) = match &cli.config {
        Some(path) => (Config::load(path)?, path.display().to_string()),
        None => (Config::default(), "<built-in defaults>".to_owned()),
    };
    if !cli.listen.is_empty() {
        config.listen = cli.listen.clone();
    }
    let mut settings = config.validate(&origin)?;
    for warning in portcullis::lint::lint(&config, &settings) {
        tracing::warn!(target: "portcullis::lint", "{warning}");
    }
    let mut listeners = Vec::with_capacity(config.listen.len());
    for addr in &config.listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push(listener);
    }
    // With port 0 the system picks the port: the policy must know the real one.
    settings.policy.listen = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    tracing::info!(config = %origin, "starting");
    portcullis::run(
        listeners,
        settings,
        Recorder::tracing(),
        portcullis::signal::shutdown(),
    )
    .await?;
    Ok(())
}

/// `portcullis passwd FILE USER`: what happened on stderr, exit 1 with one line on error.
fn passwd(file: &std::path::Path, user: &str) -> ExitCode {
    match portcullis::passwd::run(file, user) {
        Ok(message) => {
            eprintln!("portcullis: {message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis: {e}");
            ExitCode::FAILURE
        }
    }
}
