//! `portcullis check`: validates a configuration the way the proxy does at start-up and on
//! reload, prints the effective configuration in a few lines, then every lint warning.
//!
//! Errors name the file, line and column (`FILE:LINE:COLUMN: problem`): toml's parse errors
//! carry them, and [`crate::config::load()`] places validation problems. Each error
//! says what would be valid; unknown service names get the close names from the table.
//! Validation and lint are the proxy's own ([`Config::validate`], `crate::config::lint::lint`);
//! this module only words the results. It reads the files the configuration names
//! (`htpasswd`, `hosts_file`, `pages.dir`), and opens no socket.

use std::fmt::Write;
use std::path::Path;

use crate::config::load::load_text;
use crate::config::{
    load, Config, ConfigError, Loaded, ProblemKind, Purpose, RuleConfig, Settings, Source,
};
use crate::core::policy::{Action, Rule};
use crate::core::ports::{PortSet, SERVICES};

/// Exit status: the configuration is valid (and, under `--strict`, draws no warning).
pub const VALID: u8 = 0;
/// Exit status: the configuration is invalid, or cannot be read.
pub const INVALID: u8 = 1;
/// Exit status under `--strict`: valid, with warnings.
pub const WARNINGS: u8 = 2;

/// What `portcullis check` prints, and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The summary and the warnings.
    pub stdout: String,
    /// The errors.
    pub stderr: String,
    /// [`VALID`], [`INVALID`] or [`WARNINGS`].
    pub code: u8,
}

/// Checks the file at `path`, or the built-in defaults when there is none.
pub fn run(path: Option<&Path>, strict: bool) -> Outcome {
    let source = Source {
        file: path.map(Path::to_path_buf),
        listen: Vec::new(),
    };
    outcome(load(&source, Purpose::Check), strict)
}

/// How long a helper must stay up after it starts for `check` to call it healthy.
const HELPER_TRIAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts a helper program once, with nothing to read yet: it must still be running after
/// [`HELPER_TRIAL`] (helpers wait for requests on stdin). It is then stopped.
fn try_helper(command: &[String]) -> Result<(), String> {
    use std::process::{Command, Stdio};
    let (program, args) = command.split_first().ok_or("no program")?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program} cannot be started: {e}"))?;
    let began = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if began.elapsed() >= HELPER_TRIAL => break None,
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(25)),
            Err(e) => return Err(format!("{program}: {e}")),
        }
    };
    match status {
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Ok(())
        }
        Some(status) => {
            let mut said = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                use std::io::Read;
                let _ = (&mut stderr).take(4096).read_to_string(&mut said);
            }
            let said = said.lines().next().unwrap_or("").trim().to_owned();
            Err(format!(
                "{program} ended at once ({status}){}: the proxy would start it again and again, and log-ins through it would fail",
                if said.is_empty() { String::new() } else { format!(", saying {said:?}") }
            ))
        }
    }
}

/// Checks configuration `text`; `origin` names it in messages, and files it names are read
/// relative to its directory.
pub fn check_text(text: &str, origin: &str, strict: bool) -> Outcome {
    outcome(
        load_text(text.to_owned(), origin, &[], Purpose::Check),
        strict,
    )
}

