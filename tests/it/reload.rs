//! Reloading the configuration while the proxy runs: valid and invalid files, listeners added
//! and removed, tunnels that outlive a reload, and no failed request under load.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use portcullis::config::Source;
use portcullis::control::reload::{self, Reload, Reloadable};
use portcullis::{Config, Recorder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A proxy started from a file, as the binary starts it, with its reload handle.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    pub(crate) reload: Reload,
    pub(crate) path: PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub(crate) async fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) async fn start(dir: &Path, text: &str) -> Running {
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let settings = config.validate(&path.display().to_string()).unwrap();
    let mut listeners = Vec::new();
    for addr in &config.listen {
        listeners.push(TcpListener::bind(addr).await.unwrap());
    }
    // `serve` takes the policy's listen addresses from these listeners as bound.
    let addr = listeners[0].local_addr().unwrap();
    let (handle, requests) = reload::channel();
    let reloadable = Reloadable {
        source: Source::file(&path, Vec::new()),
        config,
        handle: handle.clone(),
        requests,
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(portcullis::serve(
        listeners,
        None,
        settings,
        Recorder::new(),
        Some(reloadable),
        async {
            let _ = rx.await;
        },
    ));
    Running {
        addr,
        reload: handle,
        path,
        _stop: tx,
    }
}

fn config(listen: &[u16], http: &[u16], connect: &[u16]) -> String {
    let listen: Vec<String> = listen
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    format!(
        "listen = [{}]\n[destinations]\nallow_loopback = true\n[ports]\nhttp = {http:?}\nconnect = {connect:?}\n",
        listen.join(", ")
    )
}

#[tokio::test]
async fn a_valid_file_is_swapped_in_and_an_invalid_one_changes_nothing() {
    let (web, other) = (RawOrigin::start().await, RawOrigin::start().await);
    let (w, o) = (web.addr.port(), other.addr.port());
    let dir = tempfile::tempdir().unwrap();
    let p = free_port().await;
    let proxy = start(dir.path(), &config(&[p], &[w], &[443])).await;
    assert_eq!(
        get(proxy.addr, &format!("http://{}/", other.addr))
            .await
            .status,
        403
    );

    std::fs::write(&proxy.path, config(&[p], &[w, o], &[443])).unwrap();
    let summary = proxy.reload.request().await.unwrap();
    assert_eq!(summary, "changed: ports");
    assert_eq!(
        get(proxy.addr, &format!("http://{}/", other.addr))
            .await
            .status,
        200
    );

    std::fs::write(&proxy.path, "listen = [\"127.0.0.1:1\"\n[ports\n").unwrap();
    let error = proxy.reload.request().await.unwrap_err();
    assert!(
        error.contains("portcullis.toml: TOML parse error at line 2, column 1"),
        "{error}"
    );
    assert_eq!(
        get(proxy.addr, &format!("http://{}/", other.addr))
            .await
            .status,
        200
    );

    let bad = format!("{}\n", config(&[p], &[w, o], &[443]))
        .replace("connect = [443]", "connect = [\"htps\"]");
    std::fs::write(&proxy.path, &bad).unwrap();
    let error = proxy.reload.request().await.unwrap_err();
    let line = bad.lines().position(|l| l.contains("htps")).unwrap() + 1;
    assert!(
        error.contains(&format!("portcullis.toml:{line}:")),
        "the error names file, line and column: {error}"
    );
    assert!(error.contains("unknown service name \"htps\""), "{error}");
    assert_eq!(
        get(proxy.addr, &format!("http://{}/", other.addr))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn listeners_are_added_and_removed_without_dropping_the_others() {
    let web = RawOrigin::start().await;
    let w = web.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (free_port().await, free_port().await, free_port().await);
    let proxy = start(dir.path(), &config(&[a, b], &[w], &[443])).await;
    let url = format!("http://{}/", web.addr);
    let on = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));

    // A keep-alive connection on the listener about to be removed.
    let mut kept = TcpStream::connect(on(a)).await.unwrap();
    let request = format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(exchange(&mut kept, &request).await.status, 200);

    std::fs::write(&proxy.path, config(&[b, c], &[w], &[443])).unwrap();
    let summary = proxy.reload.request().await.unwrap();
    assert_eq!(summary, format!("listen +127.0.0.1:{c} -127.0.0.1:{a}"));
    assert_eq!(get(on(b), &url).await.status, 200, "the kept listener");
    assert_eq!(get(on(c), &url).await.status, 200, "the new listener");
    assert!(
        TcpStream::connect(on(a)).await.is_err(),
        "the removed listener is closed"
    );
    // The connection accepted before the reload still works.
    assert_eq!(exchange(&mut kept, &request).await.status, 200);

    // An address that cannot be bound keeps everything as it was.
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let t = taken.local_addr().unwrap().port();
    std::fs::write(&proxy.path, config(&[t], &[w], &[443])).unwrap();
    let error = proxy.reload.request().await.unwrap_err();
    assert!(
        error.contains(&format!("cannot listen on 127.0.0.1:{t}")),
        "{error}"
    );
    assert_eq!(get(on(b), &url).await.status, 200);
    assert_eq!(get(on(c), &url).await.status, 200);
}

#[tokio::test]
async fn a_tunnel_outlives_a_reload_that_closes_its_port() {
    let e = echo_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let p = free_port().await;
    let proxy = start(dir.path(), &config(&[p], &[8080], &[e.port()])).await;
    let (answer, mut tunnel) = connect(proxy.addr, &e.to_string()).await;
    assert_eq!(answer.status, 200);

    std::fs::write(&proxy.path, config(&[p], &[8080], &[443])).unwrap();
    proxy.reload.request().await.unwrap();
    let (refused, _) = connect(proxy.addr, &e.to_string()).await;
    assert_eq!(
        refused.status, 403,
        "new tunnels follow the new configuration"
    );

    tunnel.write_all(b"still here").await.unwrap();
    let mut got = [0u8; 10];
    tokio::time::timeout(WAIT, tunnel.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"still here", "the open tunnel kept working");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_across_many_reloads_under_load() {
    let web = HttpOrigin::start().await;
    let w = web.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let p = free_port().await;
    let proxy = start(dir.path(), &config(&[p], &[w], &[443])).await;
    let url = format!("http://{}/load", web.addr);
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let done = Arc::new(tokio::sync::Notify::new());

    // Four clients, each a keep-alive connection sending requests back to back (bounded).
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (sent, failed, url, addr) = (sent.clone(), failed.clone(), url.clone(), proxy.addr);
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let mut buf = Vec::new();
            for _ in 0..400 {
                let request = format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n");
                let ok = stream.write_all(request.as_bytes()).await.is_ok()
                    && read_response(&mut stream, &mut buf, false)
                        .await
                        .is_some_and(|r| r.status == 200);
                sent.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                    stream = TcpStream::connect(addr).await.unwrap();
                    buf.clear();
                }
            }
        }));
    }
    let good = config(&[p], &[w], &[443]);
    let mut reloads = (0, 0);
    for i in 0..30 {
        if i % 3 == 2 {
            std::fs::write(&proxy.path, "not toml [[[").unwrap();
            assert!(proxy.reload.request().await.is_err());
            reloads.1 += 1;
        } else {
            std::fs::write(&proxy.path, &good).unwrap();
            proxy.reload.request().await.unwrap();
            reloads.0 += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for client in clients {
        tokio::time::timeout(Duration::from_secs(60), client)
            .await
            .unwrap()
            .unwrap();
    }
    done.notify_waiters();
    assert_eq!(sent.load(Ordering::Relaxed), 1600);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} valid and {} invalid reloads",
        reloads.0,
        reloads.1
    );
}

