//! Parent proxies (`[upstream]`), for networks whose only way out is another proxy.
//!
//! A destination not listed in `upstream.direct` is reached through the first parent that is
//! up: plain HTTP goes to it in absolute form over a pooled client of its own, CONNECT through
//! its CONNECT. Credentials in the parent's URL go to that parent only, as
//! `Proxy-Authorization`. A parent that cannot be reached is skipped for a while
//! ([`DOWN_FOR`]) and the next one is tried; when none answers, or a parent refuses, the
//! client gets `502` naming the parent.
//!
//! The parent resolves names itself, so the proxy's destination-address guards apply here only
//! to targets written as addresses (the policy's port lists and rules apply as always).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::egress::dial::{race, DialError, OriginIo, Outbound};
use hyper_util::client::legacy::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::{Parent, UpstreamSettings};
use crate::core::target::{Host, Target};

/// How long a parent that could not be reached is skipped.
pub const DOWN_FOR: Duration = Duration::from_secs(30);

/// The largest answer head accepted from a parent to CONNECT.
const MAX_CONNECT_ANSWER: usize = 16 * 1024;

/// Why a parent could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    /// No connection to the parent.
    #[error("the parent proxy {parent} cannot be reached: {error}")]
    Unreachable {
        /// The parent's name.
        parent: String,
        /// Why.
        error: io::Error,
    },
    /// The parent answered CONNECT with something other than 2xx.
    #[error("the parent proxy {parent} refused CONNECT {target}: {status}")]
    Refused {
        /// The parent's name.
        parent: String,
        /// `host:port` asked for.
        target: String,
        /// Its status line, e.g. `403 Forbidden`.
        status: String,
    },
    /// The parent's answer to CONNECT was not HTTP or too long.
    #[error("the parent proxy {parent} answered CONNECT with something that is not HTTP")]
    Garbled {
        /// The parent's name.
        parent: String,
    },
}

impl ParentError {
    /// The parent the error is about.
    pub fn parent(&self) -> &str {
        match self {
            ParentError::Unreachable { parent, .. }
            | ParentError::Refused { parent, .. }
            | ParentError::Garbled { parent } => parent,
        }
    }
}

/// One parent and what the proxy keeps for it; `B` is the body type requests carry.
pub struct ParentRoute<B> {
    /// The parent.
    pub parent: Parent,
    /// A pooled client whose connections all go to this parent.
    pub client: Client<ParentConnector, B>,
    /// Until when (ms since `epoch`) the parent is skipped; 0 when up.
    down_until: AtomicU64,
}

/// The parents, in order; `B` is the body type requests carry.
pub struct Parents<B> {
    routes: Vec<ParentRoute<B>>,
    settings: UpstreamSettings,
    outbound: Arc<Outbound>,
    epoch: Instant,
}

impl<B> Parents<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    /// Clients for each configured parent, dialled with `outbound` (its resolver, its
    /// timeouts and source addresses); `stall` bounds each write.
    pub fn new(
        settings: &UpstreamSettings,
        outbound: Arc<Outbound>,
        stall: Duration,
    ) -> Parents<B> {
        let routes = settings
            .parents
            .iter()
            .map(|parent| ParentRoute {
                parent: parent.clone(),
                client: crate::egress::dial::pooled_client().build(ParentConnector {
                    parent: Arc::new(parent.clone()),
                    outbound: outbound.clone(),
                    stall,
                }),
                down_until: AtomicU64::new(0),
            })
            .collect();
        Parents {
            routes,
            settings: settings.clone(),
            outbound,
            epoch: Instant::now(),
        }
    }
}

impl<B> Parents<B> {
    /// Whether `host` goes through a parent (it is not in `upstream.direct`).
    pub fn serves(&self, host: &Host) -> bool {
        self.settings.serves(host)
    }

    /// The parents to try, in order: those up first, then those marked down (one of them may
    /// be back).
    pub fn in_order(&self) -> Vec<&ParentRoute<B>> {
        let now = self.epoch.elapsed().as_millis() as u64;
        // Decided once, here: a parent marked down while the list is walked is not retried.
        let (up, down): (Vec<&ParentRoute<B>>, Vec<&ParentRoute<B>>) = self
            .routes
            .iter()
            .partition(|r| r.down_until.load(Ordering::Relaxed) <= now);
        up.into_iter().chain(down).collect()
    }

    /// Notes that `route` could not be reached.
    pub fn mark_down(&self, route: &ParentRoute<B>) {
        let until = self.epoch.elapsed() + DOWN_FOR;
        route
            .down_until
            .store(until.as_millis() as u64, Ordering::Relaxed);
        tracing::warn!(
            parent = %route.parent.name,
            "parent proxy unreachable: the others are tried first for the next {}",
            humantime::format_duration(DOWN_FOR)
        );
    }

