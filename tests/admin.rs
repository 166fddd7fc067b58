//! The admin API and `/metrics`, against real traffic: probes and the
//! bearer token, exact Prometheus values after known WebSocket exchanges,
//! the connection list and its filters, closing one connection, the
//! upstream view, draining and re-enabling a server, rebalancing, and the
//! config view: in the config's own spelling, every key of the README's
//! reference, and no secret.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wsgate::observe::access::{EndReason, Side};

type Ws = WebSocketStream<TcpStream>;

const TOKEN: &str = "s3cret-admin-token-4f9c";

// === admin HTTP ===

/// One admin answer: status, raw head, body text.
struct Resp {
    status: u16,
    head: String,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// Asserts the status and that the body is a JSON `{"error": "..."}`.
    fn assert_error(&self, status: u16, what: &str) {
        assert_eq!(self.status, status, "{what}: {} {}", self.head, self.body);
        let v = self.json();
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: no JSON error in {}",
            self.body
        );
        assert_eq!(
            header_value(&self.head, "content-type").as_deref(),
            Some("application/json"),
            "{what}"
        );
    }
}

/// Sends one request to the admin listener with `Connection: close`.
async fn request(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>) -> Resp {
    let mut tcp = TcpStream::connect(addr).await.expect("connect admin");
    let auth = auth.map_or_else(String::new, |a| format!("Authorization: {a}\r\n"));
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: admin.test\r\nConnection: close\r\n{auth}\r\n");
    let (status, head, body) = raw_exchange(&mut tcp, req.as_bytes()).await;
    Resp {
        status,
        head,
        body: String::from_utf8(body).expect("utf-8 body"),
    }
}

/// The admin API of a test gateway, with or without a token.
struct Admin {
    addr: SocketAddr,
    token: Option<String>,
}

impl Admin {
    fn of(gw: &TestGateway, token: Option<&str>) -> Self {
        Self {
            addr: gw.admin.expect("the config has [admin]"),
            token: token.map(str::to_string),
        }
    }

    async fn call(&self, method: &str, path: &str) -> Resp {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        request(self.addr, method, path, auth.as_deref()).await
    }

    async fn get(&self, path: &str) -> Resp {
        self.call("GET", path).await
    }

    /// GET expecting 200 and JSON.
    async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    }

    async fn scrape(&self) -> Scraped {
        let r = self.get("/metrics").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            header_value(&r.head, "content-type")
                .is_some_and(|c| c.starts_with("application/openmetrics-text")),
            "{}",
            r.head
        );
        assert!(r.body.trim_end().ends_with("# EOF"), "{}", r.body);
        let scrape = prometheus_parse::Scrape::parse(r.body.lines().map(|l| Ok(l.to_string())))
            .expect("parse exposition");
        Scraped {
            text: r.body,
            scrape,
        }
    }

    /// The server entries of upstream `name` from `/api/upstreams`.
    async fn servers(&self, name: &str) -> Vec<Value> {
        let ups = self.get_json("/api/upstreams").await;
        let up = ups
            .as_array()
            .expect("array")
            .iter()
            .find(|u| u["name"] == name)
            .unwrap_or_else(|| panic!("no upstream {name} in {ups}"))
            .clone();
        up["servers"].as_array().expect("servers").clone()
    }

    /// The entry of server `addr` in upstream `name`.
    async fn server(&self, name: &str, addr: SocketAddr) -> Value {
        self.servers(name)
            .await
            .into_iter()
            .find(|s| s["addr"] == addr.to_string())
            .unwrap_or_else(|| panic!("no server {addr} in upstream {name}"))
    }

    /// Polls `/api/upstreams` until `addr`'s `active` is `n`.
    async fn wait_active(&self, name: &str, addr: SocketAddr, n: u64) {
        within(&format!("{addr} to have {n} active tunnels"), async {
            while self.server(name, addr).await["active"] != n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

// === metrics ===

struct Scraped {
    text: String,
    scrape: prometheus_parse::Scrape,
}

impl Scraped {
    /// Values of every series of `name` carrying all of `labels`.
    fn values(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name} is not a single value: {other:?}"),
            })
            .collect()
    }

    /// The sum over the matching series; at least one must exist.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let v = self.values(name, labels);
        assert!(
            !v.is_empty(),
            "no series {name}{labels:?} in\n{}",
            self.text
        );
        v.iter().sum()
    }
}

// === WebSocket helpers ===

/// Client sends `text`, the backend echoes it by hand, the client reads it back.
async fn roundtrip(client: &mut Ws, server: &mut Ws, text: &str) {
    client.send(Message::text(text)).await.expect("send");
    let got = within("the backend to read", server.next())
        .await
        .expect("backend stream open")
        .expect("backend read");
    assert_eq!(got, Message::text(text), "backend got something else");
    server.send(got).await.expect("backend echo");
    let back = within("the client to read the echo", client.next())
        .await
        .expect("client stream open")
        .expect("client read");
    assert_eq!(back, Message::text(text), "client got something else");
}

/// Connects a client and waits for its tunnel to be registered, so ids
/// (and "oldest first") follow the order of the calls.
async fn open(gw: &TestGateway, listener: &str, path: &str) -> Ws {
    let before = gw.gateway.registry().live_count();
    let ws = ws_connect(gw.addr(listener), path).await;
    gw.wait_live(before + 1).await;
    ws
}

/// Which of two backends accepted the next connection: 0 for `a`, 1 for `b`.
async fn accept_either(a: &mut WsBackend, b: &mut WsBackend) -> (usize, Ws) {
    within("one of the backends to accept", async {
        tokio::select! {
            Some(x) = a.accepted.recv() => (0, x.ws),
            Some(x) = b.accepted.recv() => (1, x.ws),
        }
    })
    .await
}

fn is_hex12(s: &str) -> bool {
    s.len() == 12 && s.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
}

// === 1. probes and token ===

