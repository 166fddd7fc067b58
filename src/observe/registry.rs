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
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use futures_util::task::AtomicWaker;
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

/// Bit of [`CloseControl`]'s state: close with Close frames.
const CLOSE: u8 = 1;
/// Bit of [`CloseControl`]'s state: end now (wsgate's hard shutdown).
const CUT: u8 = 2;

/// The channel from the control path to one tunnel: what it is asked to
/// do (close with Close frames, or end now), the order saying which code
/// to send, and the tunnel's task to wake. A close without an order
/// (drain) means [`CLOSE_GOING_AWAY`].
///
/// Two bits and a waker rather than cancellation tokens: a child token of
/// the drain's and a wait on the shutdown token cost each tunnel about
/// 260 bytes, and a lock on every poll of its task (the shutdown token's
/// shared by every tunnel). The registry passes a drain or shutdown on to
/// each tunnel instead (see [`Registry::obey`]).
#[derive(Debug, Default)]
pub struct CloseControl {
    state: AtomicU8,
    /// The task running the tunnel: the one waiter there is.
    waker: AtomicWaker,
    order: OnceLock<CloseOrder>,
}

/// What a tunnel has been asked so far (see [`CloseControl::poll_asked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked(u8);

impl Asked {
    /// To close with Close frames.
    pub fn close(self) -> bool {
        self.0 & CLOSE != 0
    }

    /// To end now, without them.
    pub fn cut(self) -> bool {
        self.0 & CUT != 0
    }
}

impl CloseControl {
    /// Asks the tunnel to close with `order`; the first order wins, and a
    /// drain or shutdown that already asked for a close is an order too
    /// ([`CLOSE_GOING_AWAY`]). Returns whether this one was taken.
    pub fn request(&self, order: CloseOrder) -> bool {
        // The tunnel may already be closing with the drain's code: setting
        // an order now could change the code it sends, or be ignored.
        if self.is_requested() {
            return false;
        }
        let taken = self.order.set(order).is_ok();
        self.raise(CLOSE);
        taken
    }

    /// A drain: close with [`CLOSE_GOING_AWAY`], unless an order came first.
    pub fn close(&self) {
        self.raise(CLOSE);
    }

    /// wsgate's hard shutdown: end now, without Close frames. A cut
    /// tunnel counts as closing too (a later order is refused), as one
    /// opened after the shutdown does, which finds the drain fired.
    pub fn cut(&self) {
        self.raise(CLOSE | CUT);
    }

    fn raise(&self, bits: u8) {
        if self.state.fetch_or(bits, Ordering::AcqRel) & bits != bits {
            self.waker.wake();
        }
    }

    /// Whether a close was asked for (by order, drain or shutdown).
    pub fn is_requested(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSE != 0
    }

    /// What was asked so far; the calling task is woken at the next ask.
    /// Only the tunnel's own task may call this: there is one waker.
    pub fn poll_asked(&self, cx: &mut Context<'_>) -> Asked {
        // Registered before the load: an ask between the two still wakes.
        self.waker.register(cx.waker());
        Asked(self.state.load(Ordering::Acquire))
    }

