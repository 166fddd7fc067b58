//! A route's keepalive and `write_stall_timeout` over a TLS (wss)
//! listener, where wsgate's pings and Closes go through rustls and a
//! client that stops reading stops a TLS writer: wsgate pings a silent
//! client and drops its Pong, cuts a client that never answers (the
//! backend gets 1001), back-pressures a backend pushing at a wss client
//! that stopped reading (rustls holds no more than its own bounded buffer,
//! so the backend's writes block and nothing is lost once the client
//! reads again), and past `write_stall_timeout` gives that client up and
//! sends the backend 1001. A wss echo client beside each loses nothing.

mod common;
#[path = "support/push.rs"]
mod push;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use push::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use wsgate::observe::access::{EndReason, Side};

/// A gateway whose one listener, `secure`, is TLS for `a.test`, with a
/// catch-all route to `backend` carrying `keys`, and `/echo` to an echo
/// backend; and a client config trusting its certificate.
struct Wss {
    gw: TestGateway,
    client: Arc<rustls::ClientConfig>,
}

impl Wss {
    async fn start(backend: SocketAddr, keys: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, _, ca) = make_cert(dir.path(), "a", &["a.test"]);
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&ca).expect("CA") {
            roots.add(c.expect("CA cert")).expect("add CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let toml = format!(
            "[[listeners]]\nname = \"secure\"\nbind = \"127.0.0.1:0\"\n\
             tls = {{ cert = \"a.pem\", key = \"a.key\" }}\n\n\
             [[routes]]\nupstream = \"u\"\n{keys}\n\
             [[routes]]\npath_prefix = \"/echo\"\nupstream = \"e\"\n\n\
             [upstreams.u]\nservers = [\"{backend}\"]\n\n\
             [upstreams.e]\nservers = [\"{}\"]\n",
            echo_backend().await
        );
        let gw = TestGateway::start_in(dir, &toml).await;
        Self {
            gw,
            client: Arc::new(client),
        }
    }

    /// A TLS connection to the listener, handshake done.
    async fn tls(&self) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.gw.addr("secure"))
            .await
            .expect("connect");
        let name = ServerName::try_from("a.test").expect("name");
        within(
            "the TLS handshake",
            tokio_rustls::TlsConnector::from(self.client.clone()).connect(name, tcp),
        )
        .await
        .expect("TLS handshake")
    }

    /// A tungstenite client on `path` over TLS.
    async fn ws(&self, path: &str) -> WebSocketStream<TlsStream<TcpStream>> {
        let url = format!("wss://a.test{path}");
        let (ws, _) = within(
            "the WebSocket handshake",
            tokio_tungstenite::client_async(url, self.tls().await),
        )
        .await
        .expect("WebSocket handshake");
        ws
    }

    /// A raw client on `/ws` over TLS, past its 101 and not a byte further.
    async fn raw(&self) -> TlsStream<TcpStream> {
        let mut tls = self.tls().await;
        let request = handshake_request("/ws", "a.test");
        tls.write_all(request.as_bytes()).await.expect("request");
        let mut head = Vec::new();
        within("the 101", async {
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                tls.read_exact(&mut b).await.expect("the head");
                head.push(b[0]);
            }
        })
        .await;
        assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
        tls
    }
}