#[tokio::test]
async fn probes_are_open_and_everything_else_needs_the_token() {
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).expect("token file");
    let toml = format!(
        "{}\n[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"token\"\n",
        simple_config(&[echo])
    );
    let gw = TestGateway::start_in(dir, &toml).await;
    let addr = gw.admin.expect("admin");
    let good = format!("Bearer {TOKEN}");

    for path in ["/healthz", "/readyz"] {
        let r = request(addr, "GET", path, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(
            header_value(&r.head, "content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            r.json()["status"],
            if path == "/healthz" { "ok" } else { "ready" }
        );
    }

    let bad = [
        None,
        Some("Bearer wrong".to_string()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_string()),
        Some("Bearer ".to_string()),
    ];
    for path in [
        "/metrics",
        "/api/connections",
        "/api/upstreams",
        "/api/config",
        "/api/connections/1",
    ] {
        for auth in &bad {
            let r = request(addr, "GET", path, auth.as_deref()).await;
            r.assert_error(401, &format!("{path} with {auth:?}"));
            assert_eq!(
                header_value(&r.head, "www-authenticate").as_deref(),
                Some("Bearer"),
                "{path}"
            );
            assert!(!r.body.contains(TOKEN));
        }
    }
    for path in [
        "/metrics",
        "/api/connections",
        "/api/upstreams",
        "/api/config",
    ] {
        let r = request(addr, "GET", path, Some(&good)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(header_value(&r.head, "www-authenticate").is_none());
    }
    // Actions are guarded as well.
    for (method, path) in [
        ("DELETE", "/api/connections/1"),
        ("POST", "/api/upstreams/u/rebalance?fraction=0.5"),
        (
            "POST",
            &format!("/api/upstreams/u/servers/{echo}/drain") as &str,
        ),
        ("POST", "/reload"),
    ] {
        request(addr, method, path, None)
            .await
            .assert_error(401, &format!("{method} {path}"));
    }
    assert!(
        gw.gateway
            .shared()
            .snapshot
            .load()
            .upstream("u")
            .unwrap()
            .servers[0]
            .is_enabled(),
        "an unauthorised drain must not have disabled the server"
    );

    // Unknown paths, wrong methods, reload.
    request(addr, "GET", "/nope", Some(&good))
        .await
        .assert_error(404, "unknown path");
    request(addr, "GET", "/api/nope", Some(&good))
        .await
        .assert_error(404, "unknown api path");
    request(addr, "PUT", "/healthz", None)
        .await
        .assert_error(405, "PUT /healthz");
    request(addr, "POST", "/metrics", Some(&good))
        .await
        .assert_error(405, "POST /metrics");
    request(addr, "GET", "/reload", Some(&good))
        .await
        .assert_error(405, "GET /reload");
    // Reload (tested in depth in tests/reload.rs): the unchanged file
    // reloads to the same version, and the reload is counted.
    let version = request(addr, "GET", "/api/config", Some(&good))
        .await
        .json()["version"]
        .as_str()
        .expect("version")
        .to_string();
    let r = request(addr, "POST", "/reload", Some(&good)).await;
    assert_eq!(r.status, 200, "POST /reload: {}", r.body);
    assert_eq!(r.json()["version"], version.as_str());
    let m = request(addr, "GET", "/metrics", Some(&good)).await;
    assert!(
        m.body.contains("wsgate_reloads_total{result=\"ok\"} 1\n"),
        "{}",
        m.body
    );

    // Draining: not ready any more, still alive.
    gw.gateway.drain();
    let r = request(addr, "GET", "/readyz", None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json(), serde_json::json!({"status": "draining"}));
    let r = request(addr, "GET", "/healthz", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"], "ok");
}

#[tokio::test]
async fn metrics_public_opens_only_metrics() {
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), TOKEN).expect("token file");
    let toml = format!(
        "{}\n[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"token\"\nmetrics_public = true\n",
        simple_config(&[echo])
    );
    let gw = TestGateway::start_in(dir, &toml).await;
    let addr = gw.admin.expect("admin");
    let r = request(addr, "GET", "/metrics", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("wsgate_handshakes_total{"), "{}", r.body);
    for path in ["/api/connections", "/api/upstreams", "/api/config"] {
        let r = request(addr, "GET", path, None).await;
        r.assert_error(401, path);
        assert_eq!(
            header_value(&r.head, "www-authenticate").as_deref(),
            Some("Bearer")
        );
    }
    let r = request(
        addr,
        "GET",
        "/api/connections",
        Some(&format!("Bearer {TOKEN}")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), serde_json::json!([]));
}

// === 2. /metrics against real traffic ===

#[tokio::test]
async fn metrics_count_real_traffic_exactly() {
    let echo = echo_backend().await;
    let toml = format!(
        "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[routes]]\npath_prefix = \"/ws\"\nupstream = \"u\"\n\n[upstreams.u]\nservers = [\"{echo}\"]\n\n[admin]\nbind = \"127.0.0.1:0\"\n"
    );
    let gw = TestGateway::start(&toml).await;
    let admin = Admin::of(&gw, None);
    let server = echo.to_string();
    let tunnel_labels: [(&str, &str); 4] = [
        ("listener", "public"),
        ("route", "*/ws"),
        ("upstream", "u"),
        ("server", &server),
    ];
    let up: [(&str, &str); 2] = [("server", &server), ("direction", "to_backend")];
    let down: [(&str, &str); 2] = [("server", &server), ("direction", "to_client")];

    // Before any traffic: the outcome series exist at zero.
    let m = admin.scrape().await;
    for outcome in ["101", "404", "426", "502"] {
        assert_eq!(
            m.sum(
                "wsgate_handshakes_total",
                &[("listener", "public"), ("outcome", outcome)]
            ),
            0.0,
            "{outcome}"
        );
    }

    let messages: [&[&str]; 3] = [&["hello", "world!"], &["x"], &["abc", "defg", "hijkl"]];
    let mut clients = Vec::new();
    let mut ports = Vec::new();
    let (mut up_bytes, mut down_bytes, mut count) = (0u64, 0u64, 0u64);
    for (i, msgs) in messages.iter().enumerate() {
        let mut ws = open(&gw, "public", "/ws/chat").await;
        ports.push(ws.get_ref().local_addr().expect("addr").port());
        for m in msgs.iter() {
            echo_once(&mut ws, m).await;
            up_bytes += 6 + m.len() as u64;
            down_bytes += 2 + m.len() as u64;
            count += 1;
        }
        if i == 0 {
            // One tunnel open: its traffic is already in the counters.
            let expect_up = up_bytes as f64;
            let expect_down = down_bytes as f64;
            within("live traffic in /metrics", async {
                loop {
                    let m = admin.scrape().await;
                    let seen = (
                        m.values("wsgate_traffic_bytes_total", &up)
                            .iter()
                            .sum::<f64>(),
                        m.values("wsgate_traffic_bytes_total", &down)
                            .iter()
                            .sum::<f64>(),
                    );
                    if seen == (expect_up, expect_down) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            let m = admin.scrape().await;
            assert_eq!(m.sum("wsgate_tunnels_active", &tunnel_labels), 1.0);
            assert_eq!(m.sum("wsgate_tunnels_total", &tunnel_labels), 1.0);
            assert_eq!(
                m.sum("wsgate_traffic_messages_total", &up),
                msgs.len() as f64
            );
            assert_eq!(
                m.sum("wsgate_traffic_frames_total", &down),
                msgs.len() as f64
            );
        }
        clients.push(ws);
    }
    let m = admin.scrape().await;
    assert_eq!(m.sum("wsgate_tunnels_active", &tunnel_labels), 3.0);

    // A 404 (no route) and a 426 (unsupported version).
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let (status, _, _) = raw_exchange(&mut tcp, handshake_request("/nope", "a").as_bytes()).await;
    assert_eq!(status, 404);
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let req = handshake_request("/ws", "a")
        .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let (status, _, _) = raw_exchange(&mut tcp, req.as_bytes()).await;
    assert_eq!(status, 426);

    for mut ws in clients {
        ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .await
        .expect("close");
        finish(ws).await;
    }
    gw.wait_idle().await;
    // A client Close with a code is 8 bytes masked; the echoed Close 4 bytes.
    up_bytes += 3 * 8;
    down_bytes += 3 * 4;

    let m = admin.scrape().await;
    assert_eq!(m.sum("wsgate_tunnels_total", &tunnel_labels), 3.0);
    assert_eq!(m.sum("wsgate_tunnels_active", &[]), 0.0);
    let hs = |outcome: &'static str| [("listener", "public"), ("outcome", outcome)];
    assert_eq!(m.sum("wsgate_handshakes_total", &hs("101")), 3.0);
    assert_eq!(m.sum("wsgate_handshakes_total", &hs("404")), 1.0);
    assert_eq!(m.sum("wsgate_handshakes_total", &hs("426")), 1.0);
    assert_eq!(m.sum("wsgate_handshakes_total", &hs("502")), 0.0);
    assert_eq!(m.sum("wsgate_handshakes_total", &[]), 5.0);
    assert_eq!(m.sum("wsgate_traffic_messages_total", &up), count as f64);
    assert_eq!(m.sum("wsgate_traffic_messages_total", &down), count as f64);
    assert_eq!(m.sum("wsgate_traffic_bytes_total", &up), up_bytes as f64);
    assert_eq!(
        m.sum("wsgate_traffic_bytes_total", &down),
        down_bytes as f64
    );
    assert_eq!(
        m.sum("wsgate_traffic_frames_total", &up),
        (count + 3) as f64
    );
    assert_eq!(
        m.sum("wsgate_traffic_frames_total", &down),
        (count + 3) as f64
    );
    // Every traffic series carries the tunnel's labels.
    assert_eq!(
        m.values("wsgate_traffic_bytes_total", &tunnel_labels).len(),
        2
    );
    assert_eq!(
        m.sum(
            "wsgate_close_codes_total",
            &[("code", "1000"), ("from", "client")]
        ),
        3.0
    );
    assert_eq!(m.sum("wsgate_close_codes_total", &[]), 3.0);
    // Each closed tunnel is counted once, by why it ended.
    let ended = |reason: &'static str| [("route", "*/ws"), ("reason", reason)];
    assert_eq!(m.sum("wsgate_tunnels_closed_total", &ended("closed")), 3.0);
    assert_eq!(m.sum("wsgate_tunnels_closed_total", &[]), 3.0);
    assert!(
        m.sum(
            "wsgate_handshake_duration_seconds_count",
            &[("listener", "public")]
        ) >= 5.0
    );
    assert_eq!(
        m.sum(
            "wsgate_tunnel_duration_seconds_count",
            &[("listener", "public"), ("route", "*/ws")]
        ),
        3.0
    );
    let versions: Vec<&str> = m
        .scrape
        .samples
        .iter()
        .filter(|s| s.metric == "wsgate_config_version")
        .filter_map(|s| s.labels.get("version"))
        .collect();
    assert_eq!(versions.len(), 1, "{}", m.text);
    assert!(is_hex12(versions[0]), "{versions:?}");
    assert_eq!(m.sum("wsgate_config_version", &[]), 1.0);
    assert!(m.sum("process_resident_memory_bytes", &[]) > 0.0);
    assert!(m.sum("process_open_fds", &[]) > 0.0);
    for port in ports {
        let needle = format!("127.0.0.1:{port}");
        assert!(
            !m.text.contains(&needle),
            "the exposition contains the client address {needle}:\n{}",
            m.text
        );
    }
}

// === 3. /api/connections ===

/// A tunnel to open: listener, path, route label, upstream, server, messages.
type Planned<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    SocketAddr,
    &'a [&'a str],
);

#[tokio::test]
async fn connections_are_listed_oldest_first_with_live_totals_and_filters() {
    let echo_a = echo_backend().await;
    let echo_b = echo_backend().await;
    let toml = format!(
        "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"internal\"\nbind = \"127.0.0.1:0\"\n\n[[routes]]\npath_prefix = \"/a\"\nupstream = \"ua\"\n[[routes]]\npath_prefix = \"/b\"\nupstream = \"ub\"\n\n[upstreams.ua]\nservers = [\"{echo_a}\"]\n[upstreams.ub]\nservers = [\"{echo_b}\"]\n\n[admin]\nbind = \"127.0.0.1:0\"\n"
    );
    let gw = TestGateway::start(&toml).await;
    let admin = Admin::of(&gw, None);
    assert_eq!(
        admin.get_json("/api/connections").await,
        serde_json::json!([])
    );

    // (listener, path, route, upstream, server, messages)
    let plan: [Planned; 3] = [
        ("public", "/a/one?x=1", "*/a", "ua", echo_a, &["hi"]),
        ("public", "/b/two", "*/b", "ub", echo_b, &["abc", "defgh"]),
        (
            "internal",
            "/a",
            "*/a",
            "ua",
            echo_a,
            &["0123456789", "", "z"],
        ),
    ];
    let mut clients = Vec::new();
    for (listener, path, _, _, _, msgs) in plan {
        let mut ws = open(&gw, listener, path).await;
        for m in msgs {
            echo_once(&mut ws, m).await;
        }
        clients.push(ws);
    }
    let expected_totals = |msgs: &[&str]| {
        let n = msgs.len() as u64;
        let len: u64 = msgs.iter().map(|m| m.len() as u64).sum();
        (
            serde_json::json!({"bytes": 6 * n + len, "frames": n, "messages": n, "discarded_frames": 0}),
            serde_json::json!({"bytes": 2 * n + len, "frames": n, "messages": n, "discarded_frames": 0}),
        )
    };
    // The echo has been read, so the client-bound counters are at most a poll behind.
    let list = within("the listed totals to match the traffic", async {
        loop {
            let list = admin.get_json("/api/connections").await;
            let done = list.as_array().is_some_and(|a| {
                a.len() == 3
                    && a.iter()
                        .zip(plan.iter())
                        .all(|(c, p)| c["to_client"] == expected_totals(p.5).1)
            });
            if done {
                break list;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let list = list.as_array().expect("array").clone();
    let mut ids = Vec::new();
    for (i, (c, p)) in list.iter().zip(plan.iter()).enumerate() {
        let (listener, path, route, upstream, server, msgs) = *p;
        let client = clients[i].get_ref().local_addr().expect("addr");
        let mut keys: Vec<&str> = c
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "age_ms",
                "client",
                "id",
                "idle_ms",
                "listener",
                "path",
                "route",
                "server",
                "started",
                "to_backend",
                "to_client",
                "upstream"
            ]
        );
        assert_eq!(c["client"], client.to_string(), "{c}");
        assert_eq!(c["listener"], listener, "{c}");
        assert_eq!(c["route"], route, "{c}");
        assert_eq!(c["upstream"], upstream, "{c}");
        assert_eq!(c["server"], server.to_string(), "{c}");
        assert_eq!(c["path"], path, "{c}");
        let (to_backend, to_client) = expected_totals(msgs);
        assert_eq!(c["to_backend"], to_backend, "{c}");
        assert_eq!(c["to_client"], to_client, "{c}");
        let started = c["started"].as_str().expect("started");
        humantime::parse_rfc3339(started)
            .unwrap_or_else(|e| panic!("started {started:?} is not RFC 3339: {e}"));
        let age = c["age_ms"].as_u64().expect("age_ms");
        let idle = c["idle_ms"].as_u64().expect("idle_ms");
        assert!(idle <= age + 1, "idle {idle} > age {age}");
        ids.push(c["id"].as_u64().expect("id"));
    }
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "not oldest first: {ids:?}"
    );
    let ages: Vec<u64> = list.iter().map(|c| c["age_ms"].as_u64().unwrap()).collect();
    assert!(ages.windows(2).all(|w| w[0] >= w[1]), "ages {ages:?}");

    // Filters.
    let listed = |v: Value| -> Vec<u64> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|c| c["id"].as_u64().expect("id"))
            .collect()
    };
    for (query, expect) in [
        ("route=*/a", vec![ids[0], ids[2]]),
        ("route=%2A%2Fb", vec![ids[1]]),
        ("listener=public", vec![ids[0], ids[1]]),
        ("listener=internal", vec![ids[2]]),
        (&format!("server={echo_a}") as &str, vec![ids[0], ids[2]]),
        (&format!("server={echo_b}") as &str, vec![ids[1]]),
        ("upstream=ub", vec![ids[1]]),
        ("upstream=ua&listener=internal", vec![ids[2]]),
        ("route=*/a&limit=1", vec![ids[0]]),
        ("limit=1", vec![ids[0]]),
        ("limit=2", vec![ids[0], ids[1]]),
        ("limit=0", vec![]),
        ("route=nope", vec![]),
        ("server=127.0.0.1:1", vec![]),
    ] {
        let got = listed(admin.get_json(&format!("/api/connections?{query}")).await);
        assert_eq!(got, expect, "?{query}");
    }
    for query in ["limit=x", "limit=-1", "server=nonsense", "server=127.0.0.1"] {
        admin
            .get(&format!("/api/connections?{query}"))
            .await
            .assert_error(400, query);
    }

    // One connection.
    let one = admin
        .get_json(&format!("/api/connections/{}", ids[1]))
        .await;
    assert_eq!(one["id"], ids[1]);
    assert_eq!(one["route"], "*/b");
    assert_eq!(one["to_backend"], expected_totals(plan[1].5).0);
    admin
        .get("/api/connections/987654321")
        .await
        .assert_error(404, "unknown id");
    admin
        .get("/api/connections/abc")
        .await
        .assert_error(400, "non-numeric id");
    admin
        .get("/api/connections/-1")
        .await
        .assert_error(400, "negative id");

    for mut ws in clients {
        ws.close(None).await.expect("close");
        finish(ws).await;
    }
    gw.wait_idle().await;
    assert_eq!(
        admin.get_json("/api/connections").await,
        serde_json::json!([])
    );
    admin
        .get(&format!("/api/connections/{}", ids[0]))
        .await
        .assert_error(404, "closed connection");
}

// === 4. DELETE /api/connections/{id} ===

#[tokio::test]
async fn deleting_a_connection_closes_both_sides_with_the_code_given() {
    let mut backend = WsBackend::start().await;
    let toml = format!(
        "{}\n[admin]\nbind = \"127.0.0.1:0\"\n",
        simple_config(&[backend.addr])
    );
    let gw = TestGateway::start(&toml).await;
    let admin = Admin::of(&gw, None);
    let mut rx = gw.access_log();

    let mut client = open(&gw, "public", "/ws").await;
    let mut server = backend.next().await.ws;
    let id = gw.gateway.registry().live()[0].id;

    // Refused orders leave the tunnel alone.
    for code in [
        "1005", "1006", "999", "5000", "2000", "1004", "1015", "abc", "-1", "",
    ] {
        admin
            .call("DELETE", &format!("/api/connections/{id}?code={code}"))
            .await
            .assert_error(400, &format!("code {code:?}"));
    }
    admin
        .call(
            "DELETE",
            &format!("/api/connections/{id}?code=4000&reason={}", "r".repeat(124)),
        )
        .await
        .assert_error(400, "124-byte reason");
    // 62 two-byte characters: 124 bytes though only 62 characters.
    admin
        .call(
            "DELETE",
            &format!("/api/connections/{id}?reason={}", "%C3%A9".repeat(62)),
        )
        .await
        .assert_error(400, "124-byte UTF-8 reason");
    admin
        .call("DELETE", "/api/connections/987654321?code=4000")
        .await
        .assert_error(404, "unknown id");
    admin
        .call("DELETE", "/api/connections/abc")
        .await
        .assert_error(400, "non-numeric id");
    roundtrip(&mut client, &mut server, "still here").await;
    assert_eq!(gw.gateway.registry().live_count(), 1);

    // A good order: 4000 "bye" to both sides.
    let r = admin
        .call(
            "DELETE",
            &format!("/api/connections/{id}?code=4000&reason=bye"),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let v = r.json();
    assert_eq!(v["id"], id);
    assert_eq!(v["code"], 4000);
    assert_eq!(v["reason"], "bye");
    let (c, s) = tokio::join!(
        expect_close(&mut client, "the client's Close"),
        expect_close(&mut server, "the backend's Close")
    );
    assert_eq!(c, (4000, "bye".to_string()));
    assert_eq!(s, (4000, "bye".to_string()));
    tokio::join!(finish(client), finish(server));
    let rec = next_record(&mut rx).await;
    assert_eq!(rec.id, id);
    assert_eq!(rec.end.closed_by, Side::Proxy);
    assert_eq!(rec.end.close_code, Some(4000));
    assert_eq!(rec.end.close_frame_from, Some(Side::Proxy));
    assert_eq!(rec.end.reason, EndReason::ProxyClose);
    assert_eq!(rec.end.proxy_close, Some(order(4000, "bye")));
    gw.wait_idle().await;
    admin
        .call("DELETE", &format!("/api/connections/{id}"))
        .await
        .assert_error(404, "closed connection");

    // Without a code: 1008 and the default reason.
    let mut client = open(&gw, "public", "/ws").await;
    let mut server = backend.next().await.ws;
    let id = gw.gateway.registry().live()[0].id;
    let r = admin
        .call("DELETE", &format!("/api/connections/{id}"))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["code"], 1008);
    let (c, s) = tokio::join!(
        expect_close(&mut client, "the client's Close"),
        expect_close(&mut server, "the backend's Close")
    );
    assert_eq!(c.0, 1008);
    assert_eq!(s.0, 1008);
    assert_eq!(c.1, s.1);
    tokio::join!(finish(client), finish(server));
    let rec = next_record(&mut rx).await;
    assert_eq!(rec.end.close_code, Some(1008));
    assert_eq!(rec.end.reason, EndReason::ProxyClose);
    assert_eq!(rec.end.proxy_close, Some(order(1008, &c.1)));
    gw.wait_idle().await;

    // The longest reason that fits a Close frame: 123 bytes, delivered whole.
    let mut client = open(&gw, "public", "/ws").await;
    let mut server = backend.next().await.ws;
    let id = gw.gateway.registry().live()[0].id;
    let long = "r".repeat(123);
    let r = admin
        .call(
            "DELETE",
            &format!("/api/connections/{id}?code=3001&reason={long}"),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let (c, s) = tokio::join!(
        expect_close(&mut client, "the client's Close"),
        expect_close(&mut server, "the backend's Close")
    );
    assert_eq!(c, (3001, long.clone()));
    assert_eq!(s, (3001, long));
    tokio::join!(finish(client), finish(server));
    gw.wait_idle().await;
}

#[tokio::test]
async fn a_second_delete_on_a_closing_connection_is_a_conflict() {
    let mut backend = WsBackend::start().await;
    // Nobody answers the Close here: the tunnel waits up to 30 s for it.
    let toml = format!(
        "{}\n[admin]\nbind = \"127.0.0.1:0\"\n",
        simple_config(&[backend.addr]).replace("[timeouts]\n", "[timeouts]\nclose = \"30s\"\n")
    );
    let gw = TestGateway::start(&toml).await;
    let admin = Admin::of(&gw, None);
    let mut rx = gw.access_log();
    let mut client = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let (status, _, _) = raw_exchange(&mut client, handshake_request("/ws", "a").as_bytes()).await;
    assert_eq!(status, 101);
    let server = backend.next().await.ws;
    gw.wait_live(1).await;
    let id = gw.gateway.registry().live()[0].id;

    let r = admin
        .call(
            "DELETE",
            &format!("/api/connections/{id}?code=4001&reason=first"),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let r = admin
        .call(
            "DELETE",
            &format!("/api/connections/{id}?code=4002&reason=second"),
        )
        .await;
    r.assert_error(409, "second DELETE");
    // Still listed while its closing handshake is pending.
    let one = admin.get_json(&format!("/api/connections/{id}")).await;
    assert_eq!(one["id"], id);

    // The first order is the one carried out.
    let (op, body) = read_frame(&mut client).await;
    assert_eq!(op, 0x88);
    assert_eq!(&body[..2], &4001u16.to_be_bytes());
    assert_eq!(&body[2..], b"first");
    // The client answers; the backend (tungstenite) answers when it reads.
    client
        .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x0f, 0xa1])
        .await
        .expect("client reply");
    let mut server = server;
    let s = expect_close(&mut server, "the backend's Close").await;
    assert_eq!(s, (4001, "first".to_string()));
    finish(server).await;
    wait_closed(&mut client).await;
    let rec = next_record(&mut rx).await;
    assert_eq!(rec.end.closed_by, Side::Proxy);
    assert_eq!(rec.end.reason, EndReason::ProxyClose);
    assert_eq!(rec.end.proxy_close, Some(order(4001, "first")));
    gw.wait_idle().await;
}

/// During a drain (SIGTERM) every tunnel is already closing with 1001: a
/// DELETE says so (409) instead of answering 202 and being ignored.
#[tokio::test]
async fn a_delete_during_a_drain_is_a_conflict_and_the_drain_code_stands() {
    let mut backend = WsBackend::start().await;
    let toml = format!(
        "{}\n[admin]\nbind = \"127.0.0.1:0\"\n",
        simple_config(&[backend.addr]).replace("[timeouts]\n", "[timeouts]\nclose = \"30s\"\n")
    );
    let gw = TestGateway::start(&toml).await;
    let admin = Admin::of(&gw, None);
    let mut client = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let (status, _, _) = raw_exchange(&mut client, handshake_request("/ws", "a").as_bytes()).await;
    assert_eq!(status, 101);
    let mut server = backend.next().await.ws;
    gw.wait_live(1).await;
    let id = gw.gateway.registry().live()[0].id;

    gw.gateway.drain();
    let (op, body) = read_frame(&mut client).await;
    assert_eq!(op, 0x88);
    assert_eq!(&body[..2], &1001u16.to_be_bytes());
    let r = admin
        .call("DELETE", &format!("/api/connections/{id}?code=4001"))
        .await;
    r.assert_error(409, "DELETE during a drain");
    assert!(r.body.contains("already closing"), "{}", r.body);
    let s = expect_close(&mut server, "the backend's Close").await;
    assert_eq!(s.0, 1001);
    client
        .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe9])
        .await
        .expect("client reply");
    finish(server).await;
    wait_closed(&mut client).await;
    gw.wait_idle().await;
}

