//! SOCKS5 UDP ASSOCIATE (RFC 1928 §7), when `socks.udp` is on: a UDP relay socket bound to
//! the address the client's TCP connection arrived on, alive as long as that control
//! connection. It takes datagrams only from the client's address (and port, when the request
//! named one), drops fragments (FRAG ≠ 0), decides each destination with the plan
//! (`plan::destination` with [`Kind::SocksUdp`]: the rules, then `socks.udp_ports`; the
//! guards on every address after DNS, as for a dial), and sends the data on from an outbound
//! socket (from `upstream.bind` when set). Answers come back only from addresses the client
//! sent to, wrapped in the SOCKS UDP header. One access record per association: bytes each
//! way, and the datagrams relayed and dropped.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::core::error::{EdgeError, ErrorKind};
use crate::core::plan;
use crate::core::policy::{Builtin, Decider, Facts, Kind};
use crate::core::socks::{self as wire, Reply};
use crate::core::target::{Host, Target};
use crate::egress::dial::{allowed_addresses, is_local_address};
use crate::observe::stats::Relayed;
use crate::proxy::admission::Slot;
use crate::proxy::exchange::Exchange;
use crate::proxy::respond::note_failure;

/// The method of an association's record, and the one rules match for its datagrams.
pub(crate) use crate::core::socks::UDP_METHOD as METHOD;

/// Destination ports whose datagrams are counted apart, per association; those of more go
/// to the first destination's port.
const MAX_PORTS: usize = 64;

/// Destinations remembered per association, whose answers are let back.
const MAX_PEERS: usize = 1024;

/// The largest datagram.
const DATAGRAM: usize = 65_536;

/// What the association counts, for its record and the statistics.
#[derive(Default)]
struct Counts {
    up: u64,
    down: u64,
    dropped: u64,
    refusal: Option<String>,
    /// Per destination port: datagrams and bytes relayed each way.
    ports: Vec<(u16, Relayed)>,
}

impl Counts {
    /// Datagrams relayed to or from destination `port`: at most [`MAX_PORTS`] ports are kept
    /// apart, then the first one takes the rest.
    fn port(&mut self, port: u16) -> &mut Relayed {
        let at = match self.ports.iter().position(|(p, _)| *p == port) {
            Some(at) => at,
            None if self.ports.len() < MAX_PORTS => {
                self.ports.push((port, Relayed::default()));
                self.ports.len() - 1
            }
            None => 0,
        };
        &mut self.ports[at].1
    }
}

