//! The limits the owner sets on a request head and on connections, and the checks a request
//! head must pass before anything else is considered: framing that two servers could read
//! differently (request smuggling), and a request that has looped back to this proxy.

use std::net::IpAddr;

use http::{header, Request, StatusCode};

use crate::core::error::{EdgeError, ErrorKind};
use crate::core::headers::transfer_codings;
use crate::core::policy::Builtin;

/// The bounds of a request head (`[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// The longest request line, in bytes.
    pub max_request_line: usize,
    /// The most header fields.
    pub max_headers: usize,
    /// The largest head, in bytes.
    pub max_header_bytes: usize,
}

/// What the raw bytes of a head showed that the parsed request no longer does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawHead {
    /// The request target carried a `#fragment` (`http::Uri` drops it).
    pub fragment: bool,
    /// Both `Content-Length` and `Transfer-Encoding` were sent (hyper keeps only the latter).
    pub length_and_coding: bool,
}

/// The checks of a request head, in order: the fragment, the two framings at once, the
/// `[limits]` and the transfer codings, then a forwarding loop (`via` is this proxy's token
/// in `Via`).
pub fn check_head<B>(
    req: &Request<B>,
    raw: RawHead,
    limits: &HeadLimits,
    via: &str,
) -> Result<(), EdgeError> {
    if raw.fragment {
        return Err(EdgeError::new(
            ErrorKind::Client,
            "a request target must not carry a #fragment",
        ));
    }
    if raw.length_and_coding {
        return Err(EdgeError::new(
            ErrorKind::Client,
            "a request must not carry both Content-Length and Transfer-Encoding",
        ));
    }
    check_limits(req, limits)?;
    check_content_length(req.headers())?;
    if carries_token(req.headers(), via) {
        return Err(EdgeError::new(
            ErrorKind::Loop,
            "this request has already passed through this proxy: a forwarding loop",
        ));
    }
    Ok(())
}

/// Refuses a `Content-Length` past 2^63 − 1 (RFC 9110 §8.6 asks recipients to guard against
/// overflow): many servers count body lengths in signed 64 bits and would read such a value
/// as negative or as another length, so the proxy does not pass it on.
fn check_content_length(headers: &http::HeaderMap) -> Result<(), EdgeError> {
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        let text = value.to_str().unwrap_or_default().trim();
        // Digits that do not fit i64: nothing else makes its parser fail.
        let too_large = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit())
            && text.parse::<i64>().is_err();
        if too_large {
            return Err(EdgeError::new(
                ErrorKind::Client,
                format!("Content-Length {text} is past 2^63 - 1, more than servers can count"),
            ));
        }
    }
    Ok(())
}

/// Connections answered with a refusal beyond the limit before new ones are shed: answered
/// with [`NO_ROOM_RESPONSE`] at once, with no task and no record, so that refusing costs little.
pub const REFUSAL_ALLOWANCE: usize = 64;

/// Seconds a client refused at a connection limit is asked to wait (`Retry-After`).
pub const RETRY_AFTER_SECONDS: u16 = 1;

/// The answer to a connection shed far over the limit, or closed to make room while its
/// request head was arriving: written as is, before any request is read.
pub const NO_ROOM_RESPONSE: &[u8] = concat!(
    "HTTP/1.1 503 Service Unavailable\r\n",
    "Retry-After: 1\r\n",
    "Content-Type: text/plain; charset=utf-8\r\n",
    "Cache-Control: no-store\r\n",
    "Content-Length: 60\r\n",
    "Connection: close\r\n",
    "\r\n",
    "the proxy is at its connection limit; try again in a second\n",
)
.as_bytes();

/// Whether a connection is shed: `open` (every open connection, this one and those being
/// refused included) is past the limit and the refusals beyond it.
pub fn shed(open: usize, max_connections: usize) -> bool {
    open > max_connections.saturating_add(REFUSAL_ALLOWANCE)
}

fn no_room(status: StatusCode, rule: Builtin, reason: String) -> EdgeError {
    EdgeError::refusal(ErrorKind::Limit, rule, reason)
        .with_status(status)
        .with_header(header::RETRY_AFTER, RETRY_AFTER_SECONDS.into())
}

/// `limits.max_connections`: every open connection is busy, none could make room.
pub fn refuse_total(max_connections: usize) -> EdgeError {
    no_room(
        StatusCode::SERVICE_UNAVAILABLE,
        Builtin::LimitsMaxConnections,
        format!("the proxy is serving its maximum of {max_connections} connections, all busy; try again shortly"),
    )
}

/// `limits.max_connections_per_client`: every connection of `client` is busy.
pub fn refuse_client(client: IpAddr, max_per_client: usize) -> EdgeError {
    no_room(
        StatusCode::TOO_MANY_REQUESTS,
        Builtin::LimitsMaxConnectionsPerClient,
        format!("{client} already has {max_per_client} connections open, all busy, the most one client may have"),
    )
}

/// `limits.max_connections_per_network`: every connection from `network` is busy.
pub fn refuse_network(network: ipnet::IpNet, max_per_network: usize) -> EdgeError {
    no_room(
        StatusCode::SERVICE_UNAVAILABLE,
        Builtin::LimitsMaxConnectionsPerNetwork,
        format!("addresses in {network} already have {max_per_network} connections open, all busy, the most one network may have"),
    )
}

