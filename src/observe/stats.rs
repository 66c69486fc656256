//! Live statistics of outbound port use: counters per destination port, per client address,
//! per user and per destination host, failures by kind, the tunnels open now, and each
//! client's recent refusals (for the self-service page). [`crate::observe::metrics`] renders
//! them for Prometheus.
//!
//! Everything is fed from the access record ([`AccessSink`]), plus the open/close of tunnels.
//! Records of the proxy's own pages (rule `local`) are left out: they are no traffic.
//! Per-port counters are atomics in lazily allocated blocks of 256 ports, so counting a
//! record costs a few uncontended atomic adds; the per-client, per-user and per-host tables
//! take one short lock per record and are bounded: past their cap, new keys are counted
//! under `other`, so a scan of many addresses cannot exhaust memory.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use crate::core::error::ErrorKind;
use crate::core::policy::{Builtin, Decider};
use crate::core::ports::service_name;
use crate::core::socks::UDP_METHOD;
use crate::core::sync::lock;
use crate::observe::access::{AccessRecord, AccessSink, Moved, Verdict};

/// Clients tracked one by one; more are counted together as `other`.
pub const CLIENT_CAP: usize = 1024;
/// Users tracked one by one; more are counted together as `other`.
pub const USER_CAP: usize = 1024;
/// Destination hosts tracked one by one; more are counted together as `other`.
pub const HOST_CAP: usize = 4096;
/// Refusals remembered per client address, newest first.
pub const DENIALS_PER_CLIENT: usize = 20;
/// Refusals remembered across all clients (for the status page).
pub const RECENT_DENIALS: usize = 50;

/// Counters of one port.
#[derive(Debug, Default)]
struct PortCell {
    http: AtomicU64,
    connect: AtomicU64,
    http_denied: AtomicU64,
    connect_denied: AtomicU64,
    socks: AtomicU64,
    socks_denied: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    active_tunnels: AtomicU64,
    datagrams_up: AtomicU64,
    datagrams_down: AtomicU64,
}

/// Datagrams and their payload bytes relayed each way to one destination port, by one UDP
/// association.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relayed {
    /// Datagrams client to destination.
    pub datagrams_up: u64,
    /// Their payload bytes.
    pub bytes_up: u64,
    /// Datagrams destination to client.
    pub datagrams_down: u64,
    /// Their payload bytes.
    pub bytes_down: u64,
}

impl Relayed {
    /// One datagram of `bytes` to the destination.
    pub fn add_up(&mut self, bytes: usize) {
        self.datagrams_up += 1;
        self.bytes_up += bytes as u64;
    }

    /// One datagram of `bytes` from it.
    pub fn add_down(&mut self, bytes: usize) {
        self.datagrams_down += 1;
        self.bytes_down += bytes as u64;
    }
}

/// A snapshot of one port's counters.
/// What the open client connections are doing, and how many were closed to make room or
/// shed at the connection limits (the admission counts them; `/metrics` and `/status` show
/// them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConnectionCounts {
    /// Every open client connection, those being refused and tunnels included.
    pub open: usize,
    /// Serving an exchange or reading a request body.
    pub busy: usize,
    /// Kept alive between requests.
    pub kept_alive: usize,
    /// Waiting for a request head (nothing sent yet, or a head begun).
    pub waiting: usize,
    /// Holding a tunnel that moved a byte lately.
    pub tunnels: usize,
    /// Holding a tunnel that has been quiet long enough to make room.
    pub idle_tunnels: usize,
    /// Closed to make room for a newcomer, by what they were doing.
    pub made_room: MadeRoom,
    /// Shed far over the limit with a fixed `503`.
    pub shed: u64,
}

