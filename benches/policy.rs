//! Nanoseconds per policy decision (`Policy::decide`), with 1,000 rules and with a
//! 100,000-entry `hosts_file` block list, beside the plain port-list decision of a
//! configuration without rules (the baseline).
//!
//! To try this benchmark:
//!
//! 1. `cargo bench --bench policy` (about half a minute)
//! 2. `cargo bench --bench policy -- hosts` (only the cases whose name contains `hosts`)
//!
//! The policies are built the way the proxy builds them: a TOML text generated here is parsed
//! with `Config::from_toml` and compiled with `Config::validate`, the block list written to a
//! temporary directory as a `hosts_file`. The 1,000 rules are varied (client networks, users,
//! ports, methods, host names, `.domains` and networks) and none of them matches the
//! benchmarked requests but the one near the end, so every decision walks nearly all of them.
//! Name targets are decided with the address they resolved to, as the proxy does before it
//! dials (without one, the first rule with networks would answer "need the address" at once).
//! Compare each case with `no rules (port lists)`: absolute times depend on the machine.

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::config::Config;
use portcullis::core::policy::{Decision, Facts, Kind, Policy};
use portcullis::core::target::Host;

/// Entries in the block list: names, `.domains` and networks in equal parts.
const HOSTS: usize = 100_000;
/// Rules in the long rule list.
const RULES: usize = 1_000;

/// The head of every generated configuration: the port lists the baseline decides by.
const HEAD: &str = r#"
listen = ["127.0.0.1:3128"]
[ports]
http = ["http", "1025-65535"]
connect = ["https"]
[admin]
listen = "off"
[log]
access = "off"
"#;

/// One line of the block list, `i` in `0..HOSTS`.
fn block_entry(i: usize) -> String {
    match i % 3 {
        0 => format!("ads{i}.example.com"),
        1 => format!(".tracker{i}.example.net"),
        _ => format!("10.{}.{}.0/24", (i >> 8) & 255, i & 255),
    }
}

/// The `i`th of the rules that do not match the benchmarked requests, each failing on a
/// different condition.
fn filler_rule(i: usize) -> String {
    let body = match i % 7 {
        // A client network the request is not from.
        0 => format!(
            "clients = [\"172.{}.{}.0/24\"]\nports = [\"https\"]",
            16 + i % 16,
            i / 16 % 256
        ),
        // A user (the request has another).
        1 => format!("users = [\"user{i}\", \"other{i}\"]"),
        // A port the request does not go to.
        2 => format!("ports = [{}, \"{}-{}\"]", 20_000 + i, 30_000 + i, 30_001 + i),
        // Methods the request does not use.
        3 => "methods = [\"POST\", \"PUT\", \"DELETE\"]".to_owned(),
        // Names and domains the target is not under.
        4 => format!("hosts = [\"site{i}.example.com\", \".dom{i}.example.org\", \"www.shop{i}.example\"]"),
        // Networks the target's address is not in (a hash lookup per prefix length).
        5 => format!(
            "hosts = [\"192.0.{}.0/24\", \"198.18.{}.{}/32\"]",
            i % 256,
            i / 256,
            i % 256
        ),
        // Every condition but the host matches: the host set is asked and says no.
        _ => format!(
            "clients = [\"192.168.0.0/16\"]\nmethods = [\"CONNECT\", \"GET\"]\nports = [\"https\", \"http\"]\nhosts = [\".corp{i}.example\"]"
        ),
    };
    let action = if i.is_multiple_of(2) { "deny" } else { "allow" };
    format!("[[rules]]\nname = \"rule {i}\"\n{body}\naction = \"{action}\"\n")
}

/// Builds a policy from `rules` (TOML `[[rules]]` text), validated from a file in `dir` so
/// that `hosts_file` and `htpasswd` paths resolve there.
fn policy(dir: &std::path::Path, rules: &str, auth: bool) -> Policy {
    let mut text = HEAD.to_owned();
    if auth {
        text.push_str("[auth]\nhtpasswd = \"users.htpasswd\"\n");
    }
    text.push_str(rules);
    let origin = dir.join("portcullis.toml");
    let origin = origin.to_str().expect("a UTF-8 temporary path");
    let config = Config::from_toml(&text, origin).expect("the generated configuration parses");
    config
        .validate(origin)
        .expect("the generated configuration is valid")
        .policy
}

/// What the benchmarked requests come from and ask for.
struct Request {
    client: IpAddr,
    user: Option<&'static str>,
    method: &'static str,
    kind: Kind,
    host: Host,
    port: u16,
    /// The address a name resolved to (for an IP literal, `decide` uses the literal).
    addr: Option<IpAddr>,
}

