//! What a connection leaves behind: the one access record written when it
//! ends, and the words it is written in (sides, close orders, reasons).
//!
//! Owns: [`AccessRecord`] (a tunnel's), [`RequestRecord`] (any request
//! answered without a tunnel), [`EndReason`] and [`TunnelEnd`], and the
//! fixed field names of both access lines.
//!
//! Must not: log anything but these lines, one per connection or request.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Serialize, Serializer};

/// Which end of a tunnel did something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The WebSocket client.
    Client,
    /// The backend server.
    Backend,
    /// wsgate itself (shutdown, timeout, protocol error).
    Proxy,
}

impl Side {
    /// Lowercase name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Backend => "backend",
            Side::Proxy => "proxy",
        }
    }
}

/// JSON says what the log line says: one spelling, in `as_str`.
impl Serialize for Side {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A snapshot of [`DirectionCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DirectionTotals {
    /// Bytes.
    pub bytes: u64,
    /// Frames.
    pub frames: u64,
    /// Messages.
    pub messages: u64,
    /// Frames sent after the sender's own Close, discarded (RFC 6455 5.5.1).
    pub discarded_frames: u64,
}

/// A request, from wsgate itself, that a tunnel end with a Close frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CloseOrder {
    /// Close code written to both sides.
    pub code: u16,
    /// UTF-8 reason, truncated to fit a control frame.
    pub reason: String,
}

/// Why a tunnel ended: the access record's `reason` and the `reason` label
/// of `wsgate_tunnels_closed_total`. Who did it is `closed_by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// Both sides finished (closing handshake, EOF) and nothing failed.
    Closed,
    /// wsgate started the closing handshake (drain, shutdown, an operator)
    /// and it finished; the order is in `proxy_close`.
    ProxyClose,
    /// Reading from `closed_by` failed (reset, TLS error).
    ReadError,
    /// Writing to `closed_by` failed.
    WriteError,
    /// `closed_by` broke RFC 6455 framing.
    ProtocolError,
    /// `closed_by` sent a frame or message over the route's
    /// `max_frame_bytes` or `max_message_bytes`.
    TooBig,
    /// `closed_by` (the client) began messages faster than the route's
    /// `messages_per_second` and `burst` allow.
    RateLimited,
    /// `closed_by` took none of the bytes written to it for the route's
    /// `write_stall_timeout`.
    WriteStall,
    /// One side finished and the other did not within `timeouts.half_close`.
    HalfCloseTimeout,
    /// A closing handshake (wsgate's or a peer's) did not finish within
    /// `timeouts.close`; after a peer's Close, `closed_by` is the side that
    /// never answered.
    CloseTimeout,
    /// No bytes relayed either way for the route's `idle_timeout`: wsgate
    /// closed both sides with 1001.
    IdleTimeout,
    /// The client did not answer wsgate's ping within the route's
    /// `ping_timeout`: the backend got 1001, the client's connection was cut.
    PingTimeout,
    /// The tunnel reached the route's `max_connection_age` (with jitter):
    /// wsgate closed both sides with 1001.
    MaxAge,
    /// Cut by a hard shutdown.
    Shutdown,
    /// The client's connection never reached the tunnel (it left between
    /// the 101 and hyper's hand-over).
    NotStarted,
    /// The tunnel task ended without reporting (a panic, or dropped at exit).
    Aborted,
}

impl EndReason {
    /// The label in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Closed => "closed",
            EndReason::ProxyClose => "proxy_close",
            EndReason::ReadError => "read_error",
            EndReason::WriteError => "write_error",
            EndReason::ProtocolError => "protocol_error",
            EndReason::TooBig => "too_big",
            EndReason::RateLimited => "rate_limited",
            EndReason::WriteStall => "write_stall",
            EndReason::HalfCloseTimeout => "half_close_timeout",
            EndReason::CloseTimeout => "close_timeout",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::PingTimeout => "ping_timeout",
            EndReason::MaxAge => "max_age",
            EndReason::Shutdown => "shutdown",
            EndReason::NotStarted => "not_started",
            EndReason::Aborted => "aborted",
        }
    }
}

/// JSON says what the log line and the metric label say: one spelling, in
/// `as_str`.
impl Serialize for EndReason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// How a tunnel ended, as the tunnel reports it; the access record carries
/// it whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TunnelEnd {
    /// The side that stopped first: sent EOF, errored, or (proxy) was cut.
    pub closed_by: Side,
    /// Code of the first Close frame that passed, if it had one.
    pub close_code: Option<u16>,
    /// Who sent that Close frame.
    pub close_frame_from: Option<Side>,
    /// Why it ended.
    pub reason: EndReason,
    /// The closing handshake wsgate started, if it started one.
    pub proxy_close: Option<CloseOrder>,
    /// The error behind `reason`, for people (not parsed by anything).
    pub detail: Option<String>,
}

