//! wsgate: a reverse proxy and load balancer built for WebSocket traffic.
//!
//! # Data path, one WebSocket from accept to close
//! 1. [`front::listener`] accepts, on a `proxy_protocol` listener reads the
//!    PROXY header ([`net::proxy_protocol`]) whose client is the client from
//!    then on, terminates TLS ([`net::tls`]), wraps the
//!    stream for hyper ([`net::client`]: the raw-byte framing guard of
//!    [`net::guard`] over the lingering close of [`net::linger`]) and
//!    serves it with hyper into [`proxy::handle`].
//! 2. [`proxy`] runs one request's phases in order: check it against RFC
//!    6455 ([`proxy::handshake`]), route it in the snapshot loaded once
//!    ([`proxy::routes`]), then `upgrade` it with this hop's forwarding
//!    headers ([`proxy::forwarded`]). Any failure is one `Refusal`
//!    ([`proxy::context`]) with its status and the side that caused it.
//! 3. [`upstream`] orders the servers ([`upstream::balancer`]), connects
//!    (with TLS when asked), sends the upgrade and verifies the backend's
//!    101 ([`upstream::answer`]).
//! 4. [`tunnel::session`] takes the client stream back from hyper and runs
//!    [`tunnel::run`]: one state machine per direction, following frame
//!    headers ([`tunnel::frames`]) so that a Close can be injected at a
//!    frame boundary.
//! 5. [`observe::registry`] lists the live tunnel and its counters; at its
//!    end the session writes one [`observe::access::AccessRecord`];
//!    [`observe::metrics`] counts both.
//!
//! A request without an upgrade goes from [`proxy`] to [`proxy::plain`],
//! which sends it (its body through [`proxy::upload`]) over the upstream's
//! keep-alive pool ([`upstream::pool`]) and streams the answer back.
//!
//! # Control path
//! [`config`] parses and validates TOML into typed values, without DNS;
//! [`control::resolve`] looks up host names and [`proxy::routes`] compiles
//! an immutable snapshot held behind one `ArcSwap` in [`Shared`], which a
//! reload swaps; [`control::admin`] serves the admin API (its
//! `/api/config` from [`config::view`]); [`control::drain`] closes tunnels
//! with Close frames on a schedule; [`control::health`] runs one checker
//! per server with an active check ([`upstream::health`] probes), flipping
//! its health after the thresholds. Stopping has stages, each implying the
//! ones before ([`control::lifecycle`] runs them in order): `stopping`
//! closes the listeners and turns `/readyz` to 503; `winding` ends HTTP
//! connections once idle; `drain` asks every tunnel to close with 1001;
//! `shutdown` cuts whatever is left. Every task is tracked.
//!
//! # Modules, bottom to top
//! Dependencies point one way, from the front towards what it uses; no
//! folder imports one above it.
//! - [`config`]: raw TOML ([`config::validate`]), upstreams
//!   ([`config::upstream`]), TLS files ([`config::tls`]), the typed
//!   `Config`, its errors ([`config::error`]), the admin views
//!   ([`config::view`]).
//! - [`net`]: plain-or-TLS streams ([`net::tls`]), the framing guard
//!   ([`net::guard`]), lingering close ([`net::linger`]), a client stream
//!   wrapped for hyper and unwrapped after an upgrade ([`net::client`]),
//!   the PROXY protocol header read and written ([`net::proxy_protocol`]).
//! - [`upstream`]: connecting and the upgrade exchange, servers and
//!   balancing ([`upstream::balancer`]), the 101's rules
//!   ([`upstream::answer`]), the keep-alive pool ([`upstream::pool`]),
//!   passive checks ([`upstream::passive`]) and slow start
//!   ([`upstream::slow_start`]), health probes and their verdict
//!   ([`upstream::health`]).
//! - [`observe`]: live tunnels ([`observe::registry`]), access records
//!   ([`observe::access`]), metrics ([`observe::metrics`]), the backend
//!   error throttle ([`observe::errorlog`]).
//! - [`tunnel`]: splicing two streams at frame boundaries, frame headers
//!   ([`tunnel::frames`]), one tunnel's task ([`tunnel::session`]), the
//!   routes' idle, ping and age policies ([`tunnel::keepalive`]).
//! - [`proxy`]: one request's phases, the connection context
//!   ([`proxy::context`]), handshake rules, routing, forwarding headers,
//!   plain HTTP ([`proxy::plain`], [`proxy::upload`]).
//! - [`front`]: listeners and the accept loop ([`front::listener`]), the
//!   PROXY protocol phase before TLS (`front::proxy_header`).
//! - [`control`]: admin API ([`control::admin`]), reload
//!   ([`control::reload`]), host-name lookups ([`control::resolve`]), drain
//!   ([`control::drain`]), readiness and the graceful stop
//!   ([`control::lifecycle`]), systemd ([`control::systemd`]), reactions to
//!   ejections and health changes ([`control::eject`]), active health
//!   checkers ([`control::health`]).
//! - `demo`: demo backends and the `client` subcommand (the default
//!   `demo` cargo feature; the proxy never uses it).
//!
//! Established tunnels own their two streams, their counters and the `Arc`s
//! of what they use: replacing the snapshot never reaches into them.

