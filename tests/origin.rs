//! A route's `allowed_origins`: a browser page from another origin cannot
//! open its WebSockets (cross-site WebSocket hijacking), a listed one can,
//! and a handshake without Origin passes only with `allow_missing_origin`.
//! Refused handshakes never reach a backend, and a client beside them
//! loses nothing.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::net::TcpStream;

/// Two routes on one listener: `/strict` allows listed origins only,
/// `/native` also takes handshakes without Origin; `/open` has no rule.
fn config(backend: SocketAddr) -> String {
    format!(
        "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n\
         [[routes]]\npath_prefix = \"/strict\"\nupstream = \"u\"\n\
         allowed_origins = [\"https://app.example.com\", \"https://*.example.org\", \"http://localhost:8080\"]\n\n\
         [[routes]]\npath_prefix = \"/native\"\nupstream = \"u\"\n\
         allowed_origins = [\"https://app.example.com\"]\nallow_missing_origin = true\n\n\
         [[routes]]\npath_prefix = \"/open\"\nupstream = \"u\"\n\n\
         [upstreams.u]\nservers = [\"{backend}\"]\n"
    )
}

/// The status a handshake on `path` gets with these extra header lines.
async fn status_with(addr: SocketAddr, path: &str, extra: &str) -> u16 {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let head = handshake_request(path, "a");
    let head = head.replacen("\r\n\r\n", &format!("\r\n{extra}\r\n\r\n"), 1);
    raw_exchange(&mut tcp, head.as_bytes()).await.0
}

fn metrics(gw: &TestGateway) -> String {
    gw.gateway.shared().metrics.encode().expect("encode")
}

#[tokio::test]
async fn listed_origins_pass_and_every_other_origin_is_403() {
    let mut backend = WsBackend::start().await;
    let gw = TestGateway::start(&config(backend.addr)).await;
    let addr = gw.addr("public");

    for ok in [
        "Origin: https://app.example.com",
        "Origin: https://APP.example.com:443",
        "Origin: https://chat.example.org",
        "Origin: http://localhost:8080",
    ] {
        assert_eq!(status_with(addr, "/strict", ok).await, 101, "{ok}");
        let seen = backend.next().await;
        let origin = ok.trim_start_matches("Origin: ");
        assert_eq!(
            seen.headers.get("origin").and_then(|v| v.to_str().ok()),
            Some(origin),
            "the backend sees the Origin as the client sent it"
        );
    }
    let refused = [
        "Origin: https://evil.test",
        "Origin: http://app.example.com",
        "Origin: https://app.example.com:8443",
        "Origin: https://app.example.com.evil.test",
        "Origin: https://example.org",
        "Origin: http://localhost",
        "Origin: null",
        "Origin: https://app.example.com/",
        "Origin: https://app.example.com\r\nOrigin: https://app.example.com",
        "X-No-Origin: 1",
    ];
    for bad in refused {
        assert_eq!(status_with(addr, "/strict", bad).await, 403, "{bad}");
    }
    assert!(
        backend.accepted.try_recv().is_err(),
        "no refused handshake reached the backend"
    );
    let m = metrics(&gw);
    assert!(
        m.contains(&format!(
            "wsgate_handshakes_total{{listener=\"public\",outcome=\"403\"}} {}",
            refused.len()
        )),
        "{m}"
    );
}

#[tokio::test]
async fn a_missing_origin_passes_only_where_allowed() {
    let mut backend = WsBackend::start().await;
    let gw = TestGateway::start(&config(backend.addr)).await;
    let addr = gw.addr("public");
    assert_eq!(status_with(addr, "/native", "X-Native: 1").await, 101);
    backend.next().await;
    assert_eq!(
        status_with(addr, "/native", "Origin: https://evil.test").await,
        403,
        "allow_missing_origin does not let a wrong Origin in"
    );
    assert_eq!(
        status_with(addr, "/open", "Origin: https://evil.test").await,
        101
    );
    backend.next().await;
    assert_eq!(status_with(addr, "/open", "X-Native: 1").await, 101);
    backend.next().await;
}

#[tokio::test]
async fn refusals_beside_a_steady_client_lose_it_nothing() {
    let backend = echo_backend().await;
    let gw = TestGateway::start(&config(backend)).await;
    let addr = gw.addr("public");
    let mut steady = ws_connect(addr, "/open").await;
    for i in 0..20 {
        assert_eq!(
            status_with(addr, "/strict", "Origin: https://evil.test").await,
            403
        );
        echo_once(&mut steady, &format!("message {i}")).await;
    }
    steady.close(None).await.expect("close");
    finish(steady).await;
    gw.wait_idle().await;
}
