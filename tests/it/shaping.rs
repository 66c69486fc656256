//! Sharing the link (`[shaping]`) and capping clients (`[[limits.rate]]`): functional checks
//! with real downloads through the proxy, told apart by source address (127.0.0.x). The
//! ratios the issue sets (fair shares within ±10%, caps within ±5%) are the benchmark's; here
//! only what a person would notice: a capped download takes about as long as its cap says,
//! others are not slowed, a reload applies new caps to new transfers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::reload::{free_port, start};
use crate::support::*;

/// Downloads `/bytes/N` from `web` through `proxy` from the address `from`; the bytes of the
/// body and how long it took.
pub(crate) async fn download(
    proxy: SocketAddr,
    from: &str,
    web: SocketAddr,
    n: usize,
) -> (usize, Duration) {
    let began = Instant::now();
    let mut s = connect_from(from, proxy).await;
    let request =
        format!("GET http://{web}/bytes/{n} HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "the download from {from} did not end within 30 s"
    );
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got[..head_end])
    );
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let body = &got[head_end..];
    let n = if head.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.len()
    };
    (n, began.elapsed())
}

/// The length of a chunked body's data.
fn dechunk(body: &[u8]) -> usize {
    dechunked(body).len()
}

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_holds_a_client_across_its_connections_and_no_one_else() {
    let web = HttpOrigin::start().await;
    let p = Proxy::start(&format!(
        "{}[[limits.rate]]\nname = \"slow pc\"\nclients = [\"127.0.0.2\"]\ndown = \"512KiB/s\"\n",
        loopback_config(&[web.addr.port()], &[])
    ))
    .await;
    // 2 MiB in two parallel downloads of 1 MiB from the capped address: the cap is theirs
    // together (4 s at 512 KiB/s), while another address downloads 2 MiB at full speed.
    let (capped_a, capped_b, free) = tokio::join!(
        download(p.addr, "127.0.0.2", web.addr, MIB),
        download(p.addr, "127.0.0.2", web.addr, MIB),
        download(p.addr, "127.0.0.3", web.addr, 2 * MIB),
    );
    assert_eq!((capped_a.0, capped_b.0, free.0), (MIB, MIB, 2 * MIB));
    let capped = capped_a.1.max(capped_b.1);
    assert!(
        capped >= Duration::from_millis(3500) && capped < Duration::from_secs(6),
        "2 MiB through a 512 KiB/s cap took {capped:?}"
    );
    assert!(
        free.1 < Duration::from_secs(2),
        "the uncapped client took {:?}",
        free.1
    );
    // The records say how long each was held back: the capped ones about 2 s of the 4.
    let records = p.wait_records(3).await;
    for r in &records {
        match r.client.ip().to_string().as_str() {
            "127.0.0.2" => assert!(
                r.throttled.unwrap_or_default() >= Duration::from_millis(1000),
                "{r:?}"
            ),
            _ => assert_eq!(r.throttled, None, "{r:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_holds_tunnels_too() {
    let web = HttpOrigin::start().await;
    let p = Proxy::start(&format!(
        "{}[[limits.rate]]\nname = \"tunnels\"\nmethods = [\"CONNECT\"]\ndown = \"512KiB/s\"\n",
        loopback_config(&[], &[web.addr.port()])
    ))
    .await;
    let began = Instant::now();
    let (answer, mut tunnel) = connect(p.addr, &web.addr.to_string()).await;
    assert_eq!(answer.status, 200);
    let n = MIB + MIB / 2;
    tunnel
        .write_all(
            format!(
                "GET /bytes/{n} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                web.addr
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), tunnel.read_to_end(&mut got)).await;
    let took = began.elapsed();
    assert!(got.len() > n, "{} bytes", got.len());
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(5),
        "1.5 MiB through a 512 KiB/s tunnel cap took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shaped_link_is_shared_by_the_clients_that_use_it() {
    let web = HttpOrigin::start().await;
    let p = Proxy::start(&format!(
        "{}[shaping]\ndown = \"2MiB/s\"\n",
        loopback_config(&[web.addr.port()], &[])
    ))
    .await;
    // Alone, a client has the whole link: 2 MiB in about 1 s.
    let (_, alone) = download(p.addr, "127.0.0.4", web.addr, 2 * MIB).await;
    assert!(alone < Duration::from_millis(1800), "alone: {alone:?}");
    // Two at once share it: 2 MiB each, about 2 s, and neither far behind the other.
    let (a, b) = tokio::join!(
        download(p.addr, "127.0.0.5", web.addr, 2 * MIB),
        download(p.addr, "127.0.0.6", web.addr, 2 * MIB),
    );
    let (fast, slow) = (a.1.min(b.1), a.1.max(b.1));
    assert!(slow >= Duration::from_millis(1600), "together: {a:?} {b:?}");
    assert!(slow < Duration::from_secs(4), "together: {a:?} {b:?}");
    assert!(
        fast.as_secs_f64() >= slow.as_secs_f64() * 0.6,
        "one client got much more of the link: {a:?} {b:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_new_caps_to_new_transfers() {
    let web = HttpOrigin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().await;
    let base = format!(
        "listen = [\"127.0.0.1:{port}\"]\n{}",
        loopback_config(&[web.addr.port()], &[])
    );
    let proxy = start(dir.path(), &base).await;
    let (_, before) = download(proxy.addr, "127.0.0.1", web.addr, 2 * MIB).await;
    assert!(before < Duration::from_secs(1), "uncapped: {before:?}");
    std::fs::write(
        &proxy.path,
        format!("{base}[[limits.rate]]\nname = \"everyone\"\nclients = [\"127.0.0.0/8\"]\ndown = \"1MiB/s\"\n"),
    )
    .unwrap();
    proxy.reload.request().await.unwrap();
    let (_, after) = download(proxy.addr, "127.0.0.1", web.addr, 2 * MIB).await;
    assert!(
        after >= Duration::from_millis(1700) && after < Duration::from_secs(4),
        "2 MiB at 1 MiB/s after the reload took {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_holds_uploads_through_plain_http() {
    let web = HttpOrigin::start().await;
    let p = Proxy::start(&format!(
        "{}[[limits.rate]]\nname = \"uploads\"\nmethods = [\"POST\"]\nup = \"512KiB/s\"\n",
        loopback_config(&[web.addr.port()], &[])
    ))
    .await;
    let n = MIB + MIB / 2;
    let began = Instant::now();
    let mut s = connect_from("127.0.0.7", p.addr).await;
    let head = format!(
        "POST http://{0}/sha256 HTTP/1.1\r\nHost: {0}\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n",
        web.addr
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let body: Vec<u8> = (0..n).map(pattern).collect();
    for piece in body.chunks(64 * 1024) {
        s.write_all(piece).await.unwrap();
    }
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got)).await;
    let took = began.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with(&format!("{} {n}", pattern_sha256(n))),
        "{text}"
    );
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(5),
        "1.5 MiB up through a 512 KiB/s cap took {took:?}"
    );
}

#[tokio::test]
async fn the_own_page_tells_a_person_their_share_and_caps() {
    let p = Proxy::start(
        "[shaping]\ndown = \"100Mbit/s\"\n[shaping.weights]\n\"127.0.0.8\" = 2\n\
         [[limits.rate]]\nname = \"kids\"\nclients = [\"127.0.0.8\"]\ndown = \"5Mbit/s\"\n\
         [[limits.rate]]\nname = \"others\"\nclients = [\"10.0.0.0/8\"]\ndown = \"1Mbit/s\"\n",
    )
    .await;
    let mut s = connect_from("127.0.0.8", p.addr).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let page = String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned();
    assert!(page.contains("Your share of the link"), "{page}");
    assert!(page.contains("share of weight 2"), "{page}");
    assert!(
        page.contains("Cap \"kids\" holds you to down 625 kB/s, up - for everything you do"),
        "{page}"
    );
    assert!(!page.contains("others"), "{page}");
}

/// An origin, and a proxy with an admin listener that reaches it through a link shaped to
/// 4 MiB/s (`portcullis top` reads it here and in `top.rs`).
pub(crate) async fn shaped_link() -> (HttpOrigin, Proxy) {
    let web = HttpOrigin::start().await;
    let p = Proxy::start_observed(
        settings_of(&format!(
            "{}[shaping]\ndown = \"4MiB/s\"\n",
            loopback_config(&[web.addr.port()], &[])
        )),
        true,
        None,
    )
    .await;
    (web, p)
}

/// One screen of `portcullis top --once` against the admin listener, half a second apart;
/// fails the test when top does not succeed.
async fn top_once(admin: &str) -> String {
    let args = ["top", "--once", "--admin", admin, "--interval", "0.5"].map(str::to_owned);
    let ran = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        portcullis(&args, Vec::new())
    })
    .await
    .unwrap();
    let screen = String::from_utf8_lossy(&ran.stdout).into_owned();
    assert!(ran.status.success(), "{screen}\n{}", ran.stderr);
    screen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_who_uses_the_link_now() {
    let (web, p) = shaped_link().await;
    let admin = p.admin.unwrap().to_string();
    // A download of about 3 s from 127.0.0.9 while top reads the admin listener twice,
    // once the download has reported its bytes a few times (every 250 ms).
    let download = tokio::spawn(download(p.addr, "127.0.0.9", web.addr, 12 * MIB));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let screen = top_once(&admin).await;
    assert!(
        screen.contains(&format!("portcullis top — {admin}")),
        "{screen}"
    );
    let client_line = screen
        .lines()
        .find(|l| l.starts_with("127.0.0.9"))
        .unwrap_or_else(|| panic!("no line for the client: {screen}"));
    assert!(client_line.contains("MB/s"), "{screen}");
    // The download's port and host move while it runs, not only once it has ended.
    let web_port = web.addr.port().to_string();
    for (what, starts) in [("port", web_port.as_str()), ("host", "127.0.0.1")] {
        let line = screen
            .lines()
            .find(|l| l.starts_with(starts))
            .unwrap_or_else(|| panic!("no line for the {what}: {screen}"));
        assert!(line.contains("MB/s"), "{what}: {screen}");
    }
    assert!(
        !download.is_finished(),
        "the download was to outlast the readings"
    );
    assert!(
        screen.contains("\nLINK down ")
            && screen.contains(" of 4.2 MB/s (")
            && screen.contains("; shaped, shares handed out: down "),
        "{screen}"
    );
    assert_eq!(download.await.unwrap().0, 12 * MIB);
    // The status page charts the minute: the client's bytes in the link's chart.
    let page = admin_get(p.admin.unwrap(), "/status").await.text();
    assert!(page.contains("<svg id=\"link-chart\""), "{page}");
    assert!(page.contains("<title>127.0.0.9 "), "{page}");
    // Without an admin listener there, a clear error.
    let ran = portcullis(&["top", "--once", "--admin", "127.0.0.1:1"], Vec::new());
    assert!(!ran.status.success());
    assert!(
        ran.stderr
            .contains("cannot reach the admin listener at 127.0.0.1:1"),
        "{}",
        ran.stderr
    );
}

/// Without `[shaping]`, a tunnel that runs for a while shows in `top` (client, port, host)
/// and in `/status.json` while it runs: the proxy counts its bytes as they move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_an_unshaped_tunnel_while_it_runs() {
    let echo = echo_origin().await;
    let p = Proxy::start_observed(
        settings_of(&loopback_config(&[], &[echo.port()])),
        true,
        None,
    )
    .await;
    let admin = p.admin.unwrap();
    let mut tunnel = connect_from("127.0.0.5", p.addr).await;
    tunnel
        .write_all(format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = read_head(&mut tunnel, &mut buf).await.expect("an answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // 64 KiB each way every 20 ms, for at most 10 s: until top has read twice.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let pump = tokio::spawn(async move {
        let piece = vec![7u8; 64 << 10];
        let mut back = vec![0u8; 64 << 10];
        let mut stopped = stopped;
        let mut moved = 0usize;
        for _ in 0..500 {
            if stopped.try_recv().is_ok() {
                break;
            }
            tunnel.write_all(&piece).await.unwrap();
            tunnel.read_exact(&mut back).await.unwrap();
            moved += piece.len();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        moved
    });
    // Past the tunnel's first reports (every 250 ms from its first bytes).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let status: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/status.json").await.text()).unwrap();
    let row = status["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["port"] == echo.port())
        .cloned()
        .unwrap_or_default();
    assert!(
        row["bytes_down"].as_u64().unwrap_or(0) > 0 && row["active_tunnels"] == 1,
        "the tunnel's port counts bytes while it runs: {row}"
    );
    let screen = top_once(&admin.to_string()).await;
    let echo_port = format!("{} ", echo.port());
    for (what, starts) in [
        ("client", "127.0.0.5 "),
        ("port", echo_port.as_str()),
        ("host", "127.0.0.1 "),
    ] {
        let line = screen
            .lines()
            .find(|l| l.starts_with(starts))
            .unwrap_or_else(|| panic!("no line for the {what}: {screen}"));
        // About 3 MB/s each way; kB/s at the least.
        assert!(
            line.contains("kB/s") || line.contains("MB/s"),
            "{what}: {screen}"
        );
    }
    assert!(
        !pump.is_finished(),
        "the tunnel was to outlast the readings"
    );
    let _ = stop.send(());
    assert!(pump.await.unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_names_the_cap_holding_a_client_without_a_link() {
    let web = HttpOrigin::start().await;
    let p = Proxy::start_observed(
        settings_of(&format!(
            "{}[[limits.rate]]\nname = \"kids pcs\"\nclients = [\"127.0.0.2\"]\ndown = \"1MiB/s\"\n\
             [[limits.rate]]\nname = \"evenings\"\nclients = [\"127.0.0.3\"]\ndown = \"1MiB/s\"\n",
            loopback_config(&[web.addr.port()], &[])
        )),
        true,
        None,
    )
    .await;
    let admin = p.admin.unwrap();
    // About 2 s of download at the cap, read while it runs (a recompute every 0.1 s).
    let download = tokio::spawn(download(p.addr, "127.0.0.2", web.addr, 2 * MIB));
    // The rows with a rate, from the first one on: five more looks after it, since the
    // first span may have caught only the transfer's start.
    let mut seen = Vec::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status: serde_json::Value =
            serde_json::from_str(&admin_get(admin, "/status.json").await.text()).unwrap();
        let row = status["link"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["client"] == "127.0.0.2"))
            .cloned();
        if let Some(row) = row.filter(|r| r["down"].as_f64().unwrap_or(0.0) > 0.0) {
            seen.push(row);
        }
        if seen.len() == 6 {
            break;
        }
    }
    let row = seen
        .first()
        .cloned()
        .expect("the capped client and its rate in /status.json within 4 s");
    assert_eq!(row["caps"], serde_json::json!(["kids pcs"]), "{row}");
    assert!(row["share_down"].is_null(), "no link, no share: {row}");
    let fastest = seen
        .iter()
        .filter_map(|r| r["down"].as_f64())
        .fold(0.0, f64::max);
    // Rates over 100 ms spans: at their fastest the cap's 1 MiB/s give or take a burst, far
    // below what loopback moves uncapped (hundreds of MB/s).
    assert!(
        fastest > 100_000.0 && fastest < 8.0 * 1024.0 * 1024.0,
        "about the cap's 1 MiB/s: {seen:?}"
    );
    let page = admin_get(admin, "/status").await.text();
    assert!(page.contains("<td>kids pcs</td></tr>"), "{page}");
    assert_eq!(download.await.unwrap().0, 2 * MIB);
}

/// A request body sent through plain HTTP counts while it goes up, before any answer, in
/// its client's and its port's rows; and once in all when the exchange ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_counts_while_it_goes_up() {
    const PIECE: usize = 64 << 10;
    const PIECES: usize = 40;
    let web = HttpOrigin::start().await;
    let p = Proxy::start_observed(
        settings_of(&loopback_config(&[web.addr.port()], &[])),
        true,
        None,
    )
    .await;
    let admin = p.admin.unwrap();
    let status = || async {
        let text = admin_get(admin, "/status.json").await.text();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    // The row of `table` whose `key` is `value`, or null.
    let row = |status: &serde_json::Value, table: &str, key: &str, value: serde_json::Value| {
        status[table]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r[key] == value)
            .cloned()
            .unwrap_or_default()
    };
    // The client's and the port's bytes up, and the client's requests.
    let bytes_up = |status: &serde_json::Value| {
        let client = row(status, "clients", "client", "127.0.0.6".into());
        let port = row(status, "ports", "port", web.addr.port().into());
        let up = |r: &serde_json::Value| r["bytes_up"].as_u64().unwrap_or(0);
        (
            up(&client),
            up(&port),
            client["requests"].as_u64().unwrap_or(0),
        )
    };
    let mut up = connect_from("127.0.0.6", p.addr).await;
    let head = format!(
        "POST http://{0}/sha256 HTTP/1.1\r\nHost: {0}\r\nContent-Length: {1}\r\n\r\n",
        web.addr,
        PIECE * PIECES
    );
    up.write_all(head.as_bytes()).await.unwrap();
    // 64 KiB every 20 ms (about 0.8 s in all), looking at the counters between pieces
    // from the tenth on, until they show the upload. The origin answers only once it has
    // the whole body: what they show before the last piece is the upload going on.
    let piece = vec![3u8; PIECE];
    let mut seen = None;
    for i in 0..PIECES {
        up.write_all(&piece).await.unwrap();
        if seen.is_none() && (10..PIECES - 1).contains(&i) {
            let (client, port, _) = bytes_up(&status().await);
            if client > 0 && port > 0 {
                seen = Some((client, port));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (client, port) =
        seen.expect("the upload counts in its client's and port's rows while it goes up");
    assert!(client <= (PIECE * (PIECES - 1)) as u64, "{client} {port}");
    let mut buf = Vec::new();
    let answer = read_head(&mut up, &mut buf).await.expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(up);
    // Once the record is in: every byte counted, once.
    let total = (PIECE * PIECES) as u64;
    let mut last = (0, 0, 0);
    for _ in 0..100 {
        last = bytes_up(&status().await);
        if last.2 == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, (total, total, 1));
}

/// The data of a chunked body, in order.
fn dechunked(mut body: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    for _ in 0..100_000 {
        let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") else {
            break;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap().trim(), 16)
                .unwrap();
        if size == 0 {
            break;
        }
        data.extend_from_slice(&body[line_end + 2..line_end + 2 + size]);
        body = &body[line_end + 2 + size + 2..];
    }
    data
}

/// Whether `data` is the first bytes of a `/bytes/N` body, byte for byte.
fn is_pattern(data: &[u8]) -> bool {
    data.iter().enumerate().all(|(i, b)| *b == pattern(i))
}

/// `GET /bytes/n` over `stream` (through the proxy in absolute form, or inside a tunnel in
/// origin form) with `Connection: close`: the body's data.
async fn fetch_pattern(
    mut stream: tokio::net::TcpStream,
    target: &str,
    web: SocketAddr,
) -> Vec<u8> {
    let request = format!("GET {target} HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "{target}: no end within 30 s");
    assert!(got.starts_with(b"HTTP/1.1 200"), "{target}");
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        dechunked(&got[head_end..])
    } else {
        got[head_end..].to_vec()
    }
}

/// While a light client's requests are in flight, the bulk transfers beside them take short
/// turns (origin reads of 16 KiB through a buffer of their own, a step aside before each
/// frame, a tunnel one step a turn): every byte of a download and of a tunnel still arrives,
/// in order, and the download's record counts each byte once. The light client is answered
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_bytes_beside_a_light_client_arrive_whole_and_in_order() {
    let web = HttpOrigin::start().await;
    let p = Proxy::start(&loopback_config(&[web.addr.port()], &[web.addr.port()])).await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The light client: small GETs from 127.0.0.3, one after another, until the bulk ends.
    let light = {
        let done = done.clone();
        let (proxy, origin) = (p.addr, web.addr);
        tokio::spawn(async move {
            let mut answered = 0;
            for _ in 0..5_000 {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let (n, _) = download(proxy, "127.0.0.3", origin, 1000).await;
                assert_eq!(n, 1000);
                answered += 1;
            }
            answered
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let n = 8 * MIB;
    let plain = async {
        let stream = connect_from("127.0.0.2", p.addr).await;
        fetch_pattern(stream, &format!("http://{}/bytes/{n}", web.addr), web.addr).await
    };
    let tunnelled = async {
        let stream = tunnel_from("127.0.0.2", p.addr, &web.addr.to_string()).await;
        fetch_pattern(stream, &format!("/bytes/{n}"), web.addr).await
    };
    let (plain, tunnelled) = tokio::join!(plain, tunnelled);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(plain.len(), n);
    assert!(
        is_pattern(&plain),
        "the download's bytes differ from the origin's"
    );
    assert_eq!(tunnelled.len(), n);
    assert!(
        is_pattern(&tunnelled),
        "the tunnel's bytes differ from the origin's"
    );
    let answered = light.await.unwrap();
    assert!(answered > 0, "the light client was never answered");
    let records = p
        .wait_until("the download's record", |records| {
            records
                .iter()
                .any(|r| r.client.ip().to_string() == "127.0.0.2" && r.method == "GET")
        })
        .await;
    let download = records
        .iter()
        .find(|r| r.client.ip().to_string() == "127.0.0.2" && r.method == "GET")
        .unwrap();
    assert_eq!(download.bytes_down, n as u64, "{download:?}");
}

/// Scenario F measures shaping's cost when off against this code built with
/// `benches/shaping-off.patch` (issue 18's hooks taken out): the recipe must keep applying.
#[test]
fn the_shaping_off_patch_still_applies() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("git")
        .args(["apply", "--check", "benches/shaping-off.patch"])
        .current_dir(root)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "benches/shaping-off.patch no longer applies; take the hooks out again: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
