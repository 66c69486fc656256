//! What a client asked for: the request target of a proxy request, parsed and checked.
//!
//! A forward proxy sees three shapes of request target (RFC 9112 §3.2): the authority form of
//! `CONNECT host:port`, the absolute form of `GET http://host:port/path`, and the origin form
//! `GET /path` that a browser sends when someone opens the proxy's own address. [`classify`]
//! turns a method and a URI into one of these, or into a [`TargetError`] that says, in one
//! line, what is wrong. Pure: no DNS, no sockets.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{Method, Uri};

/// The destination host as the client named it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name, lower-cased, without a trailing dot.
    Name(String),
    /// An IP literal (IPv6 literals come in brackets on the wire).
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(IpAddr::V4(ip)) => f.write_str(AddrText::ip(IpAddr::V4(*ip)).as_str()),
        }
    }
}

/// An IPv4 address, or an IPv4 socket address, as text on the stack (21 bytes hold the
/// longest, `255.255.255.255:65535`): the same text as their `Display`, written digit by
/// digit. Every proxied request writes addresses several times (the target, the log line's
/// client and origin), and the formatting machinery took several times the instructions;
/// IPv6 addresses, rare on a LAN, still go through `Display`.
pub struct AddrText {
    text: [u8; 21],
    len: usize,
    long: Option<String>,
}

impl AddrText {
    /// `ip` as `Display` writes it.
    pub fn ip(ip: IpAddr) -> AddrText {
        let mut out = AddrText::empty();
        match ip {
            IpAddr::V4(ip) => {
                for (i, octet) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    out.number(octet.into());
                }
            }
            IpAddr::V6(ip) => out.fallback(format_args!("{ip}")),
        }
        out
    }

    /// `addr` as `Display` writes it (`[v6]:port` for IPv6).
    pub fn socket(addr: std::net::SocketAddr) -> AddrText {
        match addr {
            std::net::SocketAddr::V4(v4) => {
                let mut out = AddrText::ip(IpAddr::V4(*v4.ip()));
                out.push(b':');
                out.number(v4.port());
                out
            }
            std::net::SocketAddr::V6(_) => {
                let mut out = AddrText::empty();
                out.fallback(format_args!("{addr}"));
                out
            }
        }
    }

    fn empty() -> AddrText {
        AddrText {
            text: [0; 21],
            len: 0,
            long: None,
        }
    }

    fn push(&mut self, byte: u8) {
        self.text[self.len] = byte;
        self.len += 1;
    }

    fn number(&mut self, n: u16) {
        for &digit in itoa::Buffer::new().format(n).as_bytes() {
            self.push(digit);
        }
    }

    /// IPv6, through `Display`, into `long` (with a scope and a port it would not fit).
    fn fallback(&mut self, args: fmt::Arguments<'_>) {
        self.long = Some(args.to_string());
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.long {
            Some(long) => long,
            // Only ASCII digits, dots, colons and brackets are written into `text`.
            None => std::str::from_utf8(&self.text[..self.len]).unwrap_or_default(),
        }
    }
}

/// The same text as the address's own `Display` (the connection span's `client` field is
/// written this way: a tenth of the instructions).
impl fmt::Display for AddrText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A destination: host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Where to.
    pub host: Host,
    /// Which TCP port.
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Target {
    /// The value of a `Host` header for this target: the port is left out when it is the
    /// scheme's default (80 for plain HTTP).
    pub fn host_header(&self) -> String {
        // Written piece by piece: this is made for every forwarded request.
        let mut text = String::with_capacity(match &self.host {
            Host::Name(name) => name.len() + 6,
            Host::Ip(_) => 48,
        });
        match &self.host {
            Host::Name(name) => text.push_str(name),
            Host::Ip(ip @ IpAddr::V4(_)) => text.push_str(AddrText::ip(*ip).as_str()),
            Host::Ip(IpAddr::V6(ip)) => {
                use fmt::Write as _;
                let _ = write!(text, "[{ip}]");
            }
        }
        if self.port != 80 {
            text.push(':');
            text.push_str(itoa::Buffer::new().format(self.port));
        }
        text
    }
}

/// How a request is to be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// `CONNECT host:port`: a tunnel.
    Connect(Target),
    /// `METHOD http://host:port/path`: forwarded plain HTTP.
    Forward(Target),
    /// `METHOD /path`: a request for the proxy's own pages.
    Local,
    /// A SOCKS request for this destination (never made by [`classify`]: the SOCKS front
    /// door decodes its own requests, `crate::core::socks`).
    Socks(Target),
}

/// Why a request target cannot be served, with the status to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The target is malformed (400).
    #[error("{0}")]
    Malformed(String),
    /// The target uses a scheme or method the proxy does not handle (501).
    #[error("{0}")]
    Unsupported(String),
}

