//! The only place sockets to destinations and parent proxies open: resolve the name
//! ([`crate::egress::resolve`]), check every address against the policy before it is tried,
//! and race the addresses (Happy Eyeballs, RFC 8305), all within `timeouts.connect`.
//!
//! The race: the AAAA and A lookups run at once; connecting starts on the first answer (an
//! A answer waits up to [`RESOLUTION_DELAY`] for the AAAA one); the addresses are tried with
//! the families interleaved, IPv6 first; each attempt gets `timeouts.connect_attempt` before
//! the next one starts beside it, and a failed attempt starts the next at once; the first
//! connection made wins and the others are dropped. Addresses that arrive late join the
//! queue. A lookup still running when the race is won is finished in the background, so the
//! cache has both families for the next request.
//!
//! [`dial`] serves tunnels; [`Dialer`] wraps it as the connector of the pooled plain-HTTP
//! client, so both paths meet the same guards; `crate::egress::parent` dials parents
//! with the same race. Each address is checked by the plan's last step
//! (`crate::core::plan::check_address`); the port lists were checked by the plan before, so
//! a denied port never causes a DNS lookup.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

use arc_swap::ArcSwap;

use crate::config::Settings;
use crate::core::error::{EdgeError, ErrorKind};
use crate::core::plan;
use crate::core::policy::{Decider, Denial, Facts, Policy};
use crate::core::target::{parse_authority, Host, Target};
use crate::egress::express::{Express, STEP};
use crate::egress::resolve::{
    Family, LookupError, Lookups, Resolver, ResolverError, RESOLUTION_DELAY,
};

/// Why a destination could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Every address of the destination is refused by the policy (the first refusal).
    #[error("{0}")]
    Denied(Denial),
    /// The name did not resolve.
    #[error("DNS lookup of {host} failed: {error}")]
    Resolve {
        /// The name.
        host: String,
        /// The resolver's words.
        error: String,
    },
    /// The name resolved to no address.
    #[error("DNS lookup of {host} returned no address")]
    NoAddress {
        /// The name.
        host: String,
    },
    /// Every address refused or failed the connection (the last error).
    #[error("cannot connect to {target}{}: {error}", shown_address(target, addr))]
    Connect {
        /// `host:port` as asked.
        target: String,
        /// The address tried last.
        addr: SocketAddr,
        /// Why it failed.
        error: io::Error,
    },
    /// Connecting took longer than `timeouts.connect`.
    #[error("connecting to {target} timed out after {}", humantime::format_duration(*after))]
    TimedOut {
        /// `host:port` as asked.
        target: String,
        /// The timeout.
        after: Duration,
    },
    /// The DNS servers gave no address within `timeouts.connect`.
    #[error("DNS lookup of {host} did not finish within {}", humantime::format_duration(*after))]
    ResolveTimedOut {
        /// The name.
        host: String,
        /// The timeout.
        after: Duration,
    },
}

/// How a name was resolved for a dial: for the access record and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// From the start of the lookups to the last answer the dial used.
    pub took: Duration,
    /// Every answer came from the cache or `/etc/hosts`.
    pub cached: bool,
}

/// A connection made by [`dial`].
#[derive(Debug)]
pub struct Connected {
    /// The socket.
    pub stream: TcpStream,
    /// The address it is connected to (the one that won the race).
    pub addr: SocketAddr,
    /// The rule that allowed this address, when the decision needed it ([`crate::core::policy::Decision::NeedAddress`]).
    pub decider: Option<Decider>,
}

/// What every dial needs besides its target: the resolver, the connect timeouts and the
/// source addresses. Built at start and on each reload ([`Outbound::new`]).
pub struct Outbound {
    /// Names to addresses.
    pub resolver: Arc<Resolver>,
    /// `timeouts.connect`: the whole dial, lookups included.
    pub connect: Duration,
    /// `timeouts.connect_attempt`: how long an attempt runs alone.
    pub attempt: Duration,
    /// `upstream.bind`: the source address of each family.
    pub bind: Vec<IpAddr>,
    /// The light exchanges origin reads make room for; one per process, kept by rebuilds.
    pub express: Arc<Express>,
}

/// Why [`Outbound::new`] failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The resolver could not be built.
    #[error(transparent)]
    Resolver(#[from] ResolverError),
    /// An `upstream.bind` address is not one of this machine's.
    #[error("upstream.bind: {0} is not an address of this machine, so no connection could start from it")]
    NotLocal(IpAddr),
}

