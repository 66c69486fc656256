//! Reading access log lines: Squid's native format and the JSON format (see the module doc
//! of [`crate::ops::report`]), the time bounds of `--since`/`--until` and the window they make.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// Which access log format a line was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// Squid's native format.
    Squid,
    /// One JSON object a line.
    Json,
}

/// What a report needs of one access log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// When the request arrived, in milliseconds since 1970-01-01 UTC.
    pub time_ms: u64,
    /// The client's address, as logged.
    pub client: Cow<'a, str>,
    /// The authenticated user.
    pub user: Option<Cow<'a, str>>,
    /// The destination host (`-` when none could be read).
    pub host: Cow<'a, str>,
    /// The destination port (0 when unknown).
    pub port: u16,
    /// Whether the proxy refused the request.
    pub denied: bool,
    /// Whether the proxy answered it with its own pages (Squid's `TCP_MEM_HIT`, the JSON
    /// format's rule `local`): no traffic through the proxy, so a report leaves it out.
    pub own_page: bool,
    /// Payload bytes from the client (always 0 in the Squid format).
    pub bytes_up: u64,
    /// Payload bytes to the client.
    pub bytes_down: u64,
    /// The failure's kind as logged (the JSON format's `error` field: `refused`, `dns` …);
    /// `None` when the exchange did not fail, and for every Squid line (the format has no
    /// such field). A name this version does not know is kept as it is.
    pub error: Option<Cow<'a, str>>,
    /// The proxy that wrote the line (the JSON format's `instance` field); `None` for JSON
    /// lines written before the field existed and for every Squid line (the format has no
    /// such field).
    pub instance: Option<Cow<'a, str>>,
    /// The format the line was in.
    pub format: LineFormat,
}

/// Why a line is not an access record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadLine(pub &'static str);

/// Reads one line (without its line ending) of either format: a line whose first non-blank
/// character is `{` is JSON, any other is Squid's native format.
pub fn parse_line(line: &str) -> Result<Entry<'_>, BadLine> {
    if line.trim_start().starts_with('{') {
        parse_json(line)
    } else {
        parse_squid(line)
    }
}

fn parse_squid(line: &str) -> Result<Entry<'_>, BadLine> {
    let mut fields = line.split_ascii_whitespace();
    let mut next = || fields.next().ok_or(BadLine("fewer than 10 fields"));
    let (time, elapsed, client, code_status) = (next()?, next()?, next()?, next()?);
    let (bytes, _method, url, user, _hierarchy, _type) =
        (next()?, next()?, next()?, next()?, next()?, next()?);
    let end_ms = squid_time(time)?;
    let elapsed: u64 = digits(elapsed).ok_or(BadLine("the elapsed time is not a number"))?;
    let (code, status) = code_status
        .split_once('/')
        .ok_or(BadLine("the result field is not CODE/STATUS"))?;
    if code.is_empty() || digits(status).is_none() {
        return Err(BadLine("the result field is not CODE/STATUS"));
    }
    let bytes_down = digits(bytes).ok_or(BadLine("the size is not a number"))?;
    let (host, port) = squid_url(url)?;
    Ok(Entry {
        time_ms: end_ms.saturating_sub(elapsed),
        client: Cow::Borrowed(client),
        user: (user != "-").then(|| unescape(user)),
        host,
        port,
        denied: code.starts_with("TCP_DENIED") || code.starts_with("NONE"),
        own_page: code == "TCP_MEM_HIT",
        bytes_up: 0,
        bytes_down,
        error: None,
        instance: None,
        format: LineFormat::Squid,
    })
}

/// A run of ASCII digits as a number (no sign, no blanks).
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `1764152429.228` → milliseconds.
fn squid_time(text: &str) -> Result<u64, BadLine> {
    const BAD: BadLine = BadLine("the time is not seconds.millis");
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs = digits(secs).ok_or(BAD)?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BAD);
    }
    let mut millis = 0;
    for (i, b) in frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .enumerate()
    {
        millis += u64::from(b - b'0') * [100, 10, 1][i];
    }
    secs.checked_mul(1000)
        .and_then(|ms| ms.checked_add(millis))
        .ok_or(BAD)
}

