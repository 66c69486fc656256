//! THE decision: who may use the proxy and where they may go.
//!
//! Every allow or deny of the proxy is made here, by pure functions over plain data, so that
//! the whole policy is unit-tested with tables and I/O modules only ask. The checks run in
//! the order a request meets them:
//!
//! 1. [`Policy::admit_client`]: is the client's address in `clients.allow`?
//! 2. (authentication, when configured, is checked by the service)
//! 3. [`Policy::decide`]: the `[[rules]]` in order, first match wins; when none matches, the
//!    port lists `ports.http` (plain HTTP) and `ports.connect` (CONNECT). This runs before
//!    any DNS lookup or dial, unless a rule's networks need the resolved address to answer
//!    ([`Decision::NeedAddress`]); then it runs again for each address before it is dialled.
//! 4. [`Policy::check_address`]: for each address the destination resolves to (or its IP
//!    literal), is it loopback, unspecified, link-local, a cloud metadata address or the
//!    proxy's own listener? This hard guard holds whatever the rules say.
//!
//! Each answer names what decided it (`clients.allow`, `rule "mail"`, `ports.connect`,
//! `destinations.loopback` …): the name goes into the access record and into the reason the
//! client sees.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use jiff::Timestamp;

use crate::core::blocklist::HostList;
use crate::core::clock::Clock;
use crate::core::hosts::{HostMatch, HostSet};
use crate::core::ports::{describe, PortSet};
use crate::core::schedule::Schedule;
use crate::core::target::Host;

/// How a request reaches its destination, which picks the port list that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Plain HTTP forwarded by the proxy (`ports.http`).
    Http,
    /// A CONNECT tunnel (`ports.connect`).
    Connect,
    /// A SOCKS CONNECT (`socks.ports`, else `ports.connect`).
    Socks,
    /// A datagram through a SOCKS5 UDP relay (`socks.udp_ports`).
    SocksUdp,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Http => "plain HTTP",
            Kind::Connect => "CONNECT",
            Kind::Socks => "SOCKS",
            Kind::SocksUdp => "SOCKS UDP",
        }
    }
}

/// A built-in check, named in records and refusals by its configuration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Builtin {
    /// Nothing decided: the request was let through by default (`-`).
    Nothing,
    /// `clients.allow`: the client's address.
    ClientsAllow,
    /// `ports.http`: the port list of plain HTTP.
    PortsHttp,
    /// `ports.connect`: the port list of CONNECT.
    PortsConnect,
    /// `rules`: a rule that needs the destination's address, which could not be had.
    Rules,
    /// `auth`: the log-in.
    Auth,
    /// `auth.max_failures`: too many failed log-ins.
    AuthMaxFailures,
    /// `auth.groups`: a rule's groups, which the group helper could not answer for.
    AuthGroups,
    /// `local`: the proxy's own pages.
    Local,
    /// `request`: the request itself is malformed or cannot be served.
    Request,
    /// `request_header`: the request head did not arrive in time.
    RequestHeader,
    /// `destinations.self`: the proxy's own listeners.
    DestinationsSelf,
    /// `destinations.unspecified`: `0.0.0.0`, `::`.
    DestinationsUnspecified,
    /// `destinations.loopback`: `127.0.0.0/8`, `::1`.
    DestinationsLoopback,
    /// `destinations.link_local`: `169.254.0.0/16`, `fe80::/10`.
    DestinationsLinkLocal,
    /// `destinations.unicast`: broadcast and multicast addresses.
    DestinationsUnicast,
    /// `limits.max_connections`: open connections in all.
    LimitsMaxConnections,
    /// `limits.max_connections_per_client`: open connections of one client.
    LimitsMaxConnectionsPerClient,
    /// `limits.max_connections_per_network`: open connections of one network (a /24, a /64).
    LimitsMaxConnectionsPerNetwork,
    /// `socks.ports`: the port list of SOCKS CONNECT, when set.
    SocksPorts,
    /// `socks.udp_ports`: the port list of SOCKS UDP datagrams.
    SocksUdpPorts,
}

impl Builtin {
    /// Every built-in check.
    pub const ALL: [Builtin; 21] = [
        Builtin::Nothing,
        Builtin::ClientsAllow,
        Builtin::PortsHttp,
        Builtin::PortsConnect,
        Builtin::Rules,
        Builtin::Auth,
        Builtin::AuthMaxFailures,
        Builtin::AuthGroups,
        Builtin::Local,
        Builtin::Request,
        Builtin::RequestHeader,
        Builtin::DestinationsSelf,
        Builtin::DestinationsUnspecified,
        Builtin::DestinationsLoopback,
        Builtin::DestinationsLinkLocal,
        Builtin::DestinationsUnicast,
        Builtin::LimitsMaxConnections,
        Builtin::LimitsMaxConnectionsPerClient,
        Builtin::LimitsMaxConnectionsPerNetwork,
        Builtin::SocksPorts,
        Builtin::SocksUdpPorts,
    ];

    /// The name written in records and refusals.
    pub fn as_str(self) -> &'static str {
        match self {
            Builtin::Nothing => "-",
            Builtin::ClientsAllow => "clients.allow",
            Builtin::PortsHttp => "ports.http",
            Builtin::PortsConnect => "ports.connect",
            Builtin::Rules => "rules",
            Builtin::Auth => "auth",
            Builtin::AuthMaxFailures => "auth.max_failures",
            Builtin::AuthGroups => "auth.groups",
            Builtin::Local => "local",
            Builtin::Request => "request",
            Builtin::RequestHeader => "request_header",
            Builtin::DestinationsSelf => "destinations.self",
            Builtin::DestinationsUnspecified => "destinations.unspecified",
            Builtin::DestinationsLoopback => "destinations.loopback",
            Builtin::DestinationsLinkLocal => "destinations.link_local",
            Builtin::DestinationsUnicast => "destinations.unicast",
            Builtin::LimitsMaxConnections => "limits.max_connections",
            Builtin::LimitsMaxConnectionsPerClient => "limits.max_connections_per_client",
            Builtin::LimitsMaxConnectionsPerNetwork => "limits.max_connections_per_network",
            Builtin::SocksPorts => "socks.ports",
            Builtin::SocksUdpPorts => "socks.udp_ports",
        }
    }
}

