//! The access log's line formats: Squid's native format, the Common Log Format and JSON,
//! one [`AccessRecord`] a line. The formats, field by field, are in the book
//! (docs/src/access-log.md); [`crate::ops::report`] reads them back.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::Format;
use crate::core::error::ErrorKind;
use crate::core::policy::{Builtin, Decider};
use crate::observe::access::{AccessRecord, Verdict};

/// One record as one line (ending in `\n`) in `format`; `name` is the client's friendly name.
pub fn format_line(format: Format, r: &AccessRecord, name: Option<&str>) -> String {
    match format {
        Format::Squid => squid(r),
        Format::Common => common(r),
        Format::Json => json(r, name),
    }
}

/// The URL as logged: `http://host[:port]/path` for plain HTTP, `host:port` for CONNECT.
pub fn logged_url(r: &AccessRecord) -> String {
    let mut url = Vec::with_capacity(r.host.len() + r.path.as_ref().map_or(0, String::len) + 14);
    LoggedUrl(r).write(&mut url);
    // Only whole strings and ASCII are appended.
    String::from_utf8(url).unwrap_or_default()
}

/// [`logged_url`], written where it is needed.
struct LoggedUrl<'a>(&'a AccessRecord);

impl LoggedUrl<'_> {
    /// Appends the URL to `out`.
    fn write(&self, out: &mut Vec<u8>) {
        let r = self.0;
        let host = r.host.as_bytes();
        let port = |out: &mut Vec<u8>| {
            out.push(b':');
            out.extend_from_slice(itoa::Buffer::new().format(r.port).as_bytes());
        };
        if host.is_empty() {
            return out.push(b'-');
        }
        match &r.path {
            Some(path) => {
                out.extend_from_slice(b"http://");
                out.extend_from_slice(host);
                if r.port != 80 {
                    port(out);
                }
                out.extend_from_slice(path.as_bytes());
            }
            None => {
                out.extend_from_slice(host);
                if r.port != 0 {
                    port(out);
                }
            }
        }
    }
}

/// Squid's result code for a record (`TCP_MISS`, `TCP_TUNNEL`, `TCP_DENIED` …).
pub fn squid_code(r: &AccessRecord) -> &'static str {
    let aborted = r.status == 499;
    match (r.verdict, r.method.as_str()) {
        (Verdict::Deny, _) if matches!(r.status, 403 | 407 | 429) => "TCP_DENIED",
        (Verdict::Deny, _) => {
            if aborted {
                "NONE_NONE_ABORTED"
            } else {
                "NONE_NONE"
            }
        }
        (Verdict::Allow, _) if r.rule == Decider::Builtin(Builtin::Local) => "TCP_MEM_HIT",
        (Verdict::Allow, "CONNECT") => "TCP_TUNNEL",
        (Verdict::Allow, _) if aborted => "TCP_MISS_ABORTED",
        (Verdict::Allow, _) => "TCP_MISS",
    }
}

fn unix_seconds(t: SystemTime) -> (u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.subsec_millis())
}

