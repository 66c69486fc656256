//! The `portcullis` binary: reads the command line and configuration, binds the listeners,
//! installs logging and signals, and runs the proxy until SIGINT or SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use portcullis::cli::{Cli, Command};
use portcullis::log::AccessLog;
use portcullis::{Config, Recorder};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Passwd { file, user }) => return passwd(file, user),
        Some(Command::Report {
            files,
            by,
            since,
            until,
            format,
        }) => {
            return report(&portcullis::report::Options {
                files: files.clone(),
                by: *by,
                format: *format,
                since: *since,
                until: *until,
            })
        }
        None => {}
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Diagnostics go to stderr, so that stdout can carry the access log alone.
fn init_diagnostics(level: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
    init_diagnostics(&config.log.level);
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
    let admin = match &settings.admin {
        Some((addr, _)) => match TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot listen on the admin address; continuing without /metrics and /status");
                None
            }
        },
        None => None,
    };

    let recorder = Recorder::new();
    let names = settings.client_names.clone();
    let (destination, format) = settings.access_log.clone();
    let access_log = AccessLog::start(
        destination,
        format,
        recorder.dropped_counter(),
        Arc::new(move |ip| names.get(&ip.to_canonical()).cloned()),
    )
    .context("cannot open the access log")?
    .map(Arc::new);
    let recorder = match &access_log {
        Some(log) => recorder.with_sink(log.clone()),
        None => recorder,
    };
    if let Some(log) = access_log {
        tokio::spawn(portcullis::signal::on_reopen(move || log.reopen()));
    }

    tracing::info!(config = %origin, "starting");
    portcullis::serve(
        listeners,
        admin,
        settings,
        recorder,
        portcullis::signal::shutdown(),
    )
    .await?;
    Ok(())
}

/// `portcullis report [FILES…]`: the report on stdout, notes on stderr; exit 1 when an input
/// could not be read.
fn report(options: &portcullis::report::Options) -> ExitCode {
    match portcullis::report::run(options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("portcullis report: {e}");
            ExitCode::FAILURE
        }
    }
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
