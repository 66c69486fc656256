//! Validation problems, typed: the key at fault as a path of segments, the entry at fault
//! when there is one, and what is wrong. [`Problem`]'s `Display` is the message users read
//! (`ports.connect: entry "htps": unknown service name "htps" …`); nothing parses it back:
//! `super::locate` walks the key path in the parsed document, and `portcullis check` picks
//! its hints from the [`ProblemKind`].

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::core::auth::HtpasswdError;
use crate::core::ports::{PortSpec, PortSpecError};

use super::schema::MAX_WORKERS;

/// One step of a [`KeyPath`]: a table key, or an index into an array (0-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// `ports` in `ports.connect`.
    Key(String),
    /// `1` in `rules[1]` (0-based: the second rule).
    Index(usize),
}

impl From<&str> for Segment {
    fn from(key: &str) -> Self {
        Segment::Key(key.to_owned())
    }
}

impl From<usize> for Segment {
    fn from(index: usize) -> Self {
        Segment::Index(index)
    }
}

/// Where a value sits in the document: `["rules", 1, "ports"]`, `["timeouts", "connect"]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Segment>);

impl KeyPath {
    /// A path of table keys: `KeyPath::keys(["ports", "connect"])`.
    pub fn keys<const N: usize>(keys: [&str; N]) -> KeyPath {
        KeyPath(keys.iter().map(|k| Segment::from(*k)).collect())
    }

    /// A field of the `index`-th (0-based) `[[rules]]` table.
    pub fn rule(index: usize, field: &str) -> KeyPath {
        KeyPath(vec!["rules".into(), index.into(), field.into()])
    }

    /// The index of the rule this path is in, if it is in one.
    pub fn rule_index(&self) -> Option<usize> {
        match self.0.as_slice() {
            [Segment::Key(rules), Segment::Index(i), ..] if rules == "rules" => Some(*i),
            _ => None,
        }
    }

    /// The last key of the path (`ports` in `["rules", 1, "ports"]`).
    pub fn field(&self) -> &str {
        self.0
            .iter()
            .rev()
            .find_map(|s| match s {
                Segment::Key(k) => Some(k.as_str()),
                Segment::Index(_) => None,
            })
            .unwrap_or("")
    }
}

/// `ports.connect`, `rules[2].ports` (1-based, as messages count rules).
impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(k) if i == 0 => f.write_str(k)?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{}]", n + 1)?,
            }
        }
        Ok(())
    }
}

/// A line and column in a configuration text, both 1-based, the column in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// The line.
    pub line: usize,
    /// The column.
    pub column: usize,
}

/// Why `workers` is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkersError {
    /// `workers = 0`.
    #[error("0; give at least 1, or \"auto\"")]
    Zero,
    /// More than the most a configuration may ask for.
    #[error("{0} is more than {MAX_WORKERS}; give a smaller number, or \"auto\"")]
    TooMany(usize),
    /// A word other than `"auto"`.
    #[error("\"{0}\" is neither \"auto\" nor a number such as 2")]
    NotANumber(String),
}

/// Why a parent proxy's URL is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParentError {
    /// Not `http://…`.
    #[error("a parent proxy is written http://[user:password@]host:port")]
    NotHttp,
    /// The host and port are not valid.
    #[error("{0}")]
    Authority(String),
    /// `%` not followed by two hex digits, or not UTF-8 once decoded.
    #[error("the credentials are not valid percent-encoding")]
    Encoding,
    /// `user@host` without a password.
    #[error("credentials are written user:password")]
    NoPassword,
    /// The credentials make a header value that cannot be sent.
    #[error("the credentials cannot be sent")]
    Unsendable,
}

