//! Parent proxies: a chain of two real Portcullis instances (child → parent → origin) for
//! plain HTTP and CONNECT, with parent credentials, failover, and a parent that is down.

use std::time::{Duration, Instant};

use crate::support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

fn child_config(web: u16, tunnel: u16, upstream: &str) -> String {
    format!(
        "[destinations]\nallow_loopback = true\n[ports]\nhttp = [{web}]\nconnect = [{tunnel}]\n[upstream]\n{upstream}\n"
    )
}

#[tokio::test]
async fn http_and_connect_go_through_the_parent() {
    let web = RawOrigin::start().await;
    let tunnel = echo_origin().await;
    let (w, t) = (web.addr.port(), tunnel.port());
    let parent = Proxy::start(&loopback_config(&[w], &[t])).await;
    let child = Proxy::start(&child_config(
        w,
        t,
        &format!("proxy = \"http://{}\"", parent.addr),
    ))
    .await;

    let r = get(child.addr, &format!("http://{}/chain?x=1", web.addr)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello /chain?x=1");
    let head = web.heads().pop().unwrap();
    assert!(head.starts_with("GET /chain?x=1 HTTP/1.1\r\n"), "{head}");
    let via = header_value(&head, "via").unwrap();
    assert_eq!(via.split(',').count(), 2, "both proxies in Via: {via}");
    assert_eq!(header_value(&head, "proxy-authorization"), None);

    let (answer, mut stream) = connect(child.addr, &tunnel.to_string()).await;
    assert_eq!(answer.status, 200);
    stream.write_all(b"ping through two proxies").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(
        read_to_close(&mut stream).await,
        b"ping through two proxies"
    );

    let records = child.wait_records(2).await;
    for record in &records {
        assert_eq!(
            record.parent.as_deref(),
            Some(parent.addr.to_string().as_str())
        );
        assert_eq!(record.upstream, Some(parent.addr));
    }
    assert_eq!((records[1].bytes_up, records[1].bytes_down), (24, 24));
    let parent_records = parent.wait_records(2).await;
    assert_eq!(parent_records[0].upstream, Some(web.addr));
    assert_eq!(parent_records[0].parent, None);
    assert_eq!(parent_records[1].upstream, Some(tunnel));
}

#[tokio::test]
async fn credentials_go_to_the_parent_only() {
    let web = RawOrigin::start().await;
    let tunnel = echo_origin().await;
    let (w, t) = (web.addr.port(), tunnel.port());
    let dir = tempfile::tempdir().unwrap();
    let parent = Proxy::start(&format!(
        "{}[auth]\nhtpasswd = {:?}\n",
        loopback_config(&[w], &[t]),
        htpasswd(dir.path(), &[("child", "child pw")])
            .display()
            .to_string()
    ))
    .await;

    let good = Proxy::start(&child_config(
        w,
        t,
        &format!("proxy = \"http://child:child%20pw@{}\"", parent.addr),
    ))
    .await;
    let r = get(good.addr, &format!("http://{}/authed", web.addr)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let head = web.heads().pop().unwrap();
    assert_eq!(header_value(&head, "proxy-authorization"), None, "{head}");
    let (answer, _) = connect(good.addr, &tunnel.to_string()).await;
    assert_eq!(answer.status, 200);
    let parent_records = parent.wait_records(2).await;
    assert!(parent_records
        .iter()
        .all(|r| r.user.as_deref() == Some("child")));

    let bad = Proxy::start(&child_config(
        w,
        t,
        &format!("proxy = \"http://child:wrong@{}\"", parent.addr),
    ))
    .await;
    let r = get(bad.addr, &format!("http://{}/x", web.addr)).await;
    assert_eq!(r.status, 502);
    assert!(
        r.text().contains(&format!(
            "the parent proxy {} wants credentials",
            parent.addr
        )),
        "{}",
        r.text()
    );
    let (answer, _) = connect(bad.addr, &tunnel.to_string()).await;
    assert_eq!(answer.status, 502);
    assert!(
        answer.text().contains("refused CONNECT"),
        "{}",
        answer.text()
    );
    assert!(answer.text().contains("407"), "{}", answer.text());
}

#[tokio::test]
async fn a_parent_that_is_down_gives_502_and_the_next_one_is_used() {
    let web = RawOrigin::start().await;
    let tunnel = echo_origin().await;
    let (w, t) = (web.addr.port(), tunnel.port());
    let down = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let only_down = Proxy::start(&child_config(w, t, &format!("proxy = \"http://{down}\""))).await;
    let started = Instant::now();
    let r = get(only_down.addr, &format!("http://{}/", web.addr)).await;
    assert_eq!(r.status, 502);
    assert!(
        r.text()
            .contains(&format!("the parent proxy {down} cannot be reached")),
        "{}",
        r.text()
    );
    let (answer, _) = connect(only_down.addr, &tunnel.to_string()).await;
    assert_eq!(answer.status, 502);
    assert!(
        answer.text().contains(&down.to_string()),
        "{}",
        answer.text()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(web.accepts(), 0);

    let parent = Proxy::start(&loopback_config(&[w], &[t])).await;
    let failover = Proxy::start(&child_config(
        w,
        t,
        &format!("proxy = [\"http://{down}\", \"http://{}\"]", parent.addr),
    ))
    .await;
    for i in 0..2 {
        let r = get(failover.addr, &format!("http://{}/f{i}", web.addr)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let (answer, _) = connect(failover.addr, &tunnel.to_string()).await;
    assert_eq!(answer.status, 200);
    let records = failover.wait_records(3).await;
    assert!(
        records
            .iter()
            .all(|r| r.parent.as_deref() == Some(parent.addr.to_string().as_str())),
        "{records:#?}"
    );
}

/// RFC 9112 §3.2.4: `OPTIONS http://host:port` (no path) becomes `OPTIONS *` at the last
/// proxy only. A child keeps the target as it came for its parent (past one that is down),
/// and the parent sends `*`.
#[tokio::test]
async fn an_options_request_for_the_whole_origin_becomes_an_asterisk_at_the_last_proxy() {
    let web = RawOrigin::start().await;
    let w = web.addr.port();
    let parent = Proxy::start(&loopback_config(&[w], &[])).await;
    let child = Proxy::start(&child_config(
        w,
        w,
        &format!("proxy = \"http://{}\"", parent.addr),
    ))
    .await;
    let options = |target: String| {
        format!("OPTIONS {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    };
    let r = raw(
        child.addr,
        options(format!("http://{}", web.addr)).as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let head = web.heads().pop().unwrap();
    assert!(head.starts_with("OPTIONS * HTTP/1.1\r\n"), "{head}");
    let via = header_value(&head, "via").unwrap();
    assert_eq!(via.split(',').count(), 2, "both proxies in Via: {via}");
    let record = child.wait_records(1).await.remove(0);
    assert_eq!(
        record.parent.as_deref(),
        Some(parent.addr.to_string().as_str())
    );
    assert_eq!(record.upstream, Some(parent.addr));
    assert_eq!(parent.wait_records(1).await[0].upstream, Some(web.addr));

    // What the parent receives, recorded by an origin standing in for it.
    let recorder = RawOrigin::start().await;
    let down = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let child = Proxy::start(&child_config(
        w,
        w,
        &format!("proxy = [\"http://{down}\", \"http://{}\"]", recorder.addr),
    ))
    .await;
    for (target, seen) in [
        (
            format!("http://{}", web.addr),
            format!("OPTIONS http://{} HTTP/1.1", web.addr),
        ),
        (
            format!("http://{}/", web.addr),
            format!("OPTIONS http://{}/ HTTP/1.1", web.addr),
        ),
    ] {
        let r = raw(child.addr, options(target).as_bytes()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let head = recorder.heads().pop().unwrap();
        assert!(head.starts_with(&format!("{seen}\r\n")), "{head}");
    }
    let records = child.wait_records(2).await;
    assert!(
        records.iter().all(|r| r.upstream == Some(recorder.addr)),
        "{records:#?}"
    );
}

#[tokio::test]
async fn upstream_direct_hosts_skip_the_parent() {
    let web = RawOrigin::start().await;
    let w = web.addr.port();
    let counter = Counter::start().await;
    // The "parent" is a listener that must never be reached.
    let child = Proxy::start(&child_config(
        w,
        443,
        &format!(
            "proxy = \"http://{}\"\ndirect = [\"127.0.0.0/8\"]",
            counter.addr
        ),
    ))
    .await;
    let r = get(child.addr, &format!("http://{}/direct", web.addr)).await;
    assert_eq!(r.status, 200);
    let records = child.wait_records(1).await;
    assert_eq!(records[0].parent, None);
    assert_eq!(records[0].upstream, Some(web.addr));
    assert_eq!(counter.accepts(), 0);
}

/// Through a parent, which resolves names itself, a destination written as an address meets
/// the address guards before the rules and port lists, for plain HTTP and CONNECT alike: the
/// proxy and `explain` name the same decider, and nothing reaches the parent.
#[tokio::test]
async fn a_literal_through_a_parent_meets_the_guards_first() {
    let parent = Counter::start().await;
    let config = format!(
        "[ports]\nhttp = [80]\nconnect = [443]\n[upstream]\nproxy = \"http://{}\"\n",
        parent.addr
    );
    let child = Proxy::start(&config).await;
    let (answer, _stream) = connect(child.addr, "127.0.0.1:25").await;
    assert_eq!(answer.status, 403);
    let r = get(child.addr, "http://127.0.0.1:25/").await;
    assert_eq!(r.status, 403);
    let records = child.wait_records(2).await;
    for record in &records {
        assert_eq!(record.rule, "destinations.loopback", "{record:?}");
        assert_eq!(record.error.map(|k| k.as_str()), Some("denied"));
    }
    let settings = settings_of(&config);
    for (method, target) in [("CONNECT", "127.0.0.1:25"), ("GET", "http://127.0.0.1:25/")] {
        let question = portcullis::ops::explain::Question {
            client: "127.0.0.1".parse().unwrap(),
            user: None,
            method,
            target,
            at: jiff::Timestamp::now(),
        };
        let lookups = portcullis::ops::explain::Lookups {
            groups: None,
            resolve: None,
            is_local: &|_| false,
        };
        let told = portcullis::ops::explain::explain(&settings, &question, &lookups).unwrap();
        assert_eq!(
            told.headline().split(':').next(),
            Some("denied by destinations.loopback")
        );
    }
    assert_eq!(parent.accepts(), 0, "nothing went to the parent");
}
