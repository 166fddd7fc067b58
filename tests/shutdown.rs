//! Draining: every tunnel ends with a Close 1001 written at a frame
//! boundary to both sides, new connections are refused, a peer that never
//! answers the Close is cut after `timeouts.close`, and nothing is left.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsgate::observe::access::{EndReason, Side};

#[tokio::test]
async fn drain_closes_every_tunnel_with_1001_on_both_sides() {
    let mut backend = WsBackend::start().await;
    let gw = TestGateway::start(&simple_config(&[backend.addr])).await;
    let mut rx = gw.access_log();
    let mut pairs = Vec::new();
    for _ in 0..10 {
        let client = ws_connect(gw.addr("public"), "/ws").await;
        let server = backend.next().await.ws;
        pairs.push((client, server));
    }
    gw.gateway.drain();
    for (mut client, mut server) in pairs {
        // tungstenite checks masking and the close code's validity, as real peers do.
        let (c, s) = tokio::join!(
            expect_close(&mut client, "client close"),
            expect_close(&mut server, "server close")
        );
        assert_eq!(c, (1001, "going away".to_string()));
        assert_eq!(s, (1001, "going away".to_string()));
        // Both answer the Close, as libraries do; the tunnel then ends.
        tokio::join!(finish(client), finish(server));
    }
    for _ in 0..10 {
        assert_closed_by_proxy(&*next_record(&mut rx).await, 1001, "going away");
    }
    gw.wait_idle().await;
    // No new connection is accepted once draining.
    match TcpStream::connect(gw.addr("public")).await {
        Err(_) => {}
        Ok(mut tcp) => {
            let _ = tcp
                .write_all(handshake_request("/ws", "a").as_bytes())
                .await;
            let mut buf = [0u8; 64];
            let n = within("refusal", tcp.read(&mut buf)).await.unwrap_or(0);
            assert_eq!(
                n,
                0,
                "a draining wsgate answered: {:?}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
    }
}

#[tokio::test]
async fn the_close_waits_for_the_frame_boundary_in_both_directions() {
    let (addr, mut accepted) = raw_ws_backend(b"").await;
    let gw = TestGateway::start(&simple_config(&[addr])).await;
    let mut rx = gw.access_log();
    let mut client = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let (status, _, _) = raw_exchange(&mut client, handshake_request("/ws", "a").as_bytes()).await;
    assert_eq!(status, 101);
    let mut server = within("backend", accepted.recv())
        .await
        .expect("backend socket");

    // Each side starts a 300-byte frame and sends only part of it; wsgate
    // has passed the first parts on before the drain.
    let (client_frame, server_frame) =
        start_frames_both_ways(&mut client, &mut server, 300, 100).await;

    gw.gateway.drain();
    // The rest of each frame still passes intact, and only then the Close.
    client
        .write_all(&client_frame[100..])
        .await
        .expect("client rest");
    server
        .write_all(&server_frame[100..])
        .await
        .expect("server rest");
    let mut rest = vec![0u8; server_frame.len() - 100];
    within("rest at the client", client.read_exact(&mut rest))
        .await
        .expect("read");
    assert_eq!(rest, server_frame[100..]);
    let mut rest_b = vec![0u8; client_frame.len() - 100];
    within("rest at the backend", server.read_exact(&mut rest_b))
        .await
        .expect("read");
    assert_eq!(rest_b, client_frame[100..]);

    let (op, body) = read_frame(&mut client).await;
    assert_eq!(op, 0x88, "a Close frame to the client");
    assert_eq!(&body[..2], &1001u16.to_be_bytes());
    // Toward the backend the Close is masked (read_frame unmasks it).
    let mut h = [0u8; 2];
    server.peek(&mut h).await.expect("peek");
    assert_eq!(h[1] & 0x80, 0x80, "Close to the backend must be masked");
    let (op, body) = read_frame(&mut server).await;
    assert_eq!(op, 0x88);
    assert_eq!(&body[..2], &1001u16.to_be_bytes());

    // Both answer; what they send is not forwarded (each side already got a Close).
    client
        .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe9])
        .await
        .expect("client reply");
    server
        .write_all(&[0x88, 2, 0x03, 0xe9])
        .await
        .expect("server reply");
    server.shutdown().await.expect("server closes");
    wait_closed(&mut client).await;
    let mut extra = Vec::new();
    within("backend EOF", server.read_to_end(&mut extra))
        .await
        .expect("read");
    assert!(
        extra.is_empty(),
        "the client's reply reached the backend after wsgate's Close: {extra:?}"
    );
    let r = next_record(&mut rx).await;
    assert_eq!(r.end.reason, EndReason::ProxyClose);
    assert_eq!(r.end.proxy_close, Some(order(1001, "going away")));
    assert_eq!(r.to_backend.bytes, client_frame.len() as u64);
    assert_eq!(r.to_client.bytes, server_frame.len() as u64);
    gw.wait_idle().await;
}