impl Outbound {
    /// The outbound side `settings` ask for; `previous` lends its resolver (and so its cache)
    /// when neither `[dns]` nor `/etc/resolv.conf` changed.
    pub fn new(
        settings: &Settings,
        previous: Option<&Outbound>,
    ) -> Result<Outbound, OutboundError> {
        if let Some(ip) = settings.bind.iter().find(|ip| !is_local_address(**ip)) {
            return Err(OutboundError::NotLocal(*ip));
        }
        let resolver = match previous {
            Some(previous) if previous.resolver.is_current(&settings.dns) => {
                previous.resolver.clone()
            }
            _ => Arc::new(Resolver::new(&settings.dns)?),
        };
        Ok(Outbound {
            resolver,
            connect: settings.timeouts.connect,
            attempt: settings.timeouts.connect_attempt,
            bind: settings.bind.clone(),
            express: previous.map_or_else(Arc::default, |p| p.express.clone()),
        })
    }

    /// The source address for a connection to `addr`, if one of its family is set.
    fn source_for(&self, addr: SocketAddr) -> Option<IpAddr> {
        self.bind
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == addr.is_ipv4())
    }
}

/// Resolves `target`, checks each address against `policy` (the hard guards, and the rules
/// when `facts` is given because the decision needs the address) and races the allowed
/// addresses, all within `timeouts.connect`. `dns` tells how the name was resolved.
pub async fn dial(
    out: &Outbound,
    policy: &Policy,
    target: &Target,
    facts: Option<&Facts<'_>>,
    dns: &mut Option<Resolved>,
) -> Result<Connected, DialError> {
    let check = |addr| plan::check_address(policy, target, facts, addr, &is_local_address);
    race(out, &target.host, target.port, &check, dns).await
}

/// The addresses of `target` that `policy` allows for `facts` (and the rule that allowed
/// each), in the order a race would try them, and whether any was refused. For plain HTTP
/// whose decision needs the address.
pub async fn allowed_addresses(
    out: &Outbound,
    policy: &Policy,
    target: &Target,
    facts: &Facts<'_>,
    dns: &mut Option<Resolved>,
) -> Result<Checked, DialError> {
    let addresses = match &target.host {
        Host::Ip(ip) => vec![*ip],
        Host::Name(name) => addresses_of(&out.resolver, name, out.connect, dns).await?,
    };
    let mut checked = Checked {
        allowed: Vec::new(),
        denied: None,
    };
    for ip in addresses {
        let addr = SocketAddr::new(ip, target.port);
        match plan::check_address(policy, target, Some(facts), addr, &is_local_address) {
            Ok(decider) => checked.allowed.push((addr, decider)),
            Err(denial) => {
                checked.denied.get_or_insert(denial);
            }
        }
    }
    match checked.denied {
        Some(denial) if checked.allowed.is_empty() => Err(DialError::Denied(denial)),
        _ => Ok(checked),
    }
}

/// The addresses of `name` in the order a race tries them (the families interleaved, IPv6
/// first), as the lookups give them within `timeout`: once some are known, the other family
/// gets the resolution delay, and a lookup still running then is finished in the
/// background. `dns` notes the resolution. For plain HTTP whose rules need the address, and
/// for `portcullis explain --resolve`.
pub async fn addresses_of(
    resolver: &Resolver,
    name: &str,
    timeout: Duration,
    dns: &mut Option<Resolved>,
) -> Result<Vec<IpAddr>, DialError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut queue = Candidates::default();
    let mut errors = Vec::new();
    let mut lookups = resolver.lookups(name);
    let mut until = deadline;
    loop {
        let answer = tokio::select! {
            answer = lookups.next() => answer,
            _ = tokio::time::sleep_until(until) => None,
        };
        let Some(answer) = answer else { break };
        note_answer(dns, started, answer.cached);
        match answer.result {
            Ok(ips) => {
                ips.into_iter().for_each(|ip| queue.push(ip));
                until = until.min(Instant::now() + RESOLUTION_DELAY);
            }
            Err(e) => errors.push(e),
        }
    }
    let nothing = queue.is_empty(false);
    if nothing && !lookups.is_done() {
        return Err(DialError::ResolveTimedOut {
            host: name.to_owned(),
            after: timeout,
        });
    }
    lookups.finish_in_background();
    if nothing {
        return Err(lookup_failure(&Host::Name(name.to_owned()), &errors));
    }
    Ok(std::iter::from_fn(|| queue.pop(false)).collect())
}

