//! IPv6 listeners and clients: the proxy on the dual-stack wildcard `[::]` and on `[::1]`, a
//! client over IPv6 matched by `clients.allow`, named by `[clients.names]`, logged (the record,
//! the JSON and Squid lines) and counted (`/metrics`, `/status`) by its own address; an IPv4
//! client arriving on `[::]` as the IPv4-mapped `::ffff:127.0.0.1` is matched, named, logged
//! and counted as `127.0.0.1`. Last, the binary listening on `[::1]:0` and `[::]:0`.
//! Everything stays on loopback (`127.0.0.1`, `::1`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use portcullis::observe::access::Verdict;
use portcullis::observe::log::{AccessLog, Destination, Format, JsonRecord};
use portcullis::{AccessSink, Settings};

use crate::support::*;

/// The proxy's port on IPv4 loopback.
fn v4(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The proxy's port on IPv6 loopback.
fn v6(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv6Addr::LOCALHOST, port))
}

/// An access log in `format` to `dir/name`, naming clients as `settings` do.
fn access_log(
    dir: &Path,
    name: &str,
    format: Format,
    settings: &Settings,
) -> (Arc<dyn AccessSink>, PathBuf) {
    let path = dir.join(name);
    let names = settings.client_names.clone();
    let log = AccessLog::start(
        Destination::File(path.clone()),
        format,
        Arc::new(AtomicU64::new(0)),
        Arc::new(move |ip| names.get(&ip.to_canonical()).cloned()),
    )
    .unwrap()
    .unwrap();
    (Arc::new(log), path)
}