/// The host and port of a logged URL (see the module doc).
fn squid_url(url: &str) -> Result<(Cow<'_, str>, u16), BadLine> {
    const BAD: BadLine = BadLine("the URL has no readable host and port");
    if url == "-" {
        return Ok((Cow::Borrowed("-"), 0));
    }
    let (default_port, rest) = match url.split_once("://") {
        Some((scheme, rest)) => {
            let is = |name: &str| scheme.eq_ignore_ascii_case(name);
            let port = if is("http") || is("ws") {
                80
            } else if is("https") || is("wss") {
                443
            } else if is("ftp") {
                21
            } else {
                0
            };
            (port, rest)
        }
        None => (0, url),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']').ok_or(BAD)?;
        let (host, after) = authority.split_at(end + 1);
        match after {
            "" => (host, default_port),
            _ => (host, port_number(after.strip_prefix(':').ok_or(BAD)?)?),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, port_number(port)?),
            None => (authority, default_port),
        }
    };
    if host.is_empty() {
        return Err(BAD);
    }
    Ok((unescape(host), port))
}

fn port_number(text: &str) -> Result<u16, BadLine> {
    digits(text)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or(BadLine("the URL's port is not a number up to 65535"))
}

/// Undoes the `%XX` escapes of the Squid format's fields.
fn unescape(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// The fields of a `log::JsonRecord` that a report reads; the others are ignored.
#[derive(Deserialize)]
struct JsonLine<'a> {
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(borrow)]
    client: Cow<'a, str>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    host: Cow<'a, str>,
    port: u16,
    #[serde(borrow)]
    decision: Cow<'a, str>,
    #[serde(borrow, default)]
    rule: Option<Cow<'a, str>>,
    bytes_up: u64,
    bytes_down: u64,
    #[serde(borrow, default)]
    error: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    instance: Option<Cow<'a, str>>,
}

fn parse_json(line: &str) -> Result<Entry<'_>, BadLine> {
    let record: JsonLine<'_> =
        serde_json::from_str(line).map_err(|_| BadLine("not a JSON access record"))?;
    let time = humantime::parse_rfc3339_weak(&record.time)
        .map_err(|_| BadLine("the time is not RFC 3339"))?;
    let denied = match &*record.decision {
        "deny" => true,
        "allow" => false,
        _ => return Err(BadLine("the decision is neither allow nor deny")),
    };
    Ok(Entry {
        time_ms: millis_since_epoch(time),
        client: record.client,
        user: record.user.filter(|u| !u.is_empty() && u != "-"),
        host: match record.host {
            h if h.is_empty() => Cow::Borrowed("-"),
            h => h,
        },
        port: record.port,
        denied,
        own_page: record.rule.as_deref() == Some("local"),
        bytes_up: record.bytes_up,
        bytes_down: record.bytes_down,
        error: record.error.filter(|e| !e.is_empty()),
        instance: record.instance.filter(|i| !i.is_empty() && i != "-"),
        format: LineFormat::Json,
    })
}

fn millis_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The same instant rounded up to a whole millisecond.
fn millis_ceil(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let ms = millis_since_epoch(t);
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        ms
    } else {
        ms.saturating_add(1)
    }
}

pub(super) fn time_of(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Parses `--since`: an RFC 3339 time (UTC) or a `YYYY-MM-DD` date (its midnight, UTC).
pub fn parse_since(text: &str) -> Result<SystemTime, String> {
    parse_bound(text, false)
}

/// Parses `--until`: an RFC 3339 time (UTC), or a `YYYY-MM-DD` date meaning the end of that
/// day (the next midnight, UTC).
pub fn parse_until(text: &str) -> Result<SystemTime, String> {
    parse_bound(text, true)
}

fn parse_bound(text: &str, end_of_day: bool) -> Result<SystemTime, String> {
    let text = text.trim();
    let is_date = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if is_date {
        let midnight = humantime::parse_rfc3339(&format!("{text}T00:00:00Z"))
            .map_err(|e| format!("{text:?} is not a valid date: {e}"))?;
        return Ok(if end_of_day {
            midnight + Duration::from_secs(86_400)
        } else {
            midnight
        });
    }
    humantime::parse_rfc3339_weak(text).map_err(|e| {
        format!("{text:?} is neither an RFC 3339 time in UTC (2025-11-26T10:00:00Z) nor a date (2025-11-26): {e}")
    })
}

/// The time window of a report: `since <= arrival < until`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    since_ms: Option<u64>,
    until_ms: Option<u64>,
}

impl Window {
    /// The records that arrived at or after `since` and before `until`.
    pub fn new(since: Option<SystemTime>, until: Option<SystemTime>) -> Self {
        Window {
            since_ms: since.map(millis_ceil),
            until_ms: until.map(millis_ceil),
        }
    }

