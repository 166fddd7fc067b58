//! Passive checks, ejection and its backoff, fail-fast 503 with
//! `Retry-After`, slow start and `close_on_unhealthy`, over real sockets.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// `simple_config` with an admin listener and `extra` keys in `[upstreams.u]`.
fn config(servers: &[SocketAddr], extra: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n{}{extra}\n",
        simple_config(servers)
    )
}

/// A backend that counts the connections it accepts; while `refuse` is
/// set it drops each at once (a handshake failure), otherwise it answers
/// the upgrade with a good 101 and hands the socket to the test.
struct Flaky {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    refuse: Arc<AtomicBool>,
    tunnels: mpsc::Receiver<TcpStream>,
}

impl Flaky {
    async fn start(refuse: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let refuse = Arc::new(AtomicBool::new(refuse));
        let (tx, tunnels) = mpsc::channel(16);
        let (count, flag) = (accepted.clone(), refuse.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                if flag.load(Ordering::SeqCst) {
                    drop(tcp);
                    continue;
                }
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Some(tcp) = answer_101(tcp).await {
                        let _ = tx.send(tcp).await;
                    }
                });
            }
        });
        Self {
            addr,
            accepted,
            refuse,
            tunnels,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Reads a request head and answers it with a good 101.
async fn answer_101(mut tcp: TcpStream) -> Option<TcpStream> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await.ok().filter(|&n| n > 0)?;
        head.extend_from_slice(&buf[..n]);
    }
    let answer = good_101(&String::from_utf8_lossy(&head))?;
    tcp.write_all(&answer).await.ok()?;
    Some(tcp)
}

/// One handshake on a fresh connection: (status, head, body).
async fn handshake(gw: &TestGateway) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let (status, head, body) =
        raw_exchange(&mut tcp, handshake_request("/ws", "a").as_bytes()).await;
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

/// The servers of upstream `u` in `/api/upstreams`.
async fn servers(gw: &TestGateway) -> Vec<Value> {
    let (status, body) = http_text(gw.admin.expect("admin"), "GET", "/api/upstreams").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v.as_array()
        .and_then(|ups| ups.iter().find(|u| u["name"] == "u"))
        .and_then(|u| u["servers"].as_array())
        .cloned()
        .expect("upstream u")
}

async fn metrics(gw: &TestGateway) -> String {
    http_text(gw.admin.expect("admin"), "GET", "/metrics")
        .await
        .1
}