/// The addresses [`allowed_addresses`] found.
#[derive(Debug)]
pub struct Checked {
    /// The allowed addresses, each with the rule that allowed it, in race order.
    pub allowed: Vec<(SocketAddr, Option<Decider>)>,
    /// The first refusal, when some address was refused.
    pub denied: Option<Denial>,
}

/// A name's addresses waiting to be tried, by family; taken alternately, IPv6 first
/// (RFC 8305 §4).
#[derive(Default)]
struct Candidates {
    v6: VecDeque<IpAddr>,
    v4: VecDeque<IpAddr>,
    /// The family taken last was IPv6.
    last_v6: bool,
}

impl Candidates {
    fn push(&mut self, ip: IpAddr) {
        let queue = if ip.is_ipv6() {
            &mut self.v6
        } else {
            &mut self.v4
        };
        if !queue.contains(&ip) {
            queue.push_back(ip);
        }
    }

    /// The next address to try; IPv4 ones are held back while `hold_v4`.
    fn pop(&mut self, hold_v4: bool) -> Option<IpAddr> {
        let v4_first = self.last_v6 && !hold_v4;
        let ip = if v4_first {
            self.v4.pop_front().or_else(|| self.v6.pop_front())
        } else if hold_v4 {
            self.v6.pop_front()
        } else {
            self.v6.pop_front().or_else(|| self.v4.pop_front())
        }?;
        self.last_v6 = ip.is_ipv6();
        Some(ip)
    }

    fn is_empty(&self, hold_v4: bool) -> bool {
        self.v6.is_empty() && (hold_v4 || self.v4.is_empty())
    }
}

/// The resolution so far, after an answer that arrived `started.elapsed()` in.
fn note_answer(dns: &mut Option<Resolved>, started: Instant, cached: bool) {
    let cached = cached && dns.is_none_or(|d| d.cached);
    *dns = Some(Resolved {
        took: started.elapsed(),
        cached,
    });
}

/// The error of a name whose lookups gave no address: a missing name, a failure, or none.
fn lookup_failure(host: &Host, errors: &[LookupError]) -> DialError {
    let host = host.to_string();
    let worst = errors
        .iter()
        .find(|e| **e == LookupError::NoSuchName)
        .or_else(|| errors.iter().find(|e| matches!(e, LookupError::Failed(_))));
    match worst {
        Some(error) => DialError::Resolve {
            host,
            error: error.to_string(),
        },
        None => DialError::NoAddress { host },
    }
}

