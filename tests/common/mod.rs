//! Shared test harness: a real wsgate on `127.0.0.1:0` started from TOML,
//! real WebSocket and raw-TCP backends, raw and WebSocket clients.
//! Every wait has a generous timeout; nothing asserts on elapsed time.
#![allow(dead_code)]
// tungstenite's handshake callback signature returns its large ErrorResponse by value.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use wsgate::front::listener::BoundListener;
use wsgate::observe::access::{AccessRecord, CloseOrder};
use wsgate::Gateway;

/// The close order wsgate records when it starts a closing handshake.
pub fn order(code: u16, reason: &str) -> CloseOrder {
    CloseOrder {
        code,
        reason: reason.to_string(),
    }
}

/// How long any single expected event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Awaits `f` or panics naming `what`.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A running wsgate and what it needs to stay alive.
pub struct TestGateway {
    pub gateway: Gateway,
    /// The admin listener's address, when the config has `[admin]`.
    pub admin: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    pub dir: tempfile::TempDir,
}

impl TestGateway {
    /// Starts wsgate from TOML text (written to a temp dir, so relative
    /// paths resolve there); each listener is bound on port 0 of its
    /// configured address (`127.0.0.1` or `[::1]` in tests).
    pub async fn start(toml: &str) -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir"), toml).await
    }

    /// Like [`start`], in a prepared directory (with certificates in it).
    pub async fn start_in(dir: tempfile::TempDir, toml: &str) -> Self {
        let path = dir.path().join("wsgate.toml");
        std::fs::write(&path, toml).expect("write config");
        let config =
            wsgate::config::load(&path).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let mut bound = Vec::new();
        for l in &config.listeners {
            bound.push(BoundListener {
                name: l.name.clone(),
                socket: TcpListener::bind(SocketAddr::new(l.bind.ip(), 0))
                    .await
                    .expect("bind"),
            });
        }
        let has_admin = config.admin.is_some();
        let shutdown = CancellationToken::new();
        let gateway = Gateway::start(config, bound, shutdown.clone()).expect("start");
        let admin = if has_admin {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
            let a = l.local_addr().expect("admin addr");
            gateway.serve_admin(l);
            Some(a)
        } else {
            None
        };
        Self {
            gateway,
            admin,
            shutdown,
            dir,
        }
    }

    /// Address of a listener.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.gateway.local_addr(listener).expect("listener exists")
    }

    /// Subscribes to finished-connection records.
    pub fn access_log(&self) -> tokio::sync::broadcast::Receiver<Arc<AccessRecord>> {
        self.gateway.registry().subscribe()
    }

    /// Waits until the registry holds exactly `n` live tunnels.
    pub async fn wait_live(&self, n: usize) {
        within(&format!("{n} live tunnels"), async {
            while self.gateway.registry().live_count() != n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    /// Waits until no tunnel is live.
    pub async fn wait_idle(&self) {
        within("live tunnels to return to zero", async {
            while self.gateway.registry().live_count() != 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Next access record, waiting for it.
pub async fn next_record(
    rx: &mut tokio::sync::broadcast::Receiver<Arc<AccessRecord>>,
) -> Arc<AccessRecord> {
    within("an access record", rx.recv()).await.expect("record")
}

/// A config with one plain listener `public` and one route `/` to upstream `u`.
pub fn simple_config(servers: &[SocketAddr]) -> String {
    format!(
        "[timeouts]\nconnect = \"2s\"\nupstream_handshake = \"2s\"\nclient_handshake = \"2s\"\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[routes]]\nupstream = \"u\"\n\n[upstreams.u]\nservers = {}\n",
        server_list(servers)
    )
}

/// TOML array of addresses.
pub fn server_list(servers: &[SocketAddr]) -> String {
    let items: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", items.join(", "))
}

// === backends ===

/// One WebSocket connection a backend accepted, with the request it saw.
pub struct Accepted {
    pub path: String,
    pub headers: http::HeaderMap,
    pub ws: WebSocketStream<TcpStream>,
}

/// A WebSocket backend handing every accepted connection to the test.
pub struct WsBackend {
    pub addr: SocketAddr,
    pub accepted: mpsc::UnboundedReceiver<Accepted>,
}

impl WsBackend {
    pub async fn start() -> Self {
        Self::start_with(|_req, res| res).await
    }

    /// `answer` may edit the 101 (e.g. to pick a subprotocol).
    pub async fn start_with(answer: fn(&Request, Response) -> Response) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let seen = Arc::new(Mutex::new(None));
                    let seen2 = seen.clone();
                    let cb = move |req: &Request, res: Response| {
                        *seen2.lock().unwrap() =
                            Some((req.uri().to_string(), req.headers().clone()));
                        Ok(answer(req, res))
                    };
                    if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await {
                        let (path, headers) = seen.lock().unwrap().take().expect("request seen");
                        let _ = tx.send(Accepted { path, headers, ws });
                    }
                });
            }
        });
        Self { addr, accepted: rx }
    }

    /// Waits for the next accepted connection.
    pub async fn next(&mut self) -> Accepted {
        within("the backend to accept a WebSocket", self.accepted.recv())
            .await
            .expect("backend alive")
    }
}

