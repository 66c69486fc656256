//! The aggregation: one [`Group`] of running totals per port, client, host, user, failure
//! kind or proxy, read line by line from an input with bounded memory, and the names of the
//! proxies whose records were counted ([`Proxies`]).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::io::{self, BufRead, Read};
use std::time::SystemTime;

use super::distinct::{client_hash, Distinct};
use super::parse::{parse_line, time_of, BadLine, Entry, LineFormat, Window};
use super::{GroupBy, ReportError, MAX_GROUPS, MAX_LINE_BYTES, MAX_PROXY_NAMES};

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
    /// A client address, host, user, failure kind or proxy.
    Name(String),
    /// Every key past [`MAX_GROUPS`].
    Other,
    /// All records.
    Total,
}

impl RowKey {
    pub(super) fn text(&self) -> Cow<'_, str> {
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
    /// Whether `clients` is exact (at most `EXACT_CLIENTS`) rather than an estimate.
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
    /// Records inside the time window of the proxy's own pages (its page, PAC file, icon),
    /// which are no traffic through it and are counted in no group.
    pub own_pages: u64,
    /// Records outside the time window.
    pub outside: u64,
    /// Malformed lines, skipped.
    pub skipped: u64,
    /// Records in the Squid format (which has no bytes up).
    pub squid: u64,
    /// The first malformed line.
    pub first_bad: Option<BadLineAt>,
}

/// The proxies whose records a report counted (the JSON format's `instance`), whatever it is
/// grouped by: a report over several proxies' logs names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proxies {
    /// Their names, sorted; at most [`MAX_PROXY_NAMES`] are kept.
    pub names: BTreeSet<String>,
    /// Whether further names were seen and not kept.
    pub more: bool,
    /// Counted records that name no proxy: Squid lines, and JSON lines written before the
    /// field existed (`-` in `--by instance`).
    pub unnamed: u64,
}

impl Proxies {
    fn add(&mut self, instance: Option<&str>) {
        match instance {
            None => self.unnamed += 1,
            Some(name) if self.names.contains(name) => {}
            Some(name) if self.names.len() < MAX_PROXY_NAMES => {
                self.names.insert(name.to_owned());
            }
            Some(_) => self.more = true,
        }
    }

    /// Whether the counted records came from more than one proxy (records that name none
    /// counting as one more).
    pub fn several(&self) -> bool {
        self.more || self.names.len() + usize::from(self.unnamed > 0) > 1
    }
}

/// Usage aggregated from access log records, grouped by one key.
#[derive(Debug, Clone)]
pub struct Report {
    pub(super) by: GroupBy,
    window: Window,
    ports: HashMap<u16, Group>,
    names: HashMap<String, Group>,
    other: Option<Group>,
    total: Group,
    proxies: Proxies,
    pub(super) counts: Counts,
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
            proxies: Proxies::default(),
            counts: Counts::default(),
        }
    }

    /// What was read so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The proxies whose records were counted.
    pub fn proxies(&self) -> &Proxies {
        &self.proxies
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
        if e.own_page {
            self.counts.own_pages += 1;
            return;
        }
        self.counts.counted += 1;
        let client = client_hash(&e.client);
        self.total.add(e, client);
        self.proxies.add(e.instance.as_deref());
        let key: &str = match self.by {
            GroupBy::Port => {
                self.ports.entry(e.port).or_default().add(e, client);
                return;
            }
            GroupBy::Client => &e.client,
            GroupBy::Host => &e.host,
            GroupBy::User => e.user.as_deref().unwrap_or("-"),
            GroupBy::Error => e.error.as_deref().unwrap_or("-"),
            GroupBy::Instance => e.instance.as_deref().unwrap_or("-"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::policy::{Builtin, Decider};
    use crate::observe::log::{format_line, Format};
    use crate::ops::report::fixtures::*;
    use crate::ops::report::parse::{parse_since, parse_until};
    use crate::ops::report::summary;
    use std::time::Duration;

    #[test]
    fn the_proxys_own_pages_count_in_no_group() {
        let mut own = record();
        own.rule = Decider::Builtin(Builtin::Local);
        (own.host, own.port, own.path) = ("proxy.lan".into(), 3128, Some("/favicon.ico".into()));
        for by in [
            GroupBy::Port,
            GroupBy::Client,
            GroupBy::Host,
            GroupBy::User,
            GroupBy::Error,
            GroupBy::Instance,
        ] {
            let mut report = Report::new(by, Window::default());
            for format in [Format::Squid, Format::Json] {
                scan(&mut report, format_line(format, &own, None).as_bytes());
                scan(&mut report, format_line(format, &record(), None).as_bytes());
            }
            let counts = report.counts();
            assert_eq!((counts.counted, counts.own_pages), (2, 2), "{by:?}");
            assert_eq!(report.total().map(|t| t.requests), Some(2), "{by:?}");
            let keys: Vec<String> = report.rows().iter().map(|r| r.key.text().into()).collect();
            assert!(
                !keys.iter().any(|k| k == "3128" || k == "proxy.lan"),
                "{by:?}: {keys:?}"
            );
        }
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
            (
                GroupBy::Error,
                vec![
                    s("-", 3, 0, 70, 7000, 2),
                    s("denied", 2, 2, 0, 0, 2),
                    s("refused", 1, 0, 30, 3000, 1),
                ],
            ),
            // No record names its proxy: all are `-`.
            (GroupBy::Instance, vec![s("-", 6, 2, 100, 10_000, 3)]),
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
    fn records_of_several_proxies_are_told_apart() {
        let mut report = Report::new(GroupBy::Instance, Window::default());
        let named = |instance: Option<&'static str>, port| Entry {
            instance: instance.map(Cow::Borrowed),
            ..entry("example.com", port, None, false)
        };
        for (instance, port) in [
            (Some("proxy-b"), 80),
            (Some("proxy-a"), 443),
            (Some("proxy-b"), 443),
            (None, 80),
        ] {
            report.add(&named(instance, port));
        }
        let keys: Vec<(String, u64)> = report
            .rows()
            .iter()
            .map(|r| (r.key.text().into_owned(), r.requests))
            .collect();
        assert_eq!(
            keys,
            [
                ("proxy-b".into(), 2),
                ("-".into(), 1),
                ("proxy-a".into(), 1)
            ]
        );
        assert_eq!(report.total().unwrap().requests, 4);
        let proxies = report.proxies();
        assert_eq!(
            proxies.names.iter().collect::<Vec<_>>(),
            ["proxy-a", "proxy-b"]
        );
        assert_eq!(
            (proxies.unnamed, proxies.more, proxies.several()),
            (1, false, true)
        );
        // Whatever the grouping, the proxies are known; one alone is not "several".
        let mut one = Report::new(GroupBy::Port, Window::default());
        one.add(&named(Some("proxy-a"), 80));
        one.add(&named(Some("proxy-a"), 443));
        assert!(!one.proxies().several());
        one.add(&named(None, 443));
        assert!(one.proxies().several(), "a record naming none is another");
        // Past the cap, names are not kept but noticed.
        let mut many = Report::new(GroupBy::Port, Window::default());
        let mut e = named(None, 80);
        for i in 0..MAX_PROXY_NAMES + 2 {
            e.instance = Some(Cow::Owned(format!("p{i}")));
            many.add(&e);
        }
        assert_eq!(many.proxies().names.len(), MAX_PROXY_NAMES);
        assert!(many.proxies().more);
    }
}