impl TargetError {
    /// The HTTP status that answers this error.
    pub fn status(&self) -> u16 {
        match self {
            TargetError::Malformed(_) => 400,
            TargetError::Unsupported(_) => 501,
        }
    }
}

fn malformed(reason: impl Into<String>) -> TargetError {
    TargetError::Malformed(reason.into())
}

/// Classifies a request by method and target.
pub fn classify(method: &Method, uri: &Uri) -> Result<Classified, TargetError> {
    if method == Method::CONNECT {
        if uri.scheme().is_some() || uri.path_and_query().is_some() {
            return Err(malformed(
                "CONNECT needs an authority-form target (host:port)",
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| malformed("CONNECT needs an authority-form target (host:port)"))?;
        return parse_authority(authority.as_str(), None).map(Classified::Connect);
    }
    match uri.scheme_str() {
        None if uri.authority().is_none() => {
            if uri.path().starts_with('/') {
                Ok(Classified::Local)
            } else {
                Err(malformed(format!(
                    "{method} {uri} is not a request target a proxy can serve"
                )))
            }
        }
        None => Err(malformed(format!(
            "an authority-form target is only valid with CONNECT, not {method}"
        ))),
        Some(scheme) if scheme.eq_ignore_ascii_case("http") => {
            let authority = uri
                .authority()
                .ok_or_else(|| malformed("the URL has no host"))?;
            parse_authority(authority.as_str(), Some(80)).map(Classified::Forward)
        }
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => Err(TargetError::Unsupported(
            "https:// URLs are not fetched by the proxy: clients tunnel HTTPS with CONNECT"
                .to_owned(),
        )),
        Some(scheme) => Err(TargetError::Unsupported(format!(
            "the {} scheme is not supported (only http:// and CONNECT)",
            scheme.to_ascii_lowercase()
        ))),
    }
}

/// Parses `host:port`, `[v6]:port` or (when `default_port` is given) a bare host.
pub fn parse_authority(text: &str, default_port: Option<u16>) -> Result<Target, TargetError> {
    if text.contains('@') {
        return Err(malformed(
            "user information (user@host) is not allowed in the request target",
        ));
    }
    let (host_text, port_text) = split_host_port(text)?;
    let port = match port_text {
        Some(p) => parse_port(p)?,
        None => default_port.ok_or_else(|| {
            malformed(format!(
                "the target \"{text}\" has no port (host:port is needed)"
            ))
        })?,
    };
    let host = parse_host(host_text)?;
    Ok(Target { host, port })
}

fn split_host_port(text: &str) -> Result<(&str, Option<&str>), TargetError> {
    if let Some(rest) = text.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| malformed(format!("unclosed IPv6 bracket in \"{text}\"")))?;
        let host = &text[..end + 2];
        return match &rest[end + 1..] {
            "" => Ok((host, None)),
            tail => match tail.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(malformed(format!(
                    "junk after the IPv6 literal in \"{text}\""
                ))),
            },
        };
    }
    match text.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => Err(malformed(format!(
            "an IPv6 address must be in brackets, as in [{host}]"
        ))),
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((text, None)),
    }
}

fn parse_port(text: &str) -> Result<u16, TargetError> {
    if text.is_empty() {
        return Err(malformed("the port is missing after ':'"));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(format!("the port \"{text}\" is not a number")));
    }
    match text.parse::<u32>() {
        Ok(0) => Err(malformed("port 0 is not a valid destination port")),
        Ok(n) if n <= u32::from(u16::MAX) => Ok(n as u16),
        _ => Err(malformed(format!("port {text} is out of range (1-65535)"))),
    }
}

pub(crate) fn parse_host(text: &str) -> Result<Host, TargetError> {
    if let Some(inner) = text.strip_prefix('[') {
        let inner = inner.strip_suffix(']').unwrap_or(inner);
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| Host::Ip(IpAddr::V6(ip)))
            .map_err(|_| malformed(format!("\"{inner}\" is not an IPv6 address")));
    }
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() {
        return Err(malformed("the host is empty"));
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    if ends_in_number(name) {
        return numeric_ipv4(name)
            .map(|ip| Host::Ip(IpAddr::V4(ip)))
            .ok_or_else(|| malformed(format!("\"{text}\" is not a valid IPv4 address")));
    }
    if name.len() > 253 {
        return Err(malformed("the host name is longer than 253 characters"));
    }
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !name.split('.').all(valid_label) {
        return Err(malformed(format!("\"{text}\" is not a valid host name")));
    }
    Ok(Host::Name(name.to_ascii_lowercase()))
}

