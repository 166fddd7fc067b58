//! Connecting to a backend and playing the client side of its handshake.
//!
//! Owns: TCP connect under `timeouts.connect`, retry on the next candidate
//! when (and only when) the connect fails, sending the upgrade request over
//! hyper's HTTP/1.1 client with upgrades, the `upstream_handshake`
//! deadline, verifying the 101, and recovering the raw socket from hyper.
//!
//! Must not: retry once a backend has answered, or open a tunnel on anything
//! but a verified 101.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Availability;
use crate::net::tls::{BackendStream, BackendTls, MaybeTls};
use crate::upstream::balancer::{ActiveGuard, Server};
use answer::{check_backend_101, BackendAnswerError};

pub mod answer;
pub mod availability;
pub mod balancer;
pub mod health;
pub mod passive;
pub mod pool;
pub mod slow_start;

/// Why no usable answer came from the upstream. Every variant is the backend's side.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connect failed (refused, unreachable).
    #[error("connect to {addr} failed: {source}")]
    Connect {
        /// Backend address.
        addr: SocketAddr,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The TCP connect did not finish within `timeouts.connect`.
    #[error("connect to {addr} timed out after {after:?}")]
    ConnectTimeout {
        /// Backend address.
        addr: SocketAddr,
        /// The configured deadline.
        after: Duration,
    },
    /// The TLS handshake with the backend failed (certificate, name, protocol).
    #[error("TLS with {addr} failed: {source}")]
    Tls {
        /// Backend address.
        addr: SocketAddr,
        /// What rustls said.
        #[source]
        source: std::io::Error,
    },
    /// HTTP-level failure talking to the backend (reset, malformed answer).
    #[error("HTTP exchange with {addr} failed: {source}")]
    Http {
        /// Backend address.
        addr: SocketAddr,
        /// What hyper said.
        #[source]
        source: hyper::Error,
    },
    /// No response headers within `timeouts.upstream_handshake`.
    #[error("{addr} did not answer the upgrade within {after:?}")]
    HandshakeTimeout {
        /// Backend address.
        addr: SocketAddr,
        /// The configured deadline.
        after: Duration,
    },
    /// A 101 that does not complete the client's handshake.
    #[error("{addr} answered an invalid 101: {source}")]
    BadAnswer {
        /// Backend address.
        addr: SocketAddr,
        /// The rule broken.
        #[source]
        source: BackendAnswerError,
    },
    /// A plain request failed: connect, TLS, or the exchange itself.
    #[error("request to {addr} failed: {}", chain(source))]
    Request {
        /// Backend address.
        addr: SocketAddr,
        /// What hyper-util's client said; a connect failure carries the
        /// [`UpstreamError`] that caused it.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// No response headers to a plain request within `timeouts.upstream_response`.
    #[error("{addr} did not answer within {after:?}")]
    ResponseTimeout {
        /// Backend address.
        addr: SocketAddr,
        /// The configured deadline.
        after: Duration,
    },
    /// A 101 to a request that asked for no upgrade (wsgate strips `Upgrade`
    /// from plain requests): a broken or hostile backend.
    #[error("{addr} switched protocols on a plain request")]
    UnexpectedUpgrade {
        /// Backend address.
        addr: SocketAddr,
    },
    /// A response whose length cannot be passed on faithfully:
    /// `Transfer-Encoding` other than `chunked`, or together with
    /// `Content-Length` (RFC 9112 section 6.3: a sign of response splitting).
    #[error("{addr} sent an ambiguous response framing: {framing}")]
    AmbiguousFraming {
        /// Backend address.
        addr: SocketAddr,
        /// The framing headers received.
        framing: String,
    },
    /// The upstream has no servers.
    #[error("upstream has no servers")]
    NoServers,
    /// Every server of the upstream is unusable (ejected, unhealthy or
    /// drained): refused at once, without trying any.
    #[error("no usable server in upstream {upstream}; retry after {}s", retry_after.as_secs())]
    Unavailable {
        /// The routed upstream.
        upstream: Arc<str>,
        /// What the client is told to wait (`Retry-After`).
        retry_after: Duration,
    },
}

/// Refuses a response whose length wsgate cannot pass on as the backend
/// meant it: hyper has decoded `chunked` and ignored a `Content-Length`
/// beside it, and would ignore any other coding. For every response a
/// client gets from a backend, plain or to a handshake.
///
/// # Errors
/// [`UpstreamError::AmbiguousFraming`].
pub fn check_framing(
    headers: &http::HeaderMap,
    addr: std::net::SocketAddr,
) -> Result<(), UpstreamError> {
    let codings: Vec<&[u8]> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let only_chunked =
        matches!(codings.as_slice(), [c] if c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
    if codings.is_empty() || (only_chunked && !headers.contains_key(header::CONTENT_LENGTH)) {
        return Ok(());
    }
    let framing = [header::TRANSFER_ENCODING, header::CONTENT_LENGTH]
        .iter()
        .flat_map(|n| {
            headers
                .get_all(n)
                .iter()
                .map(move |v| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes())))
        })
        .collect::<Vec<_>>()
        .join(", ");
    Err(UpstreamError::AmbiguousFraming { addr, framing })
}

