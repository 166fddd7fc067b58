//! Per-connection statistics: live counters, the registry of open tunnels,
//! and the one access-log record written when a tunnel ends.
//!
//! Owns: [`ConnStats`] (atomics the tunnel updates as bytes move, readable
//! live by anyone holding the registry), [`Registry`], and [`AccessRecord`].
//!
//! Must not: log per frame. The only log line per connection is written by
//! [`AccessRecord::emit`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Which end of a tunnel did something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
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

/// Counters of one direction of a tunnel.
#[derive(Debug, Default)]
pub struct DirectionCounters {
    /// Bytes read from the sender and written to the receiver.
    pub bytes: AtomicU64,
    /// WebSocket frames whose header has passed.
    pub frames: AtomicU64,
    /// Whole data messages that have passed.
    pub messages: AtomicU64,
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
}

impl DirectionCounters {
    /// Current values.
    pub fn totals(&self) -> DirectionTotals {
        DirectionTotals {
            bytes: self.bytes.load(Ordering::Relaxed),
            frames: self.frames.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
        }
    }
}

/// Process-wide origin for cheap monotonic timestamps in atomics.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since `epoch`, as stored in `last_activity_ms`.
pub fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The live state of one tunnel.
#[derive(Debug)]
pub struct ConnStats {
    /// Process-unique id, increasing.
    pub id: u64,
    /// Where it comes from and goes to.
    pub info: ConnInfo,
    /// Wall-clock start, for logs.
    pub started_at: SystemTime,
    /// Monotonic start, for durations.
    pub started: Instant,
    /// Client to backend.
    pub to_backend: DirectionCounters,
    /// Backend to client.
    pub to_client: DirectionCounters,
    /// Last time bytes moved either way, in [`now_ms`] units.
    pub last_activity_ms: AtomicU64,
    /// How the control path asks this tunnel to end with a Close frame.
    pub close: CloseControl,
}

/// Close code 1001 (Going Away): sent to every tunnel when wsgate shuts down.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// A request, from wsgate itself, that a tunnel end with a Close frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CloseOrder {
    /// Close code written to both sides.
    pub code: u16,
    /// UTF-8 reason, truncated to fit a control frame.
    pub reason: String,
}

/// The channel from the control path to one tunnel: a token that fires the
/// close, and the order saying which code to send. Cancelling the parent
/// token (drain) without an order means [`CLOSE_GOING_AWAY`].
#[derive(Debug)]
pub struct CloseControl {
    token: CancellationToken,
    order: OnceLock<CloseOrder>,
}

impl CloseControl {
    /// A control that also fires when `parent` is cancelled.
    pub fn new(parent: &CancellationToken) -> Self {
        Self {
            token: parent.child_token(),
            order: OnceLock::new(),
        }
    }

    /// Asks the tunnel to close with `order`; the first order wins. Returns
    /// whether this one was taken.
    pub fn request(&self, order: CloseOrder) -> bool {
        let taken = self.order.set(order).is_ok();
        self.token.cancel();
        taken
    }

    /// The order to carry out once the token fired.
    pub fn order(&self) -> CloseOrder {
        self.order.get().cloned().unwrap_or(CloseOrder {
            code: CLOSE_GOING_AWAY,
            reason: "going away".to_string(),
        })
    }

    /// Fires when a close is requested, directly or by drain.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl ConnStats {
    /// Time since the last byte moved.
    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(
            now_ms().saturating_sub(self.last_activity_ms.load(Ordering::Relaxed)),
        )
    }
}

/// The live tunnels, by id, and the feed of finished ones.
#[derive(Debug)]
pub struct Registry {
    next_id: AtomicU64,
    live: Mutex<BTreeMap<u64, Arc<ConnStats>>>,
    finished: broadcast::Sender<Arc<AccessRecord>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            next_id: AtomicU64::new(1),
            live: Mutex::new(BTreeMap::new()),
            // Subscribers that fall this far behind lose the oldest records, never block tunnels.
            finished: broadcast::channel(1024).0,
        }
    }
}

/// Everything known about a tunnel when it opens.
#[derive(Debug)]
pub struct ConnInfo {
    /// Client address.
    pub client: SocketAddr,
    /// Listener name.
    pub listener: Arc<str>,
    /// Route label.
    pub route: Arc<str>,
    /// Upstream name.
    pub upstream: Arc<str>,
    /// Backend address.
    pub backend: SocketAddr,
    /// The server object itself: drains match tunnels by identity, so a
    /// server removed and added again is not confused with its old self.
    pub server: Arc<crate::upstream::balancer::Server>,
    /// Forwarded path.
    pub path: String,
}