impl fmt::Display for Builtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What decided a request: a built-in check, or a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Decider {
    /// `clients.allow`, `ports.http`, `destinations.loopback`, `local` …
    Builtin(Builtin),
    /// A `[[rules]]` entry, by name.
    Rule(Arc<str>),
    /// A `[[quotas]]` entry whose budget is used up, by name.
    Quota(Arc<str>),
}

impl fmt::Display for Decider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decider::Builtin(check) => f.write_str(check.as_str()),
            Decider::Rule(name) => write!(f, "rule \"{name}\""),
            Decider::Quota(name) => write!(f, "quota \"{name}\""),
        }
    }
}

/// A decider equals the text it is written as in records and refusals (`ports.http`,
/// `rule "no ads"`).
impl PartialEq<&str> for Decider {
    fn eq(&self, other: &&str) -> bool {
        match self {
            Decider::Builtin(check) => check.as_str() == *other,
            Decider::Rule(name) => other
                .strip_prefix("rule \"")
                .and_then(|rest| rest.strip_suffix('"'))
                .is_some_and(|written| written == &**name),
            Decider::Quota(name) => other
                .strip_prefix("quota \"")
                .and_then(|rest| rest.strip_suffix('"'))
                .is_some_and(|written| written == &**name),
        }
    }
}

impl From<Builtin> for Decider {
    fn from(check: Builtin) -> Self {
        Decider::Builtin(check)
    }
}

/// A refusal: what decided it and why, in one line a person can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Denial {
    /// What decided (`ports.connect`, `destinations.loopback`, `rule "no mail"` …).
    pub rule: Decider,
    /// The one-line reason shown to the client and logged.
    pub reason: String,
}

impl Denial {
    fn new(rule: impl Into<Decider>, reason: String) -> Self {
        Denial {
            rule: rule.into(),
            reason,
        }
    }
}

/// What a `[[rules]]` entry does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let the request through.
    Allow,
    /// Refuse it.
    Deny,
}

/// One compiled `[[rules]]` entry. A condition left out (`None`) matches everything.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The name shown in refusals and logs.
    pub name: Arc<str>,
    /// Client networks.
    pub clients: Option<Vec<IpNet>>,
    /// Authenticated user names.
    pub users: Option<Vec<String>>,
    /// Groups of authenticated users (any of them), as the group helper answers.
    pub groups: Option<Vec<String>>,
    /// Destination host patterns (`hosts` and `hosts_file` together).
    pub hosts: Option<Arc<HostSet>>,
    /// The downloaded list (`hosts_url`): a host condition together with `hosts`.
    pub list: Option<Arc<HostList>>,
    /// Destination ports.
    pub ports: Option<PortSet>,
    /// Request methods (`CONNECT`, `GET` …), upper case.
    pub methods: Option<Vec<String>>,
    /// When the rule applies (`times`), in the policy's clock; `None`: always.
    pub times: Option<Arc<Schedule>>,
    /// Whether a tunnel is cut when this rule's window turns the decision to a refusal
    /// (`times_cut`); otherwise tunnels open before then run on.
    pub times_cut: bool,
    /// What happens on a match.
    pub action: Action,
}

/// What the policy knows of a request when it decides.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// The authenticated user, if any.
    pub user: Option<&'a str>,
    /// What the group helper answered about the user and the groups rules name (empty
    /// without a user or without `[auth.groups]`).
    pub groups: &'a [GroupAnswer],
    /// The request method.
    pub method: &'a str,
    /// Plain HTTP or CONNECT.
    pub kind: Kind,
    /// The destination host.
    pub host: &'a Host,
    /// The destination port.
    pub port: u16,
    /// The moment to decide for: now, or another (`explain --at`, a tunnel's window end).
    pub at: Timestamp,
}

/// Whether the logged-in user is in one group a rule names, as the group helper answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupAnswer {
    /// The group.
    pub group: String,
    /// A member or not; or why the helper could not tell.
    pub member: Result<bool, String>,
}

/// Whether a rule's `groups` condition holds.
enum GroupMatch {
    /// It holds (or the rule has none).
    Yes,
    /// It does not.
    No,
    /// The helper could not tell for any group that might hold: why.
    Unknown(String),
}

/// The outcome of [`Policy::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, by this decider.
    Allow(Decider),
    /// Refused.
    Deny(Denial),
    /// A rule's networks must see the resolved address: ask again per address.
    NeedAddress,
}

/// The compiled policy the request path reads.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Client networks that may use the proxy.
    pub clients: Vec<IpNet>,
    /// Ports plain HTTP may reach.
    pub http_ports: PortSet,
    /// Ports CONNECT may reach.
    pub connect_ports: PortSet,
    /// Ports SOCKS CONNECT may reach (`socks.ports`); `None`: those of CONNECT.
    pub socks_ports: Option<PortSet>,
    /// Ports datagrams through a SOCKS UDP relay may reach (`socks.udp_ports`).
    pub udp_ports: PortSet,
    /// Whether loopback destinations are allowed (development and tests).
    pub allow_loopback: bool,
    /// The proxy's own listen addresses: never a destination.
    pub listen: Vec<SocketAddr>,
    /// The admin listener's address: never a destination either.
    pub admin: Option<SocketAddr>,
    /// The `[[rules]]`, in order.
    pub rules: Vec<Rule>,
    /// The time zone rules' `times` are read in (`[clock] timezone`).
    pub clock: Clock,
}

