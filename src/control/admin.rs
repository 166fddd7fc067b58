//! The admin listener: probes, Prometheus metrics, and an API to see and
//! steer every tunnel, server and upstream.
//!
//! Owns: routing admin requests, the bearer-token check (constant time;
//! `/healthz`, `/readyz` and, if `metrics_public`, `/metrics` are open),
//! JSON answers and JSON errors. Endpoints:
//! `GET /healthz`, `GET /readyz`, `GET /metrics`,
//! `GET /api/connections[?route=&server=&listener=&upstream=&limit=]`,
//! `GET|DELETE /api/connections/{id}[?code=&reason=]`, `GET /api/upstreams`,
//! `POST /api/upstreams/{name}/servers/{addr}/drain|enable`,
//! `POST /api/upstreams/{name}/rebalance?fraction=`, `GET /api/config`,
//! `POST /reload`; the dashboard's page at `GET /` (open: it asks for the
//! token itself) and its live feed, the WebSocket `GET /api/live`
//! ([`dashboard`]).
//!
//! Must not: serve traffic, or block the data path: everything here reads
//! the registry and the snapshot, and acts through `CloseControl` and the
//! balancer's flags.

// Lookups return the ready error response; admin requests are rare and
// their responses are built once, so the size of that variant costs nothing.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::dashboard::{self, LiveTasks};
use crate::control::{drain, lifecycle};
use crate::observe::access::CloseOrder;
use crate::observe::registry::{ConnStats, ConnSummary};
use crate::tunnel::frames::close_code_allowed;
use crate::upstream::balancer::Upstream;
use crate::Shared;

/// Close code 1008 (Policy Violation): the default when an operator ends a connection.
pub const CLOSE_POLICY: u16 = 1008;

type AdminResponse = Response<Full<Bytes>>;

/// What the admin listener serves: the running wsgate, set once it has
/// started. The listener is served from before that, so that probes can
/// tell "starting" from "down".
pub type Target = Arc<std::sync::OnceLock<Arc<Shared>>>;

/// Serves the admin API on `listener` until `stop`: until `target` is set,
/// only the probes, `/readyz` answering 503 `starting`.
pub async fn serve(
    listener: TcpListener,
    target: Target,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let target = target.clone();
        let stop = stop.clone();
        let live = LiveTasks {
            tasks: tasks.clone(),
            stop: stop.clone(),
        };
        tasks.spawn(async move {
            let service = service_fn(move |req| {
                let (target, live) = (target.clone(), live.clone());
                async move {
                    Ok::<_, Infallible>(match target.get() {
                        Some(shared) => handle(req, shared, &live).await,
                        None => starting(&req),
                    })
                }
            });
            // Upgrades: the dashboard's live feed is a WebSocket.
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// `/readyz`: 200 only when ready; the body says why not.
fn readyz(r: &lifecycle::Readiness) -> AdminResponse {
    use lifecycle::Readiness;
    let unavailable = StatusCode::SERVICE_UNAVAILABLE;
    match r {
        Readiness::Ready => json_response(StatusCode::OK, &json!({"status": "ready"})),
        Readiness::Starting => json_response(unavailable, &json!({"status": "starting"})),
        Readiness::Stopping => json_response(unavailable, &json!({"status": "draining"})),
        Readiness::Unhealthy(names) => json_response(
            unavailable,
            &json!({"status": "unhealthy", "upstreams_without_usable_server": names}),
        ),
    }
}

/// Answers a request that arrived before wsgate started: the probes say
/// so, and everything else waits for the config (503).
fn starting(req: &Request<Incoming>) -> AdminResponse {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, "/readyz") => readyz(&lifecycle::Readiness::Starting),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "wsgate is starting: the config is not live yet",
        ),
    }
}

