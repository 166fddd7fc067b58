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
//!
//! - `labels.rs`: the label sets, and the bucketing of statuses and close
//!   codes into few values.
//! - `traffic.rs`: the traffic-totals collector.
//! - `process.rs`: the `/proc` collector.
//! - `config_version.rs`: the running config's version.
//! - `availability.rs`: passive ejections and requests refused for want of
//!   a usable server.
//! - `health.rs`: servers' states, computed at scrape time.
//! - `refused.rs`: connections refused at accept, and those open.
//! - `live.rs`: running totals read by the dashboard's live feed.

mod availability;
mod config_version;
mod health;
mod labels;
mod live;
mod process;
mod refused;
mod traffic;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry as PromRegistry;

use crate::observe::access::AccessRecord;
use crate::observe::registry::Registry;
use config_version::InfoCollector;
pub use health::ServerList;
use health::{HealthCheckLabels, StateCollector};
pub use labels::TunnelLabels;
use labels::{
    close_code_class, outcome_label, CloseLabels, DurationLabels, EndLabels, HandshakeLabels,
    HttpBytesLabels, ListenerLabels, MalformedLabels, ResultLabels,
};
pub use live::LiveTotals;
use process::ProcessCollector;
use traffic::TrafficCollector;

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
    aborted: Family<MalformedLabels, Counter>,
    health_checks: Family<HealthCheckLabels, Counter>,
    states: Arc<StateCollector>,
    traffic: Arc<TrafficCollector>,
    info: Arc<InfoCollector>,
    availability: availability::AvailabilityMetrics,
    refused: refused::RefusedMetrics,
}