/// Addresses of cloud instance-metadata services outside the link-local ranges.
const METADATA: &[IpAddr] = &[
    // Alibaba Cloud
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    // AWS over IPv6
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

impl Policy {
    /// May a client at `ip` use the proxy?
    pub fn admit_client(&self, ip: IpAddr) -> Result<(), Denial> {
        let ip = ip.to_canonical();
        if self.clients.iter().any(|net| net.contains(&ip)) {
            Ok(())
        } else {
            Err(Denial::new(
                Builtin::ClientsAllow,
                format!("client {ip} is not allowed to use this proxy"),
            ))
        }
    }

    /// Decides a request by the rules, then the port lists. `addr` is the address about to
    /// be dialled, when known (for IP-literal targets it is the literal itself).
    /// A refusal while a rule's `times` decide says from when the request would be allowed.
    pub fn decide(&self, facts: &Facts<'_>, addr: Option<IpAddr>) -> Decision {
        let mut decision = self.decide_now(facts, addr);
        if let Decision::Deny(denial) = &mut decision {
            if let Some(opens) = self.opens_at(facts, addr) {
                denial.reason = format!(
                    "{}; allowed from {}",
                    denial.reason,
                    self.clock.show(opens, facts.at)
                );
            }
        }
        decision
    }

    /// [`Policy::decide`] without looking ahead.
    pub(crate) fn decide_now(&self, facts: &Facts<'_>, addr: Option<IpAddr>) -> Decision {
        let addr = match facts.host {
            Host::Ip(ip) => Some(*ip),
            Host::Name(_) => addr,
        };
        let mut local = None;
        for rule in &self.rules {
            if !rule.matches_request(facts) {
                continue;
            }
            let unknown = match rule.group_match(facts) {
                GroupMatch::Yes => None,
                GroupMatch::No => continue,
                GroupMatch::Unknown(why) => Some(why),
            };
            if let Some(times) = &rule.times {
                let now = *local.get_or_insert_with(|| self.clock.local(facts.at));
                if !times.contains(now) {
                    continue;
                }
            }
            match rule.host_match(facts.host, addr) {
                None | Some(HostMatch::Yes) => {}
                Some(HostMatch::No) => continue,
                Some(HostMatch::NeedAddress) => return Decision::NeedAddress,
            }
            // The rule would decide if the user is in its groups, and no one can say: refuse
            // rather than guess (an `allow` must not let through, a `deny` must not be skipped).
            if let Some(why) = unknown {
                return Decision::Deny(Denial::new(
                    Builtin::AuthGroups,
                    format!(
                        "rule \"{}\" depends on the groups of user {:?}, and the group helper could not tell: {why}",
                        rule.name,
                        facts.user.unwrap_or("-")
                    ),
                ));
            }
            let decider = Decider::Rule(rule.name.clone());
            return match rule.action {
                Action::Allow => Decision::Allow(decider),
                Action::Deny => Decision::Deny(Denial::new(
                    decider,
                    format!(
                        "{} to {} {} is not allowed",
                        facts.kind.label(),
                        facts.host,
                        describe(facts.port)
                    ),
                )),
            };
        }
        match self.check_port(facts.kind, facts.port) {
            Ok(rule) => Decision::Allow(Decider::Builtin(rule)),
            Err(denial) => Decision::Deny(denial),
        }
    }

    /// May a request of `kind` reach `port` by the base port lists? Answers the list's name.
    pub fn check_port(&self, kind: Kind, port: u16) -> Result<Builtin, Denial> {
        let (set, rule) = match (kind, &self.socks_ports) {
            (Kind::Http, _) => (&self.http_ports, Builtin::PortsHttp),
            (Kind::Connect, _) | (Kind::Socks, None) => {
                (&self.connect_ports, Builtin::PortsConnect)
            }
            (Kind::Socks, Some(socks)) => (socks, Builtin::SocksPorts),
            (Kind::SocksUdp, _) => (&self.udp_ports, Builtin::SocksUdpPorts),
        };
        if set.contains(port) {
            Ok(rule)
        } else {
            Err(Denial::new(
                rule,
                format!("{} is not allowed for {}", describe(port), kind.label()),
            ))
        }
    }

    /// Whether `addr` is one of the proxy's own listeners. `is_local` answers whether an IP
    /// belongs to this machine; it is asked only for listeners on an unspecified address.
    pub fn is_listener(&self, addr: SocketAddr, is_local: impl Fn(IpAddr) -> bool) -> bool {
        let ip = addr.ip().to_canonical();
        self.listen.iter().chain(&self.admin).any(|l| {
            l.port() == addr.port()
                && (l.ip().to_canonical() == ip || (l.ip().is_unspecified() && is_local(ip)))
        })
    }

    /// May the proxy open a connection to `addr`, one address of the destination `host`?
    ///
    /// `is_local` answers whether an IP belongs to this machine; it is asked only when `addr`
    /// has the port of a listener bound to an unspecified address (`0.0.0.0`, `::`).
    pub fn check_address(
        &self,
        host: &str,
        addr: SocketAddr,
        is_local: impl Fn(IpAddr) -> bool,
    ) -> Result<(), Denial> {
        let written = addr.ip().to_canonical();
        // An IPv6 address that embeds an IPv4 one is judged as that address: a translator
        // (NAT64, a 6to4 relay) would take the connection there.
        let embedded = embedded_ipv4(written);
        let ip = embedded.map_or(written, IpAddr::V4);
        let addr = SocketAddr::new(ip, addr.port());
        let refuse = |rule: Builtin, what: &str| {
            let shown = match embedded {
                Some(v4) if host == format!("[{written}]") => format!("{written} (embedding {v4})"),
                Some(v4) => format!("{host} ({written}, embedding {v4})"),
                None if host == written.to_string() => format!("{written}"),
                None => format!("{host} ({written})"),
            };
            Err(Denial::new(rule, format!("{shown} is {what}")))
        };
        if self.is_listener(addr, is_local) {
            return refuse(
                Builtin::DestinationsSelf,
                "this proxy's own address, so the request would loop",
            );
        }
        if ip.is_unspecified() || in_this_network(ip) {
            return refuse(Builtin::DestinationsUnspecified, "an unspecified address");
        }
        if ip.is_loopback() && !self.allow_loopback {
            return refuse(
                Builtin::DestinationsLoopback,
                "a loopback address, which this proxy does not reach",
            );
        }
        if is_link_local(ip) || METADATA.contains(&ip) {
            return refuse(
                Builtin::DestinationsLinkLocal,
                "a link-local or cloud metadata address, which this proxy does not reach",
            );
        }
        if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return refuse(Builtin::DestinationsUnicast, "not a unicast address");
        }
        Ok(())
    }
}

/// The request methods of SOCKS (`SOCKS5`, `SOCKS4`, `SOCKS5-UDP`), as rules and records name
/// them.
pub const SOCKS_METHODS: [&str; 3] = ["SOCKS5", "SOCKS4", "SOCKS5-UDP"];