#[tokio::test]
async fn a_dual_stack_listener_knows_each_client_by_its_own_address() {
    let web = HttpOrigin::start().await;
    let config = format!(
        "{}[clients.names]\n\"::1\" = \"v6-pc\"\n\"127.0.0.1\" = \"v4-pc\"\n",
        loopback_config(&[web.addr.port()], &[443])
    );
    let settings = settings_of(&config);
    let dir = tempfile::tempdir().unwrap();
    let (json, json_path) = access_log(dir.path(), "access.json", Format::Json, &settings);
    let (squid, squid_path) = access_log(dir.path(), "access.log", Format::Squid, &settings);
    let proxy = Proxy::start_listening("[::]:0", settings, true, vec![json, squid]).await;
    assert!(proxy.addr.is_ipv6() && proxy.addr.ip().is_unspecified());
    let port = proxy.addr.port();
    let url = format!("http://{}/from", web.addr);

    // One request from each family, and a refusal for the IPv6 client.
    assert_eq!(get(v6(port), &url).await.status, 200);
    assert_eq!(get(v4(port), &url).await.status, 200);
    let (refused, _) = connect(v6(port), "127.0.0.1:25").await;
    assert_eq!(refused.status, 403);
    let records = proxy.wait_records(3).await;
    let clients: Vec<String> = records.iter().map(|r| r.client.ip().to_string()).collect();
    assert_eq!(clients, ["::1", "127.0.0.1", "::1"], "{records:#?}");

    // The logs: the JSON line names each client; the Squid line has its address.
    let json_lines = file_lines(&json_path, 3).await;
    let json: Vec<JsonRecord> = json_lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let named: Vec<(&str, Option<&str>, &str)> = json
        .iter()
        .map(|r| {
            (
                r.client.as_str(),
                r.client_name.as_deref(),
                r.decision.as_str(),
            )
        })
        .collect();
    assert_eq!(
        named,
        [
            ("::1", Some("v6-pc"), "allow"),
            ("127.0.0.1", Some("v4-pc"), "allow"),
            ("::1", Some("v6-pc"), "deny"),
        ],
        "{json_lines:#?}"
    );
    let squid_lines = file_lines(&squid_path, 3).await;
    let squid_clients: Vec<&str> = squid_lines
        .iter()
        .map(|l| l.split_whitespace().nth(2).unwrap_or(""))
        .collect();
    assert_eq!(
        squid_clients,
        ["::1", "127.0.0.1", "::1"],
        "{squid_lines:#?}"
    );

    // The counters, by client and name.
    let metrics = Metrics::scrape(proxy.admin.unwrap()).await;
    let v6_pc = [("client", "::1"), ("name", "v6-pc")];
    let v4_pc = [("client", "127.0.0.1"), ("name", "v4-pc")];
    let count = |family: &str, labels: &[(&str, &str)]| metrics.value(family, labels);
    assert_eq!(count("portcullis_client_requests_total", &v6_pc), Some(2.0));
    assert_eq!(count("portcullis_client_denied_total", &v6_pc), Some(1.0));
    assert_eq!(count("portcullis_client_requests_total", &v4_pc), Some(1.0));
    assert_eq!(count("portcullis_client_denied_total", &v4_pc), Some(0.0));
    assert!(!metrics.text.contains("::ffff:"), "{}", metrics.text);
    let admin = proxy.admin.unwrap();
    let status: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/status.json").await.text()).unwrap();
    let mut rows: Vec<(String, String, u64)> = status["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["client"].as_str().unwrap_or("").to_owned(),
                c["name"].as_str().unwrap_or("").to_owned(),
                c["requests"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            ("127.0.0.1".to_owned(), "v4-pc".to_owned(), 1),
            ("::1".to_owned(), "v6-pc".to_owned(), 2)
        ],
        "{status}"
    );
    let page = admin_get(admin, "/status").await.text();
    assert!(
        page.contains("v6-pc <span class=\"muted\">::1</span>"),
        "{page}"
    );
    assert!(
        page.contains("v4-pc <span class=\"muted\">127.0.0.1</span>"),
        "{page}"
    );

    // Each sees its own refusals on the proxy's page, by its own address.
    let page_of = |from: SocketAddr| async move {
        let request = format!("GET / HTTP/1.1\r\nHost: {from}\r\nConnection: close\r\n\r\n");
        raw(from, request.as_bytes()).await.text()
    };
    let page = page_of(v6(port)).await;
    assert!(
        page.contains("Recently refused for your address (::1):\n"),
        "{page}"
    );
    assert!(page.contains("CONNECT 127.0.0.1:25"), "{page}");
    assert!(
        page.contains(&format!(
            "Automatic configuration (setup script): http://[::1]:{port}/proxy.pac"
        )),
        "{page}"
    );
    let page = page_of(v4(port)).await;
    assert!(
        page.ends_with("Recently refused for your address (127.0.0.1):\n  nothing\n"),
        "{page}"
    );
}

/// Where a client of one family finds the proxy's port: [`v4`] or [`v6`].
type Family = fn(u16) -> SocketAddr;

/// Whether `from` may use a proxy on `[::]` whose `clients.allow` is `allow`: the status of a
/// request through it, and the record's rule and client.
async fn allowed_from(allow: &str, from: Family) -> (u16, String, String) {
    let web = HttpOrigin::start().await;
    let config = format!(
        "{}[clients]\nallow = [\"{allow}\"]\n",
        loopback_config(&[web.addr.port()], &[])
    );
    let proxy = Proxy::start_listening("[::]:0", settings_of(&config), false, vec![]).await;
    let answer = get(from(proxy.addr.port()), &format!("http://{}/", web.addr)).await;
    let record = proxy.wait_records(1).await.remove(0);
    if answer.status == 403 {
        assert!(
            answer.text().contains(&format!(
                "client {} is not allowed to use this proxy",
                record.client.ip()
            )),
            "{}",
            answer.text()
        );
        assert_eq!(record.verdict, Verdict::Deny);
    }
    (
        answer.status,
        record.rule.to_string(),
        record.client.ip().to_string(),
    )
}

