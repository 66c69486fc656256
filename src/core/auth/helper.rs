//! Squid's helper protocol, as text: the request lines the proxy writes to a helper program
//! (`auth_param basic program`: `user password`; `external_acl_type … %LOGIN %g`: `user
//! group`), each field URL-escaped, with a channel ID in front when the helper takes several
//! requests at once (`concurrency`), and the reply lines it reads back (`[ID] OK|ERR|BH
//! [key=value …]`). Also the memory of group answers (`[auth.groups] ttl`) and the health
//! figures of a pool of helpers that `/status` and `/metrics` show.
//!
//! Pure: the processes, their queue and their clocks are `egress::helper`'s. Passwords go
//! into request lines and nowhere else: nothing here logs or formats one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a helper answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `OK`: the password is right, the user is in the group.
    Ok,
    /// `ERR`: the password is wrong, the user is not in the group.
    Err,
    /// `BH` ("broken helper"): the helper could not tell (its directory is down …).
    Bh,
}

impl Verdict {
    /// `ok`, `err` or `bh`, as metrics label them.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Err => "err",
            Verdict::Bh => "bh",
        }
    }
}

/// One reply line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The channel ID it answers, when the helper runs with `concurrency`.
    pub channel: Option<u64>,
    /// `OK`, `ERR` or `BH`.
    pub verdict: Verdict,
    /// `message=…`, or the free text an old helper puts after its verdict.
    pub message: Option<String>,
    /// `user=…`: the name the helper wants the user known by (records, rules).
    pub user: Option<String>,
}

/// Why a reply line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The channel ID is missing or not a number.
    #[error("the reply has no channel ID, though the helper runs with concurrency")]
    NoChannel,
    /// The verdict is not `OK`, `ERR` or `BH`.
    #[error("the reply is not OK, ERR or BH: {0:?}")]
    NoVerdict(String),
}

/// The longest reply line read, in bytes; longer ones are cut (and the rest skipped).
pub const MAX_REPLY_LINE: usize = 8192;

/// The characters a field may carry as they are; every other byte is `%XX`. Squid's helpers
/// unescape every field (`rfc1738_unescape`), so escaping more than needed is harmless.
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@')
}

/// `field` URL-escaped, as Squid writes user names, passwords and group names to helpers.
pub fn escape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    for &b in field.as_bytes() {
        if is_plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `%XX` sequences decoded (a `%` without two hex digits is kept as it is); bytes that are not
/// UTF-8 are replaced.
pub fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One request line, newline included: `[channel ]field field…`, each field escaped.
pub fn request_line(channel: Option<u64>, fields: &[&str]) -> String {
    let mut line = String::new();
    if let Some(id) = channel {
        line.push_str(&id.to_string());
        line.push(' ');
    }
    let escaped: Vec<String> = fields.iter().map(|f| escape(f)).collect();
    line.push_str(&escaped.join(" "));
    line.push('\n');
    line
}

/// Reads one reply line (without its newline). `channels`: the helper runs with channel IDs,
/// so the line starts with one.
pub fn parse_reply(line: &str, channels: bool) -> Result<Reply, ReplyError> {
    let line = line.trim_end_matches(['\r', '\n']).trim_start();
    let (channel, rest) = if channels {
        let (id, rest) = line.split_once(' ').unwrap_or((line, ""));
        let id = id.parse::<u64>().map_err(|_| ReplyError::NoChannel)?;
        (Some(id), rest.trim_start())
    } else {
        (None, line)
    };
    let (word, rest) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
    let verdict = match word {
        "OK" => Verdict::Ok,
        "ERR" => Verdict::Err,
        "BH" => Verdict::Bh,
        other => return Err(ReplyError::NoVerdict(shorten(other))),
    };
    let mut reply = Reply {
        channel,
        verdict,
        message: None,
        user: None,
    };
    let mut free = Vec::new();
    for (key, value) in pairs(rest) {
        match key {
            Some("message") => reply.message = Some(value),
            Some("user") if !value.is_empty() => reply.user = Some(value),
            Some(_) => {}
            None => free.push(value),
        }
    }
    if reply.message.is_none() && !free.is_empty() {
        reply.message = Some(free.join(" "));
    }
    reply.message = reply.message.map(|m| shorten(&clean(&m)));
    reply.user = reply.user.map(|u| clean(&u)).filter(|u| !u.is_empty());
    Ok(reply)
}

/// The `key=value` pairs of a reply (a value `"quoted"` with `\` escapes, or a token,
/// URL-escaped), and free words as `(None, word)`.
fn pairs(text: &str) -> Vec<(Option<&str>, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let end = rest.find([' ', '\t', '=']).unwrap_or(rest.len());
        let (word, after) = rest.split_at(end);
        if let Some(after) = after.strip_prefix('=') {
            if let Some(quoted) = after.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut consumed = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, next)) = chars.next() {
                                value.push(next);
                            }
                        }
                        '"' => {
                            consumed = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                out.push((Some(word), value));
                rest = quoted[consumed..].trim_start();
            } else {
                let end = after.find([' ', '\t']).unwrap_or(after.len());
                out.push((Some(word), unescape(&after[..end])));
                rest = after[end..].trim_start();
            }
        } else {
            out.push((None, unescape(word)));
            rest = after.trim_start();
        }
    }
    out
}

