//! Destination ports: the service-name table, port specs as written in the configuration
//! (`80`, `"1025-65535"`, `"https"`) and [`PortSet`], the compiled allow-list.
//!
//! Pure data: no I/O. Deciding whether a request may use a port is the policy's job; this
//! module only answers "is this port in the set" and "what is this port called".

use std::fmt;

use serde::{Deserialize, Serialize};

/// One known service: its names (the first is the one shown), its TCP port and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    /// Names accepted in the configuration; the first is the canonical one used in logs.
    pub names: &'static [&'static str],
    /// The TCP port.
    pub port: u16,
    /// A few words on what the port is used for.
    pub description: &'static str,
}

impl Service {
    /// The canonical name (the one shown in logs and refusals).
    pub fn name(&self) -> &'static str {
        self.names[0]
    }
}

const fn svc(names: &'static [&'static str], port: u16, description: &'static str) -> Service {
    Service {
        names,
        port,
        description,
    }
}

/// The built-in service-name table, ordered by port. It covers every port of the article the
/// project grew from (FTP, Telnet, SMTP, HTTP, POP3, NetBIOS, HTTPS and NetMeeting's ILS, ULS,
/// T.120, H.323 and audio ports) and the ports a LAN owner is commonly asked about.
pub const SERVICES: &[Service] = &[
    svc(&["ftp-data"], 20, "FTP data (active mode)"),
    svc(&["ftp"], 21, "FTP: file transfer"),
    svc(&["ssh"], 22, "SSH: remote shell, SFTP, git over SSH"),
    svc(&["telnet"], 23, "Telnet: unencrypted remote command line"),
    svc(&["smtp"], 25, "SMTP: sending mail between mail servers"),
    svc(&["whois"], 43, "WHOIS directory lookups"),
    svc(&["dns", "domain"], 53, "DNS over TCP"),
    svc(&["gopher"], 70, "Gopher"),
    svc(&["finger"], 79, "Finger user information"),
    svc(&["http", "www"], 80, "HTTP: web pages"),
    svc(&["pop3"], 110, "POP3: fetching mail"),
    svc(&["ident", "auth"], 113, "Ident"),
    svc(&["nntp"], 119, "NNTP: Usenet news"),
    svc(&["ntp"], 123, "NTP: time"),
    svc(&["epmap", "msrpc"], 135, "Microsoft RPC endpoint mapper"),
    svc(
        &["netbios", "netbios-ssn"],
        139,
        "NetBIOS session: Windows file sharing",
    ),
    svc(&["imap"], 143, "IMAP: mail folders"),
    svc(&["snmp"], 161, "SNMP: device management"),
    svc(&["irc-alt"], 194, "IRC (registered port)"),
    svc(
        &["ldap", "ils"],
        389,
        "LDAP; NetMeeting Internet Locator Server",
    ),
    svc(&["https"], 443, "HTTPS: secure web pages"),
    svc(
        &["microsoft-ds", "smb"],
        445,
        "SMB: Windows file sharing over TCP",
    ),
    svc(&["smtps"], 465, "SMTP over TLS (mail submission)"),
    svc(&["uls"], 522, "NetMeeting User Location Server"),
    svc(&["nntps"], 563, "NNTP over TLS"),
    svc(&["submission"], 587, "Mail submission"),
    svc(&["ldaps"], 636, "LDAP over TLS"),
    svc(&["rsync"], 873, "rsync"),
    svc(&["ftps-data"], 989, "FTP over TLS, data"),
    svc(&["ftps"], 990, "FTP over TLS, control"),
    svc(&["imaps"], 993, "IMAP over TLS"),
    svc(&["pop3s"], 995, "POP3 over TLS"),
    svc(&["socks"], 1080, "SOCKS proxy"),
    svc(&["openvpn"], 1194, "OpenVPN"),
    svc(&["mssql"], 1433, "Microsoft SQL Server"),
    svc(&["t120"], 1503, "T.120: NetMeeting data conferencing"),
    svc(&["h323"], 1720, "H.323 call setup (NetMeeting)"),
    svc(&["pptp"], 1723, "PPTP VPN"),
    svc(
        &["netmeeting-audio", "msiccp"],
        1731,
        "NetMeeting audio call control",
    ),
    svc(&["nfs"], 2049, "NFS"),
    svc(&["squid", "proxy"], 3128, "HTTP proxy (Squid, Portcullis)"),
    svc(&["mysql"], 3306, "MySQL"),
    svc(&["rdp", "ms-wbt-server"], 3389, "Remote Desktop"),
    svc(&["sip"], 5060, "SIP"),
    svc(&["sips"], 5061, "SIP over TLS"),
    svc(&["xmpp-client", "xmpp"], 5222, "XMPP (Jabber) clients"),
    svc(&["postgresql", "postgres"], 5432, "PostgreSQL"),
    svc(&["vnc"], 5900, "VNC remote desktop"),
    svc(&["irc"], 6667, "IRC chat"),
    svc(&["ircs"], 6697, "IRC over TLS"),
    svc(&["http-alt"], 8080, "HTTP, alternate port"),
    svc(&["https-alt"], 8443, "HTTPS, alternate port"),
    svc(&["git"], 9418, "git protocol"),
];