    /// A connection of its own to the parent of `route` (not pooled).
    pub async fn dial(&self, route: &ParentRoute<B>) -> Result<TcpStream, ParentError> {
        dial_parent(&route.parent, &self.outbound).await
    }

    /// Notes that `route` answered.
    pub fn mark_up(&self, route: &ParentRoute<B>) {
        route.down_until.store(0, Ordering::Relaxed);
    }

    /// Opens a tunnel to `target` through the first parent that accepts; returns the stream,
    /// the parent's address and its name.
    pub async fn tunnel(
        &self,
        target: &Target,
    ) -> Result<(TcpStream, SocketAddr, String), ParentError> {
        let mut last = None;
        for route in self.in_order() {
            match connect_through(&route.parent, target, &self.outbound).await {
                Ok((stream, addr)) => {
                    self.mark_up(route);
                    return Ok((stream, addr, route.parent.name.clone()));
                }
                Err(e @ ParentError::Unreachable { .. }) => {
                    self.mark_down(route);
                    last = Some(e);
                }
                // A parent that answered and refused speaks for the way out: do not ask another.
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ParentError::Unreachable {
            parent: "(none)".into(),
            error: io::Error::other("no parent proxy is configured"),
        }))
    }
}

/// Connects to a parent: its addresses raced as a destination's are (the guards do not
/// apply: the owner named it), within `timeouts.connect`.
async fn dial_parent(parent: &Parent, outbound: &Outbound) -> Result<TcpStream, ParentError> {
    let allow_all = |_| Ok(None);
    let connected = race(outbound, &parent.host, parent.port, &allow_all, &mut None)
        .await
        .map_err(|e| {
            let kind = match &e {
                DialError::TimedOut { .. } | DialError::ResolveTimedOut { .. } => {
                    io::ErrorKind::TimedOut
                }
                DialError::Connect { error, .. } => error.kind(),
                _ => io::ErrorKind::Other,
            };
            ParentError::Unreachable {
                parent: parent.name.clone(),
                error: io::Error::new(kind, e.to_string()),
            }
        })?;
    Ok(connected.stream)
}

/// CONNECT through `parent`: dial it, ask for `target`, and read its answer head exactly,
/// leaving whatever follows for the tunnel.
pub(crate) async fn connect_through(
    parent: &Parent,
    target: &Target,
    outbound: &Outbound,
) -> Result<(TcpStream, SocketAddr), ParentError> {
    let timeout = outbound.connect;
    let mut stream = dial_parent(parent, outbound).await?;
    let addr = stream
        .peer_addr()
        .map_err(|error| ParentError::Unreachable {
            parent: parent.name.clone(),
            error,
        })?;
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &parent.authorization {
        head.push_str("Proxy-Authorization: ");
        head.push_str(auth.to_str().unwrap_or_default());
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let garbled = || ParentError::Garbled {
        parent: parent.name.clone(),
    };
    let exchange = async {
        stream.write_all(head.as_bytes()).await?;
        // Peek until the whole answer head is there, then consume exactly that much.
        let mut buf = vec![0u8; MAX_CONNECT_ANSWER];
        loop {
            let n = stream.peek(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
            }
            if let Some(end) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
                let mut answer = vec![0u8; end + 4];
                stream.read_exact(&mut answer).await?;
                return Ok(answer);
            }
            if n == buf.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "too long"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ParentError::Unreachable {
            parent: parent.name.clone(),
            error: io::Error::new(io::ErrorKind::TimedOut, "no answer to CONNECT in time"),
        })?
        .map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => garbled(),
            _ => ParentError::Unreachable {
                parent: parent.name.clone(),
                error: e,
            },
        })?;
    let status_line = answer
        .split(|b| *b == b'\r')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .ok_or_else(garbled)?;
    let mut words = status_line.splitn(3, ' ');
    let (version, code) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(garbled());
    }
    if !code.starts_with('2') {
        return Err(ParentError::Refused {
            parent: parent.name.clone(),
            target: target.to_string(),
            status: status_line[version.len()..].trim().to_owned(),
        });
    }
    Ok((stream, addr))
}

/// The connector of a parent's pooled client: every connection goes to that parent and is
/// marked as proxied, so the client sends requests in absolute form.
#[derive(Clone)]
pub struct ParentConnector {
    parent: Arc<Parent>,
    outbound: Arc<Outbound>,
    stall: Duration,
}

impl tower_service::Service<http::Uri> for ParentConnector {
    type Response = OriginIo;
    type Error = ParentError;
    type Future = Pin<Box<dyn Future<Output = Result<OriginIo, ParentError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ParentError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (parent, outbound, stall) = (self.parent.clone(), self.outbound.clone(), self.stall);
        Box::pin(async move {
            let stream = dial_parent(&parent, &outbound).await?;
            Ok(OriginIo::new(stream, stall, true, &outbound.express))
        })
    }
}
