//! SOCKS5 (and 4a) on the proxy's own port: curl as mail, ssh and FTP clients use it; raw
//! negotiations byte by byte (bad versions, short method lists, address types, BIND, the
//! reply codes); the log-in (RFC 1929); UDP ASSOCIATE; and the records.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::curl::have_curl;
use crate::support::*;

/// A proxy that reaches loopback origins on `ports` by CONNECT and SOCKS, with `extra`
/// configuration after.
pub(crate) async fn proxy(ports: &[u16], extra: &str) -> Proxy {
    Proxy::start(&format!("{}{extra}", loopback_config(ports, ports))).await
}

/// What the proxy sends until it closes or `WAIT` passes (at most `max` bytes).
pub(crate) async fn read_upto(stream: &mut TcpStream, max: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < max {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// Greets without authentication and sends `request`; the greeting's answer and the reply.
pub(crate) async fn socks5(proxy: SocketAddr, request: &[u8]) -> (TcpStream, Vec<u8>, Vec<u8>) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let greeting = read_upto(&mut s, 2).await;
    s.write_all(request).await.unwrap();
    let reply = read_upto(&mut s, 10).await;
    (s, greeting, reply)
}

/// `05 CMD 00 01 127.0.0.1 PORT`.
pub(crate) fn to_loopback(command: u8, port: u16) -> Vec<u8> {
    let mut r = vec![5, command, 0, 1, 127, 0, 0, 1];
    r.extend_from_slice(&port.to_be_bytes());
    r
}

/// `05 01 00 03 NAME PORT`.
pub(crate) fn to_name(name: &str, port: u16) -> Vec<u8> {
    let mut r = vec![5, 1, 0, 3, name.len() as u8];
    r.extend_from_slice(name.as_bytes());
    r.extend_from_slice(&port.to_be_bytes());
    r
}

pub(crate) fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["--silent", "--max-time", "10", "--noproxy", ""])
        .args(args)
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .output()
        .expect("curl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_socks5_and_socks4a_on_the_proxy_port() {
    if !have_curl() {
        return;
    }
    let web = HttpOrigin::start().await;
    let w = web.addr.port();
    let p = proxy(&[w], "[socks]\nv4 = true\n").await;
    let at = p.addr.to_string();
    let url = |path: &str| format!("http://localhost:{w}{path}");
    let (ok, body) = curl(&["--socks5-hostname", &at, &url("/a")]);
    assert!(ok && body.ends_with("/a"), "{body}");
    let (ok, body) = curl(&["--socks5", &at, &format!("http://127.0.0.1:{w}/b")]);
    assert!(ok && body.ends_with("/b"), "{body}");
    let (ok, body) = curl(&["--socks4a", &at, &url("/c")]);
    assert!(ok && body.ends_with("/c"), "{body}");
    // Plain HTTP on the same port still works.
    let (ok, body) = curl(&["-x", &format!("http://{at}"), &url("/d")]);
    assert!(ok && body.ends_with("/d"), "{body}");
    let records = p.wait_records(4).await;
    let methods: Vec<&str> = records.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["SOCKS5", "SOCKS5", "SOCKS4", "GET"]);
    for r in &records[..3] {
        assert_eq!((r.status, r.port), (200, w), "{r:?}");
        assert!(r.rule == "ports.connect", "{r:?}");
        assert!(r.bytes_up > 0 && r.bytes_down > 0, "{r:?}");
    }
    assert_eq!(records[0].host, "localhost");

    // With [auth]: the right password through RFC 1929, the wrong one refused.
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("ann", "ann pw")]);
    let authed = proxy(&[w], &format!("[auth]\nhtpasswd = {users:?}\n")).await;
    let at = authed.addr.to_string();
    let (ok, body) = curl(&["--socks5-hostname", &at, "-U", "ann:ann pw", &url("/in")]);
    assert!(ok && body.ends_with("/in"), "{body}");
    let (ok, body) = curl(&["--socks5-hostname", &at, "-U", "ann:wrong", &url("/out")]);
    assert!(!ok && body.is_empty(), "{body}");
    let (ok, _) = curl(&["--socks5-hostname", &at, &url("/none")]);
    assert!(!ok);
    let records = authed.wait_records(3).await;
    assert_eq!(records[0].user.as_deref(), Some("ann"));
    assert_eq!(records[1].status, 407, "{:?}", records[1]);
    assert!(records[1].rule == "auth", "{:?}", records[1]);
}

