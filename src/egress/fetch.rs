//! Fetching a file the configuration names by URL (a rule's `hosts_url`): one GET, over
//! `http://` or `https://`, directly or through the first parent proxy of `[upstream]` that
//! answers (by `CONNECT`, for both schemes), bounded in time and size.
//!
//! `https://` is verified against the Mozilla roots compiled into the binary
//! (`webpki-roots`), so the answer does not depend on the host's certificate store. A
//! conditional GET (`If-None-Match`, `If-Modified-Since`) lets an unchanged list cost one
//! round trip. Redirects are not followed: a list moved elsewhere is an error naming the new
//! location, for the owner to write into the configuration.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::settings::Parent;
use crate::core::target::{parse_authority, Target};
use crate::egress::dial::{race, Outbound};

/// What a fetch brought.
#[derive(Debug)]
pub enum Fetched {
    /// A new copy, and its validators (`ETag`, `Last-Modified`).
    Body {
        /// The list's text.
        text: String,
        /// Its `ETag`.
        etag: Option<String>,
        /// Its `Last-Modified`.
        last_modified: Option<String>,
    },
    /// The copy held is still current (304).
    NotModified,
}

/// The limits of one fetch.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The whole exchange, from dialing to the body's last byte.
    pub timeout: Duration,
    /// The most bytes of body accepted.
    pub max_bytes: usize,
}

/// GETs `url`, with the validators of the copy held; the error says what went wrong, in
/// words for a warning.
pub async fn fetch(
    url: &str,
    validators: (Option<&str>, Option<&str>),
    out: &Outbound,
    parents: &[Parent],
    bounds: Bounds,
) -> Result<Fetched, String> {
    tokio::time::timeout(
        bounds.timeout,
        fetch_unbounded(url, validators, out, parents, bounds),
    )
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "no complete answer within {}",
            humantime::format_duration(bounds.timeout)
        ))
    })
}

async fn fetch_unbounded(
    url: &str,
    (etag, modified): (Option<&str>, Option<&str>),
    out: &Outbound,
    parents: &[Parent],
    bounds: Bounds,
) -> Result<Fetched, String> {
    let uri: Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("only http:// and https:// can be fetched".into()),
    };
    let authority = uri.authority().ok_or("the URL has no host")?.as_str();
    let target = parse_authority(authority, Some(if https { 443 } else { 80 }))
        .map_err(|e| format!("bad host in the URL: {e}"))?;
    let stream = connect(&target, out, parents).await?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = Request::get(path)
        .header(header::HOST, authority)
        .header(
            header::USER_AGENT,
            concat!("portcullis/", env!("CARGO_PKG_VERSION")),
        )
        .header(header::ACCEPT, "text/plain, */*");
    if let Some(etag) = etag {
        request = request.header(header::IF_NONE_MATCH, etag);
    }
    if let Some(modified) = modified {
        request = request.header(header::IF_MODIFIED_SINCE, modified);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    if https {
        let name = rustls::pki_types::ServerName::try_from(target.host.to_string())
            .map_err(|e| format!("not a name for TLS: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config())
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS with {target} failed: {e}"))?;
        exchange(tls, request, bounds.max_bytes).await
    } else {
        exchange(stream, request, bounds.max_bytes).await
    }
}

/// A connection to `target`: through the first parent that answers when `parents` names
/// any, else directly (its addresses raced; the destination guards do not apply: the owner
/// named the URL).
async fn connect(
    target: &Target,
    out: &Outbound,
    parents: &[Parent],
) -> Result<tokio::net::TcpStream, String> {
    if parents.is_empty() {
        let allow_all = |_| Ok(None);
        return race(out, &target.host, target.port, &allow_all, &mut None)
            .await
            .map(|c| c.stream)
            .map_err(|e| e.to_string());
    }
    let mut last = String::new();
    for parent in parents {
        match crate::egress::parent::connect_through(parent, target, out).await {
            Ok((stream, _)) => return Ok(stream),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

async fn exchange<I>(
    io: I,
    request: Request<Empty<Bytes>>,
    max_bytes: usize,
) -> Result<Fetched, String>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let status = response.status();
    if status == StatusCode::NOT_MODIFIED {
        return Ok(Fetched::NotModified);
    }
    if !status.is_success() {
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(|l| format!(" (to {l}: redirects are not followed)"))
            .unwrap_or_default();
        return Err(format!("the server answered {status}{location}"));
    }
    let text_header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let (etag, last_modified) = (
        text_header(header::ETAG),
        text_header(header::LAST_MODIFIED),
    );
    let body = Limited::new(response.into_body(), max_bytes)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                format!("the list is larger than {max_bytes} bytes")
            } else {
                format!("the body broke off: {e}")
            }
        })?
        .to_bytes();
    let text = String::from_utf8(body.to_vec()).map_err(|_| "the list is not UTF-8 text")?;
    Ok(Fetched::Body {
        text,
        etag,
        last_modified,
    })
}

/// rustls with the ring provider and the Mozilla roots, built once.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring offers TLS 1.2 and 1.3")
                .with_root_certificates(roots)
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}
