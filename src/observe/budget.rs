//! The byte budgets of a running proxy (`[[quotas]]`) at work: one count per quota and key
//! (a client's address or a user) for the period under way, added to as bytes move, kept in
//! `[state] dir` across restarts and reloads.
//!
//! - **Counting**: an exchange a budget applies to gets a [`Meter`] in its record's
//!   [`crate::observe::access::Traffic`]; every byte the record counts, each way, is added to
//!   the counts of the meter as it moves (a long download is counted while it runs). An
//!   atomic add; nothing else on the data path.
//! - **Deciding**: [`Budgets::admit`] finds the counts of a request (a hash lookup each),
//!   starts a new period when the old one is over, and asks the core
//!   ([`crate::core::quota::Quota::check`]) whether the budget is used up.
//! - **Keeping**: [`Budgets::save`] writes every count of the periods under way to
//!   `quotas.json` whole or not at all (a file beside it, then a rename); the proxy calls it
//!   every few seconds when something changed, and at shutdown. A file that cannot be read
//!   is set aside as `quotas.json.corrupt` with a warning, and counting starts afresh.
//!
//! What is shared with other proxies through a store (`[state] store`) is written and read
//! by `crate::proxy::budget` through `crate::egress::store`; a count keeps apart the bytes
//! this proxy counted (`mine`) and the total it knows of, so that this proxy's own part can
//! be written again whole (and merged back after the store was away).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::core::clock::Clock;
use crate::core::plan;
use crate::core::policy::{Denial, Facts, Policy};
use crate::core::quota::{Keyed, Quota, Standing};
use crate::core::sync::lock;

/// The file in `[state] dir` the counts are kept in.
pub const FILE: &str = "quotas.json";

/// The most counts kept at once (quotas × keys); past it, a new key is counted in memory
/// only until the next period.
const MAX_COUNTS: usize = 100_000;

/// One quota's count for one key, in the period under way.
#[derive(Debug, Default)]
pub struct Count {
    /// When the period started and ends (seconds since the epoch).
    start: AtomicI64,
    end: AtomicI64,
    /// Bytes used in the period, as far as this proxy knows (its own and, with a store,
    /// those of the others).
    used: AtomicU64,
    /// Bytes this proxy counted in the period.
    mine: AtomicU64,
    /// Whether anything changed since the last save.
    changed: AtomicBool,
}

impl Count {
    /// Adds `n` bytes moved.
    fn add(&self, n: u64) {
        self.used.fetch_add(n, Ordering::Relaxed);
        self.mine.fetch_add(n, Ordering::Relaxed);
        self.changed.store(true, Ordering::Relaxed);
    }

    /// Bytes used in the period.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes this proxy counted in the period.
    pub fn mine(&self) -> u64 {
        self.mine.load(Ordering::Relaxed)
    }

    /// When the period started, seconds since the epoch.
    pub fn start(&self) -> i64 {
        self.start.load(Ordering::Relaxed)
    }

    /// When the period ends, seconds since the epoch.
    pub fn end(&self) -> i64 {
        self.end.load(Ordering::Relaxed)
    }

    /// What the shared store answered for this count, when this proxy had sent `sent` of
    /// its own bytes: its own part as the store holds it (`stored`, at least `sent`: more
    /// when this proxy's kept counts were lost since it last wrote) and every proxy's parts
    /// together (`total`). The count follows the total, with what this proxy counted since
    /// it sent.
    pub fn shared(&self, sent: u64, stored: u64, total: u64) {
        if stored > sent {
            self.mine.fetch_add(stored - sent, Ordering::Relaxed);
        }
        let since = self.mine().saturating_sub(stored.max(sent));
        let known = total.saturating_add(since);
        if known != self.used() {
            self.used.store(known, Ordering::Relaxed);
            self.changed.store(true, Ordering::Relaxed);
        }
    }

    /// Starts the period of `span` when the count is still in an earlier one.
    fn roll(&self, start: i64, end: i64) {
        let old = self.end.load(Ordering::Relaxed);
        if old > start {
            return;
        }
        // One caller starts the new period; the others find it started.
        if self
            .end
            .compare_exchange(old, end, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.start.store(start, Ordering::Relaxed);
            self.used.store(0, Ordering::Relaxed);
            self.mine.store(0, Ordering::Relaxed);
            self.changed.store(true, Ordering::Relaxed);
        }
    }
}

