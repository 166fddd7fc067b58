//! The life of one plain HTTP request (no WebSocket upgrade), after
//! proxy.rs has checked and routed it: wait for the start of its body,
//! send it over the upstream's pool (trying the next server only when a
//! connect fails and no byte of the body has left), and stream the answer
//! back, logging one access line when the response body ends.
//!
//! Owns: the forwarded head (hop-by-hop headers, `Expect` and the client's
//! framing removed, forwarding headers set), the attempts over the
//! candidates, which waits are whose (see upload.rs: 408 for the client's,
//! 504 for the backend's), and the response body that counts bytes and
//! writes the request's record (`Logged`). The request body itself is
//! upload.rs's.
//!
//! Must not: answer a plain request with a 101, or pass on a response
//! whose framing it cannot keep.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::config::Timeouts;
use crate::observe::access::RequestRecord;
use crate::proxy::handshake::{self, HandshakeError};
use crate::proxy::routes::Route;
use crate::proxy::upload::{BodyFailure, RequestBody, Upload};
use crate::proxy::{ConnContext, ProxyBody, Refusal};
use crate::upstream::balancer::{Server, Upstream};
use crate::upstream::pool::{HttpPool, PoolBody, PoolParts};
use crate::upstream::{self, UpstreamError};
use tokio_util::sync::CancellationToken;

/// What proxy.rs decided for a plain request.
pub(crate) struct Routed<'a> {
    /// The matched route.
    pub route: &'a Route,
    /// Servers to try, in order.
    pub candidates: &'a [Arc<Server>],
    /// Normalised path and query, as the backend gets it.
    pub target: &'a str,
    /// From the snapshot the request was routed with.
    pub timeouts: Timeouts,
    /// `limits.max_request_body`.
    pub max_body: Option<u64>,
}

/// Proxies one plain request to the first of the candidates that accepts a
/// connection. `record` gains the backend as it is tried.
///
/// # Errors
/// A [`Refusal`]: the client's body (400, 408, 413) or the backend (502, 504).
pub(crate) async fn forward(
    req: Request<Incoming>,
    ctx: &Arc<ConnContext>,
    routed: Routed<'_>,
    record: &mut RequestRecord,
) -> Result<Response<ProxyBody>, Refusal> {
    let Routed {
        route,
        candidates,
        target,
        timeouts,
        max_body,
    } = routed;
    let (parts, body) = req.into_parts();
    let headers = backend_headers(parts.headers, ctx);
    let uri: http::Uri = target
        .parse()
        .map_err(|_| HandshakeError::Path(crate::proxy::routes::PathError::BadEncoding))?;
    let upload = Upload::start(body, timeouts, max_body, ctx).await?;
    let pool = pool_of(&route.upstream, ctx, timeouts);

    let mut last = UpstreamError::NoServers;
    let mut headers = Some(headers);
    for (i, server) in candidates.iter().enumerate() {
        record.backend = Some(server.addr);
        let body = RequestBody::new(upload.clone(), timeouts.client_body);
        let mut req = Request::new(body.boxed_unsync());
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri.clone();
        *req.version_mut() = Version::HTTP_11;
        // Copied only while another attempt may follow: usually one server.
        *req.headers_mut() = if i + 1 == candidates.len() {
            headers.take().unwrap_or_default()
        } else {
            headers.clone().unwrap_or_default()
        };
        let passive = &route.upstream.settings.availability;
        match attempt(pool, server, req, &upload, timeouts, record, ctx.local).await {
            Ok(response) => {
                upstream::report_outcome(server, passive, None);
                let client_write = timeouts.client_write;
                return relay(response, server.addr, ctx, record, upload, client_write);
            }
            Err(Attempt::Next(e)) => {
                upstream::report_outcome(server, passive, Some(&e));
                last = e;
            }
            Err(Attempt::Refused(refusal)) => {
                if let Refusal::Backend(e) = &refusal {
                    upstream::report_outcome(server, passive, Some(e));
                }
                return Err(refusal);
            }
        }
    }
    Err(last.into())
}

