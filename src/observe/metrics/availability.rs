//! Metrics of servers leaving and re-entering service on their own:
//! passive ejections, and requests refused because no server was usable.
//!
//! Must not: take a label value from anything but the config (upstream
//! names, server addresses).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    upstream: String,
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

/// The availability families.
#[derive(Debug, Default)]
pub(super) struct AvailabilityMetrics {
    ejections: Family<ServerLabels, Counter>,
    unavailable: Family<UpstreamLabels, Counter>,
}

impl AvailabilityMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "wsgate_server_ejections",
            "Servers ejected by passive checks (consecutive connect, TLS or handshake failures)",
            m.ejections.clone(),
        );
        registry.register(
            "wsgate_upstream_unavailable",
            "Requests refused with 503 at once because no server of the routed upstream was usable",
            m.unavailable.clone(),
        );
        m
    }

    pub(super) fn ejected(&self, upstream: &str, server: &str, n: u64) {
        self.ejections
            .get_or_create(&ServerLabels {
                upstream: upstream.to_string(),
                server: server.to_string(),
            })
            .inc_by(n);
    }

    /// Drops the ejection series of a server no longer in the config, so
    /// that servers coming and going (DNS) do not grow the label set.
    pub(super) fn forget(&self, upstream: &str, server: &str) {
        self.ejections.remove(&ServerLabels {
            upstream: upstream.to_string(),
            server: server.to_string(),
        });
    }

    pub(super) fn unavailable(&self, upstream: &str) {
        self.unavailable
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_string(),
            })
            .inc();
    }
}
