//! Connection limits at accept (`[limits] max_connections`,
//! `max_connections_per_ip`): what a refused client receives on a plain and
//! on a TLS listener, the metric by reason, a steady client beside that
//! loses nothing, and counts back to zero; the per-address table under
//! many source addresses (127.0.0.0/8).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use wsgate::front::listener::REFUSED_RESPONSE;

/// A plain listener `public` and a TLS listener `secure`, both routing to
/// `backend`, with `limits` as the `[limits]` table's body. Headers may
/// take a minute, so held connections stay open until the test drops them.
async fn start(backend: SocketAddr, limits: &str) -> TestGateway {
    let dir = tempfile::tempdir().expect("tempdir");
    make_cert(dir.path(), "a", &["a.test"]);
    let toml = format!(
        "[timeouts]\nclient_handshake = \"60s\"\n\n[limits]\n{limits}\n\n\
         [[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n\
         [[listeners]]\nname = \"secure\"\nbind = \"127.0.0.1:0\"\n\
         tls = {{ cert = \"a.pem\", key = \"a.key\" }}\n\n\
         [[routes]]\nupstream = \"u\"\n\n[upstreams.u]\nservers = [\"{backend}\"]\n"
    );
    TestGateway::start_in(dir, &toml).await
}

/// A TCP connection to `addr` from source address `ip`.
async fn connect_from(ip: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(SocketAddr::new(ip.into(), 0)).expect("bind source");
    within("connect", s.connect(addr)).await.expect("connect")
}

/// Everything the peer sends until it closes.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    within("the connection to close", async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    all
}

