//! Admission: open client connections counted in all, per client address and per network,
//! against `[limits]`; each connection holds a [`Slot`] until it (and its tunnels) end.
//!
//! At a limit the admission makes room before it refuses. It closes one connection that is
//! doing nothing, in this order: one waiting for its request head (new and silent for at
//! least [`SILENT_GRACE`], or a head begun and not complete), then one kept alive between
//! requests, then a tunnel that has moved no byte for `limits.idle_tunnel_after`; of its
//! kind, one from the network (a /24, a /64) that holds the most connections, and of those
//! the oldest (waiting, or idle, the longest). It is chosen among the next [`SAMPLE`] such
//! connections, looking at no more than [`LOOK_AT_MOST`] places of the table, so that a
//! choice costs little however many are open. A flood of idle connections from many
//! addresses therefore gives way to every newcomer, while a client that sends its request
//! within [`SILENT_GRACE`] of connecting keeps its connection. Only when no connection in
//! reach can make room is the newcomer refused (`503`, or `429` at its address's limit, with
//! `Retry-After`); past the limit and [`limits::REFUSAL_ALLOWANCE`] refusals it is shed with
//! a fixed `503`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use slab::Slab;
use tokio::time::Instant;

use crate::config::LimitsConfig;
use crate::core::error::EdgeError;
use crate::core::limits;
use crate::core::sync::lock;
use crate::observe::stats::{ConnectionCounts, MadeRoom};
use crate::proxy::conn::{ConnState, Standing};

/// The outcome of [`Admission::admit`].
pub enum Admit {
    /// Served; the slot frees itself when dropped.
    Yes(Slot),
    /// Answered with this refusal, then closed; counted meanwhile.
    Refuse(EdgeError, Slot),
    /// Far over the limit: answered at once with [`limits::NO_ROOM_RESPONSE`] and closed,
    /// with no task and no record.
    Shed,
}

/// What a connection that can make room was doing, in the order they are chosen.
const WAITING: usize = 0;
const KEPT_ALIVE: usize = 1;
const IDLE_TUNNEL_CLASS: usize = 2;

/// A new connection that has sent nothing for less than this does not make room: its
/// client has just connected and is about to send (a request arrives within a few
/// milliseconds of the handshake on a LAN). Without it, at a limit each newcomer would close
/// the one before it before that one's request arrived.
pub const SILENT_GRACE: Duration = Duration::from_millis(20);

/// Places of the connection table looked at, at most, to find a connection that makes room.
pub const LOOK_AT_MOST: usize = 1024;

/// Counts open client connections, in all, per client address and per network, and knows
/// each admitted one's state so that an idle one can make room.
#[derive(Default)]
pub struct Admission {
    /// Every open connection, refused ones included.
    total: AtomicUsize,
    inner: Mutex<Inner>,
    made_room: [AtomicU64; 3],
    shed: AtomicU64,
}

/// Idle connections compared, at most, to choose the one that makes room: looked for from
/// where the last look ended, so that each is compared in turn. With fewer open, the choice
/// is exact.
pub const SAMPLE: usize = 64;

/// How readily a connection makes room: what it is doing, its network's connections (more
/// first, hence reversed), since when.
type Rank = (usize, std::cmp::Reverse<usize>, Instant);

#[derive(Default)]
struct Inner {
    /// Admitted connections.
    conns: Slab<Entry>,
    /// Admitted connections per client address (those told to make room no longer count).
    per_client: HashMap<IpAddr, usize>,
    /// Networks with admitted connections, and where their count is in `networks`.
    network_keys: HashMap<IpNet, usize>,
    networks: Slab<Network>,
    /// Admitted connections told to make room that have not closed yet.
    leaving: usize,
    /// Where the last look for a connection to make room ended (a key of `conns`).
    cursor: usize,
}

struct Entry {
    ip: IpAddr,
    /// Its network's key in `Inner::networks`.
    network: usize,
    conn: Arc<ConnState>,
    leaving: bool,
}

struct Network {
    net: IpNet,
    open: usize,
}

