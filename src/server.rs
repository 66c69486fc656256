//! Listeners, connections and shutdown.
//!
//! [`run`] takes listeners that are already bound (the binary binds them; tests bind
//! `127.0.0.1:0`) and a shutdown future. Each accepted connection gets one task and one
//! tracing span and is served by hyper's HTTP/1 server with upgrades on (CONNECT needs them).
//! The accept loop survives accept errors. On shutdown the listeners close, idle connections
//! close, and in-flight requests and tunnels get `timeouts.shutdown_grace` to finish before
//! they are cut.
//!
//! hyper's own header timeout also runs while a keep-alive connection is idle, so the two
//! client timeouts are kept here instead: [`ConnState`] follows each connection's phase
//! (waiting for a request head, or busy with an exchange), [`WatchedIo`] notes when a head
//! starts to arrive, and a per-connection watchdog closes the connection when a head is too
//! slow (`request_header`, answered `408`) or the connection idles too long (`keep_alive`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;

use http::StatusCode;

use crate::access::{PendingRecord, Recorder};
use crate::config::{LimitsConfig, Settings};
use crate::error::EdgeError;
use crate::policy::Decider;
use crate::reload::{Listeners, Reloadable, Running, Start};
use crate::service::{ProxyService, Shared};

/// Runs the proxy on `listeners` until `shutdown` completes, then drains: stops accepting,
/// lets in-flight requests and tunnels finish within `timeouts.shutdown_grace`, and returns.
pub async fn run(
    listeners: Vec<TcpListener>,
    settings: Settings,
    recorder: Recorder,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve(listeners, None, settings, recorder, None, shutdown).await
}

/// [`run`], with the admin listener (`/metrics`, `/status` …) on `admin` when given, and
/// reloads served when `reloadable` is given (its configuration's `listen` addresses in the
/// order of `listeners`).
pub async fn serve(
    listeners: Vec<TcpListener>,
    admin: Option<TcpListener>,
    mut settings: Settings,
    recorder: Recorder,
    reloadable: Option<Reloadable>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let admin_allow = settings
        .admin
        .as_ref()
        .map(|(_, allow)| allow.clone())
        .unwrap_or_default();
    // The admin listener as bound (its port may have been 0): never a destination.
    settings.policy.admin = admin.as_ref().and_then(|l| l.local_addr().ok());
    let reload_handle = reloadable.as_ref().map(|r| r.handle.clone());
    let shared = Arc::new(Shared::new(settings, recorder, reload_handle));
    let stop_accepting = CancellationToken::new();
    let tracker = shared.tracker.clone();

    // Each listener stops on its own token (a reload removes one), or on shutdown.
    let configured: Vec<SocketAddr> = match &reloadable {
        Some(r) => r.config.listen.clone(),
        None => Vec::new(),
    };
    let mut running = Listeners::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let actual = listener.local_addr()?;
        info!(addr = %actual, "listening");
        let stop = stop_accepting.child_token();
        let key = configured.get(i).copied().unwrap_or(actual);
        running.insert(
            key,
            Running {
                actual,
                stop: stop.clone(),
            },
        );
        tracker.spawn(accept_loop(
            listener,
            shared.clone(),
            stop,
            stop_accepting.clone(),
        ));
    }
    if let Some(admin) = admin {
        tracker.spawn(crate::admin::serve(
            admin,
            admin_allow,
            shared.clone(),
            stop_accepting.clone(),
        ));
    }
    if let Some(r) = reloadable {
        let (for_loops, drain) = (shared.clone(), stop_accepting.clone());
        let start: Start = Box::new(move |listener, stop| {
            for_loops.tracker.spawn(accept_loop(
                listener,
                for_loops.clone(),
                stop,
                drain.clone(),
            ));
        });
        // Not tracked: it ends when the channel does, and shutdown need not wait for it.
        tokio::spawn(crate::reload::worker(
            r.requests,
            r.source,
            r.config,
            running,
            shared.clone(),
            stop_accepting.clone(),
            start,
        ));
    }

    shutdown.await;
    let grace = shared.settings().timeouts.shutdown_grace;
    info!(grace = ?grace, "shutting down: no new connections; waiting for open requests and tunnels");
    stop_accepting.cancel();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        let tunnels: u64 = shared.stats.ports().iter().map(|p| p.active_tunnels).sum();
        warn!(
            tunnels,
            connections = shared.admission.open(),
            "grace period over: cutting {tunnels} open tunnels and what else is still open"
        );
        shared.hard_stop.cancel();
        // Cut tasks wind down at once; this bound only guards against a stuck one.
        let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
    }
    info!("stopped");
    Ok(())
}

