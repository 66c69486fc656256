//! Validation: a parsed [`Config`] into the runtime [`Settings`], or every [`Problem`] at
//! once, each naming its key and the entry at fault.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use crate::core::clock::Clock;
use crate::core::hosts::{HostPattern, HostSet};
use crate::core::policy::{Policy, Rule};
use crate::core::ports::{PortSet, PortSpec, PortSpecError};

use super::helper_spec::helper_spec;
use super::problem::{KeyPath, ParentError, Problem, ProblemKind};
use super::rules::compile_rule;
use super::schema::Config;
use super::settings::{
    AuthSettings, DnsSettings, PacSettings, PagesSettings, Parent, ResolverKind, Settings,
    UpstreamSettings,
};
use super::ConfigError;

impl Config {
    /// Parses TOML text; `origin` names the source in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// Reads and parses a TOML file (without validating it; [`super::load()`] does both).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = super::load::read(path)?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Validates the configuration into runtime [`Settings`], listing every problem (not
    /// located: [`super::load()`] places them in the text). Files the configuration names
    /// (`htpasswd`, `hosts_file`, `pages.dir`) are read relative to the directory of `origin`
    /// when it is a file path.
    pub fn validate(&self, origin: &str) -> Result<Settings, ConfigError> {
        let base = Path::new(origin)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut problems = Vec::new();
        let problem = |key: KeyPath, kind: ProblemKind| Problem::new(key, kind);
        if self.listen.is_empty() {
            problems.push(problem(
                KeyPath::keys(["listen"]),
                ProblemKind::NoListenAddress,
            ));
        }
        if self.clients.allow.is_empty() {
            problems.push(problem(
                KeyPath::keys(["clients", "allow"]),
                ProblemKind::NoClients,
            ));
        }
        let workers = self.workers.resolve().unwrap_or_else(|e| {
            let word = match &self.workers {
                super::Workers::Named(word) => Some(word.clone()),
                super::Workers::Count(_) => None,
            };
            let p = problem(KeyPath::keys(["workers"]), ProblemKind::Workers(e));
            problems.push(match word {
                Some(word) => p.entry(word),
                None => p,
            });
            1
        });
        let http_ports = port_set(
            KeyPath::keys(["ports", "http"]),
            None,
            &self.ports.http,
            &mut problems,
        );
        let connect_ports = port_set(
            KeyPath::keys(["ports", "connect"]),
            None,
            &self.ports.connect,
            &mut problems,
        );
        let socks_ports = self.socks.ports.as_ref().map(|specs| {
            port_set(
                KeyPath::keys(["socks", "ports"]),
                None,
                specs,
                &mut problems,
            )
        });
        let udp_ports = port_set(
            KeyPath::keys(["socks", "udp_ports"]),
            None,
            &self.socks.udp_ports,
            &mut problems,
        );
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
                problems.push(problem(
                    KeyPath::keys(["timeouts", key]),
                    ProblemKind::ZeroDuration,
                ));
            }
        }
        if self.limits.idle_tunnel_after < std::time::Duration::from_secs(1) {
            problems.push(problem(
                KeyPath::keys(["limits", "idle_tunnel_after"]),
                ProblemKind::TooShort("1s"),
            ));
        }
        if t.connect_attempt < std::time::Duration::from_millis(10) {
            problems.push(problem(
                KeyPath::keys(["timeouts", "connect_attempt"]),
                ProblemKind::AttemptTooShort,
            ));
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
            (
                "max_connections_per_network",
                l.max_connections_per_network.unwrap_or(1),
                1,
            ),
        ] {
            if value < least {
                problems.push(problem(
                    KeyPath::keys(["limits", key]),
                    ProblemKind::TooSmall(least),
                ));
            }
        }
        for (key, value, most) in [
            ("network_prefix_v4", usize::from(l.network_prefix_v4), 32),
            ("network_prefix_v6", usize::from(l.network_prefix_v6), 128),
            ("listen_backlog", l.listen_backlog as usize, 65535),
            (
                "max_streams_per_connection",
                l.max_streams_per_connection as usize,
                1000,
            ),
        ] {
            if !(1..=most).contains(&value) {
                problems.push(problem(
                    KeyPath::keys(["limits", key]),
                    ProblemKind::OutOfRange(1, most),
                ));
            }
        }
        let admin = match self.admin.listen.as_str() {
            "off" => None,
            text => match text.parse::<SocketAddr>() {
                Ok(addr) => Some((addr, self.admin.allow.iter().map(|n| n.0).collect())),
                Err(_) => {
                    problems.push(
                        problem(
                            KeyPath::keys(["admin", "listen"]),
                            ProblemKind::BadAddress(text.to_owned()),
                        )
                        .entry(text),
                    );
                    None
                }
            },
        };
        if !valid_log_level(&self.log.level) {
            problems.push(
                problem(
                    KeyPath::keys(["log", "level"]),
                    ProblemKind::BadLogLevel(self.log.level.clone()),
                )
                .entry(self.log.level.as_str()),
            );
        }
        for (ip, name) in &self.clients.names {
            if name.trim().is_empty() || name.chars().any(|c| c.is_control()) {
                problems.push(
                    problem(
                        KeyPath::keys(["clients", "names"]),
                        ProblemKind::BadClientName(*ip),
                    )
                    .entry(ip.to_string()),
                );
            }
        }
        let pac = PacSettings {
            direct: match &self.pac.direct {
                Some(patterns) => patterns
                    .iter()
                    .filter_map(|p| match HostPattern::parse(p) {
                        Ok(p) => Some(p),
                        Err(e) => {
                            problems.push(
                                problem(
                                    KeyPath::keys(["pac", "direct"]),
                                    ProblemKind::BadHostPattern(e),
                                )
                                .entry(p.as_str()),
                            );
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
            socks: self.pac.socks,
            tls: self.pac.tls,
            tls_port: self.listen_tls.first().map(|a| a.port()),
            plain_port: self.listen.first().map(|a| a.port()),
        };
        for proxy in &pac.proxies {
            if crate::core::target::parse_authority(proxy, None).is_err() {
                problems.push(
                    problem(
                        KeyPath::keys(["pac", "proxies"]),
                        ProblemKind::NotHostPort(proxy.clone()),
                    )
                    .entry(proxy.as_str()),
                );
            }
        }
        if let Some(host) = &pac.proxy_host {
            if crate::core::target::parse_authority(host, Some(1)).is_err() {
                problems.push(
                    problem(
                        KeyPath::keys(["pac", "proxy_host"]),
                        ProblemKind::NotHostName(host.clone()),
                    )
                    .entry(host.as_str()),
                );
            }
        }
        let pages = PagesSettings {
            contact: self.pages.contact.clone(),
            error_template: self.pages.dir.as_ref().and_then(|dir| {
                let path = base.join(dir).join("error.html");
                match std::fs::read_to_string(&path) {
                    Ok(text) => Some(Arc::from(text)),
                    Err(e) => {
                        problems.push(problem(
                            KeyPath::keys(["pages", "dir"]),
                            ProblemKind::UnreadableFile {
                                path,
                                error: e.to_string(),
                            },
                        ));
                        None
                    }
                }
            }),
        };
        let instance = match &self.instance {
            Some(name) if is_instance_name(name) => name.clone(),
            Some(name) => {
                problems.push(problem(
                    KeyPath::keys(["instance"]),
                    ProblemKind::BadInstance(name.clone()),
                ));
                String::new()
            }
            None => host_name(),
        };
        let clock = match &self.clock.timezone {
            Some(name) => Clock::named(name).unwrap_or_else(|e| {
                problems.push(problem(
                    KeyPath::keys(["clock", "timezone"]),
                    ProblemKind::BadTimezone(e),
                ));
                Clock::default()
            }),
            None => Clock::new(jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC)),
        };
        let tls = self.tls_settings(base, &mut problems);
        let upstream = self.upstream_settings(&mut problems);
        let bind = self.bind_addresses(&mut problems);
        let dns = self.dns_settings(&mut problems);
        let auth = self.auth_settings(base, &mut problems);
        let mut lists = Vec::new();
        let has_auth = self.auth.htpasswd.is_some() || self.auth.program.is_some();
        let has_groups = has_auth && self.auth.groups.program.is_some();
        let rules = self.compile_rules(base, has_auth, has_groups, &mut problems, &mut lists);
        let shaping = self.shaping_settings(base, has_auth, &mut problems);
        let syslog = self.syslog_settings(base, &mut problems);
        let quotas = self.quota_settings(base, has_auth, &mut problems);
        let store = self.store_url(&mut problems);
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                problems,
            });
        }
        let policy = Policy {
            clients: self.clients.allow.iter().map(|n| n.0).collect(),
            http_ports,
            connect_ports,
            socks_ports,
            udp_ports,
            allow_loopback: self.destinations.allow_loopback,
            listen: self
                .listen
                .iter()
                .chain(&self.listen_tls)
                .copied()
                .collect(),
            admin: admin.as_ref().map(|(addr, _)| *addr),
            rules,
            clock,
        };
        // SOCKS clients that do not log in while [auth] is on: what rules admit them by address.
        let without_login = auth
            .is_some()
            .then(|| policy.without_login())
            .flatten()
            .map(Arc::new);
        Ok(Settings {
            instance,
            lists,
            state_dir: base.join(self.state.dir.as_deref().unwrap_or(Path::new("state"))),
            workers,
            policy,
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
            syslog,
            pac,
            pages,
            upstream,
            bind,
            dns,
            socks: super::settings::SocksSettings {
                enabled: self.socks.enabled,
                v4: self.socks.v4,
                udp: self.socks.udp,
                without_login,
            },
            shaping,
            tls,
            quotas: quotas.into(),
            store,
        })
    }

    /// `upstream.bind`: at most one address of each family.
    fn bind_addresses(&self, problems: &mut Vec<Problem>) -> Vec<IpAddr> {
        let bind = &self.upstream.bind;
        for (i, ip) in bind.iter().enumerate() {
            if bind[..i]
                .iter()
                .any(|other| other.is_ipv4() == ip.is_ipv4())
            {
                problems.push(
                    Problem::new(
                        KeyPath::keys(["upstream", "bind"]),
                        ProblemKind::BindFamilyTwice,
                    )
                    .entry(ip.to_string()),
                );
            }
            if ip.is_unspecified() || ip.is_multicast() {
                problems.push(
                    Problem::new(
                        KeyPath::keys(["upstream", "bind"]),
                        ProblemKind::NotUnicast(*ip),
                    )
                    .entry(ip.to_string()),
                );
            }
        }
        bind.clone()
    }

    /// `[dns]`.
    fn dns_settings(&self, problems: &mut Vec<Problem>) -> DnsSettings {
        let dns = &self.dns;
        let resolver = match dns.resolver.as_str() {
            "builtin" => ResolverKind::Builtin,
            "system" => ResolverKind::System,
            other => {
                problems.push(
                    Problem::new(
                        KeyPath::keys(["dns", "resolver"]),
                        ProblemKind::UnknownResolver(other.to_owned()),
                    )
                    .entry(other),
                );
                ResolverKind::Builtin
            }
        };
        let mut servers = Vec::new();
        for text in &dns.servers {
            match parse_dns_server(text) {
                Some(addr) => servers.push(addr),
                None => problems.push(
                    Problem::new(
                        KeyPath::keys(["dns", "servers"]),
                        ProblemKind::BadDnsServer(text.clone()),
                    )
                    .entry(text.as_str()),
                ),
            }
        }
        if resolver == ResolverKind::System && !servers.is_empty() {
            problems.push(Problem::new(
                KeyPath::keys(["dns", "servers"]),
                ProblemKind::ServersNeedBuiltin,
            ));
        }
        if dns.cache_size == 0 {
            problems.push(Problem::new(
                KeyPath::keys(["dns", "cache_size"]),
                ProblemKind::TooSmall(1),
            ));
        }
        for (key, value) in [("max_ttl", dns.max_ttl), ("negative_ttl", dns.negative_ttl)] {
            if value.is_zero() {
                problems.push(Problem::new(
                    KeyPath::keys(["dns", key]),
                    ProblemKind::ZeroDuration,
                ));
            }
        }
        DnsSettings {
            resolver,
            servers,
            cache_size: dns.cache_size,
            max_ttl: dns.max_ttl,
            negative_ttl: dns.negative_ttl,
        }
    }

    fn upstream_settings(&self, problems: &mut Vec<Problem>) -> Option<UpstreamSettings> {
        let urls = self.upstream.proxy.as_ref()?.values();
        let proxy = || KeyPath::keys(["upstream", "proxy"]);
        if urls.is_empty() {
            problems.push(Problem::new(proxy(), ProblemKind::NoParents));
        }
        let mut parents = Vec::new();
        for url in &urls {
            match parse_parent(url) {
                Ok(parent) => parents.push(parent),
                Err(error) => problems.push(
                    Problem::new(
                        proxy(),
                        ProblemKind::BadParent {
                            url: mask_credentials(url),
                            error,
                        },
                    )
                    .entry(url.as_str()),
                ),
            }
        }
        let mut direct = HostSet::new();
        for text in &self.upstream.direct {
            match HostPattern::parse(text) {
                Ok(p) => direct.insert(p),
                Err(e) => problems.push(
                    Problem::new(
                        KeyPath::keys(["upstream", "direct"]),
                        ProblemKind::BadHostPattern(e),
                    )
                    .entry(text.as_str()),
                ),
            }
        }
        Some(UpstreamSettings {
            parents,
            direct: Arc::new(direct),
        })
    }

    fn auth_settings(&self, base: &Path, problems: &mut Vec<Problem>) -> Option<AuthSettings> {
        let a = &self.auth;
        let groups = a.groups.program.as_ref().and_then(|command| {
            let g = &a.groups;
            if a.htpasswd.is_none() && a.program.is_none() {
                problems.push(Problem::new(
                    KeyPath::keys(["auth", "groups", "program"]),
                    ProblemKind::GroupsWithoutLogIn,
                ));
            }
            for (key, value) in [("ttl", g.ttl), ("negative_ttl", g.negative_ttl)] {
                if value.is_zero() {
                    problems.push(Problem::new(
                        KeyPath::keys(["auth", "groups", key]),
                        ProblemKind::ZeroDuration,
                    ));
                }
            }
            helper_spec(
                "groups",
                &["auth", "groups"],
                command,
                (g.children, g.concurrency, g.timeout),
                base,
                problems,
            )
        });
        let program = a.program.as_ref().and_then(|command| {
            helper_spec(
                "auth",
                &["auth"],
                command,
                (a.children, a.concurrency, a.timeout),
                base,
                problems,
            )
        });
        if a.htpasswd.is_none() && a.program.is_none() {
            return None;
        }
        if a.realm.is_empty() || a.realm.chars().any(|c| c.is_control()) {
            problems.push(Problem::new(
                KeyPath::keys(["auth", "realm"]),
                ProblemKind::BadRealm,
            ));
        }
        if a.cache.is_zero() || a.failure_window.is_zero() || a.max_failures == 0 {
            problems.push(Problem::new(
                KeyPath::keys(["auth"]),
                ProblemKind::ZeroAuthSetting,
            ));
        }
        let users = match &a.htpasswd {
            None => None,
            Some(path) => match crate::core::auth::Htpasswd::load(&base.join(path)) {
                Ok(users) => Some(Arc::new(users)),
                Err(e) => {
                    problems.push(Problem::new(
                        KeyPath::keys(["auth", "htpasswd"]),
                        ProblemKind::BadHtpasswd(e),
                    ));
                    return None;
                }
            },
        };
        Some(AuthSettings {
            users,
            program,
            groups,
            config: a.clone(),
        })
    }

    fn compile_rules(
        &self,
        base: &Path,
        has_auth: bool,
        has_groups: bool,
        problems: &mut Vec<Problem>,
        reports: &mut Vec<super::lists::ListReport>,
    ) -> Vec<Rule> {
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(self.rules.len());
        for (index, r) in self.rules.iter().enumerate() {
            let key = |field: &str| KeyPath::rule(index, field);
            let groups = r.groups.as_ref().map(|groups| {
                let at = |kind| Problem::new(key("groups"), kind).in_rule(&r.name);
                if groups.is_empty() {
                    problems.push(at(ProblemKind::EmptyCondition));
                }
                if !has_groups {
                    problems.push(at(ProblemKind::GroupsWithoutHelper));
                }
                for g in groups {
                    if g.trim().is_empty() || g.chars().any(char::is_control) {
                        problems.push(
                            at(ProblemKind::BadHelper(format!("{g:?} is not a group name")))
                                .entry(g.as_str()),
                        );
                    }
                }
                groups.clone()
            });
            let before = problems.len();
            if let Some(mut rule) =
                compile_rule(r, &key, &mut names, base, has_auth, problems, reports)
            {
                if problems.len() == before {
                    rule.groups = groups;
                    rules.push(rule);
                }
            }
        }
        rules
    }
}