/// Whose count: the quota's name and the key.
type CountId = (Arc<str>, String);

/// What one exchange adds its bytes to: the counts of the budgets that apply to it.
#[derive(Debug)]
pub struct Meter {
    charges: Vec<Charge>,
}

#[derive(Debug)]
struct Charge {
    count: Arc<Count>,
    /// The budget, and the quota's name and `cut`, as configured when the exchange began.
    bytes: u64,
    name: Arc<str>,
    cut: bool,
}

impl Meter {
    /// Adds `n` bytes moved, either way, to every count.
    pub fn add(&self, n: usize) {
        for charge in &self.charges {
            charge.count.add(n as u64);
        }
    }

    /// The name of a quota with `cut = true` whose budget this exchange has used up: the
    /// transfer stops.
    pub fn cut_by(&self) -> Option<&Arc<str>> {
        self.charges
            .iter()
            .find(|c| c.cut && c.count.used() >= c.bytes)
            .map(|c| &c.name)
    }
}

/// Where an exchange's meter is kept: set once, when its budgets admit it.
pub type MeterSlot = OnceLock<Meter>;

/// The counts of a running proxy; one for the process, kept across reloads.
pub struct Budgets {
    counts: RwLock<HashMap<CountId, Arc<Count>>>,
    /// The file the counts are kept in; `None`: not kept (tests built by hand).
    file: Mutex<Option<PathBuf>>,
    /// Whether a save failed last time (warned once until it works again).
    failing: AtomicBool,
    /// How the shared store (`[state] store`) answers, when there is one.
    pub store: StoreHealth,
}

/// How the shared store answers: for the metrics, the status page and the warnings.
#[derive(Debug, Default)]
pub struct StoreHealth {
    /// Whether a store is configured.
    pub configured: AtomicBool,
    /// Whether the last sync worked.
    pub up: AtomicBool,
    /// Syncs that failed.
    pub failures: AtomicU64,
}

impl StoreHealth {
    /// Notes a sync that worked; answers whether the store was failing before (it is back).
    pub fn worked(&self) -> bool {
        let was_up = self.up.swap(true, Ordering::Relaxed);
        !was_up && self.failures.load(Ordering::Relaxed) > 0
    }

    /// Notes a sync that failed; answers whether it worked before (the failing starts now).
    pub fn failed(&self) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let was_up = self.up.swap(false, Ordering::Relaxed);
        was_up || self.failures.load(Ordering::Relaxed) == 1
    }

    /// `(up, failures)` when a store is configured.
    pub fn state(&self) -> Option<(bool, u64)> {
        self.configured.load(Ordering::Relaxed).then(|| {
            (
                self.up.load(Ordering::Relaxed),
                self.failures.load(Ordering::Relaxed),
            )
        })
    }
}

/// The file as written.
#[derive(Debug, Serialize, Deserialize)]
struct Kept {
    version: u32,
    counts: Vec<KeptCount>,
}

#[derive(Debug, Serialize, Deserialize)]
struct KeptCount {
    quota: String,
    key: String,
    /// The period, seconds since the epoch.
    start: i64,
    end: i64,
    used: u64,
    #[serde(default)]
    mine: u64,
}

impl Budgets {
    /// Counts kept nowhere.
    pub fn in_memory() -> Budgets {
        Budgets {
            counts: RwLock::default(),
            file: Mutex::new(None),
            failing: AtomicBool::new(false),
            store: StoreHealth::default(),
        }
    }

    /// The counts kept in `dir` (`[state] dir`), as the last save left them; a file that
    /// cannot be read is set aside with a warning, and counting starts afresh. Counts of
    /// periods over by `now` are dropped.
    pub fn open(dir: &Path, now: Timestamp) -> Budgets {
        let budgets = Budgets::load(dir, now, true);
        *lock(&budgets.file) = Some(dir.join(FILE));
        budgets
    }

