//! Plain HTTP/1.1 beside WebSocket: bodies from empty to 64 MiB streamed both
//! ways in both framings, keep-alive reuse of backend connections (and no
//! reuse while a response is unread or unframeable), `Expect:
//! 100-continue`, bodiless answers, hop-by-hop and forwarding headers,
//! backends that fail mid-response, retries, timeouts, and the hash key
//! shared by a page and the WebSocket that follows it.

mod common;

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const MIB: u64 = 1024 * 1024;

/// One plain listener `public`, one route to upstream `u` with `servers`,
/// and `extra` lines in the upstream's table.
fn config(servers: &[SocketAddr], extra: &str) -> String {
    format!(
        "[timeouts]\nconnect = \"2s\"\nupstream_handshake = \"2s\"\nclient_handshake = \"5s\"\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[routes]]\nupstream = \"u\"\n\n[upstreams.u]\nservers = {}\n{extra}\n",
        server_list(servers)
    )
}

async fn start(backend: &AppBackend) -> TestGateway {
    TestGateway::start(&config(&[backend.addr], "")).await
}

/// A raw client connection to the gateway's `public` listener.
async fn raw_client_of(gw: &TestGateway) -> TcpStream {
    TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect")
}

/// A gateway in front of `servers` with one more `[timeouts]` line.
async fn start_with_timeout(servers: &[SocketAddr], line: &str) -> TestGateway {
    let toml = config(servers, "").replace("[timeouts]\n", &format!("[timeouts]\n{line}\n"));
    TestGateway::start(&toml).await
}

/// A request body fed from a channel, frame by frame, as the test decides.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d))))
    }
}

/// Closes a WebSocket and reads until the closing handshake is done.
async fn close_ws(mut ws: tokio_tungstenite::WebSocketStream<TcpStream>) {
    ws.close(None).await.expect("close");
    within("the closing handshake", async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

// === bodies ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_from_empty_to_64_mib_pass_intact_in_both_framings() {
    let backend = AppBackend::start().await;
    let gw = start(&backend).await;
    let addr = gw.addr("public");
    assert_eq!(
        http_send(addr, "GET", "/count", Empty::<Bytes>::new()).await,
        (200, "0 0".to_string())
    );
    for method in ["POST", "PUT"] {
        for len in [0, 1, 100_000, 64 * MIB] {
            for chunked in [false, true] {
                let got = http_send(addr, method, "/count", PatternBody::new(len, chunked)).await;
                assert_eq!(
                    got,
                    (200, format!("{len} 0")),
                    "{method} of {len} bytes, chunked: {chunked}"
                );
            }
        }
    }
    // The framing the backend saw is the one the body needs: a length when
    // the client gave one, chunked when it did not.
    let framings: Vec<(Option<String>, Option<String>)> = backend
        .seen()
        .iter()
        .filter(|s| s.method == "PUT")
        .map(|s| {
            let h = |n: &str| {
                s.headers
                    .get(n)
                    .map(|v| v.to_str().expect("ascii").to_string())
            };
            (h("content-length"), h("transfer-encoding"))
        })
        .collect();
    assert!(
        framings.contains(&(Some("67108864".into()), None)),
        "{framings:?}"
    );
    assert!(
        framings.contains(&(None, Some("chunked".into()))),
        "{framings:?}"
    );
    for len in [0, 1, 64 * MIB] {
        let mut client = http_client::<Empty<Bytes>>(addr).await;
        let res = within(
            "a response",
            client.send_request(http_request("GET", &format!("/big/{len}"), Empty::new())),
        )
        .await
        .expect("response");
        assert_eq!(res.status(), 200);
        let got = within("the download", check_pattern(res.into_body()))
            .await
            .expect("body");
        assert_eq!(got, (len, 0), "download of {len} bytes");
    }
}

#[tokio::test]
async fn bodies_stream_both_ways_as_they_arrive() {
    let backend = AppBackend::start().await;
    let gw = start(&backend).await;
    let mut client = http_client::<ChannelBody>(gw.addr("public")).await;
    let (tx, rx) = mpsc::channel(1);
    let piece = 64 * 1024;
    tx.send(pattern(0, piece)).await.expect("first piece");
    let res = within(
        "the response head, before the request body ends",
        client.send_request(http_request("POST", "/echo", ChannelBody(rx))),
    )
    .await
    .expect("response");
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    // Each piece comes back before the next is sent: nothing waits for the
    // whole body on either leg.
    let mut received = 0u64;
    for n in 1..=8u64 {
        while received < n * piece as u64 {
            let frame = within("an echoed piece", body.frame())
                .await
                .expect("body open")
                .expect("frame");
            if let Ok(d) = frame.into_data() {
                assert_eq!(d, pattern(received, d.len()), "at byte {received}");
                received += d.len() as u64;
            }
        }
        if n < 8 {
            tx.send(pattern(received, piece)).await.expect("next piece");
        }
    }
    drop(tx);
    assert!(within("the end of the echo", body.frame()).await.is_none());
}

// === connections to backends ===

#[tokio::test]
async fn keep_alive_backend_connections_serve_several_requests() {
    let backend = AppBackend::start().await;
    let gw = start(&backend).await;
    // Separate client connections, one after another: pooling is per
    // upstream server, not per client.
    for i in 0..10 {
        let (status, body) = http_text(gw.addr("public"), "GET", &format!("/big/{i}")).await;
        assert_eq!((status, body.len()), (200, i));
    }
    let seen = backend.seen();
    assert_eq!(seen.len(), 10);
    let mut per_conn = std::collections::HashMap::<usize, usize>::new();
    for s in &seen {
        *per_conn.entry(s.conn).or_default() += 1;
    }
    assert!(
        per_conn.values().any(|&n| n >= 2) && backend.connection_count() < 10,
        "no backend connection was reused: {per_conn:?}"
    );
}

#[tokio::test]
async fn a_backend_connection_is_not_reused_while_its_response_is_unread() {
    let backend = AppBackend::start().await;
    let gw = start(&backend).await;
    let addr = gw.addr("public");
    let mut slow = http_client::<Empty<Bytes>>(addr).await;
    let res = within(
        "a response",
        slow.send_request(http_request("GET", "/big/33554432", Empty::new())),
    )
    .await
    .expect("response");
    let mut unread = res.into_body();
    let first = within("the first frame", unread.frame())
        .await
        .expect("body open")
        .expect("frame")
        .into_data()
        .expect("data");
    assert_eq!(first, pattern(0, first.len()));
    // Meanwhile another request must get a connection of its own.
    assert_eq!(http_text(addr, "GET", "/big/3").await.0, 200);
    assert_eq!(backend.connection_count(), 2);
    // The first response is still whole.
    let rest = check_pattern_from(unread, first.len() as u64);
    let (len, wrong) = within("the rest", rest).await.expect("body");
    assert_eq!((len, wrong), (32 * MIB, 0));
}

/// A raw backend: answers the first request head of each connection with
/// `answer`, then either closes (`close_after`) or waits for wsgate to close.
/// Reports `Ok(index)` for each accepted connection and `Err(index)` when
/// that connection reached EOF.
async fn scripted_backend(
    answer: &'static [u8],
    close_after: bool,
) -> (SocketAddr, mpsc::UnboundedReceiver<Result<usize, usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut index = 0;
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = tx.send(Ok(index));
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp.write_all(answer).await;
                if !close_after {
                    while let Ok(n) = tcp.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                }
                let _ = tx.send(Err(index));
            });
            index += 1;
        }
    });
    (addr, rx)
}

