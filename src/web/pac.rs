//! The proxy auto-config (PAC) file served at `/proxy.pac` and `/wpad.dat`: a JavaScript
//! `FindProxyForURL(url, host)` generated from the `[pac]` settings. It owns the text of that
//! file and the choice of the proxy address it names; serving it is [`crate::proxy::pages`]' job.
//!
//! What the file answers:
//! - `DIRECT` for plain host names (`intranet`), `localhost` (and `*.localhost`), loopback
//!   literals, and every `[pac] direct` pattern: a name, a `.domain` (the domain and every
//!   name under it) or a network, which matches only hosts written as addresses (IPv6
//!   networks only in browsers that offer `isInNetEx`, such as Chromium and Windows).
//! - Otherwise `PROXY a:3128; PROXY b:3128`: the `[pac] proxies` in order, so browsers fail
//!   over from one to the next, or this proxy alone. There is deliberately no trailing
//!   `DIRECT`: on a network that requires the proxy, a browser that cannot reach it must show
//!   an error, not quietly go around the proxy (and its rules and records).
//! - With `pac.socks`, `SOCKS5 a:3128` for each of them after the `PROXY` entries: a fallback
//!   for clients that use the PAC for traffic that is not HTTP (the proxy's port answers
//!   SOCKS5 too).
//!
//! The file never resolves a name: it calls neither `dnsResolve` nor `isResolvable`, and
//! network patterns are only tried on hosts that are already addresses. Browsers run the PAC
//! for every request, so a lookup there would slow every page and send each visited name to
//! the resolver from the client itself, even for hosts the proxy would later refuse. A LAN
//! whose own hosts have names should list their domain (`.lan`) in `direct`.
//!
//! Every text embedded in the JavaScript is escaped by [`js_string`]; the address clients used
//! comes from a request header, so [`proxy_authority`] checks it before it gets that far.
//! Pure: no I/O, no clock, so the same settings and address always give the same bytes.

use std::fmt::Write as _;
use std::net::SocketAddr;

use ipnet::IpNet;

use crate::config::PacSettings;
use crate::core::hosts::HostPattern;
use crate::core::target::{parse_authority, Host, Target};

/// The Content-Type of a PAC file, as browsers expect it.
pub const CONTENT_TYPE: &str = "application/x-ns-proxy-autoconfig";

/// The paths the PAC file is served at: the usual one and the one WPAD asks for.
pub const PATHS: [&str; 2] = ["/proxy.pac", "/wpad.dat"];

/// The PAC file for `settings`, as fetched by a client that reached this proxy at
/// `arrived_on` (`host:port`, as returned by [`proxy_authority`]).
pub fn render(settings: &PacSettings, arrived_on: &str) -> String {
    let mut out = String::with_capacity(1024);
    header(&mut out);
    out.push_str(concat!(
        "function FindProxyForURL(url, host) {\n",
        "  host = host.toLowerCase();\n",
        "  if (host.charAt(host.length - 1) == \".\") host = host.substring(0, host.length - 1);\n",
        "  if (host.charAt(0) == \"[\" && host.charAt(host.length - 1) == \"]\")\n",
        "    host = host.substring(1, host.length - 1);\n",
        "  var ipv6 = host.indexOf(\":\") >= 0;\n",
        "  // A dotted quad of octets 0-255, so isInNet never has to resolve a name.\n",
        "  var ipv4 = !ipv6 &&\n",
        "    /^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$/.test(host);\n",
        "  var hasInNetEx = typeof isInNetEx == \"function\";\n",
        "\n",
        "  // Plain host names, localhost and loopback are always reached directly.\n",
        "  // (An IPv6 literal has no dot either, so it is not a plain host name.)\n",
        "  if (!ipv6 && isPlainHostName(host)) return \"DIRECT\";\n",
        "  if (host == \"localhost\" || dnsDomainIs(host, \".localhost\")) return \"DIRECT\";\n",
        "  if (ipv4 && isInNet(host, \"127.0.0.0\", \"255.0.0.0\")) return \"DIRECT\";\n",
        "  if (ipv6 && (host == \"::1\" || (hasInNetEx && isInNetEx(host, \"::1/128\")))) return \"DIRECT\";\n",
    ));

    let names: Vec<String> = settings
        .direct
        .iter()
        .filter_map(|pattern| match pattern {
            HostPattern::Exact(name) => Some(format!("host == {}", js_string(name))),
            HostPattern::Domain(name) => Some(format!(
                "dnsDomainIs(host, {}) || host == {}",
                js_string(&format!(".{name}")),
                js_string(name)
            )),
            HostPattern::Network(_) => None,
        })
        .collect();
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for pattern in &settings.direct {
        match pattern {
            HostPattern::Network(IpNet::V4(net)) => v4.push(format!(
                "isInNet(host, {}, {})",
                js_string(&net.network().to_string()),
                js_string(&net.netmask().to_string())
            )),
            HostPattern::Network(IpNet::V6(net)) => v6.push(format!(
                "isInNetEx(host, {})",
                js_string(&net.trunc().to_string())
            )),
            _ => {}
        }
    }
    if names.is_empty() && v4.is_empty() && v6.is_empty() {
        out.push_str("\n  // [pac] direct is empty: everything else goes through the proxy.\n");
    } else {
        out.push_str("\n  // [pac] direct: names and domains, then networks (addresses only).\n");
    }
    for condition in &names {
        let _ = writeln!(out, "  if ({condition}) return \"DIRECT\";");
    }
    if !v4.is_empty() {
        out.push_str("  if (ipv4) {\n");
        for condition in &v4 {
            let _ = writeln!(out, "    if ({condition}) return \"DIRECT\";");
        }
        out.push_str("  }\n");
    }
    if !v6.is_empty() {
        out.push_str("  if (ipv6 && hasInNetEx) {\n");
        for condition in &v6 {
            let _ = writeln!(out, "    if ({condition}) return \"DIRECT\";");
        }
        out.push_str("  }\n");
    }

    out.push_str("\n  // Everything else: the proxies in order, and no DIRECT fallback.\n");
    let _ = writeln!(
        out,
        "  return {};\n}}",
        js_string(&proxy_list(settings, arrived_on))
    );
    out
}

