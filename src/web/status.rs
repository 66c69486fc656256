//! The status page (`/status`) and the snapshot behind it and `/status.json`: rendered from
//! plain values; the admin listener takes the snapshot and sends the text. Besides port use
//! and the top clients, users and hosts, it tables failures by cause ([`ErrorKind`]).

use std::fmt::Write as _;

use serde::Serialize;

use crate::core::error::ErrorKind;
use crate::core::ports::describe;
use crate::observe::stats::{PortUse, RecentDenial, Usage};
use crate::web::html::escape_html;

/// Rows shown of each table on the status page.
const TOP: usize = 15;

/// A client row of the status.
#[derive(Debug, Clone, Serialize)]
pub struct ClientRow {
    /// The address, or `other`.
    pub client: String,
    /// Its friendly name.
    pub name: Option<String>,
    /// Its use.
    #[serde(flatten)]
    pub usage: Usage,
}

/// A keyed row (user or host) of the status.
#[derive(Debug, Clone, Serialize)]
pub struct KeyRow {
    /// The user or host, or `other`.
    pub key: String,
    /// Its use.
    #[serde(flatten)]
    pub usage: Usage,
}

/// Failed exchanges by kind, every kind in the order of [`ErrorKind::ALL`]; in JSON an object
/// `{"client": 0, "refused": 2, …}` in that order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorCounts(pub Vec<(ErrorKind, u64)>);

impl Serialize for ErrorCounts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(kind, n)| (kind.as_str(), n)))
    }
}

/// What a kind of failure means, for the status page (the book's access-log chapter has the
/// same list).
pub fn error_meaning(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Client => "malformed request, or one the proxy cannot serve",
        ErrorKind::ClientTimeout => "the request did not arrive in time",
        ErrorKind::Denied => "refused by policy",
        ErrorKind::Auth => "credentials missing or wrong",
        ErrorKind::Limit => "over a configured limit",
        ErrorKind::Loop => "the request already passed through this proxy",
        ErrorKind::Dns => "the destination's name did not resolve",
        ErrorKind::Refused => "the destination refused the connection",
        ErrorKind::Unreachable => "the destination could not be reached",
        ErrorKind::Timeout => "connecting or waiting for the answer took too long",
        ErrorKind::Parent => "a parent proxy failed",
        ErrorKind::OriginProtocol => "the origin's answer was not usable HTTP",
        ErrorKind::Shutdown => "cut at the end of the shutdown grace period",
    }
}

/// Everything `/status` and `/status.json` show.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// This proxy's name (`instance`).
    pub instance: String,
    /// When counting started (RFC 3339).
    pub started: String,
    /// Seconds since.
    pub uptime_seconds: u64,
    /// Client connections open now.
    pub connections_open: usize,
    /// What they are doing, and how many made room or were shed.
    pub connections: crate::observe::stats::ConnectionCounts,
    /// Access records dropped by a slow log or a failed write.
    pub access_log_dropped: u64,
    /// Every port used, ascending.
    pub ports: Vec<PortUse>,
    /// Clients, busiest first (all tracked ones; the page shows the top).
    pub clients: Vec<ClientRow>,
    /// Users, busiest first.
    pub users: Vec<KeyRow>,
    /// Destination hosts, busiest first (top entries).
    pub hosts: Vec<KeyRow>,
    /// Failed exchanges by kind (every kind, 0 for those not seen).
    pub errors: ErrorCounts,
    /// Recent refusals, newest first.
    pub recent_denials: Vec<RecentDenial>,
    /// The helper programs of `[auth]` (log-ins, groups), when any run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub helpers: Vec<crate::core::auth::helper::HelperHealth>,
    /// The clients using the link now (the last second or so), busiest first, with their
    /// share when `[shaping]` shapes the link and the caps holding them; empty when nothing
    /// is shaped or capped.
    pub link: Vec<crate::core::shaping::ClientRate>,
    /// The last hour of the link's use by the clients shaping or a cap holds, a minute each,
    /// oldest first (empty when nothing is shaped or capped).
    pub link_history: Vec<crate::core::shaping::LinkMinute>,
    /// The link's speed as configured (`[shaping] down` and `up`), bytes per second.
    pub link_speed: LinkSpeed,
    /// Every byte budget counted in its period under way, by quota and key (empty when no
    /// `[[quotas]]` is configured).
    pub budgets: Vec<BudgetRow>,
    /// The store the budgets are shared through (`[state] store`, its password hidden),
    /// and whether it answered the last sync; `None` without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_store: Option<(String, bool)>,
}

