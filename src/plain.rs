//! The life of one plain HTTP request (no WebSocket upgrade), after
//! proxy.rs has checked and routed it: wait for the start of its body,
//! send it over the upstream's pool (trying the next server only when a
//! connect fails and no byte of the body has left), and stream the answer
//! back, logging one access line when the response body ends.
//!
//! Owns: the forwarded head (hop-by-hop headers, `Expect` and the client's
//! framing removed, forwarding headers set), the request body as the pool
//! sends it ([`RequestBody`], which can be handed to a second server while
//! untouched), and the response body that counts bytes and writes the
//! request's record ([`Logged`]).
//!
//! Decided: a body is peeked before any backend is contacted, so a body
//! whose framing breaks at its first chunk is refused with 400 and reaches
//! no one. That is also when hyper answers `Expect: 100-continue`: wsgate
//! honours the expectation on its own hop, and the backend gets the body
//! without waiting. The framing guard's refusal is watched as well as the
//! body: a frame is never passed on once the bytes after it were refused,
//! and a refusal hyper would only notice later (a bad trailer) ends the
//! request at once. A body that breaks after some of it has left can only
//! abort the backend's request.
//!
//! Whose fault is a wait: a client that pauses in its body for longer than
//! `timeouts.client_body` is answered 408; a backend that takes no body
//! bytes while the client has them, or does not answer once the whole body
//! is sent, for `timeouts.upstream_response`, is a 504. So a slow upload is
//! the client's time, not the backend's, and no stall holds a pooled
//! connection for ever.
//!
//! Must not: buffer a body beyond the one frame peeked, or answer a plain
//! request with a 101.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header;
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::balancer::Server;
use crate::config::Timeouts;
use crate::handshake::{self, HandshakeError};
use crate::pool::{HttpPool, PoolParts};
use crate::proxy::{ConnContext, ProxyBody, Refusal};
use crate::routes::Route;
use crate::stats::RequestRecord;
use crate::upstream::{self, UpstreamError};

/// Proxies one plain request to the first of `candidates` that accepts a
/// connection. `record` gains the backend as it is tried.
///
/// # Errors
/// A [`Refusal`]: the client's body (400, 408) or the backend (502, 504).
pub(crate) async fn forward(
    req: Request<Incoming>,
    ctx: &Arc<ConnContext>,
    route: &Route,
    candidates: &[Arc<Server>],
    target: &str,
    timeouts: Timeouts,
    record: &mut RequestRecord,
) -> Result<Response<ProxyBody>, Refusal> {
    let (parts, body) = req.into_parts();
    let host = parts.headers.get(header::HOST).cloned();
    let mut headers = parts.headers;
    // Also drops an `Upgrade: h2c` and its HTTP2-Settings (named in
    // Connection): the request goes on as HTTP/1.1.
    handshake::strip_hop_by_hop(&mut headers);
    headers.remove("http2-settings");
    // hyper frames the body from its size: a length when known, else chunked.
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::EXPECT);
    upstream::set_forwarding_headers(
        &mut headers,
        ctx.peer.ip(),
        ctx.listener.trusts(ctx.peer.ip()),
        ctx.listener.tls.is_some(),
        host.as_ref(),
    );
    let uri: http::Uri = target
        .parse()
        .map_err(|_| HandshakeError::Path(crate::routes::PathError::BadEncoding))?;

    let upload = Upload::start(body, timeouts, ctx).await?;
    let upstream = &route.upstream;
    let pool = upstream.http_pool(|| {
        HttpPool::new(PoolParts {
            servers: &upstream.servers,
            tls: upstream.tls.clone(),
            max_idle: upstream.pool_max_idle,
            idle_timeout: upstream.pool_idle_timeout,
            connect_timeout: timeouts.connect,
            tasks: ctx.shared.pool_tasks.clone(),
            stop: ctx.shared.pool_stop.clone(),
        })
    });

    let mut last = UpstreamError::NoServers;
    for server in candidates {
        let addr = server.addr;
        record.backend = Some(addr);
        let mut req = Request::new(RequestBody::new(upload.clone(), timeouts.client_body));
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri.clone();
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers.clone();
        upload.progress();
        let sent = tokio::select! {
            r = pool.send(server, req) => Ok(r),
            _ = upload.backend_stalled(timeouts.upstream_response) => Err(()),
        };
        let response = match sent {
            Err(()) => {
                return Err(UpstreamError::ResponseTimeout {
                    addr,
                    after: timeouts.upstream_response,
                }
                .into())
            }
            Ok(Ok(r)) => r,
            Ok(Err(source)) => {
                match upload.failure() {
                    Some(BodyFailure::Stalled) => return Err(HandshakeError::BodyTimeout.into()),
                    Some(BodyFailure::Broken(e)) => return Err(HandshakeError::BadBody(e).into()),
                    None => {}
                }
                let retry = source.is_connect() && upload.untouched();
                let e = UpstreamError::Request { addr, source };
                if !retry {
                    return Err(e.into());
                }
                tracing::debug!(backend = %addr, error = %e, "backend connect failed");
                last = e;
                continue;
            }
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Err(UpstreamError::UnexpectedUpgrade { addr }.into());
        }
        // Dropping the unread body closes that backend connection.
        upstream::check_framing(response.headers(), addr)?;
        let (mut head, body) = response.into_parts();
        handshake::strip_hop_by_hop(&mut head.headers);
        let logged = Logged {
            inner: body,
            to_client: 0,
            end: Some(End {
                ctx: ctx.clone(),
                record: record.clone(),
                status: head.status,
                upload,
            }),
        };
        ctx.in_flight.fetch_add(1, Ordering::SeqCst);
        return Ok(Response::from_parts(head, logged.boxed()));
    }
    Err(last.into())
}

