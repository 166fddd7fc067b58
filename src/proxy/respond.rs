//! The answers wsgate writes itself: a refusal's status and one-line
//! reason, and the client's 101 once the backend's has been verified.
//!
//! Owns: which headers those answers carry (`Connection: close` after a
//! malformed or stalled request, `Sec-WebSocket-Version` with a 426).
//!
//! Must not: decide whether to refuse; the phases in `proxy` do.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

use crate::proxy::handshake;
use crate::proxy::{ProxyBody, Refusal};

/// The client's 101: the backend's end-to-end headers (accept key,
/// subprotocol, extensions, cookies) with this hop's own Upgrade/Connection.
pub(crate) fn switching_protocols(mut headers: HeaderMap) -> Response<ProxyBody> {
    handshake::strip_hop_by_hop(&mut headers);
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let mut res = Response::new(empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *res.headers_mut() = headers;
    res
}

pub(crate) fn refuse(refusal: &Refusal) -> Response<ProxyBody> {
    let status = refusal.status();
    let reason = refusal.to_string();
    let mut res = Response::new(full(format!("{reason}\n")));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(after) = refusal.retry_after() {
        // Whole seconds (RFC 9110 10.2.3), at least 1.
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from(after.as_secs().max(1)),
        );
    }
    if status == StatusCode::UPGRADE_REQUIRED {
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
    }
    if matches!(
        status,
        StatusCode::BAD_REQUEST
            | StatusCode::REQUEST_TIMEOUT
            | StatusCode::PAYLOAD_TOO_LARGE
            // A client refused a CONNECT may already be sending what it
            // meant for the tunnel: none of it is a request.
            | StatusCode::NOT_IMPLEMENTED
    ) {
        // A client that sends malformed requests gets no second chance on
        // this connection, and after a stalled body nothing on it can be
        // trusted to be the start of a request.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn full(text: String) -> ProxyBody {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}
