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
        let connector = Connector {
            servers: Arc::new(parts.servers.iter().map(|s| (s.addr, s.clone())).collect()),
            tls: parts.tls,
            timeout: parts.connect_timeout,
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
        Self { client, scheme }
    }

    /// Sends `req` (origin-form target, client's headers) to `server`,
    /// on a pooled connection when one is idle.
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
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        // The authority is the server's address: it keys the pool, and the
        // connector maps it back to the server.
        if let Ok(uri) = format!("{}://{}{target}", self.scheme, server.addr).parse::<Uri>() {
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
            let server = uri
                .authority()
                .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
                .and_then(|a| this.servers.get(&a).cloned())
                .ok_or(UpstreamError::NoServers)?;
            let stream = upstream::connect(&server, this.timeout, this.tls.as_deref()).await?;
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
