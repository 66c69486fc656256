//! The hyper service: each request is classified, checked and then forwarded, tunnelled or
//! answered by the proxy's own page. This is the only place where a refusal or failure
//! becomes a response, and where each exchange's access record is opened.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::core::auth::{challenge, parse_basic, CredentialCache, FailureTracker};
use crate::observe::stats::Stats;

use crate::config::{LimitsConfig, Settings};
use crate::core::error::{EdgeError, ErrorKind, Side};
use crate::core::policy::{Builtin, Decider};
use crate::core::target::{classify, Classified, Host};
use crate::egress::dial::is_local_address;
use crate::egress::dial::Dialer;
use crate::observe::access::{PendingRecord, Recorder};
use crate::proxy::body::{DownBody, UpBody};
use crate::proxy::conn::{ConnState, HeadFlags};
use crate::{proxy::forward, proxy::pages, proxy::tunnel};

/// The pooled client that carries plain HTTP to origins.
pub type UpstreamClient = Client<Dialer, UpBody>;

/// What every connection of the proxy shares.
pub struct Shared {
    /// The validated configuration in force; a reload swaps it whole.
    pub live: Arc<ArcSwap<Settings>>,
    /// Where access records go (the statistics among them).
    pub recorder: Arc<Recorder>,
    /// Live counters of port use.
    pub stats: Arc<Stats>,
    /// Keep-alive connections to origins.
    pub client: UpstreamClient,
    /// Parent proxies, when `[upstream]` names any; rebuilt on reload.
    pub parents: ArcSwapOption<crate::egress::parent::Parents<UpBody>>,
    /// Every connection and tunnel task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled when the shutdown grace period is over: cuts what is still open.
    pub hard_stop: CancellationToken,
    /// Verified credentials and failed log-ins; rebuilt on reload.
    pub login: ArcSwap<Login>,
    /// Open client connections, for `[limits]`.
    pub admission: Arc<crate::proxy::admission::Admission>,
    /// This proxy's name in `Via`, with a token unique to this process: a request that
    /// already carries it has looped back.
    pub via: crate::proxy::forward::Via,
}

/// What authentication remembers between requests.
pub struct Login {
    /// Credentials verified recently (`[auth] cache`).
    pub credentials: CredentialCache,
    /// Failed log-ins per client address (`[auth] max_failures`).
    pub failures: FailureTracker,
}

impl Login {
    fn new(settings: &Settings) -> Login {
        let auth = settings
            .auth
            .as_ref()
            .map(|a| a.config.clone())
            .unwrap_or_default();
        Login {
            credentials: CredentialCache::new(auth.cache, CREDENTIAL_CACHE_ENTRIES),
            failures: FailureTracker::new(
                auth.max_failures,
                auth.failure_window,
                auth.block_for,
                FAILURE_TRACKER_ENTRIES,
            ),
        }
    }
}

fn parents_for(settings: &Settings) -> Option<Arc<crate::egress::parent::Parents<UpBody>>> {
    settings.upstream.as_ref().map(|u| {
        Arc::new(crate::egress::parent::Parents::new(
            u,
            settings.timeouts.connect,
            settings.timeouts.origin_write(),
        ))
    })
}

impl Shared {
    /// Builds the shared state (and the upstream client) from validated settings.
    pub fn new(settings: Settings, recorder: Recorder) -> Self {
        let live = Arc::new(ArcSwap::from_pointee(settings));
        let settings = live.load_full();
        let client = crate::egress::dial::pooled_client().build(Dialer::new(live.clone()));
        let stats = Arc::new(Stats::with_dropped_counter(recorder.dropped_counter()));
        Shared {
            live,
            recorder: Arc::new(recorder.with_sink(stats.clone())),
            stats,
            client,
            parents: ArcSwapOption::new(parents_for(&settings)),
            tracker: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
            login: ArcSwap::from_pointee(Login::new(&settings)),
            admission: Arc::default(),
            via: crate::proxy::forward::Via::new(format!("portcullis-{:08x}", instance_token())),
        }
    }

    /// The configuration in force now.
    pub fn settings(&self) -> Arc<Settings> {
        self.live.load_full()
    }

    /// Puts new settings in force for new requests: parents and log-in state follow them.
    /// Requests and tunnels already running keep the settings they started with.
    pub fn swap(&self, settings: Settings) {
        self.parents.store(parents_for(&settings));
        self.login.store(Arc::new(Login::new(&settings)));
        self.live.store(Arc::new(settings));
    }
}

/// Verified credentials remembered at most (each a hash and a user name).
const CREDENTIAL_CACHE_ENTRIES: usize = 4096;
/// Client addresses whose failed log-ins are remembered at most.
const FAILURE_TRACKER_ENTRIES: usize = 16_384;

