//! The proxy's own pages: what someone sees who opens the proxy's address in a browser
//! (an origin-form request such as `GET / HTTP/1.1`) instead of setting it as their proxy,
//! and the proxy auto-config file at `/proxy.pac` and `/wpad.dat` (its text is [`crate::web::pac`]'s).

use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::core::error::ErrorKind;
use crate::core::policy::Builtin;
use crate::proxy::body::DownBody;
use crate::proxy::exchange::Exchange;
use crate::web::html::{accepts_html, own_answer};
use crate::web::welcome::{denials_html, denials_text, welcome_html, welcome_text};

/// Answers an origin-form request to the proxy itself.
pub fn own_page<B>(ex: &mut Exchange, req: &Request<B>) -> Response<DownBody> {
    // An absolute URL names the proxy itself; otherwise the Host header does.
    let shown_host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| ex.local.to_string());
    // The record names the host as asked, without the port it also carries.
    let logged_host = crate::core::target::parse_authority(&shown_host, Some(ex.local.port()))
        .map(|t| t.host.to_string())
        .unwrap_or_else(|_| shown_host.clone());
    ex.record.destination(logged_host, ex.local.port());
    let read = req.method() == Method::GET || req.method() == Method::HEAD;
    if read && crate::web::pac::PATHS.contains(&req.uri().path()) {
        return pac_file(ex, req);
    }

    let (status, body, html) = if req.method() != Method::GET && req.method() != Method::HEAD {
        let text = format!(
            "{} is not supported on the proxy's own pages\n",
            req.method()
        );
        (StatusCode::METHOD_NOT_ALLOWED, text, false)
    } else if req.uri().path() != "/" {
        let text = format!("{} is not a page of this proxy\n", req.uri().path());
        (StatusCode::NOT_FOUND, text, false)
    } else {
        let denials = ex.shared.stats.denials_of(ex.client.ip());
        if accepts_html(req.headers()) {
            let mut page = welcome_html(&shown_host);
            page.insert_str(
                page.rfind("</body>").unwrap_or(page.len()),
                &denials_html(ex.client.ip(), &denials),
            );
            (StatusCode::OK, page, true)
        } else {
            let mut text = welcome_text(&shown_host);
            text.push_str(&denials_text(ex.client.ip(), &denials));
            (StatusCode::OK, text, false)
        }
    };

    if status == StatusCode::OK {
        ex.record.allow(Builtin::Local);
        ex.record.answered(status.as_u16());
    } else {
        ex.record.fail(
            ErrorKind::Client,
            status.as_u16(),
            Some(Builtin::Local.into()),
            body.trim_end().to_owned(),
        );
    }
    let content_type = if html {
        "text/html; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = own_answer(status, content_type, DownBody::text(body));
    let headers = response.headers_mut();
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

/// `/proxy.pac` and `/wpad.dat`: the PAC file naming this proxy as the client reached it.
/// Browsers fetch it without credentials, so it needs none (the service skips authentication
/// for the proxy's own pages).
fn pac_file<B>(ex: &mut Exchange, req: &Request<B>) -> Response<DownBody> {
    // The name the client used for the proxy (it reached the proxy, so the name works
    // there), checked, since the client wrote it; else the address the request arrived on.
    let named = req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    let arrived_on = crate::web::pac::proxy_authority(named, ex.local);
    let pac = crate::web::pac::render(&ex.settings.pac, &arrived_on);
    ex.record.allow(Builtin::Local);
    ex.record.answered(StatusCode::OK.as_u16());
    let mut response = Response::new(DownBody::text(pac));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::web::pac::CONTENT_TYPE),
    );
    // Browsers fetch the PAC at start-up and on network changes; five minutes bounds how long
    // a changed configuration takes to reach them through caches.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    response
}
