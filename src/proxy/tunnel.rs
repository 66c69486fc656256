//! CONNECT tunnels: check the port, dial the destination, and only then answer `200` and relay
//! bytes both ways until both sides are done.
//!
//! The relay ([`crate::proxy::relay`]) passes a client's end of data (its FIN) on to the
//! origin while the other direction keeps flowing, so half-closing protocols work. Bytes are
//! counted as they are delivered, so the record is right however the tunnel ends: both sides
//! done, an error, `tunnel_idle` with no byte either way, or the end of the shutdown grace
//! period.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::Request;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::{debug, Instrument};

use crate::core::error::{EdgeError, ErrorKind};
use crate::core::plan::Go;
use crate::core::policy::{Facts, Kind};
use crate::core::target::Target;
use crate::egress::dial::{allowed_addresses, dial, Resolved};
use crate::egress::parent::Parents;
use crate::observe::access::PendingRecord;
use crate::proxy::admission::Slot;
use crate::proxy::body::UpBody;
use crate::proxy::conn::{ConnState, InFlight, TunnelEnd, WatchedIo};
use crate::proxy::relay::{Activity, Ends, QuotaCut, Socket};
use crate::proxy::shaper::Flow;
use crate::proxy::window::{self, Window};
use crate::proxy::{exchange::Exchange, state::ProxyState};

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
    /// Ended by the connection's state: idle, made room for, or cut at shutdown.
    By(TunnelEnd),
    /// Cut when a rule's window closed (`times_cut`), for this reason.
    Closed(String),
}

/// The wait for a rule's window to close on a tunnel (`times_cut`), answering why. On the
/// heap, and only for a tunnel a rule can cut: the others keep their small state.
type Closes = Pin<Box<dyn Future<Output = String> + Send>>;

/// Starts the relay of a dialled tunnel once the client's side has upgraded. Over HTTP/1.1
/// the client's end is its connection's socket, taken back from hyper; over HTTP/2 it is a
/// stream of a connection. The wait for the upgrade is a short task of its own, which hands
/// everything to the tunnel's task ([`Carry`]) and ends: every idle tunnel holds that task,
/// and a task is as large as the largest of the states it could be in.
pub fn spawn_relay(
    dialled: Dialled,
    record: PendingRecord,
    shared: Arc<ProxyState>,
    place: (Arc<Slot>, Option<InFlight>),
    over_h2: bool,
) {
    let tracker = shared.tracker.clone();
    tracker.spawn(upgraded(dialled, record, shared, place, over_h2).in_current_span());
}

/// Waits for hyper to hand the client's end over, then spawns the tunnel's task; notes in
/// the record if the client left first. Over HTTP/1.1 the connection's own socket is taken
/// back from hyper when it can be (always, with this server), so that both directions work
/// on plain sockets; bytes hyper had already read behind the CONNECT head go first.
async fn upgraded(
    dialled: Dialled,
    mut record: PendingRecord,
    shared: Arc<ProxyState>,
    place: (Arc<Slot>, Option<InFlight>),
    over_h2: bool,
) {
    let upgraded = match dialled.upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            record.note(format!("the client left before the tunnel opened: {e}"));
            return;
        }
    };
    let tracker = shared.tracker.clone();
    let conn = place.0.conn().clone();
    let tunnel = dialled.tunnel;
    // Over HTTP/1.1 the connection's socket; over HTTP/2 (and, not with this server, an
    // HTTP/1.1 connection hyper keeps) a stream, relayed through buffers.
    let upgraded = if over_h2 {
        upgraded
    } else {
        match upgraded.downcast::<TokioIo<WatchedIo>>() {
            Ok(parts) => {
                let client = parts.io.into_inner().into_stream();
                let carry = Carry::new(client, parts.read_buf, tunnel, record, shared, conn, place);
                tracker.spawn(carry);
                return;
            }
            Err(upgraded) => upgraded,
        }
    };
    let client = TokioIo::new(upgraded);
    let carry = Carry::new(client, Bytes::new(), tunnel, record, shared, conn, place);
    tracker.spawn(carry);
}

