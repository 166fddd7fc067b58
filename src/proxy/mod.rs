//! The life of one request, top to bottom: classify, check the handshake,
//! normalise the path, route, pick servers, open the upstream, answer the
//! client, and hand a verified upgrade to a tracked tunnel task.
//!
//! Owns: the order of those phases and the answer for each failure. Every
//! request ends in exactly one response and one log line (the tunnel's
//! access line for a 101, a handshake line for everything else).
//!
//! Must not: open a tunnel on anything but a backend's verified 101, or pass
//! any byte from the client to a backend before that.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::net::guard::{Guarded, Scanner};
use crate::net::linger::Lingering;
use crate::net::tls::{ClientStream, MaybeTls};
use crate::observe::metrics::TunnelLabels;
use crate::observe::registry::{
    ConnInfo, RegistryGuard, RequestRecord, Side, TunnelEnd, CLOSE_GOING_AWAY,
};
use crate::tunnel::frames::encode_close;
use crate::upstream::balancer::Balance;
use crate::upstream::{self, Answer, Deadlines, UpstreamError};
use crate::{tunnel, Shared};
use handshake::{HandshakeError, RequestKind};
use routes::ListenerSettings;

pub mod handshake;
pub mod plain;
pub mod routes;
pub mod upload;

/// Body of every response wsgate sends to a client.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// What one client connection knows about itself.
pub struct ConnContext {
    /// Process-wide state.
    pub shared: Arc<Shared>,
    /// The listener that accepted it.
    pub listener: Arc<ListenerSettings>,
    /// The peer's socket address.
    pub peer: SocketAddr,
    /// The certificate the client's SNI named, if it named one: a request
    /// for a host that certificate does not cover is misdirected (421).
    pub sni_cert: Option<usize>,
    /// Requests being served on this connection right now (0 or 1 with
    /// HTTP/1.1): a drain closes a connection at once when it is 0.
    pub in_flight: AtomicUsize,
    /// The framing guard over this connection's bytes (see framing.rs).
    pub scanner: Arc<Mutex<Scanner>>,
}

impl ConnContext {
    /// Sets this hop's forwarding headers on a request bound for a backend
    /// (see `upstream::set_forwarding_headers`), for upgrades and plain
    /// requests alike.
    pub fn set_forwarding_headers(&self, headers: &mut HeaderMap, host: Option<&HeaderValue>) {
        let peer = self.peer.ip();
        let tls = self.listener.tls.is_some();
        upstream::set_forwarding_headers(headers, peer, self.listener.trusts(peer), tls, host);
    }

    /// The connection's framing guard.
    pub fn scanner(&self) -> std::sync::MutexGuard<'_, Scanner> {
        // Plain state with no invariant a panic could break.
        self.scanner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counts one request in flight until dropped, on every path.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Self(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a request was answered without a tunnel.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(transparent)]
    Client(#[from] HandshakeError),
    #[error(transparent)]
    Backend(#[from] UpstreamError),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::Client(e) => e.status(),
            Refusal::Backend(e) => e.status(),
        }
    }

    fn side(&self) -> &'static str {
        match self {
            Refusal::Client(HandshakeError::NoRoute) => "config",
            Refusal::Client(_) => "client",
            Refusal::Backend(_) => "backend",
        }
    }
}

