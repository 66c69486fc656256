//! `portcullis top`: who uses the link now, like `top` for the link. It reads the admin
//! listener's `/status.json` every interval and shows the bytes per second each way of each
//! client, destination port and host, and each client's share of the link when `[shaping]`
//! shapes it. This module owns the readings and the rates made of them, and the plain text
//! printed once (`--once`, or when standard output is not a terminal); the full-screen
//! view on a terminal is `top/view`.
//!
//! Where a rate comes from: a client on the shaped link (`/status.json`'s `link`) has the rate
//! the proxy measured over its last moment, live; every other row is the difference between
//! two readings of counters that the proxy adds an exchange's bytes to as they move (at most
//! every `PROGRESS_EVERY` while it goes on, the rest when it ends).

mod view;

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::core::shaping::{show_rate, ClientRate};

/// Rows shown per table in plain text.
const ROWS: usize = 10;

/// Bytes so far each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Bytes {
    down: u64,
    up: u64,
}

impl Bytes {
    fn of(row: &Value) -> Bytes {
        Bytes {
            down: row["bytes_down"].as_u64().unwrap_or(0),
            up: row["bytes_up"].as_u64().unwrap_or(0),
        }
    }
}

/// One reading of `/status.json`: bytes so far by client, port and host, the link now.
#[derive(Debug, Default, Clone)]
struct Reading {
    /// By address (or `other`).
    clients: HashMap<String, Bytes>,
    /// The friendly names of addresses (`clients.names`).
    names: HashMap<String, String>,
    /// By port, with its service name: `443 (https)`.
    ports: HashMap<String, Bytes>,
    /// By destination host.
    hosts: HashMap<String, Bytes>,
    /// The clients on the shaped link now, with their rates and shares.
    link: Vec<ClientRate>,
    /// The link's speed as configured, down and up (`None`: not shaped that way, or a proxy
    /// that does not say).
    speed: (Option<f64>, Option<f64>),
    connections: u64,
    instance: String,
}

/// Fetches `/status.json` from the admin listener at `admin`.
fn fetch(admin: SocketAddr) -> Result<Value, String> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(2))
        .map_err(|e| format!("cannot reach the admin listener at {admin}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /status.json HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("the admin listener at {admin}: {e}"))?;
    let mut answer = Vec::new();
    stream
        .take(64 << 20)
        .read_to_end(&mut answer)
        .map_err(|e| format!("the admin listener at {admin}: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the admin listener's answer has no body")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "the admin listener answered {}",
            head.lines().next().unwrap_or("")
        ));
    }
    serde_json::from_str(body).map_err(|e| format!("/status.json is not JSON: {e}"))
}

/// Fetches and reads one reading.
fn take_reading(admin: SocketAddr) -> Result<Reading, String> {
    fetch(admin).map(|status| read(&status))
}

fn read(status: &Value) -> Reading {
    let rows = |key: &str| status[key].as_array().cloned().unwrap_or_default();
    let clients = rows("clients");
    Reading {
        clients: clients
            .iter()
            .map(|c| {
                let client = c["client"].as_str().unwrap_or("?").to_owned();
                (client, Bytes::of(c))
            })
            .collect(),
        names: clients
            .iter()
            .filter_map(|c| {
                Some((
                    c["client"].as_str()?.to_owned(),
                    c["name"].as_str()?.to_owned(),
                ))
            })
            .collect(),
        ports: rows("ports")
            .iter()
            .map(|p| {
                let service = p["service"]
                    .as_str()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default();
                (format!("{}{service}", p["port"]), Bytes::of(p))
            })
            .collect(),
        hosts: rows("hosts")
            .iter()
            .map(|h| (h["key"].as_str().unwrap_or("?").to_owned(), Bytes::of(h)))
            .collect(),
        link: rows("link")
            .into_iter()
            .filter_map(|c| serde_json::from_value(c).ok())
            .collect(),
        speed: (
            status["link_speed"]["down"].as_f64(),
            status["link_speed"]["up"].as_f64(),
        ),
        connections: status["connections_open"].as_u64().unwrap_or(0),
        instance: status["instance"].as_str().unwrap_or_default().to_owned(),
    }
}

/// What a row moves now, bytes per second each way.
#[derive(Debug, Clone, PartialEq)]
struct Flow {
    /// The client, port or host as shown.
    key: String,
    down: f64,
    up: f64,
}

