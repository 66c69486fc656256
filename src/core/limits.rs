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

/// Connections answered with a refusal beyond the limit before new ones are dropped unanswered.
pub const REFUSAL_ALLOWANCE: usize = 64;

/// What the connection limits say of one more connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Within the limits.
    Yes,
    /// Over a limit: answered with this refusal, then closed.
    Refuse(EdgeError),
    /// Far over the limit: closed unanswered, so that refusing costs little.
    Drop,
}

/// `limits.max_connections`: `open` counts the open connections with this one.
pub fn admit_total(open: usize, max_connections: usize) -> Admission {
    if open > max_connections + REFUSAL_ALLOWANCE {
        Admission::Drop
    } else if open > max_connections {
        Admission::Refuse(
            EdgeError::refusal(
                ErrorKind::Limit,
                Builtin::LimitsMaxConnections,
                format!(
                    "the proxy is serving its maximum of {max_connections} connections; try again shortly"
                ),
            )
            .with_status(StatusCode::SERVICE_UNAVAILABLE),
        )
    } else {
        Admission::Yes
    }
}

/// `limits.max_connections_per_client`: `open` counts the client's open connections before
/// this one.
pub fn admit_client_connection(client: IpAddr, open: usize, max_per_client: usize) -> Admission {
    if open >= max_per_client {
        Admission::Refuse(EdgeError::refusal(
            ErrorKind::Limit,
            Builtin::LimitsMaxConnectionsPerClient,
            format!("{client} already has {max_per_client} connections open, the most one client may have"),
        ))
    } else {
        Admission::Yes
    }
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
    fn connection_limits_refuse_then_drop() {
        assert_eq!(admit_total(10, 10), Admission::Yes);
        let Admission::Refuse(e) = admit_total(11, 10) else {
            panic!("over the limit is refused");
        };
        assert_eq!((e.status.as_u16(), e.kind.as_str()), (503, "limit"));
        assert_eq!(e.rule.unwrap().to_string(), "limits.max_connections");
        assert_eq!(admit_total(10 + REFUSAL_ALLOWANCE + 1, 10), Admission::Drop);
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(admit_client_connection(ip, 1, 2), Admission::Yes);
        let Admission::Refuse(e) = admit_client_connection(ip, 2, 2) else {
            panic!("a client at its limit is refused");
        };
        assert_eq!(e.status.as_u16(), 429);
    }
}
