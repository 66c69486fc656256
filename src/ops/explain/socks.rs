//! The SOCKS front doors as `portcullis explain` asks about them: which `[socks]` settings
//! close them, the reduced policy of a client admitted without a log-in, and the refusal of a
//! client that cannot log in.

use std::net::IpAddr;

use crate::config::Settings;
use crate::core::policy::{Builtin, Decider, Denial, Policy};

/// The SOCKS front doors `explain` knows, by the method its records and rules give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Socks {
    /// `SOCKS5`: a SOCKS5 CONNECT.
    Five,
    /// `SOCKS4`: a SOCKS4 or 4a CONNECT.
    Four,
    /// `SOCKS5-UDP`: datagrams through a UDP ASSOCIATE relay.
    Udp,
}

impl Socks {
    pub(super) fn of(method: &str) -> Option<Socks> {
        match method {
            "SOCKS5" => Some(Socks::Five),
            "SOCKS4" => Some(Socks::Four),
            "SOCKS5-UDP" => Some(Socks::Udp),
            _ => None,
        }
    }

    /// Why this front door is closed by `[socks]`, if it is, and what the client gets.
    pub(super) fn closed(self, settings: &Settings) -> Option<(Denial, &'static str)> {
        let socks = &settings.socks;
        let as_http = "no SOCKS answer: the bytes are read as HTTP, which they are not (400 Bad Request, or closed)";
        let (why, status) = match self {
            _ if !socks.enabled => (
                "SOCKS is off on this proxy (socks.enabled = false)",
                as_http,
            ),
            Socks::Four if !socks.v4 => ("SOCKS4 is off on this proxy (socks.v4 = false)", as_http),
            Socks::Udp if !socks.udp => (
                "UDP ASSOCIATE is off on this proxy (socks.udp = false)",
                "SOCKS reply 0x07 (command not supported)",
            ),
            _ => return None,
        };
        let denial = Denial {
            rule: Decider::Builtin(Builtin::Request),
            reason: why.to_owned(),
        };
        Some((denial, status))
    }
}

/// The policy for a SOCKS client at `client` that does not log in, when a rule admits it.
pub(super) fn without_login<'s>(
    settings: &'s Settings,
    client: IpAddr,
    method: &str,
) -> Option<&'s Policy> {
    settings
        .socks
        .without_login
        .as_deref()
        .filter(|policy| policy.admits_without_login(client, method))
}

/// The refusal of a client that cannot log in.
pub(super) fn login_denial(reason: &str) -> Denial {
    Denial {
        rule: Decider::Builtin(Builtin::Auth),
        reason: reason.to_owned(),
    }
}
