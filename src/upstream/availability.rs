//! A server's availability beyond the operator's drain: the passive
//! checks' ejection (`passive.rs`), slow start (`slow_start.rs`) and the
//! change signal the control path watches, as methods of [`Server`] and
//! [`Upstream`]; kept apart from `balancer.rs`, which owns the algorithms.
//!
//! Must not: do I/O or log (the control path's watcher, `control::eject`,
//! logs and counts what changes here).

use std::hash::BuildHasher;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::config::Availability;
use crate::upstream::balancer::{Server, Upstream};
use crate::upstream::passive::{PassiveView, Verdict};
use crate::upstream::slow_start;

/// `Retry-After` when no server is usable and no ejection's end is known
/// (the servers are unhealthy or drained): a guess short enough to be
/// worth a retry, long enough not to hammer.
pub const RETRY_AFTER_UNKNOWN: Duration = Duration::from_secs(5);

// === impl Server ===

impl Server {
    /// Whether the passive checks have ejected the server. An ejection
    /// whose time is up ends here, lazily, on whichever read sees it first:
    /// the server's ramp starts and the change is signalled, once.
    pub fn is_ejected(&self) -> bool {
        self.is_ejected_at(Instant::now())
    }

    pub(super) fn is_ejected_at(&self, now: Instant) -> bool {
        if let Some(ended) = self.passive.expire(now) {
            self.ramp.start(ended.until);
            self.changed();
        }
        self.passive.is_ejected(now)
    }

    /// Records a failed connect, TLS handshake or upgrade exchange (see
    /// `UpstreamError::is_server_failure`) under `cfg`; may eject the server.
    pub fn report_failure(&self, cfg: &Availability, reason: &str) -> Verdict {
        let v = self.passive.failure(Instant::now(), cfg, reason);
        if matches!(v, Verdict::Ejected(_)) {
            self.changed();
        }
        v
    }

    /// Records an exchange that got an answer: the failure count and the
    /// backoff start over. Takes no lock unless there is something to reset.
    pub fn report_success(&self) {
        self.passive.success(Instant::now());
    }

    /// The passive checks' state, for the admin API and the control path.
    pub fn passive(&self) -> PassiveView {
        self.passive.view()
    }

    /// Starts slow start's ramp now: a reload added this server.
    pub fn begin_ramp(&self) {
        self.ramp.start(Instant::now());
    }

    /// When the ramp in progress began, if one is.
    pub fn ramping_since(&self) -> Option<Instant> {
        self.ramp.since()
    }

    /// A receiver that sees every change of health or ejection; the value
    /// only counts them.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(super) fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

// === impl Upstream ===

impl Upstream {
    /// Slow start (see `slow_start.rs`): a ramping first candidate is
    /// admitted with the probability of its share, else it goes second.
    pub(super) fn slow_start(&self, mut order: Vec<usize>, now: Instant) -> Vec<usize> {
        let ramp = self.settings.availability.slow_start;
        if order.len() < 2 || ramp.is_zero() {
            return order;
        }
        let share = self.servers[order[0]].ramp.share(now, ramp);
        let draw = self
            .random
            .hash_one(self.draws.fetch_add(1, Ordering::Relaxed));
        if !slow_start::admit(share, draw) {
            order.swap(0, 1);
        }
        order
    }

