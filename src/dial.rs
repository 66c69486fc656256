//! The only place outbound sockets open: resolve the destination, check every address against
//! the policy, then connect to the address that was checked, all within the connect timeout.
//!
//! [`dial`] serves tunnels directly; [`Dialer`] wraps it as the connector of the pooled
//! plain-HTTP client, so both paths meet the same guards. The port allow-list is not checked
//! here: callers check it before dialling, so a denied port never causes a DNS lookup.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::Settings;
use crate::policy::{Denial, Policy};
use crate::target::{parse_authority, Host, Target};

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

/// Resolves `target`, checks each address against `policy` and connects to the first address
/// that is allowed and answers, all within `timeout`. Returns the stream and its address.
pub async fn dial(
    policy: &Policy,
    target: &Target,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), DialError> {
    match tokio::time::timeout(timeout, dial_inner(policy, target)).await {
        Ok(result) => result,
        Err(_) => Err(DialError::TimedOut {
            target: target.to_string(),
            after: timeout,
        }),
    }
}

async fn dial_inner(
    policy: &Policy,
    target: &Target,
) -> Result<(TcpStream, SocketAddr), DialError> {
    let (host_text, addrs) = match &target.host {
        Host::Ip(ip) => (ip.to_string(), vec![SocketAddr::new(*ip, target.port)]),
        Host::Name(name) => {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), target.port))
                .await
                .map_err(|e| DialError::Resolve {
                    host: name.clone(),
                    error: resolver_message(&e),
                })?
                .collect();
            (name.clone(), addrs)
        }
    };
    let mut denied = None;
    let mut failed = None;
    for addr in addrs {
        if let Err(denial) = policy.check_address(&host_text, addr, is_local_address) {
            denied.get_or_insert(denial);
            continue;
        }
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                // Small writes (request heads, TLS records) should not wait for Nagle.
                let _ = stream.set_nodelay(true);
                return Ok((stream, addr));
            }
            Err(error) => failed = Some((addr, error)),
        }
    }
    if let Some((addr, error)) = failed {
        return Err(DialError::Connect {
            target: target.to_string(),
            addr,
            error,
        });
    }
    Err(match denied {
        Some(denial) => DialError::Denied(denial),
        None => DialError::NoAddress { host: host_text },
    })
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
fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The connector of the pooled plain-HTTP client: [`dial`] behind `tower::Service<Uri>`.
#[derive(Clone)]
pub struct Dialer {
    settings: Arc<Settings>,
}

impl Dialer {
    /// A dialer that checks addresses against `settings.policy`.
    pub fn new(settings: Arc<Settings>) -> Self {
        Dialer { settings }
    }
}

impl tower_service::Service<http::Uri> for Dialer {
    type Response = TokioIo<TcpStream>;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, DialError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let settings = self.settings.clone();
        Box::pin(async move {
            // The forwarder built this URI from a checked target, so it parses.
            let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
            let target = parse_authority(authority, Some(80)).map_err(|e| DialError::Resolve {
                host: authority.to_owned(),
                error: e.to_string(),
            })?;
            let (stream, _) = dial(&settings.policy, &target, settings.timeouts.connect).await?;
            Ok(TokioIo::new(stream))
        })
    }
}
