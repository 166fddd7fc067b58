//! One direction of a tunnel: the copy state machine that moves bytes
//! from a reader to a writer, follows their frame headers, counts them, and
//! writes wsgate's own Close frame exactly at a frame boundary (and, for a
//! route that pings its clients, wsgate's Ping, while the client's Pong to
//! it is dropped: see `watch.rs`).
//!
//! Owns: [`Half`] and its phases. Per-direction phases, and the only legal
//! transitions: `Idle -> Reading` (reader readable), `Reading -> Writing`
//! (bytes read), `Reading -> Idle` (reader pending, writer flushed; buffer
//! dropped), `Writing -> Reading` (all written), `Reading -> ShuttingDown`
//! (EOF), `ShuttingDown -> Done` (writer shut down).
//!
//! An idle direction holds no copy buffer: it takes one when its reader is
//! readable and drops it once the reader returns `Pending` and what it read
//! has been written and flushed. While its writer blocks it reads nothing
//! more (back-pressure: one buffer at most, whatever the sender pushes);
//! blocked for the route's `write_stall_timeout` it reports a stall
//! (stall.rs), and once abandoned it writes nothing more and only reads and
//! drops what its sender still sends. The client's direction meters the
//! messages it passes against the route's rate (rate.rs).
//!
//! Must not: decide when the tunnel ends (tunnel.rs does), log per frame,
//! unmask or buffer whole payloads.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::ReadBuf;

use crate::observe::registry::{now_ms, ConnStats, DirectionCounters};
use crate::tunnel::buffers::Buffer;
use crate::tunnel::frames::{encode_close, FrameError, FrameTracker, Sender};
use crate::tunnel::rate::{metered, Bucket};
use crate::tunnel::stall::StallWatch;
use crate::tunnel::watch::HalfWatch;
use crate::tunnel::{mask_key, FramePolicy, Splice};

/// Close code to the side that did not break the protocol: its peer is going away.
const CLOSE_GOING_AWAY: u16 = 1001;

/// Where one direction is (see the transitions above).
enum Phase {
    Idle,
    Reading(Buffer),
    Writing { buf: Buffer, pos: usize, end: usize },
    ShuttingDown,
    Done,
}

/// Why one direction stopped.
pub(crate) enum HalfError {
    /// Reading from the sender failed.
    Read(io::Error),
    /// Writing to the receiver failed.
    Write(io::Error),
    /// The sender broke RFC 6455.
    Protocol(FrameError),
}

/// One direction of the tunnel.
pub(crate) struct Half {
    phase: Phase,
    pub(crate) tracker: FrameTracker,
    need_flush: bool,
    /// A Close frame of wsgate's own, waiting for the next frame boundary.
    inject: Option<Vec<u8>>,
    /// The Close frame is being written now.
    injecting: bool,
    /// After the injected Close: the sender's bytes are tracked, not forwarded.
    discard: bool,
    /// The sender has finished (EOF), whether or not its receiver is shut down yet.
    pub(crate) eof: bool,
    /// Whether a protocol violation ends the tunnel with Close frames
    /// (`[websocket] strict`); otherwise the bytes pass untouched and the
    /// tracker stops following them.
    strict: bool,
    /// The sender broke RFC 6455 (strict only): the frames before the bad
    /// one passed, the receiver gets Close 1001 where it can, and whatever
    /// the sender sends from then on is dropped.
    violation: Option<FrameError>,
    /// After wsgate's Close is written, shut the receiver's writer down
    /// (the receiver broke the protocol: nothing more goes to it).
    shut_after_inject: bool,
    /// What the route's keepalive policies need from this direction
    /// (keepalive.rs); `None` when they watch nothing, so it costs a pointer.
    watch: Option<Box<HalfWatch>>,
    /// The route's message rate, on the client's direction only; boxed so
    /// that tunnels of routes without one carry a pointer, not a bucket.
    rate: Option<Box<Bucket>>,
    /// The route's `write_stall_timeout`; `None` only in unit tests.
    stall: Option<StallWatch>,
    /// The writer made no progress for the whole `write_stall_timeout`.
    stalled: bool,
    /// The receiver stopped reading: nothing more is written to it (not
    /// even a shutdown, which TLS would have to write); what the sender
    /// still sends is read and dropped.
    abandoned: bool,
}