#[tokio::test]
async fn raw_socks5_negotiations_get_the_reply_that_says_what_happened() {
    let echo = echo_origin().await;
    let refused = Counter::start().await;
    let p = proxy(&[echo.port()], "").await;

    // A whole exchange: IPv4 address type, bytes both ways, BND is the outbound socket.
    let (mut s, greeting, reply) = socks5(p.addr, &to_loopback(1, echo.port())).await;
    assert_eq!(greeting, [5, 0]);
    assert_eq!(reply[..4], [5, 0, 0, 1], "{reply:?}");
    assert_eq!(reply[4..8], [127, 0, 0, 1]);
    assert_ne!(u16::from_be_bytes([reply[8], reply[9]]), 0);
    s.write_all(b"ping").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_upto(&mut s, 100).await, b"ping");

    // A greeting and a request trickled byte by byte.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let mut all = vec![5u8, 2, 2, 0];
    all.extend_from_slice(&to_name("localhost", echo.port()));
    for (i, b) in all.iter().enumerate() {
        s.write_all(&[*b]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
        if i == 3 {
            assert_eq!(read_upto(&mut s, 2).await, [5, 0]);
        }
    }
    let reply = read_upto(&mut s, 10).await;
    assert_eq!(reply[..2], [5, 0], "{reply:?}");
    s.write_all(b"slow").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_upto(&mut s, 100).await, b"slow");

    // A port not allowed: 0x02, never dialled, the record names the list.
    let (_s, _, reply) = socks5(p.addr, &to_name("localhost", refused.addr.port())).await;
    assert_eq!(reply[..2], [5, 2], "{reply:?}");
    // Replies by cause: BIND, UDP ASSOCIATE (off), an unknown address type, a name of length
    // 0, port 0, a bad version in the request.
    let mut ipv6 = vec![5, 1, 0, 4];
    ipv6.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    ipv6.extend_from_slice(&refused.addr.port().to_be_bytes());
    for (request, code) in [
        (to_loopback(2, echo.port()), 7),
        (to_loopback(3, 0), 7),
        (vec![5, 1, 0, 9, 1, 2, 3, 4, 0, 80], 8),
        (vec![5, 1, 0, 3, 0, 0, 80], 1),
        (to_loopback(1, 0), 1),
        (vec![4, 1, 0, 1, 127, 0, 0, 1, 0, 80], 1),
        // IPv6: the address type is read; ::1 on a port nobody serves there (refused, or
        // unreachable without IPv6), or refused by the port list (the Counter's port is not
        // allowed): never a success.
        (ipv6, 2),
    ] {
        let (_s, greeting, reply) = socks5(p.addr, &request).await;
        assert_eq!(greeting, [5, 0]);
        assert_eq!(
            reply.get(..2),
            Some(&[5, code][..]),
            "{request:?}: {reply:?}"
        );
        assert_eq!(reply.len(), 10, "{request:?}: {reply:?}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(refused.accepts(), 0, "a refused port is never dialled");

    // A greeting with no methods: 05 FF. A method list longer than what came: no answer.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&[5, 0]).await.unwrap();
    assert_eq!(read_upto(&mut s, 10).await, [5, 0xFF]);
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&[5, 5, 0]).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_upto(&mut s, 10).await, b"");

    let records = p.wait_records(12).await;
    let denied = records
        .iter()
        .find(|r| r.port == refused.addr.port() && r.host == "localhost")
        .expect("the refusal's record");
    assert_eq!((denied.method.as_str(), denied.status), ("SOCKS5", 403));
    assert!(denied.rule == "ports.connect", "{denied:?}");
    assert!(records.iter().all(|r| r.method == "SOCKS5"), "{records:#?}");
    let v6 = records
        .iter()
        .find(|r| r.host == "[::1]")
        .expect("the IPv6 record");
    assert!(v6.rule == "ports.connect", "{v6:?}");
}

