//! Listeners and connections.
//!
//! Each connection's first byte picks its front door: `0x05` SOCKS5 and `0x04` SOCKS4 (when
//! `[socks]` serves them) go to [`crate::proxy::socks`], anything else to HTTP. The byte is
//! peeked, not read: one system call per connection, none per request.
//!
//! [`crate::runtime`] hands each bound listener to [`accept_loop`]. Each accepted connection
//! gets one task and one tracing span and is served by hyper's HTTP/1 server with upgrades on
//! (CONNECT needs them). The accept loop survives accept errors. On shutdown the listeners
//! close, idle connections close, and in-flight requests and tunnels get
//! `timeouts.shutdown_grace` to finish before they are cut.
//!
//! hyper's own header timeout also runs while a keep-alive connection is idle, so the two
//! client timeouts are kept here instead: [`crate::proxy::conn::ConnState`] follows each connection's phase
//! (waiting for a request head, or busy with an exchange), `WatchedIo` notes when a head
//! starts to arrive, and a per-connection watchdog closes the connection when a head is too
//! slow (`request_header`, answered `408`) or the connection idles too long (`keep_alive`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use http::StatusCode;

use crate::core::error::{EdgeError, ErrorKind};
use crate::core::policy::Builtin;
use crate::observe::access::PendingRecord;
use crate::proxy::admission::{Admit, Slot};
use crate::proxy::conn::{ConnState, Expiry, Standing, WatchedIo, Wire};
use crate::proxy::service::ProxyService;
use crate::proxy::socks;
use crate::proxy::state::ProxyState;

/// Binds a client listener on `addr` whose queue of connections not yet accepted holds
/// `backlog` (`limits.listen_backlog`; the kernel caps it at `net.core.somaxconn`). As with
/// tokio's own bind, the address can be bound again at once after a restart.
pub(crate) fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Accepts connections until `stop` (this listener removed, or shutdown); each connection
/// drains on `drain` (shutdown only).
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<ProxyState>,
    stop: CancellationToken,
    drain: CancellationToken,
    tls: bool,
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
                // An IPv4 client on a dual-stack `[::]` listener arrives as `::ffff:a.b.c.d`:
                // from here on it is the IPv4 client it is, for the policy, the records, the
                // names and the counters alike.
                let peer = canonical(peer);
                let settings = shared.settings();
                let conn = Arc::new(ConnState::new());
                let admitted = match shared.admission.admit(peer.ip(), conn, &settings.limits) {
                    Admit::Yes(slot) => (slot, None),
                    Admit::Refuse(refusal, slot) => (slot, Some(refusal)),
                    Admit::Shed => {
                        debug!(client = %peer, "connection shed: far over the connection limit");
                        // Best effort: a new socket's send buffer is empty. What the client
                        // has already sent is read first, so that closing sends a FIN, not a
                        // reset that could make its TCP drop the answer.
                        // A SOCKS greeting already there is answered in SOCKS.
                        let mut sent = [0u8; 4096];
                        let first = match stream.try_read(&mut sent) {
                            Ok(n) if n > 0 => Some(sent[0]),
                            _ => None,
                        };
                        let answer: &[u8] = match first {
                            Some(0x05) if settings.socks.enabled => &[5, 0xFF],
                            Some(0x04) if settings.socks.enabled && settings.socks.v4 => {
                                &[0, 0x5B, 0, 0, 0, 0, 0, 0]
                            }
                            _ => crate::core::limits::NO_ROOM_RESPONSE,
                        };
                        let _ = stream.try_write(answer);
                        continue;
                    }
                };
                let pressed = shared.admission.open() >= settings.limits.max_connections;
                drop(settings);
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
                        tls,
                    )
                    .instrument(tracing::info_span!(
                        "conn",
                        client = %crate::core::target::AddrText::socket(peer)
                    )),
                );
                if pressed {
                    // At the limit, each new connection makes room for the next: let this one
                    // read what its client sent (its task runs next on this thread) before
                    // more are accepted, so that a request already there is seen as begun.
                    tokio::task::yield_now().await;
                }
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
                Ok(local) => Some(canonical(local)),
                Err(e) => {
                    debug!(error = %e, "connection gone before it was served");
                    None
                }
            },
        }
    }
}

