//! CONNECT tunnels: check the port, dial the destination, and only then answer `200` and relay
//! bytes both ways until both sides are done.
//!
//! A client's end of data (its FIN) is passed on to the origin while the other direction keeps
//! flowing, so half-closing protocols work. Bytes are counted as they are delivered, so the
//! record is right however the tunnel ends: both sides done, an error, `tunnel_idle` with no
//! byte either way, or the end of the shutdown grace period.
//!
//! A quiet direction waits for bytes without a buffer, then reads them into a small one it
//! lets go after passing them on, so an idle tunnel holds no buffer of its own. Once a read
//! fills it, the direction is busy: on Linux its bytes then
//! move socket → pipe → socket with `splice(2)` and never enter the proxy's memory; elsewhere,
//! or when no pipe can be had, through a 64 KiB heap buffer. A short read ends the burst and
//! gives the pipe or buffer back.

use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tracing::{debug, Instrument};

use crate::core::error::{EdgeError, ErrorKind};
use crate::core::plan::Go;
use crate::core::policy::{Facts, Kind};
use crate::core::target::Target;
use crate::egress::dial::{allowed_addresses, dial, Resolved};
use crate::egress::parent::Parents;
use crate::observe::access::{PendingRecord, Traffic};
use crate::proxy::admission::Slot;
use crate::proxy::body::UpBody;
use crate::proxy::conn::{ConnState, InFlight, WatchedIo};
use crate::proxy::shaper::{Dir, Flow};
use crate::proxy::window::{self, Window};
use crate::proxy::{exchange::Exchange, state::ProxyState};

/// Bytes a quiet direction of a tunnel reads at once, into a buffer taken once bytes are
/// there and given back once they are passed on: an idle tunnel holds no buffer.
const QUIET_BUFFER: usize = 512;
/// Bytes a busy direction reads at once, from a heap buffer it holds only while busy.
const BUSY_BUFFER: usize = 64 * 1024;

/// A destination dialled for a CONNECT request, waiting for the client's side to upgrade.
pub struct Dialled {
    upgrade: OnUpgrade,
    tunnel: Tunnel,
}

/// A dialled tunnel's destination end and what applies to it.
pub(crate) struct Tunnel {
    pub(crate) upstream: TcpStream,
    pub(crate) port: u16,
    /// `timeouts.tunnel_idle`.
    pub(crate) idle: Duration,
    pub(crate) flow: Option<Box<Flow>>,
    pub(crate) window: Option<Box<Window>>,
}

/// The shaping of a tunnel to `target` (`[shaping]`, `[[limits.rate]]`), when anything
/// shapes it; `upstream` is the address dialled.
pub(crate) fn flow(
    ex: &Exchange,
    target: &Target,
    kind: Kind,
    upstream: Option<std::net::IpAddr>,
) -> Option<Box<Flow>> {
    crate::proxy::shaper::flow_of(ex, target, kind, upstream).map(Box::new)
}

/// Dials a CONNECT destination the plan allowed as `go` (through `parents` when it routes
/// through them). The caller answers 200 and spawns [`relay`].
pub async fn open(
    ex: &mut Exchange,
    mut req: Request<Incoming>,
    target: Target,
    go: Go,
    parents: Option<Arc<Parents<UpBody>>>,
) -> Result<Dialled, EdgeError> {
    let upstream = connect(ex, &target, &go, parents, Kind::Connect).await?;
    ex.record.answered(200);
    let dialled_ip = upstream.peer_addr().ok().map(|a| a.ip());
    Ok(Dialled {
        upgrade: hyper::upgrade::on(&mut req),
        tunnel: Tunnel {
            upstream,
            port: target.port,
            idle: ex.settings.timeouts.tunnel_idle,
            flow: flow(ex, &target, Kind::Connect, dialled_ip),
            window: window::of(ex, &target, Kind::Connect, dialled_ip),
        },
    })
}