/// Looks a service up by name (case-insensitive).
pub fn service_by_name(name: &str) -> Option<&'static Service> {
    SERVICES
        .iter()
        .find(|s| s.names.iter().any(|n| n.eq_ignore_ascii_case(name)))
}

/// Looks a service up by port.
pub fn service_by_port(port: u16) -> Option<&'static Service> {
    SERVICES.iter().find(|s| s.port == port)
}

/// The canonical service name of a port, if the table knows it.
pub fn service_name(port: u16) -> Option<&'static str> {
    service_by_port(port).map(Service::name)
}

/// `port 25 (smtp)`, or `port 4711` for a port with no known name.
pub fn describe(port: u16) -> String {
    match service_name(port) {
        Some(name) => format!("port {port} ({name})"),
        None => format!("port {port}"),
    }
}

/// One entry of a `[ports]` list, as written: a number, a range or a service name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    /// `8080`
    Number(i64),
    /// `"1025-65535"`, `"https"` or `"8080"`
    Text(String),
}

/// Why a [`PortSpec`] is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortSpecError {
    /// A number outside 1-65535.
    #[error("port {0} is out of range (1-65535)")]
    OutOfRange(i64),
    /// A range whose start is above its end.
    #[error("range \"{0}\" is reversed (start above end)")]
    Reversed(String),
    /// A range with an end outside 1-65535.
    #[error("range \"{0}\" is out of range (ports are 1-65535)")]
    RangeOutOfRange(String),
    /// A name the service table does not know.
    #[error("unknown service name \"{0}\" (see \"Service names\" in the manual, docs/src/service-names.md)")]
    UnknownName(String),
    /// Empty text.
    #[error("empty port entry")]
    Empty,
}

impl PortSpec {
    /// The inclusive range of ports the entry stands for.
    pub fn range(&self) -> Result<(u16, u16), PortSpecError> {
        match self {
            PortSpec::Number(n) => {
                let port = checked_port(*n).ok_or(PortSpecError::OutOfRange(*n))?;
                Ok((port, port))
            }
            PortSpec::Text(text) => parse_text(text),
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Number(n) => write!(f, "{n}"),
            PortSpec::Text(t) => write!(f, "\"{t}\""),
        }
    }
}

impl From<u16> for PortSpec {
    fn from(port: u16) -> Self {
        PortSpec::Number(port.into())
    }
}

impl From<&str> for PortSpec {
    fn from(text: &str) -> Self {
        PortSpec::Text(text.to_owned())
    }
}

fn checked_port(n: i64) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

