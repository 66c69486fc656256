//! The access record: one per request or tunnel, whatever its outcome, and the sinks that
//! receive it.
//!
//! A [`PendingRecord`] is opened when a request arrives and travels with it (into the response
//! body, or into the tunnel task); it is completed and handed to every [`AccessSink`] when it is
//! dropped, so a record is written exactly once even when a client vanishes mid-response.
//! Log formats, files and statistics read [`AccessRecord`]; they never see a request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::core::error::ErrorKind;
use crate::core::policy::{Builtin, Decider};

/// Whether the proxy let the request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed: forwarded, tunnelled or answered by the proxy's own pages.
    Allow,
    /// Refused by the policy or rejected as malformed.
    Deny,
}

impl Verdict {
    /// `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

/// One request or tunnel, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRecord {
    /// When the request arrived.
    pub time: SystemTime,
    /// The client's address and port.
    pub client: SocketAddr,
    /// The authenticated user, when `[auth]` is on and the request authenticated.
    pub user: Option<String>,
    /// The request method (`GET`, `CONNECT` …; `NONE` when no request could be read).
    pub method: String,
    /// The request's HTTP version (`HTTP/1.1`).
    pub version: &'static str,
    /// The path of a plain-HTTP request, without its query (which may hold secrets);
    /// `None` for tunnels.
    pub path: Option<String>,
    /// The destination host as the client named it (empty when the target was unreadable).
    pub host: String,
    /// The destination port (0 when unknown).
    pub port: u16,
    /// The port's service name, when the table knows it.
    pub service: Option<&'static str>,
    /// The address the proxy connected to, when it did.
    pub upstream: Option<SocketAddr>,
    /// The parent proxy the exchange went through (`host:port`), if any.
    pub parent: Option<String>,
    /// The status answered to the client (499 when the exchange ended before any answer:
    /// the client left, or the shutdown grace period ran out).
    pub status: u16,
    /// Allowed or refused.
    pub verdict: Verdict,
    /// What decided (`ports.http`, `clients.allow`, `rule "no ads"`, `local` …).
    pub rule: Decider,
    /// The one-line reason of a refusal or failure.
    pub reason: Option<String>,
    /// Why the exchange ended without the origin's answer, as a machine reads it (`None`
    /// when it did not, or ended for a reason that is nobody's failure).
    pub error: Option<ErrorKind>,
    /// Payload bytes from the client to the destination (request body, or tunnel upstream).
    pub bytes_up: u64,
    /// Payload bytes from the destination to the client (response body, or tunnel downstream).
    pub bytes_down: u64,
    /// From the request's arrival to the end of its response or tunnel.
    pub duration: Duration,
    /// How the destination's name was resolved, when this exchange resolved one (a
    /// request over a kept-alive origin connection did not).
    pub dns: Option<DnsLookup>,
    /// How long shaping (`[shaping]`, `[[limits.rate]]`) told the transfer to wait, summed
    /// over both directions; `None` when it never did.
    pub throttled: Option<Duration>,
    /// Of `bytes_up` and `bytes_down`, what the sinks were already told of while the exchange
    /// went on ([`AccessSink::progress`]); zero for an exchange too short to report any.
    pub progressed: Moved,
}

/// Payload bytes moved each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Client to destination.
    pub up: u64,
    /// Destination to client.
    pub down: u64,
}

/// How long resolving a destination's name took, and whether a server was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsLookup {
    /// From the start of the lookups to the last answer used.
    pub took: Duration,
    /// Answered from the resolver's cache or `/etc/hosts`, without asking a server.
    pub cached: bool,
}

#[cfg(test)]
impl AccessRecord {
    /// A plain-HTTP GET of example.com that the origin answered: the record tests start from.
    pub(crate) fn example() -> AccessRecord {
        AccessRecord {
            time: std::time::UNIX_EPOCH + Duration::from_millis(1_764_152_429_123),
            client: "192.168.1.20:50000".parse().unwrap(),
            user: Some("alice smith".into()),
            method: "GET".into(),
            version: "HTTP/1.1",
            path: Some("/index.html".into()),
            host: "example.com".into(),
            port: 80,
            service: Some("http"),
            upstream: Some("93.184.216.34:80".parse().unwrap()),
            parent: None,
            status: 200,
            verdict: Verdict::Allow,
            rule: Decider::Builtin(Builtin::PortsHttp),
            reason: None,
            error: None,
            bytes_up: 0,
            bytes_down: 5120,
            duration: Duration::from_millis(105),
            dns: None,
            throttled: None,
            progressed: Moved::default(),
        }
    }
}

/// A destination for access records.
pub trait AccessSink: Send + Sync + 'static {
    /// Takes one record. Must not block: it runs on the request path.
    fn record(&self, record: &AccessRecord);

    /// Takes the bytes an exchange still going on moved since it last reported, at most
    /// every [`PROGRESS_EVERY`] while bytes move; `ongoing` is its record so far. The final
    /// record's `progressed` says how much of its bytes came this way. Must not block.
    fn progress(&self, ongoing: &AccessRecord, moved: Moved) {
        let _ = (ongoing, moved);
    }
}

