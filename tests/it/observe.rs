//! Outbound port use, seen: access-log lines of each format produced by real traffic and
//! parsed back, counters equal to the traffic sent, `/metrics` read by a Prometheus
//! exposition parser, the status pages, and the self-service page.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use portcullis::observe::log::{AccessLog, Destination, Format, JsonRecord};
use tokio::io::AsyncWriteExt;

/// The traffic every test here sends: 4 GETs to `web` (13-byte bodies: `hello GET /pN`), 2 refused GETs to
/// `denied`, and one tunnel to `tunnel` carrying 1000 bytes up and `got 1000 bytes` down.
struct Traffic {
    web: HttpOrigin,
    denied: Counter,
    tunnel: SocketAddr,
}

impl Traffic {
    async fn new() -> Traffic {
        Traffic {
            web: HttpOrigin::start().await,
            denied: Counter::start().await,
            tunnel: counting_origin().await,
        }
    }

    fn config(&self, extra: &str) -> String {
        format!(
            "[destinations]\nallow_loopback = true\n[ports]\nhttp = [{}]\nconnect = [{}]\n{extra}",
            self.web.addr.port(),
            self.tunnel.port()
        )
    }

    /// Sends the traffic; returns the length of one refusal's body.
    async fn send(&self, proxy: SocketAddr) -> u64 {
        for i in 0..4 {
            let r = get(proxy, &format!("http://{}/p{i}", self.web.addr)).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.body.len(), 13);
        }
        let mut refusal = 0;
        for _ in 0..2 {
            let r = get(proxy, &format!("http://{}/", self.denied.addr)).await;
            assert_eq!(r.status, 403);
            refusal = r.body.len() as u64;
        }
        let (answer, mut stream) = connect(proxy, &self.tunnel.to_string()).await;
        assert_eq!(answer.status, 200);
        stream.write_all(&[b'x'; 1000]).await.unwrap();
        stream.shutdown().await.unwrap();
        assert_eq!(read_to_close(&mut stream).await, b"got 1000 bytes");
        refusal
    }
}

async fn logged_proxy(
    traffic: &Traffic,
    dir: &Path,
    format: Format,
) -> (Proxy, std::path::PathBuf) {
    let path = dir.join("access.log");
    let log = AccessLog::start(
        Destination::File(path.clone()),
        format,
        Arc::new(AtomicU64::new(0)),
        Arc::new(|_| Some("test-box".to_owned())),
    )
    .unwrap()
    .unwrap();
    let settings = settings_of(&traffic.config(""));
    (
        Proxy::start_observed(settings, false, Some(Arc::new(log))).await,
        path,
    )
}

#[tokio::test]
async fn json_log_lines_carry_every_field() {
    let traffic = Traffic::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, path) = logged_proxy(&traffic, dir.path(), Format::Json).await;
    let _ = traffic.send(proxy.addr).await;
    let lines = file_lines(&path, 7).await;
    assert_eq!(lines.len(), 7, "{lines:#?}");
    let records: Vec<JsonRecord> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let web = traffic.web.addr;
    for r in &records[..4] {
        assert_eq!(
            (r.status, r.port, r.decision.as_str()),
            (200, web.port(), "allow")
        );
        assert_eq!(r.method, "GET");
        assert!(
            r.url
                .starts_with(&format!("http://127.0.0.1:{}/p", web.port())),
            "{}",
            r.url
        );
        assert_eq!(r.upstream.as_deref(), Some(web.to_string().as_str()));
        assert_eq!((r.bytes_up, r.bytes_down), (0, 13));
        assert_eq!(r.rule, "ports.http");
        assert_eq!(r.client, "127.0.0.1");
        assert_eq!(r.client_name.as_deref(), Some("test-box"));
        assert!(humantime::parse_rfc3339(&r.time).is_ok(), "{}", r.time);
    }
    for r in &records[4..6] {
        assert_eq!((r.status, r.decision.as_str()), (403, "deny"));
        assert_eq!(r.port, traffic.denied.addr.port());
        assert!(r
            .reason
            .as_deref()
            .unwrap()
            .contains("not allowed for plain HTTP"));
        assert_eq!(r.upstream, None);
    }
    let t = &records[6];
    assert_eq!(
        (t.method.as_str(), t.status, t.url.as_str()),
        ("CONNECT", 200, traffic.tunnel.to_string().as_str())
    );
    assert_eq!((t.bytes_up, t.bytes_down), (1000, 14));
    assert_eq!(t.rule, "ports.connect");
    assert_eq!(traffic.denied.accepts(), 0);
}