#![forbid(unsafe_code)]

pub mod config;
pub mod control;
#[cfg(feature = "demo")]
pub mod demo;
pub mod front;
pub mod net;
pub mod observe;
pub mod proxy;
pub mod tunnel;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::control::{admin, health, lifecycle, reload, resolve, systemd};
use crate::front::listener::BoundListener;
use crate::observe::registry::Registry;
use crate::observe::{errorlog, metrics};
use crate::proxy::routes::{CompileError, Snapshot};
use crate::upstream::balancer;

/// State shared by every task of one running wsgate.
/// A server a reload removed while it still drains.
#[derive(Debug, Clone)]
pub struct DrainingServer {
    /// The upstream it was in.
    pub upstream: Arc<str>,
    /// The same object the snapshot held, tunnels counted on it.
    pub server: Arc<balancer::Server>,
    /// An operator drained it before the reload: added back, it stays
    /// draining until the operator enables it (a reload's own drain ends
    /// when the server comes back).
    pub by_operator: bool,
}

pub struct Shared {
    /// The routing table; swapped whole, never mutated.
    pub snapshot: ArcSwap<Snapshot>,
    /// Live tunnels and the feed of finished ones.
    pub registry: Arc<Registry>,
    /// Every task wsgate starts, so shutdown can wait for all of them.
    pub tasks: TaskTracker,
    /// Connection tasks of the plain HTTP pools. Kept apart from `tasks`:
    /// an idle pooled connection must not hold up a drain, so these are
    /// stopped once every client connection has ended.
    pub pool_tasks: TaskTracker,
    /// Ends the pools' connection tasks (after a drain, or at shutdown).
    pub pool_stop: CancellationToken,
    /// Prometheus metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// Folds repeated backend errors into counted log lines.
    pub errors: errorlog::Throttle,
    /// Open client connections, for `limits.max_connections` and `max_connections_per_ip`.
    pub admission: net::admission::Admission,
    /// The threads that accept and serve client connections.
    pub workers: front::workers::Workers,
    /// Accepting listeners by name; a reload adds and removes entries.
    listeners: std::sync::Mutex<std::collections::HashMap<String, reload::RunningListener>>,
    /// One reload at a time.
    pub reload_lock: tokio::sync::Mutex<()>,
    /// The admin settings wsgate started with. The admin listener is not
    /// re-bound by a reload, so its token must not change under it either.
    pub admin: Option<config::AdminConfig>,
    /// Servers removed by a reload whose drain is still running: a reload
    /// adding one back takes it over, tunnels, drain and all.
    draining: std::sync::Mutex<Vec<DrainingServer>>,
    /// Tells the service manager about reloads (and nothing without `NOTIFY_SOCKET`).
    pub notifier: systemd::Notifier,
    /// The dashboard's state: the last reloads, the open feeds.
    pub dashboard: control::dashboard::Board,
    /// The active health checkers, one per server with a check.
    pub health: health::Checkers,
    /// How host-named servers are resolved again.
    resolver: std::sync::Mutex<resolve::Resolver>,
    /// One watcher per server for ejections and health changes (`control::eject`).
    pub ejection_watchers: control::eject::Watchers,
    /// Cancelled to stop gracefully: no new connections, Close 1001 to
    /// every tunnel at once. Cancelling it also cancels `winding` and
    /// `stopping`.
    pub drain: CancellationToken,
    /// Cancelled when HTTP connections should end: idle ones at once, one
    /// with a request in flight once it is answered. Cancelling it also
    /// cancels `stopping`.
    pub winding: CancellationToken,
    /// Cancelled when a stop begins: listeners stop accepting, `/readyz`
    /// answers 503, reloads are refused; established connections go on.
    pub stopping: CancellationToken,
    /// Cancelled to stop now; cancelling it also drains.
    pub shutdown: CancellationToken,
}