impl Policy {
    /// The policy for SOCKS clients that do not log in while `[auth]` is on (browsers send no
    /// SOCKS passwords): only the rules that admit them by address
    /// ([`Rule::admits_socks_without_login`]) allow, every `deny` rule still refuses, and no
    /// port list lets anything through. `None` when no rule admits anyone so.
    pub fn without_login(&self) -> Option<Policy> {
        if !self.rules.iter().any(Rule::admits_socks_without_login) {
            return None;
        }
        let mut policy = self.clone();
        policy
            .rules
            .retain(|r| r.action == Action::Deny || r.admits_socks_without_login());
        policy.http_ports = PortSet::empty();
        policy.connect_ports = PortSet::empty();
        policy.socks_ports = Some(PortSet::empty());
        policy.udp_ports = PortSet::empty();
        Some(policy)
    }

    /// The groups the rules name, each once, in the order they first appear.
    pub fn group_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for group in self
            .rules
            .iter()
            .filter_map(|r| r.groups.as_ref())
            .flatten()
        {
            if !names.contains(group) {
                names.push(group.clone());
            }
        }
        names
    }

    /// Whether a rule admits a SOCKS client at `client` using `method` without a log-in.
    pub fn admits_without_login(&self, client: IpAddr, method: &str) -> bool {
        let client = client.to_canonical();
        self.rules.iter().any(|r| {
            r.admits_socks_without_login()
                && r.clients.iter().flatten().any(|net| net.contains(&client))
                && r.methods.iter().flatten().any(|m| m == method)
        })
    }
}

/// For a SOCKS client admitted without a log-in (by [`Policy::without_login`]), a refusal
/// by a port list is the log-in's: such a client reaches only what the rules naming its
/// address allow. `None` for a refusal by anything else, which stands.
pub fn without_login_refusal(
    rule: &Decider,
    client: IpAddr,
    host: &Host,
    port: u16,
) -> Option<Denial> {
    let Decider::Builtin(
        Builtin::PortsConnect | Builtin::SocksPorts | Builtin::SocksUdpPorts | Builtin::PortsHttp,
    ) = rule
    else {
        return None;
    };
    Some(Denial::new(
        Builtin::Auth,
        format!(
            "without a log-in, SOCKS from {} reaches only what the rules admitting it by address allow, and none allows {host} {}",
            client.to_canonical(),
            describe(port)
        ),
    ))
}

impl Rule {
    /// Whether this rule lets SOCKS clients through without a log-in while `[auth]` is on: it
    /// allows, names client networks and only SOCKS methods, and no users. (Other rules
    /// apply to SOCKS clients once they have logged in, as to HTTP clients.)
    pub fn admits_socks_without_login(&self) -> bool {
        self.action == Action::Allow
            && self.users.is_none()
            && self.groups.is_none()
            && self.clients.is_some()
            && self.methods.as_ref().is_some_and(|methods| {
                !methods.is_empty() && methods.iter().all(|m| SOCKS_METHODS.contains(&m.as_str()))
            })
    }

    /// Whether every condition holds for `facts` (a host condition that needs the address
    /// holds only when `addr` is known and in it): how a cap's matchers pick a transfer.
    pub fn matches(&self, facts: &Facts<'_>, addr: Option<IpAddr>) -> bool {
        self.matches_request(facts)
            && matches!(self.group_match(facts), GroupMatch::Yes)
            && self
                .host_match(facts.host, addr)
                .is_none_or(|m| m == HostMatch::Yes)
    }

    /// The host condition (`hosts`, `hosts_file`, `hosts_url`); `None` when there is none.
    pub fn host_match(&self, host: &Host, addr: Option<IpAddr>) -> Option<HostMatch> {
        crate::core::blocklist::rule_hosts(self.hosts.as_deref(), self.list.as_deref(), host, addr)
    }

    /// The `groups` condition: the user is in one of them (by `facts.groups`); a group the
    /// facts do not answer for is one the helper was not asked about, as unknown as a failed
    /// answer.
    fn group_match(&self, f: &Facts<'_>) -> GroupMatch {
        let Some(groups) = &self.groups else {
            return GroupMatch::Yes;
        };
        if f.user.is_none() {
            return GroupMatch::No;
        }
        let mut unknown = None;
        for group in groups {
            match f
                .groups
                .iter()
                .find(|a| a.group == *group)
                .map(|a| &a.member)
            {
                Some(Ok(true)) => return GroupMatch::Yes,
                Some(Ok(false)) => {}
                Some(Err(why)) => {
                    unknown.get_or_insert_with(|| format!("group {group:?}: {why}"));
                }
                None => {
                    unknown.get_or_insert_with(|| format!("group {group:?} was not asked about"));
                }
            }
        }
        unknown.map_or(GroupMatch::No, GroupMatch::Unknown)
    }

    /// Whether every condition but the hosts and the groups holds.
    fn matches_request(&self, f: &Facts<'_>) -> bool {
        let client = f.client.to_canonical();
        self.clients
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|n| n.contains(&client)))
            && self
                .users
                .as_ref()
                .is_none_or(|users| f.user.is_some_and(|u| users.iter().any(|x| x == u)))
            && self
                .ports
                .as_ref()
                .is_none_or(|ports| ports.contains(f.port))
            && self
                .methods
                .as_ref()
                .is_none_or(|methods| methods.iter().any(|m| m == f.method))
    }
}

/// The IPv4 address that `ip` embeds by a standard form, other than IPv4-mapped (which
/// `to_canonical` takes care of): IPv4-compatible `::a.b.c.d` (RFC 4291 §2.5.5.1, not `::`
/// or `::1`), the NAT64 prefixes `64:ff9b::/96` (RFC 6052) and `64:ff9b:1::/48` (RFC 8215,
/// laid out as RFC 6052 §2.2 says for a /48), and 6to4 `2002::/16` (RFC 3056).
pub fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let o = v6.octets();
    let seg = v6.segments();
    let v4 = |a: u8, b: u8, c: u8, d: u8| Some(Ipv4Addr::new(a, b, c, d));
    match seg {
        [0, 0, 0, 0, 0, 0, hi, lo] if (hi, lo) != (0, 0) && (hi, lo) != (0, 1) => {
            v4(o[12], o[13], o[14], o[15])
        }
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => v4(o[12], o[13], o[14], o[15]),
        [0x64, 0xff9b, 1, ..] => v4(o[6], o[7], o[9], o[10]),
        [0x2002, ..] => v4(o[2], o[3], o[4], o[5]),
        _ => None,
    }
}