/// The comment at the top of the file: deterministic, so the same settings give the same bytes.
fn header(out: &mut String) {
    let _ = write!(
        out,
        "// Proxy auto-config (PAC) for this network, generated by Portcullis {}\n\
         // from the [pac] section of its configuration and the address this file was fetched\n\
         // from. It is made anew for each request: change the configuration, not this file.\n\
         // DIRECT: plain host names, localhost, loopback and the [pac] direct patterns.\n\
         // Everything else goes through the proxies listed at the end, in order, with no\n\
         // DIRECT fallback. Host names are never resolved here (no dnsResolve, no isResolvable).\n\n",
        env!("CARGO_PKG_VERSION")
    );
}

/// `PROXY a:1; PROXY b:2`: the configured proxies, or this proxy as clients reach it; with
/// `pac.socks`, then `SOCKS5 a:1; SOCKS5 b:2` (the same ports answer SOCKS5); with `pac.tls`,
/// `HTTPS a:T; HTTPS b:T` first (this proxy's TLS port). A file fetched over a TLS listener
/// offers this proxy's plain port in its `PROXY` entries, or none when it has no plain
/// listener.
fn proxy_list(settings: &PacSettings, arrived_on: &str) -> String {
    let hosts = if settings.proxies.is_empty() {
        vec![match &settings.proxy_host {
            Some(host) => with_port(host, arrived_on),
            None => arrived_on.to_owned(),
        }]
    } else {
        settings.proxies.clone()
    };
    // This proxy reached on its TLS port: the plain entries name its plain port, if any.
    let over_tls = settings.tls_port.is_some() && port_of(arrived_on) == settings.tls_port;
    let proxies = match (settings.proxies.is_empty() && over_tls, settings.plain_port) {
        (false, _) => hosts.clone(),
        (true, Some(plain)) => hosts.iter().map(|h| on_port(h, plain)).collect(),
        (true, None) => Vec::new(),
    };
    let socks: &[&str] = if settings.socks { &["SOCKS5"] } else { &[] };
    // With `pac.tls`, each proxy's TLS port first: the same host, this proxy's TLS port.
    let tls_port = settings.tls_port.filter(|_| settings.tls);
    let tls = tls_port.into_iter().flat_map(|port| {
        hosts
            .iter()
            .map(move |p| format!("HTTPS {}", on_port(p, port)))
    });
    tls.chain(
        ["PROXY"]
            .iter()
            .chain(socks)
            .flat_map(|kind| proxies.iter().map(move |p| format!("{kind} {p}"))),
    )
    .collect::<Vec<_>>()
    .join("; ")
}

