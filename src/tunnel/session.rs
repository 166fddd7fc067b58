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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::net::admission::Admitted;
use crate::net::client;
use crate::net::tls::{BackendStream, ClientStream, MaybeTls};
use crate::observe::access::{CloseOrder, EndReason, Side, TunnelEnd};
use crate::observe::metrics::{Metrics, TunnelLabels};
use crate::observe::registry::{
    CloseControl, ConnInfo, ConnStats, Registry, RegistryGuard, CLOSE_GOING_AWAY,
};
use crate::tunnel::frames::encode_close;
use crate::tunnel::{mask_key, run, FramePolicy, Tunnel, TunnelTimeouts};
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
///
/// The tunnel is registered when this is called, before the 101 goes out,
/// not when the returned future first runs (on a busy worker, after the
/// client may already hold its 101): `/api/connections`, the metrics and a
/// drain see every tunnel whose client has been told it is open.
///
/// `client_upgrade` is hyper's `OnUpgrade` in production; any future of
/// the same output serves in tests.
pub fn serve<U>(session: Session, client_upgrade: U) -> Serve<U>
where
    U: Future<Output = hyper::Result<Upgraded>>,
{
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
    // Registered from the 101 on (the metrics count open tunnels from the
    // registry); the record and metrics are written when the tunnel ends,
    // or when `ending` drops on any other path, a panic included.
    let guard = registry.open(conn, &drain, &shutdown);
    Serve {
        stage: Stage::Handover {
            upgrade: client_upgrade,
            deadline: None,
            start: Some(Start {
                backend,
                backend_leftover,
                timeouts,
                policy,
            }),
        },
        active: Some(active),
        ending: Ending {
            metrics,
            guard: Some(guard),
        },
    }
}

pin_project_lite::pin_project! {
    /// One tunnel's task: the future [`serve`] returns. Written out rather
    /// than as an async block so that what waits for the hand-over and what
    /// splices share one place in memory, and nothing is kept twice: an
    /// idle tunnel's task is little more than its [`Tunnel`].
    pub struct Serve<U> {
        #[pin]
        stage: Stage<U>,
        // The server's count of this tunnel, held for the tunnel's life.
        active: Option<ActiveGuard>,
        ending: Ending,
    }
}

pin_project_lite::pin_project! {
    #[project = StageProj]
    enum Stage<U> {
        // Waiting for hyper to hand over the client's stream (see `poll_handover`).
        Handover {
            #[pin]
            upgrade: U,
            // Armed by a close asked for meanwhile: hyper's time to hand over.
            deadline: Option<Pin<Box<Sleep>>>,
            // Taken when the splice starts.
            start: Option<Start>,
        },
        Splice {
            #[pin]
            tunnel: Tunnel<ClientStream, BackendStream>,
            // The client's place under the connection limits.
            place: Option<Admitted>,
        },
        Done,
    }
}

/// What the splice needs once the client's stream is handed over.
struct Start {
    backend: BackendStream,
    backend_leftover: Bytes,
    timeouts: TunnelTimeouts,
    policy: FramePolicy,
}

impl<U> Future for Serve<U>
where
    U: Future<Output = hyper::Result<Upgraded>>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            let end = match this.stage.as_mut().project() {
                StageProj::Handover {
                    upgrade,
                    deadline,
                    start,
                } => {
                    let Some(stats) = this.ending.stats() else {
                        return Poll::Ready(());
                    };
                    let after = start.as_ref().map_or(Duration::ZERO, |s| s.timeouts.close);
                    let handed = ready!(poll_handover(upgrade, deadline, after, &stats.close, cx));
                    let Some(start) = start.take() else {
                        return Poll::Ready(());
                    };
                    let taken = handed.and_then(|u| {
                        client::unwrap(u).map_err(|e| Handover::ClientGone(e.to_string()))
                    });
                    match taken {
                        Ok((client, client_leftover, place)) => {
                            let tunnel = run(
                                client,
                                client_leftover,
                                start.backend,
                                start.backend_leftover,
                                stats.clone(),
                                start.timeouts,
                                &start.policy,
                            );
                            this.stage.set(Stage::Splice { tunnel, place });
                            continue;
                        }
                        Err(why) => not_started(&start.backend, stats.id, why),
                    }
                }
                StageProj::Splice { tunnel, .. } => ready!(tunnel.poll(cx)).to_end(),
                StageProj::Done => return Poll::Ready(()),
            };
            // Both connections and every count are let go before the record
            // is published: whoever sees it finds them settled.
            this.stage.set(Stage::Done);
            this.active.take();
            this.ending.finish(end);
            return Poll::Ready(());
        }
    }
}

