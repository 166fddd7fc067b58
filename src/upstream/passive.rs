//! Passive checks of one server: its consecutive failures, its ejection
//! and the backoff of its re-ejections, decided from what real traffic
//! saw (connects, TLS and upgrade exchanges), with no probe of its own.
//!
//! The rule: `max_fails` consecutive failures, the first and the last at
//! most `fail_window` apart, eject the server for `eject_for`. When the
//! ejection ends the server is on probation: the next outcome decides. A
//! failure ejects it again for twice as long as the last time (capped at
//! `eject_max`); a success resets the count and the backoff. Outcomes that
//! arrive while the server is ejected are ignored: those attempts began
//! before the ejection, which already accounts for them.
//!
//! Time is passed in ([`Record`] is pure); [`Passive`] wraps it for shared
//! use with one atomic read on the hot path while nothing is ejected.
//!
//! Must not: do I/O, log, or decide what counts as a failure (the caller
//! does: see `UpstreamError::is_server_failure`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Availability;

/// One ejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ejection {
    /// When it ends (monotonic clock).
    pub until: Instant,
    /// How long it lasts: `eject_for` doubled once per ejection in a row.
    pub length: Duration,
    /// Why, for the log: the failures seen and the last one's error.
    pub reason: String,
}

/// What one failure did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not counted: passive checks are off, or the server is ejected already.
    Ignored,
    /// Counted: this many consecutive failures within the window so far.
    Counted(u32),
    /// The server is ejected.
    Ejected(Ejection),
}

/// The passive-check record of one server. Pure: every method takes `now`.
#[derive(Debug, Default)]
pub struct Record {
    /// Times of the consecutive failures still within the window, oldest first.
    fails: VecDeque<Instant>,
    /// The ejection in force, until [`Record::expire`] ends it.
    ejected: Option<Ejection>,
    /// Ejections since the last success: the next one lasts `eject_for × 2^streak`.
    streak: u32,
    /// The ejection ended and no outcome has come since.
    probation: bool,
    /// Ejections ever.
    total: u64,
    /// The latest ejection, kept after it ends for the admin API.
    last: Option<Ejection>,
}

impl Record {
    /// Counts a failure seen at `now`, with `reason` (the error).
    pub fn failure(&mut self, now: Instant, cfg: &Availability, reason: &str) -> Verdict {
        if cfg.max_fails == 0 {
            return Verdict::Ignored;
        }
        self.expire(now);
        if self.ejected.is_some() {
            return Verdict::Ignored;
        }
        if std::mem::take(&mut self.probation) {
            let why = format!("failed again after its ejection: {reason}");
            return Verdict::Ejected(self.eject(now, cfg, why));
        }
        self.fails.push_back(now);
        while self.fails.len() > cfg.max_fails as usize
            || self
                .fails
                .front()
                .is_some_and(|&t| now.saturating_duration_since(t) > cfg.fail_window)
        {
            self.fails.pop_front();
        }
        let n = self.fails.len() as u32;
        if n < cfg.max_fails {
            return Verdict::Counted(n);
        }
        let span = self
            .fails
            .front()
            .map_or(Duration::ZERO, |&t| now.saturating_duration_since(t));
        self.fails.clear();
        let why = format!(
            "{n} failures in {}: {reason}",
            humantime::format_duration(round_ms(span))
        );
        Verdict::Ejected(self.eject(now, cfg, why))
    }

    /// Counts a success at `now`: the count and the backoff start over.
    /// Returns whether there was anything to reset.
    pub fn success(&mut self, now: Instant) -> bool {
        self.expire(now);
        if self.ejected.is_some() {
            return false;
        }
        let had = !self.fails.is_empty() || self.streak > 0 || self.probation;
        self.fails.clear();
        self.streak = 0;
        self.probation = false;
        had
    }

    /// Ends the ejection if its time is up; returns the one that ended.
    pub fn expire(&mut self, now: Instant) -> Option<Ejection> {
        if self.ejected.as_ref().is_some_and(|e| now >= e.until) {
            self.probation = true;
            return self.ejected.take();
        }
        None
    }

    fn eject(&mut self, now: Instant, cfg: &Availability, reason: String) -> Ejection {
        let length = backoff(cfg, self.streak);
        self.streak = self.streak.saturating_add(1);
        self.total += 1;
        let e = Ejection {
            until: now + length,
            length,
            reason,
        };
        self.ejected = Some(e.clone());
        self.last = Some(e.clone());
        e
    }

