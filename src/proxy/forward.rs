//! Plain-HTTP forwarding: an absolute-form request goes to its origin over the pooled client,
//! and the origin's response comes back, both bodies streaming.
//!
//! Header hygiene follows RFC 9110 §7.6: the hop-by-hop fields (`Connection` and every field
//! it names, `Keep-Alive`, `Proxy-Connection`, `Proxy-Authorization`, `Proxy-Authenticate`,
//! `TE`, `Upgrade`, and `Transfer-Encoding`, which hyper re-derives) are removed in both
//! directions; `Trailer` is end-to-end and stays. `Host` is set from the request target, and
//! `Via` names this proxy. `Max-Forwards` is honoured for TRACE and OPTIONS. An `OPTIONS`
//! whose absolute-form target has an empty path asks about the origin as a whole and goes to
//! it as `OPTIONS *` (RFC 9112 §3.2.4).

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpInfo;

use std::sync::Arc;

use crate::core::error::{EdgeError, ErrorKind};
use crate::core::headers::{
    append_via, strip_hop_by_hop, trace_echo, transfer_codings_besides_chunked, upstream_uri, Via,
};
use crate::core::plan::{Go, Route};
use crate::core::policy::{Facts, Kind};
use crate::core::target::Target;
use crate::egress::dial::{self, DialError, DialInfo, PooledDialError};
use crate::egress::parent::Parents;
use crate::observe::access::PendingRecord;
use crate::proxy::body::{DownBody, UpBody, Upload};
use crate::proxy::exchange::Exchange;
use crate::proxy::shaper::flow_of;

/// The methods the proxy forwards, as listed in its answer to `OPTIONS` with `Max-Forwards: 0`.
const ALLOW: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH, CONNECT";

