//! Hostile input over raw sockets: malformed request lines and targets, port-check bypass
//! attempts, request smuggling shapes, oversize and slow heads, header injection, loops,
//! clients outside the allow-list and authentication edge cases.
//!
//! Every case sends exact bytes on a fresh connection and asserts the status the client gets
//! (or that the connection closes without an answer, where that is what the proxy does), and
//! that nothing reached a listener the proxy must not dial: a [`Counter`](crate::support::Counter) on a port the port
//! lists deny. Where a request may legitimately reach an origin, the origin is a
//! [`StrictOrigin`](crate::support::StrictOrigin) that frames what it reads as strictly as RFC 9112 asks and records every
//! request it sees, so a smuggled second request would show up as a second record (or as
//! bytes it could not frame), never silently.
//!
//! The tables print what each case got (`cargo test --test it hostile:: -- --nocapture`).

mod auth;
mod heads;
mod loops;
mod slow;
mod smuggling;
mod targets;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a connection may stay open after an answer that closes it.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// What a case expects the client to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Exactly this status.
    Status(u16),
    /// Exactly this status, and then the proxy closes the connection.
    StatusClose(u16),
    /// The connection closes without a response.
    Closed,
    /// This status or a close without one: a proxy that stops reading a flood and closes
    /// may reset the connection, which can discard its answer before the client reads it.
    StatusOrClosed(u16),
}

/// Checks an answer against what was expected; the error says what differs.
async fn judge(answer: &mut Answer, expect: Expect) -> Result<(), String> {
    let got = answer.status();
    let ok = match expect {
        Expect::Status(s) | Expect::StatusClose(s) => got == Some(s),
        Expect::Closed => got.is_none(),
        Expect::StatusOrClosed(s) => got.is_none() || got == Some(s),
    };
    if !ok {
        return Err(format!("expected {expect:?}, got {}", answer.shown()));
    }
    if matches!(expect, Expect::StatusClose(_))
        && !closes_within(&mut answer.stream, CLOSE_WITHIN).await
    {
        return Err(format!(
            "expected the connection to close after {}",
            answer.shown()
        ));
    }
    Ok(())
}

/// One hostile request and what the client must see.
struct Case {
    what: String,
    request: Vec<u8>,
    expect: Expect,
}

fn case(what: impl Into<String>, request: impl AsRef<[u8]>, expect: Expect) -> Case {
    Case {
        what: what.into(),
        request: request.as_ref().to_vec(),
        expect,
    }
}

/// Runs every case on a fresh connection, checking after each that `denied` saw nothing;
/// prints the table, then fails listing every case that went wrong.
async fn run_table(title: &str, proxy: SocketAddr, cases: &[Case], denied: &Counter) {
    let mut failures = Vec::new();
    eprintln!("--- {title}");
    for c in cases {
        let mut answer = send(proxy, &c.request).await;
        eprintln!("{:<52} → {}", c.what, short(&answer));
        if let Err(e) = judge(&mut answer, c.expect).await {
            failures.push(format!("{}: {} (sent {})", c.what, e, show(&c.request)));
        }
        if denied.accepts() != 0 {
            failures.push(format!(
                "{}: the denied listener {} was reached (sent {})",
                c.what,
                denied.addr,
                show(&c.request)
            ));
            break;
        }
    }
    // A dial after the answer would still be a breach: look once more, a little later.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        denied.accepts(),
        0,
        "{title}: the denied listener was reached"
    );
    assert!(
        failures.is_empty(),
        "{title}: {} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn short(answer: &Answer) -> String {
    match answer.status() {
        Some(s) => s.to_string(),
        None => "closed".to_owned(),
    }
}

/// A proxy that may reach loopback origins on `port` only (plain HTTP and CONNECT), with
/// `extra` TOML appended.
async fn proxy_for(port: u16, extra: &str) -> Proxy {
    Proxy::start(&format!("{}{extra}", loopback_config(&[port], &[port]))).await
}
