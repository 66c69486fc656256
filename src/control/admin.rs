//! The admin listener (`[admin] listen`, loopback by default): `/metrics` for Prometheus,
//! `/status` (an HTML page: a chart of port use, top clients, top destinations, recent
//! refusals), `/status.json` (the same data), `/healthz`, and `POST /reload`.
//!
//! Only addresses in `admin.allow` are answered; anyone else gets `403`. Everything is
//! rendered on the server from [`Stats`]: the page loads no script, style sheet or font.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::control::reload::Reload;
use crate::observe::metrics::{render_budgets, render_helpers, render_lists, render_metrics};
use crate::observe::stats::{Stats, Usage};
use crate::proxy::state::ProxyState;
use crate::web::html::own_answer;
use crate::web::status::{status_page, BudgetRow, ClientRow, ErrorCounts, KeyRow, Snapshot};

/// Serves the admin listener until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    allow: Vec<IpNet>,
    shared: Arc<ProxyState>,
    reload: Option<Reload>,
    stop: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "admin listening: /metrics /status /status.json /healthz, POST /reload");
    }
    let allow = Arc::new(allow);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let allow = allow.clone();
        let reload = reload.clone();
        let stop = stop.clone();
        shared.tracker.clone().spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                let allow = allow.clone();
                let reload = reload.clone();
                async move {
                    Ok::<_, Infallible>(answer(&shared, &allow, reload.as_ref(), peer, &req).await)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        debug!(error = %e, "admin connection ended with an error");
                    }
                }
                _ = stop.cancelled() => {}
            }
        });
    }
}

async fn answer(
    shared: &ProxyState,
    allow: &[IpNet],
    reload: Option<&Reload>,
    peer: SocketAddr,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let ip = peer.ip().to_canonical();
    if !allow.iter().any(|n| n.contains(&ip)) {
        return text(
            StatusCode::FORBIDDEN,
            format!("{ip} may not read this proxy's status (admin.allow)\n"),
        );
    }
    if req.uri().path() == "/reload" {
        if req.method() != Method::POST {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST /reload to reload the configuration\n".to_owned(),
            );
        }
        return match reload {
            None => text(
                StatusCode::CONFLICT,
                "the proxy was started without a configuration file: nothing to reload\n"
                    .to_owned(),
            ),
            Some(reload) => match reload.request().await {
                Ok(summary) => text(StatusCode::OK, format!("reloaded: {summary}\n")),
                Err(errors) => text(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "not reloaded; still running on the previous configuration:\n{errors}\n"
                    ),
                ),
            },
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not supported here\n", req.method()),
        );
    }
    let settings = shared.settings();
    let names = |ip: IpAddr| settings.client_name(ip).map(str::to_owned);
    match req.uri().path() {
        "/metrics" => with_type(
            {
                let mut text = render_metrics(
                    &shared.stats,
                    &names,
                    &shared.admission.counts(&settings.limits),
                    &shared
                        .shaper
                        .load()
                        .as_ref()
                        .map(|shaper| shaper.clients())
                        .unwrap_or_default(),
                );
                let lists: Vec<_> = settings
                    .policy
                    .rules
                    .iter()
                    .filter_map(|r| r.list.as_ref().map(|l| (&*r.name, l.status())))
                    .collect();
                render_lists(&mut text, &lists);
                let budgets = budget_rows(shared, &settings);
                let rows: Vec<_> = budgets
                    .iter()
                    .map(|b| (b.quota.as_str(), b.key.as_str(), b.used, b.bytes))
                    .collect();
                render_budgets(&mut text, &rows, shared.budgets.store.state());
                render_helpers(&mut text, &shared.helpers.load().health());
                text
            },
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        "/status.json" => with_type(
            serde_json::to_string_pretty(&snapshot(shared)).unwrap_or_default(),
            "application/json",
        ),
        "/status" | "/" => with_type(status_page(&snapshot(shared)), "text/html; charset=utf-8"),
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
        path => text(
            StatusCode::NOT_FOUND,
            format!("{path} is not a page here; try /status or /metrics\n"),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = with_type(body, "text/plain; charset=utf-8");
    *r.status_mut() = status;
    r
}

fn with_type(body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    own_answer(StatusCode::OK, content_type, Full::new(Bytes::from(body)))
}

/// Takes the snapshot of what `/status` and `/status.json` show.
fn snapshot(shared: &ProxyState) -> Snapshot {
    let stats: &Stats = &shared.stats;
    let (clients, other_clients) = stats.clients();
    let (users, other_users) = stats.users();
    let (hosts, other_hosts) = stats.hosts();
    let settings = shared.settings();
    let keyed = |rows: Vec<(String, Usage)>, other: Usage, limit: usize| -> Vec<KeyRow> {
        rows.into_iter()
            .take(limit)
            .map(|(key, usage)| KeyRow { key, usage })
            .chain((other != Usage::default()).then(|| KeyRow {
                key: "other".into(),
                usage: other,
            }))
            .collect()
    };
    Snapshot {
        instance: settings.instance.clone(),
        started: humantime::format_rfc3339_seconds(stats.started()).to_string(),
        uptime_seconds: stats.started().elapsed().map(|d| d.as_secs()).unwrap_or(0),
        connections_open: shared.admission.open(),
        link: shared
            .shaper
            .load()
            .as_ref()
            .map(|shaper| shaper.clients())
            .unwrap_or_default(),
        link_history: shared
            .shaper
            .load()
            .as_ref()
            .map(|shaper| shaper.history())
            .unwrap_or_default(),
        link_speed: crate::web::status::LinkSpeed {
            down: settings.shaping.down,
            up: settings.shaping.up,
        },
        connections: shared.admission.counts(&settings.limits),
        access_log_dropped: stats
            .dropped_records
            .load(std::sync::atomic::Ordering::Relaxed),
        ports: stats.ports(),
        clients: clients
            .into_iter()
            .map(|(ip, usage)| ClientRow {
                client: ip.to_string(),
                name: settings.client_name(ip).map(str::to_owned),
                usage,
            })
            .chain((other_clients != Usage::default()).then(|| ClientRow {
                client: "other".into(),
                name: None,
                usage: other_clients,
            }))
            .collect(),
        users: keyed(users, other_users, usize::MAX),
        hosts: keyed(hosts, other_hosts, 100),
        errors: ErrorCounts(stats.errors()),
        recent_denials: stats.recent_denials(),
        budgets: budget_rows(shared, &settings),
        budget_store: shared.store.load().as_ref().map(|store| {
            let up = shared.budgets.store.state().is_some_and(|(up, _)| up);
            (store.shown().to_owned(), up)
        }),
        helpers: shared.helpers.load().health(),
    }
}

/// Every budget counted in its period under way, for `/status` and `/metrics`.
fn budget_rows(shared: &ProxyState, settings: &crate::config::Settings) -> Vec<BudgetRow> {
    if settings.quotas.is_empty() {
        return Vec::new();
    }
    let now = jiff::Timestamp::now();
    let clock = &settings.policy.clock;
    shared
        .budgets
        .standings(&settings.quotas, clock, now)
        .into_iter()
        .map(|s| BudgetRow {
            name: s
                .key
                .parse::<IpAddr>()
                .ok()
                .and_then(|ip| settings.client_name(ip).map(str::to_owned)),
            quota: s.quota.to_string(),
            key: s.key,
            used: s.used,
            bytes: s.bytes,
            per: s.per.to_string(),
            resets: s.resets.to_string(),
            resets_shown: clock.show(s.resets, now),
        })
        .collect()
}
