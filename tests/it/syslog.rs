//! Access records as syslog messages (`[log] syslog`): real listeners in the test — a unix
//! datagram socket in a temporary folder, a UDP socket and a TCP listener on loopback —
//! receive one RFC 5424 message per record, parsed here field by field; a server that is not
//! there at start is waited for, its drops counted in `/metrics`; the binary sends to syslog
//! beside its stdout log; a bad target is a configuration error that says what is wanted.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::support::*;

/// One RFC 5424 message, its fields as the RFC names them.
#[derive(Debug)]
struct Message {
    pri: u16,
    version: String,
    timestamp: String,
    hostname: String,
    app_name: String,
    procid: String,
    msgid: String,
    structured_data: String,
    msg: String,
}

/// Parses `<PRI>VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD SP MSG`;
/// fails the test, showing `text`, when it is not that.
fn parse(text: &str) -> Message {
    let rest = text
        .strip_prefix('<')
        .unwrap_or_else(|| panic!("no PRI: {text}"));
    let (pri, rest) = rest.split_once('>').unwrap_or_else(|| panic!("{text}"));
    let fields: Vec<&str> = rest.splitn(8, ' ').collect();
    assert_eq!(fields.len(), 8, "{text}");
    let message = Message {
        pri: pri.parse().unwrap_or_else(|_| panic!("PRI {pri}: {text}")),
        version: fields[0].into(),
        timestamp: fields[1].into(),
        hostname: fields[2].into(),
        app_name: fields[3].into(),
        procid: fields[4].into(),
        msgid: fields[5].into(),
        structured_data: fields[6].into(),
        msg: fields[7].into(),
    };
    assert!(
        humantime::parse_rfc3339(&message.timestamp).is_ok(),
        "timestamp: {text}"
    );
    assert!(!message.msg.contains('\n'), "one line: {text}");
    message
}

/// Checks the header fields every message here has: `local0.info` unless told, `instance`
/// as HOSTNAME, `app` as APP-NAME, this process as PROCID, `access` as MSGID.
fn check_header(m: &Message, pri: u16, instance: &str, app: &str) {
    assert_eq!(m.pri, pri, "{m:?}");
    assert_eq!(m.version, "1", "{m:?}");
    assert_eq!(m.hostname, instance, "{m:?}");
    assert_eq!(m.app_name, app, "{m:?}");
    assert_eq!(m.procid, std::process::id().to_string(), "{m:?}");
    assert_eq!(m.msgid, "access", "{m:?}");
    assert_eq!(m.structured_data, "-", "{m:?}");
}

/// The next datagram on `socket` as text, waiting at most `limit`; `None` when none came.
async fn datagram(socket: &Arc<UnixDatagram>, limit: Duration) -> Option<String> {
    let socket = socket.clone();
    tokio::task::spawn_blocking(move || {
        socket.set_read_timeout(Some(limit)).unwrap();
        let mut buf = vec![0u8; 65_536];
        let n = socket.recv(&mut buf).ok()?;
        Some(String::from_utf8(buf[..n].to_vec()).unwrap())
    })
    .await
    .unwrap()
}

/// `n` GETs of `/syslog-I` from `origin` through `proxy`, each answered 200; their URLs.
async fn send_gets(proxy: &Proxy, origin: SocketAddr, n: usize) -> Vec<String> {
    let mut urls = Vec::new();
    for i in 0..n {
        let url = format!("http://{origin}/syslog-{i}");
        assert_eq!(get(proxy.addr, &url).await.status, 200);
        urls.push(url);
    }
    urls
}

/// The test: a unix datagram listener (`/dev/log`'s kind) receives one parsable
/// line per record, with the JSON payload naming the URL and status, in addition to the
/// proxy's other sinks.
#[tokio::test]
async fn each_record_is_one_rfc5424_datagram_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.sock");
    let listener = Arc::new(UnixDatagram::bind(&path).unwrap());
    let origin = HttpOrigin::start().await;
    let proxy = Proxy::start(&format!(
        "instance = \"gw-test\"\n{}[log]\nsyslog = \"unix:{}\"\nsyslog_app_name = \"pc-test\"\n",
        loopback_config(&[origin.addr.port()], &[]),
        path.display()
    ))
    .await;
    let urls = send_gets(&proxy, origin.addr, 3).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let text = datagram(&listener, WAIT)
            .await
            .expect("a datagram per record");
        let m = parse(&text);
        check_header(&m, 16 * 8 + 6, "gw-test", "pc-test");
        let payload: serde_json::Value = serde_json::from_str(&m.msg)
            .unwrap_or_else(|e| panic!("the payload is JSON ({e}): {text}"));
        assert_eq!(payload["status"], 200, "{text}");
        assert_eq!(payload["instance"], "gw-test", "{text}");
        seen.push(payload["url"].as_str().unwrap().to_owned());
    }
    seen.sort();
    assert_eq!(seen, urls);
    // One per record: no fourth.
    assert_eq!(datagram(&listener, Duration::from_millis(300)).await, None);
    // Syslog is beside the other sinks, not instead.
    assert_eq!(proxy.wait_records(3).await.len(), 3);
}