/// Serves one request on a client connection. Never fails: every error becomes a response.
pub async fn handle(
    req: Request<Incoming>,
    ctx: Arc<ConnContext>,
) -> Result<Response<ProxyBody>, Infallible> {
    let _in_flight = InFlight::new(&ctx.in_flight);
    let started = Instant::now();
    let kind = handshake::classify(&req);
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().to_string(), |p| p.to_string());
    let record = RequestRecord {
        // Behind a trusted proxy, the address its headers name; else the peer.
        client: upstream::real_client(req.headers(), ctx.peer, |ip| ctx.listener.trusts(ip)),
        listener: ctx.listener.name.clone(),
        method: req.method().clone(),
        path,
        route: None,
        upstream: None,
        backend: None,
        started,
        sent: 0,
    };
    if kind == RequestKind::Plain {
        ctx.shared.metrics.http_request_started(&ctx.listener.name);
    }
    let mut pending = Pending {
        ctx: &ctx,
        kind,
        record,
        answered: false,
    };
    let forwarded = forward(req, &ctx, kind, &mut pending.record).await;
    pending.answered = true;
    let record = &pending.record;
    let response = match forwarded {
        // The tunnel writes its own record when it ends.
        Ok(Forwarded::Tunnel(r)) => r,
        // The response body writes the record, and counts the request,
        // when it ends.
        Ok(Forwarded::Streaming(r)) => return Ok(answered(&ctx, r)),
        Ok(Forwarded::Answered(r)) => {
            record.emit(
                r.status().as_u16(),
                0,
                0,
                "backend: answered without upgrade",
            );
            r
        }
        Err(refusal) => {
            if let Refusal::Backend(e) = &refusal {
                // One line per kind of backend failure per window, with a count.
                if let Some(held) = ctx.shared.errors.check(&e.throttle_key(), Instant::now()) {
                    tracing::warn!(error = %e, repeated_since_last = held, "backend failure");
                }
            }
            let r = refuse(&refusal);
            let reason = format!("{}: {refusal}", refusal.side());
            record.emit(r.status().as_u16(), record.sent, 0, &reason);
            r
        }
    };
    pending.count(response.status().as_u16());
    Ok(answered(&ctx, response))
}

/// Tells the framing guard of an answer. No tunnel: the connection goes on
/// as HTTP, and its next bytes must be checked again. Every answer is told
/// to the guard, whatever the request looked like to `classify`: the guard
/// decides on raw bytes. A client that sent more after an upgrade request,
/// before its answer (which RFC 6455 forbids), and whose bytes were
/// refused, loses the connection instead.
fn answered(ctx: &ConnContext, mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS && !ctx.scanner().answered() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// One request while it is handled: its record, and the one place that
/// counts its end in the metric of its kind. If it is dropped before it
/// was answered (the client went away, or a drain cut its connection,
/// while wsgate waited for its body or a backend, and hyper dropped the
/// handler), it writes its line and metric itself.
struct Pending<'a> {
    ctx: &'a ConnContext,
    kind: RequestKind,
    record: RequestRecord,
    answered: bool,
}

impl Pending<'_> {
    /// Counts the request's end with `status`. A streamed plain response
    /// counts its own, when its body ends.
    fn count(&self, status: u16) {
        let metrics = &self.ctx.shared.metrics;
        let listener = &self.ctx.listener.name;
        let elapsed = self.record.started.elapsed();
        match self.kind {
            RequestKind::Plain => {
                metrics.http_request(listener, status, elapsed, self.record.sent, 0)
            }
            RequestKind::WebSocket => metrics.handshake(listener, status, elapsed),
        }
    }
}

/// The status logged for a request whose client left before its answer
/// (nginx's convention, so dashboards built for it read wsgate's logs).
const CLIENT_CLOSED_REQUEST: u16 = 499;

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let status = CLIENT_CLOSED_REQUEST;
        let shared = &self.ctx.shared;
        // A drain or shutdown ends connections too: say so, not blame the client.
        let reason = if shared.shutdown.is_cancelled() || shared.drain.is_cancelled() {
            "proxy: connection closed by shutdown before the answer"
        } else {
            "client: gone before the answer"
        };
        self.record.emit(status, self.record.sent, 0, reason);
        self.count(status);
    }
}

/// How a request was served.
enum Forwarded {
    /// A verified 101: the tunnel task is running.
    Tunnel(Response<ProxyBody>),
    /// A plain request's response, whose body logs the request when it ends.
    Streaming(Response<ProxyBody>),
    /// A handshake the backend answered with something other than 101.
    Answered(Response<ProxyBody>),
}