#[tokio::test]
async fn the_log_in_socks_ports_and_rules_apply_to_socks() {
    let echo = echo_origin().await;
    let other = echo_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("ann", "ann pw")]);
    // socks.ports replaces ports.connect for SOCKS; a rule matches the method SOCKS5.
    let p = proxy(
        &[echo.port(), other.port()],
        &format!(
            "[auth]\nhtpasswd = {users:?}\n[socks]\nports = [{}, {}]\n\
             [[rules]]\nname = \"no socks to other\"\nmethods = [\"SOCKS5\"]\nports = [{}]\naction = \"deny\"\n",
            echo.port(),
            other.port(),
            other.port()
        ),
    )
    .await;
    // Only "no authentication" offered: no acceptable method.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    assert_eq!(read_upto(&mut s, 10).await, [5, 0xFF]);
    // The wrong password: 01 01, and closed.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&[5, 2, 0, 2]).await.unwrap();
    assert_eq!(read_upto(&mut s, 2).await, [5, 2]);
    s.write_all(b"\x01\x03ann\x05wrong").await.unwrap();
    assert_eq!(read_upto(&mut s, 10).await, [1, 1]);
    // The right one, then a request the rule refuses, and one it lets through.
    for (port, code) in [(other.port(), 2u8), (echo.port(), 0)] {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(&[5, 1, 2]).await.unwrap();
        assert_eq!(read_upto(&mut s, 2).await, [5, 2]);
        s.write_all(b"\x01\x03ann\x06ann pw").await.unwrap();
        assert_eq!(read_upto(&mut s, 2).await, [1, 0]);
        s.write_all(&to_loopback(1, port)).await.unwrap();
        let reply = read_upto(&mut s, 10).await;
        assert_eq!(reply[..2], [5, code], "{reply:?}");
    }
    let records = p.wait_records(4).await;
    assert!(
        records[0].rule == "auth" && records[0].status == 407,
        "{:?}",
        records[0]
    );
    assert!(records[1].rule == "auth", "{:?}", records[1]);
    assert!(
        records[2].rule == "rule \"no socks to other\"",
        "{:?}",
        records[2]
    );
    assert_eq!(records[2].user.as_deref(), Some("ann"));
    assert!(records[3].rule == "socks.ports", "{:?}", records[3]);
}

#[tokio::test]
async fn socks_off_leaves_the_port_to_http() {
    let p = proxy(&[], "[socks]\nenabled = false\n").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    s.shutdown().await.unwrap();
    let got = read_upto(&mut s, 4096).await;
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 400"),
        "{got:?}"
    );
}

/// A UDP echo server on loopback: answers `echo:` and the datagram.
async fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        for _ in 0..100 {
            let Ok(Ok((n, from))) =
                tokio::time::timeout(Duration::from_secs(30), socket.recv_from(&mut buf)).await
            else {
                return;
            };
            let mut back = b"echo:".to_vec();
            back.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&back, from).await;
        }
    });
    addr
}

fn udp_header(port: u16) -> Vec<u8> {
    let mut h = vec![0, 0, 0, 1, 127, 0, 0, 1];
    h.extend_from_slice(&port.to_be_bytes());
    h
}

