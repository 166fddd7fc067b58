//! [`FrameTracker`]: follows the frame headers of one direction of a
//! WebSocket stream, byte by byte, as the tunnel passes them.
//!
//! Must not: do I/O, allocate, or keep payload; it keeps a few header fields
//! and the remaining payload length.

use super::{
    close_code_allowed, CloseInfo, FrameError, Sender, FIN_BIT, MASK_BIT, OP_BINARY, OP_CLOSE,
    OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};

// Flag bits packed into one byte so the tracker stays within a cache line.
const IN_PAYLOAD: u8 = 1 << 0;
const IN_MESSAGE: u8 = 1 << 1;
const CLOSED: u8 = 1 << 2;
const CLOSE_HAS_CODE: u8 = 1 << 3;
// After the Close: the sender's later bytes broke framing, so frames are no
// longer counted; every later byte is discarded all the same.
const LOST: u8 = 1 << 7;
// The reserved bits (RSV1-3) an extension negotiated for this stream allows,
// kept at their place in a frame's first byte.
const RSV_BITS: u8 = 0x70;

/// Tracks frame boundaries, message counts and Close state of one direction of a WebSocket stream.
///
/// Feed it every byte the tunnel passes, in order; it keeps a few header
/// fields and the remaining payload length, never the payload itself.
#[derive(Debug, Clone)]
pub struct FrameTracker {
    frames: u64,
    messages: u64,
    control_frames: u64,
    // Frames whose header completed after this sender's Close (saturating;
    // u32 keeps the tracker within a cache line).
    late: u32,
    // Frames this sender may still begin before its Close, continuations,
    // Closes and owed pongs aside: the caller's message-rate budget
    // (`u32::MAX`: unmetered). Set before a feed and read after it; the
    // tracker knows no time.
    starts_left: u32,
    // Pongs that answer the peer's pings, free of the budget (metered only).
    pongs_owed: u32,
    // Pings this sender sent, whole (saturating): the pongs its peer owes.
    pings: u32,
    // Route limits on one data frame's and one message's payload
    // (u64::MAX: none), and the current message's payload so far.
    max_frame: u64,
    max_message: u64,
    message_len: u64,
    // While in a header: the extended length being accumulated. While in a
    // payload: bytes still to pass before the frame ends.
    remaining: u64,
    error: Option<FrameError>,
    mask: [u8; 4],
    close_code: u16,
    sender: Sender,
    // First two header bytes, kept because they decide how long the rest of
    // the header is and what the frame means once its payload ends.
    b0: u8,
    b1: u8,
    // Header bytes of the current frame seen so far; 0 between frames.
    hdr_pos: u8,
    // Close payload bytes seen so far, capped at 2: only the code matters.
    close_pos: u8,
    flags: u8,
    // `[websocket] strict = false`: RFC 6455's rules are not enforced, but
    // frames are still followed, so the route's limits (sizes, rate) hold
    // after a broken frame as before it.
    lenient: bool,
}

// `close_pos` of a Close whose payload is too short to hold a code
// (lenient only): none is read from it.
const CLOSE_NO_CODE: u8 = 3;

impl FrameTracker {
    /// A tracker for frames sent by `sender`, positioned at the start of the stream.
    pub fn new(sender: Sender) -> Self {
        Self {
            frames: 0,
            messages: 0,
            control_frames: 0,
            late: 0,
            starts_left: u32::MAX,
            pongs_owed: 0,
            pings: 0,
            max_frame: u64::MAX,
            max_message: u64::MAX,
            message_len: 0,
            remaining: 0,
            error: None,
            mask: [0; 4],
            close_code: 0,
            sender,
            b0: 0,
            b1: 0,
            hdr_pos: 0,
            close_pos: 0,
            flags: 0,
            lenient: false,
        }
    }

    /// When `yes`, a tracker that lets RFC 6455's rules go
    /// (`[websocket] strict = false`) yet keeps following frames: only the
    /// route's limits ([`FrameError::is_route_limit`]) are errors then, and
    /// they hold after a broken frame as before it. Frame boundaries, the
    /// Close and the counters stay known, so a proxy can still close at a
    /// boundary.
    pub fn lenient(mut self, yes: bool) -> Self {
        self.lenient = yes;
        self
    }

    /// A tracker whose sender may set the reserved bits in `rsv` (a mask of
    /// 0x40, 0x20, 0x10 in a frame's first byte), as negotiated extensions
    /// allow: RSV1 for permessage-deflate (RFC 7692).
    pub fn with_rsv(sender: Sender, rsv: u8) -> Self {
        let mut t = Self::new(sender);
        t.flags |= rsv & RSV_BITS;
        t
    }

    /// Limits on one data frame's payload and one message's (its frames
    /// summed), judged from each header before any of its payload passes;
    /// `None`: no limit.
    pub fn with_limits(mut self, max_frame: Option<u64>, max_message: Option<u64>) -> Self {
        self.max_frame = max_frame.unwrap_or(u64::MAX);
        self.max_message = max_message.unwrap_or(u64::MAX);
        self
    }

    /// How many more frames the sender may begin: messages (text or
    /// binary, counted by their first frame), pings, and pongs beyond
    /// [`FrameTracker::allow_pongs`]'s (and, lenient, frames of reserved
    /// opcodes); the next one past it is refused with
    /// [`FrameError::RateLimited`], judged from its first header byte.
    /// `u32::MAX`: no limit (the default). Closes and continuations are
    /// never counted, nor frames after the sender's Close.
    pub fn allow_starts(&mut self, n: u32) {
        self.starts_left = n;
    }

    /// What is left of [`FrameTracker::allow_starts`]'s allowance.
    pub fn starts_left(&self) -> u32 {
        self.starts_left
    }

    /// How many pongs the sender owes its peer for the peer's pings: those
    /// are free of [`FrameTracker::allow_starts`]'s allowance, so answering
    /// pings never costs a client its rate, and unasked pongs do.
    pub fn allow_pongs(&mut self, n: u32) {
        self.pongs_owed = n;
    }

