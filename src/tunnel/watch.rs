//! What one direction of a tunnel records for the route's keepalive
//! policies (see `keepalive.rs`): when its sender was last heard and last
//! relayed, wsgate's Ping waiting for a frame boundary toward the client,
//! and the Pong expected back, dropped from the client's bytes when it
//! comes.
//!
//! Must not: allocate per read, rewrite a frame that is not the expected
//! Pong, or unmask more than the 8 bytes of a frame that may be it (in
//! comparison only: the caller's bytes are never unmasked in place).

use tokio::time::Instant;

use crate::tunnel::frames::FrameTracker;

/// Payload length of wsgate's pings: enough that a client cannot answer one
/// it has not seen by chance.
pub(crate) const PING_PAYLOAD: usize = 8;
/// wsgate's ping to the client: FIN + Ping, unmasked, 8-byte payload.
const PING_FRAME: usize = 2 + PING_PAYLOAD;
/// The client's answer: FIN + Pong, masked, the same 8 bytes.
const PONG_FRAME: usize = 2 + 4 + PING_PAYLOAD;
const PING_B0: u8 = 0x89;
const PONG_B0: u8 = 0x8A;
// The payload length byte of a masked 8-byte frame.
const PONG_B1: u8 = 0x80 | PING_PAYLOAD as u8;

/// What one direction records for the keepalive policies. Boxed in the
/// direction only when the route watches activity.
#[derive(Debug)]
pub(crate) struct HalfWatch {
    /// When the sender last sent anything, a swallowed pong included.
    heard: Instant,
    /// When bytes of the sender last went to the receiver.
    relayed: Instant,
    /// Backend to client: wsgate's ping, waiting for a frame boundary.
    ping: Option<[u8; PING_FRAME]>,
    /// Client to backend: the payload of the pong that answers wsgate.
    expect: Option<[u8; PING_PAYLOAD]>,
    /// The first bytes of a frame that may be that pong, read but not yet
    /// judged: neither written nor shown to the tracker.
    held: [u8; PONG_FRAME],
    held_len: u8,
    /// The expected pong came, and was dropped.
    answered: bool,
}

/// Whether the bytes at a frame boundary are the pong wsgate expects.
#[derive(Debug, PartialEq, Eq)]
enum Judged {
    Pong,
    /// Every byte so far fits: the rest of the frame decides.
    Maybe,
    No,
}

impl HalfWatch {
    pub(crate) fn new() -> Self {
        let now = Instant::now();
        Self {
            heard: now,
            relayed: now,
            ping: None,
            expect: None,
            held: [0; PONG_FRAME],
            held_len: 0,
            answered: false,
        }
    }

    /// Bytes came from the sender; `relayed` when some go to the receiver.
    pub(crate) fn heard(&mut self, relayed: bool) {
        let now = Instant::now();
        self.heard = now;
        if relayed {
            self.relayed = now;
        }
    }

    /// When the sender last sent anything.
    pub(crate) fn heard_at(&self) -> Instant {
        self.heard
    }

    /// When bytes of the sender last went to the receiver.
    pub(crate) fn relayed_at(&self) -> Instant {
        self.relayed
    }

    /// Queues wsgate's Ping with `payload`, for the next frame boundary
    /// toward this direction's receiver (the client).
    pub(crate) fn queue_ping(&mut self, payload: &[u8; PING_PAYLOAD]) {
        self.ping = Some(ping_frame(payload));
    }

    /// Whether wsgate's Ping still waits for a frame boundary.
    pub(crate) fn ping_queued(&self) -> bool {
        self.ping.is_some()
    }

    /// From now on the Pong with `payload` from this direction's sender
    /// (the client) is the answer to wsgate, dropped when it comes.
    pub(crate) fn expect_pong(&mut self, payload: [u8; PING_PAYLOAD]) {
        self.expect = Some(payload);
    }

    /// Whether the expected Pong came since the last call.
    pub(crate) fn take_answered(&mut self) -> bool {
        std::mem::take(&mut self.answered)
    }

    /// wsgate's ping, when this direction is at a frame boundary.
    pub(crate) fn take_ping(&mut self) -> Option<Vec<u8>> {
        self.ping.take().map(|p| p.to_vec())
    }

    /// Bytes kept back from the last read, to go before the next one.
    pub(crate) fn held(&self) -> usize {
        usize::from(self.held_len)
    }

    /// Puts the held bytes at the start of `buf` and forgets them.
    pub(crate) fn restore_held(&mut self, buf: &mut [u8]) {
        let n = self.held();
        buf[..n].copy_from_slice(&self.held[..n]);
        self.held_len = 0;
    }

