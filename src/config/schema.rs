//! The configuration file as written: serde structs that mirror `config/portcullis.toml`,
//! and their built-in defaults. Parsing is strict (`deny_unknown_fields`: a typo is an error,
//! not a silently ignored key).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::problem::WorkersError;
use crate::core::policy::default_client_networks;
use crate::core::ports::PortSpec;

pub use super::rule_schema::{RateCapConfig, RuleAction, RuleConfig};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This proxy's name in its records, status and metrics, so that logs of several proxies
    /// can be merged; unset, the machine's host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Addresses to accept proxy clients on.
    pub listen: Vec<SocketAddr>,
    /// Addresses to accept proxy clients on over TLS (`[tls]` names the certificate).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listen_tls: Vec<SocketAddr>,
    /// Threads that serve connections: `"auto"` or a number.
    pub workers: Workers,
    /// Which clients may use the proxy.
    pub clients: ClientsConfig,
    /// Which destination ports plain HTTP and CONNECT may reach.
    pub ports: PortsConfig,
    /// Guards on destination addresses.
    pub destinations: DestinationsConfig,
    /// How long the proxy waits for things.
    pub timeouts: TimeoutsConfig,
    /// Bounds on connections and request heads.
    pub limits: LimitsConfig,
    /// Proxy authentication.
    pub auth: AuthConfig,
    /// Ordered rules, first match wins, checked before the port lists.
    pub rules: Vec<RuleConfig>,
    /// The access log and diagnostics.
    pub log: LogConfig,
    /// The admin listener: metrics, status pages, health.
    pub admin: AdminConfig,
    /// The proxy auto-config file served at `/proxy.pac` and `/wpad.dat`.
    pub pac: PacConfig,
    /// The pages browsers show for refusals.
    pub pages: PagesConfig,
    /// Parent proxies, for networks whose only way out is another proxy.
    pub upstream: UpstreamConfig,
    /// How destination names are resolved.
    pub dns: DnsConfig,
    /// SOCKS5 (and 4a) on the listen addresses.
    pub socks: SocksConfig,
    /// The shared link and each client's fair share of it.
    pub shaping: ShapingConfig,
    /// Where the proxy keeps what must outlive it.
    pub state: StateConfig,
    /// The time zone schedules and budget periods are read in.
    pub clock: ClockConfig,
    /// The certificate of the TLS listeners.
    pub tls: TlsConfig,
    /// Byte budgets, per client or per user, for a day, a week or a month.
    pub quotas: Vec<super::quotas::QuotaConfig>,
}

/// `[tls]`: the certificate clients see on `listen_tls`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, PEM: the proxy's certificate first, then the intermediates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// A certificate authority (PEM) offered for download on the proxy's own page, so that
    /// clients can trust the certificate (`ca.pem` of `portcullis cert`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

/// `[clock]`: local time, for `times` of rules and the periods of budgets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClockConfig {
    /// A zone of the time zone database (`"Europe/Amsterdam"`); unset, the machine's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// `[state]`: what the proxy keeps across restarts (usage of byte budgets, the last good copy
/// of downloaded lists).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// The folder, relative to the configuration file; unset, `state` beside it. Made when
    /// something is first kept there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// A Redis (or Valkey) store the counts of byte budgets are shared through by every
    /// proxy that names it (`"redis://host:6379/0"`); unset, each proxy counts alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
}

/// `[shaping]`: the link the LAN shares, split fairly among the clients that use it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShapingConfig {
    /// The link's speed towards the clients (`"100Mbit/s"`); unset, not shaped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down: Option<String>,
    /// The link's speed from the clients; unset, not shaped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub up: Option<String>,
    /// Whose share: each client address, or each logged-in user (others by address).
    pub per: SharePer,
    /// Weights of clients (by address) or users (by name); 1 for the others.
    pub weights: std::collections::BTreeMap<String, f64>,
}

/// `shaping.per`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SharePer {
    /// Each client address has a share.
    #[default]
    Client,
    /// Each logged-in user has a share; clients that did not log in, by address.
    User,
}

