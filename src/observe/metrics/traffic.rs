//! `wsgate_tunnels_active`, `wsgate_tunnels_total` and `wsgate_traffic_*`
//! (bytes, frames and messages relayed), computed at scrape time from the
//! closed tunnels' sums plus the live registry, so a long-lived tunnel is
//! visible while it lives.
//!
//! A server that left the config (a reload, a DNS answer) would otherwise
//! keep its series for ever, and DNS churn would grow the label set without
//! bound. Once none of its tunnels is live, its closed sums are folded into
//! one series per listener, route and upstream with `server="removed"`:
//! every total stays monotonic when summed over servers, and the label set
//! is bounded by the servers configured now.
//!
//! Must not: be touched per frame; a tunnel's totals move here once, when
//! it closes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::TunnelLabels;
use crate::observe::access::DirectionTotals;
use crate::observe::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct TrafficLabels {
    pub(super) listener: Arc<str>,
    pub(super) route: Arc<str>,
    pub(super) upstream: Arc<str>,
    pub(super) server: Arc<str>,
    pub(super) direction: &'static str,
}

/// The `server` label of the sums of servers no longer configured.
pub const REMOVED_SERVER: &str = "removed";

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

    fn merge(&mut self, o: &Sums) {
        self.bytes += o.bytes;
        self.frames += o.frames;
        self.messages += o.messages;
        self.discarded_frames += o.discarded_frames;
    }
}

/// What the tunnels of one label set have done: the closed ones summed,
/// or (at a scrape) the closed plus the live.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct TunnelSums {
    /// Tunnels opened (closed ones, plus live ones at a scrape).
    pub(super) opened: u64,
    /// Live tunnels (0 in the closed map).
    active: i64,
    pub(super) to_backend: Sums,
    pub(super) to_client: Sums,
}

impl TunnelSums {
    fn merge(&mut self, o: &TunnelSums) {
        self.opened += o.opened;
        self.active += o.active;
        self.to_backend.merge(&o.to_backend);
        self.to_client.merge(&o.to_client);
    }
}

/// Traffic totals: closed tunnels' sums plus open tunnels' live counters.
#[derive(Debug)]
pub(super) struct TrafficCollector {
    pub(super) live: Arc<Registry>,
    pub(super) closed: Mutex<HashMap<TunnelLabels, TunnelSums>>,
}

impl TrafficCollector {
    /// Folds the closed sums of every server `configured` does not name
    /// (upstream, server address) and no live tunnel uses into its
    /// `server="removed"` series.
    pub(super) fn fold_removed(&self, configured: &HashSet<(String, String)>) {
        // Lock order: closed sums, then the live registry, as in tunnel_closed.
        let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        let live: HashSet<(String, String)> = self
            .live
            .live()
            .iter()
            .map(|c| (c.info.upstream.to_string(), c.info.server.label.to_string()))
            .collect();
        let gone: Vec<TunnelLabels> = closed
            .keys()
            .filter(|l| &*l.server != REMOVED_SERVER)
            .filter(|l| {
                let key = (l.upstream.to_string(), l.server.to_string());
                !configured.contains(&key) && !live.contains(&key)
            })
            .cloned()
            .collect();
        for labels in gone {
            if let Some(sums) = closed.remove(&labels) {
                let folded = TunnelLabels {
                    server: REMOVED_SERVER.into(),
                    ..labels
                };
                closed.entry(folded).or_default().merge(&sums);
            }
        }
    }
}

impl Sums {
    fn totals(&self) -> DirectionTotals {
        DirectionTotals {
            bytes: self.bytes,
            frames: self.frames,
            messages: self.messages,
            discarded_frames: self.discarded_frames,
        }
    }
}

impl TrafficCollector {
    /// Everything relayed so far, closed tunnels and live ones, summed over
    /// every label set: `(to_backend, to_client)`.
    pub(super) fn totals(&self) -> (DirectionTotals, DirectionTotals) {
        // Lock order: closed sums, then the live registry, as in tunnel_closed.
        let closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        let (mut up, mut down) = (Sums::default(), Sums::default());
        for t in closed.values() {
            up.merge(&t.to_backend);
            down.merge(&t.to_client);
        }
        drop(closed);
        for conn in self.live.live() {
            up.add(&conn.to_backend.totals());
            down.add(&conn.to_client.totals());
        }
        (up.totals(), down.totals())
    }
}

impl prometheus_client::collector::Collector for TrafficCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        // Lock order: closed sums, then the live registry, as in tunnel_closed.
        let closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        let live = self.live.live();
        let mut all: HashMap<TunnelLabels, TunnelSums> = closed.clone();
        drop(closed);
        for conn in live {
            let t = all.entry(TunnelLabels::of(&conn.info)).or_default();
            t.opened += 1;
            t.active += 1;
            t.to_backend.add(&conn.to_backend.totals());
            t.to_client.add(&conn.to_client.totals());
        }
        let mut active = encoder.encode_descriptor(
            "wsgate_tunnels_active",
            "Open WebSocket tunnels",
            None,
            MetricType::Gauge,
        )?;
        for (labels, t) in &all {
            ConstGauge::new(t.active).encode(active.encode_family(labels)?)?;
        }
        let mut opened = encoder.encode_descriptor(
            "wsgate_tunnels",
            "WebSocket tunnels opened",
            None,
            MetricType::Counter,
        )?;
        for (labels, t) in &all {
            ConstCounter::new(t.opened).encode(opened.encode_family(labels)?)?;
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
            for (labels, t) in &all {
                for (direction, sums) in
                    [("to_backend", &t.to_backend), ("to_client", &t.to_client)]
                {
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
