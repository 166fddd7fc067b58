//! A route's message rate: `messages_per_second` and `burst`, a token
//! bucket per tunnel on what the client sends toward the backend.
//!
//! Owns: [`RateLimit`] (the route's setting), [`Bucket`] (one tunnel's
//! tokens) and [`metered`], the hook through which a direction feeds its
//! frame tracker with the bucket's allowance. Each text or binary message
//! (counted once, by its first frame) and each ping takes a token: a ping
//! costs the backend an answer. So does a pong, unless it answers one of
//! the backend's pings (each of those owes the client one free pong):
//! answering pings never costs a client its rate, and unasked pongs, which
//! a backend's library hands its application as messages, cannot flood it.
//! Closes and continuation frames are free. The refusal is decided by the tracker from the first header byte
//! of the frame over the budget, so the frames before it pass whole and
//! the Close 1008 goes out at that boundary.
//!
//! Must not: look at payload, read the clock per frame (once per read is
//! enough: a read's frames all arrived at the same moment), or allocate.

use tokio::time::Instant;

use crate::tunnel::frames::FrameTracker;

/// A route's `messages_per_second` and `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens added per second, at least 1.
    pub per_second: u32,
    /// Most tokens the bucket holds, at least 1: how many messages may
    /// come back to back after a quiet spell. A tunnel starts full.
    pub burst: u32,
}

/// One tunnel's tokens.
#[derive(Debug)]
pub(crate) struct Bucket {
    limit: RateLimit,
    /// Whole and fractional tokens; at most `limit.burst`.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
    /// Pings the backend has sent the client so far (see [`Bucket::peer_pings`]).
    peer_pings: u32,
    /// Pongs of the client's that answered them, free.
    answered: u32,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(limit: RateLimit, now: Instant) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst),
            at: now,
            peer_pings: 0,
            answered: 0,
        }
    }

    /// The backend has sent `n` pings so far: as many of the client's
    /// pongs are free.
    pub(crate) fn peer_pings(&mut self, n: u32) {
        self.peer_pings = n;
    }

    /// Whole tokens available at `now`, after the refill since the last call.
    pub(crate) fn available(&mut self, now: Instant) -> u32 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let burst = f64::from(self.limit.burst);
        self.tokens = (self.tokens + elapsed * f64::from(self.limit.per_second)).min(burst);
        self.at = now;
        // tokens is within 0..=burst, and burst is a u32.
        self.tokens.floor() as u32
    }

    /// Takes `n` tokens, never more than [`Bucket::available`] gave.
    pub(crate) fn spend(&mut self, n: u32) {
        debug_assert!(
            f64::from(n) <= self.tokens.floor(),
            "spent more than allowed"
        );
        self.tokens = (self.tokens - f64::from(n)).max(0.0);
    }
}