/// Waits until wsgate counts `n` open client connections (its table and its gauge).
async fn wait_open(gw: &TestGateway, n: usize) {
    let shared = gw.gateway.shared();
    within(&format!("{n} open client connections"), async {
        while shared.admission.open() != n || gauge(gw) != n as i64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

fn metrics(gw: &TestGateway) -> String {
    gw.gateway.shared().metrics.encode().expect("encode")
}

fn gauge(gw: &TestGateway) -> i64 {
    metrics(gw)
        .lines()
        .find_map(|l| l.strip_prefix("wsgate_client_connections "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

/// `wsgate_connections_refused_total` for a listener and reason (0 when absent).
fn refused(gw: &TestGateway, listener: &str, reason: &str) -> u64 {
    let series =
        format!("wsgate_connections_refused_total{{listener=\"{listener}\",reason=\"{reason}\"}} ");
    metrics(gw)
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

const HOSTILE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

#[tokio::test]
async fn over_the_per_ip_limit_a_plain_client_gets_503_and_others_are_served() {
    let gw = start(echo_backend().await, "max_connections_per_ip = 2").await;
    let addr = gw.addr("public");
    let mut steady = ws_connect(addr, "/").await;
    echo_once(&mut steady, "before").await;
    wait_open(&gw, 1).await;

    let held = [
        connect_from(HOSTILE, addr).await,
        connect_from(HOSTILE, addr).await,
    ];
    wait_open(&gw, 3).await;
    let mut third = connect_from(HOSTILE, addr).await;
    assert_eq!(
        String::from_utf8_lossy(&read_to_close(&mut third).await),
        String::from_utf8_lossy(REFUSED_RESPONSE)
    );
    assert!(REFUSED_RESPONSE.starts_with(b"HTTP/1.1 503 "));
    echo_once(&mut steady, "beside the refusal").await;
    assert_eq!(refused(&gw, "public", "max_connections_per_ip"), 1);
    assert_eq!(refused(&gw, "public", "max_connections"), 0);
    wait_open(&gw, 3).await;

    // Places come back: the address is served again once one closes.
    drop(held);
    wait_open(&gw, 1).await;
    let tcp = connect_from(HOSTILE, addr).await;
    let (mut again, _) = within(
        "a handshake from the same address",
        tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp),
    )
    .await
    .expect("handshake");
    echo_once(&mut again, "served again").await;
    echo_once(&mut steady, "after").await;
    drop((again, steady));
    wait_open(&gw, 0).await;
    assert_eq!(gw.gateway.shared().admission.addresses(), 0);
}

/// A client config trusting the test CA in `dir`.
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

async fn tls_handshake(
    addr: SocketAddr,
    dir: &std::path::Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("a.test").expect("name");
    within(
        "a TLS handshake",
        tokio_rustls::TlsConnector::from(Arc::new(trusting(dir))).connect(name, tcp),
    )
    .await
}

#[tokio::test]
async fn over_the_global_limit_tls_is_closed_before_the_handshake() {
    let gw = start(echo_backend().await, "max_connections = 3").await;
    let (public, secure) = (gw.addr("public"), gw.addr("secure"));
    let mut steady = ws_connect(public, "/").await;
    echo_once(&mut steady, "before").await;
    // Two TLS connections that never say hello fill the rest.
    let held = [
        TcpStream::connect(secure).await.expect("connect"),
        TcpStream::connect(secure).await.expect("connect"),
    ];
    wait_open(&gw, 3).await;

    let mut silent = TcpStream::connect(secure).await.expect("connect");
    assert_eq!(read_to_close(&mut silent).await, b"", "no TLS byte at all");
    assert!(
        tls_handshake(secure, gw.dir.path()).await.is_err(),
        "no handshake over the limit"
    );
    let mut plain = TcpStream::connect(public).await.expect("connect");
    assert_eq!(read_to_close(&mut plain).await, REFUSED_RESPONSE);
    echo_once(&mut steady, "beside the refusals").await;
    assert_eq!(refused(&gw, "secure", "max_connections"), 2);
    assert_eq!(refused(&gw, "public", "max_connections"), 1);
    assert_eq!(refused(&gw, "secure", "max_connections_per_ip"), 0);

    drop(held);
    wait_open(&gw, 1).await;
    let tls = tls_handshake(secure, gw.dir.path())
        .await
        .expect("a handshake once places are free");
    wait_open(&gw, 2).await;
    drop(tls);
    echo_once(&mut steady, "after").await;
    drop(steady);
    wait_open(&gw, 0).await;
}

#[tokio::test]
async fn the_per_ip_table_holds_only_addresses_with_open_connections() {
    let gw = start(echo_backend().await, "max_connections_per_ip = 1").await;
    let addr = gw.addr("public");
    let mut steady = ws_connect(addr, "/").await;
    let table = || gw.gateway.shared().admission.addresses();
    for round in 0..4u8 {
        // 500 source addresses at once, new ones each round.
        let mut held = Vec::new();
        for i in 0..500u16 {
            let ip = Ipv4Addr::new(127, 10 + round, (i / 250) as u8, 1 + (i % 250) as u8);
            held.push(connect_from(ip, addr).await);
        }
        wait_open(&gw, 501).await;
        assert_eq!(table(), 501);
        let mut over = connect_from(Ipv4Addr::new(127, 10 + round, 0, 1), addr).await;
        assert_eq!(read_to_close(&mut over).await, REFUSED_RESPONSE);
        assert_eq!(table(), 501, "a refusal leaves no entry");
        echo_once(&mut steady, "beside the crowd").await;
        drop(held);
        wait_open(&gw, 1).await;
        assert_eq!(table(), 1, "closed addresses leave the table");
    }
    assert_eq!(refused(&gw, "public", "max_connections_per_ip"), 4);
    drop(steady);
    wait_open(&gw, 0).await;
    assert_eq!(table(), 0);
}

#[tokio::test]
async fn at_max_handshakes_in_flight_new_connections_wait_in_the_backlog() {
    let gw = start(echo_backend().await, "max_handshakes_in_flight = 2").await;
    let (public, secure) = (gw.addr("public"), gw.addr("secure"));
    let mut steady = ws_connect(public, "/").await;
    let silent = [
        TcpStream::connect(secure).await.expect("connect"),
        TcpStream::connect(secure).await.expect("connect"),
    ];
    wait_open(&gw, 3).await;
    // The kernel completes this connection; wsgate does not accept it.
    let dir = gw.dir.path().to_path_buf();
    let waiting = tokio::spawn(async move { tls_handshake(secure, &dir).await.map(drop) });
    for i in 0..20 {
        echo_once(&mut steady, &format!("round {i}")).await;
        assert_eq!(gw.gateway.shared().admission.open(), 3, "not accepted");
    }
    assert!(!waiting.is_finished());
    // One place frees: the waiting client is accepted and its handshake done.
    drop(silent);
    within("the waiting handshake", waiting)
        .await
        .expect("task")
        .expect("TLS handshake once a place is free");
    echo_once(&mut steady, "after").await;
    drop(steady);
    wait_open(&gw, 0).await;
}