    /// What is left of [`FrameTracker::allow_pongs`]'s allowance.
    pub fn pongs_owed(&self) -> u32 {
        self.pongs_owed
    }

    /// Pings this sender has sent whole (saturating at `u32::MAX`).
    pub fn pings(&self) -> u32 {
        self.pings
    }

    /// Like [`FrameTracker::feed`], and on a violation also says where, in
    /// `data`, the offending frame began, when it began there: the bytes
    /// before it are whole frames a proxy may still pass, and a frame of
    /// its own may follow them. `None` when the frame began in an earlier
    /// chunk (its first bytes are already passed) or the tracker was
    /// already poisoned.
    ///
    /// # Errors
    ///
    /// As [`FrameTracker::feed`], with the offending frame's start.
    pub fn feed_at(&mut self, data: &[u8]) -> Result<usize, (FrameError, Option<usize>)> {
        if let Some(e) = self.error {
            return Err((e, None));
        }
        if self.flags & CLOSED != 0 {
            self.follow_late(data);
            return Ok(0);
        }
        let mut start = (self.at_boundary()).then_some(0);
        let rest = match self.run_from(data, &mut start) {
            Ok(rest) => rest,
            Err(e) => {
                self.error = Some(e);
                return Err((e, start));
            }
        };
        let passed = data.len() - rest.len();
        self.follow_late(rest);
        Ok(passed)
    }

    /// Who sends the frames this tracker follows.
    pub fn sender(&self) -> Sender {
        self.sender
    }

