//! Names and addresses on loopback: the builtin resolver asking a DNS server of the test's
//! own ([`crate::support::dns`]), its cache, Happy Eyeballs past an IPv6 address that
//! silently drops connections, timeouts, the system resolver, and outbound source addresses.
//!
//! A "black hole" here is a listener on `[::1]` whose accept queue is full: the kernel drops
//! further SYNs, so a connection attempt to it hangs, as one over a broken IPv6 path does.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::support::dns::{Answer, DnsServer, Zone};
use crate::support::origin::HttpOrigin;
use crate::support::proxy::{settings_of, Proxy};
use crate::support::raw::{get, raw};

const V4: Ipv4Addr = Ipv4Addr::LOCALHOST;
const V6: Ipv6Addr = Ipv6Addr::LOCALHOST;

/// A listener that never completes a connection: its accept queue is full.
struct BlackHole {
    _listener: tokio::net::TcpListener,
    _filler: std::net::TcpStream,
}

impl BlackHole {
    /// A black hole on `addr`.
    fn at(addr: SocketAddr) -> std::io::Result<BlackHole> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(addr)?;
        let listener = socket.listen(0)?;
        let bound = listener.local_addr()?;
        // One connection fills a queue of length 0 (the kernel keeps backlog + 1).
        let filler = std::net::TcpStream::connect_timeout(&bound, Duration::from_secs(2))?;
        let hole = BlackHole {
            _listener: listener,
            _filler: filler,
        };
        // Proven: a further connection hangs.
        assert!(
            std::net::TcpStream::connect_timeout(&bound, Duration::from_millis(300)).is_err(),
            "the black hole at {bound} accepted a connection"
        );
        Ok(hole)
    }
}

/// An HTTP origin on 127.0.0.1:P and a black hole on [::1]:P, the same port P.
async fn origin_with_broken_v6() -> (HttpOrigin, BlackHole) {
    for _ in 0..20 {
        let origin = HttpOrigin::start().await;
        if let Ok(hole) = BlackHole::at(SocketAddr::new(V6.into(), origin.addr.port())) {
            return (origin, hole);
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1 in 20 tries");
}

/// The configuration of a proxy that asks `dns` and may reach loopback on every port.
fn config(dns: &DnsServer, extra: &str) -> String {
    format!(
        "[destinations]\nallow_loopback = true\n\
         [ports]\nhttp = [\"1-65535\"]\nconnect = [\"1-65535\"]\n\
         [dns]\nservers = [\"{}\"]\n{extra}",
        dns.addr
    )
}

/// CONNECT through `proxy` to `authority`: the status line and when it came.
async fn connect(proxy: SocketAddr, authority: &str) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(15), stream.read(&mut byte))
            .await
            .expect("an answer to CONNECT within 15 s")
            .unwrap();
        assert!(
            n > 0,
            "the proxy closed without answering CONNECT {authority}"
        );
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    (text.lines().next().unwrap_or_default().to_owned(), stream)
}

#[tokio::test]
async fn a_dual_stack_name_whose_ipv6_drops_connections_is_reached_over_ipv4_within_the_attempt_delay(
) {
    let (origin, _hole) = origin_with_broken_v6().await;
    let dns = DnsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Zone::new().with("dual.test", Answer::dual(&[V4], &[V6])),
    )
    .await;
    let proxy = Proxy::start(&config(&dns, "[timeouts]\nconnect = \"10s\"\n")).await;
    let port = origin.addr.port();

    let started = Instant::now();
    let answer = get(proxy.addr, &format!("http://dual.test:{port}/hello")).await;
    let http_took = started.elapsed();
    assert_eq!(answer.status, 200, "{}", answer.text());

    let started = Instant::now();
    let (status, _tunnel) = connect(proxy.addr, &format!("dual.test:{port}")).await;
    let connect_took = started.elapsed();
    assert!(status.contains(" 200 "), "{status}");

    // The IPv6 attempt gets 250 ms alone, then IPv4 starts beside it and wins at once.
    for took in [http_took, connect_took] {
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_millis(1000),
            "answered after {took:?}, not just after the 250 ms attempt delay"
        );
    }
    let records = proxy.wait_records(1).await;
    let first = &records[0];
    assert_eq!(
        first.upstream,
        Some(origin.addr),
        "the record names the winner"
    );
    let dns_lookup = first
        .dns
        .expect("the record says how the name was resolved");
    assert!(!dns_lookup.cached, "the first lookup asked the server");
}

