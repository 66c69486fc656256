//! `portcullis explain`: what the proxy would answer one request, which rule or list decides
//! it, and why, without sending anything anywhere.
//!
//! It asks the very functions the request path asks, in the order `crate::proxy::service` meets
//! them: the client allow-list ([`Policy::admit_client`]), the request target ([`classify`]),
//! the proxy's own pages ([`Policy::is_listener`]), log-in, the rules and port lists
//! ([`Policy::decide`]) and the guards on destination addresses ([`Policy::check_address`]):
//! at once for an IP literal, per resolved address for a name. Pure: resolving a name and
//! telling whether an address is this machine's are closures the caller passes
//! ([`Lookups`]); the binary passes the resolver `[dns]` sets up only with `--resolve`.
//!
//! Not modelled: the request-head limits and framing checks (a question has no headers), the
//! blocking of addresses after failed log-ins, passwords, and whether the destination answers.

mod socks;
use socks::{login_denial, without_login, Socks};

use std::net::{IpAddr, SocketAddr};

use http::{Method, StatusCode, Uri};

use crate::config::Settings;
use crate::core::plan::{self, Event, Front, LogIn, Route, Trail};
use crate::core::policy::{
    without_login_refusal, Builtin, Decider, Decision, Denial, Facts, Kind, Policy,
};
use crate::core::ports::describe;
use crate::core::target::{classify, parse_authority, Classified, Host, Target};
use crate::web::welcome::OwnPage;

/// The request to explain.
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// The user the client logs in as, if any.
    pub user: Option<&'a str>,
    /// The method (taken in upper case).
    pub method: &'a str,
    /// `host:port` for CONNECT, an absolute `http://` URL otherwise (or a path, for the
    /// proxy's own pages).
    pub target: &'a str,
    /// The moment asked about (`--at`; else now): rules with `times` decide by it.
    pub at: jiff::Timestamp,
}

/// Resolves a name (and port) to addresses, as the proxy's resolver (`[dns]`) would, in the
/// order its dial tries them.
pub type Resolver<'a> = &'a dyn Fn(&str, u16) -> Result<Vec<IpAddr>, String>;

/// Asks the group helper (`[auth.groups] program`) whether a user is in a group.
pub type GroupLookup<'a> = &'a dyn Fn(&str, &str) -> Result<bool, String>;

/// What `explain` may ask of the world.
#[derive(Clone, Copy)]
pub struct Lookups<'a> {
    /// Asks the group helper; `None`: groups are not asked (rules with `groups` then refuse
    /// as the proxy does when the helper cannot tell).
    pub groups: Option<GroupLookup<'a>>,
    /// Resolves destination names; `None`: names are not resolved (no `--resolve`).
    pub resolve: Option<Resolver<'a>>,
    /// Whether an address belongs to this machine ([`crate::egress::dial::is_local_address`]); asked
    /// only about listeners bound to an unspecified address, as the proxy does.
    pub is_local: &'a dyn Fn(IpAddr) -> bool,
}

/// The outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The proxy lets the request through.
    Allowed,
    /// The proxy refuses it.
    Denied,
    /// A rule needs the destination's address, which was not resolved.
    Undecided,
}

/// What the proxy would do with a request, and the steps that led there.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// Allowed, refused, or undecided without an address.
    pub verdict: Verdict,
    /// What decided (`ports.connect`, `rule "mail"`, `clients.allow`, `auth`, `local` …);
    /// for an undecided request, the rule that needs the address.
    pub decider: Option<Decider>,
    /// The reason of a refusal, or what an undecided request needs.
    pub reason: Option<String>,
    /// What the client gets (`403 Forbidden` …).
    pub status: String,
    /// Each check, in the proxy's order, and its answer.
    pub steps: Vec<String>,
}

impl Explanation {
    /// `allowed by D`, `denied by D: reason` or `undecided: reason`.
    pub fn headline(&self) -> String {
        let decider = self
            .decider
            .as_ref()
            .map_or_else(|| "-".to_owned(), Decider::to_string);
        let reason = self.reason.as_deref().unwrap_or("");
        match self.verdict {
            Verdict::Allowed => format!("allowed by {decider}"),
            Verdict::Denied => format!("denied by {decider}: {reason}"),
            Verdict::Undecided => format!("undecided: {reason}"),
        }
    }

    /// The text printed by `portcullis explain`.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}\nthe client gets: {}\nsteps, in the order the proxy takes them:\n",
            self.headline(),
            self.status
        );
        for (i, step) in self.steps.iter().enumerate() {
            out.push_str(&format!("  {}. {step}\n", i + 1));
        }
        out
    }

    /// The exit status of `portcullis explain`: 0 allowed, 1 refused, 3 undecided.
    pub fn exit_code(&self) -> u8 {
        match self.verdict {
            Verdict::Allowed => 0,
            Verdict::Denied => 1,
            Verdict::Undecided => 3,
        }
    }
}

/// A question that is not a request at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    /// Not an HTTP method token.
    #[error("\"{0}\" is not a request method (CONNECT, GET, POST …)")]
    Method(String),
    /// Not a request target.
    #[error(
        "\"{0}\" is not a request target: write host:port for CONNECT and SOCKS, or an http:// URL"
    )]
    Target(String),
}

