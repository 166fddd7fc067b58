//! A plain request's body on its way to a backend: peeked before any
//! backend is contacted, handed to one backend connection (or, untouched,
//! to the next after a failed connect), watched for the framing guard's
//! refusal, and timed so that every wait is blamed on the side that made it.
//!
//! Owns: `Upload` (the body shared by the attempts to send it, its
//! counters and progress), [`RequestBody`] (what the pool sends), and
//! `BodyFailure` (why a body could not be passed on).
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
//! Must not: buffer a body beyond the one frame peeked.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::config::Timeouts;
use crate::proxy::handshake::HandshakeError;
use crate::proxy::{ConnContext, Refusal};
use crate::upstream::pool::BodyError;

// === impl Upload ===

/// A client's request body, shared by the attempts to send it: it stays in
/// `slot` until a backend connection takes its first frame.
pub(crate) struct Upload {
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
    scanner: Arc<Mutex<crate::net::guard::Scanner>>,
    /// This request's index on its connection, as the guard counts.
    request: u64,
    /// `limits.max_request_body`.
    max_body: Option<u64>,
}

/// Why a client's body could not be passed on.
#[derive(Debug, Clone)]
pub(crate) enum BodyFailure {
    /// No bytes for `timeouts.client_body`.
    Stalled,
    /// More bytes than `limits.max_request_body` (the limit).
    TooLarge(u64),
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
    pub(crate) async fn start(
        mut body: Incoming,
        timeouts: Timeouts,
        max_body: Option<u64>,
        ctx: &ConnContext,
    ) -> Result<Arc<Self>, Refusal> {
        // A declared length over the limit is refused before any of it is
        // read (so `Expect: 100-continue` is never answered 100).
        let too_large = |n: u64| max_body.filter(|&limit| n > limit);
        if let Some(limit) = too_large(body.size_hint().lower()) {
            return Err(HandshakeError::BodyTooLarge(limit).into());
        }
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
        if let Some(limit) = too_large(first_len) {
            return Err(HandshakeError::BodyTooLarge(limit).into());
        }
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
            max_body,
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

    /// Body bytes handed to backend connections so far.
    pub(crate) fn sent_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Records why the client's body could not be passed on.
    fn fail(&self, why: BodyFailure) {
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// Notes that the backend side moved: an attempt began, or took bytes.
    pub(crate) fn progress(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.progress_at.store(now, Ordering::Relaxed);
        self.waiting_on_client.store(false, Ordering::Relaxed);
    }

    /// Resolves once the backend has kept this request waiting for `after`:
    /// taking no body bytes the client had for it, or not answering once
    /// the whole body was sent. Pauses of the client's do not count.
    pub(crate) async fn backend_stalled(&self, after: Duration) {
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
    pub(crate) fn untouched(&self) -> bool {
        self.slot().is_some()
    }

    /// Why reading the client's body failed, if it did.
    pub(crate) fn failure(&self) -> Option<BodyFailure> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

// === impl RequestBody ===

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
    pub(crate) fn new(upload: Arc<Upload>, client_body: Duration) -> Self {
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
                    let len = d.len() as u64;
                    // Checked before counting: a refused frame never leaves.
                    let total = this.upload.bytes.load(Ordering::Relaxed) + len;
                    if let Some(limit) = this.upload.max_body.filter(|&l| total > l) {
                        this.upload.fail(BodyFailure::TooLarge(limit));
                        let why = format!("request body larger than {limit} bytes");
                        return Poll::Ready(Some(Err(why.into())));
                    }
                    this.upload.bytes.fetch_add(len, Ordering::Relaxed);
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