/// Answers one admin request; a live feed it accepts runs on `live`.
pub async fn handle(
    req: Request<Incoming>,
    shared: &Arc<Shared>,
    live: &LiveTasks,
) -> AdminResponse {
    let path = req.uri().path().to_string();
    if req.method() == Method::GET {
        if let Some((body, content_type)) = dashboard::asset(&path) {
            return dashboard::serve_asset(body, content_type);
        }
    }
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method().clone();

    // Fixed at start: a reload can never open the admin API (see reload.rs).
    let admin = shared.admin.as_ref();
    let (token, metrics_public) = (
        admin.and_then(|a| a.token.clone()),
        admin.is_some_and(|a| a.metrics_public),
    );
    if token.is_none() {
        if let Some(why) = dashboard::browser::refusal(req.headers()) {
            return error(StatusCode::FORBIDDEN, why);
        }
    }
    let open = matches!(segs.as_slice(), ["healthz"] | ["readyz"])
        || (metrics_public && segs == ["metrics"]);
    // A browser cannot set headers on a WebSocket: the feed's token comes
    // as a subprotocol instead.
    let live_token = || {
        segs == ["api", "live"]
            && token.as_deref().is_some_and(|t| {
                dashboard::protocol_token(&req).is_some_and(|p| token_matches(&p, t))
            })
    };
    if !open && !authorized(&req, token.as_deref()) && !live_token() {
        let mut res = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        res.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return res;
    }

    match (&method, segs.as_slice()) {
        (&Method::GET, ["healthz"]) => json_response(StatusCode::OK, &json!({"status": "ok"})),
        (&Method::GET, ["readyz"]) => readyz(&lifecycle::readiness(shared)),
        (&Method::GET, ["metrics"]) => match shared.metrics.encode() {
            Ok(text) => {
                let mut res = Response::new(Full::new(Bytes::from(text)));
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                res
            }
            Err(_) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics could not be encoded",
            ),
        },
        (&Method::GET, ["api", "live"]) => dashboard::live(req, shared, live),
        (&Method::GET, ["api", "connections"]) => list_connections(shared, &query),
        (&Method::GET, ["api", "connections", id]) => match find(shared, id) {
            Ok(c) => json_response(StatusCode::OK, &view(&c)),
            Err(e) => e,
        },
        (&Method::DELETE, ["api", "connections", id]) => close_connection(shared, id, &query),
        (&Method::GET, ["api", "upstreams"]) => list_upstreams(shared),
        (
            &Method::POST,
            ["api", "upstreams", name, "servers", addr, action @ ("drain" | "enable")],
        ) => {
            // Serialised with reloads: an enable must not race a reload removing the server.
            let _no_reload = shared.reload_lock.lock().await;
            server_action(shared, name, addr, action)
        }
        (&Method::POST, ["api", "upstreams", name, "rebalance"]) => rebalance(shared, name, &query),
        (&Method::GET, ["api", "config"]) => config_view(shared),
        (&Method::POST, ["reload"]) => match crate::control::reload::reload(shared).await {
            Ok(report) => json_response(StatusCode::OK, &report),
            Err(crate::control::reload::ReloadError::Draining) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "wsgate is draining; reloads are refused",
            ),
            Err(e) => {
                let problems: Vec<String> = e.to_string().lines().map(str::to_string).collect();
                json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({"error": "config rejected; the running config stays", "problems": problems}),
                )
            }
        },
        (_, ["healthz" | "readyz" | "metrics" | "reload"])
        | (_, ["api", "connections" | "upstreams" | "config" | "live", ..]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{method} is not allowed on {path}"),
        ),
        _ => error(StatusCode::NOT_FOUND, &format!("no admin endpoint {path}")),
    }
}

/// Compares hashes of the presented and expected tokens in constant time,
/// so neither content nor length leaks through timing.
fn authorized<B>(req: &Request<B>, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    token_matches(presented, token)
}

