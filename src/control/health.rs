//! Active health checkers: one task per server of every upstream that has
//! a `health` check, probing on a jittered schedule and flipping the
//! server's `healthy` flag after the thresholds.
//!
//! Owns: the registry of running checkers, keyed by upstream name and
//! server address, each with the check it runs and its stop token;
//! [`sync`], which after every snapshot swap keeps each checker whose
//! server (the same `Server`, carried over by the reload) and check are
//! unchanged, restarts those whose check changed, stops those whose server
//! left, and starts new ones; the one log line per state change; and what
//! `/api/upstreams` shows of each checker.
//!
//! Schedule: a checker's first probe comes at a random point within its
//! first interval, then one every `interval` ±10%, from one probe's start
//! to the next: wsgate instances started together (or a reload starting
//! many checkers) do not probe in step.
//!
//! Must not: hold the registry lock across an `.await`, or let a stopped
//! checker's last probe change a server: verdicts are applied under the
//! registry lock, and only by a checker still running.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::HealthCheck;
use crate::net::proxy_protocol;
use crate::upstream::balancer::Server;
use crate::upstream::health::threshold::{Transition, Verdict};
use crate::upstream::health::{probe, ProbeFailure};
use crate::Shared;

/// How far each interval may stray from the configured one, either way.
const JITTER: f64 = 0.1;

/// The running checkers.
#[derive(Default)]
pub struct Checkers {
    running: Mutex<HashMap<(Arc<str>, SocketAddr), Checker>>,
    /// Numbers checkers, so that a restart shows in `/api/upstreams`.
    next_id: AtomicU64,
}

struct Checker {
    /// The server it probes: a reload that replaces the server (another
    /// host name on the same address) restarts the checker.
    server: Arc<Server>,
    check: HealthCheck,
    stop: CancellationToken,
    report: Arc<Mutex<CheckReport>>,
}

/// What `/api/upstreams` shows of a server's checker.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Changes each time the checker is (re)started; the same across
    /// reloads that keep the server and its check.
    pub id: u64,
    /// `tcp`, `http` or `websocket`.
    pub kind: &'static str,
    /// When the checker started (RFC 3339).
    pub since: String,
    /// Probes run since then.
    pub probes: u64,
    /// Successes in a row (reset by a failure or a flip).
    pub successes: u32,
    /// Failures in a row (reset by a success or a flip).
    pub failures: u32,
    /// The latest probe; `null` before the first.
    pub last: Option<LastProbe>,
}

/// One probe's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct LastProbe {
    /// When it started (RFC 3339, milliseconds).
    pub at: String,
    /// `ok`, or the failure class (as in `wsgate_health_checks_total`).
    pub result: &'static str,
    /// What it saw, when it failed.
    pub reason: Option<String>,
    /// Connect, answer or pong latency, when it succeeded.
    pub latency_ms: Option<f64>,
}