#[tokio::test]
async fn a_frame_sent_after_the_boundary_the_close_waited_for_is_not_relayed() {
    let (addr, mut accepted) = raw_ws_backend(b"").await;
    let gw = TestGateway::start(&simple_config(&[addr])).await;
    let mut rx = gw.access_log();
    let mut client = raw_client(gw.addr("public")).await;
    let mut server = within("backend", accepted.recv())
        .await
        .expect("backend socket");

    // Each side starts a 200-byte binary frame and sends only its first 50
    // bytes, which wsgate passes on before the drain.
    let (client_frame, server_frame) =
        start_frames_both_ways(&mut client, &mut server, 200, 50).await;

    gw.gateway.drain();
    // Each sends the rest of its frame and, in the same write, a whole next
    // frame: wsgate must stop reading at the boundary and put its Close there.
    let client_next = [
        0x81,
        0x84,
        9,
        9,
        9,
        9,
        b'n' ^ 9,
        b'e' ^ 9,
        b'x' ^ 9,
        b't' ^ 9,
    ];
    let server_next = [0x81, 4, b'n', b'e', b'x', b't'];
    client
        .write_all(&[&client_frame[50..], &client_next[..]].concat())
        .await
        .expect("client rest and next");
    server
        .write_all(&[&server_frame[50..], &server_next[..]].concat())
        .await
        .expect("server rest and next");

    let mut rest = vec![0u8; client_frame.len() - 50];
    within(
        "the client's rest at the backend",
        server.read_exact(&mut rest),
    )
    .await
    .expect("read");
    assert_eq!(rest, client_frame[50..]);
    let (op, body) = read_frame(&mut server).await;
    assert_eq!(
        (op, &body[..2]),
        (0x88, &1001u16.to_be_bytes()[..]),
        "right after the boundary the backend must get wsgate's Close, not the next frame"
    );
    let mut rest = vec![0u8; server_frame.len() - 50];
    within(
        "the backend's rest at the client",
        client.read_exact(&mut rest),
    )
    .await
    .expect("read");
    assert_eq!(rest, server_frame[50..]);
    let (op, body) = read_frame(&mut client).await;
    assert_eq!(
        (op, &body[..2]),
        (0x88, &1001u16.to_be_bytes()[..]),
        "right after the boundary the client must get wsgate's Close, not the next frame"
    );

    // Both answer the Close; the next frames are never delivered.
    client
        .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe9])
        .await
        .expect("client reply");
    server
        .write_all(&[0x88, 2, 0x03, 0xe9])
        .await
        .expect("server reply");
    server.shutdown().await.expect("server closes");
    let mut extra = Vec::new();
    within("backend EOF", server.read_to_end(&mut extra))
        .await
        .expect("read");
    assert!(
        extra.is_empty(),
        "the backend got more after the Close: {extra:?}"
    );
    let mut extra = Vec::new();
    within("client EOF", client.read_to_end(&mut extra))
        .await
        .expect("read");
    assert!(
        extra.is_empty(),
        "the client got more after the Close: {extra:?}"
    );
    let r = next_record(&mut rx).await;
    assert_eq!(r.to_backend.bytes, client_frame.len() as u64);
    assert_eq!(r.to_client.bytes, server_frame.len() as u64);
    assert_eq!(r.end.close_frame_from, Some(Side::Proxy));
    gw.wait_idle().await;
}