    /// The counts kept in `dir`, read only (for `explain` and `report`): nothing is moved
    /// aside, and nothing will be written.
    pub fn read(dir: &Path, now: Timestamp) -> Budgets {
        Budgets::load(dir, now, false)
    }

    fn load(dir: &Path, now: Timestamp, set_aside: bool) -> Budgets {
        let budgets = Budgets::in_memory();
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Kept>(&bytes) {
                Ok(kept) => budgets.restore(kept, now),
                Err(e) => {
                    let aside = path.with_extension("json.corrupt");
                    let moved = match set_aside {
                        true => std::fs::rename(&path, &aside),
                        false => Err(io::ErrorKind::Unsupported.into()),
                    };
                    tracing::warn!(
                        file = %path.display(),
                        "the byte budgets' counts cannot be read ({e}); counting starts afresh{}",
                        match moved {
                            Ok(()) => format!(", the file is kept as {}", aside.display()),
                            Err(_) => String::new(),
                        }
                    );
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                file = %path.display(),
                "the byte budgets' counts cannot be read ({e}); counting starts afresh"
            ),
        }
        budgets
    }

    fn restore(&self, kept: Kept, now: Timestamp) {
        let mut counts = self.counts.write().unwrap_or_else(|e| e.into_inner());
        for k in kept.counts {
            if k.end <= now.as_second() || counts.len() >= MAX_COUNTS {
                continue;
            }
            let count = Count::default();
            count.start.store(k.start, Ordering::Relaxed);
            count.end.store(k.end, Ordering::Relaxed);
            count.used.store(k.used, Ordering::Relaxed);
            count.mine.store(k.mine.min(k.used), Ordering::Relaxed);
            counts.insert((k.quota.into(), k.key), Arc::new(count));
        }
    }

    /// Keeps the counts in `dir` from now on (`[state] dir` after a reload).
    pub fn keep_in(&self, dir: &Path) {
        *lock(&self.file) = Some(dir.join(FILE));
    }

    /// The count of `quota` for `key`, in the period holding `now`.
    pub fn count(&self, quota: &Quota, key: &str, clock: &Clock, now: Timestamp) -> Arc<Count> {
        let found = {
            let counts = self.counts.read().unwrap_or_else(|e| e.into_inner());
            counts.get(&(quota.name.clone(), key.to_owned())).cloned()
        };
        let count = found.unwrap_or_else(|| {
            let mut counts = self.counts.write().unwrap_or_else(|e| e.into_inner());
            let id = (quota.name.clone(), key.to_owned());
            if counts.len() >= MAX_COUNTS && !counts.contains_key(&id) {
                return Arc::new(Count::default());
            }
            counts.entry(id).or_default().clone()
        });
        if count.end() <= now.as_second() {
            let span = quota.per.span(clock, now);
            count.roll(span.start.as_second(), span.end.as_second());
        }
        count
    }