/// Accepts connections until `stop` (this listener removed, or shutdown); each connection
/// drains on `drain` (shutdown only).
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    drain: CancellationToken,
) {
    let socket = AcceptedSocket::for_listener(&listener);
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let limits = shared.settings().limits.clone();
                let admitted = match shared.admission.admit(peer.ip(), &limits) {
                    Admit::Yes(slot) => (slot, None),
                    Admit::Refuse(refusal, slot) => (slot, Some(refusal)),
                    Admit::Drop => {
                        debug!(client = %peer, "connection dropped: far over the connection limit");
                        continue;
                    }
                };
                let shared_for_task = shared.clone();
                let stop_for_task = drain.clone();
                shared.tracker.spawn(
                    serve_connection(
                        stream,
                        peer,
                        socket,
                        admitted,
                        shared_for_task,
                        stop_for_task,
                    )
                    .instrument(tracing::info_span!(
                        "conn",
                        client = %crate::target::AddrText::socket(peer)
                    )),
                );
            }
            Err(e) => {
                // Out of file descriptors or memory, or a connection reset before accept:
                // none of these should end the proxy. Pause so a persistent error does not spin.
                warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// What an accept loop knows once about the sockets its listener will give: whether they
/// come with `TCP_NODELAY` already on, and their local address when the listener's is a
/// single one. Each saves a system call per connection.
#[derive(Clone, Copy, Debug)]
struct AcceptedSocket {
    /// `TCP_NODELAY` was set on the listener, and accepted sockets inherit it (Linux).
    nodelay_inherited: bool,
    /// The listener's address, unless it is a wildcard (`0.0.0.0`, `[::]`), where each
    /// connection's local address depends on the interface it came in on.
    local: Option<SocketAddr>,
}

impl AcceptedSocket {
    fn for_listener(listener: &TcpListener) -> AcceptedSocket {
        #[cfg(target_os = "linux")]
        let nodelay_inherited = rustix::net::sockopt::set_tcp_nodelay(listener, true).is_ok();
        #[cfg(not(target_os = "linux"))]
        let nodelay_inherited = false;
        AcceptedSocket {
            nodelay_inherited,
            local: listener.local_addr().ok().and_then(single_address),
        }
    }

    /// Sets what the socket did not inherit; returns its local address (`None`: the
    /// connection is already gone).
    fn prepare(&self, stream: &TcpStream) -> Option<SocketAddr> {
        if !self.nodelay_inherited {
            let _ = stream.set_nodelay(true);
        }
        match self.local {
            Some(local) => Some(local),
            None => match stream.local_addr() {
                Ok(local) => Some(local),
                Err(e) => {
                    debug!(error = %e, "connection gone before it was served");
                    None
                }
            },
        }
    }
}

/// `addr`, unless it stands for every address of the machine.
fn single_address(addr: SocketAddr) -> Option<SocketAddr> {
    (!addr.ip().is_unspecified()).then_some(addr)
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    socket: AcceptedSocket,
    (slot, refusal): (Slot, Option<EdgeError>),
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let Some(local) = socket.prepare(&stream) else {
        return;
    };
    let settings = shared.settings();
    let timeouts = settings.timeouts.clone();
    let state = Arc::new(ConnState::new());
    // Tunnels opened on this connection hold its slot too: a tunnel counts in the limits.
    let slot = Arc::new(slot);
    let service = ProxyService::new(shared.clone(), peer, local, state.clone(), refusal, slot);
    let limits = &settings.limits;
    let io = TokioIo::new(WatchedIo {
        inner: stream,
        state: state.clone(),
        scan: HeadScan::new(0),
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        // The watchdog times request heads (timeouts.request_header, answered 408); hyper's
        // own 30 s timer would arm and drop a boxed sleep for every request.
        .header_read_timeout(None)
        // No preserve_header_case: names reach clients in lower case, as over HTTP/2. Keeping
        // each message's spelling (a map per message, here and in the pooled client) cost 9%
        // of a proxied request's instructions.
        // hyper's own bounds sit above the limits, so that the service can answer heads just
        // over them with a reason; far larger heads get hyper's bare 431 or 414.
        .max_buf_size((limits.max_header_bytes + limits.max_request_line).max(8192))
        .max_headers(limits.max_headers * 2 + 16)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);

    let mut draining = false;
    let mut expired = false;
    let mut stop = Signal::new(&stop);
    let mut hard_stop = Signal::new(&shared.hard_stop);
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break result,
            _ = &mut stop, if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            expiry = state.watch(&timeouts), if !expired => {
                expired = true;
                debug!(?expiry, "closing the connection");
                if expiry == Expiry::SlowHead {
                    connection_record(&shared, peer, 408, "request_header", format!(
                        "the request head did not arrive within {} (timeouts.request_header)",
                        humantime::format_duration(timeouts.request_header)
                    ));
                }
                // Polling the connection again lets WatchedIo end it (see `poll_read`).
                state.expire(expiry);
            }
            _ = tokio::time::sleep(Duration::from_secs(1)), if expired => {
                break Ok(());
            }
            _ = &mut hard_stop => break Ok(()),
            // Checked whenever the task wakes; `poll_flush` wakes it when this becomes true.
            _ = std::future::poll_fn(|_| {
                if state.answered.load(Ordering::Acquire) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }) => {
                debug!("closing the connection: a request body was left unread");
                break Ok(());
            }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "connection ended with an error");
        // hyper answered a head it could not parse itself; the record is still ours to write.
        if e.is_parse_too_large() || e.is_parse() {
            let status = if e.is_parse_too_large() {
                if e.to_string().contains("URI") {
                    414
                } else {
                    431
                }
            } else {
                400
            };
            connection_record(
                &shared,
                peer,
                status,
                "request",
                format!("the request could not be parsed: {e}"),
            );
        }
    }
}

