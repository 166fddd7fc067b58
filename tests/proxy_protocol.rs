//! The PROXY protocol accepted, with real sockets: a listener with
//! `proxy_protocol = true` takes a v1 or v2 header (in the same write as
//! the request, or split over many) from `trusted_proxies` only, before
//! TLS on a TLS listener, and its client is the client in the access log,
//! the live registry, `X-Forwarded-For`/`Forwarded`, `hash_key = "ip"` and
//! `max_connections_per_ip`; bad headers are closed and counted beside a
//! steady client. Sending headers to upstreams is in proxy_protocol_send.rs.

mod common;
#[path = "support/proxy.rs"]
mod proxy;

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use common::*;
use proxy::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use wsgate::front::listener::REFUSED_RESPONSE;

async fn connect_from(ip: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(SocketAddr::new(ip.into(), 0)).expect("bind source");
    within("connect", s.connect(to)).await.expect("connect")
}

/// A WebSocket through `to` whose PROXY header (written alone) is `header`.
async fn ws_via(to: SocketAddr, header: &[u8]) -> WebSocketStream<TcpStream> {
    let mut tcp = TcpStream::connect(to).await.expect("connect");
    tcp.write_all(header).await.expect("header");
    let (ws, _) = within(
        "the WebSocket handshake",
        tokio_tungstenite::client_async(format!("ws://{to}/ws"), tcp),
    )
    .await
    .expect("handshake");
    ws
}

/// `header` and `request` in one write; the one response.
async fn exchange(tcp: &mut TcpStream, header: &[u8], request: &str) -> (u16, String, Vec<u8>) {
    let mut all = header.to_vec();
    all.extend_from_slice(request.as_bytes());
    raw_exchange(tcp, &all).await
}

#[tokio::test]
async fn the_carried_address_is_the_client_in_logs_registry_and_forwarding_headers() {
    let mut backend = WsBackend::start().await;
    let gw = start("", "\"127.0.0.1/32\"", &upstream(&[backend.addr], "")).await;
    let mut log = gw.access_log();
    for (header, client) in [
        (v1("203.0.113.7:4000"), "203.0.113.7:4000"),
        (v2("203.0.113.8:4001"), "203.0.113.8:4001"),
    ] {
        let mut tcp = TcpStream::connect(gw.addr("lb")).await.expect("connect");
        // The header and the request in one segment: the request must
        // reach hyper whole.
        let (status, _, _) = exchange(&mut tcp, &header, &handshake_request("/ws", "a")).await;
        assert_eq!(status, 101);
        let seen = backend.next().await;
        let ip = client.split(':').next().expect("ip");
        assert_eq!(seen.headers["x-forwarded-for"], ip);
        let forwarded = seen.headers["forwarded"].to_str().expect("ascii");
        assert!(forwarded.starts_with(&format!("for={ip};")), "{forwarded}");
        gw.wait_live(1).await;
        let live = gw.gateway.registry().live();
        assert_eq!(
            live[0].info.client,
            addr(client),
            "as /api/connections shows it"
        );
        drop((tcp, seen));
        let r = next_record(&mut log).await;
        assert_eq!((r.client, r.listener.as_str()), (addr(client), "lb"));
        gw.wait_idle().await;
    }
    wait_open(&gw, 0).await;
}

#[tokio::test]
async fn a_header_split_over_many_reads_and_local_or_unknown_headers_are_taken() {
    let backend = echo_backend().await;
    let gw = start("", "\"127.0.0.1/32\"", &upstream(&[backend], "")).await;
    let mut log = gw.access_log();
    // One byte a write: each arrives in its own read.
    let mut tcp = TcpStream::connect(gw.addr("lb")).await.expect("connect");
    for b in v2("203.0.113.9:4002") {
        tcp.write_all(&[b]).await.expect("write");
        tcp.flush().await.expect("flush");
        tokio::task::yield_now().await;
    }
    let (ws, _) = within(
        "the handshake",
        tokio_tungstenite::client_async(format!("ws://{}/ws", gw.addr("lb")), tcp),
    )
    .await
    .expect("handshake");
    let mut ws = ws;
    echo_once(&mut ws, "after a split header").await;
    drop(ws);
    assert_eq!(next_record(&mut log).await.client, addr("203.0.113.9:4002"));

    // A balancer's own health check: the TCP peer's address stands.
    let local_v2 = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec();
    for header in [local_v2, b"PROXY UNKNOWN\r\n".to_vec()] {
        let mut tcp = TcpStream::connect(gw.addr("lb")).await.expect("connect");
        let me = tcp.local_addr().expect("addr");
        let (status, _, _) = exchange(&mut tcp, &header, &handshake_request("/ws", "a")).await;
        assert_eq!(status, 101);
        drop(tcp);
        assert_eq!(next_record(&mut log).await.client, me);
    }
    wait_open(&gw, 0).await;
}

