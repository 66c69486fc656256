//! Plain-HTTP forwarding: an absolute-form request goes to its origin over the pooled client,
//! and the origin's response comes back, both bodies streaming.
//!
//! Header hygiene follows RFC 9110 §7.6: the hop-by-hop fields (`Connection` and every field
//! it names, `Keep-Alive`, `Proxy-Connection`, `Proxy-Authorization`, `Proxy-Authenticate`,
//! `TE`, `Upgrade`, and `Transfer-Encoding`, which hyper re-derives) are removed in both
//! directions; `Trailer` is end-to-end and stays. `Host` is set from the request target, and
//! `Via` names this proxy. `Max-Forwards` is honoured for TRACE and OPTIONS.

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpInfo;

use std::net::SocketAddr;

use crate::core::error::{EdgeError, ErrorKind};
use crate::core::policy::{Decision, Facts, Kind};
use crate::core::target::{Host, Target};
use crate::egress::dial::{self, is_local_address, DialError};
use crate::proxy::body::{DownBody, UpBody, Upload};
use crate::proxy::service::Exchange;

/// The methods the proxy forwards, as listed in its answer to `OPTIONS` with `Max-Forwards: 0`.
const ALLOW: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH, CONNECT";

/// Forwards an absolute-form request to `target`.
pub async fn forward(
    ex: &mut Exchange,
    req: Request<Incoming>,
    target: Target,
) -> Result<Response<DownBody>, EdgeError> {
    let settings = ex.settings.clone();
    let policy = &settings.policy;
    let user = ex.user.clone();
    let facts = Facts {
        client: ex.client.ip(),
        user: user.as_deref(),
        method: req.method().as_str(),
        kind: Kind::Http,
        host: &target.host,
        port: target.port,
    };
    let parents = ex.shared.parents.load_full();
    let via_parent = parents
        .as_ref()
        .is_some_and(|parents| parents.serves(&target.host));
    // Through a parent, which resolves names itself, the address guards can only see targets
    // written as addresses.
    if let (true, Host::Ip(ip)) = (via_parent, &target.host) {
        let addr = SocketAddr::new(*ip, target.port);
        policy.check_address(&target.host.to_string(), addr, is_local_address)?;
    }
    // When a rule needs the address, resolve and choose here, and send the pooled client
    // to that address so it cannot pick another (a parent gets the name).
    let mut dial_to = None;
    match policy.decide(&facts, None) {
        Decision::Allow(decider) => ex.record.allow(decider),
        Decision::Deny(denial) => return Err(denial.into()),
        Decision::NeedAddress => {
            let (addr, decider) =
                // Boxed: resolving and racing addresses is a large future that most
                // requests never build, and every forward future would carry its size.
                Box::pin(dial::choose(policy, &target, &facts, settings.timeouts.connect))
                    .await?;
            if let Some(decider) = decider {
                ex.record.allow(decider);
            }
            dial_to = (!via_parent).then_some(addr);
        }
    }

    let (mut parts, body) = req.into_parts();
    if let Some(reply) = max_forwards(
        &parts.method,
        &mut parts.headers,
        &parts.uri,
        parts.version,
        &ex.shared.via,
    ) {
        ex.record.answered(reply.status().as_u16());
        return Ok(reply);
    }

    let had_transfer_encoding = parts.headers.contains_key(header::TRANSFER_ENCODING);
    strip_hop_by_hop(&mut parts.headers);
    if had_transfer_encoding {
        // A chunked body's length is hyper's to state; a stray Content-Length must not travel.
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let host_text = target.host_header();
    let host = HeaderValue::from_str(&host_text)
        .map_err(|_| EdgeError::new(ErrorKind::Client, "the host cannot be sent"))?;
    parts.headers.insert(header::HOST, host);
    append_via(&mut parts.headers, parts.version, &ex.shared.via);
    // The pooled client dials the URI's authority: `dial_to` when given, else the target
    // (its text made once, for the Host header and here).
    let authority = match dial_to {
        Some(addr) => addr.to_string(),
        None if target.port == 80 => format!("{host_text}:80"),
        None => host_text,
    };
    parts.uri = upstream_uri(authority, &parts.uri)?;
    parts.version = Version::HTTP_11;

    let timeouts = &settings.timeouts;
    let body = UpBody::new(
        body,
        ex.record.traffic().clone(),
        timeouts.request_body,
        ex.body.take(),
    );
    // Whatever fails from here on leaves the rest of the request body unread.
    let upload = body.upload();
    let sent = if via_parent {
        Box::pin(through_parent(ex, parts, body, &target)).await
    } else {
        let upstream = Request::from_parts(parts, body);
        within(
            timeouts.response,
            &target,
            &upload,
            ex.shared.client.request(upstream),
        )
        .await
        .and_then(|answer| answer.map_err(|e| upstream_error(&target, &e)))
    };
    let response = sent.inspect_err(|_| upload.give_up())?;

    if let Some(info) = response.extensions().get::<HttpInfo>() {
        ex.record.upstream(info.remote_addr());
    }
    check_answer(&response, &target).inspect_err(|_| upload.give_up())?;
    ex.record.answered(response.status().as_u16());
    let (mut parts, body) = response.into_parts();
    let had_transfer_encoding = parts.headers.contains_key(header::TRANSFER_ENCODING);
    strip_hop_by_hop(&mut parts.headers);
    if had_transfer_encoding {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    append_via(&mut parts.headers, parts.version, &ex.shared.via);
    parts.version = Version::HTTP_11;
    parts.extensions.clear();
    Ok(Response::from_parts(
        parts,
        DownBody::origin(body, timeouts.response),
    ))
}

/// Waits for an answer; the clock (`timeouts.response`) starts once the request body has
/// been written out to the origin's connection, so a long upload is timed by
/// `timeouts.request_body` alone (and an origin that stops taking it, by the connection's own
/// write timeout: see [`dial::OriginIo`]).
async fn within<T>(
    limit: std::time::Duration,
    target: &Target,
    upload: &Upload,
    answer: impl std::future::Future<Output = T>,
) -> Result<T, EdgeError> {
    let clock = async {
        upload.sent().await;
        tokio::time::sleep(limit).await;
    };
    tokio::select! {
        answer = answer => Ok(answer),
        _ = clock => Err(EdgeError::new(
            ErrorKind::Timeout,
            format!(
                "the origin {target} did not answer within {} (timeouts.response)",
                humantime::format_duration(limit)
            ),
        )),
    }
}

/// Refuses answers the proxy cannot pass on: a switch of protocols (`101`) that nobody asked
/// for (the proxy never forwards `Upgrade`), and a transfer coding other than `chunked`, which
/// the origin may only use when the request's `TE` lists it (RFC 9110 §10.1.4; the proxy
/// never forwards `TE`), and which an HTTP/1.0 client could not be told about.
fn check_answer(response: &Response<Incoming>, target: &Target) -> Result<(), EdgeError> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err(EdgeError::new(
            ErrorKind::OriginProtocol,
            format!(
                "the origin {target} switched protocols (101), which the request did not ask for"
            ),
        ));
    }
    if let Some(codings) = transfer_codings_besides_chunked(response.headers()) {
        return Err(EdgeError::new(
            ErrorKind::OriginProtocol,
            format!(
                "the origin {target} used the transfer coding {codings}, which the request did not accept"
            ),
        ));
    }
    Ok(())
}