/// Completes when `token` is cancelled, like `token.cancelled()`, but cheaper to poll again:
/// a connection's task is woken a few times for every request, and registering the waiter
/// anew each time (a lock and a waker check in the token) cost about 1% of a proxied request.
/// Once registered with this task's waker, a poll only reads the token's flag: cancelling
/// wakes that waker.
struct Signal<'a> {
    token: &'a CancellationToken,
    waiter: Pin<Box<tokio_util::sync::WaitForCancellationFuture<'a>>>,
    registered: Option<std::task::Waker>,
}

impl<'a> Signal<'a> {
    fn new(token: &'a CancellationToken) -> Self {
        Signal {
            token,
            waiter: Box::pin(token.cancelled()),
            registered: None,
        }
    }
}

impl Future for Signal<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.token.is_cancelled() {
            return Poll::Ready(());
        }
        if let Some(waker) = &self.registered {
            if waker.will_wake(cx.waker()) {
                return Poll::Pending;
            }
        }
        let polled = self.waiter.as_mut().poll(cx);
        self.registered = polled.is_pending().then(|| cx.waker().clone());
        polled
    }
}

/// Writes the record of a request that never reached the service.
fn connection_record(
    shared: &Shared,
    peer: SocketAddr,
    status: u16,
    rule: &'static str,
    reason: String,
) {
    let mut record = PendingRecord::open(shared.recorder.clone(), peer, "NONE");
    record.fail(status, Some(Decider::Builtin(rule)), reason);
}

