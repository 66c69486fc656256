//! Test harness: the real proxy on `127.0.0.1:0` ([`proxy`]), real origins (raw TCP, HTTP,
//! TLS, scripted, strict) on loopback ([`origin`]), clients that speak raw bytes so tests can
//! assert exactly what a user sees ([`raw`]), the admin listener's pages and metrics as
//! scrapers read them ([`admin`]), and the `portcullis` binary run as a user runs it, for one
//! command or as a server ([`running`]), or in a pseudo-terminal whose screen is read back
//! ([`pty`]), and a small DNS server for names ([`dns`]). Every wait is bounded.

pub mod admin;
pub mod dns;
#[cfg(target_os = "linux")]
pub mod netns;
pub mod origin;
pub mod proxy;
#[cfg(target_os = "linux")]
pub mod pty;
pub mod raw;
pub mod running;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

pub use admin::*;
pub use origin::*;
pub use proxy::*;
pub use raw::*;
pub use running::*;

/// The bound on any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// The `portcullis` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Config text for a proxy that may reach loopback origins on the given ports (an empty
/// list keeps that list's default).
pub fn loopback_config(http_ports: &[u16], connect_ports: &[u16]) -> String {
    let mut text = String::from("[destinations]\nallow_loopback = true\n[ports]\n");
    if !http_ports.is_empty() {
        text.push_str(&format!("http = {http_ports:?}\n"));
    }
    if !connect_ports.is_empty() {
        text.push_str(&format!("connect = {connect_ports:?}\n"));
    }
    text
}

/// A program a test drives, when this machine has it (`found`); when it does not, the test is
/// skipped and says so, except when `CI` is set, since `.ci/run` installs `package`: then the
/// test fails.
pub fn tool_here<T>(found: Option<T>, what: &str, package: &str) -> Option<T> {
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but {what} is missing: .ci/run installs {package}"
        );
        eprintln!("skipped: no {what} on this machine (apt-get install {package})");
    }
    found
}

/// Runs a client program off the async runtime with `stdin` piped in; fails the test when it
/// takes more than 20 seconds. Whether it succeeded, its stdout and its stderr.
pub async fn run_client(command: Command, stdin: &[u8]) -> (bool, String, String) {
    let stdin = stdin.to_vec();
    tokio::task::spawn_blocking(move || {
        let program = command.get_program().to_string_lossy().into_owned();
        let (out, killed) = run_bounded(command, stdin, Duration::from_secs(20));
        assert!(!killed, "{program} did not finish within 20 s");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// What a run of the binary left: its exit status, stdout, and stderr (UTF-8).
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// Runs `command` with `stdin` piped in and its output collected, killing it after `limit`;
/// the output, and whether it had to be killed.
pub fn run_bounded(mut command: Command, stdin: Vec<u8>, limit: Duration) -> (Output, bool) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?} starts: {e}"));
    let mut input = child.stdin.take().unwrap();
    // A refusal may come before the child reads its input: a broken pipe is fine then.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let read_all = |mut stream: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stream.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let mut killed = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            killed = true;
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    writer.join().unwrap();
    let output = Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    (output, killed)
}

/// Runs `portcullis ARGS` (without `RUST_LOG`) with `stdin` piped in; fails the test when it
/// takes more than 60 seconds.
pub fn portcullis(args: &[&str], stdin: impl Into<Vec<u8>>) -> Ran {
    let mut command = Command::new(BIN);
    command.args(args).env_remove("RUST_LOG");
    let (output, killed) = run_bounded(command, stdin.into(), Duration::from_secs(60));
    assert!(!killed, "portcullis {args:?} did not finish within 60 s");
    Ran {
        status: output.status,
        stdout: output.stdout,
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

/// What `portcullis check` says (stdout, then stderr) of a configuration file holding
/// `text`; fails the test unless it refuses the file.
pub fn check_refuses(text: &str) -> String {
    let file = write_config(text);
    let ran = portcullis(
        &["check", "--config", file.path().to_str().unwrap()],
        Vec::new(),
    );
    let said = format!("{}{}", String::from_utf8_lossy(&ran.stdout), ran.stderr);
    assert!(!ran.status.success(), "{said}");
    said
}

/// The lines of the file at `path` once it has at least `n` (an access log being written),
/// or what it has after `WAIT`.
pub async fn file_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n || tokio::time::Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `dir/users.htpasswd`: a comment line, then each user with the password hashed by
/// bcrypt at the lowest cost (to keep tests fast). Returns its path.
pub fn htpasswd(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let path = dir.join("users.htpasswd");
    let mut text = String::from("# test users\n");
    for (user, password) in users {
        text.push_str(&format!("{user}:{}\n", bcrypt::hash(password, 4).unwrap()));
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// The `Basic` credentials for `user:password` (any bytes), as Proxy-Authorization carries them.
pub fn basic(credentials: &[u8]) -> String {
    format!("Basic {}", BASE64.encode(credentials))
}

/// A Proxy-Authorization field line (with its CRLF) for `user` and `password`.
pub fn proxy_authorization(user: &str, password: &str) -> String {
    format!(
        "Proxy-Authorization: {}\r\n",
        basic(format!("{user}:{password}").as_bytes())
    )
}