/// A random number for this process, from the standard library's randomly keyed hasher.
fn instance_token() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish() as u32
}

/// Serves the requests of one client connection.
#[derive(Clone)]
pub struct ProxyService {
    shared: Arc<Shared>,
    client: SocketAddr,
    local: SocketAddr,
    conn: Arc<ConnState>,
    /// A refusal for every request of this connection (over the connection limits).
    refusal: Option<EdgeError>,
    /// The connection's place in the connection limits, kept by its tunnels as well.
    slot: Arc<crate::proxy::admission::Slot>,
}

impl ProxyService {
    /// The service for a connection from `client` that arrived on `local`; `refusal`, when
    /// given, answers every request (a connection over the limits).
    pub fn new(
        shared: Arc<Shared>,
        client: SocketAddr,
        local: SocketAddr,
        conn: Arc<ConnState>,
        refusal: Option<EdgeError>,
        slot: Arc<crate::proxy::admission::Slot>,
    ) -> Self {
        if let Err(denial) = shared.settings().policy.admit_client(client.ip()) {
            info!(reason = %denial.reason, "client refused");
        }
        ProxyService {
            shared,
            client,
            local,
            conn,
            refusal,
            slot,
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<DownBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

/// One request's context: the pending record and what the handlers need.
pub struct Exchange {
    /// The shared state.
    pub shared: Arc<Shared>,
    /// The configuration this request is served under (one snapshot, whatever reloads).
    pub settings: Arc<Settings>,
    /// The client's address.
    pub client: SocketAddr,
    /// The proxy address the request arrived on.
    pub local: SocketAddr,
    /// The authenticated user, when `[auth]` is on.
    pub user: Option<String>,
    /// The record, filled in as the request goes.
    pub record: PendingRecord,
    /// Held while the request's body is unread; forwarding takes it into the body it sends.
    pub body: Option<crate::proxy::conn::BodyGuard>,
}

/// How a request is answered.
// A short-lived value moved once per request: boxing the response would cost more than the
// size difference does.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    /// A response to send (forwarded, a page of the proxy's own).
    Response(Response<DownBody>),
    /// An origin dialled for a CONNECT: answer 200, then relay.
    Tunnel(tunnel::Dialled),
}

impl ProxyService {
    async fn handle(self, req: Request<Incoming>) -> Response<DownBody> {
        let in_flight = self.conn.begin();
        let head = self.conn.take_head_flags();
        let connect = req.method() == http::Method::CONNECT;
        let body = (!connect && !http_body::Body::is_end_stream(req.body()))
            .then(|| self.conn.request_body());
        let mut ex = Exchange {
            shared: self.shared.clone(),
            settings: self.shared.settings(),
            client: self.client,
            local: self.local,
            user: None,
            record: PendingRecord::open(
                self.shared.recorder.clone(),
                self.client,
                req.method().as_str(),
            ),
            body,
        };
        // Read before the request is consumed: an error answers it with a page or a line.
        let page = crate::web::errorpage::Asked::for_page(&req);
        let routed = self.route(&mut ex, req, head).await;
        // A body that was not forwarded is left unread: its rest could not be told from a
        // next request, so this connection ends with this exchange, and says so.
        drop(ex.body.take());
        if connect && !matches!(routed, Ok(Reply::Tunnel(_))) {
            // The bytes behind a refused CONNECT are the tunnel's the client hoped for, not
            // requests: none is read after this answer.
            self.conn.close_after();
        }
        let (mut response, record) = match routed {
            Ok(Reply::Response(response)) => (response, Some(ex.record)),
            Ok(Reply::Tunnel(dialled)) => {
                // The tunnel task owns the record from here: it ends when the tunnel does.
                let shared = self.shared.clone();
                self.shared.tracker.spawn(
                    tunnel::relay(dialled, ex.record, shared, self.slot.clone()).in_current_span(),
                );
                (Response::new(DownBody::empty()), None)
            }
            Err(error) => {
                let response = refusal(&mut ex, error, page.as_ref());
                (response, Some(ex.record))
            }
        };
        if self.conn.closing() {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response.body_mut().finish_with(record, Some(in_flight));
        response
    }

    async fn route(
        &self,
        ex: &mut Exchange,
        req: Request<Incoming>,
        head: HeadFlags,
    ) -> Result<Reply, EdgeError> {
        let classified = classify(req.method(), req.uri());
        let version = match req.version() {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_09 => "HTTP/0.9",
            _ => "HTTP/1.1",
        };
        let path = matches!(classified, Ok(Classified::Forward(_) | Classified::Local))
            .then(|| req.uri().path());
        ex.record.request(version, path);
        match &classified {
            Ok(Classified::Connect(t) | Classified::Forward(t)) => {
                ex.record.destination(t.host.to_string(), t.port);
            }
            Ok(Classified::Local) => {}
            // Log what can be read of a target that cannot be served.
            Err(_) => ex.record.destination(
                req.uri().host().unwrap_or_default().to_ascii_lowercase(),
                req.uri().port_u16().unwrap_or(0),
            ),
        }
        if let Some(refusal) = &self.refusal {
            return Err(refusal.clone());
        }
        // Checked per request, so that a reload that narrows clients.allow applies at once.
        ex.settings.policy.admit_client(self.client.ip())?;
        if head.has(HeadFlags::FRAGMENT) {
            return Err(EdgeError::new(
                ErrorKind::Client,
                "a request target must not carry a #fragment",
            ));
        }
        if head.has(HeadFlags::CONTENT_LENGTH) && head.has(HeadFlags::TRANSFER_ENCODING) {
            return Err(EdgeError::new(
                ErrorKind::Client,
                "a request must not carry both Content-Length and Transfer-Encoding",
            ));
        }
        check_head(&req, &ex.settings.limits)?;
        if carries_token(req.headers(), self.shared.via.name()) {
            return Err(EdgeError::new(
                ErrorKind::Loop,
                "this request has already passed through this proxy: a forwarding loop",
            ));
        }
        let classified = classified?;
        // An absolute URL naming this proxy is a request for its own pages (the PAC file, the
        // welcome page): served like an origin-form request, never dialled, no log-in.
        let own_page = match &classified {
            Classified::Local => true,
            Classified::Forward(target) => match target.host {
                Host::Ip(ip) => ex
                    .settings
                    .policy
                    .is_listener(std::net::SocketAddr::new(ip, target.port), is_local_address),
                Host::Name(_) => false,
            },
            Classified::Connect(_) => false,
        };
        if own_page {
            return Ok(Reply::Response(pages::local(ex, &req)));
        }
        if ex.settings.auth.is_some() {
            // Boxed, as the rarer branches below: the future of each request is as large as
            // its largest branch, and is moved as a whole.
            Box::pin(self.authenticate(ex, &req)).await?;
        }
        match classified {
            Classified::Connect(target) => Box::pin(tunnel::open(ex, req, target))
                .await
                .map(Reply::Tunnel),
            Classified::Forward(target) => Box::pin(forward::forward(ex, req, target))
                .await
                .map(Reply::Response),
            Classified::Local => Ok(Reply::Response(pages::local(ex, &req))),
        }
    }
}

impl ProxyService {
    /// Checks `Proxy-Authorization` when `[auth]` is on; sets the exchange's user.
    async fn authenticate<B>(&self, ex: &mut Exchange, req: &Request<B>) -> Result<(), EdgeError> {
        let settings = ex.settings.clone();
        let Some(auth) = &settings.auth else {
            return Ok(());
        };
        let login = self.shared.login.load_full();
        let ip = self.client.ip();
        let now = std::time::Instant::now();
        if let Some(left) = login.failures.blocked_for(ip, now) {
            let seconds = left.as_secs().max(1);
            return Err(EdgeError::refusal(
                ErrorKind::Limit,
                Builtin::AuthMaxFailures,
                format!("too many failed log-ins from {ip}; try again in {seconds} s"),
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from(seconds)));
        }
        let challenge = || {
            HeaderValue::from_str(&challenge(&auth.config.realm))
                .unwrap_or_else(|_| HeaderValue::from_static("Basic"))
        };
        let Some(value) = req.headers().get(header::PROXY_AUTHORIZATION) else {
            return Err(EdgeError::refusal(
                ErrorKind::Auth,
                Builtin::Auth,
                "this proxy needs a user name and password",
            )
            .with_header(header::PROXY_AUTHENTICATE, challenge()));
        };
        if let Some(user) = login.credentials.get(value.as_bytes(), now) {
            ex.record.user(&user);
            ex.user = Some(user);
            return Ok(());
        }
        let (user, verified) = match parse_basic(value.as_bytes()) {
            Ok(credentials) => {
                let users = auth.users.clone();
                let user = credentials.user.clone();
                // bcrypt takes tens of milliseconds on purpose: keep it off the reactor.
                let verified = tokio::task::spawn_blocking(move || {
                    users.verify(&credentials.user, &credentials.password)
                })
                .await
                .unwrap_or(false);
                (user, verified)
            }
            Err(e) => {
                warn!(target: "portcullis::auth", client = %ip, user = "-", reason = %e, "authentication failed");
                login.failures.note_failure(ip, now);
                return Err(EdgeError::refusal(
                    ErrorKind::Auth,
                    Builtin::Auth,
                    format!("the Proxy-Authorization header is not usable: {e}"),
                )
                .with_header(header::PROXY_AUTHENTICATE, challenge()));
            }
        };
        if verified {
            login.failures.note_success(ip);
            login
                .credentials
                .insert(value.as_bytes(), user.clone(), now);
            ex.record.user(&user);
            ex.user = Some(user);
            return Ok(());
        }
        warn!(target: "portcullis::auth", client = %ip, user = %user, "authentication failed");
        login.failures.note_failure(ip, now);
        Err(EdgeError::refusal(
            ErrorKind::Auth,
            Builtin::Auth,
            format!("wrong user name or password for user {user:?}"),
        )
        .with_header(header::PROXY_AUTHENTICATE, challenge()))
    }
}

/// Turns an error into the response the client sees, and notes it in the record: an HTML
/// page when `page` says what a browser asked for, else the one-line text.
fn refusal(
    ex: &mut Exchange,
    error: EdgeError,
    page: Option<&crate::web::errorpage::Asked>,
) -> Response<DownBody> {
    match error.side {
        Side::Client => debug!(status = error.status.as_u16(), reason = %error.reason, "refused"),
        Side::Upstream => {
            debug!(status = error.status.as_u16(), reason = %error.reason, "upstream failure")
        }
    }
    // A client-side error no rule decided is the request's own fault.
    let rule = error
        .rule
        .clone()
        .or_else(|| (error.side == Side::Client).then_some(Decider::Builtin(Builtin::Request)));
    ex.record.fail(
        error.kind,
        error.status.as_u16(),
        rule,
        error.reason.clone(),
    );
    let (body, content_type) = match page {
        Some(asked) => {
            let pages = &ex.settings.pages;
            let values = crate::web::errorpage::PageValues::new(
                &error,
                asked,
                ex.client.ip(),
                &pages.contact,
                std::time::SystemTime::now(),
            );
            let html = crate::web::errorpage::render(&values, pages.error_template.as_deref());
            (html, "text/html; charset=utf-8")
        }
        None => (error.body_text(), "text/plain; charset=utf-8"),
    };
    let mut response = Response::new(DownBody::text(body));
    *response.status_mut() = error.status;
    let closes = error.closes_connection();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if closes {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    for (name, value) in error.headers {
        headers.append(name, value);
    }
    response
}

/// Refuses request heads beyond the `[limits]`, and framing a downstream server could read
/// differently than hyper did (request smuggling).
fn check_head<B>(req: &Request<B>, limits: &LimitsConfig) -> Result<(), EdgeError> {
    let uri = req.uri();
    let target_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    let line_len = req.method().as_str().len() + target_len + 10;
    if line_len > limits.max_request_line {
        return Err(EdgeError::new(
            ErrorKind::Limit,
            format!(
                "the request line is longer than {} bytes (limits.max_request_line)",
                limits.max_request_line
            ),
        )
        .with_status(StatusCode::URI_TOO_LONG));
    }
    let headers = req.headers();
    if headers.len() > limits.max_headers {
        return Err(EdgeError::new(
            ErrorKind::Limit,
            format!(
                "the request has more than {} header fields (limits.max_headers)",
                limits.max_headers
            ),
        )
        .with_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
    }
    let head_len = line_len
        + headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if head_len > limits.max_header_bytes {
        return Err(EdgeError::new(
            ErrorKind::Limit,
            format!(
                "the request head is larger than {} bytes (limits.max_header_bytes)",
                limits.max_header_bytes
            ),
        )
        .with_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
    }
    // hyper accepts a Transfer-Encoding whose last coding is chunked; the proxy re-frames
    // the body as chunked alone, so any other coding would be silently lost.
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty());
    if codings.any(|c| !c.eq_ignore_ascii_case("chunked")) {
        return Err(EdgeError::new(
            ErrorKind::Client,
            "only the chunked transfer coding is supported in requests",
        )
        .with_status(StatusCode::NOT_IMPLEMENTED));
    }
    let chunked = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .filter(|c| !c.trim().is_empty())
        .count();
    if chunked > 1 {
        return Err(EdgeError::new(
            ErrorKind::Client,
            "chunked may be applied once (one Transfer-Encoding: chunked)",
        ));
    }
    Ok(())
}

/// Whether a `Via` header names this very proxy instance.
fn carries_token(headers: &http::HeaderMap, via: &str) -> bool {
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|hop| hop.split_whitespace().nth(1) == Some(via))
        })
}