async fn forward(
    mut req: Request<Incoming>,
    ctx: &Arc<ConnContext>,
    kind: RequestKind,
    record: &mut RequestRecord,
) -> Result<Forwarded, Refusal> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let host = routes::normalize_host(host);
    let key = match kind {
        RequestKind::WebSocket => Some(handshake::check_client_request(&req)?),
        RequestKind::Plain => {
            handshake::check_plain_request(&req)?;
            None
        }
    };
    // A connection opened for one certificate's host, reused for another
    // (HTTP connection coalescing): the client must open one with the right SNI.
    if let (Some(cert), Some(tls)) = (ctx.sni_cert, &ctx.listener.tls) {
        if !tls.covers(cert, &host) {
            return Err(HandshakeError::Misdirected(host).into());
        }
    }
    // Absolute-form targets carry their own authority, which could disagree with Host.
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        return Err(HandshakeError::Path(routes::PathError::NotOriginForm).into());
    }
    let path = routes::normalize_path(req.uri().path()).map_err(HandshakeError::Path)?;

    // Take what this request needs from the snapshot and let go of the rest.
    let (route, timeouts, max_body) = {
        let snapshot = ctx.shared.snapshot.load();
        let route = snapshot.route(&host, &path).cloned();
        (
            route.ok_or(HandshakeError::NoRoute)?,
            snapshot.timeouts,
            snapshot.limits.max_request_body,
        )
    };
    record.route = Some(route.label.clone());
    record.upstream = Some(route.upstream.name.clone());
    // Plain requests use the same key as upgrades, so a long-polling
    // client reaches the server its WebSocket will.
    let hash = match &route.upstream.settings.balance {
        Balance::Hash { key, .. } => key.of(req.headers(), req.uri().query(), record.client.ip()),
        _ => None,
    };
    let candidates = route.upstream.candidates(hash);

    let mut target = path.clone();
    if let Some(q) = req.uri().query() {
        target.push('?');
        target.push_str(q);
    }
    let Some(key) = key else {
        let routed = plain::Routed {
            route: &route,
            candidates: &candidates,
            target: &target,
            timeouts,
            max_body,
        };
        let response = plain::forward(req, ctx, routed, record).await?;
        return Ok(Forwarded::Streaming(response));
    };
    let client = record.client;
    let mut headers = req.headers().clone();
    handshake::strip_hop_by_hop(&mut headers);
    ctx.set_forwarding_headers(&mut headers, req.headers().get(header::HOST));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let mut backend_req = Request::new(Empty::<Bytes>::new());
    *backend_req.method_mut() = http::Method::GET;
    *backend_req.uri_mut() = target
        .parse()
        .map_err(|_| HandshakeError::Path(routes::PathError::BadEncoding))?;
    *backend_req.headers_mut() = headers;

    let accept = handshake::accept_key(key.as_bytes());
    let deadlines = Deadlines {
        connect: timeouts.connect,
        handshake: timeouts.upstream_handshake,
    };
    let hs = upstream::Handshake {
        request: backend_req,
        expected_accept: &accept,
        offered: req.headers(),
        deadlines,
        tasks: &ctx.shared.tasks,
        shutdown: &ctx.shared.shutdown,
        tls: route.upstream.tls.as_deref(),
    };
    let answer = upstream::open(&candidates, &hs).await.inspect_err(|e| {
        // The access line names the backend that failed, not `-`.
        record.backend = e.addr();
    })?;

    match answer {
        Answer::Http { server, response } => {
            // Not a 101: an ordinary response, and the client connection stays
            // HTTP, so whatever the client sends next is parsed as a request.
            record.backend = Some(server.addr);
            upstream::check_framing(response.headers(), server.addr)?;
            let (mut parts, body) = response.into_parts();
            handshake::strip_hop_by_hop(&mut parts.headers);
            Ok(Forwarded::Answered(Response::from_parts(
                parts,
                body.boxed(),
            )))
        }
        Answer::Upgraded {
            server,
            active,
            stream,
            leftover,
            headers,
        } => {
            let on_client_upgrade = hyper::upgrade::on(&mut req);

            let shared = ctx.shared.clone();
            let new_conn = ConnInfo {
                client,
                listener: ctx.listener.name.clone(),
                route: route.label.clone(),
                upstream: route.upstream.name.clone(),
                backend: server.addr,
                server: server.clone(),
                path: target,
            };
            ctx.shared.tasks.spawn(async move {
                let _active = active;
                // Registered from the 101 on; the record and metrics are written
                // when `ending` drops, on every path, a panic included.
                let guard = shared.registry.open(new_conn, &shared.drain);
                shared.metrics.tunnel_opened(&guard.stats.info);
                let mut ending = Ending {
                    shared: shared.clone(),
                    guard,
                    end: None,
                };
                let upgraded = tokio::select! {
                    u = on_client_upgrade => u.map_err(|e| e.to_string()),
                    _ = shared.shutdown.cancelled() => Err("proxy shutting down".to_string()),
                };
                let unexpected = || "upgraded client connection has an unexpected type".to_string();
                let parts = match upgraded {
                    Ok(u) => u
                        .downcast::<TokioIo<Guarded<Lingering<ClientStream>>>>()
                        .map_err(|_| unexpected())
                        .and_then(|p| {
                            // The guard and the lingering close end here: what
                            // follows is frames, for the tunnel alone.
                            let client = p.io.into_inner().into_inner().into_inner();
                            client.map(|c| (c, p.read_buf)).ok_or_else(unexpected)
                        }),
                    Err(e) => Err(e),
                };
                let (client, read_buf) = match parts {
                    Ok(p) => p,
                    Err(reason) => {
                        // The backend already has an open WebSocket: tell it, best effort.
                        let close = encode_close(
                            CLOSE_GOING_AWAY,
                            "client gone",
                            Some(tunnel::mask_key(ending.guard.stats.id)),
                        );
                        // Raw bytes would corrupt a TLS stream: there, the close of the
                        // connection has to do.
                        if let MaybeTls::Plain(tcp) = &stream {
                            let _ = tcp.try_write(&close);
                        }
                        ending.end = Some(TunnelEnd {
                            closed_by: Side::Client,
                            close_code: None,
                            close_frame_from: None,
                            reason: format!("tunnel not started: {reason}"),
                        });
                        return;
                    }
                };
                let outcome = tunnel::run(
                    client,
                    read_buf,
                    stream,
                    leftover,
                    &ending.guard.stats,
                    tunnel::TunnelTimeouts {
                        half_close: timeouts.half_close,
                        close: timeouts.close,
                    },
                    &shared.shutdown,
                )
                .await;
                ending.end = Some(outcome.to_end());
            });
            Ok(Forwarded::Tunnel(switching_protocols(headers)))
        }
    }
}