/// Sends a request through the parent proxies, in order. A parent that cannot be reached is
/// marked down and, when the request has no body (it can be sent again), the next is tried.
async fn through_parent(
    ex: &mut Exchange,
    parts: http::request::Parts,
    body: UpBody,
    target: &Target,
) -> Result<Response<Incoming>, EdgeError> {
    let shared = ex.shared.clone();
    let parents = shared.parents.load_full();
    let Some(parents) = parents.as_ref() else {
        return Err(EdgeError::new(
            ErrorKind::Parent,
            "no parent proxy is configured",
        ));
    };
    let limit = ex.settings.timeouts.response;
    let resendable = http_body::Body::is_end_stream(&body);
    let mut body = Some(body);
    let mut last = None;
    for route in parents.in_order() {
        let mut head = http::request::Parts::clone(&parts);
        head.extensions = http::Extensions::new();
        if let Some(auth) = &route.parent.authorization {
            head.headers
                .insert(header::PROXY_AUTHORIZATION, auth.clone());
        }
        let attempt_body = match body.take() {
            Some(body) => body,
            None if resendable => UpBody::empty(ex.record.traffic().clone()),
            None => break,
        };
        ex.record.parent(&route.parent.name);
        let upload = attempt_body.upload();
        let sent = within(
            limit,
            target,
            &upload,
            route
                .client
                .request(Request::from_parts(head, attempt_body)),
        )
        .await?;
        match sent {
            Ok(response) if response.status() == StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
                parents.mark_up(route);
                return Err(EdgeError::new(
                    ErrorKind::Parent,
                    format!(
                        "the parent proxy {} wants credentials (407): check upstream.proxy",
                        route.parent.name
                    ),
                ));
            }
            Ok(response) => {
                parents.mark_up(route);
                return Ok(response);
            }
            Err(e) => {
                let unreachable = e.is_connect();
                let error = upstream_error(target, &e);
                if !unreachable {
                    return Err(error);
                }
                parents.mark_down(route);
                last = Some(error);
                if !resendable {
                    break;
                }
            }
        }
    }
    Err(last
        .unwrap_or_else(|| EdgeError::new(ErrorKind::Parent, "no parent proxy could be reached")))
}