/// Runs `feed` on `tracker` with the bucket's allowance, when there is a
/// bucket, and takes what the frames begun in it used. The tracker is left
/// unmetered, so bytes it follows outside this call (those discarded after
/// a Close) are never refused for their rate.
pub(crate) fn metered<T>(
    bucket: Option<&mut Bucket>,
    tracker: &mut FrameTracker,
    feed: impl FnOnce(&mut FrameTracker) -> T,
) -> T {
    let Some(bucket) = bucket else {
        return feed(tracker);
    };
    // Below u32::MAX, which would mean "unmetered" to the tracker.
    let allowed = bucket.available(Instant::now()).min(u32::MAX - 1);
    let owed = bucket.peer_pings.saturating_sub(bucket.answered);
    tracker.allow_starts(allowed);
    tracker.allow_pongs(owed);
    let out = feed(tracker);
    bucket.spend(allowed - tracker.starts_left());
    bucket.answered += owed - tracker.pongs_owed();
    tracker.allow_starts(u32::MAX);
    tracker.allow_pongs(0);
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::tunnel::frames::{FrameError, Sender};

    const KEY: [u8; 4] = [1, 2, 3, 4];

    /// A masked client frame with first byte `b0` and `len` (< 126) bytes.
    fn client_frame(b0: u8, len: u8) -> Vec<u8> {
        let mut f = vec![b0, 0x80 | len];
        f.extend_from_slice(&KEY);
        f.extend(std::iter::repeat_n(0u8, usize::from(len)));
        f
    }

    fn limit(per_second: u32, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }

    #[test]
    fn a_bucket_starts_full_and_refills_at_its_rate_up_to_its_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(limit(10, 3), t0);
        assert_eq!(b.available(t0), 3);
        b.spend(3);
        assert_eq!(b.available(t0), 0);
        assert_eq!(b.available(t0 + Duration::from_millis(99)), 0);
        assert_eq!(b.available(t0 + Duration::from_millis(100)), 1);
        assert_eq!(b.available(t0 + Duration::from_millis(250)), 2);
        assert_eq!(
            b.available(t0 + Duration::from_secs(3600)),
            3,
            "capped at burst"
        );
        b.spend(1);
        assert_eq!(b.available(t0 + Duration::from_secs(3600)), 2);
    }

    #[test]
    fn a_clock_that_goes_nowhere_adds_nothing() {
        let t0 = Instant::now();
        let mut b = Bucket::new(limit(1, 1), t0 + Duration::from_secs(5));
        b.spend(1);
        assert_eq!(b.available(t0), 0, "an earlier instant is no refill");
    }

    /// Messages count by their first frame, pings and unasked pongs count,
    /// and pongs answering the backend's pings, Closes and continuations
    /// are free.
    #[test]
    fn what_takes_a_token() {
        let t0 = Instant::now();
        let free = [
            client_frame(0x8A, 0), // pong, answering
            client_frame(0x01, 1), // text, first of three
            client_frame(0x00, 1), // continuation
            client_frame(0x80, 1), // final continuation
        ]
        .concat();
        let mut tracker = FrameTracker::new(Sender::Client);
        let mut b = Bucket::new(limit(1, 1), t0);
        b.peer_pings(1);
        assert_eq!(
            metered(Some(&mut b), &mut tracker, |t| t.feed_at(&free)),
            Ok(free.len()),
            "one token for the fragmented message, none for the answer"
        );
        let pong = client_frame(0x8A, 0);
        b.peer_pings(2);
        assert_eq!(
            metered(Some(&mut b), &mut tracker, |t| t.feed_at(&pong.repeat(2))),
            Err((FrameError::RateLimited, Some(pong.len()))),
            "one more ping owes one more pong, not two"
        );
        for (what, f) in [
            ("text", 0x81),
            ("binary", 0x82),
            ("ping", 0x89),
            ("unasked pong", 0x8A),
        ] {
            let mut tracker = FrameTracker::new(Sender::Client);
            let mut b = Bucket::new(limit(1, 1), t0);
            let two = [client_frame(f, 2), client_frame(f, 2)].concat();
            let at = client_frame(f, 2).len();
            assert_eq!(
                metered(Some(&mut b), &mut tracker, |t| t.feed_at(&two)),
                Err((FrameError::RateLimited, Some(at))),
                "{what}: the second is refused at its first byte"
            );
        }
    }

    /// The refusal falls on the first frame over the budget, wherever the
    /// reads split, and the tokens spent carry over from one read to the next.
    #[test]
    fn the_budget_spans_reads_and_refuses_at_the_frame_boundary() {
        let t0 = Instant::now();
        let one = client_frame(0x82, 5);
        let stream: Vec<u8> = std::iter::repeat_n(one.clone(), 4).flatten().collect();
        for split in 0..stream.len() {
            let mut tracker = FrameTracker::new(Sender::Client);
            let mut b = Bucket::new(limit(1, 3), t0);
            let (a, rest) = stream.split_at(split);
            let first = metered(Some(&mut b), &mut tracker, |t| t.feed_at(a));
            let refused_at = 3 * one.len();
            if split > refused_at {
                assert_eq!(first, Err((FrameError::RateLimited, Some(refused_at))));
                continue;
            }
            assert_eq!(first, Ok(split));
            let second = metered(Some(&mut b), &mut tracker, |t| t.feed_at(rest));
            assert_eq!(
                second,
                Err((FrameError::RateLimited, Some(refused_at - split))),
                "split at {split}"
            );
        }
    }

    #[test]
    fn without_a_bucket_nothing_is_metered_and_after_a_feed_the_tracker_is_unmetered() {
        let mut tracker = FrameTracker::new(Sender::Client);
        let many: Vec<u8> = std::iter::repeat_n(client_frame(0x81, 1), 100)
            .flatten()
            .collect();
        assert_eq!(
            metered(None, &mut tracker, |t| t.feed_at(&many)),
            Ok(many.len())
        );
        let mut b = Bucket::new(limit(1, 1), Instant::now());
        let one = client_frame(0x81, 1);
        assert_eq!(
            metered(Some(&mut b), &mut tracker, |t| t.feed_at(&one)),
            Ok(one.len())
        );
        assert_eq!(tracker.starts_left(), u32::MAX);
        assert_eq!(tracker.feed(&many), Ok(many.len()));
    }

    /// Frames after the sender's Close are discarded, not sent on: they
    /// cost nothing.
    #[test]
    fn frames_after_the_close_are_free() {
        let mut tracker = FrameTracker::new(Sender::Client);
        let mut close = vec![0x88, 0x82];
        close.extend_from_slice(&KEY);
        close.extend_from_slice(&[0x03 ^ 1, 0xe8 ^ 2]);
        let after = [client_frame(0x81, 1), client_frame(0x89, 0)].concat();
        let mut b = Bucket::new(limit(1, 1), Instant::now());
        b.spend(1);
        assert_eq!(
            metered(Some(&mut b), &mut tracker, |t| t
                .feed_at(&[close.clone(), after].concat())),
            Ok(close.len())
        );
    }
}