/// Connects to a tunnel's destination, allowed by the plan as `go`, directly or through
/// `parents`: the dial of CONNECT and of SOCKS alike (the method is the record's).
pub(crate) async fn connect(
    ex: &mut Exchange,
    target: &Target,
    go: &Go,
    parents: Option<Arc<Parents<UpBody>>>,
    kind: Kind,
) -> Result<TcpStream, EdgeError> {
    let settings = ex.settings.clone();
    let user = ex.user.clone();
    let groups = ex.groups.clone();
    let method = ex.record.method().to_owned();
    let facts = Facts {
        client: ex.client.ip(),
        user: user.as_deref(),
        groups: &groups,
        method: &method,
        kind,
        host: &target.host,
        port: target.port,
        at: jiff::Timestamp::now(),
    };
    let per_address = go.decides_per_address().then_some(&facts);
    let outbound = ex.shared.outbound.load_full();
    let mut resolved = None;
    let upstream = match &parents {
        Some(parents) => {
            // The parent resolves names (the plan checked a literal address already); a rule
            // that needs the address gets it from a lookup here.
            if let Some(facts) = per_address {
                let checked =
                    allowed_addresses(&outbound, &settings.policy, target, facts, &mut resolved)
                        .await;
                note_resolved(ex, resolved);
                if let Some((_, Some(decider))) = checked?.allowed.into_iter().next() {
                    ex.record.allow(decider);
                }
            }
            let (stream, addr, parent) = match parents.tunnel(target).await {
                Ok(connected) => connected,
                Err(e) => {
                    ex.record.parent(e.parent());
                    return Err(EdgeError::new(ErrorKind::Parent, e.to_string()));
                }
            };
            ex.record.parent(&parent);
            ex.record.upstream(addr);
            stream
        }
        None => {
            let connected = dial(
                &outbound,
                &settings.policy,
                target,
                per_address,
                &mut resolved,
            )
            .await;
            note_resolved(ex, resolved);
            let connected = connected?;
            if let Some(decider) = connected.decider {
                ex.record.allow(decider);
            }
            ex.record.upstream(connected.addr);
            connected.stream
        }
    };
    Ok(upstream)
}

/// Notes in the record how the destination's name was resolved, when it was.
pub(crate) fn note_resolved(ex: &mut Exchange, resolved: Option<Resolved>) {
    if let Some(r) = resolved {
        ex.record.resolved(r.took, r.cached);
    }
}

/// How a tunnel ended.
#[derive(Debug)]
enum End {
    /// Both sides finished.
    Done,
    /// No byte either way for `tunnel_idle`.
    Idle,
    /// The shutdown grace period ran out.
    Shutdown,
    /// Closed while idle to make room for a new connection at the connection limits.
    Evicted,
    /// Cut when a rule's window closed (`times_cut`), for this reason.
    Closed(String),
}

/// Waits until `window` closes on the tunnel; never, without one. The wait lives on the heap,
/// so that tunnels no rule can cut keep their small state.
async fn closes(window: Option<&Window>) -> String {
    match window {
        Some(window) => Box::pin(window.closes()).await,
        None => std::future::pending().await,
    }
}

/// Starts the relay of a dialled tunnel, as a task of its own that ends the record. Over
/// HTTP/1.1 the client's end is its connection's socket, taken back from hyper; over HTTP/2 it
/// is a stream of a connection. Each kind has a task of its own size: every idle tunnel
/// holds one, and a task is as large as the largest of the states it could be in.
pub fn spawn_relay(
    dialled: Dialled,
    record: PendingRecord,
    shared: Arc<ProxyState>,
    place: (Arc<Slot>, Option<InFlight>),
    over_h2: bool,
) {
    let tracker = shared.tracker.clone();
    if over_h2 {
        tracker.spawn(relay_stream(dialled, record, shared, place).in_current_span());
    } else {
        tracker.spawn(relay_connection(dialled, record, shared, place).in_current_span());
    }
}

