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
use crate::tunnel::{mask_key, run, FramePolicy, TunnelTimeouts};
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
    /// How frames are judged: strictness and the negotiated reserved bits.
    pub policy: FramePolicy,
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
        policy,
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
        u = client_upgrade => u.map_err(|e| Handover::ClientGone(e.to_string())),
        _ = shutdown.cancelled() => Err(Handover::Shutdown),
    };
    let taken =
        upgraded.and_then(|u| client::unwrap(u).map_err(|e| Handover::ClientGone(e.to_string())));
    // The client's place under the connection limits, held while the tunnel lives.
    let (client, client_leftover, _place) = match taken {
        Ok(p) => p,
        Err(why) => {
            ending.end = Some(not_started(&backend, ending.guard.stats.id, why));
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
        policy,
        &shutdown,
    )
    .await;
    ending.end = Some(outcome.to_end());
}

/// Why the client's connection never reached the tunnel.
#[derive(Debug)]
enum Handover {
    /// It went away between the 101 and hyper's hand-over (or came back
    /// as another type): hyper's word for it.
    ClientGone(String),
    /// wsgate was shut down first: its doing, not the client's.
    Shutdown,
}

/// The client's connection never reached the tunnel. The backend already
/// has an open WebSocket: tell it, best effort.
fn not_started(backend: &BackendStream, id: u64, why: Handover) -> TunnelEnd {
    let (reason, end) = match why {
        Handover::ClientGone(e) => (
            "client gone",
            TunnelEnd::bare(Side::Client, EndReason::NotStarted, Some(e)),
        ),
        Handover::Shutdown => (
            "proxy shutting down",
            TunnelEnd::bare(
                Side::Proxy,
                EndReason::Shutdown,
                Some("proxy shutting down before the tunnel started".to_string()),
            ),
        ),
    };
    let close = encode_close(CLOSE_GOING_AWAY, reason, Some(mask_key(id)));
    // Raw bytes would corrupt a TLS stream: there, the close of the
    // connection has to do.
    if let MaybeTls::Plain(tcp) = backend {
        let _ = tcp.try_write(&close);
    }
    end
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A backend connection over real loopback sockets: wsgate's end and the backend's.
    async fn backend_pair() -> (BackendStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (theirs, _) = l.accept().await.unwrap();
        (MaybeTls::Plain(ours), theirs)
    }

    /// The backend's view: one masked Close, its code and reason.
    async fn close_received(theirs: &mut tokio::net::TcpStream) -> (u16, String) {
        let mut head = [0u8; 2];
        theirs.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x88, "a final Close frame");
        assert_eq!(head[1] & 0x80, 0x80, "masked, as a client's");
        let len = usize::from(head[1] & 0x7f);
        let mut rest = vec![0u8; 4 + len];
        theirs.read_exact(&mut rest).await.unwrap();
        let (mask, payload) = rest.split_at_mut(4);
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        (code, String::from_utf8(payload[2..].to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_client_gone_before_the_hand_over_is_the_clients_doing() {
        let (backend, mut theirs) = backend_pair().await;
        let end = not_started(&backend, 7, Handover::ClientGone("connection reset".into()));
        assert_eq!(end.closed_by, Side::Client);
        assert_eq!(end.reason, EndReason::NotStarted);
        assert_eq!(end.detail.as_deref(), Some("connection reset"));
        assert_eq!(
            close_received(&mut theirs).await,
            (CLOSE_GOING_AWAY, "client gone".to_string())
        );
    }

    /// A shutdown during the hand-over is wsgate's: the record and
    /// wsgate_tunnels_closed_total say proxy and shutdown, as for any tunnel
    /// a shutdown ends, not a client that left.
    #[tokio::test]
    async fn a_shutdown_during_the_hand_over_is_the_proxys_doing() {
        let (backend, mut theirs) = backend_pair().await;
        let end = not_started(&backend, 7, Handover::Shutdown);
        assert_eq!(end.closed_by, Side::Proxy);
        assert_eq!(end.reason, EndReason::Shutdown);
        assert_eq!(
            close_received(&mut theirs).await,
            (CLOSE_GOING_AWAY, "proxy shutting down".to_string())
        );
    }
}