/// What woke the relay.
enum Woke {
    /// The control connection closed (or failed).
    ControlClosed,
    /// It sent bytes, which mean nothing now.
    ControlBytes,
    /// A datagram on the relay socket.
    FromClient(Vec<u8>, SocketAddr),
    /// A datagram on an outbound socket.
    FromDestination(Vec<u8>, SocketAddr),
    /// No datagram either way for `tunnel_idle`.
    Idle,
    /// Closed to make room, or cut at the end of the shutdown grace period.
    Cut(&'static str),
}

/// Serves one UDP association until its control connection closes.
pub(crate) async fn associate(
    mut ex: Exchange,
    mut control: TcpStream,
    declared: Target,
    slot: Slot,
    stop: CancellationToken,
) {
    let _ = stop;
    let relay = match UdpSocket::bind(SocketAddr::new(ex.local.ip(), 0)).await {
        Ok(socket) => socket,
        Err(e) => {
            let _ = control
                .write_all(&wire::reply(Reply::GENERAL_FAILURE, None))
                .await;
            note_failure(
                &mut ex,
                &EdgeError::new(
                    ErrorKind::Unreachable,
                    format!("no UDP relay socket could be bound: {e}"),
                ),
            );
            return;
        }
    };
    let bound = relay
        .local_addr()
        .unwrap_or(SocketAddr::new(ex.local.ip(), 0));
    if control
        .write_all(&wire::reply(Reply::SUCCEEDED, Some(bound)))
        .await
        .is_err()
    {
        ex.record
            .note("the client left before the SOCKS reply".into());
        return;
    }
    ex.record.answered(200);
    ex.record.allow(Builtin::Nothing);
    let conn = slot.conn().clone();
    conn.tunnel_opened();
    let idle = ex.settings.timeouts.tunnel_idle;
    let client_ip = ex.client.ip().to_canonical();
    let mut client: Option<SocketAddr> = None;
    let mut peers: HashSet<SocketAddr> = HashSet::new();
    let (mut v4, mut v6): (Option<UdpSocket>, Option<UdpSocket>) = (None, None);
    let mut counts = Counts::default();
    let traffic = ex.record.traffic().clone();
    let mut first = true;
    let why = loop {
        let mut ctl = [0u8; 64];
        let quiet = conn.tunnel_quiet_for();
        let woke = tokio::select! {
            read = control.read(&mut ctl) => match read {
                Ok(0) | Err(_) => Woke::ControlClosed,
                Ok(_) => Woke::ControlBytes,
            },
            ready = relay.readable() => match ready.and_then(|()| receive(&relay)) {
                Ok((datagram, from)) => Woke::FromClient(datagram, from),
                Err(_) => continue,
            },
            socket = readable(&v4, &v6) => match receive(socket) {
                Ok((data, from)) => Woke::FromDestination(data, from),
                Err(_) => continue,
            },
            _ = tokio::time::sleep(idle.saturating_sub(quiet).max(Duration::from_millis(1))) => {
                if conn.tunnel_quiet_for() >= idle { Woke::Idle } else { continue }
            }
            _ = conn.evicted() => Woke::Cut("closed while idle, to make room for a new connection at the connection limits"),
            _ = ex.shared.hard_stop.cancelled() => Woke::Cut("cut at the end of the shutdown grace period"),
        };
        match woke {
            Woke::ControlClosed => break None,
            Woke::ControlBytes => {}
            Woke::Idle => {
                break Some(format!(
                    "closed after {} without traffic",
                    humantime::format_duration(idle)
                ))
            }
            Woke::Cut(why) => break Some(why.to_owned()),
            Woke::FromClient(datagram, from) => {
                let from = SocketAddr::new(from.ip().to_canonical(), from.port());
                let ours = from.ip() == client_ip
                    && (declared.port == 0 || from.port() == declared.port)
                    && client.is_none_or(|c| c == from);
                if !ours {
                    counts.dropped += 1;
                    continue;
                }
                client = Some(from);
                let datagram = &datagram[..];
                let Some(header) = wire::datagram(datagram).filter(|d| d.frag == 0) else {
                    counts.dropped += 1;
                    continue;
                };
                let data = &datagram[header.data_at..];
                match allow(&mut ex, &header.target).await {
                    Ok((to, decider)) => {
                        let socket = if to.is_ipv4() { &mut v4 } else { &mut v6 };
                        if socket.is_none() {
                            *socket = outbound_socket(&ex, to).await;
                        }
                        let Some(socket) = socket else {
                            counts.dropped += 1;
                            continue;
                        };
                        if socket.send_to(data, to).await.is_err() {
                            counts.dropped += 1;
                            continue;
                        }
                        if peers.len() < MAX_PEERS {
                            peers.insert(to);
                        }
                        counts.up += 1;
                        counts.port(to.port()).add_up(data.len());
                        traffic.add(&traffic.up, data.len());
                        conn.tunnel_moved();
                        if first {
                            first = false;
                            ex.record
                                .destination(header.target.host.to_string(), header.target.port);
                            ex.record.upstream(to);
                            ex.record.allow(decider);
                        }
                        // The client's, user's and host's rows grow as datagrams go; the
                        // ports' at the end (`udp_relayed`).
                        ex.record.progress();
                    }
                    Err(e) => {
                        let e = crate::proxy::socks::as_login_refusal(&ex, e, &header.target);
                        counts.dropped += 1;
                        counts.refusal.get_or_insert(match &e.rule {
                            Some(rule) => format!("{} (decided by {rule})", e.reason),
                            None => e.reason.clone(),
                        });
                    }
                }
            }
            Woke::FromDestination(data, from) => {
                let from = SocketAddr::new(from.ip().to_canonical(), from.port());
                let (Some(to), true) = (client, peers.contains(&from)) else {
                    counts.dropped += 1;
                    continue;
                };
                let n = data.len();
                let mut back = wire::datagram_header(from);
                back.extend_from_slice(&data);
                if relay.send_to(&back, to).await.is_ok() {
                    counts.down += 1;
                    counts.port(from.port()).add_down(n);
                    traffic.add(&traffic.down, n);
                    conn.tunnel_moved();
                    ex.record.progress();
                }
            }
        }
    };
    for (port, relayed) in &counts.ports {
        ex.shared.stats.udp_relayed(*port, relayed);
    }
    let mut note = format!(
        "UDP: {} datagrams up, {} down, {} dropped",
        counts.up, counts.down, counts.dropped
    );
    if let Some(refusal) = counts.refusal {
        note.push_str(&format!("; first refused: {refusal}"));
    }
    if let Some(why) = why {
        note.push_str(&format!("; {why}"));
    }
    ex.record.note(note);
}

thread_local! {
    /// Room for the largest datagram, one per worker thread, shared by every association.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; DATAGRAM]);
}

/// Reads the datagram `socket` has ready (`WouldBlock` when it has none) into a buffer of
/// its own size: an association holds no 64 KiB buffer of its own while it waits.
fn receive(socket: &UdpSocket) -> std::io::Result<(Vec<u8>, SocketAddr)> {
    SCRATCH.with_borrow_mut(|buf| {
        let (n, from) = socket.try_recv_from(buf)?;
        Ok((buf[..n].to_vec(), from))
    })
}

/// The first of the outbound sockets (those there are) that has a datagram to read; never
/// completes while there is none. (A readiness error shows again on the read.)
async fn readable<'s>(v4: &'s Option<UdpSocket>, v6: &'s Option<UdpSocket>) -> &'s UdpSocket {
    async fn ready(socket: &Option<UdpSocket>) -> &UdpSocket {
        match socket {
            Some(socket) => {
                let _ = socket.readable().await;
                socket
            }
            None => std::future::pending().await,
        }
    }
    tokio::select! {
        socket = ready(v4) => socket,
        socket = ready(v6) => socket,
    }
}

/// The outbound socket of `to`'s family, from `upstream.bind` when it has one of that family.
async fn outbound_socket(ex: &Exchange, to: SocketAddr) -> Option<UdpSocket> {
    let any = if to.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    let from = ex
        .settings
        .bind
        .iter()
        .copied()
        .find(|ip| ip.is_ipv4() == to.is_ipv4())
        .unwrap_or(any);
    UdpSocket::bind(SocketAddr::new(from, 0)).await.ok()
}

/// The plan for one datagram to `target`: the rules and `socks.udp_ports`, then the guards
/// on each of its addresses (after DNS). Answers the address to send to and what allowed it.
async fn allow(ex: &mut Exchange, target: &Target) -> Result<(SocketAddr, Decider), EdgeError> {
    if target.port == 0 {
        return Err(EdgeError::new(
            ErrorKind::Client,
            "port 0 is not a valid destination port",
        ));
    }
    let settings = ex.settings.clone();
    let facts = Facts {
        client: ex.client.ip(),
        user: ex.user.as_deref(),
        groups: &ex.groups,
        method: METHOD,
        kind: Kind::SocksUdp,
        host: &target.host,
        port: target.port,
        at: jiff::Timestamp::now(),
    };
    // Datagrams never go through a parent proxy.
    let go = plan::destination(
        &settings.policy,
        &facts,
        &|_: &Host| false,
        &is_local_address,
        &mut (),
    )?;
    crate::proxy::budget::admit(ex, &facts)?;
    let outbound = ex.shared.outbound.load_full();
    let mut dns = None;
    let checked = allowed_addresses(&outbound, &settings.policy, target, &facts, &mut dns).await?;
    let (addr, per_address) =
        checked.allowed.into_iter().next().ok_or_else(|| {
            EdgeError::new(ErrorKind::Dns, format!("{} has no address", target.host))
        })?;
    let decider = go
        .decider
        .or(per_address)
        .unwrap_or(Decider::Builtin(Builtin::SocksUdpPorts));
    Ok((addr, decider))
}
