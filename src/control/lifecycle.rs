//! The life cycle of a running wsgate: whether it is ready for traffic, and
//! stopping it gracefully in phases.
//!
//! Owns: [`Readiness`] (what `/readyz` answers) and [`stop`], the graceful
//! stop a SIGTERM starts. Its phases, each entered once and in this order:
//!
//! | phase | entered when | what happens |
//! |---|---|---|
//! | stopping | [`stop`] is called | listeners stop accepting, `/readyz` answers 503, reloads are refused; established connections (keep-alive HTTP, tunnels) are served as before |
//! | closing | `shutdown_delay` has passed | idle HTTP connections end, busy ones after their request; every tunnel gets Close 1001 at a frame boundary, spread over `shutdown_spread` |
//! | draining | the spread is done | anything still open (a tunnel opened by an upgrade in flight) gets 1001 at once; wsgate waits for the closing handshakes |
//! | cut | `shutdown_timeout` after the delay, or `shutdown` cancelled (a second signal) | what remains is cut |
//!
//! Keep-alive connections stay open through `shutdown_delay`, as HAProxy
//! and Envoy do: a load balancer (a Kubernetes endpoint removal) lags
//! behind the signal, and a client on an established connection that is
//! still being sent here gets its answers instead of resets. New
//! connections are refused only because the listeners are closed.
//!
//! Must not: touch a tunnel other than through its `CloseControl`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::RuntimeConfig;
use crate::control::drain::spread_close;
use crate::observe::access::CloseOrder;
use crate::observe::registry::CLOSE_GOING_AWAY;
use crate::Shared;

/// What `/readyz` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Serving, and (with `ready_requires_healthy`) every routed upstream
    /// has a usable server.
    Ready,
    /// The first config is still being resolved and compiled.
    Starting,
    /// A graceful stop has begun.
    Stopping,
    /// With `ready_requires_healthy`: these routed upstreams have no usable server.
    Unhealthy(Vec<String>),
}

/// How ready a started wsgate is (see [`Readiness`]).
pub fn readiness(shared: &Shared) -> Readiness {
    if shared.stopping.is_cancelled() {
        return Readiness::Stopping;
    }
    if !shared
        .admin
        .as_ref()
        .is_some_and(|a| a.ready_requires_healthy)
    {
        return Readiness::Ready;
    }
    let snapshot = shared.snapshot.load();
    let mut down: Vec<String> = snapshot
        .config
        .routes
        .iter()
        .map(|r| r.upstream.as_str())
        .filter(|name| {
            snapshot
                .upstream(name)
                .is_some_and(|u| !u.servers.iter().any(|s| s.is_usable()))
        })
        .map(str::to_string)
        .collect();
    down.sort();
    down.dedup();
    if down.is_empty() {
        Readiness::Ready
    } else {
        Readiness::Unhealthy(down)
    }
}

/// The timing of a graceful stop, from `[runtime]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopPlan {
    /// `shutdown_delay`: serving established connections before closing.
    pub delay: Duration,
    /// `shutdown_spread`: the window over which tunnels get their 1001.
    pub spread: Duration,
    /// `shutdown_timeout`: from the end of the delay to the cut.
    pub timeout: Duration,
}

impl From<&RuntimeConfig> for StopPlan {
    fn from(r: &RuntimeConfig) -> Self {
        Self {
            delay: r.shutdown_delay,
            spread: r.shutdown_spread,
            timeout: r.shutdown_timeout,
        }
    }
}

/// How a graceful stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every connection and task ended before the timeout.
    Clean,
    /// The timeout passed, or `shutdown` was cancelled, with this many
    /// tunnels still open: they were cut.
    Cut {
        /// Tunnels still open at the cut (when `shutdown` was cancelled by
        /// someone else, some may already have ended).
        tunnels: usize,
    },
}

/// Stops gracefully in the phases of the module's table; returns once
/// every task of the data path has ended or the rest was cut. Cancelling
/// `shared.shutdown` meanwhile (a second signal) cuts at once.
pub async fn stop(shared: Arc<Shared>, plan: StopPlan) -> Stopped {
    let cut = shared.shutdown.clone();
    shared.stopping.cancel();
    tracing::info!(
        delay = ?plan.delay,
        "stopping: listeners closed and /readyz 503; established connections are served until the delay ends; signal again to stop at once"
    );
    tokio::select! {
        _ = tokio::time::sleep(plan.delay) => {}
        _ = cut.cancelled() => return cut_now(&shared),
    }
    let deadline = Instant::now() + plan.timeout;
    shared.winding.cancel();
    let tunnels: Vec<_> = shared
        .registry
        .live()
        .into_iter()
        .filter(|c| !c.close.is_requested())
        .collect();
    tracing::info!(
        tunnels = tunnels.len(),
        spread = ?plan.spread,
        timeout = ?plan.timeout,
        "closing every tunnel with 1001, spread out"
    );
    let order = CloseOrder {
        code: CLOSE_GOING_AWAY,
        reason: "going away".to_string(),
    };
    // `spread_close` returns early when its drain token fires; here the
    // drain comes after the spread, so only the cut may end it.
    let never = CancellationToken::new();
    tokio::select! {
        _ = spread_close(&tunnels, plan.spread, &order, &cut, &never) => {}
        _ = tokio::time::sleep_until(deadline) => {}
    }
    // Tunnels opened meanwhile, by upgrades already in flight, close now.
    shared.begin_drain();
    shared.tasks.close();
    tokio::select! {
        _ = shared.tasks.wait() => {
            tracing::info!("every connection ended");
            Stopped::Clean
        }
        _ = tokio::time::sleep_until(deadline) => cut_now(&shared),
        _ = cut.cancelled() => cut_now(&shared),
    }
}

