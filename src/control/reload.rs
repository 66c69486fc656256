//! Reloading the configuration while the proxy runs (SIGHUP, or `POST /reload` on the admin
//! listener).
//!
//! A reload reads and validates the whole file first. If anything is wrong the proxy keeps
//! running on the configuration it has and the errors are logged, with file, line and column.
//! If it is valid, new listen addresses are bound before anything changes (a bind failure
//! also keeps the old configuration), then the new settings are swapped in as a whole for
//! new requests, removed listeners stop accepting, and a one-line summary of what changed is
//! logged. Requests and tunnels already running finish on the settings they started with;
//! connections accepted on a removed listener are left to finish too.
//!
//! Not reloaded (they need a restart): `[log]` (the access log's destination and format, the
//! diagnostics level), `[admin]` (its address and `allow`) and `workers`; the summary says so
//! when they changed. Files the configuration names (htpasswd, `hosts_file`, `error.html`,
//! the `[tls]` certificate) are read again on every reload; a certificate that has expired, is
//! not valid yet or ends soon is warned of, as at start.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, Purpose, Source};
use crate::proxy::state::ProxyState;

/// What a reload did: a summary of the changes, or why nothing changed.
pub type Outcome = Result<String, String>;

/// Asks the running proxy to reload; cheap to clone.
#[derive(Clone, Debug)]
pub struct Reload(mpsc::UnboundedSender<oneshot::Sender<Outcome>>);

/// The receiving end, handed to [`crate::runtime::serve`].
pub struct Requests(mpsc::UnboundedReceiver<oneshot::Sender<Outcome>>);

/// A reload handle and the requests it sends.
pub fn channel() -> (Reload, Requests) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Reload(tx), Requests(rx))
}

impl Reload {
    /// Reloads and waits for the outcome.
    pub async fn request(&self) -> Outcome {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(tx)
            .map_err(|_| "the proxy is shutting down".to_owned())?;
        rx.await
            .unwrap_or_else(|_| Err("the proxy is shutting down".to_owned()))
    }
}

/// Everything needed to reload: the source, the configuration in force, and the reload
/// handle (kept for `POST /reload`) with its requests.
pub struct Reloadable {
    /// Where to read the configuration again: a file, and the `--listen` addresses that
    /// replace its `listen`.
    pub source: Source,
    /// The configuration the proxy started with (for summaries of what changed).
    pub config: Config,
    /// The handle `POST /reload` uses.
    pub handle: Reload,
    /// The requests the reload worker serves.
    pub requests: Requests,
}

/// One listener the proxy runs: as configured, as bound, and how to stop it.
pub(crate) struct Running {
    pub(crate) actual: SocketAddr,
    pub(crate) stop: CancellationToken,
}

/// The listeners by configured address (which may have port 0).
pub(crate) type Listeners = HashMap<SocketAddr, Running>;

/// How the reload worker starts an accept loop on a newly bound listener.
pub(crate) type Start = Box<dyn Fn(TcpListener, CancellationToken) + Send + Sync>;

/// Serves reload requests until the channel closes.
pub(crate) async fn worker(
    mut requests: Requests,
    source: Source,
    mut config: Config,
    mut listeners: Listeners,
    shared: Arc<ProxyState>,
    stop_accepting: CancellationToken,
    start: Start,
) {
    while let Some(reply) = requests.0.recv().await {
        let outcome = reload(
            &source,
            &mut config,
            &mut listeners,
            &shared,
            &stop_accepting,
            &start,
        )
        .await;
        match &outcome {
            Ok(summary) => info!(%summary, "configuration reloaded"),
            Err(errors) => error!(
                "configuration reload failed; still running on the previous configuration:\n{errors}"
            ),
        }
        let _ = reply.send(outcome);
    }
}

async fn reload(
    source: &Source,
    config: &mut Config,
    listeners: &mut Listeners,
    shared: &Arc<ProxyState>,
    stop_accepting: &CancellationToken,
    start: &Start,
) -> Outcome {
    // Reading and validating may take a while (a long hosts_file): off the serving threads.
    let read = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || read_and_validate(&source))
    };
    let (new, mut settings) = read
        .await
        .map_err(|e| format!("reading the configuration failed: {e}"))??;

    // Bind what is new before changing anything, so a failure leaves all as it was.
    let mut bound = Vec::new();
    for addr in &new.listen {
        if listeners.contains_key(addr) || bound.iter().any(|(a, _)| a == addr) {
            continue;
        }
        let listener = crate::proxy::listener::bind(*addr, settings.limits.listen_backlog)
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        bound.push((*addr, listener));
    }
    let removed: Vec<SocketAddr> = listeners
        .keys()
        .filter(|a| !new.listen.contains(a))
        .copied()
        .collect();
    let mut actual: Vec<SocketAddr> = listeners
        .iter()
        .filter(|(a, _)| !removed.contains(a))
        .map(|(_, r)| r.actual)
        .collect();
    for (_, listener) in &bound {
        actual.push(listener.local_addr().map_err(|e| e.to_string())?);
    }
    // The TLS listeners bound at start run on (`listen_tls` is read at start only): their
    // addresses stay the proxy's own, and they keep a certificate even if [tls] went away.
    let old = shared.settings();
    let tls_bound = old
        .tls
        .as_ref()
        .map(|t| t.listen.clone())
        .unwrap_or_default();
    if settings.tls.is_none() {
        settings.tls = old.tls.clone();
    }
    // The certificate's dates, warned of as at start once the reload has taken.
    let cert_warnings = settings
        .tls
        .as_ref()
        .map(|tls| tls.date_findings(jiff::Timestamp::now()))
        .unwrap_or_default();
    // The admin listener is not bound again on reload: the running one stays the proxy's own.
    settings.set_bound(actual, tls_bound, old.policy.admin);
    drop(old);

    let summary = changes(config, &new);
    shared.swap(settings).map_err(|e| e.to_string())?;
    crate::proxy::lists::start(shared);
    for (addr, listener) in bound {
        let stop = stop_accepting.child_token();
        let running = Running {
            actual: listener.local_addr().map_err(|e| e.to_string())?,
            stop: stop.clone(),
        };
        info!(addr = %running.actual, "listening");
        start(listener, stop);
        listeners.insert(addr, running);
    }
    for addr in removed {
        if let Some(running) = listeners.remove(&addr) {
            info!(addr = %running.actual, "no longer listening");
            running.stop.cancel();
        }
    }
    *config = new;
    for warning in cert_warnings {
        warn!(target: "portcullis::lint", "{warning}");
    }
    Ok(summary)
}