/// `addr` with an IPv4-mapped IPv6 address (`[::ffff:127.0.0.1]:80`) written as the IPv4
/// address it is (`127.0.0.1:80`).
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
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
    shared: Arc<ProxyState>,
    stop: CancellationToken,
    tls: bool,
) {
    let Some(local) = socket.prepare(&stream) else {
        return;
    };
    let settings = shared.settings();
    let timeouts = settings.timeouts.clone();
    let state = slot.conn().clone();
    if tls {
        drop(settings);
        // Boxed: the handshake and a TLS connection's state are large, and plain
        // connections, which never take this branch, need not carry them in their task.
        return Box::pin(serve_tls(
            stream,
            peer,
            local,
            (slot, refusal),
            shared,
            stop,
        ))
        .await;
    }
    if settings.socks.enabled {
        // The first byte tells SOCKS from HTTP; it is peeked, so hyper still reads it. A
        // client that sends nothing is closed quietly after `request_header`, as the
        // watchdog would; one closed to make room, or at shutdown, goes at once.
        // Biased, the byte first: when it is already there (the usual case), neither the
        // timer nor the waiters are registered.
        let first = tokio::select! {
            biased;
            first = first_byte(&stream) => first,
            _ = tokio::time::sleep(timeouts.request_header) => None,
            _ = state.evicted() => None,
            _ = stop.cancelled() => None,
        };
        let version = match first {
            None => return,
            Some(0x05) => Some(socks::Version::Five),
            Some(0x04) if settings.socks.v4 => Some(socks::Version::Four),
            Some(_) => None,
        };
        if let Some(version) = version {
            drop(settings);
            let accepted = socks::Accepted {
                stream,
                version,
                peer,
                local,
                slot,
                refusal,
            };
            // Boxed: inline, the SOCKS state machine would enlarge every connection's task
            // (a copy of it on each spawn, and its memory while the connection lives).
            return Box::pin(socks::serve(accepted, shared, stop)).await;
        }
    }
    drop(settings);
    // Tunnels opened on this connection hold its slot too: a tunnel counts in the limits.
    let slot = Arc::new(slot);
    let service = ProxyService::new(shared.clone(), peer, local, state.clone(), refusal, slot);
    serve_http(stream, peer, service, state, shared, stop).await
}

/// Serves a connection accepted on a TLS listener: the handshake, bounded like a request
/// head, then HTTP/2 or HTTP/1.1 as ALPN chose.
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    (slot, refusal): (Slot, Option<EdgeError>),
    shared: Arc<ProxyState>,
    stop: CancellationToken,
) {
    let settings = shared.settings();
    let timeouts = settings.timeouts.clone();
    let state = slot.conn().clone();
    let Some(server) = settings.tls.as_ref().map(|t| t.server.clone()) else {
        return;
    };
    drop(settings);
    // The handshake is bounded like a request head: a client that sends nothing, or
    // stalls half-way, is cut at `request_header`, and its slot goes with it.
    let handshake = tokio_rustls::TlsAcceptor::from(server).accept(stream);
    let done = tokio::select! {
        done = handshake => done.map_err(|e| e.to_string()),
        _ = tokio::time::sleep(timeouts.request_header) => Err(format!(
            "no TLS handshake within {} (timeouts.request_header)",
            humantime::format_duration(timeouts.request_header)
        )),
        _ = state.evicted() => return,
        _ = stop.cancelled() => return,
    };
    match done {
        Ok(stream) => {
            let service = ProxyService::new(
                shared.clone(),
                peer,
                local,
                state.clone(),
                refusal,
                Arc::new(slot),
            );
            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                serve_h2(stream, service, state, shared, stop).await;
            } else {
                serve_http(stream, peer, service, state, shared, stop).await;
            }
        }
        Err(e) => {
            shared.stats.tls_failed.fetch_add(1, Ordering::Relaxed);
            debug!(error = %e, "TLS handshake failed");
        }
    }
}

