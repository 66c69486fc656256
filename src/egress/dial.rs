//! The only place sockets to destinations open (those to parent proxies open in
//! `crate::egress::parent`): resolve the destination, check every address against the policy,
//! then connect to the address that was checked, all within the connect timeout.
//!
//! [`dial`] serves tunnels directly; [`Dialer`] wraps it as the connector of the pooled
//! plain-HTTP client, so both paths meet the same guards. Each address is checked by the
//! plan's last step (`crate::core::plan::check_address`); the port lists were checked by the
//! plan before, so a denied port never causes a DNS lookup.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use arc_swap::ArcSwap;

use crate::config::Settings;
use crate::core::error::{EdgeError, ErrorKind};
use crate::core::plan;
use crate::core::policy::{Decider, Denial, Facts, Policy};
use crate::core::target::{parse_authority, Host, Target};

/// Why a destination could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Every address of the destination is refused by the policy (the first refusal).
    #[error("{0}")]
    Denied(Denial),
    /// The name did not resolve.
    #[error("DNS lookup of {host} failed: {error}")]
    Resolve {
        /// The name.
        host: String,
        /// The resolver's message.
        error: String,
    },
    /// The name resolved to no address.
    #[error("DNS lookup of {host} returned no address")]
    NoAddress {
        /// The name.
        host: String,
    },
    /// Every address refused or failed the connection (the last error).
    #[error("cannot connect to {target}{}: {error}", shown_address(target, addr))]
    Connect {
        /// `host:port` as asked.
        target: String,
        /// The address tried last.
        addr: SocketAddr,
        /// Why it failed.
        error: io::Error,
    },
    /// Resolving and connecting took longer than `timeouts.connect`.
    #[error("connecting to {target} timed out after {}", humantime::format_duration(*after))]
    TimedOut {
        /// `host:port` as asked.
        target: String,
        /// The timeout.
        after: Duration,
    },
}

/// A connection made by [`dial`].
#[derive(Debug)]
pub struct Connected {
    /// The socket.
    pub stream: TcpStream,
    /// The address it is connected to.
    pub addr: SocketAddr,
    /// The rule that allowed this address, when the decision needed it ([`crate::core::policy::Decision::NeedAddress`]).
    pub decider: Option<Decider>,
}

/// Resolves `target`, checks each address against `policy` (the hard guards, and the rules
/// when `facts` is given because the decision needs the address) and connects to the first
/// address that is allowed and answers, all within `timeout`.
pub async fn dial(
    policy: &Policy,
    target: &Target,
    facts: Option<&Facts<'_>>,
    timeout: Duration,
) -> Result<Connected, DialError> {
    let attempt = async {
        let addrs = resolve(target).await?;
        let mut denied = None;
        let mut failed = None;
        for addr in addrs {
            let decider = match plan::check_address(policy, target, facts, addr, &is_local_address)
            {
                Ok(decider) => decider,
                Err(denial) => {
                    denied.get_or_insert(denial);
                    continue;
                }
            };
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    // Small writes (request heads, TLS records) should not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    return Ok(Connected {
                        stream,
                        addr,
                        decider,
                    });
                }
                Err(error) => failed = Some((addr, error)),
            }
        }
        Err(match (failed, denied) {
            (Some((addr, error)), _) => DialError::Connect {
                target: target.to_string(),
                addr,
                error,
            },
            (None, Some(denial)) => DialError::Denied(denial),
            (None, None) => DialError::NoAddress {
                host: target.host.to_string(),
            },
        })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(timed_out(target, timeout)))
}

/// Resolves and checks `target` like [`dial`] without connecting: the first allowed address
/// and the rule that allowed it. For plain HTTP whose decision needs the address.
pub async fn first_allowed_address(
    policy: &Policy,
    target: &Target,
    facts: &Facts<'_>,
    timeout: Duration,
) -> Result<(SocketAddr, Option<Decider>), DialError> {
    let attempt = async {
        let mut denied = None;
        for addr in resolve(target).await? {
            match plan::check_address(policy, target, Some(facts), addr, &is_local_address) {
                Ok(decider) => return Ok((addr, decider)),
                Err(denial) => {
                    denied.get_or_insert(denial);
                }
            }
        }
        Err(match denied {
            Some(denial) => DialError::Denied(denial),
            None => DialError::NoAddress {
                host: target.host.to_string(),
            },
        })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(timed_out(target, timeout)))
}

fn timed_out(target: &Target, after: Duration) -> DialError {
    DialError::TimedOut {
        target: target.to_string(),
        after,
    }
}

/// The addresses of `target`: its IP literal, or what the system resolver answers.
async fn resolve(target: &Target) -> Result<Vec<SocketAddr>, DialError> {
    match &target.host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, target.port)]),
        Host::Name(name) => Ok(tokio::net::lookup_host((name.as_str(), target.port))
            .await
            .map_err(|e| DialError::Resolve {
                host: name.clone(),
                error: resolver_message(&e),
            })?
            .collect()),
    }
}

/// ` (address)` when the target was a name, nothing when it was the address itself.
fn shown_address(target: &str, addr: &SocketAddr) -> String {
    if *target == addr.to_string() {
        String::new()
    } else {
        format!(" ({addr})")
    }
}

