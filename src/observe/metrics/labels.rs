//! The label sets of wsgate's metric families, and the functions that keep
//! label values to small fixed sets.
//!
//! Must not: take a label value from anything a client or backend controls
//! without bucketing it: a status becomes its class, a close code its range.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;

use crate::observe::registry::ConnInfo;

// Names from the config are `Arc<str>` here, as they are in the routing
// snapshot: a label set for a lookup then costs reference counts, not an
// allocation per string, on paths taken once per connection.

/// Where a tunnel runs: listener, route, upstream and server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelLabels {
    /// Listener name.
    pub listener: Arc<str>,
    /// Route label.
    pub route: Arc<str>,
    /// Upstream name.
    pub upstream: Arc<str>,
    /// Server address.
    pub server: Arc<str>,
}

impl TunnelLabels {
    /// Labels of a tunnel.
    pub fn of(info: &ConnInfo) -> Self {
        Self {
            listener: info.listener.clone(),
            route: info.route.clone(),
            upstream: info.upstream.clone(),
            server: info.server.label.clone(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct HandshakeLabels {
    pub(super) listener: Arc<str>,
    pub(super) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ListenerLabels {
    pub(super) listener: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DurationLabels {
    pub(super) listener: Arc<str>,
    pub(super) route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct EndLabels {
    pub(super) listener: Arc<str>,
    pub(super) route: Arc<str>,
    pub(super) closed_by: &'static str,
    pub(super) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct CloseLabels {
    pub(super) code: String,
    pub(super) from: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ResultLabels {
    pub(super) result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct HttpBytesLabels {
    pub(super) listener: String,
    pub(super) direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct MalformedLabels {
    pub(super) listener: String,
    pub(super) reason: &'static str,
}

/// Statuses wsgate itself answers, plus the common ones a backend may
/// relay, keep their own series; any other becomes its class (`2xx`...), so
/// a backend cannot create hundreds of series.
/// Statuses labelled exactly; any other becomes its class (`4xx`).
pub(super) const KNOWN_OUTCOMES: [u16; 23] = [
    101, 200, 204, 301, 302, 304, 400, 401, 403, 404, 405, 408, 413, 421, 426, 429, 431, 499, 500,
    501, 502, 503, 504,
];

/// [`KNOWN_OUTCOMES`] as label values, in the same order.
const KNOWN_LABELS: [&str; 23] = [
    "101", "200", "204", "301", "302", "304", "400", "401", "403", "404", "405", "408", "413",
    "421", "426", "429", "431", "499", "500", "501", "502", "503", "504",
];

/// The label of every other status, by class.
pub(super) const CLASS_LABELS: [&str; 10] = [
    "0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "7xx", "8xx", "9xx",
];

pub(super) fn outcome_label(status: u16) -> &'static str {
    match KNOWN_OUTCOMES.iter().position(|&s| s == status) {
        Some(i) => KNOWN_LABELS[i],
        // hyper's StatusCode is 100-999.
        None => CLASS_LABELS[usize::from(status / 100).min(9)],
    }
}

/// Keeps the code label to a few dozen values: a client cycling through
/// 3000-4999 must not create thousands of series.
pub(super) fn close_code_class(code: u16) -> String {
    match code {
        1000..=1015 => code.to_string(),
        3000..=3999 => "3xxx".to_string(),
        4000..=4999 => "4xxx".to_string(),
        _ => "other".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusual_statuses_are_bucketed() {
        assert_eq!(outcome_label(101), "101");
        assert_eq!(outcome_label(418), "4xx");
        assert_eq!(outcome_label(299), "2xx");
        assert_eq!(outcome_label(999), "9xx");
        assert_eq!(outcome_label(504), "504");
    }

    #[test]
    fn every_known_status_is_its_own_label() {
        for (status, label) in KNOWN_OUTCOMES.iter().zip(KNOWN_LABELS) {
            assert_eq!(status.to_string(), label);
            assert_eq!(outcome_label(*status), label);
        }
    }

    #[test]
    fn close_codes_are_bucketed() {
        assert_eq!(close_code_class(1001), "1001");
        assert_eq!(close_code_class(3123), "3xxx");
        assert_eq!(close_code_class(4999), "4xxx");
        assert_eq!(close_code_class(2000), "other");
    }
}
