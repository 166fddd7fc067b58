//! Active health probes, one function per `health.kind`, and the verdict
//! they feed ([`threshold`]).
//!
//! Owns: one probe of one server, from connect (with the upstream's TLS,
//! through the same `connect` as traffic) to a typed result: the latency,
//! or a [`ProbeFailure`] saying what was seen. The whole probe is bounded
//! by `health.timeout`.
//!
//! Must not: schedule probes or change a server's state (the checker in
//! `control::health` does both), or keep anything between probes.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

pub use crate::config::{HealthCheck, HealthKind};
use crate::net::tls::{BackendStream, BackendTls};
use crate::upstream::answer::{accept_key, check_backend_101, BackendAnswerError};
use crate::upstream::balancer::Server;
use crate::upstream::UpstreamError;
use frames::{FrameError, OP_CLOSE, OP_PING, OP_PONG};

pub mod frames;
pub mod threshold;

/// What a probe was waiting for when its time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The TCP connect or the TLS handshake.
    Connect,
    /// The answer to the request.
    Answer,
    /// The pong to the ping.
    Pong,
}

/// Why a probe failed: what it saw, for the log line of a state change and
/// (through [`ProbeFailure::class`]) the metric.
#[derive(Debug, thiserror::Error)]
pub enum ProbeFailure {
    /// The TCP connect failed (refused, unreachable).
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    /// The TLS handshake failed (certificate, name, protocol).
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    /// `health.timeout` ran out.
    #[error("{} within {after:?}", match stage {
        Stage::Connect => "no connection",
        Stage::Answer => "no answer",
        Stage::Pong => "no pong to the ping",
    })]
    Timeout {
        /// What it was waiting for.
        stage: Stage,
        /// The configured timeout.
        after: Duration,
    },
    /// The HTTP exchange failed (reset, malformed answer).
    #[error("HTTP exchange failed: {0}")]
    Http(#[source] hyper::Error),
    /// Another status than the one expected (101 for `websocket`).
    #[error("answered {got}, expected {expected}")]
    Status {
        /// The status received.
        got: u16,
        /// The status the check asks for.
        expected: u16,
    },
    /// A 101 that does not complete the probe's handshake.
    #[error("{0}")]
    BadAnswer(#[source] BackendAnswerError),
    /// After the upgrade: a read or write failed, or a frame no server may send.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// The server sent Close before the pong.
    #[error("closed the WebSocket before the pong (code {})", code.map_or("none".to_string(), |c| c.to_string()))]
    Closed {
        /// Its close code, if it gave one.
        code: Option<u16>,
    },
    /// The request could not be built from the check's settings.
    #[error("cannot build the request: {0}")]
    Request(#[source] http::Error),
}

impl ProbeFailure {
    /// A short fixed name for the failure: the `result` label of
    /// `wsgate_health_checks_total`.
    /// Every value [`Self::class`] gives, and `ok`: the result labels of
    /// `wsgate_health_checks_total`.
    pub const RESULTS: [&'static str; 14] = [
        "ok",
        "refused",
        "connect",
        "tls",
        "connect_timeout",
        "timeout",
        "no_pong",
        "http",
        "status",
        "bad_accept",
        "bad_101",
        "closed",
        "protocol",
        "request",
    ];

    pub fn class(&self) -> &'static str {
        match self {
            ProbeFailure::Connect(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                "refused"
            }
            ProbeFailure::Connect(_) => "connect",
            ProbeFailure::Tls(_) => "tls",
            ProbeFailure::Timeout {
                stage: Stage::Connect,
                ..
            } => "connect_timeout",
            ProbeFailure::Timeout {
                stage: Stage::Answer,
                ..
            } => "timeout",
            ProbeFailure::Timeout {
                stage: Stage::Pong, ..
            } => "no_pong",
            ProbeFailure::Http(_) => "http",
            ProbeFailure::Status { .. } => "status",
            ProbeFailure::BadAnswer(BackendAnswerError::Accept) => "bad_accept",
            ProbeFailure::BadAnswer(_) => "bad_101",
            ProbeFailure::Frame(FrameError::Io(_)) | ProbeFailure::Closed { .. } => "closed",
            ProbeFailure::Frame(_) => "protocol",
            ProbeFailure::Request(_) => "request",
        }
    }
}

/// Probes `server` once as `check` says, with the upstream's TLS and
/// `preamble` first (a PROXY header naming no client, for an upstream with
/// `send_proxy_protocol`: its backends may require one); returns
/// the latency (to the connect, the answer, or the pong), or what failed.
///
/// # Errors
/// [`ProbeFailure`] saying what the probe saw.
pub async fn probe(
    server: &Server,
    check: &HealthCheck,
    tls: Option<&BackendTls>,
    preamble: &[u8],
) -> Result<Duration, ProbeFailure> {
    let started = Instant::now();
    let deadline = started + check.timeout;
    let mut stream = match crate::upstream::connect(server, check.timeout, tls, preamble).await {
        Ok(s) => s,
        Err(UpstreamError::Connect { source, .. }) => return Err(ProbeFailure::Connect(source)),
        Err(UpstreamError::Tls { source, .. }) => return Err(ProbeFailure::Tls(source)),
        Err(_) => {
            return Err(ProbeFailure::Timeout {
                stage: Stage::Connect,
                after: check.timeout,
            })
        }
    };
    match check.kind {
        HealthKind::Tcp => {
            let latency = started.elapsed();
            // A clean end (TLS close_notify), so the backend logs no error.
            let _ = tokio::time::timeout_at(deadline, stream.shutdown()).await;
            Ok(latency)
        }
        HealthKind::Http => {
            let request = request(server, check, false)?;
            let (response, _) =
                within(deadline, check, Stage::Answer, send(stream, request, false)).await??;
            let got = response.status().as_u16();
            if got != check.expect_status {
                return Err(ProbeFailure::Status {
                    got,
                    expected: check.expect_status,
                });
            }
            Ok(started.elapsed())
        }
        HealthKind::WebSocket => websocket(server, check, stream, started).await,
    }
}

/// Upgrade, ping, pong, Close 1000: the `websocket` probe after connect.
async fn websocket(
    server: &Server,
    check: &HealthCheck,
    stream: BackendStream,
    started: Instant,
) -> Result<Duration, ProbeFailure> {
    let deadline = started + check.timeout;
    let key = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        rand::random::<[u8; 16]>(),
    );
    let mut req = request(server, check, true)?;
    let h = req.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    h.insert(
        header::SEC_WEBSOCKET_KEY,
        HeaderValue::from_str(&key).map_err(|e| ProbeFailure::Request(e.into()))?,
    );
    let (response, upgraded) =
        within(deadline, check, Stage::Answer, send(stream, req, true)).await??;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(ProbeFailure::Status {
            got: response.status().as_u16(),
            expected: 101,
        });
    }
    // No subprotocol or extension was offered, so none may be chosen.
    check_backend_101(
        &response,
        &accept_key(key.as_bytes()),
        &http::HeaderMap::new(),
    )
    .map_err(ProbeFailure::BadAnswer)?;
    let Some(upgraded) = upgraded else {
        return Err(ProbeFailure::BadAnswer(BackendAnswerError::Upgrade));
    };
    let mut io = TokioIo::new(upgraded);
    within(deadline, check, Stage::Pong, ping_pong(&mut io)).await??;
    let latency = started.elapsed();
    // The check passed; the goodbye is a courtesy, bounded by the same deadline.
    let _ = tokio::time::timeout_at(deadline, close(&mut io)).await;
    Ok(latency)
}

