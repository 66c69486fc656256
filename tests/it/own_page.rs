//! The proxy's own page as people meet it: a visit to `http://PROXY:3128/` brings what a
//! browser asks of any site on its own (`/favicon.ico`, `/apple-touch-icon.png`,
//! `/robots.txt`), and none of it may show as a refusal of the visitor, nor count as traffic
//! or failures in `/metrics` and `/status`; a real refusal still shows. The page gives the
//! PAC URL by the name the client used, as the PAC file does. Last, the same visit and a
//! reload in headless Chromium.

use std::net::SocketAddr;

use portcullis::observe::access::Verdict;

use crate::browser::{chromium_or_skip, run_chromium_in};
use crate::support::*;

/// `GET path` of the proxy's own pages at `proxy`, with `Host: host` and `extra` header lines.
async fn own(proxy: SocketAddr, host: &str, path: &str, extra: &str) -> RawResponse {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    raw(proxy, request.as_bytes()).await
}

const HTML: &str = "Accept: text/html,application/xhtml+xml\r\n";
const NOTHING_REFUSED: &str = "Nothing has been refused for your address recently.";

#[tokio::test]
async fn a_visit_and_what_the_browser_asks_on_its_own_are_no_refusal_and_no_traffic() {
    let proxy = Proxy::start_observed(settings_of("[ports]\nconnect = [443]\n"), true, None).await;
    let (me, admin) = (proxy.addr, proxy.admin.unwrap());
    let host = me.to_string();

    // The visit: the page, then what browsers ask of a site on their own.
    let page = own(me, &host, "/", HTML).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains(NOTHING_REFUSED), "{}", page.text());
    assert!(
        page.text()
            .contains("<link rel=\"icon\" href=\"/favicon.ico\" type=\"image/svg+xml\">"),
        "{}",
        page.text()
    );
    let icon = own(me, &host, "/favicon.ico", "Accept: image/*\r\n").await;
    assert_eq!(icon.status, 200, "{}", icon.text());
    assert_eq!(
        icon.header("content-type").as_deref(),
        Some("image/svg+xml")
    );
    assert_eq!(
        icon.header("cache-control").as_deref(),
        Some("max-age=86400")
    );
    assert!(
        icon.text()
            .starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{}",
        icon.text()
    );
    // A client set to use the proxy asks the same with an absolute URL.
    let absolute = own(me, &host, &format!("http://{me}/favicon.ico"), "").await;
    assert_eq!((absolute.status, absolute.body), (200, icon.body));
    for path in ["/apple-touch-icon.png", "/apple-touch-icon-precomposed.png"] {
        let touch = own(me, &host, path, "").await;
        assert_eq!(touch.status, 404, "{path}");
        assert_eq!(
            touch.text(),
            format!("{path} is not a page of this proxy\n")
        );
    }
    let robots = own(me, &host, "/robots.txt", "").await;
    assert_eq!(
        (robots.status, robots.text().as_str()),
        (200, "User-agent: *\nDisallow: /\n")
    );
    let pac = own(me, &host, "/proxy.pac", "").await;
    assert_eq!(pac.status, 200);
    assert!(
        pac.text().contains(&format!("PROXY {me}")),
        "{}",
        pac.text()
    );
    let post = raw(
        me,
        format!("POST / HTTP/1.1\r\nHost: {me}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow").as_deref(), Some("GET, HEAD"));

    // Each is in the access log as the proxy's own answer, none refused, none failed.
    let records = proxy.wait_records(8).await;
    let shown: Vec<(Option<&str>, u16)> = records
        .iter()
        .map(|r| (r.path.as_deref(), r.status))
        .collect();
    assert_eq!(
        shown,
        [
            (Some("/"), 200),
            (Some("/favicon.ico"), 200),
            (Some("/favicon.ico"), 200),
            (Some("/apple-touch-icon.png"), 404),
            (Some("/apple-touch-icon-precomposed.png"), 404),
            (Some("/robots.txt"), 200),
            (Some("/proxy.pac"), 200),
            (Some("/"), 405),
        ],
        "{records:#?}"
    );
    for r in &records {
        assert_eq!(
            (r.rule.to_string().as_str(), r.verdict, r.error),
            ("local", Verdict::Allow, None),
            "{r:?}"
        );
        assert_eq!((r.host.as_str(), r.port), ("127.0.0.1", me.port()), "{r:?}");
    }
    assert_eq!(
        records[3].reason.as_deref(),
        Some("/apple-touch-icon.png is not a page of this proxy")
    );

    // The page again, as a reload shows it, in both forms: nothing refused.
    let again = own(me, &host, "/", HTML).await.text();
    assert!(again.contains(NOTHING_REFUSED), "{again}");
    assert!(!again.contains("is not a page"), "{again}");
    let text = own(me, &host, "/", "").await.text();
    assert!(
        text.ends_with("Recently refused for your address (127.0.0.1):\n  nothing\n"),
        "{text}"
    );

    // Nothing of it is traffic: no port, no client, no failure, no refusal.
    let metrics = Metrics::scrape(admin).await;
    let port = me.port().to_string();
    assert!(
        metrics.labelled("port", &port).is_empty(),
        "{}",
        metrics.text
    );
    for family in [
        "portcullis_requests_total",
        "portcullis_denied_total",
        "portcullis_client_requests_total",
        "portcullis_client_denied_total",
    ] {
        assert!(metrics.samples(family).is_empty(), "{}", metrics.text);
    }
    let failures: f64 = metrics
        .samples("portcullis_errors_total")
        .iter()
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => f64::NAN,
        })
        .sum();
    assert_eq!(failures, 0.0, "{}", metrics.text);
    let status: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/status.json").await.text()).unwrap();
    assert_eq!(status["ports"], serde_json::json!([]), "{status}");
    assert_eq!(status["clients"], serde_json::json!([]), "{status}");
    assert_eq!(status["recent_denials"], serde_json::json!([]), "{status}");
    let page = admin_get(admin, "/status").await.text();
    assert!(page.contains("<b id=\"total-requests\">0</b>"), "{page}");
    assert!(!page.contains(&format!("data-port=\"{port}\"")), "{page}");

    // A real refusal of the person still shows, and counts.
    let (refused, _) = connect(me, "127.0.0.1:25").await;
    assert_eq!(refused.status, 403);
    proxy.wait_records(records.len() + 3).await;
    let page = own(me, &host, "/", HTML).await.text();
    assert!(!page.contains(NOTHING_REFUSED), "{page}");
    assert!(page.contains("CONNECT 127.0.0.1:25"), "{page}");
    assert!(page.contains("(ports.connect)"), "{page}");
    assert_eq!(page.matches("<tr><td>").count(), 1, "one refusal: {page}");
    let metrics = Metrics::scrape(admin).await;
    let smtp = [("port", "25"), ("kind", "connect")];
    assert_eq!(metrics.value("portcullis_denied_total", &smtp), Some(1.0));
    let me_client = [("client", "127.0.0.1")];
    assert_eq!(
        metrics.value("portcullis_client_requests_total", &me_client),
        Some(1.0)
    );
    assert_eq!(
        metrics.value("portcullis_client_denied_total", &me_client),
        Some(1.0)
    );
    assert!(
        metrics.labelled("port", &port).is_empty(),
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn the_page_gives_the_pac_url_by_the_name_the_client_used() {
    let proxy = Proxy::start("").await;
    let me = proxy.addr;
    let port = me.port();
    // (Host as sent, the proxy as the page and the PAC file name it)
    let cases = [
        (
            "portcullis.lan:3128".to_owned(),
            "portcullis.lan:3128".to_owned(),
        ),
        (
            "portcullis.lan".to_owned(),
            format!("portcullis.lan:{port}"),
        ),
        (me.to_string(), me.to_string()),
        // Not a host a client could use: the address the request arrived on.
        ("<b>bad</b>".to_owned(), me.to_string()),
    ];
    for (host, proxy_is) in cases {
        let url = format!("http://{proxy_is}/proxy.pac");
        let text = own(me, &host, "/", "").await.text();
        let html = own(me, &host, "/", HTML).await.text();
        let wanted = [
            (&text, format!("set {proxy_is} as the HTTP and HTTPS proxy")),
            (
                &text,
                format!("Automatic configuration (setup script): {url}\n"),
            ),
            (&html, format!("<code id=\"proxy\">{proxy_is}</code>")),
            (&html, format!("<code id=\"pac\">{url}</code>")),
        ];
        for (page, want) in wanted {
            assert!(page.contains(&want), "{host}: no {want:?} in {page}");
        }
        let pac = own(me, &host, "/proxy.pac", "").await.text();
        assert!(
            pac.contains(&format!("\"PROXY {proxy_is}\"")),
            "{host}: the PAC names the proxy as the page does: {pac}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_visits_the_page_and_a_reload_shows_no_refusal() {
    let Some(binary) = chromium_or_skip() else {
        return;
    };
    let proxy = Proxy::start("").await;
    let url = format!("http://{}/", proxy.addr);
    let profile = tempfile::tempdir().unwrap();
    let run = |args: Vec<String>| {
        let (binary, profile) = (binary.clone(), profile.path().to_owned());
        tokio::task::spawn_blocking(move || run_chromium_in(&binary, &profile, &args))
    };
    // The visit, with time enough for the browser to ask its icon too. Headless Chromium
    // now and then ends before it does: at most three visits, until it has.
    let asked_icon = || {
        proxy
            .records()
            .iter()
            .any(|r| r.path.as_deref() == Some("/favicon.ico"))
    };
    let mut first = String::new();
    for _ in 0..3 {
        first = run(vec![
            "--virtual-time-budget=3000".into(),
            "--dump-dom".into(),
            url.clone(),
        ])
        .await
        .unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while !asked_icon() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if asked_icon() {
            break;
        }
    }
    assert!(
        asked_icon(),
        "the browser asked its icon: {:#?}",
        proxy.records()
    );
    assert!(first.contains("This is a web proxy"), "{first}");
    assert!(
        first.contains(&format!("http://{}/proxy.pac", proxy.addr)),
        "the PAC URL: {first}"
    );
    // The reload, in the same profile.
    let reload = run(vec!["--dump-dom".into(), url]).await.unwrap();
    assert!(reload.contains(NOTHING_REFUSED), "{reload}");
    let records = proxy.records();
    assert!(
        records
            .iter()
            .all(|r| r.verdict == Verdict::Allow && r.rule == "local"),
        "{records:#?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r.path.as_deref() == Some("/favicon.ico") && r.status == 200),
        "the icon was answered: {records:#?}"
    );
}
