//! SOCKS through the clients people use it with, and raw sockets at its edges: curl as an FTP
//! client (passive mode, a control and a data connection through the proxy), OpenBSD netcat
//! (`nc -X 5 -x`, ssh's `ProxyCommand`) to a mail banner, Python's PySocks with a user name and
//! password (RFC 1929), and headless Chromium with a `socks5://` proxy; then the bytes that
//! sit between SOCKS and HTTP on the shared port: the longest names (253 and 254 bytes; 255,
//! which RFC 1928 allows, is answered as malformed: ignored until issue 17 decides), HTTP
//! after a SOCKS greeting, a SOCKS greeting after an HTTP request, SOCKS4 while `v4` is off.
//!
//! A test whose program is missing is skipped, except when `CI` is set: `.ci/run` installs
//! curl, netcat-openbsd, python3-socks and Chromium.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::browser::{chromium_async, chromium_or_skip};
use crate::curl::have_curl;
use crate::socks::{curl, proxy, read_upto, socks5, to_loopback, to_name};
use crate::support::*;

/// A passive-mode FTP server on loopback that serves one file, `/file.txt`, to any user:
/// enough of RFC 959 and RFC 2428 for curl. Its data listener is bound up front and both
/// EPSV and PASV name it, so a proxy's port list can allow it.
struct Ftp {
    control: Origin,
    data_port: u16,
}

impl Ftp {
    async fn start(file: &'static [u8]) -> Ftp {
        let data = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let data_port = data.local_addr().unwrap().port();
        let control = Origin::serve(move |stream| ftp_session(stream, data.clone(), file)).await;
        Ftp { control, data_port }
    }
}

/// One control connection: a reply a command, at most 50 commands, none waited for longer
/// than `WAIT`.
async fn ftp_session(stream: TcpStream, data: Arc<TcpListener>, file: &'static [u8]) {
    let port = data.local_addr().unwrap().port();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut answer = String::from("220 portcullis test FTP");
    for _ in 0..50 {
        answer.push_str("\r\n");
        if write.write_all(answer.as_bytes()).await.is_err() || answer.starts_with("221") {
            return;
        }
        let Ok(Ok(Some(line))) = tokio::time::timeout(WAIT, lines.next_line()).await else {
            return;
        };
        let line = line.trim_end();
        let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
        answer = match (verb.to_ascii_uppercase().as_str(), arg) {
            ("USER", _) => "331 any password will do".into(),
            ("PASS", _) => "230 logged in".into(),
            ("PWD", _) => "257 \"/\" is the directory".into(),
            ("CWD", _) => "250 directory changed".into(),
            ("TYPE", _) => "200 type set".into(),
            ("EPSV", _) => format!("229 Entering Extended Passive Mode (|||{port}|)"),
            ("PASV", _) => format!(
                "227 Entering Passive Mode (127,0,0,1,{},{})",
                port >> 8,
                port & 0xff
            ),
            ("SIZE", "file.txt") => format!("213 {}", file.len()),
            ("RETR", "file.txt") => {
                let _ = write.write_all(b"150 here it comes\r\n").await;
                match tokio::time::timeout(WAIT, data.accept()).await {
                    Ok(Ok((mut conn, _))) => {
                        let sent = conn.write_all(file).await;
                        let _ = conn.shutdown().await;
                        match sent {
                            Ok(()) => "226 transfer complete".into(),
                            Err(_) => "426 transfer aborted".into(),
                        }
                    }
                    _ => "425 no data connection".into(),
                }
            }
            ("SIZE" | "RETR", _) => "550 no such file".into(),
            ("QUIT", _) => "221 goodbye".into(),
            _ => "502 not implemented".into(),
        };
    }
}

/// The file the FTP server serves: 40 lines, 1,240 bytes.
fn ftp_file() -> &'static [u8] {
    static FILE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        (0..40)
            .flat_map(|i| format!("line {i:02} of file.txt via socks\n").into_bytes())
            .collect()
    })
}

