//! The log-in step of the plan (`[auth]`): the failed-log-in block, the credential cache, and
//! the password check, which runs off the reactor (bcrypt is slow on purpose).

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
    let login = ex.shared.login.load_full();
    let ip = ex.client.ip();
    let now = std::time::Instant::now();
    if let Some(left) = login.failures.blocked_for(ip, now) {
        let seconds = left.as_secs().max(1);
        return Err(EdgeError::refusal(
            ErrorKind::Limit,
            Builtin::AuthMaxFailures,
            format!("too many failed log-ins from {ip}; try again in {seconds} s"),
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from(seconds)));
    }
    let challenge = || {
        HeaderValue::from_str(&challenge(&auth.config.realm))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic"))
    };
    let Some(value) = req.headers().get(header::PROXY_AUTHORIZATION) else {
        return Err(EdgeError::refusal(
            ErrorKind::Auth,
            Builtin::Auth,
            "this proxy needs a user name and password",
        )
        .with_header(header::PROXY_AUTHENTICATE, challenge()));
    };
    if let Some(user) = login.credentials.get(value.as_bytes(), now) {
        ex.record.user(&user);
        ex.user = Some(user);
        return Ok(());
    }
    let (user, verified) = match parse_basic(value.as_bytes()) {
        Ok(credentials) => {
            let users = auth.users.clone();
            let user = credentials.user.clone();
            // bcrypt takes tens of milliseconds on purpose: keep it off the reactor.
            let verified = tokio::task::spawn_blocking(move || {
                users.verify(&credentials.user, &credentials.password)
            })
            .await
            .unwrap_or(false);
            (user, verified)
        }
        Err(e) => {
            warn!(target: "portcullis::auth", client = %ip, user = "-", reason = %e, "authentication failed");
            login.failures.note_failure(ip, now);
            return Err(EdgeError::refusal(
                ErrorKind::Auth,
                Builtin::Auth,
                format!("the Proxy-Authorization header is not usable: {e}"),
            )
            .with_header(header::PROXY_AUTHENTICATE, challenge()));
        }
    };
    if verified {
        login.failures.note_success(ip);
        login
            .credentials
            .insert(value.as_bytes(), user.clone(), now);
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
    )
    .with_header(header::PROXY_AUTHENTICATE, challenge()))
}