/// `[socks]`: SOCKS on the same port as HTTP, told apart by the first byte.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SocksConfig {
    /// Serve SOCKS5 (first byte `0x05`) on every listen address.
    pub enabled: bool,
    /// Serve SOCKS4 and 4a too (first byte `0x04`): no passwords, IPv4 and names only.
    pub v4: bool,
    /// Ports SOCKS CONNECT may reach; left out, those of `ports.connect`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortSpec>>,
    /// Serve UDP ASSOCIATE (a UDP relay per client connection).
    pub udp: bool,
    /// Ports datagrams through the UDP relay may reach.
    pub udp_ports: Vec<PortSpec>,
}

impl Default for SocksConfig {
    fn default() -> Self {
        SocksConfig {
            enabled: true,
            v4: false,
            ports: None,
            udp: false,
            udp_ports: vec![PortSpec::Number(53)],
        }
    }
}

/// `workers`: how many threads serve connections, `"auto"` or a number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Workers {
    /// A number of threads.
    Count(usize),
    /// A word: only `"auto"` is valid.
    Named(String),
}

impl Default for Workers {
    fn default() -> Self {
        Workers::Named("auto".to_owned())
    }
}

/// The most worker threads a configuration may ask for.
pub(crate) const MAX_WORKERS: usize = 256;

impl Workers {
    /// The number of threads; `"auto"` is half the processors the proxy may use, at least
    /// one. Each worker wakes the others as work arrives, and on two cores one worker served
    /// the same load with less processor time than two (the book, Performance).
    pub fn resolve(&self) -> Result<usize, WorkersError> {
        match self {
            Workers::Count(0) => Err(WorkersError::Zero),
            Workers::Count(n) if *n > MAX_WORKERS => Err(WorkersError::TooMany(*n)),
            Workers::Count(n) => Ok(*n),
            Workers::Named(word) if word == "auto" => Ok(std::thread::available_parallelism()
                .map_or(1, |n| n.get() / 2)
                .max(1)),
            Workers::Named(word) => Err(WorkersError::NotANumber(word.clone())),
        }
    }
}

/// `[pac]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PacConfig {
    /// Hosts browsers reach without the proxy: names, `.domains`, CIDRs. Left out: the
    /// private networks of `clients.allow`. `[]`: everything but plain host names goes
    /// through the proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct: Option<Vec<String>>,
    /// Proxies to offer, in order (`host:port`); left empty, this proxy itself.
    pub proxies: Vec<String>,
    /// The name or address of this proxy as clients should use it; left out, the address
    /// the PAC request arrived on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_host: Option<String>,
    /// Offer `SOCKS5 host:port` after the `PROXY` entries, for clients that send non-HTTP
    /// traffic through the PAC's proxies (this proxy answers SOCKS5 on the same port).
    pub socks: bool,
    /// Offer `HTTPS host:port` (this proxy's first `listen_tls` port) before the `PROXY`
    /// entries, so that browsers speak TLS to the proxy.
    pub tls: bool,
}

/// `[pages]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PagesConfig {
    /// Whom to ask when something is refused, shown on error pages.
    pub contact: String,
    /// A directory of the owner's page templates, replacing the built-in ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

impl Default for PagesConfig {
    fn default() -> Self {
        PagesConfig {
            contact: "the person who runs this network".to_owned(),
            dir: None,
        }
    }
}

/// One value or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// `proxy = "http://parent:8080"`
    One(String),
    /// `proxy = ["http://a:8080", "http://b:8080"]`
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values, in order.
    pub fn values(&self) -> Vec<String> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `[upstream]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Parent proxies (`http://[user:password@]host:port`), tried in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<OneOrMany>,
    /// Hosts reached directly rather than through the parent: names, `.domains`, CIDRs.
    pub direct: Vec<String>,
    /// Source addresses of outbound connections, at most one IPv4 and one IPv6 (Squid's
    /// `tcp_outgoing_address`); empty: the system chooses.
    pub bind: Vec<IpAddr>,
}

