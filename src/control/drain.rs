//! Closing chosen tunnels gently: one at a time, spread evenly over a window
//! with jitter, so their clients do not all reconnect in the same second.
//!
//! Owns: the drain of one server (stop new connections, wait its
//! `drain_timeout`, then close what is left with 1001 over `drain_spread`)
//! and rebalancing (close the oldest tunnels of servers above the mean with
//! 1012). Used by the admin API; a later reload removing servers will use it too.
//!
//! Must not: touch tunnels other than through their `CloseControl`: the
//! tunnel itself picks the frame boundary and finishes the handshake.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::observe::access::CloseOrder;
use crate::observe::registry::{ConnStats, CLOSE_GOING_AWAY};
use crate::upstream::balancer::{Server, Upstream};
use crate::Shared;

/// Close code 1012 (Service Restart): tells a client to reconnect, which the
/// balancer then sends to a less loaded server.
pub const CLOSE_SERVICE_RESTART: u16 = 1012;

/// Live tunnels of one server, oldest first.
pub fn tunnels_of(shared: &Shared, upstream: &Upstream, server: &Server) -> Vec<Arc<ConnStats>> {
    shared
        .registry
        .live()
        .into_iter()
        .filter(|c| {
            *c.info.upstream == *upstream.name && std::ptr::eq(Arc::as_ptr(&c.info.server), server)
        })
        .collect()
}

/// How often a drain looks whether its server has emptied by itself.
const EMPTY_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits `upstream.drain_timeout`, then closes the server's remaining
/// tunnels with 1001 spread over `upstream.drain_spread`. Stops early when
/// `stop` fires (the server was enabled again) or wsgate drains, and ends
/// as soon as the server holds nothing.
pub async fn drain_server(
    shared: Arc<Shared>,
    upstream: Arc<Upstream>,
    server: Arc<Server>,
    stop: CancellationToken,
) {
    let deadline = tokio::time::sleep(upstream.settings.drain_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = stop.cancelled() => return,
            _ = shared.drain.cancelled() => return,
            // Nothing on it (tunnels and handshakes in flight both count):
            // nothing to wait for, and a removed server then leaves the
            // draining list, its metric series with it. Checked after a
            // pause, so that a handshake which picked the server just
            // before it was disabled has counted itself.
            _ = tokio::time::sleep(EMPTY_CHECK) => {
                if server.active() == 0 {
                    return;
                }
            }
        }
    }
    let order = CloseOrder {
        code: CLOSE_GOING_AWAY,
        reason: "server draining".to_string(),
    };
    close_until_empty(&shared, || Some(upstream.clone()), &server, &order, &stop).await;
}

/// Closes `server`'s tunnels with `order`, spread over the upstream's
/// `drain_spread`, round after round until the server holds nothing: a
/// handshake in flight when this began may open a tunnel after the first
/// listing. `upstream` is asked at each round (a reload may have changed
/// the spread); `None` ends it, as do `stop` and a drain of wsgate.
pub async fn close_until_empty(
    shared: &Shared,
    upstream: impl Fn() -> Option<Arc<Upstream>>,
    server: &Server,
    order: &CloseOrder,
    stop: &CancellationToken,
) {
    loop {
        let Some(up) = upstream() else { return };
        let conns: Vec<Arc<ConnStats>> = tunnels_of(shared, &up, server)
            .into_iter()
            .filter(|c| !c.close.is_requested())
            .collect();
        if conns.is_empty() {
            // Closing tunnels and handshakes in flight still count as active.
            if server.active() == 0 {
                return;
            }
        } else {
            tracing::info!(upstream = %up.name, server = %server.addr, tunnels = conns.len(), reason = %order.reason, "closing the server's tunnels");
            spread_close(&conns, up.settings.drain_spread, order, stop, &shared.drain).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            _ = stop.cancelled() => return,
            _ = shared.drain.cancelled() => return,
        }
    }
}

/// Which tunnels a rebalance closes: for each server above the mean, the
/// oldest `ceil(fraction × its tunnels)`, never taking it below the mean.
pub fn rebalance_victims(
    shared: &Shared,
    upstream: &Upstream,
    fraction: f64,
) -> Vec<Arc<ConnStats>> {
    debug_assert!(fraction > 0.0 && fraction <= 1.0);
    // Over usable servers only: a draining (or unhealthy, or ejected)
    // server takes no new tunnels, and counting it would make balanced
    // servers look loaded.
    let per_server: Vec<Vec<Arc<ConnStats>>> = upstream
        .servers
        .iter()
        .filter(|s| s.is_usable())
        .map(|s| tunnels_of(shared, upstream, s))
        .collect();
    let total: usize = per_server.iter().map(Vec::len).sum();
    let n = per_server.len().max(1);
    let mean = (total as f64 / n as f64).ceil() as usize;
    let mut victims: Vec<Arc<ConnStats>> = per_server
        .into_iter()
        .filter(|c| c.len() > mean)
        .flat_map(|c| {
            let k = ((c.len() as f64 * fraction).ceil() as usize).min(c.len() - mean);
            c.into_iter().take(k)
        })
        .collect();
    victims.sort_by_key(|c| c.started);
    victims
}