// === 5. /api/upstreams ===

#[tokio::test]
async fn upstreams_show_settings_and_active_tunnels_per_server() {
    let mut a = WsBackend::start().await;
    let mut b = WsBackend::start().await;
    let c = echo_backend().await;
    let toml = format!(
        "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[routes]]\npath_prefix = \"/u\"\nupstream = \"u\"\n[[routes]]\npath_prefix = \"/v\"\nupstream = \"v\"\n\n[upstreams.u]\nservers = [\"{}\", \"{}\"]\ndrain_timeout = \"3s\"\ndrain_spread = \"700ms\"\n[upstreams.v]\nservers = [\"{c}\"]\ndrain_timeout = \"20s\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n",
        a.addr, b.addr
    );
    let gw = TestGateway::start(&toml).await;
    let admin = Admin::of(&gw, None);

    let ups = admin.get_json("/api/upstreams").await;
    let ups = ups.as_array().expect("array");
    assert_eq!(ups.len(), 2);
    let names: HashSet<&str> = ups.iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, HashSet::from(["u", "v"]));
    for u in ups {
        let (timeout, spread, servers) = if u["name"] == "u" {
            (3000, 700, vec![a.addr, b.addr])
        } else {
            // The spread defaults to a tenth of the timeout.
            (20_000, 2000, vec![c])
        };
        assert_eq!(u["drain_timeout_ms"], timeout, "{u}");
        assert_eq!(u["drain_spread_ms"], spread, "{u}");
        let listed = u["servers"].as_array().expect("servers");
        assert_eq!(listed.len(), servers.len());
        for (s, addr) in listed.iter().zip(servers) {
            assert_eq!(
                *s,
                serde_json::json!({"addr": addr.to_string(), "active": 0, "weight": 1, "state": "up", "check": null,
                    // Passive checks: never failed, never ejected.
                    "fails": 0, "ejections": 0, "ejected_until": null, "last_ejection_ms": null,
                    "last_ejection_reason": null, "slow_start": false})
            );
        }
    }

    // Three tunnels on u, one on v.
    let mut per = [0u64; 2];
    let mut pairs = Vec::new();
    for _ in 0..3 {
        let client = open(&gw, "public", "/u").await;
        let (which, server) = accept_either(&mut a, &mut b).await;
        per[which] += 1;
        pairs.push((client, server, which));
    }
    let mut on_v = open(&gw, "public", "/v").await;
    assert!(per[0] >= 1 && per[1] >= 1, "round robin used both: {per:?}");
    admin.wait_active("u", a.addr, per[0]).await;
    admin.wait_active("u", b.addr, per[1]).await;
    admin.wait_active("v", c, 1).await;
    assert_eq!(admin.server("u", a.addr).await["state"], "up");

    // One closes: its server's count goes down by one.
    let (mut client, server, which) = pairs.pop().expect("pair");
    client.close(None).await.expect("close");
    tokio::join!(finish(client), finish(server));
    per[which] -= 1;
    admin.wait_active("u", a.addr, per[0]).await;
    admin.wait_active("u", b.addr, per[1]).await;

    echo_once(&mut on_v, "v").await;
    on_v.close(None).await.expect("close");
    finish(on_v).await;
    for (mut client, server, _) in pairs {
        client.close(None).await.expect("close");
        tokio::join!(finish(client), finish(server));
    }
    gw.wait_idle().await;
    admin.wait_active("u", a.addr, 0).await;
    admin.wait_active("u", b.addr, 0).await;
    admin.wait_active("v", c, 0).await;
}