/// Waits for hyper to hand the client's end over; `None` (noted in the record) if the client
/// left first.
async fn upgraded(upgrade: OnUpgrade, record: &mut PendingRecord) -> Option<Upgraded> {
    match upgrade.await {
        Ok(upgraded) => Some(upgraded),
        Err(e) => {
            record.note(format!("the client left before the tunnel opened: {e}"));
            None
        }
    }
}

/// The relay of a tunnel over an HTTP/1.1 connection. The connection's own socket is taken
/// back from hyper when it can be (always, with this server), so that both directions work on
/// plain sockets; bytes hyper had already read behind the CONNECT head go first.
///
/// Not an `async fn`, and the arguments used where they are, not bound again: an `async fn`
/// keeps each argument twice in its state, and every idle tunnel holds that state.
#[allow(clippy::manual_async_fn, reason = "argument kept twice")]
fn relay_connection(
    dialled: Dialled,
    mut record: PendingRecord,
    shared: Arc<ProxyState>,
    place: (Arc<Slot>, Option<InFlight>),
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let Some(upgraded) = upgraded(dialled.upgrade, &mut record).await else {
            return;
        };
        match upgraded.downcast::<TokioIo<WatchedIo>>() {
            Ok(parts) => {
                let client = parts.io.into_inner().into_stream().into_split();
                let early = parts.read_buf;
                carry(
                    client,
                    early,
                    dialled.tunnel,
                    &mut record,
                    &shared,
                    &place.0,
                )
                .await
            }
            Err(upgraded) => {
                // Boxed: not taken with this server; inline, its state would enlarge every
                // tunnel.
                let client = tokio::io::split(TokioIo::new(upgraded));
                let tunnel = dialled.tunnel;
                Box::pin(carry(
                    client,
                    Bytes::new(),
                    tunnel,
                    &mut record,
                    &shared,
                    &place.0,
                ))
                .await
            }
        }
    }
}

/// The relay of a tunnel over an HTTP/2 stream (RFC 9113 §8.5): its DATA frames both ways.
/// Not an `async fn`, as [`relay_connection`].
#[allow(clippy::manual_async_fn, reason = "argument kept twice")]
fn relay_stream(
    dialled: Dialled,
    mut record: PendingRecord,
    shared: Arc<ProxyState>,
    place: (Arc<Slot>, Option<InFlight>),
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let Some(upgraded) = upgraded(dialled.upgrade, &mut record).await else {
            return;
        };
        let client = tokio::io::split(TokioIo::new(upgraded));
        carry(
            client,
            Bytes::new(),
            dialled.tunnel,
            &mut record,
            &shared,
            &place.0,
        )
        .await
    }
}

/// Relays between the client's end of a tunnel (its read and write halves) and the dialled
/// destination until both are done, the tunnel idles for `tunnel_idle`, its connection is
/// closed to make room, a rule's window closes, or the shutdown grace period ends; notes how
/// it ended in `record`. `early` (bytes the client sent behind its request, already read)
/// goes to the destination first.
///
/// Not an `async fn`: one would keep each argument twice in its state (the argument and the
/// local it is moved into), and every idle tunnel holds that state.
#[allow(clippy::manual_async_fn, reason = "argument kept twice")]
pub(crate) fn carry<'a, CR, CW>(
    client: (CR, CW),
    early: Bytes,
    tunnel: Tunnel,
    record: &'a mut PendingRecord,
    shared: &'a ProxyState,
    slot: &'a Slot,
) -> impl std::future::Future<Output = ()> + Send + 'a
where
    CR: AsyncRead + Socket + Unpin + Send + 'a,
    CW: AsyncWrite + Socket + Unpin + Send + 'a,
{
    async move {
        let Tunnel {
            mut upstream,
            port,
            idle,
            flow,
            window,
        } = tunnel;
        let traffic = record.traffic().clone();
        shared.stats.tunnel_opened(port);
        // Called inside select!, not bound first: a bound future is kept twice in this
        // task's state, and every idle tunnel holds that state.
        let end = tokio::select! {
            result = async {
                if !early.is_empty() {
                    upstream.write_all(&early).await?;
                    traffic.add(&traffic.up, early.len());
                }
                // A slice of hyper's read buffer, which lives as long as it does: let go at
                // once, so that an idle tunnel does not keep kilobytes of it.
                drop(early);
                both_ways(client, upstream.into_split(), &traffic, (idle, flow.as_deref()), slot.conn()).await
            } => result,
            _ = shared.hard_stop.cancelled() => Ok(End::Shutdown),
            why = closes(window.as_deref()) => Ok(End::Closed(why)),
        };
        shared.stats.tunnel_closed(port);
        match end {
            Ok(End::Done) => {}
            Ok(End::Idle) => record.note(format!(
                "closed after {} without traffic",
                humantime::format_duration(idle)
            )),
            Ok(End::Evicted) => record.note(format!(
                "closed after {} without traffic, to make room for a new connection at the connection limits",
                humantime::format_duration(slot.conn().tunnel_quiet_for())
            )),
            Ok(End::Closed(why)) => record.note(why),
            Ok(End::Shutdown) => record.note_failure(
                ErrorKind::Shutdown,
                "cut at the end of the shutdown grace period".into(),
            ),
            Err(e) => match e.get_ref().and_then(|e| e.downcast_ref::<QuotaCut>()) {
                Some(cut) => record.note_failure(ErrorKind::Denied, cut.to_string()),
                None => {
                    debug!(error = %e, "tunnel ended with an error");
                    record.note(format!("the tunnel ended with an error: {e}"));
                }
            },
        }
    }
}

