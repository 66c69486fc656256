//! The Prometheus text exposition (format 0.0.4) of the live statistics, rendered from a
//! snapshot at scrape time: nothing here runs on the request path.
//!
//! Written by hand rather than with `prometheus-client` (evaluated for the "Layers" issue,
//! version 0.26): that crate encodes only OpenMetrics text, whose `# TYPE` line names a
//! counter without its `_total` suffix (`# TYPE portcullis_requests counter` above
//! `portcullis_requests_total{…}`) and which ends in `# EOF`. Parsers of format 0.0.4 — the
//! `prometheus-parse` crate our tests and acceptance scripts use among them — then match no
//! type to the samples and read every counter as untyped, and the HELP texts move to other
//! names. Same sample names and labels, but not the same exposition; and since the text is
//! built once per scrape from [`Stats`]' snapshot, the crate would save no per-request cost.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use crate::core::shaping::ClientRate;
use crate::observe::stats::{ConnectionCounts, PortUse, Stats, Usage, DNS_BUCKETS};

/// The Prometheus text exposition (format 0.0.4) of the statistics. `names` gives client
/// addresses their friendly names; `connections` is what the client connections do now.
pub fn render_metrics(
    stats: &Stats,
    names: &dyn Fn(IpAddr) -> Option<String>,
    connections: &ConnectionCounts,
    link: &[ClientRate],
) -> String {
    let mut out = String::with_capacity(4096);
    let ports = stats.ports();
    let port_labels = |p: &PortUse| {
        format!(
            "port=\"{}\",service=\"{}\"",
            p.port,
            escape(p.service.unwrap_or(""))
        )
    };

    family(&mut out, "portcullis_requests_total", "counter", "Requests (kind=\"http\"), tunnels (kind=\"connect\") and SOCKS requests (kind=\"socks\") by destination port, whatever their outcome.");
    for p in &ports {
        for (kind, n) in [
            ("http", p.http_requests),
            ("connect", p.connect_requests),
            ("socks", p.socks_requests),
        ] {
            if n > 0 {
                sample(
                    &mut out,
                    "portcullis_requests_total",
                    &format!("{},kind=\"{kind}\"", port_labels(p)),
                    n,
                );
            }
        }
    }
    family(
        &mut out,
        "portcullis_denied_total",
        "counter",
        "Requests and tunnels refused, by destination port.",
    );
    for p in &ports {
        for (kind, n) in [
            ("http", p.http_denied),
            ("connect", p.connect_denied),
            ("socks", p.socks_denied),
        ] {
            if n > 0 {
                sample(
                    &mut out,
                    "portcullis_denied_total",
                    &format!("{},kind=\"{kind}\"", port_labels(p)),
                    n,
                );
            }
        }
    }
    for (name, help, pick) in [
        (
            "portcullis_bytes_up_total",
            "Payload bytes from clients to destinations, by destination port.",
            (|p: &PortUse| p.bytes_up) as fn(&PortUse) -> u64,
        ),
        (
            "portcullis_bytes_down_total",
            "Payload bytes from destinations to clients, by destination port.",
            |p: &PortUse| p.bytes_down,
        ),
    ] {
        family(&mut out, name, "counter", help);
        for p in ports.iter().filter(|p| p.used()) {
            sample(&mut out, name, &port_labels(p), pick(p));
        }
    }
    family(
        &mut out,
        "portcullis_datagrams_total",
        "counter",
        "Datagrams relayed through SOCKS UDP associations, by destination port and direction (up: client to destination).",
    );
    for p in &ports {
        for (direction, n) in [("up", p.datagrams_up), ("down", p.datagrams_down)] {
            if n > 0 {
                sample(
                    &mut out,
                    "portcullis_datagrams_total",
                    &format!("{},direction=\"{direction}\"", port_labels(p)),
                    n,
                );
            }
        }
    }
    family(
        &mut out,
        "portcullis_active_tunnels",
        "gauge",
        "CONNECT and SOCKS tunnels open now, by destination port.",
    );
    for p in ports
        .iter()
        .filter(|p| p.active_tunnels > 0 || p.connect_requests > 0 || p.socks_requests > 0)
    {
        sample(
            &mut out,
            "portcullis_active_tunnels",
            &port_labels(p),
            p.active_tunnels,
        );
    }

    let (clients, other) = stats.clients();
    let client_rows: Vec<(String, Usage)> = clients
        .into_iter()
        .map(|(ip, u)| {
            let name = names(ip).unwrap_or_default();
            (format!("client=\"{ip}\",name=\"{}\"", escape(&name)), u)
        })
        .chain(
            (other != Usage::default()).then(|| ("client=\"other\",name=\"\"".to_owned(), other)),
        )
        .collect();
    usage_families(&mut out, "client", "client address", &client_rows);
    let (users, other) = stats.users();
    let user_rows: Vec<(String, Usage)> = users
        .into_iter()
        .map(|(user, u)| (format!("user=\"{}\"", escape(&user)), u))
        .chain((other != Usage::default()).then(|| ("user=\"other\"".to_owned(), other)))
        .collect();
    usage_families(&mut out, "user", "authenticated user", &user_rows);

    family(
        &mut out,
        "portcullis_errors_total",
        "counter",
        "Exchanges that ended without the origin's answer, by kind of failure (every kind listed, 0 until seen).",
    );
    for (kind, n) in stats.errors() {
        sample(
            &mut out,
            "portcullis_errors_total",
            &format!("kind=\"{}\"", kind.as_str()),
            n,
        );
    }

    let dns = stats.dns();
    family(
        &mut out,
        "portcullis_dns_resolution_seconds",
        "histogram",
        "Time to resolve destination names, for the exchanges that resolved one (cache hits included).",
    );
    for (bound, n) in DNS_BUCKETS.iter().zip(&dns.cumulative) {
        sample(
            &mut out,
            "portcullis_dns_resolution_seconds_bucket",
            &format!("le=\"{bound}\""),
            *n,
        );
    }
    let count = dns.cumulative.last().copied().unwrap_or(0);
    sample(
        &mut out,
        "portcullis_dns_resolution_seconds_bucket",
        "le=\"+Inf\"",
        count,
    );
    out.push_str(&format!(
        "portcullis_dns_resolution_seconds_sum {}\nportcullis_dns_resolution_seconds_count {count}\n",
        dns.sum_seconds
    ));
    family(
        &mut out,
        "portcullis_dns_cache_total",
        "counter",
        "Name resolutions answered from the resolver's cache or /etc/hosts (result=\"hit\") or by asking a DNS server (result=\"miss\").",
    );
    for (result, n) in [("hit", dns.hits), ("miss", dns.misses)] {
        sample(
            &mut out,
            "portcullis_dns_cache_total",
            &format!("result=\"{result}\""),
            n,
        );
    }

    family(
        &mut out,
        "portcullis_connections_open",
        "gauge",
        "Client connections open now.",
    );
    out.push_str(&format!(
        "portcullis_connections_open {}\n",
        connections.open
    ));
    family(
        &mut out,
        "portcullis_connections",
        "gauge",
        "Client connections by what they do now: serving an exchange (busy), kept alive between requests, waiting for a request head, holding a tunnel, holding a quiet tunnel (idle_tunnel). Those being refused are only in portcullis_connections_open.",
    );
    for (state, n) in [
        ("busy", connections.busy),
        ("kept_alive", connections.kept_alive),
        ("waiting", connections.waiting),
        ("tunnel", connections.tunnels),
        ("idle_tunnel", connections.idle_tunnels),
    ] {
        sample(
            &mut out,
            "portcullis_connections",
            &format!("state=\"{state}\""),
            n as u64,
        );
    }
    family(
        &mut out,
        "portcullis_connections_made_room_total",
        "counter",
        "Idle client connections closed to make room for a new one at the connection limits, by what they were doing.",
    );
    let made = &connections.made_room;
    for (was, n) in [
        ("kept_alive", made.kept_alive),
        ("waiting", made.waiting),
        ("idle_tunnel", made.idle_tunnel),
    ] {
        sample(
            &mut out,
            "portcullis_connections_made_room_total",
            &format!("was=\"{was}\""),
            n,
        );
    }
    family(
        &mut out,
        "portcullis_connections_shed_total",
        "counter",
        "New client connections answered with a fixed 503 and closed at once, far over the connection limit.",
    );
    out.push_str(&format!(
        "portcullis_connections_shed_total {}\n",
        connections.shed
    ));
    family(
        &mut out,
        "portcullis_client_rate_bytes",
        "gauge",
        "Bytes per second each client moved lately (the last 100 ms), while [shaping] is on: direction down (to the client) or up.",
    );
    for c in link {
        for (direction, rate) in [("down", c.down), ("up", c.up)] {
            out.push_str(&format!(
                "portcullis_client_rate_bytes{{client=\"{}\",direction=\"{direction}\"}} {rate:.0}\n",
                escape(&c.client)
            ));
        }
    }
    family(
        &mut out,
        "portcullis_client_share_bytes",
        "gauge",
        "Each active client's share of the shaped link now, bytes per second.",
    );
    for c in link {
        for (direction, share) in [("down", c.share_down), ("up", c.share_up)] {
            if let Some(share) = share {
                out.push_str(&format!(
                    "portcullis_client_share_bytes{{client=\"{}\",direction=\"{direction}\"}} {share:.0}\n",
                    escape(&c.client)
                ));
            }
        }
    }
    family(
        &mut out,
        "portcullis_throttled_seconds_total",
        "counter",
        "Time shaped transfers were told to wait by their share of the link or a cap, summed over transfers.",
    );
    let [down, up] = stats.throttled_seconds();
    out.push_str(&format!(
        "portcullis_throttled_seconds_total{{direction=\"down\"}} {down:.3}\nportcullis_throttled_seconds_total{{direction=\"up\"}} {up:.3}\n"
    ));
    counter(
        &mut out,
        "portcullis_access_log_dropped_total",
        "Access records dropped because the log could not keep up or could not be written.",
        stats.dropped_records.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "portcullis_syslog_dropped_total",
        "Access records not sent to syslog ([log] syslog): it could not keep up or could not be reached.",
        stats.syslog_dropped.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "portcullis_tls_handshake_failures_total",
        "TLS handshakes on listen_tls that failed (an untrusted certificate, not TLS at all) or did not finish within timeouts.request_header.",
        stats.tls_failed.load(Ordering::Relaxed),
    );
    family(
        &mut out,
        "portcullis_start_time_seconds",
        "gauge",
        "When the proxy started, in Unix seconds.",
    );
    let started = stats
        .started()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    out.push_str(&format!("portcullis_start_time_seconds {started}\n"));
    out
}

