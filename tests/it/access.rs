//! Who may use the proxy and where they may go, end to end: rules, block-list files,
//! authentication with users in rules, and the connection limits.

use std::io::Write;
use std::time::Duration;

use crate::support::*;
use portcullis::observe::access::Verdict;
use tokio::net::TcpListener;

#[tokio::test]
async fn rules_decide_first_match_and_name_themselves() {
    let web = RawOrigin::start().await;
    let mail = Counter::start().await;
    let (w, m) = (web.addr.port(), mail.addr.port());
    let config = format!(
        r#"
[destinations]
allow_loopback = true
[ports]
http = [{w}]
connect = [443]

[[rules]]
name = "no second loopback"
hosts = ["127.0.0.2"]
action = "deny"

[[rules]]
name = "this host may tunnel to mail"
clients = ["127.0.0.1/32"]
ports = [{m}]
methods = ["CONNECT"]
action = "allow"

[[rules]]
name = "read only"
ports = [{w}]
methods = ["POST", "PUT", "DELETE"]
action = "deny"
"#
    );
    let proxy = Proxy::start(&config).await;

    let r = get(proxy.addr, &format!("http://127.0.0.2:{w}/")).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.text(),
        format!("plain HTTP to 127.0.0.2 port {w} is not allowed (decided by rule \"no second loopback\")\n")
    );
    let r = get(proxy.addr, &format!("http://127.0.0.1:{w}/ok")).await;
    assert_eq!(r.status, 200);

    // A rule opens a port that ports.connect does not list, for CONNECT only.
    let (r, _) = connect(proxy.addr, &mail.addr.to_string()).await;
    assert_eq!(r.status, 200);
    let r = get(proxy.addr, &format!("http://{}/", mail.addr)).await;
    assert_eq!(r.status, 403, "the mail rule is for CONNECT only");

    let r = raw(
        proxy.addr,
        format!("POST http://127.0.0.1:{w}/x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("rule \"read only\""), "{}", r.text());

    let records = proxy.wait_records(5).await;
    let rules: Vec<String> = records.iter().map(|r| r.rule.to_string()).collect();
    assert_eq!(
        rules,
        [
            "rule \"no second loopback\"",
            "ports.http",
            "rule \"this host may tunnel to mail\"",
            "ports.http",
            "rule \"read only\"",
        ]
    );
    assert_eq!(records[2].verdict, Verdict::Allow);
    assert_eq!(web.accepts(), 1, "only the allowed GET reached the origin");
}

#[tokio::test]
async fn network_patterns_see_the_addresses_a_name_resolves_to() {
    let web = RawOrigin::start().await;
    let w = web.addr.port();
    // `localhost` resolves to 127.0.0.1 (and ::1): a CIDR rule must see through the name.
    let config = format!(
        "[destinations]\nallow_loopback = true\n[ports]\nhttp = [{w}]\nconnect = [{w}]\n\
         [[rules]]\nname = \"no loopback by any name\"\nhosts = [\"127.0.0.0/8\", \"::1\"]\naction = \"deny\"\n"
    );
    let proxy = Proxy::start(&config).await;
    let r = get(proxy.addr, &format!("http://localhost:{w}/")).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("rule \"no loopback by any name\""),
        "{}",
        r.text()
    );
    let (r, _) = connect(proxy.addr, &format!("localhost:{w}")).await;
    assert_eq!(r.status, 403);
    assert_eq!(web.accepts(), 0);

    // The same rule with a name pattern that matches first: allowed by the port list.
    let config = format!(
        "[destinations]\nallow_loopback = true\n[ports]\nhttp = [{w}]\n\
         [[rules]]\nname = \"localhost is fine\"\nhosts = [\"localhost\"]\naction = \"allow\"\n\
         [[rules]]\nname = \"no loopback by any name\"\nhosts = [\"127.0.0.0/8\", \"::1\"]\naction = \"deny\"\n"
    );
    let proxy = Proxy::start(&config).await;
    let r = get(proxy.addr, &format!("http://LOCALHOST.:{w}/yes")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let records = proxy.wait_records(1).await;
    assert_eq!(records[0].rule, "rule \"localhost is fine\"");
}

#[tokio::test]
async fn a_hosts_file_blocks_its_domains() {
    let web = RawOrigin::start().await;
    let w = web.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let mut list = std::fs::File::create(dir.path().join("blocked.txt")).unwrap();
    writeln!(list, "# family block list").unwrap();
    for i in 0..20_000 {
        writeln!(list, "ads{i}.example").unwrap();
    }
    writeln!(list, ".tracker.example   # and everything under it").unwrap();
    writeln!(list, "127.0.0.3").unwrap();
    drop(list);
    let config_path = dir.path().join("portcullis.toml");
    std::fs::write(
        &config_path,
        format!(
            "[destinations]\nallow_loopback = true\n[ports]\nhttp = [{w}]\n\
             [[rules]]\nname = \"family block list\"\nhosts_file = \"blocked.txt\"\naction = \"deny\"\n"
        ),
    )
    .unwrap();
    // Relative to the configuration file, as the proxy binary loads it.
    let config = portcullis::Config::load(&config_path).unwrap();
    let settings = config.validate(&config_path.display().to_string()).unwrap();
    assert_eq!(
        settings.policy.rules[0].hosts.as_ref().unwrap().len(),
        20_002
    );

    let proxy = Proxy::start_with(settings).await;
    for (url, status) in [
        (format!("http://127.0.0.3:{w}/"), 403),
        (format!("http://127.0.0.1:{w}/"), 200),
    ] {
        let r = get(proxy.addr, &url).await;
        assert_eq!(r.status, status, "{url}: {}", r.text());
    }
    // Names are refused before any DNS lookup: these do not exist and need none.
    for host in [
        "ads19999.example",
        "x.y.tracker.example",
        "TRACKER.example.",
    ] {
        let (r, _) = connect(proxy.addr, &format!("{host}:443")).await;
        assert_eq!(r.status, 403, "{host}");
        assert!(r.text().contains("family block list"), "{}", r.text());
    }
}

