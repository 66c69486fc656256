//! Client timeouts and graceful shutdown.

use std::time::{Duration, Instant};

use crate::support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn with_timeouts(base: String, timeouts: &str) -> String {
    format!("{base}[timeouts]\n{timeouts}\n")
}

#[tokio::test]
async fn graceful_shutdown_lets_a_slow_response_finish() {
    let origin = HttpOrigin::start().await;
    let mut proxy = Proxy::start(&loopback_config(&[origin.addr.port()], &[])).await;
    let addr = proxy.addr;
    let url = format!("http://{}/slow/700", origin.addr);
    let in_flight = tokio::spawn(async move { get(addr, &url).await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    proxy.begin_stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are no longer served.
    let refused = match TcpStream::connect(addr).await {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s
                .write_all(
                    format!("GET http://{}/ HTTP/1.1\r\nHost: x\r\n\r\n", origin.addr).as_bytes(),
                )
                .await;
            read_to_close(&mut s).await.is_empty()
        }
    };
    assert!(refused, "a connection made after shutdown began was served");

    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slept 700");
    proxy.join().await.unwrap();
    let records = proxy.records();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0].status, 200);
}

#[tokio::test]
async fn shutdown_answers_or_cuts_what_outlives_the_grace_period() {
    let origin = HttpOrigin::start().await;
    let config = with_timeouts(
        loopback_config(&[origin.addr.port()], &[origin.addr.port()]),
        "shutdown_grace = \"300ms\"",
    );
    let mut proxy = Proxy::start(&config).await;
    let addr = proxy.addr;
    let url = format!("http://{}/slow/5000", origin.addr);
    let slow = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        read_to_close(&mut s).await
    });
    let (answer, mut tunnel) = connect(addr, &origin.addr.to_string()).await;
    assert_eq!(answer.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    proxy.begin_stop();
    proxy.join().await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "stopped after {took:?}"
    );
    // The request still waiting for its answer is told so, and the connection closes.
    let answer = String::from_utf8_lossy(&slow.await.unwrap()).into_owned();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(answer.contains("shutting down"), "{answer}");
    assert!(closes_within(&mut tunnel, Duration::from_secs(2)).await);
    let records = proxy.wait_records(2).await;
    let cut = records.iter().find(|r| r.method == "GET").unwrap();
    assert_eq!(cut.status, 503, "{cut:?}");
    assert_eq!(cut.error.map(|k| k.as_str()), Some("shutdown"), "{cut:?}");
    let tunnel_record = records.iter().find(|r| r.method == "CONNECT").unwrap();
    assert!(
        tunnel_record
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("shutdown"),
        "{tunnel_record:?}"
    );
}

#[tokio::test]
async fn a_slow_request_head_gets_408_and_the_connection_closes() {
    let config = with_timeouts(loopback_config(&[], &[]), "request_header = \"300ms\"");
    let proxy = Proxy::start(&config).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let got = read_to_close(&mut stream).await;
    let waited = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text:?}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_quietly() {
    let config = with_timeouts(loopback_config(&[], &[]), "request_header = \"300ms\"");
    let proxy = Proxy::start(&config).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    let got = read_to_close(&mut stream).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn keep_alive_and_request_header_timeouts_are_separate() {
    let origin = HttpOrigin::start().await;
    // A short head timeout must not cut a keep-alive connection that idles between requests.
    let config = with_timeouts(
        loopback_config(&[origin.addr.port()], &[]),
        "request_header = \"300ms\"\nkeep_alive = \"1200ms\"",
    );
    let proxy = Proxy::start(&config).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    let request = format!("GET http://{}/a HTTP/1.1\r\nHost: x\r\n\r\n", origin.addr);
    stream.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(
        read_response(&mut stream, &mut buf, false)
            .await
            .unwrap()
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    stream.write_all(request.as_bytes()).await.unwrap();
    let second = read_response(&mut stream, &mut buf, false).await;
    assert_eq!(
        second.map(|r| r.status),
        Some(200),
        "idle 700 ms < keep_alive"
    );

    // Then idle past keep_alive: the proxy closes without a word.
    let started = Instant::now();
    let got = read_to_close(&mut stream).await;
    assert!(got.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1000) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
}
