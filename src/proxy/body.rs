//! Bodies that stream through the proxy while counting their bytes.
//!
//! [`UpBody`] wraps a client's request body on its way to the origin; [`DownBody`] is every
//! response the proxy sends, whether the origin's streamed body or a short text of its own.
//! A `DownBody` also carries the exchange's pending access record and the connection's
//! in-flight guard, so both end exactly when the client has the last byte (or goes away).
//! Neither buffers: each frame passes through as it comes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::core::error::ErrorKind;
use crate::egress::express::{step_aside, Lane};
use crate::observe::access::{PendingRecord, Traffic};
use crate::proxy::admission::Slot;
use crate::proxy::conn::{BodyGuard, ConnState, InFlight};
use crate::proxy::shaper::{Dir, Flow, Shaped};

/// The error type of the bodies: hyper's, or a stall.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Ends a body that goes `limit` without a frame.
///
/// Cheap on the request path: no timer exists until the body first has to wait, and a frame
/// only notes the time; the timer is moved on when it fires after progress.
struct Stall {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// When the last frame came, once a timer is armed.
    progress: Option<Instant>,
    what: &'static str,
}

impl Stall {
    fn new(limit: Duration, what: &'static str) -> Self {
        Stall {
            limit,
            timer: None,
            progress: None,
            what,
        }
    }

    /// Call with the inner poll's result: notes progress, and turns a pending poll past the
    /// limit into an error.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<Option<Result<T, hyper::Error>>>,
    ) -> Poll<Option<Result<T, BodyError>>> {
        if let Poll::Ready(frame) = polled {
            if self.timer.is_some() {
                self.progress = Some(Instant::now());
            }
            return Poll::Ready(frame.map(|f| f.map_err(BodyError::from)));
        }
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The clock ran out; if a frame came meanwhile, count from that frame instead.
            match self.progress.take() {
                Some(last) if last + limit > Instant::now() => {
                    timer.as_mut().reset(last + limit);
                }
                _ => {
                    return Poll::Ready(Some(Err(Box::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "{} sent nothing for {}",
                            self.what,
                            humantime::format_duration(limit)
                        ),
                    )))))
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A client's request body on its way upstream, counted into `Traffic::up`, and ended
    /// when the client stalls for `timeouts.request_body`.
    pub struct UpBody {
        // `None`: no body (a request sent again to another parent proxy).
        #[pin]
        inner: Option<Incoming>,
        traffic: Arc<Traffic>,
        stall: Stall,
        progress: Arc<Progress>,
        // Keeps the client connection busy until the body's end; dropped unfinished, it
        // closes the connection after the exchange.
        guard: Option<BodyGuard>,
        // The shaping of the upload, when anything shapes it.
        shaped: Option<Box<Shaped>>,
    }
}

/// What the body tells whoever waits on the upload.
#[derive(Default)]
struct Progress {
    /// Told when the body has been read to its end (or failed).
    ended: Notify,
    ended_flag: AtomicBool,
    /// Told when the bytes sent so far are due to be reported ([`Upload::report_due`]).
    report: Notify,
}

impl UpBody {
    /// Wraps `inner`, counting into `traffic.up`; a gap of `stall` between frames ends it.
    /// `guard` is held until the body's end.
    pub fn new(
        inner: Incoming,
        traffic: Arc<Traffic>,
        stall: Duration,
        guard: Option<BodyGuard>,
    ) -> Self {
        UpBody {
            inner: Some(inner),
            traffic,
            stall: Stall::new(stall, "the client's request body"),
            progress: Arc::default(),
            guard,
            shaped: None,
        }
    }

    /// Holds the upload to `flow` (`[shaping]`, `[[limits.rate]]`): each frame is charged,
    /// and the next read waits out the debt.
    pub(crate) fn shape(&mut self, flow: Flow) {
        self.shaped = Some(Box::new(Shaped::new(flow, Dir::Up)));
    }

    /// What the clock of an exchange needs to know of this body.
    pub fn upload(&self) -> Upload {
        Upload {
            progress: self.progress.clone(),
            empty: self.is_end_stream(),
            conn: self.guard.as_ref().map(|g| g.connection().clone()),
        }
    }

    /// An empty body, for sending a bodiless request again.
    pub fn empty(traffic: Arc<Traffic>) -> Self {
        UpBody {
            inner: None,
            traffic,
            stall: Stall::new(Duration::from_secs(3600), "nothing"),
            progress: Arc::default(),
            guard: None,
            shaped: None,
        }
    }
}