#[tokio::test]
async fn users_authenticate_and_rules_can_name_them() {
    let web = RawOrigin::start().await;
    let ssh = Counter::start().await;
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("alice", "alice pw"), ("bob", "bob pw")]);
    let config = format!(
        "[destinations]\nallow_loopback = true\n[ports]\nhttp = [{}]\n\
         [auth]\nhtpasswd = {:?}\nrealm = \"the office\"\n\
         [[rules]]\nname = \"alice may ssh\"\nusers = [\"alice\"]\nports = [{}]\naction = \"allow\"\n",
        web.addr.port(),
        users.display().to_string(),
        ssh.addr.port()
    );
    let proxy = Proxy::start(&config).await;
    let url = format!("http://{}/", web.addr);

    let r = get(proxy.addr, &url).await;
    assert_eq!(r.status, 407);
    assert_eq!(
        r.header("proxy-authenticate").as_deref(),
        Some("Basic realm=\"the office\", charset=\"UTF-8\"")
    );
    let r = get_with(proxy.addr, &url, &proxy_authorization("alice", "wrong")).await;
    assert_eq!(r.status, 407);
    let r = get_with(proxy.addr, &url, &proxy_authorization("alice", "alice pw")).await;
    assert_eq!(r.status, 200);
    // Cached: the same credentials again, and bob's.
    let r = get_with(proxy.addr, &url, &proxy_authorization("alice", "alice pw")).await;
    assert_eq!(r.status, 200);
    let r = get_with(proxy.addr, &url, &proxy_authorization("bob", "bob pw")).await;
    assert_eq!(r.status, 200);
    assert!(web
        .heads()
        .iter()
        .all(|h| header_value(h, "proxy-authorization").is_none()));

    // Only alice may tunnel to the ssh port.
    for (user, pw, status) in [("alice", "alice pw", 200), ("bob", "bob pw", 403)] {
        let request = format!(
            "CONNECT {} HTTP/1.1\r\nHost: x\r\n{}\r\n",
            ssh.addr,
            proxy_authorization(user, pw)
        );
        let r = raw(proxy.addr, request.as_bytes()).await;
        assert_eq!(r.status, status, "{user}");
    }

    let records = proxy.wait_records(7).await;
    let users: Vec<Option<&str>> = records.iter().map(|r| r.user.as_deref()).collect();
    assert_eq!(
        users,
        [
            None,
            None,
            Some("alice"),
            Some("alice"),
            Some("bob"),
            Some("alice"),
            Some("bob")
        ]
    );
    assert_eq!(records[0].rule, "auth");
    assert_eq!(records[5].rule, "rule \"alice may ssh\"");
}

#[tokio::test]
async fn repeated_failures_block_the_address_for_a_while() {
    let web = RawOrigin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("alice", "alice pw"), ("bob", "bob pw")]);
    let config = format!(
        "[destinations]\nallow_loopback = true\n[ports]\nhttp = [{}]\n\
         [auth]\nhtpasswd = {:?}\nmax_failures = 3\nfailure_window = \"1m\"\nblock_for = \"1m\"\n",
        web.addr.port(),
        users.display().to_string()
    );
    let proxy = Proxy::start(&config).await;
    let url = format!("http://{}/", web.addr);
    for _ in 0..3 {
        let r = get_with(proxy.addr, &url, &proxy_authorization("alice", "guess")).await;
        assert_eq!(r.status, 407);
    }
    // Blocked now, even with the right password.
    let r = get_with(proxy.addr, &url, &proxy_authorization("alice", "alice pw")).await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    assert!(r.text().contains("too many failed log-ins"), "{}", r.text());
    assert_eq!(web.accepts(), 0);
}

#[tokio::test]
async fn open_tunnels_count_in_the_connection_limits() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = echo.accept().await {
            held.push(s);
        }
    });
    let config = format!(
        "{}[limits]\nmax_connections_per_client = 2\n",
        loopback_config(&[], &[target.port()])
    );
    let proxy = Proxy::start(&config).await;
    let (first, _one) = connect(proxy.addr, &target.to_string()).await;
    let (second, _two) = connect(proxy.addr, &target.to_string()).await;
    assert_eq!((first.status, second.status), (200, 200));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (third, _) = connect(proxy.addr, &target.to_string()).await;
    assert_eq!(
        third.status, 429,
        "two open tunnels use up the client's two connections"
    );
}
