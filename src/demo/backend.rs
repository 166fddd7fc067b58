//! The demo backend: a small chat application on each server address of
//! the config, serving its page and its WebSocket on one port, as real
//! applications do behind wsgate. Every backend of one demo shares one
//! [`ChatRoom`] (an in-process broadcast channel), so a message sent
//! through any backend reaches every client on every backend: the
//! "server broadcasts to every connected client" application, working
//! through the proxy.
//!
//! Two kinds of client: the page asks for the `wsgate.chat` subprotocol
//! and gets JSON (a hello naming its backend, then each message with the
//! backend it came through); any other client gets each message as sent,
//! so one alone hears its own messages back, as from an echo server (the
//! self-check and `wsgate client` rely on that).
//!
//! Must not: outlive the shutdown token; every task belongs to the caller's
//! tracker.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{io_err, DemoError};

/// The subprotocol the chat page asks for, to get JSON with backends named.
pub const CHAT_PROTOCOL: &str = "wsgate.chat";

/// Messages a slow client may fall behind by before it misses some.
const ROOM_BACKLOG: usize = 256;

/// The largest message the chat takes; a larger one is answered with
/// Close 1009. The room keeps its last [`ROOM_BACKLOG`] messages for slow
/// clients, so this bounds what it holds (16 MiB) where the WebSocket
/// library's own limit (64 MiB) would let one tab make it hold 16 GiB.
pub const CHAT_MAX_MESSAGE: usize = 64 * 1024;

/// How long a message may take to reach a client before it is let go: a
/// client that stopped reading must not hold its task (nor the demo's stop).
const CHAT_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One message said in the room.
#[derive(Debug, Clone)]
struct Said {
    /// The message as its client sent it (text or binary).
    message: Message,
    /// The client's number in the room.
    from: u64,
    /// The backend it came in through.
    backend: SocketAddr,
}

/// The chat room every demo backend of one process shares.
#[derive(Debug, Clone)]
pub struct ChatRoom {
    tx: broadcast::Sender<Said>,
    next_client: Arc<AtomicU64>,
}

impl Default for ChatRoom {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(ROOM_BACKLOG).0,
            next_client: Arc::new(AtomicU64::new(1)),
        }
    }
}

/// Serves the demo chat on `listener` until `shutdown`, in a room of its
/// own (see [`chat_backend`] to share one).
pub async fn echo_backend(listener: TcpListener, tasks: TaskTracker, shutdown: CancellationToken) {
    chat_backend(listener, ChatRoom::default(), tasks, shutdown).await;
}

/// Serves the demo chat on `listener` until `shutdown`: a WebSocket on any
/// path joins `room` (pings are answered; a Close is returned), and any
/// plain request gets the chat page, whose script opens that WebSocket.
pub async fn chat_backend(
    listener: TcpListener,
    room: ChatRoom,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let Ok(me) = listener.local_addr() else {
        return;
    };
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
        let room = room.clone();
        tasks.spawn(async move {
            let stop = token.clone();
            let service = hyper::service::service_fn(move |req| {
                let (upgrades, token, room) = (upgrades.clone(), token.clone(), room.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(
                        app_answer(req, me, &room, &upgrades, &token).await,
                    )
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

/// The chat page: it opens a WebSocket to its own path.
const PAGE: &str = include_str!("chat.html");

type DemoBody = http_body_util::Full<bytes::Bytes>;

async fn app_answer(
    mut req: hyper::Request<hyper::body::Incoming>,
    me: SocketAddr,
    room: &ChatRoom,
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
    let json = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == CHAT_PROTOCOL);
    let accept = crate::proxy::handshake::accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    let (token, room) = (shutdown.clone(), room.clone());
    tasks.spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(CHAT_MAX_MESSAGE))
            .max_frame_size(Some(CHAT_MAX_MESSAGE));
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            Some(config),
        )
        .await;
        member(ws, me, json, room, token).await;
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
    if json {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            header::HeaderValue::from_static(CHAT_PROTOCOL),
        );
    }
    res
}

/// What a JSON client is sent for `said`; `None` for a binary message,
/// which the page does not show.
fn chat_json(said: &Said) -> Option<Message> {
    let Message::Text(text) = &said.message else {
        return None;
    };
    let v = serde_json::json!({
        "type": "message",
        "from": said.from,
        "backend": said.backend,
        "text": text.as_str(),
    });
    Some(Message::text(v.to_string()))
}

/// One client in the room, from its 101 until it or the demo goes.
async fn member<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    me: SocketAddr,
    json: bool,
    room: ChatRoom,
    token: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let id = room.next_client.fetch_add(1, Ordering::Relaxed);
    let mut heard = room.tx.subscribe();
    if json {
        let hello = serde_json::json!({"type": "hello", "you": id, "backend": me});
        if ws.send(Message::text(hello.to_string())).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            m = ws.next() => match m {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    // Nobody listening is no error: the room is empty.
                    let _ = room.tx.send(Said { message: m, from: id, backend: me });
                }
                Some(Ok(_)) => {}
                Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                    let too_big = CloseFrame {
                        code: CloseCode::Size,
                        reason: "the chat takes messages of 64 KiB at most".into(),
                    };
                    let _ = tokio::time::timeout(CHAT_WRITE_TIMEOUT, ws.close(Some(too_big))).await;
                    linger(ws.get_mut()).await;
                    return;
                }
                Some(Err(_)) | None => return,
            },
            said = heard.recv() => {
                let out = match said {
                    Ok(s) if json => chat_json(&s),
                    Ok(s) => Some(s.message),
                    // Fell behind: the missed messages are gone, the next ones come.
                    Err(broadcast::error::RecvError::Lagged(_)) => None,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if let Some(out) = out {
                    let sent = tokio::select! {
                        r = tokio::time::timeout(CHAT_WRITE_TIMEOUT, ws.send(out)) => matches!(r, Ok(Ok(()))),
                        _ = token.cancelled() => false,
                    };
                    if !sent {
                        return;
                    }
                }
            }
        }
    }
}