/// Sections read at start-up only.
const NEED_RESTART: [&str; 4] = ["log", "admin", "workers", "listen_tls"];

/// Reads the file and validates it ([`crate::config::load()`]: a file that holds no settings
/// is refused); errors carry file, line and column.
fn read_and_validate(source: &Source) -> Result<(Config, crate::config::Settings), String> {
    let loaded = crate::config::load(source, Purpose::Reload).map_err(|e| e.located())?;
    Ok((loaded.config, loaded.settings))
}

/// What changed between two configurations, in one line.
pub fn changes(old: &Config, new: &Config) -> String {
    let mut parts = Vec::new();
    let added: Vec<String> = new
        .listen
        .iter()
        .filter(|a| !old.listen.contains(a))
        .map(|a| format!("+{a}"))
        .collect();
    let removed: Vec<String> = old
        .listen
        .iter()
        .filter(|a| !new.listen.contains(a))
        .map(|a| format!("-{a}"))
        .collect();
    if !added.is_empty() || !removed.is_empty() {
        parts.push(format!("listen {}", [added, removed].concat().join(" ")));
    }
    let (old_sections, new_sections) = (sections(old), sections(new));
    let changed: Vec<&str> = new_sections
        .iter()
        .filter(|(key, value)| *key != "listen" && old_sections.get(*key) != Some(value))
        .map(|(key, _)| key.as_str())
        .collect();
    if old.rules.len() != new.rules.len() {
        parts.push(format!("rules {} → {}", old.rules.len(), new.rules.len()));
    }
    let changed: Vec<&str> = changed
        .into_iter()
        .filter(|k| *k != "rules" || old.rules.len() == new.rules.len())
        .collect();
    let (applied, later): (Vec<&str>, Vec<&str>) =
        changed.into_iter().partition(|k| !NEED_RESTART.contains(k));
    if !applied.is_empty() {
        parts.push(format!("changed: {}", applied.join(", ")));
    }
    if !later.is_empty() {
        parts.push(format!(
            "changed but applied at the next restart: {}",
            later.join(", ")
        ));
    }
    if parts.is_empty() {
        "no changes".to_owned()
    } else {
        parts.join("; ")
    }
}

/// Each top-level section of a configuration as TOML text.
fn sections(config: &Config) -> BTreeMap<String, String> {
    let Ok(toml::Value::Table(table)) = toml::Value::try_from(config) else {
        return BTreeMap::new();
    };
    table
        .into_iter()
        .map(|(key, value)| (key, value.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_settings_is_not_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        for text in [
            "",
            "\n  \n",
            "# all commented out\n# listen = [\"0.0.0.0:3128\"]\n",
        ] {
            std::fs::write(&path, text).unwrap();
            let e = read_and_validate(&Source::file(&path, Vec::new())).unwrap_err();
            assert!(e.contains("the file holds no settings"), "{text:?}: {e}");
        }
        std::fs::write(&path, "# one setting\nlisten = [\"127.0.0.1:3128\"]\n").unwrap();
        assert!(read_and_validate(&Source::file(&path, Vec::new())).is_ok());
    }

    #[test]
    fn summaries_name_what_changed() {
        let old = Config::from_toml("listen = [\"127.0.0.1:3128\"]\n", "t").unwrap();
        assert_eq!(changes(&old, &old), "no changes");
        let new = Config::from_toml(
            "listen = [\"127.0.0.1:3128\", \"127.0.0.1:3130\"]\n[ports]\nconnect = [\"https\", 22]\n[[rules]]\nname = \"x\"\naction = \"deny\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            changes(&old, &new),
            "listen +127.0.0.1:3130; rules 0 → 1; changed: ports"
        );
        let more_workers =
            Config::from_toml("listen = [\"127.0.0.1:3128\"]\nworkers = 3\n", "t").unwrap();
        assert_eq!(
            changes(&old, &more_workers),
            "changed but applied at the next restart: workers"
        );
    }
}
