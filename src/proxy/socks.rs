//! The SOCKS front door: SOCKS5 (RFC 1928, with the RFC 1929 log-in) and SOCKS4/4a on the
//! listen addresses, once the listener has seen the first byte (`crate::proxy::listener`).
//!
//! A SOCKS request takes the plan's path as an HTTP one does: the connection already holds
//! its admission slot; the greeting is answered only for an admitted client; the log-in
//! (`[auth]`) uses the htpasswd users, the credential cache and the failure block of
//! [`crate::proxy::authenticate`]; then `plan::front` and `plan::destination` with the kind
//! [`Kind::Socks`] (port list `socks.ports`, else `ports.connect`; rules see the method
//! `SOCKS5` or `SOCKS4`); the dial is the tunnel's (`tunnel::connect`: parents, Happy
//! Eyeballs, the guards on every address); the relay is the tunnel's (`tunnel::Carry`). The
//! reply code says what happened ([`crate::core::socks::reply_code`]), and every SOCKS
//! connection makes one access record. UDP ASSOCIATE is `crate::proxy::socks_udp`'s; BIND is
//! refused with 0x07. The wire formats are `crate::core::socks`'s.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::Settings;
use crate::core::error::{EdgeError, ErrorKind};
use crate::core::plan::{self, Front, Go, LogIn, Route};
use crate::core::policy::{without_login_refusal, Builtin, Facts, Kind, Policy};
use crate::core::socks::{
    self as wire, Command, Decode, Malformed, Reply, MAX_MESSAGE, NO_ACCEPTABLE, NO_AUTH, PASSWORD,
};
use crate::core::target::{Classified, Host, Target};
use crate::egress::dial::is_local_address;
use crate::egress::parent::Parents;
use crate::observe::access::PendingRecord;
use crate::proxy::admission::Slot;
use crate::proxy::authenticate::{log_in, not_blocked};
use crate::proxy::body::UpBody;
use crate::proxy::conn::ConnState;
use crate::proxy::exchange::Exchange;
use crate::proxy::respond::note_failure;
use crate::proxy::state::ProxyState;
use crate::proxy::{socks_udp, tunnel};

/// Which SOCKS the first byte said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// `0x05`.
    Five,
    /// `0x04`: SOCKS4 or 4a.
    Four,
}

impl Version {
    /// The method of its records, and the one rules match (`methods = ["SOCKS5"]`).
    fn method(self) -> &'static str {
        match self {
            Version::Five => "SOCKS5",
            Version::Four => "SOCKS4",
        }
    }

    /// The reply to a request that failed with `code` (SOCKS4 has one: rejected).
    fn failure(self, code: u8) -> Vec<u8> {
        match self {
            Version::Five => wire::reply(code, None),
            Version::Four => wire::reply4(false, None).to_vec(),
        }
    }

    /// The reply to a request that succeeded; `bound` is the proxy's end of the outbound
    /// socket (or of the UDP relay).
    pub(crate) fn success(self, bound: SocketAddr) -> Vec<u8> {
        match self {
            Version::Five => wire::reply(Reply::SUCCEEDED, Some(bound)),
            Version::Four => wire::reply4(true, Some(bound)).to_vec(),
        }
    }
}

/// A SOCKS connection as the listener hands it over.
pub(crate) struct Accepted {
    /// The client's socket; its first byte has only been peeked.
    pub stream: TcpStream,
    /// Which SOCKS.
    pub version: Version,
    /// The client's address.
    pub peer: SocketAddr,
    /// The proxy address it arrived on.
    pub local: SocketAddr,
    /// The connection's place in the limits.
    pub slot: Slot,
    /// A refusal for the connection (over the limits), if any.
    pub refusal: Option<EdgeError>,
}

/// Why a negotiation ended without a request to serve.
enum Ended {
    /// The client closed its end, or the socket failed.
    Closed,
    /// The bytes are not SOCKS.
    Malformed(Malformed),
    /// Refused (client, admission, log-in): already answered.
    Refused(EdgeError),
}

/// What the client asked for once the negotiation is done.
struct Asked {
    command: Command,
    target: Target,
    /// Admitted without a log-in while `[auth]` is on, by a rule naming its address
    /// ([`crate::core::policy::Policy::without_login`]).
    without_login: bool,
}

