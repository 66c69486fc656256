//! `portcullis report` as a user runs it, on generated access logs of known content: one
//! Squid-format file (plain) and one JSON-format file (gzip), written by the proxy's own
//! `log::format_line`. Every total of the JSON output is checked against totals computed here
//! from the records themselves; CSV, the table, standard input, time windows, malformed lines
//! and unreadable inputs are checked too. Records of the proxy's own pages are in the logs,
//! and in no total: they are no traffic through the proxy. The logs of two proxies (their
//! JSON lines naming each its `instance`) and an older log without the field make one report
//! whose table names both proxies, and `--by instance` a row for each.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::write::GzEncoder;
use serde_json::Value;

use portcullis::core::policy::{Builtin, Decider};
use portcullis::core::ports::service_name;
use portcullis::observe::access::{AccessRecord, Moved, Verdict};
use portcullis::observe::log::{format_line, Format};

use crate::support::{portcullis, Ran};

/// 2025-11-26T20:00:00Z: the generated logs cross midnight.
const BASE_MS: u64 = 1_764_187_200_000;
const MIDNIGHT_MS: u64 = BASE_MS + 4 * 3_600_000;

const SQUID_LINES: usize = 50_000;
const JSON_LINES: usize = 20_000;

/// A small deterministic generator (SplitMix64), so the logs are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// (host, port, CONNECT?): the destinations of the generated traffic. The empty host is a
/// record without a request; [`OWN_PAGE`] is the proxy's own page.
const DESTINATIONS: [(&str, u16, bool); 9] = [
    ("example.com", 443, true),
    ("example.com", 80, false),
    ("api.example.net", 8080, false),
    ("mail.example.org", 25, true),
    ("[2001:db8::5]", 8443, true),
    ("git.example.com", 9418, true),
    ("www.example.org", 80, false),
    ("", 0, false),
    OWN_PAGE,
];

/// The proxy itself, as its own page's records name it.
const OWN_PAGE: (&str, u16, bool) = ("proxy.lan", 3128, false);

const USERS: [Option<&str>; 5] = [
    None,
    Some("alice"),
    Some("bob"),
    Some("carol smith"),
    Some("dave, \"the boss\""),
];

/// `n` records, one about every second from `BASE_MS` (each arrival on a whole millisecond).
fn records(n: usize, seed: u64) -> Vec<AccessRecord> {
    let mut rng = Rng(seed);
    let clients: Vec<String> = (1..=40)
        .map(|i| format!("192.168.1.{i}:40000"))
        .chain((1..=5).map(|i| format!("[fd00::{i:x}]:40000")))
        .collect();
    (0..n)
        .map(|i| {
            let (host, port, connect) = *rng.pick(&DESTINATIONS);
            // The proxy's own pages refuse nobody: a missing path is their own 404.
            let local = (host, port, connect) == OWN_PAGE;
            let denied = !local && (port == 25 || rng.below(10) == 0);
            let status = if denied {
                *rng.pick(&[403, 407, 429, 400, 499])
            } else {
                *rng.pick(&[200, 200, 200, 404, 502, 499])
            };
            AccessRecord {
                time: UNIX_EPOCH
                    + Duration::from_millis(BASE_MS + i as u64 * 1000 + rng.below(1000)),
                client: rng.pick(&clients).parse().unwrap(),
                user: rng.pick(&USERS).map(str::to_owned),
                method: if connect { "CONNECT" } else { "GET" }.into(),
                version: "HTTP/1.1",
                path: (!connect && !host.is_empty()).then(|| format!("/p/{}", rng.below(100))),
                host: host.into(),
                port,
                service: service_name(port),
                upstream: None,
                parent: None,
                status,
                verdict: if denied {
                    Verdict::Deny
                } else {
                    Verdict::Allow
                },
                rule: Decider::Builtin(if local {
                    Builtin::Local
                } else {
                    Builtin::PortsHttp
                }),
                reason: None,
                error: None,
                bytes_up: if denied { 0 } else { rng.below(200_000) },
                bytes_down: if denied {
                    rng.below(500)
                } else {
                    rng.below(5_000_000)
                },
                duration: Duration::from_millis(rng.below(120_000)),
                dns: None,
                throttled: None,
                progressed: Moved::default(),
            }
        })
        .collect()
}

/// The totals of one group, as the report should print them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Want {
    requests: u64,
    denied: u64,
    bytes_up: u64,
    bytes_down: u64,
    clients: BTreeSet<String>,
    first: u64,
    last: u64,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The key of a record for `by`, as the report writes it.
