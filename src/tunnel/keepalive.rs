//! A route's keepalive policies for its tunnels: `idle_timeout`,
//! `ping_interval` with `ping_timeout`, and `max_connection_age`.
//!
//! Owns: [`KeepalivePolicy`] (what the route asks for), `Keepalive` (one
//! tunnel's timer and ping state, polled by the run loop in `mod.rs`, with
//! the hooks it calls), and [`KeepaliveEnd`], why one of them ended a
//! tunnel. What each direction records for them, and the check of the
//! client's bytes for the Pong that answers wsgate, are in `watch.rs`.
//!
//! Activity is recorded, never timed: a read stores the time, and the one
//! timer of a tunnel is re-armed only when it expires, to the earliest of
//! the deadlines that time gives. Only bytes relayed between the peers
//! count against `idle_timeout`; wsgate's own pings and the pongs that
//! answer them do not, so keepalive pings never hold an idle tunnel open.
//! Any byte from the client counts as hearing from it for `ping_interval`,
//! and, once a ping is out, as its answer for `ping_timeout`. A direction
//! held up by a receiver that takes nothing counts as heard and relayed:
//! that is a stall (`stall.rs`), not silence.
//!
//! Must not: allocate anything for a tunnel whose route sets none of the
//! policies, or arm a timer per read.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::observe::access::{CloseOrder, EndReason, Side};
use crate::observe::registry::{ConnStats, CLOSE_GOING_AWAY};
use crate::tunnel::direction::Half;
use crate::tunnel::frames::encode_close;
use crate::tunnel::watch::{HalfWatch, PING_PAYLOAD};
use crate::tunnel::{mask_key, RunState, Splice, TunnelError, TunnelOutcome};

/// The lower bound of a tunnel's age limit, as a share of
/// `max_connection_age`: each tunnel draws its own limit uniformly between
/// this and the whole value, so tunnels opened together (after a deploy, a
/// reconnect storm) do not all close together.
pub const AGE_JITTER_FLOOR: f64 = 0.9;

/// The shortest wait the timer is re-armed for.
const MIN_REARM: Duration = Duration::from_millis(1);

/// Pings to a silent client, and when to give up on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingPolicy {
    /// `ping_interval`: how long the client may stay silent before wsgate pings it.
    pub interval: Duration,
    /// `ping_timeout`: how long the client has to answer a ping.
    pub timeout: Duration,
}

/// What a route asks of its tunnels' lifetimes; all off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepalivePolicy {
    /// `idle_timeout`: no bytes relayed either way for this long ends the tunnel.
    pub idle_timeout: Option<Duration>,
    /// `ping_interval` and `ping_timeout`.
    pub ping: Option<PingPolicy>,
    /// `max_connection_age`, before jitter.
    pub max_age: Option<Duration>,
}

impl KeepalivePolicy {
    /// Whether any policy is on: otherwise a tunnel carries nothing for them.
    pub fn is_off(&self) -> bool {
        self.idle_timeout.is_none() && self.ping.is_none() && self.max_age.is_none()
    }

    /// Whether the directions must record when bytes move.
    pub(crate) fn watches_activity(&self) -> bool {
        self.idle_timeout.is_some() || self.ping.is_some()
    }
}

/// Why a keepalive policy ended a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeepaliveEnd {
    /// No bytes relayed either way for the route's `idle_timeout`.
    #[error("no bytes either way for {0:?} (idle_timeout)")]
    Idle(Duration),
    /// The client did not answer wsgate's ping within `ping_timeout`.
    #[error("client did not answer a ping within {0:?} (ping_timeout)")]
    PingTimeout(Duration),
    /// The tunnel reached its share of `max_connection_age`.
    #[error("reached its age limit of {0:?} (max_connection_age with jitter)")]
    MaxAge(Duration),
}

impl KeepaliveEnd {
    /// The record's and the metric's reason.
    pub fn reason(self) -> EndReason {
        match self {
            KeepaliveEnd::Idle(_) => EndReason::IdleTimeout,
            KeepaliveEnd::PingTimeout(_) => EndReason::PingTimeout,
            KeepaliveEnd::MaxAge(_) => EndReason::MaxAge,
        }
    }

    /// The reason in the Close frames wsgate sends.
    pub fn close_reason(self) -> &'static str {
        match self {
            KeepaliveEnd::Idle(_) => "idle timeout",
            KeepaliveEnd::PingTimeout(_) => "ping timeout",
            KeepaliveEnd::MaxAge(_) => "max connection age",
        }
    }
}

// === impl Keepalive ===

/// Where wsgate's ping is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PingState {
    /// None out: the next goes when the client has been silent long enough.
    Quiet,
    /// Waiting for a frame boundary toward the client.
    Queued,
    /// Written at this time; the answer is due `ping_timeout` later.
    Sent(Instant),
}

