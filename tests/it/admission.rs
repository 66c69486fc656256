//! The connection limits as clients meet them: at a limit an idle connection makes room
//! (kept alive first, then waiting for a head, then a quiet tunnel; the most crowded network
//! first, the oldest first), and only when every connection in reach is busy is a newcomer
//! refused, with `Retry-After`; far over the limit it is shed with a fixed `503`, never closed
//! without an answer.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OWN_PAGE: &[u8] = b"GET / HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n";

/// Connections from `from` that sent nothing, each given a moment so their ages differ, and
/// all silent for longer than the grace a new connection has before it can make room.
async fn silent_from(from: &str, proxy: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(connect_from(from, proxy).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(GRACE).await;
    held
}

/// Well past the grace (20 ms) a silent new connection has before it can make room.
const GRACE: Duration = Duration::from_millis(150);

/// Whether `stream` is still open: no close within a short look.
async fn still_open(stream: &mut TcpStream) -> bool {
    !closes_within(stream, Duration::from_millis(200)).await
}

#[tokio::test]
async fn an_address_at_its_limit_makes_room_among_its_own_idle_connections() {
    let config = "[limits]\nmax_connections = 10\nmax_connections_per_client = 3\n";
    let proxy = Proxy::start(config).await;
    let mut neighbour = silent_from("127.0.0.2", proxy.addr, 2).await;
    let mut own = silent_from("127.0.0.1", proxy.addr, 3).await;
    // A fourth connection from 127.0.0.1 is served: its oldest idle one made room.
    let r = raw(proxy.addr, OWN_PAGE).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        closes_within(&mut own[0], Duration::from_secs(2)).await,
        "the address's oldest idle connection made room"
    );
    assert!(still_open(&mut own[1]).await && still_open(&mut own[2]).await);
    // Another address's connections are not touched for it.
    for s in &mut neighbour {
        assert!(still_open(s).await, "a neighbour's connection was closed");
    }
    assert!(proxy.records().iter().all(|r| r.status == 200));
}

#[tokio::test]
async fn an_address_whose_connections_are_all_busy_gets_429_with_retry_after() {
    let target = echo_origin().await;
    let config = format!(
        "{}[limits]\nmax_connections_per_client = 2\n",
        loopback_config(&[], &[target.port()])
    );
    let proxy = Proxy::start(&config).await;
    let _one = tunnel_from("127.0.0.1", proxy.addr, &target.to_string()).await;
    let _two = tunnel_from("127.0.0.1", proxy.addr, &target.to_string()).await;
    let r = raw(proxy.addr, OWN_PAGE).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert!(
        r.text().contains("limits.max_connections_per_client"),
        "{}",
        r.text()
    );
    let records = proxy.wait_records(1).await;
    let refused = records.iter().find(|r| r.status == 429).expect("a record");
    assert_eq!(refused.rule, "limits.max_connections_per_client");
    // Another address is served.
    let mut s = connect_from("127.0.0.2", proxy.addr).await;
    assert_eq!(exchange(&mut s, OWN_PAGE).await.status, 200);
}

#[tokio::test]
async fn at_the_total_limit_a_waiting_connection_makes_room_before_a_kept_alive_one() {
    let target = echo_origin().await;
    let config = format!(
        "{}[limits]\nmax_connections = 3\n",
        loopback_config(&[], &[target.port()])
    );
    let proxy = Proxy::start(&config).await;
    // The oldest connection has been served and is kept alive; two younger ones wait.
    let mut kept = connect_from("127.0.0.3", proxy.addr).await;
    let r = exchange(&mut kept, b"GET / HTTP/1.1\r\nHost: proxy\r\n\r\n").await;
    assert_eq!(r.status, 200);
    let mut waiting = silent_from("127.0.0.2", proxy.addr, 2).await;
    let r = raw(proxy.addr, OWN_PAGE).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        closes_within(&mut waiting[0], Duration::from_secs(2)).await,
        "the oldest waiting connection made room"
    );
    assert!(still_open(&mut waiting[1]).await && still_open(&mut kept).await);
    // With no waiting connection (the others are busy tunnels), the kept-alive one goes
    // (once the newcomer's own connection, answered with Connection: close, is gone).
    drop(waiting);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _busy = [
        tunnel_from("127.0.0.4", proxy.addr, &target.to_string()).await,
        tunnel_from("127.0.0.5", proxy.addr, &target.to_string()).await,
    ];
    let r = raw(proxy.addr, OWN_PAGE).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        closes_within(&mut kept, Duration::from_secs(2)).await,
        "the kept-alive connection made room"
    );
}

