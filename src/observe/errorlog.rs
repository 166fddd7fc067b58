//! Rate-limited warnings: a backend that is down fails every connection to
//! it, and one line per failure would drown the log. The first occurrence of
//! each kind is logged at once; repeats within the window are counted and
//! reported with the next line after the window.
//!
//! Owns: the per-key windows. Keys are built from configured servers and a
//! fixed set of error kinds, so the map stays small.
//!
//! Must not: decide what is logged, only how often.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long repeats of one error are folded into a count.
pub const ERROR_LOG_WINDOW: Duration = Duration::from_secs(10);

/// Folds repeated errors into counts.
#[derive(Debug)]
pub struct Throttle {
    window: Duration,
    seen: Mutex<HashMap<String, Window>>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    suppressed: u64,
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new(ERROR_LOG_WINDOW)
    }
}

impl Throttle {
    /// A throttle folding repeats within `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an error of `key` happening at `now` should be logged; if so,
    /// how many like it were held back since the last line.
    pub fn check(&self, key: &str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get_mut(key) {
            Some(w) if now.saturating_duration_since(w.start) < self.window => {
                w.suppressed += 1;
                None
            }
            Some(w) => {
                let held = w.suppressed;
                *w = Window {
                    start: now,
                    suppressed: 0,
                };
                Some(held)
            }
            None => {
                seen.insert(
                    key.to_string(),
                    Window {
                        start: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_counted_and_reported_after_the_window() {
        let t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.check("a", t0), Some(0));
        for i in 1..=5 {
            assert_eq!(t.check("a", t0 + Duration::from_secs(i)), None);
        }
        // Another key is independent.
        assert_eq!(t.check("b", t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(t.check("a", t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(t.check("a", t0 + Duration::from_secs(11)), None);
        assert_eq!(t.check("a", t0 + Duration::from_secs(25)), Some(1));
    }
}
