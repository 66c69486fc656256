//! The hyper service of the plain-HTTP front door: each request's record is opened here, the
//! plan ([`crate::core::plan`]) is run, and the request is forwarded, tunnelled or answered by
//! the proxy's own pages; a refusal or failure is answered by [`crate::proxy::respond`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use tracing::info;

use crate::core::error::{EdgeError, ErrorKind};
use crate::core::limits::{check_head, RawHead};
use crate::core::plan::{self, Front, LogIn, Route};
use crate::core::policy::{Builtin, Decider, Facts, Kind};
use crate::core::target::{classify, Classified, Host};
use crate::egress::dial::is_local_address;
use crate::observe::access::PendingRecord;
use crate::proxy::admission::{Admit, Slot};
use crate::proxy::authenticate::authenticate;
use crate::proxy::body::DownBody;
use crate::proxy::conn::{ConnState, HeadFlags};
use crate::proxy::exchange::Exchange;
use crate::proxy::respond::refusal;
use crate::proxy::state::ProxyState;
use crate::proxy::{forward, pages, tunnel};

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

/// Serves the requests of one client connection.
#[derive(Clone)]
pub struct ProxyService {
    shared: Arc<ProxyState>,
    client: SocketAddr,
    local: SocketAddr,
    conn: Arc<ConnState>,
    /// A refusal for every request of this connection (over the connection limits).
    refusal: Option<EdgeError>,
    /// The connection's place in the connection limits, kept by its tunnels as well.
    slot: Arc<Slot>,
}

