//! The client's handshake and the backend's answer: every rejection gets its
//! status, nothing unverified reaches a backend, non-101 answers keep the
//! client connection HTTP.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn request(lines: &[&str]) -> String {
    let mut r = lines.join("\r\n");
    r.push_str("\r\n\r\n");
    r
}

#[tokio::test]
async fn malformed_handshakes_get_400_and_reach_no_backend() {
    let backend = RawBackend::start(good_101).await;
    let gw = TestGateway::start(&simple_config(&[backend.addr])).await;
    let key = format!("Sec-WebSocket-Key: {KEY}");
    let cases: Vec<(&str, String)> = vec![
        (
            "POST with Upgrade",
            request(&[
                "POST /ws HTTP/1.1",
                "Host: a",
                "Upgrade: websocket",
                "Connection: Upgrade",
                &key,
                "Sec-WebSocket-Version: 13",
                "Content-Length: 0",
            ]),
        ),
        (
            "HTTP/1.0",
            request(&[
                "GET /ws HTTP/1.0",
                "Host: a",
                "Upgrade: websocket",
                "Connection: Upgrade",
                &key,
                "Sec-WebSocket-Version: 13",
            ]),
        ),
        (
            "no Host",
            request(&[
                "GET /ws HTTP/1.1",
                "Upgrade: websocket",
                "Connection: Upgrade",
                &key,
                "Sec-WebSocket-Version: 13",
            ]),
        ),
        (
            "two Hosts",
            request(&[
                "GET /ws HTTP/1.1",
                "Host: a",
                "Host: b",
                "Upgrade: websocket",
                "Connection: Upgrade",
                &key,
                "Sec-WebSocket-Version: 13",
            ]),
        ),
        (
            "Connection without upgrade",
            request(&[
                "GET /ws HTTP/1.1",
                "Host: a",
                "Upgrade: websocket",
                "Connection: keep-alive",
                &key,
                "Sec-WebSocket-Version: 13",
            ]),
        ),
        (
            "no Connection",
            request(&[
                "GET /ws HTTP/1.1",
                "Host: a",
                "Upgrade: websocket",
                &key,
                "Sec-WebSocket-Version: 13",
            ]),
        ),
        (
            "no key",
            request(&[
                "GET /ws HTTP/1.1",
                "Host: a",
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Version: 13",
            ]),
        ),
        (
            "short key",
            request(&[
                "GET /ws HTTP/1.1",
                "Host: a",
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Key: c2hvcnQ=",
                "Sec-WebSocket-Version: 13",
            ]),
        ),
        (
            "key not base64",
            request(&[
                "GET /ws HTTP/1.1",
                "Host: a",
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!",
                "Sec-WebSocket-Version: 13",
            ]),
        ),
        (
            "two keys",
            request(&[
                "GET /ws HTTP/1.1",
                "Host: a",
                "Upgrade: websocket",
                "Connection: Upgrade",
                &key,
                &key,
                "Sec-WebSocket-Version: 13",
            ]),
        ),
        (
            "no version",
            request(&[
                "GET /ws HTTP/1.1",
                "Host: a",
                "Upgrade: websocket",
                "Connection: Upgrade",
                &key,
            ]),
        ),
        (
            "a body",
            format!(
                "{}hello",
                request(&[
                    "GET /ws HTTP/1.1",
                    "Host: a",
                    "Upgrade: websocket",
                    "Connection: Upgrade",
                    &key,
                    "Sec-WebSocket-Version: 13",
                    "Content-Length: 5"
                ])
            ),
        ),
        (
            "Connection naming Host",
            handshake_request("/ws", "a")
                .replace("Connection: Upgrade", "Connection: Upgrade, Host"),
        ),
        (
            "Connection naming the key",
            handshake_request("/ws", "a").replace(
                "Connection: Upgrade",
                "Connection: Upgrade, Sec-WebSocket-Key",
            ),
        ),
        (
            "dot-segment with parameters",
            handshake_request("/public/..;/private", "a"),
        ),
        ("encoded slash", handshake_request("/a%2fb", "a")),
        ("encoded backslash", handshake_request("/a%5Cb", "a")),
        ("encoded NUL", handshake_request("/a%00", "a")),
        ("above the root", handshake_request("/a/../../etc", "a")),
        (
            "encoded dots above the root",
            handshake_request("/%2e%2e/x", "a"),
        ),
        ("absolute-form", handshake_request("http://a/ws", "a")),
    ];
    for (what, req) in cases {
        let mut tcp = TcpStream::connect(gw.addr("public"))
            .await
            .expect("connect");
        let (status, head, body) = raw_exchange(&mut tcp, req.as_bytes()).await;
        assert_eq!(status, 400, "{what}: {head}");
        assert!(
            !body.is_empty() && body.ends_with(b"\n"),
            "{what}: one-line reason expected"
        );
        wait_closed(&mut tcp).await;
    }
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a backend was contacted"
    );
}

