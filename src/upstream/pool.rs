//! Pooled keep-alive HTTP/1.1 connections to an upstream's servers, for
//! plain requests (those without a WebSocket upgrade).
//!
//! Owns: one hyper-util client per upstream, made on the upstream's first
//! plain request: its connector (TCP and TLS through `upstream::connect`,
//! under `timeouts.connect`), its executor (tasks tracked and stopped at
//! shutdown) and its pool limits. hyper's HTTP/1.1 client is what makes
//! reuse safe: a connection goes back to the pool only once its previous
//! response was read to the end, and one whose response could not be framed
//! (or was cut short) is closed, never reused.
//!
//! With `send_proxy_protocol`, a connection starts with a PROXY header
//! naming one client, so it must never carry another client's request:
//! the pool is keyed by the client's and the destination's addresses as
//! well as the server's (they ride in the pool key, the URI's user-info,
//! which never reaches the backend: hyper sends the origin form and the
//! client's own `Host`). A client's keep-alive requests still share
//! connections; idle ones are kept per client under the same
//! `pool_max_idle` and `pool_idle_timeout`.
//!
//! Must not: pick servers (the balancer does) or retry (plain.rs decides).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::net::proxy_protocol::{self, Version};
use crate::net::tls::{BackendStream, BackendTls, MaybeTls};
use crate::upstream::balancer::{Server, UpstreamSettings};
use crate::upstream::{self, UpstreamError};

/// A request body on its way to a backend. Boxed so that the pool does not
/// name the proxy's body type (which would tie `upstream` to `proxy`): one
/// small allocation per plain request.
pub type PoolBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BodyError>;

/// Why a request body stopped on its way to a backend.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The client side of one upstream's plain HTTP traffic.
pub struct HttpPool {
    client: Client<Connector, PoolBody>,
    /// `https` when the upstream uses TLS: only for the pool key and logs,
    /// since the connector decides TLS itself.
    scheme: &'static str,
    /// `send_proxy_protocol`: connections are then keyed by client.
    proxy: Option<Version>,
}

impl std::fmt::Debug for HttpPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPool")
            .field("scheme", &self.scheme)
            .finish()
    }
}

/// What an upstream's pool is made from.
pub struct PoolParts<'a> {
    /// The upstream's servers: the pool reaches only these.
    pub servers: &'a [Arc<Server>],
    /// TLS to them, if the upstream asks for it.
    pub tls: Option<Arc<BackendTls>>,
    /// The upstream's settings: idle connections kept per server
    /// (`pool_max_idle`) and for how long (`pool_idle_timeout`).
    pub settings: &'a UpstreamSettings,
    /// TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Where connection tasks are tracked.
    pub tasks: TaskTracker,
    /// Ends idle connection tasks at shutdown.
    pub stop: CancellationToken,
}

