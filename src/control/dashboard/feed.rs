//! What the live feed sends each second: a reading of the running wsgate
//! (totals, listeners, routes, upstreams, config, reloads, connections),
//! and the delta between one reading and the last one sent.
//!
//! The first message of a feed is `full`; every later one is a `delta`
//! with the totals turned into rates, only the sections that changed, and
//! only the connections that opened, moved bytes or closed. An idle
//! wsgate with 10,000 tunnels open sends a few hundred bytes a second.
//!
//! Must not: keep anything between readings beyond what the diff needs;
//! every value comes from what the admin API already computes.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::observe::access::DirectionTotals;
use crate::observe::metrics::LiveTotals;
use crate::observe::registry::{ConnStats, ConnSummary};
use crate::Shared;

/// One row of the connections table. Its age is computed by the page from
/// `started_ms`, so a row that moved no bytes is not sent again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnRow {
    /// What `/api/connections` shows too.
    #[serde(flatten)]
    pub conn: ConnSummary,
    /// Start, in milliseconds since the Unix epoch.
    pub started_ms: u64,
}

impl ConnRow {
    fn of(c: &ConnStats) -> Self {
        Self {
            conn: c.summary(),
            started_ms: unix_ms(c.started_at),
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Everything one message is made from, read at one instant.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    /// Running totals, turned into rates against the previous reading.
    pub totals: LiveTotals,
    /// Named sections, sent whole when they differ from the last sent.
    pub sections: BTreeMap<&'static str, Value>,
    /// Live connections.
    pub conns: Vec<ConnRow>,
}

impl Reading {
    /// Reads the running wsgate.
    pub fn of(shared: &Shared) -> Self {
        let snapshot = shared.snapshot.load();
        let live = shared.registry.live();
        let conns: Vec<ConnRow> = live.iter().map(|c| ConnRow::of(c)).collect();
        let mut per_listener: HashMap<&str, u64> = HashMap::new();
        let mut per_route: HashMap<&str, u64> = HashMap::new();
        for c in &conns {
            *per_listener.entry(&c.conn.listener).or_default() += 1;
            *per_route.entry(&c.conn.route).or_default() += 1;
        }
        let running = shared.listeners();
        let listeners: Vec<Value> = snapshot
            .config
            .listeners
            .iter()
            .map(|l| {
                json!({
                    "name": l.name,
                    "bind": l.bind,
                    "local": running.get(&l.name).map(|r| r.local),
                    "tls": l.tls.is_some(),
                    "active": per_listener.get(l.name.as_str()).copied().unwrap_or(0),
                })
            })
            .collect();
        drop(running);
        let routes: Vec<Value> = snapshot
            .routes()
            .map(|r| {
                json!({
                    "label": &*r.label,
                    "upstream": &*r.upstream.name,
                    "active": per_route.get(&*r.label).copied().unwrap_or(0),
                })
            })
            .collect();
        let draining: Vec<Value> = shared
            .draining_servers()
            .iter()
            .map(|(u, s)| json!({"upstream": &**u, "addr": s.addr, "active": s.active()}))
            .collect();
        let mut sections = BTreeMap::new();
        sections.insert("listeners", Value::from(listeners));
        sections.insert("routes", Value::from(routes));
        sections.insert(
            "upstreams",
            Value::from(crate::control::admin::upstreams_value(shared)),
        );
        sections.insert("removed_draining", Value::from(draining));
        sections.insert(
            "config",
            json!({"version": snapshot.config.version, "source": snapshot.config.source}),
        );
        sections.insert(
            "reloads",
            serde_json::to_value(shared.dashboard.reloads.list()).unwrap_or(Value::Null),
        );
        let totals = shared
            .metrics
            .live_totals(snapshot.config.listeners.iter().map(|l| l.name.as_str()));
        Self {
            totals,
            sections,
            conns,
        }
    }
}

/// The state of one feed: what the page has been sent so far.
#[derive(Debug, Default)]
pub struct Feed {
    last: Option<(Instant, LiveTotals)>,
    sections: BTreeMap<&'static str, Value>,
    conns: HashMap<u64, ConnRow>,
}

/// Per second, over `dt`.
fn rate(now: u64, before: u64, dt: Duration) -> f64 {
    // A counter that went down belongs to something removed: no traffic.
    let secs = dt.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    now.saturating_sub(before) as f64 / secs
}

fn direction_rates(now: &DirectionTotals, before: &DirectionTotals, dt: Duration) -> Value {
    json!({
        "bytes_per_s": rate(now.bytes, before.bytes, dt),
        "messages_per_s": rate(now.messages, before.messages, dt),
        "bytes": now.bytes,
        "messages": now.messages,
    })
}

impl Feed {
    /// The next message for the page: `full` the first time, then deltas.
    pub fn next(&mut self, reading: Reading, at: Instant, wall: SystemTime) -> Value {
        let full = self.last.is_none();
        let (dt, before) = match &self.last {
            Some((t, b)) => (at.saturating_duration_since(*t), b.clone()),
            None => (Duration::ZERO, reading.totals.clone()),
        };
        let answered: Map<String, Value> = reading
            .totals
            .answered
            .iter()
            .map(|(k, v)| {
                let was = before.answered.get(k).copied().unwrap_or(0);
                (k.clone(), Value::from(rate(*v, was, dt)))
            })
            .collect();
        let totals = json!({
            "active": reading.conns.len(),
            "answered_per_s": answered,
            "to_backend": direction_rates(&reading.totals.to_backend, &before.to_backend, dt),
            "to_client": direction_rates(&reading.totals.to_client, &before.to_client, dt),
        });
        self.last = Some((at, reading.totals));
        let mut msg = Map::new();
        msg.insert(
            "type".into(),
            Value::from(if full { "full" } else { "delta" }),
        );
        msg.insert("t".into(), Value::from(unix_ms(wall)));
        msg.insert("totals".into(), totals);
        for (name, value) in reading.sections {
            if self.sections.get(name) != Some(&value) {
                msg.insert(name.into(), value.clone());
                self.sections.insert(name, value);
            }
        }
        msg.insert("conns".into(), self.conn_delta(reading.conns, full));
        Value::Object(msg)
    }

    fn conn_delta(&mut self, rows: Vec<ConnRow>, full: bool) -> Value {
        let mut upsert = Vec::new();
        let mut next = HashMap::with_capacity(rows.len());
        for row in rows {
            if self.conns.get(&row.conn.id) != Some(&row) {
                upsert.push(serde_json::to_value(&row).unwrap_or(Value::Null));
            }
            next.insert(row.conn.id, row);
        }
        let mut remove: Vec<u64> = self
            .conns
            .keys()
            .filter(|id| !next.contains_key(id))
            .copied()
            .collect();
        remove.sort_unstable();
        self.conns = next;
        json!({"reset": full, "upsert": upsert, "remove": remove})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u64, bytes: u64) -> ConnRow {
        ConnRow {
            conn: ConnSummary {
                id,
                client: "127.0.0.1:50000".parse().expect("addr"),
                listener: "public".into(),
                route: "/chat".into(),
                upstream: "chat".into(),
                server: "127.0.0.1:9001".parse().expect("addr"),
                path: "/chat".into(),
                to_backend: DirectionTotals {
                    bytes,
                    ..DirectionTotals::default()
                },
                to_client: DirectionTotals::default(),
            },
            started_ms: 1,
        }
    }

    fn reading(conns: Vec<ConnRow>, version: &str, bytes_up: u64) -> Reading {
        let mut sections = BTreeMap::new();
        sections.insert("config", json!({ "version": version }));
        Reading {
            totals: LiveTotals {
                answered: [("101".to_string(), bytes_up / 10)].into_iter().collect(),
                to_backend: DirectionTotals {
                    bytes: bytes_up,
                    messages: bytes_up / 100,
                    ..DirectionTotals::default()
                },
                to_client: DirectionTotals::default(),
            },
            sections,
            conns,
        }
    }

    #[test]
    fn the_first_message_is_full_and_later_ones_carry_only_changes() {
        let mut feed = Feed::default();
        let t0 = Instant::now();
        let first = feed.next(reading(vec![row(1, 0), row(2, 0)], "a", 0), t0, UNIX_EPOCH);
        assert_eq!(first["type"], "full");
        assert_eq!(first["conns"]["reset"], true);
        assert_eq!(first["conns"]["upsert"].as_array().map(Vec::len), Some(2));
        assert_eq!(first["config"]["version"], "a");
        assert_eq!(first["totals"]["to_backend"]["bytes_per_s"], 0.0);

        // Nothing moved: no section, no row.
        let t1 = t0 + Duration::from_secs(1);
        let quiet = feed.next(reading(vec![row(1, 0), row(2, 0)], "a", 0), t1, UNIX_EPOCH);
        assert_eq!(quiet["type"], "delta");
        assert!(quiet.get("config").is_none(), "{quiet}");
        assert_eq!(
            quiet["conns"],
            json!({"reset": false, "upsert": [], "remove": []})
        );

        // Row 1 moved 500 bytes, row 2 closed, row 3 opened, a reload
        // changed the version; 2 s passed.
        let t2 = t1 + Duration::from_secs(2);
        let busy = feed.next(
            reading(vec![row(1, 500), row(3, 0)], "b", 1000),
            t2,
            UNIX_EPOCH,
        );
        let ids: Vec<u64> = busy["conns"]["upsert"]
            .as_array()
            .expect("rows")
            .iter()
            .filter_map(|r| r["id"].as_u64())
            .collect();
        assert_eq!(ids, vec![1, 3]);
        assert_eq!(busy["conns"]["remove"], json!([2]));
        assert_eq!(busy["config"]["version"], "b");
        assert_eq!(busy["totals"]["to_backend"]["bytes_per_s"], 500.0);
        assert_eq!(busy["totals"]["to_backend"]["messages_per_s"], 5.0);
        assert_eq!(busy["totals"]["answered_per_s"]["101"], 50.0);
        assert_eq!(busy["totals"]["active"], 2);
    }

    #[test]
    fn ten_thousand_idle_tunnels_cost_a_small_delta() {
        let rows = || (0..10_000).map(|id| row(id, 7)).collect::<Vec<_>>();
        let mut feed = Feed::default();
        let t0 = Instant::now();
        let full = feed.next(reading(rows(), "a", 0), t0, UNIX_EPOCH);
        assert_eq!(
            full["conns"]["upsert"].as_array().map(Vec::len),
            Some(10_000)
        );
        let quiet = feed.next(
            reading(rows(), "a", 0),
            t0 + Duration::from_secs(1),
            UNIX_EPOCH,
        );
        assert_eq!(quiet["conns"]["upsert"], json!([]));
        assert_eq!(quiet["totals"]["active"], 10_000);
        let size = quiet.to_string().len();
        assert!(size < 1024, "{size} bytes: {quiet}");
    }

    #[test]
    fn a_counter_that_went_down_counts_as_no_traffic() {
        assert_eq!(rate(5, 10, Duration::from_secs(1)), 0.0);
        assert_eq!(rate(10, 5, Duration::ZERO), 0.0);
        assert_eq!(rate(30, 10, Duration::from_millis(500)), 40.0);
    }
}
