//! The configuration file: what it says ([`schema`]), validation into [`Settings`] (the
//! runtime state the request path reads) with typed [`Problem`]s, where each problem lies in
//! the text (`locate`), and the one way a configuration is loaded ([`load()`]).
//!
//! Parsing is strict (`deny_unknown_fields`: a typo is an error, not a silently ignored key)
//! and validation reports every problem at once, each naming the key and entry at fault.
//! Nothing here opens a socket; binding the listeners is `runtime`'s job.

mod helper_spec;
pub(crate) mod lint;
pub mod lists;
pub mod load;
pub(crate) mod locate;
pub mod problem;
pub mod quotas;
mod rule_schema;
mod rules;
pub mod schema;
pub mod settings;
mod shaping;
pub mod syslog;
pub mod tls;
mod validate;
pub(crate) use validate::host_name;
pub(crate) use validate::mask_credentials;

use std::fmt::Write;

pub use load::{load, LoadError, Loaded, Purpose, Source};
pub use problem::{KeyPath, ParentError, Place, Problem, ProblemKind, Segment, WorkersError};
pub use schema::{
    AdminConfig, AuthConfig, ClientsConfig, Config, Destination, DestinationsConfig, DnsConfig,
    Format, GroupsConfig, LimitsConfig, LogConfig, Network, OneOrMany, PacConfig, PagesConfig,
    PortsConfig, RuleAction, RuleConfig, TimeoutsConfig, UpstreamConfig, Workers,
};
pub use settings::{
    AuthSettings, DnsSettings, HelperSpec, PacSettings, PagesSettings, Parent, ResolverKind,
    Settings, Timeouts, UpstreamSettings,
};

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message has line and column).
    #[error("{origin}: {message}")]
    Parse {
        /// The file, or `<built-in>`.
        origin: String,
        /// toml's message, with line, column and the offending text.
        message: String,
    },
    /// The file parsed but some values are not acceptable; one line per problem, with its
    /// line and column when it was located.
    #[error("{origin}: invalid configuration:{}", bullets(origin, problems))]
    Invalid {
        /// The file, or `<built-in>`.
        origin: String,
        /// Each problem, naming its key.
        problems: Vec<Problem>,
    },
    /// On a reload: the file holds nothing but blank lines and comments.
    #[error(
        "{origin}: the file holds no settings (empty, or comments only); a reload keeps the \
         running configuration rather than falling back to the defaults"
    )]
    HoldsNothing {
        /// The file.
        origin: String,
    },
}

impl ConfigError {
    /// One line per problem, `origin:line:column: problem` (or `origin: problem` when it has
    /// no place), for an invalid configuration; the message otherwise.
    pub fn located(&self) -> String {
        match self {
            ConfigError::Invalid { origin, problems } => problems
                .iter()
                .map(|p| p.located(origin))
                .collect::<Vec<_>>()
                .join("\n"),
            other => other.to_string(),
        }
    }
}

