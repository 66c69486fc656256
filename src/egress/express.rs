//! The express lane: small exchanges of light clients go ahead of bulk bytes (issue 18).
//!
//! A light request through the proxy is woken several times (its connection reads the
//! request; the pooled origin connection writes it and reads the answer; its connection
//! writes the answer), and each time it waits behind the tasks of the bulk transfers on the
//! same thread. Left alone, each of those moves a whole read of the origin (up to 408 KiB)
//! per turn and is at once ready again, so a light request waits several such turns at every
//! step. [`Express`] counts the exchanges of light clients in flight; while there is one,
//! or one ended less than [`LINGER`] ago (the next request must be noticed as it arrives,
//! before it is known to be light), the bulk transfers take short turns: an origin read
//! moves at most [`STEP`] (when some exchange is bulk: light ones have nothing to shorten,
//! and their reads skip the copy), and a bulk body or a busy tunnel steps aside ([`step_aside`])
//! after each piece, until the thread has looked for I/O that became ready (tokio runs tasks
//! deferred that way after the ones woken by the I/O driver). A client whose own light
//! exchange lingers and that then downloads ends the linger: there is no one else to make
//! room for. With no light exchange about, nothing changes.
//!
//! An exchange is light from its start until it has moved [`LIGHT_BYTES`] towards the
//! client, if its client has no bulk exchange in flight then; past that it is bulk, and so
//! is its client until it ends. `CONNECT` tunnels are neither counted light nor marked bulk:
//! they step aside for the light exchanges of others. This module owns the counts; the
//! data path (origin reads here, bodies and tunnels in `crate::proxy`) acts on them.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::core::sync::lock;

/// Bytes towards the client after which an exchange is bulk.
pub const LIGHT_BYTES: u64 = 64 * 1024;

/// The most a bulk transfer moves in one step while a light exchange is in flight.
pub const STEP: usize = 16 * 1024;

/// How long after a light exchange ends its client still counts as waiting: the next
/// request of someone browsing must be noticed when it arrives, before it is counted.
pub const LINGER: Duration = Duration::from_secs(1);

/// The light exchanges in flight, and the clients with a bulk exchange in flight.
#[derive(Debug)]
pub struct Express {
    light: AtomicUsize,
    /// Bulk exchanges in flight, of all clients: while there are none, a new exchange is
    /// light without a look at the clients, and origin reads have nothing to shorten.
    bulk: AtomicUsize,
    /// Until when (ms since `start`, 0: never) a light exchange that ended lingers.
    linger_until: AtomicU64,
    start: Instant,
    clients: Mutex<Clients>,
}

/// The clients the counts are of.
#[derive(Debug, Default)]
struct Clients {
    /// Per client, its bulk exchanges in flight.
    bulk: HashMap<IpAddr, u32>,
    /// The client whose light exchange set the linger last: if it turns bulk itself, there
    /// is no one to make room for.
    lingering: Option<IpAddr>,
}

impl Default for Express {
    fn default() -> Self {
        Express {
            light: AtomicUsize::new(0),
            bulk: AtomicUsize::new(0),
            linger_until: AtomicU64::new(0),
            start: Instant::now(),
            clients: Mutex::default(),
        }
    }
}

