//! Balancing over real backends: least connections evens out live tunnels,
//! hashing keeps a key on one server, weights are honoured, and a failed
//! connect is retried on another server.

mod common;

use std::net::SocketAddr;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn config(servers: &str, extra: &str) -> String {
    format!(
        "[timeouts]\nconnect = \"2s\"\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"u\"\n[upstreams.u]\nservers = {servers}\n{extra}\n"
    )
}

/// Connects and returns which backend (index) accepted.
async fn open(
    gw: &TestGateway,
    backends: &mut [WsBackend],
    header: Option<(&str, &str)>,
) -> (usize, tokio_tungstenite::WebSocketStream<TcpStream>) {
    let mut req = format!("ws://{}/ws", gw.addr("public"))
        .into_client_request()
        .expect("request");
    if let Some((k, v)) = header {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            http::HeaderValue::from_str(v).expect("value"),
        );
    }
    let tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let (ws, _) = within("handshake", tokio_tungstenite::client_async(req, tcp))
        .await
        .expect("handshake");
    // Exactly one backend accepts; find which.
    let index = within("a backend to accept", async {
        loop {
            for (i, b) in backends.iter_mut().enumerate() {
                if let Ok(a) = b.accepted.try_recv() {
                    // Keep the server side alive by echoing in the background.
                    let mut server = a.ws;
                    tokio::spawn(async move {
                        while let Some(Ok(m)) = server.next().await {
                            if m.is_text() && server.send(m).await.is_err() {
                                break;
                            }
                        }
                    });
                    return i;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    (index, ws)
}

async fn backends(n: usize) -> (Vec<WsBackend>, String) {
    let mut list = Vec::new();
    for _ in 0..n {
        list.push(WsBackend::start().await);
    }
    let addrs: Vec<SocketAddr> = list.iter().map(|b| b.addr).collect();
    (list, server_list(&addrs))
}

#[tokio::test]
async fn least_conn_evens_out_active_tunnels() {
    let (mut bs, servers) = backends(3).await;
    let gw = TestGateway::start(&config(&servers, "")).await;
    let mut per = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..9 {
        let (i, ws) = open(&gw, &mut bs, None).await;
        per[i].push(ws);
    }
    assert_eq!(per.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3]);
    // Backend 0 loses its tunnels: the next three all go there.
    for mut ws in per[0].drain(..) {
        ws.close(None).await.expect("close");
        while let Some(Ok(_)) = within("close", ws.next()).await {}
    }
    within("backend 0's tunnels to be gone", async {
        while gw.gateway.registry().live_count() != 6 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    for _ in 0..3 {
        let (i, ws) = open(&gw, &mut bs, None).await;
        assert_eq!(i, 0, "least_conn must refill the emptied server");
        per[i].push(ws);
    }
}

#[tokio::test]
async fn hash_keeps_a_key_on_one_server() {
    let (mut bs, servers) = backends(4).await;
    let gw = TestGateway::start(&config(
        &servers,
        "balance = \"hash\"\nhash_key = \"header:X-User\"\nhash_load_factor = 10.0",
    ))
    .await;
    let mut seen = std::collections::HashMap::new();
    let mut keep = Vec::new();
    for round in 0..3 {
        for user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
            let (i, ws) = open(&gw, &mut bs, Some(("x-user", user))).await;
            if round == 0 {
                seen.insert(user, i);
            } else {
                assert_eq!(seen[user], i, "{user} moved");
            }
            keep.push(ws);
        }
    }
    assert!(
        seen.values()
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 1,
        "keys spread over servers: {seen:?}"
    );
}

#[tokio::test]
async fn weights_are_honoured() {
    let (mut bs, _) = backends(2).await;
    let servers = format!(
        "[\"{}\", {{ addr = \"{}\", weight = 3 }}]",
        bs[0].addr, bs[1].addr
    );
    let gw = TestGateway::start(&config(&servers, "balance = \"round_robin\"")).await;
    let mut counts = [0, 0];
    let mut keep = Vec::new();
    for _ in 0..8 {
        let (i, ws) = open(&gw, &mut bs, None).await;
        counts[i] += 1;
        keep.push(ws);
    }
    assert_eq!(counts, [2, 6]);
    // And the tunnels work.
    for ws in &mut keep {
        ws.send(Message::text("w")).await.expect("send");
        assert_eq!(
            within("echo", ws.next()).await.expect("msg").expect("ok"),
            Message::text("w")
        );
    }
}

#[tokio::test]
async fn a_connect_timeout_is_retried_on_another_server() {
    // A listener whose accept queue is full never completes new connects:
    // connect times out rather than being refused.
    let stuck = tokio::net::TcpSocket::new_v4().expect("socket");
    stuck
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let stuck = stuck.listen(1).expect("listen");
    let stuck_addr = stuck.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            TcpStream::connect(stuck_addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let echo = echo_backend().await;
    let toml = config(
        &format!("[\"{stuck_addr}\", \"{echo}\"]"),
        "balance = \"round_robin\"",
    )
    .replace("connect = \"2s\"", "connect = \"300ms\"");
    let gw = TestGateway::start(&toml).await;
    for i in 0..4 {
        let mut ws = ws_connect(gw.addr("public"), "/ws").await;
        ws.send(Message::text(format!("{i}"))).await.expect("send");
        assert_eq!(
            within("echo", ws.next()).await.expect("msg").expect("ok"),
            Message::text(format!("{i}"))
        );
    }
    drop(stuck);
}
