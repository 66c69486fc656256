//! The proxy's own pages: what someone sees who opens the proxy's address in a browser
//! (an origin-form request such as `GET / HTTP/1.1`) instead of setting it as their proxy,
//! what a browser asks of that address on its own (`/favicon.ico`, `/robots.txt`), and the
//! proxy auto-config file at `/proxy.pac` and `/wpad.dat` (its text is [`crate::web::pac`]'s).
//! Which path gets which answer is [`OwnPage`]'s to say.
//!
//! Every record made here has rule `local` and verdict allow, whatever the status: the proxy
//! answered for itself, nobody was refused anything. The statistics leave these records out
//! of the traffic (`crate::observe::stats`); the access log keeps them.

use http::{header, HeaderValue, Request, Response, StatusCode};

use crate::core::policy::Builtin;
use crate::proxy::body::DownBody;
use crate::proxy::exchange::Exchange;
use crate::web::html::{accepts_html, own_answer};
use crate::web::welcome::{
    budgets_html, budgets_text, denials_html, denials_text, share_html, share_text, welcome_html,
    welcome_text, OwnPage, ICON_SVG, ROBOTS_TXT,
};

/// The asker's share of the link and caps, and its use of the link now, when anything is
/// shaped (the own page shows them).
type ShareLines = (Vec<String>, Option<(f64, f64)>);

fn shared_link(ex: &Exchange) -> Option<ShareLines> {
    let shaping = &ex.settings.shaping;
    if !shaping.is_on() {
        return None;
    }
    let lines = shaping.for_client(ex.client.ip(), ex.user.as_deref());
    let now = ex
        .shared
        .shaper
        .load()
        .as_ref()
        .and_then(|shaper| shaper.rate_of(ex.client.ip(), ex.user.as_deref()));
    Some((lines, now))
}

/// The asker's byte budgets, when any is configured, and the moment they were read at.
fn budgets_of(ex: &Exchange) -> Option<(Vec<crate::core::quota::Standing>, jiff::Timestamp)> {
    let quotas = &ex.settings.quotas;
    if quotas.is_empty() {
        return None;
    }
    let now = jiff::Timestamp::now();
    let standings = ex.shared.budgets.standings_of(
        quotas,
        ex.client.ip(),
        ex.user.as_deref(),
        &ex.settings.policy.clock,
        now,
    );
    Some((standings, now))
}

/// Answers an origin-form request to the proxy itself.
pub fn own_page<B>(ex: &mut Exchange, req: &Request<B>) -> Response<DownBody> {
    // An absolute URL names the proxy itself; otherwise the Host header does.
    let named = req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    // The record names the host as asked, without the port it also carries.
    let shown_host = named.map_or_else(|| ex.local.to_string(), str::to_owned);
    let logged_host = crate::core::target::parse_authority(&shown_host, Some(ex.local.port()))
        .map(|t| t.host.to_string())
        .unwrap_or(shown_host);
    ex.record.destination(logged_host, ex.local.port());
    ex.record.allow(Builtin::Local);
    // The name the client used for the proxy (it reached the proxy, so the name works
    // there), checked, since the client wrote it; else the address the request arrived on.
    let proxy = crate::web::pac::proxy_authority(named, ex.local);

    let page = OwnPage::of(req.method(), req.uri().path());
    let status = page.status();
    ex.record.answered(status.as_u16());
    let (body, content_type) = match page {
        OwnPage::Pac => return pac_file(ex, &proxy),
        OwnPage::Welcome => {
            let denials = ex.shared.stats.denials_of(ex.client.ip());
            let share = shared_link(ex);
            let budgets = budgets_of(ex);
            let clock = &ex.settings.policy.clock;
            if accepts_html(req.headers()) {
                let mut page = welcome_html(&proxy);
                let mut extra = denials_html(ex.client.ip(), &denials);
                if let Some((standings, now)) = &budgets {
                    extra.push_str(&budgets_html(standings, clock, *now));
                }
                if has_ca(ex) {
                    extra.push_str(&crate::web::welcome::ca_html(&proxy));
                }
                if let Some((lines, now)) = &share {
                    extra.push_str(&share_html(lines, *now));
                }
                page.insert_str(page.rfind("</body>").unwrap_or(page.len()), &extra);
                (page, "text/html; charset=utf-8")
            } else {
                let mut text = welcome_text(&proxy);
                text.push_str(&denials_text(ex.client.ip(), &denials));
                if let Some((standings, now)) = &budgets {
                    text.push_str(&budgets_text(standings, clock, *now));
                }
                if has_ca(ex) {
                    text.push_str(&crate::web::welcome::ca_text(&proxy));
                }
                if let Some((lines, now)) = &share {
                    text.push_str(&share_text(lines, *now));
                }
                (text, "text/plain; charset=utf-8")
            }
        }
        OwnPage::Icon => {
            let mut response = own_answer(status, "image/svg+xml", DownBody::text(ICON_SVG));
            // The same icon for every visit and everyone: a day in the browser's cache.
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=86400"),
            );
            return response;
        }
        OwnPage::Robots => (ROBOTS_TXT.to_owned(), "text/plain; charset=utf-8"),
        OwnPage::Ca { der } => {
            let ca = ex.settings.tls.as_ref().and_then(|t| t.ca.clone());
            let Some(ca) = ca else {
                let reason = "no certificate authority is offered here ([tls] ca)".to_owned();
                ex.record.answered(404);
                ex.record.note(reason.clone());
                return own_answer(
                    StatusCode::NOT_FOUND,
                    "text/plain; charset=utf-8",
                    DownBody::text(reason + "\n"),
                );
            };
            let (bytes, content_type) = if der {
                (ca.der.clone(), "application/x-x509-ca-cert")
            } else {
                (ca.pem.clone(), "application/x-pem-file")
            };
            return own_answer(status, content_type, DownBody::text(bytes));
        }
        OwnPage::NotFound | OwnPage::NotAllowed => {
            let reason = page
                .missing(req.method(), req.uri().path())
                .unwrap_or_default();
            // Said in the record, which stays an allowed one: no refusal of the person.
            ex.record.note(reason.clone());
            (reason + "\n", "text/plain; charset=utf-8")
        }
    };
    let mut response = own_answer(status, content_type, DownBody::text(body));
    if page == OwnPage::NotAllowed {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

/// Whether `[tls] ca` offers a certificate authority for download.
fn has_ca(ex: &Exchange) -> bool {
    ex.settings.tls.as_ref().is_some_and(|t| t.ca.is_some())
}

/// `/proxy.pac` and `/wpad.dat`: the PAC file naming this proxy as the client reached it
/// (`proxy`). Browsers fetch it without credentials, so it needs none (the service skips
/// authentication for the proxy's own pages).
fn pac_file(ex: &Exchange, proxy: &str) -> Response<DownBody> {
    let pac = crate::web::pac::render(&ex.settings.pac, proxy);
    let mut response = Response::new(DownBody::text(pac));
    *response.status_mut() = StatusCode::OK;
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