/// Connections closed to make room, by what they were doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MadeRoom {
    /// Kept alive between requests.
    pub kept_alive: u64,
    /// Waiting for a request head.
    pub waiting: u64,
    /// Holding a quiet tunnel.
    pub idle_tunnel: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PortUse {
    /// The port.
    pub port: u16,
    /// Its service name, when known.
    pub service: Option<&'static str>,
    /// Plain-HTTP requests (any outcome).
    pub http_requests: u64,
    /// CONNECT requests (any outcome).
    pub connect_requests: u64,
    /// Plain-HTTP requests refused.
    pub http_denied: u64,
    /// CONNECT requests refused.
    pub connect_denied: u64,
    /// SOCKS requests and UDP associations (any outcome).
    pub socks_requests: u64,
    /// SOCKS requests refused.
    pub socks_denied: u64,
    /// Payload bytes client to destination.
    pub bytes_up: u64,
    /// Payload bytes destination to client.
    pub bytes_down: u64,
    /// Tunnels open now.
    pub active_tunnels: u64,
    /// Datagrams relayed to this port through SOCKS UDP associations.
    pub datagrams_up: u64,
    /// Datagrams relayed from it.
    pub datagrams_down: u64,
}

impl PortUse {
    /// Requests and tunnels together.
    pub fn total(&self) -> u64 {
        self.http_requests + self.connect_requests + self.socks_requests
    }

    /// Refused requests and tunnels together.
    pub fn denied(&self) -> u64 {
        self.http_denied + self.connect_denied + self.socks_denied
    }

    /// Whether anything went to this port: a request, a tunnel, a datagram, or the bytes of
    /// a download still going on.
    pub fn used(&self) -> bool {
        self.total() > 0
            || self.datagrams_up > 0
            || self.datagrams_down > 0
            || self.bytes_up > 0
            || self.bytes_down > 0
    }
}

/// Counters of one client, user or host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Requests and tunnels (any outcome).
    pub requests: u64,
    /// Of those, refused.
    pub denied: u64,
    /// Payload bytes client to destination.
    pub bytes_up: u64,
    /// Payload bytes destination to client.
    pub bytes_down: u64,
}

impl Usage {
    /// Counts the exchange of `r`, whose bytes not yet counted are `bytes`.
    fn add(&mut self, r: &AccessRecord, bytes: Moved) {
        self.requests += 1;
        if r.verdict == Verdict::Deny {
            self.denied += 1;
        }
        self.add_bytes(bytes);
    }

    fn add_bytes(&mut self, bytes: Moved) {
        self.bytes_up += bytes.up;
        self.bytes_down += bytes.down;
    }
}

/// A bounded table of usage by key; keys past the cap go to `other`.
#[derive(Debug)]
struct Table<K> {
    rows: HashMap<K, Usage>,
    other: Usage,
    cap: usize,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(cap: usize) -> Self {
        Table {
            rows: HashMap::new(),
            other: Usage::default(),
            cap,
        }
    }

    /// The row of `key`, made when there is room; `other` when there is not.
    fn row(&mut self, key: &K) -> &mut Usage {
        if !self.rows.contains_key(key) {
            if self.rows.len() >= self.cap {
                return &mut self.other;
            }
            // The key is copied only for a new row.
            self.rows.insert(key.clone(), Usage::default());
        }
        self.rows.get_mut(key).expect("the row is there")
    }

    fn snapshot(&self) -> (Vec<(K, Usage)>, Usage) {
        let mut rows: Vec<(K, Usage)> = self.rows.iter().map(|(k, v)| (k.clone(), *v)).collect();
        rows.sort_by(|a, b| {
            (b.1.bytes_up + b.1.bytes_down, b.1.requests)
                .cmp(&(a.1.bytes_up + a.1.bytes_down, a.1.requests))
        });
        (rows, self.other)
    }
}

/// A refusal as shown to the client it concerns and on the status page.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecentDenial {
    /// When (RFC 3339).
    pub time: String,
    /// The client.
    pub client: IpAddr,
    /// The method.
    pub method: String,
    /// `host:port` asked for.
    pub destination: String,
    /// The status answered.
    pub status: u16,
    /// What decided.
    pub rule: String,
    /// Why.
    pub reason: String,
}

