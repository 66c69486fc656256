//! Loops: a request carrying this proxy's Via token, and requests to the proxy's own address.

use super::*;

#[tokio::test]
async fn requests_carrying_this_proxys_via_token_are_508() {
    let origin = StrictOrigin::start().await;
    let denied = Counter::start().await;
    let a = origin.addr.port();
    let proxy = proxy_for(a, "").await;
    // Learn the token from what the origin sees.
    let r = get(proxy.addr, &format!("http://127.0.0.1:{a}/learn")).await;
    assert_eq!(r.status, 200);
    let seen = origin.wait_seen(1, WAIT).await;
    let via = header_value(seen[0].head().unwrap(), "via").expect("the proxy adds Via");
    let token = via.split_whitespace().nth(1).unwrap().to_owned();
    assert!(token.starts_with("portcullis-"), "{via}");
    let other = if token == "portcullis-00000000" {
        "portcullis-00000001"
    } else {
        "portcullis-00000000"
    };
    let req = |method: &str, target: &str, via: &str| {
        format!("{method} {target} HTTP/1.1\r\nHost: x\r\n{via}\r\n")
    };
    let url = format!("http://127.0.0.1:{a}/loop");
    let authority = format!("127.0.0.1:{a}");
    let cases = [
        case(
            "GET with this proxy's Via token",
            req("GET", &url, &format!("Via: 1.1 {token}\r\n")),
            Expect::StatusClose(508),
        ),
        case(
            "GET with the token as a later hop",
            req(
                "GET",
                &url,
                &format!("Via: 1.0 other-proxy, 1.1 {token}\r\n"),
            ),
            Expect::StatusClose(508),
        ),
        case(
            "GET with the token in a second Via field",
            req(
                "GET",
                &url,
                &format!("Via: 1.1 a\r\nVia: 1.1 {token} (Portcullis)\r\n"),
            ),
            Expect::StatusClose(508),
        ),
        case(
            "CONNECT with this proxy's Via token",
            req("CONNECT", &authority, &format!("Via: 1.1 {token}\r\n")),
            Expect::StatusClose(508),
        ),
        case(
            "GET with the token to the denied port",
            req(
                "GET",
                &format!("http://127.0.0.1:{}/", denied.addr.port()),
                &format!("Via: 1.1 {token}\r\n"),
            ),
            Expect::StatusClose(508),
        ),
        case(
            "another instance's token is only a hop",
            req("GET", &url, &format!("Via: 1.1 {other}\r\n")),
            Expect::Status(200),
        ),
    ];
    run_table("Via loops", proxy.addr, &cases, &denied).await;
    let seen = origin.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    let via = header_value(seen[1].head().unwrap(), "via").unwrap();
    assert_eq!(via, format!("1.1 {other}, 1.1 {token}"));
}

#[tokio::test]
async fn requests_to_the_proxys_own_address_are_never_dialled() {
    // Every port and loopback allowed: only the self guard stands in the way.
    let proxy = Proxy::start(
        "[ports]\nhttp = [\"1-65535\"]\nconnect = [\"1-65535\"]\n[destinations]\nallow_loopback = true\n",
    )
    .await;
    let own = proxy.addr;
    let port = own.port();
    let denied = Counter::start().await; // never named: stands for "nothing else dialled"
    let cases = [
        case(
            "CONNECT to the proxy's own address",
            format!("CONNECT {own} HTTP/1.1\r\nHost: {own}\r\n\r\n"),
            Expect::Status(403),
        ),
        case(
            "CONNECT to the own address, IPv4-mapped",
            format!("CONNECT [::ffff:127.0.0.1]:{port} HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::Status(403),
        ),
        case(
            "CONNECT to localhost and the own port",
            format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::Status(403),
        ),
        case(
            "GET the own address (the info page)",
            format!("GET http://{own}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::Status(200),
        ),
        case(
            "GET the own address, IPv4-mapped",
            format!("GET http://[::ffff:127.0.0.1]:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::Status(200),
        ),
        case(
            "GET localhost and the own port (a name of the proxy: its page)",
            format!("GET http://localhost:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::Status(200),
        ),
        case(
            "GET the own address with a leading-zero port",
            format!("GET http://127.0.0.1:0{port}/x HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::Status(404),
        ),
    ];
    run_table("own address", own, &cases, &denied).await;
    // One record per request: a request the proxy sent to itself would add one.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let records = proxy.records();
    assert_eq!(records.len(), cases.len(), "{records:#?}");
    for r in records.iter().filter(|r| r.status == 403) {
        assert_eq!(r.rule, "destinations.self", "{r:?}");
        assert_eq!(r.upstream, None, "{r:?}");
    }
}