/// How often the admitted tunnels are looked over for those quiet past their `tunnel_idle`
/// ([`start_idle_sweep`]): a quarter of the shortest `tunnel_idle` in force, between 100 ms
/// and a second. An idle tunnel closes at most that much later than its timeout.
pub fn sweep_every(tunnel_idle: Duration) -> Duration {
    (tunnel_idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Starts the look over the admitted tunnels that wakes each one quiet for its
/// `tunnel_idle`, every [`sweep_every`] of the shortest `tunnel_idle` in force (the
/// configuration's, or an open tunnel's from before a reload): one timer for all the
/// tunnels rather than one in each. It ends with the proxy's state.
pub fn start_idle_sweep(shared: &Arc<ProxyState>) {
    let shared = Arc::downgrade(shared);
    tokio::spawn(async move {
        let mut shortest_open = None::<Duration>;
        loop {
            let Some(configured) = shared
                .upgrade()
                .map(|state| state.settings().timeouts.tunnel_idle)
            else {
                return;
            };
            let shortest = shortest_open.map_or(configured, |open| open.min(configured));
            tokio::time::sleep(sweep_every(shortest)).await;
            let Some(state) = shared.upgrade() else {
                return;
            };
            shortest_open = state.admission.wake_idle_tunnels().1;
        }
    });
}

/// A tunnel's relay and all it needs, owned in one future: the task of every open tunnel
/// (and the end of a SOCKS5 connection's). It relays between the client's end and the
/// dialled destination until both are done, the tunnel idles for `tunnel_idle`, its
/// connection is closed to make room, a rule's window closes, or the shutdown grace period
/// ends; then notes how it ended in the record, which goes to the sinks when the future is
/// dropped. Written by hand rather than as an `async` block, which would keep each moved
/// value twice (where it came from and where it went), and without a timer: the idle
/// timeout, the eviction and the shutdown wake it through the connection's state
/// ([`ConnState::poll_tunnel_end`]).
pub(crate) struct Carry<C, P> {
    ends: Ends<C>,
    record: PendingRecord,
    conn: Arc<ConnState>,
    shared: Arc<ProxyState>,
    /// What only some tunnels have, on the heap: most tunnels hold none of it.
    extras: Option<Box<Extras>>,
    port: u16,
    /// Held as long as the tunnel: its place in the admission, and the request it stands for.
    _place: P,
}

/// A tunnel's early bytes, shaping and window: few tunnels have any, so [`Carry`] keeps them
/// behind one pointer, and the task of every idle tunnel is smaller by what they would take.
struct Extras {
    /// Bytes the client sent behind its request, already read: they go to the destination
    /// first. A slice of hyper's read buffer, let go of once written.
    early: Bytes,
    flow: Option<Box<Flow>>,
    closes: Option<Closes>,
}

impl Extras {
    /// None when there is nothing to keep.
    fn of(early: Bytes, flow: Option<Box<Flow>>, closes: Option<Closes>) -> Option<Box<Extras>> {
        // An empty slice may still keep hyper's buffer: it is not kept.
        (!early.is_empty() || flow.is_some() || closes.is_some()).then(|| {
            Box::new(Extras {
                early: if early.is_empty() {
                    Bytes::new()
                } else {
                    early
                },
                flow,
                closes,
            })
        })
    }
}

impl<C, P> Carry<C, P>
where
    C: AsyncRead + AsyncWrite + Socket + Unpin,
{
    /// The relay of `tunnel` for `client`, counted into `record` and the connection's state
    /// `conn`; `early` goes to the destination first; `place` is held until the tunnel ends.
    pub(crate) fn new(
        client: C,
        early: Bytes,
        tunnel: Tunnel,
        record: PendingRecord,
        shared: Arc<ProxyState>,
        conn: Arc<ConnState>,
        place: P,
    ) -> Self {
        let Tunnel {
            upstream,
            port,
            idle,
            flow,
            window,
        } = tunnel;
        shared.stats.tunnel_opened(port);
        conn.tunnel_relays(idle);
        let closes =
            window.map(|window| -> Closes { Box::pin(async move { window.closes().await }) });
        Carry {
            ends: Ends::new(client, upstream),
            record,
            conn,
            shared,
            extras: Extras::of(early, flow, closes),
            port,
            _place: place,
        }
    }

    /// The bytes: first the early ones, then both ways.
    fn poll_bytes(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some(extras) = self.extras.as_mut().filter(|x| !x.early.is_empty()) {
            while !extras.early.is_empty() {
                let n = ready!(Pin::new(self.ends.upstream()).poll_write(cx, &extras.early))?;
                if n == 0 {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                let traffic = self.record.traffic();
                traffic.add(&traffic.up, n);
                extras.early.advance(n);
            }
            // Let go of hyper's buffer, which the drained slice still keeps, and of the
            // extras when they held nothing else.
            extras.early = Bytes::new();
            if extras.flow.is_none() && extras.closes.is_none() {
                self.extras = None;
            }
        }
        let activity = Activity {
            conn: &self.conn,
            express: &self.shared.express,
            record: &self.record,
            flow: self.extras.as_ref().and_then(|x| x.flow.as_deref()),
        };
        self.ends.poll_relay(cx, &activity)
    }

    /// How the tunnel ends, once it does.
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<End>> {
        if let Poll::Ready(done) = self.poll_bytes(cx) {
            return Poll::Ready(done.map(|()| End::Done));
        }
        if let Poll::Ready(why) = self.conn.poll_tunnel_end(cx, &self.shared.hard_stop) {
            return Poll::Ready(Ok(End::By(why)));
        }
        if let Some(closes) = self.extras.as_mut().and_then(|x| x.closes.as_mut()) {
            if let Poll::Ready(why) = closes.as_mut().poll(cx) {
                return Poll::Ready(Ok(End::Closed(why)));
            }
        }
        Poll::Pending
    }

    /// Notes in the record how the tunnel ended.
    fn note(&mut self, end: std::io::Result<End>) {
        let record = &mut self.record;
        match end {
            Ok(End::Done) => {}
            Ok(End::By(TunnelEnd::Idle)) => record.note(format!(
                "closed after {} without traffic",
                humantime::format_duration(self.conn.tunnel_idle().unwrap_or_default())
            )),
            Ok(End::By(TunnelEnd::Evicted)) => record.note(format!(
                "closed after {} without traffic, to make room for a new connection at the connection limits",
                humantime::format_duration(self.conn.tunnel_quiet_for())
            )),
            Ok(End::By(TunnelEnd::Shutdown)) => record.note_failure(
                ErrorKind::Shutdown,
                "cut at the end of the shutdown grace period".into(),
            ),
            Ok(End::Closed(why)) => record.note(why),
            Err(e) => match e.get_ref().and_then(|e| e.downcast_ref::<QuotaCut>()) {
                Some(cut) => record.note_failure(ErrorKind::Denied, cut.to_string()),
                None => {
                    // The task runs outside its connection's span (40 bytes in every
                    // tunnel's task): the event names the client itself.
                    debug!(
                        client = %crate::core::target::AddrText::socket(record.client()),
                        error = %e,
                        "tunnel ended with an error"
                    );
                    record.note(format!("the tunnel ended with an error: {e}"));
                }
            },
        }
    }
}

impl<C, P> Future for Carry<C, P>
where
    C: AsyncRead + AsyncWrite + Socket + Unpin,
    P: Unpin,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let end = ready!(this.poll_end(cx));
        this.note(end);
        Poll::Ready(())
    }
}

impl<C, P> Drop for Carry<C, P> {
    fn drop(&mut self) {
        // Then the record, dropped with the rest, goes to the sinks.
        self.shared.stats.tunnel_closed(self.port);
    }
}