#[tokio::test]
async fn wrong_version_gets_426_with_the_supported_version() {
    let backend = RawBackend::start(good_101).await;
    let gw = TestGateway::start(&simple_config(&[backend.addr])).await;
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let req = handshake_request("/ws", "a").replace("Version: 13", "Version: 8");
    let (status, head, _) = raw_exchange(&mut tcp, req.as_bytes()).await;
    assert_eq!(status, 426);
    assert_eq!(
        header_value(&head, "sec-websocket-version").as_deref(),
        Some("13")
    );
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// A raw backend answers one request per connection, so it says so.
fn ok(_: &str) -> Option<Vec<u8>> {
    Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec())
}

#[tokio::test]
async fn h2c_is_stripped_and_proxied_as_http_1_1() {
    let backend = RawBackend::start(ok).await;
    let gw = TestGateway::start(&simple_config(&[backend.addr])).await;
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let h2c = request(&[
        "GET / HTTP/1.1",
        "Host: a",
        "Upgrade: h2c",
        "Connection: Upgrade, HTTP2-Settings",
        "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
    ]);
    let (status, head, body) = raw_exchange(&mut tcp, h2c.as_bytes()).await;
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]), "{head}");
    assert!(header_value(&head, "upgrade").is_none(), "{head}");
    let seen = backend.all_received().to_ascii_lowercase();
    assert!(seen.starts_with("get / http/1.1\r\n"), "{seen}");
    for gone in ["upgrade", "http2-settings", "connection: upgrade"] {
        assert!(!seen.contains(gone), "{gone} forwarded: {seen}");
    }
    // The connection stays HTTP/1.1: the next request on it gets its own answer.
    let (status, _, body) = raw_exchange(
        &mut tcp,
        request(&["GET /page HTTP/1.1", "Host: a"]).as_bytes(),
    )
    .await;
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
}

#[tokio::test]
async fn unreachable_backend_gets_502() {
    let gw = TestGateway::start(&simple_config(&[dead_addr().await])).await;
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let (status, _, body) = raw_exchange(&mut tcp, handshake_request("/ws", "a").as_bytes()).await;
    assert_eq!(status, 502);
    assert!(
        String::from_utf8_lossy(&body).contains("connect to"),
        "{body:?}"
    );
    assert_eq!(gw.gateway.registry().live_count(), 0);
}

#[tokio::test]
async fn connect_failure_is_retried_on_the_next_server() {
    let echo = echo_backend().await;
    let gw = TestGateway::start(&simple_config(&[dead_addr().await, echo])).await;
    // Round-robin starts on each server in turn, so both orders are exercised.
    for i in 0..4 {
        let mut ws = ws_connect(gw.addr("public"), "/ws").await;
        ws.send(Message::text(format!("m{i}"))).await.expect("send");
        let got = within("echo", ws.next())
            .await
            .expect("message")
            .expect("ok");
        assert_eq!(got.into_text().expect("text").as_str(), format!("m{i}"));
        ws.close(None).await.expect("close");
    }
    gw.wait_idle().await;
}

#[tokio::test]
async fn silent_backend_gets_504() {
    let backend = RawBackend::start(|_| None).await;
    let toml = simple_config(&[backend.addr]).replace(
        "upstream_handshake = \"2s\"",
        "upstream_handshake = \"300ms\"",
    );
    let gw = TestGateway::start(&toml).await;
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let (status, _, _) = raw_exchange(&mut tcp, handshake_request("/ws", "a").as_bytes()).await;
    assert_eq!(status, 504);
    // The request did reach the backend, which simply never answered.
    assert!(backend.all_received().starts_with("GET /ws HTTP/1.1"));
}