/// A client's row: what it moves, and its share of the link each way when the link is shaped.
#[derive(Debug, Clone, PartialEq)]
struct ClientNow {
    flow: Flow,
    share_down: Option<f64>,
    share_up: Option<f64>,
    /// The caps (`[[limits.rate]]` names) holding it now, joined by commas; `-` for none.
    caps: String,
}

/// What `top` shows: the rates of one reading against the one before.
#[derive(Debug, Default, Clone, PartialEq)]
struct Rates {
    /// This proxy's name (`instance`).
    instance: String,
    /// Client connections open.
    connections: u64,
    /// The seconds between the two readings; 0 after the first one.
    secs: f64,
    /// Whether the link is shaped now (a client on it has a share).
    shaped: bool,
    /// The link's speed as configured, down and up.
    speed: (Option<f64>, Option<f64>),
    /// Busiest first.
    clients: Vec<ClientNow>,
    ports: Vec<Flow>,
    hosts: Vec<Flow>,
}

impl Rates {
    /// The rates of `now` against `before`, read `secs` seconds earlier.
    fn between(now: &Reading, before: Option<&Reading>, secs: f64) -> Rates {
        let differences = |table: fn(&Reading) -> &HashMap<String, Bytes>| -> Vec<Flow> {
            let Some(before) = before.filter(|_| secs > 0.0) else {
                return Vec::new();
            };
            let was_table = table(before);
            let mut rows: Vec<Flow> = table(now)
                .iter()
                .map(|(key, bytes)| {
                    // A row first seen now may hold bytes from before the first reading.
                    let was = was_table.get(key).copied().unwrap_or(*bytes);
                    Flow {
                        key: key.clone(),
                        down: bytes.down.saturating_sub(was.down) as f64 / secs,
                        up: bytes.up.saturating_sub(was.up) as f64 / secs,
                    }
                })
                .filter(|f| f.down + f.up > 0.0)
                .collect();
            busiest_first(&mut rows, |f| f);
            rows
        };
        let mut clients: Vec<ClientNow> = differences(|r| &r.clients)
            .into_iter()
            .filter(|f| !now.link.iter().any(|c| c.client == f.key))
            .map(|flow| ClientNow {
                flow,
                share_down: None,
                share_up: None,
                caps: "-".to_owned(),
            })
            .chain(now.link.iter().map(|c| ClientNow {
                flow: Flow {
                    key: c.client.clone(),
                    down: c.down,
                    up: c.up,
                },
                share_down: c.share_down,
                share_up: c.share_up,
                caps: match c.caps.is_empty() {
                    true => "-".to_owned(),
                    false => c.caps.join(","),
                },
            }))
            .collect();
        for c in &mut clients {
            if let Some(name) = now.names.get(&c.flow.key) {
                c.flow.key = format!("{} ({name})", c.flow.key);
            }
        }
        busiest_first(&mut clients, |c| &c.flow);
        Rates {
            instance: now.instance.clone(),
            connections: now.connections,
            secs,
            shaped: now
                .link
                .iter()
                .any(|c| c.share_down.is_some() || c.share_up.is_some()),
            speed: now.speed,
            clients,
            ports: differences(|r| &r.ports),
            hosts: differences(|r| &r.hosts),
        }
    }

    /// What all clients move together, bytes per second down and up.
    fn total(&self) -> (f64, f64) {
        self.clients.iter().fold((0.0, 0.0), |(down, up), c| {
            (down + c.flow.down, up + c.flow.up)
        })
    }

    /// The shares of the link handed out now, down and up (`None` when not shaped that way).
    fn shares(&self) -> (Option<f64>, Option<f64>) {
        let sum = |pick: fn(&ClientNow) -> Option<f64>| {
            self.clients
                .iter()
                .filter_map(pick)
                .fold(None, |sum: Option<f64>, s| Some(sum.unwrap_or(0.0) + s))
        };
        (sum(|c| c.share_down), sum(|c| c.share_up))
    }

    /// The line about the link: what moves in all (and how much of the link it is, when the
    /// link is set), and the shares when it is shaped.
    fn link_line(&self) -> String {
        let (down, up) = self.total();
        let of = |rate: f64, speed: Option<f64>| match speed {
            Some(speed) if speed > 0.0 => format!(
                "{} of {} ({:.0}%)",
                cell(Some(rate)),
                show_rate(speed),
                rate / speed * 100.0
            ),
            _ => cell(Some(rate)),
        };
        let mut line = format!(
            "down {}, up {}",
            of(down, self.speed.0),
            of(up, self.speed.1)
        );
        if self.shaped {
            let (share_down, share_up) = self.shares();
            line.push_str(&format!(
                "; shaped, shares handed out: down {}, up {}",
                cell(share_down),
                cell(share_up)
            ));
        }
        line
    }
}

