//! `portcullis top`: who uses the link now, like `top` for the link. It reads the admin
//! listener's `/status.json` every interval and shows, from the difference between two
//! readings, the bytes per second of each client, destination port and host, and each
//! client's share of the link when `[shaping]` shapes it. Plain text redrawn in place (ANSI
//! clear), or once with `--once`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::core::shaping::show_rate;

/// Rows shown per table.
const ROWS: usize = 10;

/// One reading of `/status.json`: bytes so far by client, port and host, and the link.
#[derive(Debug, Default)]
struct Reading {
    clients: HashMap<String, u64>,
    ports: HashMap<String, u64>,
    hosts: HashMap<String, u64>,
    link: Vec<Value>,
    connections: u64,
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
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream
        .take(64 << 20)
        .read_to_end(&mut answer)
        .map_err(|e| e.to_string())?;
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

fn bytes(row: &Value, usage: &str) -> u64 {
    let u = &row[usage];
    u["bytes_up"].as_u64().unwrap_or(0) + u["bytes_down"].as_u64().unwrap_or(0)
}

fn read(status: &Value) -> Reading {
    let rows = |key: &str| status[key].as_array().cloned().unwrap_or_default();
    Reading {
        clients: rows("clients")
            .iter()
            .map(|c| {
                let name = c["name"]
                    .as_str()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                (
                    format!("{}{name}", c["client"].as_str().unwrap_or("?")),
                    bytes(c, "usage"),
                )
            })
            .collect(),
        ports: rows("ports")
            .iter()
            .map(|p| {
                let service = p["service"]
                    .as_str()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default();
                let total =
                    p["bytes_up"].as_u64().unwrap_or(0) + p["bytes_down"].as_u64().unwrap_or(0);
                (format!("{}{service}", p["port"]), total)
            })
            .collect(),
        hosts: rows("hosts")
            .iter()
            .map(|h| {
                (
                    h["key"].as_str().unwrap_or("?").to_owned(),
                    bytes(h, "usage"),
                )
            })
            .collect(),
        link: rows("link"),
        connections: status["connections_open"].as_u64().unwrap_or(0),
    }
}

/// The busiest rows of `now` against `before`, as bytes per second over `secs`.
fn busiest(
    now: &HashMap<String, u64>,
    before: &HashMap<String, u64>,
    secs: f64,
) -> Vec<(String, f64)> {
    let mut rows: Vec<(String, f64)> = now
        .iter()
        .map(|(k, v)| {
            let was = before.get(k).copied().unwrap_or(*v);
            (k.clone(), v.saturating_sub(was) as f64 / secs)
        })
        .filter(|(_, rate)| *rate > 0.0)
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    rows.truncate(ROWS);
    rows
}

/// The screen for two readings `secs` apart.
fn screen(admin: SocketAddr, now: &Reading, before: &Reading, secs: f64) -> String {
    let mut out = format!(
        "portcullis top — {admin} — {} connections open — bytes per second over the last {secs:.1} s\n",
        now.connections
    );
    for (title, table, before_table) in [
        ("CLIENT", &now.clients, &before.clients),
        ("PORT", &now.ports, &before.ports),
        ("HOST", &now.hosts, &before.hosts),
    ] {
        out.push_str(&format!("\n{title:<40} {:>12}\n", "NOW"));
        let rows = busiest(table, before_table, secs);
        if rows.is_empty() {
            out.push_str("  (nothing moving)\n");
        }
        for (key, rate) in rows {
            out.push_str(&format!("{key:<40} {:>12}\n", show_rate(rate)));
        }
    }
    if !now.link.is_empty() {
        out.push_str(&format!(
            "\n{:<40} {:>12} {:>12} {:>12} {:>12}\n",
            "LINK (shaped)", "DOWN", "UP", "SHARE DOWN", "SHARE UP"
        ));
        let rate = |v: &Value| v.as_f64().map_or_else(|| "—".to_owned(), show_rate);
        for c in now.link.iter().take(ROWS) {
            out.push_str(&format!(
                "{:<40} {:>12} {:>12} {:>12} {:>12}\n",
                c["client"].as_str().unwrap_or("?"),
                rate(&c["down"]),
                rate(&c["up"]),
                rate(&c["share_down"]),
                rate(&c["share_up"])
            ));
        }
    }
    out
}

/// Runs `top` against the admin listener at `admin`: every `interval`, or once (two
/// readings `interval` apart). Returns when interrupted, or with the first error.
pub fn run(admin: SocketAddr, interval: Duration, once: bool) -> Result<(), String> {
    let interval = interval.max(Duration::from_millis(200));
    let mut before = read(&fetch(admin)?);
    let mut then = Instant::now();
    loop {
        std::thread::sleep(interval);
        let now = read(&fetch(admin)?);
        let secs = then.elapsed().as_secs_f64();
        then = Instant::now();
        let text = screen(admin, &now, &before, secs);
        let mut stdout = std::io::stdout().lock();
        if once {
            let _ = stdout.write_all(text.as_bytes());
            return Ok(());
        }
        // Home, clear, then the screen.
        let _ = write!(stdout, "\x1b[H\x1b[2J{text}");
        let _ = stdout.flush();
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_the_differences_between_readings() {
        let before = read(&serde_json::json!({
            "connections_open": 3,
            "clients": [{"client": "192.168.1.20", "name": "kid", "usage": {"bytes_up": 100, "bytes_down": 1000}}],
            "ports": [{"port": 443, "service": "https", "bytes_up": 100, "bytes_down": 1000}],
            "hosts": [{"key": "example.com", "usage": {"bytes_up": 0, "bytes_down": 0}}],
        }));
        let now = read(&serde_json::json!({
            "connections_open": 4,
            "clients": [{"client": "192.168.1.20", "name": "kid", "usage": {"bytes_up": 100, "bytes_down": 2_001_000}}],
            "ports": [{"port": 443, "service": "https", "bytes_up": 100, "bytes_down": 2_001_000}],
            "hosts": [{"key": "example.com", "usage": {"bytes_up": 0, "bytes_down": 0}}],
            "link": [{"client": "192.168.1.20", "down": 1_000_000.0, "up": 0.0, "share_down": 2_500_000.0, "share_up": null}],
        }));
        let text = screen("127.0.0.1:3129".parse().unwrap(), &now, &before, 2.0);
        assert!(text.contains("4 connections open"), "{text}");
        assert!(
            text.contains("192.168.1.20 (kid)") && text.contains("1.0 MB/s"),
            "{text}"
        );
        assert!(text.contains("443 (https)"), "{text}");
        assert!(text.contains("(nothing moving)"), "{text}");
        assert!(text.contains("2.5 MB/s") && text.contains("—"), "{text}");
    }
}
