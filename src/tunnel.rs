//! The tunnel: splices client and backend byte streams after a verified 101.
//!
//! Owns: copying both ways with a half-close passed on, following WebSocket
//! frame headers in each direction (see `frames.rs`), counting bytes,
//! frames and messages into the connection's live counters as they move,
//! the half-close deadline, and reacting to shutdown. Returns a
//! [`TunnelOutcome`] saying who ended it and how.
//!
//! An idle tunnel holds no copy buffer: a direction takes one when its
//! reader is readable and drops it once the reader returns `Pending` and
//! what it read has been written and flushed (the way tokio's
//! `copy_bidirectional` flushes, minus its two permanent buffers).
//!
//! Per-direction phases, and the only legal transitions:
//! `Idle -> Reading` (reader readable), `Reading -> Writing` (bytes read),
//! `Reading -> Idle` (reader pending, writer flushed; buffer dropped),
//! `Writing -> Reading` (all written), `Reading -> ShuttingDown` (EOF),
//! `ShuttingDown -> Done` (writer shut down). Any I/O or protocol error ends
//! the whole tunnel.
//!
//! Must not: log per frame, unmask or buffer whole payloads, or allocate
//! while a direction is idle.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::frames::{FrameError, FrameTracker, Sender};
use crate::stats::{now_ms, ConnStats, DirectionCounters, Side, TunnelEnd};
use crate::tls::ClientStream;

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

impl Splice for ClientStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // For TLS, a direction only goes idle after a read returned Pending,
        // which tokio-rustls does only once its plaintext buffer is empty and
        // the socket would block; so socket readiness is the right signal.
        self.tcp().poll_read_ready(cx)
    }
}

/// Why a tunnel ended.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// Reading from a side failed (reset, TLS error).
    #[error("read from {side} failed: {source}")]
    Read {
        /// Who we were reading from.
        side: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing to a side failed.
    #[error("write to {side} failed: {source}")]
    Write {
        /// Who we were writing to.
        side: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A side broke RFC 6455 framing.
    #[error("{side} broke WebSocket framing: {source}")]
    Protocol {
        /// The offender.
        side: &'static str,
        /// The rule broken.
        #[source]
        source: FrameError,
    },
    /// One side finished and the other did not within `timeouts.half_close`.
    #[error("other side still open {0:?} after one side closed")]
    HalfCloseTimeout(Duration),
    /// wsgate is shutting down.
    #[error("proxy shutting down")]
    Shutdown,
}

/// How a tunnel ended.
#[derive(Debug)]
pub struct TunnelOutcome {
    /// The side that stopped first.
    pub closed_by: Side,
    /// The first Close frame to pass, with its sender.
    pub first_close: Option<(Side, Option<u16>)>,
    /// `None` for a clean end (both sides closed).
    pub error: Option<TunnelError>,
}

impl TunnelOutcome {
    /// The record's view of this outcome.
    pub fn to_end(&self) -> TunnelEnd {
        TunnelEnd {
            closed_by: self.closed_by,
            close_code: self.first_close.and_then(|(_, c)| c),
            close_frame_from: self.first_close.map(|(s, _)| s),
            reason: self
                .error
                .as_ref()
                .map_or_else(|| "closed".to_string(), ToString::to_string),
        }
    }
}

enum Phase {
    Idle,
    Reading(Vec<u8>),
    Writing {
        buf: Vec<u8>,
        pos: usize,
        end: usize,
    },
    ShuttingDown,
    Done,
}

enum HalfError {
    Read(io::Error),
    Write(io::Error),
    Protocol(FrameError),
}

/// One direction of the tunnel.
struct Half {
    phase: Phase,
    tracker: FrameTracker,
    need_flush: bool,
}

impl Half {
    fn new(sender: Sender) -> Self {
        Self {
            phase: Phase::Idle,
            tracker: FrameTracker::new(sender),
            need_flush: false,
        }
    }

    /// Queues bytes read past the handshake as the first to deliver.
    fn start_with(
        &mut self,
        leftover: Bytes,
        counters: &DirectionCounters,
        stats: &ConnStats,
    ) -> Result<(), HalfError> {
        if leftover.is_empty() {
            return Ok(());
        }
        self.account(&leftover, counters, stats)?;
        let end = leftover.len();
        self.phase = Phase::Writing {
            buf: leftover.to_vec(),
            pos: 0,
            end,
        };
        Ok(())
    }

    fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Feeds bytes that are about to be written to the frame tracker and counters.
    fn account(
        &mut self,
        data: &[u8],
        counters: &DirectionCounters,
        stats: &ConnStats,
    ) -> Result<(), HalfError> {
        let result = self.tracker.feed(data).map_err(HalfError::Protocol);
        counters
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        counters
            .frames
            .store(self.tracker.frames(), Ordering::Relaxed);
        counters
            .messages
            .store(self.tracker.messages(), Ordering::Relaxed);
        stats.last_activity_ms.store(now_ms(), Ordering::Relaxed);
        result
    }

    fn poll<R: Splice, W: Splice>(
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
                    if let Poll::Ready(r) = reader.poll_read_ready(cx) {
                        r.map_err(HalfError::Read)?;
                        self.phase = Phase::Reading(vec![0; COPY_BUFFER_SIZE]);
                        continue;
                    }
                    return Poll::Pending;
                }
                Phase::Reading(mut buf) => {
                    let mut rb = ReadBuf::new(&mut buf);
                    match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                        Poll::Pending => {
                            if self.need_flush {
                                if let Poll::Ready(r) = Pin::new(&mut *writer).poll_flush(cx) {
                                    r.map_err(HalfError::Write)?;
                                    self.need_flush = false;
                                } else {
                                    // Keep the buffer until the flush completes.
                                    self.phase = Phase::Reading(buf);
                                    return Poll::Pending;
                                }
                            }
                            // Drained: give the buffer back while idle.
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(HalfError::Read(e))),
                        Poll::Ready(Ok(())) => {
                            let n = rb.filled().len();
                            if n == 0 {
                                self.phase = Phase::ShuttingDown;
                                continue;
                            }
                            self.account(&buf[..n], counters, stats)?;
                            self.phase = Phase::Writing {
                                buf,
                                pos: 0,
                                end: n,
                            };
                        }
                    }
                }
                Phase::Writing { buf, pos, end } => {
                    match Pin::new(&mut *writer).poll_write(cx, &buf[pos..end]) {
                        Poll::Pending => {
                            self.phase = Phase::Writing { buf, pos, end };
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(HalfError::Write(e))),
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(HalfError::Write(
                                io::ErrorKind::WriteZero.into(),
                            )))
                        }
                        Poll::Ready(Ok(m)) => {
                            let pos = pos + m;
                            if pos < end {
                                self.phase = Phase::Writing { buf, pos, end };
                            } else {
                                self.need_flush = true;
                                // Leftover buffers may be any size; keep only standard ones.
                                let buf = if buf.len() == COPY_BUFFER_SIZE {
                                    buf
                                } else {
                                    vec![0; COPY_BUFFER_SIZE]
                                };
                                self.phase = Phase::Reading(buf);
                            }
                        }
                    }
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

