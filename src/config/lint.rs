//! Start-up lint: configurations that are valid but probably not what the owner meant.
//!
//! Printed as warnings when the proxy starts (and by a `check` command later): an open proxy,
//! SMTP reachable through CONNECT, Happy Eyeballs switched off by its timeouts, a rule that can never match because an earlier rule
//! matches everything it would, a rule with no conditions, and a TLS certificate that has
//! expired, is not valid yet or ends within 30 days. Pure but for the clock, read once for
//! the certificate's dates: reads the configuration and its validated settings, returns one
//! line per finding.

use ipnet::IpNet;

use crate::config::{Config, RuleConfig, Settings};
use crate::core::hosts::HostPattern;
use crate::core::policy::{Action, Rule, SOCKS_METHODS};

/// Everything worth a warning, one line each.
pub fn lint(config: &Config, settings: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    let policy = &settings.policy;
    // Block lists with lines that gave no entry, or downloaded lists with no copy yet.
    for list in &settings.lists {
        if let Some(why) = &list.missing {
            out.push(format!("rule \"{}\": {}: {why}", list.rule, list.what));
        } else if let Some(first) = list.first_skipped.first() {
            out.push(format!(
                "rule \"{}\": {}: {} line(s) skipped, the first at {first}",
                list.rule, list.what, list.skipped
            ));
        }
    }

    let exposed: Vec<String> = config
        .listen
        .iter()
        .filter(|a| !a.ip().is_loopback())
        .map(|a| a.to_string())
        .collect();
    let public: Vec<IpNet> = policy
        .clients
        .iter()
        .filter(|net| !is_private_network(net))
        .copied()
        .collect();
    if !exposed.is_empty() && settings.auth.is_none() {
        if policy.clients.iter().any(|n| n.prefix_len() == 0) {
            out.push(format!(
                "open proxy: listening on {} with clients.allow covering every address and no [auth]: anyone who can reach the port can use this proxy",
                exposed.join(", ")
            ));
        } else if !public.is_empty() {
            out.push(format!(
                "clients.allow includes public addresses ({}) and there is no [auth]: hosts on the internet may use this proxy",
                join(&public)
            ));
        }
    }

    let t = &settings.timeouts;
    if t.connect_attempt >= t.connect {
        out.push(format!(
            "timeouts.connect_attempt ({}) is not shorter than timeouts.connect ({}): only the first address of a name is ever tried, so a dual-stack name whose IPv6 is broken fails",
            humantime::format_duration(t.connect_attempt),
            humantime::format_duration(t.connect)
        ));
    }

    if policy.connect_ports.contains(25) {
        out.push(
            "SMTP (port 25) is reachable through CONNECT (ports.connect): any client could send mail, or spam, through this proxy".to_owned(),
        );
    }
    let socks = &settings.socks;
    let (socks_list, socks_key) = match &policy.socks_ports {
        Some(ports) => (ports, "socks.ports"),
        None => (&policy.connect_ports, "ports.connect"),
    };
    if socks.enabled && settings.auth.is_none() && socks_list.contains(25) {
        out.push(format!(
            "SMTP (port 25) is reachable through SOCKS ({socks_key}) without a log-in: any client could send mail, or spam, through this proxy; leave 25 out of {socks_key}, or turn on [auth]"
        ));
    }
    for rule in &policy.rules {
        let names = |method: &dyn Fn(&str) -> bool| {
            rule.methods
                .as_ref()
                .is_none_or(|m| m.iter().any(|m| method(m)))
        };
        let connect = names(&|m| m == "CONNECT");
        let through_socks = socks.enabled && names(&|m| SOCKS_METHODS.contains(&m));
        let smtp = rule.ports.as_ref().is_none_or(|p| p.contains(25));
        let without_login = settings.auth.is_some() && rule.admits_socks_without_login();
        if rule.action != Action::Allow || !smtp {
            continue;
        }
        if without_login {
            out.push(format!(
                "SMTP (port 25) is reachable through SOCKS without a log-in by rule \"{}\" (it admits clients by address): anyone at those addresses could send mail, or spam; name the ports it needs",
                rule.name
            ));
        } else if rule.ports.is_some() && (connect || through_socks) {
            let doors = match (connect, through_socks) {
                (true, true) => "CONNECT and SOCKS",
                (true, false) => "CONNECT",
                _ => "SOCKS",
            };
            out.push(format!(
                "SMTP (port 25) is reachable through {doors} by rule \"{}\": make sure its clients should send mail",
                rule.name
            ));
        }
    }
    if socks.enabled {
        for rule in &policy.rules {
            let Some(methods) = &rule.methods else {
                continue;
            };
            let connect = methods.iter().any(|m| m == "CONNECT");
            let socks_too = methods.iter().any(|m| SOCKS_METHODS.contains(&m.as_str()));
            if rule.action == Action::Deny && connect && !socks_too {
                out.push(format!(
                    "rule \"{}\" refuses CONNECT but not SOCKS: SOCKS clients reach what it refuses (socks.enabled is on); add \"SOCKS5\" to its methods, or leave methods out",
                    rule.name
                ));
            }
        }
    }
    let shaping = &settings.shaping;
    if !shaping.weights.is_empty() && shaping.down.is_none() && shaping.up.is_none() {
        out.push(
            "shaping.weights are set but the link is not (shaping.down, shaping.up): weights share a shaped link, so they do nothing".to_owned(),
        );
    }
    for cap in &shaping.caps {
        for (cap_rate, link, way) in [(cap.down, shaping.down, "down"), (cap.up, shaping.up, "up")]
        {
            if let (Some(cap_rate), Some(link)) = (cap_rate, link) {
                if cap_rate >= link {
                    out.push(format!(
                        "limits.rate \"{}\" caps {way} at {}, no less than the link itself (shaping.{way} = {}): it never holds anyone back",
                        cap.matcher.name,
                        crate::core::shaping::show_rate(cap_rate),
                        crate::core::shaping::show_rate(link)
                    ));
                }
            }
        }
    }
    if settings.pac.socks && !socks.enabled && settings.pac.proxies.is_empty() {
        out.push(
            "pac.socks offers SOCKS5 on this proxy, but socks.enabled is off: clients that fall back to it are refused".to_owned(),
        );
    }
    if socks.enabled && socks.v4 && settings.auth.is_some() && socks.without_login.is_none() {
        out.push(
            "socks.v4 is on while [auth] is on: SOCKS4 carries no password, so every SOCKS4 request is refused (a rule naming clients and methods = [\"SOCKS4\"] admits them by address)".to_owned(),
        );
    }

    if let Some(auth) = &settings.auth {
        for rule in &policy.rules {
            // Users a helper checks are not known beforehand.
            for user in rule.users.iter().flatten() {
                if auth.program.is_none() && !auth.in_file(user) {
                    out.push(format!(
                        "rule \"{}\" names user \"{user}\", who is not in the htpasswd file",
                        rule.name
                    ));
                }
            }
        }
    }

    out.extend(tls_findings(config, settings));
    out.extend(times_findings(&policy.rules));
    for (j, later) in policy.rules.iter().enumerate() {
        if is_unconditional(later) && j + 1 < policy.rules.len() {
            out.push(format!(
                "rule \"{}\" has no conditions, so it matches every request: the rules after it never apply",
                later.name
            ));
        }
        let shadow =
            policy.rules[..j]
                .iter()
                .zip(&config.rules)
                .find(|(earlier, earlier_config)| {
                    covers(earlier, earlier_config, later, &config.rules[j])
                });
        if let Some((earlier, _)) = shadow {
            out.push(format!(
                "rule \"{}\" can never match: rule \"{}\" before it matches every request it would",
                later.name, earlier.name
            ));
        }
    }
    out
}

