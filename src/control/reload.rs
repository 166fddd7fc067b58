//! Live reconfiguration: re-read the config, check it in full, and switch
//! to it in one pointer swap, without touching an established connection.
//!
//! Owns: the reload procedure (all or nothing), resolving servers' host
//! names again every `resolve_interval` (the lookups are in `resolve.rs`),
//! listeners started and stopped by a reload, draining of servers a reload
//! removed, the config-file watcher, and the report of what changed.
//!
//! Order of a reload, so that a failure leaves everything as it was:
//! parse and validate (any problem: reject), resolve every host name (one
//! that does not resolve: reject, naming where it was written), compile the
//! snapshot (carrying over live servers), bind every new listener (any failure: reject, and the
//! ones already bound are dropped), then swap the snapshot, stop removed
//! listeners, start new ones, and drain removed servers. Established
//! tunnels own their streams and the `Arc`s they use: none of this reaches them.
//!
//! Must not: re-bind a listener whose name and address are unchanged.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigError};
use crate::control::drain;
use crate::control::resolve::{lookup, resolve_names, ResolveError};
use crate::front::listener;
use crate::front::listener::{BindError, BoundListener};
use crate::proxy::routes::{Answers, CompileError, Snapshot};
use crate::upstream::balancer::Server;
use crate::{DrainingServer, Shared};

/// A listener that is accepting, as the reload logic needs to know it.
#[derive(Debug)]
pub struct RunningListener {
    /// The address its config asked for (port 0 stays 0 here).
    pub bind: SocketAddr,
    /// The address it actually has.
    pub local: SocketAddr,
    /// Stops its accept loop; its connections go on.
    pub stop: CancellationToken,
}

/// Why a reload was rejected. The old config keeps serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file could not be read or has problems.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A host name in it does not resolve.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// Its TLS material could not be used.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// A new listener could not bind.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// `[admin]` differs from the running one: the admin listener and its
    /// token are fixed at start, so this needs a restart.
    #[error(
        "[admin] cannot change in a reload (restart to change the admin listener or its token)"
    )]
    AdminChanged,
    /// `runtime.workers` differs from the running count: the worker
    /// threads are started once, so this needs a restart.
    #[error("runtime.workers cannot change in a reload (restart to change the number of worker threads)")]
    WorkersChanged,
    /// wsgate is draining: nothing new may start.
    #[error("wsgate is draining; reloads are refused")]
    Draining,
    /// The loading task failed.
    #[error("reload task failed: {0}")]
    Internal(String),
}

/// What a reload changed.
#[derive(Debug, Default, Serialize)]
pub struct ReloadReport {
    /// The new config's version.
    pub version: String,
    /// Route labels added.
    pub routes_added: Vec<String>,
    /// Route labels removed.
    pub routes_removed: Vec<String>,
    /// Listener names started.
    pub listeners_added: Vec<String>,
    /// Listener names stopped (their connections go on).
    pub listeners_removed: Vec<String>,
    /// `upstream/addr` of servers added.
    pub servers_added: Vec<String>,
    /// `upstream/addr` of servers removed (now draining).
    pub servers_removed: Vec<String>,
}