/// The outcome of loading: the summary and warnings, or the errors.
fn outcome(loaded: Result<Loaded, ConfigError>, strict: bool) -> Outcome {
    let invalid = |stderr: String| Outcome {
        stdout: String::new(),
        stderr,
        code: INVALID,
    };
    match loaded {
        Ok(Loaded {
            config,
            settings,
            origin,
            ..
        }) => {
            let mut warnings = crate::config::lint::lint(&config, &settings);
            // Where the check runs is, most often, where the proxy will: an address this
            // machine lacks would stop the start (binding succeeds only on one it has).
            for ip in &settings.bind {
                if std::net::UdpSocket::bind(std::net::SocketAddr::new(*ip, 0)).is_err() {
                    warnings.push(format!(
                        "upstream.bind: {ip} is not an address of this machine: the proxy would not start here with this file"
                    ));
                }
            }
            // Each helper program: started once, it must stay up (it waits for requests).
            let mut helpers_seen = Vec::new();
            for spec in settings
                .auth
                .iter()
                .flat_map(|a| a.program.iter().chain(&a.groups))
            {
                let key = match spec.name {
                    "groups" => "auth.groups.program",
                    _ => "auth.program",
                };
                match try_helper(&spec.command) {
                    Ok(()) => helpers_seen.push(format!(
                        "  {key}: {} starts and stays up",
                        spec.command.first().map_or("", String::as_str)
                    )),
                    Err(why) => warnings.push(format!("{key}: {why}")),
                }
            }
            let mut stdout = format!("{origin}: valid configuration\n\n");
            stdout.push_str(&summary(&config, &settings));
            stdout.push('\n');
            // Each block list: entries loaded, lines skipped and the first of them (a
            // downloaded list as its copy on disk: check fetches nothing).
            if !helpers_seen.is_empty() {
                stdout.push_str("helpers:\n");
                for line in &helpers_seen {
                    let _ = writeln!(stdout, "{line}");
                }
                stdout.push('\n');
            }
            if !settings.lists.is_empty() {
                stdout.push_str("block lists:\n");
                for line in settings.lists.iter().flat_map(|l| l.lines()) {
                    let _ = writeln!(stdout, "  {line}");
                }
                stdout.push('\n');
            }
            if warnings.is_empty() {
                stdout.push_str("warnings: none\n");
            }
            for warning in &warnings {
                let _ = writeln!(stdout, "warning: {warning}");
            }
            let code = if strict && !warnings.is_empty() {
                WARNINGS
            } else {
                VALID
            };
            Outcome {
                stdout,
                stderr: String::new(),
                code,
            }
        }
        Err(ConfigError::Read { path, error }) => {
            invalid(format!("{path}: cannot read the configuration: {error}\n"))
        }
        Err(ConfigError::Parse { origin, message }) => invalid(format!(
            "{}{origin}: invalid configuration: the file is not valid TOML for Portcullis\n",
            parse_error(&origin, &message)
        )),
        Err(ConfigError::Invalid { origin, problems }) => {
            let mut stderr = String::new();
            for problem in &problems {
                let _ = writeln!(stderr, "{}", problem.located(&origin));
                if let Some(hint) = hint(&problem.kind) {
                    let _ = writeln!(stderr, "  hint: {hint}");
                }
            }
            let count = problems.len();
            let _ = writeln!(
                stderr,
                "{origin}: invalid configuration: {count} problem{}",
                if count == 1 { "" } else { "s" }
            );
            invalid(stderr)
        }
        Err(other) => invalid(format!("{other}\n")),
    }
}

