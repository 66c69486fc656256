//! A LAN in a box: the `portcullis` binary on a gateway between PCs and an "internet", each
//! a network namespace ([`crate::support::netns`]), with a DNS server of the tests
//! ([`crate::support::dns`]) that the proxy resolves names with. Every test builds its own
//! namespaces, so they run in parallel and leave nothing behind; they skip (one line on
//! stderr) where namespaces cannot be made, except with `CI=true`.
//!
//! - [`dns`]: the test DNS server's wire format.
//! - [`names`]: names resolved by the proxy: found, NXDOMAIN, never answered, refused
//!   addresses, IPv6 only, broken IPv6 beside working IPv4, nothing reachable.
//! - [`clients`]: two PCs at once in the log, the metrics and the report; a PC outside
//!   `clients.allow`.
//! - [`reload`]: SIGHUP during a large download.
//! - [`services`]: CONNECT to mail, Telnet and NetBIOS banners, refused then allowed.
//! - [`upstream`]: the source addresses of the proxy's connections (`upstream.bind`).

mod clients;
mod dns;
mod names;
mod reload;
mod services;
mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::dns::{DnsServer, Zone};
use crate::support::netns::{Lan, DNS_V4, PROXY_V4, PROXY_V6};

/// Whether the configurations have the `[dns]` table (issue 15: `servers` naming the
/// internet's DNS server, or `resolver = "system"`), `timeouts.connect_attempt` and, in
/// [`upstream`], `upstream.bind`. Switched off, they have none of these (as before those keys
/// existed), and the proxy finds the DNS server in the gateway's resolv.conf (made by
/// [`Lan::build`]) with whatever resolver it uses by default.
pub const DNS_TABLE: bool = true;

/// Which resolver a configuration asks for (with [`DNS_TABLE`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// The built-in resolver, asking the internet's DNS server.
    Builtin,
    /// `resolver = "system"`: getaddrinfo, with the gateway's resolv.conf.
    System,
}

/// The proxy's configuration for a LAN: listening on the gateway's LAN addresses, PCs 0 and 1
/// allowed (PC 2 is not), the PCs named `pc0` …, a JSON access log in the LAN's directory,
/// `timeouts.connect` = `connect`, and `extra` (tables of its own: `[ports]`, `[[rules]]` …).
pub struct Conf {
    pub connect: &'static str,
    pub resolver: Resolver,
    pub extra: String,
}

impl Default for Conf {
    fn default() -> Conf {
        Conf {
            connect: "10s",
            resolver: Resolver::Builtin,
            extra: String::new(),
        }
    }
}

impl Conf {
    pub fn with(extra: &str) -> Conf {
        Conf {
            extra: extra.to_owned(),
            ..Conf::default()
        }
    }

    pub fn text(&self, lan: &Lan) -> String {
        let allowed: Vec<String> = lan
            .pcs
            .iter()
            .take(2)
            .flat_map(|pc| [pc.v4.to_string(), pc.v6.to_string()])
            .collect();
        let mut text = format!(
            "listen = [\"{PROXY_V4}:3128\", \"[{PROXY_V6}]:3128\"]\n\n[clients]\nallow = {allowed:?}\n\n[clients.names]\n"
        );
        for (i, pc) in lan.pcs.iter().enumerate() {
            text.push_str(&format!(
                "\"{}\" = \"pc{i}\"\n\"{}\" = \"pc{i}\"\n",
                pc.v4, pc.v6
            ));
        }
        text.push_str(&format!("\n[timeouts]\nconnect = \"{}\"\n", self.connect));
        if DNS_TABLE {
            text.push_str("connect_attempt = \"250ms\"\n");
        }
        text.push_str(&format!(
            "\n[log]\naccess = {:?}\nformat = \"json\"\n",
            access_log_path(lan).display().to_string()
        ));
        if DNS_TABLE {
            match self.resolver {
                Resolver::Builtin => text.push_str(&format!(
                    "\n[dns]\nresolver = \"builtin\"\nservers = [\"{DNS_V4}\"]\n"
                )),
                Resolver::System => text.push_str("\n[dns]\nresolver = \"system\"\n"),
            }
        }
        text.push('\n');
        text.push_str(&self.extra);
        text
    }
}

/// The internet's DNS server, serving `zone`.
pub fn start_dns(lan: &Lan, zone: Zone) -> DnsServer {
    DnsServer::serve(
        lan.internet.bind_udp(SocketAddr::new(DNS_V4.into(), 53)),
        zone,
    )
}

/// `ip:port`.
pub fn at(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

pub fn access_log_path(lan: &Lan) -> std::path::PathBuf {
    lan.dir.path().join("access.log")
}

/// The access log's records so far.
pub fn access_log(lan: &Lan) -> Vec<Value> {
    std::fs::read_to_string(access_log_path(lan))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Waits up to 10 s for a record of the access log that `pick` picks, and returns it.
pub async fn wait_record(lan: &Lan, pick: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = access_log(lan);
        if let Some(found) = records.iter().find(|r| pick(r)) {
            return found.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no such record in the access log: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The record of the request to `host` (any port).
pub async fn record_for(lan: &Lan, host: &str) -> Value {
    wait_record(lan, |r| r["host"] == host).await
}