fn key(r: &AccessRecord, by: &str) -> String {
    match by {
        "port" => r.port.to_string(),
        "client" => r.client.ip().to_string(),
        "host" if r.host.is_empty() => "-".into(),
        "host" => r.host.clone(),
        "user" => r.user.clone().unwrap_or_else(|| "-".into()),
        // Every record in one group, whose totals a test renames.
        "all" => String::new(),
        _ => unreachable!(),
    }
}

fn is_own_page(r: &AccessRecord) -> bool {
    r.rule == Decider::Builtin(Builtin::Local)
}

/// The records a report counts: all but the proxy's own pages.
fn counted(records: &[AccessRecord]) -> usize {
    records.iter().filter(|r| !is_own_page(r)).count()
}

/// Expected groups of `records` (from a log of `format`) inside `since <= time < until`.
fn expected<'a>(
    records: impl IntoIterator<Item = (&'a AccessRecord, Format)>,
    by: &str,
    since: u64,
    until: u64,
) -> BTreeMap<String, Want> {
    let mut groups: BTreeMap<String, Want> = BTreeMap::new();
    for (r, format) in records {
        let t = ms(r.time);
        if t < since || t >= until || is_own_page(r) {
            continue;
        }
        let g = groups.entry(key(r, by)).or_default();
        if g.requests == 0 {
            (g.first, g.last) = (t, t);
        }
        g.requests += 1;
        g.denied += u64::from(r.verdict == Verdict::Deny);
        g.bytes_up += if format == Format::Squid {
            0
        } else {
            r.bytes_up
        };
        g.bytes_down += r.bytes_down;
        g.clients.insert(r.client.ip().to_string());
        g.first = g.first.min(t);
        g.last = g.last.max(t);
    }
    groups
}

/// Checks a `--format json` output against `want`, row by row, order included.
fn check_json(stdout: &[u8], by: &str, want: &BTreeMap<String, Want>) {
    let rows: Vec<Value> = serde_json::from_slice(stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(stdout)));
    assert_eq!(rows.len(), want.len(), "{by}: {rows:#?}");
    let mut order: Vec<(&String, &Want)> = want.iter().collect();
    let port = |k: &str| k.parse::<u32>().unwrap_or(0);
    order.sort_by(|a, b| {
        b.1.requests.cmp(&a.1.requests).then_with(|| {
            if by == "port" {
                port(a.0).cmp(&port(b.0))
            } else {
                a.0.cmp(b.0)
            }
        })
    });
    for (row, (k, w)) in rows.iter().zip(order) {
        let object = row.as_object().unwrap();
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut want_keys = vec![
            by,
            "requests",
            "denied",
            "bytes_up",
            "bytes_down",
            "clients",
            "first_seen",
            "last_seen",
        ];
        if by == "port" {
            want_keys.push("service");
            let p: u16 = k.parse().unwrap();
            assert_eq!(
                row["port"],
                Value::from(p),
                "the port is a JSON number: {row}"
            );
            assert_eq!(
                row["service"],
                service_name(p).map_or(Value::Null, Value::from)
            );
        } else {
            assert_eq!(row[by], Value::from(k.as_str()), "{row}");
        }
        want_keys.sort_unstable();
        assert_eq!(keys, want_keys, "{row}");
        let got = (
            row["requests"].as_u64(),
            row["denied"].as_u64(),
            row["bytes_up"].as_u64(),
            row["bytes_down"].as_u64(),
            row["clients"].as_u64(),
            row["first_seen"].as_str().map(str::to_owned),
            row["last_seen"].as_str().map(str::to_owned),
        );
        let want = (
            Some(w.requests),
            Some(w.denied),
            Some(w.bytes_up),
            Some(w.bytes_down),
            Some(w.clients.len() as u64),
            Some(rfc3339(w.first)),
            Some(rfc3339(w.last)),
        );
        assert_eq!(got, want, "{by} {k}: {row}");
    }
}

/// The generated logs, written once per test binary.
struct Logs {
    _dir: tempfile::TempDir,
    squid: PathBuf,
    json_gz: PathBuf,
    squid_records: Vec<AccessRecord>,
    json_records: Vec<AccessRecord>,
}

