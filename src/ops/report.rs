//! `portcullis report [FILES…]`: usage per destination port, client, host or user, read back
//! from access logs in the `squid` and `json` formats that [`crate::observe::log`] writes.
//!
//! The core is pure: [`parse_line`] turns one line into an [`Entry`], [`Report`] aggregates
//! entries into one [`Row`] per port, client, host or user, and [`Report::render`] prints
//! the rows as a table, CSV or JSON. The thin outer part ([`collect`], [`run`]) opens the
//! inputs (files or standard input, gzip or plain, told apart by the gzip magic bytes), reads
//! them line by line with a bounded buffer and draws a progress line on a terminal. Memory does
//! not grow with the size of the input: lines are never kept, a line longer than
//! [`MAX_LINE_BYTES`] is skipped without being buffered, a group's distinct clients are counted
//! exactly up to [`EXACT_CLIENTS`] and estimated above it, and past [`MAX_GROUPS`] groups new
//! keys are counted together in one `(other)` row. Live counters are [`crate::observe::stats`]'s job.
//!
//! # Reading the Squid format
//!
//! Each line is `time elapsed client code/status bytes method URL user hierarchy type`, with
//! fields separated by runs of spaces (see `log::squid`). A report reads:
//!
//! | report field | Squid field |
//! | --- | --- |
//! | time (arrival) | 1st, `seconds.millis` at the *end* of the exchange, minus the 2nd (elapsed ms) |
//! | client | 3rd, the client's address |
//! | denied | 4th: the result code starts with `TCP_DENIED` or `NONE` |
//! | bytes down | 5th |
//! | bytes up | not in the format: 0 |
//! | host, port | 7th, the URL: `http://host[:port]/path` (port 80 by default; 443 for `https://`), `host:port` for CONNECT, `host` alone or `-` when the port or target was unreadable (port 0) |
//! | user | 8th, `-` for none; `%XX` escapes are decoded |
//!
//! The denial mapping follows `log::squid_code`: a refusal with 403, 407 or 429 is
//! `TCP_DENIED`; any other refused or malformed request is `NONE_NONE` (`NONE_NONE_ABORTED`
//! when no answer was sent). Allowed requests are `TCP_MISS`, `TCP_MISS_ABORTED`, `TCP_TUNNEL`
//! or `TCP_MEM_HIT` (the proxy's own pages), so "denied" here equals `"decision": "deny"` in the
//! JSON format. Lines of the JSON format are read by their fields: `time` (arrival),
//! `client`, `user`, `host`, `port`, `decision`, `bytes_up`, `bytes_down`.
//!
//! Times are arrival times in both formats, so `--since`, `--until`, "first seen" and "last
//! seen" mean the same whichever format a line is in. An empty host is reported as `-`, and a
//! missing user as `-`.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// A line longer than this is skipped as malformed, without being kept in memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// A group's distinct clients are counted exactly up to this many; above it the count is a
/// HyperLogLog estimate (about ±1.6 %).
pub const EXACT_CLIENTS: usize = 10_000;

/// At most this many groups are kept; records of further keys are counted in one `(other)`
/// row (ports never reach it: there are 65 536).
pub const MAX_GROUPS: usize = 250_000;

/// Inputs whose files add up to more than this show a progress line (on a terminal).
pub const PROGRESS_BYTES: u64 = 50 * 1024 * 1024;

/// How the report groups records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum GroupBy {
    /// The destination port (with its service name).
    #[default]
    Port,
    /// The client's address.
    Client,
    /// The destination host.
    Host,
    /// The authenticated user (`-`: none).
    User,
}

impl GroupBy {
    /// The name of the key column: `port`, `client`, `host` or `user`.
    pub fn key_name(self) -> &'static str {
        match self {
            GroupBy::Port => "port",
            GroupBy::Client => "client",
            GroupBy::Host => "host",
            GroupBy::User => "user",
        }
    }
}

/// How the report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns, human-readable sizes and a totals row.
    #[default]
    Table,
    /// A header and one row per group, raw numbers (RFC 4180).
    Csv,
    /// One JSON array of objects, raw numbers.
    Json,
}

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
    /// Payload bytes from the client (always 0 in the Squid format).
    pub bytes_up: u64,
    /// Payload bytes to the client.
    pub bytes_down: u64,
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
        bytes_up: 0,
        bytes_down,
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
    bytes_up: u64,
    bytes_down: u64,
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
        bytes_up: record.bytes_up,
        bytes_down: record.bytes_down,
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

fn time_of(ms: u64) -> SystemTime {
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

/// A `Hasher` for values that already are 64-bit hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

fn client_hash(client: &str) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(client.as_bytes());
    h.finish()
}

/// HyperLogLog registers (2^12 of them: 4 KiB, a standard error of 1.04/64 ≈ 1.6 %).
const HLL_BITS: u32 = 12;

/// A HyperLogLog sketch (Flajolet et al., 2007) over 64-bit hashes.
#[derive(Debug, Clone)]
struct HyperLogLog {
    registers: Box<[u8]>,
}

impl HyperLogLog {
    fn new() -> Self {
        HyperLogLog {
            registers: vec![0; 1 << HLL_BITS].into_boxed_slice(),
        }
    }

    fn insert(&mut self, hash: u64) {
        let index = (hash >> (64 - HLL_BITS)) as usize;
        let rank = ((hash << HLL_BITS).leading_zeros().min(64 - HLL_BITS) + 1) as u8;
        if let Some(register) = self.registers.get_mut(index) {
            *register = (*register).max(rank);
        }
    }

