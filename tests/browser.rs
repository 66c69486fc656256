//! The status page in a real browser: headless Chromium renders `/status` after known
//! traffic; the test reads the numbers from the rendered page and saves a screenshot (the
//! one the README shows is a copy of it).
//!
//! Without Chromium the test is skipped, except when `CI` is set: then it fails, since
//! `.ci/run` installs Chromium.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis::Config;
use support::*;

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
    let mut command = Command::new(binary);
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
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args);
    let output = command.output().expect("Chromium runs");
    assert!(
        output.status.success(),
        "Chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_renders_the_status_page_with_the_traffic_sent() {
    let Some(binary) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but Chromium is missing: .ci/run installs it"
        );
        eprintln!("skipped: no Chromium on this machine (apt-get install chromium)");
        return;
    };
    let web = HttpOrigin::start().await;
    let mail = Counter::start().await;
    let config = format!(
        "[destinations]\nallow_loopback = true\n[ports]\nhttp = [{}]\n[clients.names]\n\"127.0.0.1\" = \"office-pc\"\n",
        web.addr.port()
    );
    let settings = Config::from_toml(&config, "t")
        .unwrap()
        .validate("t")
        .unwrap();
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
