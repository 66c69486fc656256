//! What the proxy refuses, and what the client and the access log see when it does.

use std::time::Duration;

use crate::support::*;
use portcullis::observe::access::Verdict;
use tokio::net::TcpSocket;

#[tokio::test]
async fn denied_http_ports_are_403_and_never_dialled() {
    let denied = Counter::start().await;
    let proxy = Proxy::start(&loopback_config(&[80], &[443])).await;
    let r = get(proxy.addr, &format!("http://{}/", denied.addr)).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.text(),
        format!(
            "port {} is not allowed for plain HTTP (decided by ports.http)\n",
            denied.addr.port()
        )
    );
    let r = get(proxy.addr, "http://127.0.0.1:23/").await;
    assert_eq!(r.status, 403);
    assert!(r.text().starts_with("port 23 (telnet) is not allowed"));
    let records = proxy.wait_records(2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(denied.accepts(), 0);
    assert_eq!(records[1].rule, "ports.http");
    assert_eq!(records[1].service, Some("telnet"));
    assert_eq!(records[1].verdict, Verdict::Deny);
}

#[tokio::test]
async fn loopback_destinations_are_refused_unless_allowed() {
    let origin = RawOrigin::start().await;
    let port = origin.addr.port();
    let strict = Proxy::start(&format!("[ports]\nhttp = [{port}]\nconnect = [{port}]\n")).await;

    let r = get(strict.addr, &format!("http://127.0.0.1:{port}/")).await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("loopback"), "{}", r.text());
    assert!(r.text().contains("destinations.loopback"), "{}", r.text());
    // A name is checked on the addresses it resolves to.
    let r = get(strict.addr, &format!("http://localhost:{port}/")).await;
    assert_eq!(r.status, 403);
    assert!(r.text().starts_with("localhost ("), "{}", r.text());
    let (r, _) = connect(strict.addr, &format!("127.0.0.1:{port}")).await;
    assert_eq!(r.status, 403);
    let (r, _) = connect(strict.addr, &format!("[::ffff:127.0.0.1]:{port}")).await;
    assert_eq!(r.status, 403);
    let (r, _) = connect(strict.addr, &format!("0.0.0.0:{port}")).await;
    assert_eq!(r.status, 403);
    assert!(
        r.text().contains("destinations.unspecified"),
        "{}",
        r.text()
    );
    let records = strict.wait_records(5).await;
    assert!(records
        .iter()
        .all(|r| r.status == 403 && r.verdict == Verdict::Deny));
    assert_eq!(origin.accepts(), 0);

    let dev = Proxy::start(&loopback_config(&[port], &[port])).await;
    let r = get(dev.addr, &format!("http://localhost:{port}/ok")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello /ok");
}

#[tokio::test]
async fn the_proxy_never_connects_to_itself() {
    // Every port allowed and loopback allowed: only the self guard stands in the way.
    let proxy = Proxy::start(
        "[ports]\nhttp = [\"1-65535\"]\nconnect = [\"1-65535\"]\n[destinations]\nallow_loopback = true\n",
    )
    .await;
    let own = proxy.addr;
    let (r, _) = connect(own, &own.to_string()).await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("own address"), "{}", r.text());
    assert!(r.text().contains("destinations.self"), "{}", r.text());
    // A plain-HTTP URL naming the proxy is a request for its own page: served, not dialled.
    let r = get(own, &format!("http://{own}/")).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("This is Portcullis"), "{}", r.text());
    let records = proxy.wait_records(2).await;
    assert_eq!(records[0].rule, "destinations.self");
    assert_eq!(records[1].rule, "local");
    assert_eq!(records[1].upstream, None);
}