fn logs() -> &'static Logs {
    static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let squid_records = records(SQUID_LINES, 1);
        let json_records = records(JSON_LINES, 2);
        let squid = dir.path().join("access.log");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&squid).unwrap());
        for r in &squid_records {
            out.write_all(format_line(Format::Squid, r, None).as_bytes())
                .unwrap();
        }
        out.flush().unwrap();
        let json_gz = dir.path().join("access.json.gz");
        let file = std::fs::File::create(&json_gz).unwrap();
        let mut gz = GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::fast());
        for r in &json_records {
            gz.write_all(format_line(Format::Json, r, Some("laptop")).as_bytes())
                .unwrap();
        }
        gz.finish().unwrap().flush().unwrap();
        Logs {
            _dir: dir,
            squid,
            json_gz,
            squid_records,
            json_records,
        }
    })
}

impl Logs {
    fn squid(&self) -> impl Iterator<Item = (&AccessRecord, Format)> {
        self.squid_records.iter().map(|r| (r, Format::Squid))
    }

    fn json(&self) -> impl Iterator<Item = (&AccessRecord, Format)> {
        self.json_records.iter().map(|r| (r, Format::Json))
    }
}

fn report(args: &[&str]) -> Ran {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    let out = portcullis(&all, Vec::new());
    assert!(out.status.success(), "{args:?}: {}", out.stderr);
    out
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn squid_log_totals_by_every_key() {
    let logs = logs();
    for by in ["port", "client", "host", "user"] {
        let out = report(&["--by", by, "--format", "json", path(&logs.squid)]);
        assert_eq!(out.stderr, "", "{by}");
        check_json(&out.stdout, by, &expected(logs.squid(), by, 0, u64::MAX));
    }
    // The default grouping is by port.
    let out = report(&["--format", "json", path(&logs.squid)]);
    check_json(
        &out.stdout,
        "port",
        &expected(logs.squid(), "port", 0, u64::MAX),
    );
}

#[test]
fn gzip_json_log_totals_and_both_logs_together() {
    let logs = logs();
    for by in ["port", "user"] {
        let out = report(&["--by", by, "--format", "json", path(&logs.json_gz)]);
        check_json(&out.stdout, by, &expected(logs.json(), by, 0, u64::MAX));
    }
    let both = || logs.squid().chain(logs.json());
    for by in ["port", "client", "host"] {
        let out = report(&[
            "--format",
            "json",
            "--by",
            by,
            path(&logs.squid),
            path(&logs.json_gz),
        ]);
        check_json(&out.stdout, by, &expected(both(), by, 0, u64::MAX));
    }
}

#[test]
fn standard_input_plain_or_gzip() {
    let logs = logs();
    let squid = std::fs::read(&logs.squid).unwrap();
    let out = portcullis(&["report", "--by", "client", "--format", "json"], squid);
    assert!(out.status.success(), "{}", out.stderr);
    check_json(
        &out.stdout,
        "client",
        &expected(logs.squid(), "client", 0, u64::MAX),
    );
    let gz = std::fs::read(&logs.json_gz).unwrap();
    let out = portcullis(&["report", "--format", "json", "-"], gz);
    assert!(out.status.success(), "{}", out.stderr);
    check_json(
        &out.stdout,
        "port",
        &expected(logs.json(), "port", 0, u64::MAX),
    );
}

#[test]
fn since_and_until_select_by_arrival_time() {
    let logs = logs();
    let both = || logs.squid().chain(logs.json());
    let files = [path(&logs.squid), path(&logs.json_gz)];
    // Dates: --until a day takes that whole day, --since a day starts at its midnight.
    let cases: [(&[&str], u64, u64); 4] = [
        (&["--until", "2025-11-26"], 0, MIDNIGHT_MS),
        (&["--since", "2025-11-27"], MIDNIGHT_MS, u64::MAX),
        (
            &[
                "--since",
                "2025-11-26T21:00:00.500Z",
                "--until",
                "2025-11-27 02:30:00",
            ],
            BASE_MS + 3_600_500,
            BASE_MS + 6 * 3_600_000 + 1_800_000,
        ),
        (&["--since", "2025-11-28"], u64::MAX, u64::MAX),
    ];
    for (window, since, until) in cases {
        for by in ["port", "user"] {
            let mut args = vec!["--format", "json", "--by", by];
            args.extend_from_slice(window);
            args.extend_from_slice(&files);
            let out = report(&args);
            let want = expected(both(), by, since, until);
            if since == u64::MAX {
                assert!(want.is_empty());
            } else {
                assert!(!want.is_empty(), "{window:?}");
            }
            check_json(&out.stdout, by, &want);
        }
    }
    // Both halves of a day boundary add up to everything.
    let count = |args: &[&str]| -> u64 {
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(args);
        all.extend_from_slice(&files);
        let rows: Vec<Value> = serde_json::from_slice(&report(&all).stdout).unwrap();
        rows.iter().map(|r| r["requests"].as_u64().unwrap()).sum()
    };
    let before = count(&["--until", "2025-11-26"]);
    let after = count(&["--since", "2025-11-27"]);
    assert_eq!(
        before + after,
        (counted(&logs.squid_records) + counted(&logs.json_records)) as u64
    );
    assert!(before > 0 && after > 0);
    let out = portcullis(
        &[
            "report",
            "--since",
            "2025-11-27",
            "--until",
            "2025-11-26T12:00:00Z",
        ],
        Vec::new(),
    );
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("--since must be before --until"),
        "{}",
        out.stderr
    );
    let out = portcullis(&["report", "--since", "last tuesday"], Vec::new());
    assert!(!out.status.success());
    assert!(out.stderr.contains("RFC 3339"), "{}", out.stderr);
}