/// Waits for hyper to hand over the client's stream. A close asked for
/// meanwhile (an operator's DELETE, a drain of the server or of wsgate) is
/// answered too: hyper gets `after` (`timeouts.close`) more to hand it
/// over, so that the splice can close both sides at a frame boundary, and
/// past that the tunnel ends without the client's stream.
fn poll_handover<U>(
    upgrade: Pin<&mut U>,
    deadline: &mut Option<Pin<Box<Sleep>>>,
    after: Duration,
    control: &CloseControl,
    cx: &mut Context<'_>,
) -> Poll<Result<Upgraded, Handover>>
where
    U: Future<Output = hyper::Result<Upgraded>>,
{
    if let Poll::Ready(u) = upgrade.poll(cx) {
        return Poll::Ready(u.map_err(|e| Handover::ClientGone(e.to_string())));
    }
    let asked = control.poll_asked(cx);
    if asked.cut() {
        return Poll::Ready(Err(Handover::Shutdown));
    }
    if deadline.is_none() && asked.close() {
        *deadline = Some(Box::pin(tokio::time::sleep(after)));
    }
    let expired = deadline
        .as_mut()
        .is_some_and(|d| d.as_mut().poll(cx).is_ready());
    if expired {
        return Poll::Ready(Err(Handover::Closed(control.order())));
    }
    Poll::Pending
}

/// Why the client's connection never reached the tunnel.
#[derive(Debug)]
enum Handover {
    /// It went away between the 101 and hyper's hand-over (or came back
    /// as another type): hyper's word for it.
    ClientGone(String),
    /// wsgate was shut down first: its doing, not the client's.
    Shutdown,
    /// A close was asked for, and hyper did not hand the stream over
    /// within `timeouts.close` of it.
    Closed(CloseOrder),
}

/// The client's connection never reached the tunnel. The backend already
/// has an open WebSocket: tell it, best effort.
fn not_started(backend: &BackendStream, id: u64, why: Handover) -> TunnelEnd {
    let (code, reason, end) = match why {
        Handover::ClientGone(e) => (
            CLOSE_GOING_AWAY,
            "client gone".to_string(),
            TunnelEnd::bare(Side::Client, EndReason::NotStarted, Some(e)),
        ),
        Handover::Closed(order) => {
            let end = TunnelEnd {
                proxy_close: Some(order.clone()),
                ..TunnelEnd::bare(
                    Side::Proxy,
                    EndReason::ProxyClose,
                    Some("closed before the client's stream was handed over".to_string()),
                )
            };
            (order.code, order.reason, end)
        }
        Handover::Shutdown => (
            CLOSE_GOING_AWAY,
            "proxy shutting down".to_string(),
            TunnelEnd::bare(
                Side::Proxy,
                EndReason::Shutdown,
                Some("proxy shutting down before the tunnel started".to_string()),
            ),
        ),
    };
    let close = encode_close(code, &reason, Some(mask_key(id)));
    // Raw bytes would corrupt a TLS stream: there, the close of the
    // connection has to do.
    if let MaybeTls::Plain(tcp) = backend {
        let _ = tcp.try_write(&close);
    }
    end
}

/// Writes a tunnel's access record and closes its metrics, once: when the
/// tunnel ends, or, if it never gets there (a panic, or the task dropped
/// at exit), when dropped, with a record that says so.
struct Ending {
    metrics: Arc<Metrics>,
    /// `None` once finished.
    guard: Option<RegistryGuard>,
}

impl Ending {
    /// The live stats, until finished.
    fn stats(&self) -> Option<&Arc<ConnStats>> {
        self.guard.as_ref().map(|g| &g.stats)
    }

