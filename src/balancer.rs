//! Upstream pools: the servers' runtime state and the choice of server.
//!
//! Owns: per-server live counters (active tunnels) and the selection
//! algorithm. Selection yields an ordered list of candidates; the caller
//! tries them in order up to an explicit bound, so retry policy stays
//! visible in `upstream.rs`.
//!
//! Must not: do I/O, or hold anything per connection besides counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// One backend server and its live state.
#[derive(Debug)]
pub struct Server {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Tunnels currently open to this server; the input of least-connections balancing.
    active: AtomicU64,
}

impl Server {
    /// Tunnels currently open to this server.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
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
}

impl Upstream {
    /// A pool over `addrs`, which config validation guarantees non-empty.
    pub fn new(name: &str, addrs: &[SocketAddr]) -> Self {
        Self {
            name: name.into(),
            servers: addrs
                .iter()
                .map(|&addr| {
                    Arc::new(Server {
                        addr,
                        active: AtomicU64::new(0),
                    })
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Servers in the order to try them, at most `limit`: round-robin, so each
    /// call starts one further along and the following ones are the fallbacks.
    pub fn candidates(&self, limit: usize) -> Vec<Arc<Server>> {
        let n = self.servers.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n.min(limit))
            .map(|i| self.servers[(start + i) % n].clone())
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
        Upstream::new("u", &addrs)
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
