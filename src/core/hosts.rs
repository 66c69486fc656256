//! Host patterns of the `[[rules]]`: `example.com` (that name), `.example.com` (the domain and
//! every name under it, Squid's convention), and CIDRs or addresses (`10.0.0.0/8`,
//! `192.168.1.5`) that match IP-literal targets and the addresses a name resolves to.
//!
//! A [`HostSet`] holds any number of patterns (a `hosts_file` block list may hold 100 000)
//! and answers in time independent of its size: names are hash lookups, one per label, and
//! networks are hash lookups, one per prefix length in use. Matching ignores case and a
//! trailing dot. Pure: no DNS.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::core::target::Host;

/// One host pattern, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `example.com`: exactly that name.
    Exact(String),
    /// `.example.com`: the domain and every subdomain.
    Domain(String),
    /// `10.0.0.0/8` or `192.168.1.5`: addresses.
    Network(IpNet),
}

impl HostPattern {
    /// Parses one pattern; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty host pattern".to_owned());
        }
        if text.contains('/') {
            return text
                .parse::<IpNet>()
                .map(|n| HostPattern::Network(n.trunc()))
                .map_err(|_| {
                    format!("\"{text}\" is not a valid network (CIDR such as 10.0.0.0/8)")
                });
        }
        let bare = text
            .strip_suffix('.')
            .unwrap_or(text)
            .trim_start_matches('[')
            .trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(HostPattern::Network(IpNet::from(ip.to_canonical())));
        }
        let (domain, name) = match text.strip_prefix('.') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let name = normalize(name);
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(format!(
                "\"{text}\" is not a host name, .domain, address or CIDR"
            ));
        }
        Ok(if domain {
            HostPattern::Domain(name)
        } else {
            HostPattern::Exact(name)
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Domain(n) => write!(f, ".{n}"),
            HostPattern::Network(n) => write!(f, "{n}"),
        }
    }
}

fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Whether a set matches a target, or cannot tell before the name is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMatch {
    /// The target matches.
    Yes,
    /// The target does not match.
    No,
    /// The target is a name that no name pattern matches, and the set has networks: the
    /// answer depends on the addresses the name resolves to.
    NeedAddress,
}

/// Many host patterns, indexed for constant-time matching.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSet {
    exact: HashSet<String>,
    domains: HashSet<String>,
    /// Networks by (is IPv6, prefix length), each stored truncated to its prefix.
    networks: HashMap<(bool, u8), HashSet<IpNet>>,
    /// The prefix lengths in use, longest first, per family.
    v4_prefixes: Vec<u8>,
    v6_prefixes: Vec<u8>,
    count: usize,
}

impl HostSet {
    /// An empty set.
    pub fn new() -> Self {
        HostSet::default()
    }

    /// Adds a pattern.
    pub fn insert(&mut self, pattern: HostPattern) {
        self.count += 1;
        match pattern {
            HostPattern::Exact(n) => {
                self.exact.insert(n);
            }
            HostPattern::Domain(n) => {
                self.domains.insert(n);
            }
            HostPattern::Network(net) => {
                let len = net.prefix_len();
                let prefixes = match net {
                    IpNet::V4(_) => &mut self.v4_prefixes,
                    IpNet::V6(_) => &mut self.v6_prefixes,
                };
                if !prefixes.contains(&len) {
                    prefixes.push(len);
                    prefixes.sort_unstable_by(|a, b| b.cmp(a));
                }
                let key = (net.addr().is_ipv6(), len);
                self.networks.entry(key).or_default().insert(net);
            }
        }
    }

    /// Makes room for `n` more names of the kind the set holds already (a list is most often
    /// all names, or all `.domains`): a long list then loads without growing its table again
    /// and again.
    pub fn reserve_more(&mut self, n: usize) {
        if !self.exact.is_empty() {
            self.exact.reserve(n);
        } else if !self.domains.is_empty() {
            self.domains.reserve(n);
        }
    }

    /// Adds every pattern of `other`.
    pub fn extend(&mut self, other: HostSet) {
        self.count += other.count;
        self.exact.extend(other.exact);
        self.domains.extend(other.domains);
        for (key, nets) in other.networks {
            let prefixes = if key.0 {
                &mut self.v6_prefixes
            } else {
                &mut self.v4_prefixes
            };
            if !prefixes.contains(&key.1) {
                prefixes.push(key.1);
                prefixes.sort_unstable_by(|a, b| b.cmp(a));
            }
            self.networks.entry(key).or_default().extend(nets);
        }
    }

    /// How many patterns were added.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no pattern was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the set holds any network pattern.
    pub fn has_networks(&self) -> bool {
        !self.networks.is_empty()
    }

