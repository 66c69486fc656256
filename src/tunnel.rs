//! CONNECT tunnels: check the port, dial the destination, and only then answer `200` and relay
//! bytes both ways until both sides are done.
//!
//! A client's end of data (its FIN) is passed on to the origin while the other direction keeps
//! flowing, so half-closing protocols work. Bytes are counted as they are delivered, so the
//! record is right however the tunnel ends: both sides done, an error, `tunnel_idle` with no
//! byte either way, or the end of the shutdown grace period.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::access::{PendingRecord, Traffic};
use crate::dial::{choose, dial, is_local_address};
use crate::error::EdgeError;
use crate::policy::{Decision, Facts, Kind};
use crate::service::{Exchange, Shared};
use crate::target::{Host, Target};

/// Bytes a quiet direction of a tunnel reads at once, from a buffer inside the task: an idle
/// tunnel holds no heap buffer of its own.
const QUIET_BUFFER: usize = 512;
/// Bytes a busy direction reads at once, from a heap buffer it holds only while busy.
const BUSY_BUFFER: usize = 64 * 1024;

/// A destination dialled for a CONNECT request, waiting for the client's side to upgrade.
pub struct Dialled {
    upgrade: OnUpgrade,
    upstream: TcpStream,
    port: u16,
    tunnel_idle: std::time::Duration,
}

/// Checks and dials a CONNECT destination. The caller answers 200 and spawns [`relay`].
pub async fn open(
    ex: &mut Exchange,
    mut req: Request<Incoming>,
    target: Target,
) -> Result<Dialled, EdgeError> {
    let settings = ex.settings.clone();
    let user = ex.user.clone();
    let facts = Facts {
        client: ex.client.ip(),
        user: user.as_deref(),
        method: req.method().as_str(),
        kind: Kind::Connect,
        host: &target.host,
        port: target.port,
    };
    let per_address = match settings.policy.decide(&facts, None) {
        Decision::Allow(decider) => {
            ex.record.allow(decider);
            None
        }
        Decision::Deny(denial) => return Err(denial.into()),
        Decision::NeedAddress => Some(&facts),
    };
    let timeout = settings.timeouts.connect;
    let shared = ex.shared.clone();
    let parents = shared.parents.load_full();
    let upstream = match parents.as_ref().filter(|p| p.serves(&target.host)) {
        Some(parents) => {
            // The parent resolves names; the guards see addresses written as such, and a
            // rule that needs the address gets it from a lookup here.
            if let Host::Ip(ip) = &target.host {
                let addr = SocketAddr::new(*ip, target.port);
                settings
                    .policy
                    .check_address(&target.host.to_string(), addr, is_local_address)?;
            }
            if let Some(facts) = per_address {
                let (_, decider) = choose(&settings.policy, &target, facts, timeout).await?;
                if let Some(decider) = decider {
                    ex.record.allow(decider);
                }
            }
            let (stream, addr, parent) = match parents.tunnel(&target, timeout).await {
                Ok(connected) => connected,
                Err(e) => {
                    ex.record.parent(e.parent());
                    return Err(EdgeError::upstream(
                        http::StatusCode::BAD_GATEWAY,
                        e.to_string(),
                    ));
                }
            };
            ex.record.parent(&parent);
            ex.record.upstream(addr);
            stream
        }
        None => {
            let connected = dial(&settings.policy, &target, per_address, timeout).await?;
            if let Some(decider) = connected.decider {
                ex.record.allow(decider);
            }
            ex.record.upstream(connected.addr);
            connected.stream
        }
    };
    ex.record.answered(200);
    Ok(Dialled {
        upgrade: hyper::upgrade::on(&mut req),
        upstream,
        port: target.port,
        tunnel_idle: settings.timeouts.tunnel_idle,
    })
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
}

/// Relays a dialled tunnel once the client's connection is handed over; ends the record.
pub async fn relay(
    dialled: Dialled,
    mut record: PendingRecord,
    shared: Arc<Shared>,
    _slot: Arc<crate::server::Slot>,
) {
    let client = match dialled.upgrade.await {
        Ok(upgraded) => TokioIo::new(upgraded),
        Err(e) => {
            record.note(format!("the client left before the tunnel opened: {e}"));
            return;
        }
    };
    let idle = dialled.tunnel_idle;
    let traffic = record.traffic().clone();
    let port = dialled.port;
    shared.stats.tunnel_opened(port);
    let end = tokio::select! {
        result = copy_both_ways(client, dialled.upstream, &traffic, idle) => result,
        _ = shared.hard_stop.cancelled() => Ok(End::Shutdown),
    };
    shared.stats.tunnel_closed(port);
    match end {
        Ok(End::Done) => {}
        Ok(End::Idle) => record.note(format!(
            "closed after {} without traffic",
            humantime::format_duration(idle)
        )),
        Ok(End::Shutdown) => record.note("cut at the end of the shutdown grace period".into()),
        Err(e) => {
            debug!(error = %e, "tunnel ended with an error");
            record.note(format!("the tunnel ended with an error: {e}"));
        }
    }
}

async fn copy_both_ways<C>(
    client: C,
    upstream: TcpStream,
    traffic: &Traffic,
    idle: Duration,
) -> io::Result<End>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last_activity = AtomicU64::new(0);
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = upstream.into_split();
    let up = pump(
        client_read,
        upstream_write,
        &traffic.up,
        &last_activity,
        start,
    );
    let down = pump(
        upstream_read,
        client_write,
        &traffic.down,
        &last_activity,
        start,
    );
    tokio::select! {
        result = async { tokio::try_join!(up, down) } => result.map(|_| End::Done),
        _ = idle_for(idle, &last_activity, start) => Ok(End::Idle),
    }
}

/// Copies one direction until its reader ends, then passes the end on (half-close).
async fn pump<R, W>(
    mut reader: R,
    mut writer: W,
    counter: &AtomicU64,
    last_activity: &AtomicU64,
    start: Instant,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut quiet = [0u8; QUIET_BUFFER];
    let mut busy: Option<Vec<u8>> = None;
    loop {
        let buf: &mut [u8] = match busy.as_mut() {
            Some(big) => big,
            None => &mut quiet,
        };
        let n = reader.read(buf).await?;
        if n == 0 {
            writer.shutdown().await?;
            return Ok(());
        }
        writer.write_all(&buf[..n]).await?;
        let filled = n == buf.len();
        Traffic::add(counter, n);
        last_activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        // A full small read means more is waiting: read big. A small read from the big
        // buffer means the burst is over: give the buffer back.
        if busy.is_none() && filled {
            busy = Some(vec![0u8; BUSY_BUFFER]);
        } else if busy.is_some() && n < QUIET_BUFFER {
            busy = None;
        }
    }
}

/// Completes once no byte has moved for `idle`.
async fn idle_for(idle: Duration, last_activity: &AtomicU64, start: Instant) {
    loop {
        let last = Duration::from_millis(last_activity.load(Ordering::Relaxed));
        tokio::time::sleep_until(start + last + idle).await;
        if last_activity.load(Ordering::Relaxed) == last.as_millis() as u64 {
            return;
        }
    }
}
