//! CONNECT tunnels through the real proxy: TLS end to end, exact byte counts, half-close,
//! refusals and the idle timeout.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use portcullis::observe::access::Verdict;
use rustls::pki_types::ServerName;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test]
async fn a_tls_session_runs_through_connect() {
    let (origin, cert) = tls_origin(&[
        b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\nConnection: close\r\n\r\nhello over tls",
    ])
    .await;
    let proxy = Proxy::start(&loopback_config(&[], &[origin.port()])).await;

    let (answer, stream) = connect(proxy.addr, &origin.to_string()).await;
    assert_eq!(answer.status, 200);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server_name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(server_name, stream).await.unwrap();
    let r = exchange(&mut tls, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello over tls");
    drop(tls);

    let records = proxy.wait_records(1).await;
    let record = &records[0];
    assert_eq!(record.method, "CONNECT");
    assert_eq!(record.status, 200);
    assert_eq!(record.verdict, Verdict::Allow);
    assert_eq!(record.rule, "ports.connect");
    assert_eq!(record.upstream, Some(origin));
    // A TLS handshake and a request each way: hundreds of bytes, not zero.
    assert!(record.bytes_up > 200, "{record:?}");
    assert!(record.bytes_down > 200, "{record:?}");
}

#[tokio::test]
async fn half_close_is_relayed_and_bytes_are_counted_exactly() {
    let origin = counting_origin().await;
    let proxy = Proxy::start(&loopback_config(&[], &[origin.port()])).await;
    let (answer, mut stream) = connect(proxy.addr, &origin.to_string()).await;
    assert_eq!(answer.status, 200);
    let data = vec![7u8; 300_001];
    stream.write_all(&data).await.unwrap();
    // The origin answers only after it sees our end of data.
    stream.shutdown().await.unwrap();
    let back = read_to_close(&mut stream).await;
    assert_eq!(String::from_utf8_lossy(&back), "got 300001 bytes");

    let records = proxy.wait_records(1).await;
    assert_eq!(records[0].bytes_up, 300_001);
    assert_eq!(records[0].bytes_down, back.len() as u64);
}

#[tokio::test]
async fn ipv6_literals_in_brackets_are_tunnelled() {
    let Ok(listener) = TcpListener::bind("[::1]:0").await else {
        eprintln!("skipped: this machine has no IPv6 loopback");
        return;
    };
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"v6 hello").await;
        }
    });
    let proxy = Proxy::start(&loopback_config(&[], &[addr.port()])).await;
    let (answer, mut stream) = connect(proxy.addr, &format!("[::1]:{}", addr.port())).await;
    assert_eq!(answer.status, 200);
    let mut got = [0u8; 8];
    tokio::time::timeout(WAIT, stream.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"v6 hello");
    drop(stream);
    let records = proxy.wait_records(1).await;
    assert_eq!(records[0].host, "[::1]");
    assert_eq!(records[0].upstream, Some(addr));
}

#[tokio::test]
async fn denied_connect_ports_are_403_and_never_dialled() {
    let denied = Counter::start().await;
    let http_only = Counter::start().await;
    let proxy = Proxy::start(&loopback_config(&[http_only.addr.port()], &[443])).await;

    let (answer, _) = connect(proxy.addr, &denied.addr.to_string()).await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.text(),
        format!(
            "port {} is not allowed for CONNECT (decided by ports.connect)\n",
            denied.addr.port()
        )
    );
    // The lists are separate: a port open to plain HTTP is not open to CONNECT.
    let (answer, _) = connect(proxy.addr, &http_only.addr.to_string()).await;
    assert_eq!(answer.status, 403);
    let (answer, _) = connect(proxy.addr, "127.0.0.1:25").await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.text(),
        "port 25 (smtp) is not allowed for CONNECT (decided by ports.connect)\n"
    );

    let records = proxy.wait_records(3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(denied.accepts(), 0);
    assert_eq!(http_only.accepts(), 0);
    let smtp = &records[2];
    assert_eq!(
        (smtp.status, smtp.verdict, smtp.service),
        (403, Verdict::Deny, Some("smtp"))
    );
    assert_eq!(smtp.rule, "ports.connect");
    assert_eq!(
        smtp.reason.as_deref(),
        Some("port 25 (smtp) is not allowed for CONNECT")
    );
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_tunnel_idle() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    // An origin that sends one greeting, then waits without a word.
    tokio::spawn(async move {
        if let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"hi").await;
            tokio::time::sleep(WAIT).await;
        }
    });
    let config = format!(
        "{}[timeouts]\ntunnel_idle = \"400ms\"\n",
        loopback_config(&[], &[origin.port()])
    );
    let proxy = Proxy::start(&config).await;
    let (answer, mut stream) = connect(proxy.addr, &origin.to_string()).await;
    assert_eq!(answer.status, 200);
    let started = std::time::Instant::now();
    let got = read_to_close(&mut stream).await;
    assert_eq!(got, b"hi");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    let records = proxy.wait_records(1).await;
    assert!(
        records[0]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("without traffic"),
        "{:?}",
        records[0]
    );
    assert_eq!(records[0].bytes_down, 2);
}

/// Writes `chunks` (pattern bytes, in order, pausing between them) while reading the echo
/// concurrently; returns what came back.
async fn echo_through(stream: tokio::net::TcpStream, chunks: &[usize], pause: Duration) -> Vec<u8> {
    let total: usize = chunks.iter().sum();
    let (mut read, mut write) = stream.into_split();
    let chunks = chunks.to_vec();
    let writer = tokio::spawn(async move {
        let mut offset = 0;
        for len in chunks {
            let data: Vec<u8> = (offset..offset + len).map(pattern).collect();
            write.write_all(&data).await.unwrap();
            offset += len;
            tokio::time::sleep(pause).await;
        }
        write.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(total);
    tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut back))
        .await
        .expect("the echo ends in time")
        .unwrap();
    writer.await.unwrap();
    back
}