/// What is wrong, without the key it is wrong at.
#[derive(Debug)]
pub enum ProblemKind {
    /// `listen = []`.
    NoListenAddress,
    /// `clients.allow = []`.
    NoClients,
    /// `workers` is 0, too large, or a word other than `"auto"`.
    Workers(WorkersError),
    /// A port list is empty.
    NoPorts,
    /// A port list entry names a service the table does not know.
    UnknownServiceName {
        /// The entry as written.
        spec: PortSpec,
        /// The name (as the port table reports it).
        name: String,
    },
    /// Any other bad port list entry (out of range, reversed …).
    BadPortSpec {
        /// The entry as written.
        spec: PortSpec,
        /// Why.
        error: PortSpecError,
    },
    /// A timeout of zero.
    ZeroDuration,
    /// A limit below its least value.
    TooSmall(usize),
    /// A duration shorter than its least value (written as in the file).
    TooShort(&'static str),
    /// A value outside its range (both ends included).
    OutOfRange(usize, usize),
    /// `admin.listen` is neither an address nor `"off"`.
    BadAddress(String),
    /// `log.level` is not a level.
    BadLogLevel(String),
    /// A rate or size of `[shaping]` or `[[limits.rate]]` that does not parse (its words).
    BadRate(String),
    /// A `[[quotas]]` entry's `bytes`, `per` or `key` that is not acceptable (its words).
    BadBudget(String),
    /// `state.store` is not a `redis://` URL (the words say why).
    BadStore(String),
    /// `clients.names`: a name that is not one line of text.
    BadClientName(IpAddr),
    /// `instance`: empty, too long, `-` alone, or with characters other than letters, digits,
    /// `.`, `_` and `-`.
    BadInstance(String),
    /// `[log] syslog` and its companions: what is wrong, in full.
    BadSyslog(String),
    /// A host pattern that does not parse (the pattern parser's words).
    BadHostPattern(String),
    /// `pac.proxies`: an entry that is not `host:port`.
    NotHostPort(String),
    /// `pac.proxy_host`: not a host name or address.
    NotHostName(String),
    /// A file the configuration names cannot be read.
    UnreadableFile {
        /// The file, as opened.
        path: PathBuf,
        /// Why (the system's words).
        error: String,
    },
    /// `upstream.proxy = []`.
    NoParents,
    /// A parent proxy's URL.
    BadParent {
        /// The URL, its password masked.
        url: String,
        /// Why.
        error: ParentError,
    },
    /// `auth.realm` is empty or more than one line.
    BadRealm,
    /// `auth`: a cache, failure window or failure count of zero.
    ZeroAuthSetting,
    /// `auth.htpasswd` cannot be used.
    BadHtpasswd(HtpasswdError),
    /// A rule with an empty name.
    EmptyRuleName,
    /// A rule with the name of an earlier one.
    DuplicateRuleName,
    /// A rule condition that is an empty list.
    EmptyCondition,
    /// A rule with `users` but no `[auth]`.
    UsersWithoutAuth,
    /// A rule with `groups` but no `[auth.groups] program`.
    GroupsWithoutHelper,
    /// `[auth.groups] program` without a log-in to name the user (`htpasswd` or `program`).
    GroupsWithoutLogIn,
    /// A helper program that cannot be run (the words say why).
    BadHelper(String),
    /// A rule's `hosts_file` does not parse (the parser's words, with its line).
    BadHostsFile(String),
    /// A rule's `hosts_url` or `refresh` is wrong (the words say how).
    BadHostsUrl(String),
    /// A rule's `times` window that does not read (the words say how).
    BadTimes(String),
    /// `clock.timezone` names no zone of the time zone database.
    BadTimezone(String),
    /// `[tls]` is missing or its files do not make a certificate and key (the words say how).
    BadTls(String),
    /// A rule's method that is not a method name.
    BadMethod(String),
    /// `upstream.bind` lists two addresses of one family.
    BindFamilyTwice,
    /// `upstream.bind`: an unspecified or multicast address.
    NotUnicast(IpAddr),
    /// `dns.resolver` is neither `"builtin"` nor `"system"`.
    UnknownResolver(String),
    /// `dns.servers`: an entry that is not an address.
    BadDnsServer(String),
    /// `dns.servers` given with `resolver = "system"`, which asks the system's servers.
    ServersNeedBuiltin,
    /// `timeouts.connect_attempt` below what RFC 8305 allows.
    AttemptTooShort,
}

impl fmt::Display for ProblemKind {
    /// What is wrong, as it follows the key in a message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProblemKind::NoListenAddress => {
                f.write_str("the list is empty; give at least one address such as \"0.0.0.0:3128\"")
            }
            ProblemKind::NoClients => {
                f.write_str("the list is empty, so no client could use the proxy")
            }
            ProblemKind::Workers(e) => e.fmt(f),
            ProblemKind::NoPorts => {
                f.write_str("the list is empty; list at least one port, range or service name")
            }
            ProblemKind::UnknownServiceName { spec, name } => write!(
                f,
                "entry {spec}: {}",
                PortSpecError::UnknownName(name.clone())
            ),
            ProblemKind::BadPortSpec { spec, error } => write!(f, "entry {spec}: {error}"),
            ProblemKind::ZeroDuration => f.write_str("must be longer than zero"),
            ProblemKind::TooSmall(least) => write!(f, "must be at least {least}"),
            ProblemKind::TooShort(least) => write!(f, "must be at least {least}"),
            ProblemKind::OutOfRange(least, most) => {
                write!(f, "must be from {least} to {most}")
            }
            ProblemKind::BadAddress(text) => write!(
                f,
                "\"{text}\" is not an address such as \"127.0.0.1:3129\", or \"off\""
            ),
            ProblemKind::BadLogLevel(text) => write!(
                f,
                "\"{text}\" is not a level (error, warn, info, debug, trace)"
            ),
            ProblemKind::BadClientName(ip) => {
                write!(f, "the name of {ip} must be one line of text")
            }
            ProblemKind::BadInstance(text) => write!(
                f,
                "\"{text}\" is not an instance name: 1 to 64 letters, digits, '.', '_' or '-', but not '-' alone (reports count records without a name as -)"
            ),
            ProblemKind::BadHostPattern(e)
            | ProblemKind::BadHostsFile(e)
            | ProblemKind::BadHostsUrl(e)
            | ProblemKind::BadTimes(e)
            | ProblemKind::BadTimezone(e)
            | ProblemKind::BadTls(e)
            | ProblemKind::BadRate(e)
            | ProblemKind::BadSyslog(e)
            | ProblemKind::BadBudget(e)
            | ProblemKind::BadStore(e) => f.write_str(e),
            ProblemKind::NotHostPort(text) => write!(f, "\"{text}\" is not host:port"),
            ProblemKind::NotHostName(text) => {
                write!(f, "\"{text}\" is not a host name or address")
            }
            ProblemKind::UnreadableFile { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
            ProblemKind::NoParents => {
                f.write_str("the list is empty; leave the key out for no parent")
            }
            ProblemKind::BadParent { url, error } => write!(f, "\"{url}\": {error}"),
            ProblemKind::BadRealm => f.write_str("must be non-empty text on one line"),
            ProblemKind::ZeroAuthSetting => {
                f.write_str("cache, failure_window and max_failures must be above zero")
            }
            ProblemKind::BadHtpasswd(e) => e.fmt(f),
            ProblemKind::EmptyRuleName => f.write_str("the name is empty"),
            ProblemKind::DuplicateRuleName => f.write_str("another rule has the same name"),
            ProblemKind::EmptyCondition => f.write_str(
                "is an empty list, which matches nothing; leave the key out to match everything",
            ),
            ProblemKind::UsersWithoutAuth => {
                f.write_str("needs [auth] htpasswd or program, or no request would have a user")
            }
            ProblemKind::GroupsWithoutHelper => f.write_str(
                "needs [auth.groups] program (a Squid external ACL helper) to tell who is in a group",
            ),
            ProblemKind::GroupsWithoutLogIn => f.write_str(
                "needs [auth] htpasswd or program: groups are asked about logged-in users",
            ),
            ProblemKind::BadHelper(why) => f.write_str(why),
            ProblemKind::BadMethod(m) => write!(f, "\"{m}\" is not a method name"),
            ProblemKind::BindFamilyTwice => {
                f.write_str("give at most one IPv4 and one IPv6 address")
            }
            ProblemKind::NotUnicast(ip) => {
                write!(f, "{ip} is not an address of one interface")
            }
            ProblemKind::UnknownResolver(word) => {
                write!(f, "\"{word}\" is not a resolver (\"builtin\" or \"system\")")
            }
            ProblemKind::BadDnsServer(text) => write!(
                f,
                "\"{text}\" is not a server address such as \"192.0.2.53\" or \"[2001:db8::53]:53\""
            ),
            ProblemKind::ServersNeedBuiltin => f.write_str(
                "servers are asked by the builtin resolver only; with resolver = \"system\" the system's own are used",
            ),
            ProblemKind::AttemptTooShort => f.write_str(
                "must be at least 10ms (RFC 8305); 250ms is the usual delay between attempts",
            ),
        }
    }
}