/// One budget of one key (a client's address or a user), in the period under way.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetRow {
    /// The quota's name.
    pub quota: String,
    /// Whose budget: an address or a user name.
    pub key: String,
    /// The friendly name of an address key (`clients.names`), if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Bytes used in this period.
    pub used: u64,
    /// The budget.
    pub bytes: u64,
    /// `day`, `week` or `month`.
    pub per: String,
    /// When it is full again (RFC 3339).
    pub resets: String,
    /// The same, as people read it (`Thu 00:00`).
    pub resets_shown: String,
}

/// Bytes as people read them: `1.5 MiB`.
pub use crate::core::quota::human_bytes;

/// The HTML status page.
/// The shared link's speed each way, bytes per second; `None` when that way is not shaped.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LinkSpeed {
    pub down: Option<f64>,
    pub up: Option<f64>,
}

pub fn status_page(s: &Snapshot) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let total_requests: u64 = s.ports.iter().map(PortUse::total).sum();
    let total_denied: u64 = s.ports.iter().map(PortUse::denied).sum();
    let total_bytes: u64 = s.ports.iter().map(|p| p.bytes_up + p.bytes_down).sum();
    let open_tunnels: u64 = s.ports.iter().map(|p| p.active_tunnels).sum();
    let c = &s.connections;
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"15\">\
         <title>Portcullis status</title><style>\
         body{{font:15px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:70em}}\
         h1{{font-size:1.5em;margin:0 0 .2em}} h2{{font-size:1.15em;margin:1.5em 0 .4em}}\
         .figures{{display:flex;gap:1em;flex-wrap:wrap}}\
         .figure{{border:1px solid #ccd;border-radius:6px;padding:.5em 1em;min-width:8em}}\
         .figure b{{display:block;font-size:1.4em}}\
         table{{border-collapse:collapse;width:100%}} th,td{{text-align:left;padding:.25em .6em;border-bottom:1px solid #e4e4ea}}\
         td.n,th.n{{text-align:right;font-variant-numeric:tabular-nums}} .muted{{color:#777}}\
         svg text{{font:13px system-ui,sans-serif}}\
         </style></head><body>\
         <h1>Portcullis: outbound port use</h1>\
         <p class=\"muted\">Proxy <b id=\"instance\">{}</b>. Counting since {} ({}). This page refreshes every 15 s.</p>\
         <div class=\"figures\">\
         <div class=\"figure\">requests and tunnels<b id=\"total-requests\">{total_requests}</b></div>\
         <div class=\"figure\">refused<b id=\"total-denied\">{total_denied}</b></div>\
         <div class=\"figure\">traffic<b id=\"total-bytes\">{}</b></div>\
         <div class=\"figure\">tunnels open<b id=\"open-tunnels\">{open_tunnels}</b></div>\
         <div class=\"figure\">connections open<b id=\"connections-open\">{}</b></div>\
         </div>\
         <p class=\"muted\" id=\"connections\">Connections: {} busy, {} kept alive, {} waiting for a \
         request, {} tunnels ({} quiet). Closed to make room at the connection limits: {}; shed: {}.</p>",
        escape_html(&s.instance),
        escape_html(&s.started),
        uptime(s.uptime_seconds),
        human_bytes(total_bytes),
        s.connections_open,
        c.busy,
        c.kept_alive,
        c.waiting,
        c.tunnels + c.idle_tunnels,
        c.idle_tunnels,
        c.made_room.kept_alive + c.made_room.waiting + c.made_room.idle_tunnel,
        c.shed,
    );

    h.push_str("<h2>Traffic by destination port</h2>");
    chart(&mut h, &s.ports);

    h.push_str(
        "<h2>Ports</h2><table id=\"ports\"><tr><th>port</th><th class=\"n\">requests</th>\
         <th class=\"n\">tunnels</th><th class=\"n\">SOCKS</th><th class=\"n\">datagrams</th>\
         <th class=\"n\">refused</th><th class=\"n\">up</th>\
         <th class=\"n\">down</th><th class=\"n\">open now</th></tr>",
    );
    if s.ports.is_empty() {
        h.push_str("<tr><td colspan=\"9\" class=\"muted\">no traffic yet</td></tr>");
    }
    for p in &s.ports {
        let _ = write!(
            h,
            "<tr data-port=\"{}\"><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            p.port,
            escape_html(&describe(p.port)),
            p.http_requests,
            p.connect_requests,
            p.socks_requests,
            p.datagrams_up + p.datagrams_down,
            p.denied(),
            human_bytes(p.bytes_up),
            human_bytes(p.bytes_down),
            p.active_tunnels
        );
    }
    h.push_str("</table>");

    if !s.link.is_empty() {
        h.push_str("<h2>The link now</h2>");
        if s.link_speed != LinkSpeed::default() {
            let speed = |r: Option<f64>| {
                r.map_or_else(|| "not shaped".to_owned(), crate::core::shaping::show_rate)
            };
            let _ = write!(
                h,
                "<p id=\"link-speed\">The link: down {}, up {}.</p>",
                speed(s.link_speed.down),
                speed(s.link_speed.up)
            );
        }
        h.push_str(
            "<table id=\"link\"><tr><th>client</th><th class=\"n\">down</th>\
             <th class=\"n\">up</th><th class=\"n\">share down</th><th class=\"n\">share up</th>\
             <th>caps</th></tr>",
        );
        let rate =
            |r: Option<f64>| r.map_or_else(|| "—".to_owned(), crate::core::shaping::show_rate);
        for c in &s.link {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                escape_html(&c.client),
                rate(Some(c.down)),
                rate(Some(c.up)),
                rate(c.share_down),
                rate(c.share_up),
                match c.caps.is_empty() {
                    true => "—".to_owned(),
                    false => escape_html(&c.caps.join(", ")).to_string(),
                }
            );
        }
        h.push_str("</table>");
    }
    if !s.link_history.is_empty() {
        h.push_str("<h2>The link over the last hour</h2>");
        link_chart(&mut h, &s.link_history);
    }
    if !s.budgets.is_empty() {
        h.push_str(
            "<h2>Byte budgets</h2><table id=\"budgets\"><tr><th>quota</th><th>for</th>\
             <th class=\"n\">used</th><th class=\"n\">of</th><th class=\"n\">left</th><th>full again</th></tr>",
        );
        for b in &s.budgets {
            let who = match &b.name {
                Some(name) => format!("{} ({})", escape_html(name), escape_html(&b.key)),
                None => escape_html(&b.key).to_string(),
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{who}</td><td class=\"n\">{}</td><td class=\"n\">{} a {}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                escape_html(&b.quota),
                human_bytes(b.used),
                human_bytes(b.bytes),
                b.per,
                human_bytes(b.bytes.saturating_sub(b.used)),
                escape_html(&b.resets_shown)
            );
        }
        h.push_str("</table>");
        if let Some((store, up)) = &s.budget_store {
            let _ = write!(
                h,
                "<p>Shared through {}: {}</p>",
                escape_html(store),
                if *up {
                    "in step"
                } else {
                    "not answering; counted here alone until it does, then merged"
                }
            );
        }
    }

    h.push_str(
        "<h2>Top clients</h2><table id=\"clients\"><tr><th>client</th><th class=\"n\">requests</th>\
         <th class=\"n\">refused</th><th class=\"n\">up</th><th class=\"n\">down</th></tr>",
    );
    for c in s.clients.iter().take(TOP) {
        let shown = match &c.name {
            Some(name) => format!(
                "{} <span class=\"muted\">{}</span>",
                escape_html(name),
                escape_html(&c.client)
            ),
            None => escape_html(&c.client),
        };
        usage_row(&mut h, &shown, &c.usage);
    }
    h.push_str("</table>");

    if !s.helpers.is_empty() {
        h.push_str(
            "<h2>Log-in helpers</h2><table id=\"helpers\"><tr><th>helper</th><th>program</th>\
             <th class=\"n\">running</th><th class=\"n\">waiting</th><th class=\"n\">OK</th>\
             <th class=\"n\">ERR</th><th class=\"n\">BH</th><th class=\"n\">timeouts</th>\
             <th class=\"n\">unavailable</th><th class=\"n\">restarts</th>\
             <th class=\"n\">mean answer</th><th>last problem</th></tr>",
        );
        for p in &s.helpers {
            let mean = match p.answers {
                0 => "-".to_owned(),
                n => format!("{:.1} ms", p.answer_seconds * 1000.0 / n as f64),
            };
            let health = if p.running == 0 {
                " class=\"down\""
            } else {
                ""
            };
            let _ = write!(
                h,
                "<tr{health} data-helper=\"{}\"><td>{}</td><td>{}</td><td class=\"n\">{} of {}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{mean}</td><td>{}</td></tr>",
                escape_html(&p.name),
                escape_html(&p.name),
                escape_html(&p.program),
                p.running,
                p.children,
                p.queued,
                p.ok,
                p.err,
                p.bh,
                p.timeouts,
                p.unavailable,
                p.restarts,
                escape_html(p.last_problem.as_deref().unwrap_or("-"))
            );
        }
        h.push_str("</table>");
    }

    if !s.users.is_empty() {
        h.push_str(
            "<h2>Users</h2><table id=\"users\"><tr><th>user</th><th class=\"n\">requests</th>\
             <th class=\"n\">refused</th><th class=\"n\">up</th><th class=\"n\">down</th></tr>",
        );
        for u in s.users.iter().take(TOP) {
            usage_row(&mut h, &escape_html(&u.key), &u.usage);
        }
        h.push_str("</table>");
    }

    h.push_str(
        "<h2>Top destinations</h2><table id=\"hosts\"><tr><th>host</th><th class=\"n\">requests</th>\
         <th class=\"n\">refused</th><th class=\"n\">up</th><th class=\"n\">down</th></tr>",
    );
    for d in s.hosts.iter().take(TOP) {
        usage_row(&mut h, &escape_html(&d.key), &d.usage);
    }
    h.push_str("</table>");

    h.push_str(
        "<h2>Failures by cause</h2><table id=\"errors\"><tr><th>cause</th><th>meaning</th>\
         <th class=\"n\">status</th><th class=\"n\">count</th></tr>",
    );
    let failed: Vec<&(ErrorKind, u64)> = s.errors.0.iter().filter(|(_, n)| *n > 0).collect();
    if failed.is_empty() {
        h.push_str("<tr><td colspan=\"4\" class=\"muted\">no failures yet</td></tr>");
    }
    for (kind, n) in failed {
        let _ = write!(
            h,
            "<tr data-kind=\"{kind}\"><td>{kind}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{n}</td></tr>",
            error_meaning(*kind),
            kind.status().as_u16()
        );
    }
    h.push_str("</table>");

    h.push_str(
        "<h2>Recent refusals</h2><table id=\"denials\"><tr><th>time</th><th>client</th>\
         <th>destination</th><th>status</th><th>reason</th></tr>",
    );
    if s.recent_denials.is_empty() {
        h.push_str("<tr><td colspan=\"5\" class=\"muted\">none</td></tr>");
    }
    for d in s.recent_denials.iter().take(TOP) {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td><td>{} <span class=\"muted\">({})</span></td></tr>",
            escape_html(&d.time),
            d.client,
            escape_html(&d.method),
            escape_html(&d.destination),
            d.status,
            escape_html(&d.reason),
            escape_html(&d.rule)
        );
    }
    h.push_str("</table></body></html>\n");
    h
}