/// Whose connection may make room for a newcomer.
#[derive(Clone, Copy)]
enum Among {
    All,
    Client(IpAddr),
    Network(usize),
}

impl Admission {
    /// Admits a connection from `ip` whose state is `conn`, making room when a limit is
    /// reached, or says how to turn it away.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        conn: Arc<ConnState>,
        limits: &LimitsConfig,
    ) -> Admit {
        let ip = ip.to_canonical();
        let open = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        let mut slot = Slot {
            admission: self.clone(),
            conn,
            key: None,
        };
        let mut inner = lock(&self.inner);
        let refusal = 'refused: {
            let of_client = inner.per_client.get(&ip).copied().unwrap_or(0);
            if of_client >= limits.max_connections_per_client
                && !self.make_room(&mut inner, Among::Client(ip), limits)
            {
                break 'refused limits::refuse_client(ip, limits.max_connections_per_client);
            }
            let net = limits.network_of(ip);
            if let Some(most) = limits.max_connections_per_network {
                if let Some(&key) = inner.network_keys.get(&net) {
                    if inner.networks[key].open >= most
                        && !self.make_room(&mut inner, Among::Network(key), limits)
                    {
                        break 'refused limits::refuse_network(net, most);
                    }
                }
            }
            let staying = inner.conns.len() - inner.leaving;
            if staying >= limits.max_connections && !self.make_room(&mut inner, Among::All, limits)
            {
                break 'refused limits::refuse_total(limits.max_connections);
            }
            let network = match inner.network_keys.get(&net) {
                Some(&key) => key,
                None => {
                    let key = inner.networks.insert(Network { net, open: 0 });
                    inner.network_keys.insert(net, key);
                    key
                }
            };
            inner.networks[network].open += 1;
            *inner.per_client.entry(ip).or_insert(0) += 1;
            let key = inner.conns.insert(Entry {
                ip,
                network,
                conn: slot.conn.clone(),
                leaving: false,
            });
            slot.key = Some(key);
            return Admit::Yes(slot);
        };
        drop(inner);
        if limits::shed(open, limits.max_connections) {
            self.shed.fetch_add(1, Ordering::Relaxed);
            return Admit::Shed;
        }
        Admit::Refuse(refusal, slot)
    }

    /// Tells one idle connection among `among` to close, the first in the order of the
    /// module's documentation; false when every one of them is busy.
    fn make_room(&self, inner: &mut Inner, among: Among, limits: &LimitsConfig) -> bool {
        let now = Instant::now();
        let quiet_since = now.checked_sub(limits.idle_tunnel_after);
        let silent_since = now.checked_sub(SILENT_GRACE);
        // Smallest wins: the kind, then the most crowded network, then the oldest.
        let mut best: Option<(Rank, usize)> = None;
        let slots = inner.conns.capacity();
        let mut at = inner.cursor;
        let mut candidates = 0;
        for _ in 0..slots.min(LOOK_AT_MOST) {
            at = if at + 1 >= slots { 0 } else { at + 1 };
            let Some(entry) = inner.conns.get(at) else {
                continue;
            };
            let ours = match among {
                Among::All => true,
                Among::Client(ip) => entry.ip == ip,
                Among::Network(network) => entry.network == network,
            };
            if entry.leaving || !ours {
                continue;
            }
            let (class, since) = match entry.conn.standing() {
                Standing::KeptAlive(since) => (KEPT_ALIVE, since),
                Standing::Silent(since) if silent_since.is_some_and(|s| since <= s) => {
                    (WAITING, since)
                }
                Standing::HeadBegun(since) => (WAITING, since),
                Standing::Silent(_) => continue,
                Standing::Tunnel(last) if quiet_since.is_some_and(|q| last <= q) => {
                    (IDLE_TUNNEL_CLASS, last)
                }
                Standing::Tunnel(_) | Standing::Busy | Standing::Closing => continue,
            };
            let crowd = std::cmp::Reverse(inner.networks[entry.network].open);
            let rank = (class, crowd, since);
            if best.as_ref().is_none_or(|(b, _)| rank < *b) {
                best = Some((rank, at));
            }
            candidates += 1;
            if candidates == SAMPLE {
                break;
            }
        }
        inner.cursor = at;
        let Some(((class, _, _), key)) = best else {
            return false;
        };
        let entry = &mut inner.conns[key];
        entry.leaving = true;
        entry.conn.evict();
        let (ip, network) = (entry.ip, entry.network);
        // From now on it counts nowhere: the next newcomer does not make room again for it.
        inner.leaving += 1;
        inner.release(ip, network);
        self.made_room[class].fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Tells the relay of each tunnel that has moved no byte for its `tunnel_idle` to end
    /// ([`ConnState::poll_tunnel_end`]). Called every [`crate::proxy::tunnel::sweep_every`]:
    /// one look over the table instead of a timer in every tunnel. Answers how many were
    /// told, and the shortest `tunnel_idle` among the open tunnels (which may be a reloaded
    /// configuration's), to time the next look by.
    pub fn wake_idle_tunnels(&self) -> (usize, Option<Duration>) {
        let inner = lock(&self.inner);
        let (mut told, mut shortest) = (0, None::<Duration>);
        for (_, entry) in inner.conns.iter() {
            let Some(idle) = entry.conn.tunnel_idle() else {
                continue;
            };
            shortest = Some(shortest.map_or(idle, |s| s.min(idle)));
            if entry.conn.tunnel_quiet_for() >= idle {
                entry.conn.wake_tunnel();
                told += 1;
            }
        }
        (told, shortest)
    }

    /// Tells every tunnel's relay to look whether it must end (at the end of the shutdown
    /// grace period).
    pub fn wake_tunnels(&self) {
        for (_, entry) in lock(&self.inner).conns.iter() {
            entry.conn.wake_tunnel();
        }
    }

    /// What the open connections are doing, and how many made room or were shed.
    pub fn counts(&self, limits: &LimitsConfig) -> ConnectionCounts {
        let mut counts = ConnectionCounts {
            open: self.open(),
            made_room: MadeRoom {
                kept_alive: self.made_room[KEPT_ALIVE].load(Ordering::Relaxed),
                waiting: self.made_room[WAITING].load(Ordering::Relaxed),
                idle_tunnel: self.made_room[IDLE_TUNNEL_CLASS].load(Ordering::Relaxed),
            },
            shed: self.shed.load(Ordering::Relaxed),
            ..ConnectionCounts::default()
        };
        let quiet_since = Instant::now().checked_sub(limits.idle_tunnel_after);
        let inner = lock(&self.inner);
        for (_, entry) in inner.conns.iter() {
            match entry.conn.standing() {
                Standing::Busy | Standing::Closing => counts.busy += 1,
                Standing::KeptAlive(_) => counts.kept_alive += 1,
                Standing::Silent(_) | Standing::HeadBegun(_) => counts.waiting += 1,
                Standing::Tunnel(last) if quiet_since.is_some_and(|q| last <= q) => {
                    counts.idle_tunnels += 1
                }
                Standing::Tunnel(_) => counts.tunnels += 1,
            }
        }
        counts
    }
}