    /// Drops the expected pong from `buf[..len]` (bytes from the client,
    /// none yet shown to `tracker`), and holds back a frame at the end that
    /// may still turn out to be it. Returns how many bytes are left to pass,
    /// from the start. A pong that does not match passes untouched.
    pub(crate) fn swallow_pong(
        &mut self,
        tracker: &FrameTracker,
        buf: &mut [u8],
        len: usize,
    ) -> usize {
        let Some(expect) = self.expect else {
            return len;
        };
        // A copy walks the bytes to find where frames start; the tunnel's
        // own tracker sees them when they pass, as always.
        let mut walker = tracker.clone();
        let mut i = 0;
        while i < len {
            if walker.at_boundary() {
                match judge(&expect, &buf[i..len]) {
                    Judged::Pong => {
                        buf.copy_within(i + PONG_FRAME..len, i);
                        self.expect = None;
                        self.answered = true;
                        return len - PONG_FRAME;
                    }
                    Judged::Maybe => {
                        let n = len - i;
                        self.held[..n].copy_from_slice(&buf[i..len]);
                        self.held_len = n as u8;
                        return i;
                    }
                    Judged::No => {}
                }
            }
            // Header bytes one at a time (until_boundary says 1, or 0 at a
            // boundary), a payload in one step.
            let step = usize::try_from(walker.until_boundary().max(1)).unwrap_or(usize::MAX);
            let end = i.saturating_add(step).min(len);
            match walker.feed(&buf[i..end]) {
                Ok(n) if n == end - i => i = end,
                // A violation or the client's Close: nothing after it can be
                // the answer, and the tunnel's own tracker judges the rest.
                _ => return len,
            }
        }
        len
    }
}

fn judge(expect: &[u8; PING_PAYLOAD], data: &[u8]) -> Judged {
    let n = data.len().min(PONG_FRAME);
    let fits = data[..n].iter().enumerate().all(|(k, &b)| match k {
        0 => b == PONG_B0,
        1 => b == PONG_B1,
        2..=5 => true,
        _ => b ^ data[2 + (k - 6) % 4] == expect[k - 6],
    });
    match (fits, n == PONG_FRAME) {
        (false, _) => Judged::No,
        (true, true) => Judged::Pong,
        (true, false) => Judged::Maybe,
    }
}

/// wsgate's Ping with `payload`.
pub(crate) fn ping_frame(payload: &[u8; PING_PAYLOAD]) -> [u8; PING_FRAME] {
    let mut f = [0u8; PING_FRAME];
    f[0] = PING_B0;
    f[1] = PING_PAYLOAD as u8;
    f[2..].copy_from_slice(payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::frames::Sender;

    const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

    fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![b0, 0x80 | payload.len() as u8];
        f.extend_from_slice(&KEY);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
        f
    }

    fn watch_expecting(p: [u8; 8]) -> HalfWatch {
        let mut w = HalfWatch::new();
        w.expect = Some(p);
        w
    }

    /// Runs `stream` through a watch in chunks of `split` bytes, as the
    /// direction does: held bytes go in front of the next chunk, what is
    /// left passes to the tracker. Returns what passed.
    fn pass(w: &mut HalfWatch, stream: &[u8], split: usize) -> Vec<u8> {
        let mut tracker = FrameTracker::new(Sender::Client);
        let mut out = Vec::new();
        for chunk in stream.chunks(split) {
            let mut buf = vec![0u8; 64];
            let h = w.held();
            buf[h..h + chunk.len()].copy_from_slice(chunk);
            w.restore_held(&mut buf);
            let len = w.swallow_pong(&tracker, &mut buf, h + chunk.len());
            tracker.feed(&buf[..len]).expect("valid");
            out.extend_from_slice(&buf[..len]);
        }
        out
    }

    #[test]
    fn the_expected_pong_is_dropped_whatever_the_split_and_the_rest_passes() {
        let p = *b"abcdefgh";
        let before = masked(0x81, b"hi");
        let after = masked(0x82, b"there");
        let stream = [before.clone(), masked(0x8A, &p), after.clone()].concat();
        for split in 1..=stream.len() {
            let mut w = watch_expecting(p);
            assert_eq!(
                pass(&mut w, &stream, split),
                [before.clone(), after.clone()].concat()
            );
            assert!(w.answered, "split {split}");
            assert_eq!(w.expect, None);
        }
    }

    #[test]
    fn other_pongs_and_pong_lookalikes_in_payloads_pass_untouched() {
        let p = *b"abcdefgh";
        // Another payload; a pong inside a data payload; an unmasked-length pong.
        let stream = [
            masked(0x8A, b"abcdefgX"),
            masked(0x82, &masked(0x8A, &p)),
            masked(0x8A, b"abcdefg"),
        ]
        .concat();
        for split in 1..=stream.len() {
            let mut w = watch_expecting(p);
            assert_eq!(pass(&mut w, &stream, split), stream, "split {split}");
            assert!(!w.answered);
        }
    }

    #[test]
    fn a_second_matching_pong_passes() {
        let p = *b"12345678";
        let pong = masked(0x8A, &p);
        let mut w = watch_expecting(p);
        assert_eq!(
            pass(&mut w, &[pong.clone(), pong.clone()].concat(), 40),
            pong
        );
    }

    #[test]
    fn nothing_is_touched_when_no_pong_is_expected() {
        let pong = masked(0x8A, b"12345678");
        let mut w = HalfWatch::new();
        assert_eq!(pass(&mut w, &pong, 3), pong);
    }

    #[test]
    fn the_ping_is_unmasked_with_its_payload() {
        assert_eq!(
            ping_frame(b"12345678").to_vec(),
            [&[0x89, 8][..], b"12345678"].concat()
        );
    }
}
