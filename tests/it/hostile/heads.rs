//! Oversize heads and header injection: nothing oversize or injected reaches the origin.

use super::*;

#[tokio::test]
async fn oversize_heads_are_431_and_never_forwarded() {
    let origin = StrictOrigin::start().await;
    let denied = Counter::start().await;
    let a = origin.addr.port();
    let proxy = proxy_for(
        a,
        "[limits]\nmax_header_bytes = 4096\nmax_request_line = 1024\nmax_headers = 20\n",
    )
    .await;
    let get = |fields: String| {
        format!("GET http://127.0.0.1:{a}/big HTTP/1.1\r\nHost: x\r\n{fields}\r\n")
    };
    let many = |n: usize| (0..n).map(|i| format!("X-F{i}: v\r\n")).collect::<String>();
    let cases = [
        case(
            "a head over limits.max_header_bytes",
            get(format!("X-Pad: {}\r\n", "a".repeat(4500))),
            Expect::StatusClose(431),
        ),
        case(
            "many small fields over max_header_bytes",
            get((0..15)
                .map(|i| format!("X-Field-{i:02}: {}\r\n", "b".repeat(300)))
                .collect()),
            Expect::StatusClose(431),
        ),
        case(
            "more fields than limits.max_headers",
            get(many(30)),
            Expect::StatusClose(431),
        ),
        case(
            "far more fields than hyper's own bound",
            get(many(200)),
            Expect::StatusClose(431),
        ),
        case(
            "a 1 MiB head",
            get(format!("X-Flood: {}\r\n", "c".repeat(1 << 20))),
            Expect::StatusOrClosed(431),
        ),
        case(
            "a 1 MiB request line",
            format!(
                "GET http://127.0.0.1:{a}/{} HTTP/1.1\r\nHost: x\r\n\r\n",
                "d".repeat(1 << 20)
            ),
            // Past hyper's buffer, before the line has ended: hyper's bare answer.
            Expect::StatusOrClosed(431),
        ),
        case(
            "a head that never ends (1 MiB of fields, no blank line)",
            format!(
                "GET http://127.0.0.1:{a}/ HTTP/1.1\r\n{}",
                "X-A: b\r\n".repeat(1 << 17)
            ),
            Expect::StatusOrClosed(431),
        ),
        case(
            "just under the limits (control)",
            get(format!("X-Pad: {}\r\n{}", "a".repeat(3000), many(10))),
            Expect::Status(200),
        ),
    ];
    run_table("oversize heads", proxy.addr, &cases, &denied).await;
    let seen = origin.seen();
    assert_eq!(seen.len(), 1, "only the control request travels: {seen:#?}");
}

#[tokio::test]
async fn header_injection_never_adds_a_field_at_the_origin() {
    let origin = StrictOrigin::start().await;
    let denied = Counter::start().await;
    let a = origin.addr.port();
    let proxy = proxy_for(a, "").await;
    let get = |target: &str, fields: &str| {
        format!("GET http://127.0.0.1:{a}{target} HTTP/1.1\r\n{fields}\r\n")
    };
    let cases = [
        case(
            "CRLF via obs-fold in a value",
            get("/i", "Host: x\r\nX-A: a\r\n X-Injected: evil\r\n"),
            Expect::StatusClose(400),
        ),
        case(
            "bare CR before a field-like text",
            get("/i", "Host: x\r\nX-A: a\rX-Injected: evil\r\n"),
            Expect::StatusClose(400),
        ),
        case(
            "Host header with a CR inside",
            get("/i", "Host: 127.0.0.1\rX-Injected: evil\r\n"),
            Expect::StatusClose(400),
        ),
        case(
            "Host header with a NUL inside",
            get("/i", "Host: 127.0.0.1\0X-Injected: evil\r\n"),
            Expect::StatusClose(400),
        ),
        case(
            "raw CR in the target",
            format!("GET http://127.0.0.1:{a}/i\rX-Injected: evil HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(400),
        ),
        case(
            "encoded CRLF in the path",
            get("/a%0d%0aX-Injected:%20evil", "Host: x\r\n"),
            Expect::Status(200),
        ),
        case(
            "encoded CRLF in the query",
            get("/q?x=%0D%0AX-Injected:%20evil", "Host: x\r\n"),
            Expect::Status(200),
        ),
        case(
            "encoded CRLF in the host",
            format!(
                "GET http://127.0.0.1%0d%0aX-Injected:%20evil:{a}/ HTTP/1.1\r\nHost: x\r\n\r\n"
            ),
            Expect::StatusClose(400),
        ),
        case(
            "a field named in Connection is dropped, not injected",
            get(
                "/c",
                "Host: x\r\nConnection: X-Injected\r\nX-Injected: evil\r\n",
            ),
            Expect::Status(200),
        ),
    ];
    run_table("header injection", proxy.addr, &cases, &denied).await;
    let seen = origin.seen();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    for s in &seen {
        let Seen::Request { head, .. } = s else {
            panic!("the origin read junk: {s:?}");
        };
        assert!(!has_field(head, "x-injected"), "{head}");
        // Every line of what the origin reads ends in CRLF: no bare CR or LF travelled.
        assert!(
            !head.split("\r\n").any(|l| l.contains(['\r', '\n', '\0'])),
            "{head:?}"
        );
        assert_eq!(header_value(head, "host"), Some(format!("127.0.0.1:{a}")));
    }
    assert!(seen[0]
        .head()
        .unwrap()
        .starts_with("GET /a%0d%0aX-Injected:%20evil HTTP/1.1\r\n"));
}