/// `[dns]`: how destination names are resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// `"builtin"` (asks DNS servers itself and caches their answers) or `"system"` (the
    /// operating system's getaddrinfo, for nsswitch or mDNS names; no cache).
    pub resolver: String,
    /// DNS servers to ask instead of those in `/etc/resolv.conf`: `"address"` or
    /// `"address:port"`.
    pub servers: Vec<String>,
    /// Answers (one per name and address family) kept at most.
    pub cache_size: u64,
    /// The longest a found address is kept, whatever its TTL says.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// The longest a name that does not exist (or has no address) is remembered.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            resolver: "builtin".to_owned(),
            servers: Vec::new(),
            cache_size: 4096,
            max_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(30),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `"stdout"`, `"off"` or a file path for the access log.
    pub access: String,
    /// `"squid"`, `"common"` or `"json"`.
    pub format: Format,
    /// The diagnostics level when `RUST_LOG` is not set (`error` … `trace`).
    pub level: String,
    /// `"off"`, or where access records also go as syslog messages (RFC 5424):
    /// `unix:/dev/log`, `udp://host:514` or `tcp://host:601`.
    pub syslog: String,
    /// The syslog messages' payload: `"json"`, `"squid"` or `"common"`.
    pub syslog_format: Format,
    /// The syslog facility by name (`local0` … `local7`, `daemon` …).
    pub syslog_facility: String,
    /// The syslog APP-NAME field.
    pub syslog_app_name: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            access: "stdout".to_owned(),
            format: Format::Squid,
            level: "info".to_owned(),
            syslog: "off".to_owned(),
            syslog_format: Format::Json,
            syslog_facility: "local0".to_owned(),
            syslog_app_name: "portcullis".to_owned(),
        }
    }
}

impl LogConfig {
    /// Where the access log goes; a relative path is relative to `base`.
    pub fn destination(&self, base: &Path) -> Destination {
        match self.access.as_str() {
            "stdout" | "-" => Destination::Stdout,
            "off" => Destination::Off,
            path => Destination::File(base.join(path)),
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where `/metrics`, `/status`, `/status.json` and `/healthz` are served; `"off"` for none.
    pub listen: String,
    /// Who may read them.
    pub allow: Vec<Network>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:3129".to_owned(),
            allow: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
        }
    }
}

impl AdminConfig {
    /// The admin address, or `None` when off.
    pub fn address(&self) -> Option<SocketAddr> {
        (self.listen != "off")
            .then(|| self.listen.parse().ok())
            .flatten()
    }
}

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Client connections open at once. At it, a new one takes the place of an idle one;
    /// when all are busy it gets `503`.
    pub max_connections: usize,
    /// Client connections open at once from one address. At it, a new one takes the place
    /// of one of the address's idle ones; when all are busy it gets `429`.
    pub max_connections_per_client: usize,
    /// Client connections open at once from one network (`network_prefix_v4`,
    /// `network_prefix_v6`); unset, no such limit. At it, a new one takes the place of one
    /// of the network's idle ones; when all are busy it gets `503`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_network: Option<usize>,
    /// Streams (requests and `CONNECT` tunnels) open at once on one HTTP/2 connection. Each
    /// stream also takes a place in the connection limits above, as the HTTP/1.1 connection
    /// it stands for would.
    pub max_streams_per_connection: u32,
    /// The length of an IPv4 client's network prefix, for the per-network limit and for
    /// choosing whose idle connection makes room.
    pub network_prefix_v4: u8,
    /// The length of an IPv6 client's network prefix (a /64 is one site's LAN).
    pub network_prefix_v6: u8,
    /// A tunnel that has moved no byte for this long may be closed to make room at a
    /// connection limit (after every idle and waiting connection).
    #[serde(with = "humantime_serde")]
    pub idle_tunnel_after: Duration,
    /// Connections the system may queue on each listener before the proxy accepts them
    /// (`listen(2)`'s backlog; the kernel caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Bytes of one request head (request line and headers); past it `431`.
    pub max_header_bytes: usize,
    /// Bytes of the request line; past it `414`.
    pub max_request_line: usize,
    /// Header fields in one request; past it `431`.
    pub max_headers: usize,
    /// Caps on what chosen clients may move (`[[limits.rate]]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate: Vec<RateCapConfig>,
}

