//! Portcullis: a LAN HTTP forward proxy that forwards plain HTTP, tunnels HTTPS with CONNECT,
//! lets clients reach only the destination ports its owner allows, and records who used which
//! outbound port and how much.
//!
//! # Layout
//!
//! Pure modules decide; I/O modules ask and act.
//!
//! - [`config`]: the TOML file, its defaults, validation into [`config::Settings`]. (pure)
//! - [`ports`]: port specs, [`ports::PortSet`] and the service-name table. (pure)
//! - [`target`]: what the client asked for: CONNECT authority, absolute URI, or the proxy's own page. (pure)
//! - [`policy`]: THE decision: client admission, rules, port lists, destination-address guards. (pure)
//! - [`lint`]: start-up warnings: open proxy, SMTP through CONNECT, rules that never match. (pure)
//! - [`hosts`]: host patterns of the rules (names, .domains, CIDRs) and block-list files. (pure)
//! - [`auth`]: Basic credentials, htpasswd files, the credential cache and failure tracker. (pure)
//! - [`passwd`]: `portcullis passwd FILE USER`: add or replace an htpasswd entry.
//! - [`error`]: the edge error: status, reason, deciding rule. (pure)
//! - [`errorpage`]: the HTML error page browsers get, built-in or the owner's template. (pure)
//! - [`access`]: the access record, one per request or tunnel, and its sinks.
//! - [`admin`]: the admin listener: `/metrics`, `/status`, `/status.json`, `/healthz`, `POST /reload`.
//! - [`log`]: the access log: Squid, Common and JSON lines, bounded queue, reopen on SIGUSR1.
//! - [`report`]: `portcullis report`: usage per port, client, host or user, read back from access logs.
//! - [`stats`]: live counters per port, client, user and host; recent refusals.
//! - [`server`]: listeners, per-connection tasks, client timeouts, graceful shutdown.
//! - [`service`]: the hyper service that routes each request; the only place refusals become responses.
//! - [`forward`]: plain-HTTP forwarding with header hygiene over the pooled client.
//! - [`tunnel`]: CONNECT: dial, 200, counted relay (splice(2) on Linux) with half-close and idle
//!   timeout.
//! - [`upstream`]: parent proxies: pooled clients per parent, CONNECT through a parent, failover.
//! - [`dial`]: the only place sockets to destinations open: resolve, re-check each address, connect
//!   (sockets to parent proxies open in [`upstream`]).
//! - [`body`]: streaming bodies that count bytes and carry the access record.
//! - [`pages`]: the page shown to someone who opens the proxy's address in a browser.
//! - [`pac`]: the proxy auto-config file (`/proxy.pac`, `/wpad.dat`) generated from `[pac]`. (pure)
//! - [`reload`]: reloading the configuration while running: validate, bind, swap, summarize.
//! - [`signal`]: SIGINT and SIGTERM as a shutdown future; SIGHUP (reload) and SIGUSR1 (reopen the log).
//! - [`check`]: `portcullis check`: validation with file, line and column, the effective configuration, lint warnings.
//! - [`explain`]: `portcullis explain`: what the proxy would decide for one request, and why, sending nothing. (pure)
//! - [`cli`]: the command line.
//!
//! The request path: accept ([`server`]) → classify ([`target`]) → decide ([`policy`]) →
//! forward ([`forward`]) or tunnel ([`tunnel`]) through [`dial`] → record ([`access`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod control;
pub mod core;
pub mod egress;
pub mod observe;
pub mod ops;
pub mod proxy;
pub mod runtime;
pub mod web;

pub use config::{Config, Settings};
pub use observe::access::{AccessRecord, AccessSink, Recorder};
pub use runtime::{run, serve};

// Bridges for the old flat paths while tests move to the new ones (removed with them).
pub use config::lint;
pub use control::{admin, reload, signal};
pub use core::{auth, error, hosts, policy, ports, target};
pub use egress::{dial, parent as upstream};
pub use observe::{access, log, stats};
pub use ops::{check, cli, explain, passwd, report};
pub use proxy::{body, forward, pages, service, tunnel};
pub use web::{errorpage, pac};