/// Splices `client` and `backend` until both have closed, an error, the
/// half-close deadline, or `shutdown`. `*_leftover` are bytes each side sent
/// that hyper read past the handshake; they are delivered first.
pub async fn run(
    mut client: ClientStream,
    client_leftover: Bytes,
    mut backend: TcpStream,
    backend_leftover: Bytes,
    stats: &ConnStats,
    half_close: Duration,
    shutdown: &CancellationToken,
) -> TunnelOutcome {
    let mut up = Half::new(Sender::Client);
    let mut down = Half::new(Sender::Server);
    if let Err(e) = up.start_with(client_leftover, &stats.to_backend, stats) {
        return half_error(e, Side::Client, None);
    }
    if let Err(e) = down.start_with(backend_leftover, &stats.to_client, stats) {
        return half_error(e, Side::Backend, None);
    }
    let mut first_done: Option<Side> = None;
    let mut first_close: Option<(Side, Option<u16>)> = None;
    // Allocated only once a side has closed, so idle tunnels carry no timer.
    let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);

    let end = |closed_by: Side, first_close, error| TunnelOutcome {
        closed_by,
        first_close,
        error: Some(error),
    };

    poll_fn(|cx| {
        if cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(end(Side::Proxy, first_close, TunnelError::Shutdown));
        }
        if !up.is_done() {
            let r = up.poll(cx, &mut client, &mut backend, &stats.to_backend, stats);
            note_close(&up, Side::Client, &mut first_close);
            match r {
                Poll::Ready(Ok(())) => {
                    first_done.get_or_insert(Side::Client);
                }
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(half_error(e, Side::Client, first_close))
                }
                Poll::Pending => {}
            }
        }
        if !down.is_done() {
            let r = down.poll(cx, &mut backend, &mut client, &stats.to_client, stats);
            note_close(&down, Side::Backend, &mut first_close);
            match r {
                Poll::Ready(Ok(())) => {
                    first_done.get_or_insert(Side::Backend);
                }
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(half_error(e, Side::Backend, first_close))
                }
                Poll::Pending => {}
            }
        }
        match first_done {
            None => Poll::Pending,
            Some(closed_by) if up.is_done() && down.is_done() => Poll::Ready(TunnelOutcome {
                closed_by,
                first_close,
                error: None,
            }),
            Some(closed_by) => {
                let timer =
                    deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(half_close)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(end(
                    closed_by,
                    first_close,
                    TunnelError::HalfCloseTimeout(half_close),
                ))
            }
        }
    })
    .await
}

fn note_close(half: &Half, side: Side, first: &mut Option<(Side, Option<u16>)>) {
    if first.is_none() {
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
                side: sender.as_str(),
                source,
            },
        ),
        HalfError::Write(source) => (
            receiver,
            TunnelError::Write {
                side: receiver.as_str(),
                source,
            },
        ),
        HalfError::Protocol(source) => (
            sender,
            TunnelError::Protocol {
                side: sender.as_str(),
                source,
            },
        ),
    };
    TunnelOutcome {
        closed_by,
        first_close,
        error: Some(error),
    }
}