#[tokio::test]
async fn a_peer_that_never_answers_the_close_is_cut() {
    let (addr, mut accepted) = raw_ws_backend(b"").await;
    let toml = simple_config(&[addr]).replace("[timeouts]\n", "[timeouts]\nclose = \"300ms\"\n");
    let gw = TestGateway::start(&toml).await;
    let mut rx = gw.access_log();
    let mut client = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let (status, _, _) = raw_exchange(&mut client, handshake_request("/ws", "a").as_bytes()).await;
    assert_eq!(status, 101);
    let _server = within("backend", accepted.recv())
        .await
        .expect("backend socket");
    gw.gateway.drain();
    let (op, _) = read_frame(&mut client).await;
    assert_eq!(op, 0x88);
    // Neither side answers.
    let r = next_record(&mut rx).await;
    assert_eq!(r.end.closed_by, Side::Proxy);
    assert_eq!(r.end.reason, EndReason::CloseTimeout, "{r:?}");
    assert_eq!(r.end.proxy_close, Some(order(1001, "going away")));
    wait_closed(&mut client).await;
    gw.wait_idle().await;
}

#[tokio::test]
async fn a_side_that_already_sent_its_close_gets_no_second_one() {
    let (addr, mut accepted) = raw_ws_backend(b"").await;
    let gw = TestGateway::start(&simple_config(&[addr])).await;
    let mut rx = gw.access_log();
    let mut client = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let (status, _, _) = raw_exchange(&mut client, handshake_request("/ws", "a").as_bytes()).await;
    assert_eq!(status, 101);
    let mut server = within("backend", accepted.recv())
        .await
        .expect("backend socket");
    // The backend starts closing with 4000 before the drain.
    server
        .write_all(&[0x88, 2, 0x0f, 0xa0])
        .await
        .expect("server close");
    let (op, body) = read_frame(&mut client).await;
    assert_eq!((op, body.as_slice()), (0x88, &[0x0f, 0xa0][..]));
    gw.gateway.drain();
    // The backend gets wsgate's Close (the client has not sent one)...
    let (op, body) = read_frame(&mut server).await;
    assert_eq!((op, &body[..2]), (0x88, &1001u16.to_be_bytes()[..]));
    server.shutdown().await.expect("server closes");
    // ...and the client gets nothing more than the backend's own Close.
    let mut rest = Vec::new();
    within("client EOF", client.read_to_end(&mut rest))
        .await
        .expect("read");
    assert!(rest.is_empty(), "client got a second frame: {rest:?}");
    // The client answers the backend's Close, as clients do; that ends it cleanly.
    client
        .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x0f, 0xa0])
        .await
        .expect("client reply");
    let r = next_record(&mut rx).await;
    assert_eq!(r.end.reason, EndReason::ProxyClose);
    assert_eq!(r.end.proxy_close, Some(order(1001, "going away")));
    assert_eq!(r.end.close_code, Some(4000));
    assert_eq!(r.end.close_frame_from, Some(Side::Backend));
    gw.wait_idle().await;
}

/// A connected pair of loopback sockets; `small` shrinks the buffers on
/// the path from the first to the second, so writes through it stall.
async fn socket_pair(small: bool) -> (TcpStream, TcpStream) {
    let listen = tokio::net::TcpSocket::new_v4().expect("socket");
    if small {
        listen.set_recv_buffer_size(2048).expect("rcvbuf");
    }
    listen
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = listen.listen(1).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let connect = tokio::net::TcpSocket::new_v4().expect("socket");
    if small {
        connect.set_send_buffer_size(2048).expect("sndbuf");
    }
    let (a, b) = tokio::join!(connect.connect(addr), listener.accept());
    (a.expect("connect"), b.expect("accept").0)
}