    /// The ejection in force (as of the last call that passed `now`).
    pub fn ejected(&self) -> Option<&Ejection> {
        self.ejected.as_ref()
    }

    /// Consecutive failures counted toward the next ejection.
    pub fn fails(&self) -> u32 {
        self.fails.len() as u32
    }

    /// Ejections ever.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The latest ejection, over or not.
    pub fn last(&self) -> Option<&Ejection> {
        self.last.as_ref()
    }
}

/// `eject_for × 2^streak`, at most `eject_max`.
pub fn backoff(cfg: &Availability, streak: u32) -> Duration {
    let factor = 1u32.checked_shl(streak).unwrap_or(u32::MAX);
    cfg.eject_for
        .checked_mul(factor)
        .map_or(cfg.eject_max, |d| d.min(cfg.eject_max))
}

/// Logs read better without nanoseconds.
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// What the admin API shows of a server's passive checks.
#[derive(Debug, Clone, Default)]
pub struct PassiveView {
    /// Consecutive failures counted toward the next ejection.
    pub fails: u32,
    /// Ejections ever.
    pub ejections: u64,
    /// When the ejection in force ends; `None` when not ejected.
    pub ejected_until: Option<Instant>,
    /// The latest ejection's length and reason, over or not.
    pub last: Option<(Duration, String)>,
}

/// A server's [`Record`], shared: the data path reads one atomic while the
/// server is not ejected.
#[derive(Debug, Default)]
pub struct Passive {
    /// Set from an ejection until [`Passive::expire`] sees it over.
    ejected: AtomicBool,
    /// Set while a success has something to reset, so that the common
    /// success takes no lock.
    dirty: AtomicBool,
    record: Mutex<Record>,
}

impl Passive {
    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        // Plain counters: a panic elsewhere cannot leave them inconsistent.
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// See [`Record::failure`].
    pub fn failure(&self, now: Instant, cfg: &Availability, reason: &str) -> Verdict {
        if cfg.max_fails == 0 {
            return Verdict::Ignored;
        }
        let mut r = self.record();
        let v = r.failure(now, cfg, reason);
        self.dirty.store(true, Ordering::Relaxed);
        self.ejected.store(r.ejected().is_some(), Ordering::Relaxed);
        v
    }

    /// See [`Record::success`].
    pub fn success(&self, now: Instant) -> bool {
        if !self.dirty.load(Ordering::Relaxed) {
            return false;
        }
        let mut r = self.record();
        let had = r.success(now);
        if r.ejected().is_none() {
            self.dirty.store(false, Ordering::Relaxed);
        }
        had
    }

