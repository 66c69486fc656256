//! A small authoritative DNS server for the tests, over UDP: it answers `A` and `AAAA`
//! queries from a fixed [`Zone`], says NXDOMAIN (with an SOA, so resolvers cache it) for
//! names it does not hold, and can be told never to answer a name ([`Answer::Never`]) so the
//! proxy's connect timeout is what ends the lookup. It counts every query, per name.
//!
//! Self-contained (std and tokio only; the wire format of RFC 1035 is written by hand here),
//! because `examples/bench.rs` includes this file with `#[path]`. No TCP: answers are small,
//! and a query whose answer would not fit in 512 bytes is answered with TC set and no records.

// The benchmark that includes this file uses part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

/// What the server says about one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The name exists: `A` queries get `a`, `AAAA` queries get `aaaa` (an empty list is
    /// NOERROR with no records and the SOA in authority, a negative answer cached for `ttl`
    /// seconds), any other type NOERROR with no records. Every record has TTL `ttl`.
    Records {
        a: Vec<Ipv4Addr>,
        aaaa: Vec<Ipv6Addr>,
        ttl: u32,
    },
    /// The name does not exist: RCODE 3 (NXDOMAIN) with the SOA in authority.
    NxDomain,
    /// The query is received and counted, and never answered.
    Never,
    /// `A` queries get `a` (TTL 60); `AAAA` queries are received, counted and never
    /// answered: a server that drops one family's queries.
    SilentV6 { a: Vec<Ipv4Addr> },
    /// A name that moves (DNS rebinding): the first `A` query gets `first`, every later one
    /// `then`, all with TTL 0; `AAAA` queries get an empty NOERROR.
    Moving {
        first: Vec<Ipv4Addr>,
        then: Vec<Ipv4Addr>,
    },
}

impl Answer {
    /// `A` records only (AAAA queries get an empty NOERROR), TTL 60.
    pub fn v4(a: &[Ipv4Addr]) -> Answer {
        Answer::Records {
            a: a.to_vec(),
            aaaa: Vec::new(),
            ttl: 60,
        }
    }

    /// `AAAA` records only (A queries get an empty NOERROR), TTL 60.
    pub fn v6(aaaa: &[Ipv6Addr]) -> Answer {
        Answer::Records {
            a: Vec::new(),
            aaaa: aaaa.to_vec(),
            ttl: 60,
        }
    }

    /// Both families, TTL 60.
    pub fn dual(a: &[Ipv4Addr], aaaa: &[Ipv6Addr]) -> Answer {
        Answer::Records {
            a: a.to_vec(),
            aaaa: aaaa.to_vec(),
            ttl: 60,
        }
    }
}

/// The names the server knows: lowercase, without a trailing dot. Any other name is
/// NXDOMAIN.
#[derive(Debug, Clone, Default)]
pub struct Zone(HashMap<String, Answer>);

impl Zone {
    pub fn new() -> Zone {
        Zone(HashMap::new())
    }

    /// The zone with `name` (any case, a trailing dot allowed) answered by `answer`.
    pub fn with(mut self, name: &str, answer: Answer) -> Zone {
        self.0.insert(normal(name), answer);
        self
    }

    fn get(&self, name: &str) -> Option<&Answer> {
        self.0.get(name)
    }
}

/// `name` lowercased, without a trailing dot.
fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The TTL of the SOA (and so of the negative answer) for NXDOMAIN.
const NXDOMAIN_TTL: u32 = 60;

#[derive(Default)]
struct Counts {
    all: AtomicUsize,
    per_name: Mutex<HashMap<String, usize>>,
    /// `A` queries per name, for [`Answer::Moving`].
    a_per_name: Mutex<HashMap<String, usize>>,
}

/// A running server; it stops when dropped.
pub struct DnsServer {
    /// Where it answers (UDP).
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

impl DnsServer {
    /// Binds UDP on `bind` (port 0 picks one) and serves `zone`.
    pub async fn start(bind: SocketAddr, zone: Zone) -> DnsServer {
        let socket = tokio::net::UdpSocket::bind(bind)
            .await
            .unwrap_or_else(|e| panic!("the test DNS server binds {bind}: {e}"));
        DnsServer::run(socket, zone)
    }

