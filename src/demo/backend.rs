//! The demo backend: a small application on each server address of the
//! config, serving a page and WebSocket echo on one port, as real
//! applications do behind wsgate.
//!
//! Must not: outlive the shutdown token; every task belongs to the caller's
//! tracker.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{io_err, DemoError};

/// Serves a small application on `listener` until `shutdown`, as a real
/// backend would behind wsgate: WebSocket echo on any path (every text or
/// binary message comes back unchanged; pings are answered; a Close is
/// returned), and for any plain request a page whose script opens that
/// WebSocket, so a browser shows pages and WebSockets through one route.
pub async fn echo_backend(listener: TcpListener, tasks: TaskTracker, shutdown: CancellationToken) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(a) => a,
                // Out of descriptors, say: do not spin.
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let token = shutdown.clone();
        let upgrades = tasks.clone();
        tasks.spawn(async move {
            let stop = token.clone();
            let service = hyper::service::service_fn(move |req| {
                let (upgrades, token) = (upgrades.clone(), token.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(app_answer(req, &upgrades, &token).await)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// The demo page: a tiny chat box over a WebSocket to the same path.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8"><title>wsgate demo</title>
<h1>wsgate demo</h1>
<p>This page and its WebSocket come through wsgate, on the same route, to the same backend.</p>
<form id="f"><input id="m" autocomplete="off" placeholder="a message"> <button>send</button></form>
<pre id="log"></pre>
<script>
const log = t => document.getElementById('log').textContent += t + '\n';
const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + location.pathname + location.search);
ws.onopen = () => log('connected to ' + ws.url);
ws.onmessage = e => log('< ' + e.data);
ws.onclose = e => log('closed: ' + e.code + ' ' + e.reason);
document.getElementById('f').onsubmit = e => {
  e.preventDefault();
  const m = document.getElementById('m');
  if (ws.readyState !== WebSocket.OPEN) { log('not connected'); return; }
  ws.send(m.value); log('> ' + m.value); m.value = '';
};
</script>
"#;

type DemoBody = http_body_util::Full<bytes::Bytes>;

async fn app_answer(
    mut req: hyper::Request<hyper::body::Incoming>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> hyper::Response<DemoBody> {
    use http::header;
    use http_body_util::BodyExt;
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let Some(key) = key.filter(|_| {
        crate::proxy::handshake::classify(&req) == crate::proxy::handshake::RequestKind::WebSocket
    }) else {
        // Read what was sent (up to 1 MiB) before answering, as a well-behaved
        // server does: closing on an unread body resets the connection, and
        // the answer is lost with it.
        let _ = http_body_util::Limited::new(req.into_body(), 1 << 20)
            .collect()
            .await;
        let mut res = hyper::Response::new(DemoBody::from(PAGE));
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/html; charset=utf-8"),
        );
        return res;
    };
    let accept = crate::proxy::handshake::accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    let token = shutdown.clone();
    tasks.spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        loop {
            let msg = tokio::select! {
                _ = token.cancelled() => return,
                m = ws.next() => m,
            };
            match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    let mut res = hyper::Response::new(DemoBody::default());
    *res.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

/// Binds an echo backend on every address.
///
/// # Errors
/// [`DemoError::Io`] naming the address that could not be bound.
pub async fn start_echo_backends(
    addrs: &[SocketAddr],
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), DemoError> {
    for addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(io_err(format!("binding demo backend {addr}")))?;
        tasks.spawn(echo_backend(l, tasks.clone(), shutdown.clone()));
    }
    Ok(())
}