/// Passwords in clear, a certificate out of its dates (at this moment), and one that does
/// not name what the PAC gives.
fn tls_findings(config: &Config, settings: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    let exposed = config.listen.iter().any(|a| !a.ip().is_loopback());
    if settings.auth.is_some() && config.listen_tls.is_empty() && exposed {
        out.push(
            "[auth] is on and every listener is plain: passwords cross the LAN base64-encoded, readable by anyone on it; add listen_tls and [tls] (portcullis cert makes a certificate) and pac.tls".to_owned(),
        );
    }
    if config.listen_tls.is_empty() && (config.tls.cert.is_some() || config.pac.tls) {
        out.push(
            "[tls] or pac.tls is set but listen_tls is empty: no TLS listener is opened".to_owned(),
        );
    }
    let Some(tls) = &settings.tls else {
        return out;
    };
    out.extend(tls.date_findings(jiff::Timestamp::now()));
    if !config.pac.tls {
        return out;
    }
    let named = config.pac.proxy_host.iter().cloned().chain(
        config
            .pac
            .proxies
            .iter()
            .filter_map(|p| crate::core::target::parse_authority(p, None).ok())
            .map(|t| t.host.to_string()),
    );
    for host in named {
        if tls.covers(&host) == Some(false) {
            out.push(format!(
                "pac.tls offers HTTPS {host}, but the certificate in {} does not name {host}: browsers will refuse it (portcullis cert --name {host})",
                tls.cert_path.display()
            ));
        }
    }
    out
}