#[tokio::test]
async fn a_name_whose_every_address_drops_connections_gets_504_at_the_connect_timeout() {
    let (port, _holes) = (0..20)
        .find_map(|_| {
            let v4 = BlackHole::at(SocketAddr::new(V4.into(), 0)).ok()?;
            let port = v4._listener.local_addr().ok()?.port();
            let v6 = BlackHole::at(SocketAddr::new(V6.into(), port)).ok()?;
            Some((port, (v4, v6)))
        })
        .expect("a port free on both 127.0.0.1 and ::1 in 20 tries");
    let dns = DnsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Zone::new().with("holes.test", Answer::dual(&[V4], &[V6])),
    )
    .await;
    let proxy = Proxy::start(&config(&dns, "[timeouts]\nconnect = \"1500ms\"\n")).await;

    let started = Instant::now();
    let answer = get(proxy.addr, &format!("http://holes.test:{port}/")).await;
    let took = started.elapsed();
    assert_eq!(answer.status, 504, "{}", answer.text());
    assert!(
        answer.text().contains("timed out after 1s 500ms"),
        "{}",
        answer.text()
    );
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(3000),
        "504 after {took:?}, not at timeouts.connect"
    );
    let (status, _) = connect(proxy.addr, &format!("holes.test:{port}")).await;
    assert!(status.contains(" 504 "), "{status}");
}

#[tokio::test]
async fn answers_are_cached_for_their_ttl_so_ten_tunnels_to_one_name_ask_the_server_once() {
    let origin = crate::support::origin::echo_origin().await;
    let dns = DnsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Zone::new().with("cached.test", Answer::v4(&[V4])),
    )
    .await;
    let proxy = Proxy::start(&config(&dns, "")).await;
    for _ in 0..10 {
        let (status, tunnel) = connect(proxy.addr, &format!("cached.test:{}", origin.port())).await;
        assert!(status.contains(" 200 "), "{status}");
        drop(tunnel);
    }
    // One A and one AAAA query (the AAAA answer is empty, and cached as such).
    assert_eq!(
        dns.queries_for("cached.test"),
        2,
        "queries to the DNS server"
    );
    let records = proxy.wait_records(10).await;
    let lookups: Vec<_> = records.iter().map(|r| r.dns.expect("resolved")).collect();
    assert_eq!(
        lookups.iter().filter(|d| d.cached).count(),
        9,
        "{lookups:?}"
    );
}

#[tokio::test]
async fn a_missing_name_is_a_dns_failure_and_is_remembered_for_a_while() {
    let dns = DnsServer::start("127.0.0.1:0".parse().unwrap(), Zone::new()).await;
    let proxy = Proxy::start(&config(&dns, "")).await;
    let answer = get(proxy.addr, "http://nowhere.test/").await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert!(
        answer
            .text()
            .contains("DNS lookup of nowhere.test failed: no such name"),
        "{}",
        answer.text()
    );
    let asked = dns.queries_for("nowhere.test");
    assert!(asked >= 1);
    let again = get(proxy.addr, "http://nowhere.test/").await;
    assert_eq!(again.status, 502);
    assert_eq!(
        dns.queries_for("nowhere.test"),
        asked,
        "the NXDOMAIN was cached"
    );
    let records = proxy.wait_records(2).await;
    for r in &records {
        assert_eq!(r.error.map(|k| k.as_str()), Some("dns"));
    }
    assert_eq!(records[1].dns.map(|d| d.cached), Some(true));
}