    fn finish(&mut self, end: TunnelEnd) {
        if let Some(guard) = self.guard.take() {
            // Labels are rebuilt here rather than held for the tunnel's
            // life: an idle tunnel should carry as little as possible.
            let labels = TunnelLabels::of(&guard.stats.info);
            guard.finish(end, |record| self.metrics.tunnel_closed(&labels, record));
        }
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.finish(TunnelEnd::bare(Side::Proxy, EndReason::Aborted, None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// What [`Serve`] may take: 1,008 bytes when written, 864 since the
    /// waits on the drain and shutdown tokens gave way to `CloseControl`.
    const FUTURE_BUDGET: usize = 896;

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

    /// What an idle tunnel's task holds is mostly this future: each piece
    /// of state is kept once (no async fn frames nested in one another,
    /// no argument kept beside the local made from it), and waiting for the
    /// hand-over shares its place with the splice. The async fn it replaced
    /// took 2,520 bytes.
    #[test]
    fn a_tunnels_task_future_stays_within_its_budget() {
        let size = std::mem::size_of::<Serve<hyper::upgrade::OnUpgrade>>();
        assert!(size <= FUTURE_BUDGET, "{size} bytes");
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

    /// A session on a real backend connection, its client stream never
    /// handed over (hyper still writing the 101, say).
    async fn waiting_session(
        registry: &Arc<Registry>,
        drain: &CancellationToken,
    ) -> (
        Session,
        tokio::net::TcpStream,
        Arc<crate::upstream::balancer::Server>,
    ) {
        let (backend, theirs) = backend_pair().await;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
        let server = Arc::new(crate::upstream::balancer::Server::new(addr, 1));
        let session = Session {
            registry: registry.clone(),
            metrics: Arc::new(Metrics::new(registry.clone(), "test")),
            drain: drain.clone(),
            shutdown: CancellationToken::new(),
            conn: ConnInfo {
                client: addr,
                listener: "l".into(),
                route: "r".into(),
                upstream: "u".into(),
                server: server.clone(),
                path: "/".to_string(),
            },
            backend,
            backend_leftover: Bytes::new(),
            active: server.track(),
            timeouts: TunnelTimeouts {
                half_close: std::time::Duration::from_secs(30),
                close: std::time::Duration::from_millis(50),
            },
            policy: FramePolicy::default(),
        };
        (session, theirs, server)
    }

    /// An operator's close reaches a tunnel whose client stream hyper has
    /// not handed over: the backend gets the code asked for, the tunnel
    /// ends (its server's count released) and its record says why.
    #[tokio::test]
    async fn a_close_while_waiting_for_the_hand_over_is_carried_out() {
        let registry = Arc::new(Registry::default());
        let drain = CancellationToken::new();
        let (session, mut theirs, server) = waiting_session(&registry, &drain).await;
        let mut finished = registry.subscribe();
        let task = tokio::spawn(serve(session, std::future::pending()));
        let conn = loop {
            if let Some(c) = registry.live().first().cloned() {
                break c;
            }
            tokio::task::yield_now().await;
        };
        assert!(conn.close.request(CloseOrder {
            code: 4001,
            reason: "operator".to_string(),
        }));
        let within = std::time::Duration::from_secs(10);
        let got = tokio::time::timeout(within, close_received(&mut theirs)).await;
        assert_eq!(got.ok(), Some((4001, "operator".to_string())));
        tokio::time::timeout(within, task).await.unwrap().unwrap();
        let record = finished.recv().await.unwrap();
        assert_eq!(record.end.reason, EndReason::ProxyClose);
        assert_eq!(record.end.closed_by, Side::Proxy);
        assert_eq!(registry.live_count(), 0);
        assert_eq!(server.active(), 0);
    }

    /// A drain (of wsgate or of the tunnel's server) is answered the same way, with 1001.
    #[tokio::test]
    async fn a_drain_while_waiting_for_the_hand_over_ends_the_tunnel() {
        let registry = Arc::new(Registry::default());
        let drain = CancellationToken::new();
        let (session, mut theirs, server) = waiting_session(&registry, &drain).await;
        let task = tokio::spawn(serve(session, std::future::pending()));
        while registry.live_count() == 0 {
            tokio::task::yield_now().await;
        }
        // As the gateway runs it: the registry passes the drain on.
        let (shutdown, done) = (CancellationToken::new(), CancellationToken::new());
        tokio::spawn(registry.clone().obey(drain.clone(), shutdown, done));
        drain.cancel();
        let within = std::time::Duration::from_secs(10);
        let got = tokio::time::timeout(within, close_received(&mut theirs)).await;
        assert_eq!(got.ok().map(|c| c.0), Some(CLOSE_GOING_AWAY));
        tokio::time::timeout(within, task).await.unwrap().unwrap();
        assert_eq!(server.active(), 0);
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
