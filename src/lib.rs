//! Portcullis: a LAN HTTP forward proxy that forwards plain HTTP, tunnels HTTPS with CONNECT,
//! lets clients reach only the destination ports its owner allows, and records who used which
//! outbound port and how much.
//!
//! # Layout
//!
//! One crate, grouped by layer; each folder's `mod.rs` says what it owns.
//!
//! - [`core`]: PURE decisions, functions of plain data (std, `http`, `ipnet`; no tokio, no
//!   hyper I/O, no files, no clock): what the client asked for ([`core::target`]), ports and
//!   service names, host patterns, THE policy ([`core::policy`]), the plan — the ordered checks
//!   of one request, for every front door and for `explain` (`core::plan`) —, head and
//!   connection limits, header hygiene, Basic credentials and htpasswd ([`core::auth`]), and
//!   the edge error with its kind (`core::error`).
//! - [`config`]: the TOML file → [`config::Settings`]: schema and defaults, validation with
//!   typed problems placed by the parser's spans, the ONE load path ([`config::load()`]) for
//!   start-up, `check`, `explain` and reload, start-up warnings. Reads the files it names.
//! - [`observe`]: the access record, one per request or tunnel ([`observe::access`]), the
//!   access log and its formats, the live counters behind `/metrics` and `/status`.
//! - [`egress`]: the only place sockets open outbound: resolve, ask the plan about each
//!   address, connect ([`egress::dial`]); parent proxies (`egress::parent`).
//! - `web`: pure renderers of what people read: the error page, the status page, the PAC.
//! - `proxy`: the data path: listeners, connections and their limits, the hyper service that
//!   runs the plan, forwarding, tunnels, bodies, the proxy's own pages; `proxy::respond` is
//!   where an error becomes a response.
//! - [`control`]: live levers over a running proxy: the admin listener, reloads, signals.
//! - [`ops`]: the offline subcommands: the command line, `check`, `explain`, `passwd`,
//!   `report`.
//! - [`runtime`]: assembles a running proxy (bind, derive the bound addresses, access log,
//!   signals, admin, reload, drain): the one builder the binary and the tests use.
//!
//! Where to look: a request is decided in `core::plan` (the order) and [`core::policy`]
//! (each decision); a refusal becomes a response in `proxy::respond`; sockets open outbound
//! in [`egress`]; the one access record is opened in `proxy::service` and written when it
//! is dropped ([`observe::access::PendingRecord`]).
//!
//! # Dependency rule
//!
//! `core` ← `config` ← {`observe`, `egress`, `web`} ← `proxy` ← `control` ← `runtime` ← the
//! binary, and `ops` → {`core`, `config`, `observe`, `web`}. Nothing imports upward; state that
//! several modules share lives below all of them. The tests at the end of this file hold the
//! rule, and `core`'s purity.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod control;
pub mod core;
pub mod egress;
pub mod observe;
pub mod ops;
pub(crate) mod proxy;
pub mod runtime;
pub(crate) mod web;

pub use config::{Config, Settings};
pub use observe::access::{AccessRecord, AccessSink, Recorder};
pub use runtime::{run, serve};

#[cfg(test)]
mod tests {
    //! The layout's rules, read from the sources: which layer may import which, and that the
    //! pure core imports nothing that does I/O.
    use std::collections::BTreeMap;
    use std::path::Path;

    /// The layers each layer may import (besides itself).
    const ALLOWED: &[(&str, &[&str])] = &[
        ("core", &[]),
        ("config", &["core"]),
        ("observe", &["core", "config"]),
        ("egress", &["core", "config"]),
        ("web", &["core", "config", "observe"]),
        ("proxy", &["core", "config", "observe", "egress", "web"]),
        (
            "control",
            &["core", "config", "observe", "egress", "web", "proxy"],
        ),
        ("ops", &["core", "config", "observe", "web"]),
        (
            "runtime",
            &[
                "core", "config", "observe", "egress", "web", "proxy", "control",
            ],
        ),
    ];

    /// The text of every source file of `layer`, without its tests and comments.
    fn sources(layer: &str) -> BTreeMap<String, String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut out = BTreeMap::new();
        let mut todo = vec![root.join(layer), root.join(format!("{layer}.rs"))];
        while let Some(path) = todo.pop() {
            if path.is_dir() {
                for entry in std::fs::read_dir(&path).unwrap() {
                    todo.push(entry.unwrap().path());
                }
            } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let text = text.split("#[cfg(test)]").next().unwrap_or("");
                let code: String = text
                    .lines()
                    .map(|l| l.split("//").next().unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join("\n");
                out.insert(path.display().to_string(), code);
            }
        }
        out
    }

    #[test]
    fn no_layer_imports_upward() {
        let mut broken = Vec::new();
        for (layer, allowed) in ALLOWED {
            let files = sources(layer);
            assert!(!files.is_empty(), "no sources for {layer}");
            for (file, code) in files {
                for (other, _) in ALLOWED {
                    if other == layer || allowed.contains(other) {
                        continue;
                    }
                    let named = code.contains(&format!("crate::{other}::"))
                        || code.contains(&format!("crate::{other};"))
                        || code.contains(&format!("crate::{{{other}::"));
                    if named {
                        broken.push(format!("{file} imports {other}"));
                    }
                }
            }
        }
        assert!(
            broken.is_empty(),
            "imports against the layer rule: {broken:#?}"
        );
    }

    #[test]
    fn the_core_does_no_io() {
        const IO: &[&str] = &[
            "tokio",
            "hyper::server",
            "hyper::client",
            "hyper_util",
            "std::fs",
            "std::net::TcpStream",
            "std::net::UdpSocket",
            "SystemTime::now",
            "Instant::now",
            "Timestamp::now",
            "try_system",
            "std::thread",
        ];
        let mut found = Vec::new();
        for (file, code) in sources("core") {
            for word in IO {
                if code.contains(word) {
                    found.push(format!("{file}: {word}"));
                }
            }
        }
        assert!(found.is_empty(), "I/O in the pure core: {found:#?}");
    }

    #[test]
    fn the_book_names_every_module() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let book = std::fs::read_to_string(root.join("docs/src/architecture.md")).unwrap();
        let mut missing = Vec::new();
        for (layer, _) in ALLOWED {
            let folder = root.join("src").join(layer);
            if !folder.is_dir() {
                continue;
            }
            assert!(
                book.contains(&format!("{layer}/")),
                "{layer}/ is not in the book"
            );
            for entry in std::fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                let named =
                    book.contains(&format!("`{name}`")) || book.contains(&format!("`{name}/`"));
                if name != "mod" && !named {
                    missing.push(format!("{layer}/{name}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "modules the architecture chapter does not name: {missing:?}"
        );
    }
}