/// Happy Eyeballs to `host`:`port`: every address is checked by `check` before it is tried;
/// the first connection made wins. See the module's documentation.
pub(crate) async fn race(
    out: &Outbound,
    host: &Host,
    port: u16,
    check: &(dyn Fn(SocketAddr) -> Result<Option<Decider>, Denial> + Sync),
    dns: &mut Option<Resolved>,
) -> Result<Connected, DialError> {
    let started = Instant::now();
    let deadline = started + out.connect;
    let mut queue = Candidates::default();
    let mut lookups: Option<Lookups> = match host {
        Host::Ip(ip) => {
            queue.push(*ip);
            None
        }
        Host::Name(name) => Some(out.resolver.lookups(name)),
    };
    let mut attempts: JoinSet<(SocketAddr, io::Result<TcpStream>)> = JoinSet::new();
    let mut deciders: Vec<(SocketAddr, Option<Decider>)> = Vec::new();
    let mut next_at = started;
    // Set when A answered before AAAA: IPv4 waits this long for the IPv6 answer.
    let mut hold_v4: Option<Instant> = None;
    let mut lookup_errors = Vec::new();
    let (mut denied, mut failed) = (None, None);
    // Set when every address known has been refused or has failed while a lookup still
    // runs: the other family gets this long, not the whole connect timeout.
    let mut give_up_at: Option<Instant> = None;
    // One timer for the whole dial, not one a turn of the loop.
    let overall = tokio::time::sleep_until(deadline);
    tokio::pin!(overall);
    let result = loop {
        let now = Instant::now();
        if hold_v4.is_some_and(|until| now >= until) {
            hold_v4 = None;
        }
        let room = attempts.len() < MAX_ATTEMPTS_IN_FLIGHT;
        if room && (attempts.is_empty() || now >= next_at) {
            if let Some(ip) = queue.pop(hold_v4.is_some()) {
                let addr = SocketAddr::new(ip, port);
                match check(addr) {
                    Ok(decider) => {
                        deciders.push((addr, decider));
                        attempts.spawn(connect(addr, out.source_for(addr)));
                        next_at = now + out.attempt;
                    }
                    Err(denial) => {
                        denied.get_or_insert(denial);
                    }
                }
                continue;
            }
        }
        let resolving = lookups.as_ref().is_some_and(|l| !l.is_done());
        let exhausted = attempts.is_empty() && queue.is_empty(false);
        if exhausted && (!resolving || give_up_at.is_some_and(|at| now >= at)) {
            break Err(given_up(host, port, denied, failed, &lookup_errors));
        }
        if exhausted && give_up_at.is_none() && (denied.is_some() || failed.is_some()) {
            give_up_at = Some(now + LATE_FAMILY_WAIT);
        }
        let waiting = room && !attempts.is_empty() && !queue.is_empty(hold_v4.is_some());
        tokio::select! {
            answer = next_answer(&mut lookups), if resolving => {
                let Some(answer) = answer else { continue };
                note_answer(dns, started, answer.cached);
                let v6_pending = lookups.as_ref().is_some_and(|l| !l.is_done());
                match answer.result {
                    Ok(ips) => {
                        ips.into_iter().for_each(|ip| queue.push(ip));
                        if answer.family == Family::V4 && v6_pending && deciders.is_empty() {
                            hold_v4 = Some(Instant::now() + RESOLUTION_DELAY);
                        }
                    }
                    Err(e) => lookup_errors.push(e),
                }
                if answer.family != Family::V4 {
                    hold_v4 = None;
                }
            }
            joined = attempts.join_next(), if !attempts.is_empty() => {
                match joined {
                    Some(Ok((addr, Ok(stream)))) => {
                        let decider = deciders
                            .iter()
                            .find(|(a, _)| *a == addr)
                            .and_then(|(_, d)| d.clone());
                        break Ok(Connected { stream, addr, decider });
                    }
                    Some(Ok((addr, Err(error)))) => {
                        failed = Some((addr, error));
                        // A failed attempt lets the next one start at once.
                        next_at = Instant::now();
                    }
                    // The attempt task panicked or was cancelled: nothing to learn from it.
                    Some(Err(_)) | None => next_at = Instant::now(),
                }
            }
            _ = tokio::time::sleep_until(next_at), if waiting => {}
            _ = tokio::time::sleep_until(hold_v4.unwrap_or(deadline)), if hold_v4.is_some() => {}
            _ = tokio::time::sleep_until(give_up_at.unwrap_or(deadline)), if give_up_at.is_some() => {}
            _ = &mut overall => {
                break Err(if !attempts.is_empty() {
                    DialError::TimedOut { target: shown_target(host, port), after: out.connect }
                } else if denied.is_some() || failed.is_some() {
                    given_up(host, port, denied, failed, &lookup_errors)
                } else {
                    DialError::ResolveTimedOut { host: host.to_string(), after: out.connect }
                });
            }
        }
    };
    // The attempts still running are dropped with the set; a lookup still running is
    // finished in the background (bounded) so that the cache holds both families next time.
    if let Some(lookups) = lookups {
        lookups.finish_in_background();
    }
    result
}

/// Connection attempts of one dial running at once: a name with many addresses that do not
/// answer holds this many sockets at most.
const MAX_ATTEMPTS_IN_FLIGHT: usize = 8;
/// How long a dial whose known addresses were all refused or failed waits for the other
/// family's answer before it says so.
const LATE_FAMILY_WAIT: Duration = Duration::from_secs(1);

/// The error of a dial with nothing left to try. A refusal says more than a failed
/// connection: it holds whatever the network does (a name that leads back to the proxy is
/// refused, reachable or not).
fn given_up(
    host: &Host,
    port: u16,
    denied: Option<Denial>,
    failed: Option<(SocketAddr, io::Error)>,
    lookup_errors: &[LookupError],
) -> DialError {
    match (denied, failed) {
        (Some(denial), _) => DialError::Denied(denial),
        (None, Some((addr, error))) => DialError::Connect {
            target: shown_target(host, port),
            addr,
            error,
        },
        (None, None) => lookup_failure(host, lookup_errors),
    }
}