/// The outcome of [`Admission::admit`].
pub enum Admit {
    /// Served; the slot frees itself when dropped.
    Yes(Slot),
    /// Answered with this refusal, then closed; counted meanwhile.
    Refuse(EdgeError, Slot),
    /// Closed at once: so far over the limit that even a refusal costs too much.
    Drop,
}

/// Counts open client connections, in all and per client address (`[limits]`).
#[derive(Default)]
pub struct Admission {
    total: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

/// Connections answered with a refusal beyond the limit before new ones are dropped unanswered.
const REFUSAL_ALLOWANCE: usize = 64;

impl Admission {
    /// Admits a connection from `ip`, or says how to turn it away.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, limits: &LimitsConfig) -> Admit {
        let ip = ip.to_canonical();
        let total = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        let mut slot = Slot {
            admission: self.clone(),
            ip: None,
        };
        if total > limits.max_connections + REFUSAL_ALLOWANCE {
            return Admit::Drop;
        }
        if total > limits.max_connections {
            let refusal = EdgeError::refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "limits.max_connections",
                format!(
                    "the proxy is serving its maximum of {} connections; try again shortly",
                    limits.max_connections
                ),
            );
            return Admit::Refuse(refusal, slot);
        }
        let mut per_client = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_client.entry(ip).or_insert(0);
        if *count >= limits.max_connections_per_client {
            let refusal = EdgeError::refusal(
                StatusCode::TOO_MANY_REQUESTS,
                "limits.max_connections_per_client",
                format!(
                    "{ip} already has {} connections open, the most one client may have",
                    limits.max_connections_per_client
                ),
            );
            return Admit::Refuse(refusal, slot);
        }
        *count += 1;
        slot.ip = Some(ip);
        Admit::Yes(slot)
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// One admitted (or refused) connection's place in the counts; freed on drop.
pub struct Slot {
    admission: Arc<Admission>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let admission = &self.admission;
        admission.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut per_client = admission
                .per_client
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(count) = per_client.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_client.remove(&ip);
                }
            }
        }
    }
}

/// Why the watchdog closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Idle between requests for `keep_alive`, or no byte at all: close quietly.
    Idle = 1,
    /// A request head started but did not complete within `request_header`: answer 408.
    SlowHead = 2,
}

const NONE: u64 = u64::MAX;