#[tokio::test]
async fn clients_allow_tells_the_families_apart_on_a_dual_stack_listener() {
    let cases: [(&str, Family, (u16, &str, &str)); 6] = [
        ("::1/128", v6, (200, "ports.http", "::1")),
        ("::1/128", v4, (403, "clients.allow", "127.0.0.1")),
        // The IPv4 client arrives as ::ffff:127.0.0.1, and is matched as 127.0.0.1.
        ("127.0.0.0/8", v4, (200, "ports.http", "127.0.0.1")),
        ("127.0.0.1/32", v4, (200, "ports.http", "127.0.0.1")),
        ("127.0.0.0/8", v6, (403, "clients.allow", "::1")),
        // A network of IPv6 addresses does not take in IPv4 clients by their mapped form.
        ("::/0", v4, (403, "clients.allow", "127.0.0.1")),
    ];
    for (allow, from, (status, rule, client)) in cases {
        let got = allowed_from(allow, from).await;
        assert_eq!(
            (got.0, got.1.as_str(), got.2.as_str()),
            (status, rule, client),
            "allow {allow}, from {}",
            from(3128)
        );
    }
}

#[tokio::test]
async fn a_listener_on_v6_loopback_serves_v6_clients() {
    let web = HttpOrigin::start().await;
    let tunnel = counting_origin().await;
    let config = loopback_config(&[web.addr.port()], &[tunnel.port()]);
    let proxy = Proxy::start_listening("[::1]:0", settings_of(&config), false, vec![]).await;
    assert_eq!(proxy.addr.ip(), Ipv6Addr::LOCALHOST);
    let r = get(proxy.addr, &format!("http://{}/six", web.addr)).await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello GET /six"));
    let (answer, mut stream) = connect(proxy.addr, &tunnel.to_string()).await;
    assert_eq!(answer.status, 200);
    use tokio::io::AsyncWriteExt;
    stream.write_all(&[b'x'; 600]).await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(read_to_close(&mut stream).await, b"got 600 bytes");
    // The PAC file names the proxy by the IPv6 address the client used.
    let host = proxy.addr.to_string();
    let pac = raw(
        proxy.addr,
        format!("GET /proxy.pac HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        pac.text().contains(&format!("\"PROXY {host}\"")),
        "{}",
        pac.text()
    );
    let records = proxy.wait_records(3).await;
    assert!(
        records.iter().all(|r| r.client.ip() == Ipv6Addr::LOCALHOST),
        "{records:#?}"
    );
    assert_eq!(records[1].bytes_up, 600);
}

#[test]
fn the_binary_listens_on_v6_loopback_and_the_dual_stack_wildcard() {
    let config = write_config(
        "listen = [\"[::1]:0\", \"[::]:0\"]\n[clients]\nallow = [\"::1/128\", \"127.0.0.0/8\"]\n[admin]\nlisten = \"off\"\n",
    );
    let running = Running::start(&["--config", config.path().to_str().unwrap()]);
    let first = running.listening_addr();
    let second = running.listening_addr();
    let (loopback, wildcard) = if first.ip().is_loopback() {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(loopback.ip(), Ipv6Addr::LOCALHOST, "{first} {second}");
    assert_eq!(wildcard.ip(), Ipv6Addr::UNSPECIFIED, "{first} {second}");
    let page = |to: SocketAddr| {
        blocking_exchange(
            to,
            &format!("GET / HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n"),
        )
    };
    for (to, client) in [
        (loopback, "::1"),
        (v6(wildcard.port()), "::1"),
        (v4(wildcard.port()), "127.0.0.1"),
    ] {
        let answer = page(to);
        assert!(answer.starts_with("HTTP/1.1 200"), "{to}: {answer}");
        assert!(
            answer.contains(&format!("Recently refused for your address ({client})")),
            "{to}: {answer}"
        );
        // The access log on stdout, in Squid's format, names the client by its address.
        let line = line_with(&running.stdout, &["TCP_MEM_HIT/200"]);
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[2], client, "{to}: {line}");
        assert_eq!(fields[6], format!("http://{to}/"), "{line}");
    }
}
