//! A reload (SIGHUP after the file changed) while PCs download: the downloads in flight,
//! plain HTTP and through a tunnel, complete intact, and the new configuration decides the
//! next request.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::*;
use crate::support::dns::{Answer, Zone};
use crate::support::netns::*;
use crate::support::{header_value, pattern, read_head, HttpOrigin, WAIT};

/// The size of each download.
const SIZE: usize = 32 << 20;

/// Sends `GET /bytes/SIZE` for www.example on `stream` (in absolute form to the proxy, or in
/// origin form through a tunnel) and reads the head and the first `first` body bytes, checking
/// them; returns the body bytes already read.
async fn start_download(stream: &mut TcpStream, absolute: bool, first: usize) -> usize {
    let target = if absolute {
        format!("http://www.example/bytes/{SIZE}")
    } else {
        format!("/bytes/{SIZE}")
    };
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: www.example\r\nConnection: close\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(stream, request.as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = read_head(stream, &mut buf).await.expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        header_value(&head, "content-length"),
        Some(SIZE.to_string())
    );
    check(&buf, 0);
    let mut got = buf.len();
    got += read_body(stream, got, first.saturating_sub(got)).await;
    got
}

/// Reads up to `n` more body bytes (fewer when the stream ends, or stalls for 10 s), checking
/// each against the pattern from offset `at`; the number read.
async fn read_body(stream: &mut TcpStream, at: usize, n: usize) -> usize {
    let mut chunk = vec![0u8; 256 * 1024];
    let mut read = 0;
    while read < n {
        let want = chunk.len().min(n - read);
        match tokio::time::timeout(WAIT, stream.read(&mut chunk[..want])).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(k)) => {
                check(&chunk[..k], at + read);
                read += k;
            }
            Ok(Err(e)) => panic!("the download broke after {} bytes: {e}", at + read),
        }
    }
    read
}

fn check(bytes: &[u8], at: usize) {
    if let Some(i) = bytes
        .iter()
        .enumerate()
        .position(|(i, b)| *b != pattern(at + i))
    {
        panic!("the body is corrupt at byte {}", at + i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_during_large_downloads_lets_them_complete_intact() {
    let Some(lan) = Lan::build(1) else { return };
    let web = server_v4(10);
    let _dns = start_dns(&lan, Zone::new().with("www.example", Answer::v4(&[web])));
    let _http = HttpOrigin::start_on(lan.internet.listen(at(web, 80)));
    let before = Conf::with("[ports]\nconnect = [\"https\", \"http\"]\n");
    let proxy = lan.start_proxy(&before.text(&lan));
    let pc = &lan.pcs[0];

    // A plain download and one through a tunnel, each read for 1 MiB and then left waiting.
    let mut plain = pc.ns.connect(proxy_v4()).await;
    let plain_got = start_download(&mut plain, true, 1 << 20).await;
    let (answer, mut tunnel, early) = pc.connect("www.example:80").await;
    assert_eq!(answer.status, 200);
    assert!(early.is_empty());
    let tunnel_got = start_download(&mut tunnel, false, 1 << 20).await;

    // The new file refuses www.example, and tunnels to port 80.
    let after = Conf::with(
        "[[rules]]\nname = \"no more www\"\nhosts = [\"www.example\"]\naction = \"deny\"\n",
    );
    proxy.reload(&after.text(&lan));
    let refused = pc
        .send("GET http://www.example/ HTTP/1.1\r\nHost: www.example\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(refused.status, 403, "the new configuration is in force");
    let (refused, ..) = pc.connect("www.example:80").await;
    assert_eq!(
        refused.status, 403,
        "tunnels to port 80 are no longer allowed"
    );

    // Both downloads go on to their last byte.
    let rest = read_body(&mut plain, plain_got, SIZE - plain_got).await;
    assert_eq!(plain_got + rest, SIZE, "the plain download stopped short");
    let rest = read_body(&mut tunnel, tunnel_got, SIZE - tunnel_got).await;
    assert_eq!(
        tunnel_got + rest,
        SIZE,
        "the tunnelled download stopped short"
    );

    drop((plain, tunnel));
    let record = wait_record(&lan, |r| r["method"] == "GET" && r["status"] == 200).await;
    assert_eq!(record["bytes_down"], SIZE, "{record}");
}