fn usage_families(out: &mut String, what: &str, label: &str, rows: &[(String, Usage)]) {
    type Family = (&'static str, &'static str, fn(&Usage) -> u64);
    let families: [Family; 4] = [
        ("requests", "Requests and tunnels", |u| u.requests),
        ("denied", "Requests and tunnels refused", |u| u.denied),
        ("bytes_up", "Payload bytes sent", |u| u.bytes_up),
        ("bytes_down", "Payload bytes received", |u| u.bytes_down),
    ];
    for (suffix, help, pick) in families {
        let name = format!("portcullis_{what}_{suffix}_total");
        family(
            out,
            &name,
            "counter",
            &format!("{help}, by {label} (bounded; the rest are \"other\")."),
        );
        for (labels, usage) in rows {
            sample(out, &name, labels, pick(usage));
        }
    }
}

/// The byte budgets (`[[quotas]]`): bytes used by each key in the period under way, and
/// each budget. Rows are `(quota, key, used, budget)`; written only when quotas exist.
/// `store`: whether the shared store answered its last sync, and its failed syncs, when one
/// is configured.
pub fn render_budgets(
    out: &mut String,
    rows: &[(&str, &str, u64, u64)],
    store: Option<(bool, u64)>,
) {
    if let Some((up, failures)) = store {
        family(
            out,
            "portcullis_quota_store_up",
            "gauge",
            "1 when the store of byte budgets ([state] store) answered the last sync, 0 while budgets are counted here alone.",
        );
        out.push_str(&format!("portcullis_quota_store_up {}\n", u64::from(up)));
        family(
            out,
            "portcullis_quota_store_failures_total",
            "counter",
            "Syncs with the store of byte budgets that failed (every 500 ms while it is away).",
        );
        out.push_str(&format!(
            "portcullis_quota_store_failures_total {failures}\n"
        ));
    }
    if rows.is_empty() {
        return;
    }
    family(
        out,
        "portcullis_quota_used_bytes",
        "gauge",
        "Bytes used of a byte budget ([[quotas]]) in the period under way, both ways, by quota and key (a client address or a user).",
    );
    let labels =
        |quota: &str, key: &str| format!("quota=\"{}\",key=\"{}\"", escape(quota), escape(key));
    for (quota, key, used, _) in rows {
        sample(
            out,
            "portcullis_quota_used_bytes",
            &labels(quota, key),
            *used,
        );
    }
    family(
        out,
        "portcullis_quota_limit_bytes",
        "gauge",
        "The size of a byte budget ([[quotas]]), by quota and key.",
    );
    for (quota, key, _, bytes) in rows {
        sample(
            out,
            "portcullis_quota_limit_bytes",
            &labels(quota, key),
            *bytes,
        );
    }
}

