//! The configuration file: serde structs that mirror `config/portcullis.toml`, their built-in
//! defaults, and validation into [`Settings`], the runtime state the request path reads.
//!
//! Parsing is strict (`deny_unknown_fields`: a typo is an error, not a silently ignored key)
//! and validation reports every problem at once, each naming the key and entry at fault.
//! Nothing here opens a socket; binding the listeners is the server's job.

pub mod lint;

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::core::hosts::{HostPattern, HostSet};
use crate::core::policy::{default_client_networks, Action, Policy, Rule};
use crate::core::ports::{PortSet, PortSpec};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Addresses to accept proxy clients on.
    pub listen: Vec<SocketAddr>,
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
const MAX_WORKERS: usize = 256;

impl Workers {
    /// The number of threads; `"auto"` is half the processors the proxy may use, at least
    /// one. Each worker wakes the others as work arrives, and on two cores one worker served
    /// the same load with less processor time than two (README, Performance).
    pub fn resolve(&self) -> Result<usize, String> {
        match self {
            Workers::Count(0) => Err("workers: 0; give at least 1, or \"auto\"".to_owned()),
            Workers::Count(n) if *n > MAX_WORKERS => Err(format!(
                "workers: {n} is more than {MAX_WORKERS}; give a smaller number, or \"auto\""
            )),
            Workers::Count(n) => Ok(*n),
            Workers::Named(word) if word == "auto" => Ok(std::thread::available_parallelism()
                .map_or(1, |n| n.get() / 2)
                .max(1)),
            Workers::Named(word) => Err(format!(
                "workers: \"{word}\" is neither \"auto\" nor a number such as 2"
            )),
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
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            access: "stdout".to_owned(),
            format: Format::Squid,
            level: "info".to_owned(),
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
    /// Client connections open at once; past it new ones get `503`.
    pub max_connections: usize,
    /// Client connections open at once from one address; past it new ones get `429`.
    pub max_connections_per_client: usize,
    /// Bytes of one request head (request line and headers); past it `431`.
    pub max_header_bytes: usize,
    /// Bytes of the request line; past it `414`.
    pub max_request_line: usize,
    /// Header fields in one request; past it `431`.
    pub max_headers: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 4096,
            max_connections_per_client: 256,
            max_header_bytes: 64 * 1024,
            max_request_line: 8 * 1024,
            max_headers: 100,
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
        }
    }
}

/// One `[[rules]]` entry as written. A condition left out matches everything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Shown in refusals and logs.
    pub name: String,
    /// Client networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<Vec<Network>>,
    /// Authenticated users (needs `[auth]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
    /// Host patterns: `example.com`, `.example.com`, `10.0.0.0/8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    /// A file of host patterns, one a line; relative to the configuration file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts_file: Option<PathBuf>,
    /// Destination ports, as in `[ports]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortSpec>>,
    /// Request methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// `allow` or `deny`.
    pub action: RuleAction,
}

/// `action = "allow" | "deny"`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Let the request through.
    Allow,
    /// Refuse it.
    Deny,
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
    /// Resolving and dialling an origin.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
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
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 3128))],
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

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message has line and column).
    #[error("{origin}: {message}")]
    Parse {
        /// The file, or `<built-in>`.
        origin: String,
        /// toml's message, with line, column and the offending text.
        message: String,
    },
    /// The file parsed but some values are not acceptable; one line per problem.
    #[error("{origin}: invalid configuration:\n  - {}", problems.join("\n  - "))]
    Invalid {
        /// The file, or `<built-in>`.
        origin: String,
        /// Each problem, naming its key.
        problems: Vec<String>,
    },
}

/// Timeouts as the request path uses them.
pub type Timeouts = TimeoutsConfig;

/// The validated runtime state: what the request path reads.
#[derive(Debug, Clone)]
pub struct Settings {
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
    /// The PAC file's content settings.
    pub pac: PacSettings,
    /// Error pages.
    pub pages: PagesSettings,
    /// Parent proxies, when configured.
    pub upstream: Option<UpstreamSettings>,
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
    /// The users and their password hashes.
    pub users: Arc<crate::core::auth::Htpasswd>,
    /// The configuration (realm, cache and failure settings).
    pub config: AuthConfig,
}