#[tokio::test]
async fn udp_associate_relays_allowed_datagrams_while_its_connection_lives() {
    let allowed = udp_echo().await;
    let second = udp_echo().await;
    let other = udp_echo().await;
    let p = Proxy::start_observed(
        settings_of(&format!(
            "{}[socks]\nudp = true\nudp_ports = [{}, {}]\n",
            loopback_config(&[], &[]),
            allowed.port(),
            second.port()
        )),
        true,
        None,
    )
    .await;
    let (control, greeting, reply) = socks5(p.addr, &to_loopback(3, 0)).await;
    assert_eq!(greeting, [5, 0]);
    assert_eq!(reply[..4], [5, 0, 0, 1], "{reply:?}");
    let relay = SocketAddr::from((
        [reply[4], reply[5], reply[6], reply[7]],
        u16::from_be_bytes([reply[8], reply[9]]),
    ));
    assert_eq!(
        relay.ip(),
        p.addr.ip(),
        "bound to the address the client came to"
    );
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0u8; 65536];
    // Allowed: echoed back, wrapped in the SOCKS header naming the echo server.
    let mut datagram = udp_header(allowed.port());
    datagram.extend_from_slice(b"ping");
    client.send_to(&datagram, relay).await.unwrap();
    let (n, from) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
        .await
        .expect("the echo comes back")
        .unwrap();
    assert_eq!(from, relay);
    assert_eq!(
        &buf[..n],
        [&udp_header(allowed.port())[..], b"echo:ping"].concat()
    );
    // A second allowed port, twice: counted apart in the statistics.
    for _ in 0..2 {
        let mut datagram = udp_header(second.port());
        datagram.extend_from_slice(b"hi");
        client.send_to(&datagram, relay).await.unwrap();
        let (n, _) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
            .await
            .expect("the second echo comes back")
            .unwrap();
        assert_eq!(
            &buf[..n],
            [&udp_header(second.port())[..], b"echo:hi"].concat()
        );
    }
    // A port not in udp_ports, and a fragment: dropped.
    let mut datagram = udp_header(other.port());
    datagram.extend_from_slice(b"no");
    client.send_to(&datagram, relay).await.unwrap();
    let mut fragment = udp_header(allowed.port());
    fragment[2] = 1;
    fragment.extend_from_slice(b"frag");
    client.send_to(&fragment, relay).await.unwrap();
    let nothing =
        tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buf)).await;
    assert!(nothing.is_err(), "a dropped datagram came back");
    assert!(p.records().is_empty(), "the association is still open");
    // Closing the control connection ends the association and writes its record.
    drop(control);
    let records = p.wait_records(1).await;
    let r = &records[0];
    assert_eq!(
        (r.method.as_str(), r.status, r.port),
        ("SOCKS5-UDP", 200, allowed.port())
    );
    assert_eq!((r.bytes_up, r.bytes_down), (4 + 2 * 2, 9 + 2 * 7), "{r:?}");
    assert!(r.rule == "socks.udp_ports", "{r:?}");
    let reason = r.reason.as_deref().unwrap_or("");
    assert!(
        reason.contains("3 datagrams up, 3 down, 2 dropped"),
        "{reason}"
    );
    assert!(reason.contains("socks.udp_ports"), "{reason}");
    // The statistics count datagrams and bytes per destination port, each port its own.
    let metrics = Metrics::scrape(p.admin.unwrap()).await;
    for (port, datagrams, up, down) in [
        (allowed.port(), 1.0, 4.0, 9.0),
        (second.port(), 2.0, 4.0, 14.0),
    ] {
        let port = port.to_string();
        let at = |direction: &'static str| [("port", port.as_str()), ("direction", direction)];
        assert_eq!(
            metrics.value("portcullis_datagrams_total", &at("up")),
            Some(datagrams),
            "{}",
            metrics.text
        );
        assert_eq!(
            metrics.value("portcullis_datagrams_total", &at("down")),
            Some(datagrams)
        );
        assert_eq!(
            metrics.value("portcullis_bytes_up_total", &[("port", port.as_str())]),
            Some(up)
        );
        assert_eq!(
            metrics.value("portcullis_bytes_down_total", &[("port", port.as_str())]),
            Some(down)
        );
    }
    assert_eq!(
        metrics.value(
            "portcullis_requests_total",
            &[
                ("port", allowed.port().to_string().as_str()),
                ("kind", "socks")
            ]
        ),
        Some(1.0),
        "one association"
    );
}