/// Reloads the config file the running config came from. Reloads are
/// serialised; the result is logged and counted either way.
///
/// # Errors
/// [`ReloadError`] when the new config is rejected.
pub async fn reload(shared: &Arc<Shared>) -> Result<ReloadReport, ReloadError> {
    let _one_at_a_time = shared.reload_lock.lock().await;
    let path = shared.snapshot.load().config.source.clone();
    // A stopping wsgate refuses reloads; the service manager has already
    // been told it is stopping.
    let notify = !shared.stopping.is_cancelled();
    if notify {
        shared.notifier.reloading();
    }
    let result = apply(shared, &path).await;
    if notify && !shared.stopping.is_cancelled() {
        let version = shared.snapshot.load().config.version.clone();
        shared.notifier.ready(&match &result {
            Ok(_) => format!("reloaded: config {version}"),
            Err(_) => format!("reload failed; config {version} still runs"),
        });
    }
    shared
        .dashboard
        .reloads
        .record(&result, &shared.snapshot.load().config.version);
    match &result {
        Ok(r) => {
            shared.metrics.reload(true, &r.version);
            tracing::info!(
                version = %r.version,
                routes_added = ?r.routes_added,
                routes_removed = ?r.routes_removed,
                listeners_added = ?r.listeners_added,
                listeners_removed = ?r.listeners_removed,
                servers_added = ?r.servers_added,
                servers_removed = ?r.servers_removed,
                "config reloaded"
            );
        }
        Err(e) => {
            shared.metrics.reload(false, "");
            for line in e.to_string().lines() {
                tracing::error!(problem = %line, "config reload rejected; the running config stays");
            }
        }
    }
    result
}

async fn apply(shared: &Arc<Shared>, path: &Path) -> Result<ReloadReport, ReloadError> {
    // Loading reads files and resolving asks DNS: blocking work.
    let path = path.to_path_buf();
    let resolver = shared.resolver();
    let loaded = tokio::task::spawn_blocking(move || -> Result<_, ReloadError> {
        let config = config::load(&path)?;
        let answers = resolve_names(&config, resolver)?;
        Ok((config, answers))
    });
    let (config, answers) = match loaded.await {
        Ok(r) => r?,
        Err(e) => return Err(ReloadError::Internal(e.to_string())),
    };
    apply_config(shared, config, answers).await
}

/// Switches to `config`, its host names resolved to `answers`: compile,
/// bind new listeners, swap, stop removed listeners, drain removed servers.
/// Callers hold `reload_lock`.
async fn apply_config(
    shared: &Arc<Shared>,
    config: config::Config,
    answers: Answers,
) -> Result<ReloadReport, ReloadError> {
    if shared.stopping.is_cancelled() {
        return Err(ReloadError::Draining);
    }
    if config.admin != shared.admin {
        return Err(ReloadError::AdminChanged);
    }
    if crate::front::workers::Workers::count(config.runtime.workers)
        != shared.workers.handles().len()
    {
        return Err(ReloadError::WorkersChanged);
    }
    let old = shared.snapshot.load_full();
    let draining = shared.draining_servers();
    let new = Snapshot::compile(Arc::new(config), answers, Some(&old), &draining)?;

    // Which listeners change: by name, and a new address counts as remove + add.
    let running: HashMap<String, SocketAddr> = shared
        .listeners()
        .iter()
        .map(|(n, l)| (n.clone(), l.bind))
        .collect();
    let wanted: HashMap<&str, SocketAddr> = new
        .config
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.bind))
        .collect();
    let to_add: Vec<_> = new
        .config
        .listeners
        .iter()
        .filter(|l| running.get(&l.name) != Some(&l.bind))
        .collect();
    let to_remove: Vec<String> = running
        .iter()
        .filter(|(n, bind)| wanted.get(n.as_str()) != Some(*bind))
        .map(|(n, _)| n.clone())
        .collect();
    // Bind everything new before changing anything: all or nothing.
    let mut bound = Vec::new();
    for l in &to_add {
        bound.push((listener::bind_one(l).await?, l.bind));
    }

    let mut report = diff(&old, &new);
    let removed_servers = old.removed_servers(&new);
    let new = Arc::new(new);
    shared.snapshot.store(new.clone());
    new.apply_weights();
    crate::control::eject::sync(shared);
    warn_insecure(&new.config);

    for name in &to_remove {
        if let Some(l) = shared.listeners().remove(name) {
            l.stop.cancel();
            report.listeners_removed.push(name.clone());
        }
    }
    for (l, bind) in bound {
        report.listeners_added.push(l.name.clone());
        shared.metrics.prepare_listener(&l.name);
        start_listener(shared, l, bind);
    }
    // Servers added back while their drain still ran are the same objects
    // again (see `Snapshot::compile`): a reload's drain ends, an operator's
    // goes on, cancellable by `enable` as before the reload.
    shared.draining_list().retain(|d| {
        let back = new
            .upstreams()
            .any(|u| u.servers.iter().any(|s| Arc::ptr_eq(s, &d.server)));
        if back && !d.by_operator {
            d.server.enable();
        }
        !back
    });
    for (up, server) in removed_servers {
        let entry = |by_operator| DrainingServer {
            upstream: up.name.clone(),
            server: server.clone(),
            by_operator,
        };
        let s = shared.clone();
        let Some(stop) = server.disable() else {
            // An operator's drain already running goes on as it was; the
            // server stays findable until its tunnels are gone.
            shared.draining_list().push(entry(true));
            shared.tasks.spawn(async move {
                forget_when_drained(&s, &server).await;
            });
            continue;
        };
        shared.draining_list().push(entry(false));
        shared.tasks.spawn(async move {
            drain::drain_server(s.clone(), up, server.clone(), stop).await;
            s.draining_list()
                .retain(|d| !Arc::ptr_eq(&d.server, &server));
        });
    }
    crate::control::health::sync(shared);
    shared.metrics.forget_removed_servers();
    Ok(report)
}

