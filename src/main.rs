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
use portcullis::{Config, Recorder, Settings};

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
        Some(Command::Check { config, strict }) => return check(config.as_deref(), *strict),
        Some(Command::Explain {
            config,
            client,
            user,
            resolve,
            method,
            target,
        }) => {
            return explain(
                config.as_deref(),
                &portcullis::explain::Question {
                    client: *client,
                    user: user.as_deref(),
                    method,
                    target,
                },
                *resolve,
            )
        }
        Some(Command::Completions { shell }) => return completions(*shell),
        Some(Command::Man { command }) => return man(command.as_deref()),
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

/// jemalloc: less CPU per request than the system allocator (README, Performance).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Reads the configuration, then runs the proxy on as many worker threads as it says.
fn run(cli: Cli) -> anyhow::Result<()> {
    let (mut config, origin) = match &cli.config {
        Some(path) => (Config::load(path)?, path.display().to_string()),
        None => (Config::default(), "<built-in defaults>".to_owned()),
    };
    if !cli.listen.is_empty() {
        config.listen = cli.listen.clone();
    }
    let settings = config.validate(&origin)?;
    // One worker is the main thread itself: tokio's single-thread scheduler has no
    // work-stealing to keep up and no hand-off between an accepting thread and a worker.
    let mut runtime = if settings.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(settings.workers);
        builder
    };
    runtime
        .enable_all()
        .build()
        .context("cannot start the runtime")?
        .block_on(proxy(cli, config, settings, origin))
}

async fn proxy(
    cli: Cli,
    config: Config,
    mut settings: Settings,
    origin: String,
) -> anyhow::Result<()> {
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
    // SIGUSR1 must never end the proxy, log or no log (its default action would).
    let for_signal = access_log.clone();
    tokio::spawn(portcullis::signal::on_reopen(move || {
        if let Some(log) = &for_signal {
            log.reopen();
        }
    }));

    // Without a file there is nothing to reload, but SIGHUP must not end the proxy.
    if cli.config.is_none() {
        tokio::spawn(portcullis::signal::on_hangup(|| async {
            tracing::warn!(
                "started on the built-in defaults: there is no configuration file to reload"
            );
        }));
    }
    // Reloads read the file again (SIGHUP, or POST /reload on the admin listener).
    let reloadable = cli.config.as_ref().map(|path| {
        let (handle, requests) = portcullis::reload::channel();
        let on_signal = handle.clone();
        tokio::spawn(portcullis::signal::on_hangup(move || {
            let reload = on_signal.clone();
            async move {
                let _ = reload.request().await;
            }
        }));
        portcullis::reload::Reloadable {
            source: portcullis::reload::Source {
                path: path.clone(),
                listen_override: cli.listen.clone(),
            },
            config: config.clone(),
            handle,
            requests,
        }
    });

    tracing::info!(config = %origin, workers = settings.workers, "starting");
    portcullis::serve(
        listeners,
        admin,
        settings,
        recorder,
        reloadable,
        portcullis::signal::shutdown(),
    )
    .await?;
    // The last records of the drain must reach the file before the process ends.
    if let Some(log) = access_log {
        log.flush(std::time::Duration::from_secs(5));
    }
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

/// `portcullis check [--config FILE] [--strict]`: the summary and warnings on stdout, errors
/// on stderr; exit 0 valid, 1 invalid, 2 valid with warnings under `--strict`.
fn check(config: Option<&std::path::Path>, strict: bool) -> ExitCode {
    let outcome = portcullis::check::run(config, strict);
    print!("{}", outcome.stdout);
    eprint!("{}", outcome.stderr);
    ExitCode::from(outcome.code)
}

/// `portcullis explain …`: the decision and its steps on stdout; exit 0 allowed, 1 refused,
/// 2 for a usage or configuration error, 3 when a rule needs an address not resolved.
fn explain(
    config: Option<&std::path::Path>,
    question: &portcullis::explain::Question<'_>,
    resolve: bool,
) -> ExitCode {
    const USAGE: u8 = 2;
    let (config, origin) = match config {
        Some(path) => match Config::load(path) {
            Ok(config) => (config, path.display().to_string()),
            Err(e) => {
                eprintln!("portcullis explain: {e}");
                return ExitCode::from(USAGE);
            }
        },
        None => (Config::default(), "<built-in defaults>".to_owned()),
    };
    let settings = match config.validate(&origin) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("portcullis explain: {e}\n(`portcullis check` shows where)");
            return ExitCode::from(USAGE);
        }
    };
    // The system resolver, as the proxy's dialler asks it (getaddrinfo); only with --resolve.
    let system = |name: &str, port: u16| -> Result<Vec<std::net::IpAddr>, String> {
        use std::net::ToSocketAddrs;
        (name, port)
            .to_socket_addrs()
            .map(|addrs| addrs.map(|a| a.ip()).collect())
            .map_err(|e| e.to_string())
    };
    let lookups = portcullis::explain::Lookups {
        resolve: resolve.then_some(&system as portcullis::explain::Resolver<'_>),
        is_local: &portcullis::dial::is_local_address,
    };
    match portcullis::explain::explain(&settings, question, &lookups) {
        Ok(explanation) => {
            print!("{}", explanation.render());
            ExitCode::from(explanation.exit_code())
        }
        Err(e) => {
            eprintln!("portcullis explain: {e}");
            ExitCode::from(USAGE)
        }
    }
}

/// `portcullis completions SHELL`: the completion script, generated from the CLI definition.
fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "portcullis", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// `portcullis man [COMMAND]`: portcullis(1), or portcullis-COMMAND(1), as roff.
fn man(subcommand: Option<&str>) -> ExitCode {
    let command = <Cli as clap::CommandFactory>::command();
    let source = format!("portcullis {}", command.get_version().unwrap_or_default());
    let page = match subcommand {
        None => command,
        Some(name) => match command.find_subcommand(name) {
            Some(sub) => sub
                .clone()
                .display_name(format!("portcullis-{name}"))
                .bin_name(format!("portcullis {name}")),
            None => {
                let names: Vec<&str> = command
                    .get_subcommands()
                    .map(|s| s.get_name())
                    .filter(|n| *n != "help")
                    .collect();
                eprintln!(
                    "portcullis man: no subcommand {name:?}; the subcommands are {}",
                    names.join(", ")
                );
                return ExitCode::from(2);
            }
        },
    };
    let mut out = Vec::new();
    match clap_mangen::Man::new(page).source(source).render(&mut out) {
        Ok(()) => {
            use std::io::Write;
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(&out).and_then(|()| stdout.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            }
        }
        Err(e) => {
            eprintln!("portcullis man: {e}");
            ExitCode::FAILURE
        }
    }
}
