//! Plain-HTTP forwarding through the real proxy to real loopback origins.

use std::time::Duration;

use crate::support::*;
use portcullis::observe::access::Verdict;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn get_post_and_head_are_forwarded() {
    let origin = HttpOrigin::start().await;
    let proxy = Proxy::start(&loopback_config(&[origin.addr.port()], &[])).await;
    let base = format!("http://{}", origin.addr);

    let r = get(proxy.addr, &format!("{base}/x?y=1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello GET /x");

    let r = raw(
        proxy.addr,
        format!(
            "POST {base}/sha256 HTTP/1.1\r\nHost: {}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            origin.addr
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824 5"
    );

    let r = raw(
        proxy.addr,
        format!(
            "HEAD {base}/bytes/1000 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            origin.addr
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length").as_deref(), Some("1000"));
    assert!(r.body.is_empty());

    let records = proxy.wait_records(3).await;
    let methods: Vec<&str> = records.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["GET", "POST", "HEAD"]);
    for record in &records {
        assert_eq!(record.status, 200);
        assert_eq!(record.verdict, Verdict::Allow);
        assert_eq!(record.rule, "ports.http");
        assert_eq!(record.host, "127.0.0.1");
        assert_eq!(record.port, origin.addr.port());
        assert_eq!(record.upstream, Some(origin.addr));
        assert_eq!(record.client.ip(), proxy.addr.ip());
    }
    assert_eq!((records[0].bytes_up, records[0].bytes_down), (0, 12));
    assert_eq!((records[1].bytes_up, records[1].bytes_down), (5, 66));
    assert_eq!((records[2].bytes_up, records[2].bytes_down), (0, 0));
}

#[tokio::test]
async fn ten_mib_chunked_upload_and_download_arrive_intact() {
    const SIZE: usize = 10 * 1024 * 1024;
    let origin = HttpOrigin::start().await;
    let proxy = Proxy::start(&loopback_config(&[origin.addr.port()], &[])).await;

    // Upload: chunked, from a raw client, in uneven chunks.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "PUT http://{}/sha256 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        origin.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let data: Vec<u8> = (0..SIZE).map(pattern).collect();
    for chunk in data.chunks(100_003) {
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        stream.write_all(chunk).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut stream, &mut buf, false).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), format!("{} {SIZE}", pattern_sha256(SIZE)));

    // Download with a Content-Length, then chunked, on the same client connection.
    for query in ["", "?chunked"] {
        let request = format!(
            "GET http://{}/bytes/{SIZE}{query} HTTP/1.1\r\nHost: x\r\n\r\n",
            origin.addr
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let r = read_response(&mut stream, &mut buf, false).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), SIZE, "download {query}");
        let digest = {
            use sha2::Digest;
            hex(&sha2::Sha256::digest(&r.body))
        };
        assert_eq!(digest, pattern_sha256(SIZE), "download {query}");
    }

    let records = proxy.wait_records(3).await;
    assert_eq!(records[0].bytes_up, SIZE as u64);
    assert_eq!(records[1].bytes_down, SIZE as u64);
    assert_eq!(records[2].bytes_down, SIZE as u64);
}

#[tokio::test]
async fn one_client_connection_carries_many_requests_and_origin_connections_are_pooled() {
    let origin = HttpOrigin::start().await;
    let proxy = Proxy::start(&loopback_config(&[origin.addr.port()], &[])).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..5 {
        let request = format!(
            "GET http://{}/n{i} HTTP/1.1\r\nHost: {}\r\n\r\n",
            origin.addr, origin.addr
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let r = read_response(&mut stream, &mut buf, false).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("hello GET /n{i}"));
    }
    let records = proxy.wait_records(5).await;
    let local = stream.local_addr().unwrap();
    assert!(records.iter().all(|r| r.client == local), "{records:#?}");
    assert_eq!(origin.accepts(), 1, "the origin connection is reused");
}

