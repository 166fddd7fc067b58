//! Listeners: binding, the accept loop, TLS termination and HTTP/1.1 serving.
//!
//! Owns: turning each accepted socket into a served connection within the
//! `client_handshake` deadline (PROXY header, TLS handshake and each
//! request's headers),
//! with hyper's HTTP/1.1 server and upgrades enabled. Requests go to
//! `proxy::handle`.
//!
//! Must not: interpret requests (proxy.rs does), or outlive shutdown: every
//! task here is tracked and watches the shutdown token.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioTimer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Config, Limits, Timeouts};
use crate::net;
use crate::net::admission::Admitted;
use crate::net::client::ServedStream;
use crate::net::guard::Scanner;
use crate::net::linger::LingerPlan;
use crate::net::tls::{ClientStream, MaybeTls};
use crate::proxy::routes::ListenerSettings;
use crate::proxy::{self, ConnContext};
use crate::Shared;

use super::proxy_header;

/// A listening socket and the name of its `[[listeners]]` entry.
pub struct BoundListener {
    /// Listener name.
    pub name: String,
    /// The bound socket.
    pub socket: TcpListener,
}

/// A listener address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("listener {name}: cannot bind {addr}: {source}")]
pub struct BindError {
    /// Listener name.
    pub name: String,
    /// Address from the config.
    pub addr: SocketAddr,
    /// The OS error (in use, permission denied, no such address).
    #[source]
    pub source: io::Error,
}

/// Binds every listener of `config`.
///
/// # Errors
/// The first [`BindError`], naming listener, address and reason.
pub async fn bind_all(config: &Config) -> Result<Vec<BoundListener>, BindError> {
    bind_all_with(config, |_| None).await
}

/// Binds every listener of `config`, except those for which `inherited`
/// hands over a socket already listening (socket activation): that socket
/// is used, and the configured `bind` is only informative.
///
/// # Errors
/// The first [`BindError`], naming listener, address and reason.
pub async fn bind_all_with(
    config: &Config,
    mut inherited: impl FnMut(&str) -> Option<std::net::TcpListener>,
) -> Result<Vec<BoundListener>, BindError> {
    let mut bound = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let Some(socket) = inherited(&l.name) else {
            bound.push(bind_one(l).await?);
            continue;
        };
        let socket = TcpListener::from_std(socket).map_err(|source| BindError {
            name: l.name.clone(),
            addr: l.bind,
            source,
        })?;
        if let Ok(addr) = socket.local_addr() {
            tracing::info!(
                listener = %l.name,
                addr = %addr,
                configured = %l.bind,
                "using the socket passed by the service manager; the configured bind is only informative"
            );
        }
        bound.push(BoundListener {
            name: l.name.clone(),
            socket,
        });
    }
    Ok(bound)
}

/// Binds one listener.
///
/// # Errors
/// A [`BindError`] naming listener, address and reason.
pub async fn bind_one(l: &crate::config::ListenerConfig) -> Result<BoundListener, BindError> {
    let socket = TcpListener::bind(l.bind)
        .await
        .map_err(|source| BindError {
            name: l.name.clone(),
            addr: l.bind,
            source,
        })?;
    Ok(BoundListener {
        name: l.name.clone(),
        socket,
    })
}

/// Starts accepting on `listener` on every worker (see
/// `front::workers`), until `stop`. Each worker accepts on its own
/// descriptor of the socket; the listener's handshake places are shared.
pub fn accept_on_workers(
    listener: BoundListener,
    shared: &Arc<Shared>,
    stop: tokio_util::sync::CancellationToken,
) {
    let name: Arc<str> = listener.name.into();
    let socket = match listener.socket.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(listener = %name, error = %e, "cannot hand the socket to the workers");
            return;
        }
    };
    let places = Arc::new(HandshakePlaces::default());
    for (worker, handle) in shared.workers.handles().iter().enumerate() {
        let socket = match socket.try_clone() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(listener = %name, error = %e, "cannot give a worker the socket");
                continue;
            }
        };
        let (name, shared2, places, stop) =
            (name.clone(), shared.clone(), places.clone(), stop.clone());
        shared.tasks.spawn_on(
            async move {
                // Registered with this worker's event loop, in its thread.
                match TcpListener::from_std(socket) {
                    Ok(socket) => {
                        let this = Acceptor {
                            local: own_address(&socket),
                            socket,
                            name,
                            accepted: shared2.metrics.worker_accepted(worker),
                        };
                        accept_loop(this, shared2, &places, stop).await;
                    }
                    Err(e) => tracing::error!(listener = %name, error = %e, "worker cannot accept"),
                }
            },
            handle,
        );
    }
}