/// A WebSocket echo backend; returns its address.
pub async fn echo_backend() -> SocketAddr {
    let mut b = WsBackend::start().await;
    let addr = b.addr;
    tokio::spawn(async move {
        while let Some(mut a) = b.accepted.recv().await {
            tokio::spawn(async move {
                use futures_util::SinkExt;
                while let Some(Ok(m)) = a.ws.next().await {
                    if matches!(m, Message::Text(_) | Message::Binary(_))
                        && a.ws.send(m).await.is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A raw TCP backend: records every byte it receives on each connection and
/// answers the first request head with `answer(request_head)` (None: stay silent).
pub struct RawBackend {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Vec<u8>>>>,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl RawBackend {
    pub async fn start(answer: fn(&str) -> Option<Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw backend");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (rec, conns) = (received.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let rec = rec.clone();
                tokio::spawn(async move {
                    let index = {
                        let mut r = rec.lock().unwrap();
                        r.push(Vec::new());
                        r.len() - 1
                    };
                    let mut answered = false;
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let head = {
                            let mut r = rec.lock().unwrap();
                            r[index].extend_from_slice(&buf[..n]);
                            r[index].clone()
                        };
                        if !answered && head.windows(4).any(|w| w == b"\r\n\r\n") {
                            answered = true;
                            if let Some(a) = answer(&String::from_utf8_lossy(&head)) {
                                if tcp.write_all(&a).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            received,
            connections,
        }
    }

    /// Everything received on all connections, concatenated.
    pub fn all_received(&self) -> String {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }
}

/// The `Sec-WebSocket-Key` of a raw request head.
pub fn request_key(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_string())
    })
}

/// A correct 101 for a raw request head.
pub fn good_101(head: &str) -> Option<Vec<u8>> {
    let key = request_key(head)?;
    let accept = wsgate::proxy::handshake::accept_key(key.as_bytes());
    Some(format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").into_bytes())
}

/// An address nothing listens on (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a
}

/// A raw backend that answers the handshake, optionally sending `first` in
/// the same write as its 101, then hands the socket to the test.
pub async fn raw_ws_backend(
    first: &'static [u8],
) -> (std::net::SocketAddr, tokio::sync::mpsc::Receiver<TcpStream>) {
    let (addr, mut heads) = raw_ws_backend_with(first, "").await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Some((tcp, _)) = heads.recv().await {
            if tx.send(tcp).await.is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

/// Like [`raw_ws_backend`], with `extra` header lines (each ending in
/// CRLF) in its 101; hands the test each socket with the request head it read.
pub async fn raw_ws_backend_with(
    first: &'static [u8],
    extra: &'static str,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::Receiver<(TcpStream, String)>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let Some(mut answer) = good_101(&head) else {
                continue;
            };
            answer.truncate(answer.len() - 2);
            answer.extend_from_slice(extra.as_bytes());
            answer.extend_from_slice(b"\r\n");
            answer.extend_from_slice(first);
            if tcp.write_all(&answer).await.is_ok() {
                let _ = tx.send((tcp, head)).await;
            }
        }
    });
    (addr, rx)
}

/// A raw client handshake; returns the stream after the 101 head.
pub async fn raw_client(addr: std::net::SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let (status, _, _) = raw_exchange(&mut tcp, handshake_request("/ws", "a").as_bytes()).await;
    assert_eq!(status, 101);
    tcp
}

// === clients ===

/// A well-formed handshake request head for `path` on `host`.
pub fn handshake_request(path: &str, host: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
}

/// Sends raw bytes and reads one response head (and its body if it has a
/// Content-Length). Returns (status, head, body).
pub async fn raw_exchange(stream: &mut TcpStream, request: &[u8]) -> (u16, String, Vec<u8>) {
    stream.write_all(request).await.expect("write request");
    read_response(stream).await
}

/// Reads exactly one HTTP response from a stream, leaving any bytes after
/// it (a pipelined second response) unread.
pub async fn read_response(stream: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut data = Vec::new();
    within("a response head", async {
        // Byte by byte, so nothing past this response's head is consumed.
        while !data.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let n = stream.read(&mut byte).await.expect("read response");
            assert!(
                n > 0,
                "connection closed before a response: {:?}",
                String::from_utf8_lossy(&data)
            );
            data.push(byte[0]);
        }
    })
    .await;
    let head = String::from_utf8_lossy(&data).into_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let len = header_value(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    within("a response body", stream.read_exact(&mut body))
        .await
        .expect("read body");
    (status, head, body)
}

/// A header's value in a raw head, case-insensitive.
pub fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Waits for the peer to close the stream (EOF or reset), discarding data.
pub async fn wait_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    within("the connection to close", async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

// === WebSocket peers ===

/// Reads until the peer's close completes, then drops the stream, as a real
/// endpoint does once the closing handshake is over.
pub async fn finish<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(_)) = within("the closing handshake", ws.next()).await {}
}

/// The next message must be a Close frame with a code; returns its code
/// and reason. (tungstenite has already checked its masking and validity.)
pub async fn expect_close<S>(ws: &mut WebSocketStream<S>, what: &str) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match within(what, ws.next()).await {
        Some(Ok(Message::Close(Some(f)))) => (u16::from(f.code), f.reason.to_string()),
        other => panic!("{what}: expected a Close frame, got {other:?}"),
    }
}

/// The next message must be a text message of JSON, `what` (a feed's
/// update, a chat message); returns it parsed.
pub async fn next_json<S>(ws: &mut WebSocketStream<S>, what: &str) -> serde_json::Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match within(what, ws.next()).await {
        Some(Ok(Message::Text(t))) => serde_json::from_str(t.as_str()).expect("JSON"),
        other => panic!("expected {what}, got {other:?}"),
    }
}

/// Sends `text` to an echo backend and asserts the next message is its echo.
pub async fn echo_once<S>(ws: &mut WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::SinkExt;
    ws.send(Message::text(text)).await.expect("send");
    match within("an echo", ws.next()).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), text),
        other => panic!("expected the echo of {text:?}, got {other:?}"),
    }
}