impl Config {
    /// Parses TOML text; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Validates the configuration into runtime [`Settings`], listing every problem. Files
    /// the configuration names (`htpasswd`, `hosts_file`) are read relative to the directory
    /// of `origin` when it is a file path.
    pub fn validate(&self, origin: &str) -> Result<Settings, ConfigError> {
        let base = Path::new(origin)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut problems = Vec::new();
        if self.listen.is_empty() {
            problems.push(
                "listen: the list is empty; give at least one address such as \"0.0.0.0:3128\""
                    .to_owned(),
            );
        }
        if self.clients.allow.is_empty() {
            problems.push(
                "clients.allow: the list is empty, so no client could use the proxy".to_owned(),
            );
        }
        let workers = self.workers.resolve().unwrap_or_else(|problem| {
            problems.push(problem);
            1
        });
        let http_ports = port_set("ports.http", &self.ports.http, &mut problems);
        let connect_ports = port_set("ports.connect", &self.ports.connect, &mut problems);
        let t = &self.timeouts;
        for (key, value) in [
            ("connect", t.connect),
            ("request_header", t.request_header),
            ("keep_alive", t.keep_alive),
            ("request_body", t.request_body),
            ("response", t.response),
            ("tunnel_idle", t.tunnel_idle),
        ] {
            if value.is_zero() {
                problems.push(format!("timeouts.{key}: must be longer than zero"));
            }
        }
        let l = &self.limits;
        for (key, value, least) in [
            ("max_connections", l.max_connections, 1),
            (
                "max_connections_per_client",
                l.max_connections_per_client,
                1,
            ),
            ("max_header_bytes", l.max_header_bytes, 1024),
            ("max_request_line", l.max_request_line, 256),
            ("max_headers", l.max_headers, 8),
        ] {
            if value < least {
                problems.push(format!("limits.{key}: must be at least {least}"));
            }
        }
        let admin = match self.admin.listen.as_str() {
            "off" => None,
            text => match text.parse::<SocketAddr>() {
                Ok(addr) => Some((addr, self.admin.allow.iter().map(|n| n.0).collect())),
                Err(_) => {
                    problems.push(format!(
                        "admin.listen: \"{text}\" is not an address such as \"127.0.0.1:3129\", or \"off\""
                    ));
                    None
                }
            },
        };
        if !valid_log_level(&self.log.level) {
            problems.push(format!(
                "log.level: \"{}\" is not a level (error, warn, info, debug, trace)",
                self.log.level
            ));
        }
        for (ip, name) in &self.clients.names {
            if name.trim().is_empty() || name.chars().any(|c| c.is_control()) {
                problems.push(format!(
                    "clients.names: the name of {ip} must be one line of text"
                ));
            }
        }
        let pac = PacSettings {
            direct: match &self.pac.direct {
                Some(patterns) => patterns
                    .iter()
                    .filter_map(|p| match HostPattern::parse(p) {
                        Ok(p) => Some(p),
                        Err(e) => {
                            problems.push(format!("pac.direct: {e}"));
                            None
                        }
                    })
                    .collect(),
                // The private networks clients come from: a LAN reaches its own hosts directly.
                None => self
                    .clients
                    .allow
                    .iter()
                    .filter(|n| !n.0.addr().is_loopback())
                    .map(|n| HostPattern::Network(n.0))
                    .collect(),
            },
            proxies: self.pac.proxies.clone(),
            proxy_host: self.pac.proxy_host.clone(),
        };
        for proxy in &pac.proxies {
            if crate::core::target::parse_authority(proxy, None).is_err() {
                problems.push(format!("pac.proxies: \"{proxy}\" is not host:port"));
            }
        }
        if let Some(host) = &pac.proxy_host {
            if crate::core::target::parse_authority(host, Some(1)).is_err() {
                problems.push(format!(
                    "pac.proxy_host: \"{host}\" is not a host name or address"
                ));
            }
        }
        let pages = PagesSettings {
            contact: self.pages.contact.clone(),
            error_template: self.pages.dir.as_ref().and_then(|dir| {
                let path = base.join(dir).join("error.html");
                match std::fs::read_to_string(&path) {
                    Ok(text) => Some(Arc::from(text)),
                    Err(e) => {
                        problems.push(format!("pages.dir: cannot read {}: {e}", path.display()));
                        None
                    }
                }
            }),
        };
        let upstream = self.upstream_settings(&mut problems);
        let auth = self.auth_settings(base, &mut problems);
        let rules = self.compile_rules(base, self.auth.htpasswd.is_some(), &mut problems);
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                problems,
            });
        }
        Ok(Settings {
            workers,
            policy: Policy {
                clients: self.clients.allow.iter().map(|n| n.0).collect(),
                http_ports,
                connect_ports,
                allow_loopback: self.destinations.allow_loopback,
                listen: self.listen.clone(),
                admin: admin.as_ref().map(|(addr, _)| *addr),
                rules,
            },
            timeouts: self.timeouts.clone(),
            limits: self.limits.clone(),
            auth,
            client_names: Arc::new(
                self.clients
                    .names
                    .iter()
                    .map(|(ip, name)| (ip.to_canonical(), name.clone()))
                    .collect(),
            ),
            admin,
            access_log: (self.log.destination(base), self.log.format),
            pac,
            pages,
            upstream,
        })
    }

    fn upstream_settings(&self, problems: &mut Vec<String>) -> Option<UpstreamSettings> {
        let urls = self.upstream.proxy.as_ref()?.values();
        if urls.is_empty() {
            problems.push(
                "upstream.proxy: the list is empty; leave the key out for no parent".to_owned(),
            );
        }
        let mut parents = Vec::new();
        for url in &urls {
            match parse_parent(url) {
                Ok(parent) => parents.push(parent),
                Err(e) => problems.push(format!(
                    "upstream.proxy: \"{}\": {e}",
                    mask_credentials(url)
                )),
            }
        }
        let mut direct = HostSet::new();
        for text in &self.upstream.direct {
            match HostPattern::parse(text) {
                Ok(p) => direct.insert(p),
                Err(e) => problems.push(format!("upstream.direct: {e}")),
            }
        }
        Some(UpstreamSettings {
            parents,
            direct: Arc::new(direct),
        })
    }

    fn auth_settings(&self, base: &Path, problems: &mut Vec<String>) -> Option<AuthSettings> {
        let path = self.auth.htpasswd.as_ref()?;
        let a = &self.auth;
        if a.realm.is_empty() || a.realm.chars().any(|c| c.is_control()) {
            problems.push("auth.realm: must be non-empty text on one line".to_owned());
        }
        if a.cache.is_zero() || a.failure_window.is_zero() || a.max_failures == 0 {
            problems
                .push("auth: cache, failure_window and max_failures must be above zero".to_owned());
        }
        match crate::core::auth::Htpasswd::load(&base.join(path)) {
            Ok(users) => Some(AuthSettings {
                users: Arc::new(users),
                config: a.clone(),
            }),
            Err(e) => {
                problems.push(format!("auth.htpasswd: {e}"));
                None
            }
        }
    }

    fn compile_rules(&self, base: &Path, has_auth: bool, problems: &mut Vec<String>) -> Vec<Rule> {
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(self.rules.len());
        for (index, r) in self.rules.iter().enumerate() {
            let key = format!("rules[{}] \"{}\"", index + 1, r.name);
            let before = problems.len();
            if r.name.trim().is_empty() {
                problems.push(format!("rules[{}]: the name is empty", index + 1));
            } else if !names.insert(r.name.as_str()) {
                problems.push(format!("{key}: another rule has the same name"));
            }
            let empty = |field: &str, problems: &mut Vec<String>| {
                problems.push(format!(
                    "{key}: {field} is an empty list, which matches nothing; leave the key out to match everything"
                ))
            };
            let clients = r.clients.as_ref().map(|c| {
                if c.is_empty() {
                    empty("clients", problems);
                }
                c.iter().map(|n| n.0).collect::<Vec<_>>()
            });
            let users = r.users.clone().inspect(|u| {
                if u.is_empty() {
                    empty("users", problems);
                }
                if !has_auth {
                    problems.push(format!(
                        "{key}: users needs [auth] htpasswd, or no request would have a user"
                    ));
                }
            });
            let hosts = if r.hosts.is_some() || r.hosts_file.is_some() {
                let mut set = HostSet::new();
                for text in r.hosts.iter().flatten() {
                    match HostPattern::parse(text) {
                        Ok(p) => set.insert(p),
                        Err(e) => problems.push(format!("{key}: hosts: {e}")),
                    }
                }
                if r.hosts.as_ref().is_some_and(|h| h.is_empty()) && r.hosts_file.is_none() {
                    empty("hosts", problems);
                }
                if let Some(file) = &r.hosts_file {
                    let path = base.join(file);
                    match std::fs::read_to_string(&path) {
                        Ok(text) => match HostSet::parse_file(&text, &path.display().to_string()) {
                            Ok(loaded) => set.extend(loaded),
                            Err(e) => problems.push(format!("{key}: hosts_file: {e}")),
                        },
                        Err(e) => problems.push(format!(
                            "{key}: hosts_file: cannot read {}: {e}",
                            path.display()
                        )),
                    }
                }
                Some(Arc::new(set))
            } else {
                None
            };
            let ports = r
                .ports
                .as_ref()
                .map(|specs| port_set(&format!("{key}: ports"), specs, problems));
            let methods = r.methods.as_ref().map(|methods| {
                if methods.is_empty() {
                    empty("methods", problems);
                }
                methods
                    .iter()
                    .map(|m| {
                        let upper = m.trim().to_ascii_uppercase();
                        if upper.is_empty()
                            || !upper.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-')
                        {
                            problems.push(format!("{key}: methods: \"{m}\" is not a method name"));
                        }
                        upper
                    })
                    .collect::<Vec<_>>()
            });
            if problems.len() > before {
                continue;
            }
            rules.push(Rule {
                name: r.name.as_str().into(),
                clients,
                users,
                hosts,
                ports,
                methods,
                action: match r.action {
                    RuleAction::Allow => Action::Allow,
                    RuleAction::Deny => Action::Deny,
                },
            });
        }
        rules
    }
}