/// The port of `authority` (`host:port`), if it names one.
fn port_of(authority: &str) -> Option<u16> {
    parse_authority(authority, None).ok().map(|t| t.port)
}

/// `proxy` (`host:port`) with `port` instead of its own.
fn on_port(proxy: &str, port: u16) -> String {
    match parse_authority(proxy, None) {
        Ok(target) => display(&Target { port, ..target }),
        Err(_) => proxy.to_owned(),
    }
}

/// `host` (from `[pac] proxy_host`) with its own port, or else the port of `arrived_on`.
fn with_port(host: &str, arrived_on: &str) -> String {
    let port = arrived_on
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(3128);
    // A bare IPv6 address: its colons are not a port.
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return SocketAddr::new(ip.to_canonical(), port).to_string();
    }
    if let Ok(target) = parse_authority(host, None) {
        return display(&target);
    }
    match parse_authority(host, Some(port)) {
        Ok(target) => display(&target),
        // Validated at start-up; never worse than what the owner wrote.
        Err(_) => format!("{host}:{port}"),
    }
}

/// `host:port` with an IPv4-mapped IPv6 address shown as the IPv4 address it is.
fn display(target: &Target) -> String {
    match target.host {
        Host::Ip(ip) => SocketAddr::new(ip.to_canonical(), target.port).to_string(),
        Host::Name(_) => target.to_string(),
    }
}

/// The `host:port` clients used to reach this proxy: `named` (the request's authority or
/// `Host` header, which the client controls) when it is a valid host name or address with an
/// optional port (the port of `local` when left out), else `local`, the address the request
/// arrived on. The result holds only letters, digits and `.-_:[]`.
pub fn proxy_authority(named: Option<&str>, local: SocketAddr) -> String {
    let fallback = || SocketAddr::new(local.ip().to_canonical(), local.port()).to_string();
    let Some(text) = named.map(str::trim).filter(|t| !t.is_empty()) else {
        return fallback();
    };
    let safe = text.len() <= 260
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b));
    if !safe {
        return fallback();
    }
    match parse_authority(text, Some(local.port())) {
        Ok(target) if !is_unspecified(&target.host) => display(&target),
        _ => fallback(),
    }
}

/// `0.0.0.0` or `::` names no host a client could reach.
fn is_unspecified(host: &Host) -> bool {
    matches!(host, Host::Ip(ip) if ip.to_canonical().is_unspecified())
}

