//! Fuzz target: the frame-header tracker (`tunnel::frames::FrameTracker`).
//!
//! Input: 8 bytes of settings, then the stream. Settings: byte 0 picks the
//! sender (bit 0), the reserved bits an extension allows (bits 1-3), whether
//! route limits apply (bit 4) and whether reads stop at frame boundaries as
//! the tunnel's do when it injects a Close (bit 5), and whether a message
//! rate allowance applies (bit 6: byte 1 modulo 16 messages and pings may
//! begin, as the route's token bucket grants them, and byte 2 modulo 4
//! pongs are owed free), and whether the tracker is lenient (bit 7:
//! `[websocket] strict = false`, RFC 6455's rules let go while frames are
//! still followed); bytes 1-4 are the frame and message limits; bytes 5-7
//! are chunk sizes, used in turn.
//!
//! Checked: the stream fed whole and fed in chunks give the same verdict,
//! the same counters and the same place for the offending frame; no call
//! claims more bytes than it was given, nor fewer before the Close; the
//! counters and boundary queries agree with each other.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::tunnel::frames::{CloseInfo, FrameError, FrameTracker, Sender};

#[derive(Debug, PartialEq)]
struct Snap {
    frames: u64,
    messages: u64,
    control_frames: u64,
    late: u32,
    close: Option<CloseInfo>,
    error: Option<FrameError>,
    at_boundary: bool,
    until_boundary: u64,
    in_message: bool,
    starts_left: u32,
    pongs_owed: u32,
    pings: u32,
}

fn snap(t: &FrameTracker) -> Snap {
    Snap {
        frames: t.frames(),
        messages: t.messages(),
        control_frames: t.control_frames(),
        late: t.late_frames(),
        close: t.close(),
        error: t.error(),
        at_boundary: t.at_boundary(),
        until_boundary: t.until_boundary(),
        in_message: t.in_message(),
        starts_left: t.starts_left(),
        pongs_owed: t.pongs_owed(),
        pings: t.pings(),
    }
}

/// What feeding a whole stream came to: bytes passed up to the Close, or
/// the error and the absolute offset where the offending frame began.
#[derive(Debug, PartialEq)]
enum Verdict {
    Passed(usize),
    Refused(FrameError, Option<usize>),
}

fn tracker(settings: &[u8; 8]) -> FrameTracker {
    let sender = if settings[0] & 1 == 0 {
        Sender::Client
    } else {
        Sender::Server
    };
    let rsv = (settings[0] & 0x0E) << 3;
    let mut t = FrameTracker::with_rsv(sender, rsv).lenient(settings[0] & 0x80 != 0);
    if settings[0] & 0x40 != 0 {
        t.allow_starts(u32::from(settings[1] % 16));
        t.allow_pongs(u32::from(settings[2] % 4));
    }
    if settings[0] & 0x10 == 0 {
        return t;
    }
    let max_frame = u16::from_le_bytes([settings[1], settings[2]]);
    let max_message = u16::from_le_bytes([settings[3], settings[4]]);
    t.with_limits(Some(max_frame.into()), Some(max_message.into()))
}

/// Invariants that hold between any two calls.
fn consistent(t: &FrameTracker) {
    let s = snap(t);
    assert!(
        s.messages + s.control_frames <= s.frames,
        "more completed frames than headers: {s:?}"
    );
    if s.error.is_none() {
        assert_eq!(s.at_boundary, s.until_boundary == 0, "{s:?}");
    } else {
        assert!(!s.at_boundary, "a poisoned tracker is at no boundary");
    }
}

/// One call to `feed_at`, checked against what it may claim.
fn feed_checked(t: &mut FrameTracker, chunk: &[u8]) -> Result<usize, (FrameError, Option<usize>)> {
    let closed_before = t.close().is_some();
    let poisoned_before = t.error();
    let r = t.feed_at(chunk);
    match r {
        Ok(n) => {
            assert!(n <= chunk.len(), "claimed {n} of {} bytes", chunk.len());
            if closed_before {
                assert_eq!(n, 0, "bytes passed after the Close");
            } else if t.close().is_none() {
                assert_eq!(n, chunk.len(), "bytes held back before any Close");
            }
        }
        Err((e, at)) => {
            if let Some(p) = poisoned_before {
                assert_eq!((e, at), (p, None), "a poisoned tracker repeats itself");
            }
            if let Some(at) = at {
                assert!(
                    at < chunk.len(),
                    "offending frame at {at} of {}",
                    chunk.len()
                );
            }
            assert_eq!(t.error(), Some(e));
        }
    }
    // `feed` says the same as `feed_at` without the place.
    consistent(t);
    r
}

fn whole(settings: &[u8; 8], data: &[u8]) -> (Verdict, Snap) {
    let mut t = tracker(settings);
    let v = match feed_checked(&mut t, data) {
        Ok(n) => Verdict::Passed(n),
        Err((e, at)) => Verdict::Refused(e, at),
    };
    (v, snap(&t))
}

fn chunked(settings: &[u8; 8], data: &[u8]) -> (Verdict, Snap) {
    let mut t = tracker(settings);
    let sizes = [settings[5], settings[6], settings[7]].map(usize::from);
    let stop_at_boundaries = settings[0] & 0x20 != 0;
    let mut off = 0;
    let mut passed = 0;
    let mut turn = 0;
    let mut verdict = None;
    while off < data.len() || turn == 0 {
        let mut size = sizes[turn % 3];
        turn += 1;
        if sizes.iter().all(|&s| s == 0) {
            size = 1;
        }
        // The tunnel reads at most up to the next boundary before it
        // injects a frame: inside a payload that lands exactly on one.
        let seek = stop_at_boundaries && t.until_boundary() > 1;
        if seek {
            size = t.until_boundary().min(size.max(1) as u64 * 64) as usize;
        }
        let n = size.min(data.len() - off);
        let chunk = &data[off..off + n];
        let before = t.until_boundary();
        match feed_checked(&mut t, chunk) {
            Ok(k) => {
                passed += k;
                if seek && n as u64 == before && t.error().is_none() {
                    assert!(
                        t.at_boundary(),
                        "reading until_boundary() bytes ends a frame"
                    );
                }
            }
            Err((e, at)) => {
                verdict = Some(Verdict::Refused(e, at.map(|a| off + a)));
                // Later calls repeat the error and change nothing.
                let frozen = snap(&t);
                assert_eq!(t.feed(&data[off + n..]), Err(e));
                assert_eq!(snap(&t), frozen);
                break;
            }
        }
        off += n;
        if off == data.len() {
            break;
        }
    }
    let verdict = verdict.unwrap_or(Verdict::Passed(passed));
    (verdict, snap(&t))
}

fuzz_target!(|input: &[u8]| {
    let Some((settings, data)) = input.split_first_chunk::<8>() else {
        return;
    };
    let (wv, ws) = whole(settings, data);
    let (cv, cs) = chunked(settings, data);
    match (&wv, &cv) {
        // A frame that began in an earlier chunk has no place in this one.
        (Verdict::Refused(we, Some(_)), Verdict::Refused(ce, None)) => assert_eq!(we, ce),
        _ => assert_eq!(wv, cv, "whole and chunked verdicts differ"),
    }
    if let Verdict::Refused(_, Some(at)) = wv {
        assert!(at < data.len());
    }
    assert_eq!(ws, cs, "whole and chunked trackers differ");
});