/// An error and its causes, joined: hyper-util's own message is generic.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

impl UpstreamError {
    /// The status the client is answered with: 504 for deadlines, 502 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::ConnectTimeout { .. } | UpstreamError::HandshakeTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            UpstreamError::ResponseTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::NoServers | UpstreamError::Unavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            UpstreamError::Request { source, .. } => crate::upstream::pool::connect_error(source)
                .map_or(StatusCode::BAD_GATEWAY, UpstreamError::status),
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// The backend involved and a short fixed name for the failure, for
    /// folding repeated errors in the log.
    pub fn throttle_key(&self) -> String {
        match self.parts() {
            (Some(a), kind) => format!("{a} {kind}"),
            (None, kind) => kind,
        }
    }

    /// The backend at fault, when one is.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.parts().0
    }

    /// The backend at fault and a short name of the failure.
    fn parts(&self) -> (Option<SocketAddr>, String) {
        let (addr, kind) = match self {
            UpstreamError::Connect { addr, source } => {
                (Some(addr), format!("connect:{:?}", source.kind()))
            }
            UpstreamError::ConnectTimeout { addr, .. } => {
                (Some(addr), "connect-timeout".to_string())
            }
            UpstreamError::Http { addr, .. } => (Some(addr), "http".to_string()),
            UpstreamError::Tls { addr, .. } => (Some(addr), "tls".to_string()),
            UpstreamError::HandshakeTimeout { addr, .. } => {
                (Some(addr), "handshake-timeout".to_string())
            }
            UpstreamError::BadAnswer { addr, .. } => (Some(addr), "bad-101".to_string()),
            UpstreamError::Request { addr, source } => {
                match crate::upstream::pool::connect_error(source) {
                    Some(inner) => return inner.parts(),
                    None => (Some(addr), "http".to_string()),
                }
            }
            UpstreamError::ResponseTimeout { addr, .. } => {
                (Some(addr), "response-timeout".to_string())
            }
            UpstreamError::UnexpectedUpgrade { addr } => (Some(addr), "unexpected-101".to_string()),
            UpstreamError::AmbiguousFraming { addr, .. } => (Some(addr), "framing".to_string()),
            UpstreamError::NoServers => (None, "no-servers".to_string()),
            UpstreamError::Unavailable { upstream, .. } => {
                (None, format!("no-usable-server:{upstream}"))
            }
        };
        (addr.copied(), kind)
    }

    /// Whether this counts against the server in passive checks: it could
    /// not be reached, or broke or stalled the exchange. An answer does not
    /// count, whatever its status: a 4xx is about the request, and so is a
    /// 5xx as far as wsgate can tell (a client able to provoke one must not
    /// be able to eject servers); an active `http` check covers a server
    /// that answers 5xx to everything. Nor does a plain request's
    /// `upstream_response` timeout: a long poll may be slow by design.
    pub fn is_server_failure(&self) -> bool {
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::ConnectTimeout { .. }
            | UpstreamError::Tls { .. }
            | UpstreamError::Http { .. }
            | UpstreamError::HandshakeTimeout { .. }
            | UpstreamError::BadAnswer { .. } => true,
            UpstreamError::Request { source, .. } => {
                crate::upstream::pool::connect_error(source).is_none_or(Self::is_server_failure)
            }
            UpstreamError::ResponseTimeout { .. }
            | UpstreamError::UnexpectedUpgrade { .. }
            | UpstreamError::AmbiguousFraming { .. }
            | UpstreamError::NoServers
            | UpstreamError::Unavailable { .. } => false,
        }
    }

    /// `Retry-After` for the client, when there is one to give.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            UpstreamError::Unavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect { .. }
                | UpstreamError::ConnectTimeout { .. }
                | UpstreamError::Tls { .. }
        )
    }
}