/// The next answer of `lookups`, when there are any.
async fn next_answer(lookups: &mut Option<Lookups>) -> Option<crate::egress::resolve::Answer> {
    match lookups {
        Some(lookups) => lookups.next().await,
        None => None,
    }
}

/// One attempt: a socket to `addr`, from `source` when set.
async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> (SocketAddr, io::Result<TcpStream>) {
    let attempt = async {
        let stream = match source {
            None => TcpStream::connect(addr).await?,
            Some(ip) => {
                let socket = if addr.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await?
            }
        };
        // Small writes (request heads, TLS records) should not wait for Nagle.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    };
    (addr, attempt.await)
}

/// `host:port` as errors name it.
fn shown_target(host: &Host, port: u16) -> String {
    format!("{host}:{port}")
}

/// ` (address)` when the target was a name, nothing when it was the address itself.
fn shown_address(target: &str, addr: &SocketAddr) -> String {
    if *target == addr.to_string() {
        String::new()
    } else {
        format!(" ({addr})")
    }
}

/// Whether `ip` is an address of this machine: binding a socket to it succeeds only then.
pub fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The connector of the pooled plain-HTTP client: [`dial`] behind `tower::Service<Uri>`.
#[derive(Clone)]
pub struct Dialer {
    settings: Arc<ArcSwap<Settings>>,
    outbound: Arc<ArcSwap<Outbound>>,
}

impl Dialer {
    /// A dialer that checks addresses against the policy in force when it dials, and dials
    /// with the outbound side in force then.
    pub fn new(settings: Arc<ArcSwap<Settings>>, outbound: Arc<ArcSwap<Outbound>>) -> Self {
        Dialer { settings, outbound }
    }
}

/// How the connection a pooled response came over was dialled, in the response's
/// extensions: its resolution is the first response's only (later ones reuse the connection).
#[derive(Debug, Clone)]
pub struct DialInfo {
    resolved: Option<Resolved>,
    taken: Arc<AtomicBool>,
}

impl DialInfo {
    /// The resolution, for the first exchange over the connection; `None` after.
    pub fn take_resolved(&self) -> Option<Resolved> {
        self.resolved
            .filter(|_| !self.taken.swap(true, Ordering::Relaxed))
    }
}

/// The pooled dialler's error: why, and how far resolution got.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct PooledDialError {
    /// Why the dial failed.
    pub error: DialError,
    /// The resolution, when one was made.
    pub resolved: Option<Resolved>,
}

/// A pooled client's connection to an origin or a parent proxy: a write that waits longer
/// than `stall` ([`crate::config::TimeoutsConfig::origin_write`]) for the peer to take bytes
/// fails, which ends the connection. hyper would otherwise keep a connection whose peer
/// stopped reading (an upload nobody takes) for as long as the peer likes, even after the
/// exchange was given up.
pub struct OriginIo {
    inner: TokioIo<TcpStream>,
    /// How it was dialled, for the first response over it.
    info: Option<DialInfo>,
    stall: Duration,
    /// Armed while a write waits; dropped when bytes move.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A connection to a parent proxy (requests go in absolute form).
    proxy: bool,
    /// While a light exchange waits beside a bulk one, a read moves at most [`STEP`] bytes.
    express: Arc<Express>,
}

impl OriginIo {
    /// Wraps `stream`; writes may wait `stall` at most; reads make room for the light
    /// exchanges `express` counts.
    pub fn new(stream: TcpStream, stall: Duration, proxy: bool, express: &Arc<Express>) -> Self {
        OriginIo {
            inner: TokioIo::new(stream),
            info: None,
            stall,
            timer: None,
            proxy,
            express: express.clone(),
        }
    }

    /// Passes a ready write through (and disarms the timer); a pending one fails once it
    /// has waited `stall`.
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.timer = None;
            return polled;
        }
        let stall = self.stall;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                StalledWrite(stall),
            ))),
        }
    }
}

/// The error of a write to an origin or parent that waited too long ([`OriginIo`]).
#[derive(Debug, thiserror::Error)]
#[error("the peer took no bytes for {}", humantime::format_duration(*.0))]
pub struct StalledWrite(pub Duration);