impl Metrics {
    /// Registers every family; `live` is read at each scrape for open tunnels.
    pub fn new(live: Arc<Registry>, config_version: &str) -> Self {
        let mut registry = PromRegistry::default();
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
        let aborted = Family::<MalformedLabels, Counter>::default();
        registry.register(
            "wsgate_http_responses_aborted",
            "Plain HTTP responses wsgate cut short, by reason (client_write: the client took no bytes)",
            aborted.clone(),
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
        let availability = availability::AvailabilityMetrics::register(&mut registry);
        let refused = refused::RefusedMetrics::register(&mut registry);
        let health_checks = Family::<HealthCheckLabels, Counter>::default();
        registry.register(
            "wsgate_health_checks",
            "Active health probes, by result (ok, or a short failure class)",
            health_checks.clone(),
        );
        let states = Arc::new(StateCollector::default());
        registry.register_collector(Box::new(states.clone()));
        Self {
            availability,
            refused,
            health_checks,
            states,
            registry,
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
            aborted,
            traffic,
            info,
        }
    }

    /// Creates a listener's handshake series at zero, so that rates and
    /// alerts work before the first occurrence of each outcome.
    pub fn prepare_listener(&self, listener: &str) {
        let listener: Arc<str> = listener.into();
        let _ = self.http_active.get_or_create(&ListenerLabels {
            listener: listener.clone(),
        });
        // 431 is hyper's own answer, before any handler: it is counted in
        // `wsgate_requests_malformed_total{reason="too_large"}` instead.
        for outcome in [101, 400, 403, 404, 426, 429, 502, 503, 504] {
            let _ = self.handshakes.get_or_create(&HandshakeLabels {
                listener: listener.clone(),
                outcome: outcome_label(outcome),
            });
        }
    }

    /// A request was answered with `status` after `elapsed`.
    pub fn handshake(&self, listener: &Arc<str>, status: u16, elapsed: Duration) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                listener: listener.clone(),
                outcome: outcome_label(status),
            })
            .inc();
        self.handshake_seconds
            .get_or_create(&ListenerLabels {
                listener: listener.clone(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// A plain request began; [`Metrics::http_request`] ends it, once, on
    /// every path.
    pub fn http_request_started(&self, listener: &Arc<str>) {
        self.http_active
            .get_or_create(&ListenerLabels {
                listener: listener.clone(),
            })
            .inc();
    }

    /// A plain request ended: answered with `status`, its response body
    /// done (or abandoned) after `elapsed`.
    pub fn http_request(
        &self,
        listener: &Arc<str>,
        status: u16,
        elapsed: Duration,
        to_backend: u64,
        to_client: u64,
    ) {
        self.http_requests
            .get_or_create(&HandshakeLabels {
                listener: listener.clone(),
                outcome: outcome_label(status),
            })
            .inc();
        let labels = ListenerLabels {
            listener: listener.clone(),
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

    /// A plain response was aborted by wsgate, for `reason`.
    pub fn response_aborted(&self, listener: &str, reason: &'static str) {
        self.aborted
            .get_or_create(&MalformedLabels {
                listener: listener.to_string(),
                reason,
            })
            .inc();
    }

    /// A tunnel closed with this record. (Open tunnels are counted from
    /// the live registry at each scrape.)
    pub fn tunnel_closed(&self, labels: &TunnelLabels, record: &AccessRecord) {
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
                closed_by: record.end.closed_by.as_str(),
                reason: record.end.reason.as_str(),
            })
            .inc();
        if let (Some(code), Some(from)) = (record.end.close_code, record.end.close_frame_from) {
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
        t.opened += 1;
        t.to_backend.add(&record.to_backend);
        t.to_client.add(&record.to_client);
        self.traffic.live.remove(record.id);
    }

    /// `server` of `upstream` was ejected by passive checks, `n` times
    /// since this was last called for it.
    pub fn server_ejected(&self, upstream: &str, server: &str, n: u64) {
        self.availability.ejected(upstream, server, n);
    }

    /// A client connection refused before it was served: over the limit
    /// `reason` names, or on a `proxy_protocol` listener an untrusted peer or
    /// a bad PROXY header.
    pub fn connection_refused(&self, listener: &str, reason: &'static str) {
        self.refused.refused(listener, reason);
    }

    /// The gauge of open client connections, which the admission table
    /// keeps equal to its count.
    pub fn client_connections_gauge(&self) -> Gauge {
        self.refused.open.clone()
    }

    /// The counter of connections worker `index` accepts.
    pub fn worker_accepted(&self, index: usize) -> Counter {
        self.refused.worker(index)
    }

    /// A request to `upstream` was refused at once: no server was usable.
    pub fn no_usable_server(&self, upstream: &str) {
        self.availability.unavailable(upstream);
    }

    /// Drops the health-check series of a server whose check has ended
    /// (the server left the config, or its upstream lost its check), one
    /// per result in `results`, so that servers coming and going (DNS) do
    /// not grow the label set.
    pub fn forget_health_checks(&self, upstream: &str, server: &str, results: &[&'static str]) {
        for &result in results {
            self.health_checks.remove(&HealthCheckLabels {
                upstream: upstream.to_string(),
                server: server.to_string(),
                result,
            });
        }
    }

    /// Folds the tunnel and traffic totals of servers no longer configured
    /// (and with no live tunnel) into `server="removed"` series; called
    /// after each snapshot swap and at each scrape.
    pub fn forget_removed_servers(&self) {
        let Some(list) = self.states.servers.get() else {
            return;
        };
        let configured = list()
            .into_iter()
            .map(|(upstream, server)| (upstream.to_string(), server.addr.to_string()))
            .collect();
        self.traffic.fold_removed(&configured);
    }

    /// Drops the ejection series of a server no longer in the config.
    pub fn forget_ejections(&self, upstream: &str, server: &str) {
        self.availability.forget(upstream, server);
    }

    /// One active health probe of `server` ended with `result` (`ok` or a
    /// failure class).
    pub fn health_check(&self, upstream: &str, server: &str, result: &'static str) {
        self.health_checks
            .get_or_create(&HealthCheckLabels {
                upstream: upstream.to_string(),
                server: server.to_string(),
                result,
            })
            .inc();
    }

    /// Installs the list of servers whose state `wsgate_server_state`
    /// reports, read at each scrape; the first call wins.
    pub fn watch_servers(&self, list: ServerList) {
        let _ = self.states.servers.set(list);
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
        self.forget_removed_servers();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family() {
        let m = Metrics::new(Arc::new(Registry::default()), "abc123");
        m.handshake(&"public".into(), 404, Duration::from_millis(3));
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

    #[test]
    fn server_states_are_read_at_scrape_time() {
        use crate::upstream::balancer::Server;
        let m = Metrics::new(Arc::new(Registry::default()), "abc123");
        let server = Arc::new(Server::new("127.0.0.1:9001".parse().unwrap(), 1));
        let listed = server.clone();
        m.watch_servers(Box::new(move || vec![("chat".into(), listed.clone())]));
        m.health_check("chat", "127.0.0.1:9001", "refused");
        let line = |state: &str, v: u8| {
            format!("wsgate_server_state{{upstream=\"chat\",server=\"127.0.0.1:9001\",state=\"{state}\"}} {v}")
        };
        let text = m.encode().expect("encode");
        for needle in [line("up", 1), line("down", 0), line("draining", 0)] {
            assert!(text.contains(&needle), "missing {needle} in\n{text}");
        }
        assert!(text.contains("wsgate_health_checks_total{upstream=\"chat\",server=\"127.0.0.1:9001\",result=\"refused\"} 1"), "{text}");
        server.set_healthy(false);
        let text = m.encode().expect("encode");
        for needle in [line("up", 0), line("down", 1), line("draining", 0)] {
            assert!(text.contains(&needle), "missing {needle} in\n{text}");
        }
    }
}
