//! What the log-in remembers between requests: recently verified credentials, and the
//! clients that keep failing. The caller passes the current time in.

use super::*;

use crate::core::sync::lock;

/// `now + d`, which cannot overflow for durations capped at [`MAX_DURATION`].
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or(now)
}

/// Recently verified credentials, so that a keep-alive browser does not pay bcrypt on every
/// request. Keyed by the SHA-256 of the raw header value (the password itself is never
/// stored); each entry lives for a fixed TTL from its verification, so a removed user or
/// changed password stops working within that time (or at once after [`clear`]).
///
/// Bounded: when full, expired entries go first, then the oldest. Capacity 0 turns it off.
///
/// [`clear`]: CredentialCache::clear
pub struct CredentialCache {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<CacheInner>,
}

struct CacheInner {
    entries: HashMap<[u8; 32], CachedUser>,
    next_seq: u64,
}

struct CachedUser {
    user: String,
    expires: Instant,
    seq: u64,
}

impl CredentialCache {
    /// A cache keeping each verified credential for `ttl` (capped at ten years), holding at
    /// most `capacity` of them.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        CredentialCache {
            ttl: ttl.min(MAX_DURATION),
            capacity,
            inner: Mutex::new(CacheInner {
                entries: HashMap::new(),
                next_seq: 0,
            }),
        }
    }

    fn key(header_value: &[u8]) -> [u8; 32] {
        Sha256::digest(header_value).into()
    }

    /// The user these exact header bytes were verified as, if that was less than the TTL ago.
    pub fn get(&self, header_value: &[u8], now: Instant) -> Option<String> {
        if self.capacity == 0 {
            return None;
        }
        let key = Self::key(header_value);
        let mut inner = lock(&self.inner);
        match inner.entries.get(&key) {
            Some(entry) if now < entry.expires => Some(entry.user.clone()),
            Some(_) => {
                inner.entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Remembers that these header bytes were verified as `user` at `now`.
    pub fn insert(&self, header_value: &[u8], user: String, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let key = Self::key(header_value);
        let expires = after(now, self.ttl);
        let mut inner = lock(&self.inner);
        if !inner.entries.contains_key(&key) && inner.entries.len() >= self.capacity {
            inner.entries.retain(|_, e| now < e.expires);
            if inner.entries.len() >= self.capacity {
                let oldest = inner
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.seq)
                    .map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    inner.entries.remove(&oldest);
                }
            }
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.entries.insert(key, CachedUser { user, expires, seq });
    }

    /// Forgets everything (on reload of the htpasswd file).
    pub fn clear(&self) {
        lock(&self.inner).entries.clear();
    }

    /// How many credentials are remembered (expired ones included until evicted).
    pub fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialCache")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

/// Failed authentication attempts per client address. After `max_failures` failures within
/// `window` (a fixed window starting at the first failure), the address is blocked for
/// `block_for`. IPv4-mapped IPv6 addresses count as their IPv4 address.
///
/// Bounded: when a new address arrives and the map is full, records that no longer matter
/// (window over, no block in force) go first, then the least recently failed unblocked
/// address, and only then the oldest blocked one. `max_failures` 0 turns blocking off.
#[derive(Debug)]
pub struct FailureTracker {
    max_failures: u32,
    window: Duration,
    block_for: Duration,
    capacity: usize,
    inner: Mutex<TrackerInner>,
}

#[derive(Debug)]
struct TrackerInner {
    clients: HashMap<IpAddr, ClientFailures>,
    next_seq: u64,
    /// Passwords being checked now, per address: each may yet fail.
    checking: HashMap<IpAddr, u32>,
}

/// A password check under way, counted against its address's budget until dropped.
#[derive(Debug)]
pub struct Attempt<'a> {
    tracker: &'a FailureTracker,
    ip: IpAddr,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let mut inner = lock(&self.tracker.inner);
        if let Some(n) = inner.checking.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                inner.checking.remove(&self.ip);
            }
        }
    }
}

#[derive(Debug)]
struct ClientFailures {
    /// Failures in the current window.
    failures: u32,
    window_ends: Instant,
    blocked_until: Option<Instant>,
    /// Order of the last failure, for eviction.
    seq: u64,
}

