//! Assembles a running proxy: the one builder that the binary and the tests use.
//!
//! [`serve`] takes listeners that are already bound (the binary binds the configured
//! addresses; tests bind `127.0.0.1:0`), derives the addresses the policy must know (the
//! proxy's own listeners and admin listener, as bound) from them, starts the accept loops, the
//! admin listener and the reload worker, and drains on shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, ConfigError, Settings, Source};
use crate::control::reload::{Listeners, Reloadable, Running, Start};
use crate::control::signal;
use crate::observe::access::Recorder;
use crate::observe::log::AccessLog;
use crate::proxy::listener;
use crate::proxy::state::ProxyState;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration could not be read or is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// tokio's runtime could not be built.
    #[error("cannot start the runtime: {0}")]
    Runtime(io::Error),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: io::Error,
    },
    /// The access log could not be opened.
    #[error("cannot open the access log: {0}")]
    AccessLog(io::Error),
    /// Serving failed.
    #[error(transparent)]
    Serve(io::Error),
}

/// Reads the configuration, then runs the proxy on as many worker threads as it says, until
/// SIGINT or SIGTERM.
pub fn launch(source: Source) -> Result<(), StartError> {
    let crate::config::Loaded {
        config,
        settings,
        origin,
        ..
    } = crate::config::load(&source, crate::config::Purpose::Start)?;
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
        .map_err(StartError::Runtime)?
        .block_on(run_configured(source, config, settings, origin))
}

/// Raises the soft limit on open files to the hard one, as far as this process may, and
/// returns it (`None`: unlimited, or unknown). The usual soft default, 1024, is far below
/// the descriptors `limits.max_connections` connections hold.
#[cfg(target_os = "linux")]
fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    limit.current
}

#[cfg(not(target_os = "linux"))]
fn raise_open_files_limit() -> Option<u64> {
    None
}