impl LimitsConfig {
    /// The network a client address belongs to, for the per-network limit.
    pub(crate) fn network_of(&self, ip: std::net::IpAddr) -> ipnet::IpNet {
        let prefix = match ip {
            std::net::IpAddr::V4(_) => self.network_prefix_v4,
            std::net::IpAddr::V6(_) => self.network_prefix_v6,
        };
        ipnet::IpNet::new(ip, prefix).map_or_else(|_| ipnet::IpNet::from(ip), |net| net.trunc())
    }

    /// The bounds of a request head, as the core's head check takes them.
    pub(crate) fn head(&self) -> crate::core::limits::HeadLimits {
        crate::core::limits::HeadLimits {
            max_request_line: self.max_request_line,
            max_headers: self.max_headers,
            max_header_bytes: self.max_header_bytes,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 4096,
            max_connections_per_client: 256,
            max_connections_per_network: None,
            max_streams_per_connection: 100,
            network_prefix_v4: 24,
            network_prefix_v6: 64,
            idle_tunnel_after: Duration::from_secs(60),
            listen_backlog: 4096,
            max_header_bytes: 64 * 1024,
            max_request_line: 8 * 1024,
            max_headers: 100,
            rate: Vec::new(),
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// An htpasswd file; when set, every request must authenticate.
    pub htpasswd: Option<PathBuf>,
    /// The realm the browser shows in its log-in prompt.
    pub realm: String,
    /// How long a verified credential is remembered.
    #[serde(with = "humantime_serde")]
    pub cache: Duration,
    /// Failed attempts from one address within `failure_window` that block it.
    pub max_failures: u32,
    /// The window in which failures are counted.
    #[serde(with = "humantime_serde")]
    pub failure_window: Duration,
    /// How long a blocked address stays blocked.
    #[serde(with = "humantime_serde")]
    pub block_for: Duration,
    /// A Squid basic authentication helper and its arguments (`auth_param basic program`):
    /// it reads `user password` lines and answers `OK` or `ERR`. With `htpasswd` too, users
    /// of the file are checked there and everyone else by the helper.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<Vec<String>>,
    /// Helper processes kept running.
    pub children: usize,
    /// Requests one helper process takes at once, with Squid's channel IDs; 0: one at a
    /// time, without IDs (the helpers' default).
    pub concurrency: usize,
    /// How long a helper may take to answer; then the log-in fails (407) and the process is
    /// killed and started again.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Groups of users, asked of a Squid external ACL helper (`[auth.groups]`).
    pub groups: GroupsConfig,
}

/// `[auth.groups]`: a Squid external ACL helper (`external_acl_type … %LOGIN %g`) that says
/// whether a user is in a group, for `[[rules]] groups`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    /// The helper and its arguments: it reads `user group` lines and answers `OK` (a
    /// member) or `ERR` (not a member).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<Vec<String>>,
    /// Helper processes kept running.
    pub children: usize,
    /// Requests one process takes at once (channel IDs); 0: one at a time.
    pub concurrency: usize,
    /// How long the helper may take to answer.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a "member" answer is remembered.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long a "not a member" answer is remembered.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            program: None,
            children: 5,
            concurrency: 0,
            timeout: Duration::from_secs(5),
            ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(3600),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            htpasswd: None,
            realm: "Portcullis proxy".to_owned(),
            cache: Duration::from_secs(300),
            max_failures: 10,
            failure_window: Duration::from_secs(60),
            block_for: Duration::from_secs(300),
            program: None,
            children: 5,
            concurrency: 0,
            timeout: Duration::from_secs(5),
            groups: GroupsConfig::default(),
        }
    }
}

/// `[clients]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientsConfig {
    /// Client networks (CIDRs; a bare address means just that address).
    pub allow: Vec<Network>,
    /// Friendly names of client addresses, shown wherever the address is.
    pub names: std::collections::BTreeMap<IpAddr, String>,
}

/// `[ports]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PortsConfig {
    /// Ports plain (absolute-form) HTTP requests may reach.
    pub http: Vec<PortSpec>,
    /// Ports CONNECT tunnels may reach.
    pub connect: Vec<PortSpec>,
}

