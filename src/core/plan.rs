//! The plan: the ordered checks of one request, written once, for every front door (plain
//! HTTP, CONNECT and SOCKS today; TLS listeners next) and for `portcullis explain`.
//!
//! The order is [`ORDER`]. A front door runs it in three calls, doing the I/O between them:
//!
//! 1. [`front`]: the connection's admission, the client allow-list, the request head, what the
//!    client asked for, the proxy's own pages, and whether a log-in is needed. Pure.
//! 2. the log-in itself, when [`Front::Proceed`] says it is needed (the front door's own
//!    I/O: a credential cache, a password check off the reactor);
//! 3. [`destination`]: parent or direct, the address guards on a literal a parent would
//!    resolve, then the rules and port lists. Pure. Then the front door dials through
//!    `egress`, which asks [`check_address`] about every address before connecting to it.
//!
//! Each step tells a [`Trail`] what it found; the proxy passes `&mut ()` (nothing is kept),
//! `explain` renders the events as its numbered steps. Nothing here reads a socket, a file or
//! the clock: the questions only the outside world can answer (is this address this
//! machine's? does this host go through a parent?) are closures.

use std::net::{IpAddr, SocketAddr};

use crate::core::error::{EdgeError, ErrorKind};
use crate::core::policy::{Builtin, Decider, Decision, Denial, Facts, Kind, Policy};
use crate::core::quota::Quota;
use crate::core::target::{Classified, Host, Target, TargetError};

/// One check of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The connection's place in `[limits]` (a connection over them is answered with a refusal).
    Admission,
    /// The client's address against `clients.allow`.
    Client,
    /// The request head: `[limits]`, framing that could be read two ways, a forwarding loop.
    Head,
    /// What the client asked for: a tunnel, plain HTTP, or the proxy itself.
    Target,
    /// A request addressed to the proxy itself gets its own pages, without a log-in.
    OwnPage,
    /// `[auth]`: who the client is.
    LogIn,
    /// A parent proxy, unless the host is in `upstream.direct`; a parent resolves names itself.
    Route,
    /// The rules in order, then the port list of the request's kind.
    Decide,
    /// The byte budgets (`[[quotas]]`) that count the request: none may be used up.
    Budget,
    /// The guards on each address the proxy is about to connect to (`destinations.*`), and the
    /// rules again when they need the address.
    Addresses,
}

/// The checks in the order every front door takes them.
pub const ORDER: [Step; 10] = [
    Step::Admission,
    Step::Client,
    Step::Head,
    Step::Target,
    Step::OwnPage,
    Step::LogIn,
    Step::Route,
    Step::Decide,
    Step::Budget,
    Step::Addresses,
];

/// Whether the client has to log in before its destination is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogIn {
    /// `[auth]` is off, or the front door has logged the client in already: go on.
    Off,
    /// `[auth]` is on and the client has not logged in yet.
    Needed,
}

/// A request as the front of the plan sees it: plain data any front door can fill in.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// A refusal for every request of the connection (over the connection limits), if any.
    pub admission: Option<&'a EdgeError>,
    /// What is wrong with the request head, if anything (front doors with no head: `None`).
    pub head: Option<&'a EdgeError>,
    /// What the client asked for.
    pub target: &'a Result<Classified, TargetError>,
    /// Whether the client has to log in.
    pub login: LogIn,
}

/// What the front of the plan says.
#[derive(Debug)]
pub enum Front<'a> {
    /// Refused before any destination is considered.
    Refuse(EdgeError),
    /// Addressed to the proxy itself: its own pages answer.
    OwnPage,
    /// Go on to the destination: log in first when `login` says so.
    Proceed {
        /// A tunnel or plain HTTP.
        kind: Kind,
        /// Where to.
        target: &'a Target,
        /// [`LogIn::Needed`] when the front door must log the client in first.
        login: LogIn,
    },
}

/// How an allowed request reaches its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The proxy connects to the destination itself.
    Direct,
    /// A parent proxy carries the request and resolves names.
    Parent,
}

/// What the destination part of the plan says of an allowed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Go {
    /// Direct, or through a parent.
    pub route: Route,
    /// What allowed it, when known before the address is: `None` when the rules need the
    /// destination's address ([`check_address`] decides per address then).
    pub decider: Option<Decider>,
}

impl Go {
    /// Whether each resolved address must be decided again ([`check_address`] with facts).
    pub fn decides_per_address(&self) -> bool {
        self.decider.is_none()
    }
}

