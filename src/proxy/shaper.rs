//! The shared link at work (`[shaping]`, `[[limits.rate]]`): every transfer that is shaped
//! holds a [`Flow`], charges it for the bytes it moves, and waits as long as it answers
//! before moving more.
//!
//! - **The link**, per direction: each active client (or user, `shaping.per`) has a token
//!   bucket whose rate is its weighted max-min fair share of the link
//!   ([`crate::core::shaping::fair_shares`]), recomputed every [`EVERY`] from what each moved
//!   and whether it was held back: a client held back wants more than it has, one that was
//!   not wants what it moved, with room to grow. A lone client gets the whole link; a light
//!   one gets what it asks at once (its bucket is not in debt), so its small exchanges do not
//!   queue behind anyone's bulk bytes.
//! - **The caps**: each `[[limits.rate]]` that matches a transfer holds it to the cap's rate,
//!   one bucket per cap and client, shared by all that client's connections.
//!
//! A reload makes a new shaper; transfers under way keep the one they started with.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::schema::SharePer;
use crate::config::settings::ShapingSettings;
use crate::core::policy::Facts;
use crate::core::shaping::{default_burst, fair_shares, Bucket, Claim, ClientRate};
use crate::core::sync::lock;

/// How often the shares are recomputed.
const EVERY: Duration = Duration::from_millis(100);

/// A client that moved nothing for this long no longer claims a share.
const ACTIVE: Duration = Duration::from_secs(1);

/// A client's state is forgotten after this long without a byte.
const FORGET: Duration = Duration::from_secs(60);

/// The most clients remembered at once (the oldest idle go first).
const MAX_CLIENTS: usize = 16_384;

/// Which way bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Towards the client.
    Down = 0,
    /// From the client.
    Up = 1,
}

/// One client's (or user's) place on the link.
#[derive(Debug)]
struct Share {
    weight: f64,
    /// Per direction: its bucket, when the link of that direction is shaped.
    buckets: [Option<Bucket>; 2],
    /// Bytes moved since the last recompute.
    moved: [u64; 2],
    /// Held back by its share (told to wait) since the last recompute.
    held: [bool; 2],
    /// Held back by a cap since the last recompute: the lowest such cap's rate.
    capped: [Option<f64>; 2],
    /// Its rate over the last recompute's span, bytes per second.
    rate: [f64; 2],
    /// When it last moved a byte.
    last: Instant,
}

/// One cap's bucket for one client: per direction, when the cap has that direction.
type CapBuckets = Arc<Mutex<[Option<Bucket>; 2]>>;

/// The link and the caps, as configured when it was made.
pub(crate) struct Shaper {
    settings: ShapingSettings,
    /// Where the time transfers are told to wait is counted.
    stats: Arc<crate::observe::stats::Stats>,
    clients: Mutex<HashMap<String, Arc<Mutex<Share>>>>,
    caps: Mutex<HashMap<(usize, String), CapBuckets>>,
    recomputed: Mutex<Instant>,
    /// The last hour of the link's use, a minute each (the newest last), from when the
    /// shaper was made: the minute's index since then, and bytes by client.
    history: Mutex<std::collections::VecDeque<(u64, HashMap<String, u64>)>>,
    made: Instant,
}

/// Minutes of history kept (the status page's chart).
const HISTORY_MINUTES: usize = 60;

/// Clients kept apart per minute of history; the rest are added up as `other`.
const HISTORY_CLIENTS: usize = 32;

/// What one transfer is held by.
#[derive(Clone)]
pub(crate) struct Flow {
    shaper: Arc<Shaper>,
    /// The client's place: its rates, and its bucket of the link when the link is set.
    share: Arc<Mutex<Share>>,
    caps: Vec<CapBuckets>,
    /// The exchange's counters, where the time it is told to wait goes (for its record).
    traffic: Option<Arc<crate::observe::access::Traffic>>,
}

