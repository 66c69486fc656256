//! Admission: open client connections counted in all and per client address, against
//! `[limits]`; each connection holds a [`Slot`] until it (and its tunnels) end.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::LimitsConfig;
use crate::core::error::EdgeError;
use crate::core::limits;
use crate::core::sync::lock;

/// The outcome of [`Admission::admit`].
pub enum Admit {
    /// Served; the slot frees itself when dropped.
    Yes(Slot),
    /// Answered with this refusal, then closed; counted meanwhile.
    Refuse(EdgeError, Slot),
    /// Closed at once: so far over the limit that even a refusal costs too much.
    Drop,
}

/// Counts open client connections, in all and per client address (`[limits]`).
#[derive(Default)]
pub struct Admission {
    total: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

impl Admission {
    /// Admits a connection from `ip`, or says how to turn it away.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, limits: &LimitsConfig) -> Admit {
        let ip = ip.to_canonical();
        let total = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        let mut slot = Slot {
            admission: self.clone(),
            ip: None,
        };
        match limits::admit_total(total, limits.max_connections) {
            limits::Admission::Yes => {}
            limits::Admission::Refuse(refusal) => return Admit::Refuse(refusal, slot),
            limits::Admission::Drop => return Admit::Drop,
        }
        let mut per_client = lock(&self.per_client);
        let count = per_client.entry(ip).or_insert(0);
        match limits::admit_client_connection(ip, *count, limits.max_connections_per_client) {
            limits::Admission::Yes => {}
            limits::Admission::Refuse(refusal) => return Admit::Refuse(refusal, slot),
            limits::Admission::Drop => return Admit::Drop,
        }
        *count += 1;
        slot.ip = Some(ip);
        Admit::Yes(slot)
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// One admitted (or refused) connection's place in the counts; freed on drop.
pub struct Slot {
    admission: Arc<Admission>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let admission = &self.admission;
        admission.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut per_client = lock(&admission.per_client);
            if let Some(count) = per_client.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_client.remove(&ip);
                }
            }
        }
    }
}
