//! THE decision: who may use the proxy and where they may go.
//!
//! Every allow or deny of the proxy is made here, by pure functions over plain data, so that
//! the whole policy is unit-tested with tables and I/O modules only ask. The checks run in
//! the order a request meets them:
//!
//! 1. [`Policy::admit_client`]: is the client's address in `clients.allow`?
//! 2. [`Policy::check_port`]: is the destination port in `ports.http` (plain HTTP) or
//!    `ports.connect` (CONNECT)? This runs before any DNS lookup or dial.
//! 3. [`Policy::check_address`]: for each address the destination resolves to (or its IP
//!    literal), is it loopback, unspecified, link-local, a cloud metadata address or the
//!    proxy's own listener?
//!
//! Each answer names what decided it (`clients.allow`, `ports.connect`, `destinations.loopback`
//! …): the name goes into the access record and into the reason the client sees.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use crate::ports::{describe, PortSet};

/// How a request reaches its destination, which picks the port list that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Plain HTTP forwarded by the proxy (`ports.http`).
    Http,
    /// A CONNECT tunnel (`ports.connect`).
    Connect,
}

impl Kind {
    /// The name of the port list that governs this kind.
    pub fn port_rule(self) -> &'static str {
        match self {
            Kind::Http => "ports.http",
            Kind::Connect => "ports.connect",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Http => "plain HTTP",
            Kind::Connect => "CONNECT",
        }
    }
}

/// A refusal: what decided it and why, in one line a person can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Denial {
    /// The configuration entry that decided (`ports.connect`, `destinations.loopback` …).
    pub rule: &'static str,
    /// The one-line reason shown to the client and logged.
    pub reason: String,
}

impl Denial {
    fn new(rule: &'static str, reason: String) -> Self {
        Denial { rule, reason }
    }
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
    /// Whether loopback destinations are allowed (development and tests).
    pub allow_loopback: bool,
    /// The proxy's own listen addresses: never a destination.
    pub listen: Vec<SocketAddr>,
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
                "clients.allow",
                format!("client {ip} is not allowed to use this proxy"),
            ))
        }
    }

    /// May a request of `kind` reach `port`? Answers the rule that allowed it.
    pub fn check_port(&self, kind: Kind, port: u16) -> Result<&'static str, Denial> {
        let set = match kind {
            Kind::Http => &self.http_ports,
            Kind::Connect => &self.connect_ports,
        };
        if set.contains(port) {
            Ok(kind.port_rule())
        } else {
            Err(Denial::new(
                kind.port_rule(),
                format!("{} is not allowed for {}", describe(port), kind.label()),
            ))
        }
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
        let ip = addr.ip().to_canonical();
        let addr = SocketAddr::new(ip, addr.port());
        let refuse = |rule: &'static str, what: &str| {
            let shown = if host == ip.to_string() {
                format!("{ip}")
            } else {
                format!("{host} ({ip})")
            };
            Err(Denial::new(rule, format!("{shown} is {what}")))
        };
        let is_self = self.listen.iter().any(|l| {
            l.port() == addr.port()
                && (l.ip().to_canonical() == ip || (l.ip().is_unspecified() && is_local(ip)))
        });
        if is_self {
            return refuse(
                "destinations.self",
                "this proxy's own address, so the request would loop",
            );
        }
        if ip.is_unspecified() || in_this_network(ip) {
            return refuse("destinations.unspecified", "an unspecified address");
        }
        if ip.is_loopback() && !self.allow_loopback {
            return refuse(
                "destinations.loopback",
                "a loopback address, which this proxy does not reach",
            );
        }
        if is_link_local(ip) || METADATA.contains(&ip) {
            return refuse(
                "destinations.link_local",
                "a link-local or cloud metadata address, which this proxy does not reach",
            );
        }
        if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
            return refuse("destinations.unicast", "not a unicast address");
        }
        Ok(())
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
    use crate::ports::PortSpec;

    fn policy(allow_loopback: bool) -> Policy {
        Policy {
            clients: default_client_networks(),
            http_ports: PortSet::from_specs(&[PortSpec::from("http"), "1025-65535".into()])
                .unwrap(),
            connect_ports: PortSet::from_specs(&["https".into()]).unwrap(),
            allow_loopback,
            listen: vec![
                "0.0.0.0:3128".parse().unwrap(),
                "127.0.0.1:3130".parse().unwrap(),
            ],
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
                assert_eq!(d.rule, "clients.allow");
                assert!(d.reason.contains(ip.trim_start_matches("::ffff:")), "{d}");
            }
        }
    }

    #[test]
    fn ports_are_checked_against_the_list_of_the_kind() {
        let p = policy(false);
        let cases: &[(Kind, u16, Result<&str, &str>)] = &[
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
                (Ok(rule), Ok(w)) => assert_eq!(rule, *w),
                (Err(d), Err(w)) => {
                    assert_eq!(d.reason, *w);
                    assert_eq!(d.rule, kind.port_rule());
                }
                (got, want) => panic!("{kind:?} {port}: got {got:?}, want {want:?}"),
            }
        }
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
            ("127.0.0.1:3131", Some("destinations.loopback"), None),
        ];
        for (addr, strict_rule, dev_rule) in cases {
            let addr: SocketAddr = addr.parse().unwrap();
            for (p, want) in [(&strict, strict_rule), (&dev, dev_rule)] {
                let got = p.check_address("h", addr, never_local);
                assert_eq!(got.as_ref().err().map(|d| d.rule), *want, "{addr}: {got:?}");
            }
        }
    }

    #[test]
    fn unspecified_listeners_ask_whether_the_address_is_local() {
        let p = policy(true);
        let lan: SocketAddr = "192.168.1.5:3128".parse().unwrap();
        let local = |ip: IpAddr| ip == "192.168.1.5".parse::<IpAddr>().unwrap();
        assert_eq!(
            p.check_address("proxy.lan", lan, local).unwrap_err().rule,
            "destinations.self"
        );
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
}