/// Sends a masked ping with a random payload and reads until its pong,
/// skipping data frames and unrelated pongs and answering pings.
async fn ping_pong<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) -> Result<(), ProbeFailure> {
    let payload: [u8; 8] = rand::random();
    io.write_all(&frames::masked(OP_PING, &payload, rand::random()))
        .await
        .map_err(FrameError::from)?;
    loop {
        let h = frames::read_header(io).await?;
        match h.opcode {
            OP_PONG if frames::read_control(io, h).await? == payload => return Ok(()),
            OP_PONG => {}
            OP_PING => {
                let p = frames::read_control(io, h).await?;
                io.write_all(&frames::masked(OP_PONG, &p, rand::random()))
                    .await
                    .map_err(FrameError::from)?;
            }
            OP_CLOSE => {
                let p = frames::read_control(io, h).await?;
                let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                return Err(ProbeFailure::Closed { code });
            }
            _ => frames::skip(io, h).await?,
        }
    }
}

/// Sends Close 1000 and reads until the server's Close (or the end).
async fn close<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) -> Result<(), FrameError> {
    io.write_all(&frames::masked(
        OP_CLOSE,
        &frames::close_payload(1000),
        rand::random(),
    ))
    .await?;
    loop {
        let h = frames::read_header(io).await?;
        if h.opcode == OP_CLOSE {
            frames::read_control(io, h).await?;
            return Ok(io.shutdown().await?);
        }
        frames::skip(io, h).await?;
    }
}

/// `GET path` with the check's `Host`.
fn request(
    server: &Server,
    check: &HealthCheck,
    upgrade: bool,
) -> Result<Request<Empty<Bytes>>, ProbeFailure> {
    let host = match (&check.host, &server.host) {
        (Some(h), _) => h.clone(),
        (None, Some(name)) => format!("{name}:{}", server.addr.port()),
        (None, None) => server.addr.to_string(),
    };
    let mut b = Request::get(check.path.as_str())
        .header(header::HOST, host)
        .header(header::USER_AGENT, "wsgate-health-check");
    if !upgrade {
        // One request per connection: nothing is pooled between probes.
        b = b.header(header::CONNECTION, "close");
    }
    b.body(Empty::new()).map_err(ProbeFailure::Request)
}

