//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Parser, Subcommand};

use crate::report::{parse_since, parse_until, GroupBy, OutputFormat};

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
    /// Print usage per destination port, client, host or user, read from access logs.
    ///
    /// Reads access logs in the `squid` or `json` format (told apart line by line), plain or
    /// gzip-compressed, and prints per group: requests, denied, bytes up, bytes down, distinct
    /// clients, first and last seen. It streams: memory stays flat however large the logs.
    ///
    /// Times are request arrival times, in UTC. The Squid format does not record bytes up:
    /// its lines count 0 there. Distinct clients are exact up to 10 000 per group, estimated
    /// above (marked `~` in the table). Malformed lines are skipped and counted on standard error.
    ///
    /// In Squid lines the port and host come from the URL (`http://host[:port]/…`, or
    /// `host:port` for CONNECT), the client from the 3rd field and the user from the 8th; a
    /// result code starting `TCP_DENIED` or `NONE` (`NONE_NONE`) counts as denied.
    Report {
        /// Access log files, plain or .gz; none, or `-`, reads standard input.
        #[arg(value_name = "FILES")]
        files: Vec<PathBuf>,
        /// What to group by.
        #[arg(long, value_enum, default_value_t = GroupBy::Port)]
        by: GroupBy,
        /// Only requests that arrived at or after TIME: RFC 3339 (2025-11-26T10:00:00Z) or a
        /// date (2025-11-26, from its midnight), UTC.
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        since: Option<SystemTime>,
        /// Only requests that arrived before TIME: RFC 3339, or a date (up to the end of that
        /// day), UTC.
        #[arg(long, value_name = "TIME", value_parser = parse_until)]
        until: Option<SystemTime>,
        /// The output: an aligned table with a totals row, CSV (RFC 4180) or a JSON array.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
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
    fn report_arguments() {
        let cli = Cli::try_parse_from(["portcullis", "report"]).unwrap();
        let Some(Command::Report {
            files,
            by,
            since,
            until,
            format,
        }) = cli.command
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
        let Some(Command::Report {
            files,
            by,
            since,
            until,
            format,
        }) = cli.command
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
        for bad in [
            &["portcullis", "report", "--by", "mood"][..],
            &["portcullis", "report", "--format", "xml"],
            &["portcullis", "report", "--since", "yesterday"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
