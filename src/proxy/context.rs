//! What one client connection carries through its requests, and the one
//! error type of the request lifecycle.
//!
//! Owns: [`ConnContext`] (made by the listener for each connection),
//! [`Refusal`] (why a request was answered by wsgate itself, and by whom it
//! was caused) and the response body type.
//!
//! Must not: decide anything about a request; the phases in `proxy` do.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::StatusCode;
use http_body_util::combinators::BoxBody;

use crate::net::guard::Scanner;
use crate::observe::access::Side;
use crate::proxy::forwarded;
use crate::proxy::handshake::HandshakeError;
use crate::proxy::routes::ListenerSettings;
use crate::upstream::UpstreamError;
use crate::Shared;

/// Body of every response wsgate sends to a client.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// What one client connection knows about itself.
pub struct ConnContext {
    /// Process-wide state.
    pub shared: Arc<Shared>,
    /// The listener that accepted it.
    pub listener: Arc<ListenerSettings>,
    /// The client's socket address: the TCP peer's, or on a
    /// `proxy_protocol` listener the one its PROXY header carries.
    pub peer: SocketAddr,
    /// The address the client connected to (the PROXY header's
    /// destination when there is one): what a PROXY header sent to a
    /// backend names as the destination.
    pub local: SocketAddr,
    /// The certificate the client's SNI named, if it named one: a request
    /// for a host that certificate does not cover is misdirected (421).
    pub sni_cert: Option<usize>,
    /// Requests being served on this connection right now (0 or 1 with
    /// HTTP/1.1): a drain closes a connection at once when it is 0.
    pub in_flight: AtomicUsize,
    /// The framing guard over this connection's bytes (see framing.rs).
    pub scanner: Arc<Mutex<Scanner>>,
    /// Cancelled to close this connection at once, whatever it is doing:
    /// a client that took no bytes of a response for `timeouts.client_write`
    /// (hyper waits on its socket then, and never asks the body again).
    pub abort: tokio_util::sync::CancellationToken,
}

impl ConnContext {
    /// Sets this hop's forwarding headers on a request bound for a backend
    /// (see `forwarded::set_forwarding_headers`), for upgrades and plain
    /// requests alike.
    pub fn set_forwarding_headers(&self, headers: &mut HeaderMap, host: Option<&HeaderValue>) {
        let peer = self.peer.ip();
        let tls = self.listener.tls.is_some();
        forwarded::set_forwarding_headers(headers, peer, self.listener.trusts(peer), tls, host);
    }

    /// The connection's framing guard.
    pub fn scanner(&self) -> std::sync::MutexGuard<'_, Scanner> {
        // Plain state with no invariant a panic could break.
        self.scanner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counts one request in flight until dropped, on every path.
pub(crate) struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    pub(crate) fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Self(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a request was answered without a tunnel.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(transparent)]
    Client(#[from] HandshakeError),
    #[error(transparent)]
    Backend(#[from] UpstreamError),
}

impl Refusal {
    /// The status the client is answered with.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Refusal::Client(e) => e.status(),
            Refusal::Backend(e) => e.status(),
        }
    }

    /// How long the client should wait before trying again, when known.
    pub(crate) fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Refusal::Client(_) => None,
            Refusal::Backend(e) => e.retry_after(),
        }
    }

    /// Who caused it. A request for a host or path no route serves is the
    /// client's: it asked for something this proxy does not offer (a 404,
    /// as every web server counts it).
    pub(crate) fn side(&self) -> Side {
        match self {
            Refusal::Client(_) => Side::Client,
            Refusal::Backend(_) => Side::Backend,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_side_that_caused_it() {
        // No route: the client asked for what this proxy does not serve.
        assert_eq!(Refusal::from(HandshakeError::NoRoute).side(), Side::Client);
        assert_eq!(
            Refusal::from(HandshakeError::NoRoute).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            Refusal::from(UpstreamError::NoServers).side(),
            Side::Backend
        );
    }
}