/// Serves one SOCKS connection to its end.
pub(crate) async fn serve(accepted: Accepted, shared: Arc<ProxyState>, stop: CancellationToken) {
    let Accepted {
        mut stream,
        version,
        peer,
        local,
        slot,
        refusal,
    } = accepted;
    let settings = shared.settings();
    let method = version.method();
    let mut ex = Exchange {
        shared: shared.clone(),
        settings: settings.clone(),
        client: peer,
        local,
        user: None,
        groups: Vec::new(),
        record: PendingRecord::open(shared.recorder.clone(), peer, method),
        body: None,
    };
    ex.record.request(method, None);
    let conn = slot.conn().clone();
    let limit = settings.timeouts.request_header;
    // Bytes read past the request (a client may send early) go to the destination first.
    let mut buf = Vec::with_capacity(64);
    let negotiated = tokio::select! {
        done = tokio::time::timeout(
            limit,
            negotiate(&mut ex, &mut stream, &mut buf, version, refusal.as_ref(), &conn),
        ) => done,
        _ = conn.evicted() => {
            ex.record.fail(
                ErrorKind::Limit,
                503,
                Some(Builtin::LimitsMaxConnections.into()),
                "closed during its SOCKS negotiation, to make room for a new connection at the connection limits".to_owned(),
            );
            return;
        }
        _ = stop.cancelled() => return,
    };
    let asked = match negotiated {
        Ok(Ok(asked)) => asked,
        Ok(Err(ended)) => return ended_early(&mut ex, ended),
        Err(_) => {
            let reason = format!(
                "the SOCKS negotiation did not finish within {} (timeouts.request_header)",
                humantime::format_duration(limit)
            );
            ex.record.fail(
                ErrorKind::ClientTimeout,
                408,
                Some(Builtin::RequestHeader.into()),
                reason,
            );
            return;
        }
    };
    // From the request on, the connection is busy (dialling, answering), not one that may
    // make room at the connection limits; once its tunnel opens it stands as a tunnel.
    let _busy = conn.begin();
    if asked.without_login {
        if let Some(settings) = settings_without_login(&ex) {
            ex.settings = settings;
        }
    }
    ex.record
        .destination(asked.target.host.to_string(), asked.target.port);
    match asked.command {
        Command::Connect => connect(ex, stream, buf, version, &asked.target, &refusal, slot).await,
        Command::Bind => {
            let _ = stream
                .write_all(&version.failure(Reply::COMMAND_NOT_SUPPORTED))
                .await;
            note_failure(
                &mut ex,
                &EdgeError::new(ErrorKind::Client, "SOCKS BIND is not supported")
                    .with_status(http::StatusCode::NOT_IMPLEMENTED),
            );
        }
        Command::UdpAssociate if !settings.socks.udp => {
            let _ = stream
                .write_all(&version.failure(Reply::COMMAND_NOT_SUPPORTED))
                .await;
            note_failure(
                &mut ex,
                &EdgeError::new(
                    ErrorKind::Client,
                    "SOCKS UDP ASSOCIATE is not served here (socks.udp = false)",
                )
                .with_status(http::StatusCode::NOT_IMPLEMENTED),
            );
        }
        Command::UdpAssociate => {
            ex.record.set_method(socks_udp::METHOD);
            let front = front(&ex, &asked.target, refusal.as_ref()).and_then(|()| {
                // Without a log-in, only a rule admitting the client for SOCKS5-UDP opens a relay.
                let admitted = !asked.without_login
                    || ex
                        .settings
                        .policy
                        .admits_without_login(ex.client.ip(), socks_udp::METHOD);
                match admitted {
                    true => Ok(()),
                    false => Err(EdgeError::refusal(
                        ErrorKind::Auth,
                        Builtin::Auth,
                        format!(
                            "without a log-in, no rule admits {} for SOCKS5-UDP",
                            ex.client.ip()
                        ),
                    )),
                }
            });
            match front {
                Ok(()) => socks_udp::associate(ex, stream, asked.target, slot, stop).await,
                Err(e) => {
                    let _ = stream
                        .write_all(&version.failure(wire::reply_code(e.kind)))
                        .await;
                    note_failure(&mut ex, &e);
                }
            }
        }
    }
}

