//! Client connections at accept: refused ones, by listener and the limit
//! they were over; the open ones those limits count; and how many each
//! worker thread accepted, to see how evenly the kernel spreads them.
//!
//! Must not: take a label value from anything but the config (listener
//! names, the worker count) and a fixed set of reasons; never a client
//! address.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    listener: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
}

/// The connection-limit families.
#[derive(Debug, Default)]
pub(super) struct RefusedMetrics {
    refused: Family<RefusedLabels, Counter>,
    pub(super) open: Gauge,
    accepted: Family<WorkerLabels, Counter>,
}

impl RefusedMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "wsgate_connections_refused",
            "Client connections refused before they were served, by reason: the limit they were over (max_connections, max_connections_per_ip), a peer outside trusted_proxies on a proxy_protocol listener (untrusted_proxy), or a PROXY header invalid, cut short or late (proxy_header)",
            m.refused.clone(),
        );
        registry.register(
            "wsgate_client_connections",
            "Open client connections, all listeners together (what limits.max_connections counts)",
            m.open.clone(),
        );
        registry.register(
            "wsgate_worker_connections_accepted",
            "Client connections accepted by each worker thread (runtime.workers), all listeners together, refused ones included",
            m.accepted.clone(),
        );
        m
    }

    /// Worker `index`'s accept counter, fetched once by its accept loops.
    pub(super) fn worker(&self, index: usize) -> Counter {
        self.accepted
            .get_or_create(&WorkerLabels {
                worker: index.to_string(),
            })
            .clone()
    }

    pub(super) fn refused(&self, listener: &str, reason: &'static str) {
        self.refused
            .get_or_create(&RefusedLabels {
                listener: listener.to_string(),
                reason,
            })
            .inc();
    }
}
