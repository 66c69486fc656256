//! The log-in step of the plan (`[auth]`): the failed-log-in block, the credential cache, and
//! the password check — the htpasswd file's, off the reactor (bcrypt is slow on purpose), or
//! the helper program's (`egress::helper`) — then the groups the rules name, asked of the
//! group helper. The HTTP front
//! door reads `Proxy-Authorization` here; the SOCKS one reads RFC 1929 and calls [`log_in`].

use http::{header, HeaderValue, Request};
use tracing::warn;

use crate::core::auth::helper::Verdict;
use crate::core::auth::{challenge, parse_basic};
use crate::core::error::{EdgeError, ErrorKind};
use crate::core::policy::{Builtin, GroupAnswer};
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
/// success sets the exchange's user (and, with `[auth.groups]`, what the group helper says of
/// the groups the rules name); a wrong password counts towards `auth.max_failures`, a helper
/// that cannot answer does not (the client gets 407 with the reason).
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
        return logged_in(ex, user).await;
    }
    let (user, password) = match offered() {
        Ok(offered) => offered,
        Err(reason) => {
            warn!(target: "portcullis::auth", client = %ip, user = "-", reason = %reason, "authentication failed");
            login.failures.note_failure(ip, now);
            return Err(EdgeError::refusal(ErrorKind::Auth, Builtin::Auth, reason));
        }
    };
    // Counted before the check, so that checks at once cannot all pass the block.
    let Some(_attempt) = login.failures.attempt(ip, now) else {
        return Err(EdgeError::refusal(
            ErrorKind::Limit,
            Builtin::AuthMaxFailures,
            format!("too many log-ins from {ip} failed or under way at once (auth.max_failures); try again in 1 s"),
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from(1)));
    };
    let helpers = ex.shared.helpers.load_full();
    // The file decides for the users it lists, and for everyone when there is no helper.
    let by_file = match &auth.users {
        Some(users) if auth.program.is_none() || auth.in_file(&user) => Some(users.clone()),
        _ => None,
    };
    let checked = if let Some(users) = by_file {
        let name = user.clone();
        // bcrypt takes tens of milliseconds on purpose: keep it off the reactor.
        let verified = tokio::task::spawn_blocking(move || users.verify(&name, &password))
            .await
            .unwrap_or(false);
        Checked::Verdict(verified.then(|| user.clone()), None)
    } else if let Some(helper) = &helpers.auth {
        match helper.ask(&[&user, &password]).await {
            Ok(reply) => match reply.verdict {
                Verdict::Ok => {
                    Checked::Verdict(Some(reply.user.unwrap_or_else(|| user.clone())), None)
                }
                Verdict::Err => Checked::Verdict(None, reply.message),
                // Counted as a failed log-in: Debian's basic_ldap_auth answers BH to some
                // wrong passwords, and guessing must stay blocked.
                Verdict::Bh => Checked::Verdict(
                    None,
                    Some(format!(
                        "the helper could not check it: {}",
                        reply.message.as_deref().unwrap_or("BH")
                    )),
                ),
            },
            Err(e) => Checked::Unanswered(e.to_string()),
        }
    } else {
        Checked::Unanswered("no auth helper is running".to_owned())
    };
    match checked {
        Checked::Verdict(Some(approved), _) => {
            login.failures.note_success(ip);
            login.credentials.insert(key, approved.clone(), now);
            logged_in(ex, approved).await
        }
        Checked::Verdict(None, message) => {
            warn!(target: "portcullis::auth", client = %ip, user = %user, "authentication failed");
            login.failures.note_failure(ip, now);
            let said = message.map(|m| format!(" ({m})")).unwrap_or_default();
            Err(EdgeError::refusal(
                ErrorKind::Auth,
                Builtin::Auth,
                format!("wrong user name or password for user {user:?}{said}"),
            ))
        }
        Checked::Unanswered(why) => {
            warn!(target: "portcullis::auth", client = %ip, user = %user, reason = %why, "log-in not checked: the helper gave no answer");
            Err(EdgeError::refusal(
                ErrorKind::Auth,
                Builtin::Auth,
                format!(
                    "the password of user {user:?} cannot be checked now: {why}; try again later"
                ),
            ))
        }
    }
}

/// What the password check came to.
enum Checked {
    /// Right (the name to go by) or wrong (with the helper's message, if any).
    Verdict(Option<String>, Option<String>),
    /// The helper gave no answer: why.
    Unanswered(String),
}

/// Sets the exchange's user, and asks the group helper about the groups the rules name.
async fn logged_in(ex: &mut Exchange, user: String) -> Result<(), EdgeError> {
    ex.record.user(&user);
    ex.groups = groups_of(ex, &user).await;
    ex.user = Some(user);
    Ok(())
}

/// What the group helper says of `user` and each group a rule names, from the cache or
/// asked (all at once, each bounded by the helper's timeout). Empty without `[auth.groups]`.
pub(crate) async fn groups_of(ex: &Exchange, user: &str) -> Vec<GroupAnswer> {
    let names = ex.settings.policy.group_names();
    if names.is_empty() {
        return Vec::new();
    }
    let helpers = ex.shared.helpers.load_full();
    let login = ex.shared.login.load_full();
    let now = std::time::Instant::now();
    let mut answers = Vec::with_capacity(names.len());
    let mut asked = tokio::task::JoinSet::new();
    for group in names {
        if let Some(member) = login.groups.get(user, &group, now) {
            answers.push(GroupAnswer {
                group,
                member: Ok(member),
            });
            continue;
        }
        let Some(helper) = helpers.groups.clone() else {
            answers.push(GroupAnswer {
                group,
                member: Err("no group helper is running".to_owned()),
            });
            continue;
        };
        let user = user.to_owned();
        asked.spawn(async move {
            let member = helper.member(&user, &group).await;
            GroupAnswer { group, member }
        });
    }
    while let Some(done) = asked.join_next().await {
        let Ok(answer) = done else { continue };
        match &answer.member {
            Ok(member) => login.groups.insert(user, &answer.group, *member, now),
            Err(why) => {
                warn!(target: "portcullis::auth", user = %user, group = %answer.group, reason = %why, "group not checked");
            }
        }
        answers.push(answer);
    }
    answers
}