#[tokio::test]
async fn a_silent_connection_within_its_grace_does_not_make_room() {
    // The grace is 20 ms: a try whose newcomer came later than that after the two it would
    // close (a loaded machine) proves nothing, and is made again, five times at most.
    for _ in 0..5 {
        let proxy = Proxy::start("[limits]\nmax_connections = 2\n").await;
        let opened = std::time::Instant::now();
        let mut young = vec![
            connect_from("127.0.0.2", proxy.addr).await,
            connect_from("127.0.0.3", proxy.addr).await,
        ];
        let mut s = connect_from("127.0.0.4", proxy.addr).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: proxy\r\n\r\n")
            .await
            .unwrap();
        if opened.elapsed() > Duration::from_millis(10) {
            continue;
        }
        // Both had just connected: the newcomer is refused rather than closing one of them
        // before its request arrives.
        let mut buf = Vec::new();
        let r = read_answer(&mut s, &mut buf, b"GET /")
            .await
            .expect("an answer");
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.header("retry-after").as_deref(), Some("1"));
        for c in &mut young {
            assert!(still_open(c).await);
        }
        // Past the grace, the oldest makes room.
        tokio::time::sleep(GRACE).await;
        let r = raw(proxy.addr, OWN_PAGE).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(closes_within(&mut young[0], Duration::from_secs(2)).await);
        return;
    }
    panic!("five tries, each too slow to show the grace");
}

#[tokio::test]
async fn the_most_crowded_network_makes_room_first() {
    let config = "[limits]\nmax_connections = 4\n";
    let proxy = Proxy::start(config).await;
    // The oldest connection is from 127.0.1.0/24; three younger ones from 127.0.0.0/24.
    let mut lone = silent_from("127.0.1.2", proxy.addr, 1).await;
    let mut crowd = Vec::new();
    for from in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        crowd.extend(silent_from(from, proxy.addr, 1).await);
    }
    let mut s = connect_from("127.0.2.2", proxy.addr).await;
    assert_eq!(exchange(&mut s, OWN_PAGE).await.status, 200);
    assert!(
        closes_within(&mut crowd[0], Duration::from_secs(2)).await,
        "the crowded network's oldest made room"
    );
    assert!(
        still_open(&mut lone[0]).await,
        "the lone network kept its connection"
    );
}

#[tokio::test]
async fn a_network_at_its_limit_is_refused_when_its_connections_are_busy() {
    let target = echo_origin().await;
    let config = format!(
        "{}[limits]\nmax_connections_per_network = 2\n",
        loopback_config(&[], &[target.port()])
    );
    let proxy = Proxy::start(&config).await;
    let _one = tunnel_from("127.0.0.2", proxy.addr, &target.to_string()).await;
    let _two = tunnel_from("127.0.0.3", proxy.addr, &target.to_string()).await;
    let mut s = connect_from("127.0.0.4", proxy.addr).await;
    let r = exchange(&mut s, OWN_PAGE).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert!(
        r.text().contains("127.0.0.0/24")
            && r.text().contains("limits.max_connections_per_network"),
        "{}",
        r.text()
    );
    // Another /24 is served.
    let mut s = connect_from("127.0.1.2", proxy.addr).await;
    assert_eq!(exchange(&mut s, OWN_PAGE).await.status, 200);
}

#[tokio::test]
async fn when_every_connection_is_busy_the_total_limit_answers_503_with_retry_after() {
    let target = echo_origin().await;
    let config = format!(
        "{}[limits]\nmax_connections = 2\n",
        loopback_config(&[], &[target.port()])
    );
    let proxy = Proxy::start(&config).await;
    let _one = tunnel_from("127.0.0.2", proxy.addr, &target.to_string()).await;
    let _two = tunnel_from("127.0.1.2", proxy.addr, &target.to_string()).await;
    let mut s = connect_from("127.0.2.2", proxy.addr).await;
    let r = exchange(&mut s, b"GET / HTTP/1.1\r\nHost: proxy\r\n\r\n").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert!(r.text().contains("limits.max_connections"), "{}", r.text());
    assert!(closes_within(&mut s, Duration::from_secs(2)).await);
}

#[tokio::test]
async fn a_quiet_tunnel_makes_room_and_its_record_says_so() {
    let target = echo_origin().await;
    let config = format!(
        "{}[limits]\nmax_connections = 2\nidle_tunnel_after = \"1s\"\n",
        loopback_config(&[], &[target.port()])
    );
    let proxy = Proxy::start(&config).await;
    let mut quiet = tunnel_from("127.0.0.2", proxy.addr, &target.to_string()).await;
    let mut busy = tunnel_from("127.0.0.3", proxy.addr, &target.to_string()).await;
    // Both are younger than idle_tunnel_after: a newcomer is refused.
    let r = raw(proxy.addr, OWN_PAGE).await;
    assert_eq!(r.status, 503, "{}", r.text());
    // The busy one keeps moving bytes; the quiet one does not.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1300);
    while tokio::time::Instant::now() < deadline {
        busy.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        busy.read_exact(&mut echo).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = raw(proxy.addr, OWN_PAGE).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(closes_within(&mut quiet, Duration::from_secs(2)).await);
    busy.write_all(b"pong").await.unwrap();
    let mut echo = [0u8; 4];
    busy.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"pong", "the busy tunnel stays");
    let records = proxy.wait_records(3).await;
    let closed = records
        .iter()
        .find(|r| {
            r.method == "CONNECT" && r.reason.as_deref().is_some_and(|t| t.contains("make room"))
        })
        .expect("the quiet tunnel's record");
    assert_eq!(closed.status, 200);
}

