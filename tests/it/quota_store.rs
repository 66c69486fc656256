//! Byte budgets shared through a store (`[state] store`): two proxies and a real
//! `redis-server` started here (installed by `.ci/run`). Usage through one counts against
//! the other; with the store stopped both go on serving (counting alone, the metric says
//! so), and once it is back (empty: started anew without persistence) every proxy writes its
//! part again, so the counts are whole again and what was counted meanwhile is in them.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::admin::Metrics;
use crate::support::*;

/// A `redis-server` on `port`, without persistence, stopped when dropped.
struct RedisServer(Child);

impl RedisServer {
    fn start(binary: &str, port: u16) -> RedisServer {
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        // Held from here, so that it is stopped and waited for however the test ends.
        let server = RedisServer(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not listen on {port} within 5 s");
    }

    fn stop(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> Option<String> {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "redis-server".to_owned())
}

/// `GET url` through `proxy` from the source address `from`; the status.
async fn status_from(from: &str, proxy: SocketAddr, url: &str) -> u16 {
    let mut stream = connect_from(from, proxy).await;
    exchange(
        &mut stream,
        &format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await
    .status
}

/// Waits (up to 10 s) until the metric `name` (with `labels`) of the proxy whose admin
/// listener is `admin` satisfies `holds`; its last value.
async fn metric_until(
    admin: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    holds: impl Fn(f64) -> bool,
) -> f64 {
    let mut last = None;
    for _ in 0..100 {
        last = Metrics::scrape(admin).await.value(name, labels);
        if last.is_some_and(&holds) {
            return last.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} {labels:?} stayed {last:?}");
}

#[tokio::test]
async fn two_proxies_keep_one_budget_through_redis_and_merge_after_it_was_away() {
    let Some(binary) = tool_here(redis_server(), "redis-server", "redis-server") else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = RedisServer::start(&binary, port);
    let web = HttpOrigin::start().await;
    let web_port = web.addr.port();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = |instance: &str, dir: &std::path::Path| {
        format!(
            "instance = \"{instance}\"\n{}[state]\ndir = \"{}\"\nstore = \"redis://127.0.0.1:{port}/0\"\n\
             [[quotas]]\nname = \"shared\"\nclients = [\"127.0.0.7\", \"127.0.0.8\"]\nbytes = \"150KiB\"\nper = \"day\"\n",
            loopback_config(&[web_port], &[]),
            dir.display()
        )
    };
    let a = Proxy::start_observed(settings_of(&config("a", dir_a.path())), true, None).await;
    let b = Proxy::start_observed(settings_of(&config("b", dir_b.path())), true, None).await;
    let (admin_a, admin_b) = (a.admin.unwrap(), b.admin.unwrap());
    let big = format!("http://127.0.0.1:{web_port}/bytes/102400");
    let used = "portcullis_quota_used_bytes";
    let of = |key: &'static str| [("quota", "shared"), ("key", key)];

    // 100 KiB through each: together over 150 KiB, and both proxies know it.
    assert_eq!(status_from("127.0.0.7", a.addr, &big).await, 200);
    assert_eq!(status_from("127.0.0.7", b.addr, &big).await, 200);
    metric_until(admin_a, used, &of("127.0.0.7"), |v| v >= 204_800.0).await;
    metric_until(admin_b, used, &of("127.0.0.7"), |v| v >= 204_800.0).await;
    assert_eq!(status_from("127.0.0.7", a.addr, &big).await, 403);
    assert_eq!(status_from("127.0.0.7", b.addr, &big).await, 403);
    metric_until(admin_a, "portcullis_quota_store_up", &[], |v| v == 1.0).await;

    // The store goes away: both still serve, counting alone, and say so.
    redis.stop();
    assert_eq!(status_from("127.0.0.8", a.addr, &big).await, 200);
    metric_until(admin_a, "portcullis_quota_store_up", &[], |v| v == 0.0).await;
    let failures = metric_until(admin_a, "portcullis_quota_store_failures_total", &[], |v| {
        v >= 1.0
    })
    .await;
    assert!(failures >= 1.0);
    assert_eq!(
        status_from("127.0.0.7", b.addr, &big).await,
        403,
        "the count stays"
    );

    // Back, empty: each proxy writes its part again. 127.0.0.7's two parts are one budget
    // again, and 127.0.0.8's bytes counted by A alone are in B's count once B counts them.
    let _redis = RedisServer::start(&binary, port);
    metric_until(admin_a, "portcullis_quota_store_up", &[], |v| v == 1.0).await;
    metric_until(admin_b, used, &of("127.0.0.7"), |v| v == 204_800.0).await;
    assert_eq!(status_from("127.0.0.8", b.addr, &big).await, 200);
    metric_until(admin_b, used, &of("127.0.0.8"), |v| v >= 204_800.0).await;
    metric_until(admin_a, used, &of("127.0.0.8"), |v| v >= 204_800.0).await;
    assert_eq!(status_from("127.0.0.8", a.addr, &big).await, 403);
    assert_eq!(status_from("127.0.0.8", b.addr, &big).await, 403);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
