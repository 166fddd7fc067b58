//! The dashboard's live feed (`GET /api/live`) over a plain WebSocket
//! client, and the admin listener's answer to other sites in a browser:
//! the token as a subprotocol, a full message then deltas, the bounds on
//! what pages cost, and the refusals without a token (see
//! `control/dashboard/browser.rs`). The page itself, in a real browser, is
//! tested in `tests/dashboard.rs`.

mod common;
#[path = "support/dashboard.rs"]
mod dashboard_support;

use std::net::SocketAddr;

use base64::Engine;
use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use dashboard_support::{config, gateway_with_token, live_conn, TOKEN};

// === the feed without a browser ===

async fn feed(
    admin: SocketAddr,
    protocols: Option<&str>,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
        http::Response<Option<Vec<u8>>>,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let mut req = format!("ws://{admin}/api/live")
        .into_client_request()
        .expect("request");
    if let Some(p) = protocols {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().expect("header"));
    }
    let tcp = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    within(
        "the feed's handshake",
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_takes_the_token_as_a_subprotocol_and_sends_deltas() {
    let gw = gateway_with_token().await;
    let admin = gw.admin.expect("admin");

    for protocols in [
        None,
        Some("wsgate.live"),
        Some("wsgate.live, bearer.bm90LWl0"),
    ] {
        match feed(admin, protocols).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                assert_eq!(res.status(), 401, "{protocols:?}")
            }
            other => panic!("{protocols:?}: expected 401, got {other:?}"),
        }
    }
    // The page's files are open: they hold no data.
    let (status, page) = http_text(admin, "GET", "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("/dashboard/app.js"), "{page}");

    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(TOKEN);
    let (mut ws, res) = feed(admin, Some(&format!("wsgate.live, bearer.{b64}")))
        .await
        .expect("the feed with the token");
    assert_eq!(
        res.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"wsgate.live"[..]),
        "the token's subprotocol is never echoed back"
    );
    let full = next_json(&mut ws, "a feed message").await;
    assert_eq!(full["type"], "full");
    assert_eq!(full["conns"]["reset"], true);
    assert_eq!(full["conns"]["upsert"], Value::Array(vec![]));
    assert_eq!(full["upstreams"][0]["name"], "chat");
    assert!(full["config"]["version"].is_string(), "{full}");

    // A tunnel opens: the next deltas carry it, and only once unchanged.
    let _client = ws_connect(gw.addr("public"), "/chat/feed").await;
    gw.wait_live(1).await;
    let id = live_conn(&gw, "/chat/feed").id;
    let mut seen = 0;
    let mut quiet = None;
    while quiet.is_none() {
        let d = next_json(&mut ws, "a feed message").await;
        assert_eq!(d["type"], "delta");
        assert!(d.get("upstreams").is_none() || seen == 0, "{d}");
        let rows = d["conns"]["upsert"].as_array().cloned().unwrap_or_default();
        if rows.iter().any(|r| r["id"] == id) {
            seen += 1;
            assert_eq!(rows[0]["path"], "/chat/feed");
        } else if seen > 0 {
            quiet = Some(d);
        }
    }
    assert_eq!(seen, 1, "an unchanged row is sent once");
    let quiet = quiet.expect("a quiet delta");
    assert_eq!(quiet["totals"]["active"], 1);
    assert!(
        quiet.get("config").is_none(),
        "unchanged sections are left out: {quiet}"
    );

    // The page leaves: its feed ends with it, and nothing runs for none.
    let board = &gw.gateway.shared().dashboard;
    assert_eq!(board.open_feeds(), 1);
    ws.close(None).await.expect("close the feed");
    while let Some(Ok(_)) = within("the feed's closing handshake", ws.next()).await {}
    within("the feed to end", async {
        while board.open_feeds() != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_sending_a_large_message_gets_1009_not_a_buffer() {
    let echo = echo_backend().await;
    let gw = TestGateway::start(&config(&[echo], false)).await;
    let (mut ws, _) = feed(gw.admin.expect("admin"), Some("wsgate.live"))
        .await
        .expect("the feed");
    assert_eq!(next_json(&mut ws, "a feed message").await["type"], "full");
    let big = "z".repeat(wsgate::control::dashboard::LIVE_MAX_INCOMING * 16);
    futures_util::SinkExt::send(&mut ws, Message::text(big))
        .await
        .expect("send");
    let (code, reason) = within("the feed's Close", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => {
                    return (u16::from(f.code), f.reason.to_string())
                }
                // Deltas already on their way.
                Some(Ok(Message::Text(_))) => {}
                other => panic!("expected Close 1009, got {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(
        (code, reason.as_str()),
        (1009, "the page sends no messages")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_feeds_are_bounded_and_a_freed_place_is_taken_again() {
    use wsgate::control::dashboard::MAX_FEEDS;
    let echo = echo_backend().await;
    let gw = TestGateway::start(&config(&[echo], false)).await;
    let admin = gw.admin.expect("admin");
    let mut open = Vec::new();
    for _ in 0..MAX_FEEDS {
        let (mut ws, _) = feed(admin, Some("wsgate.live")).await.expect("a feed");
        assert_eq!(next_json(&mut ws, "a feed message").await["type"], "full");
        open.push(ws);
    }
    let board = &gw.gateway.shared().dashboard;
    assert_eq!(board.open_feeds(), MAX_FEEDS);
    match feed(admin, Some("wsgate.live")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), 503);
            let body: Value =
                serde_json::from_slice(res.body().as_deref().unwrap_or_default()).expect("JSON");
            assert!(
                body["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("close a page")),
                "{body}"
            );
        }
        other => panic!("expected 503 past {MAX_FEEDS} feeds, got {other:?}"),
    }
    // The others still flow.
    assert_eq!(
        next_json(&mut open[0], "a feed message").await["type"],
        "delta"
    );

    let mut gone = open.pop().expect("a feed");
    gone.close(None).await.expect("close a feed");
    while let Some(Ok(_)) = within("the closing handshake", gone.next()).await {}
    within("the place to be freed", async {
        while board.open_feeds() != MAX_FEEDS - 1 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let (mut again, _) = feed(admin, Some("wsgate.live"))
        .await
        .expect("a feed again");
    assert_eq!(
        next_json(&mut again, "a feed message").await["type"],
        "full"
    );
}

// === another site in the operator's browser ===

/// A raw request `method path` to the admin listener with `headers`
/// (each `Name: value`) and the admin address as `Host` unless given.
async fn admin_raw(admin: SocketAddr, method: &str, path: &str, headers: &[&str]) -> u16 {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"))
    {
        head.push_str(&format!("Host: {admin}\r\n"));
    }
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if path == "/api/live" {
        head.push_str("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n");
    } else {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    let mut tcp = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    raw_exchange(&mut tcp, head.as_bytes()).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_other_sites_in_a_browser_are_refused() {
    let (a, b) = (echo_backend().await, echo_backend().await);
    let gw = TestGateway::start(&config(&[a, b], false)).await;
    let admin = gw.admin.expect("admin");
    let port = admin.port();
    let drain = format!("/api/upstreams/chat/servers/{a}/drain");
    let evil = "Origin: http://evil.example";
    let rebound_host = format!("Host: evil.example:{port}");
    let rebound_origin = format!("Origin: http://evil.example:{port}");
    let other_port = "Origin: http://127.0.0.1:1".to_string();
    let refused: Vec<(&str, &str, Vec<&str>)> = vec![
        // Cross-site WebSocket hijacking of the live feed.
        ("GET", "/api/live", vec![evil]),
        ("GET", "/api/live", vec!["Origin: null"]),
        // Another port on this host: the demo's chat page, say.
        ("GET", "/api/live", vec![&other_port]),
        // A form on another site.
        ("POST", &drain, vec![evil]),
        ("POST", &drain, vec!["Sec-Fetch-Site: cross-site"]),
        ("POST", &drain, vec!["Sec-Fetch-Site: same-site"]),
        ("POST", "/reload", vec![evil]),
        // DNS rebinding: the other site's name now leads here.
        ("GET", "/api/live", vec![&rebound_host, &rebound_origin]),
        (
            "GET",
            "/api/connections",
            vec![&rebound_host, "Sec-Fetch-Site: same-origin"],
        ),
    ];
    for (method, path, headers) in &refused {
        assert_eq!(
            admin_raw(admin, method, path, headers).await,
            403,
            "{method} {path} {headers:?}"
        );
    }
    let server = gw
        .gateway
        .shared()
        .snapshot
        .load()
        .upstream("chat")
        .and_then(|u| u.server(a).cloned())
        .expect("the server");
    assert_eq!(server.state().as_str(), "up", "no refused request acted");

    // The page itself, and clients that are not browsers, are served.
    let own = format!("Origin: http://{admin}");
    let localhost_host = format!("Host: localhost:{port}");
    let localhost_origin = format!("Origin: http://localhost:{port}");
    let served: Vec<(&str, &str, Vec<&str>, u16)> = vec![
        (
            "GET",
            "/api/live",
            vec![&own, "Sec-Fetch-Site: same-origin"],
            101,
        ),
        (
            "GET",
            "/api/live",
            vec![&localhost_host, &localhost_origin],
            101,
        ),
        ("GET", "/api/live", vec![], 101),
        (
            "GET",
            "/api/connections",
            vec!["Sec-Fetch-Site: same-origin"],
            200,
        ),
        ("GET", "/", vec![evil], 200),
        ("POST", &drain, vec![&own], 202),
    ];
    for (method, path, headers, status) in &served {
        assert_eq!(
            admin_raw(admin, method, path, headers).await,
            *status,
            "{method} {path} {headers:?}"
        );
    }
    assert_eq!(server.state().as_str(), "draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_token_decides_whatever_the_origin() {
    let gw = gateway_with_token().await;
    let admin = gw.admin.expect("admin");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(TOKEN);
    let protocol = format!("Sec-WebSocket-Protocol: wsgate.live, bearer.{b64}");
    let evil = "Origin: http://evil.example";
    assert_eq!(admin_raw(admin, "GET", "/api/live", &[evil]).await, 401);
    assert_eq!(
        admin_raw(admin, "GET", "/api/live", &[evil, &protocol]).await,
        101
    );
}