#[tokio::test]
async fn a_reload_that_changes_the_dns_servers_asks_the_new_ones() {
    use crate::support::dns::{Answer, DnsServer, Zone};
    let origin = HttpOrigin::start().await;
    let zone = |answer| Zone::new().with("moved.test", answer);
    let old = DnsServer::start("127.0.0.1:0".parse().unwrap(), zone(Answer::NxDomain)).await;
    let new = DnsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        zone(Answer::v4(&[std::net::Ipv4Addr::LOCALHOST])),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let p = free_port().await;
    let with_dns = |server: &DnsServer| {
        format!(
            "{}[dns]\nservers = [\"{}\"]\n",
            config(&[p], &[origin.addr.port()], &[443]),
            server.addr
        )
    };
    let proxy = start(dir.path(), &with_dns(&old)).await;
    let url = format!("http://moved.test:{}/hello", origin.addr.port());
    assert_eq!(get(proxy.addr, &url).await.status, 502);

    std::fs::write(&proxy.path, with_dns(&new)).unwrap();
    assert_eq!(proxy.reload.request().await.unwrap(), "changed: dns");
    let answer = get(proxy.addr, &url).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(new.queries_for("moved.test"), 2, "one A and one AAAA query");

    // A source address this machine does not have is refused, and changes nothing.
    let bad = format!("{}[upstream]\nbind = [\"203.0.113.5\"]\n", with_dns(&new));
    std::fs::write(&proxy.path, bad).unwrap();
    let error = proxy.reload.request().await.unwrap_err();
    assert!(
        error.contains("203.0.113.5 is not an address of this machine"),
        "{error}"
    );
    assert_eq!(get(proxy.addr, &url).await.status, 200);
}
