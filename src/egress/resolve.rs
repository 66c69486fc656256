//! Names to addresses, for [`crate::egress::dial`].
//!
//! The builtin resolver (`dns.resolver = "builtin"`, hickory-resolver) asks the servers of
//! `/etc/resolv.conf`, or those of `dns.servers`, with the search list and options of
//! `/etc/resolv.conf`; it reads `/etc/hosts` first, and keeps answers, found and missing, in
//! a cache bounded by their TTLs, by `dns.max_ttl` and `dns.negative_ttl`, and by
//! `dns.cache_size`. The system resolver (`"system"`) is getaddrinfo on the blocking pool:
//! nsswitch, mDNS and whatever else the system is set up for, without a cache of the proxy's.
//!
//! A name's AAAA and A lookups run at once, and [`Lookups::next`] hands each answer over as it
//! arrives, so the dialler can start connecting on the first (RFC 8305 §3). A lookup that
//! waits on a slow server holds nothing that another name's lookup needs.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use std::time::Duration;
use tokio::sync::Semaphore;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use crate::config::{DnsSettings, ResolverKind};

/// A resolver built from `[dns]`.
pub struct Resolver {
    inner: Inner,
    /// Lookups finished in the background after their dial was won, at most
    /// [`BACKGROUND_LOOKUPS`] at once.
    background: Arc<Semaphore>,
    settings: DnsSettings,
    /// `/etc/resolv.conf` and `/etc/hosts` as they were read, for the builtin resolver.
    files: Option<SystemFiles>,
}

enum Inner {
    // Shared with each lookup's future, which must own what it uses.
    Builtin(Arc<TokioResolver>),
    System,
}

/// Why the resolver could not be built.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot set up the DNS resolver: {0}; list [dns] servers, or set [dns] resolver = \"system\""
)]
pub struct ResolverError(String);

/// The address families an answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// AAAA records.
    V6,
    /// A records.
    V4,
    /// Both, from one getaddrinfo call.
    Both,
}

/// Why a lookup found no address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The name does not exist (NXDOMAIN).
    #[error("no such name")]
    NoSuchName,
    /// The name exists but has no address of this family.
    #[error("no address")]
    NoAddress,
    /// The servers failed, did not answer, or could not be reached.
    #[error("{0}")]
    Failed(String),
}

/// One lookup's answer.
#[derive(Debug)]
pub struct Answer {
    /// Which family it is for.
    pub family: Family,
    /// The addresses, or why there are none.
    pub result: Result<Vec<IpAddr>, LookupError>,
    /// Answered without asking a server (from the cache or `/etc/hosts`).
    pub cached: bool,
}

type Pending = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// The lookups of one name, answered one by one as they arrive.
pub struct Lookups {
    pending: Vec<Pending>,
    background: Arc<Semaphore>,
}