#[tokio::test]
async fn invalid_101_gets_502_and_no_tunnel() {
    fn wrong_accept(_: &str) -> Option<Vec<u8>> {
        Some(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n".to_vec())
    }
    fn no_upgrade(head: &str) -> Option<Vec<u8>> {
        let ok = String::from_utf8(good_101(head)?).ok()?;
        Some(ok.replace("Upgrade: websocket\r\n", "").into_bytes())
    }
    fn no_connection(head: &str) -> Option<Vec<u8>> {
        let ok = String::from_utf8(good_101(head)?).ok()?;
        Some(ok.replace("Connection: Upgrade\r\n", "").into_bytes())
    }
    fn unoffered_protocol(head: &str) -> Option<Vec<u8>> {
        let ok = String::from_utf8(good_101(head)?).ok()?;
        Some(
            ok.replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n")
                .into_bytes(),
        )
    }
    // Both offered, both chosen: one selection is one subprotocol.
    fn two_protocol_lines(head: &str) -> Option<Vec<u8>> {
        let ok = String::from_utf8(good_101(head)?).ok()?;
        let two = "\r\nSec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";
        Some(ok.replace("\r\n\r\n", two).into_bytes())
    }
    fn two_protocols_in_one_line(head: &str) -> Option<Vec<u8>> {
        let ok = String::from_utf8(good_101(head)?).ok()?;
        let two = "\r\nSec-WebSocket-Protocol: chat, mqtt\r\n\r\n";
        Some(ok.replace("\r\n\r\n", two).into_bytes())
    }
    // The second line is checked too, not only the first.
    fn offered_then_unoffered(head: &str) -> Option<Vec<u8>> {
        let ok = String::from_utf8(good_101(head)?).ok()?;
        let two = "\r\nSec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n";
        Some(ok.replace("\r\n\r\n", two).into_bytes())
    }
    // The client offers chat and mqtt.
    let request = handshake_request("/ws", "a")
        .replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: chat, mqtt\r\n\r\n");
    for answer in [
        wrong_accept,
        no_upgrade,
        no_connection,
        unoffered_protocol,
        two_protocol_lines,
        two_protocols_in_one_line,
        offered_then_unoffered,
    ] {
        let backend = RawBackend::start(answer).await;
        let gw = TestGateway::start(&simple_config(&[backend.addr])).await;
        let mut rx = gw.access_log();
        let mut tcp = TcpStream::connect(gw.addr("public"))
            .await
            .expect("connect");
        let (status, _, body) = raw_exchange(&mut tcp, request.as_bytes()).await;
        assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("invalid 101"));
        assert_eq!(gw.gateway.registry().live_count(), 0);
        assert!(rx.try_recv().is_err(), "no tunnel may have been recorded");
    }
}

fn ok_with_upgrade(_: &str) -> Option<Vec<u8>> {
    Some(b"HTTP/1.1 200 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 2\r\n\r\nok".to_vec())
}

#[tokio::test]
async fn a_200_with_upgrade_is_plain_http_and_later_bytes_are_parsed_as_requests() {
    let backend = RawBackend::start(ok_with_upgrade).await;
    let gw = TestGateway::start(&simple_config(&[backend.addr])).await;
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    // The smuggling attempt: a second request in the same segment, hoping the
    // proxy tunnels on the 200 and passes it to the backend raw.
    let smuggled = format!(
        "{}GET /internal HTTP/1.1\r\nHost: a\r\n\r\n",
        handshake_request("/ws", "a")
    );
    tcp.write_all(smuggled.as_bytes()).await.expect("write");
    let (status, head, body) = read_response(&mut tcp).await;
    assert_eq!(status, 200);
    assert_eq!(body, b"ok");
    assert!(
        header_value(&head, "upgrade").is_none(),
        "Upgrade is hop-by-hop: {head}"
    );
    // The second request is parsed by wsgate and proxied as a request of its
    // own, on another backend connection: never raw bytes after the handshake.
    let (status, _, _) = read_response(&mut tcp).await;
    assert_eq!(status, 200);
    let per_conn: Vec<String> = backend
        .received
        .lock()
        .expect("lock")
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    let handshake_conn = per_conn
        .iter()
        .find(|r| r.starts_with("GET /ws "))
        .expect("the handshake reached the backend");
    assert!(
        !handshake_conn.contains("/internal"),
        "smuggled request went down the handshake's connection: {handshake_conn}"
    );
    let internal = per_conn
        .iter()
        .find(|r| r.starts_with("GET /internal "))
        .expect("the second request was proxied");
    assert!(
        !internal.to_ascii_lowercase().contains("upgrade"),
        "{internal}"
    );
    assert_eq!(gw.gateway.registry().live_count(), 0);
}

