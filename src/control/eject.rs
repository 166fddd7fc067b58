//! The control side of servers leaving and re-entering service on their
//! own: one watcher task per server of the running snapshot reacts to the
//! server's change signal (`Server::changes`), fired by passive ejections
//! and by health verdicts. It logs each ejection and its end once, counts
//! ejections in `wsgate_server_ejections_total`, ends an ejection on time
//! even when no request comes to notice it, and, with the upstream's
//! `close_on_unhealthy`, closes an unusable server's tunnels with 1001
//! spread over `drain_spread` (stopping if the server comes back).
//!
//! Watchers follow the snapshot: [`sync`] runs at start and after every
//! reload's swap, starting one for each new server and stopping those of
//! servers gone; a server a reload keeps keeps its watcher.
//!
//! Must not: change a server's state (the data path and the health
//! checker do); an operator's drain is not its business (`drain.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::control::drain;
use crate::observe::access::CloseOrder;
use crate::observe::registry::CLOSE_GOING_AWAY;
use crate::upstream::balancer::Server;
use crate::Shared;

/// The running watchers, by server identity (the `Arc`'s address: the
/// watcher holds the `Arc`, so the address is not reused while listed).
#[derive(Debug, Default)]
pub struct Watchers(Mutex<HashMap<usize, Watched>>);

/// One watcher: its stop, and whose series it counts into.
#[derive(Debug)]
struct Watched {
    stop: CancellationToken,
    upstream: Arc<str>,
    addr: std::net::SocketAddr,
}

impl Watchers {
    /// How many servers are watched: one per server of the running snapshot.
    pub fn count(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Starts a watcher for every server of the running snapshot that has
/// none, and stops those of servers it no longer has.
pub fn sync(shared: &Arc<Shared>) {
    let snapshot = shared.snapshot.load_full();
    let mut running = shared
        .ejection_watchers
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut current = HashSet::new();
    let mut addrs = HashSet::new();
    for up in snapshot.upstreams() {
        for server in &up.servers {
            let key = Arc::as_ptr(server) as usize;
            current.insert(key);
            addrs.insert((up.name.clone(), server.addr));
            if running.contains_key(&key) {
                continue;
            }
            let stop = shared.drain.child_token();
            running.insert(
                key,
                Watched {
                    stop: stop.clone(),
                    upstream: up.name.clone(),
                    addr: server.addr,
                },
            );
            shared
                .tasks
                .spawn(watch(shared.clone(), up.name.clone(), server.clone(), stop));
        }
    }
    running.retain(|key, w| {
        let keep = current.contains(key);
        if !keep {
            w.stop.cancel();
            // Its series go with it, unless the same address stays (a new
            // server object for it keeps counting into the same series).
            if !addrs.contains(&(w.upstream.clone(), w.addr)) {
                shared
                    .metrics
                    .forget_ejections(&w.upstream, &w.addr.to_string());
            }
        }
        keep
    });
}

/// What the watcher last saw of its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    ejected: bool,
    unhealthy: bool,
    ejections: u64,
}

impl Seen {
    fn of(server: &Server) -> Self {
        Self {
            // Ends an ejection whose time is up, signalling it.
            ejected: server.is_ejected(),
            unhealthy: !server.is_healthy(),
            ejections: server.passive().ejections,
        }
    }

    /// Unusable for a reason of its own (an operator's drain is not one).
    fn down(self) -> bool {
        self.ejected || self.unhealthy
    }
}

async fn watch(
    shared: Arc<Shared>,
    upstream: Arc<str>,
    server: Arc<Server>,
    stop: CancellationToken,
) {
    let mut changes = server.changes();
    changes.borrow_and_update();
    let mut last = Seen::of(&server);
    let mut closing: Option<CancellationToken> = None;
    loop {
        let until = server.passive().ejected_until;
        tokio::select! {
            _ = stop.cancelled() => break,
            r = changes.changed() => if r.is_err() { break },
            // An ejection ends at its time, not at the next request.
            _ = sleep_until(until) => {}
        }
        changes.borrow_and_update();
        let now = Seen::of(&server);
        report(&shared, &upstream, &server, last, now);
        if now.down() && !last.down() && close_on_unhealthy(&shared, &upstream) {
            let token = stop.child_token();
            closing = Some(token.clone());
            let why = if now.ejected {
                "server ejected"
            } else {
                "server unhealthy"
            };
            shared.tasks.spawn(close_tunnels(
                shared.clone(),
                upstream.clone(),
                server.clone(),
                token,
                why,
            ));
        }
        if !now.down() {
            if let Some(t) = closing.take() {
                t.cancel();
            }
        }
        last = now;
    }
    if let Some(t) = closing {
        t.cancel();
    }
}

async fn sleep_until(until: Option<Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Logs and counts what changed between two looks at a server. Health
/// verdicts are logged by the health checker; ejections here.
fn report(shared: &Shared, upstream: &str, server: &Server, last: Seen, now: Seen) {
    let addr = server.addr.to_string();
    if now.ejections > last.ejections {
        let n = now.ejections - last.ejections;
        shared.metrics.server_ejected(upstream, &addr, n);
        let (length, reason) = server.passive().last.unwrap_or_default();
        tracing::warn!(
            upstream,
            server = %addr,
            ejected_for = %humantime::format_duration(length),
            ejections = now.ejections,
            reason = %reason,
            "server ejected by passive checks"
        );
    }
    if last.ejected && !now.ejected {
        tracing::info!(upstream, server = %addr, "ejection over: server back in service");
    }
}

fn close_on_unhealthy(shared: &Shared, upstream: &str) -> bool {
    shared
        .snapshot
        .load()
        .upstream(upstream)
        .is_some_and(|u| u.settings.availability.close_on_unhealthy)
}

/// Closes the server's tunnels with 1001, spread over the upstream's
/// `drain_spread`, until none is left or `stop` (the server is usable
/// again, or its watcher ends).
async fn close_tunnels(
    shared: Arc<Shared>,
    upstream: Arc<str>,
    server: Arc<Server>,
    stop: CancellationToken,
    why: &'static str,
) {
    let order = CloseOrder {
        code: CLOSE_GOING_AWAY,
        reason: why.to_string(),
    };
    let current = || shared.snapshot.load().upstream(&upstream).cloned();
    drain::close_until_empty(&shared, current, &server, &order, &stop).await;
}

/// A server's passive-check fields for `GET /api/upstreams`: `fails`
/// (consecutive failures counted), `ejections` (ever), `ejected_until`
/// (RFC 3339, `null` when not ejected), `last_ejection_ms` and
/// `last_ejection_reason` (the latest ejection, over or not; `null` if
/// none) and `slow_start` (whether its ramp is in progress).
pub fn server_fields(server: &Server, slow_start: Duration) -> Map<String, Value> {
    let ejected = server.is_ejected();
    let v = server.passive();
    let until = v.ejected_until.filter(|_| ejected).map(|t| {
        let left = t.saturating_duration_since(Instant::now());
        humantime::format_rfc3339_millis(std::time::SystemTime::now() + left).to_string()
    });
    let (last_ms, last_reason) = match v.last {
        Some((length, reason)) => (
            Some(u64::try_from(length.as_millis()).unwrap_or(u64::MAX)),
            Some(reason),
        ),
        None => (None, None),
    };
    let fields = json!({
        "fails": v.fails,
        "ejections": v.ejections,
        "ejected_until": until,
        "last_ejection_ms": last_ms,
        "last_ejection_reason": last_reason,
        "slow_start": server.ramping_since().is_some_and(|t| t.elapsed() < slow_start),
    });
    match fields {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