impl Half {
    pub(crate) fn new(sender: Sender) -> Self {
        Self {
            phase: Phase::Idle,
            tracker: FrameTracker::new(sender),
            need_flush: false,
            inject: None,
            injecting: false,
            discard: false,
            eof: false,
            strict: true,
            violation: None,
            shut_after_inject: false,
            watch: None,
            rate: None,
            stall: None,
            stalled: false,
            abandoned: false,
        }
    }

    /// A direction whose sender may set the reserved bits `rsv` (as
    /// negotiated extensions allow), and that reacts to violations as
    /// `strict` says.
    pub(crate) fn with_policy(sender: Sender, policy: &FramePolicy) -> Self {
        Self {
            tracker: FrameTracker::with_rsv(sender, policy.rsv)
                .with_limits(policy.max_frame, policy.max_message)
                .lenient(!policy.strict),
            strict: policy.strict,
            watch: policy
                .keepalive
                .watches_activity()
                .then(|| Box::new(HalfWatch::new())),
            rate: policy
                .rate
                .filter(|_| sender == Sender::Client)
                .map(|r| Box::new(Bucket::new(r, tokio::time::Instant::now()))),
            stall: policy.write_stall.map(StallWatch::new),
            ..Self::new(sender)
        }
    }

    /// The write-stall timeout, once the writer has made no progress for
    /// that long while it had bytes to write.
    pub(crate) fn stalled(&self) -> Option<std::time::Duration> {
        self.stall
            .as_ref()
            .filter(|_| self.stalled && !self.abandoned)
            .map(StallWatch::after)
    }

    /// The receiver stopped reading: give up writing to it (the buffer
    /// held for it is dropped) and only read and drop what the sender
    /// still sends, until its EOF.
    pub(crate) fn abandon_writer(&mut self) {
        self.abandoned = true;
        self.inject = None;
        self.injecting = false;
        self.need_flush = false;
        if let Some(w) = &mut self.stall {
            w.idle();
        }
        self.phase = match self.phase {
            Phase::Done | Phase::ShuttingDown => Phase::Done,
            _ => Phase::Idle,
        };
    }

    /// The writer would block: once that has lasted the whole
    /// `write_stall_timeout`, the direction is stalled (the run loop acts on it).
    fn write_blocked(&mut self, cx: &mut Context<'_>) {
        if let Some(w) = &mut self.stall {
            self.stalled |= w.blocked(cx);
        }
    }

    /// The writer took bytes: the stall clock starts again.
    fn write_progress(&mut self) {
        if let Some(w) = &mut self.stall {
            w.progress();
        }
    }

    /// The receiver has sent `n` pings so far: as many of the sender's
    /// pongs answer them, free of the route's rate (rate.rs).
    pub(crate) fn peer_pings(&mut self, n: u32) {
        if let Some(b) = &mut self.rate {
            b.peer_pings(n);
        }
    }

    /// The violation this direction's sender committed, if any.
    pub(crate) fn violation(&self) -> Option<FrameError> {
        self.violation
    }

    /// Queues Close `frame` for the receiver, who broke the protocol, and
    /// shuts its writer once the frame is out.
    pub(crate) fn close_offender(&mut self, frame: Vec<u8>) {
        self.shut_after_inject = true;
        if self.injecting {
            // wsgate's Close is half-way out: the shutdown follows it.
            return;
        }
        self.begin_close(frame);
        if self.inject.is_none() && !matches!(self.phase, Phase::Done) {
            // Its peer's Close already reached it: only the shutdown is left.
            self.phase = Phase::ShuttingDown;
        }
    }

    /// Queues `frame` for the next boundary, unless this direction is over,
    /// its sender already sent a Close or wsgate already wrote one (a
    /// second would break the protocol), or its receiver was given up on
    /// (it may hold half a frame).
    pub(crate) fn begin_close(&mut self, frame: Vec<u8>) {
        let over = matches!(self.phase, Phase::ShuttingDown | Phase::Done)
            || self.abandoned
            || self.injecting
            || self.discard;
        if !over && self.tracker.close().is_none() {
            self.inject = Some(frame);
        }
    }

