//! Names the proxy resolves, with the internet's DNS server: found (plain HTTP and CONNECT,
//! from both of the proxy's LAN addresses), NXDOMAIN or no address, never answered, names of
//! loopback, of the LAN and of the proxy itself, a name with IPv6 addresses only, a name
//! whose IPv6 address silently drops beside a working IPv4 one, a name with nothing
//! reachable, and the builtin resolver following a rewritten resolv.conf on reload.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::*;
use crate::support::dns::{Answer, DnsServer, Zone};
use crate::support::netns::*;
use crate::support::{exchange, HttpOrigin, Origin, RawResponse};

/// `GET http://{host}{path}` from `pc`, with the time it took.
async fn get(pc: &Pc, host: &str, path: &str) -> (RawResponse, Duration) {
    let started = Instant::now();
    let response = pc
        .send(&format!(
            "GET http://{host}{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ))
        .await;
    (response, started.elapsed())
}

/// `CONNECT authority` from `pc`: the proxy's answer, the tunnel, and the time the answer
/// took.
async fn connect(pc: &Pc, authority: &str) -> (RawResponse, TcpStream, Duration) {
    let started = Instant::now();
    let (answer, stream, early) = pc.connect(authority).await;
    assert!(early.is_empty(), "the origin spoke first?");
    (answer, stream, started.elapsed())
}

/// A plain HTTP request for `/path` through an open tunnel to `host`; the response's body.
async fn through(tunnel: &mut TcpStream, host: &str, path: &str) -> String {
    exchange(
        tunnel,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await
    .text()
}

fn http_origin(lan: &Lan, addr: SocketAddr) -> HttpOrigin {
    HttpOrigin::start_on(lan.internet.listen(addr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_resolved_by_the_proxy_for_plain_http_and_connect() {
    let Some(lan) = Lan::build(2) else { return };
    let web = server_v4(10);
    let dns = start_dns(
        &lan,
        Zone::new()
            .with("www.example", Answer::v4(&[web]))
            .with("secure.example", Answer::v4(&[web])),
    );
    let _http = http_origin(&lan, at(web, 80));
    let (_tls, pem) =
        HttpOrigin::start_tls_on(lan.internet.listen(at(web, 443)), &["secure.example"]);
    let ca = lan.dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let _proxy = lan.start_proxy(&Conf::default().text(&lan));
    let (pc0, pc1) = (&lan.pcs[0].ns, &lan.pcs[1].ns);
    let proxy4 = format!("http://{}", proxy_v4());
    let proxy6 = format!("http://{}", proxy_v6());

    // curl resolves nothing itself with a proxy: the PCs have no DNS server at all.
    let plain = pc0.curl(&["-x", &proxy4, "http://www.example/page"]).await;
    assert_eq!(
        (plain.code, plain.text().as_str()),
        (200, "hello GET /page"),
        "{}",
        plain.stderr
    );
    // HTTPS through CONNECT, the certificate checked for the name, from the proxy's IPv6
    // address.
    let tls = pc1
        .curl(&[
            "-x",
            &proxy6,
            "--cacert",
            ca.to_str().unwrap(),
            "https://secure.example/tls",
        ])
        .await;
    assert_eq!(
        (tls.code, tls.text().as_str()),
        (200, "hello GET /tls"),
        "{}",
        tls.stderr
    );

    assert!(dns.queries_for("www.example") >= 1);
    assert!(dns.queries_for("secure.example") >= 1);
    let record = record_for(&lan, "www.example").await;
    assert_eq!(record["client"], lan.pcs[0].v4.to_string());
    assert_eq!(record["client_name"], "pc0");
    assert_eq!(record["upstream"], "192.0.2.10:80");
    assert_eq!(record["status"], 200);
    let record = record_for(&lan, "secure.example").await;
    assert_eq!(record["client"], lan.pcs[1].v6.to_string());
    assert_eq!(record["method"], "CONNECT");
    assert_eq!(record["upstream"], "192.0.2.10:443");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_resolver_reads_the_gateways_resolv_conf() {
    let Some(lan) = Lan::build(1) else { return };
    let web = server_v4(10);
    let dns = start_dns(&lan, Zone::new().with("www.example", Answer::v4(&[web])));
    let _http = http_origin(&lan, at(web, 80));
    let conf = Conf {
        resolver: Resolver::System,
        ..Conf::default()
    };
    let _proxy = lan.start_proxy(&conf.text(&lan));

    let (response, _) = get(&lan.pcs[0], "www.example", "/system").await;
    assert_eq!(
        (response.status, response.text().as_str()),
        (200, "hello GET /system")
    );
    assert!(dns.queries_for("www.example") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_exist_is_a_502_that_names_dns() {
    let Some(lan) = Lan::build(1) else { return };
    let dns = start_dns(
        &lan,
        Zone::new()
            .with("gone.example", Answer::NxDomain)
            .with("empty.example", Answer::v4(&[])),
    );
    let _proxy = lan.start_proxy(&Conf::default().text(&lan));
    let pc = &lan.pcs[0];

    // A name the zone says is gone, and one it has never heard of.
    for host in ["gone.example", "nowhere.example"] {
        let (response, took) = get(pc, host, "/").await;
        assert_eq!(response.status, 502, "{host}: {}", response.text());
        assert!(response.text().contains(host), "{}", response.text());
        assert!(
            took < Duration::from_secs(2),
            "{host}: NXDOMAIN took {took:?}"
        );
        let record = record_for(&lan, host).await;
        assert_eq!(record["error"], "dns", "{record}");
        assert_eq!(record["status"], 502);
    }
    // A name that exists without an address.
    let (response, _) = get(pc, "empty.example", "/").await;
    assert_eq!(response.status, 502, "{}", response.text());
    assert_eq!(record_for(&lan, "empty.example").await["error"], "dns");
    let (answer, _, _) = connect(pc, "gone.example:443").await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert!(dns.queries_for("gone.example") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_never_answered_waits_for_the_connect_timeout_and_holds_up_no_other() {
    let Some(lan) = Lan::build(1) else { return };
    let web = server_v4(10);
    let dns = start_dns(
        &lan,
        Zone::new()
            .with("silent.example", Answer::Never)
            .with("www.example", Answer::v4(&[web])),
    );
    let _http = http_origin(&lan, at(web, 80));
    let conf = Conf {
        connect: "2s",
        ..Conf::default()
    };
    let _proxy = lan.start_proxy(&conf.text(&lan));
    let pc = lan.pcs[0].clone();

    let silent = tokio::spawn({
        let pc = pc.clone();
        async move { get(&pc, "silent.example", "/").await }
    });
    // Once the silent name is being looked up, another name is answered at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    while dns.queries_for("silent.example") == 0 {
        assert!(
            Instant::now() < deadline,
            "the proxy never asked for silent.example"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (other, took) = get(&pc, "www.example", "/meanwhile").await;
    assert_eq!(other.status, 200, "{}", other.text());
    assert!(
        took < Duration::from_millis(500),
        "another name took {took:?}"
    );
    assert!(
        !silent.is_finished(),
        "the silent name was already answered"
    );

    let (response, took) = silent.await.unwrap();
    assert_eq!(response.status, 504, "{}", response.text());
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(3500),
        "the silent name failed after {took:?}, not at timeouts.connect (2 s)"
    );
    // A lookup still running at timeouts.connect is a DNS failure (docs/src/dns.md).
    let record = record_for(&lan, "silent.example").await;
    assert_eq!(record["error"], "dns", "{record}");
    assert!(
        record["reason"]
            .as_str()
            .is_some_and(|r| r.contains("did not finish within 2s")),
        "{record}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_of_loopback_and_of_the_lan_are_refused_and_the_proxys_own_name_loops_nowhere() {
    let Some(lan) = Lan::build(2) else { return };
    let pc1 = lan.pcs[1].v4;
    let _dns = start_dns(
        &lan,
        Zone::new()
            .with("loop.example", Answer::v4(&[Ipv4Addr::LOCALHOST]))
            .with("proxy.example", Answer::v4(&[PROXY_V4]))
            .with("pc1.example", Answer::v4(&[pc1])),
    );
    // What would answer if the proxy went there: a listener on the gateway's loopback, and
    // one on PC 1.
    let on_loopback = Origin::serve_on(
        lan.gateway.listen(at(Ipv4Addr::LOCALHOST, 8080)),
        |s| async move { drop(s) },
    );
    let on_pc1 = Origin::serve_on(
        lan.pcs[1].ns.listen(at(pc1, 8080)),
        |s| async move { drop(s) },
    );
    // Tunnels to the proxy's port are open, so that the guard is what refuses one to itself.
    let conf = Conf::with(
        "[ports]\nconnect = [\"https\", 3128]\n\n[[rules]]\nname = \"no LAN hosts\"\nhosts = [\"10.77.0.0/24\", \"fd00:77::/64\"]\naction = \"deny\"\n",
    );
    let _proxy = lan.start_proxy(&conf.text(&lan));
    let pc = &lan.pcs[0];

    for (host, port, rule) in [
        ("loop.example", 8080, "destinations.loopback"),
        ("pc1.example", 8080, "rule \"no LAN hosts\""),
    ] {
        let (response, _) = get(pc, &format!("{host}:{port}"), "/").await;
        assert_eq!(response.status, 403, "{host}: {}", response.text());
        let record = record_for(&lan, host).await;
        assert_eq!(record["rule"], rule, "{record}");
    }
    let (answer, ..) = connect(pc, "loop.example:443").await;
    assert_eq!(answer.status, 403, "{}", answer.text());
    // The proxy's own name on its port: a tunnel would loop and is refused; plain HTTP is
    // the proxy's own page, dialled nowhere.
    let (answer, ..) = connect(pc, &format!("proxy.example:{PROXY_PORT}")).await;
    assert_eq!(answer.status, 403, "{}", answer.text());
    let record = wait_record(&lan, |r| {
        r["host"] == "proxy.example" && r["method"] == "CONNECT"
    })
    .await;
    assert_eq!(record["rule"], "destinations.self", "{record}");
    let (page, _) = get(pc, &format!("proxy.example:{PROXY_PORT}"), "/").await;
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(
        page.text().contains("This is Portcullis"),
        "{}",
        page.text()
    );
    let record = wait_record(&lan, |r| {
        r["host"] == "proxy.example" && r["method"] == "GET"
    })
    .await;
    assert_eq!(record["rule"], "local", "{record}");

    assert_eq!(on_loopback.accepts(), 0);
    assert_eq!(on_pc1.accepts(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_ipv6_addresses_only_is_reached_over_ipv6() {
    let Some(lan) = Lan::build(1) else { return };
    let web = server_v6(11);
    let _dns = start_dns(&lan, Zone::new().with("v6.example", Answer::v6(&[web])));
    let _http = http_origin(&lan, at(web, 80));
    let _proxy = lan.start_proxy(&Conf::default().text(&lan));

    let (response, _) = get(&lan.pcs[0], "v6.example", "/six").await;
    assert_eq!(
        (response.status, response.text().as_str()),
        (200, "hello GET /six")
    );
    let record = record_for(&lan, "v6.example").await;
    assert_eq!(record["upstream"], "[2001:db8:2::b]:80", "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_ipv6_beside_working_ipv4_answers_within_a_second() {
    let Some(lan) = Lan::build(1) else { return };
    let web = server_v4(12);
    let _dns = start_dns(
        &lan,
        Zone::new().with("dual.example", Answer::dual(&[web], &[BLACK_HOLE_V6])),
    );
    let _http = http_origin(&lan, at(web, 80));
    let _proxy =
        lan.start_proxy(&Conf::with("[ports]\nconnect = [\"https\", \"http\"]\n").text(&lan));
    let pc = lan.pcs[0].clone();

    // Plain HTTP and a tunnel at the same time, each from its first attempt.
    let plain = tokio::spawn({
        let pc = pc.clone();
        async move { get(&pc, "dual.example", "/plain").await }
    });
    let (answer, mut tunnel, tunnel_took) = connect(&pc, "dual.example:80").await;
    let (plain, plain_took) = plain.await.unwrap();
    assert!(
        plain.status == 200 && answer.status == 200,
        "plain HTTP got {} after {plain_took:?}, CONNECT got {} after {tunnel_took:?}",
        plain.status,
        answer.status
    );
    assert_eq!(plain.text(), "hello GET /plain");
    assert_eq!(
        through(&mut tunnel, "dual.example", "/tunnel").await,
        "hello GET /tunnel"
    );
    eprintln!("broken IPv6 beside IPv4: plain HTTP {plain_took:?}, CONNECT {tunnel_took:?}");
    assert!(
        plain_took < Duration::from_secs(1) && tunnel_took < Duration::from_secs(1),
        "with a silent IPv6 address beside a working IPv4 one, plain HTTP took {plain_took:?} \
         and CONNECT {tunnel_took:?} (Happy Eyeballs should answer within 1 s)"
    );
    let record = record_for(&lan, "dual.example").await;
    assert_eq!(record["upstream"], "192.0.2.12:80", "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_every_address_black_holed_gets_504_at_the_connect_timeout() {
    let Some(lan) = Lan::build(1) else { return };
    let _dns = start_dns(
        &lan,
        Zone::new().with(
            "dark.example",
            Answer::dual(&[BLACK_HOLE_V4], &[BLACK_HOLE_V6]),
        ),
    );
    let conf = Conf {
        connect: "2s",
        extra: "[ports]\nconnect = [\"https\", \"http\"]\n".into(),
        ..Conf::default()
    };
    let _proxy = lan.start_proxy(&conf.text(&lan));
    let pc = lan.pcs[0].clone();

    let plain = tokio::spawn({
        let pc = pc.clone();
        async move { get(&pc, "dark.example", "/").await }
    });
    let (answer, _, tunnel_took) = connect(&pc, "dark.example:80").await;
    let (plain, plain_took) = plain.await.unwrap();
    for (what, status, took) in [
        ("plain HTTP", plain.status, plain_took),
        ("CONNECT", answer.status, tunnel_took),
    ] {
        assert_eq!(status, 504, "{what}");
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_millis(3000),
            "{what} failed after {took:?}, not at timeouts.connect (2 s)"
        );
    }
    let record = record_for(&lan, "dark.example").await;
    assert_eq!(record["error"], "timeout", "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builtin_resolver_follows_a_rewritten_resolv_conf_on_reload() {
    let Some(lan) = Lan::build(1) else { return };
    let (old_web, new_web) = (server_v4(10), server_v4(11));
    // The server the gateway's resolv.conf names, and another one, on an address of its own.
    let old = start_dns(
        &lan,
        Zone::new().with("moving.example", Answer::v4(&[old_web])),
    );
    let new_dns = server_v4(19);
    let new = DnsServer::serve(
        lan.internet.bind_udp(SocketAddr::new(new_dns.into(), 53)),
        Zone::new().with("moving.example", Answer::v4(&[new_web])),
    );
    let _origins = (
        http_origin(&lan, at(old_web, 80)),
        http_origin(&lan, at(new_web, 80)),
    );
    // The builtin resolver with the servers of resolv.conf (no [dns] servers).
    let config = Conf::with("[ports]\nconnect = [\"http\"]\n")
        .text(&lan)
        .replace(&format!("servers = [\"{DNS_V4}\"]\n"), "");
    assert!(!config.contains("servers"), "{config}");
    let proxy = lan.start_proxy(&config);
    let pc = &lan.pcs[0];

    // Tunnels, which dial every time (plain HTTP may reuse a kept-alive origin connection).
    let (answer, _, _) = connect(pc, "moving.example:80").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let before = wait_record(&lan, |r| r["method"] == "CONNECT").await;
    assert_eq!(before["upstream"], "192.0.2.10:80", "{before}");
    assert!(old.queries_for("moving.example") >= 1);

    // A DHCP client rewrites resolv.conf; the owner reloads with the same configuration.
    proxy.set_resolv_conf(&format!(
        "nameserver {new_dns}\noptions timeout:5 attempts:1\n"
    ));
    proxy.reload(&config);
    let (answer, _, _) = connect(pc, "moving.example:80").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let after = wait_record(&lan, |r| {
        r["method"] == "CONNECT" && r["upstream"] != before["upstream"]
    })
    .await;
    assert_eq!(after["upstream"], "192.0.2.11:80", "{after}");
    assert_eq!(
        after["dns_cached"], false,
        "a new resolver, a new cache: {after}"
    );
    assert!(new.queries_for("moving.example") >= 1);
}