/// Windows of `times` that are empty, overlap, or leave a rule that never applies.
fn times_findings(rules: &[Rule]) -> Vec<String> {
    let mut out = Vec::new();
    for rule in rules {
        let Some(times) = &rule.times else { continue };
        if times.never() {
            out.push(format!(
                "rule \"{}\" can never match: none of its times windows ever holds (each starts when it ends)",
                rule.name
            ));
            continue;
        }
        for empty in times.empty_windows() {
            out.push(format!(
                "rule \"{}\": times window \"{empty}\" is empty (it starts when it ends), so it never holds; 00:00-24:00 is a whole day",
                rule.name
            ));
        }
        for (a, b) in times.overlaps() {
            out.push(format!(
                "rule \"{}\": times windows \"{a}\" and \"{b}\" overlap: one of them is probably not what was meant",
                rule.name
            ));
        }
    }
    out
}

fn join(nets: &[IpNet]) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loopback, private, shared (CGNAT), link-local and unique-local networks.
fn is_private_network(net: &IpNet) -> bool {
    let private = [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    ];
    private
        .iter()
        .filter_map(|p| p.parse::<IpNet>().ok())
        .any(|p| p.contains(net))
}

fn is_unconditional(rule: &Rule) -> bool {
    rule.clients.is_none()
        && rule.users.is_none()
        && rule.groups.is_none()
        && rule.hosts.is_none()
        && rule.list.is_none()
        && rule.ports.is_none()
        && rule.methods.is_none()
        && rule.times.is_none()
}

/// Whether `earlier` matches every request that `later` matches.
fn covers(
    earlier: &Rule,
    earlier_config: &RuleConfig,
    later: &Rule,
    later_config: &RuleConfig,
) -> bool {
    let clients = match (&earlier.clients, &later.clients) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(l)) => l.iter().all(|ln| e.iter().any(|en| en.contains(ln))),
    };
    let users = subset(&earlier.users, &later.users) && subset(&earlier.groups, &later.groups);
    let methods = subset(&earlier.methods, &later.methods);
    let ports = match (&earlier.ports, &later.ports) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(l)) => l.is_subset(e),
    };
    // A rule with times covers another only when those hold whenever the other's do: said
    // here only of a rule without times.
    let times = earlier.times.is_none();
    clients && users && methods && ports && times && hosts_cover(earlier_config, later_config)
}

fn subset(earlier: &Option<Vec<String>>, later: &Option<Vec<String>>) -> bool {
    match (earlier, later) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(l)) => l.iter().all(|x| e.contains(x)),
    }
}

fn hosts_cover(earlier: &RuleConfig, later: &RuleConfig) -> bool {
    if earlier.hosts.is_none() && earlier.hosts_file.is_none() && earlier.hosts_url.is_none() {
        return true;
    }
    // A list's contents are not compared: only patterns written in the configuration.
    let listed = |r: &RuleConfig| r.hosts_file.is_some() || r.hosts_url.is_some();
    if listed(earlier) || listed(later) {
        return false;
    }
    let parse = |r: &RuleConfig| -> Vec<HostPattern> {
        r.hosts
            .iter()
            .flatten()
            .filter_map(|h| HostPattern::parse(h).ok())
            .collect()
    };
    let (e, l) = (parse(earlier), parse(later));
    if later.hosts.is_none() {
        return false;
    }
    l.iter().all(|lp| e.iter().any(|ep| pattern_covers(ep, lp)))
}

