//! `examples/several-proxies/run.sh`, the runnable example of the "Several proxies" chapter,
//! run as a reader runs it, against the binary of these tests: two proxies on loopback behind
//! one PAC, each naming itself on `/status.json`, and `portcullis report --by instance` over
//! both access logs naming both. Skipped (with a line saying so) without curl or python3.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{tool_here, BIN};

/// Whether `program --version` runs here.
fn runs(program: &str) -> Option<()> {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| ())
}

#[test]
fn the_example_runs_two_proxies_and_reports_both() {
    if tool_here(runs("curl"), "curl", "curl").is_none()
        || tool_here(runs("python3"), "python3", "python3").is_none()
    {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/several-proxies/run.sh");
    // Its own process group, so that a run that hangs can be stopped with all it started.
    let mut child = Command::new("bash")
        .arg(&script)
        .env("PORTCULLIS_BIN", BIN)
        .env_remove("KEEP")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("bash runs");
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            panic!("run.sh did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = format!("{stdout}\n--- stderr:\n{stderr}");
    assert!(out.status.success(), "{said}");

    // One PAC naming both proxies, proxy-a first.
    let pac = stdout
        .lines()
        .find(|l| l.contains("return \"PROXY "))
        .unwrap_or_else(|| panic!("no PAC line: {said}"));
    assert_eq!(pac.matches("PROXY 127.0.0.1:").count(), 2, "{said}");
    // Each proxy forwarded, and names itself on /status.json.
    assert_eq!(
        stdout.matches("-> hello from the origin").count(),
        3,
        "{said}"
    );
    assert!(stdout.contains("GET http://127.0.0.1:25/ -> 403"), "{said}");
    for (instance, requests) in [("proxy-a", 3), ("proxy-b", 1)] {
        assert!(
            stdout.contains(&format!(
                "instance {instance}; /metrics: portcullis_requests_total {requests}\n"
            )),
            "{said}"
        );
    }
    // The report over both access logs names both, with a row each and the totals of all.
    let report: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("portcullis report --by instance"))
        .collect();
    assert_eq!(
        report.get(1).copied(),
        Some("2 proxies: proxy-a, proxy-b"),
        "{said}"
    );
    let row = |key: &str| -> Vec<&str> {
        report
            .iter()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no row {key}: {said}"))
            .split_whitespace()
            .collect()
    };
    assert_eq!(row("proxy-a")[1..3], ["3", "1"], "{said}");
    assert_eq!(row("proxy-b")[1..3], ["1", "0"], "{said}");
    assert_eq!(row("TOTAL")[1..3], ["4", "1"], "{said}");
    // It stopped what it started: nothing answers on the proxies' ports any more.
    let ports: Vec<u16> = stdout
        .lines()
        .find(|l| l.starts_with("proxy-a on 127.0.0.1:"))
        .unwrap_or_else(|| panic!("no line with the ports: {said}"))
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .filter(|&n| n > 1024)
        .collect();
    assert_eq!(ports.len(), 4, "{ports:?}: {said}");
    for port in ports {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
            "something still listens on {addr} after run.sh: {said}"
        );
    }
}