#[tokio::test]
async fn a_close_during_a_stalled_write_loses_no_byte() {
    use wsgate::observe::registry::{ConnInfo, Registry};
    use wsgate::tunnel::{self, TunnelTimeouts};
    // Driven on tunnel::run directly: only then can the test shrink the
    // proxy side's send buffer so that a write to the backend must stall.
    let (mut client, proxy_client) = socket_pair(false).await;
    let (proxy_backend, mut backend) = socket_pair(true).await;
    let registry = std::sync::Arc::new(Registry::default());
    let drain = tokio_util::sync::CancellationToken::new();
    let hard = tokio_util::sync::CancellationToken::new();
    let guard = registry.open(
        ConnInfo {
            client: client.local_addr().expect("addr"),
            listener: "t".into(),
            route: "r".into(),
            upstream: "u".into(),
            server: std::sync::Arc::new(wsgate::upstream::balancer::Server::new(
                backend.local_addr().expect("addr"),
                1,
            )),
            path: "/".into(),
        },
        &drain,
        &hard,
    );
    // As the gateway runs it: the registry passes the drain on.
    let done = tokio_util::sync::CancellationToken::new();
    tokio::spawn(registry.clone().obey(drain.clone(), hard.clone(), done));
    let stats = guard.stats.clone();
    let timeouts = TunnelTimeouts {
        half_close: std::time::Duration::from_secs(30),
        close: std::time::Duration::from_secs(30),
    };
    let run = tokio::spawn(async move {
        let client = wsgate::net::tls::ClientStream::Plain(proxy_client);
        tunnel::run(
            client,
            bytes::Bytes::new(),
            wsgate::net::tls::BackendStream::Plain(proxy_backend),
            bytes::Bytes::new(),
            stats,
            timeouts,
            &tunnel::FramePolicy::default(),
        )
        .await
    });

    // One write the tunnel reads at once: a 14000-byte frame and the client's Close.
    let len = 14_000usize;
    let mut sent = vec![0x82, 0x80 | 126];
    sent.extend_from_slice(&(len as u16).to_be_bytes());
    sent.extend_from_slice(&[0, 0, 0, 0]);
    sent.extend((0..len).map(|i| (i % 251) as u8));
    sent.extend_from_slice(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);
    client.write_all(&sent).await.expect("client frames");
    within("the client's Close to be read", async {
        while guard.stats.to_backend.totals().frames < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    // The backend's Close reaches the client: both Close frames have been read.
    backend
        .write_all(&[0x88, 2, 0x03, 0xe8])
        .await
        .expect("backend close");
    let mut got = [0u8; 4];
    within("backend Close at the client", client.read_exact(&mut got))
        .await
        .expect("read");
    drain.cancel();
    let mut received = Vec::new();
    within(
        "everything at the backend",
        backend.read_to_end(&mut received),
    )
    .await
    .expect("read");
    assert_eq!(received.len(), sent.len(), "bytes lost at drain");
    assert_eq!(received, sent);
    let outcome = within("the tunnel to end", run).await.expect("join");
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    // Both peers had sent their Close before the drain: wsgate wrote none, so it is not the closer.
    assert!(outcome.proxy_close.is_none());
    assert_eq!(outcome.closed_by, Side::Client);
    assert_eq!(outcome.first_close, Some((Side::Client, Some(1000))));
    guard.finish(outcome.to_end(), |_| {});
}

#[tokio::test]
async fn a_close_half_way_through_when_the_drain_starts_is_not_followed_by_another() {
    let (addr, mut accepted) = raw_ws_backend(b"").await;
    let gw = TestGateway::start(&simple_config(&[addr])).await;
    let mut client = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let (status, _, _) = raw_exchange(&mut client, handshake_request("/ws", "a").as_bytes()).await;
    assert_eq!(status, 101);
    let mut server = within("backend", accepted.recv())
        .await
        .expect("backend socket");
    let close = [0x88u8, 0x82, 0, 0, 0, 0, 0x03, 0xe8];
    client.write_all(&close[..1]).await.expect("first byte");
    let mut first = [0u8; 1];
    within("first byte at the backend", server.read_exact(&mut first))
        .await
        .expect("read");
    gw.gateway.drain();
    client.write_all(&close[1..]).await.expect("rest");
    // The client gets wsgate's Close (its backend had sent none) and answers nothing more.
    let (op, _) = read_frame(&mut client).await;
    assert_eq!(op, 0x88);
    let mut rest = [0u8; 7];
    within("rest of the client's Close", server.read_exact(&mut rest))
        .await
        .expect("read");
    assert_eq!([&first[..], &rest[..]].concat(), close);
    // The backend answers and closes; it must see nothing after the client's Close.
    server
        .write_all(&[0x88, 2, 0x03, 0xe8])
        .await
        .expect("server reply");
    server.shutdown().await.expect("server closes");
    let mut extra = Vec::new();
    within("backend EOF", server.read_to_end(&mut extra))
        .await
        .expect("read");
    assert!(
        extra.is_empty(),
        "a second Close followed the client's: {extra:?}"
    );
    gw.wait_idle().await;
}

#[tokio::test]
async fn connections_still_in_their_handshake_do_not_hold_up_a_drain() {
    let backend = echo_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    make_cert(dir.path(), "a", &["a.example.test"]);
    // An hour: only the drain, not the deadline, can end these connections in time.
    let toml = format!(
        "[timeouts]\nclient_handshake = \"1h\"\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\ntls = {{ cert = \"a.pem\", key = \"a.key\" }}\n[[routes]]\nupstream = \"u\"\n[upstreams.u]\nservers = [\"{backend}\"]\n"
    );
    let gw = TestGateway::start_in(dir, &toml).await;
    let mut silent_tls = TcpStream::connect(gw.addr("tls")).await.expect("connect");
    let mut idle = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let mut partial = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    partial
        .write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\n")
        .await
        .expect("write");
    // A keep-alive connection that was served once.
    let mut served = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    // A refused handshake (426) keeps the connection open for the next request.
    let old_version = handshake_request("/ws", "a").replace("Version: 13", "Version: 8");
    let (status, _, _) = raw_exchange(&mut served, old_version.as_bytes()).await;
    assert_eq!(status, 426);
    gw.gateway.drain();
    let tasks = gw.gateway.shared().tasks.clone();
    tasks.close();
    within("every task to end after the drain", tasks.wait()).await;
    for s in [&mut silent_tls, &mut idle, &mut partial, &mut served] {
        wait_closed(s).await;
    }
}

#[tokio::test]
async fn a_drain_lets_a_plain_response_in_flight_finish_then_closes_its_connection() {
    let backend = AppBackend::start().await;
    let gw = TestGateway::start(&simple_config(&[backend.addr])).await;
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let len = 8 * 1024 * 1024;
    tcp.write_all(format!("GET /big/{len} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut first = vec![0u8; 64 * 1024];
    let n = within("the start of the response", tcp.read(&mut first))
        .await
        .expect("read");
    assert!(n > 0);
    gw.gateway.drain();
    let mut rest = Vec::new();
    within(
        "the rest of the response, then the close",
        tcp.read_to_end(&mut rest),
    )
    .await
    .expect("read to end");
    let mut all = first[..n].to_vec();
    all.extend_from_slice(&rest);
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let head = String::from_utf8_lossy(&all[..split]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(all.len() - split, len, "the whole body, then the close");
    assert_eq!(&all[split..], &pattern(0, len)[..]);
    let tasks = gw.gateway.shared().tasks.clone();
    tasks.close();
    within("every task to end after the drain", tasks.wait()).await;
}
