//! Raw-socket clients and the framing they need: send exact bytes, read a response as the
//! bytes frame it (Content-Length, chunked, close-delimited, a head only for CONNECT's 200),
//! and the strict RFC 9112 request framing the [`StrictOrigin`](super::StrictOrigin) reads by.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::WAIT;

/// The biggest head, or body framed by [`framing`], that the helpers here read.
pub const READ_MAX: usize = 1 << 20;

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

/// The header lines of a raw head (without the request line).
pub fn field_lines(head: &str) -> Vec<&str> {
    head.split("\r\n").skip(1).collect()
}

/// Whether a raw head has a field line named `name` (case-insensitive).
pub fn has_field(head: &str, name: &str) -> bool {
    field_lines(head).iter().any(|line| {
        line.split_once(':')
            .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
    })
}

/// Reads more bytes into `buf`; false when the stream ended or stalled for `WAIT`.
pub async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> bool {
    let mut chunk = vec![0u8; 65536];
    match tokio::time::timeout(WAIT, stream.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

/// Reads until `buf` holds a whole head, then takes the head (without the blank line) out of
/// `buf`; `None` when the stream ends or stalls first, or the head passes [`READ_MAX`] (what
/// was read stays in `buf`).
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<String> {
    let end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end;
        }
        if buf.len() > READ_MAX || !read_more(stream, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 4);
    Some(head)
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
    let head = read_head(stream, buf).await?;
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
        read_chunked(stream, buf, usize::MAX).await.ok()?
    } else {
        while read_more(stream, buf).await {}
        std::mem::take(buf)
    };
    Some(RawResponse { status, head, body })
}

/// Reads the answer to a request that was sent as `request`: the answer to a `CONNECT` is
/// a head only when it is a `200` (what follows belongs to the tunnel), else a head and its
/// Content-Length body.
pub async fn read_answer<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    request: &[u8],
) -> Option<RawResponse> {
    if !request.starts_with(b"CONNECT ") {
        return read_response(stream, buf, request.starts_with(b"HEAD ")).await;
    }
    let mut response = read_response(stream, buf, true).await?;
    if response.status != 200 {
        let len: usize = response
            .header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        while buf.len() < len {
            if !read_more(stream, buf).await {
                break;
            }
        }
        response.body = std::mem::take(buf);
    }
    Some(response)
}

/// Sends `request` on a new connection to `addr` and reads one response.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    exchange(&mut stream, request).await
}

/// Sends `request` on `stream` and reads one response.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: impl AsRef<[u8]>,
) -> RawResponse {
    let request = request.as_ref();
    stream.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    read_answer(stream, &mut buf, request)
        .await
        .unwrap_or_else(|| panic!("no response to {}", show(request)))
}

/// `GET url` through the proxy, with `Connection: close`.
pub async fn get(proxy: SocketAddr, url: &str) -> RawResponse {
    get_with(proxy, url, "").await
}

/// `GET url` through the proxy with `extra` header lines (each ending in CRLF), with
/// `Connection: close`.
pub async fn get_with(proxy: SocketAddr, url: &str, extra: &str) -> RawResponse {
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("");
    raw(
        proxy,
        format!("GET {url} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
}

/// Sends `CONNECT authority` and reads the proxy's answer; returns it and the stream.
pub async fn connect(proxy: SocketAddr, authority: &str) -> (RawResponse, TcpStream) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let answer = read_answer(&mut stream, &mut buf, request.as_bytes())
        .await
        .expect("the proxy answers CONNECT in time");
    if answer.status == 200 {
        assert!(buf.is_empty(), "no bytes may follow a 200 to CONNECT");
    }
    (answer, stream)
}

/// A connection to `proxy` from the loopback address `from` (any 127/8 address is local).
pub async fn connect_from(from: &str, proxy: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    tokio::time::timeout(WAIT, socket.connect(proxy))
        .await
        .expect("the proxy accepts in time")
        .unwrap()
}

/// A tunnel through `proxy` from the loopback address `from` to `target`, open and answered
/// 200 (an open tunnel is a busy connection: it cannot make room).
pub async fn tunnel_from(from: &str, proxy: SocketAddr, target: &str) -> TcpStream {
    let mut s = connect_from(from, proxy).await;
    let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let answer = read_head(&mut s, &mut buf)
        .await
        .expect("an answer to CONNECT");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(buf.is_empty(), "no bytes may follow a 200 to CONNECT");
    s
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

/// Printable bytes of a request, for messages.
pub fn show(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(160)]).into_owned();
    if bytes.len() > 160 {
        format!("{text:?}… ({} bytes)", bytes.len())
    } else {
        format!("{text:?}")
    }
}

/// The bound on one exchange in [`send`]: a proxy that takes longer to answer has hung.
const EXCHANGE: Duration = Duration::from_secs(5);

