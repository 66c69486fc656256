//! TLS to the proxy (`listen_tls`), as people use it: the binary with a certificate made by
//! `portcullis cert`, curl with `--proxy https://…` for http:// and https:// targets, a client
//! that does not trust the certificate, a client that sends nothing, and a certificate
//! renewed by a reload while a connection made before goes on.
//!
//! curl is skipped when this machine has none, except when `CI` is set.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::curl::{curl_exit, have_curl};
use crate::support::running::{line_with, Running};
use crate::support::*;

/// `portcullis cert --name proxy.lan --ip 127.0.0.1 --out DIR`.
pub(crate) fn make_cert(dir: &Path) {
    let ran = portcullis(
        &[
            "cert",
            "--name",
            "proxy.lan",
            "--ip",
            "127.0.0.1",
            "--out",
            dir.to_str().unwrap(),
        ],
        "",
    );
    assert!(ran.status.success(), "{}", ran.stderr);
}

/// The proxy binary with a plain and a TLS listener on loopback, the certificate of `tls`;
/// answers it and the TLS listener's address.
pub(crate) fn start(dir: &Path, tls: &Path, extra: &str) -> (Running, std::net::SocketAddr) {
    let config = dir.join("portcullis.toml");
    // The authority offered on the own page, when the folder has one.
    let ca = match tls.join("ca.pem") {
        ca if ca.exists() => format!("ca = \"{}\"\n", ca.display()),
        _ => String::new(),
    };
    std::fs::write(
        &config,
        format!(
            "listen = [\"127.0.0.1:0\"]\nlisten_tls = [\"127.0.0.1:0\"]\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n{ca}[timeouts]\nrequest_header = \"1s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{extra}",
            tls.join("proxy.pem").display(),
            tls.join("proxy.key").display(),
        ),
    )
    .unwrap();
    let running = Running::start(&["--config", config.to_str().unwrap()]);
    let line = line_with(&running.stderr, &["listening for TLS"]);
    let addr = line.rsplit("addr=").next().unwrap().trim().parse().unwrap();
    (running, addr)
}

/// curl through the TLS proxy at `proxy`: its status code (0 when it failed), body and
/// exit status.
fn curl(proxy: std::net::SocketAddr, args: &[&str]) -> (u16, String, Option<i32>) {
    let proxy = format!("https://{proxy}");
    let args: Vec<&str> = ["--proxy", proxy.as_str()]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    let (body, code, status) = curl_exit(&args);
    (code, body, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_tls_to_the_proxy_for_http_and_https_targets() {
    if !have_curl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    make_cert(&tls);
    let web = HttpOrigin::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (secure, secure_pem) = HttpOrigin::start_tls_on(listener, &["localhost"]);
    std::fs::write(dir.path().join("origin.pem"), &secure_pem).unwrap();
    let (running, proxy) = start(
        dir.path(),
        &tls,
        &loopback_config(&[web.addr.port()], &[secure.addr.port()]),
    );
    let ca = tls.join("ca.pem");
    let ca = ca.to_str().unwrap();

    let (code, body, _) = curl(
        proxy,
        &[
            "--proxy-cacert",
            ca,
            &format!("http://127.0.0.1:{}/over-tls", web.addr.port()),
        ],
    );
    assert_eq!((code, body.as_str()), (200, "hello GET /over-tls"));
    let origin_pem = dir.path().join("origin.pem");
    let (code, body, _) = curl(
        proxy,
        &[
            "--proxy-cacert",
            ca,
            "--cacert",
            origin_pem.to_str().unwrap(),
            &format!("https://localhost:{}/tls-in-tls", secure.addr.port()),
        ],
    );
    assert_eq!((code, body.as_str()), (200, "hello GET /tls-in-tls"));
    // The access log (stdout) has both: a request forwarded and a tunnel.
    line_with(&running.stdout, &["GET http://127.0.0.1", "/over-tls"]);
    line_with(&running.stdout, &["CONNECT localhost:"]);

    // The proxy's own page offers the authority to install, as PEM and as DER.
    let own = |path: &str| {
        Command::new("curl")
            .args([
                "--silent",
                "--noproxy",
                "*",
                "--max-time",
                "10",
                "--cacert",
                ca,
            ])
            .arg(format!("https://127.0.0.1:{}{path}", proxy.port()))
            .output()
            .expect("curl runs")
            .stdout
    };
    let page = String::from_utf8_lossy(&own("/")).into_owned();
    assert!(page.contains("/ca.crt"), "{page}");
    assert_eq!(own("/ca.pem"), std::fs::read(tls.join("ca.pem")).unwrap());
    let der = CertificateDer::from_pem_file(tls.join("ca.pem")).unwrap();
    assert_eq!(own("/ca.crt"), der.as_ref());

    // A client that does not trust the certificate fails: there is no plaintext fallback.
    let (code, _, status) = curl(
        proxy,
        &[&format!("http://127.0.0.1:{}/untrusted", web.addr.port())],
    );
    assert_eq!(code, 0);
    assert_eq!(status, Some(60), "curl: certificate problem");
    assert_eq!(web.accepts(), 1, "the untrusted request reached the origin");
    let line = line_with(&running.stderr, &["admin listening"]);
    let admin = line.rsplit("addr=").next().unwrap().trim().parse().unwrap();
    let failures = || async {
        crate::support::admin::Metrics::scrape(admin)
            .await
            .value("portcullis_tls_handshake_failures_total", &[])
            .unwrap_or(0.0)
    };
    assert_eq!(failures().await, 1.0, "the failed handshake is counted");

    // A client that connects and says nothing is cut at timeouts.request_header (1 s).
    let mut silent = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT, silent.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // Plain HTTP sent to the TLS port is no handshake: the connection just closes.
    let mut plain = tokio::net::TcpStream::connect(proxy).await.unwrap();
    plain
        .write_all(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut answer)).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("200"),
        "{answer:?}"
    );
    assert_eq!(
        failures().await,
        3.0,
        "the silent and the plain client are counted"
    );
}