#[tokio::test]
async fn a_dns_server_that_never_answers_one_name_delays_only_that_name() {
    let origin = HttpOrigin::start().await;
    let dns = DnsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Zone::new()
            .with("silent.test", Answer::Never)
            .with("fine.test", Answer::v4(&[V4])),
    )
    .await;
    let proxy = Proxy::start(&config(&dns, "[timeouts]\nconnect = \"2s\"\n")).await;
    let port = origin.addr.port();
    let started = Instant::now();
    let silent = tokio::spawn({
        let proxy = proxy.addr;
        async move { get(proxy, &format!("http://silent.test:{port}/hello")).await }
    });
    // Asked while the other lookup hangs.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fine = get(proxy.addr, &format!("http://fine.test:{port}/hello")).await;
    assert_eq!(fine.status, 200, "{}", fine.text());
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "the other name waited {:?}",
        started.elapsed()
    );
    let silent = silent.await.unwrap();
    assert_eq!(silent.status, 504, "{}", silent.text());
    assert!(
        silent
            .text()
            .contains("DNS lookup of silent.test did not finish within 2s"),
        "{}",
        silent.text()
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[tokio::test]
async fn an_ipv6_only_name_is_reached_over_ipv6() {
    let listener = TcpListener::bind("[::1]:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nv6",
                    )
                    .await;
            });
        }
    });
    let dns = DnsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Zone::new().with("six.test", Answer::v6(&[V6])),
    )
    .await;
    let proxy = Proxy::start(&config(&dns, "")).await;
    let answer = get(proxy.addr, &format!("http://six.test:{port}/")).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.body, b"v6");
    let records = proxy.wait_records(1).await;
    assert_eq!(records[0].upstream, Some(SocketAddr::new(V6.into(), port)));
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_meets_the_address_guard() {
    let origin = HttpOrigin::start().await;
    let dns = DnsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Zone::new().with("sneaky.test", Answer::dual(&[V4], &[V6])),
    )
    .await;
    // Without allow_loopback.
    let proxy = Proxy::start(&format!(
        "[ports]\nhttp = [\"1-65535\"]\n[dns]\nservers = [\"{}\"]\n",
        dns.addr
    ))
    .await;
    let answer = get(
        proxy.addr,
        &format!("http://sneaky.test:{}/hello", origin.addr.port()),
    )
    .await;
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert_eq!(origin.accepts(), 0, "the origin was reached");
}

#[tokio::test]
async fn the_system_resolver_answers_from_the_hosts_file() {
    let origin = HttpOrigin::start().await;
    let proxy = Proxy::start(
        "[destinations]\nallow_loopback = true\n[ports]\nhttp = [\"1-65535\"]\n\
         [dns]\nresolver = \"system\"\n",
    )
    .await;
    let answer = get(
        proxy.addr,
        &format!("http://localhost:{}/hello", origin.addr.port()),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let records = proxy.wait_records(1).await;
    let lookup = records[0].dns.expect("resolved");
    assert!(
        !lookup.cached,
        "the system resolver has no cache of the proxy's"
    );
}

#[tokio::test]
async fn outbound_connections_start_from_upstream_bind() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, peer) = listener.accept().await.unwrap();
        let _ = seen_tx.send(peer);
        let _ = stream.write_all(b"hi").await;
    });
    let proxy = Proxy::start(
        "[destinations]\nallow_loopback = true\n[ports]\nconnect = [\"1-65535\"]\n\
         [upstream]\nbind = [\"127.0.0.2\"]\n",
    )
    .await;
    let (status, _tunnel) = connect(proxy.addr, &addr.to_string()).await;
    assert!(status.contains(" 200 "), "{status}");
    let peer = tokio::time::timeout(Duration::from_secs(5), seen_rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::from([127, 0, 0, 2]));
}

#[tokio::test]
async fn an_upstream_bind_address_that_is_not_local_stops_the_start_with_a_clear_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let settings = settings_of("[upstream]\nbind = [\"203.0.113.5\"]\n");
    let error = portcullis::serve(
        vec![listener],
        None,
        settings,
        portcullis::Recorder::new(),
        None,
        std::future::pending(),
    )
    .await
    .expect_err("the proxy must not start");
    assert!(
        error
            .to_string()
            .contains("upstream.bind: 203.0.113.5 is not an address of this machine"),
        "{error}"
    );
}

