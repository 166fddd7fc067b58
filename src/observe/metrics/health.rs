//! `wsgate_server_state{upstream,server,state}`: where every server stands,
//! computed at scrape time from the servers themselves, so a state change
//! needs no bookkeeping here and a removed server's series vanish with it.
//!
//! Must not: keep servers alive: the list comes from a function the
//! control path installs once (see [`super::Metrics::watch_servers`]).

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::upstream::balancer::{Server, ServerState};

/// Every server to report, with its upstream's name.
pub type ServerList = Box<dyn Fn() -> Vec<(Arc<str>, Arc<Server>)> + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct HealthCheckLabels {
    pub(super) upstream: String,
    pub(super) server: String,
    pub(super) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    upstream: String,
    server: String,
    state: &'static str,
}

/// The state gauge: 1 for each server's current state, 0 for the others.
#[derive(Default)]
pub(super) struct StateCollector {
    pub(super) servers: OnceLock<ServerList>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

impl prometheus_client::collector::Collector for StateCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let servers = self.servers.get().map(|list| list()).unwrap_or_default();
        let mut family = encoder.encode_descriptor(
            "wsgate_server_state",
            "1 for each server's current state (up, down, draining), 0 for the others",
            None,
            MetricType::Gauge,
        )?;
        for (upstream, server) in servers {
            let now = server.state();
            for state in ServerState::ALL {
                let labels = StateLabels {
                    upstream: upstream.to_string(),
                    server: server.addr.to_string(),
                    state: state.as_str(),
                };
                ConstGauge::new(i64::from(state == now)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