/// Explains what the proxy, configured by `settings`, would do with `question`.
pub fn explain(
    settings: &Settings,
    question: &Question<'_>,
    lookups: &Lookups<'_>,
) -> Result<Explanation, ExplainError> {
    let upper = question.method.to_ascii_uppercase();
    let method = Method::from_bytes(upper.as_bytes())
        .map_err(|_| ExplainError::Method(question.method.to_owned()))?;
    let uri: Uri = question
        .target
        .parse()
        .map_err(|_| ExplainError::Target(question.target.to_owned()))?;
    // SOCKS has no request line: its "method" names the front door and the command.
    let socks = Socks::of(&upper);
    let mut walk = Walk {
        policy: &settings.policy,
        steps: Vec::new(),
        refused: "403 Forbidden",
    };
    let policy = &settings.policy;
    let client = question.client;
    let shown_client = match settings.client_name(client) {
        Some(name) => format!("{client} ({name})"),
        None => client.to_string(),
    };

    if let Some((closed, status)) = socks.and_then(|s| s.closed(settings)) {
        walk.step(format!("[socks]: {}", closed.reason));
        return Ok(walk.denied(closed, status));
    }

    // The front of the plan: the client allow-list, what the client asked for, the proxy's
    // own pages. A question has no head and no connection limits.
    let classified = match socks {
        Some(_) => Ok(Classified::Socks(
            parse_authority(question.target, None)
                .map_err(|_| ExplainError::Target(question.target.to_owned()))?,
        )),
        None => classify(&method, &uri),
    };
    let request = plan::Request {
        client,
        admission: None,
        head: None,
        target: &classified,
        login: LogIn::Off,
    };
    let mut told = Told {
        walk: &mut walk,
        shown_client: &shown_client,
        method: &method,
        uri: &uri,
    };
    let front = plan::front(policy, &request, lookups.is_local, &mut told);
    let (kind, target) = match front {
        Front::Refuse(error) => {
            let denial = Denial {
                rule: error
                    .rule
                    .clone()
                    .unwrap_or(Decider::Builtin(Builtin::Request)),
                reason: error.reason.clone(),
            };
            let status = if let Some(socks) = socks {
                match socks {
                    Socks::Four => "SOCKS4 reply 0x5B (rejected)".to_owned(),
                    _ => "SOCKS5 05 FF (no acceptable method), and the connection is closed"
                        .to_owned(),
                }
            } else if error.closes_connection()
                && error.rule == Some(Decider::Builtin(Builtin::ClientsAllow))
            {
                "403 Forbidden, and the connection is closed".to_owned()
            } else {
                status_text(error.status)
            };
            return Ok(walk.denied(denial, &status));
        }
        Front::OwnPage => return Ok(walk.own_page(&method, &uri)),
        Front::Proceed { kind, target, .. } => match socks {
            Some(Socks::Udp) => (Kind::SocksUdp, target),
            _ => (kind, target),
        },
    };
    let refused_status = match socks {
        None => "403 Forbidden",
        Some(Socks::Four) => "SOCKS4 reply 0x5B (rejected)",
        Some(Socks::Five) => "SOCKS reply 0x02 (connection not allowed by ruleset)",
        Some(Socks::Udp) => "datagrams to it are dropped (counted in the association's record)",
    };
    walk.refused = refused_status;
    let login_status = match socks {
        None => "407 Proxy Authentication Required",
        Some(Socks::Four) => "SOCKS4 reply 0x5B (rejected): SOCKS4 carries no password",
        Some(_) => "SOCKS5 05 FF (no acceptable method) without a password, 01 01 with a wrong one",
    };
    // The log-in, when [auth] is on: a question names the user instead of a password.
    let mut anonymous = false;
    let user = match &settings.auth {
        None => {
            walk.step(match question.user {
                Some(user) => {
                    format!(
                        "log-in: [auth] is off, so no one logs in (--user {user} plays no part)"
                    )
                }
                None => "log-in: [auth] is off, so no one logs in".to_owned(),
            });
            None
        }
        // A SOCKS client that names no user may be admitted by a rule naming its address.
        Some(_) if socks.is_some() && question.user.is_none() => {
            match without_login(settings, client, &upper) {
                Some(policy) => {
                    walk.admitted_without_login(policy, client);
                    anonymous = true;
                    None
                }
                None => {
                    walk.step(
                        "log-in: [auth] is on, no user is given (--user NAME explains a logged-in user), and no rule admits SOCKS clients from this address without one"
                            .to_owned(),
                    );
                    return Ok(walk.denied(
                        login_denial("needs a log-in: a user name and password (SOCKS5, RFC 1929)"),
                        login_status,
                    ));
                }
            }
        }
        Some(_) if socks == Some(Socks::Four) => {
            walk.step("log-in: SOCKS4 carries no password, so no one logs in over it".to_owned());
            return Ok(walk.denied(
                login_denial("SOCKS4 cannot log in: use SOCKS5 with a user name and password"),
                login_status,
            ));
        }
        Some(auth) => match question.user {
            None => {
                walk.step(
                    "log-in: [auth] is on and no user is given (--user NAME explains a logged-in user)"
                        .to_owned(),
                );
                let denial = login_denial(
                    "needs a log-in (407, auth): the client is asked for a user name and password",
                );
                return Ok(walk.denied(denial, login_status));
            }
            Some(user) if auth.in_file(user) => {
                walk.step(format!(
                    "log-in: {user} is in the htpasswd file, taken as logged in (passwords are not checked here)"
                ));
                Some(user)
            }
            Some(user) if auth.program.is_some() => {
                let program = auth.program.as_ref().and_then(|p| p.command.first());
                walk.step(format!(
                    "log-in: {user}{} is checked by the helper {}, taken as logged in (passwords are not checked here)",
                    if auth.users.is_some() { " is not in the htpasswd file, so" } else { "" },
                    program.map_or("", String::as_str)
                ));
                Some(user)
            }
            Some(user) => {
                walk.step(format!("log-in: {user} is not in the htpasswd file"));
                let denial =
                    login_denial(&format!("wrong user name or password for user {user:?}"));
                return Ok(walk.denied(denial, login_status));
            }
        },
    };

    // The destination part of the plan: parent or direct, the guards on a literal a parent
    // would carry, the rules and the port list.
    // The groups the rules name, as the group helper answers for the user.
    let names = policy.group_names();
    let mut groups = Vec::new();
    if let (Some(user), false) = (user, names.is_empty()) {
        let program = settings
            .auth
            .as_ref()
            .and_then(|a| a.groups.as_ref())
            .and_then(|g| g.command.first())
            .map_or("", String::as_str);
        let mut told = Vec::new();
        for group in names {
            let member = match lookups.groups {
                Some(ask) => ask(user, &group),
                None => Err("the group helper is not asked here".to_owned()),
            };
            told.push(match &member {
                Ok(true) => format!("in {group:?}"),
                Ok(false) => format!("not in {group:?}"),
                Err(why) => format!("{group:?} unknown ({why})"),
            });
            groups.push(crate::core::policy::GroupAnswer { group, member });
        }
        walk.step(format!(
            "groups: {} the group helper {program}: {user} is {}",
            if lookups.groups.is_some() {
                "asked"
            } else {
                "not asked of"
            },
            told.join(", ")
        ));
    }
    let facts = Facts {
        client,
        user,
        groups: &groups,
        method: method.as_str(),
        kind,
        host: &target.host,
        port: target.port,
        at: question.at,
    };
    if policy.rules.iter().any(|r| r.times.is_some()) {
        let local = policy.clock.local(question.at);
        walk.step(format!(
            "time: {} {} ({}), for the rules with times",
            crate::core::clock::short_day(local.weekday()),
            local.strftime("%Y-%m-%d %H:%M:%S"),
            policy.clock.name()
        ));
    }
    let via_parent = |host: &Host| settings.upstream.as_ref().is_some_and(|u| u.serves(host));
    let mut told = Told {
        walk: &mut walk,
        shown_client: &shown_client,
        method: &method,
        uri: &uri,
    };
    let policy = told.walk.policy;
    let go = match plan::destination(policy, &facts, &via_parent, lookups.is_local, &mut told) {
        Ok(go) => go,
        Err(denial) => {
            let denial = match anonymous {
                true => without_login_refusal(&denial.rule, client, &target.host, target.port)
                    .unwrap_or(denial),
                false => denial,
            };
            return Ok(walk.denied(denial, refused_status));
        }
    };
    if !settings.quotas.is_empty() {
        let kept = crate::observe::budget::Budgets::read(&settings.state_dir, question.at);
        let mut counts = |quota: &crate::core::quota::Quota, key: &str| {
            kept.count(quota, key, &policy.clock, question.at).used()
        };
        let mut told = Told {
            walk: &mut walk,
            shown_client: &shown_client,
            method: &method,
            uri: &uri,
        };
        if let Err(denial) = plan::budget(policy, &settings.quotas, &facts, &mut counts, &mut told)
        {
            return Ok(walk.denied(denial, refused_status));
        }
    }
    for step in settings.shaping.explain(&facts) {
        walk.step(step);
    }
    let allowed_status = match (kind, socks) {
        (Kind::Connect, _) => {
            "200 Connection established, then the tunnel (if the destination answers)"
        }
        (Kind::Http, _) => "the origin's answer (if it answers)",
        (_, Some(Socks::Four)) => {
            "SOCKS4 reply 0x5A (granted), then the relay (if the destination answers)"
        }
        (Kind::SocksUdp, _) => {
            "SOCKS reply 0x00 with the relay's address; datagrams to it are relayed"
        }
        (Kind::Socks, _) => {
            "SOCKS reply 0x00 (succeeded), then the relay (if the destination answers)"
        }
    };
    let via_parent = go.route == Route::Parent;
    // Plain HTTP that resolves to the proxy's own listener gets its pages.
    let page = (kind == Kind::Http).then_some((&method, &uri));
    match go.decider {
        Some(decider) => match (&target.host, via_parent) {
            (Host::Ip(_), true) => Ok(walk.allowed(decider, allowed_status)),
            (Host::Ip(ip), false) => match walk.guard(target, *ip, lookups) {
                Ok(()) => Ok(walk.allowed(decider, allowed_status)),
                Err(denial) => Ok(walk.denied(denial, refused_status)),
            },
            (Host::Name(_), true) => {
                walk.step(
                    "addresses: the parent resolves the name, so the address guards see none"
                        .to_owned(),
                );
                Ok(walk.allowed(decider, allowed_status))
            }
            (Host::Name(name), false) => match lookups.resolve {
                None => {
                    walk.step(format!(
                        "addresses: {name} is a name; the address guards (loopback, link-local, unspecified, the proxy's own listeners) apply to each address it resolves to, when the proxy dials; --resolve checks them now"
                    ));
                    Ok(walk.allowed(decider, allowed_status))
                }
                Some(resolve) => Ok(walk.per_address(
                    target,
                    resolve,
                    lookups,
                    PerAddress::Decided(decider),
                    allowed_status,
                    page,
                )),
            },
        },
        None => {
            let rule = rule_needing_address(policy, &facts);
            let shown = rule
                .as_ref()
                .map_or_else(|| "a rule".to_owned(), Decider::to_string);
            walk.step(format!(
                "rules: {shown} matches destinations by address, and {} is a name",
                target.host
            ));
            match lookups.resolve {
                None => Ok(Explanation {
                    verdict: Verdict::Undecided,
                    decider: rule,
                    reason: Some(format!(
                        "{shown} needs the address {} resolves to; run again with --resolve",
                        target.host
                    )),
                    status: "depends on the address".to_owned(),
                    steps: walk.steps,
                }),
                Some(resolve) => Ok(walk.per_address(
                    target,
                    resolve,
                    lookups,
                    PerAddress::Decide(&facts),
                    allowed_status,
                    page,
                )),
            }
        }
    }
}

