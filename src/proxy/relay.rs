//! The bytes of an open tunnel, both ways: one future, written by hand, that moves what the
//! client's end sends to the destination's socket and back, passes each side's end of data on
//! (half-close), counts bytes as they are delivered and lets shaping pace them.
//!
//! Every idle tunnel holds this future, so it is kept small: both directions in one state
//! machine over the two ends (no split halves, no future per direction), no buffer while a
//! direction is quiet (it waits for readiness, then reads into 512 bytes it lets go once they
//! are passed on), and a timer only while shaping makes a direction wait. Once a read fills
//! the small buffer the direction is busy: on Linux, between two sockets, its bytes then move
//! socket → pipe → socket with `splice(2)` and never enter the proxy's memory; otherwise
//! through a 64 KiB buffer. A short read ends the burst and gives the pipe or buffer back.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::egress::express::{step_aside, Express, STEP};
use crate::observe::access::PendingRecord;
use crate::proxy::conn::ConnState;
use crate::proxy::shaper::{Dir, Flow, PIECE, RECHECK};

/// Bytes a quiet direction reads at once, into a buffer taken once bytes are there and given
/// back once they are passed on: an idle tunnel holds no buffer.
const QUIET_BUFFER: usize = 512;
/// Bytes a busy direction reads at once, from a heap buffer it holds only while busy.
const BUSY_BUFFER: usize = 64 * 1024;
/// Steps (a read, a write, a splice) one direction takes in one turn before it lets the
/// other tasks of its thread run.
const TURN: usize = 32;

/// One end of a tunnel, and the plain socket under it, if it is one: between two sockets a
/// busy direction splices.
pub(crate) trait Socket {
    fn socket(&self) -> Option<&TcpStream>;
}

impl Socket for TcpStream {
    fn socket(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl Socket for TokioIo<Upgraded> {
    fn socket(&self) -> Option<&TcpStream> {
        None
    }
}

/// A tunnel cut because a byte budget with `cut = true` is used up.
#[derive(Debug, thiserror::Error)]
#[error("cut: quota \"{0}\" is used up")]
pub(crate) struct QuotaCut(Arc<str>);

/// What a tunnel's bytes are counted into and paced by.
#[derive(Clone, Copy)]
pub(crate) struct Activity<'a> {
    /// The connection's state, which the idle timer and the admission read.
    pub(crate) conn: &'a ConnState,
    /// The tunnel's record: its counters (and the byte budgets they count into), reported
    /// to the statistics while the tunnel runs.
    pub(crate) record: &'a PendingRecord,
    /// The tunnel's shaping, when anything shapes it.
    pub(crate) flow: Option<&'a Flow>,
    /// The light exchanges in flight, for which a busy tunnel takes short turns.
    pub(crate) express: &'a Express,
}

impl Activity<'_> {
    fn moved(&self, dir: Dir, n: usize) {
        let traffic = self.record.traffic();
        let counter = match dir {
            Dir::Up => &traffic.up,
            Dir::Down => &traffic.down,
        };
        traffic.add(counter, n);
        self.conn.tunnel_moved();
        self.record.progress();
    }

    /// An error that ends the tunnel when a byte budget with `cut = true` is used up.
    fn cut(&self) -> io::Result<()> {
        match self.record.traffic().cut_by() {
            Some(quota) => Err(io::Error::other(QuotaCut(quota.clone()))),
            None => Ok(()),
        }
    }

    /// The most one read or `splice` moves at once: a shaped tunnel moves a piece at a time,
    /// so that it overshoots its rate by no more than one.
    fn most(&self) -> usize {
        let most = match self.flow {
            Some(_) => PIECE,
            None => usize::MAX,
        };
        if self.express.waiting() {
            most.min(STEP)
        } else {
            most
        }
    }
}

/// Moves bytes both ways between `client` and `upstream` until both directions have ended;
/// fails with the first error of either, or with [`QuotaCut`] once a byte budget with
/// `cut = true` is used up.
#[cfg(test)]
pub(crate) fn both_ways<C>(client: C, upstream: TcpStream, activity: Activity<'_>) -> Relay<'_, C>
where
    C: AsyncRead + AsyncWrite + Socket + Unpin,
{
    Relay {
        ends: Ends::new(client, upstream),
        activity,
    }
}

/// The future of [`both_ways`].
#[cfg(test)]
pub(crate) struct Relay<'a, C> {
    ends: Ends<C>,
    activity: Activity<'a>,
}