/// `http://[user:password@]host:port` → a [`Parent`]. The password may be percent-encoded.
fn parse_parent(url: &str) -> Result<Parent, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("a parent proxy is written http://[user:password@]host:port")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (credentials, authority) = match rest.rsplit_once('@') {
        Some((c, a)) => (Some(c), a),
        None => (None, rest),
    };
    let target =
        crate::core::target::parse_authority(authority, Some(3128)).map_err(|e| e.to_string())?;
    let authorization = match credentials {
        None => None,
        Some(c) => {
            use base64::Engine;
            let decoded =
                percent_decode(c).ok_or("the credentials are not valid percent-encoding")?;
            if !decoded.contains(':') {
                return Err("credentials are written user:password".to_owned());
            }
            let token = base64::engine::general_purpose::STANDARD.encode(decoded);
            let value = http::HeaderValue::from_str(&format!("Basic {token}"))
                .map_err(|_| "the credentials cannot be sent".to_owned())?;
            Some(value)
        }
    };
    Ok(Parent {
        name: target.to_string(),
        host: target.host,
        port: target.port,
        authorization,
    })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A parent URL with its password replaced, for messages.
fn mask_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// A level (`info`), or directives with targets (`info,portcullis::auth=debug`): a bare word
/// must be a level, not a target name that silences everything by accident.
fn valid_log_level(text: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |l: &str| LEVELS.iter().any(|x| x.eq_ignore_ascii_case(l.trim()));
    !text.trim().is_empty()
        && text
            .split(',')
            .all(|directive| match directive.split_once('=') {
                Some((target, level)) => !target.trim().is_empty() && is_level(level),
                None => is_level(directive),
            })
        && tracing_subscriber::EnvFilter::try_new(text).is_ok()
}

