//! One client connection's state: its phase (waiting for a head, or busy with an
//! exchange) for the watchdog that times heads and idle connections, and the I/O wrapper
//! that notes when a head starts, scans it, and ends the connection when told.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Why the watchdog closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Idle between requests for `keep_alive`, or no byte at all: close quietly.
    Idle = 1,
    /// A request head started but did not complete within `request_header`: answer 408.
    SlowHead = 2,
    /// Closed to make room for a new connection at the connection limits
    /// ([`ConnState::evict`]): quietly when it was idle, with `503` when a head had started.
    Evicted = 3,
}

/// What a connection is doing, as the admission sees it when it must make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Serving an exchange or reading a request body.
    Busy,
    /// Kept alive between requests, since then.
    KeptAlive(Instant),
    /// New since then, and has sent nothing yet.
    Silent(Instant),
    /// A request head began to arrive then and is not complete.
    HeadBegun(Instant),
    /// Holding a tunnel that last moved a byte then.
    Tunnel(Instant),
    /// Already closing (timed out or made room).
    Closing,
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
    pub(crate) answered: AtomicBool,
    /// The shutdown grace period is over: an exchange still waiting for its answer is
    /// answered `503` at once ([`ConnState::cut`]).
    cut: AtomicBool,
    /// Told when the connection is closed to make room ([`ConnState::evict`]): its watchdog,
    /// or the relay of its tunnel, waits for it.
    evicted: tokio::sync::Notify,
    /// Set with that notice, for a waiter that registers after it ([`ConnState::evicted`]).
    evict_told: AtomicBool,
    /// A tunnel holds the connection: hyper is done with it and the relay moves its bytes.
    tunnel: AtomicBool,
    /// When the tunnel last moved a byte (ms since `start`).
    tunnel_activity: AtomicU64,
    /// The tunnel's `timeouts.tunnel_idle` in ms (0 until its relay starts).
    tunnel_idle: AtomicU64,
    /// The relay of the tunnel, to be told when it may have to end: made room for
    /// ([`ConnState::evict`]), idle ([`crate::proxy::admission::Admission::wake_idle_tunnels`])
    /// or cut at shutdown. A waker, not a timer per tunnel: every idle tunnel holds its state.
    tunnel_end: AtomicWaker,
}

/// Why a tunnel's relay must end, besides its two sides being done ([`ConnState::poll_tunnel_end`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TunnelEnd {
    /// No byte either way for its `tunnel_idle`.
    Idle,
    /// Closed to make room for a new connection at the connection limits.
    Evicted,
    /// The shutdown grace period ran out.
    Shutdown,
}

