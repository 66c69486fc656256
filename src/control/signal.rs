//! Process signals: SIGINT and SIGTERM end the proxy gracefully, SIGHUP reloads the
//! configuration, SIGUSR1 reopens the access log.

/// Completes on the first SIGINT or SIGTERM (Ctrl-C where there are no Unix signals).
pub async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                let name = tokio::select! {
                    _ = interrupt.recv() => "SIGINT",
                    _ = terminate.recv() => "SIGTERM",
                };
                tracing::info!(signal = name, "shutdown requested");
            }
            _ => {
                tracing::warn!("cannot install signal handlers; only Ctrl-C stops the proxy");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
    }
}

/// Calls `reopen` on every SIGUSR1 (the signal `logrotate` sends), for as long as the
/// future it answers runs. The handler is installed at the call, not when the future is
/// first polled: from then on SIGUSR1 cannot end the proxy (its default action would).
pub fn on_reopen(reopen: impl Fn()) -> impl std::future::Future<Output = ()> {
    on_each(Each::Reopen, move || {
        reopen();
        std::future::ready(())
    })
}

/// Calls `reload` on every SIGHUP, for as long as the future it answers runs. The handler is
/// installed at the call, as [`on_reopen`]'s: a SIGHUP just after start reloads (or is
/// ignored), and never ends the proxy.
pub fn on_hangup<F, Fut>(reload: F) -> impl std::future::Future<Output = ()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    on_each(Each::Reload, reload)
}

/// The signals handled for as long as the proxy runs.
#[derive(Clone, Copy)]
enum Each {
    /// SIGUSR1: reopen the access log.
    Reopen,
    /// SIGHUP: reload the configuration.
    Reload,
}

impl Each {
    /// What is logged when the handler cannot be installed, and on each signal.
    fn texts(self) -> (&'static str, &'static str) {
        match self {
            Each::Reopen => (
                "cannot install the SIGUSR1 handler; the access log will not reopen",
                "SIGUSR1: reopening the access log",
            ),
            Each::Reload => (
                "cannot install the SIGHUP handler; use POST /reload on the admin listener",
                "SIGHUP: reloading the configuration",
            ),
        }
    }
}

/// Installs the handler of `each` now, and answers the future that runs `act` on every such
/// signal.
fn on_each<F, Fut>(each: Each, act: F) -> impl std::future::Future<Output = ()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    #[cfg(unix)]
    let stream = {
        use tokio::signal::unix::{signal, SignalKind};
        signal(match each {
            Each::Reopen => SignalKind::user_defined1(),
            Each::Reload => SignalKind::hangup(),
        })
    };
    async move {
        let (missing, received) = each.texts();
        #[cfg(unix)]
        {
            let Ok(mut stream) = stream else {
                tracing::warn!("{missing}");
                return;
            };
            while stream.recv().await.is_some() {
                tracing::info!("{received}");
                act().await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (act, missing, received);
            std::future::pending::<()>().await;
        }
    }
}