impl hyper_util::client::legacy::connect::Connection for OriginIo {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        let connected = self.inner.connected().proxy(self.proxy);
        match &self.info {
            Some(info) => connected.extra(info.clone()),
            None => connected,
        }
    }
}

impl hyper::rt::Read for OriginIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() > STEP && self.express.shortening() {
            // A short turn for the bulk transfer it may feed; through a buffer on the stack
            // (not zeroed first), as hyper's cursor cannot be narrowed without `unsafe`.
            let mut step = [std::mem::MaybeUninit::<u8>::uninit(); STEP];
            let mut read = tokio::io::ReadBuf::uninit(&mut step);
            std::task::ready!(tokio::io::AsyncRead::poll_read(
                Pin::new(self.inner.inner_mut()),
                cx,
                &mut read
            ))?;
            buf.put_slice(read.filled());
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for OriginIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.timed(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.timed(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.timed(cx, polled)
    }
}

impl tower_service::Service<http::Uri> for Dialer {
    type Response = OriginIo;
    type Error = PooledDialError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, PooledDialError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let settings = self.settings.load_full();
        let outbound = self.outbound.load_full();
        Box::pin(async move {
            // The forwarder built this URI from a checked target, so it parses.
            let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
            let mut resolved = None;
            let target = parse_authority(authority, Some(80)).map_err(|e| PooledDialError {
                error: DialError::Resolve {
                    host: authority.to_owned(),
                    error: e.to_string(),
                },
                resolved: None,
            })?;
            let connected = dial(&outbound, &settings.policy, &target, None, &mut resolved)
                .await
                .map_err(|error| PooledDialError { error, resolved })?;
            let mut io = OriginIo::new(
                connected.stream,
                settings.timeouts.origin_write(),
                false,
                &outbound.express,
            );
            io.info = Some(DialInfo {
                resolved,
                taken: Arc::default(),
            });
            Ok(io)
        })
    }
}

/// The most header fields an origin's response head may have (hyper's default is 100; a
/// page with many cookies and policies can go past that).
pub(crate) const RESPONSE_MAX_HEADERS: usize = 256;
/// The most bytes an origin's response head may take (hyper's default, made explicit).
pub(crate) const RESPONSE_MAX_HEAD: usize = 8192 + 4096 * 100;

/// The settings of every pooled HTTP client, to origins and to parent proxies: idle
/// connections kept a minute, up to 256 per destination (a LAN's browsers open many at once;
/// fewer made the proxy re-dial under load), header names in title case (`Content-Type`, the
/// form old servers expect), `Host` left as the proxy set it.
pub(crate) fn pooled_client() -> hyper_util::client::legacy::Builder {
    let mut builder =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
    builder
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .http1_title_case_headers(true)
        .http1_max_headers(RESPONSE_MAX_HEADERS)
        .http1_max_buf_size(RESPONSE_MAX_HEAD)
        .set_host(false);
    builder
}

impl From<DialError> for EdgeError {
    fn from(e: DialError) -> Self {
        EdgeError::from(&e)
    }
}

impl From<&DialError> for EdgeError {
    fn from(e: &DialError) -> Self {
        match e {
            DialError::Denied(d) => d.clone().into(),
            DialError::TimedOut { .. } => EdgeError::new(ErrorKind::Timeout, e.to_string()),
            DialError::ResolveTimedOut { .. } => EdgeError::new(ErrorKind::Dns, e.to_string())
                .with_status(http::StatusCode::GATEWAY_TIMEOUT),
            DialError::Resolve { .. } | DialError::NoAddress { .. } => {
                EdgeError::new(ErrorKind::Dns, e.to_string())
            }
            DialError::Connect { error, .. }
                if error.kind() == io::ErrorKind::ConnectionRefused =>
            {
                EdgeError::new(ErrorKind::Refused, e.to_string())
            }
            DialError::Connect { .. } => EdgeError::new(ErrorKind::Unreachable, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_failures_become_gateway_errors() {
        let e = EdgeError::from(DialError::TimedOut {
            target: "h:1".into(),
            after: std::time::Duration::from_secs(10),
        });
        assert_eq!(e.status, http::StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.side, crate::core::error::Side::Upstream);
        let e = EdgeError::from(DialError::NoAddress { host: "h".into() });
        assert_eq!(e.status, http::StatusCode::BAD_GATEWAY);
    }
}