    /// Whether `name` (normalized) matches a name pattern.
    pub fn matches_name(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        let lowered;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = name.to_ascii_lowercase();
            lowered.as_str()
        } else {
            name
        };
        if self.exact.contains(name) {
            return true;
        }
        if self.domains.is_empty() {
            return false;
        }
        let mut rest = name;
        loop {
            if self.domains.contains(rest) {
                return true;
            }
            match rest.split_once('.') {
                Some((_, parent)) => rest = parent,
                None => return false,
            }
        }
    }

    /// Whether `ip` is in a network pattern.
    pub fn matches_address(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let prefixes = match ip {
            IpAddr::V4(_) => &self.v4_prefixes,
            IpAddr::V6(_) => &self.v6_prefixes,
        };
        prefixes.iter().any(|len| {
            let Ok(net) = IpNet::new(ip, *len) else {
                return false;
            };
            self.networks
                .get(&(ip.is_ipv6(), *len))
                .is_some_and(|set| set.contains(&net.trunc()))
        })
    }

    /// Whether the target `host`, dialled at `addr` when known, matches.
    pub fn matches(&self, host: &Host, addr: Option<IpAddr>) -> HostMatch {
        let yes = |b: bool| if b { HostMatch::Yes } else { HostMatch::No };
        match host {
            Host::Ip(ip) => yes(self.matches_address(*ip)),
            Host::Name(name) => {
                if self.matches_name(name) {
                    return HostMatch::Yes;
                }
                if !self.has_networks() {
                    return HostMatch::No;
                }
                match addr {
                    Some(ip) => yes(self.matches_address(ip)),
                    None => HostMatch::NeedAddress,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(patterns: &[&str]) -> HostSet {
        let mut s = HostSet::new();
        for p in patterns {
            s.insert(HostPattern::parse(p).unwrap());
        }
        s
    }

    fn name(n: &str) -> Host {
        Host::Name(n.to_owned())
    }

    fn ip(text: &str) -> Host {
        Host::Ip(text.parse().unwrap())
    }

    #[test]
    fn patterns_parse() {
        let cases: &[(&str, Result<HostPattern, ()>)] = &[
            ("example.com", Ok(HostPattern::Exact("example.com".into()))),
            ("Example.COM.", Ok(HostPattern::Exact("example.com".into()))),
            (
                ".example.com",
                Ok(HostPattern::Domain("example.com".into())),
            ),
            (
                "10.0.0.0/8",
                Ok(HostPattern::Network("10.0.0.0/8".parse().unwrap())),
            ),
            (
                "10.1.2.3/8",
                Ok(HostPattern::Network("10.0.0.0/8".parse().unwrap())),
            ),
            (
                "192.168.1.5",
                Ok(HostPattern::Network("192.168.1.5/32".parse().unwrap())),
            ),
            (
                "[::1]",
                Ok(HostPattern::Network("::1/128".parse().unwrap())),
            ),
            (
                "fd00::/8",
                Ok(HostPattern::Network("fd00::/8".parse().unwrap())),
            ),
            ("", Err(())),
            (".", Err(())),
            ("a..b", Err(())),
            ("bad host", Err(())),
            ("10.0.0.0/33", Err(())),
            ("*.example.com", Err(())),
        ];
        for (text, want) in cases {
            assert_eq!(HostPattern::parse(text).map_err(|_| ()), *want, "{text:?}");
        }
    }

    #[test]
    fn names_domains_and_networks_match() {
        let s = set(&[
            "example.com",
            ".ads.example.net",
            "10.0.0.0/8",
            "192.168.1.5",
            "fd00::/8",
        ]);
        let cases: &[(Host, Option<&str>, HostMatch)] = &[
            (name("example.com"), None, HostMatch::Yes),
            (name("EXAMPLE.com."), None, HostMatch::Yes),
            (name("www.example.com"), None, HostMatch::NeedAddress),
            (name("ads.example.net"), None, HostMatch::Yes),
            (name("x.y.ads.example.net"), None, HostMatch::Yes),
            (name("badads.example.net"), None, HostMatch::NeedAddress),
            (name("other.org"), None, HostMatch::NeedAddress),
            (name("other.org"), Some("10.9.9.9"), HostMatch::Yes),
            (name("other.org"), Some("11.0.0.1"), HostMatch::No),
            (name("other.org"), Some("::ffff:10.0.0.1"), HostMatch::Yes),
            (name("other.org"), Some("fd12::1"), HostMatch::Yes),
            (ip("10.1.1.1"), None, HostMatch::Yes),
            (ip("192.168.1.5"), None, HostMatch::Yes),
            (ip("192.168.1.6"), None, HostMatch::No),
            (ip("::1"), None, HostMatch::No),
        ];
        for (host, addr, want) in cases {
            let addr = addr.map(|a| a.parse().unwrap());
            assert_eq!(s.matches(host, addr), *want, "{host:?} at {addr:?}");
        }
        let names_only = set(&["example.com"]);
        assert_eq!(names_only.matches(&name("other.org"), None), HostMatch::No);
        assert_eq!(names_only.matches(&ip("10.0.0.1"), None), HostMatch::No);
    }

    #[test]
    fn a_large_set_answers_every_query() {
        let mut text = String::new();
        for i in 0..100_000 {
            text.push_str(&format!("host{i}.example.com\n.domain{i}.example.org\n"));
        }
        let s = crate::core::blocklist::parse_list(&text).set;
        assert_eq!(s.len(), 200_000);
        assert!(s.matches_name("host99999.example.com"));
        assert!(s.matches_name("deep.sub.domain5.example.org"));
        assert!(!s.matches_name("host100000.example.com"));
    }
}