/// The plan's events, told as steps.
struct Told<'w, 'p> {
    walk: &'w mut Walk<'p>,
    shown_client: &'w str,
    method: &'w Method,
    uri: &'w Uri,
}

impl Trail for Told<'_, '_> {
    fn note(&mut self, event: Event<'_>) {
        let (method, uri) = (self.method, self.uri);
        let text = match event {
            Event::Client(Ok(())) => {
                format!("client {}: admitted by clients.allow", self.shown_client)
            }
            Event::Client(Err(_)) => format!(
                "client {}: not in clients.allow ({})",
                self.shown_client,
                networks(&self.walk.policy.clients)
            ),
            Event::Target(Err(_)) => format!("{method} {uri}: not a request the proxy serves"),
            Event::Target(Ok((Kind::Connect, target))) => format!(
                "{method} {target}: a tunnel to {} {}; its port list is ports.connect",
                target.host,
                describe(target.port)
            ),
            Event::Target(Ok((Kind::Http, target))) => format!(
                "{method} {uri}: plain HTTP forwarded to {} {}; its port list is ports.http",
                target.host,
                describe(target.port)
            ),
            Event::Target(Ok((Kind::Socks | Kind::SocksUdp, target))) => {
                let list = match (method.as_str(), &self.walk.policy.socks_ports) {
                    ("SOCKS5-UDP", _) => "socks.udp_ports",
                    (_, Some(_)) => "socks.ports",
                    (_, None) => "ports.connect (socks.ports is not set)",
                };
                format!(
                    "{method} {target}: a SOCKS relay to {} {}; its port list is {list}",
                    target.host,
                    describe(target.port)
                )
            }
            // The own page tells its own steps.
            Event::OwnPage | Event::Route(Route::Direct, _) | Event::NeedsAddress => return,
            Event::Route(Route::Parent, host) => format!(
                "parent proxy: {host} is not in upstream.direct, so a parent proxy carries the request and resolves names itself"
            ),
            Event::Literal(ip, Ok(())) => {
                format!("address {ip}: passes the destination guards (destinations.*)")
            }
            Event::Literal(ip, Err(denial)) => format!("address {ip}: refused by {}", denial.rule),
            Event::Budget(quota, key, used) => format!(
                "budget: quota \"{}\" counts it for {key}: {} of {} a {} used, as last kept in [state] dir",
                quota.name,
                crate::core::quota::human_bytes(used),
                crate::core::quota::human_bytes(quota.bytes),
                quota.per
            ),
            Event::Decided(decider, allowed) => {
                self.walk
                    .decided(decider, if allowed { "allowed" } else { "denied" });
                return;
            }
        };
        self.walk.step(text);
    }
}