/// The shaping of an exchange's transfer to `target` (of `kind`; `addr`: the address
/// dialled, when known), its waits counted into the exchange's record; `None` when nothing
/// shapes it. Asked once per response, upload and tunnel.
pub(crate) fn flow_of(
    ex: &crate::proxy::exchange::Exchange,
    target: &crate::core::target::Target,
    kind: crate::core::policy::Kind,
    addr: Option<IpAddr>,
) -> Option<Flow> {
    // A load, not a clone of the Arc: nothing to count when nothing is shaped.
    let shaper = ex.shared.shaper.load();
    let shaper = shaper.as_ref()?;
    let facts = Facts {
        client: ex.client.ip(),
        user: ex.user.as_deref(),
        groups: &ex.groups,
        method: ex.record.method(),
        kind,
        host: &target.host,
        port: target.port,
        at: jiff::Timestamp::now(),
    };
    shaper
        .flow(&facts, addr)
        .map(|flow| flow.counted_in(ex.record.traffic().clone()))
}

impl Shaper {
    /// A shaper for `settings`; `None` when nothing is shaped. `before`, the shaper these
    /// settings replace at a reload, passes on the link's last hour: the chart on `/status`
    /// goes on where it was (shares and caps start afresh, as the settings say).
    pub(crate) fn new(
        settings: &ShapingSettings,
        stats: &Arc<crate::observe::stats::Stats>,
        before: Option<&Shaper>,
    ) -> Option<Arc<Shaper>> {
        let (history, made) = match before {
            Some(before) => (lock(&before.history).clone(), before.made),
            None => (std::collections::VecDeque::new(), Instant::now()),
        };
        settings.is_on().then(|| {
            Arc::new(Shaper {
                settings: settings.clone(),
                stats: stats.clone(),
                clients: Mutex::new(HashMap::new()),
                caps: Mutex::new(HashMap::new()),
                recomputed: Mutex::new(Instant::now()),
                history: Mutex::new(history),
                made,
            })
        })
    }

    fn link(&self, dir: Dir) -> Option<f64> {
        match dir {
            Dir::Down => self.settings.down,
            Dir::Up => self.settings.up,
        }
    }

    /// The key of a client's share and caps: its address, or its user when shares are per
    /// user and it logged in.
    fn key(&self, client: IpAddr, user: Option<&str>) -> String {
        match (self.settings.per, user) {
            (SharePer::User, Some(user)) => format!("user:{user}"),
            _ => client.to_canonical().to_string(),
        }
    }