/// What the watchdog and the I/O wrapper know about one client connection.
pub struct ConnState {
    start: Instant,
    /// Exchanges whose response has not been fully sent.
    in_flight: AtomicU32,
    /// When the connection last became idle (ms since `start`).
    idle_since: AtomicU64,
    /// When the first byte of the awaited request head arrived (ms since `start`), or NONE.
    head_started: AtomicU64,
    /// Set by the watchdog: an [`Expiry`] as u8, or 0.
    expired: AtomicU8,
    /// What [`HeadScan`] saw in the request head just read ([`HeadFlags`] bits).
    head_flags: AtomicU8,
    /// Bumped each time the connection becomes idle, so the scanner starts afresh.
    head_generation: AtomicU32,
    /// Request bodies still being read ([`BodyGuard`]s): the bytes that arrive are theirs.
    bodies: AtomicU32,
    /// A request body was left unread: its rest cannot be told from a next request, so no
    /// further request is read ([`WatchedIo`] ends the connection once its answer is sent).
    closing: AtomicBool,
    /// Closing, and the last answer has been written out: the connection can end.
    answered: AtomicBool,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            start: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(NONE),
            expired: AtomicU8::new(0),
            head_flags: AtomicU8::new(0),
            head_generation: AtomicU32::new(0),
            bodies: AtomicU32::new(0),
            closing: AtomicBool::new(false),
            answered: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// A request head has arrived: the exchange is in flight until its guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_started.store(NONE, Ordering::Release);
        InFlight(self.clone())
    }

    /// A request body is on its way: the connection stays busy until it has been read to its
    /// end. A body given up before its end closes the connection after the exchange.
    pub fn request_body(self: &Arc<Self>) -> BodyGuard {
        self.bodies.fetch_add(1, Ordering::SeqCst);
        BodyGuard {
            state: self.clone(),
            finished: false,
        }
    }

    /// Whether an answer is being sent or a request body read.
    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0 || self.bodies.load(Ordering::SeqCst) > 0
    }

    /// The last answer has been sent and the last body read: the connection is idle, and
    /// what arrives next is a request head.
    fn idle(&self) {
        self.idle_since
            .store(self.now_ms().max(1), Ordering::Release);
        self.head_started.store(NONE, Ordering::Release);
        self.head_flags.store(0, Ordering::Release);
        self.head_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// No further request is read on this connection once the current exchange is over.
    pub fn close_after(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Whether no further request is read (a request body given up before its end, or
    /// [`ConnState::close_after`]).
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// What the scanner saw in the head of the request being served; resets for the next.
    pub fn take_head_flags(&self) -> HeadFlags {
        HeadFlags(self.head_flags.swap(0, Ordering::AcqRel))
    }

    fn expire(&self, expiry: Expiry) {
        self.expired.store(expiry as u8, Ordering::Release);
    }

    /// Completes when the connection has idled for `keep_alive`, or a request head has taken
    /// longer than `request_header` (the first head is timed from the connection's start).
    ///
    /// The watchdog is not woken by requests (that would cost every request a wake-up): it
    /// looks at the connection's state at most every `request_header` and at each deadline,
    /// so a slow head is caught between one and two `request_header` periods after it began.
    async fn watch(&self, t: &crate::config::Timeouts) -> Expiry {
        let head_limit = t.request_header.as_millis() as u64;
        loop {
            let now = self.now_ms();
            let head = self.head_started.load(Ordering::Acquire);
            let idle = self.idle_since.load(Ordering::Acquire);
            let deadline = if self.busy() {
                // Busy: nothing to time here; look again later.
                None
            } else if head != NONE {
                Some((head + head_limit, Expiry::SlowHead))
            } else if idle == 0 {
                // A new connection that has sent nothing yet.
                Some((head_limit, Expiry::Idle))
            } else {
                Some((idle + t.keep_alive.as_millis() as u64, Expiry::Idle))
            };
            if let Some((at, expiry)) = deadline {
                if now >= at {
                    return expiry;
                }
            }
            let next = deadline.map_or(now + head_limit, |(at, _)| at.min(now + head_limit));
            tokio::time::sleep_until(self.start + Duration::from_millis(next)).await;
        }
    }
}

/// Holds a connection busy while an exchange is in flight; dropping it marks the end.
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.0;
        // SeqCst with the same in `BodyGuard`'s drop: of an answer and a body ending at
        // once, at least one sees the other's end.
        if state.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && state.bodies.load(Ordering::SeqCst) == 0
        {
            state.idle();
        }
    }
}

/// Held while a request body is read: the bytes that arrive meanwhile are the body's, not a
/// request head to time or scan.
pub struct BodyGuard {
    state: Arc<ConnState>,
    finished: bool,
}

impl BodyGuard {
    /// The body was read to its end: the connection can serve the next request.
    pub fn finished(mut self) {
        self.finished = true;
    }

    /// The connection the body arrives on.
    pub fn connection(&self) -> &Arc<ConnState> {
        &self.state
    }
}

impl Drop for BodyGuard {
    fn drop(&mut self) {
        let state = &self.state;
        if !self.finished {
            state.close_after();
        }
        if state.bodies.fetch_sub(1, Ordering::SeqCst) == 1
            && state.in_flight.load(Ordering::SeqCst) == 0
        {
            state.idle();
        }
    }
}

