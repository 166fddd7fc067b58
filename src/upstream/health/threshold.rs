//! The verdict of an active check: health flips only after
//! `unhealthy_threshold` consecutive failures, or `healthy_threshold`
//! consecutive successes, so one lost probe does not take a server down and
//! one lucky probe does not bring a dying one back.
//!
//! Legal transitions, one probe result at a time:
//!
//! | state | result | counters after | new state |
//! |---|---|---|---|
//! | up | ok | failures = 0 | up |
//! | up | failed | failures + 1 | down once failures = unhealthy_threshold |
//! | down | failed | successes = 0 | down |
//! | down | ok | successes + 1 | up once successes = healthy_threshold |
//!
//! A flip resets both counters. Must not: do I/O or know the time.

/// Which way a server's health flipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Down to up: `healthy_threshold` successes in a row.
    Up,
    /// Up to down: `unhealthy_threshold` failures in a row.
    Down,
}

/// One server's health as its checker sees it, with the runs that lead to
/// a flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    healthy: bool,
    successes: u32,
    failures: u32,
}

impl Verdict {
    /// Starts from `healthy` (a new checker starts from the server's
    /// current verdict), with no result counted yet.
    pub fn new(healthy: bool) -> Self {
        Self {
            healthy,
            successes: 0,
            failures: 0,
        }
    }

    /// Whether the server counts as healthy.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Successes in a row since the last failure (or flip).
    pub fn successes(&self) -> u32 {
        self.successes
    }

    /// Failures in a row since the last success (or flip).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Counts one probe result; returns the flip it causes, if any.
    /// Thresholds below 1 act as 1.
    pub fn record(
        &mut self,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<Transition> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.healthy && self.successes >= healthy_threshold.max(1) {
                *self = Self::new(true);
                return Some(Transition::Up);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.healthy && self.failures >= unhealthy_threshold.max(1) {
                *self = Self::new(false);
                return Some(Transition::Down);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `results` ("+" ok, "-" failed) and writes what each caused:
    /// "U" up, "D" down, "." nothing.
    fn run(start: bool, up: u32, down: u32, results: &str) -> String {
        let mut v = Verdict::new(start);
        results
            .chars()
            .map(|c| match v.record(c == '+', up, down) {
                Some(Transition::Up) => 'U',
                Some(Transition::Down) => 'D',
                None => '.',
            })
            .collect()
    }

    #[test]
    fn flips_only_after_the_thresholds_in_a_row() {
        // Up, unhealthy_threshold 3.
        assert_eq!(run(true, 2, 3, "---"), "..D");
        assert_eq!(run(true, 2, 3, "--+--+---"), "........D");
        assert_eq!(run(true, 2, 3, "+++++"), ".....");
        // Down, healthy_threshold 2.
        assert_eq!(run(false, 2, 3, "++"), ".U");
        assert_eq!(run(false, 2, 3, "+-+-+"), ".....");
        assert_eq!(run(false, 2, 3, "-----"), ".....");
        // A whole cycle: down after 3, up after 2, down again after 3.
        assert_eq!(run(true, 2, 3, "---++---"), "..D.U..D");
    }

    #[test]
    fn a_flip_starts_the_counts_afresh() {
        let mut v = Verdict::new(true);
        for _ in 0..2 {
            v.record(false, 2, 2);
        }
        assert!(!v.healthy());
        assert_eq!((v.successes(), v.failures()), (0, 0));
        // A failure before the flip does not count toward coming back.
        assert_eq!(v.record(true, 2, 2), None);
        assert_eq!(v.record(true, 2, 2), Some(Transition::Up));
        assert_eq!((v.successes(), v.failures()), (0, 0));
    }

    #[test]
    fn thresholds_of_one_flip_at_once() {
        assert_eq!(run(true, 1, 1, "-+-+"), "DUDU");
        // Zero is refused by validation; here it acts as 1.
        assert_eq!(run(true, 0, 0, "-+"), "DU");
    }

    #[test]
    fn counters_track_the_current_run() {
        let mut v = Verdict::new(true);
        v.record(false, 2, 5);
        v.record(false, 2, 5);
        assert_eq!((v.successes(), v.failures()), (0, 2));
        v.record(true, 2, 5);
        assert_eq!((v.successes(), v.failures()), (1, 0));
        assert!(v.healthy());
    }

    #[test]
    fn counts_saturate_instead_of_wrapping() {
        let mut v = Verdict {
            healthy: true,
            successes: u32::MAX,
            failures: 0,
        };
        assert_eq!(v.record(true, 2, 3), None);
        assert_eq!(v.successes(), u32::MAX);
    }
}