/// Whether the last label of `name` is a number (decimal, or `0x` hex): such a host is an
/// IPv4 address to browsers and to the system resolver (inet_aton), never a DNS name (the
/// WHATWG URL standard's "ends in a number").
fn ends_in_number(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    let hex = last.strip_prefix("0x").or_else(|| last.strip_prefix("0X"));
    match hex {
        Some(digits) => digits.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// An IPv4 address in the forms inet_aton and browsers read: one to four parts, each
/// decimal, `0x` hex or `0`-led octal, the last filling the bytes the others leave
/// (`127.1`, `0x7f000001`, `2130706433`, `0177.0.0.1`). `None` when it is none of them.
fn numeric_ipv4(name: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for part in &parts {
        let hex = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X"));
        // Digits only: the standard library's parsers would also take a sign.
        let n = match hex {
            Some("") => 0,
            Some(digits) if digits.bytes().all(|b| b.is_ascii_hexdigit()) => {
                u64::from_str_radix(digits, 16).ok()?
            }
            Some(_) => return None,
            None if !part.bytes().all(|b| b.is_ascii_digit()) => return None,
            None if part.len() > 1 && part.starts_with('0') => {
                u64::from_str_radix(&part[1..], 8).ok()?
            }
            None => part.parse::<u64>().ok()?,
        };
        numbers.push(n);
    }
    let (last, leading) = numbers.split_last()?;
    if leading.iter().any(|n| *n > 255) || *last >= 1u64 << (8 * (5 - numbers.len())) {
        return None;
    }
    let value = leading
        .iter()
        .enumerate()
        .fold(*last, |v, (i, n)| v + (n << (8 * (3 - i))));
    Some(Ipv4Addr::from(value as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_that_end_in_a_number_are_ipv4_addresses_in_every_legacy_form() {
        for (text, ip) in [
            ("127.1", [127, 0, 0, 1]),
            ("0x7f.1", [127, 0, 0, 1]),
            ("0x7f000001", [127, 0, 0, 1]),
            ("2130706433", [127, 0, 0, 1]),
            ("0177.0.0.1", [127, 0, 0, 1]),
            ("0", [0, 0, 0, 0]),
            ("10.0x10.1", [10, 16, 0, 1]),
            ("192.168.257", [192, 168, 1, 1]),
        ] {
            assert_eq!(
                parse_host(text).unwrap(),
                Host::Ip(IpAddr::V4(Ipv4Addr::from(ip))),
                "{text}"
            );
        }
        for bad in [
            "256.1.1.1",
            "1.2.3.4.5",
            "4294967296",
            "08",
            "1..2",
            "0x1g.1",
        ] {
            assert!(parse_host(bad).is_err(), "{bad}");
        }
        // A number elsewhere than in the last label is a name.
        assert_eq!(
            parse_host("1.example").unwrap(),
            Host::Name("1.example".into())
        );
        assert_eq!(
            parse_host("0x7f.com").unwrap(),
            Host::Name("0x7f.com".into())
        );
    }

    fn name(n: &str, port: u16) -> Target {
        Target {
            host: Host::Name(n.to_owned()),
            port,
        }
    }

    fn ip(ip: IpAddr, port: u16) -> Target {
        Target {
            host: Host::Ip(ip),
            port,
        }
    }

    fn run(method: &str, uri: &str) -> Result<Classified, TargetError> {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        classify(&method, &uri.parse().unwrap())
    }

    #[test]
    fn classifies_the_three_forms() {
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let ok: &[(&str, &str, Classified)] = &[
            (
                "CONNECT",
                "example.com:443",
                Classified::Connect(name("example.com", 443)),
            ),
            (
                "CONNECT",
                "Example.COM.:443",
                Classified::Connect(name("example.com", 443)),
            ),
            ("CONNECT", "[::1]:8443", Classified::Connect(ip(v6, 8443))),
            ("CONNECT", "127.0.0.1:25", Classified::Connect(ip(lo, 25))),
            (
                "GET",
                "http://example.com/a?b",
                Classified::Forward(name("example.com", 80)),
            ),
            (
                "GET",
                "HTTP://Example.com:8080/",
                Classified::Forward(name("example.com", 8080)),
            ),
            ("POST", "http://[::1]:81/x", Classified::Forward(ip(v6, 81))),
            (
                "GET",
                "http://my_host.lan/",
                Classified::Forward(name("my_host.lan", 80)),
            ),
            ("GET", "/", Classified::Local),
            ("GET", "/proxy.pac", Classified::Local),
        ];
        for (method, uri, want) in ok {
            assert_eq!(&run(method, uri).unwrap(), want, "{method} {uri}");
        }
    }

    #[test]
    fn rejects_bad_targets_with_status_and_reason() {
        let bad: &[(&str, &str, u16, &str)] = &[
            ("CONNECT", "example.com", 400, "no port"),
            ("CONNECT", "example.com:", 400, "port is missing"),
            ("CONNECT", "example.com:abc", 400, "not a number"),
            ("CONNECT", "example.com:0", 400, "port 0"),
            ("CONNECT", "example.com:65536", 400, "out of range"),
            ("CONNECT", "user@example.com:443", 400, "user information"),
            (
                "CONNECT",
                "user:pw@example.com:443",
                400,
                "user information",
            ),
            ("CONNECT", ":443", 400, "host is empty"),
            ("CONNECT", "[zz]:443", 400, "not an IPv6"),
            ("CONNECT", "/path", 400, "authority-form"),
            ("CONNECT", "http://example.com:443/", 400, "authority-form"),
            ("GET", "http://127.0.0.1:99999/", 400, "out of range"),
            ("GET", "http://h:0/", 400, "port 0"),
            ("GET", "http://user:pw@h/", 400, "user information"),
            ("GET", "http://bad_host!/", 400, "not a valid host"),
            ("GET", "http://a..b/", 400, "not a valid host"),
            ("GET", "example.com:80", 400, "only valid with CONNECT"),
            ("GET", "*", 400, "not a request target"),
            ("GET", "https://example.com/", 501, "CONNECT"),
            ("GET", "ftp://example.com/", 501, "ftp scheme"),
        ];
        for (method, uri, status, fragment) in bad {
            let err = run(method, uri).unwrap_err();
            assert_eq!(err.status(), *status, "{method} {uri}: {err}");
            assert!(
                err.to_string().contains(fragment),
                "{method} {uri}: {err:?} lacks {fragment:?}"
            );
        }
    }

    #[test]
    fn authorities_hyper_would_pass_on_are_checked_too() {
        // http::Uri refuses these before a request reaches the proxy; the parser must too.
        for text in ["[::1:443", "[::1]x:443", "::1:443", "a b:80"] {
            assert!(parse_authority(text, None).is_err(), "{text}");
        }
    }

    #[test]
    fn address_text_is_what_display_writes() {
        use std::net::{Ipv4Addr, SocketAddr, SocketAddrV6};
        let mut ips: Vec<IpAddr> = [0, 9, 10, 99, 100, 199, 200, 255]
            .iter()
            .flat_map(|&a| [0, 5, 42, 255].map(|b| IpAddr::V4(Ipv4Addr::new(a, b, 7, 250))))
            .collect();
        let mut x: u32 = 0x1234_5678;
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            ips.push(IpAddr::V4(Ipv4Addr::from(x)));
        }
        ips.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
        ips.push("2001:db8::ff00:42:8329".parse().unwrap());
        ips.push("::ffff:192.168.1.9".parse().unwrap());
        for (i, ip) in ips.into_iter().enumerate() {
            assert_eq!(AddrText::ip(ip).as_str(), ip.to_string());
            let port = [0, 1, 80, 443, 3128, 9999, 10000, 65535][i % 8];
            let addr = SocketAddr::new(ip, port);
            assert_eq!(AddrText::socket(addr).as_str(), addr.to_string());
            assert_eq!(AddrText::socket(addr).to_string(), addr.to_string());
            assert_eq!(
                Host::Ip(ip).to_string(),
                match ip {
                    IpAddr::V4(_) => ip.to_string(),
                    IpAddr::V6(_) => format!("[{ip}]"),
                }
            );
        }
        // The longest IPv6 socket address, with a scope, is longer than the buffer.
        let long = SocketAddr::V6(SocketAddrV6::new(
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            65535,
            0,
            4_294_967_295,
        ));
        assert_eq!(AddrText::socket(long).as_str(), long.to_string());
    }

    #[test]
    fn host_header_omits_default_port() {
        // Against the Display forms, for names and addresses of both families.
        let hosts = [
            "a.b",
            "xn--bcher-kva.example",
            "127.0.0.1",
            "10.255.0.9",
            "::1",
            "2001:db8::42",
        ]
        .map(|text| match text.parse() {
            Ok(addr) => Host::Ip(addr),
            Err(_) => Host::Name(text.to_owned()),
        });
        for host in hosts {
            for port in [0, 1, 79, 80, 81, 443, 8080, 65535] {
                let target = Target {
                    host: host.clone(),
                    port,
                };
                let want = match port {
                    80 => host.to_string(),
                    _ => target.to_string(),
                };
                assert_eq!(target.host_header(), want);
            }
        }
        assert_eq!(name("a.b", 80).host_header(), "a.b");
        assert_eq!(name("a.b", 8080).host_header(), "a.b:8080");
        assert_eq!(
            ip(IpAddr::V6(Ipv6Addr::LOCALHOST), 80).host_header(),
            "[::1]"
        );
        assert_eq!(
            ip(IpAddr::V6(Ipv6Addr::LOCALHOST), 81).to_string(),
            "[::1]:81"
        );
    }
}
