//! Malformed request lines and targets, port-check bypass attempts, and numeric names that
//! resolve to loopback.

use super::*;

#[tokio::test]
async fn malformed_request_lines_and_targets_are_refused() {
    let origin = StrictOrigin::start().await;
    let denied = Counter::start().await;
    let (a, d) = (origin.addr.port(), denied.addr.port());
    let proxy = proxy_for(a, "[limits]\nmax_request_line = 1024\n").await;
    let long_path = "a".repeat(2000);
    let cases = [
        case(
            "garbage (a TLS ClientHello)",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
            Expect::StatusClose(400),
        ),
        case(
            "plain garbage line",
            "hello there\r\n\r\n",
            Expect::StatusClose(400),
        ),
        case(
            "missing version",
            format!("GET http://127.0.0.1:{d}/\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(400),
        ),
        case(
            "HTTP/1.2, read as HTTP/1.1 (to the denied port)",
            format!("GET http://127.0.0.1:{d}/ HTTP/1.2\r\nHost: x\r\n\r\n"),
            Expect::Status(403),
        ),
        case(
            "unknown version HTTP/2.0",
            format!("GET http://127.0.0.1:{d}/ HTTP/2.0\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(400),
        ),
        case(
            "unknown version HTTP/1.x",
            format!("GET http://127.0.0.1:{d}/ HTTP/1.x\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(400),
        ),
        case(
            "HTTP/2 preface on the HTTP/1 port",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            // hyper's HTTP/1 server has no answer for an HTTP/2 preface: it closes.
            Expect::Closed,
        ),
        case(
            "lowercase method (an extension method, forwarded)",
            format!("get http://127.0.0.1:{a}/lower HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::Status(200),
        ),
        case(
            "lowercase method to the denied port",
            format!("get http://127.0.0.1:{d}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::Status(403),
        ),
        case(
            "absurd method with a non-token byte",
            format!("G{{E}}T http://127.0.0.1:{d}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(400),
        ),
        case(
            "absurd 600-byte method to the denied port",
            format!(
                "{} http://127.0.0.1:{d}/ HTTP/1.1\r\nHost: x\r\n\r\n",
                "X".repeat(600)
            ),
            Expect::Status(403),
        ),
        case(
            "no target",
            "GET HTTP/1.1\r\nHost: x\r\n\r\n",
            Expect::StatusClose(400),
        ),
        case(
            "tabs between the parts",
            format!("GET\thttp://127.0.0.1:{d}/\tHTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(400),
        ),
        case(
            "NUL byte in the target",
            format!("GET http://127.0.0.1:{d}/\0 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(400),
        ),
        case(
            "NUL byte in the method",
            format!("GE\0T http://127.0.0.1:{d}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(400),
        ),
        case(
            "request line over limits.max_request_line",
            format!("GET http://127.0.0.1:{d}/{long_path} HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(414),
        ),
        case(
            "request line over the limit to an allowed port",
            format!("GET http://127.0.0.1:{a}/{long_path} HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(414),
        ),
        case(
            "CONNECT with a path",
            "CONNECT /path HTTP/1.1\r\nHost: x\r\n\r\n",
            Expect::StatusClose(400),
        ),
        case(
            "CONNECT with a URL",
            format!("CONNECT http://127.0.0.1:{a}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(400),
        ),
        case(
            "CONNECT without a port",
            "CONNECT 127.0.0.1 HTTP/1.1\r\nHost: x\r\n\r\n",
            Expect::StatusClose(400),
        ),
        case(
            "CONNECT with an empty port",
            "CONNECT 127.0.0.1: HTTP/1.1\r\nHost: x\r\n\r\n",
            Expect::StatusClose(400),
        ),
        case(
            "CONNECT with an asterisk",
            "CONNECT * HTTP/1.1\r\nHost: x\r\n\r\n",
            Expect::StatusClose(400),
        ),
        case(
            "authority-form with GET",
            format!("GET 127.0.0.1:{a} HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(400),
        ),
        case(
            "authority-form with POST to the denied port",
            format!("POST 127.0.0.1:{d} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"),
            Expect::StatusClose(400),
        ),
        case(
            "asterisk-form OPTIONS",
            "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            Expect::StatusClose(400),
        ),
        case(
            "https:// URL without CONNECT",
            format!("GET https://127.0.0.1:{a}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::Status(501),
        ),
        case(
            "a scheme the proxy does not speak",
            format!("GET gopher://127.0.0.1:{d}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::Status(501),
        ),
    ];
    run_table("malformed request lines", proxy.addr, &cases, &denied).await;
    // Only the lowercase method reached the origin, as the method it is.
    let seen = origin.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert!(
        seen[0].head().unwrap().starts_with("get /lower HTTP/1.1"),
        "{seen:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Port-check bypass attempts
// ---------------------------------------------------------------------------------------------

/// Targets that try to reach the denied port `d` past a proxy that allows only `a`, each
/// with the status it must get: `400` for what the target parser refuses, `403` for what it
/// reads as the denied port (or a host it will not reach).
/// `%3X` for each digit: a port spelled in percent-encoding.
fn percent_encoded(digits: &str) -> String {
    digits.chars().map(|c| format!("%3{c}")).collect()
}

fn bypass_targets(a: u16, d: u16) -> Vec<(String, u16)> {
    vec![
        // userinfo
        (format!("user@127.0.0.1:{d}"), 400),
        (format!("user:pw@127.0.0.1:{d}"), 400),
        (format!("127.0.0.1:{a}@127.0.0.1:{d}"), 400),
        (format!("127.0.0.1:{d}@127.0.0.1:{a}"), 400),
        // brackets
        (format!("[127.0.0.1]:{d}"), 400),
        (format!("[::ffff:127.0.0.1]:{d}"), 403),
        (format!("[::ffff:7f00:1]:{d}"), 403),
        (format!("[::1]:{d}"), 403),
        (format!("[::1%25lo]:{d}"), 400),
        (format!("[127.0.0.1:{d}]"), 400),
        // leading zeros
        (format!("127.0.0.1:0{d}"), 403),
        (format!("127.0.0.1:0000{d}"), 403),
        // signs
        (format!("127.0.0.1:+{d}"), 400),
        (format!("127.0.0.1:-{d}"), 400),
        // overflow: a parser that wraps would land on the denied port
        (format!("127.0.0.1:{}", 65536 + u32::from(d)), 400),
        (format!("127.0.0.1:{}", 4_294_967_296 + u64::from(d)), 400),
        ("127.0.0.1:99999999999999999999".to_owned(), 400),
        // percent-encoding
        (format!("127.0.0.1%3a{d}"), 400),
        (format!("127.0.0.1%3A{d}"), 400),
        (format!("%31%32%37.0.0.1:{d}"), 400),
        (
            format!("127.0.0.1:{}", percent_encoded(&d.to_string())),
            400,
        ),
        // trailing dots
        (format!("localhost.:{d}"), 403),
        (format!("127.0.0.1.:{d}"), 403),
        (format!("localhost..:{d}"), 400),
        // double ports
        (format!("127.0.0.1:{a}:{d}"), 400),
        (format!("127.0.0.1:{d}:{a}"), 400),
        // IPv4 forms getaddrinfo would accept: names to the parser, refused by port first
        (format!("2130706433:{d}"), 403),
        (format!("0x7f.1:{d}"), 403),
        (format!("0x7f000001:{d}"), 403),
        (format!("0177.0.0.1:{d}"), 403),
        (format!("127.1:{d}"), 403),
        (format!("0:{d}"), 403),
        // junk after the port
        (format!("127.0.0.1:{d}abc"), 400),
        (format!("127.0.0.1:{d}#"), 400),
        (format!("127.0.0.1:{d}?"), 400),
        // the baseline: the plain denied port
        (format!("127.0.0.1:{d}"), 403),
        (format!("localhost:{d}"), 403),
    ]
}

#[tokio::test]
async fn port_check_bypass_attempts_never_reach_the_denied_port() {
    let origin = StrictOrigin::start().await;
    let denied = Counter::start().await;
    let (a, d) = (origin.addr.port(), denied.addr.port());
    let proxy = proxy_for(a, "").await;
    let mut cases = Vec::new();
    for (target, status) in bypass_targets(a, d) {
        let expect = if status == 400 {
            Expect::StatusClose(400)
        } else {
            Expect::Status(status)
        };
        cases.push(case(
            format!("CONNECT {target}"),
            format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"),
            expect,
        ));
        // In a URL, `?` ends the authority (what precedes it is the target, the denied
        // port), and a `#fragment` is refused outright.
        let url_expect = match status {
            _ if target.ends_with('?') => Expect::Status(403),
            400 => Expect::StatusClose(400),
            s => Expect::Status(s),
        };
        cases.push(case(
            format!("GET http://{target}/"),
            format!("GET http://{target}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            url_expect,
        ));
    }
    // Whitespace cannot sit inside a request target: hyper refuses the request line.
    for (what, target) in [
        ("space before the port", format!("127.0.0.1 :{d}")),
        ("space after the colon", format!("127.0.0.1: {d}")),
        ("tab before the port", format!("127.0.0.1\t:{d}")),
        ("vertical tab in the host", format!("127.0.0.1\x0b:{d}")),
    ] {
        cases.push(case(
            format!("CONNECT {what}"),
            format!("CONNECT {target} HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(400),
        ));
        cases.push(case(
            format!("GET URL with {what}"),
            format!("GET http://{target}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(400),
        ));
    }
    // Other ways of naming the denied port in a plain-HTTP request.
    cases.extend([
        case(
            "allowed URL, Host header naming the denied port",
            format!("GET http://127.0.0.1:{a}/host-header HTTP/1.1\r\nHost: 127.0.0.1:{d}\r\n\r\n"),
            Expect::Status(200),
        ),
        case(
            "origin-form, Host header naming the denied port",
            format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{d}\r\n\r\n"),
            // The proxy's own page: served locally, nothing dialled.
            Expect::Status(200),
        ),
        case(
            "origin-form path that looks like an authority",
            format!("GET //127.0.0.1:{d}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::Status(404),
        ),
        case(
            "upper-case scheme",
            format!("GET HTTP://127.0.0.1:{d}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::Status(403),
        ),
        case(
            "scheme with one slash",
            format!("GET http:/127.0.0.1:{d}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(400),
        ),
        case(
            "backslash before an at sign",
            format!("GET http://127.0.0.1:{a}\\@127.0.0.1:{d}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(400),
        ),
        case(
            "fragment hiding an at sign",
            format!("GET http://127.0.0.1:{a}#@127.0.0.1:{d}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(400),
        ),
        case(
            "absolute URL on HTTP/1.0 to the denied port",
            format!("GET http://127.0.0.1:{d}/ HTTP/1.0\r\n\r\n"),
            Expect::Status(403),
        ),
    ]);
    run_table("port-check bypass attempts", proxy.addr, &cases, &denied).await;
    // The one allowed request reached the allowed origin with a Host header of its target.
    let seen = origin.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let head = seen[0].head().unwrap();
    assert!(head.starts_with("GET /host-header HTTP/1.1"), "{head}");
    assert_eq!(
        header_value(head, "host"),
        Some(format!("127.0.0.1:{a}")),
        "{head}"
    );
}

#[tokio::test]
async fn numeric_names_that_resolve_to_loopback_meet_the_address_guard() {
    // A strict proxy (no loopback destinations) whose port list allows the Counter's port:
    // only the address guard, applied after resolution, stands between these names and it.
    // Every name here is numeric to getaddrinfo (inet_aton forms) or in /etc/hosts: no DNS.
    let denied = Counter::start().await;
    let p = denied.addr.port();
    let proxy = Proxy::start(&format!("[ports]\nhttp = [{p}]\nconnect = [{p}]\n")).await;
    let mut cases = Vec::new();
    for host in [
        "127.0.0.1",
        "127.0.0.1.",
        "2130706433",
        "0x7f.1",
        "0x7f000001",
        "0177.0.0.1",
        "127.1",
        "0x7f.0.0.1",
        "localhost",
        "localhost.",
        "LOCALHOST",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "[64:ff9b:1:7f00:0:100::]",
        "[2002:7f00:1::]",
        "[::1]",
        "0",
        "0.0.0.0",
        "[::]",
    ] {
        cases.push(case(
            format!("CONNECT {host}:P"),
            format!("CONNECT {host}:{p} HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::Status(403),
        ));
        cases.push(case(
            format!("GET http://{host}:P/"),
            format!("GET http://{host}:{p}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::Status(403),
        ));
    }
    run_table("numeric names to loopback", proxy.addr, &cases, &denied).await;
    let records = proxy.wait_records(cases.len()).await;
    for r in &records {
        let rule = r.rule.to_string();
        assert!(
            rule == "destinations.loopback" || rule == "destinations.unspecified",
            "{r:#?}"
        );
    }
}