/// Serves HTTP/1.1 on `stream` (a socket, or TLS over one) until the connection ends: heads
/// timed by the watchdog, closed to make room, drained at shutdown.
async fn serve_http<S: Wire>(
    stream: S,
    peer: SocketAddr,
    service: ProxyService,
    state: Arc<ConnState>,
    shared: Arc<ProxyState>,
    stop: CancellationToken,
) {
    let settings = shared.settings();
    let timeouts = settings.timeouts.clone();
    let limits = &settings.limits;
    let io = TokioIo::new(WatchedIo::new(stream, state.clone()));
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
    // The watchdog has spoken; the connection is ending (closed by WatchedIo, or cut a
    // second later).
    let mut expired = false;
    let mut ending = false;
    let mut stop = Signal::new(&stop);
    let mut hard_stop = Signal::new(&shared.hard_stop);
    let mut cut = false;
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break result,
            _ = &mut stop, if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            expiry = state.watch(&timeouts), if !expired => {
                expired = true;
                if expiry == Expiry::Evicted && state.is_busy() {
                    // Told to make room just as a request arrived: that exchange finishes,
                    // and the connection closes after it.
                    debug!("closing the connection after this exchange, to make room");
                    state.close_after();
                    continue;
                }
                ending = true;
                debug!(?expiry, "closing the connection");
                if expiry == Expiry::SlowHead {
                    connection_record(&shared, peer, EdgeError::refusal(
                        ErrorKind::ClientTimeout,
                        Builtin::RequestHeader,
                        format!(
                            "the request head did not arrive within {} (timeouts.request_header)",
                            humantime::format_duration(timeouts.request_header)
                        ),
                    ));
                }
                // Polling the connection again lets WatchedIo end it (see `poll_read`).
                state.expire(expiry);
            }
            _ = tokio::time::sleep(Duration::from_secs(1)), if ending => {
                break Ok(());
            }
            // The grace period is over: an exchange still waiting for its answer gets a
            // 503 (the service watches the cut), and the connection has a moment to write it.
            _ = &mut hard_stop, if !cut => {
                cut = true;
                state.cut_now();
            }
            _ = tokio::time::sleep(CUT_WRITE), if cut => break Ok(()),
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
    if state.was_evicted() && state.head_begun() {
        // WatchedIo told the client `503` (see `poll_read`): the record says why.
        connection_record(
            &shared,
            peer,
            EdgeError::refusal(
                ErrorKind::Limit,
                Builtin::LimitsMaxConnections,
                "closed while its request head was arriving, to make room for a new connection at the connection limits",
            )
            .with_status(StatusCode::SERVICE_UNAVAILABLE),
        );
        return;
    }
    if let Err(e) = result {
        debug!(error = %e, "connection ended with an error");
        // hyper answered a head it could not parse itself; the record is still ours to write.
        if e.is_parse_too_large() || e.is_parse() {
            let (kind, status) = if e.is_parse_too_large() {
                if e.to_string().contains("URI") {
                    (ErrorKind::Limit, StatusCode::URI_TOO_LONG)
                } else {
                    (
                        ErrorKind::Limit,
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    )
                }
            } else {
                (ErrorKind::Client, StatusCode::BAD_REQUEST)
            };
            let reason = format!("the request could not be parsed: {e}");
            connection_record(
                &shared,
                peer,
                EdgeError::refusal(kind, Builtin::Request, reason).with_status(status),
            );
        }
    }
}

/// Serves HTTP/2 (negotiated by ALPN on a TLS listener) until the connection ends: each
/// stream an exchange of its own (a request, or a `CONNECT` tunnel, RFC 9113 §8.5), at most
/// `limits.max_streams_per_connection` at once, each with its own place in the connection
/// limits (see the service); pings keep a quiet connection honest; closed to make room when
/// it has no stream, drained at shutdown like an HTTP/1.1 connection.
async fn serve_h2(
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    service: ProxyService,
    state: Arc<ConnState>,
    shared: Arc<ProxyState>,
    stop: CancellationToken,
) {
    let (keep_alive, streams) = {
        let settings = shared.settings();
        (
            settings.timeouts.keep_alive,
            settings.limits.max_streams_per_connection,
        )
    };
    let conn = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(streams)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut draining = false;
    let mut stop = Signal::new(&stop);
    let mut hard_stop = Signal::new(&shared.hard_stop);
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break result,
            _ = &mut stop, if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = state.evicted() => break Ok(()),
            _ = &mut hard_stop => break Ok(()),
            // No stream for `keep_alive`: close, as an idle HTTP/1.1 connection is closed.
            _ = tokio::time::sleep(keep_alive), if !draining => {
                if let Standing::KeptAlive(since) | Standing::Silent(since) = state.standing() {
                    if since.elapsed() >= keep_alive {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "HTTP/2 connection ended with an error");
    }
}

/// The first byte a new connection sends, left in the socket; `None` when it closes first.
async fn first_byte(stream: &TcpStream) -> Option<u8> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) => Some(first[0]),
        _ => None,
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

/// How long a connection cut at the end of the shutdown grace period has to write the `503`
/// of an exchange still waiting for its answer.
const CUT_WRITE: Duration = Duration::from_millis(200);

/// Writes the record of a request that never reached the service.
fn connection_record(shared: &ProxyState, peer: SocketAddr, error: EdgeError) {
    let mut record = PendingRecord::open(shared.recorder.clone(), peer, "NONE");
    record.fail(error.kind, error.status.as_u16(), error.rule, error.reason);
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
}