/// A whole masked text frame of fewer than 126 bytes, as a client sends it.
pub fn masked_text(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126, "a short frame");
    let mask = [7u8, 1, 9, 3];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A binary frame with a 16-bit length (126 to 65535 bytes of `payload`),
/// masked with `mask` as a client's must be, or unmasked as a server's.
pub fn binary_frame(payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("a 16-bit length");
    assert!(len >= 126, "a frame with a 16-bit length");
    let mut f = vec![0x82, 126];
    f.extend_from_slice(&len.to_be_bytes());
    match mask {
        Some(m) => {
            f[1] |= 0x80;
            f.extend_from_slice(&m);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// Both peers of a tunnel start a binary frame of `len` payload bytes and
/// send only its first `sent` bytes; returns (client's frame, backend's
/// frame) once each part has reached the other side, so that whatever the
/// test does next happens in the middle of both frames.
pub async fn start_frames_both_ways(
    client: &mut TcpStream,
    server: &mut TcpStream,
    len: u16,
    sent: usize,
) -> (Vec<u8>, Vec<u8>) {
    let payload: Vec<u8> = (0..u32::from(len)).map(|i| (i * 7) as u8).collect();
    let client_frame = binary_frame(&payload, Some([9, 8, 7, 6]));
    let server_frame = binary_frame(&payload, None);
    client
        .write_all(&client_frame[..sent])
        .await
        .expect("client part");
    server
        .write_all(&server_frame[..sent])
        .await
        .expect("server part");
    let mut part = vec![0u8; sent];
    within(
        "the client's part at the backend",
        server.read_exact(&mut part),
    )
    .await
    .expect("read");
    assert_eq!(part, client_frame[..sent]);
    within(
        "the backend's part at the client",
        client.read_exact(&mut part),
    )
    .await
    .expect("read");
    assert_eq!(part, server_frame[..sent]);
    (client_frame, server_frame)
}

/// Reads one whole frame from a raw stream: (first byte, payload unmasked).
pub async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> (u8, Vec<u8>) {
    let (b0, _, payload) = read_frame_masked(s).await;
    (b0, payload)
}

/// Reads one whole frame from a raw stream: (first byte, whether it was
/// masked, payload unmasked).
pub async fn read_frame_masked<S: AsyncRead + Unpin>(s: &mut S) -> (u8, bool, Vec<u8>) {
    within("a frame", async {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await.expect("frame header");
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await.expect("len16");
            len = u64::from(u16::from_be_bytes(l));
        } else if len == 127 {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).await.expect("len64");
            len = u64::from_be_bytes(l);
        }
        let masked = h[1] & 0x80 != 0;
        let mut mask = [0u8; 4];
        if masked {
            s.read_exact(&mut mask).await.expect("mask");
        }
        let mut payload = vec![0u8; usize::try_from(len).expect("len")];
        s.read_exact(&mut payload).await.expect("payload");
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        (h[0], masked, payload)
    })
    .await
}

/// Asserts a record is of a tunnel wsgate itself closed with `code` and
/// `reason`, its Close being the first to pass.
pub fn assert_closed_by_proxy(r: &AccessRecord, code: u16, reason: &str) {
    use wsgate::observe::access::{EndReason, Side};
    assert_eq!(r.end.closed_by, Side::Proxy, "{r:?}");
    assert_eq!(r.end.close_code, Some(code), "{r:?}");
    assert_eq!(r.end.close_frame_from, Some(Side::Proxy), "{r:?}");
    assert_eq!(r.end.reason, EndReason::ProxyClose, "{r:?}");
    assert_eq!(r.end.proxy_close, Some(order(code, reason)), "{r:?}");
}

/// Asserts each `(key, value)` of a JSON object, naming the key that differs.
pub fn assert_json_fields(v: &serde_json::Value, fields: &[(&str, serde_json::Value)]) {
    for (key, want) in fields {
        assert_eq!(&v[key], want, "{key} in {v}");
    }
}

/// Connects a WebSocket client to `ws://addr{path}`.
pub async fn ws_connect(addr: SocketAddr, path: &str) -> WebSocketStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (ws, _) = within(
        "the WebSocket handshake",
        tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp),
    )
    .await
    .expect("handshake");
    ws
}

