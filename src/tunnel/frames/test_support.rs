//! Helpers shared by the frame tests: an encoder for any length form, and
//! a snapshot of everything a tracker reports, fed whole or byte by byte.

use super::{CloseInfo, FrameError, FrameTracker, Sender};

pub(super) const KEY: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

/// How the test encoder writes the payload length.
#[derive(Clone, Copy, Debug)]
pub(super) enum Len {
    Min,
    L16,
    L64,
}

pub(super) fn header(b0: u8, n: u64, mask: Option<[u8; 4]>, form: Len) -> Vec<u8> {
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    let mut out = vec![b0];
    match form {
        Len::Min if n < 126 => out.push(mbit | n as u8),
        Len::Min if n <= 0xFFFF => {
            out.push(mbit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        Len::L16 => {
            assert!(n <= 0xFFFF, "test bug: {n} does not fit 16 bits");
            out.push(mbit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        Len::Min | Len::L64 => {
            out.push(mbit | 127);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
    if let Some(k) = mask {
        out.extend_from_slice(&k);
    }
    out
}

pub(super) fn enc(b0: u8, payload: &[u8], mask: Option<[u8; 4]>, form: Len) -> Vec<u8> {
    let mut out = header(b0, payload.len() as u64, mask, form);
    let key = mask.unwrap_or([0; 4]);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

pub(super) fn key_for(sender: Sender) -> Option<[u8; 4]> {
    match sender {
        Sender::Client => Some(KEY),
        Sender::Server => None,
    }
}

pub(super) fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(super) struct Snap {
    pub(super) frames: u64,
    pub(super) messages: u64,
    pub(super) control: u64,
    pub(super) boundary: bool,
    pub(super) in_message: bool,
    pub(super) close: Option<CloseInfo>,
    pub(super) error: Option<FrameError>,
}

pub(super) fn snap(t: &FrameTracker) -> Snap {
    Snap {
        frames: t.frames(),
        messages: t.messages(),
        control: t.control_frames(),
        boundary: t.at_boundary(),
        in_message: t.in_message(),
        close: t.close(),
        error: t.error(),
    }
}

pub(super) fn feed_chunks<'a>(sender: Sender, chunks: impl IntoIterator<Item = &'a [u8]>) -> Snap {
    let mut t = FrameTracker::new(sender);
    for c in chunks {
        if t.feed(c).is_err() {
            break;
        }
    }
    snap(&t)
}

pub(super) fn whole(sender: Sender, bytes: &[u8]) -> Snap {
    feed_chunks(sender, [bytes])
}

pub(super) fn bytewise(sender: Sender, bytes: &[u8]) -> Snap {
    feed_chunks(sender, bytes.chunks(1))
}

pub(super) fn err_of(sender: Sender, bytes: &[u8]) -> Option<FrameError> {
    let e = whole(sender, bytes).error;
    assert_eq!(bytewise(sender, bytes).error, e, "bytewise disagrees");
    e
}