/// Cuts what is left.
fn cut_now(shared: &Shared) -> Stopped {
    let tunnels = shared.registry.live_count();
    tracing::warn!(tunnels, "stopping now: cutting what is left");
    shared.shut_down();
    Stopped::Cut { tunnels }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::registry::{ConnInfo, RegistryGuard};

    /// A started wsgate with no bound listener, and `n` tunnels in its
    /// registry as the stop sees them; no socket involved.
    fn gateway_with_tunnels(n: usize) -> (crate::Gateway, Vec<RegistryGuard>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wsgate.toml");
        std::fs::write(
            &path,
            "[[listeners]]\nname=\"l\"\nbind=\"127.0.0.1:0\"\n[[routes]]\nupstream=\"u\"\n[upstreams.u]\nservers=[\"127.0.0.1:9\"]\n",
        )
        .expect("write");
        let config = crate::config::load(&path).expect("valid");
        let gw =
            crate::Gateway::start(config, Vec::new(), CancellationToken::new()).expect("start");
        let addr: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let shared = gw.shared().clone();
        let guards = (0..n)
            .map(|_| {
                shared
                    .registry
                    .open(ConnInfo::test(addr), &shared.drain, &shared.shutdown)
            })
            .collect();
        (gw, guards, dir)
    }

    #[tokio::test(start_paused = true)]
    async fn tunnels_are_closed_after_the_delay_each_in_its_slot_of_the_spread() {
        let (gw, guards, _dir) = gateway_with_tunnels(4);
        let shared = gw.shared().clone();
        let plan = StopPlan {
            delay: Duration::from_secs(10),
            spread: Duration::from_secs(8),
            timeout: Duration::from_secs(60),
        };
        let slot = plan.spread / 4;
        let start = Instant::now();
        let watch = async {
            let mut fired = Vec::new();
            for g in &guards {
                g.stats.close.requested().await;
                // At the moment of each close, the stop had long begun.
                assert!(shared.stopping.is_cancelled());
                fired.push(Instant::now() - start);
            }
            fired
        };
        let stopping = async {
            // No task stands for these tunnels: nothing holds the stop.
            assert_eq!(stop(shared.clone(), plan).await, Stopped::Clean);
        };
        let (fired, ()) = tokio::join!(watch, stopping);
        for (i, at) in (0u32..).zip(&fired) {
            let from = plan.delay + slot * i;
            assert!(
                *at >= from && *at < from + slot / 2,
                "{i} at {at:?}: {fired:?}"
            );
        }
        assert!(guards
            .iter()
            .all(|g| g.stats.close.order().code == CLOSE_GOING_AWAY));
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ends_with_the_drain_makes_a_clean_stop() {
        let (gw, _guards, _dir) = gateway_with_tunnels(0);
        let shared = gw.shared().clone();
        let drain = shared.drain.clone();
        shared.tasks.spawn(async move { drain.cancelled().await });
        let plan = StopPlan {
            delay: Duration::from_secs(1),
            spread: Duration::ZERO,
            timeout: Duration::from_secs(60),
        };
        assert_eq!(stop(shared.clone(), plan).await, Stopped::Clean);
        assert!(!shared.shutdown.is_cancelled(), "nothing was cut");
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_left_at_the_timeout_is_cut() {
        let (gw, _guards, _dir) = gateway_with_tunnels(1);
        let shared = gw.shared().clone();
        // A task that only a cut ends, as a request never answered.
        let cut = shared.shutdown.clone();
        shared.tasks.spawn(async move { cut.cancelled().await });
        let plan = StopPlan {
            delay: Duration::ZERO,
            spread: Duration::ZERO,
            timeout: Duration::from_secs(30),
        };
        let start = Instant::now();
        assert_eq!(
            stop(shared.clone(), plan).await,
            Stopped::Cut { tunnels: 1 }
        );
        assert!(shared.shutdown.is_cancelled());
        assert_eq!(Instant::now() - start, plan.timeout);
    }
}
