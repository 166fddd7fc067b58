//! Running totals for the dashboard's live feed, which turns them into
//! rates once a second: requests answered by outcome, and what the tunnels
//! relayed each way. Read from the same families and collector that
//! `/metrics` exposes, so the page and Prometheus never disagree.
//!
//! Must not: create series. Reading goes through `Family::get`, so a page
//! left open adds nothing to the exposition.

use std::collections::BTreeMap;

use super::labels::{outcome_label, HandshakeLabels, CLASS_LABELS, KNOWN_OUTCOMES};
use super::Metrics;
use crate::observe::access::DirectionTotals;

/// Totals since start; the caller differences two readings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveTotals {
    /// Requests answered (101 opened a tunnel), by outcome label, summed
    /// over the listeners asked about.
    pub answered: BTreeMap<String, u64>,
    /// Relayed from clients to backends.
    pub to_backend: DirectionTotals,
    /// Relayed from backends to clients.
    pub to_client: DirectionTotals,
}

impl Metrics {
    /// The totals, with requests summed over `listeners` (those the
    /// running config names: a removed listener's counts stop moving).
    pub fn live_totals<'a>(&self, listeners: impl IntoIterator<Item = &'a str>) -> LiveTotals {
        let outcomes: Vec<&'static str> = KNOWN_OUTCOMES
            .iter()
            .map(|&s| outcome_label(s))
            .chain(CLASS_LABELS[1..=5].iter().copied())
            .collect();
        let mut answered = BTreeMap::new();
        for listener in listeners {
            let listener: std::sync::Arc<str> = listener.into();
            for &outcome in &outcomes {
                let labels = HandshakeLabels {
                    listener: listener.clone(),
                    outcome,
                };
                if let Some(c) = self.handshakes.get(&labels) {
                    let n = c.get();
                    if n > 0 {
                        *answered.entry(outcome.to_string()).or_insert(0) += n;
                    }
                }
            }
        }
        let (to_backend, to_client) = self.traffic.totals();
        LiveTotals {
            answered,
            to_backend,
            to_client,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::observe::registry::Registry;

    #[test]
    fn answered_requests_are_summed_over_the_listeners_asked_about() {
        let m = Metrics::new(Arc::new(Registry::default()), "v1");
        m.handshake(&"public".into(), 101, Duration::from_millis(1));
        m.handshake(&"public".into(), 101, Duration::from_millis(1));
        m.handshake(&"internal".into(), 101, Duration::from_millis(1));
        m.handshake(&"public".into(), 404, Duration::from_millis(1));
        m.handshake(&"public".into(), 418, Duration::from_millis(1));
        m.handshake(&"gone".into(), 502, Duration::from_millis(1));
        let t = m.live_totals(["public", "internal"]);
        let expected: BTreeMap<String, u64> = [("101", 3), ("404", 1), ("4xx", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(t.answered, expected);
        assert_eq!(t.to_backend, DirectionTotals::default());
    }

    #[test]
    fn reading_totals_adds_no_series() {
        let m = Metrics::new(Arc::new(Registry::default()), "v1");
        let _ = m.live_totals(["nowhere"]);
        let text = m.encode().expect("encode");
        assert!(!text.contains("nowhere"), "{text}");
    }
}
