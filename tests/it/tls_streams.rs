//! HTTP/2 streams in the connection limits: over a TLS listener a browser carries many
//! requests and tunnels on one connection, and each open stream takes a place in
//! `limits.max_connections_per_client` as the HTTP/1.1 connection it stands for would. A
//! stream beyond the limit is refused alone; a quiet tunnel stream makes room alone.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::running::{line_with, Running};
use crate::support::*;
use crate::tls::{h2_connection, make_cert, start};

type Tunnel = TokioIo<hyper::upgrade::Upgraded>;

/// Sends `CONNECT target` as a stream of `sender`: the tunnel, or the refusal's status.
async fn open_tunnel(
    sender: &mut SendRequest<Empty<Bytes>>,
    target: std::net::SocketAddr,
) -> Result<Tunnel, u16> {
    let request = http::Request::connect(target.to_string())
        .body(Empty::new())
        .unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .expect("an answer to the CONNECT stream")
        .unwrap();
    if response.status() != 200 {
        return Err(response.status().as_u16());
    }
    Ok(TokioIo::new(hyper::upgrade::on(response).await.unwrap()))
}

/// Writes `message` into the tunnel and reads it back from the echo origin.
async fn echoes(tunnel: &mut Tunnel, message: &[u8]) -> bool {
    if tunnel.write_all(message).await.is_err() {
        return false;
    }
    let mut back = vec![0u8; message.len()];
    matches!(
        tokio::time::timeout(WAIT, tunnel.read_exact(&mut back)).await,
        Ok(Ok(_)) if back == message
    )
}

/// The proxy binary with a TLS listener, `config`, JSON records and three places per client
/// (`limits` adds to `[limits]`), and an HTTP/2 connection to it.
async fn three_places(
    config: &str,
    limits: &str,
) -> (tempfile::TempDir, Running, SendRequest<Empty<Bytes>>) {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    make_cert(&tls);
    let (running, proxy) = start(
        dir.path(),
        &tls,
        &format!(
            "{config}[limits]\nmax_connections_per_client = 3\n{limits}[log]\nformat = \"json\"\n"
        ),
    );
    let sender = h2_connection(proxy, &tls.join("ca.pem")).await;
    (dir, running, sender)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_beyond_the_per_client_limit_is_refused_and_its_connection_goes_on() {
    let web = HttpOrigin::start().await;
    let echo = echo_origin().await;
    // The connection takes one place and each open stream one more: three in all.
    let (_dir, running, mut sender) =
        three_places(&loopback_config(&[web.addr.port()], &[echo.port()]), "").await;
    let mut first = open_tunnel(&mut sender, echo)
        .await
        .expect("the first tunnel");
    let mut second = open_tunnel(&mut sender, echo)
        .await
        .expect("the second tunnel");

    // A third tunnel, and a request, would be a fourth place: each is answered 429 alone.
    assert_eq!(open_tunnel(&mut sender, echo).await.err(), Some(429));
    line_with(
        &running.stdout,
        &[
            "\"CONNECT\"",
            "\"status\":429",
            "limits.max_connections_per_client",
        ],
    );
    let request = http::Request::get(format!("http://127.0.0.1:{}/more", web.addr.port()))
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");

    // The connection and its two tunnels go on.
    assert!(echoes(&mut first, b"first\n").await);
    assert!(echoes(&mut second, b"second\n").await);

    // A tunnel that ends gives its place back: a new one opens on the same connection.
    drop(first);
    let deadline = Instant::now() + WAIT;
    let mut third = loop {
        match open_tunnel(&mut sender, echo).await {
            Ok(tunnel) => break tunnel,
            Err(status) => {
                assert_eq!(status, 429);
                assert!(Instant::now() < deadline, "the ended tunnel kept its place");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(echoes(&mut third, b"third\n").await);
    assert!(echoes(&mut second, b"second again\n").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_tunnel_stream_makes_room_alone() {
    let echo = echo_origin().await;
    let (_dir, running, mut sender) = three_places(
        &loopback_config(&[], &[echo.port()]),
        "idle_tunnel_after = \"1s\"\n",
    )
    .await;
    let mut quiet = open_tunnel(&mut sender, echo)
        .await
        .expect("the quiet tunnel");
    let mut busy = open_tunnel(&mut sender, echo)
        .await
        .expect("the busy tunnel");
    // One tunnel moves bytes while the other stays quiet past `idle_tunnel_after`.
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        assert!(echoes(&mut busy, b"tick\n").await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A new tunnel at the limit takes the quiet one's place, and only its place.
    let mut newcomer = open_tunnel(&mut sender, echo)
        .await
        .expect("the newcomer gets the quiet tunnel's place");
    let mut rest = [0u8; 1];
    let ended = tokio::time::timeout(WAIT, quiet.read(&mut rest)).await;
    assert!(
        matches!(ended, Ok(Ok(0)) | Ok(Err(_))),
        "the quiet tunnel was closed: {ended:?}"
    );
    line_with(&running.stdout, &["to make room for a new connection"]);
    assert!(echoes(&mut busy, b"still here\n").await);
    assert!(echoes(&mut newcomer, b"newcomer\n").await);
}
