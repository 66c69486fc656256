//! TLS to the proxy (`listen_tls`), as people use it: the binary with a certificate made by
//! `portcullis cert`, curl with `--proxy https://…` for http:// and https:// targets, a client
//! that does not trust the certificate, a client that sends nothing, a certificate that has
//! expired or names another host, a certificate renewed by a reload while a connection made
//! before goes on, and the warnings of `check`, the start and a reload about a certificate's
//! dates.
//!
//! curl is skipped when this machine has none, except when `CI` is set.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    cert_for(dir, &["--name", "proxy.lan", "--ip", "127.0.0.1"]);
}

/// `portcullis cert NAMES --out DIR` (`--name` and `--ip` options), which must succeed.
pub(crate) fn cert_for(dir: &Path, names: &[&str]) {
    let out = ["--out", dir.to_str().unwrap()];
    let args: Vec<&str> = ["cert"].iter().chain(names).chain(&out).copied().collect();
    let ran = portcullis(&args, "");
    assert!(ran.status.success(), "{}", ran.stderr);
}

/// A certificate authority made here (`ca.pem`) and, signed by it, a certificate for `names`
/// (host names or addresses) valid from `from` to `until` seconds from now (negative: in the
/// past), as `portcullis cert` lays them out in `dir`: `proxy.pem` (the certificate, then the
/// authority's) and `proxy.key`. Answers the certificate's start and end.
pub(crate) fn make_dated_cert(
    dir: &Path,
    names: &[&str],
    from: i64,
    until: i64,
) -> (jiff::Timestamp, jiff::Timestamp) {
    let now = jiff::Timestamp::now().as_second();
    let at = |offset: i64| {
        let seconds = u64::try_from(now + offset).expect("after 1970");
        rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(seconds)
    };
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Portcullis test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.not_before = at(from);
    params.not_after = at(until);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(
        dir.join("proxy.pem"),
        format!("{}{}", cert.pem(), ca_cert.pem()),
    )
    .unwrap();
    std::fs::write(dir.join("proxy.key"), key.serialize_pem()).unwrap();
    let moment = |offset: i64| jiff::Timestamp::from_second(now + offset).unwrap();
    (moment(from), moment(until))
}

/// A day and an hour, in seconds.
const DAY: i64 = 86_400;
const HOUR: i64 = 3_600;

/// A moment as the proxy's warnings show it.
fn shown(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%d %H:%M UTC").to_string()
}

/// Writes `dir/portcullis.toml`: a plain listener on loopback, a TLS listener on
/// `listen_tls` with the certificate of `tls`, an admin listener, then `extra`.
fn write_tls_config(dir: &Path, tls: &Path, listen_tls: &str, extra: &str) -> PathBuf {
    let config = dir.join("portcullis.toml");
    // The authority offered on the own page, when the folder has one.
    let ca = match tls.join("ca.pem") {
        ca if ca.exists() => format!("ca = \"{}\"\n", ca.display()),
        _ => String::new(),
    };
    std::fs::write(
        &config,
        format!(
            "listen = [\"127.0.0.1:0\"]\nlisten_tls = [\"{listen_tls}\"]\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n{ca}[timeouts]\nrequest_header = \"1s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{extra}",
            tls.join("proxy.pem").display(),
            tls.join("proxy.key").display(),
        ),
    )
    .unwrap();
    config
}

/// The address at the end of a diagnostic line (`… addr=127.0.0.1:3128`).
fn addr_in(line: &str) -> SocketAddr {
    line.rsplit("addr=").next().unwrap().trim().parse().unwrap()
}

/// The proxy binary with a plain and a TLS listener on loopback, the certificate of `tls`;
/// answers it and the TLS listener's address.
pub(crate) fn start(dir: &Path, tls: &Path, extra: &str) -> (Running, SocketAddr) {
    let (running, _, tls) = start_on(dir, tls, "127.0.0.1:0", extra);
    (running, tls)
}

/// [`start`] with the TLS listener on `listen_tls`; answers the proxy, its plain listener's
/// address and its TLS listener's. The admin listener's line is left for [`admin_of`].
pub(crate) fn start_on(
    dir: &Path,
    tls: &Path,
    listen_tls: &str,
    extra: &str,
) -> (Running, SocketAddr, SocketAddr) {
    let config = write_tls_config(dir, tls, listen_tls, extra);
    let running = Running::start(&["--config", config.to_str().unwrap()]);
    let plain = addr_in(&line_with(&running.stderr, &["listening addr="]));
    let tls = addr_in(&line_with(&running.stderr, &["listening for TLS"]));
    (running, plain, tls)
}