impl Express {
    /// Whether a light exchange is in flight, or ended less than [`LINGER`] ago: bulk
    /// transfers take short turns.
    pub fn waiting(&self) -> bool {
        if self.light.load(Ordering::Relaxed) > 0 {
            return true;
        }
        let until = self.linger_until.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    /// Whether a bulk exchange's origin reads take short turns: a light exchange is waiting
    /// and some client has a bulk exchange in flight.
    pub fn shortening(&self) -> bool {
        self.bulk.load(Ordering::Relaxed) > 0 && self.waiting()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A light exchange of `client` ended: it may ask again soon.
    fn linger(&self, client: IpAddr) {
        let until = self
            .now_ms()
            .saturating_add(LINGER.as_millis() as u64)
            .max(1);
        lock(&self.clients).lingering = Some(client);
        self.linger_until.fetch_max(until, Ordering::Relaxed);
    }

    /// The lane of a new exchange of `client`: light, unless the client has a bulk exchange
    /// in flight.
    pub fn enter(self: &Arc<Self>, client: IpAddr) -> Lane {
        let some_bulk = self.bulk.load(Ordering::Relaxed) > 0;
        let state = if some_bulk && lock(&self.clients).bulk.contains_key(&client) {
            State::Other
        } else {
            self.light.fetch_add(1, Ordering::Relaxed);
            State::Light
        };
        Lane {
            express: self.clone(),
            client,
            state,
        }
    }

    /// Light exchanges in flight (for tests).
    #[cfg(test)]
    fn light(&self) -> usize {
        self.light.load(Ordering::Relaxed)
    }
}

/// Where one exchange stands, until it is dropped.
#[derive(Debug)]
pub struct Lane {
    express: Arc<Express>,
    client: IpAddr,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Counted among the light exchanges.
    Light,
    /// Past [`LIGHT_BYTES`]: its client counts it as a bulk exchange.
    Bulk,
    /// Neither: its client had a bulk exchange in flight when it began.
    Other,
}

impl Lane {
    /// The counts this lane is in.
    pub fn express(&self) -> &Express {
        &self.express
    }

    /// Whether the exchange is bulk (past [`LIGHT_BYTES`]).
    pub fn is_bulk(&self) -> bool {
        self.state == State::Bulk
    }

    /// Notes that the exchange has moved `down` bytes towards the client in all: past
    /// [`LIGHT_BYTES`] it turns bulk, and so does its client.
    pub fn moved(&mut self, down: u64) {
        if self.state == State::Bulk || down <= LIGHT_BYTES {
            return;
        }
        if self.state == State::Light {
            self.express.light.fetch_sub(1, Ordering::Relaxed);
        }
        let mut clients = lock(&self.express.clients);
        *clients.bulk.entry(self.client).or_insert(0) += 1;
        self.express.bulk.fetch_add(1, Ordering::Relaxed);
        if clients.lingering == Some(self.client) {
            // The light client of late is this one, downloading now: no one to wait for.
            clients.lingering = None;
            self.express.linger_until.store(0, Ordering::Relaxed);
        }
        drop(clients);
        self.state = State::Bulk;
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        match self.state {
            State::Light => {
                self.express.light.fetch_sub(1, Ordering::Relaxed);
                self.express.linger(self.client);
            }
            State::Bulk => {
                let mut clients = lock(&self.express.clients);
                self.express.bulk.fetch_sub(1, Ordering::Relaxed);
                if let Some(count) = clients.bulk.get_mut(&self.client) {
                    *count -= 1;
                    if *count == 0 {
                        clients.bulk.remove(&self.client);
                    }
                }
            }
            State::Other => {}
        }
    }
}

/// Pending once, with the task's waker deferred: tokio polls it again after the tasks the
/// I/O driver wakes meanwhile (`tokio::task::yield_now`'s way), unlike a wake of its own,
/// which would queue it at once.
pub fn step_aside(cx: &mut Context<'_>) -> Poll<()> {
    let mut yielded = std::pin::pin!(tokio::task::yield_now());
    yielded.as_mut().poll(cx)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 1, 10));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 1, 11));

    #[test]
    fn an_exchange_is_light_until_it_moves_past_the_light_bytes() {
        let express = Arc::new(Express::default());
        let mut lane = express.enter(A);
        assert!(express.waiting());
        lane.moved(LIGHT_BYTES);
        assert!(express.waiting() && !lane.is_bulk());
        lane.moved(LIGHT_BYTES + 1);
        assert!(lane.is_bulk());
        assert!(!express.waiting(), "a bulk exchange is not waited for");
        drop(lane);
        assert_eq!(express.light(), 0);
        assert!(lock(&express.clients).bulk.is_empty());
    }

    #[test]
    fn a_client_with_a_bulk_exchange_starts_no_light_one() {
        let express = Arc::new(Express::default());
        let mut bulk = express.enter(A);
        bulk.moved(10 * LIGHT_BYTES);
        let same_client = express.enter(A);
        assert!(
            !express.waiting(),
            "A downloads: its next request is not light"
        );
        let other_client = express.enter(B);
        assert!(express.waiting(), "B uses little: its request is light");
        drop(other_client);
        drop(same_client);
        drop(bulk);
        assert_eq!(express.light(), 0);
        assert!(
            express.waiting(),
            "B's request ended just now: B may ask again"
        );
        let again = express.enter(A);
        assert_eq!(
            express.light(),
            1,
            "A is light again once its download is done"
        );
        drop(again);
        assert!(lock(&express.clients).bulk.is_empty());
    }

    #[test]
    fn origin_reads_are_shortened_only_beside_a_bulk_exchange() {
        let express = Arc::new(Express::default());
        let light = express.enter(A);
        assert!(
            express.waiting() && !express.shortening(),
            "only light ones"
        );
        let mut download = express.enter(B);
        download.moved(LIGHT_BYTES + 1);
        assert!(
            express.shortening(),
            "B's download beside A's light request"
        );
        drop(download);
        assert!(!express.shortening(), "B's download ended");
        drop(light);
        assert_eq!(express.bulk.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_client_stays_bulk_while_any_of_its_bulk_exchanges_runs() {
        let express = Arc::new(Express::default());
        let mut one = express.enter(A);
        let mut two = express.enter(A);
        one.moved(LIGHT_BYTES + 1);
        two.moved(LIGHT_BYTES + 1);
        drop(one);
        drop(express.enter(A));
        assert_eq!(express.light(), 0, "one bulk exchange of A still runs");
        drop(two);
        let light = express.enter(A);
        assert_eq!(express.light(), 1);
        drop(light);
    }

    #[test]
    fn a_light_exchange_lingers_for_a_second_after_it_ends() {
        let express = Arc::new(Express::default());
        assert!(!express.waiting());
        drop(express.enter(A));
        assert!(express.waiting());
        // As if it had ended more than LINGER ago.
        express
            .linger_until
            .store(express.now_ms(), Ordering::Relaxed);
        assert!(!express.waiting());
        // A client that was light and now downloads has no one to make room for.
        drop(express.enter(A));
        assert!(express.waiting());
        let mut download = express.enter(A);
        download.moved(LIGHT_BYTES + 1);
        assert!(!express.waiting(), "A's own linger ends when A downloads");
        drop(download);
        // A light exchange that turned bulk does not linger.
        let other = Arc::new(Express::default());
        let mut bulk = other.enter(B);
        bulk.moved(LIGHT_BYTES + 1);
        drop(bulk);
        assert!(!other.waiting());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stepping_aside_is_pending_once_then_the_task_runs_again() {
        let mut first = true;
        std::future::poll_fn(|cx| {
            if first {
                first = false;
                let polled = step_aside(cx);
                assert!(polled.is_pending());
                return polled;
            }
            Poll::Ready(())
        })
        .await;
    }
}