/// A gateway in front of a [`scripted_backend`], and a client connection to it.
async fn behind_script(
    answer: &'static [u8],
    close_after: bool,
) -> (
    TestGateway,
    mpsc::UnboundedReceiver<Result<usize, usize>>,
    TcpStream,
) {
    let (addr, events) = scripted_backend(answer, close_after).await;
    let gw = TestGateway::start(&config(&[addr], "")).await;
    let tcp = raw_client_of(&gw).await;
    (gw, events, tcp)
}

async fn next_event(
    rx: &mut mpsc::UnboundedReceiver<Result<usize, usize>>,
) -> Result<usize, usize> {
    within("a backend connection event", rx.recv())
        .await
        .expect("backend alive")
}

#[tokio::test]
async fn a_backend_that_closes_mid_response_ends_the_client_connection() {
    let (gw, mut events, mut tcp) = behind_script(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        true,
    )
    .await;
    tcp.write_all(b"GET /cut HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    // The head and the ten bytes arrive; then the connection ends, so the
    // client sees a short body and can never take it for a whole one.
    let mut got = Vec::new();
    within("the client connection to end", tcp.read_to_end(&mut got))
        .await
        .ok();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("content-length: 100"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\n0123456789"), "{text}");
    assert_eq!(next_event(&mut events).await, Ok(0));
    // Other clients are served, on a new backend connection.
    let mut other = raw_client_of(&gw).await;
    other
        .write_all(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    assert!(read_head(&mut other)
        .await
        .starts_with("HTTP/1.1 200 OK\r\n"));
    loop {
        match next_event(&mut events).await {
            Ok(1) => break,
            Err(0) => {}
            other => panic!("unexpected backend event {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_unframeable_response_is_502_and_its_connection_is_never_reused() {
    let cases: [(&str, &'static [u8]); 5] = [
        (
            "non-numeric length",
            b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        ),
        (
            "two lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ),
        ("not HTTP", b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
        // hyper would decode the chunks and keep the length, cutting the body.
        (
            "length and chunked",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        // A coding wsgate would strip and the client never undo.
        (
            "gzip transfer coding",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
    ];
    for (what, answer) in cases {
        let (addr, mut events) = scripted_backend(answer, false).await;
        let gw = TestGateway::start(&config(&[addr], "")).await;
        let (status, body) = http_text(gw.addr("public"), "GET", "/").await;
        assert_eq!(status, 502, "{what}: {body}");
        assert_eq!(next_event(&mut events).await, Ok(0), "{what}");
        // wsgate closed that connection rather than pooling it.
        assert_eq!(next_event(&mut events).await, Err(0), "{what}");
        let (status, _) = http_text(gw.addr("public"), "GET", "/").await;
        assert_eq!(status, 502, "{what}");
        assert_eq!(
            next_event(&mut events).await,
            Ok(1),
            "{what}: a new connection"
        );
    }
}

#[tokio::test]
async fn a_broken_chunked_response_is_cut_and_its_connection_closed() {
    let (addr, mut events) = scripted_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        false,
    )
    .await;
    let gw = TestGateway::start(&config(&[addr], "")).await;
    let mut client = http_client::<Empty<Bytes>>(gw.addr("public")).await;
    let res = within(
        "a response",
        client.send_request(http_request("GET", "/", Empty::new())),
    )
    .await
    .expect("response head");
    assert_eq!(res.status(), 200);
    let body = within("the body to fail", res.into_body().collect()).await;
    assert!(body.is_err(), "a cut body must not look complete");
    assert_eq!(next_event(&mut events).await, Ok(0));
    assert_eq!(next_event(&mut events).await, Err(0));
}

// === answers ===

#[tokio::test]
async fn expect_100_continue_is_answered_and_the_body_flows() {
    let backend = AppBackend::start().await;
    let gw = start(&backend).await;
    let mut tcp = raw_client_of(&gw).await;
    let (status, _, _) = raw_exchange(
        &mut tcp,
        b"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 300\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert_eq!(status, 100);
    assert!(backend.seen().is_empty(), "nothing goes on before the body");
    let (status, _, body) = raw_exchange(&mut tcp, &pattern(0, 300)).await;
    assert_eq!((status, body.as_slice()), (200, &b"300 0"[..]));
    let seen = backend.seen();
    assert!(seen[0].headers.get("expect").is_none(), "{:?}", seen[0]);
    // No route: refused at once, without inviting the body.
    let toml =
        config(&[backend.addr], "").replace("[[routes]]\n", "[[routes]]\nhost = \"app.test\"\n");
    let gw = TestGateway::start(&toml).await;
    let mut tcp = raw_client_of(&gw).await;
    let (status, _, _) = raw_exchange(
        &mut tcp,
        b"POST /count HTTP/1.1\r\nHost: other.test\r\nContent-Length: 300\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404);
}

/// Reads one response head only (for HEAD, whose Content-Length has no body).
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    within("a response head", async {
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            assert_eq!(tcp.read(&mut b).await.expect("read"), 1, "closed");
            head.push(b[0]);
        }
    })
    .await;
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn head_204_and_304_answers_carry_no_body() {
    let backend = AppBackend::start().await;
    let gw = start(&backend).await;
    let mut tcp = raw_client_of(&gw).await;
    tcp.write_all(b"HEAD /big/1000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let head = read_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        header_value(&head, "content-length").as_deref(),
        Some("1000")
    );
    for code in [204, 304] {
        tcp.write_all(format!("GET /status/{code} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let head = read_head(&mut tcp).await;
        assert!(head.starts_with(&format!("HTTP/1.1 {code}")), "{head}");
        assert!(header_value(&head, "transfer-encoding").is_none(), "{head}");
    }
    // Had any body bytes followed, this answer would be misread.
    let (status, _, body) =
        raw_exchange(&mut tcp, b"GET /big/10 HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!((status, body), (200, pattern(0, 10).to_vec()));
}

#[tokio::test]
async fn hop_by_hop_headers_stay_on_their_hop_and_forwarding_headers_are_set() {
    let backend = AppBackend::start().await;
    let gw = start(&backend).await;
    let mut client = http_client::<Empty<Bytes>>(gw.addr("public")).await;
    let req = hyper::Request::builder()
        .uri("/headers")
        .header("host", "app.test")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "1")
        .header("keep-alive", "timeout=1")
        // Hop-by-hop; only a `trailers` in it is asked for again on the next hop.
        .header("te", "deflate")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("x-app", "kept")
        .body(Empty::new())
        .expect("request");
    let res = within("a response", client.send_request(req))
        .await
        .expect("response");
    let body = res.into_body().collect().await.expect("body").to_bytes();
    let seen = String::from_utf8_lossy(&body).to_string();
    let value = |name: &str| {
        seen.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_string)
    };
    for gone in [
        "x-private",
        "keep-alive",
        "te",
        "proxy-authorization",
        "x-real-ip",
    ] {
        assert_eq!(value(gone), None, "{gone} reached the backend:\n{seen}");
    }
    assert_eq!(value("host").as_deref(), Some("app.test"), "{seen}");
    assert_eq!(value("x-app").as_deref(), Some("kept"), "{seen}");
    assert_eq!(
        value("x-forwarded-for").as_deref(),
        Some("127.0.0.1"),
        "{seen}"
    );
    assert_eq!(
        value("x-forwarded-proto").as_deref(),
        Some("http"),
        "{seen}"
    );
    assert_eq!(
        value("forwarded").as_deref(),
        Some("for=127.0.0.1;proto=http;host=app.test"),
        "{seen}"
    );

    let res = within(
        "a response",
        client.send_request(http_request("GET", "/hop", Empty::new())),
    )
    .await
    .expect("response");
    let h = res.headers();
    for gone in ["x-private", "keep-alive"] {
        assert!(h.get(gone).is_none(), "{gone} reached the client: {h:?}");
    }
    assert!(
        h.get_all("connection")
            .iter()
            .all(|v| !v.to_str().unwrap_or("").contains("x-private")),
        "{h:?}"
    );
    assert_eq!(h.get("x-public").map(|v| v.as_bytes()), Some(&b"yes"[..]));
}

#[tokio::test]
async fn a_101_to_a_plain_request_is_a_502() {
    let backend = AppBackend::start().await;
    let gw = start(&backend).await;
    let (status, body) = http_text(gw.addr("public"), "GET", "/switch").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("switched protocols"), "{body}");
}

#[tokio::test]
async fn no_answer_within_upstream_response_is_a_504() {
    let backend = AppBackend::start().await;
    let gw = start_with_timeout(&[backend.addr], "upstream_response = \"300ms\"").await;
    let (status, body) = http_text(gw.addr("public"), "GET", "/never").await;
    assert_eq!(status, 504, "{body}");
    // The gateway still serves.
    assert_eq!(http_text(gw.addr("public"), "GET", "/big/1").await.0, 200);
}

#[tokio::test]
async fn a_refused_connect_is_retried_on_another_server() {
    let backend = AppBackend::start().await;
    let dead = dead_addr().await;
    let gw = TestGateway::start(&config(
        &[dead, backend.addr],
        "balance = \"round_robin\"\nretries = 1",
    ))
    .await;
    for _ in 0..4 {
        let (status, body) = http_send(
            gw.addr("public"),
            "POST",
            "/count",
            PatternBody::new(5000, false),
        )
        .await;
        assert_eq!((status, body.as_str()), (200, "5000 0"));
    }
    let gw = TestGateway::start(&config(&[dead], "")).await;
    let (status, body) = http_text(gw.addr("public"), "GET", "/").await;
    assert_eq!(status, 502, "{body}");
}

#[tokio::test]
async fn a_host_no_route_serves_is_404() {
    let backend = AppBackend::start().await;
    let toml =
        config(&[backend.addr], "").replace("[[routes]]\n", "[[routes]]\nhost = \"app.test\"\n");
    let gw = TestGateway::start(&toml).await;
    let mut tcp = raw_client_of(&gw).await;
    let (status, _, _) =
        raw_exchange(&mut tcp, b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n").await;
    assert_eq!(status, 404);
    let (status, _, _) =
        raw_exchange(&mut tcp, b"GET /big/2 HTTP/1.1\r\nHost: app.test\r\n\r\n").await;
    assert_eq!(status, 200);
    assert_eq!(backend.seen().len(), 1);
}

// === one application: pages and WebSockets ===

#[tokio::test]
async fn pages_and_websockets_share_one_listener_route_and_backend() {
    let backend = AppBackend::start().await;
    let gw = start(&backend).await;
    let addr = gw.addr("public");
    // Long polling first, then the upgrade, then more pages while it is open.
    assert_eq!(
        http_text(addr, "GET", "/whoami").await,
        (200, backend.addr.to_string())
    );
    let mut ws = ws_connect(addr, "/socket").await;
    ws.send(Message::text("live")).await.expect("send");
    assert_eq!(
        within("an echo", ws.next())
            .await
            .expect("msg")
            .expect("ok"),
        Message::text("live")
    );
    let (status, body) = http_send(addr, "POST", "/count", PatternBody::new(1000, true)).await;
    assert_eq!((status, body.as_str()), (200, "1000 0"));
    assert_eq!(gw.gateway.registry().live_count(), 1);
    close_ws(ws).await;
    gw.wait_idle().await;
}

#[tokio::test]
async fn a_page_and_its_websocket_hash_to_the_same_server() {
    let backends = [
        AppBackend::start().await,
        AppBackend::start().await,
        AppBackend::start().await,
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let gw = TestGateway::start(&config(
        &addrs,
        "balance = \"hash\"\nhash_key = \"query:room\"",
    ))
    .await;
    let addr = gw.addr("public");
    let mut used = std::collections::HashSet::new();
    for room in 0..12 {
        let (status, page_server) = http_text(addr, "GET", &format!("/whoami?room=r{room}")).await;
        assert_eq!(status, 200);
        used.insert(page_server.clone());
        let target = format!("/ws?room=r{room}");
        let ws = ws_connect(addr, &target).await;
        let ws_server = backends
            .iter()
            .find(|b| b.seen().iter().any(|s| s.target == target))
            .map(|b| b.addr.to_string());
        assert_eq!(ws_server, Some(page_server), "room r{room}");
        // Bounded loads count open tunnels: let this one go before the next key.
        close_ws(ws).await;
        gw.wait_idle().await;
    }
    assert!(
        used.len() >= 2,
        "12 keys all hashed to one server: {used:?}"
    );
    gw.wait_idle().await;
}

#[tokio::test]
async fn plain_requests_are_counted_in_metrics() {
    let backend = AppBackend::start().await;
    let toml = format!(
        "{}\n[admin]\nbind = \"127.0.0.1:0\"\n",
        config(&[backend.addr], "")
    );
    let gw = TestGateway::start(&toml).await;
    for path in ["/big/100", "/status/404", "/switch"] {
        http_text(gw.addr("public"), "GET", path).await;
    }
    let admin = gw.admin.expect("admin listener");
    let (status, text) = http_text(admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = text.lines().collect();
    let value = |series: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(series))
            .map(|v| v.trim().to_string())
    };
    for (outcome, n) in [("200", "1"), ("404", "1"), ("502", "1")] {
        let series =
            format!("wsgate_http_requests_total{{listener=\"public\",outcome=\"{outcome}\"}}");
        assert_eq!(value(&series).as_deref(), Some(n), "{series} in\n{text}");
    }
    let to_client = "wsgate_http_body_bytes_total{listener=\"public\",direction=\"to_client\"}";
    let bytes: u64 = value(to_client)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{to_client} in\n{text}"));
    assert!(bytes >= 100, "{text}");
}

#[tokio::test]
async fn behind_a_trusted_proxy_a_page_keeps_and_extends_the_forwarding_chain() {
    let backend = AppBackend::start().await;
    let toml = config(&[backend.addr], "").replace(
        "name = \"public\"\n",
        "name = \"public\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
    );
    let gw = TestGateway::start(&toml).await;
    let mut client = http_client::<Empty<Bytes>>(gw.addr("public")).await;
    let req = hyper::Request::builder()
        .uri("/headers")
        .header("host", "app.test")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("forwarded", "for=203.0.113.7;proto=https")
        .body(Empty::new())
        .expect("request");
    let res = within("a response", client.send_request(req))
        .await
        .expect("response");
    assert_eq!(res.status(), 200);
    let seen = &backend.seen()[0].headers;
    let value = |n: &str| seen.get(n).map(|v| v.to_str().expect("ascii").to_string());
    assert_eq!(
        value("x-forwarded-for").as_deref(),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(value("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(
        value("forwarded").as_deref(),
        Some("for=203.0.113.7;proto=https, for=127.0.0.1;proto=http;host=app.test")
    );
}

#[tokio::test]
async fn bodiless_answers_stay_bodiless_whatever_the_backend_sends_after_them() {
    // A backend that sends a body after a 304 and after a HEAD answer: those
    // bytes are not part of the answer, and must never reach the client as
    // the start of the next response.
    let (_gw, _events, mut tcp) = behind_script(
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello",
        false,
    )
    .await;
    for _ in 0..2 {
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        let head = read_head(&mut tcp).await;
        assert!(head.starts_with("HTTP/1.1 304 "), "{head}");
    }
    let (_gw, _events, mut tcp) =
        behind_script(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false).await;
    for _ in 0..2 {
        tcp.write_all(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        let head = read_head(&mut tcp).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert_eq!(header_value(&head, "content-length").as_deref(), Some("5"));
    }
}

#[tokio::test]
async fn upstream_response_counts_from_the_end_of_the_upload() {
    // The backend answers as soon as the body is whole; the client takes
    // longer than upstream_response to send it. That is not the backend's
    // delay, so no 504.
    let backend = AppBackend::start().await;
    let gw = start_with_timeout(&[backend.addr], "upstream_response = \"1s\"").await;
    let mut tcp = raw_client_of(&gw).await;
    tcp.write_all(b"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
        .await
        .expect("write");
    tcp.write_all(&pattern(0, 5)).await.expect("first half");
    // A slow client: the stimulus, not an assertion on time.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (status, head, body) = raw_exchange(&mut tcp, &pattern(5, 5)).await;
    assert_eq!((status, body.as_slice()), (200, &b"10 0"[..]), "{head}");
}

#[tokio::test]
async fn a_request_whose_client_leaves_before_the_answer_is_logged_and_counted() {
    let backend = AppBackend::start().await;
    let toml = format!(
        "{}\n[admin]\nbind = \"127.0.0.1:0\"\n",
        config(&[backend.addr], "")
    );
    let gw = TestGateway::start(&toml).await;
    let mut tcp = raw_client_of(&gw).await;
    tcp.write_all(b"GET /never HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    within("the request to reach the backend", async {
        while backend.seen().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    drop(tcp);
    let admin = gw.admin.expect("admin listener");
    let series = "wsgate_http_requests_total{listener=\"public\",outcome=\"499\"} 1";
    within("the abandoned request in /metrics", async {
        loop {
            let (_, text) = http_text(admin, "GET", "/metrics").await;
            if text.lines().any(|l| l == series) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_backend_that_stops_taking_the_body_is_a_504() {
    // Accepts, then never reads: the upload backs up, and the backend has
    // kept the request waiting.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (held_tx, mut held) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = held_tx.send(tcp);
        }
    });
    let gw = start_with_timeout(&[addr], "upstream_response = \"300ms\"").await;
    let (status, body) = http_send(
        gw.addr("public"),
        "POST",
        "/upload",
        PatternBody::new(1 << 30, false),
    )
    .await;
    assert_eq!(status, 504, "{body}");
    assert!(within("the held connection", held.recv()).await.is_some());
}

#[tokio::test]
async fn a_client_that_stops_sending_its_body_is_a_408() {
    let backend = AppBackend::start().await;
    let gw = start_with_timeout(&[backend.addr], "client_body = \"300ms\"").await;
    let mut other = raw_client_of(&gw).await;
    // Before the first byte of the body, and after some of it.
    for sent in [0, 5] {
        let mut tcp = TcpStream::connect(gw.addr("public"))
            .await
            .expect("connect");
        tcp.write_all(b"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
            .await
            .expect("write");
        tcp.write_all(&pattern(0, sent))
            .await
            .expect("part of the body");
        let (status, head, _) = read_response(&mut tcp).await;
        assert_eq!(status, 408, "after {sent} bytes: {head}");
        assert_eq!(header_value(&head, "connection").as_deref(), Some("close"));
        wait_closed(&mut tcp).await;
    }
    // Others are served meanwhile.
    let (status, _, body) = raw_exchange(
        &mut other,
        b"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!((status, body.as_slice()), (200, &b"0 0"[..]));
}

#[tokio::test]
async fn a_handshake_answered_with_ambiguous_framing_is_a_502() {
    let (_gw, _events, mut tcp) = behind_script(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", false).await;
    let (status, head, body) =
        raw_exchange(&mut tcp, handshake_request("/ws", "a").as_bytes()).await;
    assert_eq!(status, 502, "{head}{}", String::from_utf8_lossy(&body));
}

/// The value of one series in a /metrics text.
fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_traffic_good_and_bad_leaves_nothing_behind() {
    let backend = AppBackend::start().await;
    let toml = format!(
        "{}\n[admin]\nbind = \"127.0.0.1:0\"\n",
        config(&[backend.addr], "")
    );
    let gw = TestGateway::start(&toml).await;
    let addr = gw.addr("public");
    let clients = 24;
    let rounds = 6;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let requests = backend.requests.clone();
        tasks.push(tokio::spawn(async move {
            // Each client runs every kind of request, in its own order.
            for r in 0..rounds {
                match (c + r) % rounds {
                    0 => assert_eq!(http_text(addr, "GET", "/big/1000").await.0, 200),
                    1 => {
                        let body = PatternBody::new(20_000, true);
                        let got = http_send(addr, "POST", "/count", body).await;
                        assert_eq!(got, (200, "20000 0".to_string()));
                    }
                    2 => {
                        let mut tcp = TcpStream::connect(addr).await.expect("connect");
                        let bad = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
                        let (status, _, _) = raw_exchange(&mut tcp, bad).await;
                        assert_eq!(status, 400);
                    }
                    3 => {
                        // Gone before the answer, and gone mid-body: each
                        // once the backend has the request, so that it
                        // certainly was one (a client that leaves before
                        // its request is read never made one).
                        let never = format!("/never?c={c}");
                        let mut tcp = TcpStream::connect(addr).await.expect("connect");
                        let head = format!("GET {never} HTTP/1.1\r\nHost: a\r\n\r\n");
                        tcp.write_all(head.as_bytes()).await.expect("write");
                        let count = format!("/count?c={c}");
                        let mut tcp2 = TcpStream::connect(addr).await.expect("connect");
                        let head = format!(
                            "POST {count} HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc"
                        );
                        tcp2.write_all(head.as_bytes()).await.expect("write");
                        within("both requests at the backend", async {
                            loop {
                                let arrived = {
                                    let seen = requests.lock().expect("lock");
                                    [&never, &count]
                                        .iter()
                                        .all(|t| seen.iter().any(|s| &s.target == *t))
                                };
                                if arrived {
                                    return;
                                }
                                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                            }
                        })
                        .await;
                    }
                    4 => {
                        let ws = ws_connect(addr, "/ws").await;
                        close_ws(ws).await;
                    }
                    _ => assert_eq!(http_text(addr, "GET", "/status/204").await.0, 204),
                }
            }
        }));
    }
    for t in tasks {
        within("a client's rounds", t).await.expect("client task");
    }
    let admin = gw.admin.expect("admin listener");
    // Plain requests that reached the handler, per client: kinds 0, 1, 5,
    // and the two of kind 3 (the refused one never did; 4 is a tunnel).
    let expected = f64::from(clients * 5);
    let mut last = String::new();
    let settled = tokio::time::timeout(WAIT, async {
        loop {
            let (_, text) = http_text(admin, "GET", "/metrics").await;
            let active = series_value(&text, "wsgate_http_requests_active{listener=\"public\"}");
            let counts: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("wsgate_http_requests_total{listener=\"public\""))
                .collect();
            let counted: f64 = counts
                .iter()
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            if active == Some(0.0) && counted == expected {
                return;
            }
            last = format!("active {active:?}, counted {counted} of {expected}: {counts:?}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(settled.is_ok(), "plain requests did not settle: {last}");
    gw.wait_idle().await;
    assert_eq!(http_text(addr, "GET", "/big/3").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_request_body_is_a_413() {
    let backend = AppBackend::start().await;
    // A linger far longer than any upload here: what is tested is that the
    // client reads the 413, not how fast a loaded machine sends 8 MiB (with
    // the 2s default a debug client under load could still be sending when
    // the linger ends, and meet the reset lingering exists to prevent).
    let toml = format!(
        "[limits]\nmax_request_body = 1000\n{}",
        config(&[backend.addr], "").replacen(
            "client_handshake = \"5s\"\n",
            "client_handshake = \"5s\"\nlinger = \"60s\"\n",
            1
        )
    );
    let gw = TestGateway::start(&toml).await;
    let addr = gw.addr("public");
    // At the limit, in both framings: served.
    for chunked in [false, true] {
        let got = http_send(addr, "POST", "/count", PatternBody::new(1000, chunked)).await;
        assert_eq!(got, (200, "1000 0".to_string()), "chunked: {chunked}");
    }
    let served = backend.seen().len();
    // A declared length over it: refused before the body, without a 100.
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let (status, head, _) = raw_exchange(
        &mut tcp,
        b"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert_eq!(status, 413, "{head}");
    assert_eq!(header_value(&head, "connection").as_deref(), Some("close"));
    wait_closed(&mut tcp).await;
    assert_eq!(backend.seen().len(), served, "nothing reached the backend");
    // A chunked body that grows past it in small frames, each under it.
    let body = PatternBody::framed(5000, true, 400);
    let (status, body) = http_send(addr, "POST", "/count", body).await;
    assert_eq!(status, 413, "{body}");
    // A large upload without Expect: the client is still sending when it is
    // refused, and must read the 413 rather than meet a reset.
    for chunked in [false, true, false, true] {
        let body = PatternBody::new(8 << 20, chunked);
        let (status, _) = http_send(addr, "POST", "/count", body).await;
        assert_eq!(status, 413, "chunked: {chunked}");
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_client_handshake() {
    let backend = AppBackend::start().await;
    let toml = config(&[backend.addr], "")
        .replace("client_handshake = \"5s\"", "client_handshake = \"500ms\"");
    let gw = TestGateway::start(&toml).await;
    let mut tcp = raw_client_of(&gw).await;
    let (status, _, _) = raw_exchange(&mut tcp, b"GET /big/3 HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(status, 200);
    // Nothing more is sent: wsgate must not hold the connection for ever.
    wait_closed(&mut tcp).await;
}

/// A chunked body of one data frame and then `trailers`.
struct WithTrailers(Option<Frame<Bytes>>, Option<http::HeaderMap>);

impl Body for WithTrailers {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let next = self.0.take().or_else(|| self.1.take().map(Frame::trailers));
        Poll::Ready(next.map(Ok))
    }
}

#[tokio::test]
async fn trailers_pass_both_ways() {
    let backend = AppBackend::start().await;
    let gw = start(&backend).await;
    let mut client = http_client::<WithTrailers>(gw.addr("public")).await;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-sum", http::HeaderValue::from_static("1234"));
    let req = hyper::Request::builder()
        .method("POST")
        .uri("/trailers")
        .header("host", "a")
        .header("trailer", "x-sum")
        // Response trailers only for a client that says it takes them.
        .header("te", "trailers")
        .body(WithTrailers(
            Some(Frame::data(Bytes::from_static(b"payload"))),
            Some(trailers),
        ))
        .expect("request");
    let res = within("a response", client.send_request(req))
        .await
        .expect("response");
    assert_eq!(res.status(), 200);
    let collected = within("the body", res.into_body().collect())
        .await
        .expect("body");
    let answer_trailers = collected.trailers().cloned();
    let body = collected.to_bytes();
    assert_eq!(
        &body[..],
        b"x-sum: 1234\n",
        "the backend got the request's trailer"
    );
    assert_eq!(
        answer_trailers
            .as_ref()
            .and_then(|t| t.get("x-answer-sum"))
            .map(|v| v.as_bytes()),
        Some(&b"42"[..]),
        "the client got the response's trailer: {answer_trailers:?}"
    );
}

#[tokio::test]
async fn an_http_1_0_request_is_served_and_its_connection_closed_unless_kept_alive() {
    let backend = AppBackend::start().await;
    let gw = start(&backend).await;
    // HTTP/1.0 without Host (allowed there) and without keep-alive: one
    // answer, then the connection ends.
    let mut tcp = raw_client_of(&gw).await;
    let (status, head, body) = raw_exchange(&mut tcp, b"GET /whoami HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, backend.addr.to_string().as_bytes());
    let mut rest = Vec::new();
    within("the connection to close", tcp.read_to_end(&mut rest))
        .await
        .expect("read");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));

    // With keep-alive asked, the connection serves a second request.
    let mut tcp = raw_client_of(&gw).await;
    let ask = b"GET /whoami HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n";
    for round in 0..2 {
        let (status, head, body) = raw_exchange(&mut tcp, ask).await;
        assert_eq!(status, 200, "round {round}: {head}");
        assert_eq!(body, backend.addr.to_string().as_bytes());
        assert!(
            header_value(&head, "connection").is_some_and(|c| c.eq_ignore_ascii_case("keep-alive")),
            "round {round}: {head}"
        );
    }
    let seen = backend.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen
        .iter()
        .all(|s| s.method == http::Method::GET && s.target == "/whoami"));
}

/// A plain GET whose head is exactly `size` bytes, padded by one header.
fn head_of_size(size: usize) -> String {
    let bare = "GET /headers HTTP/1.1\r\nHost: a\r\nX-Pad: \r\n\r\n".len();
    format!(
        "GET /headers HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(size - bare)
    )
}

#[tokio::test]
async fn a_head_just_under_max_request_headers_is_served_and_one_just_over_gets_431() {
    let backend = AppBackend::start().await;
    let toml = format!(
        "[limits]\nmax_request_headers = 16384\n{}",
        config(&[backend.addr], "")
    );
    let gw = TestGateway::start(&toml).await;
    let under = head_of_size(16384 - 64);
    assert_eq!(under.len(), 16384 - 64);
    let mut tcp = raw_client_of(&gw).await;
    let (status, head, body) = raw_exchange(&mut tcp, under.as_bytes()).await;
    assert_eq!(status, 200, "{head}");
    let pad = "p".repeat(under.len() - "GET /headers HTTP/1.1\r\nHost: a\r\nX-Pad: \r\n\r\n".len());
    assert!(
        String::from_utf8_lossy(&body).contains(&format!("x-pad: {pad}\n")),
        "the backend did not get the whole header"
    );

    let over = head_of_size(16384 + 64);
    let mut tcp = raw_client_of(&gw).await;
    let (status, head, _) = raw_exchange(&mut tcp, over.as_bytes()).await;
    assert_eq!(status, 431, "{head}");
    assert_eq!(
        backend.seen().len(),
        1,
        "only the request under the limit reached the backend"
    );
}

/// A client that stops reading a plain response: after
/// `timeouts.client_write` with no bytes taken, the response is aborted,
/// the backend's connection released and the abort counted. Meanwhile the backend, writing a body without end,
/// sees its connection closed.
#[tokio::test]
async fn a_client_that_stops_reading_a_response_is_aborted_and_the_backend_released() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (released_tx, mut released) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let released_tx = released_tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n")
                    .await;
                let chunk = vec![b'x'; 64 * 1024];
                // Writes until the proxy lets go of this connection.
                while tcp.write_all(&chunk).await.is_ok() {}
                let _ = released_tx.send(());
            });
        }
    });
    let toml = format!("{}\n[admin]\nbind = \"127.0.0.1:0\"\n", config(&[addr], ""))
        .replace("[timeouts]\n", "[timeouts]\nclient_write = \"200ms\"\n");
    let gw = TestGateway::start(&toml).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small buffer");
    let mut tcp = socket.connect(gw.addr("public")).await.expect("connect");
    tcp.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    // The client never reads.
    within("the backend's connection to be released", released.recv())
        .await
        .expect("backend task alive");
    let admin = gw.admin.expect("admin listener");
    let series =
        "wsgate_http_responses_aborted_total{listener=\"public\",reason=\"client_write\"} 1";
    let (_, text) = http_text(admin, "GET", "/metrics").await;
    assert!(text.lines().any(|l| l == series), "{text}");
    // The client's connection is closed too, once it reads what was sent.
    wait_closed(&mut tcp).await;
    gw.wait_idle().await;
}

/// CONNECT, in any form, and TRACE are answered 501 by wsgate itself: no
/// backend sees them, the connection is closed after the answer (what a
/// CONNECT client sends next was meant for a tunnel), and each is counted
/// under its status.
#[tokio::test]
async fn connect_and_trace_are_501_and_reach_no_backend() {
    let backend = AppBackend::start().await;
    let toml = format!(
        "{}\n[admin]\nbind = \"127.0.0.1:0\"\n",
        config(&[backend.addr], "")
    );
    let gw = TestGateway::start(&toml).await;
    let requests = [
        "CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n",
        "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
        "TRACE / HTTP/1.1\r\nHost: a\r\n\r\n",
        "CONNECT /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ];
    for request in requests {
        let mut tcp = raw_client_of(&gw).await;
        let (status, head, body) = raw_exchange(&mut tcp, request.as_bytes()).await;
        assert_eq!(status, 501, "{request:?}: {head}");
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("not supported"), "{request:?}: {body}");
        assert_eq!(
            header_value(&head, "connection").as_deref(),
            Some("close"),
            "{head}"
        );
        wait_closed(&mut tcp).await;
    }
    assert!(backend.seen().is_empty(), "{:?}", backend.seen());
    assert_eq!(backend.connection_count(), 0);
    let admin = gw.admin.expect("admin listener");
    let (_, text) = http_text(admin, "GET", "/metrics").await;
    let plain = series_value(
        &text,
        "wsgate_http_requests_total{listener=\"public\",outcome=\"501\"}",
    );
    let upgrades = series_value(
        &text,
        "wsgate_handshakes_total{listener=\"public\",outcome=\"501\"}",
    );
    assert_eq!((plain, upgrades), (Some(3.0), Some(1.0)), "{text}");
}