fn usage_row(h: &mut String, shown: &str, u: &Usage) {
    let _ = write!(
        h,
        "<tr><td>{shown}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
        u.requests,
        u.denied,
        human_bytes(u.bytes_up),
        human_bytes(u.bytes_down)
    );
}

/// A horizontal bar chart (inline SVG) of bytes per port, busiest first.
/// The colours of the link chart's clients, the last for `other`.
const LINK_COLOURS: [&str; 7] = [
    "#4f81bd", "#c0504d", "#9bbb59", "#8064a2", "#4bacc6", "#f79646", "#a6a6a6",
];

/// The last hour of the link, a column a minute (the newest on the right), stacked by the
/// six busiest clients of the hour and `other`; the height is the minute's average rate.
fn link_chart(h: &mut String, minutes: &[crate::core::shaping::LinkMinute]) {
    let mut totals: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for m in minutes {
        for (client, n) in &m.clients {
            *totals.entry(client.as_str()).or_insert(0) += n;
        }
    }
    let mut top: Vec<(&str, u64)> = totals.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    top.truncate(LINK_COLOURS.len() - 1);
    let colour = |client: &str| {
        top.iter()
            .position(|(c, _)| *c == client)
            .map_or(LINK_COLOURS[LINK_COLOURS.len() - 1], |i| LINK_COLOURS[i])
    };
    let most = minutes
        .iter()
        .map(|m| m.clients.iter().map(|(_, n)| n).sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let (width, height, column) = (900.0, 160.0, 14.0);
    let _ = write!(
        h,
        "<svg id=\"link-chart\" role=\"img\" aria-label=\"the link's use over the last hour, by client\" width=\"{width}\" height=\"{}\" viewBox=\"0 0 {width} {}\">",
        height + 20.0,
        height + 20.0
    );
    for m in minutes {
        let x = 60.0 + (59.0 - f64::from(m.minutes_ago.min(59))) * column;
        let mut y = height;
        for (client, n) in &m.clients {
            let tall = *n as f64 / most as f64 * (height - 10.0);
            y -= tall;
            let _ = write!(
                h,
                "<rect x=\"{x:.0}\" y=\"{y:.1}\" width=\"{:.0}\" height=\"{tall:.1}\" fill=\"{}\"><title>{} {}</title></rect>",
                column - 2.0,
                colour(client),
                escape_html(client),
                human_bytes(*n)
            );
        }
    }
    let _ = write!(
        h,
        "<text x=\"0\" y=\"14\">{}</text><text x=\"0\" y=\"{height}\">0</text>\
         <text x=\"60\" y=\"{}\">an hour ago</text><text x=\"{}\" y=\"{}\">now</text></svg>",
        crate::core::shaping::show_rate(most as f64 / 60.0),
        height + 16.0,
        60.0 + 58.0 * column,
        height + 16.0
    );
    h.push_str("<p>");
    for (client, _) in &top {
        let _ = write!(
            h,
            "<span style=\"color:{}\">■</span> {} &nbsp; ",
            colour(client),
            escape_html(client)
        );
    }
    let _ = write!(
        h,
        "<span style=\"color:{}\">■</span> others</p>",
        LINK_COLOURS[LINK_COLOURS.len() - 1]
    );
}

fn chart(h: &mut String, ports: &[PortUse]) {
    let mut rows: Vec<&PortUse> = ports.iter().filter(|p| p.total() > 0).collect();
    rows.sort_by_key(|p| std::cmp::Reverse((p.bytes_up + p.bytes_down, p.total())));
    rows.truncate(TOP);
    if rows.is_empty() {
        h.push_str("<p class=\"muted\">no traffic yet</p>");
        return;
    }
    let most = rows
        .iter()
        .map(|p| p.bytes_up + p.bytes_down)
        .max()
        .unwrap_or(0)
        .max(1);
    let (label_w, bar_w, row_h) = (170.0, 360.0, 24.0);
    let height = row_h * rows.len() as f64 + 8.0;
    let _ = write!(
        h,
        "<svg id=\"chart\" role=\"img\" aria-label=\"traffic by destination port\" width=\"900\" height=\"{height}\" viewBox=\"0 0 900 {height}\">"
    );
    for (i, p) in rows.iter().enumerate() {
        let y = i as f64 * row_h + 4.0;
        let bytes = p.bytes_up + p.bytes_down;
        let w = (bytes as f64 / most as f64 * bar_w).max(2.0);
        let _ = write!(
            h,
            "<text x=\"0\" y=\"{:.0}\">{}</text>\
             <rect x=\"{label_w}\" y=\"{y:.0}\" width=\"{w:.1}\" height=\"{:.0}\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.0}\">{} · {} requests{}</text>",
            y + 15.0,
            escape_html(&describe(p.port)),
            row_h - 6.0,
            if p.denied() == p.total() {
                "#c0504d"
            } else {
                "#4f81bd"
            },
            label_w + w + 6.0,
            y + 15.0,
            human_bytes(bytes),
            p.total(),
            if p.denied() > 0 {
                format!(", {} refused", p.denied())
            } else {
                String::new()
            }
        );
    }
    h.push_str("</svg>");
}

fn uptime(seconds: u64) -> String {
    let (d, h, m) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
    );
    match (d, h) {
        (0, 0) => format!("up {m} min"),
        (0, _) => format!("up {h} h {m} min"),
        _ => format!("up {d} d {h} h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10 * 1024 * 1024), "10.0 MiB");
    }

    fn snapshot(errors: Vec<(ErrorKind, u64)>) -> Snapshot {
        Snapshot {
            instance: "proxy-a".into(),
            started: "2026-01-01T00:00:00Z".into(),
            uptime_seconds: 60,
            connections_open: 0,
            connections: Default::default(),
            access_log_dropped: 0,
            ports: Vec::new(),
            clients: Vec::new(),
            users: Vec::new(),
            hosts: Vec::new(),
            errors: ErrorCounts(errors),
            recent_denials: Vec::new(),
            helpers: Vec::new(),
            link: Vec::new(),
            link_history: Vec::new(),
            link_speed: LinkSpeed::default(),
            budgets: Vec::new(),
            budget_store: None,
        }
    }

    #[test]
    fn the_link_over_the_hour_is_a_stacked_chart() {
        let mut s = snapshot(Vec::new());
        assert!(!status_page(&s).contains("link-chart"));
        s.link_history = vec![
            crate::core::shaping::LinkMinute {
                minutes_ago: 1,
                clients: vec![("10.0.0.2".into(), 600_000_000), ("<b>".into(), 1_000)],
            },
            crate::core::shaping::LinkMinute {
                minutes_ago: 0,
                clients: vec![("10.0.0.3".into(), 300_000_000)],
            },
        ];
        let page = status_page(&s);
        assert!(page.contains("<svg id=\"link-chart\""), "{page}");
        // The busiest minute's average rate heads the scale: 600 MB a minute, 10 MB/s.
        assert!(page.contains(">10.0 MB/s</text>"), "{page}");
        // One rectangle per client and minute: two in the older minute, one in the newer.
        assert_eq!(page.matches("<rect x=\"").count(), 3, "{page}");
        assert!(page.contains("<title>&lt;b&gt; "), "{page}");
        assert!(!page.contains("<b>"), "a client name is escaped");
    }

    #[test]
    fn the_link_now_is_tabled_when_shaped() {
        let mut s = snapshot(Vec::new());
        assert!(!status_page(&s).contains("The link now"));
        s.link = vec![crate::core::shaping::ClientRate {
            client: "192.168.1.20".into(),
            down: 2_500_000.0,
            up: 10_000.0,
            share_down: Some(2_500_000.0),
            share_up: None,
            caps: vec!["kids <pcs>".into(), "ftp".into()],
        }];
        let page = status_page(&s);
        assert!(
            page.contains("<td>192.168.1.20</td><td class=\"n\">2.5 MB/s</td>"),
            "{page}"
        );
        assert!(
            page.contains("<td class=\"n\">—</td><td>kids &lt;pcs&gt;, ftp</td></tr>"),
            "the caps holding the client are named, escaped: {page}"
        );
        assert!(!page.contains("link-speed"), "no link set: {page}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["link"][0]["caps"][1], "ftp");
        s.link_speed = LinkSpeed {
            down: Some(12_500_000.0),
            up: None,
        };
        let page = status_page(&s);
        assert!(
            page.contains("<p id=\"link-speed\">The link: down 12.5 MB/s, up not shaped.</p>"),
            "{page}"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["link_speed"]["down"], 12_500_000.0);
        assert!(json["link_speed"]["up"].is_null());
    }

    #[test]
    fn failures_by_cause_are_tabled_and_in_the_json() {
        let page = status_page(&snapshot(ErrorKind::ALL.map(|k| (k, 0)).to_vec()));
        assert!(page.contains("<h2>Failures by cause</h2>"), "{page}");
        assert!(page.contains("no failures yet"), "{page}");
        let counts: Vec<(ErrorKind, u64)> = ErrorKind::ALL
            .map(|k| (k, u64::from(k == ErrorKind::Refused) * 3))
            .to_vec();
        let s = snapshot(counts);
        let page = status_page(&s);
        assert!(
            page.contains("<tr data-kind=\"refused\"><td>refused</td><td>the destination refused the connection</td><td class=\"n\">502</td><td class=\"n\">3</td></tr>"),
            "{page}"
        );
        assert!(!page.contains("data-kind=\"dns\""), "{page}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["errors"]["refused"], 3);
        assert_eq!(json["errors"]["dns"], 0);
        assert_eq!(
            json["errors"].as_object().unwrap().len(),
            ErrorKind::ALL.len()
        );
    }
}