/// The client socket as hyper sees it: notes when a request head starts to arrive and ends
/// the connection when the watchdog says so.
pub(crate) struct WatchedIo {
    inner: TcpStream,
    state: Arc<ConnState>,
    scan: HeadScan,
}

impl WatchedIo {
    /// The socket, for a tunnel that takes the connection over from hyper.
    pub(crate) fn into_stream(self) -> TcpStream {
        self.inner
    }
}

/// What the head scanner saw, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeadFlags(pub u8);

impl HeadFlags {
    /// The request line carried a `#fragment` (which `http::Uri` drops silently).
    pub const FRAGMENT: u8 = 1;
    /// A `Content-Length` field.
    pub const CONTENT_LENGTH: u8 = 2;
    /// A `Transfer-Encoding` field.
    pub const TRANSFER_ENCODING: u8 = 4;

    /// Whether the bit is set.
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// Scans the raw bytes of a request head as they arrive, for what hyper's parsed request no
/// longer shows: a `#fragment` in the request line (`http::Uri` drops it), and whether both
/// `Content-Length` and `Transfer-Encoding` were sent (hyper keeps only the latter). Only
/// the head is scanned; it stops at the blank line.
#[derive(Debug, Clone)]
struct HeadScan {
    generation: u32,
    done: bool,
    line: u32,
    /// The start of the current line, lower-cased, up to the longest name looked for.
    start: [u8; 18],
    start_len: usize,
    /// Bytes of the current line so far (beyond `start` only counted).
    line_len: usize,
}

impl HeadScan {
    fn new(generation: u32) -> Self {
        HeadScan {
            generation,
            done: false,
            line: 0,
            start: [0; 18],
            start_len: 0,
            line_len: 0,
        }
    }