/// `\n  - problem` each, with `origin:line:column: ` before it when it was located.
fn bullets(origin: &str, problems: &[Problem]) -> String {
    let mut out = String::new();
    for p in problems {
        let _ = match p.at {
            Some(_) => write!(out, "\n  - {}", p.located(origin)),
            None => write!(out, "\n  - {p}"),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::validate::{mask_credentials, parse_parent};
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    #[test]
    fn an_empty_file_is_the_defaults() {
        let config = Config::from_toml("", "t").unwrap();
        assert_eq!(config, Config::default());
        let settings = config.validate("t").unwrap();
        assert!(settings.policy.http_ports.contains(80));
        assert!(settings.policy.http_ports.contains(3128));
        assert!(!settings.policy.http_ports.contains(25));
        assert!(settings.policy.connect_ports.contains(443));
        assert!(!settings.policy.connect_ports.contains(80));
        assert!(!settings.policy.allow_loopback);
        assert_eq!(settings.timeouts.keep_alive, Duration::from_secs(120));
    }

    #[test]
    fn values_parse() {
        let config = Config::from_toml(
            r#"
            listen = ["127.0.0.1:8080", "[::1]:8080"]
            [clients]
            allow = ["192.168.1.0/24", "10.0.0.7", "192.168.2.9/24"]
            names = { "192.168.1.20" = "kids-laptop", "::ffff:10.0.0.7" = "printer" }
            [ports]
            http = [80, "8000-8100", "http-alt"]
            connect = ["https", 22]
            [destinations]
            allow_loopback = true
            [timeouts]
            connect = "3s"
            keep_alive = "1m 30s"
            tunnel_idle = "1h"
            "#,
            "t",
        )
        .unwrap();
        assert_eq!(config.listen.len(), 2);
        assert_eq!(config.clients.allow[1].to_string(), "10.0.0.7/32");
        assert_eq!(config.clients.allow[2].to_string(), "192.168.2.0/24");
        assert_eq!(config.timeouts.connect, Duration::from_secs(3));
        assert_eq!(config.timeouts.keep_alive, Duration::from_secs(90));
        assert_eq!(config.timeouts.tunnel_idle, Duration::from_secs(3600));
        assert_eq!(config.timeouts.request_header, Duration::from_secs(10));
        let settings = config.validate("t").unwrap();
        assert_eq!(
            settings.client_name("192.168.1.20".parse().unwrap()),
            Some("kids-laptop")
        );
        assert_eq!(
            settings.client_name("10.0.0.7".parse().unwrap()),
            Some("printer")
        );
        assert!(settings.policy.connect_ports.contains(22));
        assert!(settings.policy.http_ports.contains(8050));
        assert!(settings.policy.allow_loopback);
    }

    #[test]
    fn parse_errors_name_line_and_column() {
        let cases: &[(&str, &str)] = &[
            ("listen = [\"nope\"]", "line 1"),
            ("[ports]\nhtp = [80]", "unknown field `htp`"),
            (
                "[ports]\nhttp = [80]\n[timeouts]\nconnect = \"soon\"",
                "line 4",
            ),
            ("[clients]\nallow = [\"300.1.1.1/8\"]", "not a network"),
            ("bogus = 1", "unknown field `bogus`"),
            ("[ports]\nhttp = [true]", "line 2"),
        ];
        for (text, fragment) in cases {
            let err = Config::from_toml(text, "f.toml").unwrap_err().to_string();
            assert!(err.starts_with("f.toml: "), "{err}");
            assert!(err.contains(fragment), "{text:?}: {err}");
        }
    }

    #[test]
    fn validation_names_every_bad_entry() {
        let cases: &[(&str, &[&str])] = &[
            ("[ports]\nhttp = []", &["ports.http: the list is empty"]),
            (
                "[ports]\nconnect = [\"htps\"]",
                &["ports.connect: entry \"htps\": unknown service name \"htps\""],
            ),
            (
                "[ports]\nhttp = [0, \"90-80\", \"1-70000\"]\nconnect = [65536]",
                &[
                    "ports.http: entry 0: port 0 is out of range",
                    "ports.http: entry \"90-80\": range \"90-80\" is reversed",
                    "ports.http: entry \"1-70000\": range \"1-70000\" is out of range",
                    "ports.connect: entry 65536: port 65536 is out of range",
                ],
            ),
            ("listen = []", &["listen: the list is empty"]),
            ("workers = 0", &["workers: 0; give at least 1"]),
            ("workers = 100000", &["workers: 100000 is more than 256"]),
            (
                "workers = \"many\"",
                &["workers: \"many\" is neither \"auto\" nor a number"],
            ),
            (
                "[clients]\nallow = []",
                &["clients.allow: the list is empty"],
            ),
            (
                "[timeouts]\nconnect = \"0s\"",
                &["timeouts.connect: must be longer than zero"],
            ),
        ];
        for (text, wanted) in cases {
            let err = Config::from_toml(text, "f.toml")
                .unwrap()
                .validate("f.toml")
                .unwrap_err();
            let ConfigError::Invalid { problems, .. } = &err else {
                panic!("{text}: {err}");
            };
            assert_eq!(problems.len(), wanted.len(), "{text}: {problems:?}");
            for (problem, want) in problems.iter().zip(wanted.iter()) {
                let problem = problem.to_string();
                assert!(problem.starts_with(want), "{text}: {problem:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn workers_are_a_number_or_auto() {
        let settings = |text: &str| Config::from_toml(text, "f").unwrap().validate("f").unwrap();
        assert_eq!(settings("workers = 3").workers, 3);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(settings("").workers, (cores / 2).max(1));
        assert_eq!(settings("workers = \"auto\"").workers, (cores / 2).max(1));
    }

    #[test]
    fn parents_parse_with_and_without_credentials() {
        let p = parse_parent("http://alice:p%40ss@parent.lan:8080").unwrap();
        assert_eq!(p.name, "parent.lan:8080");
        assert_eq!(p.authorization.unwrap(), "Basic YWxpY2U6cEBzcw==");
        let p = parse_parent("http://10.0.0.1:3128/").unwrap();
        assert_eq!((p.name.as_str(), p.authorization), ("10.0.0.1:3128", None));
        assert_eq!(parse_parent("http://parent.lan").unwrap().port, 3128);
        for bad in [
            "parent:8080",
            "https://p:1",
            "http://u@p:1",
            "http://p:0",
            "http://a b:1",
        ] {
            assert!(parse_parent(bad).is_err(), "{bad}");
        }
        assert_eq!(mask_credentials("http://u:secret@h:1"), "http://u:***@h:1");
        assert_eq!(
            mask_credentials("http://bob@p.lan:8080"),
            "http://bob:***@p.lan:8080"
        );
        assert_eq!(mask_credentials("http://p.lan:8080"), "http://p.lan:8080");
        let err = Config::from_toml("[upstream]\nproxy = \"http://u:secret@h:0\"", "t")
            .unwrap()
            .validate("t")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn the_example_file_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/portcullis.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config, Config::default());
        config.validate("example").unwrap();
    }

    #[test]
    fn every_shipped_config_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let config = Config::load(&path).unwrap();
                config.validate(&path.display().to_string()).unwrap();
                seen += 1;
            }
        }
        assert!(seen >= 1);
    }
}