/// All live statistics.
pub struct Stats {
    started: SystemTime,
    ports: Vec<OnceLock<Box<[PortCell]>>>,
    clients: Mutex<Table<IpAddr>>,
    users: Mutex<Table<String>>,
    hosts: Mutex<Table<String>>,
    denials: Mutex<Denials>,
    /// Failed exchanges by kind, indexed by the kind's place in [`ErrorKind::ALL`].
    errors: [AtomicU64; ErrorKind::ALL.len()],
    /// Access records the log dropped: it could not keep up, or could not write them.
    pub dropped_records: Arc<AtomicU64>,
    /// Access records syslog dropped: it could not keep up, or could not be reached.
    pub syslog_dropped: Arc<AtomicU64>,
    /// TLS handshakes on `listen_tls` that failed or did not finish in time.
    pub tls_failed: AtomicU64,
    /// Name resolutions: how long they took, and how many the cache answered.
    dns: DnsStats,
    /// Time shaped transfers were told to wait, microseconds, towards the clients and from.
    throttled_us: [AtomicU64; 2],
}

/// The upper bounds, in seconds, of the resolution-time histogram's buckets: a cache hit
/// takes microseconds, a server on the LAN a millisecond or so, one across the world 0.1 s;
/// the top buckets are for servers that answer late or not at all.
pub const DNS_BUCKETS: [f64; 12] = [
    0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Name resolutions, counted from the access records that carry one.
#[derive(Debug, Default)]
struct DnsStats {
    /// Resolutions per bucket of [`DNS_BUCKETS`] (not cumulative), and one past the last.
    buckets: [AtomicU64; DNS_BUCKETS.len() + 1],
    /// The sum of their times, in microseconds.
    sum_us: AtomicU64,
    /// Answered from the cache or the hosts file.
    hits: AtomicU64,
    /// A server was asked.
    misses: AtomicU64,
}

/// A snapshot of the resolutions, for the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsUse {
    /// Cumulative counts per bucket of [`DNS_BUCKETS`], then the total.
    pub cumulative: Vec<u64>,
    /// The sum of the times, in seconds.
    pub sum_seconds: f64,
    /// Answered without asking a server.
    pub hits: u64,
    /// A server was asked.
    pub misses: u64,
}

#[derive(Debug, Default)]
struct Denials {
    by_client: HashMap<IpAddr, VecDeque<RecentDenial>>,
    recent: VecDeque<RecentDenial>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    /// Empty statistics, started now.
    pub fn new() -> Self {
        Stats {
            started: SystemTime::now(),
            ports: (0..256).map(|_| OnceLock::new()).collect(),
            clients: Mutex::new(Table::new(CLIENT_CAP)),
            users: Mutex::new(Table::new(USER_CAP)),
            hosts: Mutex::new(Table::new(HOST_CAP)),
            denials: Mutex::new(Denials::default()),
            errors: Default::default(),
            dropped_records: Arc::default(),
            syslog_dropped: Arc::default(),
            tls_failed: AtomicU64::new(0),
            dns: DnsStats::default(),
            throttled_us: Default::default(),
        }
    }

    /// A shaped transfer was told to wait `wait` (`up`: bytes from the client).
    pub fn throttled(&self, up: bool, wait: std::time::Duration) {
        self.throttled_us[usize::from(up)].fetch_add(wait.as_micros() as u64, Ordering::Relaxed);
    }

    /// Seconds shaped transfers were told to wait so far: towards the clients, and from.
    pub fn throttled_seconds(&self) -> [f64; 2] {
        self.throttled_us
            .each_ref()
            .map(|us| us.load(Ordering::Relaxed) as f64 / 1e6)
    }

    /// Empty statistics whose dropped-record count is `dropped` (shared with the log).
    pub fn with_dropped_counter(dropped: Arc<AtomicU64>) -> Self {
        Stats {
            dropped_records: dropped,
            ..Stats::new()
        }
    }

