//! Every origin the tests dial, on `127.0.0.1:0`: a listener that must never be reached
//! ([`Counter`]), a raw HTTP/1.1 origin that records heads ([`RawOrigin`]), a hyper origin
//! with useful paths ([`HttpOrigin`]), a strict one that records everything it reads
//! ([`StrictOrigin`]), scripted answers over TCP or TLS ([`scripted_origin`],
//! [`one_shot_origin`], [`tls_origin`]), an origin that stops reading
//! ([`origin_that_stops_reading`]), and the tunnel ends ([`counting_origin`],
//! [`echo_origin`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::raw::{framing, header_value, read_chunked, read_exact_body, read_head, Framing};
use super::{READ_MAX, WAIT};

/// A listener on `127.0.0.1:0` that hands each connection to a task of its own, counting
/// them; it stops accepting when dropped.
pub struct Origin {
    pub addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl Origin {
    /// Starts accepting, serving each connection with `serve`.
    pub async fn serve<F, Fut>(serve: F) -> Origin
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Origin::serve_on(listener, serve)
    }

    /// Starts accepting on a listener bound elsewhere (inside a network namespace, say),
    /// serving each connection with `serve`.
    pub fn serve_on<F, Fut>(listener: TcpListener, serve: F) -> Origin
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let counted = accepts.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream));
            }
        });
        Origin {
            addr,
            accepts,
            task: Some(task),
        }
    }

    /// The connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// Leaves the origin running for the rest of the test; its address.
    pub fn detach(mut self) -> SocketAddr {
        self.task = None;
        self.addr
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A listener that must never be reached: counts connections and closes them.
pub struct Counter(Origin);

impl Counter {
    pub async fn start() -> Counter {
        Counter(Origin::serve(|stream| async move { drop(stream) }).await)
    }
}

impl Deref for Counter {
    type Target = Origin;

    fn deref(&self) -> &Origin {
        &self.0
    }
}

/// A raw HTTP/1.1 origin: records each request head exactly as received and answers
/// `hello <path>` with a Content-Length.
pub struct RawOrigin {
    origin: Origin,
    heads: Arc<Mutex<Vec<String>>>,
}

impl RawOrigin {
    pub async fn start() -> RawOrigin {
        let heads = Arc::new(Mutex::new(Vec::new()));
        let h = heads.clone();
        let origin = Origin::serve(move |stream| serve_raw(stream, h.clone())).await;
        RawOrigin { origin, heads }
    }

    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Deref for RawOrigin {
    type Target = Origin;

    fn deref(&self) -> &Origin {
        &self.origin
    }
}

async fn serve_raw(mut stream: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    for _ in 0..1000 {
        let Some(head) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        let length = header_value(&head, "content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        if read_exact_body(&mut stream, &mut buf, length)
            .await
            .is_err()
        {
            return;
        }
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

/// An HTTP origin served by hyper. Paths:
/// - `/sha256`: answers the SHA-256 (hex) and length of the request body;
/// - `/bytes/N`: streams N bytes of a fixed pattern in 64 KiB chunks, without Content-Length
///   when `?chunked`;
/// - `/slow/MS`: answers after MS milliseconds;
/// - `/status/CODE`: answers that status with no body;
/// - anything else: `hello METHOD PATH`.
pub struct HttpOrigin(Origin);

impl HttpOrigin {
    pub async fn start() -> HttpOrigin {
        HttpOrigin::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    /// The same origin on a listener bound elsewhere (inside a network namespace, say).
    pub fn start_on(listener: TcpListener) -> HttpOrigin {
        HttpOrigin(Origin::serve_on(listener, |stream| async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                .await;
        }))
    }

    /// The same origin behind TLS, with a fresh self-signed certificate for `names`, on a
    /// listener bound elsewhere. Returns the origin and the certificate in PEM (for curl's
    /// `--cacert`).
    pub fn start_tls_on(listener: TcpListener, names: &[&str]) -> (HttpOrigin, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let certified = rcgen::generate_simple_self_signed(names).unwrap();
        let cert = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let origin = Origin::serve_on(listener, move |stream| {
            let acceptor = acceptor.clone();
            async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), hyper::service::service_fn(answer))
                        .await;
                }
            }
        });
        (HttpOrigin(origin), certified.cert.pem())
    }
}

impl Deref for HttpOrigin {
    type Target = Origin;

    fn deref(&self) -> &Origin {
        &self.0
    }
}

type OriginBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The byte at offset `i` of `/bytes/N` bodies.
pub fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// The SHA-256 of the first `n` pattern bytes, in hex.
pub fn pattern_sha256(n: usize) -> String {
    let data: Vec<u8> = (0..n).map(pattern).collect();
    hex(&Sha256::digest(&data))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn answer(req: Request<Incoming>) -> Result<Response<OriginBody>, Infallible> {
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

/// What a [`StrictOrigin`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A request: its raw head (without the blank line) and its decoded body; `complete` is
    /// false when the connection ended inside the body.
    Request {
        head: String,
        body: Vec<u8>,
        complete: bool,
    },
    /// Bytes that are not a request this origin can frame, and why.
    Junk { why: String, bytes: String },
}

impl Seen {
    pub fn head(&self) -> Option<&str> {
        match self {
            Seen::Request { head, .. } => Some(head),
            Seen::Junk { .. } => None,
        }
    }
}

/// An HTTP/1.1 origin that reads requests strictly ([`framing`]: one `Content-Length`, or
/// `chunked` as the only transfer coding, never both), answers `200 ok`, and records each
/// request it reads, so a smuggled second request shows up as a second record (or as bytes
/// it could not frame), never silently.
pub struct StrictOrigin {
    origin: Origin,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl StrictOrigin {
    pub async fn start() -> StrictOrigin {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let origin = Origin::serve(move |stream| serve_strict(stream, s.clone())).await;
        StrictOrigin { origin, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits up to `within` for the origin to have read at least `n` things; then, a moment
    /// later (for anything that follows), returns all it read.
    pub async fn wait_seen(&self, n: usize, within: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + within;
        while self.seen().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.seen()
    }
}

impl Deref for StrictOrigin {
    type Target = Origin;

    fn deref(&self) -> &Origin {
        &self.origin
    }
}

async fn serve_strict(mut stream: TcpStream, seen: Arc<Mutex<Vec<Seen>>>) {
    let record = |s: Seen| seen.lock().unwrap().push(s);
    let mut buf = Vec::new();
    for _ in 0..100 {
        let Some(head) = read_head(&mut stream, &mut buf).await else {
            if !buf.is_empty() {
                record(Seen::Junk {
                    why: "bytes that do not end in a request head".into(),
                    bytes: String::from_utf8_lossy(&buf).into_owned(),
                });
            }
            return;
        };
        let body = match framing(&head) {
            Err(why) => {
                record(Seen::Junk { why, bytes: head });
                return;
            }
            Ok(Framing::Length(n)) => read_exact_body(&mut stream, &mut buf, n).await,
            Ok(Framing::Chunked) => read_chunked(&mut stream, &mut buf, READ_MAX).await,
        };
        let complete = body.is_ok();
        let body = body.unwrap_or_else(|partial| partial);
        record(Seen::Request {
            head,
            body,
            complete,
        });
        if !complete {
            return;
        }
        let answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
        if stream.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// Answers the requests read from `stream` with `responses` in turn (whatever each request
/// is; bodies are not read), then closes.
async fn serve_script<S>(mut stream: S, responses: Arc<Vec<Vec<u8>>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    for response in responses.iter() {
        if read_head(&mut stream, &mut buf).await.is_none() {
            return;
        }
        if stream.write_all(response).await.is_err() {
            return;
        }
    }
    let _ = stream.shutdown().await;
}

fn script(responses: &[&[u8]]) -> Arc<Vec<Vec<u8>>> {
    Arc::new(responses.iter().map(|r| r.to_vec()).collect())
}

/// An origin that answers the requests on each connection with the next of `responses`, then
/// closes the connection.
pub async fn scripted_origin(responses: &[&[u8]]) -> Origin {
    let responses = script(responses);
    Origin::serve(move |stream| serve_script(stream, responses.clone())).await
}

/// An origin that answers one request per connection with `response` and then closes.
pub async fn one_shot_origin(response: &[u8]) -> SocketAddr {
    scripted_origin(&[response]).await.detach()
}

/// A TLS origin with a fresh self-signed certificate for `localhost` that answers the
/// requests on each connection with `responses` in turn, then closes. Returns its address
/// and the certificate.
pub async fn tls_origin(responses: &[&[u8]]) -> (SocketAddr, CertificateDer<'static>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    (
        tls_origin_with(responses, vec![cert.clone()], key).await,
        cert,
    )
}

/// [`tls_origin`] serving the certificate `chain` with `key` (a certificate made for the
/// test by an authority a client trusts, say); returns its address.
pub async fn tls_origin_with(
    responses: &[&[u8]],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> SocketAddr {
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let responses = script(responses);
    let origin = Origin::serve(move |stream| {
        let (acceptor, responses) = (acceptor.clone(), responses.clone());
        async move {
            if let Ok(tls) = acceptor.accept(stream).await {
                serve_script(tls, responses).await;
            }
        }
    })
    .await;
    origin.detach()
}

/// An origin that reads a request head and then nothing: not the body, and it never answers.
/// The second value is told the proxy's end of the connection.
pub async fn origin_that_stops_reading() -> (SocketAddr, oneshot::Receiver<SocketAddr>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tell, told) = oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut stream, peer)) = listener.accept().await else {
            return;
        };
        let _ = tell.send(peer);
        if read_head(&mut stream, &mut Vec::new()).await.is_none() {
            return;
        }
        // Holds the connection, reading nothing, for longer than any test waits.
        tokio::time::sleep(WAIT * 2).await;
    });
    (addr, told)
}

/// An origin that reads until the client half-closes, then answers `got N bytes` and closes.
pub async fn counting_origin() -> SocketAddr {
    Origin::serve(|mut stream| async move {
        let mut total = 0usize;
        let mut buf = vec![0u8; 65536];
        loop {
            match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => total += n,
                _ => return,
            }
        }
        let _ = stream
            .write_all(format!("got {total} bytes").as_bytes())
            .await;
        let _ = stream.shutdown().await;
    })
    .await
    .detach()
}

/// An origin that echoes every byte back until the client half-closes, then closes.
pub async fn echo_origin() -> SocketAddr {
    Origin::serve(|stream| async move {
        let (mut read, mut write) = stream.into_split();
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::io::copy(&mut read, &mut write),
        )
        .await;
        let _ = write.shutdown().await;
    })
    .await
    .detach()
}