    /// During a close: this direction needs nothing more from its sender,
    /// and everything it read has been written and flushed. The tracker
    /// counts bytes when they are read, so a Close seen there may still sit
    /// in the buffer: hence the phase and flush checks.
    pub(crate) fn close_finished(&self) -> bool {
        if self.is_done() {
            return true;
        }
        let quiet = matches!(self.phase, Phase::Idle | Phase::Reading(_)) && !self.need_flush;
        quiet && self.inject.is_none() && !self.injecting && self.tracker.close().is_some()
    }

    /// The injected frame, when its moment has come: at a boundary, with
    /// everything read so far already written. Dropped instead if the
    /// sender's own Close completed meanwhile (it may have been half-way
    /// through when the close was requested): a second Close would break
    /// the protocol.
    fn take_injection(&mut self) -> Option<Vec<u8>> {
        if self.violation.is_some() {
            // The bytes before the bad frame are written by now.
            return self.inject.take();
        }
        if !self.tracker.at_boundary() {
            return None;
        }
        if self.tracker.close().is_some() {
            self.inject = None;
            return None;
        }
        self.inject.take()
    }

    /// Whether wsgate's own Close has been written to this direction's receiver.
    pub(crate) fn injected(&self) -> bool {
        self.discard
    }

    /// wsgate's own Close has been written and flushed to the receiver.
    pub(crate) fn injection_flushed(&self) -> bool {
        self.discard && !self.need_flush && !matches!(self.phase, Phase::Writing { .. })
    }

    /// Bytes of the sender's wait for the receiver to take them: until it
    /// does, nothing more is read from the sender (back-pressure).
    pub(crate) fn backlogged(&self) -> bool {
        matches!(self.phase, Phase::Writing { .. }) && !self.injecting
    }

    /// The keepalive record of this direction, when the route keeps one.
    pub(crate) fn watch_mut(&mut self) -> Option<&mut HalfWatch> {
        self.watch.as_deref_mut()
    }

    /// wsgate's ping, when one waits and this is a frame boundary with
    /// everything read so far written; never once a Close has passed either
    /// way of this direction, nor after a violation, nor to a receiver
    /// given up on (the ping may have been queued before).
    fn take_ping(&mut self) -> Option<Vec<u8>> {
        let closing =
            self.inject.is_some() || self.discard || self.violation.is_some() || self.abandoned;
        if closing || !self.tracker.at_boundary() || self.tracker.close().is_some() {
            return None;
        }
        self.watch.as_mut()?.take_ping()
    }

    /// Queues bytes read past the handshake as the first to deliver.
    pub(crate) fn start_with(
        &mut self,
        leftover: Bytes,
        counters: &DirectionCounters,
        stats: &ConnStats,
    ) -> Result<(), HalfError> {
        if leftover.is_empty() {
            return Ok(());
        }
        let end = self.account(&leftover, counters, stats)?;
        if end == 0 {
            return Ok(());
        }
        self.phase = Phase::Writing {
            buf: leftover.to_vec().into(),
            pos: 0,
            end,
        };
        Ok(())
    }