/// Takes a removed server off the draining list once an operator's drain
/// of it is over: no tunnel left, or enabled again (added back first).
async fn forget_when_drained(shared: &Shared, server: &Arc<Server>) {
    loop {
        if server.active() == 0 || server.is_enabled() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
    shared
        .draining_list()
        .retain(|d| !Arc::ptr_eq(&d.server, server));
}

/// Warns, at start and on every reload, about upstreams whose backend
/// certificates are not verified: such a setting must not go unnoticed.
pub fn warn_insecure(config: &config::Config) {
    for (name, u) in &config.upstreams {
        if u.settings
            .tls
            .as_ref()
            .is_some_and(|t| t.insecure_skip_verify)
        {
            tracing::warn!(
                upstream = %name,
                "insecure_skip_verify = true: backend certificates are NOT verified; anyone on the path can impersonate these servers"
            );
        }
    }
}

/// Starts accepting on `l` and registers it under its name.
pub fn start_listener(shared: &Arc<Shared>, l: BoundListener, bind: SocketAddr) {
    let Ok(local) = l.socket.local_addr() else {
        tracing::error!(listener = %l.name, "bound listener has no address");
        return;
    };
    tracing::info!(listener = %l.name, addr = %local, "listening");
    let stop = shared.stopping.child_token();
    shared.listeners().insert(
        l.name.clone(),
        RunningListener {
            bind,
            local,
            stop: stop.clone(),
        },
    );
    listener::accept_on_workers(l, shared, stop);
}

fn diff(old: &Snapshot, new: &Snapshot) -> ReloadReport {
    let routes =
        |s: &Snapshot| -> BTreeSet<String> { s.route_labels().map(str::to_string).collect() };
    let servers = |s: &Snapshot| -> BTreeSet<String> {
        s.upstreams()
            .flat_map(|u| {
                u.servers
                    .iter()
                    .map(move |v| format!("{}/{}", u.name, v.addr))
            })
            .collect()
    };
    let (ro, rn, so, sn) = (routes(old), routes(new), servers(old), servers(new));
    ReloadReport {
        version: new.config.version.clone(),
        routes_added: rn.difference(&ro).cloned().collect(),
        routes_removed: ro.difference(&rn).cloned().collect(),
        servers_added: sn.difference(&so).cloned().collect(),
        servers_removed: so.difference(&sn).cloned().collect(),
        ..ReloadReport::default()
    }
}

/// Resolves every host-named server again and, where a name's addresses
/// changed, switches to them as a reload would: servers that stay keep
/// their tunnels and state, vanished ones drain. A failed lookup keeps
/// that name's last addresses. Returns what changed, if anything.
pub async fn re_resolve(shared: &Arc<Shared>) -> Option<ReloadReport> {
    // Look every name up first, without the reload lock: slow DNS must not
    // hold up SIGHUP or POST /reload, and a drain interrupts it.
    let wanted: Vec<(String, u16)> = shared.snapshot.load().answers.keys().cloned().collect();
    if wanted.is_empty() {
        return None;
    }
    let resolver = shared.resolver();
    let mut fresh: HashMap<(String, u16), Vec<SocketAddr>> = HashMap::new();
    for (host, port) in wanted {
        let h = host.clone();
        let lookup = tokio::task::spawn_blocking(move || lookup(resolver, &h, port));
        let result = tokio::select! {
            r = lookup => r,
            _ = shared.drain.cancelled() => return None,
        };
        match result {
            Ok(Ok(addrs)) => {
                fresh.insert((host, port), addrs);
            }
            other => {
                tracing::warn!(host = %host, result = ?other, "re-resolving failed; keeping the last addresses");
            }
        }
    }

    let _one_at_a_time = shared.reload_lock.lock().await;
    // A reload may have run meanwhile: only names the running config still
    // has are updated, the others keep their answers.
    let current = shared.snapshot.load_full();
    let mut answers = current.answers.clone();
    for (name, addrs) in fresh {
        if let Some(old) = answers.get_mut(&name) {
            *old = addrs;
        }
    }
    if answers == current.answers {
        return None;
    }
    match apply_config(shared, (*current.config).clone(), answers).await {
        Ok(report) => {
            tracing::info!(servers_added = ?report.servers_added, servers_removed = ?report.servers_removed, "host names resolve differently: servers updated");
            Some(report)
        }
        Err(e) => {
            tracing::error!(error = %e, "applying re-resolved servers failed");
            None
        }
    }
}

/// Re-resolves host names on the shortest `resolve_interval` of the
/// upstreams that have any, until `stop`.
pub async fn resolve_loop(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let interval = shared
            .snapshot
            .load()
            .config
            .upstreams
            .values()
            .filter(|u| !u.names.is_empty())
            .map(|u| u.settings.resolve_interval)
            .min()
            .unwrap_or(config::DEFAULT_RESOLVE_INTERVAL);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        re_resolve(&shared).await;
    }
}

