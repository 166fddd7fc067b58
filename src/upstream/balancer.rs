//! Upstream pools: the servers' runtime state and the choice of server.
//!
//! Owns: per-server live state (active tunnels, weight, enabled, health,
//! and the fields of passive checks, slow start and the change signal,
//! whose methods are in `availability.rs`) and the
//! balancing algorithms as one enum. Selection yields an ordered list of
//! candidates, usable servers only (`Server::is_usable`), at most `retries + 1` long;
//! the caller tries them in order, so retry policy stays visible in
//! `upstream.rs`. Weights are honoured by every algorithm.
//!
//! Must not: do I/O, log, or hold anything per connection besides counters.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

pub use crate::config::{Availability, Balance, HashKey, UpstreamSettings};
use crate::upstream::passive::Passive;
use crate::upstream::slow_start::Ramp;

impl HashKey {
    /// The key of a request, hashed; `None` when the request lacks it (the
    /// upstream then balances by least connections).
    pub fn of(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
        client: IpAddr,
    ) -> Option<u64> {
        match self {
            HashKey::Header(name) => headers.get(name).map(|v| stable_hash(v.as_bytes())),
            HashKey::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|c| c.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| stable_hash(v.as_bytes())),
            HashKey::Query(name) => query.and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| stable_hash(v.as_bytes()))
            }),
            HashKey::Ip => Some(stable_hash(client.to_string().as_bytes())),
        }
    }
}

/// FNV-1a with a splitmix64 finish: the same on every machine and release,
/// which a shared ring needs (std's hashers promise neither).
pub fn stable_hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Points per unit of weight on the hash ring: enough for an even spread.
const RING_POINTS: u32 = 160;
/// Bound on the ring's length, so high weights cannot make it costly to
/// build (at each reload) or to walk (at each handshake).
const MAX_RING_POINTS: u32 = 40_000;

/// One backend server and its live state.
#[derive(Debug)]
pub struct Server {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The host name it was resolved from: the default TLS name.
    pub host: Option<Arc<str>>,
    /// `addr` as metrics label it, formatted once rather than at every
    /// tunnel's end and for every open tunnel at every scrape.
    pub label: Arc<str>,
    /// Relative share of connections, at least 1; a reload may change it in place.
    weight: AtomicU32,
    /// Tunnels currently open to this server.
    active: AtomicU64,
    /// Whether new connections may go here (an operator's drain clears it).
    enabled: AtomicBool,
    /// The active health check's verdict; true until checks say otherwise
    /// (and always for an upstream without checks).
    healthy: AtomicBool,
    /// The drain in progress, so that enabling the server again stops it.
    drain: Mutex<Option<CancellationToken>>,
    // === availability (passive checks, slow start) ===
    /// Failures real traffic saw here, and the ejection they caused.
    pub(super) passive: Passive,
    /// Slow start's ramp, begun when the server comes back into service.
    pub(super) ramp: Ramp,
    /// Bumped at every change of health or ejection, so that the control
    /// path (logs, metrics, `close_on_unhealthy`) reacts without polling
    /// and without this folder knowing it.
    pub(super) changes: tokio::sync::watch::Sender<u64>,
}

impl Server {
    /// A server with no tunnels, enabled.
    pub fn new(addr: SocketAddr, weight: u32) -> Self {
        Self::named(addr, weight, None)
    }

    /// A server resolved from `host`.
    pub fn named(addr: SocketAddr, weight: u32, host: Option<Arc<str>>) -> Self {
        Self {
            addr,
            host,
            label: addr.to_string().into(),
            weight: AtomicU32::new(weight.max(1)),
            active: AtomicU64::new(0),
            enabled: AtomicBool::new(true),
            healthy: AtomicBool::new(true),
            drain: Mutex::new(None),
            passive: Passive::default(),
            ramp: Ramp::default(),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Relative share of connections.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Changes the weight in place, so a reload keeps the server's live state.
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight.max(1), Ordering::Relaxed);
    }