fn pattern_covers(earlier: &HostPattern, later: &HostPattern) -> bool {
    let under = |name: &str, domain: &str| {
        name == domain
            || name
                .strip_suffix(domain)
                .is_some_and(|rest| rest.ends_with('.'))
    };
    match (earlier, later) {
        (HostPattern::Exact(e), HostPattern::Exact(l)) => e == l,
        (HostPattern::Domain(d), HostPattern::Exact(l) | HostPattern::Domain(l)) => under(l, d),
        (HostPattern::Network(e), HostPattern::Network(l)) => e.contains(l),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lint_text(text: &str) -> Vec<String> {
        let config = Config::from_toml(text, "t").unwrap();
        let settings = config.validate("t").unwrap();
        lint(&config, &settings)
    }

    fn has(lines: &[String], fragment: &str) -> bool {
        lines.iter().any(|l| l.contains(fragment))
    }

    #[test]
    fn the_defaults_raise_nothing() {
        assert_eq!(lint_text(""), Vec::<String>::new());
    }

    #[test]
    fn findings() {
        let cases: &[(&str, &str)] = &[
            (
                "[timeouts]\nconnect = \"1s\"\nconnect_attempt = \"2s\"\n",
                "timeouts.connect_attempt (2s) is not shorter than timeouts.connect (1s)",
            ),
            (
                "[clients]\nallow = [\"0.0.0.0/0\", \"::/0\"]\n",
                "open proxy: listening on 0.0.0.0:3128",
            ),
            (
                "[clients]\nallow = [\"192.168.0.0/16\", \"8.8.8.0/24\"]\n",
                "clients.allow includes public addresses (8.8.8.0/24)",
            ),
            (
                "[ports]\nconnect = [\"https\", \"smtp\"]\n",
                "SMTP (port 25) is reachable through CONNECT (ports.connect)",
            ),
            (
                "[[rules]]\nname = \"mail\"\nclients = [\"192.168.1.10\"]\nports = [\"smtp\"]\naction = \"allow\"\n",
                "by rule \"mail\"",
            ),
            (
                "[socks]\nports = [\"ssh\", \"smtp\"]\n",
                "SMTP (port 25) is reachable through SOCKS (socks.ports) without a log-in",
            ),
            (
                "[[rules]]\nname = \"relay\"\nmethods = [\"SOCKS5\"]\nports = [25]\naction = \"allow\"\n",
                "reachable through SOCKS by rule \"relay\"",
            ),
            (
                "[[rules]]\nname = \"no tunnels to x\"\nhosts = [\"x.example\"]\nmethods = [\"CONNECT\"]\naction = \"deny\"\n",
                "rule \"no tunnels to x\" refuses CONNECT but not SOCKS",
            ),
            (
                "[shaping]\n[shaping.weights]\n\"192.168.1.10\" = 2\n",
                "shaping.weights are set but the link is not",
            ),
            (
                "[shaping]\ndown = \"10Mbit/s\"\n[[limits.rate]]\nname = \"big\"\ndown = \"20Mbit/s\"\n",
                "limits.rate \"big\" caps down at 2.5 MB/s, no less than the link itself (shaping.down = 1.2 MB/s)",
            ),
            (
                "[pac]\ntls = true\n",
                "[tls] or pac.tls is set but listen_tls is empty",
            ),
            (
                "[pac]\nsocks = true\n[socks]\nenabled = false\n",
                "pac.socks offers SOCKS5 on this proxy, but socks.enabled is off",
            ),
            (
                "[[rules]]\nname = \"all\"\naction = \"deny\"\n[[rules]]\nname = \"x\"\nports = [80]\naction = \"allow\"\n",
                "rule \"all\" has no conditions",
            ),
            (
                "[[rules]]\nname = \"wide\"\nhosts = [\".example.com\"]\naction = \"deny\"\n[[rules]]\nname = \"narrow\"\nhosts = [\"www.example.com\"]\nports = [80]\naction = \"allow\"\n",
                "rule \"narrow\" can never match: rule \"wide\"",
            ),
            (
                "[[rules]]\nname = \"lan\"\nclients = [\"192.168.0.0/16\"]\nmethods = [\"GET\", \"CONNECT\"]\naction = \"allow\"\n[[rules]]\nname = \"one\"\nclients = [\"192.168.1.5\"]\nmethods = [\"get\"]\naction = \"deny\"\n",
                "rule \"one\" can never match: rule \"lan\"",
            ),
            (
                "[[rules]]\nname = \"never\"\ntimes = [\"mon 10:00-10:00\"]\naction = \"deny\"\n",
                "rule \"never\" can never match: none of its times windows ever holds",
            ),
            (
                "[[rules]]\nname = \"odd\"\ntimes = [\"mon 10:00-10:00\", \"tue 10:00-11:00\"]\naction = \"deny\"\n",
                "rule \"odd\": times window \"mon 10:00-10:00\" is empty",
            ),
            (
                "[[rules]]\nname = \"school\"\ntimes = [\"mon-fri 08:00-15:30\", \"wed 15:00-17:00\"]\naction = \"deny\"\n",
                "rule \"school\": times windows \"mon-fri 08:00-15:30\" and \"wed 15:00-17:00\" overlap",
            ),
            (
                "[[rules]]\nname = \"always\"\nhosts = [\".games.test\"]\naction = \"deny\"\n[[rules]]\nname = \"evenings\"\nhosts = [\"www.games.test\"]\ntimes = [\"daily 18:00-20:00\"]\naction = \"allow\"\n",
                "rule \"evenings\" can never match: rule \"always\"",
            ),
        ];
        for (text, fragment) in cases {
            let lines = lint_text(text);
            assert!(has(&lines, fragment), "{text}\n{lines:#?}");
        }
    }

    #[test]
    fn rules_that_can_match_are_not_flagged() {
        let lines = lint_text(
            "[[rules]]\nname = \"narrow\"\nhosts = [\"www.example.com\"]\naction = \"deny\"\n\
             [[rules]]\nname = \"wide\"\nhosts = [\".example.com\"]\naction = \"allow\"\n\
             [[rules]]\nname = \"other clients\"\nclients = [\"10.0.0.0/8\"]\nhosts = [\".example.com\"]\nports = [80]\naction = \"deny\"\n\
             [[rules]]\nname = \"school\"\nhosts = [\"games.test\"]\ntimes = [\"mon-fri 08:00-15:30\"]\naction = \"deny\"\n\
             [[rules]]\nname = \"after school\"\nhosts = [\"games.test\"]\ntimes = [\"mon-fri 15:30-21:00\"]\naction = \"allow\"\n",
        );
        assert!(!has(&lines, "\"wide\" can never match"), "{lines:#?}");
        // A rule with times leaves the time outside its windows to the rules after it.
        assert!(!has(&lines, "\"after school\" can never"), "{lines:#?}");
        assert!(!has(&lines, "overlap"), "{lines:#?}");
        assert!(
            has(&lines, "\"other clients\" can never match: rule \"wide\""),
            "{lines:#?}"
        );
        // The SOCKS default port list is ports.connect, which has no 25.
        assert!(!has(&lint_text("[socks]\nv4 = true\n"), "SMTP"));
        let loopback_only =
            lint_text("listen = [\"127.0.0.1:3128\"]\n[clients]\nallow = [\"0.0.0.0/0\"]\n");
        assert!(!has(&loopback_only, "open proxy"), "{loopback_only:#?}");
    }

    #[test]
    fn with_auth_socks_lints_name_socks4_and_rules_admitting_by_address() {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("secret", 4).unwrap();
        std::fs::write(dir.path().join("users"), format!("alice:{hash}\n")).unwrap();
        let origin = dir.path().join("portcullis.toml");
        let lint_auth = |extra: &str| {
            let text = format!("{extra}[auth]\nhtpasswd = \"users\"\n");
            let config = Config::from_toml(&text, "t").unwrap();
            let settings = config.validate(&origin.display().to_string()).unwrap();
            lint(&config, &settings)
        };
        let lines = lint_auth("[socks]\nv4 = true\n");
        assert!(has(&lines, "every SOCKS4 request is refused"), "{lines:#?}");
        // Passwords over plain listeners only; and a certificate that does not name the
        // PAC's host.
        assert!(has(&lines, "every listener is plain"), "{lines:#?}");
        let made = crate::ops::cert::run(&crate::ops::cert::Request {
            names: vec!["proxy.lan".into()],
            ips: vec![],
            out: dir.path().join("tls"),
        });
        assert!(made.is_ok(), "{made:?}");
        let tls = "listen_tls = [\"0.0.0.0:3443\"]\n[tls]\ncert = \"tls/proxy.pem\"\nkey = \"tls/proxy.key\"\n[pac]\ntls = true\n";
        let lines = lint_auth(&format!("{tls}proxy_host = \"proxy.lan\"\n"));
        assert!(!has(&lines, "every listener is plain"), "{lines:#?}");
        assert!(!has(&lines, "does not name"), "{lines:#?}");
        let lines = lint_auth(&format!("{tls}proxy_host = \"gateway.lan\"\n"));
        assert!(has(&lines, "does not name gateway.lan"), "{lines:#?}");
        // A log-in keeps SOCKS to 25 from strangers: no SMTP warning for the port list.
        let lines = lint_auth("[socks]\nports = [25]\n");
        assert!(!has(&lines, "SMTP"), "{lines:#?}");
        // A rule admitting SOCKS clients by address, with no ports: 25 too.
        let lines = lint_auth(
            "[[rules]]\nname = \"lan\"\nclients = [\"192.168.1.0/24\"]\nmethods = [\"SOCKS5\"]\naction = \"allow\"\n",
        );
        assert!(
            has(&lines, "without a log-in by rule \"lan\""),
            "{lines:#?}"
        );
        let lines = lint_auth(
            "[[rules]]\nname = \"lan\"\nclients = [\"192.168.1.0/24\"]\nmethods = [\"SOCKS5\"]\nports = [\"ssh\"]\naction = \"allow\"\n",
        );
        assert!(!has(&lines, "SMTP"), "{lines:#?}");
    }
}
