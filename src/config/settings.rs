//! The validated runtime state, [`Settings`]: what the request path reads, built by
//! [`super::Config::validate`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use crate::core::hosts::{HostPattern, HostSet};
use crate::core::policy::Policy;

use super::schema::{AuthConfig, Destination, Format, LimitsConfig, TimeoutsConfig};

/// Timeouts as the request path uses them.
pub type Timeouts = TimeoutsConfig;

/// The validated runtime state: what the request path reads.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This proxy's name in records, status and metrics (`instance`, else the host name).
    pub instance: String,
    /// What was read of each block list (`hosts_file`, and the disk copy of each
    /// `hosts_url`), for `portcullis check` and the start-up warnings.
    pub lists: Vec<super::lists::ListReport>,
    /// The folder for what outlives the process (`[state] dir`); made when first used.
    pub state_dir: std::path::PathBuf,
    /// Threads that serve connections (read at start only).
    pub workers: usize,
    /// The decision data.
    pub policy: Policy,
    /// The timeouts.
    pub timeouts: Timeouts,
    /// The limits.
    pub limits: LimitsConfig,
    /// Authentication, when configured.
    pub auth: Option<AuthSettings>,
    /// Friendly names of client addresses.
    pub client_names: Arc<std::collections::BTreeMap<IpAddr, String>>,
    /// The admin listener's address and who may use it.
    pub admin: Option<(SocketAddr, Vec<IpNet>)>,
    /// Where the access log goes, and its format.
    pub access_log: (Destination, Format),
    /// Where access records also go as syslog messages, if anywhere.
    pub syslog: Option<super::syslog::SyslogSettings>,
    /// The PAC file's content settings.
    pub pac: PacSettings,
    /// Error pages.
    pub pages: PagesSettings,
    /// Parent proxies, when configured.
    pub upstream: Option<UpstreamSettings>,
    /// Source addresses of outbound connections (`upstream.bind`): at most one per family.
    pub bind: Vec<IpAddr>,
    /// How names are resolved.
    pub dns: DnsSettings,
    /// SOCKS on the listen addresses (its port lists are in the policy).
    pub socks: SocksSettings,
    /// The shared link and the caps.
    pub shaping: ShapingSettings,
    /// The TLS listeners' addresses and certificate (`listen_tls`, `[tls]`), when set.
    pub tls: Option<super::tls::TlsSettings>,
    /// The byte budgets (`[[quotas]]`), in order; empty: nothing is counted.
    pub quotas: Arc<[crate::core::quota::Quota]>,
    /// The store the counts are shared through (`[state] store`), a checked URL.
    pub store: Option<String>,
}

/// `[shaping]` and `[[limits.rate]]` as the data path uses them: rates in bytes per second.
#[derive(Debug, Clone, Default)]
pub struct ShapingSettings {
    /// The link towards the clients; `None`: not shaped.
    pub down: Option<f64>,
    /// The link from the clients.
    pub up: Option<f64>,
    /// Whose share.
    pub per: super::schema::SharePer,
    /// Weights by client address or user name.
    pub weights: std::collections::HashMap<String, f64>,
    /// The caps, in order: a transfer is held by every cap that matches it.
    pub caps: Vec<RateCap>,
}

impl ShapingSettings {
    /// Whether anything is shaped at all (off: the data path asks nothing).
    pub fn is_on(&self) -> bool {
        self.down.is_some() || self.up.is_some() || !self.caps.is_empty()
    }

    /// What holds a client at `client` (logged in as `user`) back, one line each, for the
    /// person's own page: the link's share and its weight, and the caps whose client and
    /// user conditions name them (with what else they match).
    pub fn for_client(&self, client: std::net::IpAddr, user: Option<&str>) -> Vec<String> {
        use crate::core::shaping::show_rate;
        let mut out = Vec::new();
        let client = client.to_canonical();
        if self.down.is_some() || self.up.is_some() {
            let weight = user
                .and_then(|u| self.weights.get(u))
                .or_else(|| self.weights.get(&client.to_string()))
                .copied()
                .unwrap_or(1.0);
            let shown = |rate: Option<f64>| rate.map_or_else(|| "not shaped".to_owned(), show_rate);
            out.push(format!(
                "The link is shared (down {}, up {}): when it is full you get a share of weight {weight}, all of it when no one else uses it.",
                shown(self.down),
                shown(self.up)
            ));
        }
        for cap in &self.caps {
            let r = &cap.matcher;
            let names_client = r
                .clients
                .as_ref()
                .is_none_or(|nets| nets.iter().any(|n| n.contains(&client)));
            let names_user = r
                .users
                .as_ref()
                .is_none_or(|users| user.is_some_and(|u| users.iter().any(|x| x == u)));
            if !(names_client && names_user) {
                continue;
            }
            let mut what = Vec::new();
            if r.hosts.is_some() {
                what.push("some hosts".to_owned());
            }
            if let Some(methods) = &r.methods {
                what.push(methods.join(", "));
            }
            if r.ports.is_some() {
                what.push("some ports".to_owned());
            }
            let scope = match what.is_empty() {
                true => "everything you do".to_owned(),
                false => what.join("; "),
            };
            out.push(format!(
                "Cap \"{}\" holds you to down {}, up {} for {scope}, across all your connections.",
                r.name,
                cap.down.map_or_else(|| "-".to_owned(), show_rate),
                cap.up.map_or_else(|| "-".to_owned(), show_rate)
            ));
        }
        out
    }