/// Makes a CA and a certificate for `names` in `dir`; returns (cert, key, ca) paths.
pub fn make_cert(dir: &std::path::Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let (ca, cert, key) = wsgate::demo::make_certificates(names).expect("certificates");
    let paths = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
        dir.join(format!("{stem}-ca.pem")),
    );
    std::fs::write(&paths.0, cert).expect("write cert");
    std::fs::write(&paths.1, key).expect("write key");
    std::fs::write(&paths.2, ca).expect("write ca");
    paths
}

// === an application backend: pages and WebSockets on one port ===

/// Byte `i` of every test body: position-dependent, so a lost, repeated or
/// reordered byte is seen.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// `len` bytes of the pattern starting at `offset`.
pub fn pattern(offset: u64, len: usize) -> bytes::Bytes {
    (0..len as u64).map(|i| pattern_byte(offset + i)).collect()
}

/// A body of `len` pattern bytes, sent in 64 KiB frames; with `chunked`,
/// its length is not announced, so hyper sends it chunked.
pub struct PatternBody {
    sent: u64,
    len: u64,
    chunked: bool,
    frame: u64,
}

impl PatternBody {
    pub fn new(len: u64, chunked: bool) -> Self {
        Self::framed(len, chunked, 64 * 1024)
    }

    /// In frames of `frame` bytes.
    pub fn framed(len: u64, chunked: bool, frame: u64) -> Self {
        Self {
            sent: 0,
            len,
            chunked,
            frame: frame.max(1),
        }
    }
}

impl http_body::Body for PatternBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let left = self.len - self.sent;
        if left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = left.min(self.frame);
        let data = pattern(self.sent, n as usize);
        self.sent += n;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.len
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.chunked {
            http_body::SizeHint::default()
        } else {
            http_body::SizeHint::with_exact(self.len - self.sent)
        }
    }
}

/// Reads a body to its end; returns its length and how many of its bytes
/// differ from the pattern.
pub async fn check_pattern<B>(body: B) -> Result<(u64, u64), B::Error>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    check_pattern_from(body, 0).await
}