/// `text` as a double-quoted JavaScript string literal that holds exactly `text`: quotes,
/// backslashes, control characters, line and paragraph separators and every other non-ASCII
/// character are escaped, so the literal is plain ASCII on one line.
pub fn js_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // `</script>` and `<!--` are harmless in a PAC, but the file may be shown in a page.
            '<' | '>' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            ' '..='~' => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(direct: &[&str], proxies: &[&str], proxy_host: Option<&str>) -> PacSettings {
        PacSettings {
            direct: direct
                .iter()
                .map(|p| HostPattern::parse(p).unwrap())
                .collect(),
            proxies: proxies.iter().map(|p| p.to_string()).collect(),
            proxy_host: proxy_host.map(str::to_owned),
            socks: false,
            tls: false,
            tls_port: None,
            plain_port: Some(3128),
        }
    }

    #[test]
    fn tls_entries_come_first_on_the_tls_port() {
        let mut s = settings(&[], &[], None);
        s.tls_port = Some(3443);
        // A TLS listener without `pac.tls`: no HTTPS entries.
        assert_eq!(proxy_list(&s, "10.0.0.1:3128"), "PROXY 10.0.0.1:3128");
        s.tls = true;
        assert_eq!(
            proxy_list(&s, "10.0.0.1:3128"),
            "HTTPS 10.0.0.1:3443; PROXY 10.0.0.1:3128"
        );
        // Fetched over the TLS listener: the PROXY entries have the plain listener's port.
        assert_eq!(
            proxy_list(&s, "proxy.lan:3443"),
            "HTTPS proxy.lan:3443; PROXY proxy.lan:3128"
        );
        s.plain_port = None;
        assert_eq!(proxy_list(&s, "proxy.lan:3443"), "HTTPS proxy.lan:3443");
        let mut s = settings(&[], &["a.lan:3128", "[fd00::2]:8080"], None);
        s.tls_port = Some(3443);
        s.tls = true;
        s.socks = true;
        assert_eq!(
            proxy_list(&s, "x:3128"),
            "HTTPS a.lan:3443; HTTPS [fd00::2]:3443; PROXY a.lan:3128; PROXY [fd00::2]:8080; SOCKS5 a.lan:3128; SOCKS5 [fd00::2]:8080"
        );
    }

    #[test]
    fn socks_entries_follow_the_proxy_entries() {
        let mut s = settings(&[], &[], None);
        s.socks = true;
        assert_eq!(
            proxy_list(&s, "10.0.0.1:3128"),
            "PROXY 10.0.0.1:3128; SOCKS5 10.0.0.1:3128"
        );
        s.proxies = vec!["a.lan:3128".into(), "b.lan:8080".into()];
        assert_eq!(
            proxy_list(&s, "10.0.0.1:3128"),
            "PROXY a.lan:3128; PROXY b.lan:8080; SOCKS5 a.lan:3128; SOCKS5 b.lan:8080"
        );
        assert!(render(&s, "10.0.0.1:3128").contains(
            "return \"PROXY a.lan:3128; PROXY b.lan:8080; SOCKS5 a.lan:3128; SOCKS5 b.lan:8080\";"
        ));
    }

    fn local() -> SocketAddr {
        "192.168.1.2:3128".parse().unwrap()
    }

    #[test]
    fn each_pattern_kind_becomes_its_test() {
        let pac = render(
            &settings(
                &["printer.lan", ".corp.example", "10.0.0.0/8", "fd00::/8"],
                &[],
                None,
            ),
            "proxy.lan:3128",
        );
        assert!(pac.starts_with("// Proxy auto-config"), "{pac}");
        assert!(pac.contains("function FindProxyForURL(url, host) {"));
        assert!(pac.contains("host = host.toLowerCase();"));
        assert!(pac.contains("  if (host == \"printer.lan\") return \"DIRECT\";\n"));
        assert!(pac.contains(
            "  if (dnsDomainIs(host, \".corp.example\") || host == \"corp.example\") return \"DIRECT\";\n"
        ));
        assert!(pac.contains(
            "  if (ipv4) {\n    if (isInNet(host, \"10.0.0.0\", \"255.0.0.0\")) return \"DIRECT\";\n  }\n"
        ));
        assert!(pac.contains(
            "  if (ipv6 && hasInNetEx) {\n    if (isInNetEx(host, \"fd00::/8\")) return \"DIRECT\";\n  }\n"
        ));
        assert!(
            pac.ends_with("  return \"PROXY proxy.lan:3128\";\n}\n"),
            "{pac}"
        );
        // The dotted-quad guard comes before any isInNet, and names are never resolved.
        assert!(pac.find("var ipv4").unwrap() < pac.find("isInNet(").unwrap());
        assert!(!pac.contains("dnsResolve(") && !pac.contains("isResolvable("));
        assert!(!pac.contains("myIpAddress"));
    }

    #[test]
    fn networks_are_written_by_their_prefix() {
        let pac = render(
            &settings(
                &["192.168.1.77/20", "172.16.0.5", "fd12:3456::1/32"],
                &[],
                None,
            ),
            "p:1",
        );
        assert!(pac.contains("isInNet(host, \"192.168.0.0\", \"255.255.240.0\")"));
        assert!(pac.contains("isInNet(host, \"172.16.0.5\", \"255.255.255.255\")"));
        assert!(pac.contains("isInNetEx(host, \"fd12:3456::/32\")"));
    }

    #[test]
    fn an_empty_direct_list_leaves_only_the_built_in_exceptions() {
        let pac = render(&settings(&[], &[], None), "10.0.0.1:3128");
        assert!(pac.contains("[pac] direct is empty"));
        assert!(!pac.contains("if (ipv4) {"));
        assert!(!pac.contains("if (ipv6 && hasInNetEx) {"));
        assert!(pac.contains("isPlainHostName(host)"));
        assert!(pac.contains("return \"PROXY 10.0.0.1:3128\";"));
    }

    #[test]
    fn proxies_keep_their_order_and_have_no_direct_fallback() {
        let pac = render(
            &settings(
                &[],
                &["b.lan:3128", "a.lan:8080", "10.0.0.9:3128"],
                Some("x.lan"),
            ),
            "proxy.lan:3128",
        );
        assert!(pac.contains("return \"PROXY b.lan:3128; PROXY a.lan:8080; PROXY 10.0.0.9:3128\";"));
        assert!(!pac.contains("x.lan"), "proxies win over proxy_host");
        let last = pac.lines().rfind(|l| l.contains("return")).unwrap();
        assert!(!last.contains("DIRECT"), "{last}");
    }

    #[test]
    fn proxy_host_takes_the_port_clients_used_unless_it_has_one() {
        let s = settings(&[], &[], Some("Gateway.LAN"));
        assert!(render(&s, "10.0.0.1:8080").contains("return \"PROXY gateway.lan:8080\";"));
        let s = settings(&[], &[], Some("gateway.lan:3130"));
        assert!(render(&s, "10.0.0.1:8080").contains("return \"PROXY gateway.lan:3130\";"));
        let s = settings(&[], &[], Some("fd00::1"));
        assert_eq!(proxy_list(&s, "[fd00::2]:3128"), "PROXY [fd00::1]:3128");
        let s = settings(&[], &[], Some("[fd00::1]:81"));
        assert_eq!(proxy_list(&s, "x:3128"), "PROXY [fd00::1]:81");
    }

    #[test]
    fn the_same_settings_give_the_same_bytes() {
        let s = settings(&[".lan", "10.0.0.0/8"], &["a:1", "b:2"], None);
        assert_eq!(render(&s, "p:1"), render(&s, "p:1"));
        assert!(render(&s, "p:1").contains(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn strings_are_escaped_for_javascript() {
        let cases: &[(&str, &str)] = &[
            ("plain.lan", "\"plain.lan\""),
            ("a\"b", "\"a\\\"b\""),
            ("a'b", "\"a\\'b\""),
            ("back\\slash", "\"back\\\\slash\""),
            ("line\nbreak\r\t", "\"line\\nbreak\\r\\t\""),
            ("\u{0}\u{1f}\u{7f}", "\"\\u0000\\u001f\\u007f\""),
            ("</script>", "\"\\x3c/script\\x3e\""),
            ("\u{2028}\u{2029}", "\"\\u2028\\u2029\""),
            ("bücher", "\"b\\u00fccher\""),
            ("😀", "\"\\ud83d\\ude00\""),
            ("", "\"\""),
        ];
        for (text, want) in cases {
            let got = js_string(text);
            assert_eq!(got, *want, "{text:?}");
            assert!(got.is_ascii() && !got.contains('\n'));
        }
    }

    #[test]
    fn the_address_clients_used_is_checked_before_use() {
        let cases: &[(Option<&str>, &str)] = &[
            (Some("proxy.lan:3128"), "proxy.lan:3128"),
            (Some("Proxy.LAN."), "proxy.lan:3128"),
            (Some("proxy.lan"), "proxy.lan:3128"),
            (Some("10.0.0.1:8080"), "10.0.0.1:8080"),
            (Some("[fd00::1]:8080"), "[fd00::1]:8080"),
            (Some("[::ffff:10.0.0.1]:8080"), "10.0.0.1:8080"),
            (None, "192.168.1.2:3128"),
            (Some(""), "192.168.1.2:3128"),
            (Some("evil\"); return \"DIRECT"), "192.168.1.2:3128"),
            (Some("a b:1"), "192.168.1.2:3128"),
            (Some("user@proxy.lan:1"), "192.168.1.2:3128"),
            (Some("proxy.lan:0"), "192.168.1.2:3128"),
            (Some("proxy.lan:99999"), "192.168.1.2:3128"),
            (Some("proxy.lan:http"), "192.168.1.2:3128"),
            (Some("fd00::1"), "192.168.1.2:3128"),
            (Some("[fd00::1%eth0]:1"), "192.168.1.2:3128"),
            (Some("0.0.0.0:3128"), "192.168.1.2:3128"),
            (Some("[::]:3128"), "192.168.1.2:3128"),
            (Some("a..b:1"), "192.168.1.2:3128"),
            (Some("bücher.lan"), "192.168.1.2:3128"),
        ];
        for (named, want) in cases {
            assert_eq!(proxy_authority(*named, local()), *want, "{named:?}");
        }
        let long = format!("{}.lan", "a.".repeat(200));
        assert_eq!(proxy_authority(Some(&long), local()), "192.168.1.2:3128");
        let mapped: SocketAddr = "[::ffff:192.168.1.2]:3128".parse().unwrap();
        assert_eq!(proxy_authority(None, mapped), "192.168.1.2:3128");
    }
}