/// Control characters dropped: a helper's text goes into logs and pages.
fn clean(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

/// At most 200 characters of `text`, for messages.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// How a pool of helpers is doing, for `/status` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct HelperHealth {
    /// `auth` (log-ins) or `groups`.
    pub name: String,
    /// The program, as configured (its first word).
    pub program: String,
    /// Processes configured (`children`).
    pub children: usize,
    /// Processes running and ready now.
    pub running: usize,
    /// Requests waiting for a process.
    pub queued: usize,
    /// Requests written to a process and not yet answered.
    pub in_flight: usize,
    /// Processes started again after one ended or was killed.
    pub restarts: u64,
    /// Answers by verdict.
    pub ok: u64,
    /// `ERR` answers.
    pub err: u64,
    /// `BH` answers, and lines that are no answer.
    pub bh: u64,
    /// Requests that found no process running, or a full queue.
    pub unavailable: u64,
    /// Requests that got no answer in time (`timeout`).
    pub timeouts: u64,
    /// Seconds all answers took, summed (with `answers`, the mean).
    pub answer_seconds: f64,
    /// Answers counted in `answer_seconds`.
    pub answers: u64,
    /// The last thing that went wrong, if anything did.
    pub last_problem: Option<String>,
}

/// Group answers remembered (`[auth.groups] ttl` for members, `negative_ttl` for the
/// others), bounded: when full, the entry closest to expiry makes room.
#[derive(Debug)]
pub struct GroupCache {
    ttl: Duration,
    negative_ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<(String, String), (bool, Instant)>>,
}

