//! Close frames: which codes may appear on the wire, what a peer said in
//! its Close ([`CloseInfo`]), and encoding a whole Close frame for the proxy
//! to inject.
//!
//! Must not: track stream state; reading a Close out of a stream is the
//! tracker's job.

use super::{FIN_BIT, MASK_BIT, OP_CLOSE};

/// What the peer said in its Close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseInfo {
    /// The status code, or `None` when the Close frame had an empty payload.
    pub code: Option<u16>,
}

/// Whether `code` may appear in a Close frame on the wire (RFC 6455 7.4).
///
/// 1004-1006 and 1015 are reserved for local reporting only, the rest of
/// 1000-2999 is unassigned, and nothing outside 1000-4999 is defined.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Encodes a whole Close frame (FIN, opcode 8) with the code and a UTF-8 reason (truncated at a char boundary so the payload stays <= 125 bytes). `mask` Some => masked frame with that key (client-to-server), None => unmasked.
///
/// The code is written as given; callers pick one that
/// [`close_code_allowed`] accepts if the peer is to accept the frame.
pub fn encode_close(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    // 125 bytes of control payload minus the 2-byte code.
    const MAX_REASON: usize = 123;
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    // end <= 123, so the payload length fits the 7-bit length field.
    let len = (2 + end) as u8;

    let mut out = Vec::with_capacity(2 + 4 + 2 + end);
    out.push(FIN_BIT | OP_CLOSE);
    match mask {
        Some(key) => {
            out.push(MASK_BIT | len);
            out.extend_from_slice(&key);
            let payload = code.to_be_bytes().into_iter().chain(reason.iter().copied());
            out.extend(payload.enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => {
            out.push(len);
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(reason);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::frames::test_support::*;
    use crate::tunnel::frames::Sender;

    #[test]
    fn encode_close_round_trips() {
        for (sender, mask) in [(Sender::Client, Some(KEY)), (Sender::Server, None)] {
            for (code, reason) in [(1000u16, ""), (1001, "going away"), (4000, "ünïcode ✓")] {
                let f = encode_close(code, reason, mask);
                assert_eq!(f[0], 0x88);
                assert_eq!(f[1] & 0x80 != 0, mask.is_some());
                assert_eq!(usize::from(f[1] & 0x7F), 2 + reason.len());
                let payload_at = if mask.is_some() { 6 } else { 2 };
                assert_eq!(f.len(), payload_at + 2 + reason.len());
                let key = mask.unwrap_or([0; 4]);
                let plain: Vec<u8> = f[payload_at..]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ key[i % 4])
                    .collect();
                assert_eq!(plain, close_payload(code, reason));
                for s in [whole(sender, &f), bytewise(sender, &f)] {
                    assert_eq!(s.close, Some(CloseInfo { code: Some(code) }));
                    assert_eq!((s.frames, s.control, s.error), (1, 1, None));
                    assert!(s.boundary);
                }
            }
        }
    }

    #[test]
    fn encode_close_truncates_reason_at_char_boundary() {
        // 62 two-byte chars: 124 bytes, and byte 123 falls inside a char.
        let reason = "é".repeat(62);
        for mask in [None, Some(KEY)] {
            let f = encode_close(1000, &reason, mask);
            assert_eq!(usize::from(f[1] & 0x7F), 2 + 122);
            let payload_at = if mask.is_some() { 6 } else { 2 };
            let key = mask.unwrap_or([0; 4]);
            let plain: Vec<u8> = f[payload_at..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            let text = std::str::from_utf8(&plain[2..]).unwrap();
            assert_eq!(text, "é".repeat(61));
        }
        // Exactly 123 bytes fit untouched; longer ASCII stops at 123.
        let f = encode_close(1000, &"a".repeat(123), None);
        assert_eq!(f[1], 125);
        let f = encode_close(1000, &"a".repeat(500), None);
        assert_eq!((f[1], f.len()), (125, 127));
        // A four-byte char straddling the limit is dropped whole.
        let reason = format!("{}😀", "a".repeat(121));
        let f = encode_close(3000, &reason, Some(KEY));
        assert_eq!(f[1], 0x80 | (2 + 121));
        let s = whole(Sender::Client, &f);
        assert_eq!(s.close, Some(CloseInfo { code: Some(3000) }));
    }
}