/// The client's headers as the backend gets them: this hop's own removed,
/// framing left to hyper, forwarding headers set.
fn backend_headers(mut headers: HeaderMap, ctx: &ConnContext) -> HeaderMap {
    let host = headers.get(header::HOST).cloned();
    // TE is this hop's: a client that accepts trailers gets them only if
    // wsgate asks the backend for them on its own hop (RFC 9110 10.1.4).
    let te_trailers = crate::upstream::answer::header_has_token(&headers, &header::TE, "trailers");
    // Also drops an `Upgrade: h2c` and its HTTP2-Settings: the request goes
    // on as HTTP/1.1.
    handshake::strip_hop_by_hop(&mut headers);
    if te_trailers {
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
        headers.insert(header::CONNECTION, http::HeaderValue::from_static("TE"));
    }
    // hyper frames the body from its size: a length when known, else chunked.
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::EXPECT);
    ctx.set_forwarding_headers(&mut headers, host.as_ref());
    headers
}

/// The upstream's keep-alive pool, made on its first plain request.
fn pool_of<'a>(upstream: &'a Upstream, ctx: &ConnContext, timeouts: Timeouts) -> &'a HttpPool {
    upstream.http_pool(|| {
        HttpPool::new(PoolParts {
            servers: &upstream.servers,
            tls: upstream.tls.clone(),
            settings: &upstream.settings,
            connect_timeout: timeouts.connect,
            tasks: ctx.shared.pool_tasks.clone(),
            stop: ctx.shared.pool_stop.clone(),
        })
    })
}

/// Why one attempt gave no response.
enum Attempt {
    /// The connect failed before any body byte left: the next server may try.
    Next(UpstreamError),
    /// The request is over: the client's body failed, or the backend did
    /// after the request had started.
    Refused(Refusal),
}

/// Sends the request to one server and waits for its response head, while
/// the upload watches the client's body and the backend's stall.
async fn attempt(
    pool: &HttpPool,
    server: &Server,
    req: Request<PoolBody>,
    upload: &Upload,
    timeouts: Timeouts,
    record: &mut RequestRecord,
    local: std::net::SocketAddr,
) -> Result<Response<Incoming>, Attempt> {
    let addr = server.addr;
    upload.progress();
    let sent = tokio::select! {
        r = pool.send(server, req, record.client, local) => Ok(r),
        _ = upload.backend_stalled(timeouts.upstream_response) => Err(()),
    };
    record.sent = upload.sent_bytes();
    let source = match sent {
        Err(()) => {
            let after = timeouts.upstream_response;
            let e = UpstreamError::ResponseTimeout { addr, after };
            return Err(Attempt::Refused(e.into()));
        }
        Ok(Ok(r)) => return Ok(r),
        Ok(Err(source)) => source,
    };
    let client_fault = match upload.failure() {
        Some(BodyFailure::Stalled) => Some(HandshakeError::BodyTimeout),
        Some(BodyFailure::TooLarge(n)) => Some(HandshakeError::BodyTooLarge(n)),
        Some(BodyFailure::Broken(e)) => Some(HandshakeError::BadBody(e)),
        None => None,
    };
    if let Some(e) = client_fault {
        return Err(Attempt::Refused(e.into()));
    }
    let retry = source.is_connect() && upload.untouched();
    let e = UpstreamError::Request { addr, source };
    if !retry {
        return Err(Attempt::Refused(e.into()));
    }
    tracing::debug!(backend = %addr, error = %e, "backend connect failed");
    Err(Attempt::Next(e))
}

/// The backend's response on its way to the client; its body writes the
/// request's access line when it ends.
fn relay(
    response: Response<Incoming>,
    addr: SocketAddr,
    ctx: &Arc<ConnContext>,
    record: &RequestRecord,
    upload: Arc<Upload>,
    client_write: Duration,
) -> Result<Response<ProxyBody>, Refusal> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err(UpstreamError::UnexpectedUpgrade { addr }.into());
    }
    // Dropping the unread body closes that backend connection.
    upstream::check_framing(response.headers(), addr)?;
    let (mut head, body) = response.into_parts();
    handshake::strip_hop_by_hop(&mut head.headers);
    let progress = Arc::new(Progress::new());
    ctx.shared
        .tasks
        .spawn(watch_client(progress.clone(), ctx.clone(), client_write));
    let logged = Logged {
        inner: body,
        to_client: 0,
        progress,
        end: Some(End {
            ctx: ctx.clone(),
            record: record.clone(),
            status: head.status,
            upload,
        }),
    };
    ctx.in_flight.fetch_add(1, Ordering::SeqCst);
    Ok(Response::from_parts(head, logged.boxed()))
}