/// Writes a tunnel's access record and closes its metrics when dropped,
/// whatever ended the task: normally `end` is set, and if it is not (a
/// panic, or the task dropped at exit) the record says so.
struct Ending {
    shared: Arc<Shared>,
    guard: RegistryGuard,
    end: Option<TunnelEnd>,
}

impl Drop for Ending {
    fn drop(&mut self) {
        let end = self.end.take().unwrap_or_else(|| TunnelEnd {
            closed_by: Side::Proxy,
            close_code: None,
            close_frame_from: None,
            reason: "tunnel task ended abnormally".to_string(),
        });
        let record = self.guard.finish(end);
        // Labels are rebuilt here rather than held for the tunnel's life:
        // an idle tunnel should carry as little as possible.
        let labels = TunnelLabels::of(&self.guard.stats.info);
        self.shared.metrics.tunnel_closed(&labels, &record);
    }
}

/// The client's 101: the backend's end-to-end headers (accept key,
/// subprotocol, extensions, cookies) with this hop's own Upgrade/Connection.
fn switching_protocols(mut headers: HeaderMap) -> Response<ProxyBody> {
    handshake::strip_hop_by_hop(&mut headers);
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let mut res = Response::new(empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *res.headers_mut() = headers;
    res
}

fn refuse(refusal: &Refusal) -> Response<ProxyBody> {
    let status = refusal.status();
    let reason = refusal.to_string();
    let mut res = Response::new(full(format!("{reason}\n")));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::UPGRADE_REQUIRED {
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
    }
    if matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
    ) {
        // A client that sends malformed requests gets no second chance on
        // this connection, and after a stalled body nothing on it can be
        // trusted to be the start of a request.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn full(text: String) -> ProxyBody {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}