/// Sorts rows by what they move, most first, then by name.
fn busiest_first<T>(rows: &mut [T], flow: fn(&T) -> &Flow) {
    rows.sort_by(|a, b| {
        let (a, b) = (flow(a), flow(b));
        (b.down + b.up)
            .total_cmp(&(a.down + a.up))
            .then_with(|| a.key.cmp(&b.key))
    });
}

/// A rate in a table: `-` for none.
fn cell(rate: Option<f64>) -> String {
    match rate {
        Some(r) if r > 0.0 => show_rate(r),
        Some(_) => "0 B/s".to_owned(),
        None => "-".to_owned(),
    }
}

/// A moving rate in a table: `-` for nothing.
fn moving(rate: f64) -> String {
    cell((rate > 0.0).then_some(rate))
}

/// The plain-text screen of `rates`, read from `admin`.
fn plain(admin: SocketAddr, rates: &Rates) -> String {
    let mut out = format!(
        "portcullis top — {admin} — {} connections open — bytes per second over the last {:.1} s\n\
         LINK {}\n",
        rates.connections,
        rates.secs,
        rates.link_line()
    );
    out.push_str(&format!(
        "\n{:<40} {:>12} {:>12} {:>12} {:>12}  {}\n",
        "CLIENT", "DOWN", "UP", "SHARE DOWN", "SHARE UP", "CAPS"
    ));
    if rates.clients.is_empty() {
        out.push_str("  (nothing moving)\n");
    }
    for c in rates.clients.iter().take(ROWS) {
        out.push_str(&format!(
            "{:<40} {:>12} {:>12} {:>12} {:>12}  {}\n",
            c.flow.key,
            moving(c.flow.down),
            moving(c.flow.up),
            cell(c.share_down),
            cell(c.share_up),
            c.caps
        ));
    }
    for (title, rows) in [("PORT", &rates.ports), ("HOST", &rates.hosts)] {
        out.push_str(&format!("\n{title:<40} {:>12} {:>12}\n", "DOWN", "UP"));
        if rows.is_empty() {
            out.push_str("  (nothing moving)\n");
        }
        for f in rows.iter().take(ROWS) {
            out.push_str(&format!(
                "{:<40} {:>12} {:>12}\n",
                f.key,
                moving(f.down),
                moving(f.up)
            ));
        }
    }
    out
}