    /// What would hold a transfer described by `facts` back, one line each, as
    /// `portcullis explain` says it: the link's share, and the caps that match.
    pub fn explain(&self, facts: &crate::core::policy::Facts<'_>) -> Vec<String> {
        use crate::core::shaping::show_rate;
        let mut out = Vec::new();
        if !self.is_on() {
            return out;
        }
        let shown = |rate: Option<f64>| rate.map_or_else(|| "not shaped".to_owned(), show_rate);
        if self.down.is_some() || self.up.is_some() {
            let who = match (self.per, facts.user) {
                (super::schema::SharePer::User, Some(user)) => format!("user {user}"),
                _ => format!("client {}", facts.client),
            };
            let weight = facts
                .user
                .and_then(|u| self.weights.get(u))
                .or_else(|| self.weights.get(&facts.client.to_canonical().to_string()))
                .copied()
                .unwrap_or(1.0);
            out.push(format!(
                "link: shared (shaping.down {}, up {}): {who} gets a share of weight {weight} when it is full, all of it when alone",
                shown(self.down),
                shown(self.up)
            ));
        }
        let caps: Vec<String> = self
            .caps
            .iter()
            .filter(|cap| cap.matcher.matches(facts, None))
            .map(|cap| {
                format!(
                    "limits.rate \"{}\" (down {}, up {})",
                    cap.matcher.name,
                    cap.down.map_or_else(|| "-".to_owned(), show_rate),
                    cap.up.map_or_else(|| "-".to_owned(), show_rate)
                )
            })
            .collect();
        out.push(match caps.is_empty() {
            true => "caps: no [[limits.rate]] matches".to_owned(),
            false => format!(
                "caps: {} (across all this client's connections that match)",
                caps.join(", ")
            ),
        });
        out
    }
}

/// One `[[limits.rate]]`.
#[derive(Debug, Clone)]
pub struct RateCap {
    /// Its matchers, compiled as a rule's (its name is the cap's).
    pub matcher: crate::core::policy::Rule,
    /// Towards the client, bytes per second.
    pub down: Option<f64>,
    /// From the client.
    pub up: Option<f64>,
    /// Its bucket, bytes; `None`: [`crate::core::shaping::default_burst`].
    pub burst: Option<f64>,
}

/// `[socks]` as the request path uses it; its port lists are the policy's
/// (`socks_ports`, `udp_ports`).
#[derive(Debug, Clone)]
pub struct SocksSettings {
    /// SOCKS5 is served.
    pub enabled: bool,
    /// SOCKS4 and 4a are served.
    pub v4: bool,
    /// UDP ASSOCIATE is served.
    pub udp: bool,
    /// While `[auth]` is on, the policy for SOCKS clients that do not log in
    /// ([`crate::core::policy::Policy::without_login`]); `None`: every SOCKS client logs in
    /// (or `[auth]` is off).
    pub without_login: Option<Arc<Policy>>,
}

/// Which resolver answers for destination names (`dns.resolver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolverKind {
    /// The proxy's own asynchronous resolver, with a cache.
    Builtin,
    /// The operating system's getaddrinfo, without a cache of the proxy's.
    System,
}

/// `[dns]` as the request path uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsSettings {
    /// Which resolver.
    pub resolver: ResolverKind,
    /// The servers to ask; empty: those of `/etc/resolv.conf`.
    pub servers: Vec<SocketAddr>,
    /// Answers kept at most.
    pub cache_size: u64,
    /// The longest a found address is kept.
    pub max_ttl: std::time::Duration,
    /// The longest a missing name is remembered.
    pub negative_ttl: std::time::Duration,
}

