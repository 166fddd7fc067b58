//! Fuzz target: the PROXY protocol header parser
//! (`net::proxy_protocol::parse`), which reads untrusted bytes before
//! anything else on a `proxy_protocol` listener.
//!
//! Input: any bytes, taken as what a connection sent first.
//!
//! Checked: a verdict never depends on how the bytes were split into
//! reads. `Complete` claims no more than it was given and no more than the
//! version allows, and the header alone gives the same verdict; every
//! shorter prefix of a header is `Incomplete` (so the reader never stops
//! early) and every prefix of an `Incomplete` input is too; `Invalid` stays
//! `Invalid` whatever follows. A parsed header, written again by wsgate's
//! encoder (as it sends one to a backend), parses back to the same
//! addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::net::proxy_protocol::{encode, parse, Parsed, Version, V1_MAX, V2_MAX};

/// Prefix lengths to look at: all of them for short inputs, an even spread
/// for long ones (each parse is linear; all prefixes would be quadratic).
fn prefixes(len: usize) -> Vec<usize> {
    if len <= 256 {
        (0..len).collect()
    } else {
        let step = len / 128;
        (0..len).step_by(step.max(1)).chain(len - 8..len).collect()
    }
}

fuzz_target!(|data: &[u8]| {
    let verdict = parse(data);
    match &verdict {
        Parsed::Complete { header, consumed } => {
            let consumed = *consumed;
            assert!(consumed > 0 && consumed <= data.len(), "{consumed} of {}", data.len());
            let max = match header.version {
                Version::V1 => V1_MAX,
                Version::V2 => V2_MAX,
            };
            assert!(consumed <= max, "{consumed} over {max}");
            assert_eq!(parse(&data[..consumed]), verdict, "the header alone differs");
            for n in prefixes(consumed) {
                assert_eq!(parse(&data[..n]), Parsed::Incomplete, "prefix {n} of a header");
            }
            if let Some((src, dst)) = header.addresses {
                for version in [Version::V1, Version::V2] {
                    let once = match parse(&encode(version, src, dst)) {
                        Parsed::Complete { header, .. } => header.addresses,
                        other => panic!("wsgate's own {version:?} header: {other:?}"),
                    };
                    let (s, d) = once.expect("addresses written are read");
                    let twice = match parse(&encode(version, s, d)) {
                        Parsed::Complete { header, .. } => header.addresses,
                        other => panic!("wsgate's own {version:?} header: {other:?}"),
                    };
                    assert_eq!(once, twice, "encode and parse disagree");
                }
            }
        }
        Parsed::Incomplete => {
            assert!(data.len() < V2_MAX, "incomplete at {} bytes", data.len());
            for n in prefixes(data.len()) {
                assert_eq!(parse(&data[..n]), Parsed::Incomplete, "prefix {n}");
            }
        }
        Parsed::Invalid(_) => {
            // The shortest invalid prefix: everything from it on is invalid.
            let first = prefixes(data.len())
                .into_iter()
                .chain([data.len()])
                .find(|&n| matches!(parse(&data[..n]), Parsed::Invalid(_)))
                .unwrap_or(data.len());
            for n in (first..=data.len()).step_by(((data.len() - first) / 64).max(1)) {
                assert!(
                    matches!(parse(&data[..n]), Parsed::Invalid(_)),
                    "invalid at {first} bytes but not at {n}"
                );
            }
        }
    }
});
