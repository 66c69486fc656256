//! A client that fetches a URL through Portcullis and prints what comes back.
//!
//! Two modes:
//!
//! - `fetch --proxy ADDR URL` sends `GET URL HTTP/1.1` in absolute form to the proxy, the way
//!   a browser sends a plain `http://` request to its proxy, and prints the status line, the
//!   headers and the body of the answer.
//! - `fetch --proxy ADDR --connect HOST:PORT` sends `CONNECT HOST:PORT HTTP/1.1`, the way a
//!   browser opens an HTTPS tunnel, and prints the proxy's answer. If the answer is `200`, it
//!   sends `GET / HTTP/1.1` through the tunnel and prints what comes back. The request inside
//!   the tunnel is plain HTTP (no TLS), so the far end must speak plain HTTP, as
//!   `examples/origin.rs` does.
//!
//! Both use one plain `TcpStream` to the proxy and hyper's low-level client
//! (`hyper::client::conn::http1::handshake`), so what goes on the wire is exactly one request.
//! The exit status is 0 when the final answer is a 2xx, 1 otherwise.
//!
//! # To try this example
//!
//! The proxy refuses loopback destinations by default, so it needs a configuration that
//! allows them:
//!
//! 1. Write a configuration for the proxy:
//!
//!    ```sh
//!    cat > /tmp/portcullis-try.toml <<'EOF'
//!    listen = ["127.0.0.1:3128"]
//!    [ports]
//!    http = ["http", "1025-65535"]   # 8081 is in 1025-65535
//!    connect = ["https", 8081]       # lets CONNECT reach the origin below
//!    [destinations]
//!    allow_loopback = true
//!    EOF
//!    ```
//!
//! 2. Start the proxy: `cargo run --release -- --config /tmp/portcullis-try.toml`
//! 3. In a second shell, start the example origin:
//!    `cargo run --example origin -- --listen 127.0.0.1:8081`
//! 4. In a third shell, fetch through the proxy:
//!
//!    ```sh
//!    cargo run --example fetch -- --proxy 127.0.0.1:3128 http://127.0.0.1:8081/hello
//!    cargo run --example fetch -- --proxy 127.0.0.1:3128 --connect 127.0.0.1:8081
//!    ```
//!
//! 5. See a refusal: `cargo run --example fetch -- --proxy 127.0.0.1:3128 --connect 127.0.0.1:25`
//!    prints `403 Forbidden` and the reason, `port 25 (smtp) is not allowed for CONNECT
//!    (decided by ports.connect)`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Fetch a URL through an HTTP proxy, or open a CONNECT tunnel through it.
#[derive(Debug, Parser)]
struct Args {
    /// The proxy, as HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:3128")]
    proxy: String,

    /// Open a CONNECT tunnel to HOST:PORT and send `GET /` through it.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "url")]
    connect: Option<String>,

    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    timeout: u64,

    /// The http:// URL to fetch through the proxy.
    #[arg(required_unless_present = "connect")]
    url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let limit = Duration::from_secs(args.timeout);
    let work = async {
        match (&args.connect, &args.url) {
            (Some(authority), _) => tunnel(&args.proxy, authority).await,
            (None, Some(url)) => fetch(&args.proxy, url).await,
            (None, None) => bail!("give a URL or --connect HOST:PORT"),
        }
    };
    let success = tokio::time::timeout(limit, work)
        .await
        .with_context(|| format!("no complete answer within {}s", args.timeout))??;
    Ok(if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Sends `GET url` in absolute form to the proxy and prints the answer.
async fn fetch(proxy: &str, url: &str) -> anyhow::Result<bool> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    let authority = uri
        .authority()
        .with_context(|| format!("{url:?} has no host; write it as http://host[:port]/path"))?;
    let host = HeaderValue::from_str(authority.as_str()).context("the host cannot be sent")?;

    let stream = connect(proxy).await?;
    let mut sender = handshake(stream, false).await?;
    // hyper's low-level client writes the request target as given: here the absolute form.
    let request = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(header::HOST, host)
        .header(header::USER_AGENT, "portcullis-example-fetch")
        .body(Empty::<Bytes>::new())?;
    eprintln!("> GET {url} HTTP/1.1 (sent to the proxy at {proxy})");
    let response = sender.send_request(request).await?;
    let status = response.status();
    print_response(response).await?;
    Ok(status.is_success())
}

/// Sends `CONNECT authority`, prints the proxy's answer, and on 200 sends `GET /` through the
/// tunnel and prints that answer too.
async fn tunnel(proxy: &str, authority: &str) -> anyhow::Result<bool> {
    let uri: Uri = authority
        .parse()
        .with_context(|| format!("{authority:?} is not HOST:PORT"))?;
    if uri.scheme().is_some() || uri.port().is_none() {
        bail!("--connect takes HOST:PORT, such as 127.0.0.1:8081");
    }
    let host = HeaderValue::from_str(authority).context("the host cannot be sent")?;

    let stream = connect(proxy).await?;
    // Upgrades on: after a 200 the connection becomes the tunnel.
    let mut sender = handshake(stream, true).await?;
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri(uri)
        .header(header::HOST, host.clone())
        .body(Empty::<Bytes>::new())?;
    eprintln!("> CONNECT {authority} HTTP/1.1 (sent to the proxy at {proxy})");
    let response = sender.send_request(request).await?;
    if !response.status().is_success() {
        // A refusal: the body says why.
        print_response(response).await?;
        return Ok(false);
    }
    print_head(&response);
    println!();

    let upgraded = hyper::upgrade::on(response)
        .await
        .context("the proxy said 200 but the connection could not become a tunnel")?;
    // `Upgraded` already speaks hyper's I/O traits: no TokioIo wrapper needed.
    let mut inner = handshake(upgraded, false).await?;
    let request = Request::builder()
        .method(Method::GET)
        .uri("/")
        .header(header::HOST, host)
        .header(header::USER_AGENT, "portcullis-example-fetch")
        .body(Empty::<Bytes>::new())?;
    eprintln!("> GET / HTTP/1.1 (sent through the tunnel to {authority})");
    let response = inner.send_request(request).await?;
    let status = response.status();
    print_response(response).await?;
    Ok(status.is_success())
}

/// Opens the TCP connection to the proxy.
async fn connect(proxy: &str) -> anyhow::Result<TokioIo<TcpStream>> {
    let stream = TcpStream::connect(proxy)
        .await
        .with_context(|| format!("cannot connect to the proxy at {proxy}"))?;
    Ok(TokioIo::new(stream))
}

/// HTTP/1.1 handshake over `io`; the connection is driven by a task of its own.
async fn handshake<T>(io: T, upgrades: bool) -> anyhow::Result<http1::SendRequest<Empty<Bytes>>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(io).await?;
    tokio::spawn(async move {
        let result = if upgrades {
            conn.with_upgrades().await
        } else {
            conn.await
        };
        if let Err(e) = result {
            eprintln!("connection error: {e}");
        }
    });
    Ok(sender)
}

fn print_head(response: &Response<Incoming>) {
    println!("{:?} {}", response.version(), response.status());
    for (name, value) in response.headers() {
        println!("{}: {}", name, String::from_utf8_lossy(value.as_bytes()));
    }
}

/// Prints the status line, the headers, a blank line and the body as it streams in.
async fn print_response(response: Response<Incoming>) -> anyhow::Result<()> {
    print_head(&response);
    println!();
    let mut body = response.into_body();
    let mut stdout = std::io::stdout();
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            stdout.write_all(data)?;
        }
    }
    stdout.flush()?;
    Ok(())
}