/// What the backend answered.
pub enum Answer {
    /// A verified 101: the raw socket, bytes the backend sent after its 101, and its headers.
    Upgraded {
        /// The server that answered.
        server: Arc<Server>,
        /// Its count of this connection, to hold for the tunnel's life.
        active: ActiveGuard,
        /// The backend stream, recovered from hyper.
        stream: BackendStream,
        /// Bytes read past the 101, to be delivered to the client first.
        leftover: Bytes,
        /// The 101's headers, for the answer to the client.
        headers: HeaderMap,
    },
    /// Any other status: passed to the client as an ordinary HTTP response.
    Http {
        /// The server that answered.
        server: Arc<Server>,
        /// Its response, body still streaming.
        response: Response<Incoming>,
    },
}

/// Deadlines for one upstream exchange.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// TCP connect.
    pub connect: Duration,
    /// Request sent to response headers received.
    pub handshake: Duration,
}

/// One upgrade request to send, and what is needed to judge the answer.
pub struct Handshake<'a> {
    /// The request as the backend must see it.
    pub request: Request<Empty<Bytes>>,
    /// The `Sec-WebSocket-Accept` the client's key calls for.
    pub expected_accept: &'a str,
    /// The client's headers: the subprotocols and extensions it offered.
    pub offered: &'a HeaderMap,
    /// Deadlines for connect and answer.
    pub deadlines: Deadlines,
    /// Where the connection task is tracked.
    pub tasks: &'a TaskTracker,
    /// Ends the connection task at shutdown.
    pub shutdown: &'a CancellationToken,
    /// TLS to the backend, if the upstream asks for it.
    pub tls: Option<&'a BackendTls>,
    /// The upstream's passive-check settings, to count failures under.
    pub availability: &'a Availability,
    /// Written first on the connection (`send_proxy_protocol`); empty: nothing.
    pub preamble: &'a [u8],
}

/// Tells `server`'s passive checks how one attempt ended: `None` for an
/// answer, else the error, counted if it is the server's failure.
pub fn report_outcome(server: &Server, cfg: &Availability, error: Option<&UpstreamError>) {
    match error {
        None => server.report_success(),
        Some(e) if e.is_server_failure() => {
            server.report_failure(cfg, &e.to_string());
        }
        Some(_) => {}
    }
}

/// Sends the upgrade request to the first candidate that accepts a
/// connection, trying the next one only when a connect fails.
///
/// # Errors
/// The last [`UpstreamError`] met.
pub async fn open(candidates: &[Arc<Server>], hs: &Handshake<'_>) -> Result<Answer, UpstreamError> {
    let mut last = UpstreamError::NoServers;
    // The balancer bounds the list at retries + 1.
    for server in candidates {
        // Counted from the pick, not from the 101: concurrent handshakes
        // must see each other's load, or a burst lands on one server.
        let active = server.track();
        let stream = match connect(server, hs.deadlines.connect, hs.tls, hs.preamble).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(backend = %server.addr, error = %e, "backend connect failed");
                report_outcome(server, hs.availability, Some(&e));
                last = e;
                continue;
            }
        };
        let answer = exchange(server, stream, hs, active).await;
        report_outcome(server, hs.availability, answer.as_ref().err());
        return answer;
    }
    debug_assert!(last.is_connect_failure() || matches!(last, UpstreamError::NoServers));
    Err(last)
}

