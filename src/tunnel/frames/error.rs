//! [`FrameError`]: each way a stream's frame headers (or Close code) can
//! break RFC 6455, as the tracker reports it.
//!
//! Must not: carry payload or allocate; the error is `Copy` so a poisoned
//! tracker can repeat it.

/// A protocol violation found in a stream's frame headers (or Close code),
/// a frame over the route's size limits, or a message begun over the
/// route's message rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Reserved bits (RSV1 = 4, RSV2 = 2, RSV3 = 1) set that no negotiated
    /// extension defines.
    #[error("reserved bits {0:#05b} set without an extension defining them")]
    ReservedBits(u8),
    /// A data frame announced a payload over the route's `max_frame_bytes`.
    #[error("frame payload of {0} bytes exceeds the route's max_frame_bytes")]
    FrameTooBig(u64),
    /// A message's frames add up to more than the route's `max_message_bytes`.
    #[error("message of at least {0} bytes exceeds the route's max_message_bytes")]
    MessageTooBig(u64),
    /// An opcode RFC 6455 reserves: 3-7 (data) or 0xB-0xF (control).
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A control frame announced a payload longer than 125 bytes.
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlTooLong(u64),
    /// A control frame had FIN clear; control frames cannot be fragmented.
    #[error("control frame without FIN")]
    FragmentedControl,
    /// A continuation frame arrived with no fragmented message in progress.
    #[error("continuation frame with no message in progress")]
    UnexpectedContinuation,
    /// A text or binary frame arrived while a fragmented message was unfinished.
    #[error("new data frame while a fragmented message is in progress")]
    MessageInterrupted,
    /// A client frame was unmasked or a server frame was masked.
    #[error("{}", if *.expected_masked { "client frame is not masked" } else { "server frame is masked" })]
    Masking {
        /// Whether the frame should have been masked (true for client frames).
        expected_masked: bool,
    },
    /// A 64-bit payload length had its most significant bit set.
    #[error("64-bit payload length has its most significant bit set")]
    LengthOverflow,
    /// A Close frame carried exactly one payload byte, half a close code.
    #[error("close frame payload of 1 byte")]
    CloseTooShort,
    /// A Close frame carried a code that must not appear on the wire.
    #[error("close code {0} is not allowed on the wire")]
    InvalidCloseCode(u16),
    /// A message, a ping or an unasked pong began with none of the
    /// route's `messages_per_second` (and `burst`) left.
    #[error("message begun over the route's messages_per_second")]
    RateLimited,
}

impl FrameError {
    /// Whether this is a route's size limit rather than a broken rule:
    /// answered with 1009, and enforced even when not strict.
    pub fn is_size_limit(self) -> bool {
        matches!(
            self,
            FrameError::FrameTooBig(_) | FrameError::MessageTooBig(_)
        )
    }

    /// Whether this is one of the route's limits (size or rate) rather than
    /// a broken rule: enforced even when not strict.
    pub fn is_route_limit(self) -> bool {
        self.is_size_limit() || self == FrameError::RateLimited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_one_line() {
        let all = [
            FrameError::ReservedOpcode(0xB),
            FrameError::ReservedBits(4),
            FrameError::FrameTooBig(9),
            FrameError::MessageTooBig(9),
            FrameError::ControlTooLong(300),
            FrameError::FragmentedControl,
            FrameError::UnexpectedContinuation,
            FrameError::MessageInterrupted,
            FrameError::Masking {
                expected_masked: true,
            },
            FrameError::Masking {
                expected_masked: false,
            },
            FrameError::LengthOverflow,
            FrameError::CloseTooShort,
            FrameError::InvalidCloseCode(1005),
            FrameError::RateLimited,
        ];
        for e in all {
            let s = e.to_string();
            assert!(!s.is_empty() && !s.contains('\n'), "{e:?}: {s:?}");
        }
        assert_eq!(
            FrameError::ReservedOpcode(0xB).to_string(),
            "reserved opcode 0xb"
        );
        assert!(FrameError::ControlTooLong(300).to_string().contains("300"));
        assert!(FrameError::InvalidCloseCode(1005)
            .to_string()
            .contains("1005"));
        assert_ne!(
            FrameError::Masking {
                expected_masked: true
            }
            .to_string(),
            FrameError::Masking {
                expected_masked: false
            }
            .to_string()
        );
    }
}
