//! The tunnel: splices client and backend byte streams after a verified 101.
//!
//! Owns: copying both ways with a half-close passed on, following WebSocket
//! frame headers in each direction (see `frames.rs`), counting bytes,
//! frames and messages into the connection's live counters as they move,
//! the half-close deadline, and reacting to shutdown. A route's message
//! rate (`rate.rs`) and its write-stall timeout for a side that stops
//! reading (`stall.rs`) hook in here and in `direction.rs`. Returns a
//! [`TunnelOutcome`] saying who ended it and how.
//!
//! Each direction is a `Half` (direction.rs), a copy state machine with
//! its phases written down there. An idle tunnel holds no copy buffer: a
//! direction takes one when its reader is readable and drops it once the
//! reader returns `Pending` and what it read has been written and flushed
//! (the way tokio's `copy_bidirectional` flushes, minus its two permanent
//! buffers). Any I/O or protocol error in either direction ends the whole
//! tunnel.
//!
//! Closing on wsgate's own initiative (shutdown, and later drain or an
//! operator's request) goes through [`crate::observe::registry::CloseControl`]: each
//! direction then reads at most up to the end of the current frame, writes
//! the Close frame exactly at that boundary (masked toward the backend), and
//! from then on reads and discards what its sender sends, until that
//! sender's own Close or EOF. A direction whose sender already sent a Close
//! gets none injected. Past `timeouts.close` the tunnel is cut. A route's
//! `idle_timeout` and `max_connection_age` close a tunnel the same way;
//! its pings, and the end of a client that does not answer them, are
//! `keepalive.rs`'s, called from one hook in the run loop.
//!
//! Must not: log per frame, unmask or buffer whole payloads, or allocate
//! while a direction is idle.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::net::tls::{MaybeTls, OverTcp};
use crate::observe::access::{CloseOrder, Side};
use crate::observe::registry::{ConnStats, DirectionCounters};
use crate::tunnel::direction::{Half, HalfError};
use crate::tunnel::frames::{encode_close, FrameError, Sender};
use crate::tunnel::keepalive::{Keepalive, KeepaliveEnd};

mod buffers;
mod direction;
pub mod frames;
pub mod keepalive;
mod outcome;
mod policy;
mod rate;
pub mod session;
mod stall;
#[cfg(test)]
mod tests;
mod watch;

use outcome::{offender_close, violation_error};
pub use outcome::{
    TunnelError, TunnelOutcome, CLOSE_POLICY_VIOLATION, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG,
};
pub use policy::{FramePolicy, TunnelTimeouts};
pub use rate::RateLimit;

/// Size of the copy buffer a direction holds while data moves.
pub const COPY_BUFFER_SIZE: usize = 16 * 1024;

/// A stream that can say it is readable before a buffer is committed to it.
pub trait Splice: AsyncRead + AsyncWrite + Unpin {
    /// Ready when a read may make progress (data, EOF or error).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Splice for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

impl<T: OverTcp + AsyncRead + AsyncWrite + Unpin> Splice for MaybeTls<T> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // For TLS, a direction only goes idle after a read returned Pending,
        // which tokio-rustls does only once its plaintext buffer is empty and
        // the socket would block; so socket readiness is the right signal.
        self.tcp().poll_read_ready(cx)
    }
}

/// Splices `client` and `backend` until both have closed, an error, a
/// deadline, or what `stats.close` asks: a close with Close frames, or a
/// cut (wsgate's hard shutdown).
/// `*_leftover` are bytes each side sent that hyper read past the
/// handshake; they are delivered first.
///
/// Generic over the streams so the tunnel can also be driven over
/// in-memory pipes in unit tests; the proxy's instance, with
/// `ClientStream` and `BackendStream`, is monomorphised, so a read costs no
/// dynamic dispatch.
// Two streams with their leftovers, and what judges them: grouping them
// into a struct would only rename the same list.
#[allow(clippy::too_many_arguments)]
pub fn run<C: Splice, B: Splice>(
    client: C,
    client_leftover: Bytes,
    backend: B,
    backend_leftover: Bytes,
    stats: Arc<ConnStats>,
    timeouts: TunnelTimeouts,
    policy: &FramePolicy,
) -> Tunnel<C, B> {
    let mut up = Half::with_policy(Sender::Client, policy);
    let mut down = Half::with_policy(Sender::Server, policy);
    let failed = match up.start_with(client_leftover, &stats.to_backend, &stats) {
        Err(e) => Some(half_error(e, Side::Client, None)),
        Ok(()) => match down.start_with(backend_leftover, &stats.to_client, &stats) {
            Err(e) => Some(half_error(e, Side::Backend, None)),
            Ok(()) => None,
        },
    };
    Tunnel {
        client,
        backend,
        up,
        down,
        state: RunState {
            first_done: None,
            first_close: None,
            proxy_close: None,
            violation: None,
            keepalive: None,
            stall: None,
        },
        // `None` unless the route sets a keepalive policy: no timer otherwise.
        keep: Keepalive::start(&policy.keepalive),
        half_close_timer: None,
        close_timer: None,
        failed: failed.map(Box::new),
        stats,
        timeouts,
        client_shut: false,
        backend_shut: false,
    }
}