/// How often an exchange that moves bytes reports them to the sinks before it ends
/// ([`AccessSink::progress`]): live counters without a report per read.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Every sink a record goes to.
#[derive(Clone, Default)]
pub struct Recorder {
    sinks: Vec<Arc<dyn AccessSink>>,
    dropped: Arc<AtomicU64>,
}

impl Recorder {
    /// A recorder with no sinks.
    pub fn new() -> Self {
        Recorder::default()
    }

    /// The count of records a sink had to drop (a full log queue); the statistics show it.
    pub fn dropped_counter(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }

    /// Adds a sink.
    pub fn with_sink(mut self, sink: Arc<dyn AccessSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    fn emit(&self, record: &AccessRecord) {
        for sink in &self.sinks {
            sink.record(record);
        }
    }

    fn progress(&self, ongoing: &AccessRecord, moved: Moved) {
        for sink in &self.sinks {
            sink.progress(ongoing, moved);
        }
    }
}

/// Byte counters shared by the body or tunnel that moves the bytes and the pending record.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Client to destination.
    pub up: AtomicU64,
    /// Destination to client.
    pub down: AtomicU64,
    /// Microseconds shaping told the transfer to wait, both directions.
    pub throttled_us: AtomicU64,
    /// The byte budgets the exchange counts against (`[[quotas]]`), once they admitted it.
    pub meter: crate::observe::budget::MeterSlot,
    /// When the bytes moved are next due to be reported to the sinks, in ms of
    /// [`clock_ms`]; 0 until the first look ([`Traffic::report_due`]).
    report_at: AtomicU64,
}

