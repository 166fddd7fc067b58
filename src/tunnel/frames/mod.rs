//! RFC 6455 frames as they pass through one direction of a tunnel.
//!
//! The tunnel copies bytes between peers itself; it hands every chunk to a
//! [`FrameTracker`] as it passes so the proxy knows where frames and messages
//! begin and end, which Close code a peer sent, and when the stream breaks the
//! protocol. When the proxy closes a tunnel itself, it writes a Close frame
//! made by [`encode_close`] at a frame boundary the tracker found.
//!
//! - `tracker.rs`: [`FrameTracker`], the incremental header parser and its
//!   counters.
//! - `close.rs`: Close frames: which codes may appear on the wire, what a
//!   peer said ([`CloseInfo`]), and encoding one to inject.
//! - `error.rs`: [`FrameError`], each protocol violation the tracker finds.
//! - `lenient.rs` (tests): a tracker that lets the rules go but follows
//!   frames, for `[websocket] strict = false`.
//!
//! What it must not do: no I/O and no async (it is a pure state machine), no
//! allocation per frame or per call to [`FrameTracker::feed`], and it never
//! buffers, unmasks or rewrites payload. The one exception to "never looks at
//! payload" is the first two bytes of a Close frame, unmasked in a local copy
//! (the caller's bytes are never touched) to learn the close code. Everything
//! else is header bytes, parsed one at a time so a header split across any
//! number of reads costs no buffer.

mod close;
mod error;
#[cfg(test)]
mod lenient;
#[cfg(test)]
mod props;
#[cfg(test)]
mod test_support;
mod tracker;

pub use close::{close_code_allowed, encode_close, CloseInfo};
pub use error::FrameError;
pub use tracker::FrameTracker;

/// Which peer sends the frames this tracker sees: client frames must be masked, server frames must not (RFC 6455 5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// The WebSocket client; every frame it sends carries a mask key.
    Client,
    /// The WebSocket server; its frames are never masked.
    Server,
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

const FIN_BIT: u8 = 0x80;
const MASK_BIT: u8 = 0x80;
