//! The backend's answer to an upgrade, judged by RFC 6455 section 4.1:
//! whether its 101 completes the client's handshake and may open a tunnel.
//!
//! Owns: [`check_backend_101`] and [`BackendAnswerError`], the accept key
//! both sides of a handshake compute, and the header-token helpers the
//! client-side rules in `proxy::handshake` share.
//!
//! Must not: do I/O. Pure functions over `http` types, unit-tested here.

use base64::Engine;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use sha1::{Digest, Sha1};

/// The GUID RFC 6455 appends to the client's key.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value for a client key (RFC 6455 section 4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Why a backend's answer cannot open a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendAnswerError {
    /// 101 without `Upgrade: websocket`.
    #[error("backend 101 lacks Upgrade: websocket")]
    Upgrade,
    /// 101 without `Connection: upgrade`.
    #[error("backend 101 lacks Connection: upgrade")]
    Connection,
    /// 101 whose `Sec-WebSocket-Accept` does not match the client's key.
    #[error("backend 101 has a wrong or missing Sec-WebSocket-Accept")]
    Accept,
    /// A subprotocol the client did not offer.
    #[error("backend chose subprotocol {0:?} the client did not offer")]
    Protocol(String),
    /// An extension the client did not offer.
    #[error("backend chose extension {0:?} the client did not offer")]
    Extension(String),
}

/// Checks that a backend's 101 completes the client's handshake.
///
/// # Errors
/// The first rule broken, as a [`BackendAnswerError`].
pub fn check_backend_101<B>(
    res: &Response<B>,
    expected_accept: &str,
    offered: &HeaderMap,
) -> Result<(), BackendAnswerError> {
    debug_assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    let h = res.headers();
    if !header_has_token(h, &header::UPGRADE, "websocket") {
        return Err(BackendAnswerError::Upgrade);
    }
    if !header_has_token(h, &header::CONNECTION, "upgrade") {
        return Err(BackendAnswerError::Connection);
    }
    match single(h, &header::SEC_WEBSOCKET_ACCEPT) {
        Some(v) if v.as_bytes() == expected_accept.as_bytes() => {}
        _ => return Err(BackendAnswerError::Accept),
    }
    // RFC 6455 4.2.2: the server selects one of the client's subprotocols.
    // Every value is checked, and more than one (in one line or several) is
    // no selection at all: the client would take whichever it reads first.
    if h.contains_key(header::SEC_WEBSOCKET_PROTOCOL) {
        let chosen: Vec<&str> = tokens(h, &header::SEC_WEBSOCKET_PROTOCOL).collect();
        match chosen.as_slice() {
            [p] if !p.is_empty()
                && header_has_token(offered, &header::SEC_WEBSOCKET_PROTOCOL, p) => {}
            _ => return Err(BackendAnswerError::Protocol(chosen.join(", "))),
        }
    }
    for name in extension_names(h) {
        if name.is_empty() {
            continue;
        }
        if !extension_names(offered).any(|o| o.eq_ignore_ascii_case(name)) {
            return Err(BackendAnswerError::Extension(name.to_string()));
        }
    }
    Ok(())
}
/// Whether any value of `name` holds `token` in its comma-separated list, case-insensitively.
pub fn header_has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// Every item of every value of a comma-separated header, trimmed (empty
/// items included). A value that is not visible ASCII counts as empty.
pub fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(str::trim)
}

/// Extension names of `Sec-WebSocket-Extensions`, without their parameters.
pub fn extension_names(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    tokens(headers, &header::SEC_WEBSOCKET_EXTENSIONS)
        .map(|item| item.split(';').next().unwrap_or("").trim())
}

/// The value of a header that must appear exactly once.
pub fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    all.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_example_accept_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn answer(headers: &[(&str, &str)]) -> Response<()> {
        let mut b = Response::builder().status(101);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn backend_101_is_checked() {
        let accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        let base = [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", accept),
        ];
        let mut offered = HeaderMap::new();
        offered.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("chat, superchat"),
        );
        offered.insert(
            "sec-websocket-extensions",
            HeaderValue::from_static("permessage-deflate; client_max_window_bits"),
        );
        assert_eq!(check_backend_101(&answer(&base), accept, &offered), Ok(()));
        let with = |extra: (&'static str, &'static str)| {
            let mut h = base.to_vec();
            h.push(extra);
            answer(&h)
        };
        assert_eq!(
            check_backend_101(&with(("sec-websocket-protocol", "chat")), accept, &offered),
            Ok(())
        );
        assert_eq!(
            check_backend_101(&with(("sec-websocket-protocol", "mqtt")), accept, &offered),
            Err(BackendAnswerError::Protocol("mqtt".into()))
        );
        // One value, but more than one subprotocol in it.
        assert_eq!(
            check_backend_101(
                &with(("sec-websocket-protocol", "chat, superchat")),
                accept,
                &offered
            ),
            Err(BackendAnswerError::Protocol("chat, superchat".into()))
        );
        assert_eq!(
            check_backend_101(&with(("sec-websocket-protocol", "")), accept, &offered),
            Err(BackendAnswerError::Protocol("".into()))
        );
        // Two lines: the second is checked too, and two is one too many.
        let mut two = base.to_vec();
        two.push(("sec-websocket-protocol", "chat"));
        two.push(("sec-websocket-protocol", "mqtt"));
        assert_eq!(
            check_backend_101(&answer(&two), accept, &offered),
            Err(BackendAnswerError::Protocol("chat, mqtt".into()))
        );
        let mut twice = base.to_vec();
        twice.push(("sec-websocket-protocol", "chat"));
        twice.push(("sec-websocket-protocol", "chat"));
        assert!(check_backend_101(&answer(&twice), accept, &offered).is_err());
        assert_eq!(
            check_backend_101(
                &with(("sec-websocket-extensions", "permessage-deflate")),
                accept,
                &offered
            ),
            Ok(())
        );
        assert_eq!(
            check_backend_101(
                &with(("sec-websocket-extensions", "x-zip")),
                accept,
                &offered
            ),
            Err(BackendAnswerError::Extension("x-zip".into()))
        );
        assert_eq!(
            check_backend_101(&answer(&base[1..]), accept, &offered),
            Err(BackendAnswerError::Upgrade)
        );
        assert_eq!(
            check_backend_101(&answer(&[base[0], base[2]]), accept, &offered),
            Err(BackendAnswerError::Connection)
        );
        assert_eq!(
            check_backend_101(&answer(&base[..2]), accept, &offered),
            Err(BackendAnswerError::Accept)
        );
        assert_eq!(
            check_backend_101(&answer(&base), "other", &offered),
            Err(BackendAnswerError::Accept)
        );
    }
}
