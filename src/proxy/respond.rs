//! Where a refusal or a failure becomes a response: the one place an [`EdgeError`] is turned
//! into what the client reads (the browser error page, or one line of text) and noted in the
//! access record. The exceptions, each answered where it happens: the proxy's own pages
//! answer their 404 and 405 themselves, as answers of their own and not refusals (`pages`),
//! a request head that is too slow gets a raw
//! 408 (`conn`), `Max-Forwards: 0` is answered by forwarding, and heads hyper cannot parse
//! get hyper's own 400, 414 or 431 (recorded by `listener`).

use http::{header, HeaderValue, Response};
use tracing::debug;

use crate::core::error::{EdgeError, Side};
use crate::core::policy::{Builtin, Decider};
use crate::proxy::body::DownBody;
use crate::proxy::exchange::Exchange;
use crate::web::html::own_answer;

/// Notes an error in the exchange's record: its kind, status, reason, and what decided it (a
/// client-side error no rule decided is the request's own fault, `request`). The SOCKS front
/// door, which answers with a reply code instead of a response, notes its errors here too.
pub(crate) fn note_failure(ex: &mut Exchange, error: &EdgeError) {
    let rule = error
        .rule
        .clone()
        .or_else(|| (error.side == Side::Client).then_some(Decider::Builtin(Builtin::Request)));
    ex.record.fail(
        error.kind,
        error.status.as_u16(),
        rule,
        error.reason.clone(),
    );
}

/// Turns an error into the response the client sees, and notes it in the record: an HTML
/// page when `page` says what a browser asked for, else the one-line text.
pub(crate) fn refusal(
    ex: &mut Exchange,
    error: EdgeError,
    page: Option<&crate::web::errorpage::Asked>,
) -> Response<DownBody> {
    match error.side {
        Side::Client => debug!(status = error.status.as_u16(), reason = %error.reason, "refused"),
        Side::Upstream => {
            debug!(status = error.status.as_u16(), reason = %error.reason, "upstream failure")
        }
    }
    note_failure(ex, &error);
    let (body, content_type) = match page {
        Some(asked) => {
            let pages = &ex.settings.pages;
            let values = crate::web::errorpage::PageValues::new(
                &error,
                asked,
                ex.client.ip(),
                &pages.contact,
                std::time::SystemTime::now(),
            );
            let html = crate::web::errorpage::render(&values, pages.error_template.as_deref());
            (html, "text/html; charset=utf-8")
        }
        None => (error.body_text(), "text/plain; charset=utf-8"),
    };
    let mut response = own_answer(error.status, content_type, DownBody::text(body));
    let closes = error.closes_connection();
    let headers = response.headers_mut();
    if closes {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    for (name, value) in error.headers {
        headers.append(name, value);
    }
    response
}