/// The record of a negotiation that ended before a request.
fn ended_early(ex: &mut Exchange, ended: Ended) {
    let error = match ended {
        Ended::Closed => EdgeError::new(
            ErrorKind::Client,
            "the client left during the SOCKS negotiation",
        ),
        Ended::Malformed(m) => {
            let e = EdgeError::new(ErrorKind::Client, m.to_string());
            match m {
                Malformed::NotAHostName => EdgeError::new(ErrorKind::Dns, m.to_string()),
                Malformed::Command(_) | Malformed::AddressType(_) => {
                    e.with_status(http::StatusCode::NOT_IMPLEMENTED)
                }
                _ => e,
            }
        }
        Ended::Refused(e) => e,
    };
    debug!(reason = %error.reason, "SOCKS negotiation ended");
    note_failure(ex, &error);
}

/// Reads one message with `decode`, more bytes as they come; what follows it stays in `buf`.
async fn read_message<T>(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    decode: fn(&[u8]) -> Decode<T>,
) -> Result<T, Ended> {
    loop {
        match decode(buf) {
            Decode::Done(message, used) => {
                buf.drain(..used);
                return Ok(message);
            }
            Decode::Bad(m) => return Err(Ended::Malformed(m)),
            Decode::More if buf.len() >= MAX_MESSAGE => {
                return Err(Ended::Malformed(Malformed::TooLong))
            }
            Decode::More => {}
        }
        let mut chunk = [0u8; 256];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(Ended::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Writes `bytes`; a client gone is the end.
async fn send(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), Ended> {
    stream.write_all(bytes).await.map_err(|_| Ended::Closed)
}

/// The greeting, the log-in and the request.
async fn negotiate(
    ex: &mut Exchange,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    version: Version,
    refusal: Option<&EdgeError>,
    conn: &Arc<ConnState>,
) -> Result<Asked, Ended> {
    // A client refused at the door (over the limits, not in clients.allow) learns no more
    // than that: no method is acceptable, or the request is rejected.
    let admitted = match refusal {
        Some(e) => Err(e.clone()),
        None => ex
            .settings
            .policy
            .admit_client(ex.client.ip())
            .map_err(EdgeError::from),
    };
    match version {
        Version::Five => {
            let greeting = match read_message(stream, buf, wire::greeting).await {
                Err(Ended::Malformed(Malformed::NoMethods)) => {
                    send(stream, &[5, NO_ACCEPTABLE]).await?;
                    return Err(Ended::Malformed(Malformed::NoMethods));
                }
                other => other?,
            };
            if let Err(e) = admitted {
                send(stream, &[5, NO_ACCEPTABLE]).await?;
                return Err(Ended::Refused(e));
            }
            let without_login = ex.settings.auth.is_some()
                && !greeting.password
                && greeting.no_auth
                && admits_without_login(ex, version);
            if ex.settings.auth.is_some() && !without_login {
                if !greeting.password {
                    send(stream, &[5, NO_ACCEPTABLE]).await?;
                    return Err(Ended::Refused(EdgeError::refusal(
                        ErrorKind::Auth,
                        Builtin::Auth,
                        "this proxy needs a user name and password (SOCKS5 method 0x02)",
                    )));
                }
                send(stream, &[5, PASSWORD]).await?;
                let credentials = read_message(stream, buf, wire::credentials).await?;
                // The user name's length first (RFC 1929 gives it one byte): no two pairs
                // of user name and password make the same key.
                let key = [
                    b"socks\0",
                    &[credentials.user.len() as u8][..],
                    &credentials.user[..],
                    &credentials.password[..],
                ]
                .concat();
                let logged_in = match not_blocked(ex) {
                    Ok(()) => {
                        // Busy while the password is checked: not one to close to make room.
                        let _checking = conn.begin();
                        log_in(ex, &key, || {
                            match (
                                String::from_utf8(credentials.user),
                                String::from_utf8(credentials.password),
                            ) {
                                (Ok(user), Ok(password))
                                    if !user.is_empty() && !user.chars().any(char::is_control) =>
                                {
                                    Ok((user, password))
                                }
                                _ => Err("the SOCKS user name is empty or has control characters, or the user name or password is not UTF-8".to_owned()),
                            }
                        })
                        .await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = logged_in {
                    send(stream, &[1, 1]).await?;
                    return Err(Ended::Refused(e));
                }
                send(stream, &[1, 0]).await?;
            } else if greeting.no_auth {
                send(stream, &[5, NO_AUTH]).await?;
            } else if greeting.password {
                // A client set up with a password, on a proxy without [auth]: its log-in is
                // accepted unread (no one logs in here), as a proxy without passwords would.
                send(stream, &[5, PASSWORD]).await?;
                read_message(stream, buf, wire::credentials).await?;
                send(stream, &[1, 0]).await?;
            } else {
                send(stream, &[5, NO_ACCEPTABLE]).await?;
                return Err(Ended::Refused(EdgeError::new(
                    ErrorKind::Client,
                    "the SOCKS greeting offers neither method 0x00 (no log-in) nor 0x02 (user name and password)",
                )));
            }
            match read_message(stream, buf, wire::request).await {
                Ok(r) => Ok(Asked {
                    command: r.command,
                    target: r.target,
                    without_login,
                }),
                Err(Ended::Malformed(m)) => {
                    send(stream, &version.failure(m.reply())).await?;
                    Err(Ended::Malformed(m))
                }
                Err(e) => Err(e),
            }
        }
        Version::Four => {
            let request = match read_message(stream, buf, wire::request4).await {
                Err(Ended::Malformed(m)) => {
                    send(stream, &version.failure(m.reply())).await?;
                    return Err(Ended::Malformed(m));
                }
                other => other?,
            };
            if let Err(e) = admitted {
                send(stream, &version.failure(Reply::NOT_ALLOWED)).await?;
                return Err(Ended::Refused(e));
            }
            let without_login = ex.settings.auth.is_some() && admits_without_login(ex, version);
            if ex.settings.auth.is_some() && !without_login {
                send(stream, &version.failure(Reply::NOT_ALLOWED)).await?;
                return Err(Ended::Refused(EdgeError::refusal(
                    ErrorKind::Auth,
                    Builtin::Auth,
                    "this proxy needs a user name and password, which SOCKS4 cannot carry",
                )));
            }
            Ok(Asked {
                command: request.command,
                target: request.target,
                without_login,
            })
        }
    }
}

/// Whether a rule lets this client use SOCKS without a log-in while `[auth]` is on (for
/// SOCKS5, for CONNECT or UDP ASSOCIATE: the request is decided later).
fn admits_without_login(ex: &Exchange, version: Version) -> bool {
    let methods: &[&str] = match version {
        Version::Five => &[version.method(), socks_udp::METHOD],
        Version::Four => &[version.method()],
    };
    ex.settings
        .socks
        .without_login
        .as_ref()
        .is_some_and(|policy| {
            methods
                .iter()
                .any(|m| policy.admits_without_login(ex.client.ip(), m))
        })
}

/// The settings a client admitted without a log-in is served by: the policy of
/// [`crate::core::policy::Policy::without_login`] in place of the whole one. (Cloned per such
/// connection, which only a rule admitting SOCKS clients by address makes.)
fn settings_without_login(ex: &Exchange) -> Option<Arc<Settings>> {
    let policy = ex.settings.socks.without_login.as_ref()?;
    let mut settings = Settings::clone(&ex.settings);
    settings.policy = Policy::clone(policy);
    Some(Arc::new(settings))
}

/// A refusal by a port list, for a client admitted without a log-in, is the log-in's
/// ([`without_login_refusal`]).
pub(crate) fn as_login_refusal(ex: &Exchange, e: EdgeError, target: &Target) -> EdgeError {
    if ex.user.is_some() || ex.settings.auth.is_none() {
        return e;
    }
    let denial = e
        .rule
        .as_ref()
        .and_then(|rule| without_login_refusal(rule, ex.client.ip(), &target.host, target.port));
    match denial {
        Some(denial) => EdgeError::refusal(ErrorKind::Auth, Builtin::Auth, denial.reason),
        None => e,
    }
}

/// The front of the plan for a SOCKS request (the log-in is done already).
fn front(ex: &Exchange, target: &Target, refusal: Option<&EdgeError>) -> Result<(), EdgeError> {
    let classified = Ok(Classified::Socks(target.clone()));
    let request = plan::Request {
        client: ex.client.ip(),
        admission: refusal,
        head: None,
        target: &classified,
        login: LogIn::Off,
    };
    match plan::front(&ex.settings.policy, &request, &is_local_address, &mut ()) {
        Front::Refuse(e) => Err(e),
        Front::Proceed { .. } => Ok(()),
        Front::OwnPage => Err(EdgeError::new(
            ErrorKind::Client,
            "the request target cannot be served",
        )),
    }
}

/// The parent proxies a request goes through, when it does.
type ParentsIfAny = Option<Arc<Parents<UpBody>>>;

/// The plan for a SOCKS CONNECT: the front, then the destination.
fn decide(
    ex: &mut Exchange,
    target: &Target,
    refusal: Option<&EdgeError>,
) -> Result<(Go, ParentsIfAny), EdgeError> {
    front(ex, target, refusal)?;
    if target.port == 0 {
        return Err(EdgeError::new(
            ErrorKind::Client,
            "port 0 is not a valid destination port",
        ));
    }
    let parents = ex.shared.parents.load_full();
    let facts = Facts {
        client: ex.client.ip(),
        user: ex.user.as_deref(),
        groups: &ex.groups,
        method: ex.record.method(),
        kind: Kind::Socks,
        host: &target.host,
        port: target.port,
        at: jiff::Timestamp::now(),
    };
    let via_parent = |host: &Host| parents.as_ref().is_some_and(|p| p.serves(host));
    let go = plan::destination(
        &ex.settings.policy,
        &facts,
        &via_parent,
        &is_local_address,
        &mut (),
    )?;
    crate::proxy::budget::admit(ex, &facts)?;
    let parents = match go.route {
        Route::Parent => parents,
        Route::Direct => None,
    };
    Ok((go, parents))
}

/// A SOCKS CONNECT: decide, dial, reply, relay.
async fn connect(
    mut ex: Exchange,
    mut stream: TcpStream,
    early: Vec<u8>,
    version: Version,
    target: &Target,
    refusal: &Option<EdgeError>,
    slot: Slot,
) {
    let dialled = match decide(&mut ex, target, refusal.as_ref()) {
        Ok((go, parents)) => {
            if let Some(decider) = &go.decider {
                ex.record.allow(decider.clone());
            }
            tunnel::connect(&mut ex, target, &go, parents, Kind::Socks).await
        }
        Err(e) => Err(e),
    };
    let dialled = dialled.map_err(|e| as_login_refusal(&ex, e, target));
    let upstream = match dialled {
        Ok(upstream) => upstream,
        Err(e) => {
            let _ = stream
                .write_all(&version.failure(wire::reply_code(e.kind)))
                .await;
            note_failure(&mut ex, &e);
            return;
        }
    };
    let bound = upstream
        .local_addr()
        .unwrap_or(SocketAddr::new(ex.local.ip(), 0));
    if stream.write_all(&version.success(bound)).await.is_err() {
        ex.record
            .note("the client left before the SOCKS reply".into());
        return;
    }
    ex.record.answered(200);
    let dialled_ip = upstream.peer_addr().ok().map(|a| a.ip());
    let flow = tunnel::flow(&ex, target, Kind::Socks, dialled_ip);
    let window = crate::proxy::window::of(&ex, target, Kind::Socks, dialled_ip);
    let Exchange {
        record,
        shared,
        settings,
        ..
    } = ex;
    slot.conn().tunnel_opened();
    let tunnel = tunnel::Tunnel {
        upstream,
        port: target.port,
        idle: settings.timeouts.tunnel_idle,
        flow,
        window,
    };
    let conn = slot.conn().clone();
    tunnel::Carry::new(stream, early.into(), tunnel, record, shared, conn, ()).await;
}