    /// Feeds bytes; returns the [`HeadFlags`] bits found in them. Works a line at a time
    /// (`memchr` finds the ends), looking only at the start of each line.
    fn feed(&mut self, bytes: &[u8]) -> u8 {
        const CONTENT_LENGTH: &[u8] = b"content-length:";
        const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";
        let mut flags = 0;
        let mut rest = bytes;
        while !self.done && !rest.is_empty() {
            let end = memchr::memchr(b'\n', rest);
            let part = &rest[..end.unwrap_or(rest.len())];
            if self.line == 0 && memchr::memchr(b'#', part).is_some() {
                flags |= HeadFlags::FRAGMENT;
            }
            let room = self.start.len() - self.start_len;
            if room > 0 {
                let take = room.min(part.len());
                for (slot, b) in self.start[self.start_len..].iter_mut().zip(&part[..take]) {
                    *slot = b.to_ascii_lowercase();
                }
                self.start_len += take;
                let start = &self.start[..self.start_len];
                if start.starts_with(CONTENT_LENGTH) {
                    flags |= HeadFlags::CONTENT_LENGTH;
                } else if start.starts_with(TRANSFER_ENCODING) {
                    flags |= HeadFlags::TRANSFER_ENCODING;
                }
            }
            self.line_len += part.len();
            let Some(end) = end else {
                break;
            };
            let blank = self.line_len == 0 || (self.line_len == 1 && self.start[0] == b'\r');
            // Leading blank lines before the request line are tolerated by hyper.
            if blank && self.line > 0 {
                self.done = true;
            }
            if !blank || self.line > 0 {
                self.line += 1;
            }
            self.start_len = 0;
            self.line_len = 0;
            rest = &rest[end + 1..];
        }
        flags
    }
}

const REQUEST_TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 50\r\nConnection: close\r\n\r\nthe request head did not arrive in time; closing\n";

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.state.expired.load(Ordering::Acquire) {
            0 => {}
            e if e == Expiry::SlowHead as u8 => {
                // Best effort: the socket's send buffer is empty while a head is awaited.
                let _ = self.inner.try_write(REQUEST_TIMEOUT_RESPONSE);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head timed out",
                )));
            }
            _ => return Poll::Ready(Ok(())),
        }
        if self.state.closing.load(Ordering::Acquire)
            && self.state.in_flight.load(Ordering::SeqCst) == 0
        {
            // Its answer is sent; the rest of a body nobody will read may follow: end the
            // connection as if the client had (whether a body is still awaited or not).
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !new.is_empty() && !this.state.busy() {
            let state = &this.state;
            if state.head_started.load(Ordering::Acquire) == NONE {
                state.head_started.store(state.now_ms(), Ordering::Release);
            }
            let generation = state.head_generation.load(Ordering::Acquire);
            if this.scan.generation != generation {
                this.scan = HeadScan::new(generation);
            }
            let flags = this.scan.feed(new);
            if flags != 0 {
                state.head_flags.fetch_or(flags, Ordering::AcqRel);
            }
        }
        result
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        let state = &self.state;
        if flushed.is_ready()
            && state.closing.load(Ordering::Acquire)
            && state.in_flight.load(Ordering::SeqCst) == 0
            && !state.answered.swap(true, Ordering::AcqRel)
        {
            // The last answer is out: the connection task ends the connection (hyper would
            // wait for a body that nobody reads any more).
            cx.waker().wake_by_ref();
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepted sockets get `TCP_NODELAY` (inherited from the listener where the system
    /// passes it on, set on each socket elsewhere) and the listener's local address; a
    /// wildcard listener's connections ask their socket.
    #[tokio::test]
    async fn accepted_sockets_have_nodelay_and_their_local_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let socket = AcceptedSocket::for_listener(&listener);
        assert_eq!(socket.local, Some(addr));
        for _ in 0..3 {
            let _client = TcpStream::connect(addr).await.unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            assert_eq!(socket.prepare(&stream), Some(addr));
            assert!(stream.nodelay().unwrap(), "{socket:?}");
        }
        // The listener's setting is what the saving rests on: without it, each socket is set.
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = plain.local_addr().unwrap();
        let unset = AcceptedSocket {
            nodelay_inherited: false,
            local: None,
        };
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = plain.accept().await.unwrap();
        assert!(!stream.nodelay().unwrap());
        assert_eq!(unset.prepare(&stream), Some(addr));
        assert!(stream.nodelay().unwrap());
        #[cfg(target_os = "linux")]
        assert!(socket.nodelay_inherited);
        for wildcard in ["0.0.0.0:3128", "[::]:3128"] {
            assert_eq!(single_address(wildcard.parse().unwrap()), None);
        }
        for single in ["192.168.1.2:3128", "[::1]:8080"] {
            let addr: SocketAddr = single.parse().unwrap();
            assert_eq!(single_address(addr), Some(addr));
        }
    }

    #[tokio::test]
    async fn a_signal_completes_when_its_token_is_cancelled() {
        let token = CancellationToken::new();
        let mut signal = Signal::new(&token);
        // Polled first with another waker (registered there), then awaited by this task
        // after some polls that only read the flag: the cancel must still wake it.
        let mut other = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut signal).poll(&mut other).is_pending());
        for _ in 0..3 {
            let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut signal).poll(cx)));
            assert!(polled.await.is_pending());
        }
        let canceller = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            canceller.cancel();
        });
        // The timer is looked at first: a signal that is only noticed when something else
        // wakes the task loses.
        tokio::select! {
            biased;
            _ = tokio::time::sleep(Duration::from_secs(3)) => panic!("the cancel did not wake the task"),
            _ = &mut signal => {}
        }
        // Already cancelled: ready at once.
        let token = CancellationToken::new();
        token.cancel();
        assert!(Pin::new(&mut Signal::new(&token))
            .poll(&mut other)
            .is_ready());
    }

    fn scan(chunks: &[&[u8]]) -> HeadFlags {
        let mut s = HeadScan::new(0);
        HeadFlags(chunks.iter().fold(0, |acc, c| acc | s.feed(c)))
    }

    /// The scanner as first written, a byte at a time: the reference for the line-wise one.
    fn scan_bytewise(bytes: &[u8]) -> u8 {
        let (mut flags, mut line, mut start, mut line_len) = (0, 0, Vec::new(), 0);
        for &b in bytes {
            if b == b'\n' {
                let blank = line_len == 0 || (line_len == 1 && start[0] == b'\r');
                if blank && line > 0 {
                    break;
                }
                if !blank || line > 0 {
                    line += 1;
                }
                start.clear();
                line_len = 0;
                continue;
            }
            if line == 0 && b == b'#' {
                flags |= HeadFlags::FRAGMENT;
            }
            if start.len() < 18 {
                start.push(b.to_ascii_lowercase());
                if start == b"content-length:" {
                    flags |= HeadFlags::CONTENT_LENGTH;
                } else if start == b"transfer-encoding:" {
                    flags |= HeadFlags::TRANSFER_ENCODING;
                }
            }
            line_len += 1;
        }
        flags
    }

    #[test]
    fn the_line_wise_scanner_agrees_with_the_bytewise_one() {
        // Heads built from pieces that matter (names, near-names, fragments, blank lines,
        // bare and CR line ends), fed whole and split at every point into two or three.
        let pieces: [&[u8]; 14] = [
            b"GET http://h/p HTTP/1.1",
            b"GET http://h/p#f HTTP/1.1",
            b"\r\n",
            b"\n",
            b"Content-Length: 5",
            b"content-length:5",
            b"Content-Length",
            b"Transfer-Encoding: chunked",
            b"TRANSFER-ENCODING:",
            b"Transfer-Encodin: x",
            b"X-A: #1",
            b" folded",
            b"#",
            b"",
        ];
        let mut x: u32 = 0x9e37_79b9;
        for _ in 0..3_000 {
            let mut head = Vec::new();
            for _ in 0..(x % 9) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                head.extend_from_slice(pieces[(x % pieces.len() as u32) as usize]);
            }
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let want = scan_bytewise(&head);
            assert_eq!(
                scan(&[&head]).0,
                want,
                "{:?}",
                String::from_utf8_lossy(&head)
            );
            for cut in 0..=head.len() {
                let second = cut + (x as usize % (head.len() - cut + 1));
                let got = scan(&[&head[..cut], &head[cut..second], &head[second..]]).0;
                assert_eq!(
                    got,
                    want,
                    "{:?} at {cut}, {second}",
                    String::from_utf8_lossy(&head)
                );
            }
        }
    }

    #[test]
    fn the_head_scanner_sees_what_hyper_hides() {
        let f = scan(&[b"GET http://h/p#frag HTTP/1.1\r\nHost: h\r\n\r\n"]);
        assert!(f.has(HeadFlags::FRAGMENT));
        let f = scan(&[b"GET http://h/p HTTP/1.1\r\nX-A: #1\r\n\r\n"]);
        assert_eq!(f, HeadFlags(0));
        let both =
            b"POST http://h/ HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let f = scan(&[both]);
        assert!(f.has(HeadFlags::CONTENT_LENGTH) && f.has(HeadFlags::TRANSFER_ENCODING));
        // Split anywhere, in any case.
        for cut in 1..both.len() {
            let f = scan(&[&both[..cut], &both[cut..]]);
            assert!(
                f.has(HeadFlags::CONTENT_LENGTH) && f.has(HeadFlags::TRANSFER_ENCODING),
                "{cut}"
            );
        }
        let f = scan(&[b"POST / HTTP/1.1\r\ncOnTeNt-LeNgTh: 5\r\n\r\nTransfer-Encoding: x\r\n"]);
        assert_eq!(
            f,
            HeadFlags(HeadFlags::CONTENT_LENGTH),
            "the body is not scanned"
        );
        let f = scan(&[b"\r\nGET / HTTP/1.1\r\nX-Content-Length: 1\r\n\r\n"]);
        assert_eq!(f, HeadFlags(0));
    }
}