/// `[destinations]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DestinationsConfig {
    /// Let clients reach loopback addresses (for local development and tests).
    pub allow_loopback: bool,
}

/// `[timeouts]`, written like `"10s"`, `"2m"`, `"1h 30m"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// Resolving and dialling an origin, all addresses tried included.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// How long one connection attempt runs before the next address is tried beside it
    /// (Happy Eyeballs, RFC 8305).
    #[serde(with = "humantime_serde")]
    pub connect_attempt: Duration,
    /// A client's whole request head must arrive within this.
    #[serde(with = "humantime_serde")]
    pub request_header: Duration,
    /// An idle client connection between requests is closed after this.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// A request body with no byte from the client for this long is cut (slow uploads).
    #[serde(with = "humantime_serde")]
    pub request_body: Duration,
    /// How long the origin may take to begin its answer, and to send each next piece of it.
    #[serde(with = "humantime_serde")]
    pub response: Duration,
    /// A tunnel with no byte either way for this long is closed.
    #[serde(with = "humantime_serde")]
    pub tunnel_idle: Duration,
    /// On SIGINT or SIGTERM, in-flight requests and tunnels get this long to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl TimeoutsConfig {
    /// How long a write to an origin or a parent may wait for it to take bytes: three times
    /// `response` (15 minutes by default, as Squid's `write_timeout`). A single write can
    /// wait long for a slow but steady reader, as the kernel wakes the writer only once a
    /// good part of a buffer of several MB has drained; this bound is for a peer that stopped.
    pub fn origin_write(&self) -> Duration {
        self.response.saturating_mul(3)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            instance: None,
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 3128))],
            listen_tls: Vec::new(),
            workers: Workers::default(),
            clients: ClientsConfig::default(),
            ports: PortsConfig::default(),
            destinations: DestinationsConfig::default(),
            timeouts: TimeoutsConfig::default(),
            limits: LimitsConfig::default(),
            auth: AuthConfig::default(),
            rules: Vec::new(),
            log: LogConfig::default(),
            admin: AdminConfig::default(),
            pac: PacConfig::default(),
            pages: PagesConfig::default(),
            upstream: UpstreamConfig::default(),
            dns: DnsConfig::default(),
            socks: SocksConfig::default(),
            shaping: ShapingConfig::default(),
            state: StateConfig::default(),
            clock: ClockConfig::default(),
            tls: TlsConfig::default(),
            quotas: Vec::new(),
        }
    }
}

impl Default for ClientsConfig {
    fn default() -> Self {
        ClientsConfig {
            allow: default_client_networks().into_iter().map(Network).collect(),
            names: std::collections::BTreeMap::new(),
        }
    }
}

impl Default for PortsConfig {
    fn default() -> Self {
        PortsConfig {
            http: vec!["http".into(), "1025-65535".into()],
            connect: vec!["https".into()],
        }
    }
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            connect: Duration::from_secs(10),
            connect_attempt: Duration::from_millis(250),
            request_header: Duration::from_secs(10),
            keep_alive: Duration::from_secs(120),
            request_body: Duration::from_secs(60),
            response: Duration::from_secs(300),
            tunnel_idle: Duration::from_secs(15 * 60),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// A client network: a CIDR such as `192.168.0.0/16`, or a bare address for one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network(pub IpNet);

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Network(net.trunc()));
        }
        s.parse::<IpAddr>()
            .map(|ip| Network(IpNet::from(ip)))
            .map_err(|_| {
                format!("\"{s}\" is not a network (CIDR such as 192.168.0.0/16) or an address")
            })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Network {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where access lines go (`[log] access`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Standard output.
    Stdout,
    /// Nowhere (statistics still count).
    Off,
    /// A file, appended to.
    File(PathBuf),
}

/// The access log's line format (`[log] format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Squid's native `access.log` format, which SARG, Calamaris and other Squid tools read.
    #[default]
    Squid,
    /// The Common Log Format of web servers.
    Common,
    /// One JSON object a line, with every field of the record.
    Json,
}
