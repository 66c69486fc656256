//! `portcullis report [FILES…]`: usage per destination port, client, host, user, kind of
//! failure (`--by error`, the JSON format's `error` field) or proxy (`--by instance`, the JSON
//! format's `instance` field), read back from access logs in the `squid` and `json` formats
//! that [`crate::observe::log`] writes; several proxies' logs make one report, whose table
//! names the proxies when there is more than one.
//!
//! The core is pure: [`parse_line`] turns one line into an [`Entry`], [`Report`] aggregates
//! entries into one [`Row`] per port, client, host, user, failure kind or proxy, and [`Report::render`] prints
//! the rows as a table, CSV or JSON. The thin outer part ([`collect`], [`run`]) opens the
//! inputs (files or standard input, gzip or plain, told apart by the gzip magic bytes), reads
//! them line by line with a bounded buffer and draws a progress line on a terminal. Memory does
//! not grow with the size of the input: lines are never kept, a line longer than
//! [`MAX_LINE_BYTES`] is skipped without being buffered, a group's distinct clients are counted
//! exactly up to [`EXACT_CLIENTS`] and estimated above it, and past [`MAX_GROUPS`] groups new
//! keys are counted together in one `(other)` row. Live counters are `crate::observe::stats`'s job.
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
//! `client`, `user`, `host`, `port`, `decision`, `rule` (whether it is `local`), `bytes_up`,
//! `bytes_down`, `error` and `instance` (both absent in older lines; Squid lines have
//! neither: they count as `-`).
//!
//! Times are arrival times in both formats, so `--since`, `--until`, "first seen" and "last
//! seen" mean the same whichever format a line is in. An empty host is reported as `-`, and a
//! missing user as `-`.
//!
//! Lines of the proxy's own pages (`TCP_MEM_HIT`; rule `local` in JSON) are counted in no
//! group and no total ([`Counts::own_pages`] only): they are no traffic through the proxy,
//! which is also how the live statistics treat them.

mod aggregate;
mod distinct;
#[cfg(test)]
mod fixtures;
mod parse;
mod quotas;
mod render;

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use aggregate::{BadLineAt, Counts, Proxies, Report, Row, RowKey};
pub use parse::{parse_line, parse_since, parse_until, BadLine, Entry, LineFormat, Window};
pub use render::human_bytes;

/// A line longer than this is skipped as malformed, without being kept in memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// A group's distinct clients are counted exactly up to this many; above it the count is a
/// HyperLogLog estimate (about ±1.6 %).
pub const EXACT_CLIENTS: usize = 10_000;

/// At most this many groups are kept; records of further keys are counted in one `(other)`
/// row (ports never reach it: there are 65 536).
pub const MAX_GROUPS: usize = 250_000;

/// At most this many proxy names (`instance`) are kept for the report's header.
pub const MAX_PROXY_NAMES: usize = 1000;

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
    /// The failure's kind (`refused`, `dns` …; `-`: no failure). Only the JSON format records
    /// it: Squid lines all count as `-`.
    Error,
    /// The proxy that wrote the record (`instance`; `-`: none named). Only the JSON format
    /// records it: Squid lines, and JSON lines written before the field existed, count as `-`.
    Instance,
}

impl GroupBy {
    /// The name of the key column: `port`, `client`, `host`, `user`, `error` or `instance`.
    pub fn key_name(self) -> &'static str {
        match self {
            GroupBy::Port => "port",
            GroupBy::Client => "client",
            GroupBy::Host => "host",
            GroupBy::User => "user",
            GroupBy::Error => "error",
            GroupBy::Instance => "instance",
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
    /// `--quotas`: the configuration cannot be used (its words).
    #[error("{0}")]
    Config(String),
}

/// What `portcullis report` was asked for: its command-line arguments, as clap reads them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Options {
    /// Access log files, plain or .gz; none, or `-`, reads standard input.
    #[arg(value_name = "FILES")]
    pub files: Vec<PathBuf>,
    /// What to group by.
    #[arg(long, value_enum, default_value_t = GroupBy::Port)]
    pub by: GroupBy,
    /// Only requests that arrived at or after TIME: RFC 3339 (2025-11-26T10:00:00Z) or a
    /// date (2025-11-26, from its midnight), UTC.
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<SystemTime>,
    /// Only requests that arrived before TIME: RFC 3339, or a date (up to the end of that
    /// day), UTC.
    #[arg(long, value_name = "TIME", value_parser = parse_until)]
    pub until: Option<SystemTime>,
    /// The output: an aligned table with a totals row, CSV (RFC 4180) or a JSON array.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// Print the byte budgets (`[[quotas]]`) as the proxy last kept them in `[state] dir`
    /// (used, budget, left, when each is full again) instead of reading access logs.
    #[arg(long, conflicts_with_all = ["files", "by", "since", "until"])]
    pub quotas: bool,
    /// With --quotas: the configuration file (its `[[quotas]]` and `[state] dir`); without it,
    /// the built-in defaults.
    #[arg(short, long, value_name = "FILE", requires = "quotas")]
    pub config: Option<PathBuf>,
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

/// The progress line on standard error: bytes read of the total, a bar and the time left,
/// redrawn at most four times a second (indicatif; it draws nothing where standard error is
/// not a terminal).
fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(4));
    if let Ok(style) = ProgressStyle::with_template(
        "reading: {bytes} of {total_bytes} ({percent} %) [{bar:30}] {eta} left",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
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
    let bar = if progress && total > PROGRESS_BYTES {
        progress_bar(total)
    } else {
        ProgressBar::hidden()
    };
    for path in inputs {
        let (name, raw): (String, Box<dyn Read>) = if is_stdin(path) {
            ("standard input".into(), Box::new(io::stdin().lock()))
        } else {
            let name = path.display().to_string();
            match File::open(path) {
                Ok(file) => (name, Box::new(bar.wrap_read(file))),
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
        let scanned = report.scan(input, &name, || {});
        if let Err(e) = scanned {
            failures.push(e);
        }
    }
    bar.finish_and_clear();
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
    if options.quotas {
        let text = quotas::render(
            options.config.as_ref(),
            options.format,
            jiff::Timestamp::now(),
        )
        .map_err(ReportError::Config)?;
        let mut stdout = io::stdout().lock();
        return match stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(ReportError::Write(e)),
            _ => Ok(true),
        };
    }
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
    use crate::observe::log::{format_line, Format};
    use crate::ops::report::fixtures::*;

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