/// Refuses request heads beyond the `[limits]`, and framing a downstream server could read
/// differently than hyper did (request smuggling).
fn check_limits<B>(req: &Request<B>, limits: &HeadLimits) -> Result<(), EdgeError> {
    let uri = req.uri();
    let target_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    let line_len = req.method().as_str().len() + target_len + 10;
    if line_len > limits.max_request_line {
        return Err(EdgeError::new(
            ErrorKind::Limit,
            format!(
                "the request line is longer than {} bytes (limits.max_request_line)",
                limits.max_request_line
            ),
        )
        .with_status(StatusCode::URI_TOO_LONG));
    }
    let headers = req.headers();
    if headers.len() > limits.max_headers {
        return Err(EdgeError::new(
            ErrorKind::Limit,
            format!(
                "the request has more than {} header fields (limits.max_headers)",
                limits.max_headers
            ),
        )
        .with_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
    }
    let head_len = line_len
        + headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if head_len > limits.max_header_bytes {
        return Err(EdgeError::new(
            ErrorKind::Limit,
            format!(
                "the request head is larger than {} bytes (limits.max_header_bytes)",
                limits.max_header_bytes
            ),
        )
        .with_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
    }
    // hyper accepts a Transfer-Encoding whose last coding is chunked; the proxy re-frames
    // the body as chunked alone, so any other coding would be silently lost.
    if transfer_codings(headers).any(|c| !c.eq_ignore_ascii_case("chunked")) {
        return Err(EdgeError::new(
            ErrorKind::Client,
            "only the chunked transfer coding is supported in requests",
        )
        .with_status(StatusCode::NOT_IMPLEMENTED));
    }
    if transfer_codings(headers).count() > 1 {
        return Err(EdgeError::new(
            ErrorKind::Client,
            "chunked may be applied once (one Transfer-Encoding: chunked)",
        ));
    }
    Ok(())
}

/// Whether a `Via` header names this very proxy instance.
pub fn carries_token(headers: &http::HeaderMap, via: &str) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|hop| hop.split_whitespace().nth(1) == Some(via))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_request_line: 100,
        max_headers: 4,
        max_header_bytes: 300,
    };

    fn head(pairs: &[(&str, &str)], target: &str) -> Request<()> {
        let mut builder = Request::get(target);
        for (name, value) in pairs {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn refusal(req: &Request<()>, raw: RawHead) -> Option<(u16, &'static str)> {
        check_head(req, raw, &LIMITS, "portcullis-1")
            .err()
            .map(|e| (e.status.as_u16(), e.kind.as_str()))
    }

    #[test]
    fn heads_are_checked_in_order() {
        let fine = head(&[("host", "a")], "http://a/");
        assert_eq!(refusal(&fine, RawHead::default()), None);
        let both = RawHead {
            fragment: true,
            length_and_coding: true,
        };
        // The fragment is named first, then the two framings, whatever else is wrong.
        let looped = head(&[("via", "1.1 portcullis-1")], "http://a/");
        assert_eq!(refusal(&looped, both), Some((400, "client")));
        assert_eq!(refusal(&looped, RawHead::default()), Some((508, "loop")));
        let long = head(&[], &format!("http://a/{}", "x".repeat(100)));
        assert_eq!(refusal(&long, RawHead::default()), Some((414, "limit")));
        let many = head(
            &[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1"), ("e", "1")],
            "/",
        );
        assert_eq!(refusal(&many, RawHead::default()), Some((431, "limit")));
        let big = head(&[("a", &"v".repeat(300))], "/");
        assert_eq!(refusal(&big, RawHead::default()), Some((431, "limit")));
        let gzip = head(&[("transfer-encoding", "gzip, chunked")], "/");
        assert_eq!(refusal(&gzip, RawHead::default()), Some((501, "client")));
        let twice = head(
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            "/",
        );
        assert_eq!(refusal(&twice, RawHead::default()), Some((400, "client")));
        // Content-Length past what a signed 64-bit count holds.
        for (value, refused) in [
            ("9223372036854775807", false),
            ("09223372036854775807", false),
            ("9223372036854775808", true),
            ("18446744073709551615", true),
            ("99999999999999999999999", true),
            ("1024", false),
        ] {
            let req = head(&[("content-length", value)], "/");
            let want = refused.then_some((400, "client"));
            assert_eq!(refusal(&req, RawHead::default()), want, "{value}");
        }
    }

    #[test]
    fn connection_limits_refuse_with_retry_after_then_shed() {
        assert!(!shed(10 + REFUSAL_ALLOWANCE, 10));
        assert!(shed(10 + REFUSAL_ALLOWANCE + 1, 10));
        assert!(!shed(usize::MAX, usize::MAX));
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        let net: ipnet::IpNet = "10.0.0.0/24".parse().unwrap();
        for (e, status, rule) in [
            (refuse_total(10), 503, "limits.max_connections"),
            (
                refuse_client(ip, 2),
                429,
                "limits.max_connections_per_client",
            ),
            (
                refuse_network(net, 5),
                503,
                "limits.max_connections_per_network",
            ),
        ] {
            assert_eq!((e.status.as_u16(), e.kind.as_str()), (status, "limit"));
            assert_eq!(e.rule.unwrap().to_string(), rule);
            let retry = e
                .headers
                .iter()
                .find(|(name, _)| name == header::RETRY_AFTER);
            assert_eq!(retry.map(|(_, v)| v.to_str().unwrap()), Some("1"), "{rule}");
        }
        // The fixed answer is a well-formed response whose length field is right.
        let text = std::str::from_utf8(NO_ROOM_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("Retry-After: {RETRY_AFTER_SECONDS}\r\n")));
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
    }
}
