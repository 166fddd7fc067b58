//! The demo chat (`wsgate demo`'s backends) through a real wsgate: two
//! backends share one room, so a message typed in one browser page
//! appears in a page whose WebSocket landed on the other backend, and the
//! dashboard lists both pages' tunnels with their backends. A client
//! without the chat's subprotocol hears its own messages back, as the
//! demo's self-check and `wsgate client` expect.
#![cfg(feature = "demo")]

#[path = "support/browser.rs"]
mod browser;
mod common;

use std::net::SocketAddr;

use browser::{Driver, Page};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wsgate::demo::{chat_backend, ChatRoom, CHAT_PROTOCOL};

/// Two chat backends in one room, stopped when the token is dropped.
struct Backends {
    addrs: [SocketAddr; 2],
    stop: CancellationToken,
    _tasks: TaskTracker,
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn backends() -> Backends {
    let (room, tasks, stop) = (
        ChatRoom::default(),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        addrs.push(l.local_addr().expect("addr"));
        tasks.spawn(chat_backend(l, room.clone(), tasks.clone(), stop.clone()));
    }
    Backends {
        addrs: [addrs[0], addrs[1]],
        stop,
        _tasks: tasks,
    }
}

/// The demo's shape: `/chat` to both backends, least connections first
/// (as in config.example.toml), and an admin listener.
fn config(b: &Backends) -> String {
    format!(
        "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[routes]]\npath_prefix = \"/chat\"\nupstream = \"chat\"\n\n[upstreams.chat]\nservers = {}\nbalance = \"least_conn\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n",
        server_list(&b.addrs)
    )
}

async fn chat_client(
    addr: SocketAddr,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let mut req = format!("ws://{addr}/chat")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        CHAT_PROTOCOL.parse().expect("header"),
    );
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (ws, res) = within(
        "the chat handshake",
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
    .expect("handshake");
    assert_eq!(
        res.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(CHAT_PROTOCOL.as_bytes())
    );
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_through_one_backend_reaches_clients_on_both() {
    let b = backends().await;
    let gw = TestGateway::start(&config(&b)).await;
    let addr = gw.addr("public");

    let mut page = chat_client(addr).await;
    let hello = next_json(&mut page, "a chat message").await;
    assert_eq!(hello["type"], "hello");
    // A plain client (as the self-check): least_conn puts it on the other backend.
    let mut plain = ws_connect(addr, "/chat").await;
    gw.wait_live(2).await;
    let backends: Vec<String> = gw
        .gateway
        .registry()
        .live()
        .iter()
        .map(|c| c.info.backend().to_string())
        .collect();
    assert_ne!(backends[0], backends[1], "one client on each backend");
    let plain_backend = backends
        .iter()
        .find(|b| **b != hello["backend"])
        .expect("the plain client's backend")
        .clone();

    plain.send(Message::text("hello room")).await.expect("send");
    match within("the plain client's own message back", plain.next()).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "hello room"),
        other => panic!("expected the message back, got {other:?}"),
    }
    let heard = next_json(&mut page, "a chat message").await;
    assert_eq!(heard["type"], "message");
    assert_eq!(heard["text"], "hello room");
    assert_eq!(heard["backend"], Value::from(plain_backend), "{heard}");
    assert_ne!(heard["from"], hello["you"]);
}

/// Opens the chat page in a new browser until its WebSocket lands on a
/// backend other than `not` (least_conn makes the first try do).
async fn page_on(driver: &mut Driver, url: &str, not: Option<&str>) -> (Page, String) {
    for _ in 0..4 {
        let page = driver.session().await;
        page.goto(url).await;
        let backend = page
            .wait_text("the page's backend", "#backend", |t| t.contains(':'))
            .await;
        if Some(backend.as_str()) != not {
            return (page, backend);
        }
    }
    panic!("no page landed on a backend other than {not:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_typed_in_one_page_appears_in_a_page_on_the_other_backend() {
    let b = backends().await;
    let gw = TestGateway::start(&config(&b)).await;
    let url = format!("http://{}/chat", gw.addr("public"));
    let mut driver = Driver::start();
    let (one, first) = page_on(&mut driver, &url, None).await;
    let (two, second) = page_on(&mut driver, &url, Some(&first)).await;
    assert_ne!(first, second);

    one.type_into("#m", "across the backends").await;
    one.click("#f button").await;
    let line = two
        .wait_text("the message in the other page", "#log", |t| {
            t.contains("across the backends")
        })
        .await;
    assert!(line.contains(&format!("via {first}")), "{line}");
    one.wait_text("the sender's own line", "#log", |t| {
        t.contains("across the backends")
    })
    .await;

    // The dashboard lists both pages' tunnels, each with its backend.
    let dash = driver.session().await;
    dash.goto(&format!("http://{}/", gw.admin.expect("admin")))
        .await;
    let servers = dash
        .wait_for("both tunnels on the dashboard", || async {
            let v = dash
                .eval(
                    "return [...document.querySelectorAll('#conns tbody td.server')].map(td => td.textContent).sort().join(' ');",
                    vec![],
                )
                .await;
            v.as_str()
                .filter(|s| s.split(' ').count() == 2)
                .map(str::to_string)
        })
        .await;
    let mut want = [first, second];
    want.sort();
    assert_eq!(servers, want.join(" "));
    for p in [one, two, dash] {
        p.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_a_megabyte_gets_1009_and_the_room_goes_on() {
    let b = backends().await;
    let gw = TestGateway::start(&config(&b)).await;
    let addr = gw.addr("public");
    let mut sender = chat_client(addr).await;
    let mut other = chat_client(addr).await;
    for ws in [&mut sender, &mut other] {
        assert_eq!(next_json(ws, "a chat message").await["type"], "hello");
    }

    let megabyte = "m".repeat(1 << 20);
    sender.send(Message::text(megabyte)).await.expect("send");
    let (code, reason) = expect_close(&mut sender, "the chat's Close").await;
    assert_eq!(
        (code, reason.as_str()),
        (1009, "the chat takes messages of 64 KiB at most")
    );

    // Nobody heard it; the room still carries messages up to the limit.
    let mut third = chat_client(addr).await;
    let hello = next_json(&mut third, "a chat message").await;
    let largest = "l".repeat(wsgate::demo::CHAT_MAX_MESSAGE);
    third
        .send(Message::text(largest.clone()))
        .await
        .expect("send");
    for ws in [&mut other, &mut third] {
        let heard = next_json(ws, "a chat message").await;
        assert_eq!(
            heard["from"], hello["you"],
            "the megabyte was not passed on"
        );
        assert_eq!(heard["text"].as_str().map(str::len), Some(largest.len()));
    }
}