    fn estimate(&self) -> u64 {
        let m = self.registers.len() as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let (sum, zeros) = self.registers.iter().fold((0.0, 0u32), |(sum, zeros), &r| {
            (sum + 2f64.powi(-i32::from(r)), zeros + u32::from(r == 0))
        });
        let raw = alpha * m * m / sum;
        let estimate = if raw <= 2.5 * m && zeros > 0 {
            m * (m / f64::from(zeros)).ln()
        } else {
            raw
        };
        estimate.round() as u64
    }
}

/// Distinct clients: exact up to [`EXACT_CLIENTS`], then estimated.
#[derive(Debug, Clone)]
enum Distinct {
    Exact(HashSet<u64, BuildHasherDefault<Prehashed>>),
    Estimate(HyperLogLog),
}

impl Default for Distinct {
    fn default() -> Self {
        Distinct::Exact(HashSet::default())
    }
}

impl Distinct {
    fn insert(&mut self, hash: u64) {
        match self {
            Distinct::Exact(set) => {
                if set.insert(hash) && set.len() > EXACT_CLIENTS {
                    let mut sketch = HyperLogLog::new();
                    set.iter().for_each(|&h| sketch.insert(h));
                    *self = Distinct::Estimate(sketch);
                }
            }
            Distinct::Estimate(sketch) => sketch.insert(hash),
        }
    }

    /// The count, and whether it is exact.
    fn count(&self) -> (u64, bool) {
        match self {
            Distinct::Exact(set) => (set.len() as u64, true),
            Distinct::Estimate(sketch) => (sketch.estimate(), false),
        }
    }
}

/// The running totals of one group.
#[derive(Debug, Clone, Default)]
struct Group {
    requests: u64,
    denied: u64,
    bytes_up: u64,
    bytes_down: u64,
    first_ms: u64,
    last_ms: u64,
    clients: Distinct,
}

impl Group {
    fn add(&mut self, e: &Entry<'_>, client: u64) {
        if self.requests == 0 {
            (self.first_ms, self.last_ms) = (e.time_ms, e.time_ms);
        } else {
            self.first_ms = self.first_ms.min(e.time_ms);
            self.last_ms = self.last_ms.max(e.time_ms);
        }
        self.requests += 1;
        self.denied += u64::from(e.denied);
        self.bytes_up = self.bytes_up.saturating_add(e.bytes_up);
        self.bytes_down = self.bytes_down.saturating_add(e.bytes_down);
        self.clients.insert(client);
    }

    fn row(&self, key: RowKey) -> Row {
        let (clients, clients_exact) = self.clients.count();
        Row {
            key,
            requests: self.requests,
            denied: self.denied,
            bytes_up: self.bytes_up,
            bytes_down: self.bytes_down,
            clients,
            clients_exact,
            first_seen: time_of(self.first_ms),
            last_seen: time_of(self.last_ms),
        }
    }
}

/// What a row of the report is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RowKey {
    /// A destination port.
    Port(u16),
    /// A client address, host or user.
    Name(String),
    /// Every key past [`MAX_GROUPS`].
    Other,
    /// All records.
    Total,
}

impl RowKey {
    fn text(&self) -> Cow<'_, str> {
        match self {
            RowKey::Port(port) => Cow::Owned(port.to_string()),
            RowKey::Name(name) => Cow::Borrowed(name),
            RowKey::Other => Cow::Borrowed("(other)"),
            RowKey::Total => Cow::Borrowed("TOTAL"),
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The group.
    pub key: RowKey,
    /// Requests and tunnels.
    pub requests: u64,
    /// Of which refused.
    pub denied: u64,
    /// Payload bytes from clients.
    pub bytes_up: u64,
    /// Payload bytes to clients.
    pub bytes_down: u64,
    /// Distinct client addresses.
    pub clients: u64,
    /// Whether `clients` is exact (at most [`EXACT_CLIENTS`]) rather than an estimate.
    pub clients_exact: bool,
    /// When the first request arrived.
    pub first_seen: SystemTime,
    /// When the last request arrived.
    pub last_seen: SystemTime,
}

/// Where the first malformed line was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLineAt {
    /// The input's name (a path, or `standard input`).
    pub input: String,
    /// The line number, from 1.
    pub line: u64,
    /// What was wrong with it.
    pub why: &'static str,
}

/// Counts of what was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Non-blank lines read.
    pub lines: u64,
    /// Records inside the time window, counted in the groups.
    pub counted: u64,
    /// Records outside the time window.
    pub outside: u64,
    /// Malformed lines, skipped.
    pub skipped: u64,
    /// Records in the Squid format (which has no bytes up).
    pub squid: u64,
    /// The first malformed line.
    pub first_bad: Option<BadLineAt>,
}

/// Usage aggregated from access log records, grouped by one key.
#[derive(Debug, Clone)]
pub struct Report {
    by: GroupBy,
    window: Window,
    ports: HashMap<u16, Group>,
    names: HashMap<String, Group>,
    other: Option<Group>,
    total: Group,
    counts: Counts,
}

/// Lines between two calls of a scan's progress callback.
const TICK_LINES: u64 = 16_384;