/// curl off the async runtime (it is bounded by its own `--max-time`).
async fn curl_async(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_a_file_by_passive_ftp_through_socks5() {
    if !have_curl() {
        return;
    }
    let file = ftp_file();
    let ftp = Ftp::start(file).await;
    let (control, data) = (ftp.control.addr.port(), ftp.data_port);
    let config =
        |ports: &[u16]| format!("{}[socks]\nports = {ports:?}\n", loopback_config(&[], &[]));
    let url = format!("ftp://localhost:{control}/file.txt");

    // The control port and the passive data port allowed: the file arrives whole.
    let p = Proxy::start(&config(&[control, data])).await;
    let (ok, body) = curl_async(vec![
        "--socks5-hostname".into(),
        p.addr.to_string(),
        url.clone(),
    ])
    .await;
    assert!(ok, "curl failed: {body:?}");
    assert_eq!(body.as_bytes(), file);
    let records = p.wait_records(2).await;
    assert_eq!(records.len(), 2, "{records:#?}");
    let by_port = |port: u16| {
        records
            .iter()
            .find(|r| r.port == port)
            .unwrap_or_else(|| panic!("no record for port {port}: {records:#?}"))
    };
    for r in &records {
        assert_eq!(
            (r.method.as_str(), r.host.as_str(), r.status),
            ("SOCKS5", "localhost", 200),
            "{r:?}"
        );
        assert!(r.rule == "socks.ports", "{r:?}");
    }
    let (c, d) = (by_port(control), by_port(data));
    // The control connection carried the commands up and the replies down; the data
    // connection carried the file, down only.
    assert!(c.bytes_up > 30 && c.bytes_down > 100, "{c:?}");
    assert_eq!((d.bytes_up, d.bytes_down), (0, file.len() as u64), "{d:?}");

    // The data port not allowed: the control connection opens, the data connection is
    // refused (0x02 to curl), nothing of the file arrives, and the refusal is recorded.
    let p = Proxy::start(&config(&[control])).await;
    let (ok, body) = curl_async(vec!["--socks5-hostname".into(), p.addr.to_string(), url]).await;
    assert!(!ok, "the transfer must fail: {body:?}");
    assert!(body.is_empty(), "{body:?}");
    let records = p
        .wait_until("a refusal and the control connection's record", |records| {
            [data, control]
                .iter()
                .all(|port| records.iter().any(|r| r.port == *port))
        })
        .await;
    // curl asks for EPSV, then falls back to PASV: each data connection is refused.
    let refused: Vec<_> = records.iter().filter(|r| r.port == data).collect();
    for r in &refused {
        assert_eq!((r.method.as_str(), r.status), ("SOCKS5", 403), "{r:?}");
        assert!(r.rule == "socks.ports", "{r:?}");
        assert_eq!((r.bytes_up, r.bytes_down), (0, 0), "{r:?}");
    }
    let c = records.iter().find(|r| r.port == control).unwrap();
    assert_eq!(c.status, 200, "{c:?}");
}

/// OpenBSD netcat (the one with `-X`), if this machine has it.
fn netcat() -> Option<PathBuf> {
    ["nc.openbsd", "nc"]
        .into_iter()
        .find(|nc| {
            Command::new(nc).arg("-h").output().is_ok_and(|out| {
                String::from_utf8_lossy(&[out.stdout, out.stderr].concat())
                    .contains("-X proxy_protocol")
            })
        })
        .map(PathBuf::from)
}

/// A mail server's first words: the banner, then `221` to `QUIT`, and it closes.
async fn mail_banner() -> Origin {
    Origin::serve(|stream| async move {
        let (read, mut write) = stream.into_split();
        if write.write_all(b"220 mail.test ESMTP\r\n").await.is_err() {
            return;
        }
        let mut lines = BufReader::new(read).lines();
        if let Ok(Ok(Some(line))) = tokio::time::timeout(WAIT, lines.next_line()).await {
            if line.trim_end().eq_ignore_ascii_case("QUIT") {
                let _ = write.write_all(b"221 2.0.0 Bye\r\n").await;
            }
        }
        let _ = write.shutdown().await;
    })
    .await
}

/// `nc -X 5 -x PROXY localhost PORT` with `QUIT` on its input.
async fn nc(binary: &Path, proxy: SocketAddr, port: u16) -> (bool, String, String) {
    let mut command = Command::new(binary);
    command
        .args(["-X", "5", "-x", &proxy.to_string(), "-w", "10", "localhost"])
        .arg(port.to_string());
    run_client(command, b"QUIT\r\n").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netcat_reads_a_mail_banner_through_socks5() {
    let Some(binary) = tool_here(netcat(), "OpenBSD netcat", "netcat-openbsd") else {
        return;
    };
    let mail = mail_banner().await;
    let other = mail_banner().await;
    let p = proxy(&[mail.addr.port()], "").await;

    let (ok, out, err) = nc(&binary, p.addr, mail.addr.port()).await;
    assert!(ok, "nc failed: {err}");
    assert_eq!(out, "220 mail.test ESMTP\r\n221 2.0.0 Bye\r\n", "{err}");
    // A port not allowed: nc says the SOCKS error, no banner, and the server never hears.
    let (ok, out, err) = nc(&binary, p.addr, other.addr.port()).await;
    assert!(!ok && out.is_empty(), "{out:?}");
    assert!(
        err.contains("SOCKSv5 error: Connection not allowed by ruleset"),
        "{err}"
    );
    assert_eq!(other.accepts(), 0);

    let records = p.wait_records(2).await;
    let at = |port: u16| records.iter().find(|r| r.port == port).unwrap();
    let (served, refused) = (at(mail.addr.port()), at(other.addr.port()));
    assert_eq!(
        (
            served.method.as_str(),
            served.host.as_str(),
            served.port,
            served.status
        ),
        ("SOCKS5", "localhost", mail.addr.port(), 200),
        "{served:?}"
    );
    assert_eq!((served.bytes_up, served.bytes_down), (6, 36), "{served:?}");
    assert_eq!(
        (refused.method.as_str(), refused.port, refused.status),
        ("SOCKS5", other.addr.port(), 403),
        "{refused:?}"
    );
    assert!(refused.rule == "ports.connect", "{refused:?}");
}

/// A Python 3 with PySocks (Debian's python3-socks goes with Debian's own python3), if any.
fn python_with_pysocks() -> Option<&'static str> {
    ["/usr/bin/python3", "python3"].into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import socks"])
            .output()
            .is_ok_and(|out| out.status.success())
    })
}