    /// The budget step of the plan (`crate::core::plan::budget`) for a request described
    /// by `facts`, under `policy` (its clock): refused when a budget of `quotas` that counts
    /// it is used up; otherwise the meter its bytes go to, when any counts it.
    pub fn admit(
        &self,
        policy: &Policy,
        quotas: &[Quota],
        facts: &Facts<'_>,
    ) -> Result<Option<Meter>, Denial> {
        struct Asked<'b> {
            budgets: &'b Budgets,
            clock: &'b Clock,
            at: Timestamp,
            charges: Vec<Charge>,
        }
        impl plan::Counts for Asked<'_> {
            fn used(&mut self, quota: &Quota, key: &str) -> u64 {
                let count = self.budgets.count(quota, key, self.clock, self.at);
                let used = count.used();
                self.charges.push(Charge {
                    count,
                    bytes: quota.bytes,
                    name: quota.name.clone(),
                    cut: quota.cut,
                });
                used
            }
        }
        let mut asked = Asked {
            budgets: self,
            clock: &policy.clock,
            at: facts.at,
            charges: Vec::new(),
        };
        plan::budget(policy, quotas, facts, &mut asked, &mut ())?;
        let charges = asked.charges;
        Ok((!charges.is_empty()).then_some(Meter { charges }))
    }

    /// Where every budget of `quotas` stands at `now`, for each key counted in this period,
    /// by quota (in order) and key.
    pub fn standings(&self, quotas: &[Quota], clock: &Clock, now: Timestamp) -> Vec<Standing> {
        let counts = self.counts.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for quota in quotas {
            let span = quota.per.span(clock, now);
            let mut keys: Vec<Standing> = counts
                .iter()
                .filter(|((name, _), count)| {
                    *name == quota.name && count.start() == span.start.as_second()
                })
                .map(|((_, key), count)| standing(quota, key, count.used(), span.end))
                .collect();
            keys.sort_by(|a, b| a.key.cmp(&b.key));
            out.extend(keys);
        }
        out
    }

    /// The budgets of `quotas` a person at `client` (logged in as `user`) has, at `now`:
    /// those whose clients and users conditions name them, used or not.
    pub fn standings_of(
        &self,
        quotas: &[Quota],
        client: IpAddr,
        user: Option<&str>,
        clock: &Clock,
        now: Timestamp,
    ) -> Vec<Standing> {
        let counts = self.counts.read().unwrap_or_else(|e| e.into_inner());
        quotas
            .iter()
            // A budget per user is shown to a person who logged in (the own page asks for
            // no log-in); others are counted by address.
            .filter(|q| q.concerns(client, user) && (user.is_some() || q.keyed == Keyed::Client))
            .map(|quota| {
                let key = crate::core::quota::key_of(quota.keyed, client, user);
                let span = quota.per.span(clock, now);
                let used = counts
                    .get(&(quota.name.clone(), key.clone()))
                    .filter(|c| c.start() == span.start.as_second())
                    .map_or(0, |c| c.used());
                standing(quota, &key, used, span.end)
            })
            .collect()
    }

    /// Every count, for the store: the quota, the key and the count.
    pub fn all(&self) -> Vec<(Arc<str>, String, Arc<Count>)> {
        let counts = self.counts.read().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .map(|((q, k), c)| (q.clone(), k.clone(), c.clone()))
            .collect()
    }

    /// Writes the counts of periods under way at `now` to the file, whole or not at all,
    /// when any changed since the last save (or `always`). Counts of periods that are over
    /// are forgotten.
    pub fn save(&self, now: Timestamp, always: bool) -> io::Result<()> {
        let Some(path) = lock(&self.file).clone() else {
            return Ok(());
        };
        let mut changed = always;
        let mut kept = Vec::new();
        {
            let mut counts = self.counts.write().unwrap_or_else(|e| e.into_inner());
            counts.retain(|_, c| c.end() > now.as_second() || Arc::strong_count(c) > 1);
            for ((quota, key), count) in counts.iter() {
                changed |= count.changed.swap(false, Ordering::Relaxed);
                kept.push(KeptCount {
                    quota: quota.to_string(),
                    key: key.clone(),
                    start: count.start(),
                    end: count.end(),
                    used: count.used(),
                    mine: count.mine(),
                });
            }
        }
        if !changed {
            return Ok(());
        }
        kept.sort_by(|a, b| (&a.quota, &a.key).cmp(&(&b.quota, &b.key)));
        let text = serde_json::to_vec_pretty(&Kept {
            version: 1,
            counts: kept,
        })
        .map_err(io::Error::other)?;
        let written = crate::observe::state_file::write_whole(&path, &text);
        match &written {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(file = %path.display(), "the byte budgets' counts are kept again");
                }
            }
            Err(e) => {
                // Counted in memory all the same; warned once until a save works again.
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(file = %path.display(), "cannot keep the byte budgets' counts ({e}); counting goes on in memory, and a restart would lose what changed");
                }
                for count in self
                    .counts
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                {
                    count.changed.store(true, Ordering::Relaxed);
                }
            }
        }
        written
    }
}