    /// Tunnels currently open to this server.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether new connections may be sent here.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The active health check's verdict.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records the active health check's verdict; returns whether it changed,
    /// so that the caller logs and counts each transition once. A change is
    /// signalled (see [`Server::changes`]); a server healthy again begins
    /// slow start.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let changed = self.healthy.swap(healthy, Ordering::Relaxed) != healthy;
        if changed {
            if healthy {
                self.ramp.start(Instant::now());
            }
            self.changed();
        }
        changed
    }

    /// Whether new connections may go here now: enabled by the operator,
    /// healthy by the active check and not ejected by the passive one.
    pub fn is_usable(&self) -> bool {
        self.is_usable_at(Instant::now())
    }

    pub(super) fn is_usable_at(&self, now: Instant) -> bool {
        self.is_enabled() && self.is_healthy() && !self.is_ejected_at(now)
    }

    /// Where the server stands, for `/api/upstreams` and `wsgate_server_state`.
    pub fn state(&self) -> ServerState {
        // An operator's (or a reload's) drain is the decision that
        // matters most: it says why the server takes nothing new.
        if !self.is_enabled() {
            ServerState::Draining
        } else if !self.is_healthy() {
            ServerState::Down
        } else if self.is_ejected() {
            ServerState::Ejected
        } else {
            ServerState::Up
        }
    }

    /// Stops new connections; returns a token that cancels when the server
    /// is enabled again, for the task closing its tunnels. `None` when a
    /// drain is already running: it goes on as it was, its clock untouched.
    pub fn disable(&self) -> Option<CancellationToken> {
        let mut drain = self.drain.lock().unwrap_or_else(|e| e.into_inner());
        self.enabled.store(false, Ordering::Relaxed);
        if drain.as_ref().is_some_and(|t| !t.is_cancelled()) {
            return None;
        }
        let token = CancellationToken::new();
        *drain = Some(token.clone());
        Some(token)
    }

    /// Takes new connections again and stops a drain in progress.
    pub fn enable(&self) {
        if !self.enabled.swap(true, Ordering::Relaxed) {
            // Back with no tunnels: least_conn would send it everything.
            self.ramp.start(Instant::now());
        }
        if let Some(t) = self.drain.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.cancel();
        }
    }

    /// Counts one open tunnel until the guard is dropped, whatever path ends it.
    pub fn track(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }
}

/// Where a server stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Takes new connections.
    Up,
    /// Its active health check failed: no new connections.
    Down,
    /// Ejected by passive checks for a while: no new connections.
    Ejected,
    /// Disabled by an operator or removed by a reload: no new connections,
    /// its tunnels are being closed on schedule.
    Draining,
}

impl ServerState {
    /// Every state, for metrics that show one series per state.
    pub const ALL: [ServerState; 4] = [
        ServerState::Up,
        ServerState::Down,
        ServerState::Ejected,
        ServerState::Draining,
    ];

    /// The name shown in `/api/upstreams` and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Up => "up",
            ServerState::Down => "down",
            ServerState::Ejected => "ejected",
            ServerState::Draining => "draining",
        }
    }
}