    /// Feed the next bytes of the stream, in order, and learn how many of
    /// them lead up to and include this sender's Close frame: the rest come
    /// after it, and a proxy must discard them, not pass them (RFC 6455 5.5.1:
    /// nothing follows a Close). Returns `data.len()` until the Close, 0
    /// once it has passed.
    ///
    /// Frames after the Close are followed only to be counted
    /// ([`FrameTracker::late_frames`]); they are never an error, whatever
    /// they hold, so a careless peer cannot end a closing handshake that the
    /// other side has yet to answer.
    ///
    /// # Errors
    ///
    /// A violation before the Close poisons the tracker: every later call
    /// returns the same error, and bytes after the offending one in the same
    /// chunk are not inspected.
    pub fn feed(&mut self, data: &[u8]) -> Result<usize, FrameError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.flags & CLOSED != 0 {
            self.follow_late(data);
            return Ok(0);
        }
        self.feed_at(data).map_err(|(e, _)| e)
    }

    /// Frames this sender began after its own Close: discarded, not passed.
    /// Stops counting once those bytes break framing.
    pub fn late_frames(&self) -> u32 {
        self.late
    }

    fn follow_late(&mut self, data: &[u8]) {
        if data.is_empty() || self.flags & LOST != 0 {
            return;
        }
        if self.run_from(data, &mut None).is_err() {
            self.flags |= LOST;
        }
    }

    /// Frames whose header has been fully parsed and accepted (data and control).
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Data messages (text/binary, fragmented or not) whose final frame has been completely passed, payload included.
    ///
    /// Control frames are not messages; see [`FrameTracker::control_frames`].
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Ping, Pong and Close frames completely passed.
    pub fn control_frames(&self) -> u64 {
        self.control_frames
    }

    /// True iff no frame is partially passed: not inside a header nor a payload.
    ///
    /// A proxy may inject a whole frame of its own here. True at the start of
    /// the stream; false once the tracker is poisoned, because the offending
    /// frame has been partly passed and the stream position is no longer known.
    pub fn at_boundary(&self) -> bool {
        self.error.is_none() && self.hdr_pos == 0 && self.flags & IN_PAYLOAD == 0
    }

    /// How many more bytes may pass before the next frame boundary: the rest
    /// of the payload inside a payload, 1 inside a header (whose length is
    /// only known byte by byte), 0 at a boundary. A proxy that wants to
    /// inject a frame reads at most this many bytes, so it stops exactly at
    /// the boundary instead of inside the next frame.
    pub fn until_boundary(&self) -> u64 {
        if self.hdr_pos != 0 {
            1
        } else if self.flags & IN_PAYLOAD != 0 {
            self.remaining
        } else {
            0
        }
    }

    /// A fragmented data message has started and its final frame has not completed.
    ///
    /// A single unfragmented frame never sets this. Injecting a data frame
    /// while it is true would corrupt the message; control frames are fine.
    pub fn in_message(&self) -> bool {
        self.flags & IN_MESSAGE != 0
    }

    /// The Close frame from this sender, once it has completely passed.
    pub fn close(&self) -> Option<CloseInfo> {
        if self.flags & CLOSED == 0 {
            return None;
        }
        let code = (self.flags & CLOSE_HAS_CODE != 0).then_some(self.close_code);
        Some(CloseInfo { code })
    }

    /// The error that poisoned this tracker, if any.
    pub fn error(&self) -> Option<FrameError> {
        self.error
    }

    fn opcode(&self) -> u8 {
        self.b0 & 0x0F
    }

    fn fin(&self) -> bool {
        self.b0 & FIN_BIT != 0
    }

    fn ext_len(&self) -> u8 {
        match self.b1 & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        }
    }

    fn header_len(&self) -> u8 {
        let mask_len = if self.b1 & MASK_BIT != 0 { 4 } else { 0 };
        2 + self.ext_len() + mask_len
    }

    // Returns the bytes of `data` past the end of this sender's Close, if
    // it completes here; empty otherwise.
    // `start` is kept at the offset in `data` where the current frame began,
    // `None` while it began before `data`.
    fn run_from<'a>(
        &mut self,
        mut data: &'a [u8],
        start: &mut Option<usize>,
    ) -> Result<&'a [u8], FrameError> {
        let closed_before = self.flags & CLOSED != 0;
        let len = data.len();
        while let Some((&b, rest)) = data.split_first() {
            if self.flags & IN_PAYLOAD != 0 {
                data = self.pass_payload(data)?;
            } else {
                if self.hdr_pos == 0 {
                    *start = Some(len - data.len());
                }
                self.header_byte(b)?;
                data = rest;
            }
            if !closed_before && self.flags & CLOSED != 0 {
                return Ok(data);
            }
        }
        Ok(data)
    }

    fn closed(&self) -> bool {
        self.flags & CLOSED != 0
    }

    fn header_byte(&mut self, b: u8) -> Result<(), FrameError> {
        match self.hdr_pos {
            0 => self.check_first_byte(b)?,
            1 => {
                let masked = b & MASK_BIT != 0;
                let expected_masked = self.sender == Sender::Client;
                if masked != expected_masked && !self.lenient {
                    return Err(FrameError::Masking { expected_masked });
                }
                self.b1 = b;
                let len7 = b & 0x7F;
                // 126 and 127 only announce an extended length still to come.
                self.remaining = if len7 < 126 { u64::from(len7) } else { 0 };
            }
            pos => {
                let ext_end = 2 + self.ext_len();
                if pos < ext_end {
                    if self.ext_len() == 8 && pos == 2 && b & 0x80 != 0 && !self.lenient {
                        return Err(FrameError::LengthOverflow);
                    }
                    self.remaining = (self.remaining << 8) | u64::from(b);
                } else {
                    self.mask[usize::from(pos - ext_end)] = b;
                }
            }
        }
        self.hdr_pos += 1;
        if self.hdr_pos >= 2 && self.hdr_pos == self.header_len() {
            self.finish_header()?;
        }
        Ok(())
    }

    // Everything knowable from the first byte is checked here so a bad frame
    // is reported before the rest of its header has to arrive.
    fn check_first_byte(&mut self, b: u8) -> Result<(), FrameError> {
        match self.check_rules(b) {
            Err(e) if !self.lenient => return Err(e),
            _ => {}
        }
        if self.starts_left != u32::MAX && !self.closed() {
            let free = match b & 0x0F {
                OP_CONTINUATION | OP_CLOSE => true,
                OP_PONG if self.pongs_owed > 0 => {
                    self.pongs_owed -= 1;
                    true
                }
                _ => false,
            };
            if !free {
                if self.starts_left == 0 {
                    return Err(FrameError::RateLimited);
                }
                self.starts_left -= 1;
            }
        }
        self.b0 = b;
        Ok(())
    }

    // RFC 6455's rules for a frame's first byte.
    fn check_rules(&self, b: u8) -> Result<(), FrameError> {
        let fin = b & FIN_BIT != 0;
        let rsv = b & RSV_BITS & !self.flags;
        if rsv != 0 {
            return Err(FrameError::ReservedBits(rsv >> 4));
        }
        match b & 0x0F {
            OP_CONTINUATION if self.flags & IN_MESSAGE == 0 => {
                return Err(FrameError::UnexpectedContinuation)
            }
            OP_TEXT | OP_BINARY if self.flags & IN_MESSAGE != 0 => {
                return Err(FrameError::MessageInterrupted)
            }
            OP_CLOSE | OP_PING | OP_PONG if !fin => return Err(FrameError::FragmentedControl),
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
            op => return Err(FrameError::ReservedOpcode(op)),
        }
        Ok(())
    }

    fn finish_header(&mut self) -> Result<(), FrameError> {
        let op = self.opcode();
        // Control length is checked only now so non-minimal encodings of a
        // short length stay legal, and the error carries the real length.
        if op >= OP_CLOSE && self.remaining > 125 {
            if !self.lenient {
                return Err(FrameError::ControlTooLong(self.remaining));
            }
            // Let through, a control frame is still a frame: it may not
            // pass the frame limit.
            if self.remaining > self.max_frame && !self.closed() {
                return Err(FrameError::FrameTooBig(self.remaining));
            }
        }
        if op < OP_CLOSE && !self.closed() {
            if self.remaining > self.max_frame {
                return Err(FrameError::FrameTooBig(self.remaining));
            }
            // Strict, a continuation is always within a message; lenient,
            // any frame but a new text or binary one adds to the message
            // in progress, so a broken frame cannot reset its size.
            self.message_len = match op {
                OP_TEXT | OP_BINARY => self.remaining,
                _ if self.flags & IN_MESSAGE != 0 => {
                    self.message_len.saturating_add(self.remaining)
                }
                _ => self.remaining,
            };
            if self.message_len > self.max_message {
                return Err(FrameError::MessageTooBig(self.message_len));
            }
        }
        if op == OP_CLOSE && !self.closed() {
            // Two shifted-in bytes replace close_code entirely; only the
            // position needs resetting.
            self.close_pos = 0;
            if self.remaining == 1 {
                if !self.lenient {
                    return Err(FrameError::CloseTooShort);
                }
                self.close_pos = CLOSE_NO_CODE;
            }
        }
        if self.closed() {
            self.late = self.late.saturating_add(1);
        } else {
            self.frames += 1;
        }
        self.hdr_pos = 0;
        if (op == OP_TEXT || op == OP_BINARY) && !self.fin() {
            self.flags |= IN_MESSAGE;
        }
        if self.remaining == 0 {
            self.complete_frame();
        } else {
            self.flags |= IN_PAYLOAD;
        }
        Ok(())
    }

    // Returns the bytes of `data` past the current frame's payload.
    fn pass_payload<'a>(&mut self, mut data: &'a [u8]) -> Result<&'a [u8], FrameError> {
        if self.opcode() == OP_CLOSE && !self.closed() {
            // A Close payload here has at least 2 bytes (0 never enters the
            // payload state, 1 is rejected, or, lenient, read without a
            // code), so remaining cannot underflow.
            while self.close_pos < 2 {
                let Some((&b, rest)) = data.split_first() else {
                    return Ok(data);
                };
                // close_pos is the payload offset here, and it is below 4,
                // so it indexes the key directly.
                let key = if self.b1 & MASK_BIT != 0 {
                    self.mask[usize::from(self.close_pos)]
                } else {
                    0
                };
                self.close_code = (self.close_code << 8) | u16::from(b ^ key);
                self.close_pos += 1;
                self.remaining -= 1;
                data = rest;
            }
            if self.close_pos == 2 && self.flags & CLOSE_HAS_CODE == 0 {
                if !close_code_allowed(self.close_code) && !self.lenient {
                    return Err(FrameError::InvalidCloseCode(self.close_code));
                }
                self.flags |= CLOSE_HAS_CODE;
            }
        }
        let take = usize::try_from(self.remaining).map_or(data.len(), |r| r.min(data.len()));
        // take <= remaining by construction.
        self.remaining -= take as u64;
        if self.remaining == 0 {
            self.complete_frame();
        }
        Ok(&data[take..])
    }

    fn complete_frame(&mut self) {
        self.flags &= !IN_PAYLOAD;
        if self.closed() {
            // Late frames are counted once, by their header.
            if self.fin() && self.opcode() < OP_CLOSE {
                self.flags &= !IN_MESSAGE;
            }
            return;
        }
        match self.opcode() {
            OP_CLOSE => {
                self.control_frames += 1;
                self.flags |= CLOSED;
            }
            OP_PING => {
                self.control_frames += 1;
                self.pings = self.pings.saturating_add(1);
            }
            OP_PONG => self.control_frames += 1,
            OP_CONTINUATION | OP_TEXT | OP_BINARY if self.fin() => {
                self.messages += 1;
                self.flags &= !IN_MESSAGE;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::frames::test_support::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn struct_is_compact() {
        // Two cache lines at most: the route's size limits and the running
        // message size take the second.
        assert!(std::mem::size_of::<FrameTracker>() <= 128);
    }

    #[test]
    fn fresh_tracker_is_at_boundary_and_empty() {
        for sender in [Sender::Client, Sender::Server] {
            let mut t = FrameTracker::new(sender);
            assert!(t.feed(&[]).is_ok());
            let s = snap(&t);
            assert_eq!(
                s,
                Snap {
                    frames: 0,
                    messages: 0,
                    control: 0,
                    boundary: true,
                    in_message: false,
                    close: None,
                    error: None,
                }
            );
        }
    }

    #[test]
    fn length_forms_count_identically_masked_and_unmasked() {
        for sender in [Sender::Client, Sender::Server] {
            let m = key_for(sender);
            let mut stream = Vec::new();
            let mut n_frames = 0;
            for n in [0usize, 1, 5, 125, 126, 127, 1000, 65535, 65536, 70001] {
                for form in [Len::Min, Len::L16, Len::L64] {
                    if matches!(form, Len::L16) && n > 0xFFFF {
                        continue;
                    }
                    let payload: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
                    stream.extend(enc(0x82, &payload, m, form));
                    n_frames += 1;
                }
            }
            let expected = Snap {
                frames: n_frames,
                messages: n_frames,
                control: 0,
                boundary: true,
                in_message: false,
                close: None,
                error: None,
            };
            assert_eq!(whole(sender, &stream), expected);
            assert_eq!(bytewise(sender, &stream), expected);
        }
    }

    #[test]
    fn zero_length_frames_complete_at_header() {
        let mut t = FrameTracker::new(Sender::Client);
        let h = header(0x81, 0, Some(KEY), Len::Min);
        assert_eq!(h.len(), 6);
        t.feed(&h[..5]).unwrap();
        assert_eq!((t.frames(), t.messages(), t.at_boundary()), (0, 0, false));
        t.feed(&h[5..]).unwrap();
        assert_eq!((t.frames(), t.messages(), t.at_boundary()), (1, 1, true));
        // Non-minimal zero length and a zero-length ping.
        t.feed(&header(0x82, 0, Some(KEY), Len::L64)).unwrap();
        t.feed(&header(0x89, 0, Some(KEY), Len::L16)).unwrap();
        assert_eq!(
            (
                t.frames(),
                t.messages(),
                t.control_frames(),
                t.at_boundary()
            ),
            (3, 2, 1, true)
        );
    }

    #[test]
    fn boundary_mid_header_mid_payload_and_between_frames() {
        for (sender, form) in [
            (Sender::Client, Len::L64),
            (Sender::Server, Len::L16),
            (Sender::Client, Len::Min),
        ] {
            let m = key_for(sender);
            let payload = [9u8; 40];
            let f = enc(0x81, &payload, m, form);
            let hlen = f.len() - payload.len();
            let mut stream = f.clone();
            stream.extend(&f);
            let mut t = FrameTracker::new(sender);
            assert!(t.at_boundary());
            for (i, b) in stream.iter().enumerate() {
                t.feed(&[*b]).unwrap();
                let off = (i + 1) % f.len();
                let done = (i + 1) / f.len();
                // Only a fully consumed frame is a boundary.
                assert_eq!(t.at_boundary(), off == 0, "offset {}", i + 1);
                let headers = done + usize::from(off >= hlen);
                assert_eq!(t.frames(), headers as u64, "offset {}", i + 1);
                assert_eq!(t.messages(), done as u64, "offset {}", i + 1);
            }
            assert_eq!(t.frames(), 2);
        }
    }

    #[test]
    fn fragmented_message_with_interleaved_control_frames() {
        for sender in [Sender::Client, Sender::Server] {
            let m = key_for(sender);
            let parts: Vec<(Vec<u8>, bool, u64, u64)> = vec![
                // (frame, in_message after it, messages, control frames)
                (enc(0x01, b"hel", m, Len::Min), true, 0, 0),
                (enc(0x89, b"ping", m, Len::Min), true, 0, 1),
                (enc(0x00, b"lo ", m, Len::L16), true, 0, 1),
                (enc(0x8A, b"", m, Len::Min), true, 0, 2),
                (enc(0x00, &[b'w'; 300], m, Len::L64), true, 0, 2),
                (enc(0x80, b"orld", m, Len::Min), false, 1, 2),
                (enc(0x82, b"single", m, Len::Min), false, 2, 2),
                (enc(0x02, b"b", m, Len::Min), true, 2, 2),
                (enc(0x80, b"", m, Len::Min), false, 3, 2),
            ];
            let mut t = FrameTracker::new(sender);
            let mut all = Vec::new();
            for (i, (f, in_msg, msgs, ctl)) in parts.iter().enumerate() {
                t.feed(f).unwrap();
                all.extend(f);
                assert_eq!(t.in_message(), *in_msg, "after part {i}");
                assert_eq!(t.messages(), *msgs, "after part {i}");
                assert_eq!(t.control_frames(), *ctl, "after part {i}");
                assert_eq!(t.frames(), i as u64 + 1);
                assert!(t.at_boundary());
            }
            let expected = snap(&t);
            assert_eq!(bytewise(sender, &all), expected);
            assert_eq!(whole(sender, &all), expected);
        }
    }

    #[test]
    fn in_message_stays_set_through_final_frame_payload() {
        let mut t = FrameTracker::new(Sender::Server);
        t.feed(&enc(0x02, b"ab", None, Len::Min)).unwrap();
        let last = enc(0x80, b"cd", None, Len::Min);
        t.feed(&last[..3]).unwrap();
        assert!(t.in_message());
        assert_eq!(t.messages(), 0);
        t.feed(&last[3..]).unwrap();
        assert!(!t.in_message());
        assert_eq!(t.messages(), 1);
    }

    #[test]
    fn close_with_and_without_code() {
        for sender in [Sender::Client, Sender::Server] {
            let m = key_for(sender);
            let with = enc(0x88, &close_payload(4321, "bye now"), m, Len::Min);
            let s = whole(sender, &with);
            assert_eq!(s.close, Some(CloseInfo { code: Some(4321) }));
            assert_eq!((s.frames, s.control, s.messages), (1, 1, 0));
            assert_eq!(bytewise(sender, &with), s);

            let bare = enc(0x88, b"", m, Len::Min);
            let s = whole(sender, &bare);
            assert_eq!(s.close, Some(CloseInfo { code: None }));
            assert_eq!(s.control, 1);

            // Code only, non-minimal 64-bit length.
            let only = enc(0x88, &close_payload(1000, ""), m, Len::L64);
            assert_eq!(
                whole(sender, &only).close,
                Some(CloseInfo { code: Some(1000) })
            );
        }
    }

    #[test]
    fn close_is_set_only_once_payload_has_passed() {
        let f = enc(0x88, &close_payload(1001, "going"), Some(KEY), Len::Min);
        let mut t = FrameTracker::new(Sender::Client);
        t.feed(&f[..f.len() - 1]).unwrap();
        assert_eq!(t.close(), None);
        assert_eq!(t.control_frames(), 0);
        t.feed(&f[f.len() - 1..]).unwrap();
        assert_eq!(t.close(), Some(CloseInfo { code: Some(1001) }));
    }

    #[test]
    fn close_code_unmasked_at_every_two_way_split() {
        // A key whose bytes flip every bit guarantees a missed unmask shows.
        let key = [0xFF, 0x0F, 0xAA, 0x55];
        let f = enc(0x88, &close_payload(3007, "r"), Some(key), Len::Min);
        for split in 0..=f.len() {
            let s = feed_chunks(Sender::Client, [&f[..split], &f[split..]]);
            assert_eq!(
                s.close,
                Some(CloseInfo { code: Some(3007) }),
                "split {split}"
            );
            assert!(s.boundary);
        }
        // The raw (masked) bytes would read as another code.
        assert_ne!(u16::from_be_bytes([f[6], f[7]]), 3007);
    }

    #[test]
    fn rsv_bits_are_errors_unless_an_extension_allows_them() {
        for (b0, bits) in [(0xC1u8, 4u8), (0xA2, 2), (0x92, 1), (0xF1, 7)] {
            let f = enc(b0, b"compressed?", None, Len::Min);
            assert_eq!(
                err_of(Sender::Server, &f),
                Some(FrameError::ReservedBits(bits))
            );
            let mut all = FrameTracker::with_rsv(Sender::Server, 0x70);
            assert_eq!(all.feed(&f), Ok(f.len()), "b0 {b0:#x}");
            assert_eq!(all.messages(), 1);
        }
        // permessage-deflate allows RSV1 only.
        let mut t = FrameTracker::with_rsv(Sender::Client, 0x40);
        let ok = [
            enc(0x41, b"a", Some(KEY), Len::Min),
            enc(0x80, b"b", Some(KEY), Len::Min),
            enc(0xC2, b"c", Some(KEY), Len::Min),
        ]
        .concat();
        assert_eq!(t.feed(&ok), Ok(ok.len()));
        assert_eq!((t.messages(), t.frames()), (2, 3));
        let bad = enc(0xE2, b"d", Some(KEY), Len::Min);
        // Only the bits no extension allows are named.
        assert_eq!(t.feed(&bad), Err(FrameError::ReservedBits(2)));
    }

    #[test]
    fn size_limits_are_judged_from_headers_with_fragments_summed() {
        let limited = || FrameTracker::new(Sender::Client).with_limits(Some(100), Some(250));
        // At the limits: fine, control frames and other messages apart.
        let ok = [
            enc(0x02, &[1; 100], Some(KEY), Len::Min),
            enc(0x89, &[2; 125], Some(KEY), Len::Min),
            enc(0x00, &[3; 100], Some(KEY), Len::L16),
            enc(0x80, &[4; 50], Some(KEY), Len::Min),
            enc(0x81, &[5; 100], Some(KEY), Len::Min),
        ]
        .concat();
        let mut t = limited();
        assert_eq!(t.feed(&ok), Ok(ok.len()));
        assert_eq!(t.messages(), 2);
        // One byte over a frame: refused at its header, before its payload.
        let big = enc(0x82, &[0; 101], Some(KEY), Len::Min);
        let mut t = limited();
        assert_eq!(
            t.feed_at(&big[..6]),
            Err((FrameError::FrameTooBig(101), Some(0)))
        );
        // A message whose third fragment passes the sum.
        let frag = [
            enc(0x01, &[0; 100], Some(KEY), Len::Min),
            enc(0x00, &[0; 100], Some(KEY), Len::Min),
        ]
        .concat();
        let third = enc(0x80, &[0; 51], Some(KEY), Len::Min);
        let mut t = limited();
        assert_eq!(t.feed(&frag), Ok(frag.len()));
        assert_eq!(
            t.feed_at(&third[..6]),
            Err((FrameError::MessageTooBig(251), Some(0)))
        );
        // No limits: nothing refused.
        let mut t = FrameTracker::new(Sender::Client).with_limits(None, None);
        assert_eq!(t.feed(&big), Ok(big.len()));
    }

    #[test]
    fn feed_at_names_where_the_offending_frame_began() {
        let good = [
            enc(0x81, b"one", None, Len::Min),
            enc(0x82, &[7; 300], None, Len::L16),
        ]
        .concat();
        for bad in [
            enc(0x83, b"", None, Len::Min),
            enc(0x81, b"masked", Some(KEY), Len::Min),
            enc(0x89, &[0; 126], None, Len::L16),
            enc(0x88, &close_payload(1005, ""), None, Len::Min),
            enc(0x00, b"cont", None, Len::Min),
        ] {
            let stream = [good.clone(), bad.clone()].concat();
            let mut t = FrameTracker::new(Sender::Server);
            let (e, at) = t.feed_at(&stream).unwrap_err();
            assert_eq!(at, Some(good.len()), "{e:?}");
            // Split inside the good part: the start is relative to the chunk.
            let mut t = FrameTracker::new(Sender::Server);
            assert_eq!(t.feed_at(&stream[..10]), Ok(10));
            assert_eq!(t.feed_at(&stream[10..]), Err((e, Some(good.len() - 10))));
            // Split inside the bad frame: it began in the earlier chunk.
            let mut t = FrameTracker::new(Sender::Server);
            let cut = good.len() + 1;
            if let Ok(n) = t.feed_at(&stream[..cut]) {
                assert_eq!(n, cut);
                assert_eq!(t.feed_at(&stream[cut..]), Err((e, None)));
            }
            assert_eq!(t.feed_at(b"more"), Err((e, None)), "poisoned");
        }
    }

    #[test]
    fn error_reserved_opcode() {
        for op in (3u8..=7).chain(0xB..=0xF) {
            let f = enc(0x80 | op, b"x", None, Len::Min);
            assert_eq!(
                err_of(Sender::Server, &f),
                Some(FrameError::ReservedOpcode(op))
            );
        }
    }

    #[test]
    fn error_control_too_long_and_nonminimal_control_ok() {
        for op in [0x88u8, 0x89, 0x8A] {
            let f = header(op, 126, Some(KEY), Len::Min);
            assert_eq!(
                err_of(Sender::Client, &f),
                Some(FrameError::ControlTooLong(126))
            );
            let f = header(op, 70000, Some(KEY), Len::L64);
            assert_eq!(
                err_of(Sender::Client, &f),
                Some(FrameError::ControlTooLong(70000))
            );
        }
        let f = enc(0x89, &[1; 125], None, Len::L16);
        let s = whole(Sender::Server, &f);
        assert_eq!((s.error, s.control), (None, 1));
        let f = enc(0x8A, &[1; 5], None, Len::L64);
        assert_eq!(whole(Sender::Server, &f).error, None);
    }

    #[test]
    fn error_fragmented_control() {
        for op in [0x08u8, 0x09, 0x0A] {
            let f = enc(op, b"", None, Len::Min);
            assert_eq!(
                err_of(Sender::Server, &f),
                Some(FrameError::FragmentedControl)
            );
        }
    }

    #[test]
    fn error_unexpected_continuation() {
        let f = enc(0x80, b"x", Some(KEY), Len::Min);
        assert_eq!(
            err_of(Sender::Client, &f),
            Some(FrameError::UnexpectedContinuation)
        );
        // Also right after a fragmented message has finished.
        let mut s = enc(0x01, b"a", None, Len::Min);
        s.extend(enc(0x80, b"b", None, Len::Min));
        s.extend(enc(0x00, b"c", None, Len::Min));
        assert_eq!(
            err_of(Sender::Server, &s),
            Some(FrameError::UnexpectedContinuation)
        );
    }

    #[test]
    fn error_message_interrupted() {
        for second in [0x81u8, 0x82, 0x01, 0x02] {
            let mut s = enc(0x02, b"a", None, Len::Min);
            s.extend(enc(0x89, b"", None, Len::Min));
            s.extend(enc(second, b"b", None, Len::Min));
            assert_eq!(
                err_of(Sender::Server, &s),
                Some(FrameError::MessageInterrupted)
            );
        }
    }

    #[test]
    fn error_masking_both_directions() {
        let unmasked = enc(0x81, b"hi", None, Len::Min);
        assert_eq!(
            err_of(Sender::Client, &unmasked),
            Some(FrameError::Masking {
                expected_masked: true
            })
        );
        let masked = enc(0x81, b"hi", Some(KEY), Len::Min);
        assert_eq!(
            err_of(Sender::Server, &masked),
            Some(FrameError::Masking {
                expected_masked: false
            })
        );
    }

    #[test]
    fn error_length_overflow_and_max_length_accepted() {
        let f = header(0x82, 1 << 63, None, Len::L64);
        assert_eq!(err_of(Sender::Server, &f), Some(FrameError::LengthOverflow));
        // The largest legal length parses and leaves us mid-payload.
        let f = header(0x82, u64::MAX >> 1, Some(KEY), Len::L64);
        let mut t = FrameTracker::new(Sender::Client);
        t.feed(&f).unwrap();
        t.feed(&[0u8; 4096]).unwrap();
        assert_eq!((t.frames(), t.messages(), t.at_boundary()), (1, 0, false));
    }

    #[test]
    fn error_close_too_short() {
        let f = enc(0x88, &[3], Some(KEY), Len::Min);
        assert_eq!(err_of(Sender::Client, &f), Some(FrameError::CloseTooShort));
        let f = enc(0x88, &[3], None, Len::L16);
        assert_eq!(err_of(Sender::Server, &f), Some(FrameError::CloseTooShort));
    }

    #[test]
    fn error_invalid_close_code_and_valid_codes_pass() {
        for code in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            for sender in [Sender::Client, Sender::Server] {
                let f = enc(0x88, &close_payload(code, "x"), key_for(sender), Len::Min);
                assert_eq!(
                    err_of(sender, &f),
                    Some(FrameError::InvalidCloseCode(code)),
                    "code {code}"
                );
            }
        }
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1010, 1011, 1014, 3000, 4000, 4999,
        ] {
            assert!(close_code_allowed(code));
            let f = enc(0x88, &close_payload(code, ""), Some(KEY), Len::Min);
            let s = bytewise(Sender::Client, &f);
            assert_eq!(s.close, Some(CloseInfo { code: Some(code) }), "code {code}");
        }
    }

    #[test]
    fn frames_after_close_are_late_never_errors_and_split_where_close_ends() {
        let late_ones: [(Vec<u8>, u32); 6] = [
            (enc(0x89, b"", None, Len::Min), 1),
            (enc(0x81, b"late", None, Len::Min), 1),
            (enc(0x88, b"", None, Len::Min), 1),
            // A second Close with a code must not replace the first's.
            (enc(0x88, &close_payload(4000, "again"), None, Len::Min), 1),
            // Fragments, then garbage: counted up to the garbage, no error.
            (
                [
                    enc(0x01, b"a", None, Len::Min),
                    enc(0x80, b"b", None, Len::Min),
                    enc(0x83, b"", None, Len::Min),
                    enc(0x81, b"never counted", None, Len::Min),
                ]
                .concat(),
                2,
            ),
            (enc(0x81, b"masked", Some(KEY), Len::Min), 0),
        ];
        for (next, late) in late_ones {
            let before = enc(0x82, b"data", None, Len::L16);
            let close = enc(0x88, &close_payload(1000, "done"), None, Len::Min);
            let s = [before.clone(), close.clone(), next.clone()].concat();
            // Whole: the split is exactly at the end of the Close.
            let mut t = FrameTracker::new(Sender::Server);
            assert_eq!(t.feed(&s), Ok(before.len() + close.len()), "{next:?}");
            assert_eq!(t.close(), Some(CloseInfo { code: Some(1000) }));
            assert_eq!((t.frames(), t.messages(), t.control_frames()), (2, 1, 1));
            assert_eq!((t.late_frames(), t.error()), (late, None), "{next:?}");
            assert_eq!(t.feed(&next), Ok(0), "still no error, nothing passes");
            // Byte by byte: every byte up to the Close's last passes, none after.
            let mut b = FrameTracker::new(Sender::Server);
            let passed: usize = s.iter().map(|x| b.feed(&[*x]).unwrap()).sum();
            assert_eq!(passed, before.len() + close.len());
            assert_eq!(b.close(), t.close());
            assert_eq!((b.frames(), b.messages(), b.late_frames()), (2, 1, late));
        }
    }

    #[test]
    fn poisoned_tracker_repeats_error_and_freezes() {
        let mut t = FrameTracker::new(Sender::Server);
        t.feed(&enc(0x81, b"ok", None, Len::Min)).unwrap();
        let bad = enc(0x83, b"", None, Len::Min);
        assert_eq!(t.feed(&bad), Err(FrameError::ReservedOpcode(3)));
        let before = snap(&t);
        assert!(!before.boundary);
        assert_eq!(before.messages, 1);
        assert_eq!(t.feed(&[]), Err(FrameError::ReservedOpcode(3)));
        let good = enc(0x82, b"fine", None, Len::Min);
        assert_eq!(t.feed(&good), Err(FrameError::ReservedOpcode(3)));
        assert_eq!(t.error(), Some(FrameError::ReservedOpcode(3)));
        assert_eq!(snap(&t), before);
    }

    /// A random valid stream, plus the offsets at which each counter must tick.
    struct Generated {
        bytes: Vec<u8>,
        header_ends: Vec<usize>,
        frame_ends: Vec<usize>,
        message_ends: Vec<usize>,
        control_ends: Vec<usize>,
        close: Option<(usize, CloseInfo)>,
    }

    fn random_len(rng: &mut StdRng, control: bool) -> usize {
        if control {
            return rng.random_range(0..=125);
        }
        match rng.random_range(0..10) {
            0 => 0,
            1 => rng.random_range(126..=1000),
            2 => rng.random_range(65530..=66000),
            _ => rng.random_range(1..126),
        }
    }

    fn random_form(rng: &mut StdRng, n: usize) -> Len {
        match rng.random_range(0..4) {
            0 if n <= 0xFFFF => Len::L16,
            1 => Len::L64,
            _ => Len::Min,
        }
    }

    fn generate(rng: &mut StdRng, sender: Sender) -> Generated {
        let mut g = Generated {
            bytes: Vec::new(),
            header_ends: Vec::new(),
            frame_ends: Vec::new(),
            message_ends: Vec::new(),
            control_ends: Vec::new(),
            close: None,
        };
        let push = |g: &mut Generated, rng: &mut StdRng, b0: u8, n: usize| {
            let mask = (sender == Sender::Client).then(|| rng.random::<[u8; 4]>());
            let mut payload = vec![0u8; n];
            rng.fill(&mut payload[..]);
            if b0 & 0x0F == OP_CLOSE && n >= 2 {
                let codes = [1000u16, 1001, 1011, 3000, 4999];
                let code = codes[rng.random_range(0..codes.len())];
                payload[..2].copy_from_slice(&code.to_be_bytes());
            }
            let f = enc(b0, &payload, mask, random_form(rng, n));
            g.header_ends.push(g.bytes.len() + f.len() - n);
            g.bytes.extend(f);
            g.frame_ends.push(g.bytes.len());
            payload
        };
        let control = |rng: &mut StdRng| if rng.random() { 0x89 } else { 0x8A };
        for _ in 0..rng.random_range(0..12) {
            // Reserved bits need an extension: see the RSV tests.
            let rsv = 0u8;
            let op = if rng.random() { OP_TEXT } else { OP_BINARY };
            match rng.random_range(0..3) {
                0 => {
                    let (b0, n) = (control(rng), random_len(rng, true));
                    push(&mut g, rng, b0, n);
                    g.control_ends.push(g.bytes.len());
                }
                1 => {
                    let n = random_len(rng, false);
                    push(&mut g, rng, 0x80 | rsv | op, n);
                    g.message_ends.push(g.bytes.len());
                }
                _ => {
                    let n = random_len(rng, false);
                    push(&mut g, rng, rsv | op, n);
                    for _ in 0..rng.random_range(0..4) {
                        if rng.random_bool(0.5) {
                            let (b0, n) = (control(rng), random_len(rng, true));
                            push(&mut g, rng, b0, n);
                            g.control_ends.push(g.bytes.len());
                        }
                        let n = random_len(rng, false);
                        push(&mut g, rng, 0x00, n);
                    }
                    let n = random_len(rng, false);
                    push(&mut g, rng, 0x80, n);
                    g.message_ends.push(g.bytes.len());
                }
            }
        }
        if rng.random() {
            let n = if rng.random() {
                0
            } else {
                rng.random_range(2..=125)
            };
            let payload = push(&mut g, rng, 0x88, n);
            let code = (n >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            g.control_ends.push(g.bytes.len());
            g.close = Some((g.bytes.len(), CloseInfo { code }));
        }
        g
    }

    fn count_upto(ends: &[usize], off: usize) -> u64 {
        ends.partition_point(|&e| e <= off) as u64
    }

    fn check_at(t: &FrameTracker, g: &Generated, off: usize) {
        assert_eq!(t.error(), None, "offset {off}");
        assert_eq!(t.frames(), count_upto(&g.header_ends, off), "offset {off}");
        assert_eq!(
            t.messages(),
            count_upto(&g.message_ends, off),
            "offset {off}"
        );
        assert_eq!(
            t.control_frames(),
            count_upto(&g.control_ends, off),
            "offset {off}"
        );
        let boundary = off == 0 || g.frame_ends.binary_search(&off).is_ok();
        assert_eq!(t.at_boundary(), boundary, "offset {off}");
        let close = g.close.filter(|(end, _)| *end <= off).map(|(_, c)| c);
        assert_eq!(t.close(), close, "offset {off}");
    }

    #[test]
    fn random_streams_in_random_splits_match_whole_and_bytewise() {
        let mut rng = StdRng::seed_from_u64(0x5753_6761_7465);
        for round in 0..100 {
            let sender = if round % 2 == 0 {
                Sender::Client
            } else {
                Sender::Server
            };
            let g = generate(&mut rng, sender);
            let mut t = FrameTracker::new(sender);
            t.feed(&g.bytes).unwrap();
            check_at(&t, &g, g.bytes.len());
            let expected = snap(&t);
            assert_eq!(bytewise(sender, &g.bytes), expected, "round {round}");
            for _ in 0..4 {
                let max_chunk = [1usize, 3, 14, 200, 70_000][rng.random_range(0..5)];
                let mut t = FrameTracker::new(sender);
                let mut off = 0;
                while off < g.bytes.len() {
                    let n = rng.random_range(1..=max_chunk).min(g.bytes.len() - off);
                    t.feed(&g.bytes[off..off + n]).unwrap();
                    off += n;
                    check_at(&t, &g, off);
                }
                assert_eq!(snap(&t), expected, "round {round}");
            }
        }
    }

    #[test]
    fn random_bytes_never_panic_and_split_invariant() {
        // Garbage streams must produce the same verdict however they arrive.
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..300 {
            let mut bytes = vec![0u8; rng.random_range(0..64)];
            rng.fill(&mut bytes[..]);
            for sender in [Sender::Client, Sender::Server] {
                let expected = whole(sender, &bytes);
                assert_eq!(bytewise(sender, &bytes), expected, "{bytes:?}");
                let split = rng.random_range(0..=bytes.len());
                let s = feed_chunks(sender, [&bytes[..split], &bytes[split..]]);
                assert_eq!(s, expected, "{bytes:?} split {split}");
            }
        }
    }

    #[test]
    fn until_boundary_counts_down_to_the_frame_end() {
        let mut t = FrameTracker::new(Sender::Server);
        assert_eq!(t.until_boundary(), 0);
        // 16-bit length header: 0x82 0x7e 0x01 0x00 => 256-byte binary payload.
        t.feed(&[0x82]).unwrap();
        assert_eq!(t.until_boundary(), 1);
        t.feed(&[0x7e, 0x01]).unwrap();
        assert_eq!(t.until_boundary(), 1);
        t.feed(&[0x00]).unwrap();
        assert_eq!(t.until_boundary(), 256);
        t.feed(&[0u8; 100]).unwrap();
        assert_eq!(t.until_boundary(), 156);
        t.feed(&[0u8; 156]).unwrap();
        assert_eq!(t.until_boundary(), 0);
        assert!(t.at_boundary());
    }
}