/// Like [`check_pattern`] for a body whose first `offset` bytes were read
/// already; the length returned counts them.
pub async fn check_pattern_from<B>(mut body: B, offset: u64) -> Result<(u64, u64), B::Error>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    use http_body_util::BodyExt;
    let (mut len, mut wrong) = (offset, 0u64);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            for &b in data.iter() {
                wrong += u64::from(b != pattern_byte(len));
                len += 1;
            }
        }
    }
    Ok((len, wrong))
}

/// One request an [`AppBackend`] received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Index of the backend connection it came on (0, 1, ...).
    pub conn: usize,
    pub method: http::Method,
    pub target: String,
    pub headers: http::HeaderMap,
}

type AppBody = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;

/// A real HTTP/1.1 application server (hyper), plain or TLS, that serves
/// pages and WebSockets on the same port, as Socket.IO-style apps do, and
/// records every request and connection. It answers by path:
/// - a WebSocket upgrade on any path: 101, then echoes text and binary;
/// - `/echo`: streams the request body back as it arrives;
/// - `/count`: reads the body and answers `LEN WRONG` (see [`check_pattern`]);
/// - `/big/N`: N pattern bytes, with Content-Length (HEAD: headers only);
/// - `/status/N`: status N, no body;
/// - `/headers`: the request's headers, one `name: value` a line;
/// - `/hop`: a body, with hop-by-hop headers a proxy must not pass on;
/// - `/whoami`: this backend's address;
/// - `/trailers`: the request's trailers as text, and a trailer of its own;
/// - `/switch`: a 101 though nothing asked for it;
/// - `/never`: no answer at all.
pub struct AppBackend {
    pub addr: SocketAddr,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    pub requests: Arc<Mutex<Vec<Seen>>>,
    /// With [`AppBackend::start_proxied`]: the PROXY header each connection
    /// began with, by connection index.
    pub proxy_headers: Arc<Mutex<Vec<(usize, wsgate::net::proxy_protocol::ProxyHeader)>>>,
}

impl AppBackend {
    pub async fn start() -> Self {
        Self::start_tls(None).await
    }

    /// With `tls`, every connection is a TLS connection first.
    pub async fn start_tls(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        Self::start_with(tls, false).await
    }