impl TunnelEnd {
    /// An end with no Close frame seen and no order given.
    pub fn bare(closed_by: Side, reason: EndReason, detail: Option<String>) -> Self {
        Self {
            closed_by,
            close_code: None,
            close_frame_from: None,
            reason,
            proxy_close: None,
            detail,
        }
    }
}

fn as_display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// The access-log record of one tunnel, with fixed field names.
#[derive(Debug, Clone, Serialize)]
pub struct AccessRecord {
    /// Connection id.
    pub id: u64,
    /// Client address.
    pub client: SocketAddr,
    /// Listener name.
    pub listener: String,
    /// Route label.
    pub route: String,
    /// Upstream name.
    pub upstream: String,
    /// Backend address.
    pub backend: SocketAddr,
    /// Forwarded path.
    pub path: String,
    /// Start time, written in RFC 3339 with milliseconds. Kept as the
    /// time and formatted only when the record is logged or serialized:
    /// with the access log off, a tunnel's end formats nothing.
    #[serde(serialize_with = "as_display")]
    pub started: humantime::Rfc3339Timestamp,
    /// Lifetime in milliseconds.
    pub duration_ms: u64,
    /// Client-to-backend totals.
    pub to_backend: DirectionTotals,
    /// Backend-to-client totals.
    pub to_client: DirectionTotals,
    /// How it ended (flattened into the record's JSON).
    #[serde(flatten)]
    pub end: TunnelEnd,
}

impl AccessRecord {
    /// The one log line of this connection, on target `wsgate::access`.
    pub fn emit(&self) {
        tracing::info!(
            target: "wsgate::access",
            id = self.id,
            client = %self.client,
            listener = %self.listener,
            route = %self.route,
            upstream = %self.upstream,
            backend = %self.backend,
            path = %self.path,
            started = %self.started,
            duration_ms = self.duration_ms,
            bytes_to_backend = self.to_backend.bytes,
            bytes_to_client = self.to_client.bytes,
            frames_to_backend = self.to_backend.frames,
            frames_to_client = self.to_client.frames,
            messages_to_backend = self.to_backend.messages,
            messages_to_client = self.to_client.messages,
            discarded_frames_to_backend = self.to_backend.discarded_frames,
            discarded_frames_to_client = self.to_client.discarded_frames,
            closed_by = self.end.closed_by.as_str(),
            // Absent, not a sentinel, when there was none: `None` records nothing.
            close_code = self.end.close_code,
            close_frame_from = self.end.close_frame_from.map(Side::as_str),
            reason = self.end.reason.as_str(),
            proxy_close_code = self.end.proxy_close.as_ref().map(|o| o.code),
            proxy_close_reason = self.end.proxy_close.as_ref().map(|o| o.reason.as_str()),
            error = self.end.detail.as_deref(),
            "websocket closed"
        );
    }
}

/// One plain HTTP request, or any request answered without a tunnel: what
/// its access line says.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// The real client (see `proxy::forwarded::real_client`).
    pub client: SocketAddr,
    /// Listener name.
    pub listener: Arc<str>,
    /// Request method.
    pub method: http::Method,
    /// Request target as received.
    pub path: String,
    /// Route label, once routed.
    pub route: Option<Arc<str>>,
    /// Upstream name, once routed.
    pub upstream: Option<Arc<str>>,
    /// The server that answered, or the last one tried.
    pub backend: Option<SocketAddr>,
    /// When the request's head was read.
    pub started: std::time::Instant,
    /// Body bytes that reached a backend, for a request refused after some
    /// of its body had left (a streamed answer counts its own).
    pub sent: u64,
}

impl RequestRecord {
    /// The request's one log line, on target `wsgate::access`.
    pub fn emit(&self, status: u16, bytes_to_backend: u64, bytes_to_client: u64, reason: &str) {
        tracing::info!(
            target: "wsgate::access",
            client = %self.client,
            listener = %self.listener,
            route = self.route.as_deref().unwrap_or("-"),
            upstream = self.upstream.as_deref().unwrap_or("-"),
            backend = self.backend.map_or_else(|| "-".to_string(), |b| b.to_string()),
            method = %self.method,
            path = %self.path,
            status,
            duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            bytes_to_backend,
            bytes_to_client,
            reason,
            "http request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_spells_sides_and_reasons_as_the_log_line_does() {
        for side in [Side::Client, Side::Backend, Side::Proxy] {
            assert_eq!(serde_json::to_value(side).unwrap(), side.as_str());
        }
        assert_eq!(
            serde_json::to_value(EndReason::HalfCloseTimeout).unwrap(),
            "half_close_timeout"
        );
        assert_eq!(serde_json::to_value(Side::Backend).unwrap(), "backend");
    }
}