/// Watches a request body from outside: when it has all been sent.
pub struct Upload {
    progress: Arc<Progress>,
    empty: bool,
    conn: Option<Arc<ConnState>>,
}

impl Upload {
    /// The exchange failed: if the body was not read to its end, its rest will not be, so
    /// the client connection ends after the answer (which says so).
    pub fn give_up(&self) {
        if let Some(conn) = &self.conn {
            if !self.progress.ended_flag.load(Ordering::Acquire) {
                conn.close_after();
            }
        }
    }

    /// Completes when the bytes of the body sent so far are due to be reported (at most
    /// every [`crate::observe::access::PROGRESS_EVERY`] while they move); never for an
    /// empty body.
    pub async fn report_due(&self) {
        if self.empty {
            return std::future::pending().await;
        }
        self.progress.report.notified().await
    }

    /// Completes once the body has been read to its end (at once for an empty body).
    pub async fn sent(&self) {
        if self.empty {
            return;
        }
        let ended = self.progress.ended.notified();
        if !self.progress.ended_flag.load(Ordering::Acquire) {
            ended.await;
        }
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        let Some(mut inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        // A budget with `cut = true` used up (by this upload or the exchange's other bytes):
        // nothing more is read.
        if let Some(quota) = this.traffic.cut_by() {
            return Poll::Ready(Some(Err(cut_error(quota))));
        }
        if let Some(shaped) = this.shaped.as_mut() {
            ready!(shaped.poll_ready(cx));
        }
        let polled = inner.as_mut().poll_frame(cx);
        let frame = ready!(this.stall.check(cx, polled));
        count(&frame, this.traffic, &this.traffic.up);
        if let Some(Ok(frame)) = &frame {
            if let Some(data) = frame.data_ref() {
                if let Some(shaped) = this.shaped.as_mut() {
                    shaped.moved(data.len());
                }
                // The record is held by whoever waits for the answer: told, it reports (and
                // until then, or once nobody waits, the report stays due for the answer's
                // body to take).
                if this.traffic.report_pending() {
                    this.progress.report.notify_waiters();
                }
            }
        }
        // hyper stops polling once a body says it has ended, so its end is noted after the
        // last frame as well as at `None`.
        let end = match &frame {
            None => Some(true),
            Some(Err(_)) => Some(false),
            // Trailers are a body's last frame: after them hyper asks for nothing more.
            Some(Ok(frame)) if frame.is_trailers() => Some(true),
            Some(Ok(_)) => inner.is_end_stream().then_some(true),
        };
        if let Some(complete) = end {
            this.progress.ended_flag.store(true, Ordering::Release);
            this.progress.ended.notify_waiters();
            // A broken body leaves its rest unread: the guard, dropped unfinished, says so.
            match (this.guard.take(), complete) {
                (Some(guard), true) => guard.finished(),
                (guard, _) => drop(guard),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

fn count(frame: &Option<Result<Frame<Bytes>, BodyError>>, traffic: &Traffic, counter: &AtomicU64) {
    if let Some(Ok(frame)) = frame {
        if let Some(data) = frame.data_ref() {
            traffic.add(counter, data.len());
        }
    }
}

/// The error that ends a body when a byte budget with `cut = true` is used up.
fn cut_error(quota: &str) -> BodyError {
    Box::new(std::io::Error::other(format!(
        "quota \"{quota}\" is used up: the transfer was cut"
    )))
}

/// What an exchange holds until its answer is sent: its connection's in-flight guard, over
/// HTTP/2 its stream's place in the connection limits, and its lane (light or bulk, see
/// [`crate::egress::express`]).
pub type Held = (InFlight, Option<Arc<Slot>>, Option<Lane>);

pin_project_lite::pin_project! {
    /// Every response body the proxy sends.
    pub struct DownBody {
        #[pin]
        content: Content,
        traffic: Option<Arc<Traffic>>,
        record: Option<PendingRecord>,
        in_flight: Option<Held>,
        // The shaping of an origin's body, when anything shapes it.
        shaped: Option<Box<Shaped>>,
        // Stepped aside for light exchanges since the last frame (`egress::express`).
        stepped: bool,
    }
}

pin_project_lite::pin_project! {
    /// What a response body holds: the origin's body, streamed, or a body the proxy wrote
    /// itself (an error text, a page), or nothing.
    #[project = ContentProj]
    enum Content {
        Origin { #[pin] body: Incoming, stall: Stall },
        Own { data: Option<Bytes> },
    }
}

impl DownBody {
    /// The origin's body, streamed; a gap of `stall` between its frames ends it.
    pub fn origin(body: Incoming, stall: Duration) -> Self {
        DownBody::from_content(Content::Origin {
            body,
            stall: Stall::new(stall, "the origin's response body"),
        })
    }

    /// A body of the proxy's own.
    pub fn text(text: impl Into<Bytes>) -> Self {
        let data: Bytes = text.into();
        DownBody::from_content(Content::Own {
            data: (!data.is_empty()).then_some(data),
        })
    }

    /// No body.
    pub fn empty() -> Self {
        DownBody::from_content(Content::Own { data: None })
    }

    fn from_content(content: Content) -> Self {
        DownBody {
            content,
            traffic: None,
            record: None,
            in_flight: None,
            shaped: None,
            stepped: false,
        }
    }

    /// Holds an origin's body to `flow` (`[shaping]`, `[[limits.rate]]`).
    pub(crate) fn shape(&mut self, flow: Flow) {
        self.shaped = Some(Box::new(Shaped::new(flow, Dir::Down)));
    }

    /// Attaches the exchange's record (an origin body's bytes are counted into the record's
    /// traffic) and what the exchange holds; both are released when the body ends or is
    /// dropped.
    pub fn finish_with(&mut self, record: Option<PendingRecord>, in_flight: Option<Held>) {
        // Only bytes from the destination count as its traffic, not the proxy's own texts.
        if let (Some(record), Content::Origin { .. }) = (&record, &self.content) {
            self.traffic = Some(record.traffic().clone());
        }
        self.record = record;
        self.in_flight = in_flight;
    }
}

impl Body for DownBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        // A budget with `cut = true` used up: the frame that used it up went; no more is
        // read, and the client sees the body end early.
        if let Some(quota) = this.traffic.as_ref().and_then(|t| t.cut_by()) {
            let e = cut_error(quota);
            if let Some(record) = this.record.as_mut() {
                record.note_failure(ErrorKind::Denied, e.to_string());
            }
            this.record.take();
            this.in_flight.take();
            return Poll::Ready(Some(Err(e)));
        }
        let lane = this.in_flight.as_ref().and_then(|held| held.2.as_ref());
        // A bulk body lets light exchanges go first: one step aside before each frame while
        // one is in flight.
        if !*this.stepped && lane.is_some_and(|l| l.is_bulk() && l.express().waiting()) {
            *this.stepped = true;
            ready!(step_aside(cx));
        }
        let frame = match this.content.project() {
            ContentProj::Origin { body, stall } => match this.shaped.as_mut() {
                None => {
                    let polled = body.poll_frame(cx);
                    ready!(stall.check(cx, polled))
                }
                Some(shaped) => {
                    ready!(shaped.poll_ready(cx));
                    match shaped.take_piece() {
                        Some(piece) => Some(Ok(Frame::data(piece))),
                        None => {
                            let polled = body.poll_frame(cx);
                            match ready!(stall.check(cx, polled)) {
                                Some(Ok(frame)) => Some(Ok(match frame.into_data() {
                                    Ok(data) => Frame::data(shaped.first_piece(data)),
                                    Err(frame) => frame,
                                })),
                                other => other,
                            }
                        }
                    }
                }
            },
            ContentProj::Own { data } => data.take().map(|d| Ok(Frame::data(d))),
        };
        match &frame {
            Some(Ok(_)) => {
                *this.stepped = false;
                if let Some(traffic) = this.traffic.as_ref() {
                    count(&frame, traffic, &traffic.down);
                    if let Some(record) = this.record.as_ref() {
                        record.progress();
                    }
                    if let Some(lane) = this.in_flight.as_mut().and_then(|held| held.2.as_mut()) {
                        lane.moved(traffic.down.load(Ordering::Relaxed));
                    }
                }
            }
            Some(Err(e)) => {
                if let Some(record) = this.record.as_mut() {
                    // A body that stalled ends with a timed-out I/O error; others broke off.
                    let kind = match e.downcast_ref::<std::io::Error>() {
                        Some(io) if io.kind() == std::io::ErrorKind::TimedOut => ErrorKind::Timeout,
                        _ => ErrorKind::OriginProtocol,
                    };
                    record.note_failure(kind, format!("the origin's response body failed: {e}"));
                }
            }
            None => {
                // The client has everything: end the record and free the connection now
                // rather than when hyper drops the body.
                this.record.take();
                this.in_flight.take();
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.content {
            // A shaped body may still hold pieces of the last frame.
            Content::Origin { body, .. } => {
                body.is_end_stream() && self.shaped.as_ref().is_none_or(|s| s.is_done())
            }
            Content::Own { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.content {
            Content::Origin { body, .. } => body.size_hint(),
            Content::Own { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
