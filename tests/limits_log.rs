//! A refusal at accept is logged, and repeats of it within the throttle
//! window are folded into the next line instead of one line each.
//!
//! Alone in its binary: it captures log lines with a process-wide
//! subscriber, since connections are accepted on wsgate's worker threads,
//! not the test's.

#[path = "support/capture.rs"]
mod capture;
mod common;

use std::net::SocketAddr;

use capture::Capture;
use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use wsgate::front::listener::REFUSED_RESPONSE;

async fn refused_answer(addr: SocketAddr) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let mut got = Vec::new();
    within("the refusal", tcp.read_to_end(&mut got))
        .await
        .expect("read");
    got
}

#[tokio::test]
async fn a_refusal_is_logged_once_per_window_with_its_reason() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let backend = echo_backend().await;
    let toml = format!(
        "[timeouts]\nclient_handshake = \"60s\"\n\n[limits]\nmax_connections_per_ip = 1\n\n\
         [[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n\
         [[routes]]\nupstream = \"u\"\n\n[upstreams.u]\nservers = [\"{backend}\"]\n"
    );
    let gw = TestGateway::start(&toml).await;
    let addr = gw.addr("public");
    let mut steady = ws_connect(addr, "/").await;
    for _ in 0..3 {
        assert_eq!(refused_answer(addr).await, REFUSED_RESPONSE);
    }
    echo_once(&mut steady, "beside").await;
    let lines = capture.lines("connection refused");
    assert_eq!(lines.len(), 1, "repeats are folded: {lines:?}");
    let line = &lines[0];
    for field in [
        "WARN",
        "over limits.max_connections_per_ip",
        "listener=\"public\"",
        "reason=\"max_connections_per_ip\"",
        "client=127.0.0.1:",
        "held_back=0",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
}