/// UDP to a server on loopback, with a Squid payload and another facility.
#[tokio::test]
async fn records_go_to_a_udp_server_with_a_squid_payload() {
    let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let origin = HttpOrigin::start().await;
    let proxy = Proxy::start(&format!(
        "instance = \"gw-udp\"\n{}[log]\nsyslog = \"udp://{}\"\nsyslog_format = \"squid\"\n\
         syslog_facility = \"local5\"\n",
        loopback_config(&[origin.addr.port()], &[]),
        server.local_addr().unwrap()
    ))
    .await;
    let urls = send_gets(&proxy, origin.addr, 2).await;
    let mut buf = vec![0u8; 65_536];
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (n, _) = tokio::time::timeout(WAIT, server.recv_from(&mut buf))
            .await
            .expect("a datagram per record")
            .unwrap();
        let text = String::from_utf8(buf[..n].to_vec()).unwrap();
        let m = parse(&text);
        check_header(&m, 21 * 8 + 6, "gw-udp", "portcullis");
        assert!(m.msg.contains("TCP_MISS/200 "), "{text}");
        let url = urls.iter().find(|u| m.msg.contains(&format!(" GET {u} ")));
        seen.push(
            url.unwrap_or_else(|| panic!("names a URL sent: {text}"))
                .clone(),
        );
    }
    seen.sort();
    assert_eq!(seen, urls);
}

/// Reads one octet-counted frame (`LEN SP MSG`, RFC 6587) from `stream`.
async fn frame(stream: &mut tokio::net::TcpStream) -> String {
    let read = async {
        let mut len = Vec::new();
        loop {
            let byte = stream.read_u8().await.unwrap();
            if byte == b' ' {
                break;
            }
            assert!(byte.is_ascii_digit() && len.len() < 6, "a length: {len:?}");
            len.push(byte);
        }
        let len: usize = String::from_utf8(len).unwrap().parse().unwrap();
        let mut message = vec![0u8; len];
        stream.read_exact(&mut message).await.unwrap();
        String::from_utf8(message).unwrap()
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a frame in time")
}

/// TCP with octet counting; when the server closes the connection, the next record goes
/// over a new one.
#[tokio::test]
async fn records_go_to_a_tcp_server_framed_by_octet_counting_and_it_reconnects() {
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = HttpOrigin::start().await;
    let proxy = Proxy::start(&format!(
        "instance = \"gw-tcp\"\n{}[log]\nsyslog = \"tcp://{}\"\n",
        loopback_config(&[origin.addr.port()], &[]),
        server.local_addr().unwrap()
    ))
    .await;
    let (mut stream, _) = tokio::time::timeout(WAIT, server.accept())
        .await
        .expect("the writer connects at start")
        .unwrap();
    let urls = send_gets(&proxy, origin.addr, 2).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let m = parse(&frame(&mut stream).await);
        check_header(&m, 16 * 8 + 6, "gw-tcp", "portcullis");
        let payload: serde_json::Value = serde_json::from_str(&m.msg).unwrap();
        seen.push(payload["url"].as_str().unwrap().to_owned());
    }
    seen.sort();
    assert_eq!(seen, urls);

    // The server goes away (a restart): the next record arrives on a new connection.
    drop(stream);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let url = format!("http://{}/after", origin.addr);
    assert_eq!(get(proxy.addr, &url).await.status, 200);
    let (mut stream, _) = tokio::time::timeout(WAIT, server.accept())
        .await
        .expect("the writer connects again")
        .unwrap();
    let m = parse(&frame(&mut stream).await);
    let payload: serde_json::Value = serde_json::from_str(&m.msg).unwrap();
    assert_eq!(payload["url"], url.as_str());
}