pin_project_lite::pin_project! {
    /// A tunnel being spliced: the future [`run`] returns, ending with how
    /// the tunnel ended. Written out as a struct rather than an async fn
    /// so that each piece of a tunnel's state is stored once: an idle
    /// tunnel's task is mostly this (an async fn keeps its arguments beside
    /// the locals made from them, and every nested await adds a frame).
    pub struct Tunnel<C, B> {
        client: C,
        backend: B,
        up: Half,
        down: Half,
        state: RunState,
        keep: Option<Box<Keepalive>>,
        // Timers are allocated only when needed, so idle tunnels carry none.
        half_close_timer: Option<Pin<Box<Sleep>>>,
        close_timer: Option<Pin<Box<Sleep>>>,
        // A leftover could not be taken: the outcome, given on first poll.
        failed: Option<Box<TunnelOutcome>>,
        stats: Arc<ConnStats>,
        timeouts: TunnelTimeouts,
        client_shut: bool,
        backend_shut: bool,
    }
}

impl<C: Splice, B: Splice> Future for Tunnel<C, B> {
    type Output = TunnelOutcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TunnelOutcome> {
        let this = self.project();
        if let Some(out) = this.failed.take() {
            return Poll::Ready(*out);
        }
        let (up, down, state) = (this.up, this.down, this.state);
        let (client, backend) = (this.client, this.backend);
        let (close_timer, keep) = (this.close_timer, this.keep);
        let stats: &ConnStats = this.stats;
        let timeouts = *this.timeouts;
        // Asked through `stats.close`: by wsgate's hard shutdown (cut
        // now), or an operator, a drain, a policy (close with frames).
        let asked = stats.close.poll_asked(cx);
        if asked.cut() {
            return Poll::Ready(state.end(Side::Proxy, TunnelError::Shutdown));
        }
        // After a violation or a stall the tunnel is already closing, with
        // its own codes: a second close would write to a side given up on.
        if state.proxy_close.is_none()
            && state.violation.is_none()
            && state.stall.is_none()
            && asked.close()
        {
            let order = stats.close.order();
            let mask = mask_key(stats.id);
            up.begin_close(encode_close(order.code, &order.reason, Some(mask)));
            down.begin_close(encode_close(order.code, &order.reason, None));
            state.proxy_close = Some(order);
            *close_timer = Some(Box::pin(tokio::time::sleep(timeouts.close)));
        }
        up.peer_pings(down.tracker.pings());
        if let Some(out) = step(
            up,
            Side::Client,
            cx,
            client,
            backend,
            &stats.to_backend,
            stats,
            state,
        ) {
            return Poll::Ready(out);
        }
        if let Some(out) = step(
            down,
            Side::Backend,
            cx,
            backend,
            client,
            &stats.to_client,
            stats,
            state,
        ) {
            return Poll::Ready(out);
        }
        if let Some(k) = keep.as_mut().filter(|_| state.quiet()) {
            if let Poll::Ready(end) = k.poll(cx, keepalive::watches(up, down)) {
                *keep = None;
                keepalive::begin_close(end, up, stats, state);
                *close_timer = Some(Box::pin(tokio::time::sleep(timeouts.close)));
                cx.waker().wake_by_ref();
            }
        }
        if let Some(end @ KeepaliveEnd::PingTimeout(_)) = state.keepalive {
            let timer = close_timer.as_mut();
            return keepalive::cut_client(end, up, backend, this.backend_shut, timer, state, cx);
        }
        if state.violation.is_none() {
            let offender = match (up.violation(), down.violation()) {
                (Some(e), _) => Some((Side::Client, e)),
                (None, Some(e)) => Some((Side::Backend, e)),
                (None, None) => None,
            };
            if let Some((side, e)) = offender {
                let (code, reason) = offender_close(e);
                let frame = |mask| encode_close(code, reason, mask);
                match side {
                    Side::Client => down.close_offender(frame(None)),
                    _ => up.close_offender(frame(Some(mask_key(stats.id)))),
                }
                state.violation = Some((side, e));
                *close_timer = Some(Box::pin(tokio::time::sleep(timeouts.close)));
                // The other direction has a Close to write now.
                cx.waker().wake_by_ref();
            }
        }
        if let Some((side, source)) = state.violation {
            if state.first_close.is_none() && (up.injected() || down.injected()) {
                state.first_close = Some((Side::Proxy, Some(offender_close(source).0)));
            }
            let expired = close_timer
                .as_mut()
                .is_some_and(|t| t.as_mut().poll(cx).is_ready());
            if expired || (up.is_done() && down.is_done()) {
                return Poll::Ready(state.end(side, violation_error(side, source)));
            }
            return Poll::Pending;
        }
        if state.proxy_close.is_none() {
            let (close, id) = (timeouts.close, stats.id);
            if let Some(p) = stall::poll_stall(up, down, state, close_timer, close, id, cx) {
                return p;
            }
        }
        if state.first_close.is_none() && (up.injected() || down.injected()) {
            let code = state.proxy_close.as_ref().map(|o| o.code);
            state.first_close = Some((Side::Proxy, code));
        }
        if let Some(order) = &state.proxy_close {
            if up.close_finished() && down.close_finished() {
                // Shut both writers down (FIN, and close_notify for TLS) before
                // letting go, so nothing written is lost in a buffer.
                if !*this.client_shut {
                    *this.client_shut = Pin::new(&mut *client).poll_shutdown(cx).is_ready();
                }
                if !*this.backend_shut {
                    *this.backend_shut = Pin::new(&mut *backend).poll_shutdown(cx).is_ready();
                }
                if *this.client_shut && *this.backend_shut {
                    if up.injected() || down.injected() {
                        return Poll::Ready(state.clean(Side::Proxy));
                    }
                    // Both peers had closed on their own: not the proxy's doing.
                    state.proxy_close = None;
                    state.keepalive = None;
                    let closed_by = state
                        .first_done
                        .or(state.first_close.map(|(s, _)| s))
                        .unwrap_or(Side::Proxy);
                    return Poll::Ready(state.clean(closed_by));
                }
            }
            if let Some(t) = close_timer.as_mut() {
                if t.as_mut().poll(cx).is_ready() {
                    let code = order.code;
                    return Poll::Ready(state.end(
                        Side::Proxy,
                        TunnelError::CloseTimeout {
                            code,
                            after: timeouts.close,
                        },
                    ));
                }
            }
        }
        if state.proxy_close.is_none() && !(up.is_done() && down.is_done()) {
            if let Some(out) = peer_close_deadline(close_timer, up, down, state, timeouts.close, cx)
            {
                return Poll::Ready(out);
            }
        }
        match state.first_done {
            None => Poll::Pending,
            Some(closed_by) if up.is_done() && down.is_done() => {
                Poll::Ready(state.clean(closed_by))
            }
            Some(closed_by) => {
                let timer = this
                    .half_close_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeouts.half_close)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(state.end(
                    closed_by,
                    TunnelError::HalfCloseTimeout(timeouts.half_close),
                ))
            }
        }
    }
}