/// toml's message (`TOML parse error at line 4, column 11`, the line with a caret, then what
/// is wrong) as `FILE:4:11: what is wrong`, the caret lines below it.
fn parse_error(origin: &str, message: &str) -> String {
    let mut lines = message.lines();
    let first = lines.next().unwrap_or("");
    let place = first
        .strip_prefix("TOML parse error at line ")
        .and_then(|rest| rest.split_once(", column "))
        .and_then(|(line, column)| {
            Some((line.parse::<usize>().ok()?, column.parse::<usize>().ok()?))
        });
    let Some((line, column)) = place else {
        return format!("{origin}: {message}\n");
    };
    let (snippet, words): (Vec<&str>, Vec<&str>) = lines.partition(|l| {
        let t = l.trim_start();
        t.starts_with('|')
            || t.split_once(" |")
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    let what = words
        .iter()
        .map(|w| w.trim())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let mut out = format!("{origin}:{line}:{column}: {what}\n");
    for l in snippet {
        let _ = writeln!(out, "  {l}");
    }
    out
}

/// What would be valid, where the problem's own words do not say it.
pub fn hint(kind: &ProblemKind) -> Option<String> {
    match kind {
        ProblemKind::UnknownServiceName { name, .. } => {
            let close = close_service_names(name);
            Some(if close.is_empty() {
                let names: Vec<&str> = SERVICES.iter().map(|s| s.name()).collect();
                format!(
                    "no known service has a close name; an entry is a port (8080), a range (\"8000-8100\") or one of: {}",
                    names.join(", ")
                )
            } else {
                let quoted: Vec<String> = close.iter().map(|n| format!("\"{n}\"")).collect();
                format!("did you mean {}?", or_list(&quoted))
            })
        }
        ProblemKind::ZeroDuration => {
            Some("write a duration such as \"10s\", \"2m\" or \"1h 30m\"".to_owned())
        }
        _ => None,
    }
}

/// Up to four service names close to `name`, closest first: within edit distance 2 (1 for
/// names of four letters or fewer), or one a prefix of the other (`smtpx` → `smtp`).
pub fn close_service_names(name: &str) -> Vec<&'static str> {
    let name = name.trim().to_ascii_lowercase();
    // Two edits turn most four-letter names into each other: short names get one.
    let limit = if name.chars().count() <= 4 { 1 } else { 2 };
    let mut close: Vec<(usize, &'static str)> = SERVICES
        .iter()
        .flat_map(|s| s.names.iter().copied())
        .filter_map(|known| {
            let distance = edit_distance(known, &name);
            let prefix = known.len().min(name.len()) >= 3
                && (known.starts_with(&name) || name.starts_with(known));
            (distance <= limit || prefix).then_some((distance, known))
        })
        .collect();
    close.sort();
    close.into_iter().take(4).map(|(_, n)| n).collect()
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// The effective configuration, a line or a few per section.
pub fn summary(config: &Config, settings: &Settings) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "{key:<15}{value}");
    };
    let policy = &settings.policy;
    line("listen", join(config.listen.iter()));
    let threads = match settings.workers {
        1 => "1 thread".to_owned(),
        n => format!("{n} threads"),
    };
    line(
        "workers",
        match &config.workers {
            crate::config::Workers::Count(_) => threads,
            crate::config::Workers::Named(_) => {
                format!("{threads} (auto: half the processors)")
            }
        },
    );
    let mut clients = join(policy.clients.iter());
    if !settings.client_names.is_empty() {
        let _ = write!(clients, "; {} named", settings.client_names.len());
    }
    line("clients.allow", clients);
    line("ports.http", ports(&policy.http_ports));
    line("ports.connect", ports(&policy.connect_ports));
    line(
        "destinations",
        format!(
            "loopback {}; unspecified, link-local and metadata addresses and the proxy's own listeners always refused",
            if policy.allow_loopback {
                "allowed (allow_loopback = true)"
            } else {
                "refused"
            }
        ),
    );
    let t = &settings.timeouts;
    let d = |d: std::time::Duration| humantime::format_duration(d).to_string();
    line(
        "timeouts",
        format!(
            "connect {} (attempts {} apart), request_header {}, keep_alive {}, request_body {}, response {}, tunnel_idle {}, shutdown_grace {}",
            d(t.connect),
            d(t.connect_attempt),
            d(t.request_header),
            d(t.keep_alive),
            d(t.request_body),
            d(t.response),
            d(t.tunnel_idle),
            d(t.shutdown_grace)
        ),
    );
    let l = &settings.limits;
    line(
        "limits",
        format!(
            "{} connections, {} per client, {} per network (/{}, /{}); quiet tunnels make room after {}; listen backlog {}; request head {} bytes, request line {} bytes, {} header fields",
            l.max_connections,
            l.max_connections_per_client,
            l.max_connections_per_network
                .map_or("no limit".to_owned(), |n| n.to_string()),
            l.network_prefix_v4,
            l.network_prefix_v6,
            d(l.idle_tunnel_after),
            l.listen_backlog,
            l.max_header_bytes,
            l.max_request_line,
            l.max_headers
        ),
    );
    line(
        "auth",
        match &settings.auth {
            Some(auth) => {
                let mut sources = Vec::new();
                if let (Some(users), Some(path)) = (&auth.users, &config.auth.htpasswd) {
                    let n = users.users().count();
                    sources.push(format!(
                        "{n} user{} in {}",
                        if n == 1 { "" } else { "s" },
                        path.display()
                    ));
                }
                if let Some(program) = &auth.program {
                    sources.push(format!(
                        "{}the helper {} ({} processes, concurrency {}, timeout {})",
                        if auth.users.is_some() {
                            "others by "
                        } else {
                            ""
                        },
                        program.command.first().map_or("", String::as_str),
                        program.children,
                        program.concurrency,
                        humantime::format_duration(program.timeout)
                    ));
                }
                if let Some(groups) = &auth.groups {
                    sources.push(format!(
                        "groups by the helper {} (answers kept {})",
                        groups.command.first().map_or("", String::as_str),
                        humantime::format_duration(auth.config.groups.ttl)
                    ));
                }
                format!("on: {}, realm {:?}", sources.join("; "), auth.config.realm)
            }
            None => "off: no log-in asked".to_owned(),
        },
    );
    if policy.rules.is_empty() {
        line("rules", "none: the port lists decide".to_owned());
    } else {
        line(
            "rules",
            format!(
                "{}, in order, first match wins, before the port lists:",
                policy.rules.len()
            ),
        );
        for (i, (rule, written)) in policy.rules.iter().zip(&config.rules).enumerate() {
            line("", format!("{}. {}", i + 1, describe_rule(rule, written)));
        }
        if policy.rules.iter().any(|r| r.times.is_some()) {
            line("", format!("times are read in {}", policy.clock.name()));
        }
    }
    let (destination, format) = &settings.access_log;
    let access = match destination {
        crate::observe::log::Destination::Stdout => "access log to standard output".to_owned(),
        crate::observe::log::Destination::Off => "access log off".to_owned(),
        crate::observe::log::Destination::File(path) => format!("access log to {}", path.display()),
    };
    line(
        "log",
        format!(
            "{access}, {} format; diagnostics at {}",
            format!("{format:?}").to_lowercase(),
            config.log.level
        ),
    );
    line(
        "admin",
        match &settings.admin {
            Some((addr, allow)) => format!(
                "{addr} (/metrics, /status, /healthz), for {}",
                join(allow.iter())
            ),
            None => "off".to_owned(),
        },
    );
    let pac = &settings.pac;
    line(
        "pac",
        format!(
            "/proxy.pac and /wpad.dat: direct {}; proxies {}; proxy_host {}{}",
            if pac.direct.is_empty() {
                "plain host names only".to_owned()
            } else {
                join(pac.direct.iter())
            },
            if pac.proxies.is_empty() {
                "this proxy".to_owned()
            } else {
                pac.proxies.join(", ")
            },
            pac.proxy_host
                .as_deref()
                .unwrap_or("the address each request arrives on"),
            if pac.socks {
                "; SOCKS5 entries after the PROXY ones"
            } else {
                ""
            }
        ),
    );
    let dns = &settings.dns;
    line(
        "dns",
        match dns.resolver {
            crate::config::ResolverKind::System => {
                "the system's resolver (getaddrinfo), no cache of the proxy's".to_owned()
            }
            crate::config::ResolverKind::Builtin => format!(
                "builtin resolver asking {}; cache {} answers, found ones at most {}, missing ones at most {}",
                if dns.servers.is_empty() {
                    "the servers of /etc/resolv.conf".to_owned()
                } else {
                    join(dns.servers.iter())
                },
                dns.cache_size,
                d(dns.max_ttl),
                d(dns.negative_ttl)
            ),
        },
    );
    line(
        "outbound",
        if settings.bind.is_empty() {
            "from the address the system chooses".to_owned()
        } else {
            format!("from {}", join(settings.bind.iter()))
        },
    );
    line(
        "upstream",
        match &settings.upstream {
            None => "none: the proxy connects to destinations itself".to_owned(),
            Some(u) => {
                let parents: Vec<String> = u
                    .parents
                    .iter()
                    .map(|p| match p.authorization {
                        Some(_) => format!("{} (with credentials)", p.name),
                        None => p.name.clone(),
                    })
                    .collect();
                let direct = if config.upstream.direct.is_empty() {
                    "none".to_owned()
                } else {
                    config.upstream.direct.join(", ")
                };
                format!(
                    "parents {}, tried in order; direct: {direct}",
                    parents.join(", ")
                )
            }
        },
    );
    out
}