/// A tunnel cut because a byte budget with `cut = true` is used up.
#[derive(Debug, thiserror::Error)]
#[error("cut: quota \"{0}\" is used up")]
struct QuotaCut(Arc<str>);

/// Copies both ways until both directions are done, or no byte moved for `idle`, or the
/// connection is closed to make room (an idle tunnel, at the connection limits).
async fn both_ways<CR, CW, UR, UW>(
    (client_read, client_write): (CR, CW),
    (upstream_read, upstream_write): (UR, UW),
    traffic: &Traffic,
    (idle, flow): (Duration, Option<&Flow>),
    conn: &ConnState,
) -> io::Result<End>
where
    CR: AsyncRead + Socket + Unpin,
    CW: AsyncWrite + Socket + Unpin,
    UR: AsyncRead + Socket + Unpin,
    UW: AsyncWrite + Socket + Unpin,
{
    let up = Activity {
        conn,
        traffic,
        flow: flow.map(|f| (f, Dir::Up)),
    };
    let down = Activity {
        conn,
        traffic,
        flow: flow.map(|f| (f, Dir::Down)),
    };
    // The pumps are made inside the join, not bound first: bound, each would be kept twice.
    tokio::select! {
        result = async {
            tokio::try_join!(
                pump(client_read, upstream_write, &traffic.up, up),
                pump(upstream_read, client_write, &traffic.down, down),
            )
        } => result.map(|_| End::Done),
        _ = idle_for(idle, conn) => Ok(End::Idle),
        _ = conn.evicted() => Ok(End::Evicted),
    }
}

/// Where a tunnel notes that bytes moved: its connection's state, which the idle timer and
/// the admission read.
#[derive(Clone, Copy)]
struct Activity<'a> {
    conn: &'a ConnState,
    /// The record's counters (and the byte budgets they count into).
    traffic: &'a Traffic,
    /// The tunnel's shaping and this direction, when it is shaped.
    flow: Option<(&'a Flow, Dir)>,
}