/// The transfer codings of a message other than `chunked`, as text, if any.
fn transfer_codings_besides_chunked(headers: &HeaderMap) -> Option<String> {
    let codings: Vec<&str> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("(not text)"))
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("chunked"))
        .collect();
    (!codings.is_empty()).then(|| codings.join(", "))
}

/// The fields that are always hop-by-hop (lower case); `Connection` can name more.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` (any case) is one of [`HOP_BY_HOP`].
fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|field| field.eq_ignore_ascii_case(name))
}

/// Removes the hop-by-hop fields, including every field that `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One look at each name finds the fields present (usually `Connection` alone, or none):
    // removing just those is cheaper than a hashed removal for each of the eight.
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n.as_str()))
        .cloned()
        .collect();
    if present.is_empty() {
        return;
    }
    // Options naming the fields above (`keep-alive`, usually) are already among those present.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| !is_hop_by_hop(name))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in named.into_iter().chain(present) {
        headers.remove(name);
    }
}

/// This proxy's name in `Via` (RFC 9110 §7.6.3), with the field values for a message that
/// carries no `Via` yet made once, one for each protocol version received.
pub struct Via {
    name: String,
    alone: [HeaderValue; 3],
}

impl Via {
    /// `name` is a token (letters, digits, `-`).
    pub fn new(name: String) -> Via {
        let alone = ["1.0", "1.1", "2"].map(|version| {
            HeaderValue::from_str(&format!("{version} {name}"))
                .unwrap_or(HeaderValue::from_static("1.1 portcullis"))
        });
        Via { name, alone }
    }

    /// The name alone.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Appends this proxy to `Via`, with the protocol version it received.
pub fn append_via(headers: &mut HeaderMap, received: Version, via: &Via) {
    let ours = &via.alone[match received {
        Version::HTTP_10 => 0,
        Version::HTTP_2 => 2,
        _ => 1,
    }];
    let existing = headers.get(header::VIA).and_then(|v| v.to_str().ok());
    let Some(existing) = existing else {
        headers.insert(header::VIA, ours.clone());
        return;
    };
    let mut value = Vec::with_capacity(existing.len() + 2 + ours.len());
    value.extend_from_slice(existing.as_bytes());
    value.extend_from_slice(b", ");
    value.extend_from_slice(ours.as_bytes());
    if let Ok(value) = HeaderValue::from_bytes(&value) {
        headers.insert(header::VIA, value);
    }
}

/// The absolute URI the pooled client dials (`authority`) and rewrites to origin form.
fn upstream_uri(authority: String, original: &Uri) -> Result<Uri, EdgeError> {
    let unusable = || EdgeError::new(ErrorKind::Client, "the request target cannot be forwarded");
    // The path and query are kept as they came (a shared buffer, not a copy).
    let path = match original.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => pq.clone(),
        Some(pq) if pq.as_str().starts_with('?') => {
            http::uri::PathAndQuery::try_from(format!("/{}", pq.as_str()))
                .map_err(|_| unusable())?
        }
        _ => http::uri::PathAndQuery::from_static("/"),
    };
    Uri::builder()
        .scheme(http::uri::Scheme::HTTP)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| unusable())
}