/// `"mail" allow: clients 192.168.1.10/32; ports 25 (smtp); methods CONNECT`
fn describe_rule(rule: &Rule, written: &RuleConfig) -> String {
    let written_file = written.hosts_file.as_deref();
    let mut conditions = Vec::new();
    if let Some(clients) = &rule.clients {
        conditions.push(format!("clients {}", join(clients.iter())));
    }
    if let Some(users) = &rule.users {
        conditions.push(format!("users {}", users.join(", ")));
    }
    if let Some(groups) = &rule.groups {
        conditions.push(format!("groups {}", groups.join(", ")));
    }
    if let Some(hosts) = &rule.hosts {
        let written_hosts = written.hosts.as_deref().unwrap_or_default();
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        let text = match (written_hosts.len(), written_file) {
            (0, Some(file)) => format!(
                "hosts from {} ({} pattern{})",
                file.display(),
                hosts.len(),
                plural(hosts.len())
            ),
            (n, file) => {
                let mut text = if n <= 6 {
                    format!("hosts {}", written_hosts.join(", "))
                } else {
                    format!("hosts: {n} patterns")
                };
                if let Some(file) = file {
                    let _ = write!(text, " and those in {}", file.display());
                }
                text
            }
        };
        conditions.push(text);
    }
    if let Some(list) = &rule.list {
        conditions.push(format!(
            "hosts from {} ({} in force, fetched every {})",
            list.url,
            list.set().len(),
            humantime::format_duration(list.refresh)
        ));
    }
    if let Some(ports_set) = &rule.ports {
        conditions.push(format!("ports {}", ports(ports_set)));
    }
    if let Some(methods) = &rule.methods {
        conditions.push(format!("methods {}", methods.join(", ")));
    }
    if let Some(times) = &rule.times {
        let cut = if rule.times_cut {
            "; tunnels cut when a window turns them away (times_cut)"
        } else {
            ""
        };
        conditions.push(format!("times {times}{cut}"));
    }
    let action = match rule.action {
        Action::Allow => "allow",
        Action::Deny => "deny",
    };
    if conditions.is_empty() {
        format!("\"{}\" {action}: every request", rule.name)
    } else {
        format!("\"{}\" {action}: {}", rule.name, conditions.join("; "))
    }
}

