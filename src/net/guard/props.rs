//! Property: the framing guard's verdict, the bytes it hands hyper and the
//! request a refusal falls in do not depend on how the client's bytes were
//! cut into reads. Streams are built from request lines, header lines (good
//! ones and each kind the guard refuses), line endings and bodies, so most
//! reach deep into a head or a body before anything goes wrong. The fuzz
//! target `guard` (fuzz/) checks the same on unstructured input for longer.

use proptest::prelude::*;

use super::{Malformed, Scanner};

const LINES: &[&str] = &[
    "GET / HTTP/1.1",
    "POST /up HTTP/1.1",
    "GET /ws HTTP/1.1",
    "Host: a",
    "Content-Length: 5",
    "Content-Length: 0",
    "Content-Length: 005",
    "Content-Length: 5x",
    "Content-Length: 99999999999999999999999",
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: gzip, chunked",
    "Upgrade: websocket",
    "Connection: Upgrade",
    " folded",
    "X: a\tb",
    "X: \u{1}",
    "5;ext=1",
    "0",
    "ffffffffffffffffff",
    "hello",
    "",
];

fn piece() -> impl Strategy<Value = Vec<u8>> {
    let line = (
        prop::sample::select(LINES),
        prop_oneof![8 => Just("\r\n"), 1 => Just("\n"), 1 => Just("\r")],
    )
        .prop_map(|(l, end)| format!("{l}{end}").into_bytes());
    prop_oneof![
        6 => line,
        1 => prop::collection::vec(any::<u8>(), 0..8),
    ]
}

#[derive(Debug, PartialEq)]
struct Seen {
    verdict: Option<Malformed>,
    bytes: Vec<u8>,
    refused_in: Option<u64>,
    answers: Vec<(bool, Option<Malformed>)>,
}

fn scan_cut(max_line: usize, input: &[u8], cuts: &[usize], answers: usize) -> Seen {
    let mut s = Scanner::new(max_line);
    let mut bytes = input.to_vec();
    let mut from = 0;
    for &to in cuts.iter().chain([&input.len()]) {
        s.scan(&mut bytes[from..to]);
        from = to;
    }
    let refused_in = (0..=s.current_request() + 32).find(|&i| s.refused_in(i));
    let answers = (0..answers).map(|_| (s.answered(), s.verdict())).collect();
    Seen {
        verdict: s.verdict(),
        bytes,
        refused_in,
        answers,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_same_verdict_however_the_bytes_are_cut(
        pieces in prop::collection::vec(piece(), 0..24),
        max_line in prop::sample::select(vec![8usize, 40, 16384]),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        answers in 0usize..4,
    ) {
        let input = pieces.concat();
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        let whole = scan_cut(max_line, &input, &[], answers);
        prop_assert_eq!(&scan_cut(max_line, &input, &cuts, answers), &whole, "cut at {:?}", cuts);
        let every_byte: Vec<usize> = (1..input.len()).collect();
        prop_assert_eq!(&scan_cut(max_line, &input, &every_byte, answers), &whole, "byte by byte");
        let changed = input.iter().zip(&whole.bytes).filter(|(a, b)| a != b).count();
        prop_assert!(changed <= 1 && (changed == 0 || whole.verdict.is_some()));
    }
}
