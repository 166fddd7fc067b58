//! The life of one request, top to bottom. [`handle`] classifies it and
//! makes sure it ends in exactly one response and one log line; `forward`
//! runs the phases in order:
//!
//! 1. `check`: RFC 6455 (or RFC 9112) rules, the certificate's hosts, the
//!    target's form, the path normalised ([`handshake`], [`routes`]);
//! 2. `route`: the route and its servers, in order, from the snapshot
//!    loaded once;
//! 3. forward: a plain request through [`plain`] (its body through
//!    [`upload`]); an upgrade through `upgrade`, which sends it to a
//!    backend, and on a verified 101 starts the tunnel task
//!    ([`crate::tunnel::session::serve`]).
//!
//! Owns: the order of those phases and the answer for each failure
//! ([`Refusal`], in [`context`]). The tunnel writes its own access line;
//! every other request's line is written here or by its streamed body.
//!
//! Must not: open a tunnel on anything but a backend's verified 101, or pass
//! any byte from the client to a backend before that.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;

use crate::config::Timeouts;
use crate::observe::access::RequestRecord;
use crate::observe::registry::ConnInfo;
use crate::tunnel::session::Session;
use crate::tunnel::{self, FramePolicy, TunnelTimeouts};
use crate::upstream::balancer::{Balance, Server};
use crate::upstream::{self, Answer, Deadlines};
use context::InFlight;
use forwarded::real_client;
use handshake::{HandshakeError, RequestKind};
use respond::{refuse, switching_protocols};
use routes::Route;

pub mod context;
pub mod forwarded;
pub mod handshake;
pub mod host;
pub mod plain;
mod respond;
pub mod routes;
pub mod upload;

pub(crate) use context::Refusal;
pub use context::{ConnContext, ProxyBody};

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
        client: real_client(req.headers(), ctx.peer, |ip| ctx.listener.trusts(ip)),
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
            let reason = format!("{}: {refusal}", refusal.side().as_str());
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

/// One request's phases, in order: check it, route it, then forward it as
/// a plain request or as an upgrade. Each phase returns a typed result,
/// and the first [`Refusal`] ends the request.
async fn forward(
    req: Request<Incoming>,
    ctx: &Arc<ConnContext>,
    kind: RequestKind,
    record: &mut RequestRecord,
) -> Result<Forwarded, Refusal> {
    let checked = check(&req, ctx, kind)?;
    let upgrade_key = checked.key.is_some();
    let routed = route(&req, ctx, checked.host, &checked.path, upgrade_key, record)?;
    match checked.key {
        None => {
            let response = plain::forward(req, ctx, routed.as_plain(), record).await?;
            Ok(Forwarded::Streaming(response))
        }
        Some(key) => upgrade(req, ctx, routed, &key, record).await,
    }
}

/// A request that passed [`check`].
struct Checked {
    /// The normalised Host.
    host: String,
    /// The normalised path (RFC 3986 dot segments removed, encoding fixed).
    path: String,
    /// The client's `Sec-WebSocket-Key`, for an upgrade.
    key: Option<HeaderValue>,
}

