//! Byte budgets (`[[quotas]]`): a budget used up refuses the next request with 403 naming
//! the quota, in the record and on the page; the person sees their budget on the proxy's
//! own page, the owner on `/status` and `/metrics`; usage survives a restart; a corrupt
//! state file is a warning and fresh counts; `cut = true` cuts a download and a tunnel.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::admin::{admin_get, Metrics};
use crate::support::running::{line_with, write_config, Running};
use crate::support::*;

/// A configuration for loopback with `quota` (a `[[quotas]]` table) and its state in `dir`.
fn config(web_port: u16, dir: &std::path::Path, quota: &str) -> String {
    format!(
        "{}[state]\ndir = \"{}\"\n{quota}",
        loopback_config(&[web_port], &[web_port]),
        dir.display()
    )
}

const TINY: &str =
    "[[quotas]]\nname = \"tiny\"\nclients = [\"127.0.0.1\"]\nbytes = \"1KiB\"\nper = \"day\"\n";

/// `GET url` through `proxy` from the source address `from`.
async fn get_from(from: &str, proxy: SocketAddr, url: &str) -> RawResponse {
    let mut stream = connect_from(from, proxy).await;
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    exchange(
        &mut stream,
        &format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

#[tokio::test]
async fn a_used_up_budget_refuses_the_next_request_naming_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let web = HttpOrigin::start().await;
    let port = web.addr.port();
    let proxy =
        Proxy::start_observed(settings_of(&config(port, dir.path(), TINY)), true, None).await;
    let admin = proxy.admin.unwrap();
    // Within the budget when it starts: the whole download goes (transfers finish).
    let first = get(proxy.addr, &format!("http://127.0.0.1:{port}/bytes/3000")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body.len(), 3000);
    let refused = get_with(
        proxy.addr,
        &format!("http://127.0.0.1:{port}/next"),
        "Accept: text/html\r\n",
    )
    .await;
    assert_eq!(refused.status, 403);
    let page = String::from_utf8_lossy(&refused.body);
    assert!(
        page.contains("quota &quot;tiny&quot; used") || page.contains("quota \"tiny\" used"),
        "{page}"
    );
    assert!(page.contains("of 1.0 KiB; resets "), "{page}");
    let records = proxy.wait_records(2).await;
    assert_eq!(records.len(), 2, "one record per exchange: {records:#?}");
    assert_eq!(records[1].rule, "quota \"tiny\"");
    assert_eq!(records[1].status, 403);
    // Another PC is not counted by that budget.
    let other = get_from(
        "127.0.0.2",
        proxy.addr,
        &format!("http://127.0.0.1:{port}/x"),
    )
    .await;
    assert_eq!(other.status, 200);

    // The person's own page shows their budget: used, of, left, when it is full again.
    let own = get_with(
        proxy.addr,
        &format!("http://{}/", proxy.addr),
        "Accept: text/html\r\n",
    )
    .await;
    let own = String::from_utf8_lossy(&own.body);
    assert!(own.contains("Your byte budgets"), "{own}");
    assert!(
        own.contains("<td>tiny</td>") && own.contains("1.0 KiB a day"),
        "{own}"
    );
    let theirs = get_from("127.0.0.2", proxy.addr, &format!("http://{}/", proxy.addr)).await;
    let theirs = String::from_utf8_lossy(&theirs.body);
    assert!(theirs.contains("none counts your traffic"), "{theirs}");

    // The owner: /metrics and /status.
    let metrics = Metrics::scrape(admin).await;
    let used = metrics
        .value(
            "portcullis_quota_used_bytes",
            &[("quota", "tiny"), ("key", "127.0.0.1")],
        )
        .unwrap();
    assert!(used >= 3000.0, "{used}");
    assert_eq!(
        metrics.value(
            "portcullis_quota_limit_bytes",
            &[("quota", "tiny"), ("key", "127.0.0.1")]
        ),
        Some(1024.0)
    );
    let status = admin_get(admin, "/status").await;
    let status = String::from_utf8_lossy(&status.body);
    assert!(
        status.contains("<h2>Byte budgets</h2>") && status.contains("127.0.0.1"),
        "{status}"
    );
    let json = admin_get(admin, "/status.json").await;
    let json: serde_json::Value = serde_json::from_slice(&json.body).unwrap();
    assert_eq!(json["budgets"][0]["quota"], "tiny");
    assert_eq!(json["budgets"][0]["bytes"], 1024);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn usage_survives_a_restart_and_a_reload_of_settings() {
    let dir = tempfile::tempdir().unwrap();
    let web = HttpOrigin::start().await;
    let port = web.addr.port();
    let toml = config(port, dir.path(), TINY);
    let proxy = Proxy::start(&toml).await;
    let url = format!("http://127.0.0.1:{port}/bytes/2000");
    assert_eq!(get(proxy.addr, &url).await.status, 200);
    proxy.stop().await.unwrap();
    let kept = std::fs::read_to_string(dir.path().join("quotas.json")).unwrap();
    assert!(
        kept.contains("\"tiny\"") && kept.contains("127.0.0.1"),
        "{kept}"
    );

    let again = Proxy::start(&toml).await;
    let refused = get(again.addr, &url).await;
    assert_eq!(refused.status, 403);
    assert!(String::from_utf8_lossy(&refused.body).contains("quota \"tiny\""));
    again.stop().await.unwrap();

    // A bigger budget under the same name keeps the count: 2000 bytes of 1 MiB used.
    let bigger = Proxy::start(&toml.replace("\"1KiB\"", "\"1MiB\"")).await;
    assert_eq!(get(bigger.addr, &url).await.status, 200);
    bigger.stop().await.unwrap();
    let kept = std::fs::read_to_string(dir.path().join("quotas.json")).unwrap();
    let kept: serde_json::Value = serde_json::from_str(&kept).unwrap();
    assert_eq!(
        kept["counts"][0]["used"], 4000,
        "two downloads of 2000 bytes: {kept}"
    );
}

#[tokio::test]
async fn a_corrupt_state_file_is_a_warning_and_fresh_counts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("quotas.json"),
        b"{\"version\": 1, \"counts\": [tru",
    )
    .unwrap();
    let web = HttpOrigin::start().await;
    let port = web.addr.port();
    let file = write_config(&format!(
        "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"off\"\n{}",
        config(port, dir.path(), TINY)
    ));
    let running = Running::start(&["--config", file.path().to_str().unwrap()]);
    let warning = line_with(
        &running.stderr,
        &["WARN", "byte budgets", "counting starts afresh"],
    );
    assert!(warning.contains("quotas.json.corrupt"), "{warning}");
    let addr = running.listening_addr();
    let answer = get(addr, &format!("http://127.0.0.1:{port}/ok")).await;
    assert_eq!(answer.status, 200, "served with fresh counts");
    assert!(dir.path().join("quotas.json.corrupt").exists());
}

