//! Tests of a lenient tracker (`[websocket] strict = false`): every rule
//! of RFC 6455 let go, frames still followed, so the route's limits and
//! the frame boundaries hold after a broken frame as before it.

use super::test_support::{close_payload, enc, Len, KEY};
use super::{FrameError, FrameTracker, Sender};

fn client(b0: u8, payload: &[u8]) -> Vec<u8> {
    enc(b0, payload, Some(KEY), Len::Min)
}

/// Each frame that breaks a rule, as a client sends it.
fn broken() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("reserved bits", client(0xC1, b"rsv1")),
        ("unmasked", enc(0x81, b"bare", None, Len::Min)),
        ("reserved data opcode", client(0x83, b"x")),
        ("reserved control opcode", client(0x8B, b"x")),
        ("lone continuation", client(0x80, b"x")),
        ("fragmented control", client(0x09, b"x")),
        ("long control", client(0x89, &[0; 126])),
        (
            "interrupted message",
            [client(0x01, b"a"), client(0x81, b"b")].concat(),
        ),
        ("64-bit length with its top bit", {
            let mut h = vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
            h.extend_from_slice(&KEY);
            h
        }),
    ]
}

#[test]
fn strict_trackers_refuse_what_lenient_ones_follow() {
    for (what, bad) in broken() {
        assert!(
            FrameTracker::new(Sender::Client).feed(&bad).is_err(),
            "{what}: strict must refuse it"
        );
        let mut t = FrameTracker::new(Sender::Client).lenient(true);
        assert_eq!(t.feed(&bad), Ok(bad.len()), "{what}");
        assert_eq!(t.error(), None, "{what}");
    }
}

/// After each broken frame (but the endless one) the tracker is at a
/// boundary and follows what comes next: a good message is counted, a
/// Close is seen and what follows it is late.
#[test]
fn after_a_broken_frame_frames_are_still_followed() {
    for (what, bad) in broken().into_iter().filter(|(w, _)| !w.starts_with("64")) {
        for split in 0..=bad.len() {
            let mut t = FrameTracker::new(Sender::Client).lenient(true);
            t.feed(&bad[..split]).expect("lenient");
            t.feed(&bad[split..]).expect("lenient");
            assert!(t.at_boundary(), "{what} split {split}");
            let before = t.messages();
            let good = [client(0x81, b"ok"), client(0x88, &close_payload(1000, ""))].concat();
            assert_eq!(t.feed(&good), Ok(good.len()), "{what}");
            assert_eq!(t.messages(), before + 1, "{what}");
            assert_eq!(t.close().and_then(|c| c.code), Some(1000), "{what}");
            assert_eq!(t.feed(&client(0x81, b"late")), Ok(0), "{what}");
            assert_eq!(t.late_frames(), 1, "{what}");
        }
    }
}

#[test]
fn the_route_limits_hold_after_a_broken_frame() {
    let limited = || {
        FrameTracker::new(Sender::Client)
            .lenient(true)
            .with_limits(Some(10), Some(20))
    };
    let bad = client(0x83, b"x");
    let mut t = limited();
    t.feed(&bad).expect("lenient");
    assert_eq!(
        t.feed(&client(0x82, &[0; 11])),
        Err(FrameError::FrameTooBig(11))
    );
    // A broken frame inside a message adds to it, never starts it afresh.
    let mut t = limited();
    let parts = [client(0x02, &[0; 10]), client(0x83, &[0; 5])].concat();
    t.feed(&parts).expect("within the limits");
    assert_eq!(
        t.feed(&client(0x80, &[0; 6])),
        Err(FrameError::MessageTooBig(21))
    );
    // A control frame let through over 125 bytes is still a frame.
    assert_eq!(
        limited().feed(&client(0x89, &[0; 126])),
        Err(FrameError::FrameTooBig(126))
    );
    // And the rate.
    let mut t = limited();
    t.feed(&bad).expect("lenient");
    t.allow_starts(1);
    let two = [client(0x81, b"a"), client(0x81, b"b")].concat();
    assert_eq!(t.feed(&two), Err(FrameError::RateLimited));
}

/// A Close too short to hold a code, or with a code not allowed on the
/// wire, is still the sender's Close.
#[test]
fn a_broken_close_is_still_a_close() {
    for (payload, code) in [(vec![0x03], None), (close_payload(1005, ""), Some(1005))] {
        let mut t = FrameTracker::new(Sender::Client).lenient(true);
        let close = client(0x88, &payload);
        assert_eq!(t.feed(&close), Ok(close.len()), "{payload:?}");
        assert_eq!(t.close().map(|c| c.code), Some(code), "{payload:?}");
        assert_eq!(t.feed(&client(0x81, b"after")), Ok(0));
    }
}