impl Shared {
    /// Starts a graceful stop (cancels `drain`), and asks every tunnel to
    /// close before returning.
    pub fn begin_drain(&self) {
        self.drain.cancel();
        self.registry.close_all();
    }

    /// Stops now (cancels `shutdown`), and cuts every tunnel before
    /// returning.
    pub fn shut_down(&self) {
        self.shutdown.cancel();
        self.registry.cut_all();
    }

    /// The resolver for host-named servers.
    pub fn resolver(&self) -> resolve::Resolver {
        *self.resolver.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the resolver (tests do, to change what a name resolves to).
    pub fn set_resolver(&self, r: resolve::Resolver) {
        *self.resolver.lock().unwrap_or_else(|e| e.into_inner()) = r;
    }

    /// Servers a reload removed that are still draining.
    pub fn draining_list(&self) -> std::sync::MutexGuard<'_, Vec<DrainingServer>> {
        self.draining.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Shared::draining_list`] as `(upstream, server)` pairs.
    pub fn draining_servers(&self) -> Vec<(Arc<str>, Arc<balancer::Server>)> {
        self.draining_list()
            .iter()
            .map(|d| (d.upstream.clone(), d.server.clone()))
            .collect()
    }

    /// The running listeners.
    pub fn listeners(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, reload::RunningListener>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why wsgate could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A server's host name does not resolve.
    #[error(transparent)]
    Resolve(#[from] resolve::ResolveError),
    /// The config could not be compiled into a routing table.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// A bound listener has no entry in the config.
    #[error("listener {0} is not in the config")]
    UnknownListener(String),
    /// The worker threads could not be started.
    #[error("starting the worker threads: {0}")]
    Workers(#[source] std::io::Error),
    /// The blocking lookup task failed (it panicked or was cancelled).
    #[error("resolving host names: {0}")]
    Internal(String),
}

/// The admin listener, served from before the gateway starts: until then
/// it answers the probes only, `/readyz` with 503 `starting`.
pub struct AdminServer {
    target: admin::Target,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl AdminServer {
    /// Starts serving the admin API on an already-bound listener; it stops
    /// with `shutdown`, or once the gateway it is given to has ended.
    pub fn serve(listener: tokio::net::TcpListener, shutdown: &CancellationToken) -> Self {
        if let Ok(a) = listener.local_addr() {
            tracing::info!(addr = %a, "admin listening");
        }
        let this = Self {
            target: admin::Target::default(),
            tasks: TaskTracker::new(),
            stop: shutdown.child_token(),
        };
        this.tasks.spawn(admin::serve(
            listener,
            this.target.clone(),
            this.tasks.clone(),
            this.stop.clone(),
        ));
        this
    }
}

/// How [`Gateway::launch`] starts, beyond the config and the listeners.
pub struct Launch {
    /// The admin listener, already serving (see [`AdminServer`]).
    pub admin: Option<AdminServer>,
    /// How host-named servers are resolved, now and at every reload.
    pub resolver: resolve::Resolver,
    /// What the service manager is told around reloads.
    pub notifier: systemd::Notifier,
}

impl Default for Launch {
    fn default() -> Self {
        Self {
            admin: None,
            resolver: resolve::system_resolver,
            notifier: systemd::Notifier::disabled(),
        }
    }
}

/// A running wsgate.
pub struct Gateway {
    shared: Arc<Shared>,
    /// The admin listener outlives the data path during a drain (probes
    /// answer 503), so it has its own tasks and stop signal.
    admin_tasks: TaskTracker,
    admin_stop: CancellationToken,
}

impl Gateway {
    /// Starts serving on already-bound listeners (tests bind `127.0.0.1:0`).
    /// Servers' host names are resolved here, with the system resolver,
    /// blocking: nothing is served yet.
    ///
    /// # Errors
    /// [`StartError`] if a host name does not resolve, the config does not
    /// compile or a listener is unknown.
    pub fn start(
        config: Config,
        listeners: Vec<BoundListener>,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        let answers = resolve::resolve_names(&config, resolve::system_resolver)?;
        Self::assemble(config, answers, listeners, shutdown, Launch::default())
    }

    /// Starts serving on already-bound listeners, resolving host names on
    /// a blocking thread, so that an admin listener already serving (in
    /// `launch.admin`) answers `/readyz` with 503 `starting` meanwhile.
    ///
    /// # Errors
    /// As [`Gateway::start`].
    pub async fn launch(
        config: Config,
        listeners: Vec<BoundListener>,
        shutdown: CancellationToken,
        launch: Launch,
    ) -> Result<Self, StartError> {
        let resolver = launch.resolver;
        let resolved = tokio::task::spawn_blocking(move || {
            let answers = resolve::resolve_names(&config, resolver);
            (config, answers)
        })
        .await;
        let (config, answers) = resolved.map_err(|e| StartError::Internal(e.to_string()))?;
        Self::assemble(config, answers?, listeners, shutdown, launch)
    }

    fn assemble(
        config: Config,
        answers: crate::proxy::routes::Answers,
        listeners: Vec<BoundListener>,
        shutdown: CancellationToken,
        launch: Launch,
    ) -> Result<Self, StartError> {
        let admin = config.admin.clone();
        reload::warn_insecure(&config);
        let snapshot = Snapshot::compile(Arc::new(config), answers, None, &[])?;
        for l in &listeners {
            if !snapshot.listeners.contains_key(&l.name) {
                return Err(StartError::UnknownListener(l.name.clone()));
            }
        }
        let registry = Arc::new(Registry::default());
        let metrics = Arc::new(metrics::Metrics::new(
            registry.clone(),
            &snapshot.config.version,
        ));
        for l in &snapshot.config.listeners {
            metrics.prepare_listener(&l.name);
        }
        // Each stage of a stop implies the ones before it.
        let drain = shutdown.child_token();
        let winding = drain.child_token();
        let stopping = winding.child_token();
        let admission = net::admission::Admission::new(metrics.client_connections_gauge());
        let workers = front::workers::Workers::start(front::workers::Workers::count(
            snapshot.config.runtime.workers,
        ))
        .map_err(StartError::Workers)?;
        let shared = Arc::new(Shared {
            workers,
            snapshot: ArcSwap::from_pointee(snapshot),
            registry,
            metrics,
            errors: errorlog::Throttle::default(),
            admission,
            listeners: std::sync::Mutex::new(std::collections::HashMap::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            admin,
            draining: std::sync::Mutex::new(Vec::new()),
            resolver: std::sync::Mutex::new(launch.resolver),
            notifier: launch.notifier,
            dashboard: control::dashboard::Board::default(),
            ejection_watchers: control::eject::Watchers::default(),
            health: health::Checkers::default(),
            tasks: TaskTracker::new(),
            pool_tasks: TaskTracker::new(),
            pool_stop: shutdown.child_token(),
            drain,
            winding,
            stopping,
            shutdown,
        });
        let binds: std::collections::HashMap<String, SocketAddr> = shared
            .snapshot
            .load()
            .config
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.bind))
            .collect();
        for l in listeners {
            let bind = binds
                .get(&l.name)
                .copied()
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
            reload::start_listener(&shared, l, bind);
        }
        health::start(&shared);
        control::eject::sync(&shared);
        // Among the pools' tasks, which outlive the connections': it has
        // tunnels to tell of a shutdown until the last one has ended.
        shared.pool_tasks.spawn(shared.registry.clone().obey(
            shared.drain.clone(),
            shared.shutdown.clone(),
            shared.pool_stop.clone(),
        ));
        let (watch, source) = {
            let s = shared.snapshot.load();
            (s.config.runtime.watch_config, s.config.source.clone())
        };
        // Both end when a stop begins: reloads are refused from then on, and
        // a refused reload would be counted as a failure on a stopping wsgate.
        shared.tasks.spawn(reload::resolve_loop(
            shared.clone(),
            shared.stopping.clone(),
        ));
        if watch {
            shared.tasks.spawn(reload::watch(
                shared.clone(),
                source,
                shared.stopping.clone(),
            ));
        }
        let (admin_tasks, admin_stop) = match launch.admin {
            Some(a) => {
                // The admin listener starts answering for this gateway.
                let _ = a.target.set(shared.clone());
                (a.tasks, a.stop)
            }
            None => (TaskTracker::new(), shared.shutdown.child_token()),
        };
        Ok(Self {
            shared,
            admin_tasks,
            admin_stop,
        })
    }

    /// Serves the admin API on an already-bound listener.
    pub fn serve_admin(&self, listener: tokio::net::TcpListener) {
        if let Ok(a) = listener.local_addr() {
            tracing::info!(addr = %a, "admin listening");
        }
        let target = admin::Target::default();
        let _ = target.set(self.shared.clone());
        self.admin_tasks.spawn(admin::serve(
            listener,
            target,
            self.admin_tasks.clone(),
            self.admin_stop.clone(),
        ));
    }

    /// The address a running listener is bound to.
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.shared.listeners().get(listener).map(|l| l.local)
    }

    /// Reloads the config file (see [`reload::reload`]).
    ///
    /// # Errors
    /// [`reload::ReloadError`] when the new config is rejected; the old one keeps serving.
    pub async fn reload(&self) -> Result<reload::ReloadReport, reload::ReloadError> {
        reload::reload(&self.shared).await
    }

    /// Live tunnels and finished-tunnel feed.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.shared.registry
    }

    /// The shared state, for control-path tasks.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Starts a graceful stop: listeners stop accepting, idle HTTP
    /// connections end, and every tunnel is closed with Close 1001 at a frame
    /// boundary, each within `timeouts.close`.
    pub fn drain(&self) {
        self.shared.begin_drain();
    }

    /// Stops in phases, with the timing of `plan` (see
    /// [`lifecycle::stop`]); [`Gateway::wait`] then returns.
    pub async fn stop(&self, plan: lifecycle::StopPlan) -> lifecycle::Stopped {
        lifecycle::stop(self.shared.clone(), plan).await
    }

    /// The stop plan of the running config's `[runtime]`.
    pub fn stop_plan(&self) -> lifecycle::StopPlan {
        lifecycle::StopPlan::from(&self.shared.snapshot.load().config.runtime)
    }

    /// Waits for a drain (or shutdown) to be requested and every task to end.
    pub async fn wait(self) {
        self.shared.drain.cancelled().await;
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        // No client connection is left, so no request is in flight: what
        // remains in the pools is idle.
        self.shared.pool_stop.cancel();
        self.shared.pool_tasks.close();
        self.shared.pool_tasks.wait().await;
        self.admin_stop.cancel();
        self.admin_tasks.close();
        self.admin_tasks.wait().await;
    }
}