/// Replaces what would split a whitespace-separated field.
fn field(text: &str) -> String {
    if text.is_empty() {
        return "-".to_owned();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_whitespace() || c.is_control() || c == '"' || c == '%' {
            for b in c.to_string().bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn squid(r: &AccessRecord) -> String {
    let (secs, millis) = unix_seconds(r.time + r.duration);
    let status = if r.status == 499 { 0 } else { r.status };
    let hierarchy = match (r.upstream, &r.parent) {
        (Some(addr), Some(_)) => format!("FIRSTUP_PARENT/{}", addr.ip()),
        (Some(addr), None) => format!("HIER_DIRECT/{}", addr.ip()),
        (None, _) => "HIER_NONE/-".to_owned(),
    };
    format!(
        "{secs}.{millis:03} {:>6} {} {}/{status:03} {} {} {} {} {hierarchy} -\n",
        r.duration.as_millis(),
        r.client.ip(),
        squid_code(r),
        r.bytes_down,
        field(&r.method),
        field(&logged_url(r)),
        field(r.user.as_deref().unwrap_or("")),
    )
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `26/Nov/2026:10:20:29 +0000`
pub fn clf_time(t: SystemTime) -> String {
    let (secs, _) = unix_seconds(t);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn common(r: &AccessRecord) -> String {
    let status = if r.status == 499 { 0 } else { r.status };
    format!(
        "{} - {} [{}] \"{} {} {}\" {status} {}\n",
        r.client.ip(),
        field(r.user.as_deref().unwrap_or("")),
        clf_time(r.time),
        field(&r.method),
        field(&logged_url(r)),
        r.version,
        r.bytes_down
    )
}

/// The JSON form of a record: every field, with stable names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonRecord {
    /// When the request arrived (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// From arrival to the end of the exchange.
    pub duration_ms: u64,
    /// The client's address.
    pub client: String,
    /// The client's port.
    pub client_port: u16,
    /// The client's friendly name (`[clients.names]`).
    pub client_name: Option<String>,
    /// The authenticated user.
    pub user: Option<String>,
    /// The method.
    pub method: String,
    /// The URL as in the Squid format.
    pub url: String,
    /// The destination host.
    pub host: String,
    /// The destination port.
    pub port: u16,
    /// The port's service name.
    pub service: Option<String>,
    /// The address the proxy connected to.
    pub upstream: Option<String>,
    /// Microseconds spent resolving the destination's name, when this exchange resolved
    /// one; absent from lines written before the field existed.
    #[serde(default)]
    pub dns_us: Option<u64>,
    /// Whether that resolution was answered from the cache (or `/etc/hosts`).
    #[serde(default)]
    pub dns_cached: Option<bool>,
    /// The parent proxy used, if any.
    #[serde(default)]
    pub parent: Option<String>,
    /// The status answered (499: none).
    pub status: u16,
    /// `allow` or `deny`.
    pub decision: String,
    /// What decided.
    pub rule: String,
    /// Why, for refusals and failures.
    pub reason: Option<String>,
    /// The failure's kind (`ErrorKind::as_str`: `refused`, `dns`, `timeout` …), `null` when
    /// the exchange did not fail; absent from lines written before the field existed.
    #[serde(default)]
    pub error: Option<String>,
    /// Payload bytes client to destination.
    pub bytes_up: u64,
    /// Payload bytes destination to client.
    pub bytes_down: u64,
    /// Milliseconds shaping held the transfer back, `null` when it never did; absent from
    /// lines written before the field existed.
    #[serde(default)]
    pub throttled_ms: Option<u64>,
    /// The proxy that wrote the line (`instance`), so that logs of several proxies can be
    /// merged; absent from lines written before the field existed.
    #[serde(default)]
    pub instance: Option<String>,
}

/// A record's time as RFC 3339 in UTC with milliseconds (`2026-11-26T10:20:29.123Z`), the
/// form `humantime` writes, built from digits without the formatting machinery.
pub(crate) struct Rfc3339Millis([u8; 24]);

impl Rfc3339Millis {
    pub(crate) fn new(t: SystemTime) -> Self {
        let (secs, millis) = unix_seconds(t);
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days as i64);
        let mut text = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut value: u64| {
            for i in (at..at + width).rev() {
                text[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year.clamp(0, 9999) as u64);
        put(5, 2, month.into());
        put(8, 2, day.into());
        put(11, 2, rem / 3600);
        put(14, 2, rem % 3600 / 60);
        put(17, 2, rem % 60);
        put(20, 3, millis.into());
        Rfc3339Millis(text)
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or("1970-01-01T00:00:00.000Z")
    }
}

fn json(r: &AccessRecord, name: Option<&str>) -> String {
    let mut line = Vec::with_capacity(384);
    write_json(&mut line, r, name, None);
    // Only whole UTF-8 strings and ASCII are written.
    String::from_utf8(line).unwrap_or_default()
}

/// Appends the JSON line of `r` (with its newline) to `out`: the [`JsonRecord`]'s fields in
/// its order, byte for byte the line serde_json writes for it (a test compares them), laid
/// out directly — a line is written for every request, and serde's general path cost about
/// 10% of a proxied request's instructions.
pub(crate) fn write_json(
    out: &mut Vec<u8>,
    r: &AccessRecord,
    name: Option<&str>,
    instance: Option<&str>,
) {
    let mut line = JsonOut { out };
    // `,"name":`, one piece of text made when compiling.
    macro_rules! key {
        ($name:literal) => {
            line.out
                .extend_from_slice(concat!(",\"", $name, "\":").as_bytes())
        };
    }
    line.out.extend_from_slice(b"{\"time\":");
    line.str(Rfc3339Millis::new(r.time).as_str());
    key!("duration_ms");
    line.num(r.duration.as_millis() as u64);
    key!("client");
    line.str(crate::core::target::AddrText::ip(r.client.ip()).as_str());
    key!("client_port");
    line.num(r.client.port().into());
    key!("client_name");
    line.opt(name);
    key!("user");
    line.opt(r.user.as_deref());
    key!("method");
    line.str(&r.method);
    key!("url");
    line.url(r);
    key!("host");
    line.str(&r.host);
    key!("port");
    line.num(r.port.into());
    key!("service");
    line.opt(r.service);
    key!("upstream");
    match r.upstream {
        Some(addr) => line.str(crate::core::target::AddrText::socket(addr).as_str()),
        None => line.null(),
    }
    key!("dns_us");
    match r.dns {
        Some(dns) => line.num(dns.took.as_micros() as u64),
        None => line.null(),
    }
    key!("dns_cached");
    match r.dns {
        Some(dns) => line
            .out
            .extend_from_slice(if dns.cached { b"true" } else { b"false" }),
        None => line.null(),
    }
    key!("parent");
    line.opt(r.parent.as_deref());
    key!("status");
    line.num(r.status.into());
    key!("decision");
    line.str(r.verdict.as_str());
    key!("rule");
    match &r.rule {
        Decider::Builtin(check) => line.str(check.as_str()),
        rule => line.str(&rule.to_string()),
    }
    key!("reason");
    line.opt(r.reason.as_deref());
    key!("error");
    line.opt(r.error.map(ErrorKind::as_str));
    key!("bytes_up");
    line.num(r.bytes_up);
    key!("bytes_down");
    line.num(r.bytes_down);
    key!("throttled_ms");
    match r.throttled {
        Some(held) => line.num(held.as_millis() as u64),
        None => line.null(),
    }
    key!("instance");
    line.opt(instance);
    line.out.extend_from_slice(b"}\n");
}

/// The pieces of a JSON line, appended to a buffer.
struct JsonOut<'a> {
    out: &'a mut Vec<u8>,
}

impl JsonOut<'_> {
    fn num(&mut self, n: u64) {
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    fn null(&mut self) {
        self.out.extend_from_slice(b"null");
    }

    fn opt(&mut self, text: Option<&str>) {
        match text {
            Some(text) => self.str(text),
            None => self.null(),
        }
    }

    /// `text` as a JSON string: copied between quotes as it is, unless JSON needs something in
    /// it escaped; then serde_json writes it.
    fn str(&mut self, text: &str) {
        if needs_escape(text.as_bytes()) {
            // Writing into a Vec cannot fail, nor can serializing a str.
            let _ = serde_json::to_writer(&mut *self.out, text);
        } else {
            self.out.reserve(text.len() + 2);
            self.out.push(b'"');
            self.out.extend_from_slice(text.as_bytes());
            self.out.push(b'"');
        }
    }

    /// The URL as [`logged_url`] gives it, as a JSON string.
    fn url(&mut self, r: &AccessRecord) {
        let start = self.out.len();
        self.out.push(b'"');
        LoggedUrl(r).write(self.out);
        if needs_escape(&self.out[start + 1..]) {
            // Only whole strings were appended, so the span is UTF-8.
            let url = String::from_utf8_lossy(&self.out[start + 1..]).into_owned();
            self.out.truncate(start);
            self.str(&url);
        } else {
            self.out.push(b'"');
        }
    }
}

/// Whether a JSON string needs part of `text` escaped: a quote, a backslash or a control
/// character (serde_json leaves everything else, non-ASCII included, as it is). Looks at eight
/// bytes at a time: a byte below 0x20 or equal to `"` or `\` leaves a borrow in that byte's
/// top bit (the classic "has a zero / a smaller byte" word tests, exact for whether one is
/// there).
fn needs_escape(text: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const TOPS: u64 = u64::from_ne_bytes([0x80; 8]);
    let below = |word: u64, limit: u8| word.wrapping_sub(ONES * limit as u64) & !word & TOPS;
    let special = |word: u64| {
        below(word, 0x20)
            | below(word ^ (ONES * b'"' as u64), 1)
            | below(word ^ (ONES * b'\\' as u64), 1)
            != 0
    };
    let mut words = text.chunks_exact(8);
    if words
        .by_ref()
        .any(|w| special(u64::from_ne_bytes(w.try_into().unwrap_or([0; 8]))))
    {
        return true;
    }
    // The last bytes, with plain letters after them.
    let mut last = [b'a'; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    special(u64::from_ne_bytes(last))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::core::policy::{Builtin, Decider};

    fn record() -> AccessRecord {
        AccessRecord::example()
    }

    #[test]
    fn json_lines_read_back_as_json_records_with_every_field() {
        // The line is written from borrowed fields; read back as the owned JsonRecord (the
        // documented schema) it must carry every field of the record.
        let mut odd = record();
        odd.user = Some("quote\" back\\slash \u{1} tab\t é 😀".into());
        odd.reason = Some("a \"reason\"\nwith a newline".into());
        odd.parent = Some("parent.lan:3128".into());
        odd.path = Some("/a\"b\\c".into());
        odd.rule = Decider::Rule("no \"ads\"".into());
        let mut tunnel = record();
        tunnel.method = "CONNECT".into();
        tunnel.path = None;
        tunnel.port = 443;
        tunnel.service = None;
        tunnel.user = None;
        tunnel.upstream = Some("[::1]:443".parse().unwrap());
        let mut unreadable = record();
        unreadable.host = String::new();
        unreadable.port = 0;
        unreadable.path = None;
        unreadable.upstream = None;
        unreadable.verdict = Verdict::Deny;
        unreadable.status = 400;
        unreadable.error = Some(ErrorKind::Client);
        let mut refused = record();
        refused.status = 502;
        refused.error = Some(ErrorKind::Refused);
        refused.reason = Some("connection refused".into());
        refused.dns = Some(crate::observe::access::DnsLookup {
            took: std::time::Duration::from_micros(1234),
            cached: false,
        });
        for (r, name) in [
            (record(), None),
            (odd, Some("Bob's \"PC\"")),
            (tunnel, Some("kitchen")),
            (unreadable, None),
            (refused, None),
        ] {
            let line = format_line(Format::Json, &r, name);
            let parsed: JsonRecord = serde_json::from_str(&line).unwrap();
            // Written again, the parsed record is the same line: same names, order and nulls.
            assert_eq!(serde_json::to_string(&parsed).unwrap() + "\n", line);
            assert_eq!(parsed, owned(&r, name));
        }
    }

    /// The owned JSON record of `r`, built with the standard library's formatting.
    fn owned(r: &AccessRecord, name: Option<&str>) -> JsonRecord {
        JsonRecord {
            time: humantime::format_rfc3339_millis(r.time).to_string(),
            duration_ms: r.duration.as_millis() as u64,
            client: r.client.ip().to_string(),
            client_port: r.client.port(),
            client_name: name.map(str::to_owned),
            user: r.user.clone(),
            method: r.method.clone(),
            url: match (&r.path, r.port) {
                _ if r.host.is_empty() => "-".to_owned(),
                (Some(path), 80) => format!("http://{}{path}", r.host),
                (Some(path), port) => format!("http://{}:{port}{path}", r.host),
                (None, 0) => r.host.clone(),
                (None, port) => format!("{}:{port}", r.host),
            },
            host: r.host.clone(),
            port: r.port,
            service: r.service.map(str::to_owned),
            upstream: r.upstream.map(|a| a.to_string()),
            dns_us: r.dns.map(|d| d.took.as_micros() as u64),
            dns_cached: r.dns.map(|d| d.cached),
            parent: r.parent.clone(),
            status: r.status,
            decision: r.verdict.as_str().to_owned(),
            rule: r.rule.to_string(),
            reason: r.reason.clone(),
            error: r.error.map(|k| k.as_str().to_owned()),
            bytes_up: r.bytes_up,
            bytes_down: r.bytes_down,
            throttled_ms: r.throttled.map(|d| d.as_millis() as u64),
            instance: None,
        }
    }

    #[test]
    fn json_lines_are_what_serde_json_writes_for_the_record_whatever_the_text() {
        // Every ASCII byte and some non-ASCII text at the start, middle and end of strings
        // around the 8-byte step of the escape check, in every string field; ports and paths in
        // each URL form; numbers of every width.
        let pieces = (0u8..0x80)
            .map(|b| char::from(b).to_string())
            .chain(["é", "😀", "\u{80}", "\u{2028}", "a\"b\\c\n"].map(String::from));
        let mut texts = vec![String::new()];
        for piece in pieces {
            for len in [1, 7, 8, 9, 15, 16, 17, 33] {
                for at in [0, len / 2, len - 1] {
                    texts.push(format!(
                        "{}{piece}{}",
                        "a".repeat(at),
                        "b".repeat(len - 1 - at)
                    ));
                }
            }
        }
        for (i, text) in texts.iter().enumerate() {
            let mut r = record();
            r.user = Some(text.clone());
            r.method = text.clone();
            r.host = text.clone();
            r.path = (i % 4 != 3).then(|| format!("/{text}"));
            r.port = [80, 0, 8080, 65535][i % 4];
            r.parent = Some(text.clone());
            r.reason = Some(text.clone());
            r.rule = match i % 2 {
                0 => Decider::Rule(text.as_str().into()),
                _ => Decider::Builtin(Builtin::PortsHttp),
            };
            r.bytes_up = u64::MAX >> (i % 64);
            r.error = (i % 5 != 0).then(|| ErrorKind::ALL[i % ErrorKind::ALL.len()]);
            r.duration = Duration::from_millis(i as u64 * 7919);
            let name = (i % 3 != 0).then_some(text.as_str());
            let line = format_line(Format::Json, &r, name);
            let want = serde_json::to_string(&owned(&r, name)).unwrap() + "\n";
            assert_eq!(line, want, "{text:?}");
        }
    }

    #[test]
    fn squid_lines_follow_the_native_layout() {
        let line = format_line(Format::Squid, &record(), None);
        assert_eq!(
            line,
            "1764152429.228    105 192.168.1.20 TCP_MISS/200 5120 GET http://example.com/index.html alice%20smith HIER_DIRECT/93.184.216.34 -\n"
        );
        let mut tunnel = record();
        tunnel.method = "CONNECT".into();
        tunnel.path = None;
        tunnel.port = 443;
        tunnel.user = None;
        let line = format_line(Format::Squid, &tunnel, None);
        assert!(
            line.contains(" TCP_TUNNEL/200 5120 CONNECT example.com:443 - HIER_DIRECT/"),
            "{line}"
        );
        let mut denied = tunnel.clone();
        denied.verdict = Verdict::Deny;
        denied.status = 403;
        denied.upstream = None;
        let line = format_line(Format::Squid, &denied, None);
        assert!(
            line.contains(" TCP_DENIED/403 5120 CONNECT example.com:443 - HIER_NONE/- -"),
            "{line}"
        );
    }

    #[test]
    fn common_and_json_lines() {
        assert_eq!(
            format_line(Format::Common, &record(), None),
            "192.168.1.20 - alice%20smith [26/Nov/2025:10:20:29 +0000] \"GET http://example.com/index.html HTTP/1.1\" 200 5120\n"
        );
        let line = format_line(Format::Json, &record(), Some("kids-laptop"));
        let parsed: JsonRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed.client_name.as_deref(), Some("kids-laptop"));
        assert_eq!(parsed.url, "http://example.com/index.html");
        assert_eq!(parsed.time, "2025-11-26T10:20:29.123Z");
        assert_eq!(
            (parsed.port, parsed.status, parsed.bytes_down),
            (80, 200, 5120)
        );
        // No failure: the field is there, null, as the format's other optional fields.
        assert!(line.contains(",\"reason\":null,\"error\":null,"), "{line}");
        let mut refused = record();
        refused.status = 502;
        refused.error = Some(ErrorKind::Refused);
        let line = format_line(Format::Json, &refused, None);
        assert!(line.contains(",\"error\":\"refused\","), "{line}");
        // A line written before the field existed still reads.
        let old = line.replace(",\"error\":\"refused\"", "");
        let parsed: JsonRecord = serde_json::from_str(&old).unwrap();
        assert_eq!(parsed.error, None);
        // Squid and Common lines do not carry the kind: a failure changes none of their bytes.
        for format in [Format::Squid, Format::Common] {
            let mut plain = refused.clone();
            plain.error = None;
            assert_eq!(
                format_line(format, &refused, None),
                format_line(format, &plain, None)
            );
        }
    }

    #[test]
    fn times_are_written_as_humantime_writes_them() {
        // Day and year boundaries, leap days, and a spread of instants up to 2300.
        let mut millis: Vec<u64> = vec![
            0,
            999,
            86_399_999,
            951_782_400_000,   // 2000-02-29
            4_107_542_399_999, // 2100-02-28T23:59:59.999
            1_764_152_429_123,
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            millis.push(x % 10_413_792_000_000);
        }
        for ms in millis {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(
                Rfc3339Millis::new(t).as_str(),
                humantime::format_rfc3339_millis(t).to_string(),
                "{ms} ms"
            );
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
