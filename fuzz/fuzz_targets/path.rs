//! Fuzz target: the request-path normaliser (`proxy::routes::normalize_path`)
//! and the `Host` grammar (`proxy::host::parse_host`), the two values
//! routing compares.
//!
//! Input: any bytes, taken as a path (and as a Host value) when UTF-8.
//!
//! Checked for paths: a normalised path starts with `/`, has no `.` or `..`
//! segment, no backslash, control byte or encoded slash, backslash or NUL,
//! and normalising it again changes nothing. For hosts: the name returned
//! is one the grammar accepts again, lowercase, with no byte that could
//! smuggle another authority (`@`, `/`, `?`, `#`, `%`, whitespace).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::proxy::host::parse_host;
use wsgate::proxy::routes::normalize_path;

fn check_path(raw: &str) {
    let Ok(norm) = normalize_path(raw) else {
        return;
    };
    assert!(norm.starts_with('/'), "{raw:?} -> {norm:?}");
    for seg in norm[1..].split('/') {
        assert!(
            seg != "." && seg != "..",
            "dot segment left: {raw:?} -> {norm:?}"
        );
    }
    assert!(
        !norm.bytes().any(|b| b == b'\\' || b.is_ascii_control()),
        "{raw:?} -> {norm:?}"
    );
    let upper = norm.to_ascii_uppercase();
    for bad in ["%2F", "%5C", "%00"] {
        assert!(!upper.contains(bad), "{raw:?} -> {norm:?}");
    }
    assert_eq!(
        normalize_path(&norm).as_deref(),
        Ok(norm.as_str()),
        "normalising twice differs from once: {raw:?}"
    );
}

fn check_host(raw: &str) {
    let Ok(name) = parse_host(raw) else {
        return;
    };
    assert_eq!(name, name.to_ascii_lowercase(), "{raw:?} -> {name:?}");
    assert!(
        !name.bytes().any(
            |b| matches!(b, b'@' | b'/' | b'?' | b'#' | b'%' | b'\\' | b',' | b';')
                || b.is_ascii_whitespace()
                || b.is_ascii_control()
                || !b.is_ascii()
        ),
        "{raw:?} -> {name:?}"
    );
    assert!(parse_host(&name).is_ok(), "{raw:?} -> {name:?} is refused");
}

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    check_path(text);
    check_host(text);
});