/// A minimal RFC 4180 reader: records of fields, quoted fields may hold commas, quotes, CRLF.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let (mut record, mut field) = (Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => assert_eq!(chars.next(), Some('\n'), "a bare CR"),
            (false, '\n') => panic!("lines end in CRLF"),
            (false, c) => field.push(c),
        }
        if !quoted && c == '\r' {
            record.push(std::mem::take(&mut field));
            records.push(std::mem::take(&mut record));
        }
    }
    assert!(
        field.is_empty() && record.is_empty(),
        "the last line has no CRLF"
    );
    records
}

#[test]
fn csv_has_a_header_and_raw_numbers() {
    let logs = logs();
    let out = report(&["--by", "user", "--format", "csv", path(&logs.json_gz)]);
    let text = String::from_utf8(out.stdout).unwrap();
    let records = parse_csv(&text);
    assert_eq!(
        records[0],
        [
            "user",
            "requests",
            "denied",
            "bytes_up",
            "bytes_down",
            "clients",
            "first_seen",
            "last_seen"
        ]
    );
    let want = expected(logs.json(), "user", 0, u64::MAX);
    assert_eq!(records.len(), want.len() + 1);
    for record in &records[1..] {
        let w = &want[&record[0]];
        let numbers: Vec<u64> = record[1..6].iter().map(|n| n.parse().unwrap()).collect();
        assert_eq!(
            numbers,
            [
                w.requests,
                w.denied,
                w.bytes_up,
                w.bytes_down,
                w.clients.len() as u64
            ]
        );
        assert_eq!(record[6..], [rfc3339(w.first), rfc3339(w.last)]);
    }
    // The user with a comma and quotes is one quoted field.
    assert!(text.contains("\r\n\"dave, \"\"the boss\"\"\","), "{text}");
    let out = report(&["--format", "csv", path(&logs.squid)]);
    let records = parse_csv(std::str::from_utf8(&out.stdout).unwrap());
    assert_eq!(&records[0][..3], ["port", "service", "requests"]);
    let https = records.iter().find(|r| r[0] == "443").unwrap();
    assert_eq!(https[1], "https");
}

#[test]
fn table_has_aligned_columns_sizes_and_totals() {
    let logs = logs();
    let out = report(&[path(&logs.squid)]);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let header = lines[0];
    for title in [
        "PORT",
        "SERVICE",
        "REQUESTS",
        "DENIED",
        "BYTES UP",
        "BYTES DOWN",
        "CLIENTS",
    ] {
        assert!(header.contains(title), "{header}");
    }
    let want = expected(logs.squid(), "port", 0, u64::MAX);
    // Header, one row per port, the totals, the note on bytes up.
    assert_eq!(lines.len(), want.len() + 3, "{text}");
    let total = lines[want.len() + 1];
    let fields: Vec<&str> = total.split_whitespace().collect();
    let requests = counted(&logs.squid_records);
    assert!(requests < SQUID_LINES, "the log has own-page lines");
    assert_eq!(fields[..2], ["TOTAL", &requests.to_string()], "{total}");
    assert!(total.contains(" MiB") || total.contains(" GiB"), "{total}");
    assert!(lines
        .last()
        .unwrap()
        .contains("Bytes up are not recorded in the Squid format"));
    // Every row ends its REQUESTS column where the header does.
    let end = header.find("REQUESTS").unwrap() + "REQUESTS".len();
    for line in &lines[1..=want.len() + 1] {
        assert!(line.as_bytes()[end - 1].is_ascii_digit(), "{line}");
        assert_eq!(line.as_bytes()[end], b' ', "{line}");
    }
    let out = report(&["--by", "host", path(&logs.json_gz)]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("HOST "), "{text}");
    assert!(text.contains("\n[2001:db8::5] "), "{text}");
    assert!(!text.contains("Squid"), "{text}");
}