/// A stream whose first write goes out together with `prefix`, in one
/// write: a PROXY header and a TLS ClientHello in one segment.
struct Glued {
    pending: Vec<u8>,
    glue: bool,
    inner: TcpStream,
}

impl Glued {
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.pending.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Glued {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Glued {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.glue {
            self.glue = false;
            self.pending.extend_from_slice(buf);
            // Taken whole into `pending`; what is left goes out on flush.
            let _ = self.drain(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn on_a_tls_listener_the_header_comes_before_the_tls_handshake() {
    let mut backend = WsBackend::start().await;
    let gw = start("", "\"127.0.0.1/32\"", &upstream(&[backend.addr], "")).await;
    let mut log = gw.access_log();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(gw.dir.path().join("a-ca.pem")).expect("CA") {
        roots.add(c.expect("CA cert")).expect("add CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    for (header, client) in [
        (v1("203.0.113.7:4000"), "203.0.113.7:4000"),
        (v2("203.0.113.8:4001"), "203.0.113.8:4001"),
    ] {
        let tcp = TcpStream::connect(gw.addr("lbs")).await.expect("connect");
        let glued = Glued {
            pending: header,
            glue: true,
            inner: tcp,
        };
        let name = ServerName::try_from("a.test").expect("name");
        let tls = within("the TLS handshake", connector.connect(name, glued))
            .await
            .expect("TLS after the header");
        let (mut ws, _) = within(
            "the WebSocket handshake",
            tokio_tungstenite::client_async("wss://a.test/ws", tls),
        )
        .await
        .expect("handshake");
        let mut seen = backend.next().await;
        assert_eq!(
            seen.headers["x-forwarded-for"],
            client.split(':').next().expect("ip")
        );
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
        use futures_util::{SinkExt, StreamExt};
        ws.send(tokio_tungstenite::tungstenite::Message::text("over TLS"))
            .await
            .expect("send");
        let m = within("the backend to read", seen.ws.next()).await;
        assert_eq!(
            m.expect("frame").expect("ok").into_text().expect("text"),
            "over TLS"
        );
        drop((ws, seen));
        assert_eq!(next_record(&mut log).await.client, addr(client));
    }
    wait_open(&gw, 0).await;
}

#[tokio::test]
async fn the_per_ip_limit_counts_the_carried_address() {
    let backend = echo_backend().await;
    let gw = start(
        "max_connections_per_ip = 1",
        "\"127.0.0.1/32\"",
        &upstream(&[backend], ""),
    )
    .await;
    let lb = gw.addr("lb");
    // Both from 127.0.0.1, as everything behind one balancer is.
    let mut first = ws_via(lb, &v1("203.0.113.7:4000")).await;
    let mut other = ws_via(lb, &v2("203.0.113.9:4000")).await;
    echo_once(&mut first, "first").await;
    echo_once(&mut other, "another client").await;
    assert_eq!(gw.gateway.shared().admission.addresses(), 2);

    let mut again = TcpStream::connect(lb).await.expect("connect");
    let mut all = v1("203.0.113.7:4001");
    all.extend_from_slice(handshake_request("/ws", "a").as_bytes());
    again.write_all(&all).await.expect("write");
    assert_eq!(read_to_close(&mut again).await, REFUSED_RESPONSE);
    assert_eq!(refused(&gw, "lb", "max_connections_per_ip"), 1);
    echo_once(&mut first, "beside the refusal").await;
    echo_once(&mut other, "beside the refusal").await;
    drop((first, other));
    wait_open(&gw, 0).await;
    assert_eq!(gw.gateway.shared().admission.addresses(), 0);
}

#[tokio::test]
async fn hash_key_ip_and_plain_requests_use_the_carried_address() {
    let (a, b) = (AppBackend::start().await, AppBackend::start().await);
    let balance = "balance = \"hash\"\nhash_key = \"ip\"";
    let gw = start(
        "",
        "\"127.0.0.1/32\"",
        &upstream(&[a.addr, b.addr], balance),
    )
    .await;
    let mut chosen = std::collections::BTreeMap::new();
    for i in 1..=40u8 {
        let client = format!("203.0.113.{i}:4000");
        for _ in 0..2 {
            let mut tcp = TcpStream::connect(gw.addr("lb")).await.expect("connect");
            let (status, _, body) = exchange(&mut tcp, &v2(&client), &get("/whoami")).await;
            assert_eq!(status, 200);
            let server = String::from_utf8(body).expect("text");
            let first = chosen.entry(i).or_insert_with(|| server.clone());
            assert_eq!(*first, server, "one client, one server");
        }
    }
    let servers: std::collections::BTreeSet<_> = chosen.values().collect();
    assert_eq!(
        servers.len(),
        2,
        "40 clients behind one peer spread: {chosen:?}"
    );

    let mut tcp = TcpStream::connect(gw.addr("lb")).await.expect("connect");
    let (_, _, body) = exchange(&mut tcp, &v1("203.0.113.7:4000"), &get("/headers")).await;
    let body = String::from_utf8(body).expect("text");
    assert!(body.contains("x-forwarded-for: 203.0.113.7\n"), "{body}");
    drop(tcp);
    wait_open(&gw, 0).await;
}

#[tokio::test]
async fn a_peer_outside_trusted_proxies_is_closed_while_a_trusted_one_is_served() {
    let backend = echo_backend().await;
    let trusted = Ipv4Addr::new(127, 0, 0, 2);
    let gw = start("", "\"127.0.0.2/32\"", &upstream(&[backend], "")).await;
    let lb = gw.addr("lb");
    let mut steady = {
        let mut tcp = connect_from(trusted, lb).await;
        tcp.write_all(&v1("203.0.113.7:4000"))
            .await
            .expect("header");
        let (ws, _) = within(
            "the handshake",
            tokio_tungstenite::client_async(format!("ws://{lb}/ws"), tcp),
        )
        .await
        .expect("handshake");
        ws
    };
    echo_once(&mut steady, "before").await;
    for listener in ["lb", "lbs"] {
        let mut stranger = connect_from(Ipv4Addr::LOCALHOST, gw.addr(listener)).await;
        let mut all = v1("203.0.113.66:4000");
        all.extend_from_slice(handshake_request("/ws", "a").as_bytes());
        let _ = stranger.write_all(&all).await;
        assert_eq!(read_to_close(&mut stranger).await, b"", "a bare close");
        assert_eq!(refused(&gw, listener, "untrusted_proxy"), 1);
    }
    echo_once(&mut steady, "beside the strangers").await;
    drop(steady);
    wait_open(&gw, 0).await;
}

#[tokio::test]
async fn bad_headers_are_closed_and_counted_beside_a_steady_client() {
    let backend = echo_backend().await;
    let gw = start("", "\"127.0.0.1/32\"", &upstream(&[backend], "")).await;
    let lb = gw.addr("lb");
    let mut steady = ws_via(lb, &v2("203.0.113.7:4000")).await;
    echo_once(&mut steady, "before").await;
    let mut bad_family = v2("203.0.113.8:4000");
    bad_family[13] = 0x31; // AF_UNIX
    let mut too_long = v2("203.0.113.8:4000");
    too_long[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    let mut overlong = b"PROXY UNKNOWN ".to_vec();
    overlong.resize(120, b'a');
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("no header", get("/").into_bytes(), false),
        ("v1 over 107 bytes", overlong, false),
        (
            "v1 missing a port",
            b"PROXY TCP4 203.0.113.8 198.51.100.1 4000\r\n".to_vec(),
            false,
        ),
        ("v2 unix family", bad_family, false),
        ("v2 longer than allowed", too_long, false),
        ("cut short", v1("203.0.113.8:4000")[..20].to_vec(), true),
        // Never finished: closed at timeouts.client_handshake.
        ("too slow", v2("203.0.113.8:4000")[..15].to_vec(), false),
    ];
    for (i, (what, bytes, eof)) in cases.into_iter().enumerate() {
        let mut tcp = TcpStream::connect(lb).await.expect("connect");
        let _ = tcp.write_all(&bytes).await;
        if eof {
            let _ = tcp.shutdown().await;
        }
        assert_eq!(read_to_close(&mut tcp).await, b"", "{what}: a bare close");
        let n = i as u64 + 1;
        within(&format!("{what} counted"), async {
            while refused(&gw, "lb", "proxy_header") != n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        echo_once(&mut steady, what).await;
    }
    wait_open(&gw, 1).await;
    drop(steady);
    wait_open(&gw, 0).await;
    gw.wait_idle().await;
}