fn token_matches(presented: &str, token: &str) -> bool {
    let a = Sha1::digest(presented.trim().as_bytes());
    let b = Sha1::digest(token.as_bytes());
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

fn json_response(status: StatusCode, body: &impl Serialize) -> AdminResponse {
    let text = serde_json::to_vec_pretty(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut res = Response::new(Full::new(Bytes::from(text)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

fn error(status: StatusCode, message: &str) -> AdminResponse {
    json_response(status, &json!({ "error": message }))
}

/// One tunnel as the API shows it.
#[derive(Serialize)]
struct ConnView {
    #[serde(flatten)]
    conn: ConnSummary,
    started: String,
    age_ms: u64,
    idle_ms: u64,
}

fn view(c: &ConnStats) -> ConnView {
    ConnView {
        conn: c.summary(),
        started: humantime::format_rfc3339_millis(c.started_at).to_string(),
        age_ms: u64::try_from(c.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        idle_ms: u64::try_from(c.idle_for().as_millis()).unwrap_or(u64::MAX),
    }
}

fn list_connections(shared: &Shared, q: &HashMap<String, String>) -> AdminResponse {
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => usize::MAX,
        Some(Ok(n)) => n,
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "limit must be a whole number"),
    };
    let server = match q.get("server").map(|s| s.parse::<SocketAddr>()) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "server must be an address such as 127.0.0.1:9001",
            )
        }
    };
    let matches = |c: &ConnStats| {
        q.get("route").is_none_or(|r| *c.info.route == **r)
            && q.get("listener").is_none_or(|l| *c.info.listener == **l)
            && q.get("upstream").is_none_or(|u| *c.info.upstream == **u)
            && server.is_none_or(|s| c.info.backend() == s)
    };
    let views: Vec<ConnView> = shared
        .registry
        .live()
        .iter()
        .filter(|c| matches(c))
        .take(limit)
        .map(|c| view(c))
        .collect();
    json_response(StatusCode::OK, &views)
}

fn find(shared: &Shared, id: &str) -> Result<Arc<ConnStats>, AdminResponse> {
    let id: u64 = id.parse().map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "connection id must be a whole number",
        )
    })?;
    shared
        .registry
        .get(id)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, &format!("no live connection {id}")))
}

fn close_connection(shared: &Shared, id: &str, q: &HashMap<String, String>) -> AdminResponse {
    let code =
        match q.get("code").map(|c| c.parse::<u16>()) {
            None => CLOSE_POLICY,
            Some(Ok(c)) if close_code_allowed(c) => c,
            _ => return error(
                StatusCode::BAD_REQUEST,
                "code must be a close code legal on the wire: 1000-1003, 1007-1014 or 3000-4999",
            ),
        };
    let reason = q
        .get("reason")
        .cloned()
        .unwrap_or_else(|| "closed by operator".to_string());
    // A Close frame's payload is at most 125 bytes, two of them the code.
    if reason.len() > 123 {
        return error(StatusCode::BAD_REQUEST, "reason must be at most 123 bytes");
    }
    let conn = match find(shared, id) {
        Ok(c) => c,
        Err(e) => return e,
    };
    if !conn.close.request(CloseOrder {
        code,
        reason: reason.clone(),
    }) {
        return error(StatusCode::CONFLICT, "the connection is already closing");
    }
    json_response(
        StatusCode::ACCEPTED,
        &json!({"id": conn.id, "code": code, "reason": reason, "status": "closing"}),
    )
}

fn upstream(shared: &Shared, name: &str) -> Result<Arc<Upstream>, AdminResponse> {
    shared
        .snapshot
        .load()
        .upstream(name)
        .cloned()
        .ok_or_else(|| error(StatusCode::NOT_FOUND, &format!("no upstream {name}")))
}

fn list_upstreams(shared: &Shared) -> AdminResponse {
    json_response(StatusCode::OK, &upstreams_value(shared))
}

