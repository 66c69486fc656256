//! `[log] syslog` and its companions into [`SyslogSettings`]: where the access records go
//! besides the access log (a unix socket, UDP or TCP), in which format, under which facility
//! and application name. Sending is [`crate::observe::syslog`]'s job; nothing here opens a
//! socket or resolves a name.

use std::path::{Path, PathBuf};

use super::problem::{KeyPath, Problem, ProblemKind};
use super::schema::{Config, Format};

/// Where syslog messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTarget {
    /// A unix datagram socket (`unix:/dev/log`): one message a datagram.
    Unix(PathBuf),
    /// A UDP server (`udp://host:514`): one message a datagram.
    Udp(String),
    /// A TCP server (`tcp://host:601`): messages framed by octet counting (RFC 6587).
    Tcp(String),
}

impl std::fmt::Display for SyslogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyslogTarget::Unix(path) => write!(f, "unix:{}", path.display()),
            SyslogTarget::Udp(addr) => write!(f, "udp://{addr}"),
            SyslogTarget::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

/// `[log] syslog` and the keys that go with it, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogSettings {
    /// Where the messages go.
    pub target: SyslogTarget,
    /// The payload's format (`syslog_format`).
    pub format: Format,
    /// The facility's number (`syslog_facility`: `local0` is 16).
    pub facility: u8,
    /// The APP-NAME field (`syslog_app_name`).
    pub app_name: String,
}

/// The facilities of RFC 5424, by name, in the order of their numbers.
const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

impl Config {
    /// `[log] syslog`, `syslog_format`, `syslog_facility` and `syslog_app_name`; `None` when
    /// syslog is off. A unix socket's relative path is relative to `base`.
    pub(super) fn syslog_settings(
        &self,
        base: &Path,
        problems: &mut Vec<Problem>,
    ) -> Option<SyslogSettings> {
        let log = &self.log;
        let mut bad = |key: &'static str, why: String| {
            problems.push(Problem::new(
                KeyPath::keys(["log", key]),
                ProblemKind::BadSyslog(why),
            ));
        };
        let facility = FACILITIES
            .iter()
            .position(|name| *name == log.syslog_facility)
            .map(|n| n as u8);
        if facility.is_none() {
            bad(
                "syslog_facility",
                format!(
                    "\"{}\" is not a facility (kern, user, daemon, … local0 to local7)",
                    log.syslog_facility
                ),
            );
        }
        if !is_app_name(&log.syslog_app_name) {
            bad(
                "syslog_app_name",
                format!(
                    "\"{}\" is not an application name: 1 to 48 printable ASCII characters, no spaces",
                    log.syslog_app_name
                ),
            );
        }
        let target = match parse_target(&log.syslog, base) {
            Ok(target) => target?,
            Err(why) => {
                bad("syslog", why);
                return None;
            }
        };
        Some(SyslogSettings {
            target,
            format: log.syslog_format,
            facility: facility?,
            app_name: log.syslog_app_name.clone(),
        })
    }
}

/// RFC 5424's APP-NAME: 1 to 48 printable US-ASCII characters.
fn is_app_name(name: &str) -> bool {
    (1..=48).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic())
}

/// `"off"`, `unix:PATH`, `udp://HOST[:PORT]` (514) or `tcp://HOST[:PORT]` (601).
fn parse_target(text: &str, base: &Path) -> Result<Option<SyslogTarget>, String> {
    if text == "off" {
        return Ok(None);
    }
    let wanted =
        || format!("\"{text}\" is not \"off\", unix:PATH, udp://HOST:PORT or tcp://HOST:PORT");
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(wanted());
        }
        return Ok(Some(SyslogTarget::Unix(base.join(path))));
    }
    let (scheme, rest) = text.split_once("://").ok_or_else(wanted)?;
    let default_port = match scheme {
        "udp" => 514,
        "tcp" => 601,
        _ => return Err(wanted()),
    };
    let address = host_port(rest, default_port).ok_or_else(wanted)?;
    Ok(Some(match scheme {
        "udp" => SyslogTarget::Udp(address),
        _ => SyslogTarget::Tcp(address),
    }))
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` as `host:port` (with `default_port`).
fn host_port(text: &str, default_port: u16) -> Option<String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (format!("[{v6}]"), port)
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (text.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0)?,
        None => default_port,
    };
    let name_ok = |h: &str| {
        !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    };
    (host.starts_with('[') || name_ok(&host)).then(|| format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_as_squid_users_write_them() {
        let base = Path::new("/etc/portcullis");
        let ok = |text: &str| parse_target(text, base).unwrap();
        assert_eq!(ok("off"), None);
        for (text, target) in [
            ("unix:/dev/log", SyslogTarget::Unix("/dev/log".into())),
            (
                "unix:log.sock",
                SyslogTarget::Unix("/etc/portcullis/log.sock".into()),
            ),
            ("udp://127.0.0.1", SyslogTarget::Udp("127.0.0.1:514".into())),
            (
                "tcp://logs.lan:6514",
                SyslogTarget::Tcp("logs.lan:6514".into()),
            ),
            ("tcp://[::1]", SyslogTarget::Tcp("[::1]:601".into())),
        ] {
            assert_eq!(ok(text), Some(target), "{text}");
        }
        for bad in [
            "",
            "unix:",
            "syslog",
            "http://x:1",
            "udp://",
            "udp://x:0",
            "udp://x:70000",
            "tcp://[::1",
            "tcp://a b:1",
            "udp://[nope]:1",
        ] {
            assert!(parse_target(bad, base).is_err(), "{bad}");
        }
    }

    /// The settings of `[log]` holding `keys`, and the problems found.
    fn read(keys: &str) -> (Option<SyslogSettings>, Vec<String>) {
        let config = Config::from_toml(&format!("[log]\n{keys}"), "t").unwrap();
        let mut problems = Vec::new();
        let settings = config.syslog_settings(Path::new("/"), &mut problems);
        (settings, problems.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn bad_keys_are_named_and_explained() {
        let (settings, said) = read(
            "syslog = \"smtp://x\"\nsyslog_facility = \"local9\"\nsyslog_app_name = \"two words\"\n",
        );
        assert_eq!(settings, None);
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(said[0].contains("log.syslog_facility") && said[0].contains("local9"));
        assert!(said[1].contains("log.syslog_app_name"));
        assert!(said[2].contains("log.syslog:") && said[2].contains("smtp://x"));
    }

    #[test]
    fn facilities_have_their_numbers() {
        let (settings, said) =
            read("syslog = \"udp://127.0.0.1:5140\"\nsyslog_facility = \"local4\"\n");
        assert!(said.is_empty(), "{said:?}");
        let settings = settings.unwrap();
        assert_eq!(settings.facility, 20);
        assert_eq!(settings.format, Format::Json);
        assert_eq!(settings.app_name, "portcullis");
        // Off by default.
        assert_eq!(read(""), (None, Vec::new()));
    }
}