#[tokio::test]
async fn resolution_shows_in_the_metrics() {
    let origin = HttpOrigin::start().await;
    let dns = DnsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Zone::new().with("metered.test", Answer::v4(&[V4])),
    )
    .await;
    let settings = settings_of(&config(&dns, ""));
    let proxy = Proxy::start_observed(settings, true, None).await;
    let url = format!("http://metered.test:{}/hello", origin.addr.port());
    for _ in 0..3 {
        assert_eq!(get(proxy.addr, &url).await.status, 200);
    }
    proxy.wait_records(3).await;
    let metrics = raw(
        proxy.admin.unwrap(),
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await
    .text();
    // The first request dialled (a miss); the next two reused the kept-alive connection or
    // resolved from the cache.
    assert!(
        metrics.contains("portcullis_dns_cache_total{result=\"miss\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portcullis_dns_resolution_seconds_count "),
        "{metrics}"
    );
    let parsed = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned())))
        .expect("the exposition parses");
    assert!(parsed
        .samples
        .iter()
        .any(|s| s.metric == "portcullis_dns_resolution_seconds_count"));
}

#[tokio::test]
async fn the_proxys_page_opened_by_its_name_through_the_proxy_is_its_own_page() {
    let dns = DnsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Zone::new().with("proxy.test", Answer::v4(&[V4])),
    )
    .await;
    // Loopback destinations refused: the page is no destination.
    let proxy = Proxy::start(&format!("[dns]\nservers = [\"{}\"]\n", dns.addr)).await;
    let port = proxy.addr.port();
    let page = get(proxy.addr, &format!("http://proxy.test:{port}/")).await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(page.text().contains("proxy.test"), "{}", page.text());
    let pac = get(proxy.addr, &format!("http://proxy.test:{port}/proxy.pac")).await;
    assert_eq!(pac.status, 200);
    assert!(
        pac.text().contains(&format!("PROXY proxy.test:{port}")),
        "{}",
        pac.text()
    );
    // A tunnel to the same name is no page: refused (port 3128-like ports are not open to
    // CONNECT, and the address is the proxy's own).
    let (status, _) = connect(proxy.addr, &format!("proxy.test:{port}")).await;
    assert!(status.contains(" 403 "), "{status}");
    let records = proxy.wait_records(3).await;
    assert_eq!(records[0].rule.to_string(), "local");
}

#[tokio::test]
async fn a_rule_that_refuses_an_address_holds_when_the_name_moves_to_it_between_lookups() {
    let origin = HttpOrigin::start().await;
    let port = origin.addr.port();
    // Two loopback addresses of one origin: 127.0.0.1 is refused by the rule.
    let other = TcpListener::bind(("127.0.0.2", port)).await;
    let Ok(other) = other else {
        eprintln!("skipped: 127.0.0.2:{port} is taken");
        return;
    };
    drop(other);
    let dns = DnsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Zone::new().with(
            "rebind.test",
            Answer::Moving {
                first: vec![Ipv4Addr::new(127, 0, 0, 2)],
                then: vec![V4],
            },
        ),
    )
    .await;
    let rules =
        "[[rules]]\nname = \"not the origin\"\nhosts = [\"127.0.0.1/32\"]\naction = \"deny\"\n";
    let proxy = Proxy::start(&config(&dns, rules)).await;
    for _ in 0..3 {
        let answer = get(proxy.addr, &format!("http://rebind.test:{port}/hello")).await;
        // The first lookup gives 127.0.0.2 (nobody listens: 502), every later one 127.0.0.1,
        // which the rule refuses: never the origin's answer.
        assert!(
            answer.status == 403 || answer.status == 502,
            "{} {}",
            answer.status,
            answer.text()
        );
    }
    assert_eq!(origin.accepts(), 0, "the refused address was dialled");
}