/// One tunnel's keepalive state: one timer, re-armed when it expires.
#[derive(Debug)]
pub(crate) struct Keepalive {
    policy: KeepalivePolicy,
    /// This tunnel's age limit, jitter applied, and when it is reached.
    age: Option<(Duration, Instant)>,
    ping: PingState,
    timer: Pin<Box<Sleep>>,
}

/// The two directions' watches, as the run loop lends them.
pub(crate) struct Watches<'a> {
    /// Client to backend.
    pub(crate) up: Option<&'a mut HalfWatch>,
    /// Backend to client.
    pub(crate) down: Option<&'a mut HalfWatch>,
}

impl Keepalive {
    /// The state for a tunnel starting now; `None` when the policy is off,
    /// so such a tunnel holds no timer.
    pub(crate) fn start(policy: &KeepalivePolicy) -> Option<Box<Self>> {
        if policy.is_off() {
            return None;
        }
        let now = Instant::now();
        let age = policy.max_age.map(|max| {
            let limit = max.mul_f64(rand::random_range(AGE_JITTER_FLOOR..=1.0));
            (limit, now + limit)
        });
        let mut k = Box::new(Self {
            policy: *policy,
            age,
            ping: PingState::Quiet,
            timer: Box::pin(tokio::time::sleep_until(now)),
        });
        let first = k.next_deadline(now, None, None);
        k.timer.as_mut().reset(first);
        Some(k)
    }

    /// Ready with the policy that ends the tunnel. Meanwhile queues a ping
    /// in `w.down` (and wakes the task so it goes out) when the client has
    /// been silent for `ping_interval`.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, mut w: Watches<'_>) -> Poll<KeepaliveEnd> {
        let mut rearm = false;
        if self.ping == PingState::Queued && w.down.as_ref().is_some_and(|d| !d.ping_queued()) {
            // Written since the last poll: the client's time starts now.
            self.ping = PingState::Sent(Instant::now());
            rearm = true;
        }
        if let Some(up) = w.up.as_deref_mut() {
            // Heard since the ping went out, whatever it sent: alive. A
            // client may answer only the latest of several pings (RFC 6455
            // 5.5.3), the backend's when it follows wsgate's; then wsgate's
            // Pong never comes, and is dropped if it comes later.
            let heard = matches!(self.ping, PingState::Sent(at) if up.heard_at() >= at);
            if up.take_answered() || heard {
                // The next ping is due an interval after this answer.
                self.ping = PingState::Quiet;
                rearm = true;
            }
        }
        loop {
            if rearm {
                let now = Instant::now();
                let next = self.next_deadline(now, w.up.as_deref(), w.down.as_deref());
                // Never a deadline already past: this loop must not spin.
                self.timer.as_mut().reset(next.max(now + MIN_REARM));
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if let Some(end) = self.expired(now, w.up.as_deref(), w.down.as_deref()) {
                return Poll::Ready(end);
            }
            if self.ping_due(now, w.up.as_deref()) {
                if let (Some(up), Some(down)) = (w.up.as_deref_mut(), w.down.as_deref_mut()) {
                    let payload: [u8; PING_PAYLOAD] = rand::random();
                    down.queue_ping(&payload);
                    up.expect_pong(payload);
                    self.ping = PingState::Queued;
                    cx.waker().wake_by_ref();
                }
            }
            rearm = true;
        }
    }

    /// The policy whose deadline has passed at `now`, if any.
    fn expired(
        &self,
        now: Instant,
        up: Option<&HalfWatch>,
        down: Option<&HalfWatch>,
    ) -> Option<KeepaliveEnd> {
        if let Some((limit, at)) = self.age {
            if now >= at {
                return Some(KeepaliveEnd::MaxAge(limit));
            }
        }
        if let (Some(idle), Some(last)) = (self.policy.idle_timeout, last_relayed(up, down)) {
            if now >= last + idle {
                return Some(KeepaliveEnd::Idle(idle));
            }
        }
        if let (Some(p), PingState::Sent(at)) = (self.policy.ping, self.ping) {
            if now >= at + p.timeout {
                return Some(KeepaliveEnd::PingTimeout(p.timeout));
            }
        }
        None
    }

    fn ping_due(&self, now: Instant, up: Option<&HalfWatch>) -> bool {
        match (self.policy.ping, self.ping, up) {
            (Some(p), PingState::Quiet, Some(up)) => now >= up.heard_at() + p.interval,
            _ => false,
        }
    }

    /// The earliest moment anything may change, from what is recorded now.
    fn next_deadline(
        &self,
        now: Instant,
        up: Option<&HalfWatch>,
        down: Option<&HalfWatch>,
    ) -> Instant {
        let idle = self
            .policy
            .idle_timeout
            .map(|d| last_relayed(up, down).unwrap_or(now) + d);
        let ping = self.policy.ping.map(|p| match self.ping {
            PingState::Quiet => up.map_or(now, HalfWatch::heard_at) + p.interval,
            PingState::Sent(at) => at + p.timeout,
            // Looked at again when it has gone out; this is only a backstop.
            PingState::Queued => now + p.timeout,
        });
        [self.age.map(|(_, at)| at), idle, ping]
            .into_iter()
            .flatten()
            .min()
            // Unreachable (a policy is on), but a far deadline is harmless.
            .unwrap_or(now + Duration::from_secs(3600))
    }
}