/// Every upstream and its servers as `/api/upstreams` shows them (the
/// dashboard's feed sends the same).
pub(crate) fn upstreams_value(shared: &Shared) -> Vec<Value> {
    let snapshot = shared.snapshot.load();
    let ups: Vec<Value> = snapshot
        .upstreams()
        .map(|u| {
            let servers: Vec<Value> = u
                .servers
                .iter()
                .map(|s| {
                    let mut v = json!({
                        "addr": s.addr,
                        "active": s.active(),
                        "weight": s.weight(),
                        "state": s.state().as_str(),
                        "check": shared.health.report(&u.name, s.addr),
                    });
                    // Passive checks and slow start (control::eject).
                    if let Some(o) = v.as_object_mut() {
                        o.extend(crate::control::eject::server_fields(
                            s,
                            u.settings.availability.slow_start,
                        ));
                    }
                    v
                })
                .collect();
            json!({
                "name": &*u.name,
                "drain_timeout_ms": u.settings.drain_timeout.as_millis() as u64,
                "drain_spread_ms": u.settings.drain_spread.as_millis() as u64,
                "servers": servers,
            })
        })
        .collect();
    ups
}

fn server_action(shared: &Arc<Shared>, name: &str, addr: &str, action: &str) -> AdminResponse {
    let up = match upstream(shared, name) {
        Ok(u) => u,
        Err(e) => return e,
    };
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "server must be an address such as 127.0.0.1:9001",
        );
    };
    let Some(server) = up.server(addr).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("upstream {name} has no server {addr}"),
        );
    };
    if action == "enable" {
        server.enable();
        tracing::info!(upstream = name, server = %addr, "server enabled by operator");
        return json_response(
            StatusCode::OK,
            &json!({"upstream": name, "server": addr, "state": server.state().as_str()}),
        );
    }
    if let Some(stop) = server.disable() {
        tracing::info!(upstream = name, server = %addr, "server draining by operator");
        shared.tasks.spawn(drain::drain_server(
            shared.clone(),
            up.clone(),
            server,
            stop,
        ));
    }
    json_response(
        StatusCode::ACCEPTED,
        &json!({
            "upstream": name,
            "server": addr,
            "state": "draining",
            "drain_timeout_ms": up.settings.drain_timeout.as_millis() as u64,
            "drain_spread_ms": up.settings.drain_spread.as_millis() as u64,
        }),
    )
}

fn rebalance(shared: &Arc<Shared>, name: &str, q: &HashMap<String, String>) -> AdminResponse {
    let up = match upstream(shared, name) {
        Ok(u) => u,
        Err(e) => return e,
    };
    let fraction = match q.get("fraction").map(|f| f.parse::<f64>()) {
        None => 0.1,
        Some(Ok(f)) if f > 0.0 && f <= 1.0 => f,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "fraction must be a number in (0, 1]",
            )
        }
    };
    let victims = drain::rebalance_victims(shared, &up, fraction);
    let mut per_server: HashMap<String, usize> = HashMap::new();
    for v in &victims {
        *per_server
            .entry(v.info.server.label.to_string())
            .or_default() += 1;
    }
    let order = CloseOrder {
        code: drain::CLOSE_SERVICE_RESTART,
        reason: "rebalancing".to_string(),
    };
    let window = up.settings.drain_spread;
    let closing = victims.len();
    let shared_arc = shared.clone();
    shared.tasks.spawn(async move {
        let stop = CancellationToken::new();
        drain::spread_close(&victims, window, &order, &stop, &shared_arc.drain).await;
    });
    json_response(
        StatusCode::ACCEPTED,
        &json!({"upstream": name, "closing": closing, "per_server": per_server, "window_ms": window.as_millis() as u64, "code": drain::CLOSE_SERVICE_RESTART}),
    )
}

/// The running config, serialized from its typed form by the views in
/// `config::view` (which leave out the token and any key material).
fn config_view(shared: &Shared) -> AdminResponse {
    let snapshot = shared.snapshot.load();
    json_response(
        StatusCode::OK,
        &crate::config::view::ConfigView::from(&*snapshot.config),
    )
}
