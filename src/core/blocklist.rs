//! Block lists as people download them, and the downloaded lists of a running proxy.
//!
//! [`parse_list`] reads a `hosts_file` or a `hosts_url` copy line by line, detecting the
//! format of each line (a file may mix them):
//!
//! - a plain pattern, one per line (`ads.example`, `.tracker.example`, `10.0.0.0/8`): the
//!   format `hosts_file` always read;
//! - a hosts(5) line: an address (ignored: `0.0.0.0`, `127.0.0.1`, `::`, …) then one or more
//!   names, each blocking exactly that name; `localhost`-style names are skipped;
//! - an adblock domain line, `||ads.example^`: the name and every name under it. A line
//!   with options (`||ads.example^$third-party`), an exception (`@@||…`) or a path cannot be
//!   honoured by a proxy that sees only host names, so it is skipped.
//!
//! Blank lines, `#` comments (whole lines, and after white space at the end of a line),
//! `!` comments and `[Adblock Plus 2.0]`-style headers are ignored. Any other line is
//! skipped and counted: a bad line never makes the whole list unusable ([`ListLoad`] keeps
//! the first few for `portcullis check`).
//!
//! [`HostList`] is a downloaded list in force: its host set behind an `ArcSwap`, so the
//! fetcher puts a new copy in place without a reload and the request path reads it with one
//! atomic load, and what the status pages and metrics show of it. Pure: no I/O, no clock (the
//! caller passes the times).

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::core::hosts::{HostMatch, HostPattern, HostSet};
use crate::core::target::Host;

/// How many skipped lines a [`ListLoad`] keeps for display.
pub const SKIPPED_KEPT: usize = 5;

/// Names in hosts files that name this machine or the network, never a site to block.
const LOCAL_NAMES: &[&str] = &[
    "localhost",
    "localhost.localdomain",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
];

/// One line of a list that gave no entry, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLine {
    /// Its number, from 1.
    pub number: usize,
    /// The line as written (cut to 120 characters).
    pub text: String,
    /// Why it was skipped.
    pub reason: &'static str,
}

impl fmt::Display for SkippedLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {} ({})", self.number, self.text, self.reason)
    }
}

/// A list read: the host set, and how many entries were loaded and lines skipped.
#[derive(Debug, Clone, Default)]
pub struct ListLoad {
    /// The entries.
    pub set: HostSet,
    /// Lines (or names of a hosts line) that gave no entry.
    pub skipped: usize,
    /// The first [`SKIPPED_KEPT`] of them.
    pub first_skipped: Vec<SkippedLine>,
}

impl ListLoad {
    /// How many entries were loaded.
    pub fn entries(&self) -> usize {
        self.set.len()
    }

    /// Whether a downloaded copy looks like a list at all: some entries, and fewer lines
    /// skipped than entries loaded (an HTML error page or another format skips most lines).
    pub fn looks_valid(&self) -> bool {
        self.entries() > 0 && self.skipped <= self.entries()
    }

    /// `N entries, M skipped` and, when any were skipped, the first of them.
    pub fn summary(&self) -> String {
        let mut out = format!("{} entries, {} skipped", self.entries(), self.skipped);
        if let Some(first) = self.first_skipped.first() {
            out.push_str(&format!(", first at {first}"));
        }
        out
    }

    fn skip(&mut self, number: usize, line: &str, reason: &'static str) {
        self.skipped += 1;
        if self.first_skipped.len() < SKIPPED_KEPT {
            let text: String = line.trim().chars().take(120).collect();
            self.first_skipped.push(SkippedLine {
                number,
                text,
                reason,
            });
        }
    }
}