impl ProxyService {
    /// The service for a connection from `client` that arrived on `local`; `refusal`, when
    /// given, answers every request (a connection over the limits).
    pub fn new(
        shared: Arc<ProxyState>,
        client: SocketAddr,
        local: SocketAddr,
        conn: Arc<ConnState>,
        refusal: Option<EdgeError>,
        slot: Arc<Slot>,
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

impl ProxyService {
    async fn handle(self, req: Request<Incoming>) -> Response<DownBody> {
        let in_flight = self.conn.begin();
        let head = self.conn.take_head_flags();
        let connect = req.method() == http::Method::CONNECT;
        // Light until it moves more than a little, if its client moves little now.
        let lane = (!connect).then(|| self.shared.express.enter(self.client.ip()));
        let h2 = req.version() == http::Version::HTTP_2;
        let stream = h2.then(|| self.admit_stream(connect));
        // A tunnel stream is busy until its tunnel opens: it cannot be chosen to make room.
        let stream_busy = stream
            .as_ref()
            .filter(|_| connect)
            .and_then(|s| Some(s.as_ref().ok()?.conn().begin()));
        let body = (!connect && !http_body::Body::is_end_stream(req.body()))
            .then(|| self.conn.request_body());
        let mut ex = Exchange {
            shared: self.shared.clone(),
            settings: self.shared.settings(),
            client: self.client,
            local: self.local,
            user: None,
            groups: Vec::new(),
            record: PendingRecord::open(
                self.shared.recorder.clone(),
                self.client,
                req.method().as_str(),
            ),
            body,
        };
        // Read before the request is consumed: an error answers it with a page or a line.
        let page = crate::web::errorpage::Asked::for_page(&req);
        // An exchange still waiting for its answer when the shutdown grace period ends is
        // answered 503 rather than cut without a word.
        let refused = self
            .refusal
            .as_ref()
            .or(stream.as_ref().and_then(|s| s.as_ref().err()));
        let routed = tokio::select! {
            biased;
            routed = self.route(&mut ex, req, head, refused) => routed,
            _ = self.conn.cut() => Err(EdgeError::new(
                ErrorKind::Shutdown,
                "the proxy is shutting down, and the answer did not come within timeouts.shutdown_grace",
            )),
        };
        // A body that was not forwarded is left unread: its rest could not be told from a
        // next request, so this connection ends with this exchange, and says so.
        drop(ex.body.take());
        if connect && !h2 && !matches!(routed, Ok(Reply::Tunnel(_))) {
            // The bytes behind a refused CONNECT are the tunnel's the client hoped for, not
            // requests: none is read after this answer. (Over HTTP/2 they are the stream's
            // only, which ends with the answer.)
            self.conn.close_after();
        }
        let mut place = stream.and_then(Result::ok);
        let (mut response, record) = match routed {
            Ok(Reply::Response(response)) => (response, Some(ex.record)),
            Ok(Reply::Tunnel(dialled)) => {
                // The tunnel task owns the record from here: it ends when the tunnel does.
                // It holds the connection's place (over HTTP/2, its stream's place, and keeps
                // its connection busy), and stands as a tunnel before this exchange ends.
                let (place, busy) = match place.take() {
                    Some(place) => (place, Some(self.conn.begin())),
                    None => (self.slot.clone(), None),
                };
                place.conn().tunnel_opened();
                drop(stream_busy);
                let shared = self.shared.clone();
                tunnel::spawn_relay(dialled, ex.record, shared, (place, busy), h2);
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
        response
            .body_mut()
            .finish_with(record, Some((in_flight, place, lane)));
        response
    }

    /// Over HTTP/2 a stream takes a place in the connection limits of its own, as the
    /// HTTP/1.1 connection it stands for would (the connection holds one more). A tunnel's
    /// place has a state of its own, so that a quiet tunnel makes room alone; a request's is
    /// its connection's, busy while the request is. At a limit, the stream is refused as a
    /// connection would be, and its connection's other streams go on.
    fn admit_stream(&self, tunnel: bool) -> Result<Arc<Slot>, EdgeError> {
        let state = if tunnel {
            Arc::new(ConnState::new())
        } else {
            self.conn.clone()
        };
        let settings = self.shared.settings();
        match self
            .shared
            .admission
            .admit(self.client.ip(), state, &settings.limits)
        {
            Admit::Yes(slot) => Ok(Arc::new(slot)),
            Admit::Refuse(refusal, _) => Err(refusal),
            Admit::Shed => Err(crate::core::limits::refuse_total(
                settings.limits.max_connections,
            )),
        }
    }

    /// Runs the plan ([`plan`]) for one request: the front checks, the log-in, the
    /// destination; then forwards, tunnels or answers with the proxy's own pages.
    async fn route(
        &self,
        ex: &mut Exchange,
        req: Request<Incoming>,
        head: HeadFlags,
        refused: Option<&EdgeError>,
    ) -> Result<Reply, EdgeError> {
        let mut classified = classify(req.method(), req.uri());
        if req.version() == http::Version::HTTP_2 && addresses_this_listener(&req, ex.local) {
            // Over HTTP/2 every request names scheme and authority: `https` with this TLS
            // listener's port is a browser asking the proxy itself, as `GET /` over HTTP/1.1.
            classified = Ok(Classified::Local);
        }
        let version = match req.version() {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_09 => "HTTP/0.9",
            http::Version::HTTP_2 => "HTTP/2",
            _ => "HTTP/1.1",
        };
        let path = matches!(classified, Ok(Classified::Forward(_) | Classified::Local))
            .then(|| req.uri().path());
        ex.record.request(version, path);
        match &classified {
            Ok(Classified::Connect(t) | Classified::Forward(t) | Classified::Socks(t)) => {
                ex.record.destination(t.host.to_string(), t.port);
            }
            Ok(Classified::Local) => {}
            // Log what can be read of a target that cannot be served.
            Err(_) => ex.record.destination(
                req.uri().host().unwrap_or_default().to_ascii_lowercase(),
                req.uri().port_u16().unwrap_or(0),
            ),
        }
        let settings = ex.settings.clone();
        let raw = RawHead {
            fragment: head.has(HeadFlags::FRAGMENT),
            length_and_coding: head.has(HeadFlags::CONTENT_LENGTH)
                && head.has(HeadFlags::TRANSFER_ENCODING),
        };
        // `OPTIONS http://host:port` (no path, no query) asks about the origin as a whole: it
        // goes out as `OPTIONS *` (RFC 9112 §3.2.4). Only the raw line tells it from `.../`.
        let asterisk = head.has(HeadFlags::EMPTY_PATH)
            && req.method() == http::Method::OPTIONS
            && req.uri().path() == "/"
            && req.uri().query().is_none();
        let head = check_head(&req, raw, &settings.limits.head(), self.shared.via.name()).err();
        let request = plan::Request {
            client: self.client.ip(),
            admission: refused,
            head: head.as_ref(),
            target: &classified,
            login: if settings.auth.is_some() {
                LogIn::Needed
            } else {
                LogIn::Off
            },
        };
        let kind = match plan::front(&settings.policy, &request, &is_local_address, &mut ()) {
            Front::Refuse(error) => return Err(error),
            Front::OwnPage => return Ok(Reply::Response(pages::own_page(ex, &req))),
            Front::Proceed { kind, login, .. } => {
                if login == LogIn::Needed {
                    // Boxed, as the rarer branches below: the future of each request is as
                    // large as its largest branch, and is moved as a whole.
                    Box::pin(authenticate(ex, &req)).await?;
                }
                kind
            }
        };
        // The front proceeds only with these two; the target is taken back by value here.
        let Ok(Classified::Connect(target) | Classified::Forward(target)) = classified else {
            return Err(EdgeError::new(
                ErrorKind::Client,
                "the request target cannot be served",
            ));
        };
        let parents = ex.shared.parents.load_full();
        let facts = Facts {
            client: self.client.ip(),
            user: ex.user.as_deref(),
            groups: &ex.groups,
            method: req.method().as_str(),
            kind,
            host: &target.host,
            port: target.port,
            at: jiff::Timestamp::now(),
        };
        let via_parent = |host: &Host| parents.as_ref().is_some_and(|p| p.serves(host));
        let go = plan::destination(
            &settings.policy,
            &facts,
            &via_parent,
            &is_local_address,
            &mut (),
        )?;
        if let Some(decider) = &go.decider {
            ex.record.allow(decider.clone());
        }
        crate::proxy::budget::admit(ex, &facts)?;
        let parents = match go.route {
            Route::Parent => parents,
            Route::Direct => None,
        };
        match kind {
            Kind::Connect => Box::pin(tunnel::open(ex, req, target, go, parents))
                .await
                .map(Reply::Tunnel),
            // Not asked by this front door: only the SOCKS one classifies SOCKS requests.
            Kind::Socks | Kind::SocksUdp => Err(EdgeError::new(
                ErrorKind::Client,
                "the request target cannot be served",
            )),
            Kind::Http => {
                // A name of this proxy on a listener's port (`http://proxy.lan:3128/` from a
                // browser that uses the proxy) is resolved and refused as the proxy's own
                // address like any destination, after the log-in and the rules; that refusal
                // is answered with the proxy's own pages, as the same URL with the address is
                // by the plan's front. The head is kept only for a listener's port.
                let head = settings
                    .policy
                    .listen
                    .iter()
                    .any(|l| l.port() == target.port)
                    .then(|| request_head(&req));
                match Box::pin(forward::forward(ex, req, target, go, parents, asterisk)).await {
                    Err(e) if e.rule == Some(Decider::Builtin(Builtin::DestinationsSelf)) => {
                        match head {
                            Some(head) => Ok(Reply::Response(pages::own_page(ex, &head))),
                            None => Err(e),
                        }
                    }
                    answered => answered.map(Reply::Response),
                }
            }
        }
    }
}

/// The method, target and header fields of `req`, without its body: what the proxy's own
/// pages read.
fn request_head<B>(req: &Request<B>) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    head
}

/// Whether an HTTP/2 request (`:scheme https`, `:authority host:port`) is for the proxy's own
/// pages: no `CONNECT`, and the port of the TLS listener it arrived on.
fn addresses_this_listener<B>(req: &Request<B>, local: std::net::SocketAddr) -> bool {
    let uri = req.uri();
    req.method() != http::Method::CONNECT
        && uri.scheme() == Some(&http::uri::Scheme::HTTPS)
        && uri.port_u16().unwrap_or(443) == local.port()
}
