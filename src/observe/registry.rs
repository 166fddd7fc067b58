//! The live tunnels: their counters, the handle that closes them, and the
//! registry that lists them until they end.
//!
//! Owns: [`ConnStats`] (atomics the tunnel updates as bytes move, readable
//! live by anyone holding the registry), [`CloseControl`], [`Registry`] and
//! its [`RegistryGuard`], which turns a tunnel's end into its one
//! [`AccessRecord`] (see `access.rs`).
//!
//! Must not: log per frame.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::observe::access::{AccessRecord, CloseOrder, DirectionTotals, TunnelEnd};

/// Counters of one direction of a tunnel.
#[derive(Debug, Default)]
pub struct DirectionCounters {
    /// Bytes read from the sender and written to the receiver.
    pub bytes: AtomicU64,
    /// WebSocket frames whose header has passed.
    pub frames: AtomicU64,
    /// Whole data messages that have passed.
    pub messages: AtomicU64,
    /// Frames the sender began after its own Close: discarded, not passed.
    pub discarded_frames: AtomicU64,
}

impl DirectionCounters {
    /// Current values.
    pub fn totals(&self) -> DirectionTotals {
        DirectionTotals {
            bytes: self.bytes.load(Ordering::Relaxed),
            frames: self.frames.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
            discarded_frames: self.discarded_frames.load(Ordering::Relaxed),
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

    /// Asks the tunnel to close with `order`; the first order wins, and a
    /// drain or shutdown that already fired the token is an order too
    /// ([`CLOSE_GOING_AWAY`]). Returns whether this one was taken.
    pub fn request(&self, order: CloseOrder) -> bool {
        // The tunnel may already be closing with the drain's code: setting
        // an order now could change the code it sends, or be ignored.
        if self.token.is_cancelled() {
            return false;
        }
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

    /// What `/api/connections` and the dashboard both show of this tunnel;
    /// each adds its own time fields.
    pub fn summary(&self) -> ConnSummary {
        ConnSummary {
            id: self.id,
            client: self.info.client,
            listener: self.info.listener.to_string(),
            route: self.info.route.to_string(),
            upstream: self.info.upstream.to_string(),
            server: self.info.backend,
            path: self.info.path.clone(),
            to_backend: self.to_backend.totals(),
            to_client: self.to_client.totals(),
        }
    }
}

/// A live tunnel as the admin API and the dashboard show it (see
/// [`ConnStats::summary`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConnSummary {
    /// Registry id, as in `/api/connections/{id}`.
    pub id: u64,
    /// The client's address.
    pub client: SocketAddr,
    /// Listener name.
    pub listener: String,
    /// Route label.
    pub route: String,
    /// Upstream name.
    pub upstream: String,
    /// The server it landed on.
    pub server: SocketAddr,
    /// Request path.
    pub path: String,
    /// Client to backend.
    pub to_backend: DirectionTotals,
    /// Backend to client.
    pub to_client: DirectionTotals,
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
            listed: true,
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
    /// Still in the live set: `finish` takes it out, so its drop need not.
    listed: bool,
}

impl RegistryGuard {
    /// Ends the tunnel: builds its record, hands it to `account` (the
    /// metrics), takes the tunnel out of the live set, and only then writes
    /// the access-log line and publishes the record. Whoever sees the
    /// record or the line (a test, the admin API, a log shipper) therefore
    /// finds every count already settled, even when the tunnel ran on
    /// another thread. Call once, at the end.
    pub fn finish(
        mut self,
        end: TunnelEnd,
        account: impl FnOnce(&AccessRecord),
    ) -> Arc<AccessRecord> {
        let s = &self.stats;
        let record = Arc::new(AccessRecord {
            id: s.id,
            client: s.info.client,
            listener: s.info.listener.to_string(),
            route: s.info.route.to_string(),
            upstream: s.info.upstream.to_string(),
            backend: s.info.backend,
            path: s.info.path.clone(),
            started: humantime::format_rfc3339_millis(s.started_at),
            duration_ms: u64::try_from(s.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            to_backend: s.to_backend.totals(),
            to_client: s.to_client.totals(),
            end,
        });
        account(&record);
        self.registry.lock().remove(&s.id);
        self.listed = false;
        record.emit();
        let _ = self.registry.finished.send(record.clone());
        record
    }
}

impl Drop for RegistryGuard {
    fn drop(&mut self) {
        if self.listed {
            self.registry.lock().remove(&self.stats.id);
        }
    }
}
