//! Upstream pools: the servers' runtime state and the choice of server.
//!
//! Owns: per-server live counters (active tunnels) and the selection
//! algorithm. Selection yields an ordered list of candidates; the caller
//! tries them in order up to an explicit bound, so retry policy stays
//! visible in `upstream.rs`.
//!
//! Must not: do I/O, or hold anything per connection besides counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// One backend server and its live state.
#[derive(Debug)]
pub struct Server {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Tunnels currently open to this server; the input of least-connections balancing.
    active: AtomicU64,
    /// Whether new connections may go here (an operator's drain clears it).
    enabled: AtomicBool,
    /// The drain in progress, so that enabling the server again stops it.
    drain: Mutex<Option<CancellationToken>>,
}

impl Server {
    /// Tunnels currently open to this server.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether new connections may be sent here.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Stops new connections; returns a token that cancels when the server
    /// is enabled again, for the task closing its tunnels.
    pub fn disable(&self) -> CancellationToken {
        self.enabled.store(false, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut drain = self.drain.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = drain.replace(token.clone()) {
            old.cancel();
        }
        token
    }

    /// Takes new connections again and stops a drain in progress.
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
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
    /// Round-robin cursor.
    next: AtomicUsize,
    /// How long a draining server's tunnels may go on.
    pub drain_timeout: Duration,
    /// Window over which a drain's closes are spread.
    pub drain_spread: Duration,
}

impl Upstream {
    /// A pool over `addrs`, which config validation guarantees non-empty.
    pub fn new(
        name: &str,
        addrs: &[SocketAddr],
        drain_timeout: Duration,
        drain_spread: Duration,
    ) -> Self {
        Self {
            name: name.into(),
            servers: addrs
                .iter()
                .map(|&addr| {
                    Arc::new(Server {
                        addr,
                        active: AtomicU64::new(0),
                        enabled: AtomicBool::new(true),
                        drain: Mutex::new(None),
                    })
                })
                .collect(),
            next: AtomicUsize::new(0),
            drain_timeout,
            drain_spread,
        }
    }

    /// The server at `addr`, if it is in this pool.
    pub fn server(&self, addr: SocketAddr) -> Option<&Arc<Server>> {
        self.servers.iter().find(|s| s.addr == addr)
    }

    /// Usable servers in the order to try them, at most `limit`: round-robin,
    /// so each call starts one further along and the following ones are the
    /// fallbacks. Disabled (draining) servers are never offered.
    pub fn candidates(&self, limit: usize) -> Vec<Arc<Server>> {
        let n = self.servers.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|i| &self.servers[(start + i) % n])
            .filter(|s| s.is_enabled())
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u16) -> Upstream {
        let addrs: Vec<SocketAddr> = (1..=n)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect();
        Upstream::new("u", &addrs, Duration::from_secs(1), Duration::from_secs(1))
    }

    #[test]
    fn round_robin_rotates_and_offers_a_fallback() {
        let u = pool(3);
        let ports: Vec<Vec<u16>> = (0..4)
            .map(|_| u.candidates(2).iter().map(|s| s.addr.port()).collect())
            .collect();
        assert_eq!(ports, [vec![1, 2], vec![2, 3], vec![3, 1], vec![1, 2]]);
        assert_eq!(pool(1).candidates(2).len(), 1);
    }

    #[test]
    fn disabled_servers_are_skipped_until_enabled() {
        let u = pool(3);
        let drain = u.servers[1].disable();
        for _ in 0..6 {
            let ports: Vec<u16> = u.candidates(3).iter().map(|s| s.addr.port()).collect();
            assert!(!ports.contains(&2), "{ports:?}");
            assert_eq!(ports.len(), 2);
        }
        u.servers[0].disable();
        u.servers[2].disable();
        assert!(u.candidates(2).is_empty());
        u.servers[1].enable();
        assert!(drain.is_cancelled(), "enabling stops the drain in progress");
        assert_eq!(
            u.candidates(2)
                .iter()
                .map(|s| s.addr.port())
                .collect::<Vec<_>>(),
            [2]
        );
    }

    #[test]
    fn active_guard_counts_and_releases() {
        let u = pool(1);
        let s = &u.servers[0];
        let a = s.track();
        let b = s.track();
        assert_eq!(s.active(), 2);
        drop(a);
        drop(b);
        assert_eq!(s.active(), 0);
    }
}
