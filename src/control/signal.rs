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
    #[cfg(unix)]
    let usr1 = {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::user_defined1())
    };
    async move {
        #[cfg(unix)]
        {
            let Ok(mut usr1) = usr1 else {
                tracing::warn!(
                    "cannot install the SIGUSR1 handler; the access log will not reopen"
                );
                return;
            };
            while usr1.recv().await.is_some() {
                tracing::info!("SIGUSR1: reopening the access log");
                reopen();
            }
        }
        #[cfg(not(unix))]
        {
            let _ = reopen;
            std::future::pending::<()>().await;
        }
    }
}

/// Calls `reload` on every SIGHUP, for as long as the future it answers runs. The handler is
/// installed at the call, as [`on_reopen`]'s: a SIGHUP just after start reloads (or is
/// ignored), and never ends the proxy.
pub fn on_hangup<F, Fut>(reload: F) -> impl std::future::Future<Output = ()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    #[cfg(unix)]
    let hup = {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::hangup())
    };
    async move {
        #[cfg(unix)]
        {
            let Ok(mut hup) = hup else {
                tracing::warn!(
                    "cannot install the SIGHUP handler; use POST /reload on the admin listener"
                );
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration");
                reload().await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = reload;
            std::future::pending::<()>().await;
        }
    }
}