/// One admitted (or refused) connection's place in the counts; freed on drop.
pub struct Slot {
    admission: Arc<Admission>,
    conn: Arc<ConnState>,
    /// Its entry among the admitted connections (none when refused).
    key: Option<usize>,
}

impl Slot {
    /// The state of the connection that holds this slot.
    pub fn conn(&self) -> &Arc<ConnState> {
        &self.conn
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let admission = &self.admission;
        admission.total.fetch_sub(1, Ordering::AcqRel);
        let Some(key) = self.key else {
            return;
        };
        let mut inner = lock(&admission.inner);
        let inner = &mut *inner;
        let entry = inner.conns.remove(key);
        if entry.leaving {
            // Its counts were released when it was told to make room.
            inner.leaving -= 1;
        } else {
            inner.release(entry.ip, entry.network);
        }
    }
}

impl Inner {
    /// Takes a connection out of its address's and its network's counts.
    fn release(&mut self, ip: IpAddr, network: usize) {
        if let Some(count) = self.per_client.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_client.remove(&ip);
            }
        }
        let counted = &mut self.networks[network];
        counted.open -= 1;
        if counted.open == 0 {
            let net = counted.net;
            self.networks.remove(network);
            self.network_keys.remove(&net);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_belongs_to_the_network_of_its_prefix() {
        let limits = LimitsConfig::default();
        let network = |l: &LimitsConfig, ip: &str| l.network_of(ip.parse().unwrap()).to_string();
        assert_eq!(network(&limits, "192.168.1.77"), "192.168.1.0/24");
        assert_eq!(
            network(&limits, "2001:db8:1:2:3:4:5:6"),
            "2001:db8:1:2::/64"
        );
        let narrow = LimitsConfig {
            network_prefix_v4: 32,
            network_prefix_v6: 128,
            ..LimitsConfig::default()
        };
        assert_eq!(network(&narrow, "192.168.1.77"), "192.168.1.77/32");
        assert_eq!(network(&narrow, "2001:db8::1"), "2001:db8::1/128");
    }

    /// The sweep wakes a tunnel quiet past its `tunnel_idle`, and only such a one; the
    /// relay then finds it idle. Eviction and shutdown wake it as well.
    #[tokio::test]
    async fn the_sweep_wakes_only_tunnels_quiet_past_their_timeout() {
        use std::future::poll_fn;
        use tokio_util::sync::CancellationToken;

        use crate::proxy::conn::TunnelEnd;

        let admission = Arc::new(Admission::default());
        let limits = LimitsConfig::default();
        let admit = |ip: &str| {
            let conn = Arc::new(ConnState::new());
            match admission.admit(ip.parse().unwrap(), conn, &limits) {
                Admit::Yes(slot) => slot,
                _ => panic!("admitted under the default limits"),
            }
        };
        let (quiet, busy, plain) = (admit("10.0.0.1"), admit("10.0.0.2"), admit("10.0.0.3"));
        for (slot, idle) in [(&quiet, 200), (&busy, 60_000)] {
            slot.conn().tunnel_opened();
            slot.conn().tunnel_relays(Duration::from_millis(idle));
        }
        let stop = CancellationToken::new();
        // What the relay does when polled: Pending registers its waker.
        let end = |slot: &Slot| {
            let (conn, stop) = (slot.conn().clone(), stop.clone());
            tokio::spawn(async move { poll_fn(|cx| conn.poll_tunnel_end(cx, &stop)).await })
        };
        let (quiet_end, busy_end) = (end(&quiet), end(&busy));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            admission.wake_idle_tunnels(),
            (0, Some(Duration::from_millis(200))),
            "none is past its timeout yet; the shortest timeout is the quiet one's"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        // Only the tunnel quiet past its 200 ms: not the one with a minute, nor a connection
        // without a tunnel.
        assert_eq!(admission.wake_idle_tunnels().0, 1);
        let woken = tokio::time::timeout(Duration::from_secs(5), quiet_end).await;
        assert_eq!(woken.expect("woken by the sweep").unwrap(), TunnelEnd::Idle);
        assert!(!busy_end.is_finished());
        // Shutdown: the token is cancelled, then every tunnel woken.
        stop.cancel();
        admission.wake_tunnels();
        let woken = tokio::time::timeout(Duration::from_secs(5), busy_end).await;
        assert_eq!(
            woken.expect("woken at shutdown").unwrap(),
            TunnelEnd::Shutdown
        );
        // Made room for: woken by the eviction itself.
        let conn = plain.conn().clone();
        let evicted = tokio::spawn(async move {
            poll_fn(|cx| conn.poll_tunnel_end(cx, &CancellationToken::new())).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!evicted.is_finished());
        plain.conn().evict();
        let woken = tokio::time::timeout(Duration::from_secs(5), evicted).await;
        assert_eq!(
            woken.expect("woken by the eviction").unwrap(),
            TunnelEnd::Evicted
        );
    }
}