fn port_set(key: &str, specs: &[PortSpec], problems: &mut Vec<String>) -> PortSet {
    if specs.is_empty() {
        problems.push(format!(
            "{key}: the list is empty; list at least one port, range or service name"
        ));
        return PortSet::empty();
    }
    let mut set = PortSet::empty();
    for spec in specs {
        match spec.range() {
            Ok((lo, hi)) => set.insert_range(lo, hi),
            Err(e) => problems.push(format!("{key}: entry {spec}: {e}")),
        }
    }
    set
}

/// Where in the file `text` a validation problem of [`Config::validate`] lies: the 1-based
/// line and column (in characters) of the entry it quotes, or of its key when it quotes none.
///
/// A problem starts with its key and quotes the entry at fault (`ports.connect: entry
/// "smtpx": …`, `rules[2] "mail": ports: entry "smtpx": …`, `timeouts.connect: …`). The key is
/// found by a light scan of the TOML text (tables, arrays of tables, dotted and quoted keys,
/// values over several lines, strings, comments), then the quoted entry within its value.
/// When the key is not in the file as a line of its own (an inline table, say), the answer is
/// the first occurrence of the quoted entry anywhere; `None` when neither is found.
pub fn locate(text: &str, problem: &str) -> Option<(usize, usize)> {
    let (place, detail) = ProblemPlace::parse(problem)?;
    let needle = problem_needle(detail);
    let layout = TomlLayout::scan(text);
    let found = match &place {
        ProblemPlace::Rule { index, field } => layout
            .assignments
            .iter()
            .find(|a| {
                a.table == ["rules"]
                    && a.occurrence == *index
                    && a.key.len() == 1
                    && a.key[0] == *field
            })
            .map(|a| (a.start, a.end))
            .or_else(|| {
                layout
                    .headers
                    .iter()
                    .find(|h| h.path == ["rules"] && h.occurrence == *index)
                    .map(|h| (h.start, h.end))
            }),
        ProblemPlace::Key(path) => {
            let full = |a: &TomlAssignment| -> Vec<String> {
                a.table.iter().chain(a.key.iter()).cloned().collect()
            };
            layout
                .assignments
                .iter()
                .find(|a| full(a) == *path)
                .map(|a| (a.start, a.end))
                .or_else(|| {
                    let h = layout.headers.iter().find(|h| h.path == *path)?;
                    Some((h.start, h.end))
                })
                .or_else(|| {
                    let a = layout.assignments.iter().find(|a| {
                        let f = full(a);
                        f.len() < path.len() && path.starts_with(&f)
                    })?;
                    Some((a.start, a.end))
                })
                .or_else(|| {
                    let h = layout
                        .headers
                        .iter()
                        .filter(|h| !h.path.is_empty() && h.path.len() < path.len())
                        .filter(|h| path.starts_with(&h.path))
                        .max_by_key(|h| h.path.len())?;
                    Some((h.start, h.end))
                })
        }
    };
    let offset = match (found, needle) {
        (Some((start, end)), Some(needle)) => find_entry(text, start, end, needle).unwrap_or(start),
        (Some((start, _)), None) => start,
        (None, Some(needle)) => find_entry(text, 0, text.len(), needle)?,
        (None, None) => return None,
    };
    Some(line_and_column(text, offset))
}

