//! Slow start: a server back in service (healthy again, its ejection over,
//! enabled again after a drain) or added by a reload takes new connections
//! at a rate that ramps over the upstream's `slow_start`.
//!
//! How, for every algorithm alike: the balancer orders the candidates as
//! it always does; when the first one is ramping, it is admitted with
//! probability `max(elapsed / slow_start, MIN_SHARE)`, and otherwise swapped
//! with the second (it stays a fallback, so a retry may still reach it).
//! This is Envoy's approach for its slow start. Scaling the weight instead
//! would not do for least connections: a server back with no tunnels has
//! the least load per unit of any weight, and with short connections every
//! server sits at zero and ties rotate, so it would still take its full
//! share (or, with long-lived tunnels, every new connection) at once.
//! Admission caps the rate of new connections itself, whatever the loads.
//!
//! Must not: do I/O, or hold anything besides the ramp's start.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The least share a ramping server is admitted at, so that it sees some
/// traffic (and its passive checks some outcomes) from the start.
pub const MIN_SHARE: f64 = 0.1;

/// The share of its first places a server admits, `elapsed / slow_start`
/// and at least [`MIN_SHARE`]; 1 once the ramp is over or without one.
pub fn share(since: Option<Instant>, now: Instant, slow_start: Duration) -> f64 {
    match since {
        Some(t) if !slow_start.is_zero() => {
            let f = now.saturating_duration_since(t).as_secs_f64() / slow_start.as_secs_f64();
            f.clamp(MIN_SHARE, 1.0)
        }
        _ => 1.0,
    }
}

/// Whether a pick with the uniform random `draw` admits a server at `share`.
pub fn admit(share: f64, draw: u64) -> bool {
    if share >= 1.0 {
        return true;
    }
    // The top 53 bits as a fraction in [0, 1).
    let u = (draw >> 11) as f64 / (1u64 << 53) as f64;
    u < share
}

/// When a server's current ramp began; `None` when it has none.
#[derive(Debug, Default)]
pub struct Ramp(Mutex<Option<Instant>>);

impl Ramp {
    /// Starts a ramp at `at` (a later start replaces an earlier one).
    pub fn start(&self, at: Instant) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    }

    /// The share at `now`; a ramp found over is forgotten.
    pub fn share(&self, now: Instant, slow_start: Duration) -> f64 {
        let mut since = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let f = share(*since, now, slow_start);
        if f >= 1.0 {
            *since = None;
        }
        f
    }

    /// Whether a ramp has started and not been seen over.
    pub fn since(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_ramps_linearly_from_the_floor_to_one() {
        let t0 = Instant::now();
        let ss = Duration::from_secs(100);
        let at = |s: u64| share(Some(t0), t0 + Duration::from_secs(s), ss);
        assert_eq!(at(0), MIN_SHARE);
        assert_eq!(at(5), MIN_SHARE);
        assert!((at(50) - 0.5).abs() < 1e-9);
        assert_eq!(at(100), 1.0);
        assert_eq!(at(1000), 1.0);
        assert_eq!(share(None, t0, ss), 1.0, "no ramp");
        assert_eq!(share(Some(t0), t0, Duration::ZERO), 1.0, "slow_start off");
    }

    #[test]
    fn admission_follows_the_share() {
        // An even spread of draws over the whole u64 range.
        let n = 10_000u64;
        let draws = (0..n).map(|i| i.wrapping_mul(u64::MAX / n));
        for share in [0.1, 0.25, 0.5, 0.9] {
            let admitted = draws.clone().filter(|&d| admit(share, d)).count() as f64;
            assert!(
                (admitted / n as f64 - share).abs() < 0.01,
                "{share}: {admitted}"
            );
        }
        assert!(draws.clone().all(|d| admit(1.0, d)));
    }

    #[test]
    fn a_ramp_is_forgotten_once_over() {
        let t0 = Instant::now();
        let r = Ramp::default();
        let ss = Duration::from_secs(10);
        assert_eq!(r.share(t0, ss), 1.0);
        r.start(t0);
        assert_eq!(r.share(t0 + Duration::from_secs(5), ss), 0.5);
        assert_eq!(r.since(), Some(t0));
        assert_eq!(r.share(t0 + ss, ss), 1.0);
        assert_eq!(r.since(), None);
    }
}
