//! CONNECT tunnels: check the port, dial the destination, and only then answer `200` and relay
//! bytes both ways until both sides are done.
//!
//! The relay ([`crate::proxy::relay`]) passes a client's end of data (its FIN) on to the
//! origin while the other direction keeps flowing, so half-closing protocols work. Bytes are
//! counted as they are delivered, so the record is right however the tunnel ends: both sides
//! done, an error, `tunnel_idle` with no byte either way, or the end of the shutdown grace
//! period.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
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
use crate::proxy::conn::{ConnState, InFlight, WatchedIo};
use crate::proxy::relay::{self, Activity, QuotaCut, Socket};
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
                let client = parts.io.into_inner().into_stream();
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
                let client = TokioIo::new(upgraded);
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
        let client = TokioIo::new(upgraded);
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

/// Relays between the client's end of a tunnel and the dialled destination until both are
/// done, the tunnel idles for `tunnel_idle`, its connection is closed to make room, a rule's
/// window closes, or the shutdown grace period ends; notes how it ended in `record`. `early`
/// (bytes the client sent behind its request, already read) goes to the destination first.
///
/// Not an `async fn`: one would keep each argument twice in its state (the argument and the
/// local it is moved into), and every idle tunnel holds that state.
#[allow(clippy::manual_async_fn, reason = "argument kept twice")]
pub(crate) fn carry<'a, C>(
    client: C,
    early: Bytes,
    tunnel: Tunnel,
    record: &'a mut PendingRecord,
    shared: &'a ProxyState,
    slot: &'a Slot,
) -> impl std::future::Future<Output = ()> + Send + 'a
where
    C: AsyncRead + AsyncWrite + Socket + Unpin + Send + 'a,
{
    async move {
        let Tunnel {
            mut upstream,
            port,
            idle,
            flow,
            window,
        } = tunnel;
        let conn = slot.conn();
        shared.stats.tunnel_opened(port);
        // Called inside select!, not bound first: a bound future is kept twice in this
        // task's state, and every idle tunnel holds that state.
        let end = tokio::select! {
            result = async {
                let record = &*record;
                if !early.is_empty() {
                    upstream.write_all(&early).await?;
                    let traffic = record.traffic();
                    traffic.add(&traffic.up, early.len());
                }
                // A slice of hyper's read buffer, which lives as long as it does: let go at
                // once, so that an idle tunnel does not keep kilobytes of it.
                drop(early);
                let activity = Activity { conn, record, flow: flow.as_deref() };
                relay::both_ways(client, upstream, activity).await
            } => result.map(|()| End::Done),
            _ = idle_for(idle, conn) => Ok(End::Idle),
            _ = conn.evicted() => Ok(End::Evicted),
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
                humantime::format_duration(conn.tunnel_quiet_for())
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