#[tokio::test]
async fn with_auth_a_rule_admits_socks_clients_by_address_without_a_log_in() {
    let echo = echo_origin().await;
    let other = echo_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("ann", "ann pw")]);
    // Browsers send no SOCKS password: 127.0.0.1 may reach the echo port without one; the
    // other port stays behind the log-in, and so does every other client.
    let p = proxy(
        &[echo.port(), other.port()],
        &format!(
            "[auth]\nhtpasswd = {users:?}\n\
             [[rules]]\nname = \"lan socks\"\nclients = [\"127.0.0.1\"]\nmethods = [\"SOCKS5\"]\nports = [{}]\naction = \"allow\"\n",
            echo.port()
        ),
    )
    .await;
    // No password offered: 05 00, and the rule lets the echo port through.
    let (mut s, greeting, reply) = socks5(p.addr, &to_loopback(1, echo.port())).await;
    assert_eq!(greeting, [5, 0]);
    assert_eq!(reply[..2], [5, 0], "{reply:?}");
    s.write_all(b"anon").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_upto(&mut s, 100).await, b"anon");
    // A port the rule does not name, though ports.connect has it: refused, as the log-in.
    let (_s, greeting, reply) = socks5(p.addr, &to_loopback(1, other.port())).await;
    assert_eq!(greeting, [5, 0]);
    assert_eq!(reply[..2], [5, 2], "{reply:?}");
    // A client offering a password as well logs in (and then reaches the other port).
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&[5, 2, 0, 2]).await.unwrap();
    assert_eq!(read_upto(&mut s, 2).await, [5, 2]);
    s.write_all(b"\x01\x03ann\x06ann pw").await.unwrap();
    assert_eq!(read_upto(&mut s, 2).await, [1, 0]);
    s.write_all(&to_loopback(1, other.port())).await.unwrap();
    assert_eq!(read_upto(&mut s, 10).await[..2], [5, 0]);
    drop(s);
    // Another client address: no method acceptable.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = socket.connect(p.addr).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    assert_eq!(read_upto(&mut s, 10).await, [5, 0xFF]);
    // HTTP from the admitted address still logs in.
    let mut h = TcpStream::connect(p.addr).await.unwrap();
    h.write_all(
        format!(
            "CONNECT 127.0.0.1:{0} HTTP/1.1\r\nHost: 127.0.0.1:{0}\r\n\r\n",
            echo.port()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let head = read_upto(&mut h, 12).await;
    assert!(head.starts_with(b"HTTP/1.1 407"), "{head:?}");

    let records = p.wait_records(5).await;
    let find = |port: u16, user: Option<&str>| {
        records
            .iter()
            .find(|r| r.method == "SOCKS5" && r.port == port && r.user.as_deref() == user)
            .unwrap_or_else(|| panic!("{port} {user:?}: {records:#?}"))
    };
    let anon = find(echo.port(), None);
    assert!(
        anon.status == 200 && anon.rule == "rule \"lan socks\"",
        "{anon:?}"
    );
    let refused = find(other.port(), None);
    assert!(refused.rule == "auth", "{refused:?}");
    let reason = refused.reason.as_deref().unwrap_or("");
    assert!(reason.contains("without a log-in"), "{reason}");
    let ann = find(other.port(), Some("ann"));
    assert!(ann.status == 200 && ann.rule == "ports.connect", "{ann:?}");
}

#[tokio::test]
async fn an_ipv6_destination_is_dialled_over_ipv6() {
    // An echo server on ::1 (skipped where the machine has no IPv6 loopback).
    let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
        return;
    };
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        if let Ok(Ok((stream, _))) = tokio::time::timeout(WAIT, listener.accept()).await {
            let (mut read, mut write) = stream.into_split();
            let _ = tokio::time::timeout(WAIT, tokio::io::copy(&mut read, &mut write)).await;
        }
    });
    let p = proxy(&[port], "").await;
    let mut request = vec![5, 1, 0, 4];
    request.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    request.extend_from_slice(&port.to_be_bytes());
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    assert_eq!(read_upto(&mut s, 2).await, [5, 0]);
    s.write_all(&request).await.unwrap();
    // The reply's BND is the proxy's end of an IPv6 socket: address type 4, 22 bytes.
    let reply = read_upto(&mut s, 22).await;
    assert_eq!(reply[..4], [5, 0, 0, 4], "{reply:?}");
    assert_eq!(reply[4..20], std::net::Ipv6Addr::LOCALHOST.octets());
    s.write_all(b"six").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_upto(&mut s, 100).await, b"six");
    let records = p.wait_records(1).await;
    let r = &records[0];
    assert_eq!(
        (r.host.as_str(), r.port, r.status),
        ("[::1]", port, 200),
        "{r:?}"
    );
    assert_eq!(
        r.upstream.map(|u| u.ip()),
        Some("::1".parse().unwrap()),
        "{r:?}"
    );
}