/// The key a validation problem names.
enum ProblemPlace {
    /// `listen`, `ports.connect`, `clients.names` …
    Key(Vec<String>),
    /// A field of the `index`-th (1-based) `[[rules]]` table.
    Rule { index: usize, field: &'static str },
}

impl ProblemPlace {
    /// The place, and the rest of the message after the key.
    fn parse(problem: &str) -> Option<(ProblemPlace, &str)> {
        if let Some(rest) = problem.strip_prefix("rules[") {
            let (index, rest) = rest.split_once(']')?;
            let index: usize = index.parse().ok()?;
            let rest = match rest.strip_prefix(" \"") {
                Some(named) => named.split_once("\": ")?.1,
                None => rest.strip_prefix(": ")?,
            };
            const FIELDS: [&str; 8] = [
                "hosts_file",
                "hosts",
                "ports",
                "methods",
                "clients",
                "users",
                "name",
                "action",
            ];
            let word = rest.split([':', ' ']).next().unwrap_or("");
            let (field, detail) = match FIELDS.iter().find(|f| **f == word) {
                Some(field) => {
                    let detail = rest[word.len()..].trim_start_matches(':').trim_start();
                    (*field, detail)
                }
                None => ("name", rest),
            };
            return Some((ProblemPlace::Rule { index, field }, detail));
        }
        let (key, detail) = problem.split_once(": ")?;
        let valid = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        valid.then(|| {
            let path = key.split('.').map(str::to_owned).collect();
            (ProblemPlace::Key(path), detail)
        })
    }
}

/// The entry a problem quotes: `entry "x"`, `entry 0`, `the name of 10.0.0.7`, or the first
/// quoted text.
fn problem_needle(detail: &str) -> Option<&str> {
    if let Some(entry) = detail.strip_prefix("entry ") {
        if let Some(quoted) = entry.strip_prefix('"') {
            return quoted.split_once('"').map(|(inner, _)| inner);
        }
        let end = entry
            .find(|c: char| !(c.is_ascii_digit() || c == '-'))
            .unwrap_or(entry.len());
        return (end > 0).then(|| &entry[..end]);
    }
    if let Some(rest) = detail.strip_prefix("the name of ") {
        return rest.split_whitespace().next();
    }
    let (_, after) = detail.split_once('"')?;
    let (inner, _) = after.split_once('"')?;
    (!inner.is_empty()).then_some(inner)
}

/// Where `needle` is written between `start` and `end`: as a quoted string first, then as a
/// bare token (a number, an address).
fn find_entry(text: &str, start: usize, end: usize, needle: &str) -> Option<usize> {
    let region = &text[start..end];
    for quote in ['"', '\''] {
        if let Some(at) = region.find(&format!("{quote}{needle}{quote}")) {
            return Some(start + at);
        }
    }
    if needle.is_empty() {
        return None;
    }
    let boundary = |c: Option<char>| {
        c.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '-' || c == '.'))
    };
    let mut from = 0;
    while let Some(i) = region[from..].find(needle) {
        let at = from + i;
        let after = at + needle.len();
        if boundary(region[..at].chars().next_back()) && boundary(region[after..].chars().next()) {
            return Some(start + at);
        }
        from = after;
    }
    None
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// The tables and key assignments of a TOML text, with their byte spans.
struct TomlLayout {
    headers: Vec<TomlHeader>,
    assignments: Vec<TomlAssignment>,
}