/// The value of `portcullis_syslog_dropped_total`.
async fn syslog_dropped(admin: SocketAddr) -> f64 {
    Metrics::scrape(admin)
        .await
        .value("portcullis_syslog_dropped_total", &[])
        .expect("the metric is there")
}

/// A socket that is not there at start: the proxy serves anyway, the records meanwhile are
/// dropped and counted, and once the socket exists the records reach it.
#[tokio::test]
async fn a_missing_socket_is_waited_for_and_its_drops_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late.sock");
    let origin = HttpOrigin::start().await;
    let settings = settings_of(&format!(
        "{}[log]\nsyslog = \"unix:{}\"\n",
        loopback_config(&[origin.addr.port()], &[]),
        path.display()
    ));
    let proxy = Proxy::start_observed(settings, true, None).await;
    let admin = proxy.admin.unwrap();
    assert_eq!(syslog_dropped(admin).await, 0.0);
    send_gets(&proxy, origin.addr, 2).await;
    let deadline = Instant::now() + WAIT;
    while syslog_dropped(admin).await < 2.0 {
        assert!(Instant::now() < deadline, "two records dropped and counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The socket appears; within the writer's wait (1 s, then 2 s) records reach it.
    let listener = Arc::new(UnixDatagram::bind(&path).unwrap());
    let deadline = Instant::now() + WAIT;
    let text = loop {
        assert!(Instant::now() < deadline, "a record reached the new socket");
        send_gets(&proxy, origin.addr, 1).await;
        if let Some(text) = datagram(&listener, Duration::from_millis(300)).await {
            break text;
        }
    };
    let m = parse(&text);
    assert_eq!(m.msgid, "access");
    let dropped = syslog_dropped(admin).await;
    assert!(dropped >= 2.0, "{dropped}");
}

/// The binary: syslog beside the stdout log; a socket absent at start is a warning on
/// stderr, not a failure to start.
#[test]
fn the_binary_sends_to_syslog_beside_stdout_and_starts_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.sock");
    let listener = UnixDatagram::bind(&path).unwrap();
    listener.set_read_timeout(Some(WAIT)).unwrap();
    let config = write_config(&format!(
        "instance = \"proxy-s\"\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"off\"\n\
         [log]\nformat = \"json\"\nsyslog = \"unix:{}\"\n",
        path.display()
    ));
    let running = Running::start(&["--config", config.path().to_str().unwrap()]);
    let addr = running.listening_addr();
    let own_page = "GET / HTTP/1.1\r\nHost: portcullis\r\nConnection: close\r\n\r\n";
    assert!(blocking_exchange(addr, own_page).starts_with("HTTP/1.1 200"));
    let line = line_with(&running.stdout, &["\"method\":\"GET\""]);
    let mut buf = vec![0u8; 65_536];
    let n = listener.recv(&mut buf).expect("a datagram");
    let text = String::from_utf8(buf[..n].to_vec()).unwrap();
    let m = parse(&text);
    assert_eq!(m.pri, 16 * 8 + 6);
    assert_eq!(m.hostname, "proxy-s");
    assert_eq!(m.procid, running.child.id().to_string());
    // The same record as the stdout line, payload for payload.
    assert_eq!(m.msg, line);
    drop(running);

    // Absent at start: a warning, and the proxy serves.
    let config = write_config(&format!(
        "listen = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"off\"\n[log]\nsyslog = \"unix:{}\"\n",
        dir.path().join("absent.sock").display()
    ));
    let running = Running::start(&["--config", config.path().to_str().unwrap()]);
    let (mut addr, mut warned) = (None, false);
    let deadline = Instant::now() + WAIT;
    while addr.is_none() || !warned {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = running
            .stderr
            .recv_timeout(left)
            .expect("a listening line and a warning");
        if line.contains("listening") {
            addr = line.rsplit("addr=").next().unwrap().trim().parse().ok();
        }
        warned |= line.contains("cannot reach syslog");
    }
    assert!(blocking_exchange(addr.unwrap(), own_page).starts_with("HTTP/1.1 200"));
}

/// A target that is not one: the configuration check says which key and what is wanted.
#[test]
fn a_bad_target_is_a_configuration_error() {
    let said = check_refuses("[log]\nsyslog = \"smtp://x\"\n");
    assert!(said.contains("log.syslog"), "{said}");
    assert!(
        said.contains("\"smtp://x\" is not \"off\", unix:PATH, udp://HOST:PORT or tcp://HOST:PORT"),
        "{said}"
    );
}
