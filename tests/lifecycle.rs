//! The graceful stop in phases, through the library (`Gateway::stop`):
//! listeners close and `/readyz` turns 503 at once while established
//! connections are still served through `shutdown_delay`; then every
//! tunnel gets Close 1001 and plain requests in flight finish; what is
//! left at `shutdown_timeout`, or at a second signal, is cut. Also
//! `/readyz` while starting and with `ready_requires_healthy`.

mod common;
#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use wsgate::control::lifecycle::{StopPlan, Stopped};

/// The body the held backend answers with: large enough to take several
/// reads, patterned so a truncation or a mix-up shows.
const BODY_LEN: usize = 256 * 1024;

/// A plain HTTP/1.1 backend that answers each request only when the test
/// releases it: it reports each request's path on `requests`, then waits
/// for one message on `release`.
struct HeldBackend {
    addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<String>,
    release: mpsc::UnboundedSender<()>,
}

impl HeldBackend {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (seen, requests) = mpsc::unbounded_channel();
        let (release, mut go) = mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            // One connection at a time: wsgate's pool reuses it.
            while let Ok((mut tcp, _)) = listener.accept().await {
                loop {
                    let Some(path) = read_head(&mut tcp).await else {
                        break;
                    };
                    let _ = seen.send(path);
                    if go.recv().await.is_none() {
                        return;
                    }
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY_LEN}\r\n\r\n");
                    if tcp.write_all(head.as_bytes()).await.is_err()
                        || tcp.write_all(&pattern(0, BODY_LEN)).await.is_err()
                    {
                        break;
                    }
                }
            }
        });
        Self {
            addr,
            requests,
            release,
        }
    }

    /// Waits for the next request to arrive; returns its path.
    async fn next_request(&mut self) -> String {
        within("a request at the backend", self.requests.recv())
            .await
            .expect("backend alive")
    }
}

/// Reads one request head (no body); its path, or `None` at EOF.
async fn read_head(tcp: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&head);
    text.split(' ').nth(1).map(str::to_string)
}

/// Tunnels on `/ws` to an echo backend, plain requests on `/slow` to `held`.
fn config(echo: SocketAddr, held: SocketAddr) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\
         [[routes]]\npath_prefix = \"/slow\"\nupstream = \"held\"\n\
         [[routes]]\nupstream = \"echo\"\n\
         [upstreams.echo]\nservers = [\"{echo}\"]\n\
         [upstreams.held]\nservers = [\"{held}\"]\n"
    )
}

/// Writes a GET for `path` on a raw client connection.
async fn send_get(tcp: &mut TcpStream, path: &str) {
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .await
        .expect("write request");
}