/// Sends `request` on a new connection to `proxy` from `from`; everything that comes back
/// until the proxy closes (or cuts) the connection, within 20 s.
async fn until_closed(from: &str, proxy: SocketAddr, request: &str) -> Vec<u8> {
    let mut stream = connect_from(from, proxy).await;
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut got))
        .await
        .expect("the proxy ends the connection");
    got
}

#[tokio::test]
async fn with_cut_a_download_and_a_tunnel_stop_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let web = HttpOrigin::start().await;
    let port = web.addr.port();
    let quota = "[[quotas]]\nname = \"hard\"\nbytes = \"64KiB\"\nper = \"week\"\ncut = true\n";
    let proxy = Proxy::start(&config(port, dir.path(), quota)).await;
    // A 4 MB download, begun within the budget, is cut soon after 64 KiB.
    let cut = until_closed(
        "127.0.0.1",
        proxy.addr,
        &format!("GET http://127.0.0.1:{port}/bytes/4000000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(
        cut.starts_with(b"HTTP/1.1 200"),
        "it began within the budget"
    );
    assert!(cut.len() < 1_000_000, "cut: {} bytes came", cut.len());
    let records = proxy.wait_records(1).await;
    let reason = records[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("quota \"hard\" is used up"), "{records:#?}");
    assert!(records[0].bytes_down >= 64 << 10, "{records:#?}");
    let refused = get(proxy.addr, &format!("http://127.0.0.1:{port}/x")).await;
    assert_eq!(refused.status, 403);

    // Another client's budget: a tunnel carrying a 4 MB download is cut at the limit.
    let got = until_closed(
        "127.0.0.3",
        proxy.addr,
        &format!(
            "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n\
             GET /bytes/4000000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got[..got.len().min(80)])
    );
    assert!(
        got.len() < 2_000_000,
        "tunnel cut: {} bytes came",
        got.len()
    );
    let records = proxy
        .wait_until("the tunnel's record", |r| {
            r.iter().any(|r| r.method == "CONNECT")
        })
        .await;
    let tunnel = records.iter().find(|r| r.method == "CONNECT").unwrap();
    let reason = tunnel.reason.clone().unwrap_or_default();
    assert!(reason.contains("quota \"hard\" is used up"), "{tunnel:#?}");
    proxy.stop().await.unwrap();
}