impl ConnState {
    pub(crate) fn new() -> Self {
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
            cut: AtomicBool::new(false),
            evicted: tokio::sync::Notify::new(),
            evict_told: AtomicBool::new(false),
            tunnel: AtomicBool::new(false),
            tunnel_activity: AtomicU64::new(0),
            tunnel_idle: AtomicU64::new(0),
            tunnel_end: AtomicWaker::new(),
        }
    }

    /// The tunnel's relay starts: it ends after `idle` without a byte either way.
    pub(crate) fn tunnel_relays(&self, idle: Duration) {
        let ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX).max(1);
        self.tunnel_idle.store(ms, Ordering::Relaxed);
    }

    /// The tunnel's `tunnel_idle`, once its relay has started.
    pub(crate) fn tunnel_idle(&self) -> Option<Duration> {
        let idle = self.tunnel_idle.load(Ordering::Relaxed);
        (idle != 0).then(|| Duration::from_millis(idle))
    }

    /// Whether the tunnel has moved no byte for its `tunnel_idle` (false before its relay
    /// starts).
    pub(crate) fn tunnel_idle_over(&self) -> bool {
        self.tunnel_idle()
            .is_some_and(|idle| self.tunnel_quiet_for() >= idle)
    }

    /// Tells the tunnel's relay to look whether it must end ([`ConnState::poll_tunnel_end`]).
    pub(crate) fn wake_tunnel(&self) {
        self.tunnel_end.wake();
    }

    /// Ready with the reason the tunnel's relay must end, if any: made room for, the
    /// shutdown grace period over (`hard_stop`), or idle for its `tunnel_idle`. Pending
    /// otherwise, to be polled again when [`ConnState::wake_tunnel`] is called (by
    /// [`ConnState::evict`], by the admission's sweep over idle tunnels, and at shutdown).
    pub(crate) fn poll_tunnel_end(
        &self,
        cx: &mut Context<'_>,
        hard_stop: &tokio_util::sync::CancellationToken,
    ) -> Poll<TunnelEnd> {
        // Registered first, then looked at: a wake between the two is not lost.
        self.tunnel_end.register(cx.waker());
        if self.evict_told.load(Ordering::Acquire) {
            Poll::Ready(TunnelEnd::Evicted)
        } else if hard_stop.is_cancelled() {
            Poll::Ready(TunnelEnd::Shutdown)
        } else if self.tunnel_idle_over() {
            Poll::Ready(TunnelEnd::Idle)
        } else {
            Poll::Pending
        }
    }

    /// The connection now holds a tunnel: from here on it stands as one, and the tunnel's
    /// bytes are noted with [`ConnState::tunnel_moved`].
    pub(crate) fn tunnel_opened(&self) {
        self.tunnel_activity.store(self.now_ms(), Ordering::Relaxed);
        self.tunnel.store(true, Ordering::Release);
    }

    /// The tunnel has just moved bytes.
    pub(crate) fn tunnel_moved(&self) {
        self.tunnel_activity.store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long ago the tunnel last moved a byte (zero before it opened).
    pub(crate) fn tunnel_quiet_for(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.tunnel_activity.load(Ordering::Relaxed)),
        )
    }

    /// What the connection is doing now (see [`Standing`]).
    pub(crate) fn standing(&self) -> Standing {
        let at = |ms: u64| self.start + Duration::from_millis(ms);
        if self.expired.load(Ordering::Acquire) != 0 {
            return Standing::Closing;
        }
        if self.tunnel.load(Ordering::Acquire) {
            return Standing::Tunnel(at(self.tunnel_activity.load(Ordering::Relaxed)));
        }
        if self.busy() {
            return Standing::Busy;
        }
        let head = self.head_started.load(Ordering::Acquire);
        let idle = self.idle_since.load(Ordering::Acquire);
        if head != NONE {
            Standing::HeadBegun(at(head))
        } else if idle == 0 {
            Standing::Silent(self.start)
        } else {
            Standing::KeptAlive(at(idle))
        }
    }

    /// Whether the connection was closed to make room ([`ConnState::evict`], then
    /// [`ConnState::expire`] with [`Expiry::Evicted`]).
    pub(crate) fn was_evicted(&self) -> bool {
        self.expired.load(Ordering::Acquire) == Expiry::Evicted as u8
    }

    /// Whether a request head has begun to arrive and is not complete.
    pub(crate) fn head_begun(&self) -> bool {
        self.head_started.load(Ordering::Acquire) != NONE
    }

    /// Tells the connection to close to make room for a new one: its watchdog (or its
    /// tunnel's relay) is told at once, and closes it unless an exchange has begun meanwhile
    /// (then it closes after that exchange).
    pub(crate) fn evict(&self) {
        self.evict_told.store(true, Ordering::Release);
        self.evicted.notify_waiters();
        self.tunnel_end.wake();
    }

    /// Completes once the connection has been told to make room, whenever that was.
    pub(crate) async fn evicted(&self) {
        let notified = self.evicted.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.evict_told.load(Ordering::Acquire) {
            return;
        }
        notified.await
    }

    /// Whether an exchange is in progress (an answer being sent or a request body read).
    pub(crate) fn is_busy(&self) -> bool {
        self.busy()
    }

    /// The shutdown grace period is over: the exchange waiting for an answer gets one now,
    /// and the connection closes after it.
    pub(crate) fn cut_now(&self) {
        self.close_after();
        self.cut.store(true, Ordering::Release);
    }

    /// Ready once [`ConnState::cut_now`] was called. A flag, with no waker of its own: the
    /// exchange runs in its connection's task, which polls it again as soon as the
    /// connection's loop has called `cut_now` (as for `answered`).
    pub(crate) fn cut(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|_| {
            if self.cut.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
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

    pub(crate) fn expire(&self, expiry: Expiry) {
        self.expired.store(expiry as u8, Ordering::Release);
    }

    /// Completes when the connection has idled for `keep_alive`, or a request head has taken
    /// longer than `request_header` (the first head is timed from the connection's start).
    ///
    /// The watchdog is not woken by requests (that would cost every request a wake-up): it
    /// looks at the connection's state at most every `request_header` and at each deadline,
    /// so a slow head is caught between one and two `request_header` periods after it began.
    pub(crate) async fn watch(&self, t: &crate::config::Timeouts) -> Expiry {
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
            tokio::select! {
                _ = tokio::time::sleep_until(self.start + Duration::from_millis(next)) => {}
                _ = self.evicted() => return Expiry::Evicted,
            }
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
pub(crate) struct WatchedIo<S = TcpStream> {
    inner: S,
    state: Arc<ConnState>,
    scan: HeadScan,
}

/// What a client connection is carried on: a plain socket, or TLS over one.
pub(crate) trait Wire: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Writes `bytes` now if the transport can, as they are (a short refusal before the
    /// connection closes); best effort, and nothing at all over TLS.
    fn answer_now(&self, bytes: &[u8]);
}

impl Wire for TcpStream {
    fn answer_now(&self, bytes: &[u8]) {
        let _ = self.try_write(bytes);
    }
}

impl Wire for tokio_rustls::server::TlsStream<TcpStream> {
    fn answer_now(&self, _: &[u8]) {}
}

impl<S: Wire> WatchedIo<S> {
    /// Watches `inner` for the connection whose state is `state`.
    pub(crate) fn new(inner: S, state: Arc<ConnState>) -> Self {
        WatchedIo {
            inner,
            state,
            scan: HeadScan::new(0),
        }
    }
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
    /// An `OPTIONS` request line whose target is in absolute form with an empty path and no
    /// query (`http://h:8080`, which `http::Uri` reads as `http://h:8080/`): a question about
    /// the origin as a whole, sent on as `OPTIONS *` (RFC 9112 §3.2.4). The method is matched
    /// without regard to case: the service checks it is `OPTIONS`.
    pub const EMPTY_PATH: u8 = 8;

    /// Whether the bit is set.
    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// Scans the raw bytes of a request head as they arrive, for what hyper's parsed request no
/// longer shows: a `#fragment` in the request line (`http::Uri` drops it), whether both
/// `Content-Length` and `Transfer-Encoding` were sent (hyper keeps only the latter), and an
/// `OPTIONS` target with an empty path ([`HeadFlags::EMPTY_PATH`]). It also rewrites a higher
/// minor version of HTTP/1 (`HTTP/1.2` … `HTTP/1.9`) to `HTTP/1.1` as its digit arrives, which
/// httparse would refuse (RFC 9112 §2.3: a recipient treats it as the highest minor version it
/// supports). Only the head is scanned; it stops at the blank line.
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
    /// The request line's spaces seen so far, up to the two around the target (httparse
    /// takes exactly one space between the parts).
    spaces: u8,
    /// Bytes of the version seen so far (after the second space), up to 8; 8 as well once
    /// they are not `HTTP/1.`.
    version_len: u8,
    /// The target of an `OPTIONS` request line, as read so far.
    options: Options,
}

/// How far the target of an `OPTIONS` request line has been read, for
/// [`HeadFlags::EMPTY_PATH`]: a scheme, `://`, then an authority up to the space, without a
/// `/` or `?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Options {
    /// Not an `OPTIONS` request line (or not known yet).
    Off,
    Scheme,
    Colon,
    Slash,
    Authority,
    /// Anything else: a path, a query, another form.
    Other,
}

impl Options {
    fn step(self, b: u8) -> Options {
        match (self, b) {
            (Options::Scheme, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'+' | b'-' | b'.') => {
                Options::Scheme
            }
            (Options::Scheme, b':') => Options::Colon,
            (Options::Colon, b'/') => Options::Slash,
            (Options::Slash, b'/') => Options::Authority,
            (Options::Authority, b'/' | b'?') => Options::Other,
            (Options::Authority | Options::Off, _) => self,
            _ => Options::Other,
        }
    }
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
            spaces: 0,
            version_len: 0,
            options: Options::Off,
        }
    }

    /// Feeds bytes; returns the [`HeadFlags`] bits found in them, and rewrites a higher minor
    /// version in place. Works a line at a time (`memchr` finds the ends), looking only at the
    /// start of each line, and on the request line at its two spaces and the version.
    fn feed(&mut self, bytes: &mut [u8]) -> u8 {
        const CONTENT_LENGTH: &[u8] = b"content-length:";
        const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";
        let mut flags = 0;
        let mut rest = bytes;
        while !self.done && !rest.is_empty() {
            let end = memchr::memchr(b'\n', rest);
            let at = end.unwrap_or(rest.len());
            let (part, after) = std::mem::take(&mut rest).split_at_mut(at);
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
            if self.line == 0 {
                if memchr::memchr(b'#', part).is_some() {
                    flags |= HeadFlags::FRAGMENT;
                }
                if self.version_len < 8 {
                    flags |= self.request_line(part);
                }
            }
            self.line_len += part.len();
            if end.is_none() {
                break;
            }
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
            rest = &mut after[1..];
        }
        flags
    }

    /// A piece of the request line (`part` starts at `self.line_len` in it; `start` already
    /// holds its beginning), until its version is read: finds the two spaces, follows an
    /// `OPTIONS` target between them, and rewrites the version's minor digit past `1`.
    fn request_line(&mut self, part: &mut [u8]) -> u8 {
        let mut flags = 0;
        let mut from = 0;
        while self.spaces < 2 {
            let space = if self.spaces == 0 {
                // A method is a few bytes: cheaper to look at them than to call `memchr`.
                part.iter().position(|&b| b == b' ')
            } else {
                memchr::memchr(b' ', &part[from..]).map(|at| from + at)
            };
            if self.options != Options::Off {
                for &b in &part[from..space.unwrap_or(part.len())] {
                    self.options = self.options.step(b);
                }
                if space.is_some() && self.options == Options::Authority {
                    flags |= HeadFlags::EMPTY_PATH;
                }
            }
            let Some(space) = space else {
                return flags;
            };
            if self.spaces == 0 && self.line_len + space == 7 && self.start[..7] == *b"options" {
                self.options = Options::Scheme;
            }
            self.spaces += 1;
            from = space + 1;
        }
        let version = &mut part[from..];
        if self.version_len == 0 && version.len() >= 8 {
            // The whole version at once, as it usually comes.
            if version[..7] == *b"HTTP/1." && (b'2'..=b'9').contains(&version[7]) {
                version[7] = b'1';
            }
            self.version_len = 8;
            return flags;
        }
        for b in version {
            match self.version_len {
                0..=6 if *b != b"HTTP/1."[self.version_len as usize] => {
                    self.version_len = 8;
                    break;
                }
                7 if (b'2'..=b'9').contains(b) => *b = b'1',
                8 => break,
                _ => {}
            }
            self.version_len += 1;
        }
        flags
    }
}

