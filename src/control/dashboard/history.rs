//! The last reloads and what each did, for the dashboard: a small bounded
//! list, newest last, written by `reload::reload` once per attempt.
//!
//! Must not: grow without bound, or hold anything secret (a rejected
//! config's problems name keys and values of the file, as the log does).

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;

use crate::control::reload::{ReloadError, ReloadReport};

/// How many reloads are remembered.
pub const RELOAD_HISTORY: usize = 20;

/// One reload attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReloadEntry {
    /// Increasing per attempt, so a page can tell new entries from old.
    pub seq: u64,
    /// When it finished (RFC 3339).
    pub at: String,
    /// Whether the new config went live.
    pub ok: bool,
    /// The config version running after it.
    pub version: String,
    /// What changed (the reload report) when it went live.
    pub changes: Option<Value>,
    /// Why it was rejected, one line per problem.
    pub problems: Vec<String>,
}

/// The bounded history.
#[derive(Debug, Default)]
pub struct ReloadHistory {
    entries: Mutex<(u64, VecDeque<ReloadEntry>)>,
}

impl ReloadHistory {
    /// Records one attempt; `running` is the version serving after it.
    pub fn record(&self, result: &Result<ReloadReport, ReloadError>, running: &str) {
        let mut guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (seq, list) = &mut *guard;
        *seq += 1;
        let (changes, problems) = match result {
            Ok(r) => (serde_json::to_value(r).ok(), Vec::new()),
            Err(e) => (None, e.to_string().lines().map(str::to_string).collect()),
        };
        list.push_back(ReloadEntry {
            seq: *seq,
            at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            ok: result.is_ok(),
            version: running.to_string(),
            changes,
            problems,
        });
        while list.len() > RELOAD_HISTORY {
            list.pop_front();
        }
    }

    /// The remembered attempts, oldest first.
    pub fn list(&self) -> Vec<ReloadEntry> {
        let guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        guard.1.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_attempts_with_their_result() {
        let h = ReloadHistory::default();
        for i in 0..RELOAD_HISTORY + 3 {
            let report = ReloadReport {
                version: format!("v{i}"),
                ..ReloadReport::default()
            };
            h.record(&Ok(report), &format!("v{i}"));
        }
        h.record(&Err(ReloadError::Draining), "v22");
        let list = h.list();
        assert_eq!(list.len(), RELOAD_HISTORY);
        assert_eq!(list[0].seq, 5, "the oldest ones went first");
        let last = list.last().expect("an entry");
        assert!(!last.ok);
        assert_eq!(last.version, "v22");
        assert_eq!(
            last.problems,
            vec!["wsgate is draining; reloads are refused"]
        );
        assert_eq!(last.changes, None);
        let ok = &list[list.len() - 2];
        assert!(ok.ok);
        assert_eq!(
            ok.changes.as_ref().and_then(|c| c.get("version")),
            Some(&Value::from("v22"))
        );
    }
}
