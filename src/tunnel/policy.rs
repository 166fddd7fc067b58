//! What a tunnel enforces, fixed for its whole life when it starts: the
//! frame rules and the deadlines.

use std::time::Duration;

use crate::tunnel::keepalive::KeepalivePolicy;
use crate::tunnel::RateLimit;

/// How a tunnel judges the frames it relays, and its route's limits: the
/// client's message rate, a peer that stops reading, idle time, pings and
/// age.
#[derive(Debug, Clone, Copy)]
pub struct FramePolicy {
    /// `[websocket] strict`: a protocol violation ends the tunnel with
    /// Close 1002 to the offender and 1001 to the other side; otherwise it
    /// passes untouched.
    pub strict: bool,
    /// Reserved bits negotiated extensions allow, as a mask of a frame's
    /// first byte: 0x40 (RSV1) with permessage-deflate.
    pub rsv: u8,
    /// The route's `max_frame_bytes`: a larger data frame gets 1009.
    pub max_frame: Option<u64>,
    /// The route's `max_message_bytes`, fragments summed: over it, 1009.
    pub max_message: Option<u64>,
    /// The route's `idle_timeout`, pings and `max_connection_age`.
    pub keepalive: KeepalivePolicy,
    /// The route's `messages_per_second` and `burst`, on what the client
    /// sends: over it, Close 1008 (see rate.rs).
    pub rate: Option<RateLimit>,
    /// The route's `write_stall_timeout`: a direction with bytes to write
    /// and no progress for that long ends the tunnel (see stall.rs).
    /// `None` (unit tests only): never.
    pub write_stall: Option<Duration>,
}

impl Default for FramePolicy {
    fn default() -> Self {
        Self {
            strict: true,
            rsv: 0,
            max_frame: None,
            max_message: None,
            keepalive: KeepalivePolicy::default(),
            rate: None,
            write_stall: None,
        }
    }
}

impl FramePolicy {
    /// The policy for a tunnel whose backend's 101 accepted `extensions`
    /// (names, without parameters): permessage-deflate allows RSV1 (RFC
    /// 7692); an extension wsgate does not know may use any reserved bit.
    pub fn for_extensions<'a>(strict: bool, extensions: impl IntoIterator<Item = &'a str>) -> Self {
        let rsv = extensions.into_iter().fold(0, |rsv, name| {
            if name.eq_ignore_ascii_case("permessage-deflate") {
                rsv | 0x40
            } else if name.is_empty() {
                rsv
            } else {
                0x70
            }
        });
        Self {
            rsv,
            strict,
            ..Self::default()
        }
    }
}

/// Deadlines a tunnel enforces.
#[derive(Debug, Clone, Copy)]
pub struct TunnelTimeouts {
    /// After one side finished sending, how long the other may go on.
    pub half_close: Duration,
    /// How long a closing handshake may take, started by wsgate or by a
    /// peer: from the first Close until the tunnel has ended.
    pub close: Duration,
}
