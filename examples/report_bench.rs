//! How fast `portcullis report` reads, and that its memory stays flat: writes a generated
//! Squid-format access log of 2 million lines (about 250 MB) with the proxy's own
//! `log::format_line`, reads it with the report code (the library, not the binary) and
//! compares with a plain line count of the same file. Peak memory (VmHWM from
//! /proc/self/status) is printed after a report of the first tenth of the file and after the
//! whole file: if reading streams, the second is no larger. A JSON-format log of 500 000 lines
//! is measured too. The files are removed at the end.
//!
//! `cargo run --release --example report_bench [LINES]`

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant, UNIX_EPOCH};

use portcullis::core::policy::{Builtin, Decider};
use portcullis::core::ports::service_name;
use portcullis::observe::access::{AccessRecord, Moved, Verdict};
use portcullis::observe::log::{format_line, Format};
use portcullis::ops::report::{decode, GroupBy, OutputFormat, Report, Window};

const PORTS: [(u16, bool); 12] = [
    (443, true),
    (80, false),
    (8080, false),
    (993, true),
    (22, true),
    (25, true),
    (5222, true),
    (8443, true),
    (3389, true),
    (1194, true),
    (9418, true),
    (21, true),
];

/// Peak resident memory of this process so far, in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// Writes `lines` records in `format`, streaming (nothing is kept).
fn generate(file: &File, lines: u64, format: Format) -> anyhow::Result<()> {
    let clients: Vec<SocketAddr> = (0..250)
        .map(|i| SocketAddr::from(([192, 168, 1 + (i / 250) as u8, (i % 250) as u8 + 1], 50_000)))
        .collect();
    let users: Vec<String> = (0..30).map(|i| format!("user{i}")).collect();
    let mut rng = Rng(7);
    let mut out = BufWriter::with_capacity(1 << 20, file);
    for i in 0..lines {
        let (port, connect) = PORTS[rng.below(PORTS.len() as u64) as usize];
        let denied = rng.below(20) == 0;
        let record = AccessRecord {
            time: UNIX_EPOCH + Duration::from_millis(1_764_152_429_000 + i * 40),
            client: clients[rng.below(clients.len() as u64) as usize],
            user: (rng.below(4) != 0).then(|| users[rng.below(30) as usize].clone()),
            method: if connect { "CONNECT" } else { "GET" }.into(),
            version: "HTTP/1.1",
            path: (!connect).then(|| format!("/static/{}/app.js", rng.below(1000))),
            host: format!("host{}.example.com", rng.below(5000)),
            port,
            service: service_name(port),
            upstream: Some(SocketAddr::from(([93, 184, 216, 34], port))),
            parent: None,
            status: if denied { 403 } else { 200 },
            verdict: if denied {
                Verdict::Deny
            } else {
                Verdict::Allow
            },
            rule: Decider::Builtin(Builtin::PortsHttp),
            reason: None,
            error: None,
            bytes_up: rng.below(10_000),
            bytes_down: rng.below(2_000_000),
            duration: Duration::from_millis(rng.below(30_000)),
            dns: None,
            throttled: None,
            progressed: Moved::default(),
        };
        out.write_all(format_line(format, &record, None).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// Reads at most `limit` bytes of `file` with the report code; (lines, seconds, report).
fn report(file: &mut File, limit: u64, by: GroupBy) -> anyhow::Result<(u64, f64, Report)> {
    file.seek(SeekFrom::Start(0))?;
    let started = Instant::now();
    let mut report = Report::new(by, Window::default());
    let input = decode(BufReader::with_capacity(64 * 1024, (&*file).take(limit)))?;
    report.scan(input, "bench", || {})?;
    let rendered = report.render(OutputFormat::Table);
    std::hint::black_box(&rendered);
    Ok((
        report.counts().lines,
        started.elapsed().as_secs_f64(),
        report,
    ))
}

fn main() -> anyhow::Result<()> {
    let lines: u64 = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(2_000_000);
    let rss_start = peak_rss_kib();

    let mut squid = tempfile::tempfile()?;
    let started = Instant::now();
    generate(&squid, lines, Format::Squid)?;
    let size = squid.metadata()?.len();
    println!(
        "generated {lines} Squid lines, {:.1} MB, in {:.1} s",
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let rss_generated = peak_rss_kib();

    // Baselines: the same file read by std's line iterator and by a plain byte scan.
    squid.seek(SeekFrom::Start(0))?;
    let started = Instant::now();
    let counted = BufReader::with_capacity(64 * 1024, &squid).lines().count() as u64;
    let lines_secs = started.elapsed().as_secs_f64();
    assert_eq!(counted, lines);
    squid.seek(SeekFrom::Start(0))?;
    let started = Instant::now();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut newlines = 0u64;
    loop {
        let n = squid.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        newlines += chunk[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    let scan_secs = started.elapsed().as_secs_f64();
    assert_eq!(newlines, lines);

    // The report on the first tenth, then on the whole file.
    let (tenth_lines, _, _) = report(&mut squid, size / 10, GroupBy::Port)?;
    let rss_tenth = peak_rss_kib();
    let (read, port_secs, port_report) = report(&mut squid, u64::MAX, GroupBy::Port)?;
    assert_eq!((read, port_report.counts().skipped), (lines, 0));
    let rss_whole = peak_rss_kib();
    let (_, host_secs, host_report) = report(&mut squid, u64::MAX, GroupBy::Host)?;
    let rss_host = peak_rss_kib();

    let rate = |secs: f64| lines as f64 / secs;
    println!();
    println!(
        "{:<44} {:>8}  {:>14}  {:>8}",
        "reading the Squid log", "seconds", "lines/s", "MB/s"
    );
    for (what, secs) in [
        ("byte scan for newlines (baseline)", scan_secs),
        ("BufRead::lines().count() (baseline)", lines_secs),
        ("report --by port", port_secs),
        ("report --by host (5000 groups)", host_secs),
    ] {
        println!(
            "{what:<44} {secs:>8.2}  {:>14.0}  {:>8.0}",
            rate(secs),
            size as f64 / 1e6 / secs
        );
    }
    println!();
    println!(
        "report --by port / lines().count(): {:.2}x the time ({:.0} % of its speed)",
        port_secs / lines_secs,
        100.0 * lines_secs / port_secs
    );
    println!(
        "report --by port / byte scan:       {:.2}x the time",
        port_secs / scan_secs
    );
    println!();
    println!("peak RSS (VmHWM):");
    println!(
        "  at start                           {:>8.1} MiB",
        mib(rss_start)
    );
    println!(
        "  after generating                   {:>8.1} MiB",
        mib(rss_generated)
    );
    println!(
        "  after report of 1/10 ({tenth_lines:>8} lines) {:>8.1} MiB",
        mib(rss_tenth)
    );
    println!(
        "  after report of all ({lines:>9} lines) {:>8.1} MiB",
        mib(rss_whole)
    );
    println!(
        "  after report --by host             {:>8.1} MiB",
        mib(rss_host)
    );
    println!(
        "  growth from 1/10 to all of the file: {:+.1} MiB",
        mib(rss_whole) - mib(rss_tenth)
    );
    let total = port_report.total().map_or(0, |t| t.requests);
    println!(
        "  ({} port groups, {} host groups, {total} requests)",
        port_report.rows().len(),
        host_report.rows().len()
    );
    drop(squid);

    // The JSON format, a quarter as many lines.
    let json_lines = lines / 4;
    let mut json = tempfile::tempfile()?;
    generate(&json, json_lines, Format::Json)?;
    let json_size = json.metadata()?.len();
    let (read, json_secs, _) = report(&mut json, u64::MAX, GroupBy::Port)?;
    assert_eq!(read, json_lines);
    println!();
    println!(
        "JSON log: {json_lines} lines, {:.1} MB: report --by port {:.2} s, {:.0} lines/s, {:.0} MB/s",
        json_size as f64 / 1e6,
        json_secs,
        json_lines as f64 / json_secs,
        json_size as f64 / 1e6 / json_secs
    );
    println!(
        "peak RSS after the JSON report: {:.1} MiB",
        mib(peak_rss_kib())
    );
    Ok(())
}
