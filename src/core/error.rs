//! The one error type at the edge: everything that ends a request without the origin's answer
//! becomes an [`EdgeError`] with a status code, a one-line reason and, for refusals, the rule
//! that decided. The same reason goes to the client and into the access record.

use http::{HeaderName, HeaderValue, StatusCode};

use crate::core::policy::{Decider, Denial};
use crate::core::target::TargetError;

/// Which side of the proxy a failure comes from; it picks the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something wrong or was refused (4xx).
    Client,
    /// The origin could not be reached or failed (5xx).
    Upstream,
}

/// A request that ends at the proxy: what the client is told and what is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeError {
    /// The status code answered.
    pub status: StatusCode,
    /// What decided, for refusals.
    pub rule: Option<Decider>,
    /// One line a person can read.
    pub reason: String,
    /// Whose fault.
    pub side: Side,
    /// Headers the answer must carry (`Proxy-Authenticate`, `Retry-After`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl EdgeError {
    /// A client-side error with `status`.
    pub fn client(status: StatusCode, reason: impl Into<String>) -> Self {
        EdgeError {
            status,
            rule: None,
            reason: reason.into(),
            side: Side::Client,
            headers: Vec::new(),
        }
    }

    /// A refusal with `status` decided by `rule`.
    pub fn refusal(status: StatusCode, rule: &'static str, reason: impl Into<String>) -> Self {
        EdgeError {
            rule: Some(Decider::Builtin(rule)),
            ..EdgeError::client(status, reason)
        }
    }

    /// Adds a header to the answer.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// An upstream failure with `status` (502 or 504).
    pub fn upstream(status: StatusCode, reason: impl Into<String>) -> Self {
        EdgeError {
            status,
            rule: None,
            reason: reason.into(),
            side: Side::Upstream,
            headers: Vec::new(),
        }
    }

    /// The body the client reads: the reason, and what decided it.
    pub fn body_text(&self) -> String {
        match &self.rule {
            Some(rule) => format!("{} (decided by {rule})\n", self.reason),
            None => format!("{}\n", self.reason),
        }
    }

    /// Whether the connection should be closed after answering (the request may not have
    /// been framed as the client meant, or the client is not welcome).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self.status,
            StatusCode::BAD_REQUEST
                | StatusCode::REQUEST_TIMEOUT
                | StatusCode::URI_TOO_LONG
                | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                | StatusCode::LOOP_DETECTED
                | StatusCode::TOO_MANY_REQUESTS
                | StatusCode::SERVICE_UNAVAILABLE
        ) || self.rule == Some(Decider::Builtin("clients.allow"))
    }
}

impl From<Denial> for EdgeError {
    fn from(d: Denial) -> Self {
        EdgeError {
            rule: Some(d.rule),
            ..EdgeError::client(StatusCode::FORBIDDEN, d.reason)
        }
    }
}

impl From<TargetError> for EdgeError {
    fn from(e: TargetError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
        EdgeError::client(status, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_cause() {
        let denial = Denial {
            rule: Decider::Builtin("ports.connect"),
            reason: "port 25 (smtp) is not allowed for CONNECT".into(),
        };
        let e = EdgeError::from(denial);
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert_eq!(
            e.body_text(),
            "port 25 (smtp) is not allowed for CONNECT (decided by ports.connect)\n"
        );
        assert!(!e.closes_connection());
        let e = EdgeError::from(TargetError::Unsupported("ftp".into()));
        assert_eq!(e.status, StatusCode::NOT_IMPLEMENTED);
        let e = EdgeError::from(TargetError::Malformed("bad".into()));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.closes_connection());
    }
}