impl Request {
    fn connect(host: &str, port: u16) -> Request {
        let (host, addr) = match host.parse::<IpAddr>() {
            Ok(ip) => (Host::Ip(ip), None),
            Err(_) => (
                Host::Name(host.to_owned()),
                Some("93.184.216.34".parse().expect("an address")),
            ),
        };
        Request {
            client: "192.168.1.20".parse().expect("an address"),
            user: Some("alice"),
            method: "CONNECT",
            kind: Kind::Connect,
            host,
            port,
            addr,
        }
    }

    fn facts(&self) -> Facts<'_> {
        Facts {
            client: self.client,
            user: self.user,
            groups: &[],
            method: self.method,
            kind: self.kind,
            host: &self.host,
            port: self.port,
            at: jiff::Timestamp::UNIX_EPOCH,
        }
    }
}

/// The decider's name, or the refusing rule's, or "need address".
fn outcome(decision: &Decision) -> String {
    match decision {
        Decision::Allow(d) => format!("allow by {d}"),
        Decision::Deny(d) => format!("deny by {}", d.rule),
        Decision::NeedAddress => "need address".to_owned(),
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut list = String::with_capacity(HOSTS * 24);
    for i in 0..HOSTS {
        list.push_str(&block_entry(i));
        list.push('\n');
    }
    std::fs::write(dir.path().join("block.txt"), &list).expect("the block list is written");
    let hash = portcullis::ops::passwd::hash_password("bench-password").expect("a password hash");
    std::fs::write(
        dir.path().join("users.htpasswd"),
        portcullis::ops::passwd::set_entry("", "alice", &hash),
    )
    .expect("the htpasswd file is written");

    // The block list alone, one rule.
    let block_rule =
        "[[rules]]\nname = \"block list\"\nhosts_file = \"block.txt\"\naction = \"deny\"\n";
    let empty = policy(dir.path(), "", false);
    let hosts = policy(dir.path(), block_rule, false);
    // 1,000 rules: 997 that do not match, the rule that allows the target, one more filler,
    // then the block list (rule 1,000).
    let mut rules = String::new();
    for i in 0..RULES - 3 {
        rules.push_str(&filler_rule(i));
    }
    let _ = write!(
        rules,
        "[[rules]]\nname = \"the target\"\nhosts = [\"target.example.com\"]\nports = [\"https\"]\nmethods = [\"CONNECT\"]\naction = \"allow\"\n{}{block_rule}",
        filler_rule(RULES - 3)
    );
    let many = policy(dir.path(), &rules, true);
    assert_eq!(many.rules.len(), RULES);
    assert_eq!(hosts.rules[0].hosts.as_ref().map(|h| h.len()), Some(HOSTS));

    let cases: Vec<(&str, &Policy, Request, &str)> = vec![
        (
            "no rules (port lists)",
            &empty,
            Request::connect("www.example.com", 443),
            "allow by ports.connect",
        ),
        (
            "1000 rules, match at rule 998",
            &many,
            Request::connect("target.example.com", 443),
            "allow by rule \"the target\"",
        ),
        (
            "1000 rules, none matches (port lists)",
            &many,
            Request::connect("www.example.com", 443),
            "allow by ports.connect",
        ),
        (
            "1000 rules, then 100k hosts hit",
            &many,
            Request::connect("ads99999.example.com", 443),
            "deny by rule \"block list\"",
        ),
        (
            "100k hosts, name hit",
            &hosts,
            Request::connect("ads99999.example.com", 443),
            "deny by rule \"block list\"",
        ),
        (
            "100k hosts, domain hit (3 labels deep)",
            &hosts,
            Request::connect("a.b.tracker99997.example.net", 443),
            "deny by rule \"block list\"",
        ),
        (
            "100k hosts, miss (name and address)",
            &hosts,
            Request::connect("www.example.com", 443),
            "allow by ports.connect",
        ),
        (
            "100k hosts, IP literal in a network",
            &hosts,
            Request::connect("10.134.159.7", 443),
            "deny by rule \"block list\"",
        ),
        (
            "100k hosts, IP literal in no network",
            &hosts,
            Request::connect("93.184.216.34", 443),
            "allow by ports.connect",
        ),
    ];

    let mut group = c.benchmark_group("decide");
    for (name, policy, request, want) in &cases {
        // The answer is checked once, so a case cannot silently measure something else.
        let got = outcome(&policy.decide(&request.facts(), request.addr));
        assert_eq!(got, *want, "{name}");
        group.bench_function(*name, |b| {
            b.iter(|| black_box(policy.decide(black_box(&request.facts()), request.addr)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .without_plots();
    targets = bench
}
criterion_main!(benches);
