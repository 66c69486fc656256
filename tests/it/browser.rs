//! Portcullis in a real browser (headless Chromium): pages loaded through the proxy over
//! HTTP and HTTPS, the HTML error page for a refused port, the PAC file, the proxy spoken to
//! over TLS through the PAC's `HTTPS` entry (with the LAN's authority trusted the way a
//! user's Chromium trusts it: its NSS database), and the status page (a screenshot of it is
//! what the README shows).
//!
//! Without Chromium (or, for the TLS test, NSS's certutil) a test is skipped, except when
//! `CI` is set: then it fails, since `.ci/run` installs them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::support::dns::{Answer, DnsServer, Zone};
use crate::support::running::line_with;
use crate::support::*;

/// The Chromium binary, if this machine has one.
pub fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PORTCULLIS_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Runs headless Chromium with `args` and a fresh profile; returns its stdout.
fn run_chromium(binary: &Path, args: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    run_chromium_in(binary, profile.path(), args)
}

/// Runs headless Chromium with `args` and the profile in `profile` (which a later run may
/// take up again, as a browser that comes back); returns its stdout.
pub fn run_chromium_in(binary: &Path, profile: &Path, args: &[String]) -> String {
    run_chromium_as(binary, profile, None, args)
}

/// [`run_chromium_in`] with `HOME` set to `home` when given: the user whose NSS database
/// (`~/.pki/nssdb`) Chromium reads its own trusted authorities from.
fn run_chromium_as(binary: &Path, profile: &Path, home: Option<&Path>, args: &[String]) -> String {
    let mut command = Command::new(binary);
    if let Some(home) = home {
        command.env("HOME", home);
    }
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-first-run",
            "--hide-scrollbars",
            "--disable-quic",
            "--dns-prefetch-disable",
            "--no-default-browser-check",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args);
    let (output, _) = run_bounded(command, Vec::new(), Duration::from_secs(60));
    assert!(
        output.status.success(),
        "Chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Chromium, or `None` (the test is skipped) when this machine has none and CI is not set.
pub fn chromium_or_skip() -> Option<PathBuf> {
    tool_here(chromium(), "Chromium", "chromium")
}

/// Runs Chromium off the async runtime.
pub(crate) async fn chromium_async(binary: &Path, args: Vec<String>) -> String {
    let binary = binary.to_path_buf();
    tokio::task::spawn_blocking(move || run_chromium(&binary, &args))
        .await
        .unwrap()
}

/// The answer of an origin that serves the HTML `page`.
fn page_answer(page: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{page}",
        page.len()
    )
}