/// What the tunnel has learned so far about how it is ending.
struct RunState {
    first_done: Option<Side>,
    first_close: Option<(Side, Option<u16>)>,
    proxy_close: Option<CloseOrder>,
    /// A side broke the protocol: it gets Close 1002, the other side 1001.
    violation: Option<(Side, FrameError)>,
    /// A keepalive policy of the route is closing the tunnel.
    keepalive: Option<KeepaliveEnd>,
    /// A side stopped reading for the route's `write_stall_timeout` (given):
    /// the other side gets Close 1001 (see stall.rs).
    stall: Option<(Side, Duration)>,
}

impl RunState {
    /// Nothing is closing the tunnel yet: keepalive policies apply.
    fn quiet(&self) -> bool {
        self.first_done.is_none()
            && self.first_close.is_none()
            && self.proxy_close.is_none()
            && self.violation.is_none()
            && self.keepalive.is_none()
            && self.stall.is_none()
    }

    fn end(&mut self, closed_by: Side, error: TunnelError) -> TunnelOutcome {
        TunnelOutcome {
            closed_by,
            first_close: self.first_close,
            error: Some(error),
            proxy_close: self.proxy_close.take(),
        }
    }

    fn clean(&mut self, closed_by: Side) -> TunnelOutcome {
        TunnelOutcome {
            closed_by,
            first_close: self.first_close,
            error: self.keepalive.map(TunnelError::Keepalive),
            proxy_close: self.proxy_close.take(),
        }
    }
}

