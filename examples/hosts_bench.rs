//! How fast a `hosts_file` block list loads and answers, beside a naive baseline.
//!
//! To try this example:
//!
//! 1. `cargo run --release --example hosts_bench` (100 000 entries)
//! 2. `cargo run --release --example hosts_bench -- 1000000` (a million)
//! 3. `cargo run --release --example hosts_bench -- 1000000 hosts` (a million hosts(5)
//!    lines, `0.0.0.0 adsN.example.com`, as the lists people download are written)
//!
//! It builds a block list of N entries (names, `.domains` and networks, in equal parts),
//! times loading it into a `HostSet`, then times lookups of names that hit and names that
//! miss, and the same lookups done by a linear scan over the patterns in the same process.
//! The ratio between the two is the figure to read; absolute times depend on the machine.
//! It also prints what loading cost in resident memory (`VmRSS` before and after, on Linux).

use std::hint::black_box;
use std::time::{Duration, Instant};

use portcullis::core::blocklist::parse_list;
use portcullis::core::hosts::{HostPattern, HostSet};
use portcullis::core::target::Host;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let hosts_format = std::env::args().nth(2).as_deref() == Some("hosts");
    let mut text = String::new();
    for i in 0..n {
        if hosts_format {
            text.push_str(&format!("0.0.0.0 ads{i}.example.com\n"));
            continue;
        }
        match i % 3 {
            0 => text.push_str(&format!("ads{i}.example.com\n")),
            1 => text.push_str(&format!(".tracker{i}.example.net\n")),
            _ => text.push_str(&format!("10.{}.{}.0/24\n", (i >> 8) & 255, i & 255)),
        }
    }

    let before = resident_kib();
    let started = Instant::now();
    let loaded = parse_list(&text);
    let load = started.elapsed();
    let after = resident_kib();
    assert_eq!(loaded.skipped, 0, "the generated list parses");
    let set: HostSet = loaded.set;
    println!(
        "loaded {} patterns ({} KiB of text) in {:.1} ms; resident memory {} MiB more ({} MiB with the text)",
        set.len(),
        text.len() / 1024,
        ms(load),
        after.saturating_sub(before) / 1024,
        after / 1024,
    );

    let queries: Vec<Host> = (0..10_000)
        .map(|i| {
            let name = match i % 4 {
                0 => format!("ads{}.example.com", (i * 3) % n),
                1 => format!("a.b.tracker{}.example.net", (i * 3 + 1) % n),
                2 => format!("miss{i}.example.org"),
                _ => format!("www.site{i}.example.com"),
            };
            Host::Name(name)
        })
        .collect();
    let ip: std::net::IpAddr = "10.1.2.3".parse().expect("literal address");
    let addr = Some(ip);

    let (indexed, hits) = time(|| {
        queries
            .iter()
            .filter(|q| set.matches(q, addr) == portcullis::core::hosts::HostMatch::Yes)
            .count()
    });
    println!(
        "indexed: {} lookups in {:.2} ms, {:.0} ns each ({hits} hits)",
        queries.len(),
        ms(indexed),
        indexed.as_nanos() as f64 / queries.len() as f64
    );

    // The baseline: the same answers by scanning every pattern, on a tenth of the queries.
    let patterns: Vec<HostPattern> = text
        .lines()
        .filter_map(|l| HostPattern::parse(l.split_whitespace().last()?).ok())
        .collect();
    let sample = &queries[..queries.len() / 10];
    let (scanned, _) = time(|| sample.iter().filter(|q| linear(&patterns, q, ip)).count());
    let per_scan = scanned.as_nanos() as f64 / sample.len() as f64;
    let per_indexed = indexed.as_nanos() as f64 / queries.len() as f64;
    println!(
        "linear scan: {:.0} ns each; the index is {:.0}x faster",
        per_scan,
        per_scan / per_indexed.max(1.0)
    );
}

fn linear(patterns: &[HostPattern], host: &Host, ip: std::net::IpAddr) -> bool {
    let Host::Name(name) = host else {
        return false;
    };
    patterns.iter().any(|p| match p {
        HostPattern::Exact(e) => e == name,
        HostPattern::Domain(d) => {
            name == d
                || name
                    .strip_suffix(d.as_str())
                    .is_some_and(|r| r.ends_with('.'))
        }
        HostPattern::Network(net) => net.contains(&ip),
    })
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let started = Instant::now();
    let out = black_box(f());
    (started.elapsed(), out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// This process's resident memory in KiB (`VmRSS`), or 0 where /proc does not tell.
fn resident_kib() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}
