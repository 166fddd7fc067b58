//! Slow TLS clients: `timeouts.client_handshake` bounds the TLS handshake
//! as it bounds request heads. A thousand clients that open TCP and send
//! nothing, or half a ClientHello, do not keep a normal client from its
//! handshake, and each is closed by the timeout; with fewer handshake
//! places than slow clients (`limits.max_handshakes_in_flight`), a normal
//! client waits in the backlog behind them, until timeouts free places.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const SLOW: usize = 1000;

/// `timeouts.client_handshake` when every slow client must be in wsgate's
/// hands at once: long beside the time to open a thousand connections,
/// which a loaded two-core machine stretched past 3 s (then the first
/// ones timed out before the last arrived, and the count never reached a
/// thousand).
const HOLD_ALL: Duration = Duration::from_secs(10);

/// With half as many places: the first 500 must be held together, and
/// the normal client waits behind two rounds of this timeout.
const HOLD_HALF: Duration = Duration::from_secs(5);

async fn start(handshakes: usize, client_handshake: Duration) -> TestGateway {
    let dir = tempfile::tempdir().expect("tempdir");
    make_cert(dir.path(), "a", &["a.test"]);
    let toml = format!(
        "[timeouts]\nclient_handshake = \"{}s\"\n\n\
         [limits]\nmax_handshakes_in_flight = {handshakes}\n\n\
         [[listeners]]\nname = \"secure\"\nbind = \"127.0.0.1:0\"\n\
         tls = {{ cert = \"a.pem\", key = \"a.key\" }}\n\n\
         [[routes]]\nupstream = \"u\"\n\n[upstreams.u]\nservers = [\"{}\"]\n",
        client_handshake.as_secs(),
        echo_backend().await
    );
    TestGateway::start_in(dir, &toml).await
}

fn trusting(dir: &std::path::Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("a-ca.pem")).expect("CA") {
        roots.add(c.expect("CA cert")).expect("add CA");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A normal client: TLS handshake, WebSocket handshake, one echo.
async fn normal_client(addr: SocketAddr, dir: &std::path::Path) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("a.test").expect("name");
    let tls = within(
        "the normal client's TLS handshake",
        tokio_rustls::TlsConnector::from(Arc::new(trusting(dir))).connect(name, tcp),
    )
    .await
    .expect("TLS handshake");
    let (mut ws, _) = within(
        "the normal client's WebSocket handshake",
        tokio_tungstenite::client_async("wss://a.test/", tls),
    )
    .await
    .expect("WebSocket handshake");
    ws.send(Message::text("hello")).await.expect("send");
    match within("the echo", ws.next()).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "hello"),
        other => panic!("expected the echo, got {other:?}"),
    }
}

/// Opens `SLOW` connections: even ones silent, odd ones with the first
/// bytes of a ClientHello whose record declares 512 bytes.
async fn slow_clients(addr: SocketAddr) -> Vec<TcpStream> {
    let mut all = Vec::with_capacity(SLOW);
    for i in 0..SLOW {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        if i % 2 == 1 {
            tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
                .await
                .expect("partial hello");
        }
        all.push(tcp);
    }
    all
}

/// Each slow client is closed by wsgate, having received no byte that is
/// not a TLS alert (a record of type 21). Waits up to the handshake
/// timeout on top of the usual bound.
async fn all_closed(slow: Vec<TcpStream>, client_handshake: Duration) {
    let closed = tokio::time::timeout(WAIT + client_handshake, async {
        for mut tcp in slow {
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            assert!(got.is_empty() || got[0] == 21, "{got:?}");
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "timed out waiting for every slow client to be closed"
    );
}

async fn wait_open(gw: &TestGateway, n: usize) {
    let shared = gw.gateway.shared();
    within(&format!("{n} open client connections"), async {
        while shared.admission.open() != n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_thousand_slow_tls_clients_do_not_keep_a_normal_one_out() {
    let gw = start(2 * SLOW, HOLD_ALL).await;
    let addr = gw.addr("secure");
    let slow = slow_clients(addr).await;
    wait_open(&gw, SLOW).await;
    normal_client(addr, gw.dir.path()).await;
    all_closed(slow, HOLD_ALL).await;
    wait_open(&gw, 0).await;
}

#[tokio::test]
async fn with_fewer_handshake_places_than_slow_clients_a_normal_client_is_served_once_they_time_out(
) {
    let gw = start(SLOW / 2, HOLD_HALF).await;
    let addr = gw.addr("secure");
    let slow = slow_clients(addr).await;
    // Half are in wsgate's hands; the rest wait in the kernel's backlog,
    // ahead of the normal client, until the timeout frees places.
    wait_open(&gw, SLOW / 2).await;
    normal_client(addr, gw.dir.path()).await;
    all_closed(slow, HOLD_HALF).await;
    wait_open(&gw, 0).await;
}
