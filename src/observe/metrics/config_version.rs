//! `wsgate_config_version{version}`: which config is running, as a gauge
//! that is always 1 and a label that changes at each successful reload.
//!
//! Must not: keep more than the current version: one series at a time.

use std::sync::Mutex;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct VersionLabels {
    pub(super) version: String,
}

/// `wsgate_config_info{version}`: which config is running.
#[derive(Debug)]
pub(super) struct InfoCollector {
    pub(super) version: Mutex<String>,
}

impl prometheus_client::collector::Collector for InfoCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let version = self
            .version
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut family = encoder.encode_descriptor(
            "wsgate_config_version",
            "Always 1; the label is a hash of the running config file",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64).encode(family.encode_family(&VersionLabels { version })?)
    }
}
