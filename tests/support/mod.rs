//! Test harness: the real proxy on `127.0.0.1:0`, real origins (raw TCP, HTTP, TLS) on
//! loopback, and clients that speak raw bytes so tests can assert exactly what a user sees.
//! Every wait is bounded.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use portcullis::{AccessRecord, AccessSink, Config, Recorder, Settings};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The bound on any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

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

/// A proxy running in this process.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The admin listener, when started with one.
    pub admin: Option<SocketAddr>,
    records: Arc<Mutex<Vec<AccessRecord>>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

struct Collect(Arc<Mutex<Vec<AccessRecord>>>);

impl AccessSink for Collect {
    fn record(&self, record: &AccessRecord) {
        self.0.lock().unwrap().push(record.clone());
    }
}

impl Proxy {
    /// Starts the proxy on `127.0.0.1:0` with the configuration in `toml` (its `listen` is
    /// replaced).
    pub async fn start(toml: &str) -> Proxy {
        let config = Config::from_toml(toml, "test").expect("test config parses");
        let settings = config.validate("test").expect("test config is valid");
        Proxy::start_with(settings).await
    }

    /// Starts the proxy on `127.0.0.1:0` with validated settings (their `listen` is replaced).
    pub async fn start_with(settings: Settings) -> Proxy {
        Proxy::start_observed(settings, false, None).await
    }

    /// Starts the proxy with an admin listener on `127.0.0.1:0` when `admin`, and `sink`
    /// (an access log, say) among its record sinks.
    pub async fn start_observed(
        mut settings: Settings,
        admin: bool,
        sink: Option<Arc<dyn AccessSink>>,
    ) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        settings.policy.listen = vec![addr];
        let admin_listener = if admin {
            Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
        } else {
            None
        };
        let admin_addr = admin_listener.as_ref().map(|l| l.local_addr().unwrap());
        let records = Arc::new(Mutex::new(Vec::new()));
        let mut recorder = Recorder::new().with_sink(Arc::new(Collect(records.clone())));
        if let Some(sink) = sink {
            recorder = recorder.with_sink(sink);
        }
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(portcullis::serve(
            vec![listener],
            admin_listener,
            settings,
            recorder,
            None,
            async {
                let _ = rx.await;
            },
        ));
        Proxy {
            addr,
            admin: admin_addr,
            records,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// The records so far.
    pub fn records(&self) -> Vec<AccessRecord> {
        self.records.lock().unwrap().clone()
    }

    /// Waits until at least `n` records exist and returns them all.
    pub async fn wait_records(&self, n: usize) -> Vec<AccessRecord> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let records = self.records();
            if records.len() >= n {
                return records;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} access records, have {}: {records:#?}",
                records.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Asks the proxy to shut down and waits for `run` to return.
    pub async fn stop(mut self) -> std::io::Result<()> {
        self.begin_stop();
        self.join().await
    }

    /// Sends the shutdown signal without waiting.
    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for `run` to return (after [`Proxy::begin_stop`]).
    pub async fn join(&mut self) -> std::io::Result<()> {
        let task = self.task.take().expect("joined once");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the proxy stops within 30 s")
            .expect("the proxy task does not panic")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A listener that must never be reached: counts connections and closes them.
pub struct Counter {
    pub addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Counter {
    pub async fn start() -> Counter {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let counted = accepts.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Counter {
            addr,
            accepts,
            task,
        }
    }

    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A raw HTTP/1.1 origin: records each request head exactly as received and answers
/// `hello <path>` with a Content-Length.
pub struct RawOrigin {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    accepts: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl RawOrigin {
    pub async fn start() -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let accepts = Arc::new(AtomicUsize::new(0));
        let (h, a) = (heads.clone(), accepts.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_raw(stream, h.clone()));
            }
        });
        RawOrigin {
            addr,
            heads,
            accepts,
            task,
        }
    }

    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_raw(mut stream: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    for _ in 0..1000 {
        let Some(end) = read_until_head_end(&mut stream, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let length = header_value(&head, "content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..length);
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        heads.lock().unwrap().push(head);
        let body = format!("hello {path}");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn read_until_head_end(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            return Some(end);
        }
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(WAIT, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// The first position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of header `name` (case-insensitive) in a raw head.
pub fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// An HTTP origin served by hyper. Paths:
/// - `/sha256`: answers the SHA-256 (hex) and length of the request body;
/// - `/bytes/N`: streams N bytes of a fixed pattern in 64 KiB chunks, without Content-Length
///   when `?chunked`;
/// - `/slow/MS`: answers after MS milliseconds;
/// - `/status/CODE`: answers that status with no body;
/// - anything else: `hello METHOD PATH`.
pub struct HttpOrigin {
    pub addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl HttpOrigin {
    pub async fn start() -> HttpOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let a = accepts.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), hyper::service::service_fn(origin))
                        .await;
                });
            }
        });
        HttpOrigin {
            addr,
            accepts,
            task,
        }
    }

    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

impl Drop for HttpOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type OriginBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The byte at offset `i` of `/bytes/N` bodies.
pub fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// The SHA-256 of the first `n` pattern bytes, in hex.
pub fn pattern_sha256(n: usize) -> String {
    let mut hasher = Sha256::new();
    let data: Vec<u8> = (0..n).map(pattern).collect();
    hasher.update(&data);
    hex(&hasher.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn origin(req: Request<Incoming>) -> Result<Response<OriginBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let full = |s: String| Full::new(Bytes::from(s)).boxed();
    if path == "/sha256" {
        let mut body = req.into_body();
        let mut hasher = Sha256::new();
        let mut len = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                hasher.update(data);
                len += data.len();
            }
        }
        return Ok(Response::new(full(format!(
            "{} {len}",
            hex(&hasher.finalize())
        ))));
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        let chunked = req.uri().query() == Some("chunked");
        let mut response = Response::new(PatternBody::new(n).boxed());
        if !chunked {
            response
                .headers_mut()
                .insert("content-length", n.to_string().parse().unwrap());
        }
        return Ok(response);
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(Response::new(full(format!("slept {ms}"))));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let mut response = Response::new(Full::new(Bytes::new()).boxed());
        *response.status_mut() = code.parse::<u16>().unwrap_or(500).try_into().unwrap();
        return Ok(response);
    }
    Ok(Response::new(full(format!(
        "hello {} {path}",
        req.method()
    ))))
}

/// A body of `total` pattern bytes, made 64 KiB at a time as the proxy reads it.
pub struct PatternBody {
    sent: usize,
    total: usize,
}

impl PatternBody {
    pub fn new(total: usize) -> Self {
        PatternBody { sent: 0, total }
    }
}

impl hyper::body::Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent >= self.total {
            return std::task::Poll::Ready(None);
        }
        let end = (self.sent + 65536).min(self.total);
        let chunk: Vec<u8> = (self.sent..end).map(pattern).collect();
        self.sent = end;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }
}