/// The downloaded block lists (`hosts_url`), each by its rule's name: entries in force,
/// failed fetches, and when the copy in force was fetched.
pub fn render_lists(out: &mut String, lists: &[(&str, crate::core::blocklist::ListStatus)]) {
    if lists.is_empty() {
        return;
    }
    let label = |rule: &str| format!("list=\"{}\"", escape(rule));
    family(
        out,
        "portcullis_list_entries",
        "gauge",
        "Entries of each downloaded block list in force (hosts_url), by rule.",
    );
    for (rule, status) in lists {
        sample(
            out,
            "portcullis_list_entries",
            &label(rule),
            status.entries as u64,
        );
    }
    family(out, "portcullis_list_fetch_failures_total", "counter", "Fetches of a downloaded block list that failed or brought something that is not a list (the list in force stays).");
    for (rule, status) in lists {
        sample(
            out,
            "portcullis_list_fetch_failures_total",
            &label(rule),
            status.failures,
        );
    }
    family(out, "portcullis_list_last_success_seconds", "gauge", "When the list in force was fetched (or its copy on disk written), in seconds since the Unix epoch; 0 when there is none yet.");
    for (rule, status) in lists {
        let at = status
            .last_success
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        sample(
            out,
            "portcullis_list_last_success_seconds",
            &label(rule),
            at,
        );
    }
}