/// Milliseconds on the process's monotonic clock (from its first reading).
fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl Traffic {
    /// Counts `n` bytes in the given direction (`up` or `down` of this traffic), and into
    /// the byte budgets the exchange counts against.
    pub fn add(&self, counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(meter) = self.meter.get() {
            meter.add(n);
        }
    }

    /// Whether the bytes moved are due to be reported, [`PROGRESS_EVERY`] after the last
    /// report (or after the first look), without taking the report: for a mover that does
    /// not hold the record and tells its holder (a request body). It stays
    /// due until the holder reports ([`Traffic::report_due`]).
    pub fn report_pending(&self) -> bool {
        self.due_since().is_some()
    }

    /// Whether the bytes moved are due to be reported ([`PendingRecord::progress`]), taking
    /// the report if so: true at most once every [`PROGRESS_EVERY`], the first time that
    /// long after the first look. Called by whoever holds the record as bytes move.
    pub fn report_due(&self) -> bool {
        let Some((at, now)) = self.due_since() else {
            return false;
        };
        // Of several looking at once, one takes the report.
        let next = now + PROGRESS_EVERY.as_millis() as u64;
        self.report_at
            .compare_exchange(at, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// When the report fell due, and now, if it is due; the first look starts the clock.
    fn due_since(&self) -> Option<(u64, u64)> {
        let now = clock_ms();
        let at = self.report_at.load(Ordering::Relaxed);
        if at == 0 {
            let next = now + PROGRESS_EVERY.as_millis() as u64;
            self.report_at.store(next, Ordering::Relaxed);
            return None;
        }
        (now >= at).then_some((at, now))
    }

    /// The quota (with `cut = true`) whose budget this exchange has used up, if any: the
    /// transfer stops.
    pub fn cut_by(&self) -> Option<&std::sync::Arc<str>> {
        self.meter.get()?.cut_by()
    }
}

/// The reason of a record whose exchange ended before any answer was sent.
const NO_ANSWER: &str = "no answer was sent: the client left, or the proxy shut down";

/// A record being filled in; emitted when dropped.
pub struct PendingRecord {
    record: AccessRecord,
    started: Instant,
    traffic: Arc<Traffic>,
    recorder: Arc<Recorder>,
    /// The bytes of `traffic` reported so far, up and down ([`PendingRecord::report`]).
    reported: [AtomicU64; 2],
}

impl PendingRecord {
    /// Opens the record of a request from `client` with `method`.
    pub fn open(recorder: Arc<Recorder>, client: SocketAddr, method: &str) -> Self {
        PendingRecord {
            record: AccessRecord {
                time: SystemTime::now(),
                client,
                user: None,
                method: method.to_owned(),
                version: "HTTP/1.1",
                path: None,
                host: String::new(),
                port: 0,
                service: None,
                upstream: None,
                parent: None,
                status: 499,
                verdict: Verdict::Deny,
                rule: Decider::Builtin(Builtin::Nothing),
                reason: Some(NO_ANSWER.into()),
                error: None,
                bytes_up: 0,
                bytes_down: 0,
                duration: Duration::ZERO,
                dns: None,
                throttled: None,
                progressed: Moved::default(),
            },
            started: Instant::now(),
            traffic: Arc::new(Traffic::default()),
            recorder,
            reported: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Called as bytes move: when a report is due ([`Traffic::report_due`]), tells the sinks
    /// what moved since the last one, so that counters by client, port and host grow during
    /// a long download or tunnel, not only at its end.
    pub fn progress(&self) {
        if self.traffic.report_due() {
            self.report();
        }
    }

    /// Tells the sinks what moved since the last report, now.
    fn report(&self) {
        let moved = self.unreported();
        if moved != Moved::default() {
            self.recorder.progress(&self.record, moved);
        }
    }

    /// The bytes moved since the last report, now counted as reported.
    fn unreported(&self) -> Moved {
        let since = |counter: &AtomicU64, reported: &AtomicU64| {
            let now = counter.load(Ordering::Relaxed);
            now.saturating_sub(reported.swap(now, Ordering::Relaxed))
        };
        Moved {
            up: since(&self.traffic.up, &self.reported[0]),
            down: since(&self.traffic.down, &self.reported[1]),
        }
    }

    /// The request's method, as recorded.
    pub fn method(&self) -> &str {
        &self.record.method
    }

    /// Sets the request's method (a SOCKS5 UDP association's record, opened as `SOCKS5`).
    pub fn set_method(&mut self, method: &str) {
        method.clone_into(&mut self.record.method);
    }

    /// The client the record is of.
    pub fn client(&self) -> SocketAddr {
        self.record.client
    }

    /// The counters that bodies and tunnels add to.
    pub fn traffic(&self) -> &Arc<Traffic> {
        &self.traffic
    }

    /// Sets the destination.
    pub fn destination(&mut self, host: String, port: u16) {
        self.record.service = crate::core::ports::service_name(port);
        self.record.host = host;
        self.record.port = port;
    }

    /// Sets the request's version and, for plain HTTP, its path.
    pub fn request(&mut self, version: &'static str, path: Option<&str>) {
        self.record.version = version;
        self.record.path = path.map(str::to_owned);
    }

    /// Sets the authenticated user.
    pub fn user(&mut self, user: &str) {
        self.record.user = Some(user.to_owned());
    }

    /// Notes the parent proxy the exchange goes through.
    pub fn parent(&mut self, name: &str) {
        self.record.parent = Some(name.to_owned());
    }

    /// Notes that resolving the destination's name took `took`, from the cache or not.
    pub fn resolved(&mut self, took: Duration, cached: bool) {
        self.record.dns = Some(DnsLookup { took, cached });
    }

    /// Sets the address the proxy connected to.
    pub fn upstream(&mut self, addr: SocketAddr) {
        self.record.upstream = Some(addr);
    }

    /// Marks the request allowed by `rule`.
    pub fn allow(&mut self, rule: impl Into<Decider>) {
        self.record.verdict = Verdict::Allow;
        self.record.rule = rule.into();
    }

    /// Notes the status answered to the client.
    pub fn answered(&mut self, status: u16) {
        self.record.status = status;
        self.record.reason = None;
    }

    /// Marks the request as ended by the proxy with `status` and `reason`, a failure of
    /// `kind`; `rule` is set when something refused it (the verdict is then `deny`); without
    /// it the verdict stays (an allowed request whose origin failed).
    pub fn fail(&mut self, kind: ErrorKind, status: u16, rule: Option<Decider>, reason: String) {
        if let Some(rule) = rule {
            self.record.verdict = Verdict::Deny;
            self.record.rule = rule;
        }
        self.record.status = status;
        self.record.reason = Some(reason);
        self.record.error = Some(kind);
    }

    /// Notes why an allowed exchange ended early (an origin or tunnel error) without
    /// changing its status.
    pub fn note(&mut self, reason: String) {
        self.record.reason = Some(reason);
    }

    /// Like [`PendingRecord::note`], for an end that is a failure of `kind` (a tunnel cut at
    /// the end of the shutdown grace period, an origin's body that broke off).
    pub fn note_failure(&mut self, kind: ErrorKind, reason: String) {
        self.record.reason = Some(reason);
        self.record.error = Some(kind);
    }
}

impl Drop for PendingRecord {
    fn drop(&mut self) {
        self.record.duration = self.started.elapsed();
        self.record.bytes_up = self.traffic.up.load(Ordering::Relaxed);
        self.record.bytes_down = self.traffic.down.load(Ordering::Relaxed);
        let throttled = self.traffic.throttled_us.load(Ordering::Relaxed);
        self.record.throttled = (throttled > 0).then(|| Duration::from_micros(throttled));
        self.record.progressed = Moved {
            up: self.reported[0].load(Ordering::Relaxed),
            down: self.reported[1].load(Ordering::Relaxed),
        };
        self.recorder.emit(&self.record);
    }
}