/// Holds one count in [`Server::active`]; dropping it releases the count.
#[derive(Debug)]
pub struct ActiveGuard(Arc<Server>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A named pool of servers.
#[derive(Debug)]
pub struct Upstream {
    /// Name from `[upstreams.NAME]`.
    pub name: Arc<str>,
    /// Non-empty (validated), in config order.
    pub servers: Vec<Arc<Server>>,
    /// The upstream's settings, shared with the config it came from: the
    /// algorithm, retries, drain and pool settings are read from here.
    pub settings: Arc<UpstreamSettings>,
    /// The connector built from `settings.tls`, once per snapshot, so that
    /// connecting does not rebuild it; `None` for plain TCP.
    pub tls: Option<Arc<crate::net::tls::BackendTls>>,
    /// Keep-alive connections for plain HTTP, made on the first plain
    /// request: an upstream that only serves WebSockets never has one.
    http: OnceLock<crate::upstream::pool::HttpPool>,
    /// Rotates ties in least-connections, and seeds random choices.
    next: AtomicUsize,
    /// Seeds slow start's draws; apart from `next`, whose parity would
    /// otherwise tie the draws to the rotation of ties.
    pub(super) draws: AtomicUsize,
    /// Smooth weighted round-robin's current weights, one per server.
    rr: Mutex<Vec<i64>>,
    /// Hash ring: (point, server index), sorted; empty unless `Hash`.
    ring: Vec<(u64, usize)>,
    pub(super) random: RandomState,
}

impl Upstream {
    /// A pool over `servers`, which config validation guarantees non-empty.
    /// `weights` are the configured weights, one per server: the ring is
    /// built from them, not from servers' live weights, which a reload only
    /// updates once the new snapshot is live.
    pub fn new(
        name: &str,
        servers: Vec<Arc<Server>>,
        weights: &[u32],
        settings: Arc<UpstreamSettings>,
    ) -> Self {
        debug_assert_eq!(servers.len(), weights.len());
        let mut ring = Vec::new();
        if matches!(settings.balance, Balance::Hash { .. }) {
            let total: u64 = weights.iter().map(|&w| u64::from(w.max(1))).sum();
            // Keep the ring at most MAX_RING_POINTS long whatever the weights:
            // points are proportional to weight, at least one per server.
            let per_weight =
                (MAX_RING_POINTS as f64 / total.max(1) as f64).min(f64::from(RING_POINTS));
            for (i, s) in servers.iter().enumerate() {
                let w = weights.get(i).copied().unwrap_or(1).max(1);
                let points = ((f64::from(w) * per_weight).round() as u32).max(1);
                for p in 0..points {
                    // By address, so every instance with the config builds the same ring.
                    ring.push((stable_hash(format!("{}#{p}", s.addr).as_bytes()), i));
                }
            }
            ring.sort_unstable();
        }
        Self {
            name: name.into(),
            rr: Mutex::new(vec![0; servers.len()]),
            servers,
            tls: settings.tls.as_ref().map(|t| {
                Arc::new(crate::net::tls::BackendTls::new(
                    t.client.clone(),
                    t.sni.clone(),
                ))
            }),
            settings,
            http: OnceLock::new(),
            next: AtomicUsize::new(0),
            draws: AtomicUsize::new(0),
            ring,
            random: RandomState::new(),
        }
    }

    /// The plain HTTP pool, made by `make` on first use.
    pub fn http_pool(
        &self,
        make: impl FnOnce() -> crate::upstream::pool::HttpPool,
    ) -> &crate::upstream::pool::HttpPool {
        self.http.get_or_init(make)
    }

    /// The server at `addr`, if it is in this pool.
    pub fn server(&self, addr: SocketAddr) -> Option<&Arc<Server>> {
        self.servers.iter().find(|s| s.addr == addr)
    }

    /// Usable servers in the order to try them, at most `retries + 1`.
    /// `key` is the request's hash key for `Hash` (without one, least
    /// connections decides).
    pub fn candidates(&self, key: Option<u64>) -> Vec<Arc<Server>> {
        self.candidates_at(key, Instant::now())
    }

    pub(super) fn candidates_at(&self, key: Option<u64>, now: Instant) -> Vec<Arc<Server>> {
        let usable: Vec<usize> = (0..self.servers.len())
            .filter(|&i| self.servers[i].is_usable_at(now))
            .collect();
        if usable.is_empty() {
            return Vec::new();
        }
        let order = match (&self.settings.balance, key) {
            (Balance::LeastConn, _) | (Balance::Hash { .. }, None) => self.least_conn(&usable),
            (Balance::RoundRobin, _) => self.with_first(self.round_robin(&usable), &usable),
            (Balance::RandomTwo, _) => self.with_first(self.random_two(&usable), &usable),
            (Balance::Hash { load_factor, .. }, Some(k)) => {
                self.ring_walk(k, *load_factor, &usable)
            }
        };
        let order = self.slow_start(order, now);
        order
            .into_iter()
            .take(self.settings.retries + 1)
            .map(|i| self.servers[i].clone())
            .collect()
    }

    /// `first`, then the others as least-connections orders them.
    fn with_first(&self, first: usize, usable: &[usize]) -> Vec<usize> {
        let mut order = vec![first];
        order.extend(self.least_conn(usable).into_iter().filter(|&i| i != first));
        order
    }

    /// Usable servers by active tunnels per unit of weight; ties rotate so
    /// equal servers share new connections.
    fn least_conn(&self, usable: &[usize]) -> Vec<usize> {
        let n = self.servers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut order = usable.to_vec();
        order.sort_by(|&a, &b| {
            let (sa, sb) = (&self.servers[a], &self.servers[b]);
            // active_a / weight_a against active_b / weight_b, exactly.
            let la = u128::from(sa.active()) * u128::from(sb.weight());
            let lb = u128::from(sb.active()) * u128::from(sa.weight());
            la.cmp(&lb)
                .then(((a + n - start) % n).cmp(&((b + n - start) % n)))
        });
        order
    }

    /// Smooth weighted round-robin: each pick adds every usable server's
    /// weight to its current value and takes the largest, minus the total.
    fn round_robin(&self, usable: &[usize]) -> usize {
        let mut current = self.rr.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0i64;
        let mut best = usable[0];
        for &i in usable {
            let w = i64::from(self.servers[i].weight());
            current[i] += w;
            total += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        best
    }

    /// Two servers drawn at random in proportion to weight; the less loaded wins.
    fn random_two(&self, usable: &[usize]) -> usize {
        if usable.len() == 1 {
            return usable[0];
        }
        let total: u64 = usable
            .iter()
            .map(|&i| u64::from(self.servers[i].weight()))
            .sum();
        let draw = |salt: usize| {
            let seed = self.next.fetch_add(1, Ordering::Relaxed) ^ salt;
            let mut r = self.random.hash_one(seed) % total;
            for &i in usable {
                let w = u64::from(self.servers[i].weight());
                if r < w {
                    return i;
                }
                r -= w;
            }
            usable[usable.len() - 1]
        };
        let a = draw(0);
        let mut b = draw(1);
        for salt in 2..8 {
            if b != a {
                break;
            }
            b = draw(salt);
        }
        let (sa, sb) = (&self.servers[a], &self.servers[b]);
        if u128::from(sb.active()) * u128::from(sa.weight())
            < u128::from(sa.active()) * u128::from(sb.weight())
        {
            b
        } else {
            a
        }
    }

    /// Walks the ring clockwise from `key`: servers under their bound first,
    /// in ring order, then the rest. The bound is
    /// `ceil(load_factor × (total active + 1) × weight / total weight)`.
    fn ring_walk(&self, key: u64, load_factor: f64, usable: &[usize]) -> Vec<usize> {
        let total_active: u64 = usable.iter().map(|&i| self.servers[i].active()).sum();
        let total_weight: u64 = usable
            .iter()
            .map(|&i| u64::from(self.servers[i].weight()))
            .sum();
        let bound = |i: usize| {
            let share = (total_active + 1) as f64 * f64::from(self.servers[i].weight())
                / total_weight as f64;
            (load_factor * share).ceil() as u64
        };
        let start = self.ring.partition_point(|&(p, _)| p < key);
        let mut seen = vec![true; self.servers.len()];
        for &i in usable {
            seen[i] = false;
        }
        let (mut under, mut over) = (Vec::new(), Vec::new());
        let mut left = usable.len();
        for k in 0..self.ring.len() {
            // Every usable server placed: the rest of the ring adds nothing.
            if left == 0 {
                break;
            }
            let i = self.ring[(start + k) % self.ring.len()].1;
            // Unusable servers start out `seen`, so they are never placed.
            if seen[i] {
                continue;
            }
            seen[i] = true;
            left -= 1;
            if self.servers[i].active() < bound(i) {
                under.push(i);
            } else {
                over.push(i);
            }
        }
        under.extend(over);
        under
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::upstream) fn pool_w(weights: &[u32], balance: Balance) -> Upstream {
        let servers = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                Arc::new(Server::new(
                    SocketAddr::from(([127, 0, 0, 1], i as u16 + 1)),
                    w,
                ))
            })
            .collect();
        let weights = weights.to_vec();
        Upstream::new(
            "u",
            servers,
            &weights,
            Arc::new(UpstreamSettings {
                balance,
                retries: 1,
                ..UpstreamSettings::default()
            }),
        )
    }

    pub(in crate::upstream) fn port(s: &Arc<Server>) -> u16 {
        s.addr.port()
    }

    #[test]
    fn least_conn_prefers_the_least_loaded_per_weight_and_rotates_ties() {
        let u = pool_w(&[1, 1, 2], Balance::LeastConn);
        let mut guards = Vec::new();
        let mut counts = [0u32; 3];
        for _ in 0..40 {
            let c = u.candidates(None);
            assert_eq!(c.len(), 2, "the pick and one fallback");
            counts[usize::from(port(&c[0])) - 1] += 1;
            guards.push(c[0].track());
        }
        // Weight 2 takes twice the tunnels of weight 1.
        assert_eq!(counts, [10, 10, 20]);
        // Closing tunnels on one server sends the next ones there.
        guards.retain(|g| g.0.addr.port() != 1);
        for _ in 0..10 {
            let c = u.candidates(None);
            assert_eq!(port(&c[0]), 1);
            guards.push(c[0].track());
        }
    }

    #[test]
    fn smooth_round_robin_follows_weights() {
        let u = pool_w(&[5, 1, 1], Balance::RoundRobin);
        let picks: Vec<u16> = (0..7).map(|_| port(&u.candidates(None)[0])).collect();
        // nginx's documented sequence for weights 5, 1, 1.
        assert_eq!(picks, [1, 1, 2, 1, 3, 1, 1]);
    }

    #[test]
    fn random_two_keeps_loads_close() {
        let u = pool_w(&[1, 1, 1, 1], Balance::RandomTwo);
        let mut guards = Vec::new();
        for _ in 0..400 {
            guards.push(u.candidates(None)[0].track());
        }
        let loads: Vec<u64> = u.servers.iter().map(|s| s.active()).collect();
        let (min, max) = (
            loads.iter().min().copied().unwrap_or(0),
            loads.iter().max().copied().unwrap_or(0),
        );
        // Two choices keep the gap tiny where one random choice would drift far apart.
        assert!(max - min <= 10, "{loads:?}");
    }

    #[test]
    fn hash_is_stable_and_moves_only_the_keys_that_must_move() {
        let hash = Balance::Hash {
            key: HashKey::Ip,
            load_factor: 1.25,
        };
        let four = pool_w(&[1, 1, 1, 1], hash.clone());
        let five = pool_w(&[1, 1, 1, 1, 1], hash);
        let keys: Vec<u64> = (0..2000u32)
            .map(|k| stable_hash(&k.to_le_bytes()))
            .collect();
        let first = |u: &Upstream, k: u64| port(&u.candidates(Some(k))[0]);
        let mut moved = 0;
        for &k in &keys {
            let (a, b) = (first(&four, k), first(&five, k));
            assert_eq!(a, first(&four, k), "same key, same server");
            if a != b {
                moved += 1;
                assert_eq!(b, 5, "a moved key may only move to the new server");
            }
        }
        // About a fifth of the keys belong to the fifth server.
        assert!((250..=550).contains(&moved), "{moved} of 2000 moved");
    }

    #[test]
    fn hash_respects_the_load_bound() {
        let u = pool_w(
            &[1, 1, 1, 1],
            Balance::Hash {
                key: HashKey::Ip,
                load_factor: 1.25,
            },
        );
        let hot = stable_hash(b"one very popular key");
        let mut guards = Vec::new();
        for m in 0..200u64 {
            let c = u.candidates(Some(hot));
            guards.push(c[0].track());
            let bound = (1.25 * (m + 1) as f64 / 4.0).ceil() as u64;
            for s in &u.servers {
                assert!(
                    s.active() <= bound.max(1),
                    "server over its bound after {m}"
                );
            }
        }
    }

    #[test]
    fn state_follows_the_flags_draining_first() {
        let s = Server::new(SocketAddr::from(([127, 0, 0, 1], 1)), 1);
        assert_eq!(s.state(), ServerState::Up);
        assert!(s.set_healthy(false));
        assert_eq!(s.state(), ServerState::Down);
        s.disable();
        assert_eq!(s.state(), ServerState::Draining);
        assert!(s.set_healthy(true));
        assert_eq!(s.state(), ServerState::Draining);
        s.enable();
        assert_eq!(s.state().as_str(), "up");
    }

    #[test]
    fn disabled_servers_are_skipped_until_enabled() {
        let u = pool_w(&[1, 1, 1], Balance::LeastConn);
        let drain = u.servers[1].disable().expect("a new drain");
        assert!(
            u.servers[1].disable().is_none(),
            "a second drain keeps the first"
        );
        for _ in 0..6 {
            let ports: Vec<u16> = u.candidates(None).iter().map(port).collect();
            assert!(!ports.contains(&2), "{ports:?}");
        }
        u.servers[0].disable();
        u.servers[2].disable();
        assert!(u.candidates(None).is_empty());
        u.servers[1].enable();
        assert!(drain.is_cancelled(), "enabling stops the drain in progress");
        assert_eq!(u.candidates(None).iter().map(port).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn hash_keys_come_from_the_request() {
        let mut h = http::HeaderMap::new();
        h.insert("x-user", http::HeaderValue::from_static("alice"));
        h.insert(
            "cookie",
            http::HeaderValue::from_static("a=1; sid=xyz; b=2"),
        );
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let header = HashKey::Header(http::HeaderName::from_static("x-user"));
        assert_eq!(header.of(&h, None, ip), Some(stable_hash(b"alice")));
        assert_eq!(
            HashKey::Cookie("sid".into()).of(&h, None, ip),
            Some(stable_hash(b"xyz"))
        );
        assert_eq!(
            HashKey::Query("room".into()).of(&h, Some("a=1&room=42"), ip),
            Some(stable_hash(b"42"))
        );
        assert_eq!(HashKey::Query("room".into()).of(&h, None, ip), None);
        assert_eq!(HashKey::Ip.of(&h, None, ip), Some(stable_hash(b"10.0.0.1")));
        assert_eq!(HashKey::Cookie("none".into()).of(&h, None, ip), None);
    }

    #[test]
    fn heavy_weights_keep_the_ring_bounded() {
        let u = pool_w(
            &[1000; 10],
            Balance::Hash {
                key: HashKey::Ip,
                load_factor: 1.25,
            },
        );
        assert!(
            u.ring.len() <= MAX_RING_POINTS as usize + 10,
            "{}",
            u.ring.len()
        );
        assert_eq!(u.candidates(Some(42)).len(), 2);
        // Proportions survive the cap.
        let v = pool_w(
            &[1000, 1],
            Balance::Hash {
                key: HashKey::Ip,
                load_factor: 1.25,
            },
        );
        let heavy = v.ring.iter().filter(|(_, i)| *i == 0).count();
        let light = v.ring.iter().filter(|(_, i)| *i == 1).count();
        assert!(heavy >= 900 * light, "{heavy} vs {light}");
    }
}