/// A TLS client trusting only `ca` (PEM file), for `proxy.lan`.
fn connector(ca: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_renewed_by_a_reload_serves_new_connections_and_old_ones_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second, live) = (
        dir.path().join("first"),
        dir.path().join("second"),
        dir.path().join("live"),
    );
    make_cert(&first);
    make_cert(&second);
    std::fs::create_dir_all(&live).unwrap();
    let install = |from: &Path| {
        for file in ["proxy.pem", "proxy.key"] {
            std::fs::copy(from.join(file), live.join(file)).unwrap();
        }
    };
    install(&first);
    let web = HttpOrigin::start().await;
    let (running, proxy) = start(dir.path(), &live, &loopback_config(&[web.addr.port()], &[]));
    let name = ServerName::try_from("proxy.lan").unwrap();
    let request = |path: &str| {
        format!(
            "GET http://127.0.0.1:{}/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            web.addr.port()
        )
    };
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let mut old = connector(&first.join("ca.pem"))
        .connect(name.clone(), tcp)
        .await
        .unwrap();
    let answer = exchange(&mut old, request("before").as_bytes()).await;
    assert_eq!(answer.status, 200);

    install(&second);
    let pid = running.child.id().to_string();
    let status = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(status.success());
    line_with(&running.stderr, &["configuration reloaded"]);

    // New connections get the new certificate: a client trusting the first authority only
    // fails, one trusting the second succeeds.
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    assert!(connector(&first.join("ca.pem"))
        .connect(name.clone(), tcp)
        .await
        .is_err());
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let mut new = connector(&second.join("ca.pem"))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(
        exchange(&mut new, request("after").as_bytes()).await.status,
        200
    );
    // The connection made before the reload goes on.
    assert_eq!(
        exchange(&mut old, request("still").as_bytes()).await.status,
        200
    );
}

/// A TLS connection to the proxy at `proxy` offering only HTTP/2 by ALPN, trusting `ca`.
pub(crate) async fn h2_connection(
    proxy: std::net::SocketAddr,
    ca: &Path,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("proxy.lan").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_carries_requests_and_several_tunnels_on_one_connection() {
    use http_body_util::BodyExt;
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    make_cert(&tls);
    let web = HttpOrigin::start().await;
    let echo = echo_origin().await;
    let (running, proxy) = start(
        dir.path(),
        &tls,
        &loopback_config(&[web.addr.port()], &[echo.port()]),
    );
    let mut sender = h2_connection(proxy, &tls.join("ca.pem")).await;

    // A plain-HTTP request as an HTTP/2 stream.
    let request = http::Request::get(format!("http://127.0.0.1:{}/over-h2", web.addr.port()))
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello GET /over-h2");

    // Three tunnels at once on the same connection (RFC 9113 section 8.5), each its own echo.
    let mut tunnels = Vec::new();
    for i in 0..3u8 {
        let mut sender = sender.clone();
        tunnels.push(tokio::spawn(async move {
            let request = http::Request::connect(echo.to_string())
                .body(http_body_util::Empty::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), 200);
            let mut stream =
                hyper_util::rt::TokioIo::new(hyper::upgrade::on(response).await.unwrap());
            let message = [b't', b'0' + i, b'\n'];
            stream.write_all(&message).await.unwrap();
            let mut back = [0u8; 3];
            tokio::time::timeout(WAIT, stream.read_exact(&mut back))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(back, message);
        }));
    }
    for tunnel in tunnels {
        tunnel.await.unwrap();
    }
    // The access log has the request and each tunnel, as for HTTP/1.1.
    line_with(&running.stdout, &["GET http://127.0.0.1", "/over-h2"]);
    drop(sender);
    for _ in 0..3 {
        line_with(&running.stdout, &["CONNECT 127.0.0.1:"]);
    }
}