    /// The flow of a transfer described by `facts`; `None` when nothing holds it.
    pub(crate) fn flow(self: &Arc<Self>, facts: &Facts<'_>, addr: Option<IpAddr>) -> Option<Flow> {
        let key = self.key(facts.client, facts.user);
        let now = Instant::now();
        let mut caps = Vec::new();
        for (index, cap) in self.settings.caps.iter().enumerate() {
            if !cap.matcher.matches(facts, addr) {
                continue;
            }
            let bucket = |rate: Option<f64>| {
                rate.map(|r| Bucket::new(r, cap.burst.unwrap_or_else(|| default_burst(r)), now))
            };
            let buckets = lock(&self.caps)
                .entry((index, key.clone()))
                .or_insert_with(|| Arc::new(Mutex::new([bucket(cap.down), bucket(cap.up)])))
                .clone();
            caps.push(buckets);
        }
        let linked = self.settings.down.is_some() || self.settings.up.is_some();
        if !linked && caps.is_empty() {
            return None;
        }
        // Every client the shaper holds has a share: its rates and the chart are kept
        // whether a link, a cap or both hold it; the buckets are the link's, when it is set.
        let share = {
            let mut clients = lock(&self.clients);
            if clients.len() >= MAX_CLIENTS && !clients.contains_key(&key) {
                let oldest = clients
                    .iter()
                    .min_by_key(|(_, s)| lock(s).last)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    clients.remove(&oldest);
                }
            }
            clients
                .entry(key.clone())
                .or_insert_with(|| {
                    let weight = self
                        .settings
                        .weights
                        .get(facts.user.unwrap_or_default())
                        .or_else(|| {
                            self.settings
                                .weights
                                .get(&facts.client.to_canonical().to_string())
                        })
                        .copied()
                        .unwrap_or(1.0);
                    let bucket =
                        |rate: Option<f64>| rate.map(|r| Bucket::new(r, default_burst(r), now));
                    Arc::new(Mutex::new(Share {
                        weight,
                        buckets: [bucket(self.settings.down), bucket(self.settings.up)],
                        moved: [0; 2],
                        held: [false; 2],
                        capped: [None; 2],
                        rate: [0.0; 2],
                        last: now,
                    }))
                })
                .clone()
        };
        Some(Flow {
            shaper: self.clone(),
            share,
            caps,
            traffic: None,
        })
    }

    /// Recomputes the shares when [`EVERY`] has passed since the last time.
    fn maybe_recompute(&self, now: Instant) {
        let Ok(mut at) = self.recomputed.try_lock() else {
            return;
        };
        let span = now.saturating_duration_since(*at);
        if span < EVERY {
            return;
        }
        *at = now;
        drop(at);
        let span = span.as_secs_f64();
        self.note_history(now);
        // A cap's bucket that no transfer holds and that is full again is as good as a new
        // one: forgotten, so that the map stays as small as the clients using it now.
        lock(&self.caps).retain(|_, buckets| {
            Arc::strong_count(buckets) > 1
                || lock(buckets)
                    .iter_mut()
                    .flatten()
                    .any(|bucket| !bucket.is_full(now))
        });
        let mut clients = lock(&self.clients);
        clients.retain(|_, s| now.saturating_duration_since(lock(s).last) < FORGET);
        let active: Vec<Arc<Mutex<Share>>> = clients
            .values()
            .filter(|s| now.saturating_duration_since(lock(s).last) < ACTIVE)
            .cloned()
            .collect();
        drop(clients);
        for dir in [Dir::Down, Dir::Up] {
            let d = dir as usize;
            let Some(link) = self.link(dir) else {
                // No link this way: only the rates, for the status page and `top`.
                for s in &active {
                    let mut s = lock(s);
                    s.rate[d] = s.moved[d] as f64 / span;
                    s.moved[d] = 0;
                    s.held[d] = false;
                    s.capped[d] = None;
                }
                continue;
            };
            let claims: Vec<Claim> = active
                .iter()
                .map(|s| {
                    let mut s = lock(s);
                    let rate = s.moved[d] as f64 / span;
                    s.rate[d] = rate;
                    // Held back (told to wait, or waiting now): it would take more.
                    // Otherwise what it moved, with room to grow into before the next
                    // recompute sees it held.
                    let waiting = s.buckets[d]
                        .as_mut()
                        .is_some_and(|b| !b.wait(now).is_zero());
                    // A client that moved less than its share is given what it moved, with
                    // room to grow, but at least half its last share: a moment of slowness
                    // on its side (a busy CPU, a slow reader) does not cost it its share at
                    // once.
                    // A client a cap holds back wants what the cap allows, not more: the rest
                    // of the link goes to others, and its share never falls below its cap.
                    let last_share = s.buckets[d].as_ref().map_or(0.0, Bucket::rate);
                    let grown = (rate * 1.5 + 64.0 * 1024.0).max(last_share / 2.0);
                    let demand = match s.capped[d] {
                        Some(cap) => (cap * 1.1).max(rate * 1.5 + 64.0 * 1024.0),
                        None if s.held[d] || waiting => f64::INFINITY,
                        None => grown,
                    };
                    s.moved[d] = 0;
                    s.held[d] = false;
                    s.capped[d] = None;
                    Claim {
                        weight: s.weight,
                        demand,
                    }
                })
                .collect();
            let shares = fair_shares(link, &claims);
            for (s, share) in active.iter().zip(shares) {
                let mut s = lock(s);
                if let Some(bucket) = s.buckets[d].as_mut() {
                    bucket.set_rate(share, default_burst(share), now);
                }
            }
        }
    }

    /// Adds what each active client moved since the last recompute to the minute under way.
    fn note_history(&self, now: Instant) {
        let minute = now.saturating_duration_since(self.made).as_secs() / 60;
        let moved: Vec<(String, u64)> = lock(&self.clients)
            .iter()
            .filter_map(|(key, s)| {
                let s = lock(s);
                let n = s.moved[0] + s.moved[1];
                (n > 0).then(|| (key.clone(), n))
            })
            .collect();
        let mut history = lock(&self.history);
        if history.back().is_none_or(|(m, _)| *m != minute) {
            history.push_back((minute, HashMap::new()));
            while history.len() > HISTORY_MINUTES {
                history.pop_front();
            }
        }
        if let Some((_, clients)) = history.back_mut() {
            for (key, n) in moved {
                let key = if clients.len() < HISTORY_CLIENTS || clients.contains_key(&key) {
                    key
                } else {
                    "other".to_owned()
                };
                *clients.entry(key).or_insert(0) += n;
            }
        }
    }

    /// The last hour of the link's use, oldest minute first.
    pub fn history(&self) -> Vec<crate::core::shaping::LinkMinute> {
        let minute = self.made.elapsed().as_secs() / 60;
        lock(&self.history)
            .iter()
            .map(|(m, clients)| {
                let mut clients: Vec<(String, u64)> =
                    clients.iter().map(|(k, v)| (k.clone(), *v)).collect();
                clients.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                crate::core::shaping::LinkMinute {
                    minutes_ago: minute.saturating_sub(*m) as u32,
                    clients,
                }
            })
            .filter(|m| (m.minutes_ago as usize) < HISTORY_MINUTES)
            .collect()
    }

    /// What the client (or user) of `client` and `user` moved each way lately, bytes per
    /// second, when it is on the link now.
    pub(crate) fn rate_of(&self, client: IpAddr, user: Option<&str>) -> Option<(f64, f64)> {
        let share = lock(&self.clients).get(&self.key(client, user))?.clone();
        let s = lock(&share);
        (s.last.elapsed() < ACTIVE * 5).then_some((s.rate[0], s.rate[1]))
    }

    /// The clients that moved bytes lately, busiest first, with the caps holding them.
    pub fn clients(&self) -> Vec<ClientRate> {
        let now = Instant::now();
        let mut capped: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, key) in lock(&self.caps).keys() {
            capped.entry(key.clone()).or_default().push(*index);
        }
        let clients = lock(&self.clients);
        let mut out: Vec<ClientRate> = clients
            .iter()
            .filter_map(|(key, s)| {
                let s = lock(s);
                (now.saturating_duration_since(s.last) < ACTIVE * 5).then(|| ClientRate {
                    client: key.clone(),
                    down: s.rate[0],
                    up: s.rate[1],
                    share_down: s.buckets[0].as_ref().map(Bucket::rate),
                    share_up: s.buckets[1].as_ref().map(Bucket::rate),
                    caps: self.cap_names(capped.get(key)),
                })
            })
            .collect();
        out.sort_by(|a, b| (b.down + b.up).total_cmp(&(a.down + a.up)));
        out
    }
}

