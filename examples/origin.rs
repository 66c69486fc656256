//! A tiny HTTP/1.1 origin server for trying Portcullis by hand.
//!
//! It answers every request with a short plain-text page that echoes what it received: the
//! method, the request target, the version and every request header, and the size of the
//! request body. Fetched through the proxy, the page shows the `Via` header the proxy added
//! and that the hop-by-hop headers (`Connection`, `Proxy-Connection`, `Proxy-Authorization`,
//! `Keep-Alive`, `TE`, `Upgrade`, and anything `Connection` names) did not arrive.
//!
//! The answer also carries two hop-by-hop headers of its own, `Connection: x-origin-hop` and
//! `X-Origin-Hop: 1`: fetched directly they are there, fetched through the proxy they are gone.
//!
//! It also speaks plain HTTP inside a CONNECT tunnel, so `examples/fetch.rs --connect` can use
//! it as the far end of a tunnel.
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
//! 3. In a second shell, start this origin:
//!    `cargo run --example origin -- --listen 127.0.0.1:8081`
//! 4. In a third shell, fetch a page through the proxy, with curl or with the fetch example:
//!
//!    ```sh
//!    curl -x http://127.0.0.1:3128 -H 'Connection: x-secret' -H 'X-Secret: 1' \
//!         http://127.0.0.1:8081/hello
//!    cargo run --example fetch -- --proxy 127.0.0.1:3128 http://127.0.0.1:8081/hello
//!    cargo run --example fetch -- --proxy 127.0.0.1:3128 --connect 127.0.0.1:8081
//!    ```
//!
//! 5. Compare with a direct fetch, which has no `Via`: `curl -i http://127.0.0.1:8081/hello`
//!
//! Stop the origin and the proxy with Ctrl-C. `RUST_LOG=debug` shows connection errors too.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};
use tracing_subscriber::EnvFilter;

/// A tiny HTTP/1.1 origin that echoes each request it receives.
#[derive(Debug, Parser)]
struct Args {
    /// The address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
}

/// The longest a client may take to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    info!(%local, "origin listening; Ctrl-C stops it");

    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, a connection reset before accept …: not fatal.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, peer, local));
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    info!("stopped");
    Ok(())
}

/// Answers one request with a page that echoes it.
async fn answer(
    req: Request<Incoming>,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, mut body) = req.into_parts();

    // Count the body as it streams in; nothing is kept.
    let mut body_bytes: u64 = 0;
    let mut body_error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body_bytes += data.len() as u64;
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }

    let mut text = format!(
        "origin {local} received from {peer}:\n\n{} {} {:?}\n",
        parts.method, parts.uri, parts.version
    );
    for (name, value) in &parts.headers {
        text.push_str(name.as_str());
        text.push_str(": ");
        text.push_str(&String::from_utf8_lossy(value.as_bytes()));
        text.push('\n');
    }
    text.push_str(&format!("\nbody: {body_bytes} bytes\n"));
    if let Some(e) = &body_error {
        text.push_str(&format!("body error: {e}\n"));
    }

    info!(
        %peer,
        method = %parts.method,
        uri = %parts.uri,
        via = parts
            .headers
            .get(header::VIA)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        body_bytes,
        "request"
    );

    let mut response = Response::new(Full::new(Bytes::from(text)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // Hop-by-hop headers of the origin's own: a proxy must not pass them on.
    headers.insert(header::CONNECTION, HeaderValue::from_static("x-origin-hop"));
    headers.insert(
        HeaderName::from_static("x-origin-hop"),
        HeaderValue::from_static("1"),
    );
    Ok(response)
}