/// `80 (http), 1025-65535`; a range names the known services in it when they are few.
pub fn ports(set: &PortSet) -> String {
    let ranges = set.ranges();
    if ranges.is_empty() {
        return "none".to_owned();
    }
    ranges
        .iter()
        .map(|&(lo, hi)| {
            let named: Vec<&str> = SERVICES
                .iter()
                .filter(|s| (lo..=hi).contains(&s.port))
                .map(|s| s.name())
                .collect();
            let span = if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            };
            if !named.is_empty() && named.len() <= 4 {
                format!("{span} ({})", named.join(", "))
            } else {
                span
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn join<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let all: Vec<String> = items.map(|i| i.to_string()).collect();
    if all.is_empty() {
        "none".to_owned()
    } else {
        all.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_come_from_the_kind_of_problem() {
        use crate::config::{ParentError, WorkersError};
        use crate::core::ports::{PortSpec, PortSpecError};
        let unknown = |name: &str| ProblemKind::UnknownServiceName {
            spec: PortSpec::Text(name.to_owned()),
            name: name.to_owned(),
        };
        assert_eq!(
            hint(&unknown("htps")).unwrap(),
            "did you mean \"ftps\" or \"https\"?"
        );
        assert!(hint(&unknown("no-such-service"))
            .unwrap()
            .starts_with("no known service has a close name; an entry is a port (8080)"));
        assert_eq!(
            hint(&ProblemKind::ZeroDuration).unwrap(),
            "write a duration such as \"10s\", \"2m\" or \"1h 30m\""
        );
        // The others say what would be valid in their own words.
        for kind in [
            ProblemKind::NoListenAddress,
            ProblemKind::NoClients,
            ProblemKind::Workers(WorkersError::Zero),
            ProblemKind::NoPorts,
            ProblemKind::BadPortSpec {
                spec: PortSpec::Number(0),
                error: PortSpecError::OutOfRange(0),
            },
            ProblemKind::TooSmall(8),
            ProblemKind::BadAddress("x".into()),
            ProblemKind::BadLogLevel("loud".into()),
            ProblemKind::BadRate("x".into()),
            ProblemKind::BadInstance("a b".into()),
            ProblemKind::BadSyslog("x".into()),
            ProblemKind::BadClientName("10.0.0.1".parse().unwrap()),
            ProblemKind::BadHostPattern("bad".into()),
            ProblemKind::NotHostPort("x".into()),
            ProblemKind::NotHostName("x y".into()),
            ProblemKind::UnreadableFile {
                path: "x".into(),
                error: "gone".into(),
            },
            ProblemKind::NoParents,
            ProblemKind::BadParent {
                url: "x".into(),
                error: ParentError::NotHttp,
            },
            ProblemKind::BadRealm,
            ProblemKind::ZeroAuthSetting,
            ProblemKind::EmptyRuleName,
            ProblemKind::DuplicateRuleName,
            ProblemKind::EmptyCondition,
            ProblemKind::UsersWithoutAuth,
            ProblemKind::BadHostsFile("x".into()),
            ProblemKind::BadMethod("G_T".into()),
            ProblemKind::BindFamilyTwice,
            ProblemKind::NotUnicast("0.0.0.0".parse().unwrap()),
            ProblemKind::UnknownResolver("x".into()),
            ProblemKind::BadDnsServer("x".into()),
            ProblemKind::ServersNeedBuiltin,
            ProblemKind::AttemptTooShort,
        ] {
            assert_eq!(hint(&kind), None, "{kind:?}");
        }
    }

    #[test]
    fn check_reads_files_and_defaults() {
        let out = run(None, false);
        assert_eq!(out.code, VALID, "{out:?}");
        assert!(out
            .stdout
            .starts_with("<built-in defaults>: valid configuration\n"));
        let out = run(Some(Path::new("/nonexistent/p.toml")), false);
        assert_eq!(out.code, INVALID);
        assert!(
            out.stderr
                .starts_with("/nonexistent/p.toml: cannot read the configuration: "),
            "{}",
            out.stderr
        );
        // Check, unlike a reload, takes a file with no settings for the defaults.
        let out = check_text("# nothing yet\n", "c.toml", false);
        assert_eq!(out.code, VALID, "{out:?}");
    }

    #[test]
    fn check_reports_problems_with_line_column_and_hints() {
        let text = "listen = [\"127.0.0.1:1\"]\n[ports]\nhttp = [80]\nconnect = [\"no-such-service\", \"htps\"]\n";
        let out = check_text(text, "bad.toml", false);
        assert_eq!(out.code, INVALID);
        assert!(out.stdout.is_empty());
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert!(
            lines[0].starts_with(
                "bad.toml:4:12: ports.connect: entry \"no-such-service\": unknown service name"
            ),
            "{}",
            out.stderr
        );
        assert!(lines[1].starts_with("  hint: no known service has a close name; an entry is a port (8080), a range (\"8000-8100\") or one of: ftp-data, ftp, ssh"), "{}", out.stderr);
        assert!(
            lines[2].starts_with("bad.toml:4:31: ports.connect: entry \"htps\""),
            "{}",
            out.stderr
        );
        assert!(
            lines[3].starts_with("  hint: did you mean ") && lines[3].contains("\"https\""),
            "{}",
            out.stderr
        );
        assert_eq!(lines[4], "bad.toml: invalid configuration: 2 problems");

        let out = check_text("[ports]\nhttp = [80\nconnect = 5\n", "p.toml", false);
        assert_eq!(out.code, INVALID);
        assert!(out.stderr.starts_with("p.toml:3:1: "), "{}", out.stderr);
        assert!(out.stderr.contains("expected `,`"), "{}", out.stderr);
        let out = check_text("[ports]\nhtp = [80]\n", "p.toml", false);
        assert!(
            out.stderr
                .starts_with("p.toml:2:1: unknown field `htp`, expected `http` or `connect`"),
            "{}",
            out.stderr
        );
    }

    #[test]
    fn check_summarizes_and_warns() {
        let out = check_text("", "empty.toml", true);
        assert_eq!(out.code, VALID, "{out:?}");
        assert!(out.stdout.starts_with("empty.toml: valid configuration\n"));
        for fragment in [
            "listen         0.0.0.0:3128\n",
            " (auto: half the processors)\n",
            "ports.http     80 (http), 1025-65535\n",
            "ports.connect  443 (https)\n",
            "auth           off",
            "rules          none",
            "admin          127.0.0.1:3129",
            "warnings: none\n",
        ] {
            assert!(
                out.stdout.contains(fragment),
                "{fragment:?} in\n{}",
                out.stdout
            );
        }
        let text = "[clients]\nallow = [\"0.0.0.0/0\"]\n[ports]\nconnect = [\"https\", \"20-23\"]\n\
                    [[rules]]\nname = \"mail\"\nclients = [\"192.168.1.10\"]\nports = [\"smtp\", \"submission\"]\nmethods = [\"CONNECT\"]\naction = \"allow\"\n\
                    [upstream]\nproxy = \"http://bob:hunter2@parent.lan:8080\"\n";
        let out = check_text(text, "open.toml", true);
        assert_eq!(out.code, WARNINGS, "{out:?}");
        for fragment in [
            "ports.connect  20-23 (ftp-data, ftp, ssh, telnet), 443 (https)\n",
            "1. \"mail\" allow: clients 192.168.1.10/32; ports 25 (smtp), 587 (submission); methods CONNECT\n",
            "parents parent.lan:8080 (with credentials)",
            "warning: open proxy",
            "warning: SMTP (port 25) is reachable through CONNECT by rule \"mail\"",
        ] {
            assert!(out.stdout.contains(fragment), "{fragment:?} in\n{}", out.stdout);
        }
        assert!(!out.stdout.contains("hunter2"));
        assert_eq!(check_text(text, "open.toml", false).code, VALID);
    }

    #[test]
    fn dns_and_outbound_settings_are_checked_summarized_and_warned_about() {
        let text = "[timeouts]\nconnect_attempt = \"5ms\"\n\
                    [upstream]\nbind = [\"192.0.2.1\", \"192.0.2.2\", \"ff02::1\"]\n\
                    [dns]\nresolver = \"systme\"\nservers = [\"dns.example\", \"10.0.0.1:53\"]\n\
                    cache_size = 0\nmax_ttl = \"0s\"\n";
        let out = check_text(text, "dns.toml", false);
        assert_eq!(out.code, INVALID);
        for line in [
            "dns.toml:2:1: timeouts.connect_attempt: must be at least 10ms (RFC 8305); 250ms is the usual delay between attempts",
            "dns.toml:4:22: upstream.bind: give at most one IPv4 and one IPv6 address",
            "dns.toml:4:35: upstream.bind: ff02::1 is not an address of one interface",
            "dns.toml:6:12: dns.resolver: \"systme\" is not a resolver (\"builtin\" or \"system\")",
            "dns.toml:7:12: dns.servers: \"dns.example\" is not a server address such as \"192.0.2.53\" or \"[2001:db8::53]:53\"",
            "dns.toml:8:1: dns.cache_size: must be at least 1",
            "dns.toml:9:1: dns.max_ttl: must be longer than zero",
            "dns.toml: invalid configuration: 7 problems",
        ] {
            assert!(out.stderr.lines().any(|l| l == line), "{line}\nin\n{}", out.stderr);
        }
        let out = check_text(
            "[dns]\nresolver = \"system\"\nservers = [\"10.0.0.1\"]\n",
            "s.toml",
            false,
        );
        assert!(
            out.stderr.starts_with(
                "s.toml:3:1: dns.servers: servers are asked by the builtin resolver only"
            ),
            "{}",
            out.stderr
        );

        let text = "[upstream]\nbind = [\"127.0.0.1\", \"2001:db8::1\"]\n\
                    [dns]\nservers = [\"192.0.2.53\", \"[2001:db8::53]:5353\"]\n";
        let out = check_text(text, "ok.toml", true);
        assert_eq!(out.code, WARNINGS, "{out:?}");
        for fragment in [
            "dns            builtin resolver asking 192.0.2.53:53, [2001:db8::53]:5353; cache 4096 answers, found ones at most 1h, missing ones at most 30s\n",
            "outbound       from 127.0.0.1, 2001:db8::1\n",
            "connect 10s (attempts 250ms apart)",
            "warning: upstream.bind: 2001:db8::1 is not an address of this machine",
        ] {
            assert!(out.stdout.contains(fragment), "{fragment:?} in\n{}", out.stdout);
        }
        assert!(
            !out.stdout.contains("127.0.0.1 is not an address"),
            "{}",
            out.stdout
        );
        let out = check_text("[dns]\nresolver = \"system\"\n", "sys.toml", false);
        assert!(
            out.stdout
                .contains("dns            the system's resolver (getaddrinfo)"),
            "{}",
            out.stdout
        );
    }

    #[test]
    fn check_finds_close_service_names() {
        let cases: &[(&str, &[&str])] = &[
            ("htps", &["https", "ftps"]),
            ("smtpx", &["smtp", "smtps"]),
            ("HTTPS-ALTT", &["https-alt"]),
            ("no-such-service", &[]),
            ("imap4", &["imap", "imaps"]),
        ];
        for (name, want) in cases {
            let got = close_service_names(name);
            for w in *want {
                assert!(got.contains(w), "{name}: {got:?}");
            }
            if want.is_empty() {
                assert!(got.is_empty(), "{name}: {got:?}");
            }
        }
    }
}