#[tokio::test]
async fn a_request_refused_for_want_of_a_log_in_resolves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let users = crate::support::htpasswd(dir.path(), &[("alice", "secret")]);
    let dns = DnsServer::start("127.0.0.1:0".parse().unwrap(), Zone::new()).await;
    let proxy = Proxy::start(&config(
        &dns,
        &format!("[auth]\nhtpasswd = {:?}\n", users.display().to_string()),
    ))
    .await;
    let port = proxy.addr.port();
    for host in [format!("leak-1.test:{port}"), "leak-2.test:81".to_owned()] {
        let answer = get(proxy.addr, &format!("http://{host}/")).await;
        assert_eq!(answer.status, 407, "{}", answer.text());
    }
    assert_eq!(dns.queries(), 0, "a lookup before the log-in");
}

/// A name whose `A` query is answered with `a` and whose `AAAA` query never is.
async fn half_silent(name: &str, a: Ipv4Addr) -> DnsServer {
    DnsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Zone::new().with(name, Answer::SilentV6 { a: vec![a] }),
    )
    .await
}

#[tokio::test]
async fn when_the_other_family_never_answers_the_known_addresses_decide_within_a_second() {
    // Refused by the guards (loopback not allowed): 403 soon, not 504 at timeouts.connect.
    let dns = half_silent("loop.test", V4).await;
    let proxy = Proxy::start(&format!(
        "[ports]\nconnect = [\"1-65535\"]\n[timeouts]\nconnect = \"5s\"\n[dns]\nservers = [\"{}\"]\n",
        dns.addr
    ))
    .await;
    let started = Instant::now();
    let (status, _) = connect(proxy.addr, "loop.test:443").await;
    assert!(status.contains(" 403 "), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A closed port: 502 refused soon.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dns = half_silent("closed.test", V4).await;
    let proxy = Proxy::start(&config(&dns, "[timeouts]\nconnect = \"5s\"\n")).await;
    let started = Instant::now();
    let (status, _) = connect(proxy.addr, &format!("closed.test:{port}")).await;
    assert!(status.contains(" 502 "), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A rule that needs the address, and a working A: the answer comes at once.
    let origin = HttpOrigin::start().await;
    let dns = half_silent("ruled.test", V4).await;
    let rule = "[[rules]]\nname = \"loopback ok\"\nhosts = [\"127.0.0.0/8\"]\naction = \"allow\"\n";
    let proxy = Proxy::start(&config(
        &dns,
        &format!("[timeouts]\nconnect = \"5s\"\n{rule}"),
    ))
    .await;
    let started = Instant::now();
    let answer = get(
        proxy.addr,
        &format!("http://ruled.test:{}/hello", origin.addr.port()),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let records = proxy.wait_records(1).await;
    assert_eq!(records[0].rule.to_string(), "rule \"loopback ok\"");
}

#[tokio::test]
async fn a_parent_proxy_named_with_a_broken_ipv6_address_is_reached_over_ipv4() {
    let origin = HttpOrigin::start().await;
    let port = origin.addr.port();
    let mut found = None;
    for _ in 0..20 {
        let parent = Proxy::start(&crate::support::loopback_config(&[port], &[])).await;
        if let Ok(hole) = BlackHole::at(SocketAddr::new(V6.into(), parent.addr.port())) {
            found = Some((parent, hole));
            break;
        }
    }
    let (parent, _hole) = found.expect("a port free on both 127.0.0.1 and ::1 in 20 tries");
    let dns = DnsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Zone::new().with("parent.test", Answer::dual(&[V4], &[V6])),
    )
    .await;
    let child = Proxy::start(&config(
        &dns,
        &format!(
            "[upstream]\nproxy = \"http://parent.test:{}\"\n",
            parent.addr.port()
        ),
    ))
    .await;
    let started = Instant::now();
    let answer = get(child.addr, &format!("http://127.0.0.1:{port}/hello")).await;
    let took = started.elapsed();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(
        took < Duration::from_secs(1),
        "through the parent after {took:?}"
    );
    let records = child.wait_records(1).await;
    assert_eq!(
        records[0].parent.as_deref(),
        Some(format!("parent.test:{}", parent.addr.port()).as_str())
    );
}