/// Phase 1: is the request well-formed (RFC 6455 for an upgrade, RFC 9112
/// for a plain request), addressed to a host its TLS connection may carry,
/// in origin form, with a path that normalises.
fn check(
    req: &Request<Incoming>,
    ctx: &ConnContext,
    kind: RequestKind,
) -> Result<Checked, Refusal> {
    // First: whatever else is wrong with such a request, the answer is the same.
    if req.method() == http::Method::CONNECT || req.method() == http::Method::TRACE {
        return Err(HandshakeError::MethodNotSupported(req.method().clone()).into());
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    // Before anything reads it: routing, the 421 check and the forwarding
    // headers must all see the same name.
    let host = host::parse_host(host).map_err(HandshakeError::BadHost)?;
    let key = match kind {
        RequestKind::WebSocket => Some(handshake::check_client_request(req)?),
        RequestKind::Plain => {
            handshake::check_plain_request(req)?;
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
    Ok(Checked { host, path, key })
}

/// A request matched to a route, with what it needs from the snapshot.
struct Routed {
    /// The matched route.
    route: Arc<Route>,
    /// Servers to try, in order (at most `retries + 1`).
    candidates: Vec<Arc<Server>>,
    /// Normalised path and the query, as the backend gets it.
    target: String,
    /// From the snapshot the request was routed with.
    timeouts: Timeouts,
    /// `limits.max_request_body`.
    max_body: Option<u64>,
    /// `websocket.strict`.
    strict: bool,
}

impl Routed {
    fn as_plain(&self) -> plain::Routed<'_> {
        plain::Routed {
            route: &self.route,
            candidates: &self.candidates,
            target: &self.target,
            timeouts: self.timeouts,
            max_body: self.max_body,
        }
    }
}

/// Phase 2: the route for host and path in the snapshot loaded once (and
/// let go of before any await), and the servers to try in order.
fn route(
    req: &Request<Incoming>,
    ctx: &ConnContext,
    host: String,
    path: &str,
    upgrade: bool,
    record: &mut RequestRecord,
) -> Result<Routed, Refusal> {
    let (route, timeouts, max_body, strict) = {
        let snapshot = ctx.shared.snapshot.load();
        let route = snapshot.route(&host, path).cloned();
        (
            route.ok_or(HandshakeError::NoRoute)?,
            snapshot.timeouts,
            snapshot.limits.max_request_body,
            snapshot.config.websocket.strict,
        )
    };
    record.route = Some(route.label.clone());
    record.upstream = Some(route.upstream.name.clone());
    // Before the servers are looked at: a page that may not open this
    // WebSocket hears 403 whatever the state of the upstream. Plain
    // requests are CORS's business (a navigation sends no Origin).
    if let (true, Some(origins)) = (upgrade, &route.origins) {
        let values = req.headers().get_all(http::header::ORIGIN).iter();
        origins
            .check(values.map(HeaderValue::as_bytes))
            .map_err(HandshakeError::Origin)?;
    }
    // Plain requests use the same key as upgrades, so a long-polling
    // client reaches the server its WebSocket will.
    let hash = match &route.upstream.settings.balance {
        Balance::Hash { key, .. } => key.of(req.headers(), req.uri().query(), record.client.ip()),
        _ => None,
    };
    let candidates = route.upstream.candidates(hash);
    if candidates.is_empty() {
        // Fail fast: no connect is tried to a server known to be down.
        let upstream = route.upstream.name.clone();
        ctx.shared.metrics.no_usable_server(&upstream);
        let retry_after = route.upstream.retry_after();
        return Err(upstream::UpstreamError::Unavailable {
            upstream,
            retry_after,
        }
        .into());
    }
    let mut target = path.to_string();
    if let Some(q) = req.uri().query() {
        target.push('?');
        target.push_str(q);
    }
    Ok(Routed {
        route,
        candidates,
        target,
        timeouts,
        max_body,
        strict,
    })
}

/// Phase 3 for an upgrade: send it to the first server that accepts a
/// connection; a verified 101 starts the tunnel task, any other answer
/// goes back to the client as an ordinary response.
async fn upgrade(
    mut req: Request<Incoming>,
    ctx: &Arc<ConnContext>,
    routed: Routed,
    key: &HeaderValue,
    record: &mut RequestRecord,
) -> Result<Forwarded, Refusal> {
    let accept = handshake::accept_key(key.as_bytes());
    let send = routed.route.upstream.settings.send_proxy_protocol;
    let preamble = forwarded::proxy_header(send, record.client, ctx.local);
    let hs = upstream::Handshake {
        request: backend_request(&req, ctx, &routed.target)?,
        expected_accept: &accept,
        offered: req.headers(),
        deadlines: Deadlines {
            connect: routed.timeouts.connect,
            handshake: routed.timeouts.upstream_handshake,
        },
        tasks: &ctx.shared.tasks,
        shutdown: &ctx.shared.shutdown,
        tls: routed.route.upstream.tls.as_deref(),
        availability: &routed.route.upstream.settings.availability,
        preamble: &preamble,
    };
    let answer = upstream::open(&routed.candidates, &hs)
        .await
        .inspect_err(|e| {
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
            let response = Response::from_parts(parts, body.boxed());
            Ok(Forwarded::Answered(response))
        }
        Answer::Upgraded {
            server,
            active,
            stream,
            leftover,
            headers,
        } => {
            let shared = &ctx.shared;
            let session = Session {
                registry: shared.registry.clone(),
                metrics: shared.metrics.clone(),
                drain: shared.drain.clone(),
                shutdown: shared.shutdown.clone(),
                conn: ConnInfo {
                    client: record.client,
                    listener: ctx.listener.name.clone(),
                    route: routed.route.label.clone(),
                    upstream: routed.route.upstream.name.clone(),
                    server,
                    path: routed.target,
                },
                backend: stream,
                backend_leftover: leftover,
                active,
                timeouts: TunnelTimeouts {
                    half_close: routed.timeouts.half_close,
                    close: routed.timeouts.close,
                },
                policy: FramePolicy {
                    max_frame: routed.route.max_frame_bytes,
                    max_message: routed.route.max_message_bytes,
                    keepalive: routed.route.keepalive,
                    rate: routed.route.rate,
                    write_stall: Some(routed.route.write_stall_timeout),
                    ..FramePolicy::for_extensions(
                        routed.strict,
                        upstream::answer::extension_names(&headers),
                    )
                },
            };
            let client_upgrade = hyper::upgrade::on(&mut req);
            shared
                .tasks
                .spawn(tunnel::session::serve(session, client_upgrade));
            Ok(Forwarded::Tunnel(switching_protocols(headers)))
        }
    }
}

/// The upgrade request as the backend gets it: the client's end-to-end
/// headers, this hop's forwarding headers and its own Upgrade/Connection.
fn backend_request(
    req: &Request<Incoming>,
    ctx: &ConnContext,
    target: &str,
) -> Result<Request<Empty<Bytes>>, Refusal> {
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
    Ok(backend_req)
}
