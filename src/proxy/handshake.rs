//! RFC 6455 handshake rules for the client's Upgrade request (section
//! 4.2.1), plus hop-by-hop header rules. The backend's 101 is judged in
//! `upstream::answer`, where the upgrade is sent.
//!
//! Owns: deciding whether a request is a WebSocket handshake and whether it
//! is well-formed. [`HandshakeError`] owns its HTTP status.
//!
//! Must not: do I/O. Pure functions over `http` types, unit-tested here.

use base64::Engine;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};

pub use crate::upstream::answer::accept_key;
use crate::upstream::answer::{header_has_token, single, tokens};

/// How a request asks to be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// `Upgrade` names `websocket`: a WebSocket handshake, checked in full.
    WebSocket,
    /// Anything else, including `Upgrade: h2c` or other tokens: plain HTTP,
    /// whose `Upgrade` is never forwarded nor honoured.
    Plain,
}

/// Classifies a request by its `Upgrade` header.
pub fn classify<B>(req: &Request<B>) -> RequestKind {
    if header_has_token(req.headers(), &header::UPGRADE, "websocket") {
        RequestKind::WebSocket
    } else {
        RequestKind::Plain
    }
}

/// Why the client's handshake was refused, or a request could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// RFC 6455 requires GET.
    #[error("WebSocket handshake must use GET, not {0}")]
    Method(Method),
    /// CONNECT or TRACE, which wsgate serves on no resource: CONNECT would
    /// turn the connection into a tunnel to wherever the backend says,
    /// TRACE would echo this hop's headers back. 501 (RFC 9110 15.6.2)
    /// rather than 405, whose `Allow` would have to list every other
    /// method, extension methods included, that wsgate passes on.
    #[error("method {0} is not supported by this proxy")]
    MethodNotSupported(Method),
    /// RFC 6455 requires HTTP/1.1.
    #[error("WebSocket handshake must use HTTP/1.1")]
    Version,
    /// No Host header, or more than one.
    #[error("exactly one Host header is required")]
    Host,
    /// A Host that is not a host name or address with an optional port.
    #[error("{0}")]
    BadHost(#[from] crate::proxy::host::HostError),
    /// `Connection` lacks the `upgrade` token.
    #[error("Connection header must contain the upgrade token")]
    Connection,
    /// `Connection` names a header the handshake needs end to end (Host,
    /// `Sec-WebSocket-*`): honouring it would strip that header on the way
    /// to the backend.
    #[error("Connection header names {0}, which must reach the backend")]
    ConnectionNamesEndToEnd(String),
    /// `Sec-WebSocket-Key` missing, repeated, or not 16 bytes of base64.
    #[error("Sec-WebSocket-Key must be one base64 value of 16 bytes")]
    Key,
    /// `Sec-WebSocket-Version` missing or repeated.
    #[error("Sec-WebSocket-Version header is required")]
    VersionMissing,
    /// A version other than 13: answered 426 with the supported version.
    #[error("unsupported Sec-WebSocket-Version {0:?}; this proxy speaks 13")]
    UnsupportedVersion(String),
    /// A handshake carrying a body: its bytes would reach the tunnel unparsed.
    #[error("WebSocket handshake must not carry a body")]
    Body,
    /// The path is ambiguous or climbs above the root.
    #[error("{0}")]
    Path(#[from] crate::proxy::routes::PathError),
    /// On a TLS listener, a Host the certificate chosen by the client's SNI
    /// does not cover.
    #[error("host {0:?} is not served by the certificate this connection's SNI chose")]
    Misdirected(String),
    /// No route for this host and path.
    #[error("no route for this host and path")]
    NoRoute,
    /// A request body larger than `limits.max_request_body`.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    /// The client paused in its request body for longer than `timeouts.client_body`.
    #[error("request body stalled")]
    BodyTimeout,
    /// The route's `allowed_origins` refuse the handshake's Origin.
    #[error("{0}")]
    Origin(#[from] crate::config::origin::OriginRefusal),
    /// The client's body could not be read (bad chunked framing, reset).
    #[error("request body unreadable: {0}")]
    BadBody(String),
}

impl HandshakeError {
    /// The status the client is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeError::UnsupportedVersion(_) => StatusCode::UPGRADE_REQUIRED,
            HandshakeError::NoRoute => StatusCode::NOT_FOUND,
            HandshakeError::Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            HandshakeError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            HandshakeError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HandshakeError::MethodNotSupported(_) => StatusCode::NOT_IMPLEMENTED,
            HandshakeError::Origin(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Checks what a plain request needs beyond what hyper and the framing
/// guard check: one Host on HTTP/1.1 (RFC 9112 section 3.2), at most one
/// on HTTP/1.0.
///
/// # Errors
/// [`HandshakeError::Host`].
pub fn check_plain_request<B>(req: &Request<B>) -> Result<(), HandshakeError> {
    let hosts = req.headers().get_all(header::HOST).iter().count();
    match (req.version(), hosts) {
        (_, 2..) | (Version::HTTP_11, 0) => Err(HandshakeError::Host),
        _ => Ok(()),
    }
}

/// Checks a WebSocket handshake request per RFC 6455 section 4.2.1 and
/// returns its key.
///
/// # Errors
/// The first rule broken, as a [`HandshakeError`].
pub fn check_client_request<B>(req: &Request<B>) -> Result<HeaderValue, HandshakeError> {
    if req.method() != Method::GET {
        return Err(HandshakeError::Method(req.method().clone()));
    }
    if req.version() != Version::HTTP_11 {
        return Err(HandshakeError::Version);
    }
    let h = req.headers();
    if h.get_all(header::HOST).iter().count() != 1 {
        return Err(HandshakeError::Host);
    }
    if !header_has_token(h, &header::CONNECTION, "upgrade") {
        return Err(HandshakeError::Connection);
    }
    let named = tokens(h, &header::CONNECTION).find(|t| {
        t.eq_ignore_ascii_case("host") || t.to_ascii_lowercase().starts_with("sec-websocket-")
    });
    if let Some(t) = named {
        return Err(HandshakeError::ConnectionNamesEndToEnd(t.to_string()));
    }
    let has_body = h.contains_key(header::TRANSFER_ENCODING)
        || h.get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0");
    if has_body {
        return Err(HandshakeError::Body);
    }
    let key = single(h, &header::SEC_WEBSOCKET_KEY).ok_or(HandshakeError::Key)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes())
        .map_err(|_| HandshakeError::Key)?;
    if decoded.len() != 16 {
        return Err(HandshakeError::Key);
    }
    let version =
        single(h, &header::SEC_WEBSOCKET_VERSION).ok_or(HandshakeError::VersionMissing)?;
    if version.as_bytes() != b"13" {
        return Err(HandshakeError::UnsupportedVersion(
            String::from_utf8_lossy(version.as_bytes()).into_owned(),
        ));
    }
    Ok(key.clone())
}

/// Headers meaningful for one hop only (RFC 9110 section 7.6.1), never
/// forwarded. `Trailer` is not among them (RFC 9110 section 6.6.2): it is
/// end to end, and hyper writes a chunked message's trailer fields only
/// when it names them, so keeping it is what passes trailers on.
/// Names made once: a `&str` is parsed again on every removal.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    // The h2c upgrade's settings are for this hop's connection only (RFC
    // 7540 section 3.2.1), and this hop never takes the h2c upgrade.
    HeaderName::from_static("http2-settings"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers and every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // `Connection: Upgrade` (or `keep-alive`) names only what goes anyway:
    // then nothing is collected, and nothing allocated.
    let named: Vec<HeaderName> = tokens(headers, &header::CONNECTION)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| !HOP_BY_HOP.contains(n))
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> http::request::Builder {
        Request::builder()
            .uri("/ws")
            .header("host", "example.com")
            .header("upgrade", "websocket")
            .header("connection", "keep-alive, Upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
    }

    #[test]
    fn good_request_passes() {
        let req = good().body(()).unwrap();
        assert_eq!(classify(&req), RequestKind::WebSocket);
        assert_eq!(
            check_client_request(&req).unwrap(),
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
    }

    #[test]
    fn each_broken_rule_is_named() {
        let cases: Vec<(http::request::Builder, HandshakeError)> = vec![
            (good().method("POST"), HandshakeError::Method(Method::POST)),
            (good().version(Version::HTTP_10), HandshakeError::Version),
            (good().header("host", "b"), HandshakeError::Host),
            (
                good()
                    .header("connection", "close")
                    .header("connection", "x"),
                HandshakeError::Connection,
            ),
            (
                good().header("sec-websocket-key", "AAAAAAAAAAAAAAAAAAAAAA=="),
                HandshakeError::Key,
            ),
            (
                good().header("sec-websocket-version", "13"),
                HandshakeError::VersionMissing,
            ),
            (good().header("content-length", "5"), HandshakeError::Body),
            (
                good().header("transfer-encoding", "chunked"),
                HandshakeError::Body,
            ),
        ];
        for (builder, want) in cases {
            let mut req = builder.body(()).unwrap();
            if want == HandshakeError::Connection {
                req.headers_mut().remove("connection");
                req.headers_mut()
                    .insert("connection", HeaderValue::from_static("keep-alive"));
            }
            assert_eq!(check_client_request(&req), Err(want.clone()), "{want}");
        }
        for named in [
            "Upgrade, Host",
            "upgrade, sec-websocket-key",
            "Upgrade, Sec-WebSocket-Protocol",
        ] {
            let mut req = good().body(()).unwrap();
            req.headers_mut()
                .insert("connection", HeaderValue::from_static(named));
            let err = check_client_request(&req).unwrap_err();
            assert!(
                matches!(err, HandshakeError::ConnectionNamesEndToEnd(_)),
                "{named}: {err}"
            );
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
        let mut req = good().body(()).unwrap();
        req.headers_mut()
            .insert("sec-websocket-key", HeaderValue::from_static("c2hvcnQ="));
        assert_eq!(check_client_request(&req), Err(HandshakeError::Key));
        req.headers_mut().insert(
            "sec-websocket-key",
            HeaderValue::from_static("not base64!!"),
        );
        assert_eq!(check_client_request(&req), Err(HandshakeError::Key));
        let mut req = good().body(()).unwrap();
        req.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("8"));
        let err = check_client_request(&req).unwrap_err();
        assert_eq!(err.status(), StatusCode::UPGRADE_REQUIRED);
        req.headers_mut().remove("sec-websocket-version");
        assert_eq!(
            check_client_request(&req),
            Err(HandshakeError::VersionMissing)
        );
    }

    #[test]
    fn other_upgrades_are_plain() {
        let req = Request::builder()
            .header("upgrade", "h2c")
            .body(())
            .unwrap();
        assert_eq!(classify(&req), RequestKind::Plain);
        let req = Request::builder()
            .header("upgrade", "h2c, WebSocket")
            .body(())
            .unwrap();
        assert_eq!(classify(&req), RequestKind::WebSocket);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("upgrade, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("5"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }
}