#[tokio::test]
async fn after_a_refusal_pipelined_frame_bytes_are_parsed_as_http() {
    fn forbidden(_: &str) -> Option<Vec<u8>> {
        Some(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_vec())
    }
    let backend = RawBackend::start(forbidden).await;
    let gw = TestGateway::start(&simple_config(&[backend.addr])).await;
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    // A masked text frame sent before the answer arrived: it must never reach the backend.
    let frame = [
        0x81u8,
        0x85,
        1,
        2,
        3,
        4,
        b'h' ^ 1,
        b'e' ^ 2,
        b'l' ^ 3,
        b'l' ^ 4,
        b'o' ^ 1,
    ];
    let mut bytes = handshake_request("/ws", "a").into_bytes();
    bytes.extend_from_slice(&frame);
    bytes.extend_from_slice(b"\r\n\r\n");
    tcp.write_all(&bytes).await.expect("write");
    let (status, head, _) = read_response(&mut tcp).await;
    assert_eq!(status, 403);
    // Frame bytes sent before the answer are not HTTP: the connection ends.
    assert_eq!(
        header_value(&head, "connection").as_deref(),
        Some("close"),
        "{head}"
    );
    wait_closed(&mut tcp).await;
    let received = backend.received.lock().expect("lock").concat();
    assert!(
        !received.windows(4).any(|w| w == [1, 2, 3, 4]),
        "frame bytes reached the backend"
    );
}