/// getaddrinfo's messages carry a prefix that says nothing to a person; keep the useful part.
fn resolver_message(e: &io::Error) -> String {
    let text = e.to_string();
    text.strip_prefix("failed to lookup address information: ")
        .unwrap_or(&text)
        .to_owned()
}

/// Whether `ip` is an address of this machine: binding a socket to it succeeds only then.
pub fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The connector of the pooled plain-HTTP client: [`dial`] behind `tower::Service<Uri>`.
#[derive(Clone)]
pub struct Dialer {
    settings: Arc<ArcSwap<Settings>>,
}

impl Dialer {
    /// A dialer that checks addresses against the policy in force when it dials.
    pub fn new(settings: Arc<ArcSwap<Settings>>) -> Self {
        Dialer { settings }
    }
}

/// A pooled client's connection to an origin or a parent proxy: a write that waits longer
/// than `stall` ([`crate::config::TimeoutsConfig::origin_write`]) for the peer to take bytes
/// fails, which ends the connection. hyper would otherwise keep a connection whose peer
/// stopped reading (an upload nobody takes) for as long as the peer likes, even after the
/// exchange was given up.
pub struct OriginIo {
    inner: TokioIo<TcpStream>,
    stall: Duration,
    /// Armed while a write waits; dropped when bytes move.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A connection to a parent proxy (requests go in absolute form).
    proxy: bool,
}

impl OriginIo {
    /// Wraps `stream`; writes may wait `stall` at most.
    pub fn new(stream: TcpStream, stall: Duration, proxy: bool) -> Self {
        OriginIo {
            inner: TokioIo::new(stream),
            stall,
            timer: None,
            proxy,
        }
    }

    /// Passes a ready write through (and disarms the timer); a pending one fails once it
    /// has waited `stall`.
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.timer = None;
            return polled;
        }
        let stall = self.stall;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                StalledWrite(stall),
            ))),
        }
    }
}

/// The error of a write to an origin or parent that waited too long ([`OriginIo`]).
#[derive(Debug, thiserror::Error)]
#[error("the peer took no bytes for {}", humantime::format_duration(*.0))]
pub struct StalledWrite(pub Duration);

impl hyper_util::client::legacy::connect::Connection for OriginIo {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.inner.connected().proxy(self.proxy)
    }
}

impl hyper::rt::Read for OriginIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for OriginIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.timed(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.timed(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.timed(cx, polled)
    }
}

impl tower_service::Service<http::Uri> for Dialer {
    type Response = OriginIo;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, DialError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let settings = self.settings.load_full();
        Box::pin(async move {
            // The forwarder built this URI from a checked target, so it parses.
            let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
            let target = parse_authority(authority, Some(80)).map_err(|e| DialError::Resolve {
                host: authority.to_owned(),
                error: e.to_string(),
            })?;
            let connected =
                dial(&settings.policy, &target, None, settings.timeouts.connect).await?;
            Ok(OriginIo::new(
                connected.stream,
                settings.timeouts.origin_write(),
                false,
            ))
        })
    }
}
/// The most header fields an origin's response head may have (hyper's default is 100; a
/// page with many cookies and policies can go past that).
pub(crate) const RESPONSE_MAX_HEADERS: usize = 256;
/// The most bytes an origin's response head may take (hyper's default, made explicit).
pub(crate) const RESPONSE_MAX_HEAD: usize = 8192 + 4096 * 100;

/// The settings of every pooled HTTP client, to origins and to parent proxies: idle
/// connections kept a minute, up to 256 per destination (a LAN's browsers open many at once;
/// fewer made the proxy re-dial under load), header names in title case (`Content-Type`, the
/// form old servers expect), `Host` left as the proxy set it.
pub(crate) fn pooled_client() -> hyper_util::client::legacy::Builder {
    let mut builder =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
    builder
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .http1_title_case_headers(true)
        .http1_max_headers(RESPONSE_MAX_HEADERS)
        .http1_max_buf_size(RESPONSE_MAX_HEAD)
        .set_host(false);
    builder
}

impl From<DialError> for EdgeError {
    fn from(e: DialError) -> Self {
        EdgeError::from(&e)
    }
}

impl From<&DialError> for EdgeError {
    fn from(e: &DialError) -> Self {
        match e {
            DialError::Denied(d) => d.clone().into(),
            DialError::TimedOut { .. } => EdgeError::new(ErrorKind::Timeout, e.to_string()),
            DialError::Resolve { .. } | DialError::NoAddress { .. } => {
                EdgeError::new(ErrorKind::Dns, e.to_string())
            }
            DialError::Connect { error, .. }
                if error.kind() == io::ErrorKind::ConnectionRefused =>
            {
                EdgeError::new(ErrorKind::Refused, e.to_string())
            }
            DialError::Connect { .. } => EdgeError::new(ErrorKind::Unreachable, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_failures_become_gateway_errors() {
        let e = EdgeError::from(DialError::TimedOut {
            target: "h:1".into(),
            after: std::time::Duration::from_secs(10),
        });
        assert_eq!(e.status, http::StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.side, crate::core::error::Side::Upstream);
        let e = EdgeError::from(DialError::NoAddress { host: "h".into() });
        assert_eq!(e.status, http::StatusCode::BAD_GATEWAY);
    }
}