/// Reads a block list in any of the formats of the module's documentation.
pub fn parse_list(text: &str) -> ListLoad {
    let mut load = ListLoad::default();
    let mut reserved = false;
    for (index, raw) in text.lines().enumerate() {
        // Room for the rest of a long list, in the kind of its first entry.
        if !reserved && load.set.len() == 1 {
            reserved = true;
            let rest = memchr::memchr_iter(b'\n', text.as_bytes()).count();
            load.set.reserve_more(rest.saturating_sub(index));
        }
        let number = index + 1;
        let line = strip_comment(raw).trim();
        if line.is_empty() || is_header(line) {
            continue;
        }
        let mut words = line.split_ascii_whitespace();
        let first = words.next().unwrap_or_default();
        if first.starts_with("||") || first.starts_with("@@") {
            match adblock(line) {
                Ok(p) => load.set.insert(p),
                Err(reason) => load.skip(number, raw, reason),
            }
            continue;
        }
        let mut rest = words.peekable();
        if rest.peek().is_none() {
            match HostPattern::parse(first) {
                Ok(p) => load.set.insert(p),
                Err(_) => load.skip(number, raw, "not a host name, .domain, address or CIDR"),
            }
            continue;
        }
        if first.parse::<IpAddr>().is_err() {
            load.skip(
                number,
                raw,
                "not a pattern, a hosts line (address then names) or ||name^",
            );
            continue;
        }
        for name in rest {
            match hosts_name(name) {
                Ok(p) => load.set.insert(p),
                Err(reason) => load.skip(number, raw, reason),
            }
        }
    }
    load
}

/// The line without a `#` comment: one that starts the line or follows white space (an
/// adblock element-hiding rule's `##` is not a comment, and is skipped as a whole).
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

/// `! comment` lines and `[Adblock Plus 2.0]` headers (but not `[::1]`, an address).
fn is_header(line: &str) -> bool {
    line.starts_with('!')
        || (line.starts_with('[')
            && line.ends_with(']')
            && line[1..line.len() - 1].parse::<IpAddr>().is_err())
}

/// `||name^` → the domain `name`; anything else adblock can say is not a host name.
fn adblock(line: &str) -> Result<HostPattern, &'static str> {
    if line.starts_with("@@") {
        return Err("adblock exception (@@): not honoured");
    }
    let body = line.strip_prefix("||").unwrap_or(line);
    let Some((name, after)) = body.split_once('^') else {
        return Err("adblock rule without ^: not a domain");
    };
    if !after.is_empty() {
        return Err("adblock rule with options or a path: not honoured");
    }
    match HostPattern::parse(name) {
        Ok(HostPattern::Exact(n)) => Ok(HostPattern::Domain(n)),
        _ => Err("adblock rule whose target is not a host name"),
    }
}

/// One name of a hosts(5) line.
fn hosts_name(name: &str) -> Result<HostPattern, &'static str> {
    let lowered = name.strip_suffix('.').unwrap_or(name);
    if LOCAL_NAMES.iter().any(|l| lowered.eq_ignore_ascii_case(l)) {
        return Err("names this machine (localhost and the like)");
    }
    match HostPattern::parse(name) {
        Ok(p @ HostPattern::Exact(_)) => Ok(p),
        Ok(_) => Err("an address where a hosts line has names"),
        Err(_) => Err("not a host name"),
    }
}

/// Whether a rule's host condition holds: its written patterns (`hosts`, `hosts_file`) or
/// its downloaded list match. `None` when the rule has no host condition.
pub fn rule_hosts(
    written: Option<&HostSet>,
    list: Option<&HostList>,
    host: &Host,
    addr: Option<IpAddr>,
) -> Option<HostMatch> {
    let downloaded = list.map(|l| l.set.load().matches(host, addr));
    let written = written.map(|s| s.matches(host, addr));
    match (written, downloaded) {
        (None, None) => None,
        (Some(m), None) | (None, Some(m)) => Some(m),
        (Some(a), Some(b)) => Some(if a == HostMatch::Yes || b == HostMatch::Yes {
            HostMatch::Yes
        } else if a == HostMatch::NeedAddress || b == HostMatch::NeedAddress {
            HostMatch::NeedAddress
        } else {
            HostMatch::No
        }),
    }
}

/// Where the list in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListSource {
    /// Nowhere yet: no copy on disk, no fetch succeeded; the rule matches nothing.
    #[default]
    Nothing,
    /// The last good copy on disk, read at start.
    Disk,
    /// A fetch.
    Fetch,
}