impl Activity<'_> {
    fn moved(&self, counter: &AtomicU64, n: usize) {
        self.traffic.add(counter, n);
        self.conn.tunnel_moved();
    }

    /// An error that ends the tunnel when a byte budget with `cut = true` is used up.
    fn cut(&self) -> io::Result<()> {
        match self.traffic.cut_by() {
            Some(quota) => Err(io::Error::other(QuotaCut(quota.clone()))),
            None => Ok(()),
        }
    }

    /// The most one `splice` moves at once: a shaped tunnel moves a piece at a time, so
    /// that it overshoots its rate by no more than one.
    fn most(&self) -> usize {
        match self.flow {
            Some(_) => crate::proxy::shaper::PIECE,
            None => usize::MAX,
        }
    }

    /// After `n` bytes moved: waits as long as the shaping says before the next, looking
    /// again at least every [`crate::proxy::shaper::RECHECK`] (a share may have grown, or
    /// the client's other connections added to the debt).
    async fn paced(&self, n: usize) {
        if let Some((flow, dir)) = self.flow {
            let mut wait = flow.charge(dir, n);
            for _ in 0..100_000 {
                if wait.is_zero() {
                    break;
                }
                // Boxed: inline, the timer would enlarge every tunnel, shaped or not.
                Box::pin(tokio::time::sleep(wait.min(crate::proxy::shaper::RECHECK))).await;
                wait = flow.wait(dir);
            }
        }
    }
}

/// One end of a tunnel direction, and the plain socket under it, if it is one.
pub(crate) trait Socket {
    fn socket(&self) -> Option<&TcpStream>;
}