// === impl Upload ===

/// A client's request body, shared by the attempts to send it: it stays in
/// `slot` until a backend connection takes its first frame.
struct Upload {
    slot: Mutex<Option<Prefixed>>,
    hint: SizeHint,
    bytes: AtomicU64,
    failure: Mutex<Option<BodyFailure>>,
    /// The framing guard's refusal of this connection's bytes.
    refused: CancellationToken,
    /// What `progress_at` counts from.
    epoch: Instant,
    /// When a backend connection last took body bytes (or an attempt
    /// began, or the body ended), in nanoseconds since `epoch`.
    progress_at: AtomicU64,
    /// The body is waiting for the client's next bytes: a pause that is
    /// the client's, not the backend's.
    waiting_on_client: AtomicBool,
    /// The guard, for the reason of a refusal.
    scanner: Arc<Mutex<crate::framing::Scanner>>,
    /// This request's index on its connection, as the guard counts.
    request: u64,
}

/// Why a client's body could not be passed on.
#[derive(Debug, Clone)]
enum BodyFailure {
    /// No bytes for `timeouts.client_body`.
    Stalled,
    /// Bad framing, refused by the guard, or the connection broke.
    Broken(String),
}

/// The frame peeked before sending, then the rest.
struct Prefixed {
    first: Option<Frame<Bytes>>,
    rest: Option<Incoming>,
}