/// What to do with each resolved address.
enum PerAddress<'a> {
    /// The request is allowed by this; only the guards remain.
    Decided(Decider),
    /// The decision needs the address: decide again with it, after the guards.
    Decide(&'a Facts<'a>),
}

/// The steps so far, and the policy they ask.
struct Walk<'a> {
    policy: &'a Policy,
    steps: Vec<String>,
    /// What the client gets when the destination is refused.
    refused: &'static str,
}

impl<'a> Walk<'a> {
    /// A SOCKS client admitted without a log-in while `[auth]` is on: from here on only the
    /// rules naming its address can allow.
    fn admitted_without_login(&mut self, policy: &'a Policy, client: IpAddr) {
        let names: Vec<String> = policy
            .rules
            .iter()
            .filter(|r| r.admits_socks_without_login())
            .map(|r| format!("\"{}\"", r.name))
            .collect();
        self.step(format!(
            "log-in: [auth] is on, and rule {} admits SOCKS clients from {client} without one (browsers send no SOCKS password): only such rules allow, every deny rule still applies, and no port list does",
            names.join(", ")
        ));
        self.policy = policy;
    }

    fn step(&mut self, text: String) {
        self.steps.push(text);
    }

    fn denied(self, denial: Denial, status: &str) -> Explanation {
        Explanation {
            verdict: Verdict::Denied,
            decider: Some(denial.rule),
            reason: Some(denial.reason),
            status: status.to_owned(),
            steps: self.steps,
        }
    }

    fn allowed(self, decider: Decider, status: &str) -> Explanation {
        Explanation {
            verdict: Verdict::Allowed,
            decider: Some(decider),
            reason: None,
            status: status.to_owned(),
            steps: self.steps,
        }
    }

    /// The rules-and-port-list step.
    fn decided(&mut self, decider: &Decider, how: &str) {
        let rules = self.policy.rules.len();
        let text = match decider {
            Decider::Rule(_) => format!("rules: {how} by {decider} (first match wins)"),
            Decider::Quota(_) => format!("budgets: {how} by {decider}"),
            Decider::Builtin(list) if rules == 0 => {
                format!("rules: none, so {list} decides: {how}")
            }
            Decider::Builtin(list) => {
                format!("rules: none of the {rules} matches, so {list} decides: {how}")
            }
        };
        self.step(text);
    }

    /// The destination guards on one address of `target`.
    fn guard(&mut self, target: &Target, ip: IpAddr, lookups: &Lookups<'_>) -> Result<(), Denial> {
        let addr = SocketAddr::new(ip, target.port);
        let checked = self
            .policy
            .check_address(&target.host.to_string(), addr, lookups.is_local);
        match &checked {
            Ok(()) => self.step(format!(
                "address {ip}: passes the destination guards (destinations.*)"
            )),
            Err(denial) => self.step(format!("address {ip}: refused by {}", denial.rule)),
        }
        checked
    }