/// Forwards an absolute-form request to `target`, allowed by the plan as `go`; `parents` are
/// the parent proxies when `go` routes through them. `asterisk`: the request is an `OPTIONS`
/// whose target had an empty path and no query (`http://host:port`, which `http::Uri` reads
/// as `http://host:port/`), sent to the origin as `OPTIONS *`, and to a parent as it came.
pub async fn forward(
    ex: &mut Exchange,
    req: Request<Incoming>,
    target: Target,
    go: Go,
    parents: Option<Arc<Parents<UpBody>>>,
    asterisk: bool,
) -> Result<Response<DownBody>, EdgeError> {
    let settings = ex.settings.clone();
    // When a rule needs the address, the rules see each address before it is used: a
    // direct request races them here, every one checked, over a connection of its own (the
    // pooled client would resolve again and dial whatever it got, unchecked by the rules);
    // through a parent, which resolves the name itself, the addresses are checked here.
    let mut own_connection = None;
    if go.decides_per_address() {
        let user = ex.user.clone();
        let groups = ex.groups.clone();
        let facts = Facts {
            client: ex.client.ip(),
            user: user.as_deref(),
            groups: &groups,
            method: req.method().as_str(),
            kind: Kind::Http,
            host: &target.host,
            port: target.port,
            at: jiff::Timestamp::now(),
        };
        let outbound = ex.shared.outbound.load_full();
        let mut resolved = None;
        // Boxed: resolving and racing is a large future that most requests never build, and
        // every forward future would carry its size.
        let decider = match go.route {
            Route::Direct => {
                let connected = Box::pin(dial::dial(
                    &outbound,
                    &settings.policy,
                    &target,
                    Some(&facts),
                    &mut resolved,
                ))
                .await;
                crate::proxy::tunnel::note_resolved(ex, resolved);
                let connected = connected?;
                ex.record.upstream(connected.addr);
                let decider = connected.decider.clone();
                own_connection = Some(connected.stream);
                decider
            }
            Route::Parent => {
                let checked = Box::pin(dial::allowed_addresses(
                    &outbound,
                    &settings.policy,
                    &target,
                    &facts,
                    &mut resolved,
                ))
                .await;
                crate::proxy::tunnel::note_resolved(ex, resolved);
                checked?.allowed.into_iter().next().and_then(|(_, d)| d)
            }
        };
        if let Some(decider) = decider {
            ex.record.allow(decider);
        }
    }

    // A request that cannot be sent twice (a method that is not idempotent, or a body,
    // which streams through once) goes over a fresh connection, never a kept-alive one the
    // origin may be closing (RFC 9112 §9.3.1); a bodiless idempotent one goes over the pool
    // and is retried once, on a fresh connection, when the kept-alive one closes unanswered.
    // An `OPTIONS *` goes over a fresh connection too: the pooled client writes no `*`.
    let once_only = !http_body::Body::is_end_stream(req.body()) || !is_idempotent(req.method());
    let (mut parts, body) = req.into_parts();
    if let Some(reply) = max_forwards(
        &parts.method,
        &mut parts.headers,
        &parts.uri,
        parts.version,
        &ex.shared.via,
    )? {
        ex.record.answered(reply.status().as_u16());
        return Ok(reply);
    }
    // Dialled once the proxy knows it will not answer, or refuse, the request itself.
    if (once_only || asterisk) && own_connection.is_none() && parents.is_none() {
        let outbound = ex.shared.outbound.load_full();
        let mut resolved = None;
        let connected = Box::pin(dial::dial(
            &outbound,
            &settings.policy,
            &target,
            None,
            &mut resolved,
        ))
        .await;
        crate::proxy::tunnel::note_resolved(ex, resolved);
        let connected = connected?;
        ex.record.upstream(connected.addr);
        own_connection = Some(connected.stream);
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
    // The pooled client dials the URI's authority, the target (its text made once, for the
    // Host header and here); a connection of the request's own takes the origin form.
    let authority = match target.port {
        80 => format!("{host_text}:80"),
        _ => host_text,
    };
    parts.uri = upstream_uri(authority, &parts.uri)?;
    if own_connection.is_some() {
        parts.uri = origin_form(&parts.uri, asterisk);
    }
    parts.version = Version::HTTP_11;

    let timeouts = &settings.timeouts;
    let mut body = UpBody::new(
        body,
        ex.record.traffic().clone(),
        timeouts.request_body,
        ex.body.take(),
    );
    if let Some(flow) = flow_of(ex, &target, Kind::Http, None) {
        body.shape(flow);
    }
    // Whatever fails from here on leaves the rest of the request body unread.
    let upload = body.upload();
    let mut retried = false;
    let sent = if let Some(parents) = &parents {
        Box::pin(through_parent(ex, parents, parts, body, &target, asterisk)).await
    } else if let Some(stream) = own_connection {
        let upstream = Request::from_parts(parts, body);
        let stall = timeouts.origin_write();
        within(
            timeouts.response,
            &target,
            &upload,
            Some(&ex.record),
            Box::pin(send_once(
                dial::OriginIo::new(stream, stall, false, &ex.shared.express),
                upstream,
            )),
        )
        .await
        .and_then(|answer| answer.map_err(|e| upstream_error(&target, &e)))
    } else {
        // Kept for a retry: a bodiless idempotent request can be sent again.
        let again = http::request::Parts::clone(&parts);
        let upstream = Request::from_parts(parts, body);
        let first = within(
            timeouts.response,
            &target,
            &upload,
            Some(&ex.record),
            ex.shared.client.request(upstream),
        )
        .await;
        match first {
            Ok(Err(e)) if closed_unanswered(&e) => {
                retried = true;
                Box::pin(retry_fresh(ex, &target, again)).await
            }
            first => first.and_then(|answer| {
                answer.map_err(|e| {
                    if let Some(resolved) = pooled_dial_error(&e).and_then(|p| p.resolved) {
                        ex.record.resolved(resolved.took, resolved.cached);
                    }
                    upstream_error(&target, &e)
                })
            }),
        }
    };
    let response = sent.inspect_err(|_| upload.give_up())?;

    let origin_ip = response
        .extensions()
        .get::<HttpInfo>()
        .map(|info| info.remote_addr());
    if let Some(addr) = origin_ip {
        ex.record.upstream(addr);
    }
    if let Some(resolved) = response
        .extensions()
        .get::<DialInfo>()
        .and_then(DialInfo::take_resolved)
    {
        ex.record.resolved(resolved.took, resolved.cached);
    }
    check_answer(&response, &target).inspect_err(|_| upload.give_up())?;
    ex.record.answered(response.status().as_u16());
    if retried {
        ex.record.note(
            "the kept-alive origin connection closed without answering: sent again on a fresh one"
                .to_owned(),
        );
    }
    let (mut parts, body) = response.into_parts();
    let had_transfer_encoding = parts.headers.contains_key(header::TRANSFER_ENCODING);
    strip_hop_by_hop(&mut parts.headers);
    if had_transfer_encoding {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    append_via(&mut parts.headers, parts.version, &ex.shared.via);
    parts.version = Version::HTTP_11;
    parts.extensions.clear();
    let mut body = DownBody::origin(body, timeouts.response);
    if let Some(flow) = flow_of(ex, &target, Kind::Http, origin_ip.map(|a| a.ip())) {
        body.shape(flow);
    }
    Ok(Response::from_parts(parts, body))
}

/// Waits for an answer; the clock (`timeouts.response`) starts once the request body has
/// been written out to the origin's connection, so a long upload is timed by
/// `timeouts.request_body` alone (and an origin that stops taking it, by the connection's own
/// write timeout: see [`dial::OriginIo`]). Meanwhile the body's bytes are reported to the
/// statistics through `record` as they go (a long upload shows in `/status` and `top` while
/// it runs), when the record is at hand.
async fn within<T>(
    limit: std::time::Duration,
    target: &Target,
    upload: &Upload,
    record: Option<&PendingRecord>,
    answer: impl std::future::Future<Output = T>,
) -> Result<T, EdgeError> {
    let clock = async {
        upload.sent().await;
        tokio::time::sleep(limit).await;
    };
    let (mut answer, mut clock) = (std::pin::pin!(answer), std::pin::pin!(clock));
    loop {
        tokio::select! {
            answer = &mut answer => return Ok(answer),
            _ = &mut clock => return Err(EdgeError::new(
                ErrorKind::Timeout,
                format!(
                    "the origin {target} did not answer within {} (timeouts.response)",
                    humantime::format_duration(limit)
                ),
            )),
            _ = upload.report_due(), if record.is_some() => {
                if let Some(record) = record {
                    record.progress();
                }
            }
        }
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
///
/// The parent, not this proxy, is the last on the chain, so an `OPTIONS` about the origin as
/// a whole (`asterisk`) keeps its target `http://host:port` without a `/`, for the parent to
/// send `*` (RFC 9112 §3.2.4). `http::Uri` always writes a `/` after an authority, so such a
/// request goes over a connection of its own to the parent, which leaves that `/` out
/// ([`DropSlash`]).
async fn through_parent(
    ex: &mut Exchange,
    parents: &Parents<UpBody>,
    parts: http::request::Parts,
    body: UpBody,
    target: &Target,
    asterisk: bool,
) -> Result<Response<Incoming>, EdgeError> {
    let limit = ex.settings.timeouts.response;
    let stall = ex.settings.timeouts.origin_write();
    // Where hyper writes the `/` of `OPTIONS http://host:port/ HTTP/1.1`.
    let slash = "OPTIONS http://".len() + parts.uri.authority().map_or(0, |a| a.as_str().len());
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
        let request = Request::from_parts(head, attempt_body);
        // Whether the parent could not be reached, and what the client is told.
        let sent = if asterisk {
            let record = &mut ex.record;
            let express = ex.shared.express.clone();
            let own = async move {
                let stream = parents
                    .dial(route)
                    .await
                    .map_err(|e| (true, upstream_error(target, &e)))?;
                if let Ok(addr) = stream.peer_addr() {
                    record.upstream(addr);
                }
                let io = DropSlash::new(dial::OriginIo::new(stream, stall, true, &express), slash);
                send_once(io, request)
                    .await
                    .map_err(|e| (false, upstream_error(target, &e)))
            };
            // The record is the dial's; OPTIONS * hardly has a body to report.
            within(limit, target, &upload, None, own).await?
        } else {
            within(
                limit,
                target,
                &upload,
                Some(&ex.record),
                route.client.request(request),
            )
            .await?
            .map_err(|e| (e.is_connect(), upstream_error(target, &e)))
        };
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
            Err((unreachable, error)) => {
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

/// Honours `Max-Forwards` on TRACE and OPTIONS (RFC 9110 §7.6.2): at zero the proxy answers
/// itself; otherwise the value is decremented on the way. The field is one decimal number
/// (`1*DIGIT`): anything else (a sign, a list, two fields, not digits) is a `400`, since the
/// proxy cannot tell how many hops the client meant; a number too large for 64 bits is taken
/// as the largest. Other methods carry the field unchanged (the RFC lets a proxy ignore it).
fn max_forwards(
    method: &Method,
    headers: &mut HeaderMap,
    uri: &Uri,
    version: Version,
    via: &Via,
) -> Result<Option<Response<DownBody>>, EdgeError> {
    if method != Method::TRACE && method != Method::OPTIONS {
        return Ok(None);
    }
    let mut fields = headers.get_all(header::MAX_FORWARDS).iter();
    let Some(field) = fields.next() else {
        return Ok(None);
    };
    let digits = field.to_str().map(str::trim).unwrap_or_default();
    if fields.next().is_some() || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EdgeError::new(
            ErrorKind::Client,
            "Max-Forwards must be one decimal number (RFC 9110 §7.6.2)",
        ));
    }
    let value = digits.parse::<u64>().unwrap_or(u64::MAX);
    if value > 0 {
        headers.insert(header::MAX_FORWARDS, HeaderValue::from(value - 1));
        return Ok(None);
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
    Ok(Some(response))
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

/// The pooled dialler's error inside a failure of the pooled client, if that is what failed.
fn pooled_dial_error(e: &hyper_util::client::legacy::Error) -> Option<&PooledDialError> {
    let mut source: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(pooled) = err.downcast_ref::<PooledDialError>() {
            return Some(pooled);
        }
        source = err.source();
    }
    None
}

/// The origin form of `uri` (`/path?query`), as a request on a connection of its own is
/// sent (the pooled client makes it itself); `*` for an `OPTIONS` about the origin as a whole.
fn origin_form(uri: &Uri, asterisk: bool) -> Uri {
    if asterisk {
        return Uri::from_static("*");
    }
    Uri::from(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    )
}

/// Whether a request may be sent again with the same effect (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether the pooled client failed because the origin closed the connection before any
/// byte of an answer: what a kept-alive connection the origin was closing does.
fn closed_unanswered(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return true;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
            if matches!(io.kind(), ConnectionReset | ConnectionAborted | BrokenPipe) {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// Sends a bodiless request again, on a fresh connection of its own.
async fn retry_fresh(
    ex: &mut Exchange,
    target: &Target,
    mut parts: http::request::Parts,
) -> Result<Response<Incoming>, EdgeError> {
    let settings = ex.settings.clone();
    let outbound = ex.shared.outbound.load_full();
    let connected = dial::dial(&outbound, &settings.policy, target, None, &mut None).await?;
    ex.record.upstream(connected.addr);
    parts.uri = origin_form(&parts.uri, false);
    let request = Request::from_parts(parts, UpBody::empty(ex.record.traffic().clone()));
    let timeouts = &settings.timeouts;
    let upload = request.body().upload();
    within(
        timeouts.response,
        target,
        &upload,
        None,
        send_once(
            dial::OriginIo::new(
                connected.stream,
                timeouts.origin_write(),
                false,
                &ex.shared.express,
            ),
            request,
        ),
    )
    .await
    .and_then(|answer| answer.map_err(|e| upstream_error(target, &e)))
}

/// Sends `request` over `io`, a connection of its own (not pooled), and waits for the
/// answer's head; the connection ends with the answer.
async fn send_once<I>(io: I, request: Request<UpBody>) -> Result<Response<Incoming>, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .max_headers(dial::RESPONSE_MAX_HEADERS)
        .max_buf_size(dial::RESPONSE_MAX_HEAD)
        .handshake(io)
        .await?;
    // Runs until the answer's body is through (or either side gives up).
    tokio::spawn(connection);
    sender.send_request(request).await
}

/// A connection that writes what hyper writes except the byte at `at` of its output when
/// it is a `/`: the one `http::Uri` writes after an authority (`OPTIONS http://host:port/`),
/// which an `OPTIONS` about a whole origin must not carry to a parent. A write is cut short
/// before that byte, and the byte reported written without being sent.
struct DropSlash<I> {
    inner: I,
    at: usize,
    written: usize,
}

impl<I> DropSlash<I> {
    fn new(inner: I, at: usize) -> Self {
        DropSlash {
            inner,
            at,
            written: 0,
        }
    }
}

impl<I: hyper::rt::Read + Unpin> hyper::rt::Read for DropSlash<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: hyper::rt::Write + Unpin> hyper::rt::Write for DropSlash<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let mut len = buf.len();
        if let Some(offset) = this.at.checked_sub(this.written).filter(|&o| o < len) {
            if offset == 0 && buf[0] == b'/' {
                this.written += 1;
                return Poll::Ready(Ok(1));
            }
            if offset > 0 {
                len = offset;
            }
        }
        let polled = Pin::new(&mut this.inner).poll_write(cx, &buf[..len]);
        if let Poll::Ready(Ok(n)) = polled {
            this.written += n;
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Maps a failure of the pooled client, or of a connection of the request's own, to what
/// the client is told.
fn upstream_error(target: &Target, e: &(dyn StdError + 'static)) -> EdgeError {
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
        if let Some(pooled) = err.downcast_ref::<PooledDialError>() {
            return EdgeError::from(&pooled.error);
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
    // What is left: the pooled client could not connect for a reason of its own, or the
    // exchange failed in a way none of the above names.
    let connecting = e
        .downcast_ref::<hyper_util::client::legacy::Error>()
        .is_some_and(|e| e.is_connect());
    let kind = if connecting {
        ErrorKind::Unreachable
    } else {
        ErrorKind::OriginProtocol
    };
    EdgeError::new(kind, format!("the request to {target} failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    /// Takes at most `max` bytes a write.
    struct Chunky {
        out: Vec<u8>,
        max: usize,
    }

    impl hyper::rt::Write for Chunky {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// What `pieces`, each written whole, come out as through a [`DropSlash`] at `at` over a
    /// connection that takes at most `max` bytes a write.
    fn through_drop_slash(pieces: &[&[u8]], at: usize, max: usize) -> Vec<u8> {
        use hyper::rt::Write as _;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut io = DropSlash::new(
            Chunky {
                out: Vec::new(),
                max,
            },
            at,
        );
        for piece in pieces {
            let mut rest = *piece;
            while !rest.is_empty() {
                let Poll::Ready(Ok(n)) = Pin::new(&mut io).poll_write(&mut cx, rest) else {
                    panic!("the write failed");
                };
                rest = &rest[n..];
            }
        }
        io.inner.out
    }

    #[test]
    fn the_slash_after_the_authority_is_left_out_however_the_writes_fall() {
        let head = b"OPTIONS http://h:81/ HTTP/1.1\r\nHost: h:81\r\n\r\n";
        let at = "OPTIONS http://h:81".len();
        for max in 1..=head.len() {
            for pieces in [vec![&head[..]], head.chunks(7).collect()] {
                assert_eq!(
                    through_drop_slash(&pieces, at, max),
                    b"OPTIONS http://h:81 HTTP/1.1\r\nHost: h:81\r\n\r\n",
                    "{max}"
                );
            }
        }
        // Not a slash there: nothing is left out.
        let line = b"GET / HTTP/1.1";
        assert_eq!(through_drop_slash(&[line], 3, 99), line);
    }

    #[test]
    fn max_forwards_is_honoured_for_trace_and_options() {
        let uri: Uri = "http://h/x".parse().unwrap();
        let p = &Via::new("p".into());
        let mut h = headers(&[("max-forwards", "2")]);
        let mf = |m: &Method, h: &mut HeaderMap| max_forwards(m, h, &uri, Version::HTTP_11, p);
        assert!(mf(&Method::TRACE, &mut h).unwrap().is_none());
        assert_eq!(h[header::MAX_FORWARDS], "1");
        let mut h = headers(&[("max-forwards", "0"), ("cookie", "s=1"), ("x-a", "b")]);
        let r = mf(&Method::TRACE, &mut h).unwrap().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "message/http");
        assert_eq!(r.headers()[header::VIA], "1.1 p");
        let r = mf(&Method::OPTIONS, &mut h).unwrap().unwrap();
        assert!(r.headers()[header::ALLOW]
            .to_str()
            .unwrap()
            .contains("CONNECT"));
        let mut h = headers(&[("max-forwards", "0")]);
        assert!(mf(&Method::GET, &mut h).unwrap().is_none());
        // Not one decimal number: refused on TRACE and OPTIONS, carried on other methods.
        for bad in ["-1", "abc", "0, 5", "+3", "", "1 2"] {
            let mut h = headers(&[("max-forwards", bad)]);
            let Err(e) = mf(&Method::OPTIONS, &mut h) else {
                panic!("{bad:?} accepted");
            };
            assert_eq!(e.status, http::StatusCode::BAD_REQUEST, "{bad}");
            assert!(mf(&Method::GET, &mut h).unwrap().is_none());
            assert_eq!(h[header::MAX_FORWARDS], bad);
        }
        let mut h = headers(&[("max-forwards", "1"), ("max-forwards", "1")]);
        assert!(mf(&Method::TRACE, &mut h).is_err(), "two fields");
        let mut h = headers(&[("max-forwards", "99999999999999999999999")]);
        assert!(mf(&Method::TRACE, &mut h).unwrap().is_none());
        assert_eq!(h[header::MAX_FORWARDS], (u64::MAX - 1).to_string().as_str());
        let echo = trace_echo(
            &Method::TRACE,
            &uri,
            Version::HTTP_11,
            &headers(&[("cookie", "s"), ("x-a", "b")]),
        );
        assert_eq!(&echo[..], b"TRACE http://h/x HTTP/1.1\r\nx-a: b\r\n\r\n");
    }
}