/// Reads one whole response with a `Content-Length` body; returns the
/// status and the body.
async fn read_sized_response(tcp: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = within("a response head", tcp.read(&mut byte))
            .await
            .expect("read head");
        assert_eq!(
            n,
            1,
            "EOF in the response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status = head[9..12].parse().expect("status");
    let len: usize = header_value(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {head}"));
    let mut body = vec![0u8; len];
    within("the response body", tcp.read_exact(&mut body))
        .await
        .expect("the whole body");
    (status, body)
}

/// `/readyz` status and JSON body.
async fn readyz(admin: SocketAddr) -> (u16, serde_json::Value) {
    let (status, body) = http_text(admin, "GET", "/readyz").await;
    (status, serde_json::from_str(&body).expect("JSON"))
}

/// Polls `/readyz` until it answers `status`.
async fn wait_readyz(admin: SocketAddr, status: u16) -> serde_json::Value {
    within(&format!("/readyz {status}"), async {
        loop {
            let (s, v) = readyz(admin).await;
            if s == status {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// A new connection to a stopping wsgate is refused, or closed unanswered.
async fn assert_refused(addr: SocketAddr) {
    let Ok(mut tcp) = TcpStream::connect(addr).await else {
        return;
    };
    let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let n = within("refusal", tcp.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(
        n,
        0,
        "a stopping wsgate answered: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[tokio::test]
async fn during_the_delay_listeners_are_closed_and_readyz_503_but_established_connections_are_served(
) {
    let echo = echo_backend().await;
    let mut held = HeldBackend::start().await;
    let gw = TestGateway::start(&config(echo, held.addr)).await;
    let admin = gw.admin.expect("admin");
    assert_eq!(readyz(admin).await.0, 200);
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        tunnels.push(ws_connect(gw.addr("public"), "/ws").await);
    }
    // A keep-alive connection that has already had one answer.
    let mut keep_alive = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    send_get(&mut keep_alive, "/slow/1").await;
    held.next_request().await;
    held.release.send(()).expect("release");
    assert_eq!(read_sized_response(&mut keep_alive).await.0, 200);

    let plan = StopPlan {
        delay: Duration::from_secs(3600),
        spread: Duration::ZERO,
        timeout: Duration::from_secs(20),
    };
    let shared = gw.gateway.shared().clone();
    let stop = tokio::spawn(wsgate::control::lifecycle::stop(shared, plan));

    assert_eq!(
        wait_readyz(admin, 503).await,
        serde_json::json!({"status": "draining"})
    );
    assert_refused(gw.addr("public")).await;
    // Still within the delay: tunnels carry messages, and the keep-alive
    // connection gets its next answer.
    for ws in &mut tunnels {
        echo_once(ws, "still here").await;
    }
    send_get(&mut keep_alive, "/slow/2").await;
    assert_eq!(held.next_request().await, "/slow/2");
    held.release.send(()).expect("release");
    let (status, body) = read_sized_response(&mut keep_alive).await;
    assert_eq!(status, 200);
    assert_eq!(body, pattern(0, BODY_LEN));

    // A second signal: cut at once, no Close frame.
    gw.shutdown.cancel();
    let stopped = within("the stop to end", stop).await.expect("stop task");
    // (How many tunnels it counted races with their own ends at the cut.)
    assert!(matches!(stopped, Stopped::Cut { .. }), "{stopped:?}");
    for ws in &mut tunnels {
        let next = within("the cut", ws.next()).await;
        assert!(
            !matches!(next, Some(Ok(Message::Close(_)))),
            "a cut tunnel got a Close: {next:?}"
        );
    }
    wait_closed(&mut keep_alive).await;
}

#[tokio::test]
async fn after_the_delay_every_tunnel_gets_1001_and_a_request_in_flight_finishes() {
    let echo = echo_backend().await;
    let mut held = HeldBackend::start().await;
    let gw = TestGateway::start(&config(echo, held.addr)).await;
    let admin = gw.admin.expect("admin");
    let mut rx = gw.access_log();
    let mut tunnels = Vec::new();
    for _ in 0..20 {
        tunnels.push(ws_connect(gw.addr("public"), "/ws").await);
    }
    let mut slow = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    send_get(&mut slow, "/slow/in-flight").await;
    held.next_request().await;

    let plan = StopPlan {
        delay: Duration::ZERO,
        spread: Duration::from_millis(200),
        timeout: Duration::from_secs(20),
    };
    let stop = tokio::spawn(wsgate::control::lifecycle::stop(
        gw.gateway.shared().clone(),
        plan,
    ));
    for ws in &mut tunnels {
        assert_eq!(
            expect_close(ws, "Close 1001").await,
            (1001, "going away".to_string())
        );
        // Whenever a Close arrives, /readyz already says no.
        assert_eq!(readyz(admin).await.0, 503);
    }
    for ws in tunnels {
        finish(ws).await;
    }
    for _ in 0..20 {
        assert_closed_by_proxy(&*next_record(&mut rx).await, 1001, "going away");
    }
    // The request was still in flight through all of that; it completes.
    held.release.send(()).expect("release");
    let (status, body) = read_sized_response(&mut slow).await;
    assert_eq!(status, 200);
    assert_eq!(body, pattern(0, BODY_LEN), "the whole body");
    wait_closed(&mut slow).await;
    let stopped = within("the stop to end", stop).await.expect("stop task");
    assert_eq!(stopped, Stopped::Clean);
}

#[tokio::test]
async fn a_request_still_in_flight_at_the_timeout_is_cut() {
    let echo = echo_backend().await;
    let mut held = HeldBackend::start().await;
    let gw = TestGateway::start(&config(echo, held.addr)).await;
    let mut slow = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    send_get(&mut slow, "/slow/never").await;
    held.next_request().await;
    let plan = StopPlan {
        delay: Duration::ZERO,
        spread: Duration::ZERO,
        timeout: Duration::from_millis(200),
    };
    let stopped = within("the stop to end", gw.gateway.stop(plan)).await;
    assert_eq!(stopped, Stopped::Cut { tunnels: 0 });
    let mut rest = Vec::new();
    let _ = within("the cut", slow.read_to_end(&mut rest)).await;
    // Cut: the connection ends with no answer, or, when the cut reaches
    // the backend's side first, with a 502; never with the backend's 200.
    let text = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || text.starts_with("HTTP/1.1 502"),
        "{text:?}"
    );
}

// === /readyz while starting and with ready_requires_healthy ===

/// Holds the first lookup until the test drops its sender.
static GATE: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>> = std::sync::Mutex::new(None);

/// A resolver whose first lookup waits for the test, then answers 127.0.0.1.
fn held_resolver(_host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let gate = GATE.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(rx) = gate {
        let _ = rx.recv();
    }
    Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_starting_until_the_first_config_is_live() {
    let echo = echo_backend().await;
    let (release, rx) = std::sync::mpsc::channel::<()>();
    *GATE.lock().unwrap() = Some(rx);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wsgate.toml");
    // A host-named server: its lookup is what the start waits on.
    let toml = config(echo, echo).replacen(
        &format!("servers = [\"{echo}\"]"),
        &format!("servers = [\"backend.test:{}\"]", echo.port()),
        1,
    );
    std::fs::write(&path, toml).expect("write");
    let config = wsgate::config::load(&path).expect("valid");
    let public = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let public_addr = public.local_addr().expect("addr");
    let bound = vec![wsgate::front::listener::BoundListener {
        name: "public".to_string(),
        socket: public,
    }];
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = admin_listener.local_addr().expect("addr");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let launch = wsgate::Launch {
        admin: Some(wsgate::AdminServer::serve(admin_listener, &shutdown)),
        resolver: held_resolver,
        ..wsgate::Launch::default()
    };
    let starting = tokio::spawn(wsgate::Gateway::launch(
        config,
        bound,
        shutdown.clone(),
        launch,
    ));

    assert_eq!(
        readyz(admin).await,
        (503, serde_json::json!({"status": "starting"}))
    );
    assert_eq!(http_text(admin, "GET", "/healthz").await.0, 200);
    let (status, body) = http_text(admin, "GET", "/api/connections").await;
    assert_eq!(status, 503, "{body}");

    drop(release);
    let gateway = within("the start", starting)
        .await
        .expect("task")
        .expect("started");
    assert_eq!(
        readyz(admin).await,
        (200, serde_json::json!({"status": "ready"}))
    );
    // The same admin listener now serves the whole API, and traffic flows.
    assert_eq!(http_text(admin, "GET", "/api/connections").await.0, 200);
    let mut ws = ws_connect(public_addr, "/ws").await;
    echo_once(&mut ws, "hello").await;
    drop(ws);
    shutdown.cancel();
    within("the gateway to end", gateway.wait()).await;
}

#[tokio::test]
async fn with_ready_requires_healthy_readyz_names_an_upstream_without_a_usable_server() {
    let echo = echo_backend().await;
    let held = HeldBackend::start().await;
    let toml = config(echo, held.addr).replacen(
        "[admin]\n",
        "[admin]\nready_requires_healthy = true\n",
        1,
    );
    let gw = TestGateway::start(&toml).await;
    let admin = gw.admin.expect("admin");
    assert_eq!(readyz(admin).await.0, 200);
    let drain = format!("/api/upstreams/echo/servers/{echo}/drain");
    assert_eq!(http_text(admin, "POST", &drain).await.0, 202);
    assert_eq!(
        readyz(admin).await,
        (
            503,
            serde_json::json!({"status": "unhealthy", "upstreams_without_usable_server": ["echo"]})
        )
    );
    let enable = format!("/api/upstreams/echo/servers/{echo}/enable");
    assert_eq!(http_text(admin, "POST", &enable).await.0, 200);
    assert_eq!(readyz(admin).await.0, 200);
}

#[tokio::test]
async fn without_ready_requires_healthy_readyz_ignores_server_state() {
    let echo = echo_backend().await;
    let held = HeldBackend::start().await;
    let gw = TestGateway::start(&config(echo, held.addr)).await;
    let admin = gw.admin.expect("admin");
    let drain = format!("/api/upstreams/echo/servers/{echo}/drain");
    assert_eq!(http_text(admin, "POST", &drain).await.0, 202);
    assert_eq!(readyz(admin).await.0, 200);
}

// === the real process, on SIGTERM ===

/// `config` with `[runtime]` stop timing, for a socket-activated process.
fn process_config(echo: SocketAddr, held: SocketAddr, runtime: &str) -> String {
    format!("[runtime]\n{runtime}\n{}", config(echo, held))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readyz_503_closes_200_tunnels_with_1001_lets_a_request_finish_and_exits_0() {
    let echo = echo_backend().await;
    let mut held = HeldBackend::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wsgate.toml");
    let runtime =
        "shutdown_delay = \"200ms\"\nshutdown_spread = \"1s\"\nshutdown_timeout = \"20s\"";
    std::fs::write(&path, process_config(echo, held.addr, runtime)).expect("write");
    let mut wsgate =
        process::Wsgate::activate(&["public=127.0.0.1:0", "admin=127.0.0.1:0"], &path, &[]).await;
    let (public, admin) = (wsgate.addr("public"), wsgate.addr("admin"));
    wait_readyz(admin, 200).await;

    let (closes, mut closed) = mpsc::unbounded_channel();
    for _ in 0..200 {
        let mut ws = ws_connect(public, "/ws").await;
        let closes = closes.clone();
        tokio::spawn(async move {
            let code = expect_close(&mut ws, "Close 1001").await;
            let _ = closes.send(code);
            finish(ws).await;
        });
    }
    let mut slow = TcpStream::connect(public).await.expect("connect");
    send_get(&mut slow, "/slow/in-flight").await;
    held.next_request().await;

    wsgate.signal("TERM");
    let first = within("the first Close", closed.recv())
        .await
        .expect("a close");
    // By the time any tunnel is closed, /readyz already says no.
    assert_eq!(
        readyz(admin).await,
        (503, serde_json::json!({"status": "draining"}))
    );
    let mut codes = vec![first];
    while codes.len() < 200 {
        codes.push(within("every Close", closed.recv()).await.expect("a close"));
    }
    assert!(
        codes.iter().all(|c| *c == (1001, "going away".to_string())),
        "{codes:?}"
    );
    // The plain request was in flight through all of that; it completes.
    held.release.send(()).expect("release");
    let (status, body) = read_sized_response(&mut slow).await;
    assert_eq!(status, 200);
    assert_eq!(body, pattern(0, BODY_LEN), "the whole body");
    let status = wsgate.wait_exit().await;
    assert!(status.success(), "exit after SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_during_the_delay_cuts_at_once_and_exits_0() {
    let echo = echo_backend().await;
    let held = HeldBackend::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wsgate.toml");
    std::fs::write(
        &path,
        process_config(
            echo,
            held.addr,
            "shutdown_delay = \"1h\"\nshutdown_timeout = \"2h\"",
        ),
    )
    .expect("write");
    let mut wsgate =
        process::Wsgate::activate(&["public=127.0.0.1:0", "admin=127.0.0.1:0"], &path, &[]).await;
    let (public, admin) = (wsgate.addr("public"), wsgate.addr("admin"));
    wait_readyz(admin, 200).await;
    let mut ws = ws_connect(public, "/ws").await;
    wsgate.signal("TERM");
    wait_readyz(admin, 503).await;
    // Within the hour-long delay the tunnel still carries messages.
    echo_once(&mut ws, "still here").await;
    wsgate.signal("TERM");
    let status = wsgate.wait_exit().await;
    assert!(status.success(), "exit after a second SIGTERM: {status}");
    let next = within("the cut", ws.next()).await;
    assert!(
        !matches!(next, Some(Ok(Message::Close(_)))),
        "a cut tunnel got a Close: {next:?}"
    );
}