/// `wsgate_tunnels_closed_total` for `closed_by` and `reason`.
fn closed_total(gw: &TestGateway, closed_by: &str, reason: &str) -> u64 {
    let text = gw.gateway.shared().metrics.encode().expect("metrics");
    let labels = [
        format!("closed_by=\"{closed_by}\""),
        format!("reason=\"{reason}\""),
    ];
    text.lines()
        .filter(|l| l.starts_with("wsgate_tunnels_closed_total{"))
        .filter(|l| labels.iter().all(|want| l.contains(want.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Reads a TLS stream to its end, however it ends: wsgate may drop it
/// without a close_notify (a client given up on, or cut).
async fn read_until_gone(tls: &mut TlsStream<TcpStream>) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    within("the client's connection to end", async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    got
}

/// Over TLS, a silent client that answers (tungstenite does, as it reads)
/// gets ping after ping; the backend never sees a Pong, and the text the
/// client sends afterwards is the first thing it reads.
#[tokio::test]
async fn a_silent_wss_client_is_pinged_and_its_pongs_never_reach_the_backend() {
    let mut backend = WsBackend::start().await;
    let keys = "ping_interval = \"50ms\"\nping_timeout = \"5s\"\n";
    let wss = Wss::start(backend.addr, keys).await;
    let mut client = wss.ws("/ws").await;
    let mut server = backend.next().await.ws;
    for _ in 0..3 {
        match within("wsgate's ping", client.next()).await {
            Some(Ok(Message::Ping(p))) => assert_eq!(p.len(), 8),
            other => panic!("expected a ping, got {other:?}"),
        }
    }
    client
        .send(Message::text("still here"))
        .await
        .expect("send");
    match within("the text at the backend", server.next()).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "still here"),
        other => panic!("the backend got {other:?} first"),
    }
    assert_eq!(wss.gw.gateway.registry().live_count(), 1);
    assert_eq!(closed_total(&wss.gw, "client", "ping_timeout"), 0);
}

/// Over TLS, a client that reads wsgate's ping and never answers is dead:
/// the backend gets Close 1001 "ping timeout", the client's connection is
/// cut with nothing after the ping, the record and the metric say
/// `ping_timeout`, closed by the client, and an echo client beside it is
/// served throughout; counts return to zero.
#[tokio::test]
async fn a_wss_client_that_never_answers_is_cut_and_the_backend_gets_1001() {
    let mut backend = WsBackend::start().await;
    let keys = "ping_interval = \"50ms\"\nping_timeout = \"300ms\"\n";
    let wss = Wss::start(backend.addr, keys).await;
    let mut rx = wss.gw.access_log();
    let mut echo = wss.ws("/echo").await;
    echo_once(&mut echo, "before").await;
    let mut dead = wss.raw().await;
    let mut server = backend.next().await.ws;
    let (b0, payload) = read_frame(&mut dead).await;
    assert_eq!((b0, payload.len()), (0x89, 8), "wsgate's ping");
    let (code, reason) = expect_close(&mut server, "the backend's Close").await;
    assert_eq!((code, reason.as_str()), (1001, "ping timeout"));
    echo_once(&mut echo, "during").await;
    assert!(read_until_gone(&mut dead).await.is_empty());
    let r = next_record(&mut rx).await;
    assert_eq!(r.end.reason, EndReason::PingTimeout, "{r:?}");
    assert_eq!(r.end.closed_by, Side::Client);
    assert_eq!(r.end.close_code, Some(1001));
    assert_eq!(r.to_client.bytes, 0, "the ping is wsgate's, not relayed");
    assert_eq!(closed_total(&wss.gw, "client", "ping_timeout"), 1);
    finish(server).await;
    echo_once(&mut echo, "after").await;
    echo.close(None).await.expect("close");
    finish(echo).await;
    wss.gw.wait_idle().await;
}

/// A wss client that stops reading while the backend pushes 256 MiB:
/// rustls takes plaintext only up to its own bounded buffer, so the
/// backend's writes block after a bounded amount (kernel buffers and
/// wsgate's one buffer per direction), not after everything. Once the
/// client reads again every byte arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_client_that_stops_reading_back_pressures_the_backend_and_loses_nothing() {
    const FRAMES: u64 = 96;
    let (addr, mut accepted) = raw_ws_backend(b"").await;
    let wss = Wss::start(addr, "write_stall_timeout = \"10m\"\n").await;
    let mut client = wss.raw().await;
    let server = within("backend socket", accepted.recv())
        .await
        .expect("accepted");
    let (_server_rd, server_wr) = server.into_split();
    let (pusher, mut pushed, _stop) = start_push(server_wr, FRAMES, false);
    let blocked_at = match tokio::time::timeout(Duration::from_secs(120), pushed.recv()).await {
        Ok(Some(Pushed::Blocked(n))) => n,
        Ok(Some(Pushed::Done(n))) => panic!("all {n} bytes written to a client that reads nothing"),
        _ => panic!("the backend's writes never blocked"),
    };
    // Loopback buffers can grow to tens of MiB; wsgate's own share is 16
    // KiB per direction and rustls's 64 KiB.
    assert!(blocked_at < 64 << 20, "blocked after {blocked_at} bytes");
    let mut h = [0u8; 10];
    let mut got = vec![0u8; FRAME];
    let base = base();
    within("every frame, in order", async {
        for n in 0..FRAMES {
            client.read_exact(&mut h).await.expect("a frame header");
            assert_eq!(h, header(), "frame {n}");
            client.read_exact(&mut got).await.expect("a payload");
            assert_eq!(got[..8], n.to_le_bytes(), "frame {n} in its place");
            assert!(got[8..] == base[8..], "frame {n}'s payload differs");
        }
    })
    .await;
    let sent = match within("the pusher's total", pushed.recv()).await {
        Some(Pushed::Done(n)) => n,
        _ => panic!("the pusher ended without a total"),
    };
    within("the pusher", pusher).await.expect("no panic");
    assert_eq!(sent, FRAMES * (FRAME as u64 + 10));
}

/// A wss client that stops reading for the route's `write_stall_timeout`
/// is given up on: the backend gets Close 1001 "peer not reading" and EOF,
/// the client a prefix of the backend's frames and nothing after it (not
/// a Close it could not take), the record says `write_stall`, closed by
/// the client; an echo client beside it is served throughout, and counts
/// return to zero.
#[tokio::test]
async fn a_wss_client_that_stops_reading_is_given_up_on_after_the_write_stall_timeout() {
    let (addr, mut accepted) = raw_ws_backend(b"").await;
    let wss = Wss::start(addr, "write_stall_timeout = \"200ms\"\n").await;
    let mut rx = wss.gw.access_log();
    let mut echo = wss.ws("/echo").await;
    let mut client = wss.raw().await;
    let server = within("backend socket", accepted.recv())
        .await
        .expect("accepted");
    let (mut server_rd, server_wr) = server.into_split();
    let (pusher, pushed, stop) = start_push(server_wr, 256, false);
    assert_peer_not_reading(&mut server_rd, true).await;
    echo_once(&mut echo, "during").await;
    assert_nothing_more(&mut server_rd, "EOF at the backend").await;
    let sent = stop_push(pusher, pushed, stop).await;
    let r = next_record(&mut rx).await;
    assert_eq!(r.end.reason, EndReason::WriteStall, "{r:?}");
    assert_eq!(r.end.closed_by, Side::Client);
    assert_eq!(r.end.close_code, Some(1001));
    assert_eq!(closed_total(&wss.gw, "client", "write_stall"), 1);
    let got = read_until_gone(&mut client).await;
    assert_prefix_of_pushed(&got, sent, false);
    echo_once(&mut echo, "after").await;
    echo.close(None).await.expect("close");
    finish(echo).await;
    wss.gw.wait_idle().await;
}