#[tokio::test]
async fn clients_outside_the_allow_list_are_refused_and_logged() {
    let origin = RawOrigin::start().await;
    let config = format!(
        "{}[clients]\nallow = [\"10.0.0.0/8\", \"192.168.0.0/16\"]\n",
        loopback_config(&[origin.addr.port()], &[origin.addr.port()])
    );
    let proxy = Proxy::start(&config).await;
    let r = get(proxy.addr, &format!("http://{}/", origin.addr)).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(
        r.text().contains("client 127.0.0.1 is not allowed"),
        "{}",
        r.text()
    );
    let (r, _) = connect(proxy.addr, &origin.addr.to_string()).await;
    assert_eq!(r.status, 403);
    let records = proxy.wait_records(2).await;
    assert!(records
        .iter()
        .all(|r| r.rule == "clients.allow" && r.status == 403 && r.verdict == Verdict::Deny));
    assert_eq!(records[0].port, origin.addr.port());
    assert_eq!(origin.accepts(), 0);
}

#[tokio::test]
async fn malformed_requests_are_400_and_unsupported_ones_501() {
    let origin = RawOrigin::start().await;
    let port = origin.addr.port();
    let proxy = Proxy::start(&loopback_config(&[port], &[port])).await;
    let cases: &[(String, u16, &str)] = &[
        (
            format!("CONNECT user@127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n"),
            400,
            "user information",
        ),
        (
            format!("CONNECT u:p@127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n"),
            400,
            "user information",
        ),
        (
            "CONNECT 127.0.0.1 HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            400,
            "no port",
        ),
        (
            "CONNECT 127.0.0.1:https HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            400,
            "not a number",
        ),
        (
            "CONNECT 127.0.0.1:0 HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            400,
            "port 0",
        ),
        (
            "CONNECT 127.0.0.1:65536 HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            400,
            "out of range",
        ),
        (
            format!("CONNECT :{port} HTTP/1.1\r\nHost: x\r\n\r\n"),
            400,
            "host is empty",
        ),
        (
            "GET http://127.0.0.1:99999/ HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            400,
            "out of range",
        ),
        (
            format!("GET http://u:p@127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            400,
            "user information",
        ),
        (
            format!("GET http://127.0.0.1:{port}/page#section HTTP/1.1\r\nHost: x\r\n\r\n"),
            400,
            "fragment",
        ),
        (
            format!("GET 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n"),
            400,
            "only valid with CONNECT",
        ),
        (
            "GET http://bad!host/ HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            400,
            "not a valid host",
        ),
        (
            "GET https://127.0.0.1/ HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            501,
            "CONNECT",
        ),
        (
            "GET ftp://127.0.0.1/file HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            501,
            "ftp scheme",
        ),
    ];
    for (request, status, fragment) in cases {
        let r = raw(proxy.addr, request.as_bytes()).await;
        assert_eq!(r.status, *status, "{request:?}: {}", r.text());
        assert!(r.text().contains(fragment), "{request:?}: {:?}", r.text());
        if *status == 400 {
            assert_eq!(
                r.header("connection").as_deref(),
                Some("close"),
                "{request:?}"
            );
        }
    }
    // Requests hyper cannot even parse are answered 400 too.
    for request in [
        "HELLO\r\n\r\n",
        "GET http://[::1/ HTTP/1.1\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
    ] {
        let r = raw(proxy.addr, request.as_bytes()).await;
        assert_eq!(r.status, 400, "{request:?}");
    }
    let records = proxy.wait_records(cases.len()).await;
    for (record, (_, status, _)) in records.iter().zip(cases) {
        assert_eq!(record.status, *status);
        assert_eq!(record.verdict, Verdict::Deny);
        assert!(record.reason.is_some());
    }
    assert_eq!(origin.accepts(), 0);
}

#[tokio::test]
async fn a_connect_timeout_is_a_504() {
    // A listener whose accept queue is full drops further SYNs, so a dial to it hangs.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let target = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(target),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let config = format!(
        "{}[timeouts]\nconnect = \"500ms\"\n",
        loopback_config(&[target.port()], &[target.port()])
    );
    let proxy = Proxy::start(&config).await;
    let started = std::time::Instant::now();
    let (r, _) = connect(proxy.addr, &target.to_string()).await;
    let waited = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("timed out after 500ms"), "{}", r.text());
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    drop(listener);
}