/// A listener's places for connections in their handshake, shared by its
/// workers' accept loops.
struct HandshakePlaces {
    semaphore: Arc<Semaphore>,
    /// How many places exist now; `resize` changes it.
    count: Mutex<usize>,
}

impl Default for HandshakePlaces {
    fn default() -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(0)),
            count: Mutex::new(0),
        }
    }
}

impl HandshakePlaces {
    /// Makes the places `want` (a reload may change it): places in use
    /// when it shrinks are forgotten as they come back.
    fn resize(&self, want: usize) {
        let mut places = self.count.lock().unwrap_or_else(|e| e.into_inner());
        if want > *places {
            self.semaphore.add_permits(want - *places);
            *places = want;
        } else if want < *places {
            *places -= self.semaphore.forget_permits(*places - want);
        }
    }
}

/// One worker's side of a listener.
struct Acceptor {
    socket: TcpListener,
    /// The address every connection accepted here arrives at, when the
    /// listener is bound to one IP; `None` on an unspecified one (0.0.0.0,
    /// [::]), where each connection's own is asked of the kernel.
    local: Option<SocketAddr>,
    name: Arc<str>,
    /// This worker's `wsgate_worker_connections_accepted`.
    accepted: prometheus_client::metrics::counter::Counter,
}

/// The listener's address, if it is the local address of every connection
/// it accepts: saves a `getsockname` per connection.
fn own_address(socket: &TcpListener) -> Option<SocketAddr> {
    socket
        .local_addr()
        .ok()
        .filter(|a| !a.ip().is_unspecified())
}