    /// Serves `zone` on a socket bound elsewhere (inside a network namespace, say). Must be
    /// called within a tokio runtime.
    pub fn serve(socket: std::net::UdpSocket, zone: Zone) -> DnsServer {
        socket
            .set_nonblocking(true)
            .expect("the DNS socket becomes non-blocking");
        let socket =
            tokio::net::UdpSocket::from_std(socket).expect("the DNS socket joins the runtime");
        DnsServer::run(socket, zone)
    }

    fn run(socket: tokio::net::UdpSocket, zone: Zone) -> DnsServer {
        let addr = socket.local_addr().expect("the DNS socket has an address");
        let counts = Arc::new(Counts::default());
        let counted = counts.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    // An ICMP error from an earlier reply surfaces here on some systems.
                    continue;
                };
                counted.all.fetch_add(1, Ordering::SeqCst);
                let query = &buf[..n];
                let mut a_seen = 0;
                if let Some(q) = question(query) {
                    if q.qtype == TYPE_A {
                        let mut a = counted.a_per_name.lock().unwrap();
                        let seen = a.entry(q.name.clone()).or_default();
                        *seen += 1;
                        a_seen = *seen;
                    }
                    *counted.per_name.lock().unwrap().entry(q.name).or_default() += 1;
                }
                if let Some(reply) = respond(query, &zone, a_seen) {
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
        });
        DnsServer { addr, counts, task }
    }

    /// Every query received so far (malformed ones too).
    pub fn queries(&self) -> usize {
        self.counts.all.load(Ordering::SeqCst)
    }

    /// The queries received so far for `name` (any case, any type).
    pub fn queries_for(&self, name: &str) -> usize {
        let counts = self.counts.per_name.lock().unwrap();
        counts.get(&normal(name)).copied().unwrap_or(0)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const TYPE_A: u16 = 1;
const TYPE_SOA: u16 = 6;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

const RCODE_FORMERR: u16 = 1;
const RCODE_NXDOMAIN: u16 = 3;
const RCODE_NOTIMP: u16 = 4;

/// The one question of a query.
struct Question {
    /// Lowercase, dotted, without the trailing dot.
    name: String,
    qtype: u16,
    qclass: u16,
    /// Where the question ends in the message.
    end: usize,
}

/// The question of `msg`, when it is a query with exactly one question whose name has no
/// compression pointers (as queries have).
fn question(msg: &[u8]) -> Option<Question> {
    if msg.len() < 12 || msg[2] & 0x80 != 0 || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    let mut labels: Vec<String> = Vec::new();
    let mut at = 12;
    loop {
        let len = *msg.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        // 0xC0 is a pointer and 0x40/0x80 are reserved label types: none belong in a query.
        if len > 63 {
            return None;
        }
        let label = msg.get(at..at + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += len;
    }
    let fixed = msg.get(at..at + 4)?;
    Some(Question {
        name: labels.join("."),
        qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
        qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
        end: at + 4,
    })
}

/// The reply to `query`, or `None` when it gets none (a response, a message too short to
/// carry an ID, or a name the zone says never to answer).
/// The reply to `query`; `a_seen` counts the `A` queries for its name so far, this one
/// included.
fn respond(query: &[u8], zone: &Zone, a_seen: usize) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let id = [query[0], query[1]];
    let opcode = (query[2] >> 3) & 0x0f;
    let rd = query[2] & 0x01;
    let header = |rcode: u16, qd: u16, an: u16, ns: u16| {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&id);
        // QR, the opcode asked, AA, RD as asked; RA (the server answers as a resolver would
        // for the names it holds); the RCODE.
        out.push(0x80 | (opcode << 3) | 0x04 | rd);
        out.push(0x80 | rcode as u8);
        for count in [qd, an, ns, 0] {
            out.extend_from_slice(&count.to_be_bytes());
        }
        out
    };
    if opcode != 0 {
        return Some(header(RCODE_NOTIMP, 0, 0, 0));
    }
    let Some(q) = question(query) else {
        return Some(header(RCODE_FORMERR, 0, 0, 0));
    };
    // The question as sent (its case too: some resolvers randomise it and check the echo).
    let echoed = &query[12..q.end];
    let answer = zone.get(&q.name);
    let (rcode, records, negative_ttl): (u16, Vec<Vec<u8>>, Option<u32>) = match answer {
        Some(Answer::Never) => return None,
        Some(Answer::SilentV6 { .. }) if q.qtype == TYPE_AAAA => return None,
        Some(Answer::SilentV6 { a }) => {
            let records: Vec<Vec<u8>> = match (q.qclass, q.qtype) {
                (CLASS_IN, TYPE_A) => a
                    .iter()
                    .map(|ip| record(TYPE_A, 60, &ip.octets()))
                    .collect(),
                _ => Vec::new(),
            };
            let negative = records.is_empty().then_some(60);
            (0, records, negative)
        }
        Some(Answer::Moving { first, then }) => {
            let now = if a_seen <= 1 { first } else { then };
            let records: Vec<Vec<u8>> = match (q.qclass, q.qtype) {
                (CLASS_IN, TYPE_A) => now
                    .iter()
                    .map(|ip| record(TYPE_A, 0, &ip.octets()))
                    .collect(),
                _ => Vec::new(),
            };
            let negative = records.is_empty().then_some(0);
            (0, records, negative)
        }
        None | Some(Answer::NxDomain) => (RCODE_NXDOMAIN, Vec::new(), Some(NXDOMAIN_TTL)),
        Some(Answer::Records { a, aaaa, ttl }) => {
            let records: Vec<Vec<u8>> = match (q.qclass, q.qtype) {
                (CLASS_IN, TYPE_A) => a
                    .iter()
                    .map(|ip| record(TYPE_A, *ttl, &ip.octets()))
                    .collect(),
                (CLASS_IN, TYPE_AAAA) => aaaa
                    .iter()
                    .map(|ip| record(TYPE_AAAA, *ttl, &ip.octets()))
                    .collect(),
                _ => Vec::new(),
            };
            let negative = records.is_empty().then_some(*ttl);
            (0, records, negative)
        }
    };
    let mut out = header(
        rcode,
        1,
        records.len() as u16,
        negative_ttl.is_some() as u16,
    );
    out.extend_from_slice(echoed);
    for r in &records {
        out.extend_from_slice(r);
    }
    if let Some(ttl) = negative_ttl {
        out.extend_from_slice(&soa(ttl));
    }
    if out.len() > 512 {
        // Too large for UDP without EDNS: say so (TC) with the question only.
        let mut short = header(rcode, 1, 0, 0);
        short[2] |= 0x02;
        short.extend_from_slice(echoed);
        return Some(short);
    }
    Some(out)
}

/// An answer record for the question's name (a pointer to offset 12).
fn record(rtype: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
    let mut out = vec![0xc0, 0x0c];
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
    out
}

/// The SOA of the root zone (the server speaks for every name), with TTL and MINIMUM `ttl`,
/// so a negative answer is cached for `ttl` seconds (RFC 2308).
fn soa(ttl: u32) -> Vec<u8> {
    let mut rdata = Vec::new();
    for name in [&["ns", "test"][..], &["hostmaster", "test"][..]] {
        for label in name {
            rdata.push(label.len() as u8);
            rdata.extend_from_slice(label.as_bytes());
        }
        rdata.push(0);
    }
    // Serial, refresh, retry, expire, minimum.
    for value in [1u32, 3600, 600, 86400, ttl] {
        rdata.extend_from_slice(&value.to_be_bytes());
    }
    let mut out = vec![0]; // the root name
    out.extend_from_slice(&TYPE_SOA.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(&rdata);
    out
}