/// `http://[user:password@]host:port` → a [`Parent`]. The password may be percent-encoded.
pub(super) fn parse_parent(url: &str) -> Result<Parent, ParentError> {
    let rest = url.strip_prefix("http://").ok_or(ParentError::NotHttp)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (credentials, authority) = match rest.rsplit_once('@') {
        Some((c, a)) => (Some(c), a),
        None => (None, rest),
    };
    let target = crate::core::target::parse_authority(authority, Some(3128))
        .map_err(|e| ParentError::Authority(e.to_string()))?;
    let authorization = match credentials {
        None => None,
        Some(c) => {
            use base64::Engine;
            let decoded = percent_decode(c).ok_or(ParentError::Encoding)?;
            if !decoded.contains(':') {
                return Err(ParentError::NoPassword);
            }
            let token = base64::engine::general_purpose::STANDARD.encode(decoded);
            let value = http::HeaderValue::from_str(&format!("Basic {token}"))
                .map_err(|_| ParentError::Unsendable)?;
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
pub(crate) fn mask_credentials(url: &str) -> String {
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

/// The ports of a list at `key` (in the rule named `rule`, if any), with a problem for each
/// bad entry.
pub(super) fn port_set(
    key: KeyPath,
    rule: Option<&str>,
    specs: &[PortSpec],
    problems: &mut Vec<Problem>,
) -> PortSet {
    let problem = |kind: ProblemKind| {
        let p = Problem::new(key.clone(), kind);
        match rule {
            Some(name) => p.in_rule(name),
            None => p,
        }
    };
    if specs.is_empty() {
        problems.push(problem(ProblemKind::NoPorts));
        return PortSet::empty();
    }
    let mut set = PortSet::empty();
    for spec in specs {
        match spec.range() {
            Ok((lo, hi)) => set.insert_range(lo, hi),
            Err(error) => {
                let entry = match spec {
                    PortSpec::Number(n) => n.to_string(),
                    PortSpec::Text(t) => t.clone(),
                };
                let kind = match error {
                    PortSpecError::UnknownName(name) => ProblemKind::UnknownServiceName {
                        spec: spec.clone(),
                        name,
                    },
                    error => ProblemKind::BadPortSpec {
                        spec: spec.clone(),
                        error,
                    },
                };
                problems.push(problem(kind).entry(entry));
            }
        }
    }
    set
}

/// A DNS server as `dns.servers` lists it: an address, with or without a port (53).
fn parse_dns_server(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    text.parse::<SocketAddr>().ok().or_else(|| {
        text.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// Whether `name` may name this proxy in records and syslog headers: 1 to 64 letters, digits,
/// `.`, `_` and `-`, but not `-` alone (`portcullis report` counts records without a name as
/// `-`).
fn is_instance_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name != "-"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The machine's host name, the default `instance` (`portcullis` when it cannot be read or
/// is not a valid instance name).
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| is_instance_name(name))
        .unwrap_or_else(|| "portcullis".to_owned())
}