/// One validation problem: where, which entry, and what is wrong.
#[derive(Debug)]
pub struct Problem {
    /// The key at fault.
    pub key: KeyPath,
    /// The offending array entry, table key or value, as written, when there is one.
    pub entry: Option<String>,
    /// What is wrong.
    pub kind: ProblemKind,
    /// The name of the rule the key is in (`rules[2] "mail"`), when it is in one.
    pub rule: Option<String>,
    /// Where the problem is in the text, once located (see `super::locate`).
    pub at: Option<Place>,
}

impl Problem {
    /// A problem at `key`, about no entry in particular.
    pub fn new(key: KeyPath, kind: ProblemKind) -> Problem {
        Problem {
            key,
            entry: None,
            kind,
            rule: None,
            at: None,
        }
    }

    /// The same problem, about `entry` (an array entry, a table key, or the value itself).
    pub fn entry(mut self, entry: impl Into<String>) -> Problem {
        self.entry = Some(entry.into());
        self
    }

    /// The same problem, in the rule named `name`.
    pub fn in_rule(mut self, name: &str) -> Problem {
        self.rule = Some(name.to_owned());
        self
    }

    /// `origin:line:column: problem`, or `origin: problem` when not located: how `check`
    /// and reload print it.
    pub fn located(&self, origin: &str) -> String {
        match self.at {
            Some(Place { line, column }) => format!("{origin}:{line}:{column}: {self}"),
            None => format!("{origin}: {self}"),
        }
    }
}

/// The message: the key, then what is wrong (`timeouts.connect: must be longer than zero`,
/// `rules[2] "mail": ports: entry "smtpx": …`).
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(index) = self.key.rule_index() else {
            return write!(f, "{}: {}", self.key, self.kind);
        };
        let n = index + 1;
        let field = self.key.field();
        let name = self.rule.as_deref().unwrap_or("");
        match &self.kind {
            ProblemKind::EmptyRuleName => write!(f, "rules[{n}]: {}", self.kind),
            ProblemKind::DuplicateRuleName => write!(f, "rules[{n}] \"{name}\": {}", self.kind),
            ProblemKind::EmptyCondition
            | ProblemKind::UsersWithoutAuth
            | ProblemKind::GroupsWithoutHelper => {
                write!(f, "rules[{n}] \"{name}\": {field} {}", self.kind)
            }
            kind => write!(f, "rules[{n}] \"{name}\": {field}: {kind}"),
        }
    }
}
