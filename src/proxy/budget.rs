//! The byte budgets (`[[quotas]]`) at work in the data path: the plan's budget step asked
//! for each request the rules allowed, before any dial, with the meter of its budgets put in
//! its record's counters; and the task that shares the counts through `[state] store`
//! (every 500 ms, [`crate::egress::store`]) and keeps them in `[state] dir` every few seconds
//! when they changed, and once more at shutdown. The counts themselves are
//! [`crate::observe::budget`]'s.

use std::sync::Arc;
use std::time::Duration;

use crate::core::error::EdgeError;
use crate::core::policy::Facts;
use crate::egress::store::{Share, Store};
use crate::proxy::exchange::Exchange;
use crate::proxy::state::ProxyState;

/// How often changed counts are written to `[state] dir`.
pub const SAVE_EVERY: Duration = Duration::from_secs(5);

/// How often the counts are shared through the store (`[state] store`), when there is one.
pub const SHARE_EVERY: Duration = Duration::from_millis(500);

/// The store of `settings` (`[state] store`, written to as `instance`): `before` when it is
/// the same, else a new one; `None` without a store.
pub fn store_for(
    settings: &crate::config::Settings,
    before: Option<Arc<Store>>,
) -> Option<Arc<Store>> {
    let url = settings.store.as_ref()?;
    if let Some(before) = before.filter(|s| s.is(url, &settings.instance)) {
        return Some(before);
    }
    match Store::new(url, &settings.instance) {
        Ok(store) => Some(Arc::new(store)),
        Err(e) => {
            // The URL was checked with the configuration; not reached.
            tracing::warn!("the store of byte budgets cannot be used ({e}); counting alone");
            None
        }
    }
}

/// The budget step for the request of `ex` described by `facts`: refused (`403`, the rule
/// `quota "NAME"`) when a budget that counts it is used up; otherwise its bytes are counted
/// into its budgets as they move. Nothing is asked when no quota is configured.
pub(crate) fn admit(ex: &Exchange, facts: &Facts<'_>) -> Result<(), EdgeError> {
    let quotas = &ex.settings.quotas;
    if quotas.is_empty() {
        return Ok(());
    }
    match ex
        .shared
        .budgets
        .admit(&ex.settings.policy, quotas, facts)?
    {
        Some(meter) => {
            // Set once per exchange: its record's counters are new.
            let _ = ex.record.traffic().meter.set(meter);
            Ok(())
        }
        None => Ok(()),
    }
}

/// For as long as the proxy runs: shares the counts through the store every
/// [`SHARE_EVERY`] when there is one, and writes them to `[state] dir` every [`SAVE_EVERY`]
/// when they changed.
pub fn start(shared: &Arc<ProxyState>) {
    let shared = Arc::downgrade(shared);
    let saves = (SAVE_EVERY.as_millis() / SHARE_EVERY.as_millis()).max(1);
    tokio::spawn(async move {
        for tick in 1u128.. {
            tokio::time::sleep(SHARE_EVERY).await;
            let Some(state) = shared.upgrade() else {
                return;
            };
            let store = state.store.load_full();
            state
                .budgets
                .store
                .configured
                .store(store.is_some(), std::sync::atomic::Ordering::Relaxed);
            if let Some(store) = store {
                share(&state, &store).await;
            }
            if tick % saves == 0 {
                let budgets = state.budgets.clone();
                drop(state);
                // A failure is warned of by the counts themselves, once.
                let _ = tokio::task::spawn_blocking(move || {
                    budgets.save(jiff::Timestamp::now(), false)
                })
                .await;
            }
        }
    });
}

/// Writes this proxy's part of every count of the periods under way to the store and takes
/// the totals back. While the store cannot be reached, counting goes on here alone (one
/// warning, and `portcullis_quota_store_up` 0); the next sync that works merges what was
/// counted meanwhile, since each proxy writes its whole part again.
async fn share(state: &ProxyState, store: &Store) {
    let budgets = &state.budgets;
    let now = jiff::Timestamp::now().as_second();
    let counts: Vec<_> = budgets
        .all()
        .into_iter()
        .filter(|(_, _, count)| count.end() > now)
        .collect();
    if counts.is_empty() {
        return;
    }
    let shares: Vec<Share> = counts
        .iter()
        .map(|(quota, key, count)| Share {
            quota: quota.to_string(),
            key: key.clone(),
            start: count.start(),
            // A day past the period's end: a proxy whose clock is a little behind still
            // finds it.
            expire_at: count.end() + 86_400,
            mine: count.mine(),
        })
        .collect();
    match store.sync(&shares).await {
        Ok(answers) => {
            for ((_, _, count), (sent, answer)) in counts.iter().zip(shares.iter().zip(answers)) {
                // A count that started a new period meanwhile keeps its own figures.
                if count.start() == sent.start {
                    count.shared(sent.mine, answer.mine, answer.total);
                }
            }
            if budgets.store.worked() {
                tracing::info!(store = %store.shown(), "the store of byte budgets answers again; the counts made here meanwhile are merged");
            }
        }
        Err(e) => {
            if budgets.store.failed() {
                tracing::warn!(store = %store.shown(), "the store of byte budgets cannot be reached ({e}); budgets are counted here alone until it answers, then merged");
            }
        }
    }
}

/// Writes the counts once more (at shutdown).
pub fn save_now(shared: &ProxyState) {
    let _ = shared.budgets.save(jiff::Timestamp::now(), false);
}