/// What came back for a request sent as raw bytes.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        header_value(&self.head, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response (head and a Content-Length, chunked or close-delimited body).
pub async fn read_response<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> Option<RawResponse> {
    let end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end;
        }
        if !read_more(stream, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 4);
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let no_body = head_request || status == 204 || status == 304 || (100..200).contains(&status);
    let body = if no_body {
        Vec::new()
    } else if let Some(len) = header_value(&head, "content-length") {
        let len: usize = len.parse().ok()?;
        while buf.len() < len {
            if !read_more(stream, buf).await {
                return None;
            }
        }
        buf.drain(..len).collect()
    } else if header_value(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(e) = find(buf, b"\r\n") {
                    break e;
                }
                if !read_more(stream, buf).await {
                    return None;
                }
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    if let Some(e) = find(buf, b"\r\n") {
                        let blank = e == 0;
                        buf.drain(..e + 2);
                        if blank {
                            break;
                        }
                    } else if !read_more(stream, buf).await {
                        return None;
                    }
                }
                break;
            }
            while buf.len() < size + 2 {
                if !read_more(stream, buf).await {
                    return None;
                }
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
        body
    } else {
        while read_more(stream, buf).await {}
        std::mem::take(buf)
    };
    Some(RawResponse { status, head, body })
}

/// Reads more bytes into `buf`; false when the stream ended or stalled for `WAIT`.
async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> bool {
    let mut chunk = vec![0u8; 65536];
    match tokio::time::timeout(WAIT, stream.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

/// Sends `request` on a new connection to `addr` and reads one response.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let head_request = request.starts_with(b"HEAD ");
    let mut buf = Vec::new();
    read_response(&mut stream, &mut buf, head_request)
        .await
        .unwrap_or_else(|| panic!("no response to {:?}", String::from_utf8_lossy(request)))
}

/// `GET url` through the proxy, with `Connection: close`.
pub async fn get(proxy: SocketAddr, url: &str) -> RawResponse {
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("");
    raw(
        proxy,
        format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
}

/// Sends `CONNECT authority` and reads the proxy's answer; returns it and the stream.
pub async fn connect(proxy: SocketAddr, authority: &str) -> (RawResponse, TcpStream) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    // A 200 to CONNECT has no body: read just the head.
    let end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("the proxy answers CONNECT in time")
            .unwrap();
        assert!(n > 0, "the proxy closed without answering CONNECT");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut rest = buf[end + 4..].to_vec();
    let body = if status == 200 {
        assert!(rest.is_empty(), "no bytes may follow a 200 to CONNECT");
        Vec::new()
    } else {
        let len: usize = header_value(&head, "content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        while rest.len() < len {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest
    };
    (RawResponse { status, head, body }, stream)
}

/// Reads from `stream` until it closes or `WAIT` passes; returns what came.
pub async fn read_to_close<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await;
    out
}

/// Whether the peer closed `stream` within `within` (reads return 0 or an error).
pub async fn closes_within<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    within: Duration,
) -> bool {
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}
