//! The dashboard: a single page served by the admin listener at `GET /`,
//! and its live feed, a WebSocket at `GET /api/live` pushing one JSON
//! message a second (see `feed.rs`).
//!
//! Owns: the page's files (from `dashboard/` at the repository's root,
//! embedded in the binary: no build step, nothing fetched from the
//! network), the feed's upgrade and its per-page loop, and the bounded
//! history of reloads (`history.rs`).
//!
//! Token: the page's files are open (they hold no data); the page asks
//! for the admin token once and keeps it in `sessionStorage`, sending it
//! as `Authorization: Bearer` to the admin API. A browser cannot set
//! headers on a WebSocket, so the feed also accepts it as a subprotocol
//! offered beside `wsgate.live`: `bearer.<the token, base64url without
//! padding>`. Unlike a query parameter, it never lands in a URL or a log.
//!
//! Costs nothing when no page is open: each open page's feed is one task
//! with its own one-second timer, and none exists without a page. What a
//! page can cost is bounded: at most [`MAX_FEEDS`] feeds at once (the next
//! is refused with 503), a message that has not reached its page within
//! [`LIVE_WRITE_TIMEOUT`] ends the feed (a page that stopped reading would
//! otherwise hold its task, and the admin listener's stop, for ever), and
//! a page may send at most [`LIVE_MAX_INCOMING`] bytes in a message (it
//! sends none; more is answered with Close 1009).
//!
//! Must not: act on anything itself. The page's buttons call the admin API.

pub mod browser;
mod feed;
mod history;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use feed::{ConnRow, Feed, Reading};
pub use history::{ReloadEntry, ReloadHistory, RELOAD_HISTORY};

use crate::Shared;

/// How often the feed pushes a message.
pub const LIVE_INTERVAL: Duration = Duration::from_secs(1);

/// How many feeds may be open at once. Each reads every live connection
/// once a second, on the control path's thread: the bound keeps a script
/// opening feeds in a loop from taking that thread from reloads, health
/// checks and the API.
pub const MAX_FEEDS: usize = 32;

/// How long one message may take to reach its page before the feed ends:
/// a page that stops reading is gone, and its feed must not wait for it.
pub const LIVE_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest message a page may send on its feed (it sends none; pings
/// and Close are far smaller). Anything larger is answered with Close 1009
/// instead of being buffered (the WebSocket library would take 64 MiB).
pub const LIVE_MAX_INCOMING: usize = 4096;

/// The subprotocol the page asks for on `/api/live`.
pub const LIVE_PROTOCOL: &str = "wsgate.live";

/// The prefix of the subprotocol that carries the admin token.
pub const TOKEN_PROTOCOL_PREFIX: &str = "bearer.";

const INDEX: &str = include_str!("../../../dashboard/index.html");
const APP_JS: &str = include_str!("../../../dashboard/app.js");
const STYLE: &str = include_str!("../../../dashboard/style.css");

/// What the dashboard keeps in the running wsgate.
#[derive(Debug, Default)]
pub struct Board {
    /// The last reloads and their results.
    pub reloads: ReloadHistory,
    /// Feeds open now: each is one task and one timer, none without a page.
    feeds: AtomicUsize,
}

impl Board {
    /// How many pages are being fed now.
    pub fn open_feeds(&self) -> usize {
        self.feeds.load(Ordering::Relaxed)
    }
}

/// One of the [`MAX_FEEDS`] places, held from the 101 until the feed ends.
struct FeedSlot(Arc<Shared>);

impl FeedSlot {
    /// A place, or `None` when every one is taken.
    fn take(shared: &Arc<Shared>) -> Option<Self> {
        shared
            .dashboard
            .feeds
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_FEEDS).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(shared.clone()))
    }
}

impl Drop for FeedSlot {
    fn drop(&mut self) {
        self.0.dashboard.feeds.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where the feeds run: the admin listener's tasks, stopped with it.
#[derive(Clone, Debug, Default)]
pub struct LiveTasks {
    /// The admin listener's tracker, so its stop waits for the feeds.
    pub tasks: TaskTracker,
    /// Ends every feed with Close 1001.
    pub stop: CancellationToken,
}

/// The page's files, by path: open without the token.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/index.html" => Some((INDEX, "text/html; charset=utf-8")),
        "/dashboard/app.js" => Some((APP_JS, "text/javascript; charset=utf-8")),
        "/dashboard/style.css" => Some((STYLE, "text/css; charset=utf-8")),
        _ => None,
    }
}

/// Serves one of the page's files.
pub fn serve_asset(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The page's buttons drain servers: no other site may frame it.
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    res
}

fn offered_protocols<B>(req: &Request<B>) -> impl Iterator<Item = &str> {
    req.headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The token a page offered as a subprotocol on `/api/live`, decoded;
/// `None` when none was offered or it is not base64url.
pub fn protocol_token<B>(req: &Request<B>) -> Option<String> {
    offered_protocols(req)
        .find_map(|p| p.strip_prefix(TOKEN_PROTOCOL_PREFIX))
        .and_then(|t| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t)
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
}

fn json_error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(
        serde_json::json!({ "error": message }).to_string(),
    )));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// Answers `GET /api/live` (already authorised): the 101, and the feed
