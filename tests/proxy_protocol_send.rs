//! The PROXY protocol sent, with real sockets: an upstream with
//! `send_proxy_protocol = "v1" | "v2"` gets the header first on every
//! connection (tunnels, plain requests, before TLS, health probes), naming
//! the client a balancer in front named, and a pooled connection never
//! carries another client. Accepting headers is in proxy_protocol.rs.

mod common;
#[path = "support/proxy.rs"]
mod proxy;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use proxy::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wsgate::net::proxy_protocol::{ProxyHeader, Version};

/// The headers a backend received, in connection order.
fn headers_of(b: &AppBackend) -> Vec<(usize, ProxyHeader)> {
    let mut h = b.proxy_headers.lock().expect("lock").clone();
    h.sort_by_key(|(c, _)| *c);
    h
}

#[tokio::test]
async fn tunnels_send_v1_or_v2_with_the_client_the_balancer_named() {
    let (one, two) = (
        AppBackend::start_proxied(None).await,
        AppBackend::start_proxied(None).await,
    );
    let routes = format!(
        "[[routes]]\npath_prefix = \"/one\"\nupstream = \"one\"\n[[routes]]\npath_prefix = \"/two\"\nupstream = \"two\"\n\
         [upstreams.one]\nservers = [\"{}\"]\nsend_proxy_protocol = \"v1\"\n\
         [upstreams.two]\nservers = [\"{}\"]\nsend_proxy_protocol = \"v2\"\n",
        one.addr, two.addr
    );
    let gw = start("", "\"127.0.0.1/32\"", &routes).await;
    let lb = gw.addr("lb");
    for (path, backend, version) in [("/one", &one, Version::V1), ("/two", &two, Version::V2)] {
        let mut tcp = TcpStream::connect(lb).await.expect("connect");
        tcp.write_all(&v2("203.0.113.7:4000"))
            .await
            .expect("header");
        let (mut ws, _) = within(
            "the handshake",
            tokio_tungstenite::client_async(format!("ws://{lb}{path}"), tcp),
        )
        .await
        .expect("a backend that requires the header took it");
        echo_once(&mut ws, "through").await;
        let got = headers_of(backend);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.version, version);
        assert_eq!(
            got[0].1.addresses,
            Some((addr("203.0.113.7:4000"), addr(FRONT)))
        );
        drop(ws);
    }
    wait_open(&gw, 0).await;
}

#[tokio::test]
async fn a_pooled_backend_connection_never_carries_another_client() {
    let backend = AppBackend::start_proxied(None).await;
    let gw = start(
        "",
        "\"127.0.0.1/32\"",
        &upstream(&[backend.addr], "send_proxy_protocol = \"v2\""),
    )
    .await;
    let lb = gw.addr("lb");
    let mut a = TcpStream::connect(lb).await.expect("connect");
    let mut b = TcpStream::connect(lb).await.expect("connect");
    a.write_all(&v1("203.0.113.7:4000")).await.expect("header");
    b.write_all(&v1("203.0.113.9:4000")).await.expect("header");
    // Each response is read whole, so its backend connection goes back to
    // the pool before the next request.
    for round in 0..2 {
        for (client, tcp) in [("a", &mut a), ("b", &mut b)] {
            let (status, _, _) = raw_exchange(tcp, get("/headers").as_bytes()).await;
            assert_eq!(status, 200, "client {client}, round {round}");
        }
    }
    let headers = headers_of(&backend);
    let seen = backend.seen();
    assert_eq!(seen.len(), 4);
    for s in &seen {
        let (_, h) = headers
            .iter()
            .find(|(c, _)| *c == s.conn)
            .expect("every connection began with a header");
        let carried = h.addresses.expect("a client").0.ip().to_string();
        assert_eq!(
            s.headers["x-forwarded-for"], carried,
            "connection {} carried {carried}",
            s.conn
        );
    }
    assert!(headers.len() >= 2, "one connection per client at least");
    drop((a, b));
    wait_open(&gw, 0).await;
}

#[tokio::test]
async fn the_header_goes_before_tls_to_the_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (acceptor, _) = backend_tls_acceptor(dir.path(), None);
    let backend = AppBackend::start_proxied(Some(acceptor)).await;
    std::fs::copy(dir.path().join("backend-ca.pem"), dir.path().join("ca.pem")).expect("copy");
    let toml = format!(
        "[[listeners]]\nname = \"direct\"\nbind = \"127.0.0.1:0\"\n\
         [[routes]]\nupstream = \"u\"\n\
         [upstreams.u]\nservers = [\"{}\"]\ntls = true\nsni = \"localhost\"\nca_file = \"ca.pem\"\nsend_proxy_protocol = \"v1\"\n",
        backend.addr
    );
    let gw = TestGateway::start_in(dir, &toml).await;
    let direct = gw.addr("direct");
    let tcp = TcpStream::connect(direct).await.expect("connect");
    let me = tcp.local_addr().expect("addr");
    let (mut ws, _) = within(
        "the handshake",
        tokio_tungstenite::client_async(format!("ws://{direct}/ws"), tcp),
    )
    .await
    .expect("handshake over TLS after the header");
    echo_once(&mut ws, "over TLS").await;
    let got = headers_of(&backend);
    assert_eq!(
        got[0].1.addresses,
        Some((me, direct)),
        "the TCP peer, no balancer in front"
    );
    let (status, _, body) = http_text_via(direct, "/headers").await;
    assert_eq!(status, 200, "{body}");
    drop(ws);
    wait_open(&gw, 0).await;
}

/// A plain GET on a new connection to a plain listener.
async fn http_text_via(to: SocketAddr, path: &str) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(to).await.expect("connect");
    let (status, head, body) = raw_exchange(&mut tcp, get(path).as_bytes()).await;
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn health_probes_send_a_header_naming_no_client() {
    let (one, two) = (
        AppBackend::start_proxied(None).await,
        AppBackend::start_proxied(None).await,
    );
    let health = "health = { kind = \"http\", path = \"/whoami\", interval = \"100ms\", timeout = \"100ms\" }";
    let toml = format!(
        "[[listeners]]\nname = \"direct\"\nbind = \"127.0.0.1:0\"\n\
         [[routes]]\npath_prefix = \"/one\"\nupstream = \"one\"\n[[routes]]\npath_prefix = \"/two\"\nupstream = \"two\"\n\
         [upstreams.one]\nservers = [\"{}\"]\nsend_proxy_protocol = \"v1\"\n{health}\n\
         [upstreams.two]\nservers = [\"{}\"]\nsend_proxy_protocol = \"v2\"\n{health}\n",
        one.addr, two.addr
    );
    let _gw = TestGateway::start(&toml).await;
    for (backend, version) in [(&one, Version::V1), (&two, Version::V2)] {
        within("a probe answered", async {
            loop {
                let answered = backend
                    .seen()
                    .iter()
                    .any(|s| s.target == "/whoami" && s.headers.get("x-forwarded-for").is_none());
                if answered {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        let probe = headers_of(backend)[0].1;
        assert_eq!(
            probe,
            ProxyHeader {
                version,
                addresses: None
            }
        );
    }
}