impl Socket for OwnedReadHalf {
    fn socket(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

impl Socket for OwnedWriteHalf {
    fn socket(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

impl<T> Socket for tokio::io::ReadHalf<T> {
    fn socket(&self) -> Option<&TcpStream> {
        None
    }
}

impl<T> Socket for tokio::io::WriteHalf<T> {
    fn socket(&self) -> Option<&TcpStream> {
        None
    }
}

/// What a busy direction moves its bytes through.
enum Busy {
    #[cfg(target_os = "linux")]
    Pipe(splice::Pipe),
    Buffer(Vec<u8>),
}

impl Busy {
    /// A pipe when both ends are sockets (on Linux) and one can be had; else a buffer.
    fn start(splice: bool) -> Busy {
        #[cfg(target_os = "linux")]
        if let Some(pipe) = splice.then(splice::Pipe::new).flatten() {
            return Busy::Pipe(pipe);
        }
        let _ = splice;
        Busy::Buffer(vec![0u8; BUSY_BUFFER])
    }
}

/// Copies one direction until its reader ends, then passes the end on (half-close).
async fn pump<R, W>(
    mut reader: R,
    mut writer: W,
    counter: &AtomicU64,
    activity: Activity<'_>,
) -> io::Result<()>
where
    R: AsyncRead + Socket + Unpin,
    W: AsyncWrite + Socket + Unpin,
{
    let sockets = reader.socket().is_some() && writer.socket().is_some();
    let mut busy: Option<Busy> = None;
    loop {
        let n = match busy.as_mut() {
            #[cfg(target_os = "linux")]
            Some(Busy::Pipe(pipe)) => {
                let (Some(from), Some(to)) = (reader.socket(), writer.socket()) else {
                    unreachable!("a pipe is only taken between two sockets");
                };
                match pipe.pass(from, to, counter, activity).await? {
                    Some(n) => n,
                    None => {
                        // These sockets cannot splice; nothing was moved: use a buffer.
                        busy = Some(Busy::start(false));
                        continue;
                    }
                }
            }
            // The big buffer while busy without a pipe.
            Some(Busy::Buffer(big)) => {
                let n = reader.read(big).await?;
                writer.write_all(&big[..n]).await?;
                activity.moved(counter, n);
                n
            }
            // Quiet: a small buffer, only once bytes (or the end) are there.
            None => {
                readable(&mut reader).await?;
                let mut quiet = vec![0u8; QUIET_BUFFER];
                let n = reader.read(&mut quiet).await?;
                writer.write_all(&quiet[..n]).await?;
                activity.moved(counter, n);
                n
            }
        };
        if n == 0 {
            writer.shutdown().await?;
            return Ok(());
        }
        activity.cut()?;
        activity.paced(n).await;
        // A full small read means more is waiting: go busy. A short read means the burst is
        // over: give the pipe or buffer back.
        if busy.is_none() && n == QUIET_BUFFER {
            busy = Some(Busy::start(sockets));
        } else if busy.is_some() && n < QUIET_BUFFER {
            busy = None;
        }
    }
}

/// Waits until `reader` has bytes or has ended, without a buffer: a socket by its readiness;
/// another end (an HTTP/2 stream hyper hands over) by a read with no room, which such an end
/// answers once it holds bytes of a frame, or its end. An end that answered at once would
/// only make the read that follows wait, with its small buffer.
async fn readable<R: AsyncRead + Socket + Unpin>(reader: &mut R) -> io::Result<()> {
    match reader.socket() {
        Some(socket) => socket.readable().await,
        None => {
            let mut room = tokio::io::ReadBuf::new(&mut []);
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut *reader).poll_read(cx, &mut room))
                .await
        }
    }
}

/// Zero-copy relaying through a pipe: `splice(2)` moves a socket's received pages into the
/// pipe and from it into the other socket, so the bytes never enter the proxy's memory.
#[cfg(target_os = "linux")]
mod splice {
    use std::future::poll_fn;
    use std::io;
    use std::os::fd::OwnedFd;
    use std::sync::atomic::AtomicU64;

    use rustix::pipe::{fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    use super::Activity;

    /// What one pipe holds at most. The default is 64 KiB; more lets one `splice` move a
    /// bigger burst. Past the per-user pipe quota the kernel gives less, which still works.
    const PIPE_SIZE: usize = 1024 * 1024;

    /// A pipe held by one busy direction of a tunnel (two file descriptors).
    pub(super) struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        size: usize,
    }

    impl Pipe {
        /// A new pipe, or `None` when none can be had (out of file descriptors).
        pub(super) fn new() -> Option<Pipe> {
            let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?;
            let size = fcntl_setpipe_size(&write, PIPE_SIZE)
                .or_else(|_| rustix::pipe::fcntl_getpipe_size(&write))
                .unwrap_or(4096);
            Some(Pipe { read, write, size })
        }

        /// Moves what `from` has into the pipe and all of it on to `to`; returns the bytes
        /// moved (0 at the reader's end), or `None` when these descriptors cannot splice
        /// (nothing moved). The pipe is empty again on success.
        ///
        /// Readiness is polled (`poll_read_ready`), not awaited through `readable()`, which
        /// would keep a waiter in every tunnel's state; each socket has one reader and one
        /// writer, as polling needs.
        pub(super) async fn pass(
            &mut self,
            from: &TcpStream,
            to: &TcpStream,
            counter: &AtomicU64,
            activity: Activity<'_>,
        ) -> io::Result<Option<usize>> {
            let n = loop {
                poll_fn(|cx| from.poll_read_ready(cx)).await?;
                let filled = from.try_io(Interest::READABLE, || {
                    splice(
                        from,
                        None,
                        &self.write,
                        None,
                        self.size.min(activity.most()),
                        flags(),
                    )
                    .map_err(Into::into)
                });
                match filled {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) if unsupported(&e) => return Ok(None),
                    Err(e) => return Err(e),
                }
            };
            let mut left = n;
            while left > 0 {
                poll_fn(|cx| to.poll_write_ready(cx)).await?;
                let sent = to.try_io(Interest::WRITABLE, || {
                    splice(&self.read, None, to, None, left, flags()).map_err(Into::into)
                });
                match sent {
                    Ok(sent) => {
                        left -= sent;
                        activity.moved(counter, sent);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(Some(n))
        }
    }

    fn flags() -> SpliceFlags {
        SpliceFlags::MOVE | SpliceFlags::NONBLOCK
    }

    /// Whether `splice` cannot be used on these descriptors at all.
    fn unsupported(e: &io::Error) -> bool {
        matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::INVAL.raw_os_error()
            || code == rustix::io::Errno::NOSYS.raw_os_error())
    }
}

/// Completes once no byte has moved for `idle`.
async fn idle_for(idle: Duration, conn: &ConnState) {
    loop {
        let quiet = conn.tunnel_quiet_for();
        if quiet >= idle {
            return;
        }
        tokio::time::sleep(idle - quiet).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use tokio::net::TcpListener;

    /// The buffered path, for a client end that is not a plain socket (as an upgraded
    /// connection from another server would be): every byte both ways, in order, the
    /// half-close passed on, and exact counts. The destination is a real loopback socket.
    #[tokio::test]
    async fn a_client_end_that_is_not_a_socket_is_relayed_through_buffers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The destination echoes until the client's end of data, then closes.
        let echo = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut read, mut write) = stream.into_split();
            let n = tokio::io::copy(&mut read, &mut write).await.unwrap();
            write.shutdown().await.unwrap();
            n
        });
        let upstream = TcpStream::connect(addr).await.unwrap();
        let (client, proxy_side) = tokio::io::duplex(4096);
        let traffic = Traffic::default();
        let conn = ConnState::new();
        let relay = both_ways(
            tokio::io::split(proxy_side),
            upstream.into_split(),
            &traffic,
            (Duration::from_secs(30), None),
            &conn,
        );
        // Sizes around the quiet buffer, a burst and a trickle: quiet, busy, quiet again.
        let sizes = [1usize, 511, 512, 513, 200_000, 3, 70_000, 1];
        let total: usize = sizes.iter().sum();
        let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let talk = async {
            let (mut read, mut write) = tokio::io::split(client);
            let sender = async {
                let mut at = 0;
                for size in sizes {
                    write.write_all(&data[at..at + size]).await.unwrap();
                    at += size;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                write.shutdown().await.unwrap();
            };
            let mut back = Vec::new();
            let receiver = read.read_to_end(&mut back);
            let (_, got) = tokio::join!(sender, receiver);
            got.unwrap();
            back
        };
        let (end, back) =
            tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(relay, talk) })
                .await
                .expect("the relay ends in time");
        assert!(matches!(end, Ok(End::Done)), "{end:?}");
        assert!(back == data, "the bytes came back changed");
        assert_eq!(echo.await.unwrap(), total as u64);
        assert_eq!(traffic.up.load(Ordering::Relaxed), total as u64);
        assert_eq!(traffic.down.load(Ordering::Relaxed), total as u64);
    }

    /// A client end that counts how often it is asked for bytes.
    struct Counted<R> {
        inner: R,
        polls: Arc<AtomicU64>,
    }

    impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<R> Socket for Counted<R> {
        fn socket(&self) -> Option<&TcpStream> {
            None
        }
    }

    /// A quiet direction of a non-socket end waits for bytes without asking again and
    /// again: idle for half a second, its end is polled a handful of times, not thousands;
    /// bytes that come afterwards still go through, and so does the end.
    #[tokio::test]
    async fn a_quiet_end_that_is_not_a_socket_is_waited_on_not_polled_in_a_loop() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sink = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            stream.read_to_end(&mut got).await.unwrap();
            got
        });
        let upstream = TcpStream::connect(addr).await.unwrap();
        let (mut client, proxy_side) = tokio::io::duplex(4096);
        let (read, write) = tokio::io::split(proxy_side);
        let polls = Arc::new(AtomicU64::new(0));
        let read = Counted {
            inner: read,
            polls: polls.clone(),
        };
        let traffic = Traffic::default();
        let conn = ConnState::new();
        let relay = both_ways(
            (read, write),
            upstream.into_split(),
            &traffic,
            (Duration::from_secs(30), None),
            &conn,
        );
        let talk = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let idle_polls = polls.load(Ordering::Relaxed);
            client.write_all(b"after a quiet while").await.unwrap();
            client.shutdown().await.unwrap();
            idle_polls
        };
        let (end, idle_polls) =
            tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(relay, talk) })
                .await
                .expect("the relay ends in time");
        assert!(idle_polls <= 4, "polled {idle_polls} times while quiet");
        assert!(matches!(end, Ok(End::Done)), "{end:?}");
        assert_eq!(sink.await.unwrap(), b"after a quiet while");
        assert_eq!(traffic.up.load(Ordering::Relaxed), 19);
    }
}
