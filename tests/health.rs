//! Active health checks against real backends: each kind marks a stopped
//! backend down within its threshold and up again once it is back, and
//! handshakes go only to healthy servers meanwhile; the `websocket` check
//! refuses a wrong Accept and a missing pong and says goodbye with Close
//! 1000; checkers survive reloads that keep their server and restart when
//! the check changes; checks speak the upstream's TLS; checkers end with a
//! drain. (Their log lines are checked in `health_log.rs`.)

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

// === a backend that can be stopped and started again ===

/// Answers `GET` without an upgrade with `200 ok`, and upgrades a WebSocket
/// request (answering pings, echoing messages, returning Close), recording
/// every request's path. Stopping it closes its listening socket, so
/// connects are refused; starting it again binds the same port.
struct Backend {
    addr: SocketAddr,
    paths: Arc<Mutex<Vec<String>>>,
    accept: Option<JoinHandle<()>>,
}

impl Backend {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut b = Self {
            addr: listener.local_addr().expect("addr"),
            paths: Arc::default(),
            accept: None,
        };
        b.serve(listener);
        b
    }

    fn serve(&mut self, listener: TcpListener) {
        let paths = self.paths.clone();
        self.accept = Some(tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve_one(tcp, paths.clone()));
            }
        }));
    }

    async fn stop(&mut self) {
        if let Some(task) = self.accept.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restart(&mut self) {
        let listener = within("the port to be free again", async {
            loop {
                match TcpListener::bind(self.addr).await {
                    Ok(l) => return l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
        .await;
        self.serve(listener);
    }

    /// Requests seen on `path`.
    fn seen(&self, path: &str) -> usize {
        self.paths
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

async fn serve_one(mut tcp: TcpStream, paths: Arc<Mutex<Vec<String>>>) {
    let head = read_head(&mut tcp).await;
    let path = head.split(' ').nth(1).unwrap_or("").to_string();
    paths.lock().unwrap().push(path);
    let Some(answer) =
        good_101(&head).filter(|_| head.to_ascii_lowercase().contains("upgrade: websocket"))
    else {
        let _ = tcp
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .await;
        return;
    };
    if tcp.write_all(&answer).await.is_err() {
        return;
    }
    let mut ws = WebSocketStream::from_raw_socket(tcp, Role::Server, None).await;
    // Reading answers pings and Close; data is echoed.
    while let Some(Ok(m)) = ws.next().await {
        if m.is_text() && ws.send(m).await.is_err() {
            break;
        }
    }
}

/// A request head, up to its blank line.
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

// === the gateway and its admin API ===

fn config(servers: &[SocketAddr], health: &str) -> String {
    format!(
        "[timeouts]\nconnect = \"2s\"\nupstream_handshake = \"2s\"\n[admin]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"u\"\n[upstreams.u]\nservers = {}\nretries = 0\nhealth = {health}\n",
        server_list(servers)
    )
}

/// `server` as `/api/upstreams` shows it in upstream `u`.
async fn server_view(gw: &TestGateway, server: SocketAddr) -> Value {
    let (status, body) = http_text(gw.admin.expect("admin"), "GET", "/api/upstreams").await;
    assert_eq!(status, 200, "{body}");
    let all: Value = serde_json::from_str(&body).expect("json");
    all.as_array()
        .expect("a list")
        .iter()
        .find(|u| u["name"] == "u")
        .and_then(|u| u["servers"].as_array())
        .and_then(|s| s.iter().find(|s| s["addr"] == server.to_string()))
        .cloned()
        .unwrap_or_else(|| panic!("{server} is not listed: {body}"))
}

/// Polls `/api/upstreams` until `server` matches `ok`; returns its view.
async fn wait_for(
    gw: &TestGateway,
    server: SocketAddr,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    within(&format!("{server} {what}"), async {
        loop {
            let v = server_view(gw, server).await;
            if ok(&v) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

async fn wait_state(gw: &TestGateway, server: SocketAddr, state: &str) -> Value {
    wait_for(gw, server, &format!("to be {state}"), |v| {
        v["state"] == state
    })
    .await
}

/// Waits until `server` has passed a probe (so it counts as checked and up).
async fn wait_checked_up(gw: &TestGateway, server: SocketAddr) -> Value {
    wait_for(gw, server, "to pass a probe while up", |v| {
        v["state"] == "up" && v["check"]["last"]["result"] == "ok"
    })
    .await
}

/// A sample of the metrics exposition, 0 when absent.
async fn metric(gw: &TestGateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (status, text) = http_text(gw.admin.expect("admin"), "GET", "/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// === each kind: down when stopped, up when back ===

async fn stopped_backend_goes_down_and_comes_back(kind: &str, failure: &str) {
    let (mut a, b) = (Backend::start().await, Backend::start().await);
    let health = match kind {
        "tcp" => "{ kind = \"tcp\", interval = \"100ms\", timeout = \"100ms\", unhealthy_threshold = 3, healthy_threshold = 2 }".to_string(),
        k => format!("{{ kind = \"{k}\", path = \"/health\", interval = \"100ms\", timeout = \"100ms\", unhealthy_threshold = 3, healthy_threshold = 2 }}"),
    };
    let gw = TestGateway::start(&config(&[a.addr, b.addr], &health)).await;
    for s in [a.addr, b.addr] {
        let v = wait_checked_up(&gw, s).await;
        assert_eq!(v["check"]["kind"], kind, "{v}");
    }
    if kind != "tcp" {
        assert!(
            a.seen("/health") > 0 && b.seen("/health") > 0,
            "the check's path is requested"
        );
    }

    a.stop().await;
    let down = wait_state(&gw, a.addr, "down").await;
    assert_eq!(down["check"]["last"]["result"], failure, "{down}");
    let a_label = a.addr.to_string();
    // Down only once the threshold's failures came in a row (whatever
    // each one saw: under load a probe may also time out).
    let probes = metric(&gw, "wsgate_health_checks_total", &[("server", &a_label)]).await;
    let passed = metric(
        &gw,
        "wsgate_health_checks_total",
        &[("server", &a_label), ("result", "ok")],
    )
    .await;
    let failed = probes - passed;
    assert!(failed >= 3.0, "down after {failed} failures");
    assert_eq!(
        metric(
            &gw,
            "wsgate_server_state",
            &[("server", &a_label), ("state", "down")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            "wsgate_server_state",
            &[("server", &a_label), ("state", "up")]
        )
        .await,
        0.0
    );

    // While a is down, every new handshake goes to b.
    for _ in 0..6 {
        let mut ws = ws_connect(gw.addr("public"), "/chat").await;
        echo_once(&mut ws, "hello").await;
    }
    assert_eq!((a.seen("/chat"), b.seen("/chat")), (0, 6));

    a.restart().await;
    let up = wait_state(&gw, a.addr, "up").await;
    assert_eq!(up["check"]["last"]["result"], "ok", "{up}");
    assert_eq!(
        metric(
            &gw,
            "wsgate_server_state",
            &[("server", &a_label), ("state", "up")]
        )
        .await,
        1.0
    );
    // Up again: a takes handshakes again.
    within("a handshake to reach a again", async {
        while a.seen("/chat") == 0 {
            let mut ws = ws_connect(gw.addr("public"), "/chat").await;
            echo_once(&mut ws, "back").await;
        }
    })
    .await;
}

#[tokio::test]
async fn tcp_check_marks_a_stopped_backend_down_and_up_again() {
    stopped_backend_goes_down_and_comes_back("tcp", "refused").await;
}

#[tokio::test]
async fn http_check_marks_a_stopped_backend_down_and_up_again() {
    stopped_backend_goes_down_and_comes_back("http", "refused").await;
}

#[tokio::test]
async fn websocket_check_marks_a_stopped_backend_down_and_up_again() {
    stopped_backend_goes_down_and_comes_back("websocket", "refused").await;
}

// === what the websocket check insists on ===

#[tokio::test]
async fn a_101_with_a_wrong_accept_fails_the_websocket_check() {
    let backend = RawBackend::start(|_| {
        Some(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n".to_vec())
    })
    .await;
    let health = "{ kind = \"websocket\", path = \"/live?deep=1\", interval = \"200ms\", timeout = \"200ms\", unhealthy_threshold = 1 }";
    let gw = TestGateway::start(&config(&[backend.addr], health)).await;
    let down = wait_state(&gw, backend.addr, "down").await;
    assert_eq!(down["check"]["last"]["result"], "bad_accept", "{down}");
    let reason = down["check"]["last"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("Sec-WebSocket-Accept"), "{reason}");
    // What the backend was asked: a real upgrade on the check's path, with
    // the server's address as Host and a fresh 16-byte key.
    let first = backend.received.lock().unwrap()[0].clone();
    let head = String::from_utf8_lossy(&first).to_ascii_lowercase();
    assert!(head.starts_with("get /live?deep=1 http/1.1\r\n"), "{head}");
    for line in [
        format!("host: {}\r\n", backend.addr),
        "upgrade: websocket\r\n".to_string(),
        "sec-websocket-version: 13\r\n".to_string(),
    ] {
        assert!(head.contains(&line), "{line:?} missing in {head}");
    }
    let key = request_key(&String::from_utf8_lossy(&first)).expect("a key");
    assert_eq!(base64_len(&key), 16, "{key}");
    // Every probe sends its own key.
    within("a second probe", async {
        while backend.received.lock().unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let second = request_key(&String::from_utf8_lossy(
        &backend.received.lock().unwrap()[1],
    ))
    .expect("a key");
    assert_ne!(key, second);
}

/// Decoded length of a base64 string with padding.
fn base64_len(s: &str) -> usize {
    s.len() / 4 * 3 - s.bytes().rev().take_while(|b| *b == b'=').count()
}

#[tokio::test]
async fn a_backend_that_never_answers_the_ping_fails_the_websocket_check() {
    let (addr, mut sockets) = raw_ws_backend(b"").await;
    let health = "{ kind = \"websocket\", interval = \"100ms\", timeout = \"100ms\", unhealthy_threshold = 2 }";
    let gw = TestGateway::start(&config(&[addr], health)).await;
    // Every upgrade succeeds; the backend reads the ping and answers it with
    // a pong of another payload and a message, never the matching pong.
    let pings = Arc::new(Mutex::new(Vec::new()));
    let seen = pings.clone();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Some(mut tcp) = sockets.recv().await {
            let (b0, ping) = read_frame(&mut tcp).await;
            seen.lock().unwrap().push((b0, ping.clone()));
            let mut other = vec![0x8A, 8];
            other.extend(ping.iter().map(|b| !b));
            other.extend_from_slice(&[0x81, 2, b'h', b'i']);
            let _ = tcp.write_all(&other).await;
            open.push(tcp);
        }
    });
    let down = wait_state(&gw, addr, "down").await;
    assert_eq!(down["check"]["last"]["result"], "no_pong", "{down}");
    let reason = down["check"]["last"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("no pong"), "{reason}");
    let pings = pings.lock().unwrap().clone();
    assert!(
        pings.iter().all(|(b0, p)| *b0 == 0x89 && p.len() == 8),
        "FIN + ping, 8 bytes: {pings:?}"
    );
    assert_ne!(pings[0].1, pings[1].1, "each ping has its own payload");
}

#[tokio::test]
async fn a_passing_websocket_check_ends_with_close_1000() {
    let (addr, mut sockets) = raw_ws_backend(b"").await;
    let health = "{ kind = \"websocket\", interval = \"1s\", timeout = \"1s\" }";
    let gw = TestGateway::start(&config(&[addr], health)).await;
    let mut tcp = within("the check's upgrade", sockets.recv())
        .await
        .expect("a socket");
    // An unrelated pong and a data frame first: the check skips both.
    tcp.write_all(&[0x8A, 0x01, b'x', 0x82, 0x02, 1, 2])
        .await
        .expect("write");
    let (b0, ping) = read_frame(&mut tcp).await;
    assert_eq!((b0, ping.len()), (0x89, 8));
    let mut pong = vec![0x8A, 8];
    pong.extend_from_slice(&ping);
    tcp.write_all(&pong).await.expect("pong");
    // Then the check closes: a masked Close frame with code 1000 and no reason.
    let mut close = [0u8; 8];
    within("the Close", tcp.read_exact(&mut close))
        .await
        .expect("close frame");
    assert_eq!(&close[..2], [0x88, 0x82], "FIN + Close, masked, 2 bytes");
    let code: Vec<u8> = close[6..]
        .iter()
        .zip(&close[2..6])
        .map(|(b, k)| b ^ k)
        .collect();
    assert_eq!(code, [0x03, 0xE8], "1000");
    tcp.write_all(&[0x88, 0x02, 0x03, 0xE8])
        .await
        .expect("close reply");
    // The check then ends the connection.
    let mut rest = Vec::new();
    within("the check to hang up", tcp.read_to_end(&mut rest))
        .await
        .expect("eof");
    assert!(rest.is_empty(), "{rest:?}");
    let v = wait_for(&gw, addr, "to have passed a probe", |v| {
        v["check"]["last"]["result"] == "ok"
    })
    .await;
    assert!(v["check"]["last"]["latency_ms"].as_f64().is_some(), "{v}");
    assert_eq!(v["state"], "up");
}

#[tokio::test]
async fn an_http_check_wants_its_status_and_sends_the_configured_host() {
    let backend = RawBackend::start(|_| {
        Some(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_vec())
    })
    .await;
    let health = "{ kind = \"http\", path = \"/ready\", host = \"chat.internal\", expect_status = 204, interval = \"200ms\", timeout = \"200ms\", unhealthy_threshold = 2 }";
    let gw = TestGateway::start(&config(&[backend.addr], health)).await;
    let down = wait_state(&gw, backend.addr, "down").await;
    assert_eq!(down["check"]["last"]["result"], "status", "{down}");
    assert_eq!(
        down["check"]["last"]["reason"], "answered 503, expected 204",
        "{down}"
    );
    let head = String::from_utf8_lossy(&backend.received.lock().unwrap()[0]).to_ascii_lowercase();
    assert!(head.starts_with("get /ready http/1.1\r\n"), "{head}");
    assert!(head.contains("host: chat.internal\r\n"), "{head}");
    assert!(!head.contains("upgrade"), "{head}");
}

// === reloads ===

fn write_config(gw: &TestGateway, text: &str) {
    std::fs::write(gw.dir.path().join("wsgate.toml"), text).expect("write config");
}

async fn check_id(gw: &TestGateway, server: SocketAddr) -> (u64, u64) {
    let v = server_view(gw, server).await;
    let id = v["check"]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no checker: {v}"));
    (id, v["check"]["probes"].as_u64().unwrap_or(0))
}

#[tokio::test]
async fn a_checker_survives_reloads_that_keep_its_server_and_restarts_when_its_check_changes() {
    let dead = dead_addr().await;
    let live = Backend::start().await;
    let check =
        "{ kind = \"tcp\", interval = \"50ms\", timeout = \"50ms\", unhealthy_threshold = 2 }";
    let gw = TestGateway::start(&config(&[dead, live.addr], check)).await;
    wait_state(&gw, dead, "down").await;
    let (id, probes) = check_id(&gw, dead).await;
    let (live_id, _) = check_id(&gw, live.addr).await;

    // A reload that changes something else: the same checker goes on, its
    // count of probes with it, and the server stays down.
    write_config(
        &gw,
        &format!(
            "{}drain_timeout = \"30s\"\n",
            config(&[dead, live.addr], check)
        ),
    );
    gw.gateway.reload().await.expect("reload");
    let v = server_view(&gw, dead).await;
    assert_eq!(v["state"], "down", "{v}");
    assert_eq!(v["check"]["id"], id, "the checker was restarted: {v}");
    assert!(v["check"]["probes"].as_u64() >= Some(probes), "{v}");

    // A reload that changes the check: a new checker, which starts from the
    // server's verdict (still down) rather than from scratch.
    let slower =
        "{ kind = \"tcp\", interval = \"60ms\", timeout = \"50ms\", unhealthy_threshold = 2 }";
    write_config(&gw, &config(&[dead, live.addr], slower));
    gw.gateway.reload().await.expect("reload");
    let v = server_view(&gw, dead).await;
    assert_eq!(v["state"], "down", "{v}");
    let (new_id, _) = check_id(&gw, dead).await;
    assert_ne!(new_id, id, "the checker was not restarted: {v}");
    let (live_new, _) = check_id(&gw, live.addr).await;
    assert_ne!(live_new, live_id);

    // A reload that removes the dead server: its checker stops; the live
    // one's goes on.
    write_config(&gw, &config(&[live.addr], slower));
    gw.gateway.reload().await.expect("reload");
    assert!(gw.gateway.shared().health.report("u", dead).is_none());
    assert_eq!(check_id(&gw, live.addr).await.0, live_new);

    // Adding it back without a check: no checker, and nothing keeps it down.
    write_config(&gw, &format!("[timeouts]\nconnect = \"2s\"\n[admin]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"u\"\n[upstreams.u]\nservers = {}\n", server_list(&[dead, live.addr])));
    gw.gateway.reload().await.expect("reload");
    for s in [dead, live.addr] {
        let v = server_view(&gw, s).await;
        assert_eq!(
            (&v["state"], &v["check"]),
            (&Value::from("up"), &Value::Null),
            "{v}"
        );
    }
}

#[tokio::test]
async fn removing_the_check_brings_a_down_server_back() {
    let dead = dead_addr().await;
    let check =
        "{ kind = \"tcp\", interval = \"50ms\", timeout = \"50ms\", unhealthy_threshold = 1 }";
    let gw = TestGateway::start(&config(&[dead], check)).await;
    wait_state(&gw, dead, "down").await;
    let without = config(&[dead], check).replace(&format!("health = {check}\n"), "");
    write_config(&gw, &without);
    gw.gateway.reload().await.expect("reload");
    let v = server_view(&gw, dead).await;
    assert_eq!(
        (&v["state"], &v["check"]),
        (&Value::from("up"), &Value::Null),
        "{v}"
    );
}

/// DNS churn (a headless Service) adds and removes servers all day: the
/// series of a server that is gone must go with it, or the label set grows
/// without bound.
#[tokio::test]
async fn a_removed_server_takes_its_health_check_series_with_it() {
    let dead = dead_addr().await;
    let live = dead_addr().await;
    let check =
        "{ kind = \"tcp\", interval = \"50ms\", timeout = \"50ms\", unhealthy_threshold = 1 }";
    let gw = TestGateway::start(&config(&[dead, live], check)).await;
    wait_state(&gw, dead, "down").await;
    let series = |addr: SocketAddr| format!("server=\"{addr}\"");
    let text = |gw: &TestGateway| {
        let admin = gw.admin.expect("admin");
        async move { http_text(admin, "GET", "/metrics").await.1 }
    };
    assert!(
        text(&gw)
            .await
            .lines()
            .any(|l| l.starts_with("wsgate_health_checks_total") && l.contains(&series(dead))),
        "the dead server's probes are counted"
    );
    write_config(&gw, &config(&[live], check));
    gw.gateway.reload().await.expect("reload");
    let after = text(&gw).await;
    let left: Vec<&str> = after
        .lines()
        // wsgate_server_state shows a removed server as draining until its
        // drain ends, by design; nothing else may name it.
        .filter(|l| l.starts_with("wsgate_") && !l.starts_with("wsgate_server_state"))
        .filter(|l| l.contains(&series(dead)))
        .collect();
    assert!(left.is_empty(), "series of a removed server: {left:#?}");
}

// === TLS ===

/// A WebSocket echo backend behind TLS with a certificate for `localhost`
/// signed by `backend-ca.pem` in `dir`.
async fn tls_backend(dir: &std::path::Path) -> SocketAddr {
    let (acceptor, _) = backend_tls_acceptor(dir, None);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                // Reading answers pings and Close.
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    addr
}

async fn tls_gateway(kind: &str, sni: &str) -> (TestGateway, SocketAddr) {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = tls_backend(dir.path()).await;
    let toml = format!(
        "{}tls = true\nsni = \"{sni}\"\nca_file = \"backend-ca.pem\"\n",
        config(&[backend], &format!("{{ kind = \"{kind}\", interval = \"200ms\", timeout = \"200ms\", unhealthy_threshold = 1 }}"))
    );
    (TestGateway::start_in(dir, &toml).await, backend)
}

#[tokio::test]
async fn checks_speak_the_upstreams_tls() {
    let (gw, backend) = tls_gateway("websocket", "localhost").await;
    let v = wait_for(&gw, backend, "to pass a websocket check over TLS", |v| {
        v["check"]["last"]["result"] == "ok"
    })
    .await;
    assert_eq!(v["state"], "up", "{v}");
}

#[tokio::test]
async fn a_tcp_check_fails_on_a_certificate_for_another_name() {
    let (gw, backend) = tls_gateway("tcp", "other.test").await;
    let v = wait_state(&gw, backend, "down").await;
    assert_eq!(v["check"]["last"]["result"], "tls", "{v}");
}

// === stopping ===

#[tokio::test]
async fn checkers_end_when_wsgate_drains() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wsgate.toml");
    let check = "{ kind = \"websocket\", interval = \"50ms\", timeout = \"50ms\" }";
    std::fs::write(&path, config(&[backend.addr], check)).expect("write config");
    let config = wsgate::config::load(&path).expect("valid");
    let listener = wsgate::front::listener::BoundListener {
        name: "public".into(),
        socket: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let gateway = wsgate::Gateway::start(config, vec![listener], shutdown).expect("start");
    within("a probe", async {
        while backend.seen("/") == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    gateway.drain();
    // Every task, the checkers included, ends: waiting returns.
    within("wsgate to stop after a drain", gateway.wait()).await;
}