impl Lookups {
    /// The next answer to arrive; `None` once every lookup has answered. Cancel-safe: a
    /// lookup not yet answered stays here.
    pub async fn next(&mut self) -> Option<Answer> {
        if self.pending.is_empty() {
            return None;
        }
        std::future::poll_fn(|cx| {
            for i in 0..self.pending.len() {
                if let Poll::Ready(answer) = self.pending[i].as_mut().poll(cx) {
                    drop(self.pending.swap_remove(i));
                    return Poll::Ready(Some(answer));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Whether every lookup has answered.
    pub fn is_done(&self) -> bool {
        self.pending.is_empty()
    }

    /// Lets the lookups still running finish on a task of their own, so that the cache holds
    /// their answers for the next request: at most [`BACKGROUND_LOOKUPS`] at once across the
    /// proxy (past that they are dropped), each for [`BACKGROUND_LIMIT`] at most.
    pub fn finish_in_background(mut self) {
        if self.is_done() {
            return;
        }
        let Ok(permit) = self.background.clone().try_acquire_owned() else {
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let finish = async { while self.next().await.is_some() {} };
            let _ = tokio::time::timeout(BACKGROUND_LIMIT, finish).await;
        });
    }
}

/// Lookups finished in the background at once, across the proxy.
pub const BACKGROUND_LOOKUPS: usize = 64;
/// The longest a lookup is finished in the background.
pub const BACKGROUND_LIMIT: Duration = Duration::from_secs(10);
/// Addresses of one family taken from an answer: a dial tries a few; an answer of thousands
/// would only cost time and memory.
pub const MAX_ADDRESSES_PER_FAMILY: usize = 16;

impl Resolver {
    /// Builds the resolver `settings` ask for. The builtin one reads `/etc/resolv.conf` now
    /// (its servers unless `dns.servers` replace them).
    pub fn new(settings: &DnsSettings) -> Result<Resolver, ResolverError> {
        let (inner, files) = match settings.resolver {
            ResolverKind::System => (Inner::System, None),
            ResolverKind::Builtin => {
                let files = SystemFiles::read();
                (Inner::Builtin(Arc::new(builtin(settings)?)), Some(files))
            }
        };
        Ok(Resolver {
            inner,
            background: Arc::new(Semaphore::new(BACKGROUND_LOOKUPS)),
            settings: settings.clone(),
            files,
        })
    }

    /// Whether this resolver is the one `settings` ask for now: the same `[dns]`, and, for
    /// the builtin one, `/etc/resolv.conf` and `/etc/hosts` as they were read (a DHCP
    /// client may have rewritten the first since). A reload keeps the resolver, and its
    /// cache, only then.
    pub fn is_current(&self, settings: &DnsSettings) -> bool {
        self.settings == *settings
            && self
                .files
                .as_ref()
                .is_none_or(|files| *files == SystemFiles::read())
    }

    /// Starts looking `name` up: AAAA and A at once with the builtin resolver, one
    /// getaddrinfo call with the system's.
    pub fn lookups(&self, name: &str) -> Lookups {
        let pending: Vec<Pending> = match &self.inner {
            Inner::Builtin(resolver) => {
                let (v6, v4) = (resolver.clone(), resolver.clone());
                let (n6, n4) = (name.to_owned(), name.to_owned());
                vec![
                    Box::pin(watched(Family::V6, async move {
                        addresses(v6.ipv6_lookup(n6.as_str()).await)
                    })),
                    Box::pin(watched(Family::V4, async move {
                        addresses(v4.ipv4_lookup(n4.as_str()).await)
                    })),
                ]
            }
            Inner::System => {
                let name = name.to_owned();
                vec![Box::pin(async move {
                    let result = match tokio::net::lookup_host((name.as_str(), 0)).await {
                        Ok(addrs) => {
                            let (mut v6, mut v4) = (0, 0);
                            let ips: Vec<IpAddr> = addrs
                                .map(|a: SocketAddr| a.ip())
                                .filter(|ip| {
                                    let n = if ip.is_ipv6() { &mut v6 } else { &mut v4 };
                                    *n += 1;
                                    *n <= MAX_ADDRESSES_PER_FAMILY
                                })
                                .collect();
                            if ips.is_empty() {
                                Err(LookupError::NoAddress)
                            } else {
                                Ok(ips)
                            }
                        }
                        Err(e) => Err(system_error(&e)),
                    };
                    Answer {
                        family: Family::Both,
                        result,
                        cached: false,
                    }
                })]
            }
        };
        Lookups {
            pending,
            background: self.background.clone(),
        }
    }
}

/// The builtin resolver: `/etc/resolv.conf`'s search list and options, its servers or
/// `dns.servers`, `/etc/hosts`, and the cache bounds of `[dns]`.
fn builtin(settings: &DnsSettings) -> Result<TokioResolver, ResolverError> {
    let (config, mut options) = match hickory_resolver::system_conf::read_system_conf() {
        Ok(read) => read,
        // Without a resolv.conf the servers listed are enough.
        Err(_) if !settings.servers.is_empty() => (
            ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
            Default::default(),
        ),
        Err(e) => return Err(ResolverError(format!("reading /etc/resolv.conf: {e}"))),
    };
    let config = if settings.servers.is_empty() {
        if config.name_servers().is_empty() {
            return Err(ResolverError("/etc/resolv.conf names no server".into()));
        }
        config
    } else {
        let (domain, search, _) = config.into_parts();
        let servers = settings
            .servers
            .iter()
            .map(|addr| {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                server
            })
            .collect();
        ResolverConfig::from_parts(domain, search, servers)
    };
    options.cache_size = settings.cache_size;
    options.positive_max_ttl = Some(settings.max_ttl);
    options.negative_max_ttl = Some(settings.negative_ttl);
    options.use_hosts_file = ResolveHosts::Always;
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    *builder.options_mut() = options;
    builder.build().map_err(|e| ResolverError(e.to_string()))
}

/// Runs `lookup`, noting whether it answered at its first poll: the resolver answers from
/// its cache or `/etc/hosts` without waiting, and waits only when it asks a server. A
/// failure at once (no server could be asked) is no cache hit.
fn watched(
    family: Family,
    lookup: impl Future<Output = Result<Vec<IpAddr>, LookupError>> + Send + 'static,
) -> impl Future<Output = Answer> + Send {
    let mut lookup = Box::pin(lookup);
    let mut first = true;
    std::future::poll_fn(move |cx| {
        let polled = lookup.as_mut().poll(cx);
        let first_poll = std::mem::replace(&mut first, false);
        polled.map(|result| Answer {
            family,
            cached: first_poll && !matches!(result, Err(LookupError::Failed(_))),
            result,
        })
    })
}

/// The addresses of a hickory answer, or why there are none.
fn addresses(
    lookup: Result<hickory_resolver::lookup::Lookup, NetError>,
) -> Result<Vec<IpAddr>, LookupError> {
    let lookup = lookup.map_err(|e| lookup_error(&e))?;
    let ips: Vec<IpAddr> = lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .take(MAX_ADDRESSES_PER_FAMILY)
        .collect();
    if ips.is_empty() {
        Err(LookupError::NoAddress)
    } else {
        Ok(ips)
    }
}

fn lookup_error(e: &NetError) -> LookupError {
    if e.is_nx_domain() {
        LookupError::NoSuchName
    } else if e.is_no_records_found() {
        LookupError::NoAddress
    } else {
        LookupError::Failed(match e {
            NetError::Timeout => "the DNS servers did not answer in time".to_owned(),
            NetError::NoConnections => "no DNS server could be reached".to_owned(),
            other => format!("the DNS servers failed: {other}"),
        })
    }
}

/// getaddrinfo's failure, in the words [`LookupError`] uses.
fn system_error(e: &std::io::Error) -> LookupError {
    let text = e.to_string();
    let text = text
        .strip_prefix("failed to lookup address information: ")
        .unwrap_or(&text);
    // EAI_NONAME's words; glibc says "Name or service not known".
    if text.contains("not known") || text.contains("No address associated") {
        LookupError::NoSuchName
    } else {
        LookupError::Failed(text.to_owned())
    }
}

/// The files the builtin resolver reads when it is built: its servers, search list and
/// options, and the static names.
#[derive(PartialEq, Eq)]
struct SystemFiles {
    resolv_conf: Option<Vec<u8>>,
    hosts: Option<Vec<u8>>,
}

impl SystemFiles {
    fn read() -> SystemFiles {
        SystemFiles {
            resolv_conf: std::fs::read("/etc/resolv.conf").ok(),
            hosts: std::fs::read("/etc/hosts").ok(),
        }
    }
}

/// The longest a lookup result may wait for the other family once one family has answered
/// with addresses (RFC 8305 §3, "Resolution Delay").
pub const RESOLUTION_DELAY: Duration = Duration::from_millis(50);