/// What the client saw for one request sent on a fresh connection.
pub struct Answer {
    /// The response, or `None` when the proxy closed the connection without one.
    pub response: Option<RawResponse>,
    /// The connection, for what follows the response.
    pub stream: TcpStream,
}

impl Answer {
    pub fn status(&self) -> Option<u16> {
        self.response.as_ref().map(|r| r.status)
    }

    pub fn shown(&self) -> String {
        match &self.response {
            Some(r) => format!("{} {:?}", r.status, r.text().trim_end()),
            None => "closed without a response".to_owned(),
        }
    }
}

/// Sends `request` on a new connection to `proxy` and reads one response (or the close);
/// fails the test when the proxy neither answers nor closes within 5 s.
pub async fn send(proxy: SocketAddr, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    // The proxy may answer and close before reading everything: a failed write is not a
    // failure of the test, what comes back is what counts.
    let _ = tokio::time::timeout(EXCHANGE, stream.write_all(request)).await;
    let mut buf = Vec::new();
    let response = tokio::time::timeout(EXCHANGE, read_answer(&mut stream, &mut buf, request))
        .await
        .unwrap_or_else(|_| panic!("the proxy hung on {}", show(request)));
    Answer { response, stream }
}

/// How a request body is framed.
pub enum Framing {
    Length(usize),
    Chunked,
}

/// How the body of a request with this head is framed, by RFC 9112 §6, strictly: every line
/// ends in CRLF, field names are tokens, at most one distinct Content-Length of digits, and a
/// Transfer-Encoding only as a single `chunked` without a Content-Length.
pub fn framing(head: &str) -> Result<Framing, String> {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    if request_line.split(' ').count() != 3 {
        return Err(format!("malformed request line {request_line:?}"));
    }
    let mut lengths = Vec::new();
    let mut codings = Vec::new();
    for line in lines {
        if line.contains(['\r', '\n', '\0']) {
            return Err(format!("control bytes in the field line {line:?}"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("a field line without ':' {line:?}"))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("a malformed field name {name:?}"));
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("content-length") {
            lengths.push(value.to_owned());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings.extend(value.split(',').map(|c| c.trim().to_ascii_lowercase()));
        }
    }
    if !codings.is_empty() {
        if !lengths.is_empty() {
            return Err("both Content-Length and Transfer-Encoding".into());
        }
        if codings != ["chunked"] {
            return Err(format!("transfer codings {codings:?}"));
        }
        return Ok(Framing::Chunked);
    }
    match lengths.as_slice() {
        [] => Ok(Framing::Length(0)),
        [one] if !one.is_empty() && one.bytes().all(|b| b.is_ascii_digit()) && one.len() < 10 => {
            Ok(Framing::Length(one.parse().unwrap_or(usize::MAX)))
        }
        _ => Err(format!("Content-Length {lengths:?}")),
    }
}

/// Reads `n` body bytes (at most [`READ_MAX`]); `Err(partial)` when the stream ends first.
pub async fn read_exact_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    n: usize,
) -> Result<Vec<u8>, Vec<u8>> {
    if n > READ_MAX {
        return Err(Vec::new());
    }
    while buf.len() < n {
        if !read_more(stream, buf).await {
            return Err(std::mem::take(buf));
        }
    }
    Ok(buf.drain(..n).collect())
}

/// Decodes a chunked body of at most `max` bytes strictly (hex sizes of at most 8 digits,
/// CRLF after each chunk's data, trailer fields then a blank line); `Err(partial)` on
/// anything malformed or a stream that ends first.
pub async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<Vec<u8>, Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(e) = find(buf, b"\r\n") {
                break e;
            }
            if buf.len() > 1024 || !read_more(stream, buf).await {
                return Err(body);
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        buf.drain(..line_end + 2);
        let size_text = line.split(';').next().unwrap_or_default();
        if size_text.is_empty()
            || size_text.len() > 8
            || !size_text.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(body);
        }
        let size = usize::from_str_radix(size_text, 16).map_err(|_| body.clone())?;
        if size == 0 {
            // Trailer fields, then the blank line.
            for _ in 0..100 {
                let end = loop {
                    if let Some(e) = find(buf, b"\r\n") {
                        break e;
                    }
                    if !read_more(stream, buf).await {
                        return Err(body);
                    }
                };
                buf.drain(..end + 2);
                if end == 0 {
                    return Ok(body);
                }
            }
            return Err(body);
        }
        if body.len() + size > max {
            return Err(body);
        }
        while buf.len() < size + 2 {
            if !read_more(stream, buf).await {
                return Err(body);
            }
        }
        if &buf[size..size + 2] != b"\r\n" {
            return Err(body);
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}
