//! The downloaded block lists of a running proxy: one task for each rule's `hosts_url`,
//! which fetches it when due ([`crate::egress::fetch`]), puts a good copy in force without a
//! reload and writes it to `[state] dir` (the copy the next start begins with), and keeps
//! the list it has when a fetch fails or brings something that is not a list.
//!
//! A fetch is due `refresh` after the copy in force was fetched (or written to disk, for the
//! copy read at start); after a failure, again after [`RETRY`] (or `refresh`, if shorter). A
//! reload hands each list over to the new settings when its rule and URL stay the same
//! ([`carry_over`]); the old settings' tasks end when their lists are dropped.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use crate::config::lists::disk_copy;
use crate::config::Settings;
use crate::core::blocklist::{parse_list, HostList, ListSource, ListStatus};
use crate::egress::fetch::{fetch, Bounds, Fetched};
use crate::observe::state_file::write_whole;
use crate::proxy::state::ProxyState;

/// The longest a fetch may take, dialing and the whole body included.
pub const TIMEOUT: Duration = Duration::from_secs(120);
/// The largest list accepted (a list of a million names is about 30 MiB).
pub const MAX_BYTES: usize = 64 << 20;
/// After a failed fetch, the next try (or after `refresh`, if that is shorter).
pub const RETRY: Duration = Duration::from_secs(300);
/// A task looks whether its list is still in force at least this often.
const LOOK: Duration = Duration::from_secs(30);

/// Hands the lists of `old` over to `new` where a rule keeps its name and URL.
pub fn carry_over(old: &Settings, new: &Settings) {
    for list in lists(new) {
        if let Some(previous) = lists(old)
            .into_iter()
            .find(|p| p.rule == list.rule && p.url == list.url)
        {
            list.take_over(&previous);
        }
    }
}

/// Starts a task for each downloaded list of the settings in force.
pub fn start(shared: &Arc<ProxyState>) {
    for list in lists(&shared.settings()) {
        let (list, shared) = (Arc::downgrade(&list), Arc::downgrade(shared));
        tokio::spawn(keep_fresh(list, shared));
    }
}

fn lists(settings: &Settings) -> Vec<Arc<HostList>> {
    settings
        .policy
        .rules
        .iter()
        .filter_map(|r| r.list.clone())
        .collect()
}

/// How long until the next fetch of a list with `status`, fetched every `refresh`.
fn due(status: &ListStatus, refresh: Duration, now: SystemTime) -> Duration {
    let failed_last = status.last_error.is_some()
        && status.last_attempt.is_some()
        && status.last_attempt > status.last_success;
    let next = match (failed_last, status.last_attempt, status.last_success) {
        (true, Some(tried), _) => tried + refresh.min(RETRY),
        (_, _, Some(fetched)) => fetched + refresh,
        _ => return Duration::ZERO,
    };
    next.duration_since(now).unwrap_or(Duration::ZERO)
}

async fn keep_fresh(list: Weak<HostList>, shared: Weak<ProxyState>) {
    loop {
        // Sleeps in steps, so that a list dropped by a reload ends its task soon.
        loop {
            let Some(list) = list.upgrade() else { return };
            let wait = due(&list.status(), list.refresh, SystemTime::now());
            if wait.is_zero() {
                break;
            }
            drop(list);
            tokio::time::sleep(wait.min(LOOK)).await;
        }
        let (Some(list), Some(shared)) = (list.upgrade(), shared.upgrade()) else {
            return;
        };
        refresh(&list, &shared).await;
    }
}

/// Fetches `list` once and puts the outcome in force.
async fn refresh(list: &HostList, shared: &ProxyState) {
    let settings = shared.settings();
    let outbound = shared.outbound.load_full();
    let parents = settings
        .upstream
        .as_ref()
        .map(|u| u.parents.clone())
        .unwrap_or_default();
    let status = list.status();
    let validators = (status.etag.as_deref(), status.last_modified.as_deref());
    let bounds = Bounds {
        timeout: TIMEOUT,
        max_bytes: MAX_BYTES,
    };
    let now = SystemTime::now();
    let outcome = match fetch(&list.url, validators, &outbound, &parents, bounds).await {
        Ok(Fetched::NotModified) => {
            list.confirm(now);
            Ok(())
        }
        Ok(Fetched::Body {
            text,
            etag,
            last_modified,
        }) => {
            // A long list takes most of a second to parse: not on a worker of the proxy.
            let copy = disk_copy(&settings.state_dir, &list.url);
            let parsed = tokio::task::spawn_blocking(move || {
                let load = parse_list(&text);
                let kept = load
                    .looks_valid()
                    .then(|| write_whole(&copy, text.as_bytes()).map_err(|e| (copy, e)));
                (load, kept)
            })
            .await;
            match parsed {
                Err(e) => Err(format!("the list could not be parsed: {e}")),
                Ok((load, None)) => Err(format!("not a list: {}", load.summary())),
                Ok((load, Some(kept))) => {
                    if let Err((copy, e)) = kept {
                        tracing::warn!(list = %list.rule, "cannot keep the copy of {} at {}: {e}", list.url, copy.display());
                    }
                    tracing::info!(list = %list.rule, "{} fetched: {}", list.url, load.summary());
                    list.put(load, ListSource::Fetch, now, (etag, last_modified));
                    Ok(())
                }
            }
        }
        Err(e) => Err(e),
    };
    if let Err(e) = outcome {
        let kept = list.set().len();
        tracing::warn!(
            list = %list.rule,
            "fetching {} failed ({e}); the list in force ({kept} entries) stays",
            list.url
        );
        list.note_attempt(now, Some(e));
    } else {
        list.note_attempt(now, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_due_after_its_refresh_and_retried_sooner_after_a_failure() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        let never = ListStatus::default();
        assert_eq!(due(&never, day, t0), Duration::ZERO);
        let fetched = ListStatus {
            last_success: Some(t0),
            last_attempt: Some(t0),
            ..ListStatus::default()
        };
        assert_eq!(
            due(&fetched, day, t0 + Duration::from_secs(10)),
            day - Duration::from_secs(10)
        );
        assert_eq!(due(&fetched, day, t0 + 2 * day), Duration::ZERO);
        let failed = ListStatus {
            last_attempt: Some(t0 + Duration::from_secs(100)),
            last_error: Some("down".into()),
            ..fetched.clone()
        };
        assert_eq!(due(&failed, day, t0 + Duration::from_secs(100)), RETRY);
        // A refresh shorter than the retry wins.
        assert_eq!(
            due(
                &failed,
                Duration::from_secs(2),
                t0 + Duration::from_secs(100)
            ),
            Duration::from_secs(2)
        );
    }
}
