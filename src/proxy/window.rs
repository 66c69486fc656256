//! Tunnels that end with their window: a rule with `times` and `times_cut = true` cuts the
//! tunnels it refuses once its window turns (the games that must stop at 21:00). Without
//! `times_cut`, a tunnel opened while allowed runs on: the rules decide when it opens.
//!
//! A tunnel keeps what the policy knew when it opened (client, user, method, destination,
//! the address dialled, and the settings then in force) and sleeps until the next moment at
//! which a rule with `times_cut` could turn the decision, then asks the policy again.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use crate::config::Settings;
use crate::core::policy::{Decision, Facts, Kind};
use crate::core::target::Target;
use crate::proxy::exchange::Exchange;

/// How long a tunnel sleeps when no window of a cutting rule turns within the week the
/// policy looks ahead, before it looks again.
const LOOK_AGAIN: Duration = Duration::from_secs(6 * 86_400);

/// What a tunnel needs to be asked about again later.
pub(crate) struct Window {
    settings: Arc<Settings>,
    client: IpAddr,
    user: Option<String>,
    groups: Vec<crate::core::policy::GroupAnswer>,
    method: String,
    kind: Kind,
    target: Target,
    addr: Option<IpAddr>,
}

/// The window of a tunnel to `target` dialled at `addr`, when a rule could cut it.
pub(crate) fn of(
    ex: &Exchange,
    target: &Target,
    kind: Kind,
    addr: Option<IpAddr>,
) -> Option<Box<Window>> {
    ex.settings.policy.cuts_tunnels().then(|| {
        Box::new(Window {
            settings: ex.settings.clone(),
            client: ex.client.ip(),
            user: ex.user.clone(),
            groups: ex.groups.clone(),
            method: ex.record.method().to_owned(),
            kind,
            target: target.clone(),
            addr,
        })
    })
}

impl Window {
    fn facts(&self, at: Timestamp) -> Facts<'_> {
        Facts {
            client: self.client,
            user: self.user.as_deref(),
            groups: &self.groups,
            method: &self.method,
            kind: self.kind,
            host: &self.target.host,
            port: self.target.port,
            at,
        }
    }

    /// Waits until a rule with `times_cut` refuses this tunnel; answers why, for the record.
    pub(crate) async fn closes(&self) -> String {
        let policy = &self.settings.policy;
        loop {
            let now = Timestamp::now();
            let (wake, check) = match policy.closes_at(&self.facts(now), self.addr) {
                Some(at) => (wait(now, at), Some(at)),
                None => (LOOK_AGAIN, None),
            };
            tokio::time::sleep(wake).await;
            let Some(at) = check else { continue };
            // The wall clock may have moved while the timer ran: decide at the later of the two.
            let at = at.max(Timestamp::now());
            if let Decision::Deny(denial) = policy.decide(&self.facts(at), self.addr) {
                return format!(
                    "cut at {} when {} refused it (times_cut): {}",
                    policy.clock.show(at, at),
                    denial.rule,
                    denial.reason
                );
            }
        }
    }
}

/// From `now` to `at`, as a timer's duration (at least a millisecond).
fn wait(now: Timestamp, at: Timestamp) -> Duration {
    let span = at.duration_since(now);
    Duration::try_from(span)
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_millis(1))
}