#[test]
fn malformed_lines_are_counted_and_located_and_unreadable_inputs_reported() {
    let logs = logs();
    let dir = tempfile::tempdir().unwrap();
    let messy = dir.path().join("messy.log");
    let records = &logs.squid_records[..1000];
    let mut text = Vec::new();
    for (i, r) in records.iter().enumerate() {
        match i {
            10 => text.extend(b"this is not an access log line\n"),
            500 => text.extend(b"{\"time\": \"broken\n"),
            700 => text.extend(b"1764152429.228 105 10.0.0.1 TCP_MISS/200 \xff\xfe GET\n"),
            _ => {}
        }
        text.extend(format_line(Format::Squid, r, None).bytes());
    }
    std::fs::write(&messy, &text).unwrap();
    let out = report(&["--format", "json", path(&messy)]);
    let want = expected(
        records.iter().map(|r| (r, Format::Squid)),
        "port",
        0,
        u64::MAX,
    );
    check_json(&out.stdout, "port", &want);
    assert!(
        out.stderr.contains(&format!(
            "skipped 3 malformed lines of 1003; the first: {} line 11 (fewer than 10 fields)",
            messy.display()
        )),
        "{}",
        out.stderr
    );
    // A missing file is reported and the exit status says so, but the others are read.
    let missing = dir.path().join("missing.log");
    let out = portcullis(
        &["report", "--format", "json", path(&missing), path(&messy)],
        Vec::new(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr
            .contains(&format!("cannot open {}", missing.display())),
        "{}",
        out.stderr
    );
    check_json(&out.stdout, "port", &want);
    // A truncated gzip file: what could be read is reported, and the error too.
    let gz = std::fs::read(&logs.json_gz).unwrap();
    let cut = dir.path().join("cut.json.gz");
    std::fs::write(&cut, &gz[..gz.len() / 2]).unwrap();
    let out = portcullis(&["report", "--format", "json", path(&cut)], Vec::new());
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("cannot read"), "{}", out.stderr);
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let read: u64 = rows.iter().map(|r| r["requests"].as_u64().unwrap()).sum();
    assert!(read > 0 && read < JSON_LINES as u64, "{read}");
    // A log in the common format is not read, and the note says which formats are.
    let mut common = Vec::new();
    for r in records.iter().take(20) {
        common.extend(format_line(Format::Common, r, None).bytes());
    }
    let out = portcullis(&["report"], common);
    assert!(out.status.success());
    assert!(
        out.stderr.contains("skipped 20 malformed lines of 20"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("not common"), "{}", out.stderr);
}

/// The JSON lines of `records` as a proxy named `instance` writes them; with `None`, as a
/// version from before the `instance` field wrote them (without it).
fn json_log(records: &[AccessRecord], instance: Option<&str>) -> Vec<u8> {
    let mut text = Vec::new();
    for r in records {
        let line = format_line(Format::Json, r, None);
        let unnamed = ",\"instance\":null}\n";
        assert!(line.ends_with(unnamed), "{line}");
        let head = &line[..line.len() - unnamed.len()];
        let line = match instance {
            Some(name) => format!("{head},\"instance\":\"{name}\"}}\n"),
            None => format!("{head}}}\n"),
        };
        text.extend(line.bytes());
    }
    text
}

/// The totals `--by instance` should print for logs of (instance, records): `-` for those
/// that name none.
fn expected_by_instance(logs: &[(Option<&str>, &[AccessRecord])]) -> BTreeMap<String, Want> {
    let mut groups: BTreeMap<String, Want> = BTreeMap::new();
    for (instance, records) in logs {
        let all = records.iter().map(|r| (r, Format::Json));
        let Some(w) = expected(all, "all", 0, u64::MAX).remove("") else {
            continue;
        };
        let g = groups
            .entry(instance.unwrap_or("-").to_owned())
            .or_default();
        if g.requests == 0 {
            (g.first, g.last) = (w.first, w.last);
        }
        g.requests += w.requests;
        g.denied += w.denied;
        g.bytes_up += w.bytes_up;
        g.bytes_down += w.bytes_down;
        g.clients.extend(w.clients);
        g.first = g.first.min(w.first);
        g.last = g.last.max(w.last);
    }
    groups
}

/// Two proxies' JSON logs and an older one without `instance`: `--by instance` totals each
/// proxy (older lines as `-`), the table first names the proxies, totals stay over all.
#[test]
fn several_proxies_logs_by_instance() {
    let dir = tempfile::tempdir().unwrap();
    let a = records(3_000, 21);
    let b = records(2_000, 22);
    let old = records(700, 23);
    let write = |name: &str, text: Vec<u8>| {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        file
    };
    let a_log = write("proxy-a.log", json_log(&a, Some("proxy-a")));
    let b_log = write("proxy-b.log", json_log(&b, Some("proxy-b")));
    let old_log = write("older.log", json_log(&old, None));

    // `--by instance --format json` over these files.
    let json_by_instance = |files: &[&Path]| {
        let mut args = vec!["--by", "instance", "--format", "json"];
        args.extend(files.iter().map(|f| path(f)));
        report(&args)
    };

    // Two proxies: one row each, totals right.
    let out = json_by_instance(&[&a_log, &b_log]);
    assert_eq!(out.stderr, "");
    let both = [(Some("proxy-a"), &a[..]), (Some("proxy-b"), &b[..])];
    check_json(&out.stdout, "instance", &expected_by_instance(&both));

    // The table names both before its columns, whatever it is grouped by; TOTAL is over all.
    let total_of = |text: &str| -> String {
        let line = text.lines().find(|l| l.starts_with("TOTAL")).unwrap();
        line.split_whitespace().nth(1).unwrap().to_owned()
    };
    let all = (counted(&a) + counted(&b)).to_string();
    for by in ["port", "instance"] {
        let out = report(&["--by", by, path(&a_log), path(&b_log)]);
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "2 proxies: proxy-a, proxy-b", "{text}");
        assert!(lines[1].starts_with(&by.to_ascii_uppercase()), "{text}");
        assert_eq!(total_of(&text), all, "{text}");
    }
    let text = String::from_utf8(report(&["--by", "instance", path(&b_log), path(&a_log)]).stdout)
        .unwrap();
    let rows: Vec<(&str, &str)> = text
        .lines()
        .skip(2)
        .map(|l| {
            let mut f = l.split_whitespace();
            (f.next().unwrap(), f.next().unwrap())
        })
        .collect();
    let (na, nb) = (counted(&a).to_string(), counted(&b).to_string());
    assert_eq!(
        rows,
        [
            ("proxy-a", &na[..]),
            ("proxy-b", &nb[..]),
            ("TOTAL", &all[..])
        ],
        "{text}"
    );

    // Both proxies' lines in one stream (as a log shipper writes them): the same.
    let mut merged = std::fs::read(&a_log).unwrap();
    merged.extend(std::fs::read(&b_log).unwrap());
    let out = portcullis(&["report", "--by", "instance", "--format", "json"], merged);
    assert!(out.status.success(), "{}", out.stderr);
    check_json(&out.stdout, "instance", &expected_by_instance(&both));

    // An older log without the field: its lines are `-`, and the table says how many.
    let out = json_by_instance(&[&a_log, &b_log, &old_log]);
    let three = [both[0], both[1], (None, &old[..])];
    check_json(&out.stdout, "instance", &expected_by_instance(&three));
    let text =
        String::from_utf8(report(&[path(&old_log), path(&a_log), path(&b_log)]).stdout).unwrap();
    assert_eq!(
        text.lines().next(),
        Some(&*format!(
            "2 proxies: proxy-a, proxy-b; {} records name no proxy (-)",
            counted(&old)
        )),
        "{text}"
    );
    assert_eq!(
        total_of(&text),
        (counted(&a) + counted(&b) + counted(&old)).to_string()
    );
    // The older log alone: one group `-`, and no line on proxies.
    let out = report(&["--by", "instance", path(&old_log)]);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("INSTANCE "), "{text}");
    assert!(lines[1].starts_with("-  "), "{text}");
    assert!(lines[2].starts_with("TOTAL "), "{text}");
    // One proxy alone: no line on proxies either.
    let text = String::from_utf8(report(&[path(&a_log)]).stdout).unwrap();
    assert!(text.starts_with("PORT "), "{text}");
}