/// Sends `request` over `stream` and returns the answer, polling the
/// connection alongside (no task outlives the probe); with `upgrade`, and
/// a 101, the upgraded stream too.
async fn send(
    stream: BackendStream,
    request: Request<Empty<Bytes>>,
    upgrade: bool,
) -> Result<(Response<Incoming>, Option<hyper::upgrade::Upgraded>), ProbeFailure> {
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(ProbeFailure::Http)?;
    let mut conn = std::pin::pin!(conn.with_upgrades());
    let mut sent = std::pin::pin!(sender.send_request(request));
    let mut conn_done = false;
    let mut response = tokio::select! {
        biased;
        r = &mut sent => r.map_err(ProbeFailure::Http)?,
        // With upgrades, the connection ends as it hands the 101 over,
        // possibly before the answer is picked up: it is waiting.
        r = &mut conn => {
            r.map_err(ProbeFailure::Http)?;
            conn_done = true;
            sent.await.map_err(ProbeFailure::Http)?
        }
    };
    if !upgrade || response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok((response, None));
    }
    let on = hyper::upgrade::on(&mut response);
    let upgraded = if conn_done {
        on.await
    } else {
        let (c, u) = tokio::join!(conn, on);
        c.map_err(ProbeFailure::Http)?;
        u
    };
    Ok((response, Some(upgraded.map_err(ProbeFailure::Http)?)))
}

/// `f` before `deadline`, or the timeout failure for `stage`.
async fn within<T>(
    deadline: Instant,
    check: &HealthCheck,
    stage: Stage,
    f: impl std::future::Future<Output = T>,
) -> Result<T, ProbeFailure> {
    tokio::time::timeout_at(deadline, f)
        .await
        .map_err(|_| ProbeFailure::Timeout {
            stage,
            after: check.timeout,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_say_what_was_seen_and_fall_into_few_classes() {
        let after = Duration::from_secs(2);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let cases: Vec<(ProbeFailure, &str, &str)> = vec![
            (ProbeFailure::Connect(refused), "refused", "connect failed"),
            (
                ProbeFailure::Connect(std::io::ErrorKind::HostUnreachable.into()),
                "connect",
                "connect failed",
            ),
            (
                ProbeFailure::Timeout {
                    stage: Stage::Connect,
                    after,
                },
                "connect_timeout",
                "no connection within 2s",
            ),
            (
                ProbeFailure::Timeout {
                    stage: Stage::Answer,
                    after,
                },
                "timeout",
                "no answer within 2s",
            ),
            (
                ProbeFailure::Timeout {
                    stage: Stage::Pong,
                    after,
                },
                "no_pong",
                "no pong to the ping within 2s",
            ),
            (
                ProbeFailure::Status {
                    got: 503,
                    expected: 200,
                },
                "status",
                "answered 503, expected 200",
            ),
            (
                ProbeFailure::BadAnswer(BackendAnswerError::Accept),
                "bad_accept",
                "wrong or missing Sec-WebSocket-Accept",
            ),
            (
                ProbeFailure::BadAnswer(BackendAnswerError::Connection),
                "bad_101",
                "lacks Connection: upgrade",
            ),
            (
                ProbeFailure::Closed { code: Some(1001) },
                "closed",
                "(code 1001)",
            ),
            (ProbeFailure::Closed { code: None }, "closed", "(code none)"),
            (
                ProbeFailure::Frame(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into())),
                "closed",
                "read failed",
            ),
            (
                ProbeFailure::Frame(FrameError::Masked),
                "protocol",
                "masked frame",
            ),
        ];
        for (failure, class, text) in cases {
            assert_eq!(failure.class(), class, "{failure:?}");
            assert!(failure.to_string().contains(text), "{failure}");
        }
    }

    #[test]
    fn the_host_is_the_checks_then_the_servers_name_then_its_address() {
        let addr: std::net::SocketAddr = "10.0.0.1:9001".parse().unwrap();
        let host = |check: &HealthCheck, server: &Server| {
            let r = request(server, check, false).expect("a request");
            r.headers()[header::HOST].to_str().unwrap().to_string()
        };
        let check = HealthCheck::default();
        let by_addr = Server::new(addr, 1);
        let by_name = Server::named(addr, 1, Some("chat.internal".into()));
        assert_eq!(host(&check, &by_addr), "10.0.0.1:9001");
        assert_eq!(host(&check, &by_name), "chat.internal:9001");
        let set = HealthCheck {
            host: Some("status.internal".into()),
            ..HealthCheck::default()
        };
        assert_eq!(host(&set, &by_name), "status.internal");
        let r = request(&by_addr, &check, false).expect("a request");
        assert_eq!(r.headers()[header::CONNECTION], "close");
        assert!(request(&by_addr, &check, true)
            .expect("a request")
            .headers()
            .get(header::CONNECTION)
            .is_none());
    }
}