/// `[table]` or `[[array]]`: from its line to the next header.
struct TomlHeader {
    path: Vec<String>,
    /// For `[[array]]` tables, which one (1-based); 0 for plain tables.
    occurrence: usize,
    start: usize,
    end: usize,
}

/// `key = value`: from the key to the end of the value (which may span lines).
struct TomlAssignment {
    table: Vec<String>,
    occurrence: usize,
    key: Vec<String>,
    start: usize,
    end: usize,
}

impl TomlLayout {
    fn scan(text: &str) -> TomlLayout {
        let mut layout = TomlLayout {
            headers: Vec::new(),
            assignments: Vec::new(),
        };
        let mut table: Vec<String> = Vec::new();
        let mut occurrence = 0;
        let mut arrays: std::collections::HashMap<Vec<String>, usize> = Default::default();
        let mut pos = 0;
        while pos < text.len() {
            let line_end = text[pos..].find('\n').map_or(text.len(), |i| pos + i);
            let line = &text[pos..line_end];
            let start = pos + (line.len() - line.trim_start().len());
            let rest = &text[start..line_end];
            if rest.starts_with('[') {
                let array = rest.starts_with("[[");
                let (path, _) = toml_key(text, start + if array { 2 } else { 1 });
                if let Some(last) = layout.headers.last_mut() {
                    last.end = start;
                }
                occurrence = if array {
                    let count = arrays.entry(path.clone()).or_insert(0);
                    *count += 1;
                    *count
                } else {
                    0
                };
                table = path;
                layout.headers.push(TomlHeader {
                    path: table.clone(),
                    occurrence,
                    start,
                    end: text.len(),
                });
                pos = line_end + 1;
                continue;
            }
            let (key, after) = toml_key(text, start);
            if key.is_empty() || text.as_bytes().get(after) != Some(&b'=') {
                pos = line_end + 1;
                continue;
            }
            let end = toml_value_end(text.as_bytes(), after + 1);
            layout.assignments.push(TomlAssignment {
                table: table.clone(),
                occurrence,
                key,
                start,
                end,
            });
            pos = end + 1;
        }
        layout
    }
}

/// A dotted key at `from` (bare or quoted parts); its parts and where it ends (spaces after
/// it skipped).
fn toml_key(text: &str, from: usize) -> (Vec<String>, usize) {
    let b = text.as_bytes();
    let skip = |mut i: usize| {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        i
    };
    let mut parts = Vec::new();
    let mut i = skip(from);
    loop {
        let part_start = i;
        let part = match b.get(i) {
            Some(&q @ (b'"' | b'\'')) => {
                let mut j = i + 1;
                while j < b.len() && b[j] != q && b[j] != b'\n' {
                    j += if q == b'"' && b[j] == b'\\' { 2 } else { 1 };
                }
                let inner = text.get(i + 1..j.min(b.len())).unwrap_or("");
                i = (j + 1).min(b.len());
                inner.to_owned()
            }
            _ => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'-')
                {
                    i += 1;
                }
                text[part_start..i].to_owned()
            }
        };
        if i == part_start {
            break;
        }
        parts.push(part);
        i = skip(i);
        if b.get(i) == Some(&b'.') {
            i = skip(i + 1);
        } else {
            break;
        }
    }
    (parts, i)
}