impl Report {
    /// An empty report grouped `by`, counting the records inside `window`.
    pub fn new(by: GroupBy, window: Window) -> Self {
        Report {
            by,
            window,
            ports: HashMap::new(),
            names: HashMap::new(),
            other: None,
            total: Group::default(),
            counts: Counts::default(),
        }
    }

    /// What was read so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Whether some keys were counted together in the `(other)` row.
    pub fn overflowed(&self) -> bool {
        self.other.is_some()
    }

    /// Counts one record (if it is inside the window).
    pub fn add(&mut self, e: &Entry<'_>) {
        if e.format == LineFormat::Squid {
            self.counts.squid += 1;
        }
        if !self.window.contains(e.time_ms) {
            self.counts.outside += 1;
            return;
        }
        self.counts.counted += 1;
        let client = client_hash(&e.client);
        self.total.add(e, client);
        let key: &str = match self.by {
            GroupBy::Port => {
                self.ports.entry(e.port).or_default().add(e, client);
                return;
            }
            GroupBy::Client => &e.client,
            GroupBy::Host => &e.host,
            GroupBy::User => e.user.as_deref().unwrap_or("-"),
        };
        if let Some(group) = self.names.get_mut(key) {
            group.add(e, client);
        } else if self.names.len() < MAX_GROUPS {
            let mut group = Group::default();
            group.add(e, client);
            self.names.insert(key.to_owned(), group);
        } else {
            self.other.get_or_insert_with(Group::default).add(e, client);
        }
    }

    /// Counts a malformed line.
    pub fn skip(&mut self, input: &str, line: u64, why: &'static str) {
        self.counts.skipped += 1;
        if self.counts.first_bad.is_none() {
            self.counts.first_bad = Some(BadLineAt {
                input: input.to_owned(),
                line,
                why,
            });
        }
    }

    /// Reads every line of `input` (named `name` in messages), calling `tick` every few
    /// thousand lines. Memory stays bounded whatever the input: see [`MAX_LINE_BYTES`].
    pub fn scan<R: BufRead>(
        &mut self,
        mut input: R,
        name: &str,
        mut tick: impl FnMut(),
    ) -> Result<(), ReportError> {
        let mut buf = Vec::with_capacity(1024);
        let mut number = 0u64;
        loop {
            let complete =
                match read_line(&mut input, &mut buf).map_err(|source| ReportError::Read {
                    input: name.to_owned(),
                    line: number,
                    source,
                })? {
                    None => return Ok(()),
                    Some(complete) => complete,
                };
            number += 1;
            if number.is_multiple_of(TICK_LINES) {
                tick();
            }
            if !complete {
                self.counts.lines += 1;
                self.skip(name, number, "longer than 64 KiB");
                continue;
            }
            let Ok(text) = std::str::from_utf8(&buf) else {
                self.counts.lines += 1;
                self.skip(name, number, "not UTF-8");
                continue;
            };
            if text.trim().is_empty() {
                continue;
            }
            self.counts.lines += 1;
            match parse_line(text) {
                Ok(entry) => self.add(&entry),
                Err(BadLine(why)) => self.skip(name, number, why),
            }
        }
    }

