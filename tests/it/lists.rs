//! Block lists as people download them: a hosts(5)-style file with comments, IPv6 lines and
//! `localhost` entries; a `hosts_url` served by a loopback origin whose content changes,
//! picked up without a reload; an origin that breaks, answers garbage or goes away leaves
//! the list in force; `check` shows what each list loaded and skipped, from the copy on disk.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::admin::Metrics;
use crate::support::*;

/// `GET http://HOST/` through `proxy`: whether the block-list rule `rule` refused it.
async fn blocked(proxy: std::net::SocketAddr, host: &str, rule: &str) -> bool {
    let answer = get(proxy, &format!("http://{host}/")).await;
    answer.status == 403 && String::from_utf8_lossy(&answer.body).contains(rule)
}

#[tokio::test]
async fn a_hosts_format_file_blocks_its_names_and_not_localhost() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("hosts.txt");
    std::fs::write(
        &list,
        "# as downloaded\n127.0.0.1 localhost\n::1 localhost ip6-localhost\n\
         0.0.0.0 ads.test # trailing comment\n0.0.0.0 a.test b.test\n:: v6.test\n\
         ||tracker.test^\n! an adblock comment\n||opts.test^$third-party\nplain.test\n\n",
    )
    .unwrap();
    let web = HttpOrigin::start().await;
    let web_port = web.addr.port();
    let toml = format!(
        "{}[state]\ndir = \"{}\"\n[[rules]]\nname = \"blocklist\"\nhosts_file = \"{}\"\naction = \"deny\"\n",
        loopback_config(&[80, web_port], &[]),
        dir.path().join("state").display(),
        list.display()
    );
    let proxy = Proxy::start(&toml).await;
    for host in [
        "ads.test",
        "a.test",
        "b.test",
        "v6.test",
        "tracker.test",
        "x.tracker.test",
        "plain.test",
    ] {
        assert!(blocked(proxy.addr, host, "blocklist").await, "{host}");
    }
    // A hosts line names exactly its names; an adblock rule with options is skipped.
    for host in ["x.ads.test", "opts.test"] {
        assert!(!blocked(proxy.addr, host, "blocklist").await, "{host}");
    }
    // The list's localhost lines block nothing.
    let answer = get(proxy.addr, &format!("http://localhost:{web_port}/ok")).await;
    assert_eq!(answer.status, 200);
    proxy.stop().await.unwrap();

    // check says what was loaded and skipped, with the skipped lines.
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, &toml).unwrap();
    let ran = portcullis(&["check", "--config", config.to_str().unwrap()], "");
    let out = String::from_utf8_lossy(&ran.stdout);
    assert!(
        out.contains("6 entries loaded, 4 skipped"),
        "check output:\n{out}"
    );
    assert!(out.contains("skipped line 2: 127.0.0.1 localhost"), "{out}");
    assert!(out.contains("||opts.test^$third-party"), "{out}");
}

/// A list origin: answers every GET with the status and text set now, and counts requests.
struct ListOrigin {
    origin: Origin,
    answer: Arc<Mutex<(u16, String)>>,
}

impl ListOrigin {
    async fn start(text: &str) -> ListOrigin {
        let answer = Arc::new(Mutex::new((200, text.to_owned())));
        let served = answer.clone();
        let origin = Origin::serve(move |mut stream| {
            let served = served.clone();
            async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let (status, text) = served.lock().unwrap().clone();
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            }
        })
        .await;
        ListOrigin { origin, answer }
    }

    fn set(&self, status: u16, text: &str) {
        *self.answer.lock().unwrap() = (status, text.to_owned());
    }
}

/// Waits up to 15 s for `condition` (asked every 100 ms).
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within 15 s: {what}");
}