/// `[pac]` as the request path uses it.
#[derive(Debug, Clone)]
pub struct PacSettings {
    /// Patterns browsers reach directly.
    pub direct: Vec<HostPattern>,
    /// Proxies offered in order; empty: this proxy.
    pub proxies: Vec<String>,
    /// This proxy's name for clients, if set.
    pub proxy_host: Option<String>,
    /// `SOCKS5` entries after the `PROXY` ones.
    pub socks: bool,
    /// `HTTPS host:port` entries before the `PROXY` ones (`pac.tls`).
    pub tls: bool,
    /// The port of this proxy's first TLS listener, as bound.
    pub tls_port: Option<u16>,
    /// The port of this proxy's first plain listener, as bound: the `PROXY` entries' port
    /// when the file was fetched over a TLS listener.
    pub plain_port: Option<u16>,
}

/// `[pages]` as the request path uses it.
#[derive(Debug, Clone)]
pub struct PagesSettings {
    /// Whom to ask.
    pub contact: String,
    /// The owner's `error.html` template, replacing the built-in one.
    pub error_template: Option<Arc<str>>,
}

/// One parent proxy.
#[derive(Debug, Clone)]
pub struct Parent {
    /// `host:port` as written, without credentials: how logs and errors name it.
    pub name: String,
    /// Its host.
    pub host: crate::core::target::Host,
    /// Its port.
    pub port: u16,
    /// `Proxy-Authorization` for it, from the URL's credentials.
    pub authorization: Option<http::HeaderValue>,
}

/// `[upstream]` as the request path uses it.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Parents, tried in order.
    pub parents: Vec<Parent>,
    /// Hosts reached without a parent.
    pub direct: Arc<HostSet>,
}

impl UpstreamSettings {
    /// Whether `host` goes through a parent: there is one, and the host is not in
    /// `upstream.direct`.
    pub fn serves(&self, host: &crate::core::target::Host) -> bool {
        !self.parents.is_empty()
            && self.direct.matches(host, None) != crate::core::hosts::HostMatch::Yes
    }
}

impl Settings {
    /// The friendly name of a client address, if it has one.
    pub fn client_name(&self, ip: IpAddr) -> Option<&str> {
        self.client_names
            .get(&ip.to_canonical())
            .map(String::as_str)
    }
}

/// Authentication as the request path uses it.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The users and their password hashes (`htpasswd`), when a file is set.
    pub users: Option<Arc<crate::core::auth::Htpasswd>>,
    /// The basic authentication helper (`program`), when set: it checks the users the file
    /// does not list.
    pub program: Option<HelperSpec>,
    /// The group helper (`[auth.groups] program`), when set.
    pub groups: Option<HelperSpec>,
    /// The configuration (realm, cache and failure settings).
    pub config: AuthConfig,
}

impl AuthSettings {
    /// Whether the htpasswd file lists `user`.
    pub fn in_file(&self, user: &str) -> bool {
        self.users
            .as_ref()
            .is_some_and(|users| users.users().any(|u| u == user))
    }
}

/// A pool of Squid-protocol helper processes, as configured: what starts them and how many
/// requests they take. Two specs that are equal run the same processes (a reload keeps them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperSpec {
    /// `auth` (log-ins) or `groups`: how logs, metrics and pages name the pool.
    pub name: &'static str,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Processes kept running.
    pub children: usize,
    /// Requests one process takes at once, with channel IDs; 0: one at a time, without.
    pub concurrency: usize,
    /// How long an answer may take.
    pub timeout: std::time::Duration,
}

impl HelperSpec {
    /// The requests one process takes at once (1 without channel IDs).
    pub fn per_process(&self) -> usize {
        self.concurrency.max(1)
    }
}

impl Settings {
    /// Records the addresses the proxy's listeners and admin listener were bound to (a port
    /// may have been 0): the policy refuses them as destinations. The only patch made to
    /// validated settings; start-up and reload both call it.
    pub fn set_bound(
        &mut self,
        plain: impl IntoIterator<Item = SocketAddr>,
        tls: impl IntoIterator<Item = SocketAddr>,
        admin: Option<SocketAddr>,
    ) {
        let plain: Vec<SocketAddr> = plain.into_iter().collect();
        let tls: Vec<SocketAddr> = tls.into_iter().collect();
        self.pac.plain_port = plain.first().map(SocketAddr::port);
        self.pac.tls_port = tls.first().map(SocketAddr::port);
        if let Some(settings) = self.tls.as_mut() {
            settings.listen = tls.clone();
        }
        self.policy.listen = plain.into_iter().chain(tls).collect();
        self.policy.admin = admin;
    }
}