/// What is known of a downloaded list, for `/status`, `/metrics` and the fetcher.
#[derive(Debug, Clone, Default)]
pub struct ListStatus {
    /// Where the list in force came from.
    pub source: ListSource,
    /// Entries and skipped lines of the list in force.
    pub entries: usize,
    /// Lines skipped in it.
    pub skipped: usize,
    /// When the list in force was fetched (or the disk copy written).
    pub last_success: Option<SystemTime>,
    /// When a fetch was last tried.
    pub last_attempt: Option<SystemTime>,
    /// Why the last fetch failed, cleared by a success.
    pub last_error: Option<String>,
    /// Fetches that failed or brought a malformed list.
    pub failures: u64,
    /// The validators of the list in force, for a conditional request.
    pub etag: Option<String>,
    /// Its `Last-Modified`.
    pub last_modified: Option<String>,
}

/// A downloaded list (`hosts_url`) in force: swapped whole when a new copy arrives.
pub struct HostList {
    /// The rule it belongs to (the `list` label of the metrics).
    pub rule: Arc<str>,
    /// Where it is fetched from.
    pub url: String,
    /// How often.
    pub refresh: Duration,
    set: ArcSwap<HostSet>,
    status: Mutex<ListStatus>,
}

impl fmt::Debug for HostList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostList")
            .field("rule", &self.rule)
            .field("url", &self.url)
            .field("refresh", &self.refresh)
            .field("entries", &self.set.load().len())
            .finish()
    }
}

impl HostList {
    /// An empty list (it matches nothing until a copy is put in place).
    pub fn new(rule: Arc<str>, url: String, refresh: Duration) -> HostList {
        HostList {
            rule,
            url,
            refresh,
            set: ArcSwap::from_pointee(HostSet::new()),
            status: Mutex::new(ListStatus::default()),
        }
    }

    /// Puts `load` in force, from `source`, as of `at`, with its validators.
    pub fn put(
        &self,
        load: ListLoad,
        source: ListSource,
        at: SystemTime,
        validators: (Option<String>, Option<String>),
    ) {
        let mut status = crate::core::sync::lock(&self.status);
        status.source = source;
        status.entries = load.entries();
        status.skipped = load.skipped;
        status.last_success = Some(at);
        if source == ListSource::Fetch {
            status.last_error = None;
        }
        (status.etag, status.last_modified) = validators;
        self.set.store(Arc::new(load.set));
    }

    /// The copy in force was found current at `at` (the server answered 304).
    pub fn confirm(&self, at: SystemTime) {
        let mut status = crate::core::sync::lock(&self.status);
        status.last_success = Some(at);
        status.last_error = None;
    }

    /// Notes a fetch attempt at `at`; `error` when it failed (the list in force stays).
    pub fn note_attempt(&self, at: SystemTime, error: Option<String>) {
        let mut status = crate::core::sync::lock(&self.status);
        status.last_attempt = Some(at);
        if let Some(e) = error {
            status.failures += 1;
            status.last_error = Some(e);
        }
    }

    /// A copy of the status.
    pub fn status(&self) -> ListStatus {
        crate::core::sync::lock(&self.status).clone()
    }

    /// The host set in force.
    pub fn set(&self) -> Arc<HostSet> {
        self.set.load_full()
    }