/// Polls one direction; `Some` when the tunnel must end because of it.
#[allow(clippy::too_many_arguments)]
fn step<R: Splice, W: Splice>(
    half: &mut Half,
    sender: Side,
    cx: &mut Context<'_>,
    reader: &mut R,
    writer: &mut W,
    counters: &DirectionCounters,
    stats: &ConnStats,
    state: &mut RunState,
) -> Option<TunnelOutcome> {
    if half.is_done() {
        return None;
    }
    let r = half.poll(cx, reader, writer, counters, stats);
    note_close(half, sender, &mut state.first_close);
    // The half-close clock starts when the sender stops, not once the
    // receiver's shutdown completes: that may never happen if it stalls.
    if half.eof {
        state.first_done.get_or_insert(sender);
    }
    match r {
        Poll::Ready(Ok(())) => {
            state.first_done.get_or_insert(sender);
            None
        }
        Poll::Ready(Err(e)) => {
            let mut out = half_error(e, sender, state.first_close);
            out.proxy_close = state.proxy_close.take();
            keepalive::blame_dead_client(&mut out, state);
            Some(out)
        }
        Poll::Pending => None,
    }
}

/// Once a peer's Close has passed, the other side has `after` to answer
/// and the tunnel to end: a side that never answers must not hold it open
/// for ever. `Some` when the deadline has passed.
fn peer_close_deadline(
    timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    up: &Half,
    down: &Half,
    state: &mut RunState,
    after: Duration,
    cx: &mut Context<'_>,
) -> Option<TunnelOutcome> {
    let (first, _) = state.first_close.filter(|(s, _)| *s != Side::Proxy)?;
    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
    if t.as_mut().poll(cx).is_pending() {
        return None;
    }
    let answered = up.tracker.close().is_some() && down.tracker.close().is_some();
    if answered {
        // The handshake is complete; only the TCP close was missing.
        let closed_by = state.first_done.unwrap_or(first);
        return Some(state.clean(closed_by));
    }
    let waiting_for = if first == Side::Client {
        Side::Backend
    } else {
        Side::Client
    };
    Some(state.end(
        waiting_for,
        TunnelError::CloseUnanswered { waiting_for, after },
    ))
}

/// A masking key for Close frames wsgate sends to a backend. RFC 6455
/// wants it unpredictable; std's randomly seeded hasher gives that without
/// another dependency.
pub fn mask_key(id: u64) -> [u8; 4] {
    use std::hash::BuildHasher;
    let bits = std::collections::hash_map::RandomState::new().hash_one(id);
    let b = bits.to_le_bytes();
    [b[0], b[1], b[2], b[3]]
}

fn note_close(half: &Half, side: Side, first: &mut Option<(Side, Option<u16>)>) {
    // Once wsgate's own Close went out this way, the sender's is discarded,
    // not passed: wsgate's is the one to record, at the end of the poll.
    if first.is_none() && !half.injected() {
        if let Some(c) = half.tracker.close() {
            *first = Some((side, c.code));
        }
    }
}

/// Maps a direction's error to the side at fault: reads and framing blame the
/// sender, writes blame the receiver.
fn half_error(
    e: HalfError,
    sender: Side,
    first_close: Option<(Side, Option<u16>)>,
) -> TunnelOutcome {
    let receiver = if sender == Side::Client {
        Side::Backend
    } else {
        Side::Client
    };
    let (closed_by, error) = match e {
        HalfError::Read(source) => (
            sender,
            TunnelError::Read {
                side: sender,
                source,
            },
        ),
        HalfError::Write(source) => (
            receiver,
            TunnelError::Write {
                side: receiver,
                source,
            },
        ),
        HalfError::Protocol(source) => (sender, violation_error(sender, source)),
    };
    TunnelOutcome {
        closed_by,
        first_close,
        error: Some(error),
        proxy_close: None,
    }
}