    /// How long a client refused for want of a usable server should wait:
    /// the soonest a server can be back, rounded up to whole seconds: the
    /// end of an ejection, or for a server down by its active check the
    /// `healthy_threshold` probes it must pass; [`RETRY_AFTER_UNKNOWN`]
    /// when only drains keep the servers out (they have no known end).
    pub fn retry_after(&self) -> Duration {
        let now = Instant::now();
        let checks_back = self
            .settings
            .health
            .as_ref()
            .map(|h| h.interval.saturating_mul(h.healthy_threshold));
        self.servers
            .iter()
            .filter(|s| s.is_enabled())
            .filter_map(|s| {
                if s.is_healthy() {
                    s.passive()
                        .ejected_until
                        .map(|until| until.saturating_duration_since(now))
                } else {
                    checks_back
                }
            })
            .min()
            .map_or(RETRY_AFTER_UNKNOWN, |d| {
                Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
                    .max(Duration::from_secs(1))
            })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::upstream::balancer::tests::{pool_w, port};
    use crate::upstream::balancer::{stable_hash, Balance, HashKey};

    fn ramping_pool(balance: Balance, slow_start: Duration) -> Upstream {
        let mut u = pool_w(&[1, 1], balance);
        let mut settings = (*u.settings).clone();
        settings.availability.slow_start = slow_start;
        u.settings = Arc::new(settings);
        u
    }

    fn eject_once() -> Availability {
        Availability {
            max_fails: 1,
            eject_for: Duration::from_secs(10),
            ..Availability::default()
        }
    }

    #[test]
    fn an_ejected_server_gets_nothing_until_its_ejection_ends() {
        let u = pool_w(&[1, 1], Balance::LeastConn);
        let mut changes = u.servers[0].changes();
        let v = u.servers[0].report_failure(&eject_once(), "refused");
        assert!(matches!(v, Verdict::Ejected(_)), "{v:?}");
        assert!(
            changes.has_changed().unwrap_or(false),
            "an ejection is signalled"
        );
        changes.borrow_and_update();
        let now = Instant::now();
        for _ in 0..4 {
            let ports: Vec<u16> = u.candidates_at(None, now).iter().map(port).collect();
            assert_eq!(ports, [2]);
        }
        assert!(!changes.has_changed().unwrap_or(true));
        // Seen over by the first read after its end, signalled once.
        let later = now + Duration::from_secs(11);
        assert_eq!(u.candidates_at(None, later).len(), 2);
        assert!(
            changes.has_changed().unwrap_or(false),
            "its end is signalled"
        );
        changes.borrow_and_update();
        assert_eq!(u.candidates_at(None, later).len(), 2);
        assert!(!changes.has_changed().unwrap_or(true), "once");
        assert!(
            u.servers[0].ramping_since().is_some(),
            "back: slow start begins"
        );
    }

    #[test]
    fn retry_after_is_the_earliest_end_of_an_ejection_in_whole_seconds() {
        let u = pool_w(&[1, 1], Balance::LeastConn);
        u.servers[1].disable();
        assert_eq!(
            u.retry_after(),
            RETRY_AFTER_UNKNOWN,
            "a drain has no known end"
        );
        u.servers[0].report_failure(&eject_once(), "refused");
        assert!(u.candidates(None).is_empty());
        let after = u.retry_after();
        assert!(
            after == Duration::from_secs(10) || after == Duration::from_secs(9),
            "{after:?}"
        );
    }

    #[test]
    fn retry_after_for_servers_down_by_their_check_is_the_probes_to_come_back() {
        let mut u = pool_w(&[1, 1], Balance::LeastConn);
        let mut settings = (*u.settings).clone();
        settings.health = Some(crate::config::HealthCheck {
            interval: Duration::from_millis(1500),
            healthy_threshold: 2,
            ..crate::config::HealthCheck::default()
        });
        u.settings = Arc::new(settings);
        u.servers[0].set_healthy(false);
        u.servers[1].set_healthy(false);
        assert!(u.candidates(None).is_empty());
        assert_eq!(
            u.retry_after(),
            Duration::from_secs(3),
            "two probes 1.5s apart"
        );
        u.servers[0].disable();
        u.servers[1].disable();
        assert_eq!(
            u.retry_after(),
            RETRY_AFTER_UNKNOWN,
            "drains have no known end"
        );
    }

    #[test]
    fn health_changes_are_signalled_and_a_server_healthy_again_ramps() {
        let u = pool_w(&[1, 1], Balance::LeastConn);
        let mut changes = u.servers[0].changes();
        assert!(u.servers[0].set_healthy(false));
        assert!(!u.servers[0].set_healthy(false), "no change");
        assert!(changes.has_changed().unwrap_or(false));
        changes.borrow_and_update();
        assert_eq!(u.candidates(None).iter().map(port).collect::<Vec<_>>(), [2]);
        assert!(u.servers[0].ramping_since().is_none());
        assert!(u.servers[0].set_healthy(true));
        assert!(changes.has_changed().unwrap_or(false));
        assert!(u.servers[0].ramping_since().is_some());
    }

    /// Picks `n` times at `now`, holding each tunnel when `hold` (long-lived
    /// connections), and counts the first candidates of the second server.
    fn picks_of_the_second(u: &Upstream, n: usize, now: Instant, hold: bool) -> usize {
        let mut guards = Vec::new();
        let mut second = 0;
        for _ in 0..n {
            let c = u.candidates_at(None, now);
            if port(&c[0]) == 2 {
                second += 1;
            }
            if hold {
                guards.push(c[0].track());
            }
        }
        second
    }

    #[test]
    fn slow_start_admits_a_ramping_server_at_its_share_under_least_conn() {
        let ss = Duration::from_secs(100);
        let u = ramping_pool(Balance::LeastConn, ss);
        let t0 = Instant::now();
        u.servers[1].ramp.start(t0);
        // Without slow start, least_conn would give it half of these.
        let early = picks_of_the_second(&u, 1000, t0, true);
        assert!((50..=150).contains(&early), "{early} of 1000 at 10%");
        let u = ramping_pool(Balance::LeastConn, ss);
        u.servers[1].ramp.start(t0);
        let half = picks_of_the_second(&u, 1000, t0 + ss / 2, true);
        assert!((420..=580).contains(&half), "{half} of 1000 at 50%");
        // Short connections: every load is zero, ties rotate, and the ramp
        // still holds it to its share of the picks it would have had.
        let u = ramping_pool(Balance::LeastConn, ss);
        u.servers[1].ramp.start(t0);
        let short = picks_of_the_second(&u, 1000, t0, false);
        assert!((20..=90).contains(&short), "{short} of 1000 at 10% of half");
    }

    #[test]
    fn slow_start_applies_to_round_robin_and_ends_with_the_ramp() {
        let ss = Duration::from_secs(100);
        let u = ramping_pool(Balance::RoundRobin, ss);
        let t0 = Instant::now();
        u.servers[1].ramp.start(t0);
        let early = picks_of_the_second(&u, 1000, t0, false);
        assert!((20..=90).contains(&early), "{early} of 1000");
        // The ramping server stays a fallback: a retry may reach it.
        for _ in 0..20 {
            assert_eq!(u.candidates_at(None, t0).len(), 2);
        }
        let done = picks_of_the_second(&u, 1000, t0 + ss, false);
        assert_eq!(done, 500, "plain round-robin once the ramp is over");
        assert!(u.servers[1].ramping_since().is_none());
        // Off: no effect at all.
        let off = ramping_pool(Balance::RoundRobin, Duration::ZERO);
        off.servers[1].ramp.start(t0);
        assert_eq!(picks_of_the_second(&off, 1000, t0, false), 500);
    }

    #[test]
    fn the_ring_never_places_an_unusable_server() {
        let u = pool_w(
            &[1, 1, 1],
            Balance::Hash {
                key: HashKey::Ip,
                load_factor: 1.25,
            },
        );
        u.servers[1].report_failure(&eject_once(), "refused");
        assert!(u.servers[2].set_healthy(false));
        for k in 0..200u64 {
            let ports: Vec<u16> = u
                .candidates(Some(stable_hash(&k.to_le_bytes())))
                .iter()
                .map(port)
                .collect();
            assert_eq!(ports, [1], "key {k}");
        }
    }
}