/// 0.0.0.0/8: "this network", which Linux connects to the local host.
fn in_this_network(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 0)
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// The client networks allowed by default: loopback and the private, shared and link-local
/// ranges a LAN uses.
pub fn default_client_networks() -> Vec<IpNet> {
    [
        "127.0.0.0/8",
        "::1/128",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "fc00::/7",
        "fe80::/10",
    ]
    .iter()
    .filter_map(|n| n.parse().ok())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_spellings_of_ipv4_addresses_are_judged_as_the_ipv4_address() {
        let v4 = |s: &str| Some(s.parse::<Ipv4Addr>().unwrap());
        for (v6, want) in [
            ("::127.0.0.1", v4("127.0.0.1")),
            ("::a9fe:a9fe", v4("169.254.169.254")),
            ("64:ff9b::7f00:1", v4("127.0.0.1")),
            ("64:ff9b:1:7f00:0:100::", v4("127.0.0.1")),
            ("2002:7f00:1::", v4("127.0.0.1")),
            ("2002:a9fe:a9fe:1::5", v4("169.254.169.254")),
            ("::", None),
            ("::1", None),
            ("2001:db8::7f00:1", None),
            ("fe80::7f00:1", None),
        ] {
            let ip: IpAddr = v6.parse().unwrap();
            assert_eq!(embedded_ipv4(ip), want, "{v6}");
        }
        let policy = Policy {
            clients: vec![],
            http_ports: PortSet::empty(),
            connect_ports: PortSet::empty(),
            socks_ports: None,
            udp_ports: PortSet::empty(),
            allow_loopback: false,
            listen: vec![],
            admin: None,
            rules: vec![],
            clock: Default::default(),
        };
        for (v6, rule) in [
            ("::127.0.0.1", Builtin::DestinationsLoopback),
            ("64:ff9b::7f00:1", Builtin::DestinationsLoopback),
            ("2002:7f00:1::", Builtin::DestinationsLoopback),
            ("64:ff9b::a9fe:a9fe", Builtin::DestinationsLinkLocal),
            ("2002::", Builtin::DestinationsUnspecified),
        ] {
            let addr = SocketAddr::new(v6.parse().unwrap(), 443);
            let denial = policy
                .check_address(&format!("[{v6}]"), addr, |_| false)
                .expect_err(v6);
            assert_eq!(denial.rule, Decider::Builtin(rule), "{v6}");
            assert!(denial.reason.contains("embedding"), "{}", denial.reason);
        }
        // A public IPv4 address behind NAT64 is a destination like any other.
        let public = SocketAddr::new("64:ff9b::5db8:d822".parse().unwrap(), 443);
        assert!(policy.check_address("x", public, |_| false).is_ok());
    }
    use crate::core::ports::PortSpec;

    fn policy(allow_loopback: bool) -> Policy {
        Policy {
            clients: default_client_networks(),
            http_ports: PortSet::from_specs(&[PortSpec::from("http"), "1025-65535".into()])
                .unwrap(),
            connect_ports: PortSet::from_specs(&["https".into()]).unwrap(),
            socks_ports: None,
            udp_ports: PortSet::empty(),
            allow_loopback,
            listen: vec![
                "0.0.0.0:3128".parse().unwrap(),
                "127.0.0.1:3130".parse().unwrap(),
            ],
            admin: Some("127.0.0.1:3129".parse().unwrap()),
            rules: Vec::new(),
            clock: Default::default(),
        }
    }

    #[test]
    fn groups_match_by_the_helpers_answers_and_refuse_when_it_cannot_tell() {
        let rule = |name: &str, groups: &[&str], action| Rule {
            name: name.into(),
            clients: None,
            users: None,
            groups: Some(groups.iter().map(|g| (*g).to_owned()).collect()),
            hosts: None,
            list: None,
            ports: None,
            methods: None,
            times: None,
            times_cut: false,
            action,
        };
        let mut p = policy(false);
        p.rules = vec![
            rule("pupils: no games", &["pupils"], Action::Deny),
            rule("staff", &["teachers", "admins"], Action::Allow),
        ];
        assert_eq!(p.group_names(), ["pupils", "teachers", "admins"]);
        let answer = |group: &str, member: Result<bool, &str>| GroupAnswer {
            group: group.into(),
            member: member.map_err(str::to_owned),
        };
        let host = Host::Name("example.com".into());
        // (user, answers, decider or refusal's decider)
        let cases: Vec<(Option<&str>, Vec<GroupAnswer>, &str)> = vec![
            (
                Some("mia"),
                vec![answer("pupils", Ok(false)), answer("teachers", Ok(true))],
                "rule \"staff\"",
            ),
            (
                Some("tom"),
                vec![answer("pupils", Ok(true)), answer("teachers", Ok(false))],
                "rule \"pupils: no games\"",
            ),
            // Neither: the port list decides (25 is not in it).
            (
                Some("eve"),
                vec![
                    answer("pupils", Ok(false)),
                    answer("teachers", Ok(false)),
                    answer("admins", Ok(false)),
                ],
                "ports.http",
            ),
            // Unknown for a deny rule: refused, never skipped.
            (
                Some("tom"),
                vec![
                    answer("pupils", Err("timeout")),
                    answer("teachers", Ok(true)),
                ],
                "auth.groups",
            ),
            // One known membership is enough; the unknown one does not matter.
            (
                Some("mia"),
                vec![
                    answer("pupils", Ok(false)),
                    answer("teachers", Err("BH")),
                    answer("admins", Ok(true)),
                ],
                "rule \"staff\"",
            ),
            // A group never asked about is as unknown as a failed answer.
            (
                Some("mia"),
                vec![answer("pupils", Ok(false))],
                "auth.groups",
            ),
            // Without a user no group holds.
            (None, vec![], "ports.http"),
        ];
        for (user, groups, want) in cases {
            let facts = Facts {
                client: "192.168.1.20".parse().unwrap(),
                user,
                groups: &groups,
                method: "GET",
                kind: Kind::Http,
                host: &host,
                port: 25,
                at: Timestamp::UNIX_EPOCH,
            };
            let got = match p.decide(&facts, None) {
                Decision::Allow(d) => d.to_string(),
                Decision::Deny(d) => d.rule.to_string(),
                Decision::NeedAddress => "need address".into(),
            };
            assert_eq!(got, want, "{user:?} {groups:?}");
        }
    }

    #[test]
    fn clients_outside_the_allow_list_are_refused() {
        let p = policy(false);
        let cases: &[(&str, bool)] = &[
            ("127.0.0.1", true),
            ("127.9.9.9", true),
            ("::1", true),
            ("10.1.2.3", true),
            ("172.16.0.1", true),
            ("172.31.255.255", true),
            ("172.32.0.1", false),
            ("192.168.1.20", true),
            ("100.64.0.1", true),
            ("fd12::1", true),
            ("fe80::1", true),
            ("::ffff:192.168.1.2", true),
            ("::ffff:8.8.8.8", false),
            ("8.8.8.8", false),
            ("2001:db8::1", false),
        ];
        for (ip, allowed) in cases {
            let got = p.admit_client(ip.parse().unwrap());
            assert_eq!(got.is_ok(), *allowed, "{ip}: {got:?}");
            if let Err(d) = got {
                assert_eq!(d.rule.to_string(), "clients.allow");
                assert!(d.reason.contains(ip.trim_start_matches("::ffff:")), "{d}");
            }
        }
    }

    #[test]
    fn ports_are_checked_against_the_list_of_the_kind() {
        let mut p = policy(false);
        p.udp_ports = PortSet::from_specs(&[PortSpec::from("domain")]).unwrap();
        let cases: &[(Kind, u16, Result<&str, &str>)] = &[
            // SOCKS uses ports.connect while socks.ports is not set.
            (Kind::Socks, 443, Ok("ports.connect")),
            (
                Kind::Socks,
                22,
                Err("port 22 (ssh) is not allowed for SOCKS"),
            ),
            (Kind::SocksUdp, 53, Ok("socks.udp_ports")),
            (
                Kind::SocksUdp,
                443,
                Err("port 443 (https) is not allowed for SOCKS UDP"),
            ),
            (Kind::Http, 80, Ok("ports.http")),
            (Kind::Http, 8080, Ok("ports.http")),
            (
                Kind::Http,
                443,
                Err("port 443 (https) is not allowed for plain HTTP"),
            ),
            (
                Kind::Http,
                25,
                Err("port 25 (smtp) is not allowed for plain HTTP"),
            ),
            (
                Kind::Http,
                1024,
                Err("port 1024 is not allowed for plain HTTP"),
            ),
            (Kind::Connect, 443, Ok("ports.connect")),
            (
                Kind::Connect,
                25,
                Err("port 25 (smtp) is not allowed for CONNECT"),
            ),
            (
                Kind::Connect,
                8443,
                Err("port 8443 (https-alt) is not allowed for CONNECT"),
            ),
        ];
        for (kind, port, want) in cases {
            let got = p.check_port(*kind, *port);
            match (got, want) {
                (Ok(rule), Ok(w)) => assert_eq!(rule.as_str(), *w),
                (Err(d), Err(w)) => {
                    assert_eq!(d.reason, *w);
                    let list = match kind {
                        Kind::Http => "ports.http",
                        Kind::Connect | Kind::Socks => "ports.connect",
                        Kind::SocksUdp => "socks.udp_ports",
                    };
                    assert_eq!(d.rule.to_string(), list);
                }
                (got, want) => panic!("{kind:?} {port}: got {got:?}, want {want:?}"),
            }
        }
        // socks.ports, when set, replaces ports.connect for SOCKS only.
        p.socks_ports = Some(PortSet::from_specs(&[PortSpec::from("ssh")]).unwrap());
        assert_eq!(p.check_port(Kind::Socks, 22), Ok(Builtin::SocksPorts));
        let d = p.check_port(Kind::Socks, 443).unwrap_err();
        assert_eq!(d.rule.to_string(), "socks.ports");
        assert_eq!(p.check_port(Kind::Connect, 443), Ok(Builtin::PortsConnect));
    }

    #[test]
    fn addresses_are_guarded() {
        let strict = policy(false);
        let dev = policy(true);
        let never_local = |_: IpAddr| false;
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            // (address, rule when strict, rule with allow_loopback)
            ("93.184.216.34:80", None, None),
            ("192.168.1.5:80", None, None),
            ("127.0.0.1:80", Some("destinations.loopback"), None),
            ("127.1.2.3:8080", Some("destinations.loopback"), None),
            ("[::1]:80", Some("destinations.loopback"), None),
            ("[::ffff:127.0.0.1]:80", Some("destinations.loopback"), None),
            (
                "0.0.0.0:80",
                Some("destinations.unspecified"),
                Some("destinations.unspecified"),
            ),
            (
                "0.1.2.3:80",
                Some("destinations.unspecified"),
                Some("destinations.unspecified"),
            ),
            (
                "[::]:80",
                Some("destinations.unspecified"),
                Some("destinations.unspecified"),
            ),
            (
                "169.254.169.254:80",
                Some("destinations.link_local"),
                Some("destinations.link_local"),
            ),
            (
                "[fe80::1]:80",
                Some("destinations.link_local"),
                Some("destinations.link_local"),
            ),
            (
                "100.100.100.200:80",
                Some("destinations.link_local"),
                Some("destinations.link_local"),
            ),
            (
                "[fd00:ec2::254]:80",
                Some("destinations.link_local"),
                Some("destinations.link_local"),
            ),
            (
                "224.0.0.1:80",
                Some("destinations.unicast"),
                Some("destinations.unicast"),
            ),
            // The listener 127.0.0.1:3130 is this proxy, even with loopback allowed.
            (
                "127.0.0.1:3130",
                Some("destinations.self"),
                Some("destinations.self"),
            ),
            // So is the admin listener, 127.0.0.1:3129.
            (
                "127.0.0.1:3129",
                Some("destinations.self"),
                Some("destinations.self"),
            ),
            ("127.0.0.1:3131", Some("destinations.loopback"), None),
        ];
        for (addr, strict_rule, dev_rule) in cases {
            let addr: SocketAddr = addr.parse().unwrap();
            for (p, want) in [(&strict, strict_rule), (&dev, dev_rule)] {
                let got = p.check_address("h", addr, never_local);
                let rule = got.as_ref().err().map(|d| d.rule.to_string());
                assert_eq!(rule.as_deref(), *want, "{addr}: {got:?}");
            }
        }
    }

    #[test]
    fn unspecified_listeners_ask_whether_the_address_is_local() {
        let p = policy(true);
        let lan: SocketAddr = "192.168.1.5:3128".parse().unwrap();
        let local = |ip: IpAddr| ip == "192.168.1.5".parse::<IpAddr>().unwrap();
        let rule = p.check_address("proxy.lan", lan, local).unwrap_err().rule;
        assert_eq!(rule.to_string(), "destinations.self");
        assert!(p.check_address("proxy.lan", lan, |_| false).is_ok());
        let other_port: SocketAddr = "192.168.1.5:3129".parse().unwrap();
        assert!(p.check_address("proxy.lan", other_port, local).is_ok());
    }

    #[test]
    fn reasons_name_host_and_address() {
        let p = policy(false);
        let d = p
            .check_address("localhost", "127.0.0.1:80".parse().unwrap(), |_| false)
            .unwrap_err();
        assert_eq!(
            d.reason,
            "localhost (127.0.0.1) is a loopback address, which this proxy does not reach"
        );
        let d = p
            .check_address("127.0.0.1", "127.0.0.1:80".parse().unwrap(), |_| false)
            .unwrap_err();
        assert!(d.reason.starts_with("127.0.0.1 is a loopback"), "{d}");
    }

    fn rule(name: &str, action: Action) -> Rule {
        Rule {
            name: name.into(),
            clients: None,
            users: None,
            groups: None,
            hosts: None,
            list: None,
            ports: None,
            methods: None,
            action,
            times: None,
            times_cut: false,
        }
    }

    fn hosts(patterns: &[&str]) -> Option<Arc<HostSet>> {
        let mut set = HostSet::new();
        for p in patterns {
            set.insert(crate::core::hosts::HostPattern::parse(p).unwrap());
        }
        Some(Arc::new(set))
    }

    /// The rules of the manual's examples, in order.
    fn ruled_policy() -> Policy {
        let mut p = policy(false);
        p.rules = vec![
            Rule {
                clients: Some(vec!["192.168.1.10/32".parse().unwrap()]),
                ports: Some(PortSet::from_specs(&["smtp".into(), "submission".into()]).unwrap()),
                methods: Some(vec!["CONNECT".into()]),
                ..rule("mail server may send mail", Action::Allow)
            },
            Rule {
                hosts: hosts(&[".ads.example", "blocked.example"]),
                ..rule("no ads", Action::Deny)
            },
            Rule {
                users: Some(vec!["alice".into()]),
                groups: None,
                ports: Some(PortSet::from_specs(&["ssh".into()]).unwrap()),
                ..rule("alice may ssh", Action::Allow)
            },
            Rule {
                hosts: hosts(&["10.0.0.0/8"]),
                ..rule("no office servers", Action::Deny)
            },
            Rule {
                methods: Some(vec!["GET".into(), "HEAD".into()]),
                ports: Some(PortSet::from_specs(&[8443.into()]).unwrap()),
                ..rule("read-only 8443", Action::Allow)
            },
        ];
        p
    }

    #[test]
    fn rules_decide_in_order_and_fall_back_to_the_port_lists() {
        let p = ruled_policy();
        let name = |n: &str| Host::Name(n.to_owned());
        let ip = |t: &str| Host::Ip(t.parse().unwrap());
        struct Case {
            client: &'static str,
            user: Option<&'static str>,
            method: &'static str,
            kind: Kind,
            host: Host,
            port: u16,
            addr: Option<&'static str>,
            want: Result<&'static str, &'static str>,
        }
        let case = |client, user, method, kind, host, port, addr, want| Case {
            client,
            user,
            method,
            kind,
            host,
            port,
            addr,
            want,
        };
        use Kind::{Connect, Http};
        let cases = [
            // clients + ports + methods: the mail server only, CONNECT only.
            case(
                "192.168.1.10",
                None,
                "CONNECT",
                Connect,
                name("mail.example"),
                25,
                None,
                Ok("rule \"mail server may send mail\""),
            ),
            case(
                "192.168.1.10",
                None,
                "CONNECT",
                Connect,
                name("mail.example"),
                587,
                None,
                Ok("rule \"mail server may send mail\""),
            ),
            case(
                "192.168.1.11",
                None,
                "CONNECT",
                Connect,
                name("mail.example"),
                25,
                Some("93.184.216.34"),
                Err("ports.connect"),
            ),
            case(
                "192.168.1.10",
                None,
                "GET",
                Http,
                name("mail.example"),
                25,
                Some("93.184.216.34"),
                Err("ports.http"),
            ),
            // hosts: names and domains, before the port lists.
            case(
                "192.168.1.20",
                None,
                "GET",
                Http,
                name("x.ads.example"),
                80,
                None,
                Err("rule \"no ads\""),
            ),
            case(
                "192.168.1.20",
                None,
                "CONNECT",
                Connect,
                name("BLOCKED.example."),
                443,
                None,
                Err("rule \"no ads\""),
            ),
            case(
                "192.168.1.20",
                None,
                "GET",
                Http,
                name("fine.example"),
                80,
                Some("93.184.216.34"),
                Ok("ports.http"),
            ),
            // Order: the mail rule comes before "no ads", so the mail server still sends mail.
            case(
                "192.168.1.10",
                None,
                "CONNECT",
                Connect,
                name("smtp.ads.example"),
                25,
                None,
                Ok("rule \"mail server may send mail\""),
            ),
            // users: only an authenticated alice.
            case(
                "192.168.1.20",
                Some("alice"),
                "CONNECT",
                Connect,
                name("git.example"),
                22,
                None,
                Ok("rule \"alice may ssh\""),
            ),
            case(
                "192.168.1.20",
                Some("bob"),
                "CONNECT",
                Connect,
                name("git.example"),
                22,
                Some("93.184.216.34"),
                Err("ports.connect"),
            ),
            case(
                "192.168.1.20",
                None,
                "CONNECT",
                Connect,
                name("git.example"),
                22,
                Some("93.184.216.34"),
                Err("ports.connect"),
            ),
            // networks: IP literals at once, names once resolved.
            case(
                "192.168.1.20",
                None,
                "GET",
                Http,
                ip("10.1.2.3"),
                80,
                None,
                Err("rule \"no office servers\""),
            ),
            case(
                "192.168.1.20",
                None,
                "GET",
                Http,
                name("intranet.example"),
                80,
                None,
                Err("need address"),
            ),
            case(
                "192.168.1.20",
                None,
                "GET",
                Http,
                name("intranet.example"),
                80,
                Some("10.1.2.3"),
                Err("rule \"no office servers\""),
            ),
            case(
                "192.168.1.20",
                None,
                "GET",
                Http,
                name("intranet.example"),
                80,
                Some("93.184.216.34"),
                Ok("ports.http"),
            ),
            // methods.
            case(
                "192.168.1.20",
                None,
                "GET",
                Http,
                name("app.example"),
                8443,
                Some("93.184.216.34"),
                Ok("rule \"read-only 8443\""),
            ),
            case(
                "192.168.1.20",
                None,
                "POST",
                Http,
                name("app.example"),
                8443,
                Some("93.184.216.34"),
                Ok("ports.http"),
            ),
            case(
                "192.168.1.20",
                None,
                "CONNECT",
                Connect,
                name("app.example"),
                8443,
                Some("93.184.216.34"),
                Err("ports.connect"),
            ),
        ];
        for c in cases {
            let facts = Facts {
                client: c.client.parse().unwrap(),
                user: c.user,
                groups: &[],
                method: c.method,
                kind: c.kind,
                host: &c.host,
                port: c.port,
                at: jiff::Timestamp::UNIX_EPOCH,
            };
            let got = p.decide(&facts, c.addr.map(|a| a.parse().unwrap()));
            let got = match &got {
                Decision::Allow(d) => Ok(d.to_string()),
                Decision::Deny(d) => Err(d.rule.to_string()),
                Decision::NeedAddress => Err("need address".to_owned()),
            };
            let want = c.want.map(str::to_owned).map_err(str::to_owned);
            assert_eq!(
                got,
                want,
                "{} {} {}:{} from {}",
                c.method,
                c.client,
                c.host,
                c.port,
                c.user.unwrap_or("-")
            );
        }
    }

    #[test]
    fn a_rule_refusal_names_target_and_rule() {
        let p = ruled_policy();
        let host = Host::Name("x.ads.example".into());
        let facts = Facts {
            client: "192.168.1.20".parse().unwrap(),
            user: None,
            groups: &[],
            method: "CONNECT",
            kind: Kind::Connect,
            host: &host,
            port: 443,
            at: jiff::Timestamp::UNIX_EPOCH,
        };
        let Decision::Deny(d) = p.decide(&facts, None) else {
            panic!("not refused");
        };
        assert_eq!(
            d.reason,
            "CONNECT to x.ads.example port 443 (https) is not allowed"
        );
        assert_eq!(d.rule.to_string(), "rule \"no ads\"");
    }

    #[test]
    fn times_decide_by_the_moment_and_look_ahead_to_when_it_turns() {
        let clock = Clock::named("Europe/Amsterdam").unwrap();
        let at = |text: &str| clock.instant(text.parse().unwrap());
        let schedule = |w: &[&str]| Some(Arc::new(Schedule::parse(w).unwrap()));
        let mut p = policy(false);
        p.clock = clock.clone();
        p.rules = vec![
            Rule {
                hosts: hosts(&["social.example"]),
                times: schedule(&["daily 12:00-12:30"]),
                times_cut: true,
                ..rule("breaks", Action::Allow)
            },
            Rule {
                hosts: hosts(&["social.example"]),
                ..rule("social", Action::Deny)
            },
            Rule {
                hosts: hosts(&["games.example"]),
                times: schedule(&["daily 21:00-07:00"]),
                ..rule("bedtime", Action::Deny)
            },
        ];
        let social = Host::Name("social.example".into());
        let games = Host::Name("games.example".into());
        let facts = |host, when: &str| Facts {
            client: "192.168.1.20".parse().unwrap(),
            user: None,
            groups: &[],
            method: "CONNECT",
            kind: Kind::Connect,
            host,
            port: 443,
            at: at(when),
        };
        // In the break: allowed, and a tunnel is cut when the break ends.
        let in_break = facts(&social, "2026-12-07T12:10");
        assert_eq!(
            p.decide(&in_break, None),
            Decision::Allow(Decider::Rule("breaks".into()))
        );
        assert_eq!(p.closes_at(&in_break, None), Some(at("2026-12-07T12:30")));
        // After it: refused, saying when the next break begins.
        let Decision::Deny(d) = p.decide(&facts(&social, "2026-12-07T12:30"), None) else {
            panic!("not refused after the break");
        };
        assert_eq!(d.rule.to_string(), "rule \"social\"");
        assert!(
            d.reason.ends_with("; allowed from Tue 12:00"),
            "{}",
            d.reason
        );
        // Bedtime does not cut (no times_cut): an evening tunnel is never cut by it.
        let evening = facts(&games, "2026-12-07T20:00");
        assert!(matches!(p.decide(&evening, None), Decision::Allow(_)));
        assert_eq!(p.closes_at(&evening, None), None);
        let Decision::Deny(d) = p.decide(&facts(&games, "2026-12-07T23:00"), None) else {
            panic!("not refused at bedtime");
        };
        assert!(
            d.reason.ends_with("; allowed from Tue 07:00"),
            "{}",
            d.reason
        );
        // A refusal no window changes says nothing of when.
        let mut always = p.clone();
        always.rules.remove(0);
        let Decision::Deny(d) = always.decide(&facts(&social, "2026-12-07T12:10"), None) else {
            panic!("not refused");
        };
        assert!(!d.reason.contains("allowed from"), "{}", d.reason);
    }
}
