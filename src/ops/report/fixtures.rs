//! Records, entries and a small report shared by the report's tests.

use std::borrow::Cow;

use super::parse::time_of;
use super::*;

use crate::observe::access::AccessRecord;
use crate::observe::log::{format_line, Format};

pub const T0: u64 = 1_764_152_429_123; // 2025-11-26T10:20:29.123Z

pub fn record() -> AccessRecord {
    AccessRecord {
        time: time_of(T0),
        user: Some("alice".into()),
        bytes_up: 300,
        ..AccessRecord::example()
    }
}

/// Both formats of `r`, each parsed back, must give `want` (bytes up 0 for Squid).
pub fn check(r: &AccessRecord, want: Entry<'_>) {
    for format in [Format::Squid, Format::Json] {
        let line = format_line(format, r, Some("kids-laptop"));
        let text = line.strip_suffix('\n').unwrap();
        let got = parse_line(text).unwrap_or_else(|e| panic!("{e}: {line}"));
        let mut want = want.clone();
        if format == Format::Squid {
            want.bytes_up = 0;
            want.error = None;
            want.format = LineFormat::Squid;
        } else {
            want.format = LineFormat::Json;
        }
        assert_eq!(got, want, "{format:?}: {line}");
    }
}

pub fn entry(
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
        own_page: false,
        bytes_up: 300,
        bytes_down: 5120,
        error: None,
        instance: None,
        format: LineFormat::Json,
    }
}

pub fn scan(report: &mut Report, text: &[u8]) {
    report.scan(text, "test.log", || {}).unwrap();
}

/// Records: (client, user, host, port, denied, up, down, ms after T0).
pub type Spec = (
    &'static str,
    Option<&'static str>,
    &'static str,
    u16,
    bool,
    u64,
    u64,
    u64,
);

pub const SPECS: [Spec; 6] = [
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

/// The failure of each of [`SPECS`], in order.
pub const ERRORS: [Option<&str>; 6] = [
    None,
    Some("denied"),
    None,
    Some("refused"),
    Some("denied"),
    None,
];

pub fn report(by: GroupBy, window: Window) -> Report {
    let mut report = Report::new(by, window);
    for ((client, user, host, port, denied, up, down, after), error) in
        SPECS.into_iter().zip(ERRORS)
    {
        report.add(&Entry {
            time_ms: T0 + after,
            client: client.into(),
            user: user.map(Cow::Borrowed),
            host: host.into(),
            port,
            denied,
            own_page: false,
            bytes_up: up,
            bytes_down: down,
            error: error.map(Cow::Borrowed),
            instance: None,
            format: LineFormat::Json,
        });
    }
    report
}

pub fn summary_of(rows: &[Row]) -> Vec<(String, u64, u64, u64, u64, u64)> {
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
