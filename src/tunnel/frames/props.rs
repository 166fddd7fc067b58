//! Property: a tracker's verdict does not depend on how the stream was cut
//! into reads. Streams are mostly well-formed frames (every opcode, length
//! form, mask and Close code) with stray bytes mixed in, fed whole and at
//! arbitrary cuts, under both senders, with and without limits,
//! negotiated reserved bits and strictness. The fuzz target `tracker` (fuzz/) checks the
//! same on unstructured input for much longer.

use proptest::prelude::*;

use super::test_support::{close_payload, enc, Len};
use super::{FrameError, FrameTracker, Sender};

#[derive(Debug, Clone)]
enum Piece {
    Frame {
        b0: u8,
        len: usize,
        form: Len,
        masked: bool,
        code: u16,
    },
    Stray(Vec<u8>),
}

fn piece() -> impl Strategy<Value = Piece> {
    let opcode = prop_oneof![
        4 => prop::sample::select(vec![0x0u8, 0x1, 0x2, 0x8, 0x9, 0xA]),
        1 => 0u8..16,
    ];
    let b0 = (any::<bool>(), prop::bits::u8::masked(0x70), opcode, 0u8..8)
        // RSV bits only now and then: most streams should get past them.
        .prop_map(|(fin, rsv, op, rare)| {
            let rsv = if rare == 0 { rsv } else { 0 };
            u8::from(fin) << 7 | rsv | op
        });
    let form = prop::sample::select(vec![Len::Min, Len::L16, Len::L64]);
    let frame =
        (b0, 0usize..300, form, 0u8..20, any::<u16>()).prop_map(|(b0, len, form, m, code)| {
            Piece::Frame {
                b0,
                len,
                form,
                masked: m != 0,
                code: [1000, 1001, 1005, 3000, code][usize::from(m % 5)],
            }
        });
    prop_oneof![
        8 => frame,
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(Piece::Stray),
    ]
}

fn encode(sender: Sender, pieces: &[Piece]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Frame {
                b0,
                len,
                form,
                masked,
                code,
            } => {
                // `masked` means "as the sender should": false breaks the rule.
                let should = sender == Sender::Client;
                let mask = (should == *masked).then_some([0x37, 0xFA, 0x21, 0x3D]);
                let payload = if b0 & 0x0F == 0x8 {
                    let mut p = close_payload(*code, "bye");
                    p.truncate(*len);
                    p
                } else {
                    vec![0x5A; *len]
                };
                let form = if payload.len() > 0xFFFF {
                    Len::L64
                } else {
                    *form
                };
                out.extend(enc(*b0, &payload, mask, form));
            }
            Piece::Stray(bytes) => out.extend_from_slice(bytes),
        }
    }
    out
}

/// What a tracker says after a stream: bytes passed up to its Close (or
/// the error), and every query it answers.
#[derive(Debug, PartialEq)]
struct Seen {
    passed: Result<usize, FrameError>,
    frames: u64,
    messages: u64,
    control: u64,
    late: u32,
    boundary: bool,
    until_boundary: u64,
    in_message: bool,
    close: Option<super::CloseInfo>,
}

fn feed_cut(make: impl Fn() -> FrameTracker, bytes: &[u8], cuts: &[usize]) -> Seen {
    let mut t = make();
    let mut passed = Ok(0);
    let mut from = 0;
    for &to in cuts.iter().chain([&bytes.len()]) {
        match t.feed(&bytes[from..to]) {
            Ok(n) => {
                assert!(n <= to - from, "claimed {n} of {} bytes", to - from);
                passed = passed.map(|p| p + n);
            }
            Err(e) => {
                passed = Err(e);
                break;
            }
        }
        from = to;
    }
    Seen {
        passed,
        frames: t.frames(),
        messages: t.messages(),
        control: t.control_frames(),
        late: t.late_frames(),
        boundary: t.at_boundary(),
        until_boundary: t.until_boundary(),
        in_message: t.in_message(),
        close: t.close(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_same_verdict_however_the_stream_is_cut(
        client in any::<bool>(),
        pieces in prop::collection::vec(piece(), 0..12),
        limits in prop::option::of((0u64..400, 0u64..800)),
        rsv in prop::sample::select(vec![0u8, 0x40]),
        lenient in any::<bool>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let sender = if client { Sender::Client } else { Sender::Server };
        let bytes = encode(sender, &pieces);
        let make = || {
            let t = FrameTracker::with_rsv(sender, rsv).lenient(lenient);
            match limits {
                Some((frame, message)) => t.with_limits(Some(frame), Some(message)),
                None => t,
            }
        };
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let whole = feed_cut(make, &bytes, &[]);
        if let (true, Err(e)) = (lenient, whole.passed) {
            // Not strict, only the route's limits stop a stream.
            prop_assert!(e.is_route_limit(), "{:?}", e);
        }
        prop_assert_eq!(&feed_cut(make, &bytes, &cuts), &whole, "cut at {:?}", cuts);
        let every_byte: Vec<usize> = (1..bytes.len()).collect();
        prop_assert_eq!(&feed_cut(make, &bytes, &every_byte), &whole, "byte by byte");
    }
}
