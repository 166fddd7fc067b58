//! Fuzz target: the RFC 6455 checks of a client's upgrade request
//! (`proxy::handshake`) and of a backend's 101 (`upstream::answer`).
//!
//! Input: text shaped like an HTTP head: a request line (`METHOD target
//! VERSION`), header lines `name: value`, an empty line, then the header
//! lines of the backend's 101. Lines the `http` crate would not accept are
//! skipped, as hyper would have refused them before wsgate saw them.
//!
//! Checked: nothing panics; a request classified as WebSocket whose checks
//! pass has a key whose accept value is 28 base64 characters; a 101 built
//! the way a correct backend would answer that request is accepted, and one
//! with a wrong accept value is refused; after stripping hop-by-hop headers
//! none of them is left.
#![no_main]

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use libfuzzer_sys::fuzz_target;
use wsgate::proxy::handshake::{
    accept_key, check_client_request, check_plain_request, classify, strip_hop_by_hop, RequestKind,
};
use wsgate::upstream::answer::check_backend_101;

fn header_line(line: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = HeaderName::from_bytes(&line[..colon]).ok()?;
    let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
    Some((name, value))
}

fn request(head: &[&[u8]]) -> Option<Request<()>> {
    let (first, fields) = head.split_first()?;
    let mut parts = first.split(|&b| b == b' ');
    let method = Method::from_bytes(parts.next()?).ok()?;
    let uri = http::Uri::try_from(parts.next()?).ok()?;
    let version = match parts.next() {
        Some(b"HTTP/1.0") => Version::HTTP_10,
        Some(b"HTTP/2") => Version::HTTP_2,
        _ => Version::HTTP_11,
    };
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .version(version)
        .body(())
        .ok()?;
    for (name, value) in fields.iter().filter_map(|l| header_line(l)) {
        req.headers_mut().append(name, value);
    }
    Some(req)
}

fn answer(lines: &[&[u8]]) -> Response<()> {
    let mut res = Response::new(());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in lines.iter().filter_map(|l| header_line(l)) {
        res.headers_mut().append(name, value);
    }
    res
}

/// The 101 a correct backend gives: no subprotocol, no extension.
fn correct_answer(accept: &str) -> Response<()> {
    let mut res = Response::new(());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

fuzz_target!(|input: &[u8]| {
    let lines: Vec<&[u8]> = input
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect();
    let split = lines
        .iter()
        .position(|l| l.is_empty())
        .unwrap_or(lines.len());
    let (head, rest) = lines.split_at(split);
    let Some(req) = request(head) else {
        return;
    };
    let _ = check_plain_request(&req);
    let kind = classify(&req);
    let checked = check_client_request(&req);
    if let Err(e) = &checked {
        // Every refusal answers with an error status (4xx, or 501 for CONNECT and TRACE).
        assert!(
            e.status().is_client_error() || e.status().is_server_error(),
            "{e:?}"
        );
        let _ = e.to_string();
    }
    if let (RequestKind::WebSocket, Ok(key)) = (kind, &checked) {
        let accept = accept_key(key.as_bytes());
        assert_eq!(accept.len(), 28, "accept value {accept:?}");
        assert_eq!(
            check_backend_101(&correct_answer(&accept), &accept, req.headers()),
            Ok(()),
            "a correct 101 refused"
        );
        let wrong = accept_key(b"another key");
        assert!(
            check_backend_101(&correct_answer(&wrong), &accept, req.headers()).is_err(),
            "a 101 with another key's accept value passed"
        );
        let res = answer(rest.get(1..).unwrap_or(&[]));
        if let Err(e) = check_backend_101(&res, &accept, req.headers()) {
            let _ = e.to_string();
        }
    }
    let mut headers = req.headers().clone();
    strip_hop_by_hop(&mut headers);
    for name in [
        "connection",
        "upgrade",
        "keep-alive",
        "te",
        "transfer-encoding",
    ] {
        assert!(!headers.contains_key(name), "{name} survived the strip");
    }
});