#[cfg(test)]
impl<C> Future for Relay<'_, C>
where
    C: AsyncRead + AsyncWrite + Socket + Unpin,
{
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.ends.poll_relay(cx, &this.activity)
    }
}

/// A tunnel's two ends and where each direction between them is: the relay's whole state,
/// moved on by [`Ends::poll_relay`] with what it counts into given at each poll, so that its
/// owner can keep the record, the connection's state and the shaping beside it (the
/// tunnel's task, [`crate::proxy::tunnel::Carry`]) rather than borrowed from elsewhere.
pub(crate) struct Ends<C> {
    client: C,
    upstream: TcpStream,
    /// From the client to the destination.
    up: Leg,
    /// From the destination to the client.
    down: Leg,
}

impl<C> Ends<C>
where
    C: AsyncRead + AsyncWrite + Socket + Unpin,
{
    pub(crate) fn new(client: C, upstream: TcpStream) -> Self {
        Ends {
            client,
            upstream,
            up: Leg::new(Dir::Up),
            down: Leg::new(Dir::Down),
        }
    }

    /// The destination's end, for bytes to go first (those the client sent behind its
    /// request).
    pub(crate) fn upstream(&mut self) -> &mut TcpStream {
        &mut self.upstream
    }

    /// Moves bytes both ways; ready once both directions have ended, or with the first error
    /// of either, or with [`QuotaCut`] once a byte budget with `cut = true` is used up.
    pub(crate) fn poll_relay(
        &mut self,
        cx: &mut Context<'_>,
        activity: &Activity<'_>,
    ) -> Poll<io::Result<()>> {
        let up = self
            .up
            .poll(cx, &mut self.client, &mut self.upstream, activity)?;
        let down = self
            .down
            .poll(cx, &mut self.upstream, &mut self.client, activity)?;
        if up.is_ready() && down.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// Where one direction is.
#[derive(Clone, Copy)]
enum Stage {
    /// Waiting for bytes (or the end) from its reader.
    Read,
    /// Writing `room[at..end]` of a buffer.
    Write { at: u32, end: u32 },
    /// Passing on the `left` bytes of the `burst` spliced into the pipe.
    Drain { left: u32, burst: u32 },
    /// Waiting as long as shaping says before reading more.
    Pace,
    /// The reader ended: passing the end on to the writer.
    Shut,
    /// Ended.
    Done,
}

/// What one direction holds its bytes in.
enum Room {
    /// Nothing: quiet.
    Quiet,
    /// A buffer (the small one, or the busy one).
    Buffer(Box<[u8]>),
    /// A pipe, busy between two sockets (Linux).
    #[cfg(target_os = "linux")]
    Pipe(splice::Pipe),
}

impl Room {
    /// What a direction goes busy with: a pipe when both ends are sockets (on Linux) and one
    /// can be had; else the busy buffer.
    fn busy(sockets: bool) -> Room {
        #[cfg(target_os = "linux")]
        if let Some(pipe) = sockets.then(splice::Pipe::new).flatten() {
            return Room::Pipe(pipe);
        }
        let _ = sockets;
        Room::Buffer(vec![0u8; BUSY_BUFFER].into_boxed_slice())
    }

    fn is_busy(&self) -> bool {
        match self {
            Room::Quiet => false,
            Room::Buffer(buffer) => buffer.len() > QUIET_BUFFER,
            #[cfg(target_os = "linux")]
            Room::Pipe(_) => true,
        }
    }
}

/// One direction of a tunnel.
struct Leg {
    dir: Dir,
    stage: Stage,
    room: Room,
    /// The wait shaping asked for, while it lasts.
    pace: Option<Pin<Box<Sleep>>>,
}

impl Leg {
    fn new(dir: Dir) -> Leg {
        Leg {
            dir,
            stage: Stage::Read,
            room: Room::Quiet,
            pace: None,
        }
    }

    /// Moves what it can from `reader` to `writer`; ready once the end is passed on.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        activity: &Activity<'_>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Socket + Unpin,
        W: AsyncWrite + Socket + Unpin,
    {
        for step in 0..TURN {
            if step > 0 && self.room.is_busy() && activity.express.waiting() {
                // A light exchange is in flight: a busy direction takes one step a turn, then
                // the thread looks for the I/O that became ready before it comes back.
                ready!(step_aside(cx));
            }
            match self.stage {
                Stage::Done => return Poll::Ready(Ok(())),
                Stage::Shut => {
                    ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                    self.stage = Stage::Done;
                }
                Stage::Pace => {
                    if let Some(sleep) = self.pace.as_mut() {
                        ready!(sleep.as_mut().poll(cx));
                    }
                    let wait = activity.flow.map_or(Duration::ZERO, |f| f.wait(self.dir));
                    self.wait(wait);
                }
                Stage::Read => {
                    let n = ready!(self.poll_fill(cx, reader, writer, activity))?;
                    self.stage = match (&self.room, n) {
                        (_, 0) => {
                            self.room = Room::Quiet;
                            Stage::Shut
                        }
                        #[cfg(target_os = "linux")]
                        (Room::Pipe(_), n) => Stage::Drain {
                            left: n as u32,
                            burst: n as u32,
                        },
                        (_, n) => Stage::Write {
                            at: 0,
                            end: n as u32,
                        },
                    };
                }
                Stage::Write { at, end } => {
                    let Room::Buffer(buffer) = &self.room else {
                        unreachable!("bytes are written from a buffer");
                    };
                    let n =
                        ready!(Pin::new(&mut *writer)
                            .poll_write(cx, &buffer[at as usize..end as usize]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    activity.moved(self.dir, n);
                    let at = at + n as u32;
                    if at < end {
                        self.stage = Stage::Write { at, end };
                    } else {
                        let sockets = reader.socket().is_some() && writer.socket().is_some();
                        self.burst_done(end as usize, sockets, activity)?;
                    }
                }
                #[cfg(target_os = "linux")]
                Stage::Drain { left, burst } => {
                    let Room::Pipe(pipe) = &self.room else {
                        unreachable!("a pipe is drained");
                    };
                    let Some(to) = writer.socket() else {
                        unreachable!("a pipe is only taken between two sockets");
                    };
                    let sent = ready!(pipe.poll_drain(cx, to, left as usize))?;
                    if sent == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    activity.moved(self.dir, sent);
                    let left = left - sent as u32;
                    if left > 0 {
                        self.stage = Stage::Drain { left, burst };
                    } else {
                        self.burst_done(burst as usize, true, activity)?;
                    }
                }
                #[cfg(not(target_os = "linux"))]
                Stage::Drain { .. } => unreachable!("pipes are Linux's"),
            }
        }
        // Had its turn: the thread's other tasks run before it goes on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads what `reader` has into the room: a quiet direction first waits for bytes (or
    /// the end) without a buffer, then takes the small one; ready with the bytes read, 0 at
    /// the reader's end.
    fn poll_fill<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &W,
        activity: &Activity<'_>,
    ) -> Poll<io::Result<usize>>
    where
        R: AsyncRead + Socket + Unpin,
        W: Socket,
    {
        if let Room::Quiet = self.room {
            ready!(poll_readable(cx, reader))?;
            self.room = Room::Buffer(vec![0u8; QUIET_BUFFER].into_boxed_slice());
        }
        loop {
            match &mut self.room {
                Room::Quiet => unreachable!("a room was taken"),
                Room::Buffer(buffer) => {
                    let most = buffer.len().min(activity.most());
                    let mut read = ReadBuf::new(&mut buffer[..most]);
                    return match Pin::new(&mut *reader).poll_read(cx, &mut read) {
                        Poll::Ready(Ok(())) => Poll::Ready(Ok(read.filled().len())),
                        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        Poll::Pending => {
                            // Nothing after all: a quiet direction lets its buffer go.
                            if !self.room.is_busy() {
                                self.room = Room::Quiet;
                            }
                            Poll::Pending
                        }
                    };
                }
                #[cfg(target_os = "linux")]
                Room::Pipe(pipe) => {
                    let (Some(from), Some(_)) = (reader.socket(), writer.socket()) else {
                        unreachable!("a pipe is only taken between two sockets");
                    };
                    match ready!(pipe.poll_fill(cx, from, activity.most())) {
                        Ok(Some(n)) => return Poll::Ready(Ok(n)),
                        // These sockets cannot splice; nothing was moved: use a buffer.
                        Ok(None) => self.room = Room::busy(false),
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            }
        }
    }

    /// After a burst of `n` bytes was passed on: a byte budget may cut the tunnel; shaping
    /// may make the direction wait. A full small read means more is waiting: the direction
    /// goes busy (with a pipe when both ends are `sockets`); a short read ends the burst and
    /// gives the room back.
    fn burst_done(&mut self, n: usize, sockets: bool, activity: &Activity<'_>) -> io::Result<()> {
        activity.cut()?;
        let busy = self.room.is_busy();
        if !busy && n == QUIET_BUFFER {
            self.room = Room::busy(sockets);
        } else if !busy || n < QUIET_BUFFER {
            self.room = Room::Quiet;
        }
        let wait = activity
            .flow
            .map_or(Duration::ZERO, |f| f.charge(self.dir, n));
        self.wait(wait);
        Ok(())
    }

    /// Reads next, or first waits `wait` (looking again at least every [`RECHECK`]: a share
    /// may have grown, or the client's other connections added to the debt).
    fn wait(&mut self, wait: Duration) {
        if wait.is_zero() {
            self.pace = None;
            self.stage = Stage::Read;
            return;
        }
        let until = Instant::now() + wait.min(RECHECK);
        match self.pace.as_mut() {
            Some(sleep) => sleep.as_mut().reset(until),
            // Boxed: inline, the timer would enlarge every tunnel, shaped or not.
            None => self.pace = Some(Box::pin(tokio::time::sleep_until(until))),
        }
        self.stage = Stage::Pace;
    }
}

/// Ready once `reader` has bytes or has ended, without a buffer: a socket by its readiness;
/// another end (an HTTP/2 stream hyper hands over) by a read with no room, which such an end
/// answers once it holds bytes of a frame, or its end.
fn poll_readable<R: AsyncRead + Socket + Unpin>(
    cx: &mut Context<'_>,
    reader: &mut R,
) -> Poll<io::Result<()>> {
    match reader.socket() {
        Some(socket) => socket.poll_read_ready(cx),
        None => {
            let mut room = ReadBuf::new(&mut []);
            Pin::new(&mut *reader).poll_read(cx, &mut room)
        }
    }
}

/// Zero-copy relaying through a pipe: `splice(2)` moves a socket's received pages into the
/// pipe and from it into the other socket, so the bytes never enter the proxy's memory.
#[cfg(target_os = "linux")]
mod splice {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::task::{ready, Context, Poll};

    use rustix::pipe::{fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};
    use tokio::io::Interest;
    use tokio::net::TcpStream;

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

        /// Moves what `from` has (at most `most` bytes) into the empty pipe; ready with the
        /// bytes moved (0 at the reader's end), or `None` when these descriptors cannot
        /// splice (nothing moved).
        pub(super) fn poll_fill(
            &self,
            cx: &mut Context<'_>,
            from: &TcpStream,
            most: usize,
        ) -> Poll<io::Result<Option<usize>>> {
            loop {
                ready!(from.poll_read_ready(cx))?;
                let filled = from.try_io(Interest::READABLE, || {
                    splice(from, None, &self.write, None, self.size.min(most), flags())
                        .map_err(Into::into)
                });
                return Poll::Ready(match filled {
                    Ok(n) => Ok(Some(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) if unsupported(&e) => Ok(None),
                    Err(e) => Err(e),
                });
            }
        }

        /// Moves some of the `left` bytes in the pipe on to `to`; ready with how many.
        pub(super) fn poll_drain(
            &self,
            cx: &mut Context<'_>,
            to: &TcpStream,
            left: usize,
        ) -> Poll<io::Result<usize>> {
            loop {
                ready!(to.poll_write_ready(cx))?;
                let sent = to.try_io(Interest::WRITABLE, || {
                    splice(&self.read, None, to, None, left, flags()).map_err(Into::into)
                });
                match sent {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    sent => return Poll::Ready(sent),
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::net::TcpListener;

    impl Socket for DuplexStream {
        fn socket(&self) -> Option<&TcpStream> {
            None
        }
    }

    /// A destination that echoes until the client's end of data, then closes; the bytes it
    /// echoed.
    async fn echo() -> (TcpStream, tokio::task::JoinHandle<u64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut read, mut write) = stream.into_split();
            let n = tokio::io::copy(&mut read, &mut write).await.unwrap();
            write.shutdown().await.unwrap();
            n
        });
        (TcpStream::connect(addr).await.unwrap(), echo)
    }

    /// Sends `sizes` bytes in bursts a few ms apart through `client`, then its end, while
    /// reading everything back; what came back, and what was sent.
    async fn talk<S: AsyncRead + AsyncWrite>(client: S, sizes: &[usize]) -> (Vec<u8>, Vec<u8>) {
        let total: usize = sizes.iter().sum();
        let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let (mut read, mut write) = tokio::io::split(client);
        let sender = async {
            let mut at = 0;
            for &size in sizes {
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
        (back, data)
    }

    /// A tunnel's record, reported nowhere.
    fn record() -> PendingRecord {
        let recorder = Arc::new(crate::observe::access::Recorder::default());
        PendingRecord::open(recorder, "127.0.0.1:50000".parse().unwrap(), "CONNECT")
    }

    /// What an unshaped tunnel counts into.
    fn unshaped<'a>(conn: &'a ConnState, record: &'a PendingRecord) -> Activity<'a> {
        Activity {
            conn,
            record,
            flow: None,
            express: &NO_LIGHT,
        }
    }

    /// No light exchange in flight.
    static NO_LIGHT: std::sync::LazyLock<Express> = std::sync::LazyLock::new(Express::default);

    /// Sizes around the quiet buffer, a burst and a trickle: quiet, busy, quiet again.
    const SIZES: [usize; 8] = [1, 511, 512, 513, 200_000, 3, 70_000, 1];

    /// The buffered path, for a client end that is not a plain socket (an HTTP/2 stream, as
    /// hyper hands it over): every byte both ways, in order, the half-close passed on, and
    /// exact counts. The destination is a real loopback socket.
    #[tokio::test]
    async fn a_client_end_that_is_not_a_socket_is_relayed_through_buffers() {
        let (upstream, echo) = echo().await;
        let (client, proxy_side) = tokio::io::duplex(4096);
        let record = record();
        let traffic = record.traffic();
        let conn = ConnState::new();
        let relay = both_ways(proxy_side, upstream, unshaped(&conn, &record));
        let ((end, (back, data)), total) = (
            tokio::time::timeout(Duration::from_secs(10), async {
                tokio::join!(relay, talk(client, &SIZES))
            })
            .await
            .expect("the relay ends in time"),
            SIZES.iter().sum::<usize>() as u64,
        );
        assert!(end.is_ok(), "{end:?}");
        assert!(back == data, "the bytes came back changed");
        assert_eq!(echo.await.unwrap(), total);
        assert_eq!(traffic.up.load(Ordering::Relaxed), total);
        assert_eq!(traffic.down.load(Ordering::Relaxed), total);
    }

    /// Two sockets, the path on which a busy direction splices on Linux (or, where it
    /// cannot, uses the busy buffer): the same bytes, order, half-close and counts as the
    /// buffered path. Which of the two moved the bytes is not observed here.
    #[tokio::test]
    async fn two_sockets_are_relayed_exactly() {
        let (upstream, echo) = echo().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (proxy_side, _) = listener.accept().await.unwrap();
        let record = record();
        let traffic = record.traffic();
        let conn = ConnState::new();
        let relay = both_ways(proxy_side, upstream, unshaped(&conn, &record));
        let sizes = [1, 512, 1_000_000, 7, 512, 300_000, 2];
        let total = sizes.iter().sum::<usize>() as u64;
        let (end, (back, data)) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(relay, talk(client, &sizes))
        })
        .await
        .expect("the relay ends in time");
        assert!(end.is_ok(), "{end:?}");
        assert!(back == data, "the bytes came back changed");
        assert_eq!(echo.await.unwrap(), total);
        assert_eq!(traffic.up.load(Ordering::Relaxed), total);
        assert_eq!(traffic.down.load(Ordering::Relaxed), total);
    }

    /// A client end that counts how often it is asked for bytes.
    struct Counted {
        inner: DuplexStream,
        polls: Arc<AtomicU64>,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    impl Socket for Counted {
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
        let polls = Arc::new(AtomicU64::new(0));
        let proxy_side = Counted {
            inner: proxy_side,
            polls: polls.clone(),
        };
        let record = record();
        let traffic = record.traffic();
        let conn = ConnState::new();
        let relay = both_ways(proxy_side, upstream, unshaped(&conn, &record));
        let talk = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let idle_polls = polls.load(Ordering::Relaxed);
            client.write_all(b"after a quiet while").await.unwrap();
            client.shutdown().await.unwrap();
            // The destination closes once it has everything; so does the relay's other way.
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            idle_polls
        };
        let (end, idle_polls) =
            tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(relay, talk) })
                .await
                .expect("the relay ends in time");
        assert!(idle_polls <= 4, "polled {idle_polls} times while quiet");
        assert!(end.is_ok(), "{end:?}");
        assert_eq!(sink.await.unwrap(), b"after a quiet while");
        assert_eq!(traffic.up.load(Ordering::Relaxed), 19);
    }
}