#[tokio::test]
async fn a_downloaded_list_follows_its_origin_and_survives_its_failures() {
    let dir = tempfile::tempdir().unwrap();
    let lists = ListOrigin::start("0.0.0.0 one.test\n").await;
    let state = dir.path().join("state");
    let toml = format!(
        "{}[state]\ndir = \"{}\"\n[[rules]]\nname = \"fetched\"\nhosts_url = \"http://{}/hosts.txt\"\nrefresh = \"1s\"\naction = \"deny\"\n",
        loopback_config(&[80], &[]),
        state.display(),
        lists.origin.addr
    );
    let proxy = Proxy::start_observed(settings_of(&toml), true, None).await;
    let (addr, admin) = (proxy.addr, proxy.admin.unwrap());
    eventually("the first copy is in force", || {
        blocked(addr, "one.test", "fetched")
    })
    .await;
    // Its copy is kept in the state folder, for the next start.
    let copies: Vec<_> = std::fs::read_dir(state.join("lists")).unwrap().collect();
    assert_eq!(copies.len(), 1);

    // New content is picked up without a reload.
    lists.set(200, "||two.test^\n");
    eventually("the new copy replaces the old", || async {
        blocked(addr, "sub.two.test", "fetched").await
            && !blocked(addr, "one.test", "fetched").await
    })
    .await;

    // An error page, garbage and a server gone: the list in force stays, failures counted.
    let failures = || fetch_failures(admin);
    let before = failures().await;
    lists.set(500, "broken");
    eventually("a failed fetch is counted", || async {
        failures().await > before
    })
    .await;
    lists.set(200, "<html><body>Service unavailable</body></html>\n");
    let before = failures().await;
    eventually("a malformed list is counted", || async {
        failures().await > before
    })
    .await;
    assert!(blocked(addr, "two.test", "fetched").await);
    let metrics = Metrics::scrape(admin).await;
    assert_eq!(
        metrics.value("portcullis_list_entries", &[("list", "fetched")]),
        Some(1.0)
    );
    drop(lists);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(blocked(addr, "two.test", "fetched").await);
    proxy.stop().await.unwrap();

    // The next start (here: check) reads the copy on disk, with the origin gone.
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, &toml).unwrap();
    let ran = portcullis(&["check", "--config", config.to_str().unwrap()], "");
    let out = String::from_utf8_lossy(&ran.stdout);
    assert!(out.contains("1 entries loaded, 0 skipped"), "{out}");
}

#[tokio::test]
async fn a_list_comes_through_the_parent_proxy_and_https_is_verified() {
    let lists = ListOrigin::start("0.0.0.0 via-parent.test\n").await;
    // The parent lets tunnels reach the list's origin and nothing else.
    let parent = Proxy::start(&loopback_config(&[], &[lists.origin.addr.port()])).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}[upstream]\nproxy = \"http://{}\"\n[state]\ndir = \"{}\"\n[[rules]]\nname = \"fetched\"\nhosts_url = \"http://{}/hosts\"\nrefresh = \"1s\"\naction = \"deny\"\n",
        loopback_config(&[80], &[]),
        parent.addr,
        dir.path().display(),
        lists.origin.addr
    );
    let proxy = Proxy::start(&toml).await;
    let addr = proxy.addr;
    eventually("the list fetched through the parent is in force", || {
        blocked(addr, "via-parent.test", "fetched")
    })
    .await;
    let tunnels = parent.records();
    assert!(
        tunnels
            .iter()
            .any(|r| r.method == "CONNECT" && r.port == lists.origin.addr.port()),
        "the parent saw no CONNECT to the list's origin"
    );
    proxy.stop().await.unwrap();

    // A server whose certificate no public authority signed: the fetch fails, nothing is
    // put in force.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (tls, _pem) = HttpOrigin::start_tls_on(listener, &["127.0.0.1"]);
    let toml = format!(
        "{}[state]\ndir = \"{}\"\n[[rules]]\nname = \"fetched\"\nhosts_url = \"https://{}/hosts\"\nrefresh = \"1s\"\naction = \"deny\"\n",
        loopback_config(&[80], &[]),
        dir.path().join("tls").display(),
        tls.addr
    );
    let proxy = Proxy::start_observed(settings_of(&toml), true, None).await;
    let admin = proxy.admin.unwrap();
    eventually("the unverified fetch is counted as failed", || async {
        fetch_failures(admin).await >= 1.0
    })
    .await;
    assert!(tls.accepts() >= 1, "the proxy never tried the TLS origin");
    assert!(!dir.path().join("tls").join("lists").exists());
    proxy.stop().await.unwrap();
}

/// Failed fetches of the list of rule "fetched", as /metrics counts them.
async fn fetch_failures(admin: std::net::SocketAddr) -> f64 {
    Metrics::scrape(admin)
        .await
        .value(
            "portcullis_list_fetch_failures_total",
            &[("list", "fetched")],
        )
        .unwrap_or(0.0)
}