#[tokio::test]
async fn squid_log_lines_follow_the_native_layout() {
    let traffic = Traffic::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, path) = logged_proxy(&traffic, dir.path(), Format::Squid).await;
    let _ = traffic.send(proxy.addr).await;
    let lines = file_lines(&path, 7).await;
    assert_eq!(lines.len(), 7, "{lines:#?}");
    // time.ms elapsed client code/status bytes method URL user hierarchy/peer type
    let fields: Vec<Vec<&str>> = lines
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    for (line, f) in lines.iter().zip(&fields) {
        assert_eq!(f.len(), 10, "{line}");
        let (secs, millis) = f[0].split_once('.').unwrap();
        assert!(
            secs.parse::<u64>().unwrap() > 1_700_000_000 && millis.len() == 3,
            "{line}"
        );
        assert!(f[1].parse::<u64>().is_ok(), "{line}");
        assert_eq!(f[2], "127.0.0.1");
        assert_eq!(f[7], "-", "no user: {line}");
        assert_eq!(f[9], "-");
    }
    let web = traffic.web.addr;
    assert_eq!(fields[0][3], "TCP_MISS/200");
    assert_eq!(fields[0][4], "13");
    assert_eq!(fields[0][6], format!("http://{web}/p0"));
    assert_eq!(fields[0][8], "HIER_DIRECT/127.0.0.1");
    assert_eq!(fields[4][3], "TCP_DENIED/403");
    assert_eq!(fields[4][8], "HIER_NONE/-");
    assert_eq!(fields[6][3], "TCP_TUNNEL/200");
    assert_eq!(fields[6][5], "CONNECT");
    assert_eq!(fields[6][6], traffic.tunnel.to_string());
    assert_eq!(fields[6][4], "14");
}

#[tokio::test]
async fn common_log_lines_read_like_a_web_server_s() {
    let traffic = Traffic::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, path) = logged_proxy(&traffic, dir.path(), Format::Common).await;
    let _ = traffic.send(proxy.addr).await;
    let lines = file_lines(&path, 7).await;
    assert_eq!(lines.len(), 7);
    let web = traffic.web.addr;
    let first = &lines[0];
    assert!(first.starts_with("127.0.0.1 - - ["), "{first}");
    assert!(
        first.ends_with(&format!("] \"GET http://{web}/p0 HTTP/1.1\" 200 13")),
        "{first}"
    );
    assert!(lines[4].contains(" HTTP/1.1\" 403 "), "{}", lines[4]);
    assert!(
        lines[6].contains(&format!("\"CONNECT {} HTTP/1.1\" 200 14", traffic.tunnel)),
        "{}",
        lines[6]
    );
}

