//! Routing by host and path through a real gateway: specificity order,
//! whole-segment prefixes, Host normalisation, path normalisation before
//! routing, 404 when nothing matches, and the headers a backend receives.

mod common;

use std::net::SocketAddr;

use common::*;
use futures_util::future::select_all;
use futures_util::FutureExt;
use http::header::HOST;
use http::HeaderValue;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::WebSocketStream;

/// One backend per upstream, named like the upstream.
struct Backends(Vec<(&'static str, WsBackend)>);

const NAMES: [&str; 5] = ["exact", "wild", "api", "apiv2", "catchall"];

impl Backends {
    async fn start() -> Self {
        let mut v = Vec::new();
        for name in NAMES {
            v.push((name, WsBackend::start().await));
        }
        Self(v)
    }

    fn addr(&self, name: &str) -> SocketAddr {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| b.addr)
            .expect("backend exists")
    }

    /// Waits for whichever backend accepts the next WebSocket.
    async fn which(&mut self) -> (&'static str, Accepted) {
        let names: Vec<&'static str> = self.0.iter().map(|(n, _)| *n).collect();
        let futures = self.0.iter_mut().map(|(_, b)| b.accepted.recv().boxed());
        let (accepted, index, _) = within("some backend to accept", select_all(futures)).await;
        (names[index], accepted.expect("backend alive"))
    }

    /// No backend holds an accepted connection nobody looked at.
    fn assert_none_pending(&mut self) {
        for (name, b) in &mut self.0 {
            assert!(
                b.accepted.try_recv().is_err(),
                "backend {name} accepted an unexpected connection"
            );
        }
    }
}

/// The four routes of the brief plus a longer `/api/v2`, each to its own upstream.
fn routing_config(b: &Backends) -> String {
    format!(
        r#"[timeouts]
connect = "2s"
upstream_handshake = "2s"

[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[routes]]
host = "chat.example.test"
path_prefix = "/ws"
upstream = "exact"

[[routes]]
host = "*.example.test"
upstream = "wild"

[[routes]]
path_prefix = "/api"
upstream = "api"

[[routes]]
path_prefix = "/api/v2/"
upstream = "apiv2"

[[routes]]
upstream = "catchall"

[upstreams.exact]
servers = ["{}"]

[upstreams.wild]
servers = ["{}"]

[upstreams.api]
servers = ["{}"]

[upstreams.apiv2]
servers = ["{}"]

[upstreams.catchall]
servers = ["{}"]
"#,
        b.addr("exact"),
        b.addr("wild"),
        b.addr("api"),
        b.addr("apiv2"),
        b.addr("catchall"),
    )
}

/// Opens a WebSocket to `path` on the gateway with a raw `Host` header.
async fn connect_with_host(addr: SocketAddr, path: &str, host: &str) -> WebSocketStream<TcpStream> {
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert(HOST, HeaderValue::from_str(host).expect("host value"));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (ws, response) = within(
        &format!("the handshake for {host}{path}"),
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
    .unwrap_or_else(|e| panic!("handshake for Host {host} path {path}: {e}"));
    assert_eq!(response.status(), 101);
    ws
}

#[tokio::test]
async fn most_specific_route_wins() {
    let mut backends = Backends::start().await;
    let gw = TestGateway::start(&routing_config(&backends)).await;
    let addr = gw.addr("public");
    let mut log = gw.access_log();
    // (Host, path, backend, route label)
    let cases = [
        // Exact host and prefix beats the wildcard that also matches.
        ("chat.example.test", "/ws", "exact", "chat.example.test/ws"),
        ("chat.example.test", "/ws/", "exact", "chat.example.test/ws"),
        (
            "chat.example.test",
            "/ws/room/1",
            "exact",
            "chat.example.test/ws",
        ),
        // Prefixes match whole segments only.
        ("chat.example.test", "/wsx", "wild", "*.example.test/"),
        // The exact host has no route for this path: the wildcard takes it.
        ("chat.example.test", "/other", "wild", "*.example.test/"),
        // A host rule beats a longer any-host prefix.
        ("chat.example.test", "/api/x", "wild", "*.example.test/"),
        ("a.example.test", "/ws", "wild", "*.example.test/"),
        ("deep.a.example.test", "/", "wild", "*.example.test/"),
        // The wildcard never matches the bare domain.
        ("example.test", "/ws", "catchall", "*/"),
        // The wildcard's suffix starts at a dot.
        ("notexample.test", "/ws", "catchall", "*/"),
        ("[::1]:8080", "/ws", "catchall", "*/"),
        // Any host: longest prefix wins, whole segments only.
        ("other.test", "/api", "api", "*/api"),
        ("other.test", "/api/v1", "api", "*/api"),
        ("other.test", "/api/v2", "apiv2", "*/api/v2"),
        ("other.test", "/api/v2/x", "apiv2", "*/api/v2"),
        ("other.test", "/api/v2x", "api", "*/api"),
        ("other.test", "/apix", "catchall", "*/"),
        ("other.test", "/", "catchall", "*/"),
        // Host is compared without port or case (and a trailing dot).
        (
            "CHAT.Example.Test:8080",
            "/ws",
            "exact",
            "chat.example.test/ws",
        ),
        ("chat.example.test.", "/ws", "exact", "chat.example.test/ws"),
        ("A.EXAMPLE.TEST:443", "/x", "wild", "*.example.test/"),
    ];
    for (host, path, want, label) in cases {
        let ws = connect_with_host(addr, path, host).await;
        let (got, accepted) = backends.which().await;
        assert_eq!(got, want, "Host {host} path {path}");
        assert_eq!(
            accepted.path, path,
            "the path reaches the backend unchanged"
        );
        assert_eq!(
            accepted.headers.get(HOST).map(|h| h.to_str().unwrap()),
            Some(host),
            "the original Host is forwarded"
        );
        drop(ws);
        drop(accepted);
        let record = next_record(&mut log).await;
        assert_eq!(record.route, label, "Host {host} path {path}");
        assert_eq!(record.upstream, want, "Host {host} path {path}");
        assert_eq!(record.backend, backends.addr(want));
    }
    backends.assert_none_pending();
    gw.wait_idle().await;
}

#[tokio::test]
async fn paths_are_normalised_before_routing() {
    let mut backends = Backends::start().await;
    let gw = TestGateway::start(&routing_config(&backends)).await;
    let addr = gw.addr("public");
    let mut log = gw.access_log();
    // (Host, path sent, backend, path the backend receives)
    let cases = [
        // Unnormalised, these would match the wildcard (/api/...) or /api.
        ("chat.example.test", "/api/%2e%2e/ws", "exact", "/ws"),
        ("other.test", "/api/%2e%2e/ws", "catchall", "/ws"),
        ("other.test", "/api/%2E%2E/api/v2/q", "apiv2", "/api/v2/q"),
        ("other.test", "/x/../api", "api", "/api"),
        ("other.test", "/a/./b/../c?x=1", "catchall", "/a/c?x=1"),
        (
            "other.test",
            "/%61pi/%7Euser?q=%2e",
            "api",
            "/api/~user?q=%2e",
        ),
        ("other.test", "/api/a%c3%a9", "api", "/api/a%C3%A9"),
        ("chat.example.test", "/ws/.", "exact", "/ws/"),
    ];
    for (host, path, want, received) in cases {
        let ws = connect_with_host(addr, path, host).await;
        let (got, accepted) = backends.which().await;
        assert_eq!(got, want, "Host {host} path {path}");
        assert_eq!(accepted.path, received, "Host {host} path {path}");
        drop(ws);
        drop(accepted);
        let record = next_record(&mut log).await;
        assert_eq!(
            record.path, received,
            "the access log has the forwarded path"
        );
    }
    backends.assert_none_pending();
    gw.wait_idle().await;
}

/// RFC 9112 3.2 and RFC 3986 3.2.2: a Host that is not a name or an
/// address with a numeric port is 400 before routing, so `/`, `?` or `#`
/// cannot make `evil.test` match `*.example.test`, and no backend is told
/// such a Host.
#[tokio::test]
async fn a_host_that_is_not_a_host_is_400_before_routing() {
    let mut backends = Backends::start().await;
    let gw = TestGateway::start(&routing_config(&backends)).await;
    let addr = gw.addr("public");
    for host in [
        "evil.test/.example.test",
        "evil.test?.example.test",
        "evil.test#.example.test",
        "chat.example.test:1@evil.test",
        "a.example.test:x",
        "[::1",
    ] {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let (status, head, body) =
            raw_exchange(&mut tcp, handshake_request("/ws", host).as_bytes()).await;
        assert_eq!(status, 400, "Host {host}: {head}");
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("Host"), "Host {host}: {body:?}");
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let plain = format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let (status, head, _) = raw_exchange(&mut tcp, plain.as_bytes()).await;
        assert_eq!(status, 400, "plain, Host {host}: {head}");
    }
    backends.assert_none_pending();
    // Positive control: a good Host on the same route is served.
    let ws = connect_with_host(addr, "/ws", "a.example.test:80").await;
    assert_eq!(backends.which().await.0, "wild");
    drop(ws);
    gw.wait_idle().await;
}

#[tokio::test]
async fn no_route_is_404_and_reaches_no_backend() {
    let backend = RawBackend::start(good_101).await;
    let config = format!(
        r#"[timeouts]
connect = "2s"
upstream_handshake = "2s"

[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[routes]]
host = "chat.example.test"
path_prefix = "/ws"
upstream = "u"

[[routes]]
host = "*.example.test"
path_prefix = "/live"
upstream = "u"

[[routes]]
path_prefix = "/api"
upstream = "u"

[upstreams.u]
servers = ["{}"]
"#,
        backend.addr
    );
    let gw = TestGateway::start(&config).await;
    let addr = gw.addr("public");
    for (host, path) in [
        ("other.test", "/"),
        ("other.test", "/ws"),
        ("other.test", "/apix"),
        ("chat.example.test", "/wsx"),
        ("chat.example.test", "/"),
        ("example.test", "/live"),
        ("a.example.test", "/ws"),
        ("other.test", "/ws/../x"),
    ] {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let (status, head, body) =
            raw_exchange(&mut tcp, handshake_request(path, host).as_bytes()).await;
        assert_eq!(status, 404, "Host {host} path {path}: {head}");
        assert!(
            String::from_utf8_lossy(&body).contains("no route"),
            "Host {host} path {path}: {:?}",
            String::from_utf8_lossy(&body)
        );
    }
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    // Positive control: the same backend does see a routed request, and it is
    // the first connection it ever got.
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let (status, head, _) = raw_exchange(
        &mut tcp,
        handshake_request("/api/x", "other.test").as_bytes(),
    )
    .await;
    assert_eq!(status, 101, "{head}");
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let received = backend.all_received();
    assert!(
        received.starts_with("GET /api/x HTTP/1.1\r\n"),
        "{received}"
    );
    drop(tcp);
    gw.wait_idle().await;
}

#[tokio::test]
async fn backend_sees_forwarding_headers_and_no_hop_by_hop_headers() {
    let mut backends = Backends::start().await;
    let gw = TestGateway::start(&routing_config(&backends)).await;
    let addr = gw.addr("public");
    let request = "GET /ws/fwd?room=1 HTTP/1.1\r\n\
        Host: chat.example.test\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade, X-Hop\r\n\
        X-Hop: 1\r\n\
        Keep-Alive: timeout=5\r\n\
        Proxy-Authorization: Basic c2VjcmV0\r\n\
        TE: trailers\r\n\
        X-End: 2\r\n\
        Cookie: session=abc\r\n\
        X-Forwarded-For: 6.6.6.6\r\n\
        X-Forwarded-Proto: https\r\n\
        X-Forwarded-Host: evil.test\r\n\
        Forwarded: for=6.6.6.6;proto=https\r\n\
        X-Real-IP: 6.6.6.6\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Protocol: chat\r\n\
        \r\n";
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let (status, head, _) = raw_exchange(&mut tcp, request.as_bytes()).await;
    // tungstenite's backend picks no subprotocol, which is allowed.
    assert_eq!(status, 101, "{head}");
    let (got, accepted) = backends.which().await;
    assert_eq!(got, "exact");
    assert_eq!(accepted.path, "/ws/fwd?room=1");
    let h = &accepted.headers;
    let one = |name: &str| -> Option<String> {
        let mut all = h.get_all(name).iter();
        let first = all.next()?.to_str().expect("ascii").to_string();
        assert!(all.next().is_none(), "{name} appears more than once: {h:?}");
        Some(first)
    };
    assert_eq!(one("host").as_deref(), Some("chat.example.test"));
    assert_eq!(one("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(one("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        one("x-forwarded-host").as_deref(),
        Some("chat.example.test")
    );
    assert_eq!(
        one("forwarded").as_deref(),
        Some("for=127.0.0.1;proto=http;host=chat.example.test")
    );
    assert_eq!(one("x-real-ip"), None, "client-sent X-Real-IP is dropped");
    // End-to-end headers pass.
    assert_eq!(one("x-end").as_deref(), Some("2"));
    assert_eq!(one("cookie").as_deref(), Some("session=abc"));
    assert_eq!(one("sec-websocket-protocol").as_deref(), Some("chat"));
    assert_eq!(one("sec-websocket-version").as_deref(), Some("13"));
    assert!(one("sec-websocket-key").is_some());
    // Hop-by-hop headers, and the one named in Connection, do not.
    for name in ["x-hop", "keep-alive", "proxy-authorization", "te"] {
        assert_eq!(one(name), None, "{name} must not reach the backend");
    }
    let connection = one("connection").expect("wsgate's own Connection");
    assert!(
        !connection.to_ascii_lowercase().contains("x-hop"),
        "{connection}"
    );
    assert!(connection.eq_ignore_ascii_case("upgrade"), "{connection}");
    drop(tcp);
    drop(accepted);

    // A Host with a port: X-Forwarded-Host keeps it, Forwarded quotes it.
    let ws = connect_with_host(addr, "/ws", "Chat.Example.Test:8080").await;
    let (got, accepted) = backends.which().await;
    assert_eq!(got, "exact");
    let h = &accepted.headers;
    assert_eq!(h["host"], "Chat.Example.Test:8080");
    assert_eq!(h["x-forwarded-host"], "Chat.Example.Test:8080");
    assert_eq!(
        h["forwarded"],
        "for=127.0.0.1;proto=http;host=\"Chat.Example.Test:8080\""
    );
    drop(ws);
    drop(accepted);
    backends.assert_none_pending();
    gw.wait_idle().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_real_client_address_is_used_and_the_chain_extended() {
    let mut backend = WsBackend::start().await;
    let toml = format!(
        "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n[[routes]]\nupstream = \"u\"\n[upstreams.u]\nservers = [\"{}\"]\n",
        backend.addr
    );
    let gw = TestGateway::start(&toml).await;
    let mut rx = gw.access_log();
    let mut req = format!("ws://{}/ws", gw.addr("public"))
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "x-forwarded-for",
        http::HeaderValue::from_static("6.6.6.6, 203.0.113.7, 10.0.0.5"),
    );
    req.headers_mut().insert(
        "forwarded",
        http::HeaderValue::from_static("for=203.0.113.7"),
    );
    let tcp = tokio::net::TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let (mut ws, _) = within("handshake", tokio_tungstenite::client_async(req, tcp))
        .await
        .expect("handshake");
    let accepted = backend.next().await;
    assert_eq!(
        accepted.headers["x-forwarded-for"],
        "6.6.6.6, 203.0.113.7, 10.0.0.5, 127.0.0.1"
    );
    let forwarded = accepted.headers["forwarded"].to_str().expect("ascii");
    assert!(
        forwarded.starts_with("for=203.0.113.7, for=127.0.0.1;proto=http"),
        "{forwarded}"
    );
    let live = gw.gateway.registry().live();
    assert_eq!(
        live[0].info.client,
        "203.0.113.7:0".parse().unwrap(),
        "6.6.6.6 was written by someone untrusted"
    );
    ws.close(None).await.expect("close");
    drop(accepted);
    use futures_util::StreamExt;
    while let Some(Ok(_)) = within("close", ws.next()).await {}
    drop(ws);
    let record = next_record(&mut rx).await;
    assert_eq!(record.client, "203.0.113.7:0".parse().unwrap());
}
