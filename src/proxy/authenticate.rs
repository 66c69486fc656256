//! The log-in step of the plan (`[auth]`): the failed-log-in block, the credential cache, and
//! the password check, which runs off the reactor (bcrypt is slow on purpose). The HTTP front
//! door reads `Proxy-Authorization` here; the SOCKS one reads RFC 1929 and calls [`log_in`].

use http::{header, HeaderValue, Request};
use tracing::warn;

use crate::core::auth::{challenge, parse_basic};
use crate::core::error::{EdgeError, ErrorKind};
use crate::core::policy::Builtin;
use crate::proxy::exchange::Exchange;

/// Checks `Proxy-Authorization` when `[auth]` is on; sets the exchange's user.
pub(crate) async fn authenticate<B>(ex: &mut Exchange, req: &Request<B>) -> Result<(), EdgeError> {
    let settings = ex.settings.clone();
    let Some(auth) = &settings.auth else {
        return Ok(());
    };
    let challenge = || {
        HeaderValue::from_str(&challenge(&auth.config.realm))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic"))
    };
    not_blocked(ex)?;
    let Some(value) = req.headers().get(header::PROXY_AUTHORIZATION) else {
        return Err(EdgeError::refusal(
            ErrorKind::Auth,
            Builtin::Auth,
            "this proxy needs a user name and password",
        )
        .with_header(header::PROXY_AUTHENTICATE, challenge()));
    };
    log_in(ex, value.as_bytes(), || {
        parse_basic(value.as_bytes())
            .map(|c| (c.user, c.password))
            .map_err(|e| format!("the Proxy-Authorization header is not usable: {e}"))
    })
    .await
    .map_err(|e| e.with_header(header::PROXY_AUTHENTICATE, challenge()))
}

/// Refuses a client address blocked after too many failed log-ins (`auth.max_failures`).
pub(crate) fn not_blocked(ex: &Exchange) -> Result<(), EdgeError> {
    let login = ex.shared.login.load();
    let ip = ex.client.ip();
    if let Some(left) = login.failures.blocked_for(ip, std::time::Instant::now()) {
        let seconds = left.as_secs().max(1);
        return Err(EdgeError::refusal(
            ErrorKind::Limit,
            Builtin::AuthMaxFailures,
            format!("too many failed log-ins from {ip}; try again in {seconds} s"),
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from(seconds)));
    }
    Ok(())
}

/// The log-in of every front door, once the credentials are at hand: `key` is what the
/// credential cache remembers them by (the header's value, the SOCKS sub-negotiation's
/// bytes), `offered` reads the user name and password from it, or says why it cannot. A
/// success sets the exchange's user; a failure counts towards `auth.max_failures`.
pub(crate) async fn log_in(
    ex: &mut Exchange,
    key: &[u8],
    offered: impl FnOnce() -> Result<(String, String), String>,
) -> Result<(), EdgeError> {
    let settings = ex.settings.clone();
    let Some(auth) = &settings.auth else {
        return Ok(());
    };
    let login = ex.shared.login.load_full();
    let ip = ex.client.ip();
    let now = std::time::Instant::now();
    if let Some(user) = login.credentials.get(key, now) {
        ex.record.user(&user);
        ex.user = Some(user);
        return Ok(());
    }
    let (user, verified) = match offered() {
        Ok((user, password)) => {
            // Counted before the check, so that checks at once cannot all pass the block.
            let Some(_attempt) = login.failures.attempt(ip, now) else {
                return Err(EdgeError::refusal(
                    ErrorKind::Limit,
                    Builtin::AuthMaxFailures,
                    format!("too many log-ins from {ip} failed or under way at once (auth.max_failures); try again in 1 s"),
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from(1)));
            };
            let users = auth.users.clone();
            let name = user.clone();
            // bcrypt takes tens of milliseconds on purpose: keep it off the reactor.
            let verified = tokio::task::spawn_blocking(move || users.verify(&name, &password))
                .await
                .unwrap_or(false);
            (user, verified)
        }
        Err(reason) => {
            warn!(target: "portcullis::auth", client = %ip, user = "-", reason = %reason, "authentication failed");
            login.failures.note_failure(ip, now);
            return Err(EdgeError::refusal(ErrorKind::Auth, Builtin::Auth, reason));
        }
    };
    if verified {
        login.failures.note_success(ip);
        login.credentials.insert(key, user.clone(), now);
        ex.record.user(&user);
        ex.user = Some(user);
        return Ok(());
    }
    warn!(target: "portcullis::auth", client = %ip, user = %user, "authentication failed");
    login.failures.note_failure(ip, now);
    Err(EdgeError::refusal(
        ErrorKind::Auth,
        Builtin::Auth,
        format!("wrong user name or password for user {user:?}"),
    ))
}