/// The helper programs of `[auth]` (`auth`: log-ins, `groups`), each by its name: processes
/// running, requests waiting, answers by verdict, timeouts, requests that found no process,
/// restarts, and the time answers took.
pub fn render_helpers(out: &mut String, helpers: &[crate::core::auth::helper::HelperHealth]) {
    if helpers.is_empty() {
        return;
    }
    let label = |name: &str| format!("helper=\"{}\"", escape(name));
    type Pick = fn(&crate::core::auth::helper::HelperHealth) -> u64;
    let families: [(&str, &str, &str, Pick); 7] = [
        ("portcullis_helper_children", "gauge", "Helper processes configured (children).", |h| h.children as u64),
        ("portcullis_helper_running", "gauge", "Helper processes running now; 0 means every log-in (or group check) through this helper fails.", |h| h.running as u64),
        ("portcullis_helper_queue", "gauge", "Requests waiting for a helper process.", |h| h.queued as u64),
        ("portcullis_helper_in_flight", "gauge", "Requests written to a helper process and not answered yet.", |h| h.in_flight as u64),
        ("portcullis_helper_restarts_total", "counter", "Helper processes started again after one ended, hung or could not start.", |h| h.restarts),
        ("portcullis_helper_timeouts_total", "counter", "Requests a helper did not answer within its timeout.", |h| h.timeouts),
        ("portcullis_helper_unavailable_total", "counter", "Requests that found no helper process running, or the queue full.", |h| h.unavailable),
    ];
    for (name, kind, help, pick) in families {
        family(out, name, kind, help);
        for h in helpers {
            sample(out, name, &label(&h.name), pick(h));
        }
    }
    family(
        out,
        "portcullis_helper_answers_total",
        "counter",
        "Helper answers by result: ok, err (wrong password, not in the group), bh (the helper could not tell).",
    );
    for h in helpers {
        for (result, n) in [("ok", h.ok), ("err", h.err), ("bh", h.bh)] {
            let labels = format!("{},result=\"{result}\"", label(&h.name));
            sample(out, "portcullis_helper_answers_total", &labels, n);
        }
    }
    family(
        out,
        "portcullis_helper_answer_seconds",
        "summary",
        "Time helpers took to answer, from the request written to the answer read.",
    );
    for h in helpers {
        out.push_str(&format!(
            "portcullis_helper_answer_seconds_sum{{{}}} {}\nportcullis_helper_answer_seconds_count{{{}}} {}\n",
            label(&h.name),
            h.answer_seconds,
            label(&h.name),
            h.answers
        ));
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
}

/// A counter family of one sample without labels.
fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    family(out, name, "counter", help);
    out.push_str(&format!("{name} {value}\n"));
}

