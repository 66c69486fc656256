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
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, Instrument};

use crate::access::{PendingRecord, Recorder};
use crate::body::{DownBody, UpBody};
use crate::config::Settings;
use crate::dial::Dialer;
use crate::error::{EdgeError, Side};
use crate::policy::Denial;
use crate::server::ConnState;
use crate::target::{classify, Classified};
use crate::{forward, pages, tunnel};

/// The pooled client that carries plain HTTP to origins.
pub type UpstreamClient = Client<Dialer, UpBody>;

/// What every connection of the proxy shares.
pub struct Shared {
    /// The validated configuration.
    pub settings: Arc<Settings>,
    /// Where access records go.
    pub recorder: Arc<Recorder>,
    /// Keep-alive connections to origins.
    pub client: UpstreamClient,
    /// Every connection and tunnel task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled when the shutdown grace period is over: cuts what is still open.
    pub hard_stop: CancellationToken,
}

impl Shared {
    /// Builds the shared state (and the upstream client) from validated settings.
    pub fn new(settings: Settings, recorder: Recorder) -> Self {
        let settings = Arc::new(settings);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .pool_max_idle_per_host(16)
            .http1_preserve_header_case(true)
            .set_host(false)
            .build(Dialer::new(settings.clone()));
        Shared {
            settings,
            recorder: Arc::new(recorder),
            client,
            tracker: TaskTracker::new(),
            hard_stop: CancellationToken::new(),
        }
    }
}

/// Serves the requests of one client connection.
#[derive(Clone)]
pub struct ProxyService {
    shared: Arc<Shared>,
    client: SocketAddr,
    local: SocketAddr,
    conn: Arc<ConnState>,
    /// The client admission decision, made once per connection.
    admitted: Result<(), Denial>,
}

impl ProxyService {
    /// The service for a connection from `client` that arrived on `local`.
    pub fn new(
        shared: Arc<Shared>,
        client: SocketAddr,
        local: SocketAddr,
        conn: Arc<ConnState>,
    ) -> Self {
        let admitted = shared.settings.policy.admit_client(client.ip());
        if let Err(denial) = &admitted {
            info!(reason = %denial.reason, "client refused");
        }
        ProxyService {
            shared,
            client,
            local,
            conn,
            admitted,
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
    /// The client's address.
    pub client: SocketAddr,
    /// The proxy address the request arrived on.
    pub local: SocketAddr,
    /// The record, filled in as the request goes.
    pub record: PendingRecord,
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
        let had_fragment = self.conn.take_fragment();
        let mut ex = Exchange {
            shared: self.shared.clone(),
            client: self.client,
            local: self.local,
            record: PendingRecord::open(
                self.shared.recorder.clone(),
                self.client,
                req.method().as_str(),
            ),
        };
        let (mut response, record) = match self.route(&mut ex, req, had_fragment).await {
            Ok(Reply::Response(response)) => (response, Some(ex.record)),
            Ok(Reply::Tunnel(dialled)) => {
                // The tunnel task owns the record from here: it ends when the tunnel does.
                let shared = self.shared.clone();
                self.shared
                    .tracker
                    .spawn(tunnel::relay(dialled, ex.record, shared).in_current_span());
                (Response::new(DownBody::empty()), None)
            }
            Err(error) => {
                let response = refusal(&mut ex, error);
                (response, Some(ex.record))
            }
        };
        response.body_mut().finish_with(record, Some(in_flight));
        response
    }

    async fn route(
        &self,
        ex: &mut Exchange,
        req: Request<Incoming>,
        had_fragment: bool,
    ) -> Result<Reply, EdgeError> {
        let classified = classify(req.method(), req.uri());
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
        self.admitted.clone()?;
        if had_fragment {
            return Err(EdgeError::client(
                StatusCode::BAD_REQUEST,
                "a request target must not carry a #fragment",
            ));
        }
        match classified? {
            Classified::Connect(target) => tunnel::open(ex, req, target).await.map(Reply::Tunnel),
            Classified::Forward(target) => {
                forward::forward(ex, req, target).await.map(Reply::Response)
            }
            Classified::Local => Ok(Reply::Response(pages::local(ex, &req))),
        }
    }
}

/// Turns an error into the response the client sees, and notes it in the record.
fn refusal(ex: &mut Exchange, error: EdgeError) -> Response<DownBody> {
    match error.side {
        Side::Client => debug!(status = error.status.as_u16(), reason = %error.reason, "refused"),
        Side::Upstream => {
            debug!(status = error.status.as_u16(), reason = %error.reason, "upstream failure")
        }
    }
    ex.record
        .fail(error.status.as_u16(), error.rule, error.reason.clone());
    let mut response = Response::new(DownBody::text(error.body_text()));
    *response.status_mut() = error.status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if error.closes_connection() {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