impl ClientFailures {
    fn blocked_at(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|until| now < until)
    }

    fn matters_at(&self, now: Instant) -> bool {
        self.blocked_at(now) || now < self.window_ends
    }
}

impl FailureTracker {
    /// A tracker blocking an address for `block_for` after `max_failures` failures within
    /// `window`, remembering at most `capacity` addresses (at least one). Durations are
    /// capped at ten years.
    pub fn new(max_failures: u32, window: Duration, block_for: Duration, capacity: usize) -> Self {
        FailureTracker {
            max_failures,
            window: window.min(MAX_DURATION),
            block_for: block_for.min(MAX_DURATION),
            capacity: capacity.max(1),
            inner: Mutex::new(TrackerInner {
                clients: HashMap::new(),
                next_seq: 0,
                checking: HashMap::new(),
            }),
        }
    }

    /// Records a failed attempt from `ip`; true if the address is now blocked.
    pub fn note_failure(&self, ip: IpAddr, now: Instant) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let ip = ip.to_canonical();
        let mut inner = lock(&self.inner);
        if inner.clients.get(&ip).is_some_and(|c| c.blocked_at(now)) {
            return true;
        }
        if !inner.clients.contains_key(&ip) && inner.clients.len() >= self.capacity {
            inner.clients.retain(|_, c| c.matters_at(now));
            if inner.clients.len() >= self.capacity {
                let victim = inner
                    .clients
                    .iter()
                    .min_by_key(|(_, c)| (c.blocked_at(now), c.seq))
                    .map(|(ip, _)| *ip);
                if let Some(victim) = victim {
                    inner.clients.remove(&victim);
                }
            }
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let record = inner.clients.entry(ip).or_insert(ClientFailures {
            failures: 0,
            window_ends: after(now, self.window),
            blocked_until: None,
            seq,
        });
        record.seq = seq;
        if record.blocked_until.is_some() || now >= record.window_ends {
            // A block that has run out, or a window that has: start afresh.
            record.blocked_until = None;
            record.failures = 0;
            record.window_ends = after(now, self.window);
        }
        record.failures = record.failures.saturating_add(1);
        if record.failures >= self.max_failures {
            record.failures = 0;
            record.blocked_until = Some(after(now, self.block_for));
            return !self.block_for.is_zero();
        }
        false
    }

    /// Begins a password check for `ip`, unless the address's failures in the window and the
    /// checks under way already reach `max_failures`: checks running at once would otherwise
    /// all pass the block before any of them failed. `None`: refuse without checking.
    pub fn attempt(&self, ip: IpAddr, now: Instant) -> Option<Attempt<'_>> {
        let ip = ip.to_canonical();
        let mut inner = lock(&self.inner);
        if self.max_failures > 0 {
            let failed = inner.clients.get(&ip).map_or(0, |c| {
                if c.blocked_at(now) {
                    self.max_failures
                } else if now < c.window_ends && c.blocked_until.is_none() {
                    c.failures
                } else {
                    0
                }
            });
            let checking = inner.checking.get(&ip).copied().unwrap_or(0);
            if failed.saturating_add(checking) >= self.max_failures {
                return None;
            }
        }
        *inner.checking.entry(ip).or_insert(0) += 1;
        Some(Attempt { tracker: self, ip })
    }

    /// How much longer `ip` is blocked, if it is.
    pub fn blocked_for(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let ip = ip.to_canonical();
        let inner = lock(&self.inner);
        let until = inner.clients.get(&ip)?.blocked_until?;
        until.checked_duration_since(now).filter(|d| !d.is_zero())
    }

    /// Records a successful login from `ip`: its failure count starts again (a block in force
    /// stays until it runs out).
    pub fn note_success(&self, ip: IpAddr) {
        let ip = ip.to_canonical();
        let mut inner = lock(&self.inner);
        match inner.clients.get_mut(&ip) {
            Some(record) if record.blocked_until.is_some() => record.failures = 0,
            Some(_) => {
                inner.clients.remove(&ip);
            }
            None => {}
        }
    }

    /// How many addresses are remembered.
    pub fn len(&self) -> usize {
        lock(&self.inner).clients.len()
    }

    /// Whether no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
