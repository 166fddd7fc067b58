//! One tunnel's life as a task: registered from the backend's 101, the
//! client stream taken back from hyper, spliced by [`super::run`], and
//! recorded exactly once.
//!
//! Owns: the tunnel's registry entry, its metrics from open to close, and
//! its one access record, written on every path (a panic included) when
//! [`Ending`] drops.
//!
//! Must not: answer the client (the proxy already sent its 101) or touch
//! the routing snapshot: everything the tunnel uses is in [`Session`].

use std::sync::Arc;

use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use tokio_util::sync::CancellationToken;

use crate::net::client;
use crate::net::tls::{BackendStream, MaybeTls};
use crate::observe::access::{EndReason, Side, TunnelEnd};
use crate::observe::metrics::{Metrics, TunnelLabels};
use crate::observe::registry::{ConnInfo, Registry, RegistryGuard, CLOSE_GOING_AWAY};
use crate::tunnel::frames::encode_close;
use crate::tunnel::{mask_key, run, TunnelTimeouts};
use crate::upstream::balancer::ActiveGuard;

/// Everything one tunnel needs, owned: a reload never reaches into it.
pub struct Session {
    /// Where the tunnel is listed while it lives.
    pub registry: Arc<Registry>,
    /// Where its opening and closing are counted.
    pub metrics: Arc<Metrics>,
    /// Cancelled to close every tunnel with 1001 at frame boundaries.
    pub drain: CancellationToken,
    /// Cancelled to cut every tunnel now.
    pub shutdown: CancellationToken,
    /// Who it connects, for the registry and the access record.
    pub conn: ConnInfo,
    /// The backend's stream after its verified 101.
    pub backend: BackendStream,
    /// Bytes the backend sent past its 101, delivered to the client first.
    pub backend_leftover: Bytes,
    /// The server's count of this tunnel, held for the tunnel's life.
    pub active: ActiveGuard,
    /// Deadlines the splice enforces.
    pub timeouts: TunnelTimeouts,
}

/// Runs one tunnel to its end: waits for hyper to hand over the client's
/// upgraded connection, splices it with the backend, and records the end.
pub async fn serve(session: Session, client_upgrade: OnUpgrade) {
    let Session {
        registry,
        metrics,
        drain,
        shutdown,
        conn,
        backend,
        backend_leftover,
        active,
        timeouts,
    } = session;
    let _active = active;
    // Registered from the 101 on; the record and metrics are written when
    // `ending` drops, on every path, a panic included.
    let guard = registry.open(conn, &drain);
    metrics.tunnel_opened(&guard.stats.info);
    let mut ending = Ending {
        metrics,
        guard,
        end: None,
    };
    let upgraded = tokio::select! {
        u = client_upgrade => u.map_err(|e| e.to_string()),
        _ = shutdown.cancelled() => Err("proxy shutting down".to_string()),
    };
    let taken = upgraded.and_then(|u| client::unwrap(u).map_err(|e| e.to_string()));
    let (client, client_leftover) = match taken {
        Ok(p) => p,
        Err(reason) => {
            ending.end = Some(not_started(&backend, ending.guard.stats.id, reason));
            return;
        }
    };
    let outcome = run(
        client,
        client_leftover,
        backend,
        backend_leftover,
        &ending.guard.stats,
        timeouts,
        &shutdown,
    )
    .await;
    ending.end = Some(outcome.to_end());
}

/// The client's connection never reached the tunnel (it went away between
/// the 101 and hyper's hand-over, or wsgate is shutting down). The backend
/// already has an open WebSocket: tell it, best effort.
fn not_started(backend: &BackendStream, id: u64, reason: String) -> TunnelEnd {
    let close = encode_close(CLOSE_GOING_AWAY, "client gone", Some(mask_key(id)));
    // Raw bytes would corrupt a TLS stream: there, the close of the
    // connection has to do.
    if let MaybeTls::Plain(tcp) = backend {
        let _ = tcp.try_write(&close);
    }
    TunnelEnd::bare(Side::Client, EndReason::NotStarted, Some(reason))
}

/// Writes a tunnel's access record and closes its metrics when dropped,
/// whatever ended the task: normally `end` is set, and if it is not (a
/// panic, or the task dropped at exit) the record says so.
struct Ending {
    metrics: Arc<Metrics>,
    guard: RegistryGuard,
    end: Option<TunnelEnd>,
}

impl Drop for Ending {
    fn drop(&mut self) {
        let end = self
            .end
            .take()
            .unwrap_or_else(|| TunnelEnd::bare(Side::Proxy, EndReason::Aborted, None));
        let record = self.guard.finish(end);
        // Labels are rebuilt here rather than held for the tunnel's life:
        // an idle tunnel should carry as little as possible.
        let labels = TunnelLabels::of(&self.guard.stats.info);
        self.metrics.tunnel_closed(&labels, &record);
    }
}