impl HttpPool {
    /// A pool over `parts.servers`.
    pub fn new(parts: PoolParts<'_>) -> Self {
        let scheme = if parts.tls.is_some() { "https" } else { "http" };
        let proxy = parts.settings.send_proxy_protocol.map(Version::from);
        let connector = Connector {
            servers: Arc::new(parts.servers.iter().map(|s| (s.addr, s.clone())).collect()),
            tls: parts.tls,
            timeout: parts.connect_timeout,
            proxy,
        };
        let executor = Tracked {
            tasks: parts.tasks,
            stop: parts.stop,
        };
        let client = Client::builder(executor)
            .pool_max_idle_per_host(parts.settings.pool_max_idle)
            .pool_idle_timeout(parts.settings.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self {
            client,
            scheme,
            proxy,
        }
    }

    /// Sends `req` (origin-form target, client's headers) to `server`,
    /// on a pooled connection when one is idle. `client` and `local` are
    /// what a PROXY header names (see the module's doc): the real client
    /// and the address it connected to.
    ///
    /// # Errors
    /// hyper-util's error; a connect failure is [`is_connect`] and carries
    /// the [`UpstreamError`] as its source.
    ///
    /// [`is_connect`]: hyper_util::client::legacy::Error::is_connect
    pub async fn send(
        &self,
        server: &Server,
        mut req: Request<PoolBody>,
        client: SocketAddr,
        local: SocketAddr,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        // The authority is the server's address (and the client's with a
        // PROXY header): it keys the pool, and the connector maps it back.
        let who = match self.proxy {
            Some(_) => format!("{}@", pool_key(client, local)),
            None => String::new(),
        };
        let uri = format!("{}://{who}{}{target}", self.scheme, server.addr);
        if let Ok(uri) = uri.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
        self.client.request(req).await
    }
}

/// The error a failed connect carried, if that is what failed.
pub fn connect_error(e: &hyper_util::client::legacy::Error) -> Option<&UpstreamError> {
    std::error::Error::source(e)?.downcast_ref::<UpstreamError>()
}

// === impl Connector ===

#[derive(Clone)]
struct Connector {
    servers: Arc<HashMap<SocketAddr, Arc<Server>>>,
    tls: Option<Arc<BackendTls>>,
    timeout: Duration,
    proxy: Option<Version>,
}

/// The user-info naming a PROXY header's two addresses: URI-safe (`:` of
/// IPv6 written `-`, fields joined by `_`), and read back by [`from_key`].
fn pool_key(client: SocketAddr, local: SocketAddr) -> String {
    let ip = |a: SocketAddr| a.ip().to_string().replace(':', "-");
    format!(
        "{}_{}_{}_{}",
        ip(client),
        client.port(),
        ip(local),
        local.port()
    )
}

/// The addresses [`pool_key`] wrote.
fn from_key(key: &str) -> Option<(SocketAddr, SocketAddr)> {
    let mut f = key.split('_');
    let mut addr = || -> Option<SocketAddr> {
        let ip = f.next()?.replace('-', ":").parse().ok()?;
        let port = f.next()?.parse().ok()?;
        Some(SocketAddr::new(ip, port))
    };
    let pair = (addr()?, addr()?);
    f.next().is_none().then_some(pair)
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<BackendStream>;
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, UpstreamError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let authority = uri.authority().map_or("", |a| a.as_str());
            let (who, host) = authority.rsplit_once('@').unwrap_or(("", authority));
            let server = host
                .parse::<SocketAddr>()
                .ok()
                .and_then(|a| this.servers.get(&a).cloned())
                .ok_or(UpstreamError::NoServers)?;
            let preamble = match (this.proxy, from_key(who)) {
                (Some(v), Some((client, local))) => proxy_protocol::encode(v, client, local),
                // `send` always names the client when the upstream sends headers.
                (Some(_), None) => return Err(UpstreamError::NoServers),
                (None, _) => Vec::new(),
            };
            let stream =
                upstream::connect(&server, this.timeout, this.tls.as_deref(), &preamble).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

impl<T> Connection for MaybeTls<T> {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

// === impl Tracked ===

/// Runs the pool's connection tasks on a tracker, each ending at `stop`.
#[derive(Clone)]
struct Tracked {
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = fut => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_key_names_both_addresses_and_reads_back() {
        for (c, l) in [
            ("203.0.113.7:56324", "10.0.0.1:443"),
            ("[2001:db8::7]:1", "[::ffff:10.0.0.1]:0"),
        ] {
            let (c, l) = (c.parse().expect("c"), l.parse().expect("l"));
            let key = pool_key(c, l);
            let uri: Uri = format!("http://{key}@127.0.0.1:9/x")
                .parse()
                .expect("URI-safe");
            let (who, host) = uri
                .authority()
                .expect("a")
                .as_str()
                .rsplit_once('@')
                .expect("@");
            assert_eq!((from_key(who), host), (Some((c, l)), "127.0.0.1:9"));
        }
        assert_eq!(from_key(""), None);
        assert_eq!(from_key("1.2.3.4_1_5.6.7.8_2_x"), None);
    }
}