/// Where a value starting at `from` ends: the newline after it (or the end of the text),
/// skipping over strings, comments and brackets that continue on later lines.
fn toml_value_end(b: &[u8], from: usize) -> usize {
    let mut depth = 0usize;
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'\n' if depth == 0 => return i,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            q @ (b'"' | b'\'') => {
                i = toml_string_end(b, i, q);
                continue;
            }
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// The index after the string that opens at `i` with quote `q` (one-line or triple-quoted).
fn toml_string_end(b: &[u8], i: usize, q: u8) -> usize {
    let escapes = q == b'"';
    if b[i..].starts_with(&[q, q, q]) {
        let mut j = i + 3;
        while j < b.len() {
            if escapes && b[j] == b'\\' {
                j += 2;
                continue;
            }
            if b[j..].starts_with(&[q, q, q]) {
                j += 3;
                while j < b.len() && b[j] == q {
                    j += 1;
                }
                return j;
            }
            j += 1;
        }
        return b.len();
    }
    let mut j = i + 1;
    while j < b.len() && b[j] != b'\n' {
        if escapes && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == q {
            return j + 1;
        }
        j += 1;
    }
    j.min(b.len())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        let config = Config::from_toml("", "t").unwrap();
        assert_eq!(config, Config::default());
        let settings = config.validate("t").unwrap();
        assert!(settings.policy.http_ports.contains(80));
        assert!(settings.policy.http_ports.contains(3128));
        assert!(!settings.policy.http_ports.contains(25));
        assert!(settings.policy.connect_ports.contains(443));
        assert!(!settings.policy.connect_ports.contains(80));
        assert!(!settings.policy.allow_loopback);
        assert_eq!(settings.timeouts.keep_alive, Duration::from_secs(120));
    }

    #[test]
    fn values_parse() {
        let config = Config::from_toml(
            r#"
            listen = ["127.0.0.1:8080", "[::1]:8080"]
            [clients]
            allow = ["192.168.1.0/24", "10.0.0.7", "192.168.2.9/24"]
            names = { "192.168.1.20" = "kids-laptop", "::ffff:10.0.0.7" = "printer" }
            [ports]
            http = [80, "8000-8100", "http-alt"]
            connect = ["https", 22]
            [destinations]
            allow_loopback = true
            [timeouts]
            connect = "3s"
            keep_alive = "1m 30s"
            tunnel_idle = "1h"
            "#,
            "t",
        )
        .unwrap();
        assert_eq!(config.listen.len(), 2);
        assert_eq!(config.clients.allow[1].to_string(), "10.0.0.7/32");
        assert_eq!(config.clients.allow[2].to_string(), "192.168.2.0/24");
        assert_eq!(config.timeouts.connect, Duration::from_secs(3));
        assert_eq!(config.timeouts.keep_alive, Duration::from_secs(90));
        assert_eq!(config.timeouts.tunnel_idle, Duration::from_secs(3600));
        assert_eq!(config.timeouts.request_header, Duration::from_secs(10));
        let settings = config.validate("t").unwrap();
        assert_eq!(
            settings.client_name("192.168.1.20".parse().unwrap()),
            Some("kids-laptop")
        );
        assert_eq!(
            settings.client_name("10.0.0.7".parse().unwrap()),
            Some("printer")
        );
        assert!(settings.policy.connect_ports.contains(22));
        assert!(settings.policy.http_ports.contains(8050));
        assert!(settings.policy.allow_loopback);
    }

    #[test]
    fn parse_errors_name_line_and_column() {
        let cases: &[(&str, &str)] = &[
            ("listen = [\"nope\"]", "line 1"),
            ("[ports]\nhtp = [80]", "unknown field `htp`"),
            (
                "[ports]\nhttp = [80]\n[timeouts]\nconnect = \"soon\"",
                "line 4",
            ),
            ("[clients]\nallow = [\"300.1.1.1/8\"]", "not a network"),
            ("bogus = 1", "unknown field `bogus`"),
            ("[ports]\nhttp = [true]", "line 2"),
        ];
        for (text, fragment) in cases {
            let err = Config::from_toml(text, "f.toml").unwrap_err().to_string();
            assert!(err.starts_with("f.toml: "), "{err}");
            assert!(err.contains(fragment), "{text:?}: {err}");
        }
    }

    #[test]
    fn validation_names_every_bad_entry() {
        let cases: &[(&str, &[&str])] = &[
            ("[ports]\nhttp = []", &["ports.http: the list is empty"]),
            (
                "[ports]\nconnect = [\"htps\"]",
                &["ports.connect: entry \"htps\": unknown service name \"htps\""],
            ),
            (
                "[ports]\nhttp = [0, \"90-80\", \"1-70000\"]\nconnect = [65536]",
                &[
                    "ports.http: entry 0: port 0 is out of range",
                    "ports.http: entry \"90-80\": range \"90-80\" is reversed",
                    "ports.http: entry \"1-70000\": range \"1-70000\" is out of range",
                    "ports.connect: entry 65536: port 65536 is out of range",
                ],
            ),
            ("listen = []", &["listen: the list is empty"]),
            ("workers = 0", &["workers: 0; give at least 1"]),
            ("workers = 100000", &["workers: 100000 is more than 256"]),
            (
                "workers = \"many\"",
                &["workers: \"many\" is neither \"auto\" nor a number"],
            ),
            (
                "[clients]\nallow = []",
                &["clients.allow: the list is empty"],
            ),
            (
                "[timeouts]\nconnect = \"0s\"",
                &["timeouts.connect: must be longer than zero"],
            ),
        ];
        for (text, wanted) in cases {
            let err = Config::from_toml(text, "f.toml")
                .unwrap()
                .validate("f.toml")
                .unwrap_err();
            let ConfigError::Invalid { problems, .. } = &err else {
                panic!("{text}: {err}");
            };
            assert_eq!(problems.len(), wanted.len(), "{text}: {problems:?}");
            for (problem, want) in problems.iter().zip(wanted.iter()) {
                assert!(problem.starts_with(want), "{text}: {problem:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn workers_are_a_number_or_auto() {
        let settings = |text: &str| Config::from_toml(text, "f").unwrap().validate("f").unwrap();
        assert_eq!(settings("workers = 3").workers, 3);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(settings("").workers, (cores / 2).max(1));
        assert_eq!(settings("workers = \"auto\"").workers, (cores / 2).max(1));
    }

    #[test]
    fn parents_parse_with_and_without_credentials() {
        let p = parse_parent("http://alice:p%40ss@parent.lan:8080").unwrap();
        assert_eq!(p.name, "parent.lan:8080");
        assert_eq!(p.authorization.unwrap(), "Basic YWxpY2U6cEBzcw==");
        let p = parse_parent("http://10.0.0.1:3128/").unwrap();
        assert_eq!((p.name.as_str(), p.authorization), ("10.0.0.1:3128", None));
        assert_eq!(parse_parent("http://parent.lan").unwrap().port, 3128);
        for bad in [
            "parent:8080",
            "https://p:1",
            "http://u@p:1",
            "http://p:0",
            "http://a b:1",
        ] {
            assert!(parse_parent(bad).is_err(), "{bad}");
        }
        assert_eq!(mask_credentials("http://u:secret@h:1"), "http://u:***@h:1");
        assert_eq!(
            mask_credentials("http://bob@p.lan:8080"),
            "http://bob:***@p.lan:8080"
        );
        assert_eq!(mask_credentials("http://p.lan:8080"), "http://p.lan:8080");
        let err = Config::from_toml("[upstream]\nproxy = \"http://u:secret@h:0\"", "t")
            .unwrap()
            .validate("t")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn the_example_file_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/portcullis.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config, Config::default());
        config.validate("example").unwrap();
    }

    #[test]
    fn every_shipped_config_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let config = Config::load(&path).unwrap();
                config.validate(&path.display().to_string()).unwrap();
                seen += 1;
            }
        }
        assert!(seen >= 1);
    }
}
