//! The byte budgets (`[[quotas]]`) at work in the data path: the plan's budget step asked
//! for each request the rules allowed, before any dial, with the meter of its budgets put in
//! its record's counters; and the task that keeps the counts in `[state] dir` every few
//! seconds when they changed, and once more at shutdown. The counts themselves are
//! [`crate::observe::budget`]'s.

use std::sync::Arc;
use std::time::Duration;

use crate::core::error::EdgeError;
use crate::core::policy::Facts;
use crate::proxy::exchange::Exchange;
use crate::proxy::state::ProxyState;

/// How often changed counts are written to `[state] dir`.
pub const SAVE_EVERY: Duration = Duration::from_secs(5);

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

/// Writes the counts when they changed, every [`SAVE_EVERY`], for as long as the proxy runs.
pub fn start(shared: &Arc<ProxyState>) {
    let shared = Arc::downgrade(shared);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SAVE_EVERY).await;
            let Some(state) = shared.upgrade() else {
                return;
            };
            let budgets = state.budgets.clone();
            drop(state);
            // A failure is warned of by the counts themselves, once.
            let _ =
                tokio::task::spawn_blocking(move || budgets.save(jiff::Timestamp::now(), false))
                    .await;
        }
    });
}

/// Writes the counts once more (at shutdown).
pub fn save_now(shared: &ProxyState) {
    let _ = shared.budgets.save(jiff::Timestamp::now(), false);
}
