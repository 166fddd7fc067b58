//! `wsgate_traffic_*`: bytes, frames and messages relayed, computed at
//! scrape time from the closed tunnels' sums plus the live atomics of open
//! ones, so a long-lived tunnel is visible while it lives.
//!
//! Must not: be touched per frame; a tunnel's totals move here once, when
//! it closes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use super::TunnelLabels;
use crate::observe::access::DirectionTotals;
use crate::observe::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct TrafficLabels {
    pub(super) listener: String,
    pub(super) route: String,
    pub(super) upstream: String,
    pub(super) server: String,
    pub(super) direction: &'static str,
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Sums {
    bytes: u64,
    frames: u64,
    messages: u64,
    discarded_frames: u64,
}

impl Sums {
    pub(super) fn add(&mut self, t: &DirectionTotals) {
        self.bytes += t.bytes;
        self.frames += t.frames;
        self.messages += t.messages;
        self.discarded_frames += t.discarded_frames;
    }
}

/// Traffic totals: closed tunnels' sums plus open tunnels' live counters.
#[derive(Debug)]
pub(super) struct TrafficCollector {
    pub(super) live: Arc<Registry>,
    pub(super) closed: Mutex<HashMap<TunnelLabels, (Sums, Sums)>>,
}

impl prometheus_client::collector::Collector for TrafficCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        // Lock order: closed sums, then the live registry, as in tunnel_closed.
        let closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        let live = self.live.live();
        let mut all: HashMap<TunnelLabels, (Sums, Sums)> = closed.clone();
        drop(closed);
        for conn in live {
            let t = all.entry(TunnelLabels::of(&conn.info)).or_default();
            t.0.add(&conn.to_backend.totals());
            t.1.add(&conn.to_client.totals());
        }
        let series = [
            ("wsgate_traffic_bytes", "Bytes relayed through tunnels", 0),
            ("wsgate_traffic_frames", "WebSocket frames relayed", 1),
            (
                "wsgate_traffic_messages",
                "WebSocket data messages relayed",
                2,
            ),
            (
                "wsgate_traffic_discarded_frames",
                "Frames a peer sent after its own Close, discarded",
                3,
            ),
        ];
        for (name, help, which) in series {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, (up, down)) in &all {
                for (direction, sums) in [("to_backend", up), ("to_client", down)] {
                    let value = match which {
                        0 => sums.bytes,
                        1 => sums.frames,
                        2 => sums.messages,
                        _ => sums.discarded_frames,
                    };
                    let l = TrafficLabels {
                        listener: labels.listener.clone(),
                        route: labels.route.clone(),
                        upstream: labels.upstream.clone(),
                        server: labels.server.clone(),
                        direction,
                    };
                    ConstCounter::new(value).encode(family.encode_family(&l)?)?;
                }
            }
        }
        Ok(())
    }
}