    /// Whether this direction holds a buffer now; an idle one must not.
    #[cfg(test)]
    pub(crate) fn holds_buffer(&self) -> bool {
        matches!(self.phase, Phase::Reading(_) | Phase::Writing { .. })
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Feeds bytes read from the sender to the frame tracker and counters,
    /// and says how many of them, from the start, are to be written: the
    /// rest came after the sender's own Close and are discarded, only
    /// counted. Bytes that break framing are never written, so they are not
    /// counted: the counters say what the receiver got.
    fn account(
        &mut self,
        data: &[u8],
        counters: &DirectionCounters,
        stats: &ConnStats,
    ) -> Result<usize, HalfError> {
        let fed = metered(self.rate.as_deref_mut(), &mut self.tracker, |t| {
            t.feed_at(data)
        });
        let pass = match fed {
            Ok(pass) => pass,
            Err((e, _)) if !self.strict && !e.is_route_limit() => data.len(),
            Err((e, start)) => {
                self.violation = Some(e);
                // Begun in bytes already passed, the bad frame leaves no
                // boundary: not even a Close queued before may go now.
                self.inject = None;
                if start.is_some() {
                    let mask =
                        (self.tracker.sender() == Sender::Client).then(|| mask_key(stats.id));
                    self.inject = Some(encode_close(
                        CLOSE_GOING_AWAY,
                        "peer broke the protocol",
                        mask,
                    ));
                }
                start.unwrap_or(0)
            }
        };
        counters.bytes.fetch_add(pass as u64, Ordering::Relaxed);
        counters
            .discarded_frames
            .store(u64::from(self.tracker.late_frames()), Ordering::Relaxed);
        counters
            .frames
            .store(self.tracker.frames(), Ordering::Relaxed);
        counters
            .messages
            .store(self.tracker.messages(), Ordering::Relaxed);
        stats.last_activity_ms.store(now_ms(), Ordering::Relaxed);
        Ok(pass)
    }

    /// Drops the pong that answers wsgate's ping from `buf[..n]`; the
    /// client was heard even when nothing is left to pass.
    fn swallow_pong(&mut self, buf: &mut [u8], n: usize) -> usize {
        let Some(w) = self.watch.as_mut() else {
            return n;
        };
        let left = w.swallow_pong(&self.tracker, buf, n);
        if left < n {
            w.heard(false);
        }
        left
    }

    fn start_injection(&mut self, frame: Vec<u8>) {
        self.injecting = true;
        let end = frame.len();
        self.phase = Phase::Writing {
            buf: frame.into(),
            pos: 0,
            end,
        };
    }

    pub(crate) fn poll<R: Splice, W: Splice>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        counters: &DirectionCounters,
        stats: &ConnStats,
    ) -> Poll<Result<(), HalfError>> {
        loop {
            match std::mem::replace(&mut self.phase, Phase::Idle) {
                Phase::Idle => {
                    if let Some(frame) = self.take_injection() {
                        self.start_injection(frame);
                        continue;
                    }
                    if let Some(ping) = self.take_ping() {
                        self.phase = write_whole(ping);
                        continue;
                    }
                    if let Poll::Ready(r) = reader.poll_read_ready(cx) {
                        if r.is_err() && self.abandoned {
                            self.phase = Phase::Done;
                            return Poll::Ready(Ok(()));
                        }
                        r.map_err(HalfError::Read)?;
                        self.phase = Phase::Reading(Buffer::take());
                        continue;
                    }
                    return Poll::Pending;
                }
                Phase::Reading(mut buf) => {
                    if let Some(frame) = self.take_injection() {
                        drop(buf);
                        self.start_injection(frame);
                        continue;
                    }
                    if let Some(ping) = self.take_ping() {
                        drop(buf);
                        self.phase = write_whole(ping);
                        continue;
                    }
                    // While a Close waits, never read past the end of the current frame.
                    let limit = match self.inject {
                        Some(_) => usize::try_from(self.tracker.until_boundary())
                            .map_or(buf.len(), |u| u.min(buf.len())),
                        None => buf.len(),
                    };
                    // Bytes held back by the pong check go in front of this read.
                    let held = self.watch.as_ref().map_or(0, |w| w.held());
                    let mut rb = ReadBuf::new(&mut buf[held..limit.max(held + 1)]);
                    match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                        Poll::Pending => {
                            if self.need_flush {
                                if let Poll::Ready(r) = Pin::new(&mut *writer).poll_flush(cx) {
                                    r.map_err(HalfError::Write)?;
                                    self.need_flush = false;
                                    self.write_progress();
                                } else {
                                    // Keep the buffer until the flush completes.
                                    self.phase = Phase::Reading(buf);
                                    self.write_blocked(cx);
                                    return Poll::Pending;
                                }
                            }
                            // Drained: give the buffer back while idle.
                            drop(buf);
                            if let Some(w) = &mut self.stall {
                                w.idle();
                            }
                            return Poll::Pending;
                        }
                        // rustls reports a TLS peer that closed without close_notify as
                        // UnexpectedEof. Browsers often do; WebSocket frames carry their own
                        // lengths, so nothing can be silently truncated: treat it as EOF.
                        Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            self.eof = true;
                            self.phase = Phase::ShuttingDown;
                        }
                        // Its receiver is gone already: a sender's reset is only its end.
                        Poll::Ready(Err(_)) if self.abandoned => {
                            self.phase = Phase::Done;
                            return Poll::Ready(Ok(()));
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(HalfError::Read(e))),
                        Poll::Ready(Ok(())) => {
                            let n = rb.filled().len();
                            if n == 0 {
                                self.eof = true;
                                self.phase = Phase::ShuttingDown;
                                continue;
                            }
                            if let Some(w) = self.watch.as_mut() {
                                w.restore_held(&mut buf);
                            }
                            let n = held + n;
                            if self.abandoned {
                                // Its receiver stopped reading: dropped, only followed.
                                let _ = self.tracker.feed(&buf[..n]);
                                self.phase = Phase::Reading(buf);
                                continue;
                            }
                            if self.violation.is_some() {
                                // The sender broke the protocol: nothing of its passes now.
                                self.phase = Phase::Reading(buf);
                                continue;
                            }
                            if self.discard {
                                // The receiver already has wsgate's Close: only the sender's Close matters now.
                                self.tracker.feed(&buf[..n]).map_err(HalfError::Protocol)?;
                                counters.discarded_frames.store(
                                    u64::from(self.tracker.late_frames()),
                                    Ordering::Relaxed,
                                );
                                self.phase = Phase::Reading(buf);
                                continue;
                            }
                            let n = self.swallow_pong(&mut buf, n);
                            let end = self.account(&buf[..n], counters, stats)?;
                            if let Some(w) = self.watch.as_mut() {
                                w.heard(end > 0);
                            }
                            if self.violation.is_some() && self.inject.is_none() && end == 0 {
                                // The bad frame began in bytes already passed: no
                                // boundary is left for a Close, only the shutdown.
                                self.phase = Phase::ShuttingDown;
                                continue;
                            }
                            self.phase = if end == 0 {
                                // All of it came after the sender's Close.
                                Phase::Reading(buf)
                            } else {
                                Phase::Writing { buf, pos: 0, end }
                            };
                        }
                    }
                }
                Phase::Writing { buf, pos, end } => {
                    match Pin::new(&mut *writer).poll_write(cx, &buf[pos..end]) {
                        Poll::Pending => {
                            self.phase = Phase::Writing { buf, pos, end };
                            self.write_blocked(cx);
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(HalfError::Write(e))),
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(HalfError::Write(
                                io::ErrorKind::WriteZero.into(),
                            )))
                        }
                        Poll::Ready(Ok(m)) => {
                            self.write_progress();
                            let pos = pos + m;
                            if pos < end {
                                self.phase = Phase::Writing { buf, pos, end };
                            } else {
                                self.need_flush = true;
                                if self.injecting {
                                    self.injecting = false;
                                    self.discard = true;
                                    if self.shut_after_inject {
                                        self.phase = Phase::ShuttingDown;
                                        continue;
                                    }
                                }
                                // A frame of wsgate's own is any size; read into a copy buffer.
                                let buf = if buf.is_copy_buffer() {
                                    buf
                                } else {
                                    Buffer::take()
                                };
                                self.phase = Phase::Reading(buf);
                            }
                        }
                    }
                }
                Phase::ShuttingDown if self.abandoned => {
                    self.phase = Phase::Done;
                    return Poll::Ready(Ok(()));
                }
                Phase::ShuttingDown => {
                    if let Poll::Ready(r) = Pin::new(&mut *writer).poll_shutdown(cx) {
                        // The peer may already be gone; the half-close is then moot.
                        if let Err(e) = r {
                            if e.kind() != io::ErrorKind::NotConnected {
                                return Poll::Ready(Err(HalfError::Write(e)));
                            }
                        }
                        self.phase = Phase::Done;
                        return Poll::Ready(Ok(()));
                    }
                    self.phase = Phase::ShuttingDown;
                    return Poll::Pending;
                }
                Phase::Done => {
                    self.phase = Phase::Done;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// Writing a frame of wsgate's own that is not a Close: the direction
/// goes on as before once it is out.
fn write_whole(frame: Vec<u8>) -> Phase {
    let end = frame.len();
    Phase::Writing {
        buf: frame.into(),
        pos: 0,
        end,
    }
}