impl Registry {
    /// Registers a new tunnel; the returned guard removes it when dropped,
    /// so an entry never outlives its connection on any path.
    /// `drain` is the token whose cancellation asks every tunnel to close.
    pub fn open(self: &Arc<Self>, info: ConnInfo, drain: &CancellationToken) -> RegistryGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stats = Arc::new(ConnStats {
            id,
            info,
            started_at: SystemTime::now(),
            started: Instant::now(),
            to_backend: DirectionCounters::default(),
            to_client: DirectionCounters::default(),
            last_activity_ms: AtomicU64::new(now_ms()),
            close: CloseControl::new(drain),
        });
        self.lock().insert(id, stats.clone());
        RegistryGuard {
            registry: self.clone(),
            stats,
        }
    }

    /// Live tunnels, oldest first.
    pub fn live(&self) -> Vec<Arc<ConnStats>> {
        self.lock().values().cloned().collect()
    }

    /// Takes a tunnel out of the live set (its guard's drop is then a no-op).
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// The live tunnel with this id.
    pub fn get(&self, id: u64) -> Option<Arc<ConnStats>> {
        self.lock().get(&id).cloned()
    }

    /// How many tunnels are open.
    pub fn live_count(&self) -> usize {
        self.lock().len()
    }

    /// A feed of finished tunnels' records (for tests and, later, the admin API).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AccessRecord>> {
        self.finished.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<ConnStats>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keeps a tunnel in the registry for as long as it lives.
pub struct RegistryGuard {
    registry: Arc<Registry>,
    /// The tunnel's live stats.
    pub stats: Arc<ConnStats>,
}

impl RegistryGuard {
    /// Writes the access-log line and publishes the record. Call once, at the end.
    pub fn finish(&self, end: TunnelEnd) -> Arc<AccessRecord> {
        let s = &self.stats;
        let record = Arc::new(AccessRecord {
            id: s.id,
            client: s.info.client,
            listener: s.info.listener.to_string(),
            route: s.info.route.to_string(),
            upstream: s.info.upstream.to_string(),
            backend: s.info.backend,
            path: s.info.path.clone(),
            started: humantime::format_rfc3339_millis(s.started_at).to_string(),
            duration_ms: u64::try_from(s.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            to_backend: s.to_backend.totals(),
            to_client: s.to_client.totals(),
            closed_by: end.closed_by,
            close_code: end.close_code,
            close_frame_from: end.close_frame_from,
            reason: end.reason,
            proxy_close: end.proxy_close,
            detail: end.detail,
        });
        record.emit();
        let _ = self.registry.finished.send(record.clone());
        record
    }
}

impl Drop for RegistryGuard {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.stats.id);
    }
}

/// Why a tunnel ended: the access record's `reason` and the `reason` label
/// of `wsgate_tunnels_closed_total`. Who did it is `closed_by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
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
    /// One side finished and the other did not within `timeouts.half_close`.
    HalfCloseTimeout,
    /// A closing handshake wsgate started did not finish within `timeouts.close`.
    CloseTimeout,
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
            EndReason::HalfCloseTimeout => "half_close_timeout",
            EndReason::CloseTimeout => "close_timeout",
            EndReason::Shutdown => "shutdown",
            EndReason::NotStarted => "not_started",
            EndReason::Aborted => "aborted",
        }
    }
}

/// How a tunnel ended, as the tunnel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// RFC 3339 start time.
    pub started: String,
    /// Lifetime in milliseconds.
    pub duration_ms: u64,
    /// Client-to-backend totals.
    pub to_backend: DirectionTotals,
    /// Backend-to-client totals.
    pub to_client: DirectionTotals,
    /// Who stopped first.
    pub closed_by: Side,
    /// First Close frame's code; absent when no Close frame passed or it
    /// had no code.
    pub close_code: Option<u16>,
    /// Sender of that Close frame.
    pub close_frame_from: Option<Side>,
    /// Why it ended.
    pub reason: EndReason,
    /// The closing handshake wsgate started, if any: its code and reason.
    pub proxy_close: Option<CloseOrder>,
    /// The error behind `reason`, for people.
    pub detail: Option<String>,
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
            closed_by = self.closed_by.as_str(),
            // Absent, not a sentinel, when there was none: `None` records nothing.
            close_code = self.close_code,
            close_frame_from = self.close_frame_from.map(Side::as_str),
            reason = self.reason.as_str(),
            proxy_close_code = self.proxy_close.as_ref().map(|o| o.code),
            proxy_close_reason = self.proxy_close.as_ref().map(|o| o.reason.as_str()),
            error = self.detail.as_deref(),
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