/// TCP connect, then `preamble` (a PROXY protocol header, or nothing),
/// then TLS if asked, all within `after`. The header goes before TLS: it
/// is read by whatever accepts the TCP connection.
pub(crate) async fn connect(
    server: &Server,
    after: Duration,
    tls: Option<&BackendTls>,
    preamble: &[u8],
) -> Result<BackendStream, UpstreamError> {
    let addr = server.addr;
    // One deadline for TCP and TLS together.
    let deadline = tokio::time::Instant::now() + after;
    let tcp = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Err(_) => return Err(UpstreamError::ConnectTimeout { addr, after }),
        Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
        Ok(Ok(s)) => s,
    };
    // Frames are small and latency-sensitive; Nagle would hold them back.
    let _ = tcp.set_nodelay(true);
    let mut tcp = tcp;
    if !preamble.is_empty() {
        use tokio::io::AsyncWriteExt;
        match tokio::time::timeout_at(deadline, tcp.write_all(preamble)).await {
            Err(_) => return Err(UpstreamError::ConnectTimeout { addr, after }),
            Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
            Ok(Ok(())) => {}
        }
    }
    let Some(tls) = tls else {
        return Ok(MaybeTls::Plain(tcp));
    };
    let name = tls.name_for(server.host.as_deref(), addr);
    match tokio::time::timeout_at(deadline, tls.connect(name, tcp)).await {
        Err(_) => Err(UpstreamError::ConnectTimeout { addr, after }),
        Ok(Err(source)) => Err(UpstreamError::Tls { addr, source }),
        Ok(Ok(s)) => Ok(MaybeTls::Tls(Box::new(s))),
    }
}

async fn exchange(
    server: &Arc<Server>,
    stream: BackendStream,
    hs: &Handshake<'_>,
    active: ActiveGuard,
) -> Result<Answer, UpstreamError> {
    let deadlines = hs.deadlines;
    let addr = server.addr;
    let http = |source| UpstreamError::Http { addr, source };
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(http)?;
    // The connection is driven here, beside the request, rather than by a
    // task of its own: a handshake that ends in a 101 then costs no task.
    // Only a non-101 answer, whose body is still to come, gets one.
    let mut conn = Driven::new(conn.with_upgrades());
    let response = match tokio::time::timeout(
        deadlines.handshake,
        conn.beside(sender.send_request(clone_request(&hs.request))),
    )
    .await
    {
        Err(_) => {
            return Err(UpstreamError::HandshakeTimeout {
                addr,
                after: deadlines.handshake,
            })
        }
        Ok(r) => r.map_err(http)?,
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The body goes on; the task ends with it, or at shutdown.
        if let Some(conn) = conn.rest() {
            let token = hs.shutdown.clone();
            hs.tasks.spawn(async move {
                tokio::select! {
                    _ = conn => {}
                    _ = token.cancelled() => {}
                }
            });
        }
        return Ok(Answer::Http {
            server: server.clone(),
            response,
        });
    }
    check_backend_101(&response, hs.expected_accept, hs.offered)
        .map_err(|source| UpstreamError::BadAnswer { addr, source })?;
    let headers = response.headers().clone();
    // hyper hands the stream over once its connection has seen the 101 through.
    let upgraded = conn
        .beside(hyper::upgrade::on(response))
        .await
        .map_err(http)?;
    let parts =
        upgraded
            .downcast::<TokioIo<BackendStream>>()
            .map_err(|_| UpstreamError::BadAnswer {
                addr,
                source: BackendAnswerError::Upgrade,
            })?;
    Ok(Answer::Upgraded {
        server: server.clone(),
        active,
        stream: parts.io.into_inner(),
        leftover: parts.read_buf,
        headers,
    })
}

/// A backend connection's future, polled beside what waits on it until it
/// completes (then never again: a finished future must not be polled).
struct Driven<C> {
    conn: Option<C>,
}

impl<C: std::future::Future<Output = hyper::Result<()>> + Unpin> Driven<C> {
    fn new(conn: C) -> Self {
        Self { conn: Some(conn) }
    }

    /// Awaits `f` while driving the connection. Once the connection has
    /// ended (upgraded, closed or failed), `f` is awaited alone: hyper has
    /// settled it by then, with its answer or its error.
    async fn beside<T>(&mut self, f: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(f);
        if let Some(conn) = self.conn.as_mut() {
            tokio::select! {
                biased;
                out = &mut f => return out,
                _ = conn => self.conn = None,
            }
        }
        f.await
    }

    /// The connection, if it has not ended yet.
    fn rest(self) -> Option<C> {
        self.conn
    }
}

fn clone_request(req: &Request<Empty<Bytes>>) -> Request<Empty<Bytes>> {
    let mut r = Request::new(Empty::new());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_failure() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let after = Duration::from_secs(1);
        assert_eq!(
            UpstreamError::HandshakeTimeout { addr, after }.status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            UpstreamError::ConnectTimeout { addr, after }.status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        let refused = UpstreamError::Connect {
            addr,
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
    }
}