/// How long the file must be quiet before a change triggers a reload:
/// editors write in several steps.
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(300);

/// Reloads whenever the config file changes, until `stop`. Watches the
/// file's folder, since editors and deploy tools replace files by renaming.
pub async fn watch(shared: Arc<Shared>, path: PathBuf, stop: CancellationToken) {
    use notify::Watcher;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let name = path.file_name().map(|n| n.to_os_string());
    let mut watcher = match notify::recommended_watcher(
        move |event: notify::Result<notify::Event>| {
            let Ok(e) = event else { return };
            // Opening or reading the file, as every reload does, changes
            // nothing: counting it would reload forever.
            if matches!(e.kind, notify::EventKind::Access(a)
                if a != notify::event::AccessKind::Close(notify::event::AccessMode::Write))
            {
                return;
            }
            // A Kubernetes ConfigMap volume changes by renaming `..data`;
            // the file itself is a symlink into it that never changes.
            if e.paths.iter().any(|p| {
                let n = p.file_name();
                n == name.as_deref() || n == Some(std::ffi::OsStr::new("..data"))
            }) {
                let _ = tx.send(());
            }
        },
    ) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the config file; reload with SIGHUP or POST /reload");
            return;
        }
    };
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Err(e) = watcher.watch(folder, notify::RecursiveMode::NonRecursive) {
        tracing::error!(error = %e, folder = %folder.display(), "cannot watch the config folder");
        return;
    }
    tracing::info!(file = %path.display(), "watching the config file");
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = rx.recv() => if got.is_none() { return },
        }
        // Wait until the writes stop.
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(WATCH_DEBOUNCE) => break,
                got = rx.recv() => if got.is_none() { return },
            }
        }
        let _ = reload(&shared).await;
    }
}