/// Reads and drops what the client still sends (the rest of a message too
/// big to take, its Close) until it closes, for a while and up to a few
/// MiB: closing a socket with unread bytes resets the connection, and the
/// reset could overtake the Close 1009 that says why.
async fn linger<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) {
    use tokio::io::AsyncReadExt;
    let mut left: usize = 64 * CHAT_MAX_MESSAGE;
    let mut buf = vec![0u8; 16 * 1024];
    let drain = async {
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            left = left.saturating_sub(n);
            if left == 0 {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(CHAT_WRITE_TIMEOUT, drain).await;
}

/// Binds a demo backend on every address, all in one chat room.
///
/// # Errors
/// [`DemoError::Io`] naming the address that could not be bound.
pub async fn start_echo_backends(
    addrs: &[SocketAddr],
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), DemoError> {
    let room = ChatRoom::default();
    for addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(io_err(format!("binding demo backend {addr}")))?;
        tasks.spawn(chat_backend(
            l,
            room.clone(),
            tasks.clone(),
            shutdown.clone(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

    /// A member on an in-memory pipe whose client reads nothing (a socket's
    /// kernel buffers would take long to fill), and a message far larger
    /// than the pipe said in its room.
    async fn stuck_member(
        token: CancellationToken,
    ) -> (
        tokio::task::JoinHandle<()>,
        tokio::io::DuplexStream,
        ChatRoom,
    ) {
        let (server, client) = tokio::io::duplex(1024);
        let ws = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
        let room = ChatRoom::default();
        let me = SocketAddr::from(([127, 0, 0, 1], 9001));
        let mut joined = room.tx.subscribe();
        let member = tokio::spawn(member(ws, me, false, room.clone(), token));
        // Wait until the member has joined (its receiver counts).
        while room.tx.receiver_count() < 2 {
            tokio::task::yield_now().await;
        }
        let big = Message::text("b".repeat(CHAT_MAX_MESSAGE));
        let _ = room.tx.send(Said {
            message: big,
            from: 99,
            backend: me,
        });
        let _ = joined.recv().await;
        (member, client, room)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_a_member_stuck_writing_to_its_client() {
        let token = CancellationToken::new();
        let (member, _client, _room) = stuck_member(token.clone()).await;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert!(!member.is_finished(), "stuck writing the message");
        token.cancel();
        tokio::time::timeout(CHAT_WRITE_TIMEOUT / 2, member)
            .await
            .expect("the stop ends the member")
            .expect("the member's task");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_let_go() {
        let (member, _client, _room) = stuck_member(CancellationToken::new()).await;
        tokio::time::timeout(CHAT_WRITE_TIMEOUT * 10, member)
            .await
            .expect("the member let its client go")
            .expect("the member's task");
    }
}