    /// Resolves `target` and checks each address as the proxy does before dialling it
    /// (`dial::dial` and `dial::allowed_addresses`): the guards, then the rules when they need the
    /// address. The first address that passes is the one the proxy tries first.
    fn per_address(
        mut self,
        target: &Target,
        resolve: Resolver<'_>,
        lookups: &Lookups<'_>,
        mode: PerAddress<'_>,
        allowed_status: &str,
        page: Option<(&Method, &Uri)>,
    ) -> Explanation {
        let Host::Name(name) = &target.host else {
            return self.allowed(Decider::Builtin(Builtin::Nothing), allowed_status);
        };
        let lookup_failed = |mut walk: Walk<'_>, why: String, mode: PerAddress<'_>| {
            walk.step(format!("addresses: {why}"));
            let status = format!("502 Bad Gateway: {why}");
            match mode {
                PerAddress::Decided(decider) => walk.allowed(decider, &status),
                PerAddress::Decide(_) => Explanation {
                    verdict: Verdict::Undecided,
                    decider: None,
                    reason: Some(format!("{why}, so no rule can see its address")),
                    status,
                    steps: walk.steps,
                },
            }
        };
        let ips = match resolve(name, target.port) {
            Ok(ips) if ips.is_empty() => {
                return lookup_failed(
                    self,
                    format!("DNS lookup of {name} returned no address"),
                    mode,
                )
            }
            Ok(ips) => ips,
            Err(e) => {
                return lookup_failed(self, format!("DNS lookup of {name} failed: {e}"), mode)
            }
        };
        let mut first_allowed = None;
        let mut first_denied = None;
        for ip in ips {
            let addr = SocketAddr::new(ip, target.port);
            // The plan's last step, as the proxy takes it before dialling each address.
            let facts = match &mode {
                PerAddress::Decided(_) => None,
                PerAddress::Decide(facts) => Some(*facts),
            };
            let checked = plan::check_address(self.policy, target, facts, addr, lookups.is_local)
                .map(|decided| match (&mode, decided) {
                    (_, Some(decider)) => decider,
                    (PerAddress::Decided(decider), None) => decider.clone(),
                    (PerAddress::Decide(_), None) => Decider::Builtin(Builtin::Nothing),
                });
            match checked {
                Ok(decider) => {
                    self.step(format!("address {ip}: allowed by {decider}"));
                    first_allowed.get_or_insert(decider);
                }
                Err(denial) => {
                    self.step(format!(
                        "address {ip}: denied by {}: {}",
                        denial.rule, denial.reason
                    ));
                    first_denied.get_or_insert(denial);
                }
            }
        }
        match (first_allowed, first_denied, page) {
            (Some(decider), _, _) => self.allowed(decider, allowed_status),
            // Plain HTTP to a name of the proxy itself: its own pages, as the proxy answers
            // the refusal of its own address.
            (None, Some(denial), Some((method, uri)))
                if denial.rule == Decider::Builtin(Builtin::DestinationsSelf) =>
            {
                self.step(format!(
                    "{method} {uri}: {} names the proxy itself, which answers with its own pages",
                    target.host
                ));
                let path = uri.path();
                let own = OwnPage::of(method, path);
                let mut status = status_text(own.status());
                if let Some(missing) = own.missing(method, path) {
                    status.push_str(&format!(" ({missing})"));
                }
                self.allowed(Decider::Builtin(Builtin::Local), &status)
            }
            (None, Some(denial), _) => {
                let refused = self.refused;
                self.denied(denial, refused)
            }
            (None, None, _) => self.allowed(Decider::Builtin(Builtin::Nothing), allowed_status),
        }
    }

    /// The proxy's own pages (`pages::own_page`): the page, the PAC file, the icon, no log-in.
    /// Whatever the path, the proxy answers for itself: allowed by `local`, a `404` too.
    fn own_page(mut self, method: &Method, uri: &Uri) -> Explanation {
        let path = uri.path();
        self.step(format!(
            "{method} {uri}: addressed to the proxy itself, which answers with its own pages (no log-in)"
        ));
        let page = OwnPage::of(method, path);
        let mut status = status_text(page.status());
        if let Some(missing) = page.missing(method, path) {
            status.push_str(&format!(" ({missing})"));
        }
        self.allowed(Decider::Builtin(Builtin::Local), &status)
    }
}

/// The rule whose host networks make [`Policy::decide`] answer [`Decision::NeedAddress`]:
/// the first rule such that the rules up to it already need the address.
fn rule_needing_address(policy: &Policy, facts: &Facts<'_>) -> Option<Decider> {
    (0..policy.rules.len()).find_map(|i| {
        let upto = Policy {
            rules: policy.rules[..=i].to_vec(),
            ..policy.clone()
        };
        (upto.decide(facts, None) == Decision::NeedAddress)
            .then(|| Decider::Rule(policy.rules[i].name.clone()))
    })
}

fn status_text(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_owned()
}