    /// Like [`start_tls`], requiring a PROXY protocol header (v1 or v2)
    /// before anything else on every connection, as a backend behind an L4
    /// balancer does: a connection without one is closed unanswered.
    pub async fn start_proxied(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        Self::start_with(tls, true).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>, proxied: bool) -> Self {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind app backend");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let proxy_headers = Arc::new(Mutex::new(Vec::new()));
        let (conns, reqs, heads) = (connections.clone(), requests.clone(), proxy_headers.clone());
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let conn = conns.fetch_add(1, Ordering::SeqCst);
                let reqs = reqs.clone();
                let tls = tls.clone();
                let heads = heads.clone();
                tokio::spawn(async move {
                    if proxied {
                        match wsgate::net::proxy_protocol::read_header(&mut tcp).await {
                            Ok(h) => heads.lock().unwrap().push((conn, h)),
                            Err(_) => return,
                        }
                    }
                    let service = hyper::service::service_fn(move |req| {
                        reqs.lock().unwrap().push(Seen {
                            conn,
                            method: req.method().clone(),
                            target: req.uri().to_string(),
                            headers: req.headers().clone(),
                        });
                        app_answer(req, addr)
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let io = hyper_util::rt::TokioIo::new(tcp);
                            let _ = builder.serve_connection(io, service).with_upgrades().await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = builder.serve_connection(io, service).with_upgrades().await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            requests,
            proxy_headers,
        }
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.requests.lock().unwrap().clone()
    }

    /// Backend connections accepted so far.
    pub fn connection_count(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn app_answer(
    mut req: hyper::Request<hyper::body::Incoming>,
    me: SocketAddr,
) -> Result<hyper::Response<AppBody>, std::convert::Infallible> {
    use http_body_util::{BodyExt, Empty, Full};
    let text = |s: String| {
        Full::new(bytes::Bytes::from(s))
            .map_err(|n| match n {})
            .boxed()
    };
    let empty = || Empty::new().map_err(|n| match n {}).boxed();
    let path = req.uri().path().to_string();
    if let Some(key) = req.headers().get("sec-websocket-key") {
        let accept = wsgate::proxy::handshake::accept_key(key.as_bytes());
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let io = hyper_util::rt::TokioIo::new(upgraded);
            let mut ws = WebSocketStream::from_raw_socket(
                io,
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            use futures_util::SinkExt;
            while let Some(Ok(m)) = ws.next().await {
                if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                    break;
                }
            }
        });
        let res = hyper::Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-accept", accept)
            .body(empty())
            .expect("101");
        return Ok(res);
    }
    let res = match path.as_str() {
        "/echo" => hyper::Response::new(req.into_body().boxed()),
        "/count" => {
            let (len, wrong) = match check_pattern(req.into_body()).await {
                Ok(r) => r,
                Err(e) => {
                    let mut r = hyper::Response::new(text(format!("body error: {e}")));
                    *r.status_mut() = http::StatusCode::BAD_REQUEST;
                    return Ok(r);
                }
            };
            hyper::Response::new(text(format!("{len} {wrong}")))
        }
        "/headers" => {
            let lines: String = req
                .headers()
                .iter()
                .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
                .collect();
            hyper::Response::new(text(lines))
        }
        "/hop" => hyper::Response::builder()
            .header("connection", "x-private")
            .header("x-private", "secret")
            .header("keep-alive", "timeout=5")
            .header("x-public", "yes")
            .body(text("hop".to_string()))
            .expect("response"),
        "/whoami" => hyper::Response::new(text(me.to_string())),
        "/trailers" => {
            // Answers with the request's trailers as text, and trailers of its own.
            let collected = match req.into_body().collect().await {
                Ok(c) => c,
                Err(e) => return Ok(hyper::Response::new(text(format!("body error: {e}")))),
            };
            let seen: String = collected
                .trailers()
                .map(|t| {
                    t.iter()
                        .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
                        .collect()
                })
                .unwrap_or_default();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-answer-sum", http::HeaderValue::from_static("42"));
            let frames = vec![
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::from(seen))),
                Ok(http_body::Frame::trailers(trailers)),
            ];
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            hyper::Response::builder()
                .header("trailer", "x-answer-sum")
                .body(body.map_err(|n| match n {}).boxed())
                .expect("response")
        }
        "/switch" => hyper::Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .body(empty())
            .expect("response"),
        "/never" => std::future::pending().await,
        p => {
            if let Some(n) = p.strip_prefix("/big/").and_then(|n| n.parse::<u64>().ok()) {
                hyper::Response::new(PatternBody::new(n, false).map_err(|n| match n {}).boxed())
            } else if let Some(s) = p
                .strip_prefix("/status/")
                .and_then(|n| n.parse::<u16>().ok())
                .and_then(|n| http::StatusCode::from_u16(n).ok())
            {
                let mut r = hyper::Response::new(empty());
                *r.status_mut() = s;
                r
            } else {
                let mut r = hyper::Response::new(text(format!("no page {p}")));
                *r.status_mut() = http::StatusCode::NOT_FOUND;
                r
            }
        }
    };
    Ok(res)
}

/// An HTTP/1.1 client connection (hyper) to `addr`.
pub async fn http_client<B>(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("client handshake");
    tokio::spawn(conn);
    send
}

/// A request to `path` with `Host: a` and `body`.
pub fn http_request<B>(method: &str, path: &str, body: B) -> hyper::Request<B> {
    hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "a")
        .body(body)
        .expect("request")
}

/// Sends one request on a fresh client connection; returns status and body text.
pub async fn http_text(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_send(
        addr,
        method,
        path,
        http_body_util::Empty::<bytes::Bytes>::new(),
    )
    .await
}

/// Sends `body` to `path` on a fresh client connection; returns status and body text.
pub async fn http_send<B>(addr: SocketAddr, method: &str, path: &str, body: B) -> (u16, String)
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    let mut client = http_client(addr).await;
    let res = within(
        "a response",
        client.send_request(http_request(method, path, body)),
    )
    .await
    .expect("response");
    let status = res.status().as_u16();
    let body = within("a response body", res.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A TLS acceptor for a backend with a certificate for `localhost` made in
/// `dir` (as `backend.pem`, signed by `backend-ca.pem`); with `client_ca`,
/// it requires a client certificate signed by that CA. Returns the
/// acceptor and the path of the CA that signed the backend's certificate.
pub fn backend_tls_acceptor(
    dir: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> (tokio_rustls::TlsAcceptor, PathBuf) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key, ca) = make_cert(dir, "backend", &["localhost"]);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .expect("cert")
        .collect::<Result<_, _>>()
        .expect("cert");
    let key = PrivateKeyDer::from_pem_file(&key).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).expect("ca") {
                roots.add(c.expect("ca cert")).expect("add");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).expect("server config");
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca)
}
