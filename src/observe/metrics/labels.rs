//! The label sets of wsgate's metric families, and the functions that keep
//! label values to small fixed sets.
//!
//! Must not: take a label value from anything a client or backend controls
//! without bucketing it: a status becomes its class, a close code its range.

use prometheus_client::encoding::EncodeLabelSet;

use crate::observe::registry::ConnInfo;

/// Where a tunnel runs: listener, route, upstream and server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelLabels {
    /// Listener name.
    pub listener: String,
    /// Route label.
    pub route: String,
    /// Upstream name.
    pub upstream: String,
    /// Server address.
    pub server: String,
}

impl TunnelLabels {
    /// Labels of a tunnel.
    pub fn of(info: &ConnInfo) -> Self {
        Self {
            listener: info.listener.to_string(),
            route: info.route.to_string(),
            upstream: info.upstream.to_string(),
            server: info.backend.to_string(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct HandshakeLabels {
    pub(super) listener: String,
    pub(super) outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ListenerLabels {
    pub(super) listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DurationLabels {
    pub(super) listener: String,
    pub(super) route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct EndLabels {
    pub(super) listener: String,
    pub(super) route: String,
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

pub(super) fn outcome_label(status: u16) -> String {
    if KNOWN_OUTCOMES.contains(&status) {
        status.to_string()
    } else {
        format!("{}xx", status / 100)
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
        assert_eq!(outcome_label(504), "504");
    }

    #[test]
    fn close_codes_are_bucketed() {
        assert_eq!(close_code_class(1001), "1001");
        assert_eq!(close_code_class(3123), "3xxx");
        assert_eq!(close_code_class(4999), "4xxx");
        assert_eq!(close_code_class(2000), "other");
    }
}