    /// Whether an ejection is in force at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected.load(Ordering::Relaxed)
            && self.record().ejected().is_some_and(|e| now < e.until)
    }

    /// Ends an ejection whose time is up; returns it, once.
    pub fn expire(&self, now: Instant) -> Option<Ejection> {
        if !self.ejected.load(Ordering::Relaxed) {
            return None;
        }
        let mut r = self.record();
        let ended = r.expire(now);
        self.ejected.store(r.ejected().is_some(), Ordering::Relaxed);
        ended
    }

    /// For the admin API.
    pub fn view(&self) -> PassiveView {
        let r = self.record();
        PassiveView {
            fails: r.fails(),
            ejections: r.total(),
            ejected_until: r.ejected().map(|e| e.until),
            last: r.last().map(|e| (e.length, e.reason.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_fails: u32) -> Availability {
        Availability {
            max_fails,
            fail_window: Duration::from_secs(10),
            eject_for: Duration::from_secs(10),
            eject_max: Duration::from_secs(35),
            ..Availability::default()
        }
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ejected(v: &Verdict) -> &Ejection {
        match v {
            Verdict::Ejected(e) => e,
            other => panic!("not ejected: {other:?}"),
        }
    }

    #[test]
    fn max_fails_within_the_window_eject_for_eject_for() {
        let c = cfg(3);
        let t0 = Instant::now();
        let mut r = Record::default();
        assert_eq!(r.failure(t0, &c, "refused"), Verdict::Counted(1));
        assert_eq!(r.failure(t0 + s(4), &c, "refused"), Verdict::Counted(2));
        let v = r.failure(t0 + s(9), &c, "connection refused");
        let e = ejected(&v);
        assert_eq!((e.until, e.length), (t0 + s(19), s(10)));
        assert_eq!(e.reason, "3 failures in 9s: connection refused");
        assert_eq!((r.fails(), r.total()), (0, 1));
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not_eject() {
        let c = cfg(3);
        let t0 = Instant::now();
        let mut r = Record::default();
        for i in 0..10 {
            // One every 6 s: never three within 10 s.
            let v = r.failure(t0 + s(6 * i), &c, "x");
            assert!(matches!(v, Verdict::Counted(1 | 2)), "{i}: {v:?}");
        }
        assert!(r.ejected().is_none());
        // The last two are 6 s apart: a third right away ejects.
        assert!(matches!(
            r.failure(t0 + s(55), &c, "x"),
            Verdict::Ejected(_)
        ));
    }

    #[test]
    fn a_success_resets_the_count() {
        let c = cfg(3);
        let t0 = Instant::now();
        let mut r = Record::default();
        r.failure(t0, &c, "x");
        r.failure(t0, &c, "x");
        assert!(r.success(t0));
        assert!(!r.success(t0), "nothing left to reset");
        assert_eq!(r.failure(t0, &c, "x"), Verdict::Counted(1));
    }

    #[test]
    fn re_ejections_double_up_to_eject_max_and_a_success_resets_them() {
        let c = cfg(2);
        let t0 = Instant::now();
        let mut r = Record::default();
        r.failure(t0, &c, "x");
        let first = ejected(&r.failure(t0, &c, "x")).clone();
        assert_eq!(first.length, s(10));
        // While ejected, outcomes of attempts begun before are ignored.
        assert_eq!(r.failure(t0 + s(5), &c, "x"), Verdict::Ignored);
        assert!(!r.success(t0 + s(5)));
        assert!(r.expire(t0 + s(9)).is_none(), "not over yet");
        assert_eq!(r.expire(t0 + s(10)), Some(first));
        assert!(r.expire(t0 + s(10)).is_none(), "ended once");
        // On probation, one failure is enough, for twice as long.
        let mut now = t0 + s(11);
        let mut lengths = Vec::new();
        for _ in 0..4 {
            let e = ejected(&r.failure(now, &c, "y")).clone();
            assert!(e.reason.starts_with("failed again after its ejection: y"));
            lengths.push(e.length);
            now = e.until;
            assert!(r.expire(now).is_some());
        }
        assert_eq!(lengths, [s(20), s(35), s(35), s(35)], "capped at eject_max");
        assert_eq!(r.total(), 5);
        // A success after the ejection: the backoff starts over.
        assert!(r.success(now));
        assert_eq!(r.failure(now, &c, "z"), Verdict::Counted(1));
        assert_eq!(ejected(&r.failure(now, &c, "z")).length, s(10));
    }

    #[test]
    fn max_fails_zero_turns_passive_checks_off() {
        let c = cfg(0);
        let t0 = Instant::now();
        let mut r = Record::default();
        for _ in 0..100 {
            assert_eq!(r.failure(t0, &c, "x"), Verdict::Ignored);
        }
        let p = Passive::default();
        assert_eq!(p.failure(t0, &c, "x"), Verdict::Ignored);
        assert!(!p.is_ejected(t0));
    }

    #[test]
    fn backoff_never_overflows() {
        let c = Availability {
            eject_for: s(1),
            eject_max: s(7 * 86400),
            ..cfg(1)
        };
        assert_eq!(backoff(&c, 0), s(1));
        assert_eq!(backoff(&c, 3), s(8));
        assert_eq!(backoff(&c, 40), s(7 * 86400));
        assert_eq!(backoff(&c, u32::MAX), s(7 * 86400));
    }

    #[test]
    fn shared_record_reads_ejection_lazily() {
        let c = cfg(1);
        let t0 = Instant::now();
        let p = Passive::default();
        assert!(!p.success(t0), "clean: no lock, nothing to reset");
        let v = p.failure(t0, &c, "x");
        assert!(matches!(v, Verdict::Ejected(_)));
        assert!(p.is_ejected(t0 + s(9)));
        assert!(
            !p.is_ejected(t0 + s(10)),
            "over at its end, even before expire"
        );
        let view = p.view();
        assert_eq!((view.ejections, view.ejected_until), (1, Some(t0 + s(10))));
        assert!(p.expire(t0 + s(10)).is_some());
        assert!(p.expire(t0 + s(10)).is_none());
        assert_eq!(p.view().ejected_until, None);
        assert_eq!(p.view().last.map(|l| l.0), Some(s(10)));
        assert!(p.success(t0 + s(11)), "probation ended by a success");
        assert!(!p.success(t0 + s(11)));
    }
}