// === 6. draining a server ===

#[tokio::test]
async fn draining_a_server_moves_new_tunnels_and_closes_its_own_spread_out() {
    let mut a = WsBackend::start().await;
    let mut b = WsBackend::start().await;
    let toml = format!(
        "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[routes]]\nupstream = \"u\"\n\n[upstreams.u]\nservers = [\"{}\", \"{}\"]\ndrain_timeout = \"200ms\"\ndrain_spread = \"1s\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n",
        a.addr, b.addr
    );
    let gw = TestGateway::start(&toml).await;
    let admin = Admin::of(&gw, None);
    let mut rx = gw.access_log();

    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for _ in 0..4 {
        let client = open(&gw, "public", "/ws").await;
        let (which, server) = accept_either(&mut a, &mut b).await;
        if which == 0 {
            on_a.push((client, server));
        } else {
            on_b.push((client, server));
        }
    }
    assert_eq!(
        (on_a.len(), on_b.len()),
        (2, 2),
        "the balancer spreads four tunnels 2/2"
    );

    let r = admin
        .call(
            "POST",
            &format!("/api/upstreams/u/servers/{}/drain", a.addr),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let v = r.json();
    assert_eq!(v["state"], "draining");
    assert_eq!(v["drain_timeout_ms"], 200);
    assert_eq!(v["drain_spread_ms"], 1000);
    assert_eq!(admin.server("u", a.addr).await["state"], "draining");
    assert_eq!(admin.server("u", b.addr).await["state"], "up");

    // New tunnels go to B only.
    for _ in 0..3 {
        let client = open(&gw, "public", "/ws").await;
        let (which, server) = accept_either(&mut a, &mut b).await;
        assert_eq!(which, 1, "a new tunnel went to the draining server");
        on_b.push((client, server));
    }

    // After the drain timeout, A's tunnels get 1001, one at a time, oldest
    // first (when each falls in the window is the schedule's unit tests'
    // business, in src/control/drain.rs).
    let arrivals = Arc::new(AtomicUsize::new(0));
    let mut waits = Vec::new();
    for (age, (mut client, mut server)) in on_a.into_iter().enumerate() {
        let arrivals = arrivals.clone();
        waits.push(tokio::spawn(async move {
            let got = expect_close(&mut client, "the client's Close from the drain").await;
            let rank = arrivals.fetch_add(1, Ordering::SeqCst);
            let s = expect_close(&mut server, "the backend's Close from the drain").await;
            tokio::join!(finish(client), finish(server));
            (age, rank, got, s)
        }));
    }
    for w in waits {
        let (age, rank, c, s) = within("a drained tunnel", w).await.expect("task");
        assert_eq!(c, (1001, "server draining".to_string()));
        assert_eq!(s, (1001, "server draining".to_string()));
        assert_eq!(rank, age, "the drain closes the oldest tunnel first");
    }
    for _ in 0..2 {
        let rec = next_record(&mut rx).await;
        assert_eq!(rec.backend, a.addr);
        assert_eq!(rec.end.closed_by, Side::Proxy);
        assert_eq!(rec.end.reason, EndReason::ProxyClose);
        assert_eq!(rec.end.proxy_close, Some(order(1001, "server draining")));
    }
    admin.wait_active("u", a.addr, 0).await;
    admin.wait_active("u", b.addr, 5).await;
    // B's tunnels were not touched.
    for (i, (client, server)) in on_b.iter_mut().enumerate() {
        roundtrip(client, server, &format!("b-{i}")).await;
    }
    assert!(
        a.accepted.try_recv().is_err(),
        "A accepted a tunnel while draining"
    );

    // Enabled again: A takes new tunnels.
    let r = admin
        .call(
            "POST",
            &format!("/api/upstreams/u/servers/{}/enable", a.addr),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["state"], "up");
    assert_eq!(admin.server("u", a.addr).await["state"], "up");
    let mut got = Vec::new();
    for _ in 0..2 {
        let client = open(&gw, "public", "/ws").await;
        let (which, server) = accept_either(&mut a, &mut b).await;
        got.push(which);
        on_b.push((client, server));
    }
    // Round robin sends one of the two to A, least connections both.
    let to_a = got.iter().filter(|&&w| w == 0).count() as u64;
    assert!(to_a >= 1, "A took no new tunnel after enable: {got:?}");
    admin.wait_active("u", a.addr, to_a).await;

    // Errors.
    admin
        .call(
            "POST",
            &format!("/api/upstreams/nope/servers/{}/drain", a.addr),
        )
        .await
        .assert_error(404, "unknown upstream");
    admin
        .call("POST", "/api/upstreams/u/servers/127.0.0.1:1/drain")
        .await
        .assert_error(404, "unknown server");
    admin
        .call("POST", "/api/upstreams/u/servers/127.0.0.1:1/enable")
        .await
        .assert_error(404, "unknown server (enable)");
    admin
        .call("POST", "/api/upstreams/u/servers/not-an-address/drain")
        .await
        .assert_error(400, "bad address");
    admin
        .get(&format!("/api/upstreams/u/servers/{}/drain", a.addr))
        .await
        .assert_error(405, "GET on the drain path");
    // None of the errors disabled anything.
    assert_eq!(admin.server("u", a.addr).await["state"], "up");
    assert_eq!(admin.server("u", b.addr).await["state"], "up");

    for (mut client, server) in on_b {
        client.close(None).await.expect("close");
        tokio::join!(finish(client), finish(server));
    }
    gw.wait_idle().await;
}

#[tokio::test]
async fn enabling_during_the_drain_timeout_cancels_the_closes() {
    let mut a = WsBackend::start().await;
    let toml = format!(
        "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[routes]]\nupstream = \"u\"\n\n[upstreams.u]\nservers = [\"{}\"]\ndrain_timeout = \"2s\"\ndrain_spread = \"100ms\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n",
        a.addr
    );
    let gw = TestGateway::start(&toml).await;
    let admin = Admin::of(&gw, None);
    let mut client = open(&gw, "public", "/ws").await;
    let mut server = a.next().await.ws;

    let path = format!("/api/upstreams/u/servers/{}", a.addr);
    let r = admin.call("POST", &format!("{path}/drain")).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(admin.server("u", a.addr).await["state"], "draining");
    let r = admin.call("POST", &format!("{path}/enable")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(admin.server("u", a.addr).await["state"], "up");

    // Past the drain timeout and its spread, nothing arrives.
    match tokio::time::timeout(Duration::from_secs(3), client.next()).await {
        Err(_) => {}
        Ok(got) => panic!("the drain was not cancelled: the client got {got:?}"),
    }
    roundtrip(&mut client, &mut server, "still open").await;
    assert_eq!(gw.gateway.registry().live_count(), 1);
    client.close(None).await.expect("close");
    tokio::join!(finish(client), finish(server));
    gw.wait_idle().await;
}

// === 7. rebalance ===

#[tokio::test]
async fn rebalance_closes_the_oldest_tunnels_of_the_loaded_server() {
    let mut a = WsBackend::start().await;
    let mut b = WsBackend::start().await;
    let c = echo_backend().await;
    let d = echo_backend().await;
    let toml = format!(
        "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[routes]]\npath_prefix = \"/u\"\nupstream = \"u\"\n[[routes]]\npath_prefix = \"/v\"\nupstream = \"v\"\n\n[upstreams.u]\nservers = [\"{}\", \"{}\"]\ndrain_timeout = \"1h\"\ndrain_spread = \"1200ms\"\n[upstreams.v]\nservers = [\"{c}\", \"{d}\"]\n\n[admin]\nbind = \"127.0.0.1:0\"\n",
        a.addr, b.addr
    );
    let gw = TestGateway::start(&toml).await;
    let admin = Admin::of(&gw, None);
    let mut rx = gw.access_log();

    // B out of rotation (nothing to close on it; the hour never passes).
    let r = admin
        .call(
            "POST",
            &format!("/api/upstreams/u/servers/{}/drain", b.addr),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let mut pairs = Vec::new();
    for _ in 0..6 {
        let client = open(&gw, "public", "/u").await;
        let (which, server) = accept_either(&mut a, &mut b).await;
        assert_eq!(which, 0, "B is draining");
        pairs.push((client, server));
    }
    let r = admin
        .call(
            "POST",
            &format!("/api/upstreams/u/servers/{}/enable", b.addr),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    admin.wait_active("u", a.addr, 6).await;
    admin.wait_active("u", b.addr, 0).await;
    let ids: Vec<u64> = gw.gateway.registry().live().iter().map(|c| c.id).collect();

    // Errors first: they close nothing.
    for fraction in ["0", "1.5", "x", "-0.5", "NaN", ""] {
        admin
            .call(
                "POST",
                &format!("/api/upstreams/u/rebalance?fraction={fraction}"),
            )
            .await
            .assert_error(400, &format!("fraction {fraction:?}"));
    }
    admin
        .call("POST", "/api/upstreams/nope/rebalance?fraction=0.5")
        .await
        .assert_error(404, "unknown upstream");
    admin
        .get("/api/upstreams/u/rebalance?fraction=0.5")
        .await
        .assert_error(405, "GET rebalance");
    assert_eq!(gw.gateway.registry().live_count(), 6);

    let r = admin
        .call("POST", "/api/upstreams/u/rebalance?fraction=0.5")
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let v = r.json();
    assert_eq!(v["closing"], 3, "{v}");
    assert_eq!(
        v["per_server"],
        serde_json::json!({ a.addr.to_string(): 3 }),
        "{v}"
    );
    assert_eq!(v["code"], 1012);
    assert_eq!(
        v["window_ms"], 1200,
        "the closes are spread over drain_spread"
    );

    let newest = pairs.split_off(3);
    // One at a time over the window, oldest first.
    let arrivals = Arc::new(AtomicUsize::new(0));
    let mut waits = Vec::new();
    for (age, (mut client, mut server)) in pairs.into_iter().enumerate() {
        let arrivals = arrivals.clone();
        waits.push(tokio::spawn(async move {
            let got = expect_close(&mut client, "the client's Close from the rebalance").await;
            let rank = arrivals.fetch_add(1, Ordering::SeqCst);
            let s = expect_close(&mut server, "the backend's Close from the rebalance").await;
            tokio::join!(finish(client), finish(server));
            (age, rank, got, s)
        }));
    }
    for w in waits {
        let (age, rank, c, s) = within("a rebalanced tunnel", w).await.expect("task");
        assert_eq!(c, (1012, "rebalancing".to_string()));
        assert_eq!(s, (1012, "rebalancing".to_string()));
        assert_eq!(rank, age, "the rebalance closes the oldest tunnel first");
    }
    let mut closed: Vec<u64> = Vec::new();
    for _ in 0..3 {
        let rec = next_record(&mut rx).await;
        assert_eq!(rec.end.reason, EndReason::ProxyClose);
        assert_eq!(rec.end.proxy_close, Some(order(1012, "rebalancing")));
        closed.push(rec.id);
    }
    closed.sort_unstable();
    assert_eq!(closed, ids[..3], "the three oldest are the ones closed");
    // The three newest were left alone.
    let mut newest = newest;
    for (i, (client, server)) in newest.iter_mut().enumerate() {
        roundtrip(client, server, &format!("new-{i}")).await;
    }
    admin.wait_active("u", a.addr, 3).await;
    let live: Vec<u64> = gw.gateway.registry().live().iter().map(|c| c.id).collect();
    assert_eq!(live, ids[3..]);

    // A balanced upstream: nothing to do.
    let mut v_clients = Vec::new();
    for _ in 0..2 {
        v_clients.push(open(&gw, "public", "/v").await);
    }
    admin.wait_active("v", c, 1).await;
    admin.wait_active("v", d, 1).await;
    let r = admin
        .call("POST", "/api/upstreams/v/rebalance?fraction=1")
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["closing"], 0);
    assert_eq!(r.json()["per_server"], serde_json::json!({}));
    for ws in &mut v_clients {
        echo_once(ws, "balanced").await;
    }

    for mut ws in v_clients {
        ws.close(None).await.expect("close");
        finish(ws).await;
    }
    for (mut client, server) in newest {
        client.close(None).await.expect("close");
        tokio::join!(finish(client), finish(server));
    }
    gw.wait_idle().await;
}

// === 8. /api/config ===

/// A gateway whose config sets a key of every table: `[admin]` with a
/// token file, a TLS listener, a hash upstream with backend TLS.
async fn full_config_gateway() -> (TestGateway, SocketAddr, String) {
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), TOKEN).expect("token file");
    let (_, key, ca) = make_cert(dir.path(), "site", &["a.example.test"]);
    let key_pem = std::fs::read_to_string(key).expect("key");
    assert!(ca.exists());
    let toml = format!(
        "[runtime]\nwatch_config = false\n\n[log]\nformat = \"json\"\n\n[timeouts]\nconnect = \"2s\"\nclose = \"1m 30s\"\n\n[limits]\nmax_request_body = 1024\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"secure\"\nbind = \"127.0.0.1:0\"\ntls = {{ cert = \"site.pem\", key = \"site.key\" }}\ntrusted_proxies = [\"10.0.0.0/8\"]\n\n[[routes]]\nhost = \"a.example.test\"\npath_prefix = \"/chat\"\nupstream = \"u\"\n[[routes]]\nupstream = \"t\"\n\n[upstreams.u]\nservers = [\"{echo}\", {{ addr = \"127.0.0.1:1\", weight = 3 }}]\ndrain_timeout = \"30s\"\nbalance = \"hash\"\nhash_key = \"header:X-User\"\n\n[upstreams.t]\nservers = [\"127.0.0.1:2\"]\ntls = true\nca_file = \"site-ca.pem\"\nsni = \"backend.test\"\nhealth = {{ kind = \"http\", path = \"/health\", interval = \"1m\" }}\n\n[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"token\"\n"
    );
    let gw = TestGateway::start_in(dir, &toml).await;
    (gw, echo, key_pem)
}

#[tokio::test]
async fn config_view_is_in_the_configs_own_spelling_and_shows_no_secret() {
    let (gw, echo, key_pem) = full_config_gateway().await;
    let admin = Admin::of(&gw, Some(TOKEN));
    let r = admin.get("/api/config").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains(TOKEN), "the token is in /api/config");
    let key_body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!key_body.is_empty());
    assert!(
        !r.body.contains("PRIVATE KEY") && !r.body.contains(&key_body[..32]),
        "key material is in /api/config:\n{}",
        r.body
    );
    let v = r.json();

    let version = v["version"].as_str().expect("version");
    assert!(is_hex12(version), "{version}");
    // The same version as the metric.
    let m = admin.scrape().await;
    assert_eq!(m.sum("wsgate_config_version", &[("version", version)]), 1.0);

    let listeners = v["listeners"].as_array().expect("listeners");
    let names: Vec<&str> = listeners
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["public", "secure"]);
    assert!(listeners[0]["tls"].is_null(), "{}", listeners[0]);
    let certs = listeners[1]["tls"]["certificates"]
        .as_array()
        .expect("certificates");
    assert_eq!(certs.len(), 1);
    // Paths are shown, so an operator sees which files are in use.
    let ends = |v: &Value, tail: &str| v.as_str().is_some_and(|p| p.ends_with(tail));
    assert!(ends(&certs[0]["cert"], "site.pem"), "{}", certs[0]);
    assert!(ends(&certs[0]["key"], "site.key"), "{}", certs[0]);
    assert_eq!(
        listeners[1]["trusted_proxies"],
        serde_json::json!(["10.0.0.0/8"])
    );

    let routes = v["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0]["host"], "a.example.test");
    assert_eq!(routes[0]["path_prefix"], "/chat");
    assert_eq!(routes[0]["upstream"], "u");
    assert!(routes[1]["host"].is_null(), "any host: {}", routes[1]);
    assert_eq!(routes[1]["path_prefix"], "/");

    let u = &v["upstreams"]["u"];
    assert_eq!(
        u["servers"],
        serde_json::json!([
            {"addr": echo.to_string(), "weight": 1},
            {"addr": "127.0.0.1:1", "weight": 3},
        ]),
        "{u}"
    );
    // Durations as the config writes them, enums in the config's words.
    assert_eq!(u["drain_timeout"], "30s");
    assert_eq!(u["drain_spread"], "3s", "a tenth of drain_timeout");
    assert_eq!(u["pool_idle_timeout"], "4s");
    assert_eq!(u["resolve_interval"], "30s");
    assert_eq!(u["balance"], "hash");
    assert_eq!(u["hash_key"], "header:x-user");
    assert_eq!(u["hash_load_factor"], 1.25);
    assert_eq!(u["tls"], false);
    let t = &v["upstreams"]["t"];
    assert_eq!(t["balance"], "least_conn");
    assert!(t["hash_key"].is_null(), "{t}");
    assert_eq!(t["tls"], true);
    assert_eq!(t["sni"], "backend.test");
    assert!(ends(&t["ca_file"], "site-ca.pem"), "{t}");
    assert!(t["client_key"].is_null(), "{t}");

    let timeouts = &v["timeouts"];
    assert_eq!(timeouts["connect"], "2s");
    assert_eq!(timeouts["close"], "1m 30s");
    assert_eq!(timeouts["linger"], "2s", "the default");
    assert_eq!(v["limits"]["max_request_body"], 1024);
    assert_eq!(v["limits"]["max_request_headers"], 16384);
    assert_eq!(v["log"]["format"], "json");
    assert_eq!(v["log"]["access"], "stdout");
    assert!(v["runtime"]["workers"].is_null(), "{}", v["runtime"]);
    assert!(ends(&v["admin"]["token_file"], "token"), "{}", v["admin"]);
    assert_eq!(v["admin"]["metrics_public"], false);
}

