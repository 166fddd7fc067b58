//! Slow consumers: a route's `write_stall_timeout`.
//!
//! A side that stops reading back-pressures the other: its direction keeps
//! the one copy buffer it holds, writes nothing more, and reads nothing
//! more, so the sender's writes block in the kernel and wsgate's memory for
//! the tunnel stays at one buffer per direction. What is bounded here is
//! the time: a direction with bytes to write and no write progress for
//! `write_stall_timeout` ends the tunnel. The stalled reader cannot take a
//! Close; its direction stops writing and only reads (and discards) what
//! its sender still sends, while the sender gets Close 1001 at the next
//! frame boundary of the other direction. The tunnel ends once that Close
//! and the sender's answer are through, or after `timeouts.close`.
//!
//! Owns: [`StallWatch`] (one direction's clock, armed only while its writer
//! blocks) and [`poll_stall`] (the run loop's part).
//!
//! Must not: read the clock on a write that makes progress, or hold a timer
//! while the direction is idle.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::observe::access::Side;
use crate::tunnel::direction::Half;
use crate::tunnel::frames::encode_close;
use crate::tunnel::{RunState, TunnelError, TunnelOutcome};

/// Close code to the side whose peer stopped reading: its peer is gone.
const CLOSE_GOING_AWAY: u16 = 1001;

/// One direction's write-stall clock.
#[derive(Debug)]
pub(crate) struct StallWatch {
    after: Duration,
    /// When the writer first blocked since its last progress.
    since: Option<Instant>,
    /// Armed while the writer blocks; kept across short stalls so a slow
    /// but moving reader does not cost an allocation per write, dropped
    /// when the direction goes idle.
    timer: Option<Pin<Box<Sleep>>>,
}

impl StallWatch {
    /// A clock that fires after `after` without write progress.
    pub(crate) fn new(after: Duration) -> Self {
        Self {
            after,
            since: None,
            timer: None,
        }
    }

    /// The writer would block: true once it has made no progress for the
    /// whole timeout; otherwise the task is woken when it would be.
    pub(crate) fn blocked(&mut self, cx: &mut Context<'_>) -> bool {
        let since = *self.since.get_or_insert_with(Instant::now);
        let deadline = since + self.after;
        let timer = match &mut self.timer {
            Some(t) => {
                if t.deadline() != deadline {
                    t.as_mut().reset(deadline);
                }
                t
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        timer.as_mut().poll(cx).is_ready()
    }

    /// The writer took bytes (or finished a flush).
    pub(crate) fn progress(&mut self) {
        self.since = None;
    }

    /// The direction has nothing to write: no clock, no timer.
    pub(crate) fn idle(&mut self) {
        self.since = None;
        self.timer = None;
    }

    /// The timeout this clock enforces.
    pub(crate) fn after(&self) -> Duration {
        self.after
    }
}

/// The run loop's part: once a direction has stalled, its receiver (the
/// side that stopped reading) gets nothing more, and the other side gets
/// Close 1001 at a frame boundary; then the tunnel ends when both
/// directions are through or `close_after` has passed. `None` while no
/// direction has stalled; `Some(Pending)` while the tunnel is closing
/// because one did.
pub(super) fn poll_stall(
    up: &mut Half,
    down: &mut Half,
    state: &mut RunState,
    close_timer: &mut Option<Pin<Box<Sleep>>>,
    close_after: Duration,
    id: u64,
    cx: &mut Context<'_>,
) -> Option<Poll<TunnelOutcome>> {
    if state.stall.is_none() {
        let (reader, after) = match (up.stalled(), down.stalled()) {
            (Some(after), _) => (Side::Backend, after),
            (None, Some(after)) => (Side::Client, after),
            (None, None) => return None,
        };
        let (stalled, other) = match reader {
            Side::Backend => (&mut *up, &mut *down),
            _ => (&mut *down, &mut *up),
        };
        stalled.abandon_writer();
        // Toward the backend a Close is masked, as a client's.
        let mask = (reader == Side::Client).then(|| crate::tunnel::mask_key(id));
        other.close_offender(encode_close(CLOSE_GOING_AWAY, "peer not reading", mask));
        state.stall = Some((reader, after));
        *close_timer = Some(Box::pin(tokio::time::sleep(close_after)));
        cx.waker().wake_by_ref();
    }
    let (reader, after) = state.stall?;
    if state.first_close.is_none() && (up.injected() || down.injected()) {
        state.first_close = Some((Side::Proxy, Some(CLOSE_GOING_AWAY)));
    }
    let expired = close_timer
        .as_mut()
        .is_some_and(|t| t.as_mut().poll(cx).is_ready());
    if expired || (up.is_done() && down.is_done()) {
        let error = TunnelError::WriteStall {
            side: reader,
            after,
        };
        return Some(Poll::Ready(state.end(reader, error)));
    }
    Some(Poll::Pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx_poll(w: &mut StallWatch) -> bool {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        w.blocked(&mut cx)
    }

    #[tokio::test(start_paused = true)]
    async fn fires_only_after_the_whole_timeout_without_progress() {
        let mut w = StallWatch::new(Duration::from_secs(10));
        assert!(!cx_poll(&mut w));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!cx_poll(&mut w));
        w.progress();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!cx_poll(&mut w), "progress restarts the clock");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!cx_poll(&mut w));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(cx_poll(&mut w));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_direction_holds_no_timer() {
        let mut w = StallWatch::new(Duration::from_secs(1));
        assert!(!cx_poll(&mut w));
        assert!(w.timer.is_some());
        w.idle();
        assert!(w.timer.is_none() && w.since.is_none());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!cx_poll(&mut w), "a new stall starts a new clock");
    }
}