/// started on the admin listener's tasks; 503 when [`MAX_FEEDS`] are open.
pub fn live(
    mut req: Request<hyper::body::Incoming>,
    shared: &Arc<Shared>,
    live: &LiveTasks,
) -> Response<Full<Bytes>> {
    let key = match crate::proxy::handshake::check_client_request(&req) {
        Ok(k) => k,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("/api/live is a WebSocket: {e}"),
            )
        }
    };
    // Taken before the 101, so no number of pages racing can pass the bound.
    let Some(slot) = FeedSlot::take(shared) else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_FEEDS} dashboard feeds are open already; close a page and retry"),
        );
    };
    let answer_protocol = offered_protocols(&req).any(|p| p == LIVE_PROTOCOL);
    let upgrade = hyper::upgrade::on(&mut req);
    let stop = live.stop.clone();
    live.tasks.spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let config = WebSocketConfig::default()
            .max_message_size(Some(LIVE_MAX_INCOMING))
            .max_frame_size(Some(LIVE_MAX_INCOMING));
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            Role::Server,
            Some(config),
        )
        .await;
        let shared = slot.0.clone();
        let mut feed = Feed::default();
        let next = move || {
            feed.next(Reading::of(&shared), Instant::now(), SystemTime::now())
                .to_string()
        };
        run_feed(ws, next, stop).await;
        drop(slot);
    });
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&crate::upstream::answer::accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if answer_protocol {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(LIVE_PROTOCOL),
        );
    }
    res
}

/// Sends a Close, giving up after [`LIVE_WRITE_TIMEOUT`] (the page may
/// have stopped reading).
async fn close_with<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, frame: Option<CloseFrame>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(LIVE_WRITE_TIMEOUT, ws.close(frame)).await;
}

/// One page's feed: `next()` a second until the page goes, stops reading
/// for [`LIVE_WRITE_TIMEOUT`], or the admin listener stops (then Close
/// 1001, and the page reconnects by itself).
async fn run_feed<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    mut next: impl FnMut() -> String,
    stop: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut tick = tokio::time::interval(LIVE_INTERVAL);
    // A slow page gets the next reading, not a burst of stale ones.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let away = CloseFrame { code: CloseCode::Away, reason: "wsgate is stopping".into() };
                close_with(&mut ws, Some(away)).await;
                return;
            }
            _ = tick.tick() => {
                let msg = Message::text(next());
                // A page that stopped reading must not hold the feed, nor
                // the admin listener's stop, which waits for every feed.
                let sent = tokio::select! {
                    r = tokio::time::timeout(LIVE_WRITE_TIMEOUT, ws.send(msg)) => matches!(r, Ok(Ok(()))),
                    _ = stop.cancelled() => false,
                };
                if !sent {
                    return;
                }
            }
            m = ws.next() => match m {
                // Pings are answered by the stream itself; the page sends nothing else.
                Some(Ok(Message::Close(_))) => {
                    close_with(&mut ws, None).await;
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(WsError::Capacity(_))) => {
                    let too_big = CloseFrame { code: CloseCode::Size, reason: "the page sends no messages".into() };
                    close_with(&mut ws, Some(too_big)).await;
                    return;
                }
                Some(Err(_)) | None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::WebSocketStream;

    fn with_protocols(v: &str) -> Request<()> {
        Request::builder()
            .header(header::SEC_WEBSOCKET_PROTOCOL, v)
            .body(())
            .expect("request")
    }

    #[test]
    fn the_token_rides_in_a_subprotocol() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("s3cret/+token");
        let req = with_protocols(&format!("wsgate.live, bearer.{b64}"));
        assert_eq!(protocol_token(&req).as_deref(), Some("s3cret/+token"));
        assert_eq!(protocol_token(&with_protocols("wsgate.live")), None);
        assert_eq!(protocol_token(&with_protocols("bearer.%%%")), None);
    }

    async fn feed_over(io: tokio::io::DuplexStream) -> WebSocketStream<tokio::io::DuplexStream> {
        WebSocketStream::from_raw_socket(io, Role::Server, None).await
    }

    /// A message far larger than the pipe to a page that reads nothing.
    fn big() -> impl FnMut() -> String {
        let text = "x".repeat(64 * 1024);
        move || text.clone()
    }

    // An in-memory pipe with a tiny buffer stands for a page that stopped
    // reading (a socket's kernel buffers take minutes to fill at one
    // message a second); paused time runs the write timeout at once.
    #[tokio::test(start_paused = true)]
    async fn a_page_that_stops_reading_ends_its_feed() {
        let (server, _page) = tokio::io::duplex(1024);
        let ws = feed_over(server).await;
        let ended = tokio::time::timeout(
            LIVE_WRITE_TIMEOUT * 10,
            run_feed(ws, big(), CancellationToken::new()),
        )
        .await;
        assert!(ended.is_ok(), "the feed waited for ever on its page");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_a_feed_stuck_writing_to_its_page() {
        let (server, _page) = tokio::io::duplex(1024);
        let ws = feed_over(server).await;
        let stop = CancellationToken::new();
        let feed = tokio::spawn(run_feed(ws, big(), stop.clone()));
        tokio::time::sleep(LIVE_INTERVAL).await;
        assert!(!feed.is_finished(), "stuck writing the first message");
        stop.cancel();
        // Well before the write timeout would have ended it.
        tokio::time::timeout(LIVE_WRITE_TIMEOUT / 2, feed)
            .await
            .expect("the stop ends the feed")
            .expect("the feed's task");
    }

    #[test]
    fn every_asset_is_served_and_nothing_else() {
        for p in [
            "/",
            "/index.html",
            "/dashboard/app.js",
            "/dashboard/style.css",
        ] {
            assert!(asset(p).is_some_and(|(body, _)| !body.is_empty()), "{p}");
        }
        assert!(asset("/dashboard/../Cargo.toml").is_none());
        assert!(asset("/api/live").is_none());
    }
}