/// Greets offering only method 0x02 and sends `user`/`password`; the two answers.
async fn socks5_log_in(proxy: SocketAddr, user: &[u8], password: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(&[5, 1, 2]).await.unwrap();
    let greeting = read_upto(&mut s, 2).await;
    let mut sub = vec![1, user.len() as u8];
    sub.extend_from_slice(user);
    sub.push(password.len() as u8);
    sub.extend_from_slice(password);
    s.write_all(&sub).await.unwrap();
    (greeting, read_upto(&mut s, 2).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_ins_at_once_cannot_outrun_the_failure_block() {
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("ann", "ann pw")]);
    let p = proxy(
        &[],
        &format!("[auth]\nhtpasswd = {users:?}\nmax_failures = 3\n"),
    )
    .await;
    // Twenty wrong passwords at once: at most three are checked, the rest refused unchecked.
    let tries: Vec<_> = (0..20)
        .map(|i| {
            let at = p.addr;
            tokio::spawn(
                async move { socks5_log_in(at, b"ann", format!("guess {i}").as_bytes()).await },
            )
        })
        .collect();
    for t in tries {
        let (greeting, answer) = t.await.unwrap();
        assert_eq!((greeting, answer), (vec![5, 2], vec![1, 1]));
    }
    let records = p.wait_records(20).await;
    let checked = records.iter().filter(|r| r.rule == "auth").count();
    let blocked = records
        .iter()
        .filter(|r| r.rule == "auth.max_failures")
        .count();
    assert!(
        checked <= 3 && checked + blocked == 20,
        "{checked} checked, {blocked} blocked: {records:#?}"
    );
}

#[tokio::test]
async fn socks_user_names_with_control_characters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("ann", "ann pw")]);
    let p = proxy(&[], &format!("[auth]\nhtpasswd = {users:?}\n")).await;
    let (_, answer) = socks5_log_in(p.addr, b"ann\n2099-01-01 FAKE LINE", b"ann pw").await;
    assert_eq!(answer, [1, 1]);
    let records = p.wait_records(1).await;
    assert!(
        records[0].rule == "auth" && records[0].user.is_none(),
        "{:?}",
        records[0]
    );
    assert!(
        records[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("control characters"),
        "{:?}",
        records[0]
    );
}

#[tokio::test]
async fn without_auth_a_client_that_offers_only_a_password_is_served() {
    let echo = echo_origin().await;
    let p = proxy(&[echo.port()], "").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&[5, 1, 2]).await.unwrap();
    assert_eq!(read_upto(&mut s, 2).await, [5, 2]);
    s.write_all(b"\x01\x03any\x03pwd").await.unwrap();
    assert_eq!(read_upto(&mut s, 2).await, [1, 0]);
    s.write_all(&to_loopback(1, echo.port())).await.unwrap();
    assert_eq!(read_upto(&mut s, 10).await[..2], [5, 0]);
    s.write_all(b"x").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_upto(&mut s, 10).await, b"x");
    let records = p.wait_records(1).await;
    assert!(
        records[0].status == 200 && records[0].user.is_none(),
        "{:?}",
        records[0]
    );
}

#[tokio::test]
async fn without_a_log_in_udp_needs_a_rule_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("ann", "ann pw")]);
    let rules = |methods: &str| {
        format!(
            "[auth]\nhtpasswd = {users:?}\n[socks]\nudp = true\n\
             [[rules]]\nname = \"lan\"\nclients = [\"127.0.0.1\"]\nmethods = [{methods}]\naction = \"allow\"\n"
        )
    };
    // A rule for SOCKS5 CONNECT only: no relay.
    let p = proxy(&[], &rules("\"SOCKS5\"")).await;
    let (_c, greeting, reply) = socks5(p.addr, &to_loopback(3, 0)).await;
    assert_eq!(
        (greeting.as_slice(), &reply[..2]),
        (&[5u8, 0][..], &[5u8, 2][..])
    );
    let records = p.wait_records(1).await;
    assert!(records[0].rule == "auth", "{:?}", records[0]);
    // A rule for SOCKS5-UDP only: the greeting is accepted and the relay opens.
    let p = proxy(&[], &rules("\"SOCKS5-UDP\"")).await;
    let (_c, greeting, reply) = socks5(p.addr, &to_loopback(3, 0)).await;
    assert_eq!(
        (greeting.as_slice(), &reply[..2]),
        (&[5u8, 0][..], &[5u8, 0][..])
    );
}