    /// Whether a record that arrived at `time_ms` is inside.
    pub fn contains(&self, time_ms: u64) -> bool {
        self.since_ms.is_none_or(|s| time_ms >= s) && self.until_ms.is_none_or(|u| time_ms < u)
    }

    /// Whether no record can be inside.
    pub fn is_empty(&self) -> bool {
        matches!((self.since_ms, self.until_ms), (Some(s), Some(u)) if s >= u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::error::ErrorKind;
    use crate::core::policy::{Builtin, Decider};
    use crate::observe::access::{AccessRecord, Verdict};
    use crate::observe::log::{format_line, Format};
    use crate::ops::report::fixtures::*;
    use std::time::Duration;

    fn failed(mut e: Entry<'static>, kind: &'static str) -> Entry<'static> {
        e.error = Some(Cow::Borrowed(kind));
        e
    }

    #[test]
    fn both_formats_read_back_what_the_log_writes() {
        // (what changes from `record()`, the entry wanted)
        type Change = fn(&mut AccessRecord);
        let cases: Vec<(Change, Entry<'static>)> = vec![
            (|_| {}, entry("example.com", 80, Some("alice"), false)),
            (
                |r| r.port = 8080,
                entry("example.com", 8080, Some("alice"), false),
            ),
            (
                |r| {
                    r.method = "CONNECT".into();
                    r.path = None;
                    r.port = 443;
                    r.user = None;
                },
                entry("example.com", 443, None, false),
            ),
            // Refusals: TCP_DENIED (403, 407, 429) and NONE_NONE (400 …), aborted or not.
            (
                |r| {
                    r.verdict = Verdict::Deny;
                    r.status = 403;
                    r.upstream = None;
                    r.user = Some("alice smith".into());
                },
                entry("example.com", 80, Some("alice smith"), true),
            ),
            (
                |r| {
                    r.verdict = Verdict::Deny;
                    r.status = 407;
                    r.user = None;
                },
                entry("example.com", 80, None, true),
            ),
            (
                |r| {
                    r.verdict = Verdict::Deny;
                    r.status = 400;
                    r.path = None;
                    r.port = 0;
                },
                entry("example.com", 0, Some("alice"), true),
            ),
            (
                |r| {
                    r.verdict = Verdict::Deny;
                    r.status = 499;
                },
                entry("example.com", 80, Some("alice"), true),
            ),
            // Allowed, but the client left: TCP_MISS_ABORTED is not a refusal.
            (
                |r| r.status = 499,
                entry("example.com", 80, Some("alice"), false),
            ),
            // The proxy's own page: no host, TCP_MEM_HIT.
            (
                |r| {
                    r.rule = Decider::Builtin(Builtin::Local);
                    r.host = String::new();
                    r.path = None;
                    r.port = 0;
                },
                Entry {
                    own_page: true,
                    ..entry("-", 0, Some("alice"), false)
                },
            ),
            // The proxy's own pages answer a missing path with 404: still their own answer.
            (
                |r| {
                    r.rule = Decider::Builtin(Builtin::Local);
                    r.host = "proxy.lan".into();
                    r.path = Some("/apple-touch-icon.png".into());
                    r.port = 3128;
                    r.status = 404;
                },
                Entry {
                    own_page: true,
                    ..entry("proxy.lan", 3128, Some("alice"), false)
                },
            ),
            // IPv6 destinations, with and without a path.
            (
                |r| {
                    r.host = "[2001:db8::1]".into();
                    r.port = 8443;
                    r.path = None;
                    r.method = "CONNECT".into();
                },
                entry("[2001:db8::1]", 8443, Some("alice"), false),
            ),
            (
                |r| r.host = "[2001:db8::1]".into(),
                entry("[2001:db8::1]", 80, Some("alice"), false),
            ),
            // A failure: its kind is read back from JSON (Squid lines have none).
            (
                |r| {
                    r.status = 502;
                    r.error = Some(ErrorKind::Refused);
                    r.reason = Some("connection refused".into());
                },
                failed(entry("example.com", 80, Some("alice"), false), "refused"),
            ),
            (
                |r| {
                    r.verdict = Verdict::Deny;
                    r.status = 403;
                    r.error = Some(ErrorKind::Denied);
                },
                failed(entry("example.com", 80, Some("alice"), true), "denied"),
            ),
            // A user name with characters the Squid format escapes.
            (
                |r| r.user = Some("50% \"off\"".into()),
                entry("example.com", 80, Some("50% \"off\""), false),
            ),
        ];
        for (change, want) in cases {
            let mut r = record();
            change(&mut r);
            check(&r, want);
        }
        // An IPv6 client.
        let mut r = record();
        r.client = "[fd00::20]:5000".parse().unwrap();
        let mut want = entry("example.com", 80, Some("alice"), false);
        want.client = "fd00::20".into();
        check(&r, want);
    }

    #[test]
    fn the_proxys_instance_is_read_from_json_lines_only() {
        let mut line = Vec::new();
        crate::observe::format::write_json(&mut line, &record(), None, Some("proxy-a"));
        let text = std::str::from_utf8(&line).unwrap().trim_end();
        assert_eq!(
            parse_line(text).unwrap().instance.as_deref(),
            Some("proxy-a")
        );
        // Written without a name (null), and by versions before the field (absent).
        let null = format_line(Format::Json, &record(), None);
        assert!(null.contains("\"instance\":null"), "{null}");
        assert_eq!(parse_line(null.trim_end()).unwrap().instance, None);
        let older = null.replace(",\"instance\":null", "");
        assert_eq!(parse_line(older.trim_end()).unwrap().instance, None);
        let squid = format_line(Format::Squid, &record(), None);
        assert_eq!(parse_line(squid.trim_end()).unwrap().instance, None);
    }

    #[test]
    fn squid_time_is_the_end_and_arrival_is_recovered() {
        let mut r = record();
        r.duration = Duration::from_millis(3_600_000 + 7);
        let line = format_line(Format::Squid, &r, None);
        assert!(line.starts_with("1764156029.130 3600007 "), "{line}");
        assert_eq!(parse_line(line.trim_end()).unwrap().time_ms, T0);
        assert_eq!(squid_time("1764152429"), Ok(1_764_152_429_000));
        assert_eq!(squid_time("1764152429.2"), Ok(1_764_152_429_200));
        assert_eq!(squid_time("1764152429.2345"), Ok(1_764_152_429_234));
    }

    #[test]
    fn squid_lines_from_squid_itself() {
        // Squid pads the time; https URLs default to 443.
        let line = " 1764152429.228    105 10.0.0.7 TCP_DENIED_REPLY/403 3800 GET https://a.example/x - HIER_NONE/- text/html";
        let e = parse_line(line).unwrap();
        assert_eq!(
            (e.host.as_ref(), e.port, e.denied),
            ("a.example", 443, true)
        );
        assert_eq!(e.time_ms, 1_764_152_429_228 - 105);
        let line =
            "1764152429.228 5 10.0.0.7 NONE/400 0 NONE error:invalid-request - HIER_NONE/- -";
        assert!(parse_line(line).is_err(), "no host in the URL");
    }

    #[test]
    fn malformed_lines_are_refused_not_panicked_on() {
        let good = format_line(Format::Squid, &record(), None);
        let fields: Vec<&str> = good.split_whitespace().collect();
        let with = |i: usize, value: &str| {
            let mut f = fields.clone();
            f[i] = value;
            f.join(" ")
        };
        let bad = [
            String::new(),
            "garbage".into(),
            fields[..9].join(" "),
            with(0, "yesterday"),
            with(0, "-1.5"),
            with(0, "99999999999999999999.000"),
            with(1, "1e3"),
            with(3, "TCP_MISS"),
            with(3, "TCP_MISS/ok"),
            with(3, "/200"),
            with(4, "-5"),
            with(6, "http://host:99999/"),
            with(6, "http://:80/"),
            with(6, "http://[::1/"),
            with(6, "host:port"),
            "{".into(),
            "{}".into(),
            "{\"time\":\"x\"}".into(),
            r#"{"time":"yesterday","client":"a","host":"h","port":1,"decision":"allow","bytes_up":1,"bytes_down":2}"#.into(),
            r#"{"time":"2025-11-26T10:20:29.123Z","client":"a","host":"h","port":70000,"decision":"allow","bytes_up":1,"bytes_down":2}"#.into(),
            r#"{"time":"2025-11-26T10:20:29.123Z","client":"a","host":"h","port":1,"decision":"maybe","bytes_up":1,"bytes_down":2}"#.into(),
            r#"{"time":"2025-11-26T10:20:29.123Z","client":"a","host":"h","port":1,"decision":"allow","bytes_up":-1,"bytes_down":2}"#.into(),
        ];
        for line in &bad {
            assert!(parse_line(line).is_err(), "{line:?} was read");
        }
        let ok = r#"{"time":"2025-11-26T10:20:29.123Z","client":"a","host":"h","port":1,"decision":"allow","bytes_up":1,"bytes_down":2}"#;
        assert_eq!(parse_line(ok).unwrap().time_ms, T0);
    }
}