/// Waits until the first server's ejection is over in `/api/upstreams`.
async fn wait_not_ejected(gw: &TestGateway) {
    within("the ejection to end", async {
        while !servers(gw).await[0]["ejected_until"].is_null() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn with_every_server_ejected_requests_get_503_and_retry_after_without_a_connect() {
    let (a, b) = (Flaky::start(true).await, Flaky::start(true).await);
    let gw = TestGateway::start(&config(
        &[a.addr, b.addr],
        "max_fails = 2\neject_for = \"1m\"",
    ))
    .await;
    // A broken exchange is not retried (the request reached a backend):
    // each handshake fails on one server until both have failed twice.
    let mut failed = 0;
    let (status, head, body) = loop {
        let (status, head, body) = handshake(&gw).await;
        if status != 502 {
            break (status, head, body);
        }
        failed += 1;
        assert!(failed <= 4, "both ejected after two failures each");
    };
    assert_eq!(failed, 4);
    assert_eq!(
        (a.accepted(), b.accepted()),
        (2, 2),
        "no connect once ejected"
    );
    assert_eq!(status, 503, "{head}");
    assert!(body.contains("no usable server in upstream u"), "{body}");
    let after: u64 = header_value(&head, "retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=60).contains(&after), "{after}");
    // Plain requests too, and fail fast: no server saw another connection.
    let (status, body) = http_text(gw.addr("public"), "GET", "/poll").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!((a.accepted(), b.accepted()), (2, 2));
    let m = metrics(&gw).await;
    assert!(
        m.contains("wsgate_upstream_unavailable_total{upstream=\"u\"} 2"),
        "{m}"
    );
    for s in [a.addr, b.addr] {
        let line = format!("wsgate_server_ejections_total{{upstream=\"u\",server=\"{s}\"}} 1");
        within("the ejection to be counted", async {
            while !metrics(&gw).await.contains(&line) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
}

#[tokio::test]
async fn connect_failures_eject_with_a_doubling_backoff_that_a_success_resets() {
    // Bound but not listening: connects are refused until `listen`.
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    let gw = TestGateway::start(&config(
        &[addr],
        "retries = 0\nmax_fails = 2\neject_for = \"300ms\"\neject_max = \"1m\"",
    ))
    .await;
    assert_eq!(handshake(&gw).await.0, 502);
    let s = &servers(&gw).await[0];
    assert_json_fields(s, &[("fails", 1.into()), ("ejections", 0.into())]);
    assert!(s["ejected_until"].is_null(), "{s}");
    assert_eq!(handshake(&gw).await.0, 502);
    let s = &servers(&gw).await[0];
    assert_json_fields(
        s,
        &[
            ("fails", 0.into()),
            ("ejections", 1.into()),
            ("last_ejection_ms", 300.into()),
        ],
    );
    let reason = s["last_ejection_reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("2 failures in "), "{reason}");
    assert!(reason.contains("failed"), "{reason}");
    // (While it is ejected, requests get 503 at once: see the first test,
    // whose ejection is long enough to be asserted on without a race.)

    // Back after 300 ms; the next failure ejects again, for twice as long.
    wait_not_ejected(&gw).await;
    assert_eq!(handshake(&gw).await.0, 502);
    let s = &servers(&gw).await[0];
    assert_json_fields(
        s,
        &[("ejections", 2.into()), ("last_ejection_ms", 600.into())],
    );
    wait_not_ejected(&gw).await;

    // The server comes up: a success resets the count and the backoff.
    let listener = socket.listen(16).expect("listen");
    let backend = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        answer_101(tcp).await
    });
    assert_eq!(handshake(&gw).await.0, 101);
    drop(within("the backend", backend).await);
    // It goes down again (the listener is gone): two failures to eject,
    // and for `eject_for` again.
    assert_eq!(handshake(&gw).await.0, 502);
    let s = &servers(&gw).await[0];
    assert_json_fields(s, &[("fails", 1.into()), ("ejections", 2.into())]);
    assert!(
        s["ejected_until"].is_null(),
        "one failure is not enough: {s}"
    );
    assert_eq!(handshake(&gw).await.0, 502);
    let s = &servers(&gw).await[0];
    assert_json_fields(
        s,
        &[("ejections", 3.into()), ("last_ejection_ms", 300.into())],
    );
}

#[tokio::test]
async fn a_backend_answering_403_is_not_ejected() {
    let backend = RawBackend::start(|_| {
        Some(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_vec())
    })
    .await;
    let gw = TestGateway::start(&config(&[backend.addr], "retries = 0\nmax_fails = 1")).await;
    for _ in 0..4 {
        assert_eq!(handshake(&gw).await.0, 403, "its answer, every time");
    }
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        4,
        "every handshake reached it"
    );
    let s = &servers(&gw).await[0];
    assert_json_fields(s, &[("fails", 0.into()), ("ejections", 0.into())]);
}

#[tokio::test]
async fn a_server_added_by_a_reload_ramps_up_under_slow_start() {
    let (old, new) = (echo_backend().await, echo_backend().await);
    let gw = TestGateway::start(&config(&[old], "slow_start = \"1h\"")).await;
    std::fs::write(
        gw.dir.path().join("wsgate.toml"),
        config(&[old, new], "slow_start = \"1h\""),
    )
    .expect("write config");
    gw.gateway.reload().await.expect("reload");
    let s = servers(&gw).await;
    assert_eq!(s[1]["slow_start"], true, "{s:?}");
    assert_eq!(s[0]["slow_start"], false, "{s:?}");
    // Long-lived tunnels: without slow start least_conn would give the new
    // server half of them (both start at zero); ramping, it admits 10%.
    let n = 40;
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(ws_connect(gw.addr("public"), "/ws").await);
    }
    gw.wait_live(n).await;
    let s = servers(&gw).await;
    let (on_old, on_new) = (
        s[0]["active"].as_u64().unwrap_or(0),
        s[1]["active"].as_u64().unwrap_or(0),
    );
    assert_eq!(on_old + on_new, n as u64);
    assert!(on_new <= 13, "{on_new} of {n} went to the ramping server");
}

#[tokio::test]
async fn close_on_unhealthy_closes_an_ejected_servers_tunnels_with_1001() {
    let mut backend = Flaky::start(false).await;
    let gw = TestGateway::start(&config(
        &[backend.addr],
        "retries = 0\nmax_fails = 1\neject_for = \"1m\"\nclose_on_unhealthy = true\ndrain_spread = \"100ms\"",
    ))
    .await;
    let mut client = ws_connect(gw.addr("public"), "/ws").await;
    let mut server_side = within("the tunnel", backend.tunnels.recv())
        .await
        .expect("a tunnel");
    // The server starts failing handshakes: one failure ejects it.
    backend.refuse.store(true, Ordering::SeqCst);
    assert_eq!(handshake(&gw).await.0, 502);
    let (code, reason) = expect_close(&mut client, "the client's Close").await;
    assert_eq!((code, reason.as_str()), (1001, "server ejected"));
    let (first, payload) = read_frame(&mut server_side).await;
    assert_eq!(first, 0x88, "a Close frame to the backend");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
}

#[tokio::test]
async fn close_on_unhealthy_closes_tunnels_when_the_health_verdict_turns() {
    let mut backend = Flaky::start(false).await;
    let gw = TestGateway::start(&config(
        &[backend.addr],
        "close_on_unhealthy = true\ndrain_spread = \"100ms\"",
    ))
    .await;
    let mut client = ws_connect(gw.addr("public"), "/ws").await;
    let mut server_side = within("the tunnel", backend.tunnels.recv())
        .await
        .expect("a tunnel");
    // What the active health checker does when a server fails its checks.
    let server = gw
        .gateway
        .shared()
        .snapshot
        .load()
        .upstream("u")
        .expect("u")
        .servers[0]
        .clone();
    assert!(server.set_healthy(false));
    let (code, reason) = expect_close(&mut client, "the client's Close").await;
    assert_eq!((code, reason.as_str()), (1001, "server unhealthy"));
    let (first, payload) = read_frame(&mut server_side).await;
    assert_eq!(first, 0x88);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
}

#[tokio::test]
async fn without_close_on_unhealthy_tunnels_of_an_ejected_server_stay() {
    let mut backend = Flaky::start(false).await;
    let gw = TestGateway::start(&config(
        &[backend.addr],
        "retries = 0\nmax_fails = 1\neject_for = \"1m\"",
    ))
    .await;
    let mut client = ws_connect(gw.addr("public"), "/ws").await;
    let mut server_side = within("the tunnel", backend.tunnels.recv())
        .await
        .expect("a tunnel");
    backend.refuse.store(true, Ordering::SeqCst);
    assert_eq!(handshake(&gw).await.0, 502);
    assert_eq!(handshake(&gw).await.0, 503, "ejected");
    // The established tunnel still carries frames.
    use futures_util::SinkExt;
    client
        .send(tokio_tungstenite::tungstenite::Message::text("still here"))
        .await
        .expect("send");
    let (first, payload) = read_frame(&mut server_side).await;
    assert_eq!(
        (first, payload.as_slice()),
        (0x81, b"still here".as_slice())
    );
}

#[tokio::test]
async fn plain_requests_count_failures_and_eject_too() {
    let dead = dead_addr().await;
    let gw = TestGateway::start(&config(
        &[dead],
        "retries = 0\nmax_fails = 2\neject_for = \"1m\"",
    ))
    .await;
    for _ in 0..2 {
        let (status, body) = http_text(gw.addr("public"), "GET", "/poll").await;
        assert_eq!(status, 502, "{body}");
    }
    let (status, body) = http_text(gw.addr("public"), "GET", "/poll").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no usable server in upstream u"), "{body}");
    let s = &servers(&gw).await[0];
    assert_json_fields(s, &[("ejections", 1.into())]);
    // And a handshake meets the same ejection.
    assert_eq!(handshake(&gw).await.0, 503);
}

#[tokio::test]
async fn watchers_follow_reloads_and_read_close_on_unhealthy_when_it_matters() {
    let mut backend = Flaky::start(false).await;
    let other = echo_backend().await;
    let extra = "retries = 0\nmax_fails = 1\neject_for = \"1m\"\ndrain_spread = \"100ms\"";
    let gw = TestGateway::start(&config(&[backend.addr, other], extra)).await;
    let watchers = || gw.gateway.shared().ejection_watchers.count();
    assert_eq!(watchers(), 2, "one per server");
    // A reload removes one server and turns close_on_unhealthy on for the
    // one it keeps, which keeps its watcher.
    std::fs::write(
        gw.dir.path().join("wsgate.toml"),
        config(
            &[backend.addr],
            &format!("{extra}\nclose_on_unhealthy = true"),
        ),
    )
    .expect("write config");
    gw.gateway.reload().await.expect("reload");
    assert_eq!(watchers(), 1, "the removed server's watcher stopped");
    let mut client = ws_connect(gw.addr("public"), "/ws").await;
    let mut server_side = within("the tunnel", backend.tunnels.recv())
        .await
        .expect("a tunnel");
    backend.refuse.store(true, Ordering::SeqCst);
    assert_eq!(handshake(&gw).await.0, 502);
    let (code, _) = expect_close(&mut client, "the client's Close").await;
    assert_eq!(code, 1001);
    let (first, payload) = read_frame(&mut server_side).await;
    assert_eq!(first, 0x88);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
}

/// The ejection series of a server the config no longer has goes with it
/// (DNS churn must not grow the label set); a server that stays keeps its.
#[tokio::test]
async fn a_removed_server_takes_its_ejection_series_with_it() {
    let (a, b) = (Flaky::start(true).await, Flaky::start(false).await);
    let gw = TestGateway::start(&config(&[a.addr], "max_fails = 1\neject_for = \"1m\"")).await;
    let (status, _, _) = handshake(&gw).await;
    assert_eq!(status, 502);
    let line =
        |s: SocketAddr| format!("wsgate_server_ejections_total{{upstream=\"u\",server=\"{s}\"}}");
    within("the ejection to be counted", async {
        while !metrics(&gw).await.contains(&line(a.addr)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    std::fs::write(
        gw.dir.path().join("wsgate.toml"),
        config(&[b.addr], "max_fails = 1\neject_for = \"1m\""),
    )
    .expect("write config");
    gw.gateway.reload().await.expect("reload");
    let m = metrics(&gw).await;
    assert!(!m.contains(&line(a.addr)), "{m}");
}