/// Honours `Max-Forwards` on TRACE and OPTIONS (RFC 9110 §7.6.2): at zero the proxy answers
/// itself; otherwise the value is decremented on the way.
fn max_forwards(
    method: &Method,
    headers: &mut HeaderMap,
    uri: &Uri,
    version: Version,
    via: &Via,
) -> Option<Response<DownBody>> {
    if method != Method::TRACE && method != Method::OPTIONS {
        return None;
    }
    let value: u64 = headers
        .get(header::MAX_FORWARDS)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if value > 0 {
        headers.insert(header::MAX_FORWARDS, HeaderValue::from(value - 1));
        return None;
    }
    let mut response = if method == Method::OPTIONS {
        let mut r = Response::new(DownBody::empty());
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(ALLOW));
        r
    } else {
        let mut r = Response::new(DownBody::text(trace_echo(method, uri, version, headers)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("message/http"),
        );
        r
    };
    append_via(response.headers_mut(), Version::HTTP_11, via);
    Some(response)
}

/// The request as received, for TRACE; credentials and cookies are left out.
fn trace_echo(method: &Method, uri: &Uri, version: Version, headers: &HeaderMap) -> bytes::Bytes {
    let mut out = BytesMut::new();
    out.put_slice(format!("{method} {uri} {version:?}\r\n").as_bytes());
    for (name, value) in headers {
        if name == header::PROXY_AUTHORIZATION
            || name == header::AUTHORIZATION
            || name == header::COOKIE
        {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

/// The write timeout of [`dial::OriginIo`], wherever it sits in `e`'s chain of causes (an
/// I/O error under hyper's, under hyper-util's).
fn stalled_write<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a dial::StalledWrite> {
    let mut source = Some(e);
    while let Some(err) = source {
        let stalled = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<dial::StalledWrite>());
        if stalled.is_some() {
            return stalled;
        }
        source = err.source();
    }
    None
}

/// Maps a failure of the pooled client to what the client is told.
fn upstream_error(target: &Target, e: &hyper_util::client::legacy::Error) -> EdgeError {
    if let Some(stalled) = stalled_write(e) {
        return EdgeError::new(
            ErrorKind::Timeout,
            format!(
                "the origin {target} stopped taking the request: a write to it waited {} \
                 (3 × timeouts.response)",
                humantime::format_duration(stalled.0)
            ),
        );
    }
    let mut source: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(dial) = err.downcast_ref::<DialError>() {
            return EdgeError::from(dial);
        }
        if let Some(parent) = err.downcast_ref::<crate::egress::parent::ParentError>() {
            return EdgeError::new(ErrorKind::Parent, parent.to_string());
        }

        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_user() {
                // The request body the client sent broke off, stalled or was malformed.
                let cause = h.source();
                let stalled = cause
                    .and_then(|c| c.downcast_ref::<std::io::Error>())
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut);
                let cause = cause
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| h.to_string());
                let kind = if stalled {
                    ErrorKind::ClientTimeout
                } else {
                    ErrorKind::Client
                };
                return EdgeError::new(
                    kind,
                    format!("the request body could not be read: {cause}"),
                );
            }
            let what = if h.is_incomplete_message() {
                "closed the connection before a complete response".to_owned()
            } else if h.is_parse_too_large() {
                format!(
                    "sent a response head over the proxy's bounds ({} \
                     fields, {} KiB)",
                    dial::RESPONSE_MAX_HEADERS,
                    dial::RESPONSE_MAX_HEAD / 1024
                )
            } else if h.is_parse() {
                format!("sent a response that is not valid HTTP ({h})")
            } else {
                format!("failed: {h}")
            };
            return EdgeError::new(
                ErrorKind::OriginProtocol,
                format!("the origin {target} {what}"),
            );
        }
        source = err.source();
    }
    EdgeError::new(
        ErrorKind::OriginProtocol,
        format!("the request to {target} failed: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_fields_go_and_end_to_end_fields_stay() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("proxy-authenticate", "Basic"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("trailer", "x-checksum"),
            ("accept", "*/*"),
            ("content-length", "5"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["accept", "content-length", "trailer"]);
    }

    #[test]
    fn each_hop_by_hop_field_goes_when_alone() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "proxy-authenticate",
            "te",
            "transfer-encoding",
            "upgrade",
        ] {
            let mut h = headers(&[("accept", "*/*"), (name, "x"), ("host", "a.b")]);
            strip_hop_by_hop(&mut h);
            let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(left, vec!["accept", "host"], "{name}");
        }
    }

    #[test]
    fn via_is_appended() {
        let mut h = HeaderMap::new();
        append_via(&mut h, Version::HTTP_10, &Via::new("portcullis-1".into()));
        assert_eq!(h[header::VIA], "1.0 portcullis-1");
        append_via(&mut h, Version::HTTP_11, &Via::new("portcullis-2".into()));
        assert_eq!(h[header::VIA], "1.0 portcullis-1, 1.1 portcullis-2");
        append_via(&mut h, Version::HTTP_2, &Via::new("portcullis-3".into()));
        assert_eq!(
            h[header::VIA],
            "1.0 portcullis-1, 1.1 portcullis-2, 2 portcullis-3"
        );
        let mut h = HeaderMap::new();
        append_via(&mut h, Version::HTTP_2, &Via::new("p".into()));
        assert_eq!(h[header::VIA], "2 p");
    }

    #[test]
    fn max_forwards_is_honoured_for_trace_and_options() {
        let uri: Uri = "http://h/x".parse().unwrap();
        let p = &Via::new("p".into());
        let mut h = headers(&[("max-forwards", "2")]);
        assert!(max_forwards(&Method::TRACE, &mut h, &uri, Version::HTTP_11, p).is_none());
        assert_eq!(h[header::MAX_FORWARDS], "1");
        let mut h = headers(&[("max-forwards", "0"), ("cookie", "s=1"), ("x-a", "b")]);
        let r = max_forwards(&Method::TRACE, &mut h, &uri, Version::HTTP_11, p).unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "message/http");
        assert_eq!(r.headers()[header::VIA], "1.1 p");
        let r = max_forwards(&Method::OPTIONS, &mut h, &uri, Version::HTTP_11, p).unwrap();
        assert!(r.headers()[header::ALLOW]
            .to_str()
            .unwrap()
            .contains("CONNECT"));
        let mut h = headers(&[("max-forwards", "0")]);
        assert!(max_forwards(&Method::GET, &mut h, &uri, Version::HTTP_11, p).is_none());
        let echo = trace_echo(
            &Method::TRACE,
            &uri,
            Version::HTTP_11,
            &headers(&[("cookie", "s"), ("x-a", "b")]),
        );
        assert_eq!(&echo[..], b"TRACE http://h/x HTTP/1.1\r\nx-a: b\r\n\r\n");
    }

    #[test]
    fn upstream_uri_keeps_path_and_query() {
        let at = |text: &str| upstream_uri("example.com:8080".into(), &text.parse().unwrap());
        assert_eq!(
            at("http://example.com:8080/a/b?c=d").unwrap(),
            "http://example.com:8080/a/b?c=d"
        );
        assert_eq!(
            at("http://example.com:8080").unwrap(),
            "http://example.com:8080/"
        );
        assert_eq!(
            at("http://example.com:8080?q").unwrap(),
            "http://example.com:8080/?q"
        );
        let uri = upstream_uri(
            "10.0.0.5:8080".into(),
            &"http://example.com/x".parse().unwrap(),
        );
        assert_eq!(uri.unwrap(), "http://10.0.0.5:8080/x");
    }
}