/// Accepts connections until `stop`, at most
/// `limits.max_handshakes_in_flight` of them at once in their TLS handshake
/// (on a plain listener the place is given back at once). Each accepted
/// socket is first admitted against the connection limits ([`admit`]); a
/// refused one costs no task, no TLS handshake and no read.
async fn accept_loop(
    me: Acceptor,
    shared: Arc<Shared>,
    places: &HandshakePlaces,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        places.resize(shared.snapshot.load().limits.max_handshakes_in_flight);
        // At the limit, stop accepting: new connections wait in the
        // kernel's backlog, costing wsgate nothing.
        // `biased`, the stop first: a worker that wakes late, with the stop
        // and a new connection both ready, must not take the connection
        // (a random pick would serve a client after listeners closed).
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            p = places.semaphore.clone().acquire_owned() => p,
        };
        let Ok(permit) = permit else { return };
        let accepted = tokio::select! {
            biased;
            // A reload removing this listener, or a drain.
            _ = stop.cancelled() => return,
            r = me.socket.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                me.accepted.inc();
                let Some((tcp, place)) = admit(tcp, peer, &me.name, &shared) else {
                    continue;
                };
                let shared2 = shared.clone();
                let (name, local) = (me.name.clone(), me.local);
                let fut =
                    async move { serve(tcp, place, permit, peer, local, &name, shared2).await };
                // Boxed: the connection's future is about 3.8 KiB (hyper's
                // connection, the TLS state), and tokio copies a task's
                // future into its cell and its stage over again; a pointer
                // copies for free. (The tunnel's own task stays unboxed:
                // there the box would cost 90 bytes per idle tunnel.)
                shared.tasks.spawn(Box::pin(fut));
            }
            Err(e) => {
                // Out of file descriptors or memory: back off instead of spinning.
                tracing::warn!(listener = %me.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What a client over a connection limit receives on a plain listener:
/// an HTTP client learns to back off, where a bare close reads as a
/// network failure to retry at once. Written whole, without waiting for
/// the request, in one non-blocking write.
pub const REFUSED_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Retry-After: 5\r\n\
Content-Type: text/plain\r\n\
Content-Length: 21\r\n\
Connection: close\r\n\
\r\n\
too many connections\n";

/// Admits an accepted socket against `limits.max_connections` and
/// `max_connections_per_ip`, or refuses it at once: a bare close on a TLS
/// listener (before the handshake: nothing else can be said without one),
/// [`REFUSED_RESPONSE`] on a plain one. Refusals are counted by reason and
/// logged, repeats folded into one line per listener and reason.
///
/// On a `proxy_protocol` listener, a peer outside `trusted_proxies` is
/// closed bare (it is not a client: an HTTP answer would mean nothing to
/// it), and the per-address limit waits for the address the header
/// carries (see `proxy_header`).
fn admit(
    tcp: TcpStream,
    peer: SocketAddr,
    name: &str,
    shared: &Shared,
) -> Option<(TcpStream, Admitted)> {
    let (limits, tls, proxied) = {
        let snapshot = shared.snapshot.load();
        let l = snapshot.listeners.get(name);
        let tls = l.is_some_and(|l| l.tls.is_some());
        let proxied = l
            .filter(|l| l.proxy_protocol)
            .map(|l| l.trusts(peer.ip().to_canonical()));
        (snapshot.limits, tls, proxied)
    };
    let admitted = match proxied {
        None => shared.admission.admit(
            peer.ip(),
            limits.max_connections,
            limits.max_connections_per_ip,
        ),
        Some(true) => shared.admission.admit_any(limits.max_connections),
        Some(false) => {
            let why = "the peer is not in trusted_proxies of a proxy_protocol listener";
            refused(shared, name, peer, proxy_header::UNTRUSTED, &why);
            return None;
        }
    };
    let refusal = match admitted {
        Ok(place) => return Some((tcp, place)),
        Err(r) => r,
    };
    refused(shared, name, peer, refusal.label(), &refusal);
    if !tls {
        refuse_plain(tcp);
    }
    None
}

/// Counts a connection refused before it was served, and logs it, repeats
/// folded into one line per listener and reason.
pub(super) fn refused(
    shared: &Shared,
    name: &str,
    client: SocketAddr,
    reason: &'static str,
    why: &dyn std::fmt::Display,
) {
    shared.metrics.connection_refused(name, reason);
    let key = format!("refused {name} {reason}");
    if let Some(held) = shared.errors.check(&key, std::time::Instant::now()) {
        tracing::warn!(
            client = %client,
            listener = name,
            reason,
            held_back = held,
            "connection refused: {why}"
        );
    }
}

/// Writes [`REFUSED_RESPONSE`] without waiting and closes. What the client
/// has sent already is read first (a close with unread bytes would be a
/// reset, which can destroy the answer before the client reads it).
pub(super) fn refuse_plain(tcp: TcpStream) {
    use std::io::{Read, Write};
    let Ok(std) = tcp.into_std() else { return };
    let mut sink = [0u8; 4096];
    let _ = (&std).read(&mut sink);
    // A new socket's send buffer is empty: the answer fits whole.
    let _ = (&std).write(REFUSED_RESPONSE);
    let _ = std.shutdown(std::net::Shutdown::Write);
    let _ = (&std).read(&mut sink);
}

/// One client connection, in phases: terminate TLS, serve HTTP/1.1 with
/// hyper until the connection ends or a drain closes it, then log a request
/// that hyper refused before wsgate's handler saw it.
async fn serve(
    tcp: TcpStream,
    mut place: Admitted,
    handshake: OwnedSemaphorePermit,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    name: &str,
    shared: Arc<Shared>,
) {
    let (settings, timeouts, limits) = {
        let snapshot = shared.snapshot.load();
        let Some(settings) = snapshot.listeners.get(name).cloned() else {
            return;
        };
        (settings, snapshot.timeouts, snapshot.limits)
    };
    let _ = tcp.set_nodelay(true);
    // The header comes first, before TLS; from here on its client is the
    // peer, in logs, stats, forwarding headers, balancing and limits.
    let (tcp, peer, local) = if settings.proxy_protocol {
        let at = proxy_header::Accepted {
            peer,
            name,
            tls: settings.tls.is_some(),
            timeouts,
            limits,
        };
        let Some((tcp, c)) = proxy_header::read(tcp, &mut place, &at, &shared).await else {
            return;
        };
        (tcp, c.client, c.local)
    } else {
        let local = local.or_else(|| tcp.local_addr().ok()).unwrap_or(peer);
        (tcp, peer, local)
    };
    let Some(stream) = terminate_tls(tcp, peer, name, &settings, timeouts, &shared).await else {
        return;
    };
    // The expensive part is over: the next connection may be accepted.
    drop(handshake);
    let sni_cert = settings.tls.as_ref().and_then(|t| t.matching(stream.sni()));
    let scanner = Arc::new(Mutex::new(Scanner::new(limits.max_request_headers)));
    let plan = LingerPlan {
        linger: timeouts.linger,
        tasks: shared.tasks.clone(),
        stop: shared.winding.clone(),
    };
    let stream = net::client::wrap(stream, plan, scanner.clone(), Some(place));
    let ctx = Arc::new(ConnContext {
        sni_cert,
        shared: shared.clone(),
        listener: settings,
        peer,
        local,
        in_flight: std::sync::atomic::AtomicUsize::new(0),
        abort: tokio_util::sync::CancellationToken::new(),
        scanner,
    });
    let Some(result) = serve_http(stream, &ctx, timeouts, limits).await else {
        return;
    };
    log_refused(&ctx, name, result);
}

/// The TLS handshake on a TLS listener, within `client_handshake`; a plain
/// listener's stream as it is. `None` when the handshake failed, timed out,
/// or a drain began during it.
async fn terminate_tls(
    tcp: TcpStream,
    peer: SocketAddr,
    name: &str,
    settings: &ListenerSettings,
    timeouts: Timeouts,
    shared: &Shared,
) -> Option<ClientStream> {
    let Some(tls) = &settings.tls else {
        return Some(MaybeTls::Plain(tcp));
    };
    let handshake = tokio::select! {
        r = tokio::time::timeout(timeouts.client_handshake, tls.accept(tcp)) => r,
        // A handshake in progress must not hold up a drain.
        _ = shared.winding.cancelled() => return None,
    };
    match handshake {
        Ok(Ok(s)) => Some(MaybeTls::Tls(Box::new(s))),
        Ok(Err(e)) => {
            tracing::debug!(client = %peer, listener = name, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(client = %peer, listener = name, "TLS handshake timed out");
            None
        }
    }
}

/// Serves the connection with hyper (HTTP/1.1, upgrades on) until it ends.
/// `None` when a drain or shutdown closed it: nothing is left to log.
async fn serve_http(
    stream: ServedStream,
    ctx: &Arc<ConnContext>,
    timeouts: Timeouts,
    limits: Limits,
) -> Option<hyper::Result<()>> {
    let shared = &ctx.shared;
    let service_ctx = ctx.clone();
    let service = service_fn(move |req| proxy::handle(req, service_ctx.clone()));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.client_handshake)
        // The buffer grows in powers of two past its limit; the header
        // size limit holds at exactly `max_request_headers`.
        .max_buf_size(limits.max_request_headers)
        .max_header_size(limits.max_request_headers)
        .max_headers(limits.max_headers)
        .serve_connection(stream, service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => return Some(r),
            // A drain lets a request in flight finish, then closes the
            // connection. hyper's graceful shutdown would also wait for a
            // first request that has not (fully) arrived; nothing is lost by
            // closing such a connection now.
            _ = shared.winding.cancelled(), if !draining => {
                if ctx.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                    return None;
                }
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = shared.shutdown.cancelled() => return None,
            // A response its client stopped reading (see proxy::plain).
            _ = ctx.abort.cancelled() => return None,
        }
    }
}

/// Counts what the framing guard refused, and writes the access line of a
/// request hyper refused (400, or 431 when too large) before it reached
/// the handler.
fn log_refused(ctx: &ConnContext, name: &str, result: hyper::Result<()>) {
    let shared = &ctx.shared;
    let peer = ctx.peer;
    let verdict = ctx.scanner().verdict();
    if let Some(m) = verdict {
        shared.metrics.malformed(name, m.label());
    }
    match result {
        // hyper has answered 400 (431 when too large) and closed: the
        // request never reached the handler, so its line is written here.
        Err(e) if e.is_parse() || e.is_parse_too_large() => {
            let status = if e.is_parse_too_large() { 431 } else { 400 };
            if verdict.is_none() {
                let reason = if status == 431 { "too_large" } else { "parse" };
                shared.metrics.malformed(name, reason);
            }
            let reason = verdict.map_or_else(|| e.to_string(), |m| m.to_string());
            tracing::info!(
                target: "wsgate::access",
                client = %peer,
                listener = name,
                status,
                reason = %format!("client: {reason}"),
                "request refused before parsing"
            );
        }
        Err(e) => {
            tracing::debug!(client = %peer, listener = name, error = %e, "client connection ended with an error");
        }
        Ok(()) => {}
    }
}
