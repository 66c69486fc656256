//! The one error type at the edge: everything that ends a request without the origin's answer
//! becomes an [`EdgeError`] with a status code, a one-line reason and, for refusals, the rule
//! that decided. The same reason goes to the client and into the access record.

use http::{HeaderName, HeaderValue, StatusCode};

use crate::core::policy::{Builtin, Decider, Denial};
use crate::core::target::TargetError;

/// Which side of the proxy a failure comes from; it picks the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something wrong or was refused (4xx).
    Client,
    /// The origin could not be reached or failed (5xx).
    Upstream,
}

/// Why an exchange ended without the origin's answer, as a machine reads it: chosen where the
/// failure happens, written in the access record (the JSON format's `error` field), counted in
/// `portcullis_errors_total{kind}`, `/status` and `portcullis report --by error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The request is malformed or cannot be served as written (400, 501).
    Client,
    /// The request head or body did not arrive in time (408).
    ClientTimeout,
    /// Refused by the owner's policy: clients, rules, port lists, destination guards (403).
    Denied,
    /// A user name and password are needed, or were wrong (407).
    Auth,
    /// Over a limit the owner set: connections, head size, failed log-ins (414, 429, 431, 503).
    Limit,
    /// The request has already passed through this proxy (508).
    Loop,
    /// The destination's name did not resolve, or resolved to no address (502).
    Dns,
    /// The destination refused the connection (502).
    Refused,
    /// The destination could not be reached otherwise: no route, reset, unreachable (502).
    Unreachable,
    /// Connecting, or waiting for the answer, took too long (504).
    Timeout,
    /// A parent proxy could not be reached, refused, or wants credentials (502).
    Parent,
    /// The origin's answer is not HTTP the proxy can pass on, or broke off (502).
    OriginProtocol,
    /// Cut at the end of the shutdown grace period.
    Shutdown,
}

impl ErrorKind {
    /// Every kind, in the order reports and pages list them.
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::Client,
        ErrorKind::ClientTimeout,
        ErrorKind::Denied,
        ErrorKind::Auth,
        ErrorKind::Limit,
        ErrorKind::Loop,
        ErrorKind::Dns,
        ErrorKind::Refused,
        ErrorKind::Unreachable,
        ErrorKind::Timeout,
        ErrorKind::Parent,
        ErrorKind::OriginProtocol,
        ErrorKind::Shutdown,
    ];

    /// The kind's name in records, metrics and reports (`dns`, `origin-protocol` …).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Client => "client",
            ErrorKind::ClientTimeout => "client-timeout",
            ErrorKind::Denied => "denied",
            ErrorKind::Auth => "auth",
            ErrorKind::Limit => "limit",
            ErrorKind::Loop => "loop",
            ErrorKind::Dns => "dns",
            ErrorKind::Refused => "refused",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Parent => "parent",
            ErrorKind::OriginProtocol => "origin-protocol",
            ErrorKind::Shutdown => "shutdown",
        }
    }

    /// The kind named `name` ([`ErrorKind::as_str`]), as read back from a log.
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The status a failure of this kind answers, unless its call site names a more precise
    /// one of the same class (a 414 or 431 for a limit, a 501 for a client error).
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::Client => StatusCode::BAD_REQUEST,
            ErrorKind::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::Denied => StatusCode::FORBIDDEN,
            ErrorKind::Auth => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            ErrorKind::Limit => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Loop => StatusCode::LOOP_DETECTED,
            ErrorKind::Dns
            | ErrorKind::Refused
            | ErrorKind::Unreachable
            | ErrorKind::Parent
            | ErrorKind::OriginProtocol => StatusCode::BAD_GATEWAY,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whose fault a failure of this kind is.
    pub fn side(self) -> Side {
        match self {
            ErrorKind::Client
            | ErrorKind::ClientTimeout
            | ErrorKind::Denied
            | ErrorKind::Auth
            | ErrorKind::Limit
            | ErrorKind::Loop => Side::Client,
            ErrorKind::Dns
            | ErrorKind::Refused
            | ErrorKind::Unreachable
            | ErrorKind::Timeout
            | ErrorKind::Parent
            | ErrorKind::OriginProtocol
            | ErrorKind::Shutdown => Side::Upstream,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request that ends at the proxy: what the client is told and what is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeError {
    /// Why, as a machine reads it.
    pub kind: ErrorKind,
    /// The status code answered ([`ErrorKind::status`] unless the call site named another).
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
    /// A failure of `kind`, answered with the kind's status.
    pub fn new(kind: ErrorKind, reason: impl Into<String>) -> Self {
        EdgeError {
            kind,
            status: kind.status(),
            rule: None,
            reason: reason.into(),
            side: kind.side(),
            headers: Vec::new(),
        }
    }

    /// A refusal of `kind` decided by the built-in check `rule`.
    pub fn refusal(kind: ErrorKind, rule: Builtin, reason: impl Into<String>) -> Self {
        EdgeError {
            rule: Some(Decider::Builtin(rule)),
            ..EdgeError::new(kind, reason)
        }
    }

    /// Answers with `status` instead of the kind's own (a more precise one of the same class).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Adds a header to the answer.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
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
        ) || self.rule == Some(Decider::Builtin(Builtin::ClientsAllow))
    }
}

impl From<Denial> for EdgeError {
    fn from(d: Denial) -> Self {
        EdgeError {
            rule: Some(d.rule),
            ..EdgeError::new(ErrorKind::Denied, d.reason)
        }
    }
}

impl From<TargetError> for EdgeError {
    fn from(e: TargetError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
        EdgeError::new(ErrorKind::Client, e.to_string()).with_status(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_cause() {
        let denial = Denial {
            rule: Decider::Builtin(Builtin::PortsConnect),
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
