//! The command line.

// The doc comments below are clap's help text, read by people at a terminal: their brackets
// (`[[rules]]`, `host[:port]`) are literal, not links.
#![allow(rustdoc::broken_intra_doc_links)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::ops::report::Options as ReportOptions;
/// A number of seconds above 0 (`top --interval`), as written: `1`, `0.5`.
fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
        _ => Err(format!("{text:?} is not a number of seconds above 0")),
    }
}

#[cfg(test)]
use crate::ops::report::{GroupBy, OutputFormat};

/// Portcullis: a LAN HTTP forward proxy that only lets clients reach the destination ports
/// you allow, and logs who used which port and how much.
///
/// Without options it listens on 0.0.0.0:3128 with the built-in defaults
/// (documented in config/portcullis.toml).
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Read the configuration from this TOML file.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Listen on this address instead of the configured ones (repeatable).
    #[arg(short, long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,

    /// Something other than running the proxy.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands; without one, `portcullis` runs the proxy.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add or replace USER's entry in the htpasswd FILE (bcrypt), creating the file if needed.
    ///
    /// The password is read twice without echo from the terminal, or from the first line of
    /// standard input when it is not a terminal: `printf '%s\n' "$PW" | portcullis passwd FILE USER`.
    Passwd {
        /// The htpasswd file (created with mode 0600 if it does not exist).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The user name (no ':' and no whitespace).
        #[arg(value_name = "USER")]
        user: String,
    },
    /// Make a certificate for the proxy's TLS listeners (listen_tls) on a LAN without a public
    /// name: a small local certificate authority (made once, then reused) and a server
    /// certificate it signs for the given names and addresses.
    ///
    /// Writes ca.pem (install it on the clients), ca.key (keep it here), proxy.pem (the chain
    /// [tls] cert names) and proxy.key ([tls] key) into DIR; keys with mode 0600. Prints how to
    /// trust ca.pem on Windows, macOS, Linux, Firefox and Android.
    ///
    /// Example: portcullis cert --name proxy.lan --ip 192.168.1.2 --out /etc/portcullis/tls
    Cert {
        /// A host name clients use for the proxy (repeat for more).
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// An address clients use for the proxy (repeat for more).
        #[arg(long = "ip", value_name = "IP")]
        ips: Vec<IpAddr>,
        /// The folder for the files (made if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Print usage per destination port, client, host, user, failure kind or proxy, read from access logs.
    ///
    /// Reads access logs in the `squid` or `json` format (told apart line by line), plain or
    /// gzip-compressed, and prints per group: requests, denied, bytes up, bytes down, distinct
    /// clients, first and last seen. It streams: memory stays flat however large the logs.
    /// Several proxies' logs make one report; the table names the proxies (the JSON format's
    /// `instance`) when there is more than one, and `--by instance` has a row for each.
    ///
    /// Times are request arrival times, in UTC. The Squid format does not record bytes up:
    /// its lines count 0 there. Distinct clients are exact up to 10 000 per group, estimated
    /// above (marked `~` in the table). Malformed lines are skipped and counted on standard error.
    ///
    /// `--by error` groups by the JSON format's `error` field (`refused`, `dns`, `timeout` …);
    /// `-` is the row of exchanges that did not fail, and of every Squid line.
    ///
    /// In Squid lines the port and host come from the URL (`http://host[:port]/…`, or
    /// `host:port` for CONNECT), the client from the 3rd field and the user from the 8th; a
    /// result code starting `TCP_DENIED` or `NONE` (`NONE_NONE`) counts as denied.
    Report(ReportOptions),
    /// Validate a configuration file, summarize what it sets up, and warn about likely mistakes.
    ///
    /// Reads the file as the proxy does at start-up and on reload (without --config: the
    /// built-in defaults) and prints the effective configuration in a few lines (listeners,
    /// clients, port lists with service names, destination guards, timeouts, limits, log-in,
    /// rules, logs, admin, PAC, parent proxies), then every warning: an open proxy, SMTP
    /// through CONNECT, rules that can never match, rules that name users not in the htpasswd
    /// file.
    ///
    /// Errors go to standard error as FILE:LINE:COLUMN: problem, each saying what would be
    /// valid. Exit status: 0 valid, 1 invalid, 2 valid with warnings under --strict.
    Check {
        /// The configuration file; without it, the built-in defaults are checked.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Exit with status 2 when the configuration is valid but draws warnings.
        #[arg(long)]
        strict: bool,
    },
    /// Say whether the proxy would allow a request, and which rule or list decides it.
    ///
    /// Runs the proxy's own checks in the proxy's order (client allow-list, the request
    /// target, the proxy's own pages, log-in, the [[rules]] then the port lists, the guards on
    /// destination addresses) without sending anything anywhere. TARGET is host:port for
    /// CONNECT and SOCKS, or an absolute http:// URL for other methods; METHOD is taken in
    /// upper case. SOCKS requests are asked as SOCKS5, SOCKS4 (also 4a) or SOCKS5-UDP (a
    /// datagram through UDP ASSOCIATE), the methods their records and rules use.
    ///
    /// Names are not resolved unless --resolve is given: then the resolver [dns] sets up is asked
    /// and every address is checked as the proxy would before dialling it.
    ///
    /// Exit status: 0 allowed, 1 refused, 2 usage or configuration error, 3 undecided (a
    /// rule needs the destination's address: run again with --resolve).
    ///
    /// Example: portcullis explain --config /etc/portcullis/portcullis.toml --client 192.168.1.20 CONNECT example.com:25
    Explain {
        /// The configuration file; without it, the built-in defaults.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The client's address, as the proxy would see it.
        #[arg(long, value_name = "IP")]
        client: IpAddr,
        /// The user the client logs in as (taken as logged in if the htpasswd file has that
        /// user, or an [auth] program checks log-ins; passwords are not asked). With
        /// [auth.groups], the group helper is asked about the groups the rules name.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// Resolve a destination name with the resolver [dns] sets up and check each address.
        #[arg(long)]
        resolve: bool,
        /// Decide as at this time, for rules with times: 2026-12-03T20:15 (local time, in
        /// [clock] timezone or the machine's) or with an offset (2026-12-03T20:15+01:00).
        /// Default: now.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// The request method: CONNECT, GET, POST …, or SOCKS5, SOCKS4, SOCKS5-UDP.
        #[arg(value_name = "METHOD")]
        method: String,
        /// host:port for CONNECT and SOCKS, http://host[:port]/path for the other methods.
        #[arg(value_name = "TARGET")]
        target: String,
    },
    /// Who uses the link now, refreshed every second: bytes per second by client, port and
    /// host, and each client's share when [shaping] shapes the link.
    ///
    /// Reads the admin listener's /status.json (the admin listener must be on, and its allow
    /// list must hold this address). On a terminal, a full-screen view redrawn at each
    /// reading and when the terminal is resized; q, Esc or Ctrl-C ends it and puts the
    /// terminal back. While the admin listener cannot be reached, the view says so and tries
    /// again at every interval.
    ///
    /// With --once, or when standard output is not a terminal, one screen of plain text from
    /// two readings an interval apart; exit status 1 when the admin listener cannot be read.
    ///
    /// Example: portcullis top --admin 127.0.0.1:3129
    Top {
        /// The admin listener's address.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3129")]
        admin: std::net::SocketAddr,
        /// Seconds between readings (0.2 to 3600).
        #[arg(long, value_name = "SECONDS", default_value_t = 1.0, value_parser = seconds)]
        interval: f64,
        /// Print one screen of plain text (two readings an interval apart) and exit, even on
        /// a terminal.
        #[arg(long)]
        once: bool,
    },
    /// Print a shell completion script to standard output.
    ///
    /// For example: portcullis completions bash > /etc/bash_completion.d/portcullis, or
    /// portcullis completions zsh > "${fpath[1]}/_portcullis".
    Completions {
        /// The shell.
        #[arg(value_enum, value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to standard output.
    ///
    /// Without COMMAND, portcullis(1); with one, the page of that subcommand,
    /// portcullis-COMMAND(1). For example: portcullis man | man -l -
    Man {
        /// A subcommand whose page to print (check, explain, report, passwd …), or
        /// `portcullis.toml` for the configuration file's page, portcullis.toml(5).
        #[arg(value_name = "COMMAND")]
        command: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subcommands_are_optional() {
        type Case<'a> = (&'a [&'a str], Option<(&'a str, &'a str)>, Option<&'a str>);
        let cases: &[Case] = &[
            // (arguments, passwd FILE USER, --config)
            (&["portcullis"], None, None),
            (&["portcullis", "--config", "p.toml"], None, Some("p.toml")),
            (&["portcullis", "-l", "127.0.0.1:0"], None, None),
            (
                &["portcullis", "passwd", "users.htpasswd", "alice"],
                Some(("users.htpasswd", "alice")),
                None,
            ),
        ];
        for (args, passwd, config) in cases {
            let cli = Cli::try_parse_from(*args).unwrap();
            let got = cli.command.as_ref().and_then(|command| match command {
                Command::Passwd { file, user } => Some((file.to_str().unwrap(), user.as_str())),
                _ => None,
            });
            assert_eq!(got, *passwd, "{args:?}");
            assert_eq!(cli.config.as_deref(), config.map(std::path::Path::new));
        }
        for bad in [
            &["portcullis", "passwd", "users.htpasswd"][..],
            &["portcullis", "passwd"],
            &["portcullis", "--config", "p.toml", "passwd", "f", "u"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn top_takes_an_interval_above_zero() {
        let interval = |args: &[&str]| {
            Cli::try_parse_from(args).map(|cli| match cli.command {
                Some(Command::Top { interval, .. }) => interval,
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(interval(&["portcullis", "top"]).unwrap(), 1.0);
        assert_eq!(
            interval(&["portcullis", "top", "--interval", "0.5"]).unwrap(),
            0.5
        );
        for bad in ["0", "-1", "nan", "inf", "soon"] {
            assert!(
                interval(&["portcullis", "top", "--interval", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn report_arguments() {
        let cli = Cli::try_parse_from(["portcullis", "report"]).unwrap();
        let Some(Command::Report(ReportOptions {
            files,
            by,
            since,
            until,
            format,
            ..
        })) = cli.command
        else {
            panic!("not a report: {cli:?}");
        };
        assert!(files.is_empty() && since.is_none() && until.is_none());
        assert_eq!((by, format), (GroupBy::Port, OutputFormat::Table));
        let args = [
            "portcullis",
            "report",
            "--by",
            "user",
            "--format",
            "json",
            "--since",
            "2025-11-26",
            "--until",
            "2025-11-26T12:00:00Z",
            "a.log",
            "b.log.gz",
            "-",
        ];
        let cli = Cli::try_parse_from(args).unwrap();
        let Some(Command::Report(ReportOptions {
            files,
            by,
            since,
            until,
            format,
            ..
        })) = cli.command
        else {
            panic!("not a report: {cli:?}");
        };
        assert_eq!(files, ["a.log", "b.log.gz", "-"].map(PathBuf::from));
        assert_eq!((by, format), (GroupBy::User, OutputFormat::Json));
        assert_eq!(
            since,
            Some(humantime::parse_rfc3339("2025-11-26T00:00:00Z").unwrap())
        );
        assert_eq!(
            until,
            Some(humantime::parse_rfc3339("2025-11-26T12:00:00Z").unwrap())
        );
        for (by, want) in [("error", GroupBy::Error), ("instance", GroupBy::Instance)] {
            let cli = Cli::try_parse_from(["portcullis", "report", "--by", by]).unwrap();
            assert!(
                matches!(cli.command, Some(Command::Report(ReportOptions { by, .. })) if by == want),
                "{cli:?}"
            );
        }
        for bad in [
            &["portcullis", "report", "--by", "mood"][..],
            &["portcullis", "report", "--format", "xml"],
            &["portcullis", "report", "--since", "yesterday"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn check_and_explain_arguments() {
        let cli =
            Cli::try_parse_from(["portcullis", "check", "--config", "p.toml", "--strict"]).unwrap();
        let Some(Command::Check { config, strict }) = cli.command else {
            panic!("not a check: {cli:?}");
        };
        assert_eq!(config.as_deref(), Some(std::path::Path::new("p.toml")));
        assert!(strict);
        let args = [
            "portcullis",
            "explain",
            "--client",
            "192.168.1.20",
            "--user",
            "alice",
            "--resolve",
            "CONNECT",
            "example.com:25",
        ];
        let cli = Cli::try_parse_from(args).unwrap();
        let Some(Command::Explain {
            config,
            client,
            user,
            resolve,
            at,
            method,
            target,
        }) = cli.command
        else {
            panic!("not an explain: {cli:?}");
        };
        assert_eq!(config, None);
        assert_eq!(client, "192.168.1.20".parse::<IpAddr>().unwrap());
        assert_eq!(user.as_deref(), Some("alice"));
        assert_eq!(at, None);
        assert!(resolve);
        assert_eq!(
            (method.as_str(), target.as_str()),
            ("CONNECT", "example.com:25")
        );
        for bad in [
            &["portcullis", "explain", "CONNECT", "example.com:25"][..],
            &[
                "portcullis",
                "explain",
                "--client",
                "lan",
                "GET",
                "http://x/",
            ],
            &["portcullis", "explain", "--client", "10.0.0.1", "GET"],
            &["portcullis", "completions", "tcsh"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from(["portcullis", "completions", "zsh"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Completions {
                shell: clap_complete::Shell::Zsh
            })
        ));
    }
}
