//! curl, as people use it with a proxy: `-x` for plain HTTP, `-p` (`--proxytunnel`) for
//! plain HTTP through CONNECT, proxy credentials with `-U` (with and without `-p`), and the
//! status a refused port gets. (HTTPS through CONNECT is tested with rustls and Chromium.)
//!
//! Skipped when this machine has no curl, except when `CI` is set (`.ci/run` installs it).

use std::process::Command;

use crate::support::*;

/// curl's stdout and the status it reports (`-w %{http_code}` as the last line).
fn curl(args: &[String]) -> (String, u16) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (body, code, _) = curl_exit(&args);
    (body, code)
}

/// curl's stdout, the HTTP status it reports (0 when there was none) and its exit status;
/// no proxy from the environment.
pub(crate) fn curl_exit(args: &[&str]) -> (String, u16, Option<i32>) {
    let output = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--noproxy",
            "",
            "--max-time",
            "10",
        ])
        .args(["--write-out", "\n%{http_code}"])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        body.to_owned(),
        code.trim().parse().unwrap_or(0),
        output.status.code(),
    )
}

/// Whether curl is here (it must be when `CI` is set); says so when it is not.
pub(crate) fn have_curl() -> bool {
    let found = Command::new("curl").arg("--version").output().ok();
    tool_here(found, "curl", "curl").is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_the_proxy() {
    if !have_curl() {
        return;
    }
    let web = HttpOrigin::start().await;
    let denied = Counter::start().await;
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("ann", "ann pw")]);
    let w = web.addr.port();
    let plain = Proxy::start(&loopback_config(&[w], &[w])).await;
    let authed = Proxy::start(&format!(
        "{}[auth]\nhtpasswd = {:?}\n",
        loopback_config(&[w], &[w]),
        users.display().to_string()
    ))
    .await;
    let proxy = |p: &Proxy| format!("http://{}", p.addr);
    let url = format!("http://{}/curl", web.addr);

    let run = |args: Vec<String>| tokio::task::spawn_blocking(move || curl(&args));
    let (body, code) = run(vec!["-x".into(), proxy(&plain), url.clone()])
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (200, "hello GET /curl"));
    let (body, code) = run(vec!["-p".into(), "-x".into(), proxy(&plain), url.clone()])
        .await
        .unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, "hello GET /curl"),
        "--proxytunnel"
    );
    let (body, code) = run(vec![
        "-x".into(),
        proxy(&plain),
        format!("http://{}/", denied.addr),
    ])
    .await
    .unwrap();
    assert_eq!(code, 403);
    assert!(body.contains("is not allowed for plain HTTP"), "{body}");
    let (_, code) = run(vec!["-x".into(), proxy(&authed), url.clone()])
        .await
        .unwrap();
    assert_eq!(code, 407);
    let (body, code) = run(vec![
        "-x".into(),
        proxy(&authed),
        "-U".into(),
        "ann:ann pw".into(),
        url.clone(),
    ])
    .await
    .unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, "hello GET /curl"),
        "-U credentials"
    );
    let (_, code) = run(vec![
        "-p".into(),
        "-x".into(),
        proxy(&authed),
        "-U".into(),
        "ann:ann pw".into(),
        url.clone(),
    ])
    .await
    .unwrap();
    assert_eq!(code, 200, "-U with --proxytunnel");
    assert_eq!(denied.accepts(), 0);

    let records = plain.wait_records(3).await;
    assert_eq!(records[1].method, "CONNECT");
    let records = authed.wait_records(3).await;
    assert_eq!(records[1].user.as_deref(), Some("ann"));
}