fn sample(out: &mut String, name: &str, labels: &str, value: u64) {
    out.push_str(&format!("{name}{{{labels}}} {value}\n"));
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::error::ErrorKind;
    use crate::observe::access::{AccessRecord, AccessSink, Verdict};

    /// An allowed record of `client`, as the statistics tests make them.
    fn record(client: &str, method: &str, port: u16, up: u64, down: u64) -> AccessRecord {
        crate::observe::stats::tests::record(client, method, port, Verdict::Allow, up, down)
    }

    #[test]
    fn metrics_render_every_family() {
        let stats = Stats::new();
        let mut r = record("192.168.1.2", "GET", 80, 10, 1000);
        r.user = Some("al\"ice".into());
        stats.record(&r);
        let text = render_metrics(
            &stats,
            &|_| Some("kids-laptop".into()),
            &ConnectionCounts {
                open: 3,
                ..ConnectionCounts::default()
            },
            &[ClientRate {
                client: "192.168.1.2".into(),
                down: 1500.0,
                up: 10.0,
                share_down: Some(2500.0),
                share_up: None,
                caps: Vec::new(),
            }],
        );
        for line in [
            "portcullis_client_rate_bytes{client=\"192.168.1.2\",direction=\"down\"} 1500",
            "portcullis_client_share_bytes{client=\"192.168.1.2\",direction=\"down\"} 2500",
            "portcullis_throttled_seconds_total{direction=\"up\"} 0.000",
            "portcullis_requests_total{port=\"80\",service=\"http\",kind=\"http\"} 1",
            "portcullis_bytes_down_total{port=\"80\",service=\"http\"} 1000",
            "portcullis_client_requests_total{client=\"192.168.1.2\",name=\"kids-laptop\"} 1",
            "portcullis_user_bytes_up_total{user=\"al\\\"ice\"} 10",
            "portcullis_connections_open 3",
            "# TYPE portcullis_active_tunnels gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn errors_are_counted_by_kind_every_kind_listed() {
        let stats = Stats::new();
        let mut r = record("192.168.1.2", "GET", 80, 0, 0);
        r.status = 502;
        r.error = Some(ErrorKind::Refused);
        stats.record(&r);
        let text = render_metrics(&stats, &|_| None, &ConnectionCounts::default(), &[]);
        assert!(
            text.contains("# TYPE portcullis_errors_total counter\n"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == "portcullis_errors_total{kind=\"refused\"} 1"),
            "{text}"
        );
        for kind in ErrorKind::ALL {
            let line = format!("portcullis_errors_total{{kind=\"{kind}\"}} ");
            assert_eq!(
                text.lines().filter(|l| l.starts_with(&line)).count(),
                1,
                "{kind}"
            );
        }
        // A 0.0.4 parser reads it as a counter, with its help.
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        let refused = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "portcullis_errors_total" && s.labels.get("kind") == Some("refused")
            })
            .unwrap();
        assert!(matches!(refused.value, prometheus_parse::Value::Counter(v) if v == 1.0));
        assert!(scrape.docs.contains_key("portcullis_errors_total"));
    }
}