/// Asks each tunnel in `conns` to close with `order`, at the offsets
/// [`close_schedule`] plans from now. Returns early on `stop` or `drain`.
pub async fn spread_close(
    conns: &[Arc<ConnStats>],
    window: Duration,
    order: &CloseOrder,
    stop: &CancellationToken,
    drain: &CancellationToken,
) {
    let ids: Vec<u64> = conns.iter().map(|c| c.id).collect();
    let schedule = close_schedule(window, &ids);
    let start = Instant::now();
    for (conn, offset) in conns.iter().zip(schedule) {
        tokio::select! {
            _ = tokio::time::sleep_until(start + offset) => {}
            _ = stop.cancelled() => return,
            _ = drain.cancelled() => return,
        }
        conn.close.request(order.clone());
    }
}

/// When each of the tunnels `ids` (in closing order) is closed, counted
/// from the start of the `window`: the i-th of n at `window × i / n` plus
/// a jitter within the first half of its slot, so the closes spread over
/// the window, keep their order, and do not fall on a regular beat.
pub fn close_schedule(window: Duration, ids: &[u64]) -> Vec<Duration> {
    let n = u32::try_from(ids.len()).unwrap_or(u32::MAX).max(1);
    let slot = window / n;
    ids.iter()
        .zip(0u32..)
        .map(|(&id, i)| slot * i + jitter(slot, id))
        .collect()
}

/// A random offset within `slot`, so closes do not fall on a regular beat.
fn jitter(slot: Duration, seed: u64) -> Duration {
    use std::hash::BuildHasher;
    let r = std::collections::hash_map::RandomState::new().hash_one(seed);
    // Use at most half the slot, keeping the order of closes.
    slot.mul_f64((r % 1000) as f64 / 2000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_a_slot() {
        let slot = Duration::from_millis(100);
        for seed in 0..200 {
            assert!(jitter(slot, seed) < slot / 2);
        }
    }

    #[test]
    fn the_schedule_spreads_closes_over_the_window_in_order() {
        let window = Duration::from_secs(1);
        for n in [1u64, 2, 3, 7, 100] {
            let ids: Vec<u64> = (100..100 + n).collect();
            let plan = close_schedule(window, &ids);
            assert_eq!(plan.len(), ids.len());
            let slot = window / u32::try_from(n).unwrap();
            for (i, at) in (0u32..).zip(&plan) {
                // The i-th close falls in the first half of the i-th slot.
                assert!(
                    *at >= slot * i && *at < slot * i + slot / 2,
                    "{n}: {i} at {at:?}"
                );
            }
            assert!(
                plan.windows(2).all(|w| w[0] < w[1]),
                "{n}: order kept: {plan:?}"
            );
            assert!(plan.iter().all(|at| *at < window), "{n}: {plan:?}");
        }
        assert!(close_schedule(window, &[]).is_empty());
    }

    #[test]
    fn the_last_close_comes_at_least_half_the_window_after_the_first() {
        let window = Duration::from_millis(800);
        for _ in 0..50 {
            let plan = close_schedule(window, &[1, 2]);
            assert!(plan[1] - plan[0] >= window / 4, "{plan:?}");
            assert!(plan[1] >= window / 2, "{plan:?}");
        }
    }

    /// Tunnels in a registry, as the drain sees them; no socket involved.
    fn tunnels(
        n: usize,
    ) -> (
        Vec<crate::observe::registry::RegistryGuard>,
        CancellationToken,
    ) {
        let registry = Arc::new(crate::observe::registry::Registry::default());
        let drain = CancellationToken::new();
        let addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
        let guards = (0..n)
            .map(|_| {
                registry.open(
                    crate::observe::registry::ConnInfo::test(addr),
                    &drain,
                    &CancellationToken::new(),
                )
            })
            .collect();
        (guards, drain)
    }

    #[tokio::test(start_paused = true)]
    async fn spread_close_asks_each_tunnel_to_close_in_its_own_slot() {
        let (guards, drain) = tunnels(4);
        let conns: Vec<Arc<ConnStats>> = guards.iter().map(|g| g.stats.clone()).collect();
        let window = Duration::from_secs(8);
        let slot = window / 4;
        let order = CloseOrder {
            code: CLOSE_SERVICE_RESTART,
            reason: "test".to_string(),
        };
        let start = Instant::now();
        let stop = CancellationToken::new();
        let closer = spread_close(&conns, window, &order, &stop, &drain);
        let watch = async {
            let mut fired = Vec::new();
            for c in &conns {
                c.close.requested().await;
                fired.push(Instant::now() - start);
            }
            fired
        };
        let ((), fired) = tokio::join!(closer, watch);
        for (i, at) in (0u32..).zip(&fired) {
            assert!(
                *at >= slot * i && *at < slot * i + slot / 2,
                "{i} at {at:?}: {fired:?}"
            );
        }
        assert!(conns.iter().all(|c| c.close.order() == order));
    }

    #[tokio::test(start_paused = true)]
    async fn spread_close_stops_when_told() {
        let (guards, drain) = tunnels(3);
        let conns: Vec<Arc<ConnStats>> = guards.iter().map(|g| g.stats.clone()).collect();
        let order = CloseOrder {
            code: CLOSE_SERVICE_RESTART,
            reason: "test".to_string(),
        };
        let stop = CancellationToken::new();
        let closer = spread_close(&conns, Duration::from_secs(9), &order, &stop, &drain);
        let stopper = async {
            conns[0].close.requested().await;
            stop.cancel();
        };
        tokio::join!(closer, stopper);
        assert!(conns[0].close.is_requested());
        assert!(!conns[1].close.is_requested());
        assert!(!conns[2].close.is_requested());
    }
}