/// What a step found, for whoever keeps the trail.
#[derive(Debug)]
pub enum Event<'a> {
    /// The client's address against `clients.allow`.
    Client(Result<(), &'a Denial>),
    /// What the client asked for, or why it cannot be served.
    Target(Result<(Kind, &'a Target), &'a TargetError>),
    /// Addressed to the proxy itself.
    OwnPage,
    /// The route to the host.
    Route(Route, &'a Host),
    /// The guards on an address written in the request, met at the route when a parent would
    /// resolve everything else.
    Literal(IpAddr, Result<(), &'a Denial>),
    /// The rules and port lists decided (allowed or refused) without the address.
    Decided(&'a Decider, bool),
    /// A rule matches destinations by address, and the target is a name.
    NeedsAddress,
    /// A byte budget counts the request: its name, whose count, and the bytes used.
    Budget(&'a Quota, &'a str, u64),
}

/// Whatever keeps the events of the plan: `()` keeps nothing.
pub trait Trail {
    /// Notes one event.
    fn note(&mut self, event: Event<'_>);
}

impl Trail for () {
    #[inline]
    fn note(&mut self, _: Event<'_>) {}
}

/// The front of the plan: admission, client, head, target, own page, log-in. `is_local`
/// answers whether an address is this machine's (asked only about listeners bound to an
/// unspecified address).
pub fn front<'a>(
    policy: &Policy,
    request: &Request<'a>,
    is_local: &dyn Fn(IpAddr) -> bool,
    trail: &mut dyn Trail,
) -> Front<'a> {
    let mut asked = None;
    for step in ORDER {
        match step {
            Step::Admission => {
                if let Some(refusal) = request.admission {
                    return Front::Refuse(refusal.clone());
                }
            }
            Step::Client => {
                // Asked per request, so that a reload narrowing clients.allow applies at once.
                let admitted = policy.admit_client(request.client);
                trail.note(Event::Client(admitted.as_ref().map(|_| ())));
                if let Err(denial) = admitted {
                    return Front::Refuse(denial.into());
                }
            }
            Step::Head => {
                if let Some(problem) = request.head {
                    return Front::Refuse(problem.clone());
                }
            }
            Step::Target => match request.target {
                Err(e) => {
                    trail.note(Event::Target(Err(e)));
                    return Front::Refuse(e.clone().into());
                }
                Ok(Classified::Local) => {
                    trail.note(Event::OwnPage);
                    return Front::OwnPage;
                }
                Ok(Classified::Connect(target)) => asked = Some((Kind::Connect, target)),
                Ok(Classified::Forward(target)) => asked = Some((Kind::Http, target)),
                Ok(Classified::Socks(target)) => asked = Some((Kind::Socks, target)),
            },
            Step::OwnPage => {
                // An absolute URL naming this proxy asks for its own pages (the PAC file, the
                // welcome page): served like an origin-form request, never dialled, no log-in.
                if let Some((Kind::Http, target)) = asked {
                    if let Host::Ip(ip) = target.host {
                        if policy.is_listener(SocketAddr::new(ip, target.port), is_local) {
                            trail.note(Event::OwnPage);
                            return Front::OwnPage;
                        }
                    }
                }
            }
            // The front ends where the log-in begins: that is the front door's to do.
            Step::LogIn | Step::Route | Step::Decide | Step::Budget | Step::Addresses => break,
        }
    }
    match asked {
        Some((kind, target)) => {
            trail.note(Event::Target(Ok((kind, target))));
            Front::Proceed {
                kind,
                target,
                login: request.login,
            }
        }
        // Not reached: the target step either asks for something or answers.
        None => Front::Refuse(EdgeError::new(
            ErrorKind::Client,
            "the request target cannot be served",
        )),
    }
}

/// The destination part of the plan: the route, the guards on a literal address a parent
/// would otherwise carry unseen, then the rules and the port list. `via_parent` answers
/// whether a host goes through a parent (`upstream`, minus `upstream.direct`).
pub fn destination(
    policy: &Policy,
    facts: &Facts<'_>,
    via_parent: &dyn Fn(&Host) -> bool,
    is_local: &dyn Fn(IpAddr) -> bool,
    trail: &mut dyn Trail,
) -> Result<Go, Denial> {
    let route = if via_parent(facts.host) {
        Route::Parent
    } else {
        Route::Direct
    };
    trail.note(Event::Route(route, facts.host));
    // Through a parent, which resolves names itself, the address guards can only see targets
    // written as addresses: they meet them here, before the decision.
    if let (Route::Parent, Host::Ip(ip)) = (route, facts.host) {
        let addr = SocketAddr::new(*ip, facts.port);
        let checked = policy.check_address(&facts.host.to_string(), addr, is_local);
        trail.note(Event::Literal(*ip, checked.as_ref().map(|_| ())));
        checked?;
    }
    match policy.decide(facts, None) {
        Decision::Allow(decider) => {
            trail.note(Event::Decided(&decider, true));
            Ok(Go {
                route,
                decider: Some(decider),
            })
        }
        Decision::Deny(denial) => {
            trail.note(Event::Decided(&denial.rule, false));
            Err(denial)
        }
        Decision::NeedAddress => {
            trail.note(Event::NeedsAddress);
            Ok(Go {
                route,
                decider: None,
            })
        }
    }
}

/// What the budget step asks of the counts the proxy keeps.
pub trait Counts {
    /// The bytes used of `quota` by `key` in the period holding the moment of the facts.
    fn used(&mut self, quota: &Quota, key: &str) -> u64;
}

impl<F: FnMut(&Quota, &str) -> u64> Counts for F {
    fn used(&mut self, quota: &Quota, key: &str) -> u64 {
        self(quota, key)
    }
}

/// The budget step, after the decision allowed a request (before any dial): every byte
/// budget whose matchers pick the request counts it under its key (the client's address,
/// or the user); one that is used up refuses it, naming the quota and when it resets.
pub fn budget(
    policy: &Policy,
    quotas: &[Quota],
    facts: &Facts<'_>,
    counts: &mut dyn Counts,
    trail: &mut dyn Trail,
) -> Result<(), Denial> {
    for quota in quotas {
        let Some(key) = quota.key(facts) else {
            continue;
        };
        let used = counts.used(quota, &key);
        trail.note(Event::Budget(quota, &key, used));
        quota.check(used, &policy.clock, facts.at)?;
    }
    Ok(())
}

/// The last step, for one address `addr` of `target` that the proxy is about to connect to:
/// the guards (`destinations.*`), then, when `facts` is given because the rules need the
/// address, the decision again with it. Answers what allowed it in that case.
pub fn check_address(
    policy: &Policy,
    target: &Target,
    facts: Option<&Facts<'_>>,
    addr: SocketAddr,
    is_local: &dyn Fn(IpAddr) -> bool,
) -> Result<Option<Decider>, Denial> {
    policy.check_address(&target.host.to_string(), addr, is_local)?;
    let Some(facts) = facts else {
        return Ok(None);
    };
    match policy.decide(facts, Some(addr.ip())) {
        Decision::Allow(decider) => Ok(Some(decider)),
        Decision::Deny(denial) => Err(denial),
        // With the address known a decision is always reached; refuse rather than guess.
        Decision::NeedAddress => Err(Denial {
            rule: Decider::Builtin(Builtin::Rules),
            reason: format!("no decision could be reached for {target}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ports::{PortSet, PortSpec};
    use crate::core::target::classify;
    use http::{Method, Uri};

    fn policy() -> Policy {
        Policy {
            clients: vec!["10.0.0.0/8".parse().unwrap()],
            http_ports: PortSet::from_specs(&[PortSpec::from("http")]).unwrap(),
            connect_ports: PortSet::from_specs(&[PortSpec::from("https")]).unwrap(),
            socks_ports: None,
            udp_ports: PortSet::empty(),
            allow_loopback: false,
            listen: vec!["10.0.0.1:3128".parse().unwrap()],
            admin: None,
            rules: Vec::new(),
            clock: Default::default(),
        }
    }

    #[derive(Default)]
    struct Kept(Vec<String>, Vec<Step>);

    impl Trail for Kept {
        fn note(&mut self, event: Event<'_>) {
            self.0.push(format!("{event:?}"));
            self.1.push(event.step());
        }
    }

    impl Event<'_> {
        /// The step that reported the event.
        fn step(&self) -> Step {
            match self {
                Event::Client(_) => Step::Client,
                Event::Target(_) => Step::Target,
                Event::OwnPage => Step::OwnPage,
                Event::Route(..) => Step::Route,
                Event::Literal(..) => Step::Route,
                Event::Decided(..) | Event::NeedsAddress => Step::Decide,
                Event::Budget(..) => Step::Budget,
            }
        }
    }

    /// Where `step` is in [`ORDER`].
    fn rank(step: Step) -> usize {
        ORDER.iter().position(|s| *s == step).unwrap()
    }

    #[test]
    fn steps_are_reported_in_the_order_of_the_plan() {
        let p = policy();
        for (method, uri) in [
            ("CONNECT", "example.com:443"),
            ("GET", "http://example.com/"),
            ("GET", "http://10.0.0.1:3128/"),
            ("GET", "ftp://x/"),
        ] {
            let target = classified(method, uri);
            let request = Request {
                client: "10.0.0.2".parse().unwrap(),
                admission: None,
                head: None,
                target: &target,
                login: LogIn::Off,
            };
            let mut trail = Kept::default();
            if let Front::Proceed { kind, target, .. } = front(&p, &request, &|_| false, &mut trail)
            {
                let facts = Facts {
                    client: request.client,
                    user: None,
                    groups: &[],
                    method,
                    kind,
                    host: &target.host,
                    port: target.port,
                    at: jiff::Timestamp::UNIX_EPOCH,
                };
                for parent in [false, true] {
                    let _ = destination(&p, &facts, &|_| parent, &|_| false, &mut trail);
                }
            }
            // Two runs of the destination part (direct, then through a parent): each in order.
            let steps: Vec<usize> = trail.1.iter().map(|s| rank(*s)).collect();
            let restarts = steps.windows(2).filter(|w| w[1] < w[0]).count();
            let destined = trail.1.iter().filter(|s| **s == Step::Route).count();
            assert_eq!(
                restarts,
                destined.saturating_sub(1),
                "{method} {uri}: {:?}",
                trail.1
            );
            assert!(!steps.is_empty());
        }
    }

    fn classified(method: &str, uri: &str) -> Result<Classified, TargetError> {
        classify(
            &Method::from_bytes(method.as_bytes()).unwrap(),
            &uri.parse::<Uri>().unwrap(),
        )
    }

    fn front_of(client: &str, method: &str, uri: &str, login: LogIn) -> String {
        let target = classified(method, uri);
        let request = Request {
            client: client.parse().unwrap(),
            admission: None,
            head: None,
            target: &target,
            login,
        };
        match front(&policy(), &request, &|_| false, &mut ()) {
            Front::Refuse(e) => format!("refuse {} {}", e.status.as_u16(), e.kind),
            Front::OwnPage => "own page".into(),
            Front::Proceed {
                kind,
                target,
                login,
            } => format!("{kind:?} {target} {login:?}"),
        }
    }

    #[test]
    fn the_front_takes_its_checks_in_order() {
        // The client is checked before the target: an outsider learns nothing of it.
        assert_eq!(
            front_of("192.0.2.1", "GET", "ftp://x/", LogIn::Off),
            "refuse 403 denied"
        );
        assert_eq!(
            front_of("10.0.0.2", "GET", "ftp://x/", LogIn::Off),
            "refuse 501 client"
        );
        assert_eq!(front_of("10.0.0.2", "GET", "/", LogIn::Needed), "own page");
        // An absolute URL naming a listener is the proxy's own page, with no log-in.
        assert_eq!(
            front_of(
                "10.0.0.2",
                "GET",
                "http://10.0.0.1:3128/proxy.pac",
                LogIn::Needed
            ),
            "own page"
        );
        assert_eq!(
            front_of("10.0.0.2", "CONNECT", "example.com:443", LogIn::Needed),
            "Connect example.com:443 Needed"
        );
    }

    #[test]
    fn admission_and_head_refusals_come_first_and_second() {
        let target = classified("GET", "http://example.com/");
        let over = EdgeError::new(crate::core::error::ErrorKind::Limit, "full");
        let head = EdgeError::new(crate::core::error::ErrorKind::Loop, "loop");
        let mut request = Request {
            client: "192.0.2.1".parse().unwrap(),
            admission: Some(&over),
            head: Some(&head),
            target: &target,
            login: LogIn::Off,
        };
        let kind = |r: &Request<'_>| match front(&policy(), r, &|_| false, &mut ()) {
            Front::Refuse(e) => e.kind.as_str(),
            _ => "through",
        };
        assert_eq!(kind(&request), "limit");
        request.admission = None;
        assert_eq!(kind(&request), "denied");
        request.client = "10.0.0.2".parse().unwrap();
        assert_eq!(kind(&request), "loop");
        request.head = None;
        assert_eq!(kind(&request), "through");
    }

    #[test]
    fn a_parent_sees_the_guards_on_literals_before_the_decision() {
        let p = policy();
        let host = Host::Ip("127.0.0.1".parse().unwrap());
        let facts = Facts {
            client: "10.0.0.2".parse().unwrap(),
            user: None,
            groups: &[],
            method: "GET",
            kind: Kind::Http,
            host: &host,
            port: 80,
            at: jiff::Timestamp::UNIX_EPOCH,
        };
        let mut trail = Kept::default();
        let refused = destination(&p, &facts, &|_| true, &|_| false, &mut trail).unwrap_err();
        assert_eq!(refused.rule, "destinations.loopback");
        assert!(
            trail.0.iter().any(|e| e.starts_with("Literal")),
            "{trail:?}",
            trail = trail.0
        );
        // Direct, the literal is allowed by the port list; the guard waits for the dial.
        let go = destination(&p, &facts, &|_| false, &|_| false, &mut ()).unwrap();
        assert_eq!(go.route, Route::Direct);
        assert_eq!(go.decider, Some(Decider::Builtin(Builtin::PortsHttp)));
        let target = Target {
            host: host.clone(),
            port: 80,
        };
        let addr = "127.0.0.1:80".parse().unwrap();
        let refused = check_address(&p, &target, None, addr, &|_| false).unwrap_err();
        assert_eq!(refused.rule, "destinations.loopback");
    }
}