#[tokio::test]
async fn a_second_handshake_after_a_refusal_is_routed_as_its_own_request() {
    fn forbid_first(head: &str) -> Option<Vec<u8>> {
        if head.contains("GET /first") {
            Some(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_vec())
        } else {
            good_101(head)
        }
    }
    let backend = RawBackend::start(forbid_first).await;
    let gw = TestGateway::start(&simple_config(&[backend.addr])).await;
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let both = format!(
        "{}{}",
        handshake_request("/first", "a"),
        handshake_request("/second", "a")
    );
    tcp.write_all(both.as_bytes()).await.expect("write");
    assert_eq!(read_response(&mut tcp).await.0, 403);
    assert_eq!(read_response(&mut tcp).await.0, 101);
    within("two backend connections", async {
        while backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            < 2
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let per_conn: Vec<Vec<u8>> = backend.received.lock().expect("lock").clone();
    assert!(per_conn
        .iter()
        .any(|r| r.starts_with(b"GET /first ") && !r.windows(7).any(|w| w == b"/second")));
    assert!(per_conn.iter().any(|r| r.starts_with(b"GET /second ")));
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let backend = RawBackend::start(good_101).await;
    let toml = simple_config(&[backend.addr])
        .replace("client_handshake = \"2s\"", "client_handshake = \"300ms\"");
    let gw = TestGateway::start(&toml).await;
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\n")
        .await
        .expect("write");
    wait_closed(&mut tcp).await;
    // A connection that never sends anything is cut too.
    let mut idle = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    wait_closed(&mut idle).await;
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let backend = RawBackend::start(good_101).await;
    let gw = TestGateway::start(&simple_config(&[backend.addr])).await;
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let big = format!("X-Big: {}", "a".repeat(40 * 1024));
    let req = request(&[
        "GET /ws HTTP/1.1",
        "Host: a",
        &big,
        "Upgrade: websocket",
        "Connection: Upgrade",
    ]);
    let (status, _, _) = raw_exchange(&mut tcp, req.as_bytes()).await;
    assert_eq!(status, 431);
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn subprotocol_chosen_by_the_backend_reaches_the_client() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut backend = WsBackend::start_with(|_req, mut res| {
        res.headers_mut().insert(
            "sec-websocket-protocol",
            http::HeaderValue::from_static("chat"),
        );
        res
    })
    .await;
    let gw = TestGateway::start(&simple_config(&[backend.addr])).await;
    let mut req = format!("ws://{}/ws", gw.addr("public"))
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        http::HeaderValue::from_static("superchat, chat"),
    );
    let tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let (_ws, res) = within("handshake", tokio_tungstenite::client_async(req, tcp))
        .await
        .expect("handshake");
    assert_eq!(res.headers()["sec-websocket-protocol"], "chat");
    let accepted = backend.next().await;
    assert_eq!(
        accepted.headers["sec-websocket-protocol"],
        "superchat, chat"
    );
}

#[tokio::test]
async fn a_101_without_an_accept_key_opens_no_tunnel() {
    fn no_accept(head: &str) -> Option<Vec<u8>> {
        let ok = String::from_utf8(good_101(head)?).ok()?;
        let without: String = ok
            .split_inclusive("\r\n")
            .filter(|l| !l.starts_with("Sec-WebSocket-Accept:"))
            .collect();
        Some(without.into_bytes())
    }
    let backend = RawBackend::start(no_accept).await;
    let gw = TestGateway::start(&simple_config(&[backend.addr])).await;
    let mut rx = gw.access_log();
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let (status, head, body) =
        raw_exchange(&mut tcp, handshake_request("/ws", "a").as_bytes()).await;
    assert_eq!(status, 502, "{head}");
    assert!(
        String::from_utf8_lossy(&body).contains("invalid 101"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // A masked text frame a client would send on an open tunnel: the
    // connection is still HTTP, so it is refused as a request, never relayed.
    tcp.write_all(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2])
        .await
        .expect("write frame");
    wait_closed(&mut tcp).await;
    let seen = backend.received.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one backend connection");
    assert!(
        seen[0].starts_with(b"GET /ws HTTP/1.1\r\n") && seen[0].ends_with(b"\r\n\r\n"),
        "the backend got something past the request head: {:?}",
        String::from_utf8_lossy(&seen[0])
    );
    assert_eq!(gw.gateway.registry().live_count(), 0);
    assert!(rx.try_recv().is_err(), "no tunnel may have been recorded");
}

#[tokio::test]
async fn upgrade_h2c_not_named_in_connection_is_still_not_forwarded() {
    let backend = RawBackend::start(ok).await;
    let gw = TestGateway::start(&simple_config(&[backend.addr])).await;
    // Upgrade is hop-by-hop whether or not Connection names it (RFC 9110
    // section 7.6.1), and HTTP2-Settings belongs to the h2c upgrade of this
    // hop only (RFC 7540 section 3.2.1; h2c is deprecated by RFC 9113): the
    // request goes on as HTTP/1.1 without either, whether Connection is
    // absent or names something else.
    for connection in [None, Some("Connection: keep-alive")] {
        let mut lines = vec![
            "GET / HTTP/1.1",
            "Host: a",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ];
        lines.extend(connection);
        let mut tcp = TcpStream::connect(gw.addr("public"))
            .await
            .expect("connect");
        let (status, head, body) = raw_exchange(&mut tcp, request(&lines).as_bytes()).await;
        assert_eq!((status, body.as_slice()), (200, &b"ok"[..]), "{head}");
        assert!(header_value(&head, "upgrade").is_none(), "{head}");
    }
    let seen = backend.received.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one backend connection per request");
    for head in seen {
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.starts_with("get / http/1.1\r\n"), "{head}");
        for gone in ["upgrade", "http2-settings"] {
            assert!(
                header_value(&head, gone).is_none(),
                "{gone} forwarded: {head}"
            );
        }
    }
}

#[tokio::test]
async fn headers_sent_in_pieces_within_the_deadline_are_served() {
    let echo = echo_backend().await;
    // A deadline far above the pauses below: only a timeout that is wildly
    // too short (or measured per read wrongly) can cut this client.
    let toml =
        simple_config(&[echo]).replace("client_handshake = \"2s\"", "client_handshake = \"10s\"");
    let gw = TestGateway::start(&toml).await;
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let req = handshake_request("/ws", "a");
    for piece in req.as_bytes().chunks(12) {
        tcp.write_all(piece).await.expect("write a piece");
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    let (status, head, _) = read_response(&mut tcp).await;
    assert_eq!(status, 101, "{head}");
    // The tunnel is open: a masked text frame comes back as the echo.
    tcp.write_all(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2])
        .await
        .expect("write frame");
    let mut echo = [0u8; 4];
    within(
        "the echo",
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut echo),
    )
    .await
    .expect("read echo");
    assert_eq!(echo, [0x81, 2, b'h', b'i']);
}

#[tokio::test]
async fn hop_by_hop_headers_of_an_upgrade_never_reach_the_backend() {
    let mut backend = WsBackend::start().await;
    let gw = TestGateway::start(&simple_config(&[backend.addr])).await;
    // Connection-specific fields (RFC 9110 section 7.6.1), none of them named
    // in Connection: the fixed list alone must stop them. HTTP2-Settings
    // belongs to an h2c upgrade of this hop (RFC 7540 section 3.2.1).
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let req = handshake_request("/ws", "a").replace(
        "\r\n\r\n",
        "\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nX-End-To-End: kept\r\n\r\n",
    );
    let (status, head, _) = raw_exchange(&mut tcp, req.as_bytes()).await;
    assert_eq!(status, 101, "{head}");
    let accepted = backend.next().await;
    for gone in ["keep-alive", "proxy-connection", "te", "http2-settings"] {
        assert!(
            accepted.headers.get(gone).is_none(),
            "{gone} reached the backend: {:?}",
            accepted.headers
        );
    }
    assert_eq!(accepted.headers["x-end-to-end"], "kept");
}
