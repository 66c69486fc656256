//! Slow clients: a trickled head, a stalled body, an idle connection.

use super::*;

#[tokio::test]
async fn a_trickled_head_gets_408_and_the_connection_closes() {
    let origin = StrictOrigin::start().await;
    let a = origin.addr.port();
    let proxy = proxy_for(a, "[timeouts]\nrequest_header = \"300ms\"\n").await;
    let head = format!(
        "GET http://127.0.0.1:{a}/slow HTTP/1.1\r\nHost: x\r\nX-Slow: {}\r\n\r\n",
        "s".repeat(200)
    );
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    // One byte every 40 ms: the head would take over 10 s, far past the 300 ms allowed.
    for &byte in head.as_bytes().iter().take(100) {
        if started.elapsed() > Duration::from_secs(5) || stream.write_all(&[byte]).await.is_err() {
            break;
        }
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(40), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&chunk[..n]);
                break;
            }
            Err(_) => {}
        }
    }
    got.extend(read_to_close(&mut stream).await);
    let waited = started.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text:?}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert_eq!(origin.accepts(), 0);
    let records = proxy.wait_records(1).await;
    assert_eq!(records[0].status, 408, "{records:#?}");
}

#[tokio::test]
async fn a_stalled_request_body_is_cut() {
    // A head that arrives in time, then a body that stops (slow POST). Whatever timeout the
    // proxy applies, it must apply one: here every configured timeout is under a second.
    let origin = StrictOrigin::start().await;
    let a = origin.addr.port();
    let proxy = proxy_for(
        a,
        "[timeouts]\nrequest_header = \"300ms\"\nkeep_alive = \"500ms\"\nconnect = \"500ms\"\nrequest_body = \"500ms\"\n",
    )
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            format!("POST http://127.0.0.1:{a}/s HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhello")
                .as_bytes(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let closed = closes_within(&mut stream, Duration::from_secs(5)).await;
    assert!(
        closed,
        "the connection was still open after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed_quietly() {
    let proxy = Proxy::start(&format!(
        "{}[timeouts]\nrequest_header = \"300ms\"\n",
        loopback_config(&[], &[])
    ))
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    let got = read_to_close(&mut stream).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    // Nothing was asked, so nothing is recorded.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(proxy.records().is_empty(), "{:#?}", proxy.records());
}