    /// When counting started.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    fn port(&self, port: u16) -> &PortCell {
        let block = self.ports[usize::from(port >> 8)]
            .get_or_init(|| (0..256).map(|_| PortCell::default()).collect());
        &block[usize::from(port & 0xff)]
    }

    /// A tunnel to `port` opened.
    pub fn tunnel_opened(&self, port: u16) {
        self.port(port)
            .active_tunnels
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A UDP association relayed `relayed` to and from destination `port`. Its bytes are
    /// counted here, per port, and not again from the association's record.
    pub fn udp_relayed(&self, port: u16, relayed: &Relayed) {
        let cell = self.port(port);
        cell.datagrams_up
            .fetch_add(relayed.datagrams_up, Ordering::Relaxed);
        cell.datagrams_down
            .fetch_add(relayed.datagrams_down, Ordering::Relaxed);
        cell.bytes_up.fetch_add(relayed.bytes_up, Ordering::Relaxed);
        cell.bytes_down
            .fetch_add(relayed.bytes_down, Ordering::Relaxed);
    }

    /// A tunnel to `port` closed.
    pub fn tunnel_closed(&self, port: u16) {
        self.port(port)
            .active_tunnels
            .fetch_sub(1, Ordering::Relaxed);
    }

    /// Every port with any use, ascending.
    pub fn ports(&self) -> Vec<PortUse> {
        let mut out = Vec::new();
        for (block_index, block) in self.ports.iter().enumerate() {
            let Some(block) = block.get() else {
                continue;
            };
            for (i, cell) in block.iter().enumerate() {
                let port = ((block_index << 8) | i) as u16;
                let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
                let row = PortUse {
                    port,
                    service: service_name(port),
                    http_requests: load(&cell.http),
                    connect_requests: load(&cell.connect),
                    http_denied: load(&cell.http_denied),
                    connect_denied: load(&cell.connect_denied),
                    socks_requests: load(&cell.socks),
                    socks_denied: load(&cell.socks_denied),
                    bytes_up: load(&cell.bytes_up),
                    bytes_down: load(&cell.bytes_down),
                    active_tunnels: load(&cell.active_tunnels),
                    datagrams_up: load(&cell.datagrams_up),
                    datagrams_down: load(&cell.datagrams_down),
                };
                if row.used() || row.active_tunnels > 0 {
                    out.push(row);
                }
            }
        }
        out
    }

    /// Usage by client address, busiest first, and the `other` row.
    pub fn clients(&self) -> (Vec<(IpAddr, Usage)>, Usage) {
        lock(&self.clients).snapshot()
    }

    /// Usage by user, busiest first, and the `other` row.
    pub fn users(&self) -> (Vec<(String, Usage)>, Usage) {
        lock(&self.users).snapshot()
    }

    /// Usage by destination host, busiest first, and the `other` row.
    pub fn hosts(&self) -> (Vec<(String, Usage)>, Usage) {
        lock(&self.hosts).snapshot()
    }

    /// The recent refusals of one client address, newest first.
    pub fn denials_of(&self, client: IpAddr) -> Vec<RecentDenial> {
        lock(&self.denials)
            .by_client
            .get(&client.to_canonical())
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Failed exchanges by kind: every kind, in the order of [`ErrorKind::ALL`], 0 for those
    /// not seen.
    pub fn errors(&self) -> Vec<(ErrorKind, u64)> {
        ErrorKind::ALL
            .into_iter()
            .zip(&self.errors)
            .map(|(kind, n)| (kind, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// The resolutions counted so far.
    pub fn dns(&self) -> DnsUse {
        let mut total = 0;
        let cumulative = self
            .dns
            .buckets
            .iter()
            .map(|n| {
                total += n.load(Ordering::Relaxed);
                total
            })
            .collect();
        DnsUse {
            cumulative,
            sum_seconds: self.dns.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            hits: self.dns.hits.load(Ordering::Relaxed),
            misses: self.dns.misses.load(Ordering::Relaxed),
        }
    }

    /// The recent refusals of all clients, newest first.
    pub fn recent_denials(&self) -> Vec<RecentDenial> {
        lock(&self.denials).recent.iter().cloned().collect()
    }

    /// Counts into the rows of `r`'s client, user (when logged in) and host (when known).
    fn rows_of(&self, r: &AccessRecord, count: impl Fn(&mut Usage)) {
        count(lock(&self.clients).row(&r.client.ip().to_canonical()));
        if let Some(user) = &r.user {
            count(lock(&self.users).row(user));
        }
        if !r.host.is_empty() {
            count(lock(&self.hosts).row(&r.host));
        }
    }

    /// Adds `bytes` of the exchange of `r` to its destination port's counters.
    fn port_bytes(&self, r: &AccessRecord, bytes: Moved) {
        // A UDP association's bytes were counted per destination port as relayed
        // (`udp_relayed`); its record's port is only the first destination's.
        if r.port != 0 && r.method != UDP_METHOD {
            let cell = self.port(r.port);
            cell.bytes_up.fetch_add(bytes.up, Ordering::Relaxed);
            cell.bytes_down.fetch_add(bytes.down, Ordering::Relaxed);
        }
    }
}

impl AccessSink for Stats {
    /// The bytes of a download or tunnel still going on, into its port, client, user and
    /// host: what `/status`, the metrics and `portcullis top` read grows while it runs.
    fn progress(&self, r: &AccessRecord, bytes: Moved) {
        if r.rule == Decider::Builtin(Builtin::Local) {
            return;
        }
        self.port_bytes(r, bytes);
        self.rows_of(r, |row| row.add_bytes(bytes));
    }

    fn record(&self, r: &AccessRecord) {
        // The proxy's own pages (rule `local`: its page, PAC file, icon) are the proxy answering
        // for itself, not traffic through it, nor anyone's refusal: the access log keeps them,
        // the counters do not.
        if r.rule == Decider::Builtin(Builtin::Local) {
            return;
        }
        if r.port != 0 {
            let cell = self.port(r.port);
            let denied = r.verdict == Verdict::Deny;
            let (count, refused) = if r.method == "CONNECT" {
                (&cell.connect, &cell.connect_denied)
            } else if r.method.starts_with("SOCKS") {
                (&cell.socks, &cell.socks_denied)
            } else {
                (&cell.http, &cell.http_denied)
            };
            count.fetch_add(1, Ordering::Relaxed);
            if denied {
                refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        // The bytes the exchange did not report while it went on.
        let bytes = Moved {
            up: r.bytes_up.saturating_sub(r.progressed.up),
            down: r.bytes_down.saturating_sub(r.progressed.down),
        };
        self.port_bytes(r, bytes);
        if let Some(dns) = r.dns {
            let seconds = dns.took.as_secs_f64();
            let bucket = DNS_BUCKETS
                .iter()
                .position(|bound| seconds <= *bound)
                .unwrap_or(DNS_BUCKETS.len());
            self.dns.buckets[bucket].fetch_add(1, Ordering::Relaxed);
            self.dns
                .sum_us
                .fetch_add(dns.took.as_micros() as u64, Ordering::Relaxed);
            let hit_or_miss = if dns.cached {
                &self.dns.hits
            } else {
                &self.dns.misses
            };
            hit_or_miss.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(kind) = r.error {
            // The enum's order is ALL's (a test holds them together).
            if let Some(n) = self.errors.get(kind as usize) {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.rows_of(r, |row| row.add(r, bytes));
        if r.verdict == Verdict::Deny {
            let client = r.client.ip().to_canonical();
            let denial = RecentDenial {
                time: humantime::format_rfc3339_seconds(r.time).to_string(),
                client,
                method: r.method.clone(),
                destination: if r.port == 0 {
                    r.host.clone()
                } else {
                    format!("{}:{}", r.host, r.port)
                },
                status: r.status,
                rule: r.rule.to_string(),
                reason: r.reason.clone().unwrap_or_default(),
            };
            let mut denials = lock(&self.denials);
            if denials.by_client.len() < CLIENT_CAP || denials.by_client.contains_key(&client) {
                let list = denials.by_client.entry(client).or_default();
                list.push_front(denial.clone());
                list.truncate(DENIALS_PER_CLIENT);
            }
            denials.recent.push_front(denial);
            denials.recent.truncate(RECENT_DENIALS);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    /// A record of `client` asking `method` of port `port`, allowed (200) or refused (403).
    pub(crate) fn record(
        client: &str,
        method: &str,
        port: u16,
        verdict: Verdict,
        up: u64,
        down: u64,
    ) -> AccessRecord {
        AccessRecord {
            time: SystemTime::now(),
            client: format!("{client}:5000").parse().unwrap(),
            user: None,
            method: method.to_owned(),
            path: None,
            port,
            service: service_name(port),
            upstream: None,
            status: if verdict == Verdict::Allow { 200 } else { 403 },
            verdict,
            reason: (verdict == Verdict::Deny).then(|| "no".to_owned()),
            bytes_up: up,
            bytes_down: down,
            duration: Duration::ZERO,
            dns: None,
            throttled: None,
            ..AccessRecord::example()
        }
    }

    /// An exchange with `method` to example.com at `port`, allowed by `rule`, going on and
    /// recorded into `stats`.
    fn going_on(
        stats: &Arc<Stats>,
        method: &'static str,
        port: u16,
        rule: Builtin,
    ) -> crate::observe::access::PendingRecord {
        use crate::observe::access::{PendingRecord, Recorder};
        let recorder = Arc::new(Recorder::default().with_sink(stats.clone()));
        let mut pending =
            PendingRecord::open(recorder, "192.168.1.7:40000".parse().unwrap(), method);
        pending.destination("example.com".into(), port);
        pending.allow(rule);
        pending
    }

    /// The bytes down counted for `port`, if it has a row.
    fn port_down(stats: &Stats, port: u16) -> Option<u64> {
        let ports = stats.ports();
        ports.iter().find(|p| p.port == port).map(|p| p.bytes_down)
    }

    /// A long exchange's bytes reach the counters while it goes on, at most every
    /// `PROGRESS_EVERY`, and its end adds only the rest: every byte counted once.
    #[tokio::test]
    async fn bytes_count_while_an_exchange_goes_on_and_once_in_all() {
        use crate::observe::access::PROGRESS_EVERY;
        let stats = Arc::new(Stats::new());
        let pending = going_on(&stats, "CONNECT", 443, Builtin::PortsConnect);
        let host = |stats: &Stats| stats.hosts().0.first().map(|(_, u)| *u);
        let port_down = |stats: &Stats| port_down(stats, 443);
        let traffic = pending.traffic().clone();
        traffic.add(&traffic.down, 1000);
        traffic.add(&traffic.up, 10);
        // Not due yet: nothing counted.
        pending.progress();
        assert_eq!(host(&stats), None);
        tokio::time::sleep(PROGRESS_EVERY).await;
        pending.progress();
        let usage = host(&stats).expect("the host counted while the tunnel runs");
        assert_eq!(
            (usage.requests, usage.bytes_up, usage.bytes_down),
            (0, 10, 1000)
        );
        assert_eq!(port_down(&stats), Some(1000));
        assert_eq!(stats.clients().0[0].1.bytes_down, 1000);
        // Reported a moment ago: the next bytes wait for the next report, or the end.
        traffic.add(&traffic.down, 500);
        pending.progress();
        assert_eq!(port_down(&stats), Some(1000));
        drop(pending);
        let usage = host(&stats).unwrap();
        assert_eq!(
            (usage.requests, usage.bytes_up, usage.bytes_down),
            (1, 10, 1500)
        );
        assert_eq!(port_down(&stats), Some(1500));
        let client = stats.clients().0[0].1;
        assert_eq!((client.requests, client.bytes_down), (1, 1500));
    }

    /// An upload that goes on while the answer streams (nobody left to tell of its reports
    /// once the answer's head is in) does not keep the answer's body from reporting.
    #[tokio::test]
    async fn an_upload_beside_the_answer_leaves_the_reports_to_the_answer() {
        let stats = Arc::new(Stats::new());
        let pending = going_on(&stats, "POST", 80, Builtin::PortsHttp);
        let traffic = pending.traffic().clone();
        // 0.8 s: a request body frame every 10 ms (which finds reports due and tells
        // nobody), an answer frame every 50 ms (which reports when due).
        for tick in 0..80 {
            traffic.add(&traffic.up, 16 << 10);
            let _ = traffic.report_pending();
            if tick % 5 == 2 {
                traffic.add(&traffic.down, 64 << 10);
                pending.progress();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            port_down(&stats, 80).is_some_and(|down| down > 0),
            "the answer reported while it went on"
        );
    }

    #[test]
    fn counters_add_up_per_port_client_and_host() {
        let stats = Stats::new();
        for _ in 0..3 {
            stats.record(&record("192.168.1.2", "GET", 80, Verdict::Allow, 10, 1000));
        }
        stats.record(&record("192.168.1.2", "CONNECT", 25, Verdict::Deny, 0, 50));
        stats.record(&record(
            "192.168.1.3",
            "CONNECT",
            443,
            Verdict::Allow,
            500,
            5000,
        ));
        stats.tunnel_opened(443);
        let ports = stats.ports();
        assert_eq!(
            ports.iter().map(|p| p.port).collect::<Vec<_>>(),
            [25, 80, 443]
        );
        assert_eq!(
            (
                ports[1].http_requests,
                ports[1].bytes_up,
                ports[1].bytes_down
            ),
            (3, 30, 3000)
        );
        assert_eq!(
            (
                ports[0].connect_requests,
                ports[0].connect_denied,
                ports[0].service
            ),
            (1, 1, Some("smtp"))
        );
        assert_eq!(ports[2].active_tunnels, 1);
        stats.tunnel_closed(443);
        assert_eq!(stats.ports()[2].active_tunnels, 0);
        // SOCKS requests and UDP associations have counters of their own.
        stats.record(&record("192.168.1.9", "SOCKS5", 25, Verdict::Deny, 0, 0));
        stats.record(&record(
            "192.168.1.9",
            "SOCKS5-UDP",
            25,
            Verdict::Allow,
            4,
            9,
        ));
        let smtp = stats.ports()[0];
        assert_eq!(
            (
                smtp.socks_requests,
                smtp.socks_denied,
                smtp.connect_requests
            ),
            (2, 1, 1)
        );
        assert_eq!((smtp.total(), smtp.denied()), (3, 2));
        let (clients, other) = stats.clients();
        assert_eq!(clients[0].0, "192.168.1.3".parse::<IpAddr>().unwrap());
        assert_eq!(
            clients[1].1,
            Usage {
                requests: 4,
                denied: 1,
                bytes_up: 30,
                bytes_down: 3050
            }
        );
        assert_eq!(other, Usage::default());
        let denials = stats.denials_of("192.168.1.2".parse().unwrap());
        assert_eq!(denials.len(), 1);
        assert_eq!(denials[0].destination, "example.com:25");
        assert!(stats.denials_of("192.168.1.3".parse().unwrap()).is_empty());
    }

    #[test]
    fn the_proxys_own_pages_are_no_traffic() {
        let stats = Stats::new();
        let mut own = record("192.168.1.2", "GET", 3128, Verdict::Allow, 0, 0);
        own.rule = Decider::Builtin(Builtin::Local);
        stats.record(&own);
        own.status = 404;
        stats.record(&own);
        assert_eq!(stats.ports(), []);
        assert_eq!(stats.clients(), (vec![], Usage::default()));
        assert_eq!(stats.hosts(), (vec![], Usage::default()));
        assert!(stats.errors().iter().all(|(_, n)| *n == 0));
        assert!(stats.denials_of("192.168.1.2".parse().unwrap()).is_empty());
        // The same request through the proxy counts.
        own.rule = Decider::Builtin(Builtin::PortsHttp);
        stats.record(&own);
        assert_eq!(stats.ports()[0].http_requests, 1);
    }

    #[test]
    fn failures_are_counted_by_kind() {
        for (i, kind) in ErrorKind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i, "{kind}: ALL is in the enum's order");
        }
        let stats = Stats::new();
        let mut r = record("192.168.1.2", "GET", 80, Verdict::Allow, 0, 0);
        stats.record(&r);
        r.error = Some(ErrorKind::Refused);
        stats.record(&r);
        stats.record(&r);
        r.error = Some(ErrorKind::Shutdown);
        stats.record(&r);
        let errors = stats.errors();
        assert_eq!(errors.len(), ErrorKind::ALL.len());
        let count = |kind| errors.iter().find(|(k, _)| *k == kind).unwrap().1;
        assert_eq!(
            (
                count(ErrorKind::Refused),
                count(ErrorKind::Shutdown),
                count(ErrorKind::Dns)
            ),
            (2, 1, 0)
        );
    }

    #[test]
    fn tables_are_bounded() {
        let stats = Stats::new();
        for i in 0..(CLIENT_CAP + 100) {
            let ip = format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255);
            stats.record(&record(&ip, "GET", 80, Verdict::Deny, 0, 0));
        }
        let (clients, other) = stats.clients();
        assert_eq!(clients.len(), CLIENT_CAP);
        assert_eq!(other.requests, 100);
        assert!(lock(&stats.denials).by_client.len() <= CLIENT_CAP);
        assert_eq!(stats.recent_denials().len(), RECENT_DENIALS);
    }
}