impl Checkers {
    /// The checker of `addr` in `upstream`, if it has one.
    pub fn report(&self, upstream: &str, addr: SocketAddr) -> Option<CheckReport> {
        let running = self.lock();
        let c = running.get(&(Arc::from(upstream), addr))?;
        let r = c.report.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(r)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Arc<str>, SocketAddr), Checker>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Installs the server list of `wsgate_server_state` and starts the
/// checkers of the running snapshot. Called once, by `Gateway::start`.
pub fn start(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    shared.metrics.watch_servers(Box::new(move || {
        weak.upgrade().map(|s| servers(&s)).unwrap_or_default()
    }));
    sync(shared);
}

/// Every server of the running snapshot, then those a reload removed that
/// are still draining.
fn servers(shared: &Shared) -> Vec<(Arc<str>, Arc<Server>)> {
    let snapshot = shared.snapshot.load();
    let mut all: Vec<(Arc<str>, Arc<Server>)> = snapshot
        .upstreams()
        .flat_map(|u| u.servers.iter().map(|s| (u.name.clone(), s.clone())))
        .collect();
    for (up, s) in &shared.draining_servers() {
        if !all.iter().any(|(_, k)| Arc::ptr_eq(k, s)) {
            all.push((up.clone(), s.clone()));
        }
    }
    all
}

/// Brings the checkers in line with the running snapshot; call after every
/// swap. A checker whose server and check are unchanged goes on untouched
/// (its counters and schedule too).
pub fn sync(shared: &Arc<Shared>) {
    let snapshot = shared.snapshot.load_full();
    let mut wanted: HashMap<(Arc<str>, SocketAddr), (Arc<Server>, HealthCheck)> = HashMap::new();
    let mut unchecked: Vec<(Arc<str>, Arc<Server>)> = Vec::new();
    for u in snapshot.upstreams() {
        match &u.settings.health {
            Some(check) => {
                for s in &u.servers {
                    wanted.insert((u.name.clone(), s.addr), (s.clone(), check.clone()));
                }
            }
            None => unchecked.extend(u.servers.iter().map(|s| (u.name.clone(), s.clone()))),
        }
    }
    let mut running = shared.health.lock();
    running.retain(|key, c| {
        let keep = wanted
            .get(key)
            .is_some_and(|(s, check)| Arc::ptr_eq(s, &c.server) && *check == c.check);
        if !keep {
            c.stop.cancel();
            if !wanted.contains_key(key) {
                let server = key.1.to_string();
                shared
                    .metrics
                    .forget_health_checks(&key.0, &server, &ProbeFailure::RESULTS);
            }
        }
        keep
    });
    // Without a check nothing would ever bring a down server back. Only
    // now, under the lock and with its checker stopped: before, a verdict
    // of that checker could still land after this and leave it down.
    for (up, s) in unchecked.iter().filter(|(_, s)| s.set_healthy(true)) {
        tracing::info!(upstream = %up, server = %s.addr, "server up: its upstream no longer has a health check");
    }
    for (key, (server, check)) in wanted {
        if running.contains_key(&key) {
            continue;
        }
        let id = shared.health.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let report = Arc::new(Mutex::new(CheckReport {
            id,
            kind: check.kind.as_str(),
            since: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            probes: 0,
            successes: 0,
            failures: 0,
            last: None,
        }));
        let stop = shared.drain.child_token();
        let task = Task {
            shared: shared.clone(),
            upstream: key.0.clone(),
            server: server.clone(),
            check: check.clone(),
            report: report.clone(),
            stop: stop.clone(),
        };
        shared.tasks.spawn(task.run());
        running.insert(
            key,
            Checker {
                server,
                check,
                stop,
                report,
            },
        );
    }
}

/// One checker's task.
struct Task {
    shared: Arc<Shared>,
    upstream: Arc<str>,
    server: Arc<Server>,
    check: HealthCheck,
    report: Arc<Mutex<CheckReport>>,
    stop: CancellationToken,
}

impl Task {
    async fn run(self) {
        let mut verdict = Verdict::new(self.server.is_healthy());
        let mut next = Instant::now() + self.check.interval.mul_f64(rand::random::<f64>());
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
            let started = Instant::now();
            let at = SystemTime::now();
            let spread = rand::random_range(1.0 - JITTER..1.0 + JITTER);
            next = started + self.check.interval.mul_f64(spread);
            // The upstream's TLS as the running snapshot has it: a reload
            // may change certificates without changing the check.
            let (tls, send) = self
                .shared
                .snapshot
                .load()
                .upstream(&self.upstream)
                .map_or((None, None), |u| {
                    (u.tls.clone(), u.settings.send_proxy_protocol)
                });
            // The probe is wsgate's own connection: it names no client.
            let preamble = send.map_or_else(Vec::new, |v| proxy_protocol::encode_local(v.into()));
            let result = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = probe(&self.server, &self.check, tls.as_deref(), &preamble) => r,
            };
            let flip = verdict.record(
                result.is_ok(),
                self.check.healthy_threshold,
                self.check.unhealthy_threshold,
            );
            self.record(at, &result, &verdict);
            if let Some(t) = flip {
                self.apply(t, &result);
            }
        }
    }

    fn record(&self, at: SystemTime, result: &Result<Duration, ProbeFailure>, verdict: &Verdict) {
        let class = result.as_ref().map_or_else(ProbeFailure::class, |_| "ok");
        {
            // Under the registry lock, like `apply`: a sync that stopped this
            // checker may have dropped its series, and a late probe must not
            // bring them back.
            let _running = self.shared.health.lock();
            if self.stop.is_cancelled() {
                return;
            }
            self.shared
                .metrics
                .health_check(&self.upstream, &self.server.addr.to_string(), class);
        }
        let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
        r.probes += 1;
        r.successes = verdict.successes();
        r.failures = verdict.failures();
        r.last = Some(LastProbe {
            at: humantime::format_rfc3339_millis(at).to_string(),
            result: class,
            reason: result.as_ref().err().map(ToString::to_string),
            latency_ms: result.as_ref().ok().map(|d| d.as_secs_f64() * 1000.0),
        });
    }

    /// Flips the server, unless this checker was stopped meanwhile: under
    /// the registry lock, so a sync and a verdict never interleave.
    fn apply(&self, t: Transition, result: &Result<Duration, ProbeFailure>) {
        let changed = {
            let _running = self.shared.health.lock();
            if self.stop.is_cancelled() {
                return;
            }
            self.server.set_healthy(t == Transition::Up)
        };
        if !changed {
            return;
        }
        let kind = self.check.kind.as_str();
        match (t, result) {
            (Transition::Down, Err(reason)) => tracing::warn!(
                upstream = %self.upstream,
                server = %self.server.addr,
                check = kind,
                failures = self.check.unhealthy_threshold,
                reason = %reason,
                "server down: active health check failed"
            ),
            (_, Ok(latency)) => tracing::info!(
                upstream = %self.upstream,
                server = %self.server.addr,
                check = kind,
                successes = self.check.healthy_threshold,
                latency_ms = latency.as_secs_f64() * 1000.0,
                "server up: active health check passed"
            ),
            (_, Err(_)) => debug_assert!(false, "a flip up after a failure"),
        }
    }
}
