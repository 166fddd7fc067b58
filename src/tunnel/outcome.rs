//! How a tunnel ended: the error that ended it, who closed first, and the
//! Close each side gets when one of them broke the rules.

use std::io;
use std::time::Duration;

use crate::observe::access::{CloseOrder, EndReason, Side, TunnelEnd};
use crate::tunnel::frames::FrameError;
use crate::tunnel::keepalive::KeepaliveEnd;

/// Close code to a peer that broke RFC 6455.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;

/// Close code to a peer whose frame or message is over the route's limit.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Close code to a client that begins messages faster than the route's
/// `messages_per_second` allows.
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;

/// The Close a side that broke `e` gets.
pub(crate) fn offender_close(e: FrameError) -> (u16, &'static str) {
    if e.is_size_limit() {
        (CLOSE_TOO_BIG, "message too big")
    } else if e == FrameError::RateLimited {
        (CLOSE_POLICY_VIOLATION, "message rate exceeded")
    } else {
        (CLOSE_PROTOCOL_ERROR, "protocol error")
    }
}

/// The error that ends a tunnel whose `side` broke `source`.
pub(crate) fn violation_error(side: Side, source: FrameError) -> TunnelError {
    if source.is_size_limit() {
        TunnelError::TooBig { side, source }
    } else if source == FrameError::RateLimited {
        TunnelError::RateLimited { side }
    } else {
        TunnelError::Protocol { side, source }
    }
}

/// Why a tunnel ended.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// Reading from a side failed (reset, TLS error).
    #[error("read from {} failed: {source}", side.as_str())]
    Read {
        /// Who we were reading from.
        side: Side,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing to a side failed.
    #[error("write to {} failed: {source}", side.as_str())]
    Write {
        /// Who we were writing to.
        side: Side,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A side broke RFC 6455 framing.
    #[error("{} broke WebSocket framing: {source}", side.as_str())]
    Protocol {
        /// The offender.
        side: Side,
        /// The rule broken.
        #[source]
        source: FrameError,
    },
    /// A side sent a frame or message over the route's size limits.
    #[error("{} sent too much: {source}", side.as_str())]
    TooBig {
        /// The sender.
        side: Side,
        /// The limit passed.
        #[source]
        source: FrameError,
    },
    /// A client began messages faster than the route's `messages_per_second`.
    #[error("{} began messages over the route's messages_per_second", side.as_str())]
    RateLimited {
        /// The sender (the client).
        side: Side,
    },
    /// A side took none of the bytes written to it for the route's
    /// `write_stall_timeout`.
    #[error("{} took no bytes for {after:?} (write_stall_timeout)", side.as_str())]
    WriteStall {
        /// The side that stopped reading.
        side: Side,
        /// The configured timeout.
        after: Duration,
    },
    /// One side finished and the other did not within `timeouts.half_close`.
    #[error("other side still open {0:?} after one side closed")]
    HalfCloseTimeout(Duration),
    /// A closing handshake wsgate started did not finish within `timeouts.close`.
    #[error("closing handshake with code {code} not finished within {after:?}")]
    CloseTimeout {
        /// The code wsgate sent.
        code: u16,
        /// The configured deadline.
        after: Duration,
    },
    /// A peer sent its Close and the other side sent none back within
    /// `timeouts.close`.
    #[error("{} did not answer the closing handshake within {after:?}", waiting_for.as_str())]
    CloseUnanswered {
        /// The side whose Close never came.
        waiting_for: Side,
        /// The configured deadline.
        after: Duration,
    },
    /// wsgate is shutting down.
    #[error("proxy shutting down")]
    Shutdown,
    /// A keepalive policy of the route ended it.
    #[error(transparent)]
    Keepalive(KeepaliveEnd),
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
    /// Set when wsgate itself started the closing handshake.
    pub proxy_close: Option<CloseOrder>,
}

impl TunnelOutcome {
    /// The record's view of this outcome.
    pub fn to_end(&self) -> TunnelEnd {
        TunnelEnd {
            closed_by: self.closed_by,
            close_code: self.first_close.and_then(|(_, c)| c),
            close_frame_from: self.first_close.map(|(s, _)| s),
            reason: match (&self.error, &self.proxy_close) {
                (Some(e), _) => e.reason(),
                (None, Some(_)) => EndReason::ProxyClose,
                (None, None) => EndReason::Closed,
            },
            proxy_close: self.proxy_close.clone(),
            detail: self.error.as_ref().map(ToString::to_string),
        }
    }
}

impl TunnelError {
    /// The record's reason for this error.
    pub fn reason(&self) -> EndReason {
        match self {
            TunnelError::Read { .. } => EndReason::ReadError,
            TunnelError::Write { .. } => EndReason::WriteError,
            TunnelError::Protocol { .. } => EndReason::ProtocolError,
            TunnelError::TooBig { .. } => EndReason::TooBig,
            TunnelError::RateLimited { .. } => EndReason::RateLimited,
            TunnelError::WriteStall { .. } => EndReason::WriteStall,
            TunnelError::HalfCloseTimeout(_) => EndReason::HalfCloseTimeout,
            TunnelError::CloseTimeout { .. } | TunnelError::CloseUnanswered { .. } => {
                EndReason::CloseTimeout
            }
            TunnelError::Shutdown => EndReason::Shutdown,
            TunnelError::Keepalive(k) => k.reason(),
        }
    }
}