fn parse_text(text: &str) -> Result<(u16, u16), PortSpecError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(PortSpecError::Empty);
    }
    let looks_like_range = text.starts_with(|c: char| c.is_ascii_digit() || c == '-');
    if let Some((start, end)) = text.split_once('-').filter(|_| looks_like_range) {
        let bound = |s: &str| -> Result<i64, PortSpecError> {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 6 {
                return Err(PortSpecError::RangeOutOfRange(text.to_owned()));
            }
            s.parse::<i64>()
                .map_err(|_| PortSpecError::RangeOutOfRange(text.to_owned()))
        };
        let (start, end) = (bound(start)?, bound(end)?);
        let (Some(lo), Some(hi)) = (checked_port(start), checked_port(end)) else {
            return Err(PortSpecError::RangeOutOfRange(text.to_owned()));
        };
        if lo > hi {
            return Err(PortSpecError::Reversed(text.to_owned()));
        }
        return Ok((lo, hi));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = text.parse().unwrap_or(i64::MAX);
        let port = checked_port(n).ok_or(PortSpecError::OutOfRange(n))?;
        return Ok((port, port));
    }
    service_by_name(text)
        .map(|s| (s.port, s.port))
        .ok_or_else(|| PortSpecError::UnknownName(text.to_owned()))
}

/// A set of TCP ports, compiled from [`PortSpec`]s into a bitmap: membership is one load.
#[derive(Clone, PartialEq, Eq)]
pub struct PortSet {
    bits: Box<[u64; 1024]>,
}

impl PortSet {
    /// The empty set.
    pub fn empty() -> Self {
        PortSet {
            bits: Box::new([0; 1024]),
        }
    }

    /// Compiles specs into a set; the error names the first bad entry.
    pub fn from_specs(specs: &[PortSpec]) -> Result<Self, (PortSpec, PortSpecError)> {
        let mut set = PortSet::empty();
        for spec in specs {
            let (lo, hi) = spec.range().map_err(|e| (spec.clone(), e))?;
            set.insert_range(lo, hi);
        }
        Ok(set)
    }

    /// Adds the ports `lo..=hi`.
    pub fn insert_range(&mut self, lo: u16, hi: u16) {
        for port in lo..=hi {
            self.bits[usize::from(port / 64)] |= 1 << (port % 64);
        }
    }

    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        self.bits[usize::from(port / 64)] & (1 << (port % 64)) != 0
    }

    /// Whether every port of `self` is in `other`.
    pub fn is_subset(&self, other: &PortSet) -> bool {
        self.bits
            .iter()
            .zip(other.bits.iter())
            .all(|(a, b)| a & !b == 0)
    }

    /// Whether no port is in the set.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }

    /// The set as inclusive ranges, ascending.
    pub fn ranges(&self) -> Vec<(u16, u16)> {
        let mut out: Vec<(u16, u16)> = Vec::new();
        for port in 1..=u16::MAX {
            if !self.contains(port) {
                continue;
            }
            match out.last_mut() {
                Some((_, hi)) if *hi + 1 == port => *hi = port,
                _ => out.push((port, port)),
            }
        }
        out
    }
}