/// The tables of the README's "Configuration reference": each `### `
/// heading's table name as written (`[timeouts]`, `[[listeners]]`,
/// `[upstreams.NAME]`) and the keys named in the first cell of its rows
/// (`servers[].weight`; `client_cert`, `client_key` share a row).
fn reference_tables() -> Vec<(String, Vec<String>)> {
    let readme = include_str!("../README.md");
    let start = readme
        .find("\n## Configuration reference\n")
        .expect("the README has a configuration reference");
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    let mut tables: Vec<(String, Vec<String>)> = Vec::new();
    for line in section[..end].lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            let name = heading
                .split('`')
                .nth(1)
                .expect("a table name in backticks");
            tables.push((name.to_string(), Vec::new()));
        } else if let (Some(row), Some((_, keys))) = (line.strip_prefix("| "), tables.last_mut()) {
            let first = row.split(" | ").next().unwrap_or("");
            // The header row (`key`) and the separator have no backticks.
            keys.extend(first.split('`').skip(1).step_by(2).map(str::to_string));
        }
    }
    assert!(tables.len() >= 8, "{tables:?}");
    assert!(tables.iter().all(|(_, k)| !k.is_empty()), "{tables:?}");
    tables
}

/// The JSON object a reference table is shown as: `[[x]]` by its first
/// entry, `[x.NAME]` by every entry.
fn shown_as<'v>(v: &'v Value, table: &str) -> Vec<&'v serde_json::Map<String, Value>> {
    let name = table.trim_matches(|c| c == '[' || c == ']');
    // `[x.NAME.sub]`: the `sub` table of every entry that has one.
    let (top, by_name, sub) = match name.split_once('.') {
        Some((top, rest)) => (top, true, rest.split_once('.').map(|(_, sub)| sub)),
        None => (name, false, None),
    };
    let at = &v[top];
    let objects: Vec<&Value> = if table.starts_with("[[") {
        at.as_array().expect(top).iter().take(1).collect()
    } else if by_name {
        let entries = at.as_object().expect(top).values();
        match sub {
            None => entries.collect(),
            Some(sub) => entries
                .filter_map(|e| e.get(sub))
                .filter(|s| !s.is_null())
                .collect(),
        }
    } else {
        vec![at]
    };
    assert!(!objects.is_empty(), "no entry shows {table}");
    objects
        .into_iter()
        .map(|o| {
            o.as_object()
                .unwrap_or_else(|| panic!("{table} is not an object: {o}"))
        })
        .collect()
}