/// An origin that serves `page` for every request (at most 64 on one connection), over TLS
/// with a self-signed certificate when `tls`.
async fn page_origin(page: &str, tls: bool) -> std::net::SocketAddr {
    let answer = page_answer(page);
    let script = vec![answer.as_bytes(); 64];
    if tls {
        tls_origin(&script).await.0
    } else {
        scripted_origin(&script).await.detach()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_browses_through_the_proxy_and_sees_its_refusals() {
    let Some(binary) = chromium_or_skip() else {
        return;
    };
    let http = page_origin(
        "<html><body><h1 id=m>plain-page-through-portcullis</h1></body></html>",
        false,
    )
    .await;
    let https = page_origin(
        "<html><body><h1 id=m>tls-page-through-portcullis</h1></body></html>",
        true,
    )
    .await;
    let denied = Counter::start().await;
    // Only the two origins' ports are open, so whatever else Chromium asks for is refused
    // before any DNS lookup.
    let config = format!(
        "[destinations]\nallow_loopback = true\n[ports]\nhttp = [{}]\nconnect = [{}]\n[pac]\ndirect = []\n[pages]\ncontact = \"the test desk\"\n",
        http.port(),
        https.port()
    );
    let proxy = Proxy::start(&config).await;
    let proxy_flags = |url: String| {
        vec![
            format!("--proxy-server=http://{}", proxy.addr),
            "--proxy-bypass-list=<-loopback>".to_owned(),
            "--ignore-certificate-errors".to_owned(),
            "--dump-dom".to_owned(),
            url,
        ]
    };

    let dom = chromium_async(&binary, proxy_flags(format!("http://{http}/page"))).await;
    assert!(dom.contains("plain-page-through-portcullis"), "{dom}");
    let dom = chromium_async(
        &binary,
        proxy_flags(format!("https://localhost:{}/secure", https.port())),
    )
    .await;
    assert!(dom.contains("tls-page-through-portcullis"), "{dom}");
    let dom = chromium_async(&binary, proxy_flags(format!("http://{}/nope", denied.addr))).await;
    assert!(
        dom.contains(&denied.addr.port().to_string()),
        "the error page names the port: {dom}"
    );
    assert!(
        dom.contains("the test desk"),
        "the error page names the contact: {dom}"
    );
    assert_eq!(denied.accepts(), 0);

    let records = proxy.records();
    let page = records
        .iter()
        .find(|r| r.method == "GET" && r.port == http.port() && r.status == 200)
        .unwrap_or_else(|| panic!("no record of the HTTP page: {records:#?}"));
    assert_eq!(page.path.as_deref(), Some("/page"));
    let tunnel = records
        .iter()
        .find(|r| r.method == "CONNECT" && r.port == https.port())
        .unwrap_or_else(|| panic!("no record of the HTTPS tunnel: {records:#?}"));
    assert_eq!((tunnel.status, tunnel.host.as_str()), (200, "localhost"));
    assert!(
        tunnel.bytes_down > 500,
        "a TLS session went through: {tunnel:?}"
    );
    let refused = records
        .iter()
        .find(|r| r.port == denied.addr.port())
        .unwrap_or_else(|| panic!("no record of the refusal: {records:#?}"));
    assert_eq!(refused.status, 403);

    // Under a PAC, Chromium sends loopback hosts DIRECT whatever the bypass list: a loopback
    // page must not reach the proxy ...
    let before = proxy.records().len();
    let pac = vec![format!("--proxy-pac-url=http://{}/proxy.pac", proxy.addr)];
    let mut args = pac.clone();
    args.extend(["--dump-dom".to_owned(), format!("http://{http}/direct")]);
    let dom = chromium_async(&binary, args).await;
    assert!(dom.contains("plain-page-through-portcullis"), "{dom}");
    // ... so ask for a name on a refused port: only the proxy can answer, before any lookup.
    let mut args = pac;
    args.extend([
        "--dump-dom".to_owned(),
        "http://pac-check.invalid:19999/".to_owned(),
    ]);
    let dom = chromium_async(&binary, args).await;
    assert!(dom.contains("19999"), "the proxy's refusal page: {dom}");
    assert!(dom.contains("pac-check.invalid"), "{dom}");
    let records = proxy.records();
    let after: Vec<_> = records[before..].iter().collect();
    assert!(
        after.iter().any(|r| r.path.as_deref() == Some("/proxy.pac")
            && r.rule == "local"
            && r.status == 200),
        "the proxy served the PAC: {after:#?}"
    );
    assert!(
        after
            .iter()
            .any(|r| r.host == "pac-check.invalid" && r.status == 403),
        "the PAC sent the name through the proxy: {after:#?}"
    );
    assert!(
        !after.iter().any(|r| r.port == http.port()),
        "the loopback page went direct under the PAC: {after:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_the_status_page_with_the_traffic_sent() {
    let Some(binary) = chromium_or_skip() else {
        return;
    };
    let web = HttpOrigin::start().await;
    let mail = Counter::start().await;
    let config = format!(
        "[destinations]\nallow_loopback = true\n[ports]\nhttp = [{}]\n[clients.names]\n\"127.0.0.1\" = \"office-pc\"\n",
        web.addr.port()
    );
    let settings = settings_of(&config);
    let proxy = Proxy::start_observed(settings, true, None).await;
    for i in 0..5 {
        assert_eq!(
            get(proxy.addr, &format!("http://{}/page{i}", web.addr))
                .await
                .status,
            200
        );
    }
    for _ in 0..2 {
        let (r, _) = connect(proxy.addr, &mail.addr.to_string()).await;
        assert_eq!(r.status, 403);
    }
    proxy.wait_records(7).await;
    let url = format!("http://{}/status", proxy.admin.unwrap());

    let dom = tokio::task::spawn_blocking({
        let (binary, url) = (binary.clone(), url.clone());
        move || run_chromium(&binary, &["--dump-dom".into(), url])
    })
    .await
    .unwrap();
    assert!(dom.contains("<b id=\"total-requests\">7</b>"), "{dom}");
    assert!(dom.contains("<b id=\"total-denied\">2</b>"), "{dom}");
    assert!(
        dom.contains(&format!("data-port=\"{}\"", web.addr.port())),
        "{dom}"
    );
    assert!(dom.contains("office-pc"), "client names show: {dom}");
    assert!(
        dom.contains("<svg id=\"chart\""),
        "the chart is there: {dom}"
    );
    assert!(
        dom.contains("is not allowed for CONNECT"),
        "recent refusals show: {dom}"
    );

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    tokio::task::spawn_blocking({
        let shot = shot.clone();
        move || {
            run_chromium(
                &binary,
                &[
                    format!("--screenshot={}", shot.display()),
                    "--window-size=1100,1250".into(),
                    url,
                ],
            )
        }
    })
    .await
    .unwrap();
    let png = std::fs::read(&shot).expect("Chromium saved a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
}

/// NSS's certutil, if this machine has it.
fn certutil_or_skip() -> Option<PathBuf> {
    let found = ["/usr/bin/certutil", "/usr/local/bin/certutil"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    tool_here(found, "certutil (NSS)", "libnss3-tools")
}

/// Makes `ca` a trusted authority for websites in the NSS database of the user whose home is
/// `home`, as `certutil` does it for a person: `~/.pki/nssdb`, the store Chromium on Linux
/// reads.
fn trust_in_nss(certutil: &Path, home: &Path, ca: &Path) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db = format!("sql:{}", db.display());
    let ca = ca.display().to_string();
    for args in [
        vec!["-d", &db, "-N", "--empty-password"],
        vec![
            "-d",
            &db,
            "-A",
            "-t",
            "C,,",
            "-n",
            "Portcullis test CA",
            "-i",
            &ca,
        ],
    ] {
        let mut command = Command::new(certutil);
        command.args(&args).env("HOME", home);
        let (out, killed) = run_bounded(command, Vec::new(), Duration::from_secs(20));
        assert!(
            out.status.success() && !killed,
            "certutil {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_speaks_tls_to_the_proxy_through_the_pac_https_entry() {
    let Some(binary) = chromium_or_skip() else {
        return;
    };
    let Some(certutil) = certutil_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // One authority, made by `portcullis cert`, certifies the origin (origin.test) and then
    // the proxy (proxy.lan, 127.0.0.1); Chromium is made to trust it, and nothing else.
    let tls = dir.path().join("tls");
    crate::tls::cert_for(&tls, &["--name", "origin.test"]);
    let (origin_pem, origin_key) = (tls.join("origin.pem"), tls.join("origin.key"));
    std::fs::rename(tls.join("proxy.pem"), &origin_pem).unwrap();
    std::fs::rename(tls.join("proxy.key"), &origin_key).unwrap();
    crate::tls::make_cert(&tls);
    let home = dir.path().join("home");
    trust_in_nss(&certutil, &home, &tls.join("ca.pem"));

    let http = page_origin(
        "<html><body><h1 id=m>plain-page-through-the-tls-proxy</h1></body></html>",
        false,
    )
    .await;
    let answer =
        page_answer("<html><body><h1 id=m>tls-page-through-the-tls-proxy</h1></body></html>");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&origin_pem)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&origin_key).unwrap();
    let https = tls_origin_with(&vec![answer.as_bytes(); 64], chain, key).await;
    // origin.test is a name (a loopback address would go DIRECT under any PAC), which the
    // proxy alone resolves, through a DNS server of the test's.
    let localhost = std::net::Ipv4Addr::LOCALHOST;
    let dns = DnsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Zone::new().with("origin.test", Answer::v4(&[localhost])),
    )
    .await;
    // The PAC names listen_tls's port as written, so the port is chosen here.
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let extra = format!(
        "{}[pac]\ntls = true\n[dns]\nservers = [\"{}\"]\n[log]\nformat = \"common\"\n",
        loopback_config(&[http.port()], &[https.port()]),
        dns.addr
    );
    let (running, plain, proxy) =
        crate::tls::start_on(dir.path(), &tls, &format!("127.0.0.1:{tls_port}"), &extra);
    let admin = crate::tls::admin_of(&running);

    // The PAC offers the TLS listener first.
    let pac = raw(
        plain,
        format!("GET /proxy.pac HTTP/1.1\r\nHost: {plain}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(pac.status, 200);
    assert!(
        pac.text()
            .contains(&format!("return \"HTTPS {proxy}; PROXY {plain}\";")),
        "{}",
        pac.text()
    );
    line_with(&running.stdout, &["/proxy.pac HTTP/1.1\" 200"]);

    let profile = dir.path().join("profile");
    let browse = |url: String| {
        let (binary, profile, home) = (binary.clone(), profile.clone(), home.clone());
        let args = vec![
            format!("--proxy-pac-url=http://{plain}/proxy.pac"),
            "--dump-dom".to_owned(),
            url,
        ];
        tokio::task::spawn_blocking(move || run_chromium_as(&binary, &profile, Some(&home), &args))
    };
    let failures = || async move {
        crate::support::admin::Metrics::scrape(admin)
            .await
            .value("portcullis_tls_handshake_failures_total", &[])
    };
    for (url, page) in [
        (
            format!("http://origin.test:{}/plain", http.port()),
            "plain-page-through-the-tls-proxy",
        ),
        (
            format!("https://origin.test:{}/secure", https.port()),
            "tls-page-through-the-tls-proxy",
        ),
    ] {
        let dom = browse(url.clone()).await.unwrap();
        assert!(
            dom.contains(page),
            "Chromium did not show {url} through the HTTPS proxy; the proxy counts {:?} failed TLS handshakes (Chromium refuses a proxy whose certificate it does not trust: is the authority in {}/.pki/nssdb?); the DOM: {dom:?}",
            failures().await,
            home.display()
        );
    }

    // Both went to the TLS listener: over HTTP/2, which only a TLS listener speaks (a plain
    // one is HTTP/1.1 only), the page as a request and the https:// site as a tunnel. (The
    // pages alone do not tell: a Chromium that does not trust the proxy falls back to the
    // PAC's PROXY entry for the http:// page, and shows it.)
    let page = line_with(
        &running.stdout,
        &[&format!("\"GET http://origin.test:{}/plain ", http.port())],
    );
    assert!(page.contains(" HTTP/2\" 200 "), "{page}");
    let tunnel = line_with(
        &running.stdout,
        &[&format!("\"CONNECT origin.test:{} ", https.port())],
    );
    assert!(tunnel.contains(" HTTP/2\" 200 "), "{tunnel}");
    assert_eq!(
        failures().await,
        Some(0.0),
        "Chromium trusted the proxy's certificate"
    );
}