impl fmt::Debug for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PortSet[")?;
        for (i, (lo, hi)) in self.ranges().into_iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_to_ranges() {
        type Case = (PortSpec, Result<(u16, u16), PortSpecError>);
        let cases: &[Case] = &[
            (PortSpec::Number(80), Ok((80, 80))),
            (PortSpec::Number(65535), Ok((65535, 65535))),
            (PortSpec::Number(0), Err(PortSpecError::OutOfRange(0))),
            (
                PortSpec::Number(65536),
                Err(PortSpecError::OutOfRange(65536)),
            ),
            (PortSpec::Number(-1), Err(PortSpecError::OutOfRange(-1))),
            ("1025-65535".into(), Ok((1025, 65535))),
            (" 10 - 20 ".into(), Ok((10, 20))),
            ("7-7".into(), Ok((7, 7))),
            ("8080".into(), Ok((8080, 8080))),
            ("https".into(), Ok((443, 443))),
            ("HTTPS".into(), Ok((443, 443))),
            ("smtp".into(), Ok((25, 25))),
            ("ils".into(), Ok((389, 389))),
            (
                "20-10".into(),
                Err(PortSpecError::Reversed("20-10".to_owned())),
            ),
            (
                "0-10".into(),
                Err(PortSpecError::RangeOutOfRange("0-10".to_owned())),
            ),
            (
                "1-70000".into(),
                Err(PortSpecError::RangeOutOfRange("1-70000".to_owned())),
            ),
            (
                "a-b".into(),
                Err(PortSpecError::UnknownName("a-b".to_owned())),
            ),
            ("http-alt".into(), Ok((8080, 8080))),
            ("ftp-data".into(), Ok((20, 20))),
            (
                "10-x".into(),
                Err(PortSpecError::RangeOutOfRange("10-x".to_owned())),
            ),
            (
                "-5".into(),
                Err(PortSpecError::RangeOutOfRange("-5".to_owned())),
            ),
            ("70000".into(), Err(PortSpecError::OutOfRange(70000))),
            (
                "gopherx".into(),
                Err(PortSpecError::UnknownName("gopherx".to_owned())),
            ),
            ("".into(), Err(PortSpecError::Empty)),
        ];
        for (spec, want) in cases {
            assert_eq!(&spec.range(), want, "spec {spec}");
        }
    }

    #[test]
    fn article_ports_have_names() {
        let article = [
            (21, "ftp"),
            (23, "telnet"),
            (25, "smtp"),
            (80, "http"),
            (110, "pop3"),
            (139, "netbios"),
            (389, "ldap"),
            (443, "https"),
            (522, "uls"),
            (1503, "t120"),
            (1720, "h323"),
            (1731, "netmeeting-audio"),
        ];
        for (port, name) in article {
            assert_eq!(service_name(port), Some(name), "port {port}");
            assert_eq!(service_by_name(name).map(|s| s.port), Some(port));
        }
        for (name, port) in [
            ("ssh", 22),
            ("dns", 53),
            ("imap", 143),
            ("imaps", 993),
            ("pop3s", 995),
            ("smtps", 465),
            ("submission", 587),
            ("http-alt", 8080),
            ("https-alt", 8443),
        ] {
            assert_eq!(service_by_name(name).map(|s| s.port), Some(port), "{name}");
        }
    }

    #[test]
    fn table_is_ordered_by_port() {
        assert!(SERVICES.windows(2).all(|w| w[0].port < w[1].port));
    }

    #[test]
    fn table_has_unique_names_and_ports() {
        let mut names: Vec<String> = SERVICES
            .iter()
            .flat_map(|s| s.names.iter().map(|n| n.to_ascii_lowercase()))
            .collect();
        let count = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), count, "a service name appears twice");
        let mut ports: Vec<u16> = SERVICES.iter().map(|s| s.port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), SERVICES.len(), "a port appears twice");
    }

    #[test]
    fn port_set_membership_matches_specs() {
        let set = PortSet::from_specs(&["http".into(), "1025-65535".into()]).unwrap();
        assert!(set.contains(80));
        assert!(!set.contains(443));
        assert!(!set.contains(1024));
        assert!(set.contains(1025));
        assert!(set.contains(65535));
        assert!(!set.contains(0));
        assert_eq!(set.ranges(), vec![(80, 80), (1025, 65535)]);
        assert_eq!(format!("{set:?}"), "PortSet[80, 1025-65535]");
        let err = PortSet::from_specs(&[443.into(), "nope".into()]).unwrap_err();
        assert_eq!(err.0, PortSpec::from("nope"));
        assert!(PortSet::empty().is_empty());
    }

    #[test]
    fn describe_names_known_ports() {
        assert_eq!(describe(25), "port 25 (smtp)");
        assert_eq!(describe(4711), "port 4711");
    }
}