/// Runs `top` against the admin listener at `admin`. On a terminal, the full-screen view,
/// read every `interval` until a key ends it (it keeps trying an admin listener it cannot
/// reach); with `once`, or when standard output is not a terminal, one screen of plain text
/// from two readings `interval` apart, or the first error.
pub fn run(admin: SocketAddr, interval: Duration, once: bool) -> Result<(), String> {
    let interval = interval.max(Duration::from_millis(200));
    if !once && std::io::stdout().is_terminal() {
        return view::run(admin, interval);
    }
    let before = take_reading(admin)?;
    let then = Instant::now();
    std::thread::sleep(interval);
    let now = take_reading(admin)?;
    let rates = Rates::between(&now, Some(&before), then.elapsed().as_secs_f64());
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(plain(admin, &rates).as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to standard output: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows as `/status.json` writes them: made from the status page's own types, so that
    /// what `top` reads cannot drift from what the proxy serves.
    fn client(ip: &str, name: Option<&str>, up: u64, down: u64) -> Value {
        serde_json::to_value(crate::web::status::ClientRow {
            client: ip.to_owned(),
            name: name.map(str::to_owned),
            usage: usage(up, down),
        })
        .unwrap()
    }

    fn host(key: &str, up: u64, down: u64) -> Value {
        serde_json::to_value(crate::web::status::KeyRow {
            key: key.to_owned(),
            usage: usage(up, down),
        })
        .unwrap()
    }

    fn port(port: u16, up: u64, down: u64) -> Value {
        serde_json::to_value(crate::observe::stats::PortUse {
            port,
            service: crate::core::ports::service_name(port),
            connect_requests: 1,
            bytes_up: up,
            bytes_down: down,
            ..Default::default()
        })
        .unwrap()
    }

    fn usage(up: u64, down: u64) -> crate::observe::stats::Usage {
        crate::observe::stats::Usage {
            requests: 1,
            denied: 0,
            bytes_up: up,
            bytes_down: down,
        }
    }

    pub(super) fn two_readings() -> (Reading, Reading) {
        let before = read(&serde_json::json!({
            "instance": "gateway",
            "connections_open": 3,
            "clients": [
                client("192.168.1.20", Some("kid"), 100, 1000),
                client("192.168.1.31", None, 0, 0),
            ],
            "ports": [port(443, 100, 1000)],
            "hosts": [host("example.com", 0, 0)],
        }));
        let now = read(&serde_json::json!({
            "instance": "gateway",
            "connections_open": 4,
            "clients": [
                client("192.168.1.20", Some("kid"), 100, 1000),
                client("192.168.1.31", None, 4000, 600_000),
            ],
            "ports": [port(443, 4100, 601_000)],
            "hosts": [host("example.com", 4000, 600_000)],
            "link": [{"client": "192.168.1.20", "down": 1_000_000.0, "up": 0.0, "share_down": 2_500_000.0, "share_up": null, "caps": ["kids", "evenings"]}],
            "link_speed": {"down": 2_600_000.0, "up": null},
        }));
        (before, now)
    }

    #[test]
    fn rates_are_the_link_now_or_the_differences_between_readings() {
        let (before, now) = two_readings();
        let rates = Rates::between(&now, Some(&before), 2.0);
        assert!(rates.shaped);
        assert_eq!(rates.connections, 4);
        let keys: Vec<&str> = rates.clients.iter().map(|c| c.flow.key.as_str()).collect();
        // The client on the link has the link's live rate and its share; the other the
        // difference of its counts over 2 s.
        assert_eq!(keys, ["192.168.1.20 (kid)", "192.168.1.31"]);
        assert_eq!(rates.clients[0].flow.down, 1_000_000.0);
        assert_eq!(rates.clients[0].share_down, Some(2_500_000.0));
        assert_eq!(rates.clients[1].flow.down, 300_000.0);
        assert_eq!(rates.clients[1].flow.up, 2_000.0);
        assert_eq!(rates.ports[0].key, "443 (https)");
        assert_eq!(rates.ports[0].down, 300_000.0);
        assert_eq!(rates.hosts[0].key, "example.com");
        assert_eq!(rates.total(), (1_300_000.0, 2_000.0));
        assert_eq!(rates.shares(), (Some(2_500_000.0), None));
        // The first reading alone: only the link's live rates.
        let first = Rates::between(&now, None, 0.0);
        assert_eq!(first.clients.len(), 1);
        assert!(first.ports.is_empty() && first.hosts.is_empty());
    }

    #[test]
    fn the_plain_screen_has_the_link_line_and_three_tables() {
        let (before, now) = two_readings();
        let text = plain(
            "127.0.0.1:3129".parse().unwrap(),
            &Rates::between(&now, Some(&before), 2.0),
        );
        assert!(
            text.contains("portcullis top — 127.0.0.1:3129 — 4 connections open"),
            "{text}"
        );
        assert!(
            text.contains(
                "LINK down 1.3 MB/s of 2.6 MB/s (50%), up 2.0 kB/s; shaped, shares handed out: down 2.5 MB/s, up -"
            ),
            "{text}"
        );
        let kid = text
            .lines()
            .find(|l| l.starts_with("192.168.1.20 (kid)"))
            .unwrap();
        assert!(
            kid.contains("1.0 MB/s") && kid.contains("2.5 MB/s"),
            "{text}"
        );
        assert!(
            kid.ends_with("  kids,evenings"),
            "the caps holding it: {text}"
        );
        let other = text
            .lines()
            .find(|l| l.starts_with("192.168.1.31"))
            .unwrap();
        assert!(other.ends_with("  -"), "no cap holds it: {text}");
        assert!(text.contains("443 (https)"), "{text}");
        assert!(text.contains("example.com"), "{text}");
        let idle = plain("127.0.0.1:3129".parse().unwrap(), &Rates::default());
        assert_eq!(idle.matches("(nothing moving)").count(), 3, "{idle}");
        assert!(!idle.contains("shaped"), "{idle}");
    }
}
