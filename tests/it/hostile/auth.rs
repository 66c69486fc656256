//! Who may use the proxy: clients outside the allow-list, and authentication edge cases.

use super::*;

#[tokio::test]
async fn clients_outside_the_allow_list_get_nothing() {
    let origin = StrictOrigin::start().await;
    let denied = Counter::start().await;
    let (a, d) = (origin.addr.port(), denied.addr.port());
    // 127.0.0.1 is outside 10.0.0.0/8: this proxy serves nobody in the test.
    let proxy = proxy_for(a, "[clients]\nallow = [\"10.0.0.0/8\"]\n").await;
    let cases = [
        case(
            "GET an allowed origin",
            format!("GET http://127.0.0.1:{a}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(403),
        ),
        case(
            "CONNECT an allowed origin",
            format!("CONNECT 127.0.0.1:{a} HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(403),
        ),
        case(
            "origin-form (the info page)",
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            Expect::StatusClose(403),
        ),
        case(
            "GET the denied port",
            format!("GET http://127.0.0.1:{d}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(403),
        ),
        case(
            "POST with a body",
            format!(
                "POST http://127.0.0.1:{a}/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            ),
            Expect::StatusClose(403),
        ),
        case(
            "a malformed target",
            format!("GET 127.0.0.1:{a} HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(403),
        ),
    ];
    run_table("clients outside clients.allow", proxy.addr, &cases, &denied).await;
    assert_eq!(origin.accepts(), 0);
    let records = proxy.wait_records(cases.len()).await;
    assert!(
        records.iter().all(|r| r.rule == "clients.allow"),
        "{records:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

const REALM: &str = "Hostile test";
const USER: &str = "alice";
const PASSWORD: &str = "s3cret:with colon";

fn auth_config(path: &std::path::Path, max_failures: u32) -> String {
    format!(
        "[auth]\nhtpasswd = {:?}\nrealm = \"{REALM}\"\nmax_failures = {max_failures}\nfailure_window = \"1m\"\nblock_for = \"1m\"\n",
        path.display().to_string()
    )
}

#[tokio::test]
async fn authentication_edge_cases() {
    let origin = StrictOrigin::start().await;
    let denied = Counter::start().await;
    let (a, d) = (origin.addr.port(), denied.addr.port());
    let dir = tempfile::tempdir().unwrap();
    let path = htpasswd(dir.path(), &[(USER, PASSWORD)]);
    let proxy = proxy_for(a, &auth_config(&path, 1000)).await;
    let good = basic(format!("{USER}:{PASSWORD}").as_bytes());
    let get =
        |fields: &str| format!("GET http://127.0.0.1:{a}/auth HTTP/1.1\r\nHost: x\r\n{fields}\r\n");
    let with = |value: &str| get(&format!("Proxy-Authorization: {value}\r\n"));
    let cases = [
        case("no Proxy-Authorization", get(""), Expect::Status(407)),
        case(
            "CONNECT without credentials",
            format!("CONNECT 127.0.0.1:{a} HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::Status(407),
        ),
        case(
            "the denied port without credentials",
            format!("GET http://127.0.0.1:{d}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::Status(407),
        ),
        case("wrong scheme (Bearer)", with("Bearer abc.def"), Expect::Status(407)),
        case("wrong scheme (Digest)", with("Digest username=\"alice\""), Expect::Status(407)),
        case("Basic without a token", with("Basic"), Expect::Status(407)),
        case("bad base64", with("Basic !!!not-base64!!!"), Expect::Status(407)),
        case("base64 of non-UTF-8", with(&basic(b"\xff\xfe:\xfd")), Expect::Status(407)),
        case("no colon", with(&basic(USER.as_bytes())), Expect::Status(407)),
        case("empty user", with(&basic(format!(":{PASSWORD}").as_bytes())), Expect::Status(407)),
        case("control byte in the user", with(&basic(b"al\x01ice:x")), Expect::Status(407)),
        case("wrong password", with(&basic(format!("{USER}:wrong").as_bytes())), Expect::Status(407)),
        case("unknown user", with(&basic(format!("mallory:{PASSWORD}").as_bytes())), Expect::Status(407)),
        case(
            "password cut at its colon",
            with(&basic(b"alice:s3cret")),
            Expect::Status(407),
        ),
        case(
            "user name in another case",
            with(&basic(format!("ALICE:{PASSWORD}").as_bytes())),
            Expect::Status(407),
        ),
        case(
            "credentials in Authorization instead",
            get(&format!("Authorization: {good}\r\n")),
            Expect::Status(407),
        ),
        case(
            "an oversized header",
            with(&format!("Basic {}", "A".repeat(5000))),
            Expect::Status(407),
        ),
        case("the right password", with(&good), Expect::Status(200)),
        case(
            "the right password, scheme in lower case",
            with(&good.replacen("Basic", "basic", 1)),
            Expect::Status(200),
        ),
        case(
            "the right password to the denied port",
            format!("GET http://127.0.0.1:{d}/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {good}\r\n\r\n"),
            Expect::Status(403),
        ),
        case(
            "the right password, CONNECT to the denied port",
            format!("CONNECT 127.0.0.1:{d} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {good}\r\n\r\n"),
            Expect::Status(403),
        ),
        case(
            "the proxy's own page needs no credentials",
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            Expect::Status(200),
        ),
    ];
    run_table("authentication", proxy.addr, &cases, &denied).await;

    // Each 407 carries the challenge.
    let r = send(proxy.addr, get("").as_bytes()).await;
    let challenge = r.response.unwrap().header("proxy-authenticate");
    assert_eq!(
        challenge.as_deref(),
        Some(format!("Basic realm=\"{REALM}\", charset=\"UTF-8\"").as_str())
    );
    // The credential never reaches the origin, nor do the ones sent without a chance.
    let seen = origin.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    for s in &seen {
        let head = s.head().unwrap();
        assert!(!has_field(head, "proxy-authorization"), "{head}");
        assert!(!head.contains(&good[6..]), "{head}");
    }
    // TRACE answered by the proxy itself (Max-Forwards: 0) echoes no credential.
    let trace = format!(
        "TRACE http://127.0.0.1:{a}/t HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\nProxy-Authorization: {good}\r\nCookie: s=1\r\nX-Seen: yes\r\n\r\n"
    );
    let r = send(proxy.addr, trace.as_bytes()).await.response.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("x-seen: yes"), "{}", r.text());
    assert!(
        !r.text().to_ascii_lowercase().contains("authorization"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains(&good[6..]), "{}", r.text());
    assert!(!r.text().contains("s=1"), "{}", r.text());
    let records = proxy.records();
    assert!(
        records
            .iter()
            .filter(|r| r.status == 200 && r.rule != "local")
            .all(|r| r.user.as_deref() == Some(USER)),
        "{records:#?}"
    );
}

#[tokio::test]
async fn repeated_failures_are_refused_with_429_and_retry_after() {
    let origin = StrictOrigin::start().await;
    let denied = Counter::start().await;
    let a = origin.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let path = htpasswd(dir.path(), &[(USER, PASSWORD)]);
    let proxy = proxy_for(a, &auth_config(&path, 3)).await;
    let get = |credentials: &str| {
        format!(
            "GET http://127.0.0.1:{a}/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\n\r\n",
            basic(credentials.as_bytes())
        )
    };
    let good = format!("{USER}:{PASSWORD}");
    let cases = [
        case("failure 1", get("alice:one"), Expect::Status(407)),
        case("failure 2", get("alice:two"), Expect::Status(407)),
        case(
            "failure 3 (now blocked)",
            get("alice:three"),
            Expect::Status(407),
        ),
        case(
            "blocked: another wrong one",
            get("alice:four"),
            Expect::StatusClose(429),
        ),
        case(
            "blocked: even the right one",
            get(&good),
            Expect::StatusClose(429),
        ),
        case(
            "blocked: CONNECT",
            format!("CONNECT 127.0.0.1:{a} HTTP/1.1\r\nHost: x\r\n\r\n"),
            Expect::StatusClose(429),
        ),
    ];
    run_table("failure blocking", proxy.addr, &cases, &denied).await;
    let r = send(proxy.addr, get(&good).as_bytes()).await;
    let r = r.response.unwrap();
    assert_eq!(r.status, 429);
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without a numeric Retry-After: {}", r.head));
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(origin.accepts(), 0);
}
