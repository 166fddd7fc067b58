//! Fuzz target: the config loader (`config::parse`), from TOML text to the
//! typed, validated `Config`.
//!
//! Input: any bytes, taken as the config file's text when UTF-8.
//!
//! Checked: the loader returns a `Config` or a typed `ConfigError`, never
//! panics, and an error's message can be written. The text is read as if
//! from a file in a directory that does not exist, so relative certificate
//! and token paths name nothing; texts naming device or process files are
//! skipped, since reading `/dev/zero` as a certificate is an operator's own
//! doing, not a parser bug, and would only stall the fuzzer.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    // TOML's \u escapes could spell those paths too.
    if ["dev", "proc", "sys", "\\u", "\\U"]
        .iter()
        .any(|s| text.contains(s))
    {
        return;
    }
    let path = Path::new("/nonexistent-wsgate-fuzz/wsgate.toml");
    match wsgate::config::parse(text, path) {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