impl Shaper {
    /// The names of the caps at `indices`, in configuration order.
    fn cap_names(&self, indices: Option<&Vec<usize>>) -> Vec<String> {
        let mut indices = indices.cloned().unwrap_or_default();
        indices.sort_unstable();
        indices
            .into_iter()
            .filter_map(|i| self.settings.caps.get(i))
            .map(|cap| cap.matcher.name.to_string())
            .collect()
    }
}

impl Flow {
    /// Counts the time this flow is told to wait into `traffic` (the record's).
    pub(crate) fn counted_in(mut self, traffic: Arc<crate::observe::access::Traffic>) -> Self {
        self.traffic = Some(traffic);
        self
    }

    /// How long to wait before moving more in `dir`, now (another connection of the same
    /// client may have moved bytes meanwhile).
    pub(crate) fn wait(&self, dir: Dir) -> Duration {
        let now = Instant::now();
        let d = dir as usize;
        let mut wait = Duration::ZERO;
        if let Some(bucket) = lock(&self.share).buckets[d].as_mut() {
            wait = bucket.wait(now);
        }
        for cap in &self.caps {
            if let Some(bucket) = lock(cap)[d].as_mut() {
                wait = wait.max(bucket.wait(now));
            }
        }
        wait
    }

    /// Charges `n` bytes moved in `dir`; answers how long to wait before moving more.
    pub(crate) fn charge(&self, dir: Dir, n: usize) -> Duration {
        let now = Instant::now();
        let d = dir as usize;
        // The caps first: the share must know whether a cap, not the link, holds the client.
        let mut cap_wait = Duration::ZERO;
        let mut capped_at: Option<f64> = None;
        for cap in &self.caps {
            if let Some(bucket) = lock(cap)[d].as_mut() {
                let this = bucket.charge(n as u64, now);
                if !this.is_zero() {
                    capped_at = Some(capped_at.map_or(bucket.rate(), |r| r.min(bucket.rate())));
                }
                cap_wait = cap_wait.max(this);
            }
        }
        let mut wait = Duration::ZERO;
        {
            let mut s = lock(&self.share);
            if let Some(rate) = capped_at {
                s.capped[d] = Some(s.capped[d].map_or(rate, |r: f64| r.min(rate)));
            }
            if now.saturating_duration_since(s.last) > ACTIVE {
                // Back after a pause: the whole link until the next recompute says more.
                if let (Some(bucket), Some(link)) = (s.buckets[d].as_mut(), self.shaper.link(dir)) {
                    bucket.set_rate(link, default_burst(link), now);
                }
            }
            s.last = now;
            s.moved[d] += n as u64;
            if let Some(bucket) = s.buckets[d].as_mut() {
                wait = bucket.charge(n as u64, now);
                if !wait.is_zero() && wait >= cap_wait {
                    s.held[d] = true;
                }
            }
        }
        let wait = wait.max(cap_wait);
        if !wait.is_zero() {
            self.shaper.stats.throttled(dir == Dir::Up, wait);
            if let Some(traffic) = &self.traffic {
                traffic.throttled_us.fetch_add(
                    wait.as_micros() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
        }
        self.shaper.maybe_recompute(now);
        wait
    }
}

/// The most of a body frame (or a tunnel's `splice`) sent at once while shaped: a larger
/// frame (the origin's bytes that piled up while the body waited) goes in pieces, each
/// waited for, so that a transfer overshoots its rate by no more than one piece.
pub(crate) const PIECE: usize = 32 * 1024;

/// A transfer told to wait looks at its buckets again at least this often: a share that grew
/// meanwhile (a recompute) lets it go sooner than the wait it was first told.
pub(crate) const RECHECK: Duration = Duration::from_millis(50);

/// A body's shaping: charged for each frame, and waited on before the next is read.
pub(crate) struct Shaped {
    flow: Flow,
    dir: Dir,
    delay: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// The rest of a frame larger than [`PIECE`], still to send.
    rest: bytes::Bytes,
}

impl Shaped {
    pub(crate) fn new(flow: Flow, dir: Dir) -> Self {
        Shaped {
            flow,
            dir,
            delay: None,
            rest: bytes::Bytes::new(),
        }
    }

    /// Ready once the wait after the last frame is over, and the buckets are out of debt
    /// (the client's other connections may have put them back in meanwhile).
    pub(crate) fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        while let Some(delay) = self.delay.as_mut() {
            std::task::ready!(delay.as_mut().poll(cx));
            let more = self.flow.wait(self.dir);
            if more.is_zero() {
                self.delay = None;
            } else {
                delay
                    .as_mut()
                    .reset(tokio::time::Instant::now() + more.min(RECHECK));
            }
        }
        std::task::Poll::Ready(())
    }

    /// Whether no piece of a frame is left to send.
    pub(crate) fn is_done(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next piece of a frame, once ready: what is left of the last one first, else
    /// `None` (read the next frame).
    pub(crate) fn take_piece(&mut self) -> Option<bytes::Bytes> {
        if self.rest.is_empty() {
            return None;
        }
        let piece = self.rest.split_to(self.rest.len().min(PIECE));
        self.moved(piece.len());
        Some(piece)
    }

    /// Sends `data` (a frame just read) a piece at a time: its first piece now.
    pub(crate) fn first_piece(&mut self, mut data: bytes::Bytes) -> bytes::Bytes {
        if data.len() > PIECE {
            self.rest = data.split_off(PIECE);
        }
        self.moved(data.len());
        data
    }

    /// A frame of `n` bytes went: the next waits as long as the shaping says.
    pub(crate) fn moved(&mut self, n: usize) {
        let wait = self.flow.charge(self.dir, n);
        if !wait.is_zero() {
            self.delay = Some(Box::pin(tokio::time::sleep(wait.min(RECHECK))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::target::Host;

    fn shaper(toml: &str) -> Arc<Shaper> {
        let settings = crate::config::Config::from_toml(toml, "t")
            .unwrap()
            .validate("t")
            .unwrap();
        Shaper::new(
            &settings.shaping,
            &Arc::new(crate::observe::stats::Stats::new()),
            None,
        )
        .unwrap()
    }

    fn facts<'a>(client: &str, host: &'a Host) -> Facts<'a> {
        Facts {
            client: client.parse().unwrap(),
            user: None,
            groups: &[],
            method: "GET",
            kind: crate::core::policy::Kind::Http,
            host,
            port: 80,
            at: jiff::Timestamp::now(),
        }
    }

    /// A reload builds a new shaper; the link's last hour goes on from the one it replaces.
    #[test]
    fn the_link_history_outlives_a_reload() {
        let first = shaper("[shaping]\ndown = \"1MB/s\"\n");
        lock(&first.history).push_back((0, HashMap::from([("10.0.0.7".to_owned(), 5_000)])));
        let settings = crate::config::Config::from_toml("[shaping]\ndown = \"2MB/s\"\n", "t")
            .unwrap()
            .validate("t")
            .unwrap();
        let stats = Arc::new(crate::observe::stats::Stats::new());
        let second = Shaper::new(&settings.shaping, &stats, Some(&first)).unwrap();
        let history = second.history();
        assert_eq!(history.len(), 1, "{history:?}");
        assert_eq!(history[0].clients, vec![("10.0.0.7".to_owned(), 5_000)]);
        // A shaper made afresh (at start) has none.
        assert!(Shaper::new(&settings.shaping, &stats, None)
            .unwrap()
            .history()
            .is_empty());
    }

    #[test]
    fn a_cap_holds_the_sum_of_a_clients_flows_and_is_forgotten_once_full_and_unheld() {
        let s =
            shaper("[[limits.rate]]\nname = \"c\"\nclients = [\"10.0.0.0/8\"]\ndown = \"1MB/s\"\n");
        let host = Host::Name("example.com".into());
        let (a, b) = (
            s.flow(&facts("10.0.0.1", &host), None).unwrap(),
            s.flow(&facts("10.0.0.1", &host), None).unwrap(),
        );
        assert!(
            s.flow(&facts("192.168.1.1", &host), None).is_none(),
            "not capped"
        );
        // 100 kB of burst, then each flow's bytes put the client's one bucket in debt.
        assert_eq!(a.charge(Dir::Down, 100_000), Duration::ZERO);
        let wait = b.charge(Dir::Down, 500_000);
        assert!(wait >= Duration::from_millis(450), "{wait:?}");
        assert!(a.wait(Dir::Down) >= Duration::from_millis(400));
        assert_eq!(lock(&s.caps).len(), 1);
        drop((a, b));
        // Held by no flow, but in debt: kept; once full again: forgotten.
        s.maybe_recompute(Instant::now() + Duration::from_millis(150));
        assert_eq!(lock(&s.caps).len(), 1);
        s.maybe_recompute(Instant::now() + Duration::from_secs(2));
        assert_eq!(lock(&s.caps).len(), 0);
    }
}