/// Sends the proxy SIGHUP: reload.
fn sighup(running: &Running) {
    let pid = running.child.id().to_string();
    let status = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(status.success());
}

/// The admin listener of a proxy [`start`]ed, from its diagnostics.
pub(crate) fn admin_of(running: &Running) -> SocketAddr {
    addr_in(&line_with(&running.stderr, &["admin listening"]))
}

/// `portcullis_tls_handshake_failures_total` once it reaches `want` (the proxy counts a
/// failure when it reads the client's alert, which may be after the client has gone), or
/// as it is after `WAIT`.
pub(crate) async fn handshake_failures(admin: SocketAddr, want: f64) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = crate::support::admin::Metrics::scrape(admin)
            .await
            .value("portcullis_tls_handshake_failures_total", &[])
            .unwrap_or(0.0);
        if now >= want || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// curl through the TLS proxy at `proxy`: its status code (0 when it failed), body and
/// exit status.
fn curl(proxy: SocketAddr, args: &[&str]) -> (u16, String, Option<i32>) {
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
    let admin = admin_of(&running);
    assert_eq!(
        handshake_failures(admin, 1.0).await,
        1.0,
        "the failed handshake is counted"
    );

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
        handshake_failures(admin, 3.0).await,
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
    sighup(&running);
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
    proxy: SocketAddr,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_refuses_an_expired_certificate_and_one_for_another_name() {
    if !have_curl() {
        return;
    }
    let web = HttpOrigin::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Ended two days ago; for the address curl uses, from an authority curl trusts.
    let expired = dir.path().join("expired");
    make_dated_cert(&expired, &["proxy.lan", "127.0.0.1"], -400 * DAY, -2 * DAY);
    // Valid, made by `portcullis cert`, but for another name only.
    let other = dir.path().join("other");
    cert_for(&other, &["--name", "other.lan"]);

    let url = format!("http://127.0.0.1:{}/refused", web.addr.port());
    let refused = |proxy: SocketAddr, ca: &Path| {
        let (code, body, status) = curl(proxy, &["--proxy-cacert", ca.to_str().unwrap(), &url]);
        assert_eq!(
            (code, status),
            (0, Some(60)),
            "{}: curl refuses the proxy's certificate (60: the peer's certificate failed verification): {body}",
            ca.display()
        );
    };

    let (running, proxy) = start(
        &expired,
        &expired,
        &loopback_config(&[web.addr.port()], &[]),
    );
    refused(proxy, &expired.join("ca.pem"));
    assert_eq!(
        handshake_failures(admin_of(&running), 1.0).await,
        1.0,
        "the proxy counts the handshake curl broke off"
    );
    drop(running);

    let (running, proxy) = start(&other, &other, &loopback_config(&[web.addr.port()], &[]));
    let ca = other.join("ca.pem");
    refused(proxy, &ca);
    // curl checks the name once the handshake is over: the proxy sees a handshake that
    // succeeded and a connection closed before any request, with nothing to count. A client
    // that checks the name within the handshake, as rustls does, breaks it off: that counts.
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let by_address = ServerName::try_from("127.0.0.1").unwrap();
    assert!(connector(&ca).connect(by_address, tcp).await.is_err());
    assert_eq!(
        handshake_failures(admin_of(&running), 1.0).await,
        1.0,
        "the proxy counts the handshake rustls broke off, and only that"
    );
    // The same certificate is good for the name it names: only the name was wrong.
    let (body, code, _) = curl_exit(&[
        "--proxy",
        &format!("https://other.lan:{}", proxy.port()),
        "--resolve",
        &format!("other.lan:{}:127.0.0.1", proxy.port()),
        "--proxy-cacert",
        ca.to_str().unwrap(),
        &format!("http://127.0.0.1:{}/named", web.addr.port()),
    ]);
    assert_eq!((code, body.as_str()), (200, "hello GET /named"));
    assert_eq!(
        web.accepts(),
        1,
        "only the request through the right name got through"
    );
}

/// What `portcullis check [--strict]` says of a proxy whose TLS listener has the
/// certificate of `tls`: its exit status and stdout.
fn check_tls(tls: &Path, strict: bool) -> (Option<i32>, String) {
    let config = write_tls_config(tls, tls, "127.0.0.1:3443", "");
    let mut args = vec!["check", "--config", config.to_str().unwrap()];
    if strict {
        args.push("--strict");
    }
    let ran = portcullis(&args, "");
    let said = String::from_utf8_lossy(&ran.stdout).into_owned();
    (ran.status.code(), format!("{said}{}", ran.stderr))
}

#[test]
fn check_warns_of_a_certificate_expired_not_yet_valid_or_ending_within_30_days() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["proxy.lan", "127.0.0.1"];
    let case = |name: &str, from: i64, until: i64| {
        let tls = dir.path().join(name);
        let (starts, ends) = make_dated_cert(&tls, &names, from, until);
        let file = tls.join("proxy.pem").display().to_string();
        (tls, file, shown(starts), shown(ends))
    };

    // (Made to live 400 days and more: a certificate is warned of in its last 30 days, or in
    // the last third of its life when that is shorter.)
    for (name, from, until, want) in [
        (
            "expired",
            -400 * DAY,
            -2 * DAY - HOUR,
            "expired on {ends} (2 days ago)",
        ),
        (
            "early",
            3 * DAY + HOUR,
            400 * DAY,
            "is not valid until {starts} (in 3 days)",
        ),
        (
            "soon",
            -400 * DAY,
            10 * DAY + HOUR,
            "expires on {ends}, in 10 days",
        ),
    ] {
        let (tls, file, starts, ends) = case(name, from, until);
        let want = want.replace("{starts}", &starts).replace("{ends}", &ends);
        let (code, said) = check_tls(&tls, false);
        assert_eq!(code, Some(0), "{name}: a warning, not an error: {said}");
        assert!(
            said.contains(&format!(
                "warning: [tls] cert: the certificate in {file} {want}"
            )),
            "{name}: {said}"
        );
        assert_eq!(check_tls(&tls, true).0, Some(2), "{name}: --strict fails");
    }
    let (tls, _, _, _) = case("fine", -400 * DAY, 31 * DAY + HOUR);
    let (code, said) = check_tls(&tls, true);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("warnings: none"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_warns_of_the_certificate_dates_at_start_and_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let names = ["proxy.lan", "127.0.0.1"];
    let file = live.join("proxy.pem").display().to_string();
    let (_, ends) = make_dated_cert(&live, &names, -400 * DAY, 10 * DAY + HOUR);
    let config = write_tls_config(dir.path(), &live, "127.0.0.1:0", "");
    let running = Running::start(&["--config", config.to_str().unwrap()]);
    let warned = |what: String| line_with(&running.stderr, &["WARN", &file, &what]);
    warned(format!("expires on {}, in 10 days", shown(ends)));
    line_with(&running.stderr, &["listening for TLS"]);

    // The certificate is replaced by one that has already ended, and the proxy reloaded.
    let (_, ended) = make_dated_cert(&live, &names, -400 * DAY, -2 * DAY - HOUR);
    sighup(&running);
    warned(format!("expired on {} (2 days ago)", shown(ended)));
    line_with(&running.stderr, &["configuration reloaded"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pac_names_the_ports_as_bound_whichever_listener_served_it() {
    if !have_curl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    make_cert(&tls);
    // Both listeners on port 0: the file must name the ports the system gave.
    let (running, plain, secure) = start_on(dir.path(), &tls, "127.0.0.1:0", "[pac]\ntls = true\n");
    let want = format!(
        "return \"HTTPS 127.0.0.1:{}; PROXY 127.0.0.1:{}\";",
        secure.port(),
        plain.port()
    );
    let ca = tls.join("ca.pem");
    let fetch = || {
        let over_plain = curl_exit(&[&format!("http://{plain}/proxy.pac")]);
        let over_tls = curl_exit(&[
            "--cacert",
            ca.to_str().unwrap(),
            &format!("https://{secure}/proxy.pac"),
        ]);
        [over_plain, over_tls]
    };
    for (body, code, _) in fetch() {
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(&want), "want {want} in:\n{body}");
    }
    // A reload keeps the TLS listener, and the file still names its port.
    sighup(&running);
    line_with(&running.stderr, &["reloaded"]);
    for (body, code, _) in fetch() {
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains(&want),
            "after the reload, want {want} in:\n{body}"
        );
    }
}
