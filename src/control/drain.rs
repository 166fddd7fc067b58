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

use crate::observe::registry::{CloseOrder, ConnStats, CLOSE_GOING_AWAY};
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

/// Waits `upstream.drain_timeout`, then closes the server's remaining
/// tunnels with 1001 spread over `upstream.drain_spread`. Stops early when
/// `stop` fires (the server was enabled again) or wsgate drains.
pub async fn drain_server(
    shared: Arc<Shared>,
    upstream: Arc<Upstream>,
    server: Arc<Server>,
    stop: CancellationToken,
) {
    tokio::select! {
        _ = tokio::time::sleep(upstream.settings.drain_timeout) => {}
        _ = stop.cancelled() => return,
        _ = shared.drain.cancelled() => return,
    }
    let order = CloseOrder {
        code: CLOSE_GOING_AWAY,
        reason: "server draining".to_string(),
    };
    // Until the server holds nothing: a handshake in flight when the drain
    // began may open a tunnel after the first listing.
    loop {
        let conns: Vec<Arc<ConnStats>> = tunnels_of(&shared, &upstream, &server)
            .into_iter()
            .filter(|c| !c.close.token().is_cancelled())
            .collect();
        if conns.is_empty() {
            // Closing tunnels and handshakes in flight still count as active.
            if server.active() == 0 {
                return;
            }
        } else {
            tracing::info!(upstream = %upstream.name, server = %server.addr, tunnels = conns.len(), "closing a draining server's tunnels");
            spread_close(
                &conns,
                upstream.settings.drain_spread,
                &order,
                &stop,
                &shared.drain,
            )
            .await;
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
    // Over enabled servers only: a draining server is emptied anyway, and
    // counting it would make balanced servers look loaded.
    let per_server: Vec<Vec<Arc<ConnStats>>> = upstream
        .servers
        .iter()
        .filter(|s| s.is_enabled())
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

/// Asks each tunnel in `conns` to close with `order`, the i-th at
/// `window × i / n` plus jitter within its slot. Returns early on `stop` or `drain`.
pub async fn spread_close(
    conns: &[Arc<ConnStats>],
    window: Duration,
    order: &CloseOrder,
    stop: &CancellationToken,
    drain: &CancellationToken,
) {
    let n = conns.len();
    if n == 0 {
        return;
    }
    let start = Instant::now();
    let slot = window / u32::try_from(n).unwrap_or(u32::MAX);
    for (i, conn) in conns.iter().enumerate() {
        let at = start + slot * u32::try_from(i).unwrap_or(u32::MAX) + jitter(slot, conn.id);
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = stop.cancelled() => return,
            _ = drain.cancelled() => return,
        }
        conn.close.request(order.clone());
    }
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
}