impl GroupCache {
    /// An empty cache.
    pub fn new(ttl: Duration, negative_ttl: Duration, capacity: usize) -> Self {
        GroupCache {
            ttl: ttl.min(super::MAX_DURATION),
            negative_ttl: negative_ttl.min(super::MAX_DURATION),
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `user` is in `group`, if that is remembered at `now`.
    pub fn get(&self, user: &str, group: &str, now: Instant) -> Option<bool> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let key = (user.to_owned(), group.to_owned());
        match entries.get(&key) {
            Some((member, until)) if *until > now => Some(*member),
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Remembers an answer from `now`.
    pub fn insert(&self, user: &str, group: &str, member: bool, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let ttl = if member { self.ttl } else { self.negative_ttl };
        if ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let key = (user.to_owned(), group.to_owned());
        if !entries.contains_key(&key) && entries.len() >= self.capacity {
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= self.capacity {
                if let Some(soonest) = entries
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(k, _)| k.clone())
                {
                    entries.remove(&soonest);
                }
            }
        }
        entries.insert(key, (member, now + ttl));
    }

    /// Entries held (expired ones included until they are looked at).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_url_escaped_and_back() {
        let cases: &[(&str, &str)] = &[
            ("alice", "alice"),
            ("s3cret word", "s3cret%20word"),
            ("a%b", "a%25b"),
            ("jürgen", "j%C3%BCrgen"),
            ("x+y&z=1", "x%2By%26z%3D1"),
            ("line\nbreak", "line%0Abreak"),
            ("user@example.lan", "user@example.lan"),
            ("", ""),
        ];
        for (plain, escaped) in cases {
            assert_eq!(escape(plain), *escaped, "{plain:?}");
            assert_eq!(unescape(escaped), *plain, "{escaped:?}");
        }
        // Not an escape: kept as written.
        for text in ["100%", "%", "%4", "%zz", "a%2"] {
            assert_eq!(unescape(text), text);
        }
        assert_eq!(
            request_line(None, &["alice", "s3cret word"]),
            "alice s3cret%20word\n"
        );
        assert_eq!(
            request_line(Some(7), &["bob", "teachers"]),
            "7 bob teachers\n"
        );
    }

    #[test]
    fn replies_parse() {
        let r = |channel, verdict, message: Option<&str>, user: Option<&str>| Reply {
            channel,
            verdict,
            message: message.map(str::to_owned),
            user: user.map(str::to_owned),
        };
        let cases: &[(&str, bool, Result<Reply, ReplyError>)] = &[
            ("OK", false, Ok(r(None, Verdict::Ok, None, None))),
            ("OK\r\n", false, Ok(r(None, Verdict::Ok, None, None))),
            ("ERR", false, Ok(r(None, Verdict::Err, None, None))),
            ("BH", false, Ok(r(None, Verdict::Bh, None, None))),
            (
                "ERR message=\"Invalid credentials\"",
                false,
                Ok(r(None, Verdict::Err, Some("Invalid credentials"), None)),
            ),
            (
                "BH message=LDAP%20server%20down",
                false,
                Ok(r(None, Verdict::Bh, Some("LDAP server down"), None)),
            ),
            (
                "ERR Success",
                false,
                Ok(r(None, Verdict::Err, Some("Success"), None)),
            ),
            (
                "OK user=Alice tag=x",
                false,
                Ok(r(None, Verdict::Ok, None, Some("Alice"))),
            ),
            (
                "3 OK user=\"a \\\"b\\\"\"",
                true,
                Ok(r(Some(3), Verdict::Ok, None, Some("a \"b\""))),
            ),
            ("0 ERR", true, Ok(r(Some(0), Verdict::Err, None, None))),
            ("OK", true, Err(ReplyError::NoChannel)),
            ("", true, Err(ReplyError::NoChannel)),
            ("0 OK", false, Err(ReplyError::NoVerdict("0".into()))),
            ("ok", false, Err(ReplyError::NoVerdict("ok".into()))),
            ("", false, Err(ReplyError::NoVerdict(String::new()))),
            (
                "ERR message=\"bell\u{7}\"",
                false,
                Ok(r(None, Verdict::Err, Some("bell"), None)),
            ),
        ];
        for (line, channels, want) in cases {
            assert_eq!(&parse_reply(line, *channels), want, "{line:?}");
        }
    }

    #[test]
    fn group_answers_are_remembered_for_their_ttl_and_bounded() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let cache = GroupCache::new(s(60), s(10), 2);
        cache.insert("alice", "teachers", true, t0);
        cache.insert("bob", "teachers", false, t0);
        assert_eq!(cache.get("alice", "teachers", t0 + s(59)), Some(true));
        assert_eq!(cache.get("bob", "teachers", t0 + s(9)), Some(false));
        assert_eq!(cache.get("bob", "teachers", t0 + s(10)), None);
        assert_eq!(cache.get("alice", "pupils", t0), None);
        assert_eq!(cache.get("alice", "teachers", t0 + s(60)), None);
        // Full: the entry closest to its end makes room.
        cache.insert("a", "g", true, t0);
        cache.insert("b", "g", false, t0);
        cache.insert("c", "g", true, t0);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get("b", "g", t0), None);
        assert_eq!(cache.get("c", "g", t0), Some(true));
        let none = GroupCache::new(s(60), s(0), 0);
        none.insert("a", "g", true, t0);
        assert!(none.is_empty());
    }
}