    /// Takes over what `previous` (the same rule and URL before a reload) holds: its list
    /// and its status, so a reload loses neither.
    pub fn take_over(&self, previous: &HostList) {
        self.set.store(previous.set.load_full());
        *crate::core::sync::lock(&self.status) = previous.status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(load: &ListLoad, hosts: &[&str]) -> Vec<bool> {
        hosts.iter().map(|h| load.set.matches_name(h)).collect()
    }

    #[test]
    fn every_format_on_its_own_line() {
        let text = "# a hosts file\n\
            127.0.0.1 localhost\n\
            ::1 localhost ip6-localhost ip6-loopback\n\
            0.0.0.0 ads.example # trailing comment\n\
            0.0.0.0 a.example b.example\n\
            :: v6.example\n\
            127.0.0.1\tTab.Example\r\n\
            ! adblock comment\n\
            [Adblock Plus 2.0]\n\
            ||tracker.example^\n\
            plain.example\n\
            .domain.example\n\
            \n\
            10.0.0.0/8\n";
        let load = parse_list(text);
        assert_eq!(load.entries(), 9, "{:?}", load.first_skipped);
        assert_eq!(load.skipped, 4, "{:?}", load.first_skipped);
        assert!(load
            .first_skipped
            .iter()
            .all(|s| s.reason.contains("localhost")));
        assert_eq!(load.first_skipped[0].number, 2);
        assert_eq!(
            names(
                &load,
                &[
                    "ads.example",
                    "a.example",
                    "b.example",
                    "v6.example",
                    "tab.example",
                    "tracker.example",
                    "x.tracker.example",
                    "plain.example",
                    "x.domain.example",
                ]
            ),
            vec![true; 9]
        );
        // hosts(5) names block exactly that name; localhost is not blocked.
        assert_eq!(
            names(&load, &["x.ads.example", "localhost", "x.plain.example"]),
            vec![false; 3]
        );
        assert!(load.set.matches_address("10.1.2.3".parse().unwrap()));
        assert!(load.looks_valid());
    }

    #[test]
    fn lines_that_cannot_be_honoured_are_skipped_and_named() {
        let cases: &[(&str, &str)] = &[
            ("||ads.example^$third-party", "options"),
            ("@@||good.example^", "exception"),
            ("||ads.example/path^", "not a host name"),
            ("||ads.example", "without ^"),
            ("example.com##.banner", "not a host name, .domain"),
            ("0.0.0.0 0.0.0.0", "an address"),
            ("0.0.0.0 bad_name!", "not a host name"),
            ("0.0.0.0 local", "localhost"),
            ("0.0.0.0 broadcasthost", "localhost"),
            ("two words", "not a pattern"),
            ("<html>", "not a host name"),
        ];
        for (line, reason) in cases {
            let load = parse_list(line);
            assert_eq!((load.entries(), load.skipped), (0, 1), "{line:?}");
            let first = &load.first_skipped[0];
            assert!(first.reason.contains(reason), "{line:?}: {}", first.reason);
            assert_eq!((first.number, first.text.as_str()), (1, *line));
        }
    }

    #[test]
    fn only_the_first_skipped_lines_are_kept_and_garbage_is_not_a_list() {
        let html = "<html>\n<head><title>502 Bad Gateway</title></head>\n".repeat(10);
        let load = parse_list(&html);
        assert_eq!(load.skipped, 20);
        assert_eq!(load.first_skipped.len(), SKIPPED_KEPT);
        assert!(!load.looks_valid());
        assert!(!parse_list("# only comments\n\n").looks_valid());
        assert!(load
            .summary()
            .starts_with("0 entries, 20 skipped, first at line 1: <html>"));
        assert!(parse_list("[::1]\n")
            .set
            .matches_address("::1".parse().unwrap()));
    }

    #[test]
    fn a_rule_matches_when_its_patterns_or_its_list_do() {
        let list = HostList::new("r".into(), "http://l".into(), Duration::from_secs(60));
        let host = Host::Name("ads.example".into());
        let mut written = HostSet::new();
        written.insert(HostPattern::parse("10.0.0.0/8").unwrap());
        assert_eq!(rule_hosts(None, None, &host, None), None);
        assert_eq!(
            rule_hosts(None, Some(&list), &host, None),
            Some(HostMatch::No)
        );
        assert_eq!(
            rule_hosts(Some(&written), Some(&list), &host, None),
            Some(HostMatch::NeedAddress)
        );
        list.put(
            parse_list("0.0.0.0 ads.example\n"),
            ListSource::Fetch,
            SystemTime::UNIX_EPOCH,
            (None, None),
        );
        assert_eq!(
            rule_hosts(Some(&written), Some(&list), &host, None),
            Some(HostMatch::Yes)
        );
        let status = list.status();
        assert_eq!((status.entries, status.source), (1, ListSource::Fetch));
        let after = HostList::new("r".into(), "http://l".into(), Duration::from_secs(60));
        after.take_over(&list);
        assert_eq!(after.set().len(), 1);
    }
}
