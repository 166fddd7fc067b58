//! Shared by the PROXY protocol tests (proxy_protocol.rs, accepting;
//! proxy_protocol_send.rs, sending): headers written out by hand and a
//! gateway with PROXY listeners. Included with `#[path]`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::common::*;

/// Where the load balancer says its clients connected to.
pub const FRONT: &str = "198.51.100.1:443";

/// A v1 header for `client`, written out by hand (not by wsgate's encoder).
pub fn v1(client: &str) -> Vec<u8> {
    let c: SocketAddr = client.parse().expect("client");
    format!("PROXY TCP4 {} 198.51.100.1 {} 443\r\n", c.ip(), c.port()).into_bytes()
}

/// A v2 PROXY header for an IPv4 `client`, byte by byte.
pub fn v2(client: &str) -> Vec<u8> {
    let c: std::net::SocketAddrV4 = client.parse().expect("client");
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    h.extend_from_slice(&c.ip().octets());
    h.extend_from_slice(&[198, 51, 100, 1]);
    h.extend_from_slice(&c.port().to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// `[limits]` body, then a plain listener `lb` and a TLS listener `lbs`
/// taking PROXY headers from `trusted`, routing to `upstreams` (TOML of
/// routes and upstreams).
pub async fn start(limits: &str, trusted: &str, upstreams: &str) -> TestGateway {
    let dir = tempfile::tempdir().expect("tempdir");
    make_cert(dir.path(), "a", &["a.test"]);
    let toml = format!(
        "[timeouts]\nconnect = \"2s\"\nupstream_handshake = \"2s\"\nclient_handshake = \"500ms\"\n\n\
         [limits]\n{limits}\n\n\
         [[listeners]]\nname = \"lb\"\nbind = \"127.0.0.1:0\"\nproxy_protocol = true\ntrusted_proxies = [{trusted}]\n\n\
         [[listeners]]\nname = \"lbs\"\nbind = \"127.0.0.1:0\"\nproxy_protocol = true\ntrusted_proxies = [{trusted}]\n\
         tls = {{ cert = \"a.pem\", key = \"a.key\" }}\n\n\
         [[listeners]]\nname = \"direct\"\nbind = \"127.0.0.1:0\"\n\n{upstreams}"
    );
    TestGateway::start_in(dir, &toml).await
}

/// One route to one upstream of `servers`, with `extra` keys.
pub fn upstream(servers: &[SocketAddr], extra: &str) -> String {
    format!(
        "[[routes]]\nupstream = \"u\"\n\n[upstreams.u]\nservers = {}\n{extra}\n",
        server_list(servers)
    )
}

/// A GET request head for `path`.
pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n")
}

/// Waits until wsgate has `n` client connections open.
pub async fn wait_open(gw: &TestGateway, n: usize) {
    let shared = gw.gateway.shared();
    within(&format!("{n} open client connections"), async {
        while shared.admission.open() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Everything `s` receives until the connection closes.
pub async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
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

/// `wsgate_connections_refused_total` of `listener` for `reason`.
pub fn refused(gw: &TestGateway, listener: &str, reason: &str) -> u64 {
    let series =
        format!("wsgate_connections_refused_total{{listener=\"{listener}\",reason=\"{reason}\"}} ");
    let text = gw.gateway.shared().metrics.encode().expect("encode");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