const REQUEST_TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 50\r\nConnection: close\r\n\r\nthe request head did not arrive in time; closing\n";

impl<S: Wire> AsyncRead for WatchedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.state.expired.load(Ordering::Acquire) {
            0 => {}
            e if e == Expiry::SlowHead as u8 => {
                // Best effort: the socket's send buffer is empty while a head is awaited.
                self.inner.answer_now(REQUEST_TIMEOUT_RESPONSE);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head timed out",
                )));
            }
            e if e == Expiry::Evicted as u8 && self.state.head_begun() => {
                // A head had begun: its sender is told why, as when no slot was free.
                self.inner.answer_now(crate::core::limits::NO_ROOM_RESPONSE);
                return Poll::Ready(Err(io::Error::other("closed to make room")));
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
        let new = &mut buf.filled_mut()[before..];
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

impl<S: Wire> AsyncWrite for WatchedIo<S> {
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

    fn scan(chunks: &[&[u8]]) -> HeadFlags {
        scan_rewritten(chunks).0
    }

    /// The flags, and the bytes as the scanner left them.
    fn scan_rewritten(chunks: &[&[u8]]) -> (HeadFlags, Vec<u8>) {
        let mut s = HeadScan::new(0);
        let mut out = Vec::new();
        let mut flags = 0;
        for chunk in chunks {
            let mut chunk = chunk.to_vec();
            flags |= s.feed(&mut chunk);
            out.extend_from_slice(&chunk);
        }
        (HeadFlags(flags), out)
    }

    /// The scanner as first written, a byte at a time: the reference for the line-wise one.
    /// On the request line it keeps the bytes so far and looks at them whole.
    fn scan_bytewise(bytes: &mut [u8]) -> u8 {
        let (mut flags, mut line, mut start, mut line_len) = (0, 0, Vec::new(), 0);
        let mut request_line = Vec::new();
        for b in bytes.iter_mut() {
            if *b == b'\n' {
                let blank = line_len == 0 || (line_len == 1 && start[0] == b'\r');
                if blank && line > 0 {
                    break;
                }
                if !blank || line > 0 {
                    line += 1;
                }
                start.clear();
                request_line.clear();
                line_len = 0;
                continue;
            }
            if line == 0 {
                if *b == b'#' {
                    flags |= HeadFlags::FRAGMENT;
                }
                let spaces: Vec<usize> = (0..request_line.len())
                    .filter(|&i| request_line[i] == b' ')
                    .collect();
                if *b == b' ' && spaces == [7] && options_with_empty_path(&request_line) {
                    flags |= HeadFlags::EMPTY_PATH;
                }
                if spaces.len() == 2
                    && request_line[spaces[1] + 1..] == *b"HTTP/1."
                    && (b'2'..=b'9').contains(b)
                {
                    *b = b'1';
                }
                request_line.push(*b);
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

    /// `OPTIONS TARGET` (any case) where TARGET is a scheme, `://` and an authority.
    fn options_with_empty_path(line: &[u8]) -> bool {
        if !line.to_ascii_lowercase().starts_with(b"options ") {
            return false;
        }
        let target = &line[8..];
        let Some(at) = target.windows(3).position(|w| w == b"://") else {
            return false;
        };
        let scheme_byte = |b: &u8| b.is_ascii_alphanumeric() || b"+-.".contains(b);
        target[..at].iter().all(scheme_byte) && !target[at + 3..].iter().any(|b| b"/?".contains(b))
    }

    #[test]
    fn the_line_wise_scanner_agrees_with_the_bytewise_one() {
        // Heads built from pieces that matter (names, near-names, fragments, blank lines,
        // bare and CR line ends), half of them after a request line built from parts that
        // matter (methods, targets with and without a path, versions), fed whole and split
        // at every point into two or three.
        let pieces: [&[u8]; 17] = [
            b"GET http://h/p HTTP/1.1",
            b"GET http://h/p#f HTTP/1.1",
            b"OPTIONS http://h HTTP/1.2",
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
            b" HTTP/1.2",
            b"#",
            b" ",
            b"",
        ];
        let methods: [&[u8]; 5] = [b"OPTIONS ", b"options ", b"GET ", b"OPTIONS", b"OPTIONSX "];
        let targets: [&[u8]; 11] = [
            b"http://h",
            b"http://h:8080",
            b"http://h/",
            b"http://h?q",
            b"h+t.p://u@h",
            b"x:/",
            b"a:b://h",
            b"*",
            b"/p",
            b"http://h#f",
            b"",
        ];
        let versions: [&[u8]; 9] = [
            b" HTTP/1.2",
            b" HTTP/1.9",
            b" HTTP/1.1",
            b" HTTP/1.",
            b" HTTP/2.0",
            b" HTTP/1.3 x",
            b" HTTP/1.24",
            b" HTTP/1.x",
            b" HTTP/1.2 HTTP/1.2",
        ];
        let mut x: u32 = 0x9e37_79b9;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as usize % n
        };
        let (mut empty_paths, mut rewritten) = (0, 0);
        for _ in 0..4_000 {
            let mut head = Vec::new();
            if next(2) == 0 {
                head.extend_from_slice(methods[next(methods.len())]);
                head.extend_from_slice(targets[next(targets.len())]);
                head.extend_from_slice(versions[next(versions.len())]);
            }
            for _ in 0..next(9) {
                head.extend_from_slice(pieces[next(pieces.len())]);
            }
            let mut want = head.clone();
            let want = (scan_bytewise(&mut want), want);
            empty_paths += usize::from(HeadFlags(want.0).has(HeadFlags::EMPTY_PATH));
            rewritten += usize::from(want.1 != head);
            let (flags, bytes) = scan_rewritten(&[&head]);
            let shown = String::from_utf8_lossy(&head);
            assert_eq!((flags.0, bytes), want, "{shown:?}");
            for cut in 0..=head.len() {
                let second = cut + next(head.len() - cut + 1);
                let (flags, bytes) =
                    scan_rewritten(&[&head[..cut], &head[cut..second], &head[second..]]);
                assert_eq!(
                    (flags.0, &bytes),
                    (want.0, &want.1),
                    "{shown:?} at {cut}, {second}"
                );
            }
        }
        // The mix reaches both: empty paths flagged, versions rewritten.
        assert!(
            empty_paths > 100 && rewritten > 100,
            "{empty_paths} {rewritten}"
        );
    }

    #[test]
    fn an_options_target_without_a_path_is_marked() {
        let marked = |line: &str| {
            scan(&[format!("{line}\r\nHost: h\r\n\r\n").as_bytes()]).has(HeadFlags::EMPTY_PATH)
        };
        for line in [
            "OPTIONS http://example.com HTTP/1.1",
            "OPTIONS http://example.com:8080 HTTP/1.1",
            "OPTIONS http://u@[::1]:8080 HTTP/1.1",
            "\r\nOPTIONS http://example.com HTTP/1.1",
        ] {
            assert!(marked(line), "{line}");
        }
        for line in [
            "OPTIONS http://example.com/ HTTP/1.1",
            "OPTIONS http://example.com?q HTTP/1.1",
            "OPTIONS http://example.com:8080/p HTTP/1.1",
            "OPTIONS * HTTP/1.1",
            "OPTIONS / HTTP/1.1",
            "GET http://example.com HTTP/1.1",
            "OPTIONSX http://example.com HTTP/1.1",
            "OPTIONS http://example.com",
        ] {
            assert!(!marked(line), "{line}");
        }
        // A field line is not a request line.
        let f = scan(&[b"GET / HTTP/1.1\r\nOPTIONS http://h HTTP/1.1\r\n\r\n"]);
        assert_eq!(f, HeadFlags(0));
    }

    #[test]
    fn a_higher_minor_version_is_read_as_http_1_1_wherever_its_digit_arrives() {
        let head = b"GET http://h/x HTTP/1.2\r\nHost: h\r\n\r\n";
        let want = b"GET http://h/x HTTP/1.1\r\nHost: h\r\n\r\n";
        for cut in 0..=head.len() {
            let (_, bytes) = scan_rewritten(&[&head[..cut], &head[cut..]]);
            assert_eq!(bytes, want, "{cut}");
        }
        let bytewise: Vec<&[u8]> = head.chunks(1).collect();
        assert_eq!(scan_rewritten(&bytewise).1, want);
        for (line, after) in [
            ("GET /x HTTP/1.9", "GET /x HTTP/1.1"),
            ("GET /x HTTP/1.0", "GET /x HTTP/1.0"),
            ("GET /x HTTP/2.0", "GET /x HTTP/2.0"),
            ("GET /x HTTP/1.x", "GET /x HTTP/1.x"),
            ("GET /x HTTP/1.", "GET /x HTTP/1."),
            // Not the version: the target, and a field line.
            ("GET HTTP/1.2 HTTP/1.1", "GET HTTP/1.2 HTTP/1.1"),
            (
                "GET / HTTP/1.1\r\nX: a HTTP/1.2",
                "GET / HTTP/1.1\r\nX: a HTTP/1.2",
            ),
        ] {
            let (_, bytes) = scan_rewritten(&[line.as_bytes()]);
            assert_eq!(String::from_utf8(bytes).unwrap(), after);
        }
        // The body is not touched.
        let (_, bytes) = scan_rewritten(&[b"POST / HTTP/1.1\r\n\r\nA B HTTP/1.2"]);
        assert_eq!(&bytes[..], b"POST / HTTP/1.1\r\n\r\nA B HTTP/1.2");
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