/// Connects through a SOCKS5 proxy with PySocks, the name resolved by the proxy and a user
/// name and password, sends a GET and prints the whole answer; a SOCKS error prints its
/// class and exits 2.
const PYSOCKS: &str = r#"
import sys, socks
proxy_port, host, port, user, password, path = sys.argv[1:]
s = socks.socksocket()
s.set_proxy(socks.SOCKS5, "127.0.0.1", int(proxy_port), rdns=True, username=user, password=password)
s.settimeout(10)
try:
    s.connect((host, int(port)))
except socks.ProxyError as e:
    print(type(e).__name__, e)
    sys.exit(2)
s.sendall(("GET %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n" % (path, host, port)).encode())
got = b""
for _ in range(1000):
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
sys.stdout.write(got.decode())
"#;

/// The PySocks script with `args`; whether it succeeded, and what it printed.
async fn pysocks(python: &str, args: Vec<String>) -> (bool, String) {
    let mut command = Command::new(python);
    command.arg("-c").arg(PYSOCKS).args(args);
    let (ok, out, err) = run_client(command, b"").await;
    (ok, out + &err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_pysocks_logs_in_and_fetches_a_page() {
    let Some(python) = tool_here(
        python_with_pysocks(),
        "Python with PySocks",
        "python3-socks",
    ) else {
        return;
    };
    let web = HttpOrigin::start().await;
    let w = web.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let users = htpasswd(dir.path(), &[("ann", "ann pw")]);
    let p = proxy(&[w], &format!("[auth]\nhtpasswd = {users:?}\n")).await;
    let args = |password: &str, path: &str| {
        [
            &p.addr.port().to_string(),
            "localhost",
            &w.to_string(),
            "ann",
            password,
            path,
        ]
        .map(str::to_owned)
        .to_vec()
    };

    let (ok, out) = pysocks(python, args("ann pw", "/pysocks")).await;
    assert!(ok, "{out}");
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nhello GET /pysocks"), "{out}");
    let (ok, out) = pysocks(python, args("wrong", "/never")).await;
    // PySocks wraps its SOCKS5AuthError in a GeneralProxyError.
    assert!(!ok && out.contains("SOCKS5 authentication failed"), "{out}");
    assert_eq!(web.accepts(), 1);

    let records = p.wait_records(2).await;
    let (r, wrong) = (&records[0], &records[1]);
    assert_eq!(
        (r.method.as_str(), r.host.as_str(), r.port, r.status),
        ("SOCKS5", "localhost", w, 200),
        "{r:?}"
    );
    assert_eq!(r.user.as_deref(), Some("ann"));
    assert!(r.bytes_up > 0 && r.bytes_down > 0, "{r:?}");
    assert_eq!(
        (wrong.status, wrong.user.as_deref()),
        (407, None),
        "{wrong:?}"
    );
    assert!(wrong.rule == "auth", "{wrong:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_loads_a_page_through_socks5() {
    let Some(binary) = chromium_or_skip() else {
        return;
    };
    let web = HttpOrigin::start().await;
    let w = web.addr.port();
    let p = proxy(&[w], "").await;
    // No name is resolved by Chromium (every lookup fails but the proxy's address), so the
    // page can only come through the proxy, which resolves "localhost" itself; the bypass
    // list takes out Chromium's implicit "loopback goes direct".
    let dom = chromium_async(
        &binary,
        vec![
            format!("--proxy-server=socks5://{}", p.addr),
            "--proxy-bypass-list=<-loopback>".into(),
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1".into(),
            "--dump-dom".into(),
            format!("http://localhost:{w}/through-socks"),
        ],
    )
    .await;
    assert!(dom.contains("hello GET /through-socks"), "{dom}");
    // Chromium may open a spare connection it never uses (a record with no bytes).
    let records = p
        .wait_until("the page's record", |records| {
            records.iter().any(|r| r.port == w && r.bytes_down > 0)
        })
        .await;
    let page = records
        .iter()
        .find(|r| r.port == w && r.bytes_down > 0)
        .unwrap();
    assert_eq!(
        (page.method.as_str(), page.host.as_str(), page.status),
        ("SOCKS5", "localhost", 200),
        "{page:?}"
    );
    assert!(page.bytes_up > 50 && page.bytes_down > 50, "{page:?}");
    assert!(records.iter().all(|r| r.method == "SOCKS5"), "{records:#?}");
}

/// A name of `len` bytes: labels of 63 `n`s (the longest a label may be), dot-separated.
fn long_name(len: usize) -> String {
    let mut name = String::new();
    while name.len() < len {
        if !name.is_empty() {
            name.push('.');
        }
        let label = (len - name.len()).min(63);
        name.push_str(&"n".repeat(label));
    }
    name
}

#[tokio::test]
async fn the_longest_names_reach_the_port_list() {
    let refused = Counter::start().await;
    let p = proxy(&[], "").await;
    // 253 characters, and the same with the root's dot: 254 bytes.
    let name = long_name(253);
    for asked in [name.clone(), format!("{name}.")] {
        let (mut s, greeting, reply) = socks5(p.addr, &to_name(&asked, refused.addr.port())).await;
        assert_eq!(greeting, [5, 0]);
        assert_eq!(
            reply,
            [5, 2, 0, 1, 0, 0, 0, 0, 0, 0],
            "{}: {reply:?}",
            asked.len()
        );
        assert_eq!(read_upto(&mut s, 10).await, b"", "closed after the reply");
    }
    let records = p.wait_records(2).await;
    for r in &records {
        assert_eq!(
            (r.method.as_str(), r.status, r.host.as_str()),
            ("SOCKS5", 403, name.as_str()),
            "{r:?}"
        );
        assert!(r.rule == "ports.connect", "{r:?}");
    }
    assert_eq!(refused.accepts(), 0);
}

/// RFC 1928 lets a name have 255 bytes. Such a name can never resolve (DNS names have at most
/// 253 characters), but the request is well formed: it should meet the port list like any
/// other (0x02 here), or fail to resolve (0x04), not be answered as a malformed request.
#[tokio::test]
async fn a_name_of_255_bytes_is_a_well_formed_request() {
    let refused = Counter::start().await;
    let p = proxy(&[], "").await;
    let name = long_name(255);
    let (_s, greeting, reply) = socks5(p.addr, &to_name(&name, refused.addr.port())).await;
    assert_eq!(greeting, [5, 0]);
    assert_eq!(reply.len(), 10, "{reply:?}");
    assert!(reply[..2] == [5, 2] || reply[..2] == [5, 4], "{reply:?}");
    let records = p.wait_records(1).await;
    assert!(
        records[0].status == 403 || records[0].status == 502,
        "{:?}",
        records[0]
    );
    assert_eq!(refused.accepts(), 0);
}

#[tokio::test]
async fn http_after_a_socks_greeting_is_not_served() {
    let web = HttpOrigin::start().await;
    let w = web.addr.port();
    let p = proxy(&[w], "").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    assert_eq!(read_upto(&mut s, 2).await, [5, 0]);
    let request =
        format!("GET http://127.0.0.1:{w}/after-greeting HTTP/1.1\r\nHost: 127.0.0.1:{w}\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    // Read as a SOCKS request of version 'G': general failure, and closed.
    let got = read_upto(&mut s, 4096).await;
    assert_eq!(
        got,
        [5, 1, 0, 1, 0, 0, 0, 0, 0, 0],
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(web.accepts(), 0);
    let records = p.wait_records(1).await;
    let r = &records[0];
    assert_eq!(r.method, "SOCKS5", "{r:?}");
    assert!(r.status >= 400, "{r:?}");
    let reason = r.reason.as_deref().unwrap_or("");
    assert!(reason.contains("version"), "{r:?}");
}

/// What the HTTP side says to bytes that are not HTTP: `400 Bad Request` (or nothing), and
/// the connection closes; never a SOCKS reply.
async fn answered_as_http(s: &mut TcpStream) {
    let got = read_upto(s, 4096).await;
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 400 Bad Request\r\n"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test]
async fn a_socks_greeting_after_an_http_request_is_http() {
    let never = Counter::start().await;
    let web = HttpOrigin::start().await;
    let w = web.addr.port();
    let p = proxy(&[w, never.addr.port()], "").await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let request = format!("GET http://127.0.0.1:{w}/first HTTP/1.1\r\nHost: 127.0.0.1:{w}\r\n\r\n");
    let first = exchange(&mut s, request.as_bytes()).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "hello GET /first");
    // The same connection, kept alive: a SOCKS5 greeting and a CONNECT to an allowed port.
    let mut socks = vec![5u8, 1, 0];
    socks.extend_from_slice(&to_loopback(1, never.addr.port()));
    s.write_all(&socks).await.unwrap();
    answered_as_http(&mut s).await;
    let records = p.wait_records(1).await;
    assert_eq!(
        (records[0].method.as_str(), records[0].status),
        ("GET", 200)
    );
    for r in &records[1..] {
        assert_eq!((r.method.as_str(), r.status), ("NONE", 400), "{r:?}");
    }
    assert_eq!(never.accepts(), 0);
}

#[tokio::test]
async fn socks4_is_not_served_while_v4_is_off() {
    let never = Counter::start().await;
    let p = proxy(&[never.addr.port()], "").await;
    let port = never.addr.port().to_be_bytes();
    // SOCKS4 to 127.0.0.1, and SOCKS4a to "localhost", both to an allowed port.
    let four = [&[4u8, 1, port[0], port[1], 127, 0, 0, 1][..], b"ann\0"].concat();
    let four_a = [
        &[4u8, 1, port[0], port[1], 0, 0, 0, 1][..],
        b"ann\0localhost\0",
    ]
    .concat();
    for request in [four, four_a] {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(&request).await.unwrap();
        answered_as_http(&mut s).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(never.accepts(), 0);
    for r in p.records() {
        assert_eq!((r.method.as_str(), r.status), ("NONE", 400), "{r:?}");
    }
}
