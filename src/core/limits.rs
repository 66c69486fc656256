//! The limits the owner sets on a request head and on connections, and the checks a request
//! head must pass before anything else is considered: framing that two servers could read
//! differently (request smuggling), and a request that has looped back to this proxy.

use std::net::IpAddr;

use http::{header, Request, StatusCode};

use crate::core::error::{EdgeError, ErrorKind};
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
    if carries_token(req.headers(), via) {
        return Err(EdgeError::new(
            ErrorKind::Loop,
            "this request has already passed through this proxy: a forwarding loop",
        ));
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
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty());
    if codings.any(|c| !c.eq_ignore_ascii_case("chunked")) {
        return Err(EdgeError::new(
            ErrorKind::Client,
            "only the chunked transfer coding is supported in requests",
        )
        .with_status(StatusCode::NOT_IMPLEMENTED));
    }
    let chunked = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .filter(|c| !c.trim().is_empty())
        .count();
    if chunked > 1 {
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