impl Upload {
    /// Waits, within `client_body`, for the body's first frame (or its
    /// end), so a body that is malformed from its start reaches no backend.
    async fn start(
        mut body: Incoming,
        timeouts: Timeouts,
        ctx: &ConnContext,
    ) -> Result<Arc<Self>, Refusal> {
        let (refused, request) = {
            let scanner = ctx.scanner();
            (scanner.refused(), scanner.current_request())
        };
        let here = || ctx.scanner().refused_in(request);
        let verdict = || {
            let m = ctx.scanner().verdict();
            HandshakeError::BadBody(m.map_or_else(|| "refused".to_string(), |m| m.to_string()))
        };
        let watch = refused.clone();
        let refused_here = async move {
            watch.cancelled().await;
            if !here() {
                // A later request's bytes: not this one's business.
                std::future::pending::<()>().await;
            }
        };
        let (first, rest) = if body.is_end_stream() {
            (None, None)
        } else {
            let frame = tokio::select! {
                f = tokio::time::timeout(timeouts.client_body, body.frame()) => f,
                _ = refused_here => return Err(verdict().into()),
            };
            match frame {
                Err(_) => return Err(HandshakeError::BodyTimeout.into()),
                Ok(Some(Err(e))) => return Err(HandshakeError::BadBody(e.to_string()).into()),
                Ok(None) => (None, None),
                Ok(Some(Ok(f))) => (Some(f), (!body.is_end_stream()).then_some(body)),
            }
        };
        // The bytes after this frame may have been refused in the same read.
        if here() {
            return Err(verdict().into());
        }
        let first_len = first
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.len() as u64);
        let hint = match &rest {
            None => SizeHint::with_exact(first_len),
            Some(r) => {
                let h = r.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(h.lower() + first_len);
                if let Some(upper) = h.upper() {
                    hint.set_upper(upper + first_len);
                }
                hint
            }
        };
        Ok(Arc::new(Self {
            slot: Mutex::new(Some(Prefixed { first, rest })),
            hint,
            bytes: AtomicU64::new(0),
            failure: Mutex::new(None),
            refused,
            epoch: Instant::now(),
            progress_at: AtomicU64::new(0),
            waiting_on_client: AtomicBool::new(false),
            scanner: ctx.scanner.clone(),
            request,
        }))
    }

    /// The guard refused bytes of this request.
    fn refused_here(&self) -> bool {
        self.refused.is_cancelled()
            && self
                .scanner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .refused_in(self.request)
    }

    /// Records why the client's body could not be passed on.
    fn fail(&self, why: BodyFailure) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// Notes that the backend side moved: an attempt began, or took bytes.
    fn progress(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.progress_at.store(now, Ordering::Relaxed);
        self.waiting_on_client.store(false, Ordering::Relaxed);
    }

    /// Resolves once the backend has kept this request waiting for `after`:
    /// taking no body bytes the client had for it, or not answering once
    /// the whole body was sent. Pauses of the client's do not count.
    async fn backend_stalled(&self, after: Duration) {
        loop {
            let wait = if self.waiting_on_client.load(Ordering::Relaxed) {
                // The client's timer governs now; look again later.
                after
            } else {
                let since = Duration::from_nanos(self.progress_at.load(Ordering::Relaxed));
                let idle = self.epoch.elapsed().saturating_sub(since);
                match after.checked_sub(idle) {
                    Some(left) if !left.is_zero() => left,
                    _ => return,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Prefixed>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// No backend connection has taken any of the body.
    fn untouched(&self) -> bool {
        self.slot().is_some()
    }

    /// Why reading the client's body failed, if it did.
    fn failure(&self) -> Option<BodyFailure> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

// === impl RequestBody ===

/// Why a client's body stopped on its way to a backend.
type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The client's body on its way to one backend.
pub struct RequestBody {
    upload: Arc<Upload>,
    /// Taken from the upload's slot at the first poll.
    body: Option<Prefixed>,
    /// A frame has been yielded: the body can no longer go elsewhere.
    started: bool,
    /// Ready when the framing guard refuses the connection's bytes: hyper
    /// may be waiting for bytes that will never make the body whole.
    refused: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The client's pause in its body: armed while its next bytes are
    /// awaited, reset (not made anew) for each pause.
    pause: Pin<Box<tokio::time::Sleep>>,
    /// `pause` is counting.
    pausing: bool,
    /// Longest pause allowed (`timeouts.client_body`).
    client_body: Duration,
}

impl RequestBody {
    fn new(upload: Arc<Upload>, client_body: Duration) -> Self {
        let refused = Box::pin(upload.refused.clone().cancelled_owned());
        Self {
            upload,
            body: None,
            started: false,
            refused,
            pause: Box::pin(tokio::time::sleep(client_body)),
            pausing: false,
            client_body,
        }
    }

    /// Ends the body with the guard's reason.
    fn refuse(&mut self) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.started = true;
        let why = self
            .upload
            .scanner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .verdict()
            .map_or_else(|| "refused".to_string(), |m| m.to_string());
        self.upload.fail(BodyFailure::Broken(why.clone()));
        Poll::Ready(Some(Err(why.into())))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.body.is_none() && !this.started {
            this.body = this.upload.slot().take();
        }
        if this.body.is_none() {
            return Poll::Ready(None);
        }
        if this.refused.as_mut().poll(cx).is_ready() && this.upload.refused_here() {
            return this.refuse();
        }
        let Some(body) = &mut this.body else {
            return Poll::Ready(None);
        };
        let frame = match body.first.take() {
            Some(f) => Some(Ok(f)),
            None => match &mut body.rest {
                None => None,
                Some(rest) => match Pin::new(rest).poll_frame(cx) {
                    Poll::Ready(f) => f,
                    Poll::Pending => {
                        this.upload.waiting_on_client.store(true, Ordering::Relaxed);
                        if !this.pausing {
                            this.pausing = true;
                            let until = tokio::time::Instant::now() + this.client_body;
                            this.pause.as_mut().reset(until);
                        }
                        if this.pause.as_mut().poll(cx).is_ready() {
                            this.started = true;
                            this.upload.fail(BodyFailure::Stalled);
                            return Poll::Ready(Some(Err("request body stalled".into())));
                        }
                        return Poll::Pending;
                    }
                },
            },
        };
        this.started = true;
        this.pausing = false;
        this.upload.progress();
        // Bytes refused in the read that produced this frame: it goes no further.
        if this.upload.refused_here() {
            return this.refuse();
        }
        match frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    this.upload
                        .bytes
                        .fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Some(Err(e)) => {
                this.upload.fail(BodyFailure::Broken(e.to_string()));
                Poll::Ready(Some(Err(e.into())))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.upload.hint.exact() == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        self.upload.hint
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        // A connect that failed before the body was sent: the next server gets it.
        if !self.started {
            if let Some(body) = self.body.take() {
                *self.upload.slot() = Some(body);
            }
        }
    }
}

// === impl Logged ===

/// The backend's response body on its way to the client; writes the
/// request's access line and metrics when it ends, however it ends.
struct Logged {
    inner: Incoming,
    to_client: u64,
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
        let to_backend = self.upload.bytes.load(Ordering::Relaxed);
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
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
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
        if let Some(end) = self.end.take() {
            // hyper stops polling a body whose announced length is reached.
            let reason = if self.inner.is_end_stream() {
                "complete"
            } else {
                "client: gone before the response ended"
            };
            end.finish(self.to_client, reason);
        }
    }
}
