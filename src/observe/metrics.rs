//! Prometheus metrics, exposed in the text format by the admin listener.
//!
//! Owns: the metric families and their label sets, recording at the few
//! points where a connection changes state (handshake answered, tunnel
//! opened, tunnel closed), and two collectors computed at scrape time:
//! traffic totals (closed tunnels' totals plus the live atomics of open
//! ones, so long-lived tunnels are visible while they live) and process
//! figures read from `/proc`.
//!
//! Must not: be touched per frame or per read. Label values come only from
//! the config (listener, route, upstream, server) or small fixed sets
//! (status codes, close-code classes): never a client address or a path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry as PromRegistry;

use crate::observe::access::{AccessRecord, DirectionTotals};
use crate::observe::registry::{ConnInfo, Registry};

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
struct HandshakeLabels {
    listener: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    listener: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    listener: String,
    route: String,
    closed_by: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    code: String,
    from: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrafficLabels {
    listener: String,
    route: String,
    upstream: String,
    server: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpBytesLabels {
    listener: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MalformedLabels {
    listener: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

fn handshake_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn duration_histogram() -> Histogram {
    // 0.1 s to about 1.5 days: tunnels live for hours.
    Histogram::new(exponential_buckets(0.1, 3.0, 14))
}

/// Every metric wsgate exports.
#[derive(Debug)]
pub struct Metrics {
    registry: PromRegistry,
    tunnels_active: Family<TunnelLabels, Gauge>,
    tunnels_total: Family<TunnelLabels, Counter>,
    handshakes: Family<HandshakeLabels, Counter>,
    handshake_seconds: Family<ListenerLabels, Histogram>,
    tunnel_seconds: Family<DurationLabels, Histogram>,
    close_codes: Family<CloseLabels, Counter>,
    tunnels_closed: Family<EndLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    http_requests: Family<HandshakeLabels, Counter>,
    http_active: Family<ListenerLabels, Gauge>,
    http_seconds: Family<ListenerLabels, Histogram>,
    http_bytes: Family<HttpBytesLabels, Counter>,
    malformed: Family<MalformedLabels, Counter>,
    traffic: Arc<TrafficCollector>,
    info: Arc<InfoCollector>,
}

impl Metrics {
    /// Registers every family; `live` is read at each scrape for open tunnels.
    pub fn new(live: Arc<Registry>, config_version: &str) -> Self {
        let mut registry = PromRegistry::default();
        let tunnels_active = Family::<TunnelLabels, Gauge>::default();
        let tunnels_total = Family::<TunnelLabels, Counter>::default();
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        let handshake_seconds = Family::<ListenerLabels, Histogram>::new_with_constructor(
            handshake_histogram as fn() -> Histogram,
        );
        let tunnel_seconds = Family::<DurationLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let close_codes = Family::<CloseLabels, Counter>::default();
        let tunnels_closed = Family::<EndLabels, Counter>::default();
        let reloads = Family::<ResultLabels, Counter>::default();
        let http_requests = Family::<HandshakeLabels, Counter>::default();
        let http_active = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "wsgate_http_requests_active",
            "Plain HTTP requests in progress, from their head to the end of their response",
            http_active.clone(),
        );
        let http_seconds = Family::<ListenerLabels, Histogram>::new_with_constructor(
            handshake_histogram as fn() -> Histogram,
        );
        let http_bytes = Family::<HttpBytesLabels, Counter>::default();
        let malformed = Family::<MalformedLabels, Counter>::default();
        registry.register(
            "wsgate_http_requests",
            "Plain HTTP requests (no upgrade) answered, by HTTP status",
            http_requests.clone(),
        );
        registry.register(
            "wsgate_http_request_duration_seconds",
            "Time from a plain request's head to the end of its response",
            http_seconds.clone(),
        );
        registry.register(
            "wsgate_http_body_bytes",
            "Body bytes of plain HTTP requests and responses",
            http_bytes.clone(),
        );
        registry.register(
            "wsgate_requests_malformed",
            "Requests refused with 400 before parsing, by reason (request smuggling defence)",
            malformed.clone(),
        );
        registry.register(
            "wsgate_tunnels_active",
            "Open WebSocket tunnels",
            tunnels_active.clone(),
        );
        registry.register(
            "wsgate_tunnels",
            "WebSocket tunnels opened",
            tunnels_total.clone(),
        );
        registry.register(
            "wsgate_handshakes",
            "Requests answered, by HTTP status (101 opened a tunnel)",
            handshakes.clone(),
        );
        registry.register(
            "wsgate_handshake_duration_seconds",
            "Time from a request's headers to its answer",
            handshake_seconds.clone(),
        );
        registry.register(
            "wsgate_tunnel_duration_seconds",
            "Lifetime of closed tunnels",
            tunnel_seconds.clone(),
        );
        registry.register(
            "wsgate_close_codes",
            "First Close frame of each tunnel, by code (1000-1015 exact, else 3xxx/4xxx/other) and sender",
            close_codes.clone(),
        );
        registry.register(
            "wsgate_tunnels_closed",
            "WebSocket tunnels closed, by who stopped first and why (the access record's closed_by and reason)",
            tunnels_closed.clone(),
        );
        registry.register(
            "wsgate_reloads",
            "Config reloads by result",
            reloads.clone(),
        );
        for result in ["ok", "failed"] {
            // Present from the start, so rate() works before the first reload.
            let _ = reloads.get_or_create(&ResultLabels {
                result: result.to_string(),
            });
        }
        let traffic = Arc::new(TrafficCollector {
            live,
            closed: Mutex::new(HashMap::new()),
        });
        registry.register_collector(Box::new(traffic.clone()));
        let info = Arc::new(InfoCollector {
            version: Mutex::new(config_version.to_string()),
        });
        registry.register_collector(Box::new(info.clone()));
        registry.register_collector(Box::new(ProcessCollector));
        Self {
            registry,
            tunnels_active,
            tunnels_total,
            handshakes,
            handshake_seconds,
            tunnel_seconds,
            close_codes,
            tunnels_closed,
            reloads,
            http_requests,
            http_active,
            http_seconds,
            http_bytes,
            malformed,
            traffic,
            info,
        }
    }

    /// Creates a listener's handshake series at zero, so that rates and
    /// alerts work before the first occurrence of each outcome.
    pub fn prepare_listener(&self, listener: &str) {
        let _ = self.http_active.get_or_create(&ListenerLabels {
            listener: listener.to_string(),
        });
        // 431 is hyper's own answer, before any handler: it is counted in
        // `wsgate_requests_malformed_total{reason="too_large"}` instead.
        for outcome in [101, 400, 403, 404, 426, 429, 502, 503, 504] {
            let _ = self.handshakes.get_or_create(&HandshakeLabels {
                listener: listener.to_string(),
                outcome: outcome.to_string(),
            });
        }
    }

    /// A request was answered with `status` after `elapsed`.
    pub fn handshake(&self, listener: &str, status: u16, elapsed: Duration) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                listener: listener.to_string(),
                outcome: outcome_label(status),
            })
            .inc();
        self.handshake_seconds
            .get_or_create(&ListenerLabels {
                listener: listener.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// A plain request began; [`Metrics::http_request`] ends it, once, on
    /// every path.
    pub fn http_request_started(&self, listener: &str) {
        self.http_active
            .get_or_create(&ListenerLabels {
                listener: listener.to_string(),
            })
            .inc();
    }

    /// A plain request ended: answered with `status`, its response body
    /// done (or abandoned) after `elapsed`.
    pub fn http_request(
        &self,
        listener: &str,
        status: u16,
        elapsed: Duration,
        to_backend: u64,
        to_client: u64,
    ) {
        self.http_requests
            .get_or_create(&HandshakeLabels {
                listener: listener.to_string(),
                outcome: outcome_label(status),
            })
            .inc();
        let labels = ListenerLabels {
            listener: listener.to_string(),
        };
        self.http_active.get_or_create(&labels).dec();
        self.http_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        for (direction, n) in [("to_backend", to_backend), ("to_client", to_client)] {
            self.http_bytes
                .get_or_create(&HttpBytesLabels {
                    listener: listener.to_string(),
                    direction,
                })
                .inc_by(n);
        }
    }

    /// A request was refused before parsing; `reason` is a fixed label.
    pub fn malformed(&self, listener: &str, reason: &'static str) {
        self.malformed
            .get_or_create(&MalformedLabels {
                listener: listener.to_string(),
                reason,
            })
            .inc();
    }

    /// A tunnel opened.
    pub fn tunnel_opened(&self, info: &ConnInfo) {
        let labels = TunnelLabels::of(info);
        self.tunnels_active.get_or_create(&labels).inc();
        self.tunnels_total.get_or_create(&labels).inc();
    }

    /// A tunnel closed with this record.
    pub fn tunnel_closed(&self, labels: &TunnelLabels, record: &AccessRecord) {
        self.tunnels_active.get_or_create(labels).dec();
        self.tunnel_seconds
            .get_or_create(&DurationLabels {
                listener: labels.listener.clone(),
                route: labels.route.clone(),
            })
            .observe(record.duration_ms as f64 / 1000.0);
        self.tunnels_closed
            .get_or_create(&EndLabels {
                listener: labels.listener.clone(),
                route: labels.route.clone(),
                closed_by: record.closed_by.as_str(),
                reason: record.reason.as_str(),
            })
            .inc();
        if let (Some(code), Some(from)) = (record.close_code, record.close_frame_from) {
            self.close_codes
                .get_or_create(&CloseLabels {
                    code: close_code_class(code),
                    from: from.as_str().to_string(),
                })
                .inc();
        }
        // Move the tunnel from the live set to the closed sums in one step,
        // under the closed-sums lock that a scrape also holds while it reads
        // both: a counter never counts a tunnel twice nor loses it.
        let mut closed = self
            .traffic
            .closed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let t = closed.entry(labels.clone()).or_default();
        t.0.add(&record.to_backend);
        t.1.add(&record.to_client);
        self.traffic.live.remove(record.id);
    }

    /// A reload was tried.
    pub fn reload(&self, ok: bool, version: &str) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
        if ok {
            *self.info.version.lock().unwrap_or_else(|e| e.into_inner()) = version.to_string();
        }
    }

    /// The text exposition (OpenMetrics text format, which Prometheus reads).
    ///
    /// # Errors
    /// Only if formatting fails, which writing to a `String` does not.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Statuses wsgate itself answers, plus the common ones a backend may
/// relay, keep their own series; any other becomes its class (`2xx`...), so
/// a backend cannot create hundreds of series.
fn outcome_label(status: u16) -> String {
    const KNOWN: [u16; 22] = [
        101, 200, 204, 301, 302, 304, 400, 401, 403, 404, 405, 408, 413, 421, 426, 429, 431, 499,
        500, 502, 503, 504,
    ];
    if KNOWN.contains(&status) {
        status.to_string()
    } else {
        format!("{}xx", status / 100)
    }
}

/// Keeps the code label to a few dozen values: a client cycling through
/// 3000-4999 must not create thousands of series.
fn close_code_class(code: u16) -> String {
    match code {
        1000..=1015 => code.to_string(),
        3000..=3999 => "3xxx".to_string(),
        4000..=4999 => "4xxx".to_string(),
        _ => "other".to_string(),
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Sums {
    bytes: u64,
    frames: u64,
    messages: u64,
}

impl Sums {
    fn add(&mut self, t: &DirectionTotals) {
        self.bytes += t.bytes;
        self.frames += t.frames;
        self.messages += t.messages;
    }
}

/// Traffic totals: closed tunnels' sums plus open tunnels' live counters.
#[derive(Debug)]
struct TrafficCollector {
    live: Arc<Registry>,
    closed: Mutex<HashMap<TunnelLabels, (Sums, Sums)>>,
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
        ];
        for (name, help, which) in series {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, (up, down)) in &all {
                for (direction, sums) in [("to_backend", up), ("to_client", down)] {
                    let value = match which {
                        0 => sums.bytes,
                        1 => sums.frames,
                        _ => sums.messages,
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

/// `wsgate_config_info{version}`: which config is running.
#[derive(Debug)]
struct InfoCollector {
    version: Mutex<String>,
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

/// Process figures from `/proc/self`, the names Prometheus' own clients use.
#[derive(Debug)]
struct ProcessCollector;

/// `/proc` reports CPU time in USER_HZ, which Linux fixes at 100 for userspace.
const USER_HZ: f64 = 100.0;

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        if let Some(kib) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            })
        {
            let g = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(kib * 1024).encode(g)?;
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let n = i64::try_from(dir.count()).unwrap_or(i64::MAX);
            let g = encoder.encode_descriptor(
                "process_open_fds",
                "Open file descriptors",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(n).encode(g)?;
        }
        if let Some(ticks) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
                let rest = s.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
        {
            let c = encoder.encode_descriptor(
                "process_cpu_seconds",
                "CPU time used",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(ticks as f64 / USER_HZ).encode(c)?;
        }
        Ok(())
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

    #[test]
    fn exposition_has_every_family() {
        let m = Metrics::new(Arc::new(Registry::default()), "abc123");
        m.handshake("public", 404, Duration::from_millis(3));
        let text = m.encode().expect("encode");
        for needle in [
            "wsgate_handshakes_total{listener=\"public\",outcome=\"404\"} 1",
            "wsgate_reloads_total{result=\"ok\"} 0",
            "wsgate_config_version{version=\"abc123\"} 1",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_cpu_seconds_total ",
            "wsgate_handshake_duration_seconds_count{listener=\"public\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