#[tokio::test]
async fn many_clients_at_once_reuse_their_origin_connections() {
    // 40 keep-alive clients, five rounds of one slow request each, all in flight together:
    // the pool keeps all 40 origin connections between rounds instead of re-dialling.
    const CLIENTS: usize = 40;
    let origin = HttpOrigin::start().await;
    let proxy = Proxy::start(&loopback_config(&[origin.addr.port()], &[])).await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (proxy, origin, barrier) = (proxy.addr, origin.addr, barrier.clone());
        tasks.spawn(async move {
            let mut stream = TcpStream::connect(proxy).await.unwrap();
            let mut buf = Vec::new();
            for round in 0..5 {
                barrier.wait().await;
                let request =
                    format!("GET http://{origin}/slow/30 HTTP/1.1\r\nHost: {origin}\r\n\r\n");
                stream.write_all(request.as_bytes()).await.unwrap();
                let r = read_response(&mut stream, &mut buf, false).await.unwrap();
                assert_eq!(r.status, 200, "round {round}");
                assert_eq!(r.text(), "slept 30");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert!(
        origin.accepts() <= CLIENTS,
        "{} origin connections for {CLIENTS} clients",
        origin.accepts()
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_via_and_host_set() {
    let origin = RawOrigin::start().await;
    let proxy = Proxy::start(&loopback_config(&[origin.addr.port()], &[])).await;
    let request = format!(
        "GET http://{}/p?q=1 HTTP/1.1\r\n\
         Host: somewhere.else.example\r\n\
         Connection: keep-alive, X-Secret\r\n\
         X-Secret: 1\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\n\
         Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
         TE: trailers\r\n\
         Upgrade: websocket\r\n\
         Trailer: X-Checksum\r\n\
         Via: 1.1 upstream-cache\r\n\
         X-End-To-End: kept\r\n\r\n",
        origin.addr
    );
    let r = raw(proxy.addr, request.as_bytes()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello /p?q=1");
    let via = r.header("via").unwrap_or_default();
    assert!(is_our_via(&via, "1.1"), "the response carries Via: {via:?}");

    let heads = origin.heads();
    let head = heads.last().unwrap();
    assert!(head.starts_with("GET /p?q=1 HTTP/1.1\r\n"), "{head}");
    for name in [
        "connection",
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "upgrade",
    ] {
        assert_eq!(
            header_value(head, name),
            None,
            "{name} reached the origin:\n{head}"
        );
    }
    assert_eq!(header_value(head, "trailer").as_deref(), Some("X-Checksum"));
    assert_eq!(header_value(head, "x-end-to-end").as_deref(), Some("kept"));
    let via = header_value(head, "via").unwrap_or_default();
    let (earlier, ours) = via.split_once(", ").unwrap_or_default();
    assert_eq!(earlier, "1.1 upstream-cache", "{via}");
    assert!(is_our_via(ours, "1.1"), "{via}");
    assert_eq!(
        header_value(head, "host"),
        Some(origin.addr.to_string()),
        "Host comes from the request target"
    );
}

#[tokio::test]
async fn header_names_reach_origins_in_title_case_and_clients_in_lower_case() {
    let origin = RawOrigin::start().await;
    let proxy = Proxy::start(&loopback_config(&[origin.addr.port()], &[])).await;
    let request = format!(
        "GET http://{}/case HTTP/1.1\r\nhost: x\r\nuser-agent: test\r\nX-API-key: k\r\nACCEPT: */*\r\n\r\n",
        origin.addr
    );
    let r = raw(proxy.addr, request.as_bytes()).await;
    assert_eq!(r.status, 200);
    let heads = origin.heads();
    let head = heads.last().unwrap();
    for line in [
        format!("\r\nHost: {}\r\n", origin.addr),
        "\r\nUser-Agent: test\r\n".to_owned(),
        "\r\nX-Api-Key: k\r\n".to_owned(),
        "\r\nAccept: */*\r\n".to_owned(),
    ] {
        assert!(head.contains(&line), "{line:?} not in:\n{head}");
    }

    let origin = one_shot_origin(
        b"HTTP/1.1 200 OK\r\nX-Mixed-CASE: v\r\nCONTENT-TYPE: text/plain\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    let proxy = Proxy::start(&loopback_config(&[origin.port()], &[])).await;
    let r = raw(
        proxy.addr,
        format!("GET http://{origin}/ HTTP/1.1\r\nHost: {origin}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.text(), "ok");
    for line in [
        "\r\nx-mixed-case: v\r\n",
        "\r\ncontent-type: text/plain\r\n",
        "\r\ncontent-length: 2\r\n",
    ] {
        assert!(r.head.contains(line), "{line:?} not in:\n{}", r.head);
    }
}

/// Whether `via` is this proxy's single hop entry: `VERSION portcullis-<8 hex digits>`.
fn is_our_via(via: &str, version: &str) -> bool {
    let Some((v, name)) = via.split_once(' ') else {
        return false;
    };
    let token = name.strip_prefix("portcullis-").unwrap_or("");
    v == version && token.len() == 8 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn response_hop_by_hop_headers_are_removed() {
    let origin = one_shot_origin(
        b"HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: secret\r\nKeep-Alive: timeout=9\r\nProxy-Authenticate: Basic\r\nContent-Length: 2\r\nX-Kept: yes\r\n\r\nok",
    )
    .await;
    let proxy = Proxy::start(&loopback_config(&[origin.port()], &[])).await;
    let r = get(proxy.addr, &format!("http://{origin}/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");
    for name in ["x-internal", "keep-alive", "proxy-authenticate"] {
        assert_eq!(
            r.header(name),
            None,
            "{name} reached the client:\n{}",
            r.head
        );
    }
    assert_eq!(r.header("x-kept").as_deref(), Some("yes"));
}

#[tokio::test]
async fn close_delimited_responses_are_relayed_whole() {
    let origin = one_shot_origin(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nthe body ends when the connection does",
    )
    .await;
    let proxy = Proxy::start(&loopback_config(&[origin.port()], &[])).await;
    let r = get(proxy.addr, &format!("http://{origin}/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "the body ends when the connection does");
    let records = proxy.wait_records(1).await;
    assert_eq!(records[0].bytes_down, 38);
}

#[tokio::test]
async fn http_1_0_clients_are_served() {
    let origin = RawOrigin::start().await;
    let proxy = Proxy::start(&loopback_config(&[origin.addr.port()], &[])).await;
    let r = raw(
        proxy.addr,
        format!("GET http://{}/old HTTP/1.0\r\n\r\n", origin.addr).as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello /old");
    let head = origin.heads().pop().unwrap();
    assert!(head.starts_with("GET /old HTTP/1.1\r\n"), "{head}");
    assert!(is_our_via(
        &header_value(&head, "via").unwrap_or_default(),
        "1.0"
    ));
    assert_eq!(header_value(&head, "host"), Some(origin.addr.to_string()));
}

#[tokio::test]
async fn bodiless_statuses_keep_the_connection_usable() {
    let origin = HttpOrigin::start().await;
    let proxy = Proxy::start(&loopback_config(&[origin.addr.port()], &[])).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    for path in ["/status/204", "/status/304", "/after"] {
        let request = format!(
            "GET http://{}{path} HTTP/1.1\r\nHost: x\r\n\r\n",
            origin.addr
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let r = read_response(&mut stream, &mut buf, false).await.unwrap();
        match path {
            "/after" => assert_eq!(r.text(), "hello GET /after"),
            _ => {
                assert_eq!(r.status.to_string(), path.trim_start_matches("/status/"));
                assert!(r.body.is_empty());
            }
        }
    }
}

#[tokio::test]
async fn max_forwards_is_honoured_for_trace_and_options() {
    let origin = RawOrigin::start().await;
    let proxy = Proxy::start(&loopback_config(&[origin.addr.port()], &[])).await;
    let r = raw(
        proxy.addr,
        format!(
            "OPTIONS http://{}/ HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\nConnection: close\r\n\r\n",
            origin.addr
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("allow").unwrap().contains("CONNECT"));
    let r = raw(
        proxy.addr,
        format!(
            "TRACE http://{}/t HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\nCookie: secret\r\nX-Mine: 1\r\nConnection: close\r\n\r\n",
            origin.addr
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type").as_deref(), Some("message/http"));
    assert!(r.text().starts_with("TRACE http://"), "{}", r.text());
    assert!(r.text().contains("x-mine: 1"), "{}", r.text());
    assert!(!r.text().contains("secret"), "{}", r.text());
    assert_eq!(
        origin.accepts(),
        0,
        "Max-Forwards: 0 is answered by the proxy"
    );

    let r = raw(
        proxy.addr,
        format!(
            "OPTIONS http://{}/o HTTP/1.1\r\nHost: x\r\nMax-Forwards: 3\r\nConnection: close\r\n\r\n",
            origin.addr
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    let head = origin.heads().pop().unwrap();
    assert_eq!(header_value(&head, "max-forwards").as_deref(), Some("2"));
}

/// The request line the origin received last.
fn request_line(origin: &RawOrigin) -> String {
    let head = origin.heads().pop().expect("the origin got a request");
    head.split("\r\n").next().unwrap().to_owned()
}

#[tokio::test]
async fn an_options_request_for_the_whole_origin_goes_out_as_an_asterisk() {
    let origin = RawOrigin::start().await;
    let proxy = Proxy::start(&loopback_config(&[origin.addr.port()], &[])).await;
    let at = origin.addr;
    // RFC 9112 §3.2.4: an empty path and no query asks about the origin as a whole; a `/`,
    // a query or another method keeps the origin form. Two requests on one connection each:
    // what the scanner saw for the first is not the second's.
    for (sent, seen) in [
        (
            format!("OPTIONS http://{at} HTTP/1.1"),
            "OPTIONS * HTTP/1.1",
        ),
        (
            format!("OPTIONS http://{at}/ HTTP/1.1"),
            "OPTIONS / HTTP/1.1",
        ),
        (
            format!("OPTIONS http://{at}?q HTTP/1.1"),
            "OPTIONS /?q HTTP/1.1",
        ),
        (
            format!("OPTIONS http://{at}/p HTTP/1.1"),
            "OPTIONS /p HTTP/1.1",
        ),
        (format!("GET http://{at} HTTP/1.1"), "GET / HTTP/1.1"),
        // An extension method, not OPTIONS (methods are case-sensitive).
        (
            format!("options http://{at} HTTP/1.1"),
            "options / HTTP/1.1",
        ),
    ] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        for (request, want) in [
            (&sent, seen),
            (&format!("GET http://{at} HTTP/1.1"), "GET / HTTP/1.1"),
        ] {
            let r = exchange(&mut stream, format!("{request}\r\nHost: x\r\n\r\n")).await;
            assert_eq!(r.status, 200, "{request}");
            assert_eq!(request_line(&origin), want, "{request}");
        }
    }
    let head = origin.heads()[0].clone();
    assert_eq!(header_value(&head, "host"), Some(at.to_string()));

    // Max-Forwards still counts down on the way, and at zero the proxy answers itself.
    let hops = |n: u8| {
        format!("OPTIONS http://{at} HTTP/1.1\r\nHost: x\r\nMax-Forwards: {n}\r\nConnection: close\r\n\r\n")
    };
    let r = raw(proxy.addr, hops(3).as_bytes()).await;
    assert_eq!(r.status, 200);
    let head = origin.heads().pop().unwrap();
    assert!(head.starts_with("OPTIONS * HTTP/1.1\r\n"), "{head}");
    assert_eq!(header_value(&head, "max-forwards").as_deref(), Some("2"));
    let before = origin.heads().len();
    let r = raw(proxy.addr, hops(0).as_bytes()).await;
    assert_eq!(r.status, 200);
    assert!(r.header("allow").unwrap().contains("OPTIONS"));
    assert_eq!(origin.heads().len(), before, "answered by the proxy");
}

#[tokio::test]
async fn a_higher_minor_version_of_http_1_is_served_as_http_1_1() {
    let origin = RawOrigin::start().await;
    let proxy = Proxy::start(&loopback_config(&[origin.addr.port()], &[])).await;
    let at = origin.addr;
    for version in ["HTTP/1.2", "HTTP/1.9"] {
        let r = raw(
            proxy.addr,
            format!("GET http://{at}/x {version}\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200, "{version}");
        assert!(r.head.starts_with("HTTP/1.1 200 "), "{}", r.head);
        assert_eq!(r.text(), "hello /x");
        assert_eq!(request_line(&origin), "GET /x HTTP/1.1");
    }
    // The request line a byte at a time: the digit is rewritten in whatever read it comes.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let line = format!("GET http://{at}/bytes HTTP/1.2\r\n");
    for byte in line.as_bytes() {
        stream.write_all(&[*byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let r = exchange(&mut stream, "Host: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert!(r.head.starts_with("HTTP/1.1 200 "), "{}", r.head);
    assert_eq!(request_line(&origin), "GET /bytes HTTP/1.1");
    let records = proxy.wait_records(3).await;
    assert!(records.iter().all(|r| r.version == "HTTP/1.1"));

    // Another major version, or no minor digit, is still refused by hyper.
    let before = origin.heads().len();
    for version in ["HTTP/2.0", "HTTP/1.x", "HTTP/1.", "HTTP/1.12", "HTTP/1.2x"] {
        let answer = send(
            proxy.addr,
            format!("GET http://{at}/x {version}\r\nHost: x\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(answer.status(), Some(400), "{version}: {}", answer.shown());
    }
    assert_eq!(origin.heads().len(), before, "nothing reached the origin");
}

#[tokio::test]
async fn the_proxy_itself_answers_origin_form_requests() {
    let proxy = Proxy::start(&loopback_config(&[80], &[443])).await;
    let r = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: proxy.lan:3128\r\nAccept: text/html\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.text().contains("This is a web proxy"), "{}", r.text());
    assert!(r.text().contains("proxy.lan:3128"));
    let r = raw(
        proxy.addr,
        b"GET /nothing HTTP/1.1\r\nHost: proxy.lan\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 404);
    let r = raw(
        proxy.addr,
        b"DELETE / HTTP/1.1\r\nHost: proxy.lan\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 405);
    let records = proxy.wait_records(3).await;
    assert_eq!(records[0].rule, "local");
    assert_eq!(records[0].verdict, Verdict::Allow);
}

#[tokio::test]
async fn an_unreachable_origin_is_a_502_within_a_second() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let proxy = Proxy::start(&loopback_config(&[closed.port()], &[closed.port()])).await;
    let started = std::time::Instant::now();
    let r = get(proxy.addr, &format!("http://{closed}/")).await;
    assert_eq!(r.status, 502);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(r.text().contains("cannot connect"), "{}", r.text());
    assert!(r.text().contains(&closed.to_string()), "{}", r.text());

    let started = std::time::Instant::now();
    let (r, _) = connect(proxy.addr, &closed.to_string()).await;
    assert_eq!(r.status, 502);
    assert!(started.elapsed() < Duration::from_secs(1));
    let records = proxy.wait_records(2).await;
    assert!(records
        .iter()
        .all(|r| r.status == 502 && r.reason.is_some()));
}

#[tokio::test]
async fn a_response_smuggled_after_a_body_never_reaches_a_client() {
    let scripted = scripted_origin(&[
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ninjected",
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond",
    ])
    .await;
    let origin = scripted.addr;
    let proxy = Proxy::start(&loopback_config(&[origin.port()], &[])).await;
    let first = get(proxy.addr, &format!("http://{origin}/1")).await;
    assert_eq!(first.text(), "hi");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = get(proxy.addr, &format!("http://{origin}/2")).await;
    // The connection with bytes left over after a complete response is not reused: the
    // second request goes on a fresh connection, whose script starts again with "hi".
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), "hi", "a smuggled response reached a client");
    assert_eq!(scripted.accepts(), 2);
}

#[tokio::test]
async fn a_response_with_both_lengths_is_read_as_chunked() {
    let origin = scripted_origin(&[
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond",
    ]).await.detach();
    let proxy = Proxy::start(&loopback_config(&[origin.port()], &[])).await;
    let r = get(proxy.addr, &format!("http://{origin}/1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello");
    assert_eq!(r.header("content-length"), None, "{}", r.head);
}

/// The proxy forwards no `TE`, so an origin may use no transfer coding but chunked (RFC 9110
/// §10.1.4); passed on, `gzip` would reach an HTTP/1.0 client as plain bytes. And it forwards
/// no `Upgrade`, so a `101` is an answer to a question nobody asked.
#[tokio::test]
async fn answers_the_request_did_not_allow_are_a_bad_gateway() {
    for (what, answer, reason) in [
        (
            "gzip, chunked",
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
            "used the transfer coding gzip, which the request did not accept",
        ),
        (
            "gzip and chunked in two fields",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "used the transfer coding gzip, which the request did not accept",
        ),
        (
            "101 without an Upgrade asked for",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw bytes",
            "switched protocols (101), which the request did not ask for",
        ),
    ] {
        let origin = scripted_origin(&[answer]).await.detach();
        let proxy = Proxy::start(&loopback_config(&[origin.port()], &[])).await;
        for version in ["HTTP/1.1", "HTTP/1.0"] {
            let r = raw(
                proxy.addr,
                format!("GET http://{origin}/ {version}\r\nHost: x\r\n\r\n").as_bytes(),
            )
            .await;
            assert_eq!(r.status, 502, "{what}, {version}: {}", r.head);
            assert!(r.text().contains(reason), "{what}: {}", r.text());
            assert!(!r.text().contains("abc"), "{what}: the body went through");
        }
        let records = proxy.wait_records(2).await;
        assert!(
            records
                .iter()
                .all(|r| r.status == 502 && r.reason.as_deref().is_some_and(|t| t.contains(reason))),
            "{what}: {records:#?}"
        );
    }
}

/// hyper's client takes 100 header fields by default; pages with many cookies and policies
/// send more. Up to 256 pass; past that, the reason says what bound was met.
#[tokio::test]
async fn responses_with_many_header_fields_pass_up_to_the_bound() {
    fn answer(fields: usize) -> String {
        let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
        for i in 0..fields - 1 {
            head.push_str(&format!("X-Field-{i}: v{i}\r\n"));
        }
        head.push_str("\r\nok");
        head
    }
    for (fields, passes) in [(101, true), (250, true), (300, false)] {
        let origin = scripted_origin(&[answer(fields).as_bytes()]).await.detach();
        let proxy = Proxy::start(&loopback_config(&[origin.port()], &[])).await;
        let r = get(proxy.addr, &format!("http://{origin}/")).await;
        if passes {
            assert_eq!(r.status, 200, "{fields} fields: {}", r.text());
            assert_eq!(r.text(), "ok");
            let last = format!("x-field-{}", fields - 2);
            assert_eq!(
                r.header(&last).as_deref(),
                Some(&*format!("v{}", fields - 2))
            );
        } else {
            assert_eq!(r.status, 502, "{fields} fields");
            assert!(
                r.text()
                    .contains("a response head over the proxy's bounds (256 fields"),
                "{}",
                r.text()
            );
        }
    }
}

/// The state of the TCP connection from `local` to `remote` in `/proc/net/tcp` (`01` is
/// established), if it is listed.
#[cfg(target_os = "linux")]
fn tcp_state(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> Option<String> {
    fn hex(addr: std::net::SocketAddr) -> String {
        let std::net::IpAddr::V4(ip) = addr.ip() else {
            panic!("IPv4 only");
        };
        format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(ip.octets()),
            addr.port()
        )
    }
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()))
            .then(|| fields[3].to_owned())
    })
}

/// An upload the origin stops taking is bounded by 3 × `timeouts.response`: the client is told
/// 504 with the reason, the record says so, and the connection closes (the rest of the body
/// is never read as a request).
#[tokio::test]
async fn an_upload_the_origin_stops_taking_is_timed_out() {
    let (origin, proxy_end) = origin_that_stops_reading().await;
    let config = format!(
        "{}[timeouts]\nresponse = \"500ms\"\nrequest_body = \"30s\"\n",
        loopback_config(&[origin.port()], &[])
    );
    let proxy = Proxy::start(&config).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let total = 64 * 1024 * 1024;
    let head =
        format!("POST http://{origin}/up HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n\r\n");
    let started = std::time::Instant::now();
    // The client keeps sending while it can; the socket buffers fill and its writes block.
    let sender = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..total / chunk.len() {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut buf = Vec::new();
    let answer = read_response(&mut reader, &mut buf, false)
        .await
        .expect("an answer while the upload is stuck");
    let waited = started.elapsed();
    assert_eq!(answer.status, 504, "{}", answer.head);
    assert!(
        answer.text().contains(
            "stopped taking the request: a write to it waited 1s 500ms (3 × timeouts.response)"
        ),
        "{}",
        answer.text()
    );
    assert_eq!(answer.header("connection").as_deref(), Some("close"));
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(6),
        "answered after {waited:?}"
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(_)) | Ok(Err(_))),
        "the connection stayed open"
    );
    sender.abort();
    // The proxy lets go of its connection to the origin too (its blocked write failed),
    // rather than when the origin pleases.
    #[cfg(target_os = "linux")]
    {
        let proxy_end = proxy_end.await.unwrap();
        let mut state = tcp_state(proxy_end, origin);
        for _ in 0..50 {
            if state.as_deref() != Some("01") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            state = tcp_state(proxy_end, origin);
        }
        assert_ne!(
            state.as_deref(),
            Some("01"),
            "the origin connection is still open"
        );
    }
    let records = proxy.wait_records(1).await;
    assert_eq!(records[0].status, 504, "{records:#?}");
    assert!(records[0].bytes_up > 0 && records[0].bytes_up < total as u64);
}

#[tokio::test]
async fn an_origin_that_stalls_mid_body_is_cut_after_timeouts_response() {
    // Ten bytes announced, five sent, then silence: the origin keeps the connection open,
    // waiting for a next request that never comes.
    let origin = scripted_origin(&[
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ])
    .await
    .detach();
    let config = format!(
        "{}[timeouts]\nresponse = \"300ms\"\n",
        loopback_config(&[origin.port()], &[])
    );
    let proxy = Proxy::start(&config).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!("GET http://{origin}/ HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let got = read_to_close(&mut stream).await;
    let waited = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.ends_with("hello"), "only what the origin sent: {text}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "cut after {waited:?}"
    );
    let records = proxy.wait_records(1).await;
    assert_eq!(records[0].bytes_down, 5);
    assert!(
        records[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("sent nothing for 300ms"),
        "{:?}",
        records[0]
    );
}

/// An origin that answers `/early…` as soon as it has the head and reads the body after, and
/// answers anything else after reading its body: the path, as text.
async fn origin_answering_early() -> std::net::SocketAddr {
    Origin::serve(|mut stream| async move {
        let mut seen = Vec::new();
        for _ in 0..8 {
            let Some(head) = read_head(&mut stream, &mut seen).await else {
                return;
            };
            let length: usize = header_value(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let path = head.split(' ').nth(1).unwrap_or("").to_owned();
            let answer = if path.starts_with("/early") {
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nauth".to_owned()
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
                    path.len()
                )
            };
            if path.starts_with("/early") && stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            if read_exact_body(&mut stream, &mut seen, length)
                .await
                .is_err()
            {
                return;
            }
            if !path.starts_with("/early") && stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
    .detach()
}

/// The rest of a request body that arrives after the answer is the body's, never a request
/// head: it is not timed as one (`request_header` is short here and the body slow) and not
/// scanned as one (it looks like a request with a #fragment and both framings), so the
/// client's next request on the connection is served as it is.
#[tokio::test]
async fn a_body_still_arriving_after_an_early_answer_is_never_read_as_a_request() {
    let origin = origin_answering_early().await;
    let config = format!(
        "{}[timeouts]\nrequest_header = \"300ms\"\n",
        loopback_config(&[origin.port()], &[])
    );
    let proxy = Proxy::start(&config).await;
    let piece = format!(
        "GET http://{origin}/x#fragment HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST http://{origin}/early HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        piece.len() * 3
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let first = read_response(&mut stream, &mut buf, false).await.unwrap();
    assert_eq!(first.status, 401);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        stream.write_all(piece.as_bytes()).await.unwrap();
    }
    stream
        .write_all(format!("GET http://{origin}/second HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let second = read_response(&mut stream, &mut buf, false).await.unwrap();
    assert_eq!(second.status, 200, "{}: {}", second.head, second.text());
    assert_eq!(second.text(), "/second");
    let records = proxy.wait_records(2).await;
    let statuses: Vec<u16> = records.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [401, 200], "{records:#?}");
}

/// A request the proxy answers without reading its body (here refused by the port check)
/// says `Connection: close` and the connection ends: the body, which looks like a request,
/// is never read as one, and the origin never sees anything.
#[tokio::test]
async fn an_answer_that_leaves_the_body_unread_closes_the_connection() {
    let denied = Counter::start().await;
    let allowed = HttpOrigin::start().await;
    let proxy = Proxy::start(&loopback_config(&[allowed.addr.port()], &[])).await;
    let smuggled = format!(
        "GET http://{}/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        allowed.addr
    );
    for expect in ["", "Expect: 100-continue\r\n"] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let request = format!(
            "POST http://{}/ HTTP/1.1\r\nHost: x\r\n{expect}Content-Length: {}\r\n\r\n{smuggled}",
            denied.addr,
            smuggled.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let answer = read_response(&mut stream, &mut buf, false).await.unwrap();
        assert_eq!(answer.status, 403, "{expect:?}");
        assert_eq!(
            answer.header("connection").as_deref(),
            Some("close"),
            "{expect:?}"
        );
        assert!(
            closes_within(&mut stream, Duration::from_secs(5)).await,
            "{expect:?}"
        );
        assert!(
            buf.is_empty(),
            "a second answer: {}",
            String::from_utf8_lossy(&buf)
        );
    }
    assert_eq!(denied.accepts(), 0);
    assert_eq!(allowed.accepts(), 0, "the body was read as a request");
    let records = proxy.wait_records(2).await;
    assert_eq!(records.len(), 2, "{records:#?}");
}

#[tokio::test]
async fn a_max_forwards_that_is_not_one_number_is_refused_on_trace_and_options() {
    let origin = RawOrigin::start().await;
    let proxy = Proxy::start(&loopback_config(&[origin.addr.port()], &[])).await;
    for bad in ["-1", "abc", "0, 5"] {
        for method in ["OPTIONS", "TRACE"] {
            let r = raw(
                proxy.addr,
                format!(
                    "{method} http://{}/ HTTP/1.1\r\nHost: x\r\nMax-Forwards: {bad}\r\nConnection: close\r\n\r\n",
                    origin.addr
                )
                .as_bytes(),
            )
            .await;
            assert_eq!(r.status, 400, "{method} with {bad:?}: {}", r.text());
            assert!(r.text().contains("Max-Forwards must be one decimal number"));
        }
    }
    assert_eq!(origin.accepts(), 0, "a refused request reached the origin");
    // Other methods carry the field as it came.
    let r = raw(
        proxy.addr,
        format!(
            "GET http://{}/ HTTP/1.1\r\nHost: x\r\nMax-Forwards: abc\r\nConnection: close\r\n\r\n",
            origin.addr
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    let head = origin.heads().pop().unwrap();
    assert_eq!(header_value(&head, "max-forwards").as_deref(), Some("abc"));
}

#[tokio::test]
async fn a_content_length_past_signed_64_bits_is_refused_before_the_origin() {
    let origin = RawOrigin::start().await;
    let proxy = Proxy::start(&loopback_config(&[origin.addr.port()], &[])).await;
    for (cl, status) in [("9223372036854775808", 400), ("18446744073709551615", 431)] {
        let r = raw(
            proxy.addr,
            format!(
                "POST http://{}/ HTTP/1.1\r\nHost: x\r\nContent-Length: {cl}\r\n\r\nabc",
                origin.addr
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(r.status, status, "{cl}: {}", r.text());
        if status == 400 {
            assert!(r.text().contains("past 2^63 - 1"), "{}", r.text());
        }
    }
    assert_eq!(origin.accepts(), 0);
}

#[tokio::test]
async fn a_chunked_upload_with_a_trailer_keeps_the_connection() {
    let origin = RawOrigin::start().await;
    let proxy = Proxy::start(&loopback_config(&[origin.addr.port()], &[])).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let upload = format!(
        "POST http://{}/up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
         5\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n",
        origin.addr
    );
    let first = exchange(&mut stream, upload.as_bytes()).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_ne!(
        first.header("connection").as_deref(),
        Some("close"),
        "a trailer closed the connection"
    );
    // The same connection serves the next request.
    let next = exchange(
        &mut stream,
        format!(
            "GET http://{}/next HTTP/1.1\r\nHost: x\r\n\r\n",
            origin.addr
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(next.status, 200);
}

/// An origin that answers the first request of each connection with keep-alive, and resets
/// the connection when a second request comes on it.
async fn closes_kept_alive_connections() -> Origin {
    Origin::serve(|mut stream| async move {
        let mut buf = Vec::new();
        let Some(head) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        if let Some(n) = header_value(&head, "content-length").and_then(|v| v.parse::<usize>().ok())
        {
            let mut rest = vec![0u8; n.saturating_sub(buf.len())];
            let _ = stream.read_exact(&mut rest).await;
        }
        buf.clear();
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await;
        // The next request on this connection: read it, then reset the connection.
        if read_head(&mut stream, &mut buf).await.is_some() {
            let _ = stream.set_zero_linger();
        }
    })
    .await
}

#[tokio::test]
async fn a_kept_alive_origin_connection_closed_unanswered_is_retried_for_safe_requests_only() {
    let origin = closes_kept_alive_connections().await;
    let proxy = Proxy::start(&loopback_config(&[origin.addr.port()], &[])).await;
    let url = |path: &str| format!("http://{}{path}", origin.addr);
    // The first GET opens a connection; the second goes over it, which the origin closes
    // unanswered: retried on a fresh one.
    for (i, method) in ["GET", "GET", "DELETE", "HEAD"].iter().enumerate() {
        let r = raw(
            proxy.addr,
            format!(
                "{method} {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                url(&format!("/{i}"))
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200, "{method} #{i}: {}", r.text());
        // The origin connection goes back to the pool once its answer is through.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let records = proxy.wait_records(4).await;
    let retried = records
        .iter()
        .filter(|r| {
            r.reason
                .as_deref()
                .unwrap_or("")
                .contains("sent again on a fresh one")
        })
        .count();
    assert!(retried >= 2, "{records:#?}");
    // A request that cannot be sent twice never goes over a kept-alive connection.
    let accepted = origin.accepts();
    for method in ["POST", "PATCH"] {
        let r = raw(
            proxy.addr,
            format!(
                "{method} {} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
                url("/form")
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200, "{method}: {}", r.text());
    }
    assert_eq!(origin.accepts(), accepted + 2, "each on a fresh connection");
}
