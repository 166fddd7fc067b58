//! Fuzz target: the raw-byte framing guard (`net::guard::Scanner`).
//!
//! Input: 5 bytes of settings, then the client's bytes. Byte 0 sets the
//! longest line accepted (small, so over-long lines are reached); bytes 1-3
//! are read sizes, used in turn; byte 4 is how many answers the server gives
//! once everything is read.
//!
//! Checked: however the bytes are split into reads, the verdict, the bytes
//! hyper gets, the request a refusal falls in and what each answer says are
//! the same; at most one byte is ever changed, and only at a refusal; the
//! refusal token is cancelled exactly when there is a verdict.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::net::guard::{Malformed, Scanner};

#[derive(Debug, PartialEq)]
struct Outcome {
    verdict: Option<Malformed>,
    bytes: Vec<u8>,
    refused_in: Option<u64>,
    current: u64,
    answers: Vec<(bool, Option<Malformed>)>,
}

fn run(max_line: usize, sizes: [usize; 3], answers: u8, data: &[u8]) -> Outcome {
    let mut s = Scanner::new(max_line);
    let mut bytes = data.to_vec();
    let mut off = 0;
    let mut turn = 0;
    while off < bytes.len() {
        let n = sizes[turn % 3].clamp(1, bytes.len() - off);
        turn += 1;
        s.scan(&mut bytes[off..off + n]);
        check_token(&s);
        off += n;
    }
    let outcome_refused_in =
        |s: &Scanner| (0..=s.current_request() + 64).find(|&i| s.refused_in(i));
    let refused_in = outcome_refused_in(&s);
    let current = s.current_request();
    let answers = (0..answers)
        .map(|_| {
            let go_on = s.answered();
            check_token(&s);
            (go_on, s.verdict())
        })
        .collect();
    Outcome {
        verdict: s.verdict(),
        bytes,
        refused_in,
        current,
        answers,
    }
}

fn check_token(s: &Scanner) {
    assert_eq!(
        s.refused().is_cancelled(),
        s.verdict().is_some(),
        "refusal token and verdict disagree"
    );
}

fuzz_target!(|input: &[u8]| {
    let Some((settings, data)) = input.split_first_chunk::<5>() else {
        return;
    };
    let max_line = 1 + usize::from(settings[0]) * 4;
    let answers = settings[4] % 8;
    let whole = run(max_line, [usize::MAX; 3], answers, data);
    let sizes = [settings[1], settings[2], settings[3]].map(usize::from);
    let split = run(max_line, sizes, answers, data);
    assert_eq!(whole, split, "whole and split reads differ");
    let bytewise = run(max_line, [1; 3], answers, data);
    assert_eq!(whole, bytewise, "whole and byte-by-byte reads differ");

    let changed: Vec<usize> = (0..data.len())
        .filter(|&i| data[i] != whole.bytes[i])
        .collect();
    assert!(changed.len() <= 1, "bytes changed at {changed:?}");
    if !changed.is_empty() {
        assert!(whole.verdict.is_some(), "a byte changed without a refusal");
        assert!(
            whole.bytes[changed[0]] == 0 || whole.bytes[changed[0]] == b'\n',
            "the refused byte is one hyper rejects"
        );
    }
});