// === the run loop's hooks ===

/// Lends the run loop's two directions' watches to [`Keepalive::poll`].
/// A direction whose receiver does not take its bytes reads none from its
/// sender: whatever the sender sends meanwhile (a client's answer to a
/// ping included) cannot be heard, and bytes waiting to move are not
/// idleness. Such a direction counts as heard and relayed: a receiver
/// that stopped reading is `write_stall_timeout`'s to judge, not the
/// keepalive policies'.
pub(crate) fn watches<'a>(up: &'a mut Half, down: &'a mut Half) -> Watches<'a> {
    let (up_waits, down_waits) = (up.backlogged(), down.backlogged());
    let (mut up, mut down) = (up.watch_mut(), down.watch_mut());
    for (w, waits) in [
        (up.as_deref_mut(), up_waits),
        (down.as_deref_mut(), down_waits),
    ] {
        if let Some(w) = w.filter(|_| waits) {
            w.heard(true);
        }
    }
    Watches { up, down }
}

/// Starts the close `end` calls for. Idle and age close both sides with
/// 1001 at frame boundaries, through the same order an operator's close
/// or a drain gives (unless one was given first: then that one is carried
/// out, under its own name). A client that did not answer a ping gets no
/// Close: only the backend's 1001, then the client's connection is cut
/// ([`cut_client`]).
pub(super) fn begin_close(
    end: KeepaliveEnd,
    up: &mut Half,
    stats: &ConnStats,
    state: &mut RunState,
) {
    let reason = end.close_reason().to_string();
    match end {
        KeepaliveEnd::PingTimeout(_) => {
            let mask = Some(mask_key(stats.id));
            up.begin_close(encode_close(CLOSE_GOING_AWAY, &reason, mask));
            state.keepalive = Some(end);
        }
        KeepaliveEnd::Idle(_) | KeepaliveEnd::MaxAge(_) => {
            let order = CloseOrder {
                code: CLOSE_GOING_AWAY,
                reason,
            };
            if stats.close.request(order) {
                state.keepalive = Some(end);
            }
        }
    }
}

/// After a ping timeout: once the backend's Close is out (or `close`, the
/// timer, has passed) the backend's writer is shut and the tunnel ends,
/// the client's connection dropped with it.
pub(super) fn cut_client<B: Splice>(
    end: KeepaliveEnd,
    up: &Half,
    backend: &mut B,
    backend_shut: &mut bool,
    close_timer: Option<&mut Pin<Box<Sleep>>>,
    state: &mut RunState,
    cx: &mut Context<'_>,
) -> Poll<TunnelOutcome> {
    let expired = close_timer.is_some_and(|t| t.as_mut().poll(cx).is_ready());
    if up.injection_flushed() {
        state
            .first_close
            .get_or_insert((Side::Proxy, Some(CLOSE_GOING_AWAY)));
        if !*backend_shut {
            *backend_shut = Pin::new(backend).poll_shutdown(cx).is_ready();
        }
    }
    if *backend_shut || expired {
        return Poll::Ready(state.end(Side::Client, TunnelError::Keepalive(end)));
    }
    Poll::Pending
}

/// A direction failed while a ping timeout was closing the tunnel: the
/// client is dead, the failure is only its symptom.
pub(super) fn blame_dead_client(out: &mut TunnelOutcome, state: &RunState) {
    if let Some(end @ KeepaliveEnd::PingTimeout(_)) = state.keepalive {
        out.closed_by = Side::Client;
        out.error = Some(TunnelError::Keepalive(end));
    }
}

fn last_relayed(up: Option<&HalfWatch>, down: Option<&HalfWatch>) -> Option<Instant> {
    [
        up.map(HalfWatch::relayed_at),
        down.map(HalfWatch::relayed_at),
    ]
    .into_iter()
    .flatten()
    .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_off_policy_holds_no_state() {
        assert!(Keepalive::start(&KeepalivePolicy::default()).is_none());
        assert!(!KeepalivePolicy::default().watches_activity());
    }

    #[tokio::test(start_paused = true)]
    async fn the_age_limit_falls_within_its_jitter() {
        let max = Duration::from_secs(100);
        for _ in 0..200 {
            let k = Keepalive::start(&KeepalivePolicy {
                max_age: Some(max),
                ..KeepalivePolicy::default()
            })
            .expect("on");
            let (limit, _) = k.age.expect("an age");
            assert!(
                limit >= max.mul_f64(AGE_JITTER_FLOOR) && limit <= max,
                "{limit:?}"
            );
        }
    }
}