#[tokio::test]
async fn config_view_has_every_key_of_the_readme_reference_and_no_other() {
    let (gw, _, _) = full_config_gateway().await;
    let v = Admin::of(&gw, Some(TOKEN)).get_json("/api/config").await;
    let tables = reference_tables();
    let mut top: Vec<&str> = Vec::new();
    for (table, keys) in &tables {
        for object in shown_as(&v, table) {
            for key in keys {
                // `servers[].weight`: the key of every entry of `servers`.
                let found = match key.split_once("[].") {
                    Some((list, inner)) => object[list]
                        .as_array()
                        .is_some_and(|l| !l.is_empty() && l.iter().all(|e| e.get(inner).is_some())),
                    None => object.contains_key(key),
                };
                assert!(found, "{table} {key} is not in /api/config: {object:?}");
            }
            for shown in object.keys() {
                assert!(
                    keys.iter()
                        .any(|k| k == shown || k.starts_with(&format!("{shown}[]."))),
                    "/api/config shows {table} {shown}, which the README does not list"
                );
            }
        }
        top.push(
            table
                .trim_matches(|c| c == '[' || c == ']')
                .split('.')
                .next()
                .unwrap_or(""),
        );
    }
    for shown in v.as_object().expect("an object").keys() {
        assert!(
            top.contains(&shown.as_str()) || ["version", "source"].contains(&shown.as_str()),
            "/api/config shows a table {shown} the README does not list"
        );
    }
}

