//! The proxy's own pages: what someone sees who opens the proxy's address in a browser
//! (an origin-form request such as `GET / HTTP/1.1`) instead of setting it as their proxy,
//! and the proxy auto-config file at `/proxy.pac` and `/wpad.dat` (its text is [`crate::web::pac`]'s).

use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::core::error::ErrorKind;
use crate::core::policy::Builtin;
use crate::observe::stats::RecentDenial;
use crate::proxy::body::DownBody;
use crate::proxy::exchange::Exchange;
use crate::web::html::escape_html;

/// Answers an origin-form request to the proxy itself.
pub fn local<B>(ex: &mut Exchange, req: &Request<B>) -> Response<DownBody> {
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
        if wants_html(req) {
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
    let mut response = Response::new(DownBody::text(body));
    *response.status_mut() = status;
    let content_type = if html {
        "text/html; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
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

fn wants_html<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"))
}

fn welcome_text(host: &str) -> String {
    format!(
        "This is Portcullis, a web proxy, not a web site.\n\
         To browse through it, set {host} as the HTTP and HTTPS proxy in your browser's or \
         system's proxy settings (Windows: Internet Options > Connections > LAN settings), \
         or for command-line tools: export http_proxy=http://{host} https_proxy=http://{host}\n"
    )
}

fn welcome_html(host: &str) -> String {
    let host = escape_html(host);
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Portcullis proxy</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em}}\
         code{{background:#eee;padding:0 .3em}}</style></head><body>\
         <h1>This is a web proxy</h1>\
         <p>You have reached <b>Portcullis</b>, the proxy that shares this network's internet \
         connection. It is not a web site.</p>\
         <p>To browse through it, set <code>{host}</code> as the proxy for HTTP and HTTPS:</p>\
         <ul><li>Windows: Settings &rarr; Network &amp; Internet &rarr; Proxy, or Internet \
         Options &rarr; Connections &rarr; LAN settings</li>\
         <li>macOS: System Settings &rarr; Network &rarr; Details &rarr; Proxies</li>\
         <li>Linux and command-line tools: <code>export http_proxy=http://{host} \
         https_proxy=http://{host}</code></li></ul>\
         </body></html>\n"
    )
}

/// The self-service part of the page: this client's own recent refusals, and nobody else's.
/// Browsers hide a proxy's answer to a refused CONNECT, so this is where people can see why.
fn denials_html(client: std::net::IpAddr, denials: &[RecentDenial]) -> String {
    let mut out = format!("<h2>Recently refused for your address ({client})</h2>");
    if denials.is_empty() {
        out.push_str("<p>Nothing has been refused for your address recently.</p>");
        return out;
    }
    out.push_str(
        "<table id=\"denials\"><tr><th>time (UTC)</th><th>destination</th><th>why</th></tr>",
    );
    for d in denials {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{} {}</td><td>{} ({})</td></tr>",
            escape_html(&d.time),
            escape_html(&d.method),
            escape_html(&d.destination),
            escape_html(&d.reason),
            escape_html(&d.rule)
        ));
    }
    out.push_str("</table><p>If you need one of these, ask the person who runs this proxy.</p>");
    out
}

fn denials_text(client: std::net::IpAddr, denials: &[RecentDenial]) -> String {
    let mut out = format!("\nRecently refused for your address ({client}):\n");
    if denials.is_empty() {
        out.push_str("  nothing\n");
    }
    for d in denials {
        out.push_str(&format!(
            "  {}  {} {}  {} ({})\n",
            d.time, d.method, d.destination, d.reason, d.rule
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert!(!welcome_html("<script>").contains("<script>"));
    }
}