#[tokio::test]
async fn a_connection_closed_while_its_head_arrives_is_told_503() {
    let config = "[limits]\nmax_connections = 1\n";
    let proxy = Proxy::start(config).await;
    let mut slow = connect_from("127.0.0.2", proxy.addr).await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: pro")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = raw(proxy.addr, OWN_PAGE).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = read_to_close(&mut slow).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(text.contains("Retry-After: 1\r\n"), "{text}");
    let records = proxy.wait_records(2).await;
    let cut = records
        .iter()
        .find(|r| r.status == 503)
        .expect("a record of the head cut short");
    assert_eq!(cut.rule, "limits.max_connections");
    assert!(
        cut.reason
            .as_deref()
            .is_some_and(|t| t.contains("make room")),
        "{:?}",
        cut.reason
    );
}

#[tokio::test]
async fn far_over_the_limit_a_connection_is_shed_with_a_503_not_a_silent_close() {
    let target = echo_origin().await;
    let config = format!(
        "{}[limits]\nmax_connections = 1\n",
        loopback_config(&[], &[target.port()])
    );
    let proxy = Proxy::start(&config).await;
    let _busy = tunnel_from("127.0.0.2", proxy.addr, &target.to_string()).await;
    // 64 connections wait for their refusal (they send nothing yet) …
    let mut refused = Vec::new();
    for i in 0..64 {
        refused.push(connect_from(&format!("127.0.1.{}", 2 + i % 100), proxy.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // … so the next one is answered at once without having sent anything, then closed.
    let mut shed = connect_from("127.0.2.2", proxy.addr).await;
    let answer = read_to_close(&mut shed).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(text.contains("Retry-After: 1\r\n"), "{text}");
    // The refused ones still get their answer to a request.
    let r = exchange(&mut refused[0], OWN_PAGE).await;
    assert_eq!(r.status, 503, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_from_many_addresses_leaves_room_for_a_normal_client() {
    let origin = RawOrigin::start().await;
    let config = format!(
        "{}[limits]\nmax_connections = 40\n",
        loopback_config(&[origin.addr.port()], &[])
    );
    let proxy = Proxy::start_observed(settings_of(&config), true, None).await;
    // 60 idle connections from 10 addresses (6 each, under the per-client limit), each
    // opened again 5 ms after the proxy closes it; bounded in reconnects and in time. (A
    // flood that reconnects at once can turn the whole table over within the 20 ms grace,
    // and newcomers then get 503: a known weakness, see the book's Hostile input chapter.)
    let stop = Arc::new(AtomicBool::new(false));
    let reconnects = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for i in 0..60 {
        let (stop, reconnects, addr) = (stop.clone(), reconnects.clone(), proxy.addr);
        flood.push(tokio::spawn(async move {
            let from = format!("127.0.0.{}", 10 + i % 10);
            for _ in 0..2_000 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
                let Ok(Ok(mut s)) = tokio::time::timeout(WAIT, socket.connect(addr)).await else {
                    continue;
                };
                reconnects.fetch_add(1, Ordering::Relaxed);
                // Wait for the proxy to close it (or the test to end).
                let mut buf = [0u8; 256];
                loop {
                    tokio::select! {
                        read = s.read(&mut buf) => match read {
                            Ok(0) | Err(_) => break,
                            Ok(_) => continue,
                        },
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A normal client: 30 requests, each on a connection of its own, from its own address.
    let mut statuses = Vec::new();
    for n in 0..30 {
        let mut s = connect_from("127.0.0.1", proxy.addr).await;
        let request = format!(
            "GET http://{}/{n} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            origin.addr, origin.addr
        );
        let r = tokio::time::timeout(WAIT, exchange(&mut s, request.as_bytes()))
            .await
            .expect("answered in time");
        statuses.push(r.status);
    }
    let metrics = Metrics::scrape(proxy.admin.unwrap()).await;
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        let _ = tokio::time::timeout(WAIT, task).await;
    }
    // Every request is answered (`exchange` fails on a close without an answer). A newcomer
    // that arrives while every held connection is within its 20 ms grace is refused with
    // 503 (the flood reconnects in a tight loop): rare, but not never.
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 503),
        "every request of the normal client is answered: {statuses:?}"
    );
    let served = statuses.iter().filter(|&&s| s == 200).count();
    assert!(
        served >= 27,
        "at least 90% of the normal client's requests are served: {statuses:?}"
    );
    assert!(
        reconnects.load(Ordering::Relaxed) > 60,
        "the flood reconnected"
    );
    let made_room = metrics
        .value(
            "portcullis_connections_made_room_total",
            &[("was", "waiting")],
        )
        .unwrap_or(0.0);
    assert!(made_room > 0.0, "idle connections made room");
    let open = metrics.value("portcullis_connections_open", &[]).unwrap();
    assert!(open <= 40.0 + 64.0, "{open} connections open");
}