fn networks(nets: &[ipnet::IpNet]) -> String {
    let shown: Vec<String> = nets.iter().take(4).map(ToString::to_string).collect();
    let more = nets.len().saturating_sub(shown.len());
    match more {
        0 => shown.join(", "),
        n => format!("{} and {n} more", shown.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn settings(text: &str) -> Settings {
        Config::from_toml(text, "t").unwrap().validate("t").unwrap()
    }

    /// A resolver that knows a few names, and fails for the rest.
    fn fake_dns(name: &str, _port: u16) -> Result<Vec<IpAddr>, String> {
        let ips: &[&str] = match name {
            "intranet.example" => &["10.1.2.3"],
            "www.example" | "example.com" => &["93.184.216.34"],
            "localhost" => &["127.0.0.1", "::1"],
            "split.example" => &["127.0.0.1", "93.184.216.34"],
            "empty.example" => &[],
            "proxy.lan" => &["192.168.1.2"],
            _ => return Err("Name or service not known".to_owned()),
        };
        Ok(ips.iter().map(|ip| ip.parse().unwrap()).collect())
    }

    fn never_local(_: IpAddr) -> bool {
        false
    }

    const RULES: &str = r#"
listen = ["127.0.0.1:3128"]
[ports]
connect = ["https", "ssh"]
[[rules]]
name = "mail server may send mail"
clients = ["192.168.1.10"]
ports = ["smtp"]
methods = ["CONNECT"]
action = "allow"
[[rules]]
name = "no ads"
hosts = [".ads.example"]
action = "deny"
[[rules]]
name = "no office servers"
hosts = ["10.0.0.0/8"]
action = "deny"
[[rules]]
name = "read-only 8443"
methods = ["GET", "HEAD"]
ports = [8443]
action = "allow"
"#;

    const LOOPBACK: &str = "listen = [\"127.0.0.1:3128\"]\n[destinations]\nallow_loopback = true\n\
                            [ports]\nconnect = [\"https\", 3128]\n";
    const PARENT: &str = "[upstream]\nproxy = \"http://10.9.9.9:3128\"\ndirect = [\".lan\"]\n";

    /// Runs rows of `[USER@]CLIENT METHOD TARGET | VERDICT DECIDER | STATUS` against `config`,
    /// with the fake resolver when `resolve`.
    fn table(config: &str, resolve: bool, rows: &[&str]) {
        table_with(&settings(config), resolve, rows);
    }

    fn table_with(settings: &Settings, resolve: bool, rows: &[&str]) {
        for row in rows {
            let fields: Vec<&str> = row.split(" | ").collect();
            let [request, want, status] = fields[..] else {
                panic!("bad row {row:?}");
            };
            let mut request = request.split_whitespace();
            let (client, method, target) = (
                request.next().unwrap(),
                request.next().unwrap(),
                request.next().unwrap(),
            );
            let (verdict, decider) = want.split_once(' ').unwrap();
            let (user, client) = match client.split_once('@') {
                Some((user, client)) => (Some(user), client),
                None => (None, client),
            };
            let question = Question {
                client: client.parse().unwrap(),
                user,
                method,
                target,
                at: jiff::Timestamp::UNIX_EPOCH,
            };
            let resolver: Resolver<'_> = &fake_dns;
            let lookups = Lookups {
                groups: None,
                resolve: resolve.then_some(resolver),
                is_local: &never_local,
            };
            let got = explain(settings, &question, &lookups).unwrap();
            let got_verdict = match got.verdict {
                Verdict::Allowed => "allowed",
                Verdict::Denied => "denied",
                Verdict::Undecided => "undecided",
            };
            let got_decider = got
                .decider
                .as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string);
            assert_eq!(
                (got_verdict, got_decider.as_str()),
                (verdict, decider),
                "{row}\n{}",
                got.render()
            );
            assert!(got.status.starts_with(status), "{row}\n{}", got.render());
        }
    }

    #[test]
    fn explains_a_table_of_requests() {
        table(
            "",
            false,
            &[
                // The port lists.
                "192.168.1.20 CONNECT example.com:25 | denied ports.connect | 403",
                "192.168.1.20 CONNECT example.com:443 | allowed ports.connect | 200",
                "192.168.1.20 connect example.com:443 | allowed ports.connect | 200",
                "192.168.1.20 GET http://example.com/ | allowed ports.http | the origin",
                "192.168.1.20 GET http://example.com:25/ | denied ports.http | 403",
                "192.168.1.20 POST http://example.com:8080/x | allowed ports.http | the origin",
                // The client allow-list comes first.
                "8.8.8.8 CONNECT example.com:443 | denied clients.allow | 403",
                "8.8.8.8 GET / | denied clients.allow | 403",
                "::ffff:192.168.1.20 CONNECT example.com:443 | allowed ports.connect | 200",
                // Targets the proxy does not serve.
                "192.168.1.20 GET https://example.com/ | denied request | 501",
                "192.168.1.20 GET ftp://example.com/ | denied request | 501",
                "192.168.1.20 CONNECT example.com | denied request | 400",
                // The proxy's own pages.
                "192.168.1.20 GET / | allowed local | 200",
                "192.168.1.20 GET /proxy.pac | allowed local | 200",
                "192.168.1.20 GET /favicon.ico | allowed local | 200",
                "192.168.1.20 GET /nope | allowed local | 404 Not Found (/nope is not a page",
                "192.168.1.20 POST / | allowed local | 405",
                // The address guards on IP literals, after the port lists.
                "192.168.1.20 CONNECT 127.0.0.1:443 | denied destinations.loopback | 403",
                "192.168.1.20 GET http://[::1]:8080/ | denied destinations.loopback | 403",
                "192.168.1.20 CONNECT 169.254.169.254:443 | denied destinations.link_local | 403",
                "192.168.1.20 CONNECT 0.0.0.0:443 | denied destinations.unspecified | 403",
                "192.168.1.20 CONNECT 127.0.0.1:25 | denied ports.connect | 403",
            ],
        );
        table(
            LOOPBACK,
            false,
            &[
                "192.168.1.20 GET http://127.0.0.1:3128/wpad.dat | allowed local | 200",
                "192.168.1.20 CONNECT 127.0.0.1:443 | allowed ports.connect | 200",
                "192.168.1.20 CONNECT 127.0.0.1:3128 | denied destinations.self | 403",
            ],
        );
        table(
            RULES,
            false,
            &[
                // Rules, first match wins; a rule with networks needs a name's address.
                "192.168.1.10 CONNECT mail.example:25 | allowed rule \"mail server may send mail\" | 200",
                "192.168.1.11 CONNECT mail.example:25 | undecided rule \"no office servers\" | depends",
                "192.168.1.20 GET http://x.ads.example/ | denied rule \"no ads\" | 403",
                "192.168.1.20 GET http://10.1.2.3/ | denied rule \"no office servers\" | 403",
                "192.168.1.20 GET http://app.example:8443/ | undecided rule \"no office servers\" | depends",
                "192.168.1.20 GET http://93.184.216.34:8443/ | allowed rule \"read-only 8443\" | the origin",
                "192.168.1.20 POST http://93.184.216.34:8443/ | allowed ports.http | the origin",
            ],
        );
        table(
            PARENT,
            false,
            &[
                // A parent proxy: IP literals meet the guards first; names are the parent's.
                "192.168.1.20 CONNECT 127.0.0.1:25 | denied destinations.loopback | 403",
                "192.168.1.20 CONNECT example.com:443 | allowed ports.connect | 200",
                "192.168.1.20 CONNECT example.com:25 | denied ports.connect | 403",
            ],
        );
    }

    #[test]
    fn explains_resolved_addresses() {
        table(
            RULES,
            true,
            &[
                "192.168.1.20 GET http://intranet.example/ | denied rule \"no office servers\" | 403",
                "192.168.1.20 GET http://www.example/ | allowed ports.http | the origin",
                "192.168.1.20 CONNECT www.example:22 | allowed ports.connect | 200",
                "192.168.1.20 GET http://www.example:8443/ | allowed rule \"read-only 8443\" | the origin",
                "192.168.1.20 POST http://www.example:8443/ | allowed ports.http | the origin",
                // A failed lookup leaves a rule that needs the address undecided.
                "192.168.1.20 GET http://nowhere.example/ | undecided - | 502",
                "192.168.1.20 GET http://empty.example/ | undecided - | 502",
            ],
        );
        table(
            "",
            true,
            &[
                "192.168.1.20 CONNECT localhost:443 | denied destinations.loopback | 403",
                // The first address that passes is the one dialled.
                "192.168.1.20 CONNECT split.example:443 | allowed ports.connect | 200",
                // Allowed, but the lookup fails: the client gets 502.
                "192.168.1.20 CONNECT nowhere.example:443 | allowed ports.connect | 502",
            ],
        );
        table(
            LOOPBACK,
            true,
            &["192.168.1.20 CONNECT localhost:443 | allowed ports.connect | 200"],
        );
        // A name of the proxy on its listener's port is its own page, as the proxy finds it;
        // on another port it is a destination, refused as the proxy's own address or not.
        table(
            "listen = [\"192.168.1.2:3128\"]\n[ports]\nconnect = [3128]\n",
            true,
            &[
                "192.168.1.20 GET http://proxy.lan:3128/ | allowed local | 200",
                "192.168.1.20 GET http://proxy.lan:8080/ | allowed ports.http | the origin",
                "192.168.1.20 CONNECT proxy.lan:3128 | denied destinations.self | 403",
            ],
        );
    }

    #[test]
    fn the_text_names_decider_reason_and_steps() {
        let s = settings("");
        let lookups = Lookups {
            groups: None,
            resolve: None,
            is_local: &never_local,
        };
        let ask = |method, target| {
            let q = Question {
                client: "192.168.1.20".parse().unwrap(),
                user: None,
                method,
                target,
                at: jiff::Timestamp::UNIX_EPOCH,
            };
            explain(&s, &q, &lookups).unwrap()
        };
        let denied = ask("CONNECT", "example.com:25");
        let text = denied.render();
        assert!(
            text.starts_with(
                "denied by ports.connect: port 25 (smtp) is not allowed for CONNECT\n"
            ),
            "{text}"
        );
        assert!(text.contains("the client gets: 403 Forbidden"), "{text}");
        assert_eq!(denied.exit_code(), 1);
        let allowed = ask("CONNECT", "example.com:443");
        let text = allowed.render();
        assert!(text.starts_with("allowed by ports.connect\n"), "{text}");
        assert!(text.contains("--resolve checks them"), "{text}");
        // Nothing in an allowed answer reads like a refusal.
        assert!(!text.to_lowercase().contains("den"), "{text}");
        assert_eq!(allowed.exit_code(), 0);
        assert!(matches!(
            explain(
                &s,
                &Question {
                    client: "192.168.1.20".parse().unwrap(),
                    user: None,
                    method: "GE T",
                    target: "http://x/",
                    at: jiff::Timestamp::UNIX_EPOCH,
                },
                &lookups
            ),
            Err(ExplainError::Method(_))
        ));
        assert!(matches!(
            explain(
                &s,
                &Question {
                    client: "192.168.1.20".parse().unwrap(),
                    user: None,
                    method: "GET",
                    target: "http://exa mple/",
                    at: jiff::Timestamp::UNIX_EPOCH,
                },
                &lookups
            ),
            Err(ExplainError::Target(_))
        ));
    }

    #[test]
    fn undecided_names_the_rule_and_resolve() {
        let s = settings(RULES);
        let q = Question {
            client: "192.168.1.20".parse().unwrap(),
            user: None,
            method: "GET",
            target: "http://intranet.example/",
            at: jiff::Timestamp::UNIX_EPOCH,
        };
        let lookups = Lookups {
            groups: None,
            resolve: None,
            is_local: &never_local,
        };
        let got = explain(&s, &q, &lookups).unwrap();
        assert_eq!(got.exit_code(), 3);
        let text = got.render();
        assert!(
            text.starts_with("undecided: rule \"no office servers\" needs the address intranet.example resolves to; run again with --resolve"),
            "{text}"
        );
    }

    /// Settings from `config` beside an htpasswd file `users.htpasswd` with the user alice.
    fn with_alice(config: &str) -> Settings {
        let dir = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("secret", 4).unwrap();
        std::fs::write(dir.path().join("users.htpasswd"), format!("alice:{hash}\n")).unwrap();
        let origin = dir.path().join("portcullis.toml");
        Config::from_toml(config, "t")
            .unwrap()
            .validate(&origin.display().to_string())
            .unwrap()
    }

    #[test]
    fn log_in_comes_before_the_rules() {
        let s = with_alice(
            "[auth]\nhtpasswd = \"users.htpasswd\"\n[ports]\nconnect = [\"https\"]\n\
             [[rules]]\nname = \"alice may ssh\"\nusers = [\"alice\"]\nports = [\"ssh\"]\naction = \"allow\"\n",
        );
        table_with(
            &s,
            false,
            &[
                "192.168.1.20 CONNECT git.example:22 | denied auth | 407",
                "alice@192.168.1.20 CONNECT git.example:22 | allowed rule \"alice may ssh\" | 200",
                "alice@192.168.1.20 CONNECT git.example:443 | allowed ports.connect | 200",
                "mallory@192.168.1.20 CONNECT git.example:443 | denied auth | 407",
                // The proxy's own pages need no log-in; a refused client is refused first.
                "192.168.1.20 GET /proxy.pac | allowed local | 200",
                "alice@8.8.8.8 CONNECT git.example:443 | denied clients.allow | 403",
            ],
        );
        let lookups = Lookups {
            groups: None,
            resolve: None,
            is_local: &never_local,
        };
        let q = Question {
            client: "192.168.1.20".parse().unwrap(),
            user: None,
            method: "CONNECT",
            target: "example.com:443",
            at: jiff::Timestamp::UNIX_EPOCH,
        };
        let text = explain(&s, &q, &lookups).unwrap().render();
        assert!(text.contains("needs a log-in (407, auth)"), "{text}");
    }

    #[test]
    fn socks_questions_take_the_socks_front_door() {
        let plain = "[socks]\nports = [\"ssh\", 21]\n";
        table(
            plain,
            false,
            &[
                "192.168.1.20 SOCKS5 example.com:22 | allowed socks.ports | SOCKS reply 0x00",
                "192.168.1.20 socks5 example.com:21 | allowed socks.ports | SOCKS reply 0x00",
                "192.168.1.20 SOCKS5 example.com:443 | denied socks.ports | SOCKS reply 0x02",
                "192.168.1.20 SOCKS5 127.0.0.1:22 | denied destinations.loopback | SOCKS reply 0x02",
                "8.8.8.8 SOCKS5 example.com:22 | denied clients.allow | SOCKS5 05 FF",
                // SOCKS4 and UDP ASSOCIATE are off by default.
                "192.168.1.20 SOCKS4 example.com:22 | denied request | no SOCKS answer",
                "192.168.1.20 SOCKS5-UDP example.com:53 | denied request | SOCKS reply 0x07",
            ],
        );
        table(
            "[socks]\nv4 = true\nudp = true\n",
            false,
            &[
                // Without socks.ports, ports.connect.
                "192.168.1.20 SOCKS5 example.com:443 | allowed ports.connect | SOCKS reply 0x00",
                "192.168.1.20 SOCKS4 example.com:443 | allowed ports.connect | SOCKS4 reply 0x5A",
                "192.168.1.20 SOCKS4 example.com:25 | denied ports.connect | SOCKS4 reply 0x5B",
                "192.168.1.20 SOCKS5-UDP example.com:53 | allowed socks.udp_ports | SOCKS reply 0x00",
                "192.168.1.20 SOCKS5-UDP example.com:5060 | denied socks.udp_ports | datagrams",
            ],
        );
        table(
            "[socks]\nenabled = false\n",
            false,
            &["192.168.1.20 SOCKS5 example.com:443 | denied request | no SOCKS answer"],
        );
    }

    #[test]
    fn with_auth_socks_logs_in_unless_a_rule_admits_its_address() {
        let s = with_alice(
            "[auth]\nhtpasswd = \"users.htpasswd\"\n[socks]\nv4 = true\n\
             [[rules]]\nname = \"no mail\"\nports = [\"smtp\"]\naction = \"deny\"\n\
             [[rules]]\nname = \"lab socks\"\nclients = [\"192.168.1.0/28\"]\nmethods = [\"SOCKS5\", \"SOCKS4\"]\n\
             hosts = [\".lab.example\"]\naction = \"allow\"\n",
        );
        table_with(
            &s,
            false,
            &[
                // Admitted by address: only the rule's destinations, deny rules still apply.
                "192.168.1.5 SOCKS5 git.lab.example:22 | allowed rule \"lab socks\" | SOCKS reply 0x00",
                "192.168.1.5 SOCKS4 git.lab.example:22 | allowed rule \"lab socks\" | SOCKS4 reply 0x5A",
                "192.168.1.5 SOCKS5 example.com:443 | denied auth | SOCKS reply 0x02",
                "192.168.1.5 SOCKS5 mx.lab.example:25 | denied rule \"no mail\" | SOCKS reply 0x02",
                // Other addresses log in; SOCKS4 cannot.
                "192.168.1.50 SOCKS5 git.lab.example:22 | denied auth | SOCKS5 05 FF",
                "alice@192.168.1.50 SOCKS5 example.com:443 | allowed ports.connect | SOCKS reply 0x00",
                "alice@192.168.1.50 SOCKS4 example.com:443 | denied auth | SOCKS4 reply 0x5B",
                "bob@192.168.1.50 SOCKS5 example.com:443 | denied auth | SOCKS5 05 FF",
                // HTTP from an admitted address still logs in.
                "192.168.1.5 CONNECT git.lab.example:22 | denied auth | 407",
            ],
        );
    }

    #[test]
    fn shaping_and_caps_are_named() {
        let s = settings(
            "[shaping]\ndown = \"100Mbit/s\"\n[shaping.weights]\n\"192.168.1.20\" = 2\n\
             [[limits.rate]]\nname = \"kids\"\nclients = [\"192.168.1.20\"]\ndown = \"5Mbit/s\"\n",
        );
        let lookups = Lookups {
            groups: None,
            resolve: None,
            is_local: &never_local,
        };
        let q = |client: &'static str| Question {
            client: client.parse().unwrap(),
            user: None,
            method: "CONNECT",
            target: "example.com:443",
            at: jiff::Timestamp::UNIX_EPOCH,
        };
        let text = explain(&s, &q("192.168.1.20"), &lookups).unwrap().render();
        assert!(text.contains("link: shared (shaping.down 12.5 MB/s, up not shaped): client 192.168.1.20 gets a share of weight 2"), "{text}");
        assert!(
            text.contains("caps: limits.rate \"kids\" (down 625 kB/s, up -)"),
            "{text}"
        );
        let text = explain(&s, &q("192.168.1.21"), &lookups).unwrap().render();
        assert!(text.contains("caps: no [[limits.rate]] matches"), "{text}");
    }
}