    /// Waits until a close is asked for. For a task that stands in for a
    /// tunnel (tests, a tunnel not running yet): it takes the one waker.
    pub async fn requested(&self) {
        std::future::poll_fn(|cx| {
            if self.poll_asked(cx).close() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// The order to carry out once a close was asked for.
    pub fn order(&self) -> CloseOrder {
        self.order.get().cloned().unwrap_or(CloseOrder {
            code: CLOSE_GOING_AWAY,
            reason: "going away".to_string(),
        })
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
            server: self.info.backend(),
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
    /// The server object itself: drains match tunnels by identity, so a
    /// server removed and added again is not confused with its old self.
    pub server: Arc<crate::upstream::balancer::Server>,
    /// Forwarded path.
    pub path: String,
}

#[cfg(test)]
impl ConnInfo {
    /// A tunnel for unit tests: listener `l`, route `r`, upstream `u`, the
    /// client and a fresh server at `addr`, path `/`.
    pub(crate) fn test(addr: SocketAddr) -> Self {
        Self {
            client: addr,
            listener: "l".into(),
            route: "r".into(),
            upstream: "u".into(),
            server: Arc::new(crate::upstream::balancer::Server::new(addr, 1)),
            path: "/".into(),
        }
    }
}

impl ConnInfo {
    /// Backend address: the server's (not kept twice, 32 bytes a tunnel).
    pub fn backend(&self) -> SocketAddr {
        self.server.addr
    }
}

impl Registry {
    /// Registers a new tunnel; the returned guard removes it when dropped,
    /// so an entry never outlives its connection on any path. A `drain` or
    /// `shutdown` that fired already is passed on to it here; one that
    /// fires later, by [`Registry::obey`].
    pub fn open(
        self: &Arc<Self>,
        info: ConnInfo,
        drain: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> RegistryGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stats = Arc::new(ConnStats {
            id,
            info,
            started_at: SystemTime::now(),
            started: Instant::now(),
            to_backend: DirectionCounters::default(),
            to_client: DirectionCounters::default(),
            last_activity_ms: AtomicU64::new(now_ms()),
            close: CloseControl::default(),
        });
        self.lock().insert(id, stats.clone());
        // After the insert: a stop that fired before this check is seen
        // here, one that fires after it finds the tunnel listed.
        if drain.is_cancelled() {
            stats.close.close();
        }
        if shutdown.is_cancelled() {
            stats.close.cut();
        }
        RegistryGuard {
            registry: self.clone(),
            stats,
            listed: true,
        }
    }

    /// Passes wsgate's stops on to every live tunnel: when `drain` fires,
    /// each is asked to close ([`CLOSE_GOING_AWAY`] unless it has an
    /// order); when `shutdown` fires, each is cut. One task per gateway,
    /// ending after the cut, or at `done` (no tunnel can be left to tell);
    /// tunnels opened after a stop learn of it in [`Registry::open`].
    pub async fn obey(
        self: Arc<Self>,
        drain: CancellationToken,
        shutdown: CancellationToken,
        done: CancellationToken,
    ) {
        // Biased: a shutdown also fires the drain, and may fire `done`, in
        // the same stroke, and must still be passed on.
        let drained = tokio::select! {
            biased;
            _ = shutdown.cancelled() => false,
            _ = drain.cancelled() => true,
            _ = done.cancelled() => return,
        };
        if drained {
            self.close_all();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {}
                _ = done.cancelled() => return,
            }
        }
        self.cut_all();
    }

    /// Asks every live tunnel to close ([`CLOSE_GOING_AWAY`] unless it has
    /// an order). Whoever fires the drain calls this too, so that every
    /// tunnel has been asked by the time it returns, not once
    /// [`Registry::obey`] next runs: a frame sent after that waits for no
    /// task to be relayed.
    pub fn close_all(&self) {
        for conn in self.lock().values() {
            conn.close.close();
        }
    }

    /// Cuts every live tunnel (wsgate's hard shutdown).
    pub fn cut_all(&self) {
        for conn in self.lock().values() {
            conn.close.cut();
        }
    }

    /// Live tunnels, oldest first.
    pub fn live(&self) -> Vec<Arc<ConnStats>> {
        self.lock().values().cloned().collect()
    }

    /// Takes an ending tunnel out of the live set (its guard's drop is then
    /// a no-op); from then on no drain or shutdown reaches it, so only the
    /// tunnel's own end calls this.
    pub(crate) fn remove(&self, id: u64) {
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
            backend: s.info.backend(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ConnInfo {
        ConnInfo::test(SocketAddr::from(([127, 0, 0, 1], 9)))
    }

    fn asked(stats: &ConnStats) -> Asked {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        stats.close.poll_asked(&mut cx)
    }

    /// A drain or shutdown that fired before a tunnel was listed (an
    /// upgrade in flight) reaches it when it opens.
    #[tokio::test]
    async fn a_tunnel_opened_after_a_stop_obeys_it() {
        let registry = Arc::new(Registry::default());
        let (drain, shutdown) = (CancellationToken::new(), CancellationToken::new());
        let before = registry.open(info(), &drain, &shutdown);
        drain.cancel();
        let drained = registry.open(info(), &drain, &shutdown);
        assert!(!before.stats.close.is_requested(), "nothing passed it on");
        assert_eq!(asked(&drained.stats), Asked(CLOSE));
        assert_eq!(drained.stats.close.order().code, CLOSE_GOING_AWAY);
        shutdown.cancel();
        let cut = registry.open(info(), &drain, &shutdown);
        assert!(asked(&cut.stats).cut());
    }

    /// A tunnel cut by a shutdown counts as closing, like one opened
    /// after it: an operator's order comes too late for either.
    #[test]
    fn a_cut_tunnel_refuses_a_later_order() {
        let registry = Arc::new(Registry::default());
        let shutdown = CancellationToken::new();
        let drain = shutdown.child_token();
        let listed = registry.open(info(), &drain, &shutdown);
        shutdown.cancel();
        registry.cut_all();
        let later = registry.open(info(), &drain, &shutdown);
        let order = CloseOrder {
            code: 4000,
            reason: "too late".into(),
        };
        for g in [&listed, &later] {
            assert!(g.stats.close.is_requested());
            assert!(!g.stats.close.request(order.clone()));
            assert_eq!(g.stats.close.order().code, CLOSE_GOING_AWAY);
        }
    }

    /// `obey` passes a drain on as a close, then a shutdown as a cut, to
    /// every live tunnel, waking the task that waits; an order given
    /// before the drain keeps its code.
    #[tokio::test]
    async fn obey_passes_the_drain_then_the_shutdown_on() {
        let registry = Arc::new(Registry::default());
        let (drain, shutdown) = (CancellationToken::new(), CancellationToken::new());
        let (a, b) = (
            registry.open(info(), &drain, &shutdown),
            registry.open(info(), &drain, &shutdown),
        );
        let order = CloseOrder {
            code: 4000,
            reason: "mine".into(),
        };
        assert!(b.stats.close.request(order.clone()));
        let obeying = tokio::spawn(registry.clone().obey(
            drain.clone(),
            shutdown.clone(),
            CancellationToken::new(),
        ));
        let waiter = tokio::spawn({
            let stats = a.stats.clone();
            async move { stats.close.requested().await }
        });
        drain.cancel();
        let within = Duration::from_secs(10);
        tokio::time::timeout(within, waiter)
            .await
            .expect("the waiting task is woken")
            .expect("no panic");
        assert_eq!(a.stats.close.order().code, CLOSE_GOING_AWAY);
        assert_eq!(b.stats.close.order(), order, "the first order wins");
        assert!(!asked(&a.stats).cut());
        shutdown.cancel();
        tokio::time::timeout(within, obeying)
            .await
            .expect("obey ends after the cut")
            .expect("no panic");
        assert!(asked(&a.stats).cut() && asked(&b.stats).cut());
    }

    /// With nothing left to tell (`done`), obey ends without a stop.
    #[tokio::test]
    async fn obey_ends_when_done() {
        let registry = Arc::new(Registry::default());
        let (drain, shutdown, done) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let live = registry.open(info(), &drain, &shutdown);
        let obeying = tokio::spawn(registry.clone().obey(drain, shutdown, done.clone()));
        done.cancel();
        tokio::time::timeout(Duration::from_secs(10), obeying)
            .await
            .expect("obey ends")
            .expect("no panic");
        assert_eq!(asked(&live.stats), Asked(0), "nothing was asked");
    }
}