#[tokio::test]
async fn the_log_reopens_after_rotation_and_counts_what_it_cannot_write() {
    let traffic = Traffic::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let log = Arc::new(
        AccessLog::start(
            Destination::File(path.clone()),
            Format::Squid,
            Arc::new(AtomicU64::new(0)),
            Arc::new(|_| None),
        )
        .unwrap()
        .unwrap(),
    );
    let settings = settings_of(&traffic.config(""));
    let proxy = Proxy::start_observed(settings, false, Some(log.clone())).await;
    let url = format!("http://{}/x", traffic.web.addr);
    get(proxy.addr, &url).await;
    assert_eq!(file_lines(&path, 1).await.len(), 1);
    // logrotate: move the file away, then signal.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    log.reopen();
    tokio::time::sleep(Duration::from_millis(200)).await;
    get(proxy.addr, &url).await;
    get(proxy.addr, &url).await;
    assert_eq!(
        file_lines(&path, 2).await.len(),
        2,
        "new lines go to the new file"
    );
    assert_eq!(
        file_lines(&rotated, 1).await.len(),
        1,
        "old lines stay in the rotated file"
    );

    // A full disk: every write fails, nothing blocks, and the loss is counted, exactly (the
    // full disk of a real file is in full_disk.rs).
    let dropped = Arc::new(AtomicU64::new(0));
    let full = Arc::new(
        AccessLog::start(
            Destination::File("/dev/full".into()),
            Format::Squid,
            dropped.clone(),
            Arc::new(|_| None),
        )
        .unwrap()
        .unwrap(),
    );
    let settings = settings_of(&traffic.config(""));
    let proxy = Proxy::start_observed(settings, true, Some(full.clone())).await;
    for _ in 0..3 {
        assert_eq!(get(proxy.addr, &url).await.status, 200);
    }
    proxy.wait_records(3).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while dropped.load(Ordering::Relaxed) < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    full.flush(WAIT);
    assert_eq!(dropped.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn counters_equal_the_traffic_and_metrics_parse() {
    let traffic = Traffic::new().await;
    let config = traffic.config("[clients.names]\n\"127.0.0.1\" = \"test-box\"\n");
    let settings = settings_of(&config);
    let proxy = Proxy::start_observed(settings, true, None).await;
    let _ = traffic.send(proxy.addr).await;
    proxy.wait_records(7).await;
    let admin = proxy.admin.unwrap();

    let metrics = Metrics::scrape(admin).await;
    let value = |metric: &str, labels: &[(&str, &str)]| metrics.value(metric, labels);
    let web = traffic.web.addr.port().to_string();
    let denied = traffic.denied.addr.port().to_string();
    let tunnel = traffic.tunnel.port().to_string();
    assert_eq!(
        value(
            "portcullis_requests_total",
            &[("port", &web), ("kind", "http")]
        ),
        Some(4.0)
    );
    assert_eq!(
        value("portcullis_bytes_down_total", &[("port", &web)]),
        Some(52.0)
    );
    assert_eq!(
        value("portcullis_bytes_up_total", &[("port", &web)]),
        Some(0.0)
    );
    assert_eq!(
        value(
            "portcullis_requests_total",
            &[("port", &denied), ("kind", "http")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            "portcullis_denied_total",
            &[("port", &denied), ("kind", "http")]
        ),
        Some(2.0)
    );
    assert_eq!(value("portcullis_denied_total", &[("port", &web)]), None);
    assert_eq!(
        value(
            "portcullis_requests_total",
            &[("port", &tunnel), ("kind", "connect")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value("portcullis_bytes_up_total", &[("port", &tunnel)]),
        Some(1000.0)
    );
    assert_eq!(
        value("portcullis_bytes_down_total", &[("port", &tunnel)]),
        Some(14.0)
    );
    assert_eq!(
        value("portcullis_active_tunnels", &[("port", &tunnel)]),
        Some(0.0)
    );
    let me = [("client", "127.0.0.1"), ("name", "test-box")];
    assert_eq!(value("portcullis_client_requests_total", &me), Some(7.0));
    assert_eq!(value("portcullis_client_denied_total", &me), Some(2.0));
    assert_eq!(value("portcullis_client_bytes_up_total", &me), Some(1000.0));
    assert_eq!(
        value("portcullis_client_bytes_down_total", &me),
        Some(52.0 + 14.0)
    );
    assert_eq!(value("portcullis_access_log_dropped_total", &[]), Some(0.0));

    let r = admin_get(admin, "/status.json").await;
    let status: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    let port_row = status["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == traffic.web.addr.port())
        .unwrap();
    assert_eq!(port_row["http_requests"], 4);
    assert_eq!(status["clients"][0]["name"], "test-box");
    assert_eq!(status["recent_denials"].as_array().unwrap().len(), 2);

    let r = admin_get(admin, "/status").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let page = r.text();
    assert!(page.contains(&format!("data-port=\"{web}\"")), "{page}");
    assert!(page.contains("<b id=\"total-requests\">7</b>"), "{page}");
    assert!(page.contains("<b id=\"total-denied\">2</b>"), "{page}");
    assert!(!page.contains("<script"), "no scripts on the status page");
    assert_eq!(admin_get(admin, "/healthz").await.text(), "ok\n");
    assert_eq!(admin_get(admin, "/nope").await.status, 404);
}

#[tokio::test]
async fn the_admin_listener_answers_only_admin_allow() {
    let config = "[admin]\nallow = [\"10.0.0.0/8\"]\n";
    let settings = settings_of(config);
    let proxy = Proxy::start_observed(settings, true, None).await;
    let r = admin_get(proxy.admin.unwrap(), "/metrics").await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("admin.allow"));
}

#[tokio::test]
async fn the_self_service_page_shows_a_client_its_own_refusals_only() {
    let a_denied = Counter::start().await;
    let b_denied = Counter::start().await;
    let proxy = Proxy::start("[ports]\nconnect = [443]\n").await;
    let (a, b) = ("127.0.0.1", "127.0.0.2");
    let connect_to = |target: SocketAddr| format!("CONNECT {target} HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        exchange(
            &mut connect_from(a, proxy.addr).await,
            &connect_to(a_denied.addr)
        )
        .await
        .status,
        403
    );
    assert_eq!(
        exchange(
            &mut connect_from(b, proxy.addr).await,
            &connect_to(b_denied.addr)
        )
        .await
        .status,
        403
    );
    proxy.wait_records(2).await;

    let page_request =
        "GET / HTTP/1.1\r\nHost: proxy\r\nAccept: text/html\r\nConnection: close\r\n\r\n";
    let page_a = exchange(&mut connect_from(a, proxy.addr).await, page_request)
        .await
        .text();
    let page_b = exchange(&mut connect_from(b, proxy.addr).await, page_request)
        .await
        .text();
    assert!(
        page_a.contains(&format!("CONNECT {}", a_denied.addr)),
        "{page_a}"
    );
    assert!(page_a.contains("is not allowed for CONNECT"), "{page_a}");
    assert!(
        !page_a.contains(&b_denied.addr.to_string()),
        "A sees B's refusal: {page_a}"
    );
    assert!(
        page_b.contains(&format!("CONNECT {}", b_denied.addr)),
        "{page_b}"
    );
    assert!(
        !page_b.contains(&a_denied.addr.to_string()),
        "B sees A's refusal: {page_b}"
    );
    let text = exchange(
        &mut connect_from(a, proxy.addr).await,
        "GET / HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n",
    )
    .await
    .text();
    assert!(
        text.contains("Recently refused for your address (127.0.0.1)"),
        "{text}"
    );
    assert!(text.contains(&a_denied.addr.to_string()), "{text}");
}