fn standing(quota: &Quota, key: &str, used: u64, resets: Timestamp) -> Standing {
    Standing {
        quota: quota.name.clone(),
        key: key.to_owned(),
        used,
        bytes: quota.bytes,
        per: quota.per,
        resets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::policy::Kind;
    use crate::core::target::Host;

    fn quotas(toml: &str) -> Arc<[Quota]> {
        crate::config::Config::from_toml(toml, "t")
            .unwrap()
            .validate("t")
            .unwrap()
            .quotas
    }

    fn facts<'a>(client: &str, host: &'a Host, at: &str) -> Facts<'a> {
        Facts {
            client: client.parse().unwrap(),
            user: None,
            groups: &[],
            method: "GET",
            kind: Kind::Http,
            host,
            port: 80,
            at: at.parse().unwrap(),
        }
    }

    fn policy(clock: &Clock) -> Policy {
        let mut policy = crate::config::Config::default()
            .validate("t")
            .unwrap()
            .policy;
        policy.clock = clock.clone();
        policy
    }

    const TINY: &str = "[[quotas]]\nname = \"tiny\"\nclients = [\"10.0.0.0/8\"]\nbytes = \"1KiB\"\nper = \"day\"\n";

    #[test]
    fn a_used_up_budget_refuses_until_the_period_rolls_over() {
        let q = quotas(TINY);
        let budgets = Budgets::in_memory();
        let clock = Clock::named("Europe/Amsterdam").unwrap();
        let policy = policy(&clock);
        let host = Host::Name("example.com".into());
        let before = facts("10.0.0.5", &host, "2026-12-03T12:00:00Z");
        let meter = budgets.admit(&policy, &q, &before).unwrap().unwrap();
        meter.add(1000);
        assert!(budgets.admit(&policy, &q, &before).is_ok(), "1000 of 1024");
        meter.add(24);
        let refused = budgets.admit(&policy, &q, &before).unwrap_err();
        assert_eq!(refused.rule, "quota \"tiny\"");
        assert!(
            refused.reason.ends_with("resets Fri 00:00"),
            "{}",
            refused.reason
        );
        // Another client has its own budget; a request no quota picks has no meter.
        assert!(budgets
            .admit(
                &policy,
                &q,
                &facts("10.0.0.6", &host, "2026-12-03T12:00:00Z")
            )
            .is_ok());
        assert!(budgets
            .admit(
                &policy,
                &q,
                &facts("192.168.0.6", &host, "2026-12-03T12:00:00Z")
            )
            .unwrap()
            .is_none());
        // Local midnight (23:00 UTC in winter): a new day, a full budget.
        let late = facts("10.0.0.5", &host, "2026-12-03T22:59:59Z");
        assert!(budgets.admit(&policy, &q, &late).is_err());
        let next = facts("10.0.0.5", &host, "2026-12-03T23:00:00Z");
        assert!(budgets.admit(&policy, &q, &next).is_ok());
        // Only counts of the day under way stand (10.0.0.6's is yesterday's).
        let standing = budgets.standings(&q, &clock, next.at);
        assert_eq!(standing.len(), 1);
        assert_eq!(
            (standing[0].key.as_str(), standing[0].used),
            ("10.0.0.5", 0)
        );
    }

    #[test]
    fn counts_outlive_the_process_and_a_corrupt_file_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let q = quotas(TINY);
        let clock = Clock::default();
        let policy = policy(&clock);
        let host = Host::Name("example.com".into());
        let f = facts("10.0.0.5", &host, "2026-12-03T12:00:00Z");
        let budgets = Budgets::open(dir.path(), f.at);
        budgets.admit(&policy, &q, &f).unwrap().unwrap().add(5000);
        budgets.save(f.at, false).unwrap();
        let again = Budgets::open(dir.path(), f.at);
        assert_eq!(
            again.admit(&policy, &q, &f).unwrap_err().rule,
            "quota \"tiny\""
        );
        // The next day, the kept count is over and dropped.
        let tomorrow: Timestamp = "2026-12-04T12:00:00Z".parse().unwrap();
        assert!(Budgets::open(dir.path(), tomorrow).all().is_empty());
        // A file that is not the counts: set aside, and no count.
        std::fs::write(dir.path().join(FILE), b"{ not json").unwrap();
        let fresh = Budgets::open(dir.path(), f.at);
        assert!(fresh.all().is_empty());
        assert!(dir.path().join("quotas.json.corrupt").exists());
        assert!(fresh.admit(&policy, &q, &f).is_ok());
    }
}