// === impl Progress ===

/// How far the client is taking a response: shared by its body, which
/// hyper polls only while it can write, and the task watching for a client
/// that stopped reading.
struct Progress {
    origin: Instant,
    /// When hyper last took a frame (nanoseconds from `origin`).
    last: AtomicU64,
    /// hyper asked for a frame and the backend has none yet: the wait is
    /// the backend's, not the client's.
    waiting_backend: AtomicBool,
    /// The body ended or was dropped: nothing left to watch.
    done: CancellationToken,
    /// The watch aborted the response: its record says why.
    aborted: AtomicBool,
}

impl Progress {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            waiting_backend: AtomicBool::new(false),
            done: CancellationToken::new(),
            aborted: AtomicBool::new(false),
        }
    }

    fn took_frame(&self) {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::SeqCst);
        self.waiting_backend.store(false, Ordering::SeqCst);
    }

    /// When the client is late if it takes nothing more.
    fn deadline(&self, limit: Duration) -> Instant {
        self.origin + Duration::from_nanos(self.last.load(Ordering::SeqCst)) + limit
    }
}

/// The reason logged for a response whose client stopped reading.
const CLIENT_WRITE_REASON: &str = "client: took no bytes of the response for timeouts.client_write";

/// Aborts the client's connection when hyper has taken no frame of the
/// response for `limit` while the backend had one ready: the client's
/// socket is full and it is not reading. Closing the connection drops the
/// body, which releases the backend's connection.
async fn watch_client(progress: Arc<Progress>, ctx: Arc<ConnContext>, limit: Duration) {
    loop {
        let deadline = progress.deadline(limit);
        tokio::select! {
            _ = progress.done.cancelled() => return,
            _ = ctx.shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        let late = Instant::now() >= progress.deadline(limit);
        if late && !progress.waiting_backend.load(Ordering::SeqCst) {
            progress.aborted.store(true, Ordering::SeqCst);
            ctx.shared
                .metrics
                .response_aborted(&ctx.listener.name, "client_write");
            tracing::info!(client = %ctx.peer, after = ?limit, "{CLIENT_WRITE_REASON}");
            ctx.abort.cancel();
            return;
        }
        if late {
            // hyper is waiting on the backend: start the client's clock
            // again when the next frame goes out.
            progress.took_frame();
            progress.waiting_backend.store(true, Ordering::SeqCst);
        }
    }
}

// === impl Logged ===

/// The backend's response body on its way to the client; writes the
/// request's access line and metrics when it ends, however it ends.
struct Logged {
    inner: Incoming,
    to_client: u64,
    progress: Arc<Progress>,
    end: Option<End>,
}

struct End {
    ctx: Arc<ConnContext>,
    record: RequestRecord,
    status: StatusCode,
    upload: Arc<Upload>,
}

impl End {
    fn finish(self, to_client: u64, reason: &str) {
        let to_backend = self.upload.sent_bytes();
        let listener = &self.ctx.listener.name;
        self.record
            .emit(self.status.as_u16(), to_backend, to_client, reason);
        self.ctx.shared.metrics.http_request(
            listener,
            self.status.as_u16(),
            self.record.started.elapsed(),
            to_backend,
            to_client,
        );
        // Counted since the response left the handler: a drain waits for it.
        self.ctx.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) else {
            this.progress.waiting_backend.store(true, Ordering::SeqCst);
            return Poll::Pending;
        };
        this.progress.took_frame();
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    this.to_client += d.len() as u64;
                }
            }
            Some(Err(e)) => {
                if let Some(end) = this.end.take() {
                    end.finish(this.to_client, &format!("backend: {e}"));
                }
            }
            None => {
                if let Some(end) = this.end.take() {
                    end.finish(this.to_client, "complete");
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.progress.done.cancel();
        if let Some(end) = self.end.take() {
            // hyper stops polling a body whose announced length is reached.
            let reason = if self.inner.is_end_stream() {
                "complete"
            } else if self.progress.aborted.load(Ordering::SeqCst) {
                CLIENT_WRITE_REASON
            } else {
                "client: gone before the response ended"
            };
            end.finish(self.to_client, reason);
        }
    }
}
