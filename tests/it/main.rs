//! Portcullis end to end, in one test binary: the real proxy in this process (or the
//! `portcullis` binary, for what users run) against real origins on loopback, through
//! clients that speak raw bytes, curl and headless Chromium.
//!
//! [`support`] is the shared harness; every other module is one user-visible feature. Run
//! one with `cargo test --test it forward::`, say; `-- --nocapture` shows the tables the
//! hostile-input tests print.

mod support;

mod access;
mod admission;
mod browser;
mod cli;
mod curl;
mod dns;
mod errorpage;
mod forward;
#[cfg(target_os = "linux")]
mod full_disk;
mod guard;
#[cfg(unix)]
mod helpers;
mod hostile;
mod ipv6;
#[cfg(target_os = "linux")]
mod lan;
mod lifecycle;
mod lists;
mod observe;
mod ops;
mod own_page;
mod pac;
mod parsers;
mod passwd;
mod quota_store;
mod quotas;
mod reload;
mod report;
mod schedules;
#[cfg(unix)]
mod several_proxies;
mod shaping;
mod socks;
mod socks_clients;
#[cfg(unix)]
mod syslog;
mod tls;
mod tls_streams;
#[cfg(target_os = "linux")]
mod top;
mod tunnel;
mod upstream;