/// Opens a tunnel to an echo origin, sends `chunks` through it (pausing `pause` between
/// them) and checks that every byte came back in order and that the record counts them.
async fn echo_chunks_through_a_tunnel(chunks: &[usize], pause: Duration) {
    let origin = echo_origin().await;
    let proxy = Proxy::start(&loopback_config(&[], &[origin.port()])).await;
    let (answer, stream) = connect(proxy.addr, &origin.to_string()).await;
    assert_eq!(answer.status, 200);
    let total: usize = chunks.iter().sum();
    let back = echo_through(stream, chunks, pause).await;
    assert_eq!(back.len(), total);
    assert_eq!(hex(&sha2::Sha256::digest(&back)), pattern_sha256(total));
    let records = proxy.wait_records(1).await;
    assert_eq!(records[0].bytes_up, total as u64);
    assert_eq!(records[0].bytes_down, total as u64);
}

#[tokio::test]
async fn bulk_bytes_both_ways_at_once_arrive_intact_and_counted() {
    // 8 MiB up while the same 8 MiB comes down: both directions busy at once.
    echo_chunks_through_a_tunnel(&[8 << 20], Duration::ZERO).await;
}

#[tokio::test]
async fn bursts_and_pauses_keep_every_byte_in_order() {
    // Around the quiet buffer's size, then bursts and trickles: each direction goes busy
    // and quiet again several times within one tunnel.
    let chunks = [
        1, 511, 512, 513, 70_000, 3, 1_000_000, 100, 65_536, 1, 300_000, 2,
    ];
    echo_chunks_through_a_tunnel(&chunks, Duration::from_millis(20)).await;
}

#[tokio::test]
async fn bytes_sent_right_behind_connect_reach_the_destination_first() {
    let origin = echo_origin().await;
    let proxy = Proxy::start(&loopback_config(&[], &[origin.port()])).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    // A client that does not wait for the 200 (as with TLS false start): its first bytes
    // arrive with the CONNECT head, in one segment.
    stream
        .write_all(
            format!("CONNECT {origin} HTTP/1.1\r\nHost: {origin}\r\n\r\nearly bird").as_bytes(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !got.ends_with(b"early bird") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("the early bytes come back in time")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\nearly bird"), "{text}");
    stream.write_all(b" and more").await.unwrap();
    stream.shutdown().await.unwrap();
    let rest = read_to_close(&mut stream).await;
    assert_eq!(rest, b" and more");
    let records = proxy.wait_records(1).await;
    assert_eq!(
        records[0].bytes_up,
        ("early bird".len() + " and more".len()) as u64
    );
    assert_eq!(records[0].bytes_down, records[0].bytes_up);
}

/// Bytes sent right behind a CONNECT are the tunnel's. When no tunnel opens (the port is
/// refused, or the destination cannot be reached), the answer says `Connection: close` and
/// the connection ends: those bytes are never read as requests, here a request to an origin
/// the client may reach and a TLS hello.
#[tokio::test]
async fn bytes_behind_a_refused_connect_are_never_read_as_requests() {
    let origin = HttpOrigin::start().await;
    let denied = Counter::start().await;
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let proxy = Proxy::start(&loopback_config(
        &[origin.addr.port()],
        &[closed.port(), origin.addr.port()],
    ))
    .await;
    let smuggled = format!(
        "GET http://{}/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        origin.addr
    );
    let hello: &[u8] = b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03";
    for (target, status) in [(denied.addr, 403), (closed, 502)] {
        for early in [smuggled.as_bytes(), hello] {
            let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
            let mut request =
                format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").into_bytes();
            request.extend_from_slice(early);
            stream.write_all(&request).await.unwrap();
            let mut buf = Vec::new();
            let answer = read_response(&mut stream, &mut buf, false).await.unwrap();
            assert_eq!(answer.status, status, "{target}");
            assert_eq!(
                answer.header("connection").as_deref(),
                Some("close"),
                "{target}"
            );
            let rest = read_to_close(&mut stream).await;
            assert!(
                buf.is_empty() && rest.is_empty(),
                "a second answer: {}{}",
                String::from_utf8_lossy(&buf),
                String::from_utf8_lossy(&rest)
            );
        }
    }
    let records = proxy.wait_records(4).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(proxy.records().len(), 4, "{records:#?}");
    assert!(
        records.iter().all(|r| r.method == "CONNECT"),
        "{records:#?}"
    );
    assert_eq!(
        origin.accepts(),
        0,
        "the bytes behind a CONNECT reached the origin"
    );
    assert_eq!(denied.accepts(), 0);
}

/// The admin listener is the proxy's own, like its proxy listeners: never a destination, even
/// with loopback destinations allowed and its port in `ports.connect`.
#[tokio::test]
async fn the_admin_listener_is_never_a_tunnel_destination() {
    let mut config = settings_of(&loopback_config(&[], &[443]));
    // Any port the admin listener gets is open to CONNECT.
    config.policy.connect_ports =
        portcullis::core::ports::PortSet::from_specs(&["1-65535".into()]).unwrap();
    let proxy = Proxy::start_observed(config, true, None).await;
    let admin = proxy.admin.unwrap();
    let (answer, _) = connect(proxy.addr, &admin.to_string()).await;
    assert_eq!(answer.status, 403, "{}", answer.text());
    let records = proxy.wait_records(1).await;
    assert_eq!(records[0].rule, "destinations.self", "{records:#?}");
}