    /// The rows, most requests first (then by key).
    pub fn rows(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .ports
            .iter()
            .map(|(&port, g)| g.row(RowKey::Port(port)))
            .chain(
                self.names
                    .iter()
                    .map(|(name, g)| g.row(RowKey::Name(name.clone()))),
            )
            .chain(self.other.iter().map(|g| g.row(RowKey::Other)))
            .collect();
        rows.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.key.cmp(&b.key)));
        rows
    }

    /// All counted records as one row (`None` when there were none).
    pub fn total(&self) -> Option<Row> {
        (self.total.requests > 0).then(|| self.total.row(RowKey::Total))
    }

    /// The report in `format`.
    pub fn render(&self, format: OutputFormat) -> String {
        match format {
            OutputFormat::Table => self.table(),
            OutputFormat::Csv => self.csv(),
            OutputFormat::Json => self.json(),
        }
    }

    fn service(&self, key: &RowKey) -> Option<&'static str> {
        match key {
            RowKey::Port(port) => crate::core::ports::service_name(*port),
            _ => None,
        }
    }

    fn table(&self) -> String {
        let by_port = self.by == GroupBy::Port;
        let mut header = vec![self.by.key_name().to_ascii_uppercase()];
        if by_port {
            header.push("SERVICE".into());
        }
        let numeric_from = header.len();
        for title in [
            "REQUESTS",
            "DENIED",
            "BYTES UP",
            "BYTES DOWN",
            "CLIENTS",
            "FIRST SEEN",
            "LAST SEEN",
        ] {
            header.push(title.into());
        }
        let cells = |row: &Row| {
            let mut cells = vec![row.key.text().into_owned()];
            if by_port {
                cells.push(match row.key {
                    RowKey::Total => String::new(),
                    _ => self.service(&row.key).unwrap_or("-").to_owned(),
                });
            }
            cells.push(row.requests.to_string());
            cells.push(row.denied.to_string());
            cells.push(human_bytes(row.bytes_up));
            cells.push(human_bytes(row.bytes_down));
            let approx = if row.clients_exact { "" } else { "~" };
            cells.push(format!("{approx}{}", row.clients));
            cells.push(humantime::format_rfc3339_seconds(row.first_seen).to_string());
            cells.push(humantime::format_rfc3339_seconds(row.last_seen).to_string());
            cells
        };
        let mut lines: Vec<Vec<String>> = vec![header];
        lines.extend(self.rows().iter().map(cells));
        match self.total() {
            Some(total) => lines.push(cells(&total)),
            None => {
                let mut empty = vec!["TOTAL".to_owned()];
                if by_port {
                    empty.push(String::new());
                }
                empty.extend(["0", "0", "0 B", "0 B", "0", "-", "-"].map(str::to_owned));
                lines.push(empty);
            }
        }
        let columns = lines[0].len();
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                lines
                    .iter()
                    .map(|l| l[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        // Numbers right-aligned; keys, services and times left-aligned.
        let right = |c: usize| c >= numeric_from && c < numeric_from + 5;
        let mut out = String::new();
        for line in &lines {
            let mut text = String::new();
            for (c, cell) in line.iter().enumerate() {
                if c > 0 {
                    text.push_str("  ");
                }
                if right(c) {
                    let _ = write!(text, "{cell:>w$}", w = widths[c]);
                } else {
                    let _ = write!(text, "{cell:<w$}", w = widths[c]);
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        if self.counts.squid > 0 {
            out.push_str("Bytes up are not recorded in the Squid format: its lines count 0.\n");
        }
        out
    }

    fn csv(&self) -> String {
        let key = self.by.key_name();
        let mut out = String::new();
        out.push_str(key);
        if self.by == GroupBy::Port {
            out.push_str(",service");
        }
        out.push_str(",requests,denied,bytes_up,bytes_down,clients,first_seen,last_seen\r\n");
        for row in self.rows() {
            out.push_str(&csv_field(&row.key.text()));
            if self.by == GroupBy::Port {
                out.push(',');
                out.push_str(self.service(&row.key).unwrap_or(""));
            }
            let _ = write!(
                out,
                ",{},{},{},{},{},{},{}\r\n",
                row.requests,
                row.denied,
                row.bytes_up,
                row.bytes_down,
                row.clients,
                humantime::format_rfc3339_millis(row.first_seen),
                humantime::format_rfc3339_millis(row.last_seen),
            );
        }
        out
    }

    fn json(&self) -> String {
        let key = self.by.key_name();
        let rows = self.rows();
        let mut out = String::from("[");
        for (i, row) in rows.iter().enumerate() {
            out.push_str(if i == 0 { "\n  {" } else { ",\n  {" });
            match &row.key {
                RowKey::Port(port) => {
                    let service = self.service(&row.key);
                    let _ = write!(out, "\"{key}\":{port},\"service\":{}", json_string(service));
                }
                other => {
                    let _ = write!(out, "\"{key}\":{}", json_string(Some(&other.text())));
                }
            }
            let _ = write!(
                out,
                ",\"requests\":{},\"denied\":{},\"bytes_up\":{},\"bytes_down\":{},\"clients\":{},\"first_seen\":\"{}\",\"last_seen\":\"{}\"}}",
                row.requests,
                row.denied,
                row.bytes_up,
                row.bytes_down,
                row.clients,
                humantime::format_rfc3339_millis(row.first_seen),
                humantime::format_rfc3339_millis(row.last_seen),
            );
        }
        out.push_str(if rows.is_empty() { "]\n" } else { "\n]\n" });
        out
    }
}

fn json_string(text: Option<&str>) -> String {
    match text {
        Some(text) => serde_json::to_string(text).unwrap_or_else(|_| "null".into()),
        None => "null".into(),
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(text: &str) -> Cow<'_, str> {
    if text.contains([',', '"', '\r', '\n']) {
        Cow::Owned(format!("\"{}\"", text.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(text)
    }
}

/// `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Reads one line into `buf` without its line ending: `None` at the end of the input,
/// `Some(false)` for a line longer than [`MAX_LINE_BYTES`] (skipped up to its end, never kept).
fn read_line<R: BufRead>(input: &mut R, buf: &mut Vec<u8>) -> io::Result<Option<bool>> {
    buf.clear();
    let n = input
        .by_ref()
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(Some(true));
    }
    if buf.len() > MAX_LINE_BYTES {
        buf.clear();
        input.skip_until(b'\n')?;
        return Ok(Some(false));
    }
    Ok(Some(true))
}

/// Why a report could not read an input or print.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// An input could not be opened.
    #[error("cannot open {input}: {source}")]
    Open {
        /// The input.
        input: String,
        /// Why.
        source: io::Error,
    },
    /// An input could not be read (a truncated gzip file, a disk error).
    #[error("cannot read {input} after line {line}: {source}")]
    Read {
        /// The input.
        input: String,
        /// The last line read whole.
        line: u64,
        /// Why.
        source: io::Error,
    },
    /// `--since` is not before `--until`.
    #[error("--since must be before --until")]
    EmptyWindow,
    /// The report could not be written.
    #[error("cannot write the report: {0}")]
    Write(#[source] io::Error),
}

/// What `portcullis report` was asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Access log files; none, or `-`, is standard input.
    pub files: Vec<PathBuf>,
    /// The grouping.
    pub by: GroupBy,
    /// The output format.
    pub format: OutputFormat,
    /// Only records that arrived at or after this time.
    pub since: Option<SystemTime>,
    /// Only records that arrived before this time.
    pub until: Option<SystemTime>,
}

/// A reader that counts the bytes read through it.
struct Counting<R> {
    inner: R,
    read: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

/// `input` decompressed if it starts with the gzip magic bytes (`1f 8b`), as it is otherwise.
/// Concatenated gzip members (as `cat a.gz b.gz` makes) are all read.
pub fn decode<'a, R: BufRead + 'a>(mut input: R) -> io::Result<Box<dyn BufRead + 'a>> {
    if input.fill_buf()?.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(BufReader::with_capacity(
            64 * 1024,
            flate2::bufread::MultiGzDecoder::new(input),
        )))
    } else {
        Ok(Box::new(input))
    }
}

/// A progress line on standard error: bytes read of the total, at most four times a second.
struct Progress {
    read: Rc<Cell<u64>>,
    total: u64,
    last: Instant,
    shown: bool,
}

impl Progress {
    fn tick(&mut self) {
        if self.last.elapsed() < Duration::from_millis(250) {
            return;
        }
        self.last = Instant::now();
        let read = self.read.get().min(self.total);
        let percent = read * 100 / self.total.max(1);
        let mut stderr = io::stderr().lock();
        let _ = write!(
            stderr,
            "\r\x1b[Kreading: {} of {} ({percent} %)",
            human_bytes(read),
            human_bytes(self.total)
        );
        let _ = stderr.flush();
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            let _ = write!(io::stderr(), "\r\x1b[K");
            self.shown = false;
        }
    }
}

/// What [`collect`] read.
#[derive(Debug)]
pub struct Collected {
    /// The report of every input that could be read (in part or whole).
    pub report: Report,
    /// The inputs that could not be opened or read to their end.
    pub failures: Vec<ReportError>,
}

/// Reads every input of `options` into a report. An input that cannot be opened or read to its
/// end is noted in [`Collected::failures`] and the others are still read. With `progress`, a
/// progress line is drawn on standard error when the files add up to more than
/// [`PROGRESS_BYTES`].
pub fn collect(options: &Options, progress: bool) -> Result<Collected, ReportError> {
    let window = Window::new(options.since, options.until);
    if window.is_empty() {
        return Err(ReportError::EmptyWindow);
    }
    let mut report = Report::new(options.by, window);
    let mut failures = Vec::new();
    let stdin = [PathBuf::from("-")];
    let inputs = if options.files.is_empty() {
        &stdin[..]
    } else {
        &options.files[..]
    };
    let is_stdin = |p: &Path| p == Path::new("-");
    let total: u64 = inputs
        .iter()
        .filter(|p| !is_stdin(p))
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let read = Rc::new(Cell::new(0u64));
    let mut bar = (progress && total > PROGRESS_BYTES).then(|| Progress {
        read: read.clone(),
        total,
        last: Instant::now(),
        shown: false,
    });
    for path in inputs {
        let (name, raw): (String, Box<dyn Read>) = if is_stdin(path) {
            ("standard input".into(), Box::new(io::stdin().lock()))
        } else {
            let name = path.display().to_string();
            match File::open(path) {
                Ok(file) => (
                    name,
                    Box::new(Counting {
                        inner: file,
                        read: read.clone(),
                    }),
                ),
                Err(source) => {
                    failures.push(ReportError::Open {
                        input: name,
                        source,
                    });
                    continue;
                }
            }
        };
        let input = match decode(BufReader::with_capacity(64 * 1024, raw)) {
            Ok(input) => input,
            Err(source) => {
                failures.push(ReportError::Read {
                    input: name,
                    line: 0,
                    source,
                });
                continue;
            }
        };
        let scanned = report.scan(input, &name, || {
            if let Some(bar) = bar.as_mut() {
                bar.tick();
            }
        });
        if let Err(e) = scanned {
            failures.push(e);
        }
    }
    if let Some(bar) = bar.as_mut() {
        bar.clear();
    }
    Ok(Collected { report, failures })
}

/// What to say on standard error after a report: malformed lines, overflowing groups.
pub fn summary(report: &Report) -> Vec<String> {
    let counts = report.counts();
    let mut notes = Vec::new();
    if let Some(bad) = &counts.first_bad {
        let lines = if counts.skipped == 1 { "line" } else { "lines" };
        notes.push(format!(
            "skipped {} malformed {lines} of {}; the first: {} line {} ({})",
            counts.skipped, counts.lines, bad.input, bad.line, bad.why
        ));
        if counts.skipped == counts.lines {
            notes.push(
                "no line was a Squid or JSON access record: `report` reads the squid and json log formats, not common"
                    .into(),
            );
        }
    }
    if report.overflowed() {
        notes.push(format!(
            "more than {MAX_GROUPS} distinct {}s: the others are counted together as (other)",
            report.by.key_name()
        ));
    }
    notes
}

/// `portcullis report`: reads the inputs, prints the report on standard output and notes on
/// standard error (with a progress line when standard error is a terminal). Returns whether
/// every input was read whole.
pub fn run(options: &Options) -> Result<bool, ReportError> {
    let collected = collect(options, io::stderr().is_terminal())?;
    let text = collected.report.render(options.format);
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => {}
        // `portcullis report | head` is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(ReportError::Write(e)),
    }
    let mut stderr = io::stderr().lock();
    for failure in &collected.failures {
        let _ = writeln!(stderr, "portcullis report: {failure}");
    }
    for note in summary(&collected.report) {
        let _ = writeln!(stderr, "portcullis report: {note}");
    }
    Ok(collected.failures.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::policy::{Builtin, Decider};
    use crate::observe::access::{AccessRecord, Verdict};
    use crate::observe::log::{format_line, Format};

    const T0: u64 = 1_764_152_429_123; // 2025-11-26T10:20:29.123Z

    fn record() -> AccessRecord {
        AccessRecord {
            time: time_of(T0),
            client: "192.168.1.20:50000".parse().unwrap(),
            user: Some("alice".into()),
            method: "GET".into(),
            version: "HTTP/1.1",
            path: Some("/index.html".into()),
            host: "example.com".into(),
            port: 80,
            service: Some("http"),
            upstream: Some("93.184.216.34:80".parse().unwrap()),
            parent: None,
            status: 200,
            verdict: Verdict::Allow,
            rule: Decider::Builtin(Builtin::PortsHttp),
            reason: None,
            error: None,
            bytes_up: 300,
            bytes_down: 5120,
            duration: Duration::from_millis(105),
        }
    }

    /// Both formats of `r`, each parsed back, must give `want` (bytes up 0 for Squid).
    fn check(r: &AccessRecord, want: Entry<'_>) {
        for format in [Format::Squid, Format::Json] {
            let line = format_line(format, r, Some("kids-laptop"));
            let text = line.strip_suffix('\n').unwrap();
            let got = parse_line(text).unwrap_or_else(|e| panic!("{e}: {line}"));
            let mut want = want.clone();
            if format == Format::Squid {
                want.bytes_up = 0;
                want.format = LineFormat::Squid;
            } else {
                want.format = LineFormat::Json;
            }
            assert_eq!(got, want, "{format:?}: {line}");
        }
    }

    fn entry(
        host: &'static str,
        port: u16,
        user: Option<&'static str>,
        denied: bool,
    ) -> Entry<'static> {
        Entry {
            time_ms: T0,
            client: "192.168.1.20".into(),
            user: user.map(Cow::Borrowed),
            host: host.into(),
            port,
            denied,
            bytes_up: 300,
            bytes_down: 5120,
            format: LineFormat::Json,
        }
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
                entry("-", 0, Some("alice"), false),
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

    fn scan(report: &mut Report, text: &[u8]) {
        report.scan(text, "test.log", || {}).unwrap();
    }

    #[test]
    fn scan_counts_and_locates_malformed_lines() {
        let mut text = Vec::new();
        text.extend(format_line(Format::Squid, &record(), None).bytes());
        text.extend(b"\n   \nnot a log line\r\n");
        text.extend(format_line(Format::Json, &record(), None).bytes());
        text.extend(b"\xff\xfe invalid utf-8\n");
        text.extend(vec![b'x'; MAX_LINE_BYTES + 10]);
        text.push(b'\n');
        // The last line may lack its newline; a CRLF ending is fine.
        text.extend(
            format_line(Format::Squid, &record(), None)
                .trim_end()
                .bytes(),
        );
        text.extend(b"\r\n");
        text.extend(
            format_line(Format::Squid, &record(), None)
                .trim_end()
                .bytes(),
        );
        let mut report = Report::new(GroupBy::Port, Window::default());
        scan(&mut report, &text);
        let counts = report.counts();
        assert_eq!((counts.lines, counts.counted, counts.skipped), (7, 4, 3));
        assert_eq!(
            counts.first_bad,
            Some(BadLineAt {
                input: "test.log".into(),
                line: 4,
                why: "fewer than 10 fields"
            })
        );
        let notes = summary(&report);
        assert!(
            notes[0].contains("skipped 3 malformed lines of 7; the first: test.log line 4"),
            "{notes:?}"
        );
    }

    #[test]
    fn overlong_lines_are_never_kept() {
        let mut text = vec![b'x'; 5 * MAX_LINE_BYTES];
        text.push(b'\n');
        let mut input = &text[..];
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut input, &mut buf).unwrap(), Some(false));
        assert!(
            buf.capacity() <= 2 * MAX_LINE_BYTES + 64,
            "{}",
            buf.capacity()
        );
        assert_eq!(read_line(&mut input, &mut buf).unwrap(), None);
        let mut exact = vec![b'y'; MAX_LINE_BYTES];
        exact.push(b'\n');
        let mut input = &exact[..];
        assert_eq!(read_line(&mut input, &mut buf).unwrap(), Some(true));
        assert_eq!(buf.len(), MAX_LINE_BYTES);
    }

    /// Records: (client, user, host, port, denied, up, down, ms after T0).
    type Spec = (
        &'static str,
        Option<&'static str>,
        &'static str,
        u16,
        bool,
        u64,
        u64,
        u64,
    );

    const SPECS: [Spec; 6] = [
        (
            "10.0.0.1",
            Some("alice"),
            "a.example",
            443,
            false,
            10,
            1000,
            0,
        ),
        ("10.0.0.2", Some("bob"), "a.example", 443, true, 0, 0, 5_000),
        (
            "10.0.0.1",
            Some("alice"),
            "b.example",
            80,
            false,
            20,
            2000,
            10_000,
        ),
        (
            "10.0.0.3",
            None,
            "b.example",
            443,
            false,
            30,
            3000,
            86_400_000,
        ),
        ("10.0.0.3", None, "smtp.example", 25, true, 0, 0, 86_400_001),
        (
            "10.0.0.2",
            Some("bob, jr"),
            "b.example",
            80,
            false,
            40,
            4000,
            20_000,
        ),
    ];

    fn report(by: GroupBy, window: Window) -> Report {
        let mut report = Report::new(by, window);
        for (client, user, host, port, denied, up, down, after) in SPECS {
            report.add(&Entry {
                time_ms: T0 + after,
                client: client.into(),
                user: user.map(Cow::Borrowed),
                host: host.into(),
                port,
                denied,
                bytes_up: up,
                bytes_down: down,
                format: LineFormat::Json,
            });
        }
        report
    }

    fn summary_of(rows: &[Row]) -> Vec<(String, u64, u64, u64, u64, u64)> {
        rows.iter()
            .map(|r| {
                (
                    r.key.text().into_owned(),
                    r.requests,
                    r.denied,
                    r.bytes_up,
                    r.bytes_down,
                    r.clients,
                )
            })
            .collect()
    }

    #[test]
    fn groups_by_each_key_sorted_by_requests_then_key() {
        let s = |k: &str, n, d, up, down, c| (k.to_owned(), n, d, up, down, c);
        let cases = [
            (
                GroupBy::Port,
                vec![
                    s("443", 3, 1, 40, 4000, 3),
                    s("80", 2, 0, 60, 6000, 2),
                    s("25", 1, 1, 0, 0, 1),
                ],
            ),
            (
                GroupBy::Client,
                vec![
                    s("10.0.0.1", 2, 0, 30, 3000, 1),
                    s("10.0.0.2", 2, 1, 40, 4000, 1),
                    s("10.0.0.3", 2, 1, 30, 3000, 1),
                ],
            ),
            (
                GroupBy::Host,
                vec![
                    s("b.example", 3, 0, 90, 9000, 3),
                    s("a.example", 2, 1, 10, 1000, 2),
                    s("smtp.example", 1, 1, 0, 0, 1),
                ],
            ),
            (
                GroupBy::User,
                vec![
                    s("-", 2, 1, 30, 3000, 1),
                    s("alice", 2, 0, 30, 3000, 1),
                    s("bob", 1, 1, 0, 0, 1),
                    s("bob, jr", 1, 0, 40, 4000, 1),
                ],
            ),
        ];
        for (by, want) in cases {
            let report = report(by, Window::default());
            assert_eq!(summary_of(&report.rows()), want, "{by:?}");
            let total = report.total().unwrap();
            assert_eq!(
                (
                    total.requests,
                    total.denied,
                    total.bytes_up,
                    total.bytes_down,
                    total.clients
                ),
                (6, 2, 100, 10_000, 3)
            );
            assert_eq!(total.first_seen, time_of(T0));
            assert_eq!(total.last_seen, time_of(T0 + 86_400_001));
        }
        let rows = report(GroupBy::Port, Window::default()).rows();
        assert_eq!(
            (rows[0].first_seen, rows[0].last_seen),
            (time_of(T0), time_of(T0 + 86_400_000))
        );
    }

    #[test]
    fn time_window_includes_since_and_excludes_until() {
        let at = |ms: u64| Some(time_of(T0 + ms));
        let cases = [
            (None, None, 6),
            (at(5_000), None, 5),
            (at(5_001), None, 4),
            (None, at(5_000), 1),
            (None, at(5_001), 2),
            (at(10_000), at(86_400_001), 3),
            // Sub-millisecond bounds round up.
            (
                Some(time_of(T0 + 4_999) + Duration::from_micros(1)),
                None,
                5,
            ),
        ];
        for (since, until, want) in cases {
            let report = report(GroupBy::Port, Window::new(since, until));
            assert_eq!(report.counts().counted, want, "{since:?} {until:?}");
            assert_eq!(report.counts().outside, 6 - want);
        }
        // Dates: --since is that day's midnight, --until the end of that day.
        let day = Window::new(
            Some(parse_since("2025-11-26").unwrap()),
            Some(parse_until("2025-11-26").unwrap()),
        );
        assert_eq!(report(GroupBy::Port, day).counts().counted, 4);
        let next = Window::new(Some(parse_since("2025-11-27").unwrap()), None);
        assert_eq!(report(GroupBy::Port, next).counts().counted, 2);
        assert_eq!(
            parse_since("2025-11-26T10:20:34.123Z").unwrap(),
            time_of(T0 + 5_000)
        );
        assert_eq!(
            parse_until("2025-11-26 10:20:34.123").unwrap(),
            time_of(T0 + 5_000)
        );
        for bad in ["yesterday", "2025-13-01", "2025-11-26T10:20:29+02:00", ""] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
        assert!(Window::new(at(5), at(5)).is_empty());
        assert!(!Window::new(at(5), at(6)).is_empty());
    }

    #[test]
    fn json_output_has_numbers_and_every_key() {
        let text = report(GroupBy::Port, Window::default()).render(OutputFormat::Json);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0],
            serde_json::json!({
                "port": 443, "service": "https", "requests": 3, "denied": 1,
                "bytes_up": 40, "bytes_down": 4000, "clients": 3,
                "first_seen": "2025-11-26T10:20:29.123Z", "last_seen": "2025-11-27T10:20:29.123Z",
            })
        );
        let text = report(GroupBy::User, Window::default()).render(OutputFormat::Json);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        assert_eq!(rows[3]["user"], "bob, jr");
        assert!(rows[3].get("service").is_none());
        let empty = Report::new(GroupBy::Host, Window::default()).render(OutputFormat::Json);
        assert!(serde_json::from_str::<Vec<serde_json::Value>>(&empty)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn csv_output_quotes_by_rfc_4180() {
        let text = report(GroupBy::User, Window::default()).render(OutputFormat::Csv);
        let lines: Vec<&str> = text.split_terminator("\r\n").collect();
        assert_eq!(
            lines[0],
            "user,requests,denied,bytes_up,bytes_down,clients,first_seen,last_seen"
        );
        assert_eq!(
            lines[4],
            "\"bob, jr\",1,0,40,4000,1,2025-11-26T10:20:49.123Z,2025-11-26T10:20:49.123Z"
        );
        assert_eq!(lines.len(), 5);
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        let ports = report(GroupBy::Port, Window::default()).render(OutputFormat::Csv);
        assert!(ports.starts_with("port,service,requests,"), "{ports}");
        assert!(ports.contains("\r\n25,smtp,1,1,0,0,1,"), "{ports}");
    }

    #[test]
    fn table_output_is_aligned_with_totals() {
        let text = report(GroupBy::Port, Window::default()).render(OutputFormat::Table);
        let want = "\
PORT   SERVICE  REQUESTS  DENIED  BYTES UP  BYTES DOWN  CLIENTS  FIRST SEEN            LAST SEEN
443    https           3       1      40 B     3.9 KiB        3  2025-11-26T10:20:29Z  2025-11-27T10:20:29Z
80     http            2       0      60 B     5.9 KiB        2  2025-11-26T10:20:39Z  2025-11-26T10:20:49Z
25     smtp            1       1       0 B         0 B        1  2025-11-27T10:20:29Z  2025-11-27T10:20:29Z
TOTAL                  6       2     100 B     9.8 KiB        3  2025-11-26T10:20:29Z  2025-11-27T10:20:29Z
";
        assert_eq!(text, want);
        let empty = Report::new(GroupBy::Client, Window::default()).render(OutputFormat::Table);
        let want = "\
CLIENT  REQUESTS  DENIED  BYTES UP  BYTES DOWN  CLIENTS  FIRST SEEN  LAST SEEN
TOTAL          0       0       0 B         0 B        0  -           -
";
        assert_eq!(empty, want);
        // Squid lines carry no bytes up: the table says so.
        let mut squid = Report::new(GroupBy::User, Window::default());
        scan(
            &mut squid,
            format_line(Format::Squid, &record(), None).as_bytes(),
        );
        let text = squid.render(OutputFormat::Table);
        assert!(text.contains("\nalice  "), "{text}");
        assert!(
            text.ends_with("Bytes up are not recorded in the Squid format: its lines count 0.\n"),
            "{text}"
        );
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn distinct_clients_are_exact_to_the_cap_then_estimated() {
        let mut distinct = Distinct::default();
        for i in 0..EXACT_CLIENTS {
            distinct.insert(client_hash(&format!(
                "10.{}.{}.{}",
                i >> 16,
                (i >> 8) & 255,
                i & 255
            )));
            distinct.insert(client_hash("10.0.0.0"));
        }
        assert_eq!(distinct.count(), (EXACT_CLIENTS as u64, true));
        for n in [EXACT_CLIENTS + 1, 50_000, 300_000] {
            let mut distinct = Distinct::default();
            for i in 0..n {
                distinct.insert(client_hash(&format!("fd00::{i:x}")));
                distinct.insert(client_hash(&format!("fd00::{:x}", i / 2)));
            }
            let (count, exact) = distinct.count();
            assert!(!exact);
            let error = (count as f64 - n as f64).abs() / n as f64;
            assert!(error < 0.06, "{n}: estimated {count}");
            if let Distinct::Estimate(sketch) = &distinct {
                assert_eq!(sketch.registers.len(), 4096);
            }
        }
    }

    #[test]
    fn groups_past_the_cap_are_counted_together() {
        let mut report = Report::new(GroupBy::Host, Window::default());
        let mut e = entry("x", 443, None, false);
        for i in 0..MAX_GROUPS + 3 {
            e.host = Cow::Owned(format!("h{i}.example"));
            report.add(&e);
        }
        let rows = report.rows();
        assert_eq!(rows.len(), MAX_GROUPS + 1);
        assert_eq!((rows[0].key.clone(), rows[0].requests), (RowKey::Other, 3));
        assert_eq!(report.total().unwrap().requests, MAX_GROUPS as u64 + 3);
        assert!(summary(&report)[0].contains("(other)"));
    }

    #[test]
    fn gzip_input_is_recognised_by_its_magic_bytes() {
        use flate2::write::GzEncoder;
        let line = format_line(Format::Json, &record(), None);
        let mut gz = Vec::new();
        for _ in 0..2 {
            // Two members, as `cat a.gz b.gz` makes.
            let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(line.as_bytes()).unwrap();
            gz.extend(encoder.finish().unwrap());
        }
        let mut report = Report::new(GroupBy::Port, Window::default());
        report
            .scan(decode(&gz[..]).unwrap(), "a.gz", || {})
            .unwrap();
        report
            .scan(decode(line.as_bytes()).unwrap(), "plain", || {})
            .unwrap();
        assert_eq!(report.counts().counted, 3);
        // A truncated gzip file is a read error, not a panic.
        let mut truncated = Report::new(GroupBy::Port, Window::default());
        let e = truncated
            .scan(decode(&gz[..gz.len() / 2 - 5]).unwrap(), "cut.gz", || {})
            .unwrap_err();
        let e = e.to_string();
        assert!(e.starts_with("cannot read cut.gz after line 1: "), "{e}");
    }
}