/// Diagnostics go to stderr, so that stdout can carry the access log alone.
fn init_diagnostics(level: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Binds what the configuration names, opens the access log, installs the signals and the
/// reload worker, and serves until SIGINT or SIGTERM.
async fn run_configured(
    source: Source,
    config: Config,
    settings: Settings,
    origin: String,
) -> Result<(), StartError> {
    init_diagnostics(&config.log.level);
    for warning in crate::config::lint::lint(&config, &settings) {
        tracing::warn!(target: "portcullis::lint", "{warning}");
    }
    if let Some(open_files) = raise_open_files_limit() {
        // Each client connection holds a descriptor, and one more for its origin or tunnel.
        let needed = 2 * settings.limits.max_connections as u64 + 64;
        if open_files < needed {
            warn!(
                open_files,
                needed,
                "the open files limit is below what limits.max_connections needs (two per connection): raise it (LimitNOFILE=, ulimit -n) or lower the limit"
            );
        }
    }
    let mut listeners = Vec::with_capacity(config.listen.len());
    for addr in &config.listen {
        let listener = crate::proxy::listener::bind(*addr, settings.limits.listen_backlog)
            .map_err(|error| StartError::Listen { addr: *addr, error })?;
        listeners.push(listener);
    }
    let admin = match &settings.admin {
        Some((addr, _)) => match TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                warn!(%addr, error = %e, "cannot listen on the admin address; continuing without /metrics and /status");
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
    .map_err(StartError::AccessLog)?
    .map(|log| Arc::new(log.with_instance(&settings.instance)));
    let recorder = match &access_log {
        Some(log) => recorder.with_sink(log.clone()),
        None => recorder,
    };
    // SIGUSR1 must never end the proxy, log or no log (its default action would).
    let for_signal = access_log.clone();
    tokio::spawn(signal::on_reopen(move || {
        if let Some(log) = &for_signal {
            log.reopen();
        }
    }));

    // Without a file there is nothing to reload, but SIGHUP must not end the proxy.
    if source.file.is_none() {
        tokio::spawn(signal::on_hangup(|| async {
            warn!("started on the built-in defaults: there is no configuration file to reload");
        }));
    }
    // Reloads read the file again (SIGHUP, or POST /reload on the admin listener).
    let reloadable = source.file.is_some().then(|| {
        let (handle, requests) = crate::control::reload::channel();
        let on_signal = handle.clone();
        tokio::spawn(signal::on_hangup(move || {
            let reload = on_signal.clone();
            async move {
                let _ = reload.request().await;
            }
        }));
        Reloadable {
            source: source.clone(),
            config: config.clone(),
            handle,
            requests,
        }
    });

    info!(config = %origin, workers = settings.workers, "starting");
    serve(
        listeners,
        admin,
        settings,
        recorder,
        reloadable,
        signal::shutdown(),
    )
    .await
    .map_err(StartError::Serve)?;
    // The last records of the drain must reach the file before the process ends.
    if let Some(log) = access_log {
        log.flush(Duration::from_secs(5));
    }
    Ok(())
}

/// Runs the proxy on `listeners` until `shutdown` completes, then drains: stops accepting,
/// lets in-flight requests and tunnels finish within `timeouts.shutdown_grace`, and returns.
/// The policy's own addresses (never a destination, and the own pages' addresses) are those
/// of `listeners` as bound, whatever `settings.policy.listen` held.
pub async fn run(
    listeners: Vec<TcpListener>,
    settings: Settings,
    recorder: Recorder,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve(listeners, None, settings, recorder, None, shutdown).await
}

/// [`run`], with the admin listener (`/metrics`, `/status` …) on `admin` when given, and
/// reloads served when `reloadable` is given (its configuration's `listen` addresses in the
/// order of `listeners`).
pub async fn serve(
    listeners: Vec<TcpListener>,
    admin: Option<TcpListener>,
    mut settings: Settings,
    recorder: Recorder,
    reloadable: Option<Reloadable>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    // TLS listeners (`listen_tls`): bound here, at start only; a reload reads their
    // certificate again but does not bind or close them.
    let mut tls_listeners = Vec::new();
    for addr in settings.tls.iter().flat_map(|t| &t.listen) {
        let listener = crate::proxy::listener::bind(*addr, settings.limits.listen_backlog)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        tls_listeners.push(listener);
    }
    // The addresses as bound (a port may have been 0): the policy must know the real ones,
    // and the admin listener is never a destination either.
    settings.set_bound(
        listeners.iter().filter_map(|l| l.local_addr().ok()),
        tls_listeners.iter().filter_map(|l| l.local_addr().ok()),
        admin.as_ref().and_then(|l| l.local_addr().ok()),
    );
    let admin_allow = settings
        .admin
        .as_ref()
        .map(|(_, allow)| allow.clone())
        .unwrap_or_default();
    let reload_handle = reloadable.as_ref().map(|r| r.handle.clone());
    let shared = Arc::new(ProxyState::new(settings, recorder).map_err(io::Error::other)?);
    crate::proxy::lists::start(&shared);
    crate::proxy::budget::start(&shared);
    crate::proxy::tunnel::start_idle_sweep(&shared);
    let stop_accepting = CancellationToken::new();
    let tracker = shared.tracker.clone();

    // Each listener stops on its own token (a reload removes one), or on shutdown.
    let configured: Vec<SocketAddr> = match &reloadable {
        Some(r) => r.config.listen.clone(),
        None => Vec::new(),
    };
    let mut running = Listeners::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let actual = listener.local_addr()?;
        info!(addr = %actual, "listening");
        let stop = stop_accepting.child_token();
        let key = configured.get(i).copied().unwrap_or(actual);
        running.insert(
            key,
            Running {
                actual,
                stop: stop.clone(),
            },
        );
        tracker.spawn(listener::accept_loop(
            listener,
            shared.clone(),
            stop,
            stop_accepting.clone(),
            false,
        ));
    }
    for listener in tls_listeners {
        info!(addr = %listener.local_addr()?, "listening for TLS");
        tracker.spawn(listener::accept_loop(
            listener,
            shared.clone(),
            stop_accepting.child_token(),
            stop_accepting.clone(),
            true,
        ));
    }
    if let Some(admin) = admin {
        tracker.spawn(crate::control::admin::serve(
            admin,
            admin_allow,
            shared.clone(),
            reload_handle,
            stop_accepting.clone(),
        ));
    }
    if let Some(r) = reloadable {
        let (for_loops, drain) = (shared.clone(), stop_accepting.clone());
        let start: Start = Box::new(move |listener, stop| {
            for_loops.tracker.spawn(listener::accept_loop(
                listener,
                for_loops.clone(),
                stop,
                drain.clone(),
                false,
            ));
        });
        // Not tracked: it ends when the channel does, and shutdown need not wait for it.
        tokio::spawn(crate::control::reload::worker(
            r.requests,
            r.source,
            r.config,
            running,
            shared.clone(),
            stop_accepting.clone(),
            start,
        ));
    }

    shutdown.await;
    let grace = shared.settings().timeouts.shutdown_grace;
    info!(grace = ?grace, "shutting down: no new connections; waiting for open requests and tunnels");
    stop_accepting.cancel();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        let tunnels: u64 = shared.stats.ports().iter().map(|p| p.active_tunnels).sum();
        warn!(
            tunnels,
            connections = shared.admission.open(),
            "grace period over: cutting {tunnels} open tunnels and what else is still open"
        );
        shared.hard_stop.cancel();
        // Tunnels look at the token when woken: they are, all at once.
        shared.admission.wake_tunnels();
        // Cut tasks wind down at once; this bound only guards against a stuck one.
        let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
    }
    crate::proxy::budget::save_now(&shared);
    // The drain's last records go to syslog before the process ends (the writer thread
    // may wait on the network: not on this runtime's thread).
    let syslog = shared.syslog.clone();
    let _ = tokio::task::spawn_blocking(move || syslog.close(Duration::from_secs(2))).await;
    info!("stopped");
    Ok(())
}