// === counters never go down ===

/// The sum of every `wsgate_traffic_bytes_total` sample in an exposition.
fn traffic_bytes(exposition: &str) -> u64 {
    exposition
        .lines()
        .filter(|l| l.starts_with("wsgate_traffic_bytes_total{"))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("bad sample line {l:?}"))
        })
        .sum()
}

/// A counter must never go down, or Prometheus sees a reset. Here tunnels
/// close on a multi-threaded runtime while another thread scrapes as fast
/// as it can. Scrapes go straight to `Metrics::encode`, which is exactly
/// what `/metrics` serves: it is fast enough to land between the
/// steps of a tunnel's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traffic_totals_never_go_down_while_tunnels_close() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let echo = echo_backend().await;
    let gw = TestGateway::start(&simple_config(&[echo])).await;
    let stop = Arc::new(AtomicBool::new(false));
    let scrapers: Vec<_> = (0..2)
        .map(|_| {
            let metrics = gw.gateway.shared().metrics.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut last, mut scrapes, mut drops) = (0u64, 0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let now = traffic_bytes(&metrics.encode().expect("encode"));
                    if now < last {
                        drops.push((last, now));
                    }
                    last = now;
                    scrapes += 1;
                }
                (scrapes, drops)
            })
        })
        .collect();
    let payload = "x".repeat(100);
    for _round in 0..20 {
        let mut clients = Vec::new();
        for _ in 0..100 {
            let mut ws = ws_connect(gw.addr("public"), "/ws").await;
            echo_once(&mut ws, &payload).await;
            clients.push(ws);
        }
        let closing: Vec<_> = clients
            .into_iter()
            .map(|mut ws| {
                tokio::spawn(async move {
                    ws.close(None).await.expect("close");
                    finish(ws).await;
                })
            })
            .collect();
        for c in closing {
            within("a client to finish", c).await.expect("task");
        }
        gw.wait_idle().await;
    }
    stop.store(true, Ordering::Relaxed);
    // Each tunnel: 106 + 6 bytes to the backend, 102 + 2 to the client.
    let expected = 2000 * (112 + 104);
    assert_eq!(
        traffic_bytes(&gw.gateway.shared().metrics.encode().expect("encode")),
        expected
    );
    for s in scrapers {
        let (scrapes, drops) = s.join().expect("scraper");
        assert!(scrapes > 0);
        assert!(
            drops.is_empty(),
            "wsgate_traffic_bytes_total went down {} times in {scrapes} scrapes (before, after): {:?}",
            drops.len(),
            &drops[..drops.len().min(5)]
        );
    }
}
