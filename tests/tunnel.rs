//! The tunnel: echo up to 16 MiB, fragmentation and control frames intact,
//! close codes both ways, half-close, bytes sent with the 101, protocol
//! violations, and stats and access records matching what was sent.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::Message;
use wsgate::observe::access::{EndReason, Side};

#[tokio::test]
async fn text_and_binary_echo_up_to_16_mib() {
    let echo = echo_backend().await;
    let gw = TestGateway::start(&simple_config(&[echo])).await;
    let mut rx = gw.access_log();
    let mut ws = ws_connect(gw.addr("public"), "/ws").await;
    let sizes = [
        0usize,
        1,
        125,
        126,
        65_535,
        65_536,
        1 << 20,
        (16 << 20) - 14,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let payload: Vec<u8> = (0..size).map(|b| (b * 31 + i) as u8).collect();
        ws.send(Message::binary(payload.clone()))
            .await
            .expect("send binary");
        let got = within("binary echo", ws.next())
            .await
            .expect("message")
            .expect("ok");
        assert_eq!(
            got.into_data().as_ref(),
            payload.as_slice(),
            "binary of {size} bytes"
        );
        let text = "é".repeat(size / 2);
        ws.send(Message::text(text.clone()))
            .await
            .expect("send text");
        let got = within("text echo", ws.next())
            .await
            .expect("message")
            .expect("ok");
        assert_eq!(
            got.into_text().expect("text").as_str(),
            text,
            "text of {size} bytes"
        );
    }
    ws.close(None).await.expect("close");
    finish(ws).await;
    let record = next_record(&mut rx).await;
    let n = 2 * sizes.len() as u64;
    assert_eq!(record.to_backend.messages, n);
    assert_eq!(record.to_client.messages, n);
    assert!(record.to_backend.bytes > 2 * (16 << 20), "{record:?}");
    assert_eq!(record.end.reason, EndReason::Closed);
    gw.wait_idle().await;
}

#[tokio::test]
async fn fragments_and_pings_pass_intact() {
    let mut backend = WsBackend::start().await;
    let gw = TestGateway::start(&simple_config(&[backend.addr])).await;
    let mut rx = gw.access_log();
    let mut client = ws_connect(gw.addr("public"), "/ws").await;
    let mut server = backend.next().await.ws;

    // Client: a text message in three fragments with a ping between them.
    client
        .send(Message::Frame(Frame::message(
            "hel",
            OpCode::Data(Data::Text),
            false,
        )))
        .await
        .expect("frag 1");
    client
        .send(Message::Frame(Frame::ping("p1")))
        .await
        .expect("ping");
    client
        .send(Message::Frame(Frame::message(
            "lo ",
            OpCode::Data(Data::Continue),
            false,
        )))
        .await
        .expect("frag 2");
    client
        .send(Message::Frame(Frame::message(
            "world",
            OpCode::Data(Data::Continue),
            true,
        )))
        .await
        .expect("frag 3");
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(
            within("backend to read", server.next())
                .await
                .expect("message")
                .expect("ok"),
        );
    }
    assert_eq!(got[0], Message::Ping("p1".into()));
    assert_eq!(got[1], Message::text("hello world"));
    // tungstenite answers the ping on its next write; this one is a fragmented binary from the server.
    server
        .send(Message::Frame(Frame::message(
            vec![1u8, 2],
            OpCode::Data(Data::Binary),
            false,
        )))
        .await
        .expect("s frag 1");
    server
        .send(Message::Frame(Frame::message(
            vec![3u8],
            OpCode::Data(Data::Continue),
            true,
        )))
        .await
        .expect("s frag 2");
    let mut seen_pong = false;
    loop {
        match within("client to read", client.next())
            .await
            .expect("message")
            .expect("ok")
        {
            Message::Pong(p) => {
                assert_eq!(p.as_ref(), b"p1");
                seen_pong = true;
            }
            Message::Binary(b) => {
                assert_eq!(b.as_ref(), [1, 2, 3]);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        seen_pong,
        "the pong must arrive before the later binary message"
    );
    client.close(None).await.expect("close");
    tokio::join!(finish(server), finish(client));
    let record = next_record(&mut rx).await;
    // 3 data frames + ping + close from the client; 2 data frames + pong + close from the server.
    assert_eq!(record.to_backend.frames, 5);
    assert_eq!(record.to_backend.messages, 1);
    assert_eq!(record.to_client.frames, 4);
    assert_eq!(record.to_client.messages, 1);
    gw.wait_idle().await;
}

#[tokio::test]
async fn close_codes_reach_the_other_side_both_ways() {
    let mut backend = WsBackend::start().await;
    let gw = TestGateway::start(&simple_config(&[backend.addr])).await;
    let mut rx = gw.access_log();

    // Client closes with 4001.
    let mut client = ws_connect(gw.addr("public"), "/ws").await;
    let mut server = backend.next().await.ws;
    client
        .close(Some(CloseFrame {
            code: CloseCode::Library(4001),
            reason: "bye".into(),
        }))
        .await
        .expect("close");
    assert_eq!(
        expect_close(&mut server, "backend to see the close").await,
        (4001, "bye".to_string())
    );
    tokio::join!(finish(server), finish(client));
    let record = next_record(&mut rx).await;
    assert_eq!(record.end.close_code, Some(4001));
    assert_eq!(record.end.close_frame_from, Some(Side::Client));

    // Backend closes with 1011.
    let mut client = ws_connect(gw.addr("public"), "/ws").await;
    let mut server = backend.next().await.ws;
    server
        .close(Some(CloseFrame {
            code: CloseCode::Error,
            reason: "oops".into(),
        }))
        .await
        .expect("close");
    assert_eq!(
        expect_close(&mut client, "client to see the close").await,
        (1011, "oops".to_string())
    );
    tokio::join!(finish(client), finish(server));
    let record = next_record(&mut rx).await;
    assert_eq!(record.end.close_code, Some(1011));
    assert_eq!(record.end.close_frame_from, Some(Side::Backend));
    gw.wait_idle().await;
}

#[tokio::test]
async fn half_close_is_passed_on_and_the_other_side_keeps_sending() {
    let (addr, mut accepted) = raw_ws_backend(b"").await;
    let gw = TestGateway::start(&simple_config(&[addr])).await;
    let mut rx = gw.access_log();
    let mut client = raw_client(gw.addr("public")).await;
    let mut server = within("backend socket", accepted.recv())
        .await
        .expect("accepted");

    let frame = masked_text(b"last words");
    client.write_all(&frame).await.expect("write");
    client.shutdown().await.expect("client half-close");
    // The backend reads the frame, then EOF: the FIN was passed on.
    let mut got = Vec::new();
    within("backend to see EOF", server.read_to_end(&mut got))
        .await
        .expect("read");
    assert_eq!(got, frame);
    // Its direction is still open: it can answer, then close.
    let reply = [0x81u8, 5, b'l', b'a', b't', b'e', b'r'];
    server.write_all(&reply).await.expect("write reply");
    server.shutdown().await.expect("backend close");
    let mut got = Vec::new();
    within(
        "client to get the reply and EOF",
        client.read_to_end(&mut got),
    )
    .await
    .expect("read");
    assert_eq!(got, reply);
    let record = next_record(&mut rx).await;
    assert_eq!(record.end.closed_by, Side::Client);
    assert_eq!(record.end.reason, EndReason::Closed);
    assert_eq!(record.to_backend.messages, 1);
    assert_eq!(record.to_client.messages, 1);
    gw.wait_idle().await;
}

#[tokio::test]
async fn bytes_sent_with_the_101_reach_the_client() {
    const GREETING: &[u8] = &[0x81, 5, b'h', b'e', b'l', b'l', b'o'];
    let (addr, mut accepted) = raw_ws_backend(GREETING).await;
    let gw = TestGateway::start(&simple_config(&[addr])).await;
    let mut client = raw_client(gw.addr("public")).await;
    let _server = within("backend socket", accepted.recv())
        .await
        .expect("accepted");
    let mut got = vec![0u8; GREETING.len()];
    within("greeting", client.read_exact(&mut got))
        .await
        .expect("read");
    assert_eq!(got, GREETING);
    let live = gw.gateway.registry().live();
    assert_eq!(live.len(), 1);
    within("greeting to be counted", async {
        while live[0].to_client.totals().messages != 1 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn an_unmasked_client_frame_ends_the_tunnel() {
    let (addr, mut accepted) = raw_ws_backend(b"").await;
    let gw = TestGateway::start(&simple_config(&[addr])).await;
    let mut rx = gw.access_log();
    let mut client = raw_client(gw.addr("public")).await;
    let mut server = within("backend socket", accepted.recv())
        .await
        .expect("accepted");
    client
        .write_all(&[0x81, 2, b'h', b'i'])
        .await
        .expect("write");
    let record = next_record(&mut rx).await;
    assert_eq!(record.end.closed_by, Side::Client);
    assert_eq!(record.end.reason, EndReason::ProtocolError, "{record:?}");
    wait_closed(&mut client).await;
    wait_closed(&mut server).await;
    gw.wait_idle().await;
}

#[tokio::test]
async fn an_unmasked_client_frame_never_reaches_the_backend() {
    let (addr, mut accepted) = raw_ws_backend(b"").await;
    let gw = TestGateway::start(&simple_config(&[addr])).await;
    let mut rx = gw.access_log();
    let mut client = raw_client(gw.addr("public")).await;
    let mut server = within("backend socket", accepted.recv())
        .await
        .expect("accepted");
    // A good frame first, so the backend's side is known to be relayed.
    let good = masked_text(b"ok");
    client.write_all(&good).await.expect("write good frame");
    let mut got = vec![0u8; good.len()];
    within("the good frame", server.read_exact(&mut got))
        .await
        .expect("read");
    assert_eq!(got, good);
    // Then an unmasked one (RFC 6455 section 5.1) and a good one after it.
    let mut bad = vec![0x81, 2, b'h', b'i'];
    bad.extend_from_slice(&masked_text(b"after"));
    client.write_all(&bad).await.expect("write bad frame");
    let mut rest = Vec::new();
    let (op, payload) = read_frame(&mut server).await;
    assert_eq!((op, &payload[..2]), (0x88, &1001u16.to_be_bytes()[..]));
    assert_eq!(&payload[2..], b"peer broke the protocol");
    server.shutdown().await.expect("backend FIN");
    within("backend EOF", server.read_to_end(&mut rest))
        .await
        .expect("read");
    assert!(
        rest.is_empty(),
        "bytes of or after the unmasked frame reached the backend: {rest:?}"
    );
    // The client gets Close 1002 and EOF; the backend already had 1001 and EOF.
    let mut to_client = Vec::new();
    within("client EOF", async {
        let _ = client.read_to_end(&mut to_client).await;
    })
    .await;
    let mut expected = vec![0x88, 2 + 14, 0x03, 0xea];
    expected.extend_from_slice(b"protocol error");
    assert_eq!(to_client, expected);
    let record = next_record(&mut rx).await;
    assert_eq!(record.end.closed_by, Side::Client);
    assert_eq!(record.end.reason, EndReason::ProtocolError, "{record:?}");
    assert_eq!(record.end.close_code, Some(1002));
    assert_eq!(record.to_backend.bytes, good.len() as u64);
    assert_eq!(record.to_backend.messages, 1);
    gw.wait_idle().await;
}

#[tokio::test]
async fn stats_and_access_record_match_what_was_sent() {
    let mut backend = WsBackend::start().await;
    let gw = TestGateway::start(&simple_config(&[backend.addr])).await;
    let mut rx = gw.access_log();
    let mut client = ws_connect(gw.addr("public"), "/chat/room?id=7").await;
    let mut server = backend.next().await.ws;
    for m in ["a", "bb", "ccc"] {
        client.send(Message::text(m)).await.expect("send");
        let got = within("backend read", server.next())
            .await
            .expect("message")
            .expect("ok");
        server.send(got).await.expect("echo");
        within("client read", client.next())
            .await
            .expect("message")
            .expect("ok");
    }
    // Live view while open: a masked client frame of n < 126 bytes is 6 + n bytes, a server frame 2 + n.
    let live = gw.gateway.registry().live();
    assert_eq!(live.len(), 1);
    let conn = live[0].clone();
    assert_eq!(&*conn.info.listener, "public");
    assert_eq!(&*conn.info.route, "*/");
    assert_eq!(&*conn.info.upstream, "u");
    assert_eq!(conn.info.backend(), backend.addr);
    assert_eq!(conn.info.path, "/chat/room?id=7");
    assert_eq!(conn.to_backend.totals().bytes, 7 + 8 + 9);
    within("server bytes to be counted", async {
        while conn.to_client.totals().bytes != 3 + 4 + 5 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;

    client
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .await
        .expect("close");
    tokio::join!(finish(server), finish(client));
    let r = next_record(&mut rx).await;
    assert_eq!(r.id, conn.id);
    assert_eq!(r.client, conn.info.client);
    assert_eq!(r.to_backend.bytes, 7 + 8 + 9 + 8);
    assert_eq!(r.to_client.bytes, 3 + 4 + 5 + 4);
    assert_eq!((r.to_backend.frames, r.to_backend.messages), (4, 3));
    assert_eq!((r.to_client.frames, r.to_client.messages), (4, 3));
    assert_eq!(r.end.close_code, Some(1000));
    assert_eq!(r.end.close_frame_from, Some(Side::Client));
    assert_eq!(r.path, "/chat/room?id=7");
    assert_eq!(r.end.reason, EndReason::Closed);
    gw.wait_idle().await;
}

#[tokio::test]
async fn a_bad_client_does_not_disturb_others_and_counters_return_to_zero() {
    let echo = echo_backend().await;
    let gw = TestGateway::start(&simple_config(&[echo])).await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(ws_connect(gw.addr("public"), "/ws").await);
    }
    // One misbehaving client in the middle.
    let mut bad = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let (status, _, _) = raw_exchange(&mut bad, handshake_request("/ws", "a").as_bytes()).await;
    assert_eq!(status, 101);
    bad.write_all(&[0x8f, 0x80, 0, 0, 0, 0])
        .await
        .expect("reserved opcode");
    // It gets Close 1002 and EOF; once it closes too, its tunnel is gone.
    wait_closed(&mut bad).await;
    drop(bad);
    gw.wait_live(50).await;
    for round in 0..3 {
        for (i, c) in clients.iter_mut().enumerate() {
            let text = format!("{i}-{round}");
            c.send(Message::text(text.clone())).await.expect("send");
            let got = within("echo", c.next())
                .await
                .expect("message")
                .expect("ok");
            assert_eq!(got.into_text().expect("text").as_str(), text);
        }
    }
    assert_eq!(gw.gateway.registry().live_count(), 50);
    for mut c in clients {
        c.close(None).await.expect("close");
        finish(c).await;
    }
    gw.wait_idle().await;
}

#[tokio::test]
async fn permessage_deflate_is_negotiated_end_to_end_and_compressed_frames_pass_unchanged() {
    let (addr, mut accepted) =
        raw_ws_backend_with(b"", "Sec-WebSocket-Extensions: permessage-deflate\r\n").await;
    let gw = TestGateway::start(&simple_config(&[addr])).await;
    let mut rx = gw.access_log();
    let mut client = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let offer = handshake_request("/ws", "a").replace(
        "\r\n\r\n",
        "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
    );
    let (status, head, _) = raw_exchange(&mut client, offer.as_bytes()).await;
    assert_eq!(status, 101, "{head}");
    assert_eq!(
        header_value(&head, "sec-websocket-extensions").as_deref(),
        Some("permessage-deflate"),
        "{head}"
    );
    let (mut server, seen) = within("backend socket", accepted.recv())
        .await
        .expect("accepted");
    assert_eq!(
        header_value(&seen, "sec-websocket-extensions").as_deref(),
        Some("permessage-deflate; client_max_window_bits"),
        "{seen}"
    );

    // "Hello" compressed (RFC 7692 section 7.2.3.1), RSV1 set: client to
    // backend masked, in one frame.
    let deflated = [0xf2u8, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut up = vec![0xc1, 0x80 | deflated.len() as u8];
    up.extend_from_slice(&mask);
    up.extend(deflated.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    client.write_all(&up).await.expect("client frame");
    let mut got = vec![0u8; up.len()];
    within(
        "the compressed frame at the backend",
        server.read_exact(&mut got),
    )
    .await
    .expect("read");
    assert_eq!(got, up, "wsgate changed a compressed frame");
    // Backend to client, in two fragments: RSV1 on the first only.
    let down = [&[0x41u8, 3][..], &deflated[..3], &[0x80, 4], &deflated[3..]].concat();
    server.write_all(&down).await.expect("server frames");
    let mut got = vec![0u8; down.len()];
    within(
        "the compressed fragments at the client",
        client.read_exact(&mut got),
    )
    .await
    .expect("read");
    assert_eq!(got, down, "wsgate changed compressed fragments");

    client.shutdown().await.expect("client done");
    let mut rest = Vec::new();
    within("backend EOF", server.read_to_end(&mut rest))
        .await
        .expect("read");
    assert!(rest.is_empty());
    server.shutdown().await.expect("server done");
    let record = next_record(&mut rx).await;
    assert_eq!(record.end.closed_by, Side::Client);
    assert_eq!(record.to_backend.messages, 1);
    assert_eq!((record.to_client.frames, record.to_client.messages), (2, 1));
    gw.wait_idle().await;
}

#[tokio::test]
async fn a_tunnel_through_an_ipv6_listener_reaches_an_ipv4_backend() {
    if tokio::net::TcpListener::bind("[::1]:0").await.is_err() {
        eprintln!("skipped: this machine has no IPv6 loopback (::1)");
        return;
    }
    let mut backend = WsBackend::start().await;
    let toml =
        simple_config(&[backend.addr]).replace("bind = \"127.0.0.1:0\"", "bind = \"[::1]:0\"");
    let gw = TestGateway::start(&toml).await;
    let mut rx = gw.access_log();
    let addr = gw.addr("public");
    assert!(addr.is_ipv6(), "{addr}");
    let mut client = ws_connect(addr, "/ws").await;
    let accepted = backend.next().await;
    let mut server = accepted.ws;
    assert_eq!(accepted.headers["x-forwarded-for"], "::1");
    assert_eq!(
        accepted.headers["forwarded"],
        format!("for=\"[::1]\";proto=http;host=\"{addr}\"")
    );
    client.send(Message::text("over v6")).await.expect("send");
    let got = within("backend read", server.next())
        .await
        .expect("message")
        .expect("ok");
    assert_eq!(got, Message::text("over v6"));
    server.send(got).await.expect("echo");
    echo_back(&mut client, "over v6").await;
    client.close(None).await.expect("close");
    tokio::join!(finish(server), finish(client));
    let record = next_record(&mut rx).await;
    assert_eq!(record.client.ip(), std::net::Ipv6Addr::LOCALHOST);
    assert_eq!(record.backend, backend.addr);
    gw.wait_idle().await;
}

/// The client's next message must be the text `text`.
async fn echo_back(client: &mut tokio_tungstenite::WebSocketStream<TcpStream>, text: &str) {
    match within("the echo", client.next()).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), text),
        other => panic!("expected {text:?}, got {other:?}"),
    }
}

/// A masked client frame of any opcode with a short payload.
fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [3u8, 5, 7, 11];
    let mut f = vec![b0, 0x80 | u8::try_from(payload.len()).expect("short")];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// The closing handshake is transparent: a client that sends a ping, a
/// data frame and a second Close after its Close still gets the backend's
/// Close reply, byte for byte; the backend sees only the first Close; the
/// discarded frames are counted in the record and the metrics.
#[tokio::test]
async fn frames_after_a_clients_close_are_discarded_and_the_backends_reply_arrives() {
    let (addr, mut accepted) = raw_ws_backend(b"").await;
    let gw = TestGateway::start(&simple_config(&[addr])).await;
    let mut rx = gw.access_log();
    let mut client = raw_client(gw.addr("public")).await;
    let mut server = within("backend socket", accepted.recv())
        .await
        .expect("accepted");
    let close = client_frame(0x88, &1000u16.to_be_bytes());
    let glued = [close.clone(), client_frame(0x89, b"ping?")].concat();
    client.write_all(&glued).await.expect("Close and ping");
    client
        .write_all(
            &[
                masked_text(b"late"),
                client_frame(0x88, &4000u16.to_be_bytes()),
            ]
            .concat(),
        )
        .await
        .expect("late frames");
    let mut got = vec![0u8; close.len()];
    within("the Close at the backend", server.read_exact(&mut got))
        .await
        .expect("read");
    assert_eq!(got, close);
    let reply = [0x88, 2, 0x03, 0xe8];
    server.write_all(&reply).await.expect("reply");
    server.shutdown().await.expect("backend FIN");
    let mut to_client = Vec::new();
    within(
        "the reply and EOF at the client",
        client.read_to_end(&mut to_client),
    )
    .await
    .expect("read");
    assert_eq!(to_client, reply);
    client.shutdown().await.expect("client FIN");
    let mut rest = Vec::new();
    within("EOF at the backend", server.read_to_end(&mut rest))
        .await
        .expect("read");
    assert!(rest.is_empty(), "after the Close the backend got {rest:?}");
    let r = next_record(&mut rx).await;
    assert_eq!(r.end.reason, EndReason::Closed, "{r:?}");
    assert_eq!(r.end.close_code, Some(1000));
    assert_eq!(r.end.close_frame_from, Some(Side::Client));
    assert_eq!(r.to_backend.bytes, close.len() as u64);
    assert_eq!((r.to_backend.frames, r.to_backend.discarded_frames), (1, 3));
    assert_eq!((r.to_client.bytes, r.to_client.discarded_frames), (4, 0));
    let text = gw.gateway.shared().metrics.encode().expect("metrics");
    assert!(
        text.lines()
            .any(|l| l.starts_with("wsgate_traffic_discarded_frames_total{")
                && l.contains("direction=\"to_backend\"")
                && l.ends_with(" 3")),
        "{text}"
    );
    gw.wait_idle().await;
}

/// A backend's masked frame: the backend gets Close 1002 (masked, as from
/// a client), the client Close 1001, and the record blames the backend.
#[tokio::test]
async fn a_masked_backend_frame_gets_1002_to_the_backend_and_1001_to_the_client() {
    let (addr, mut accepted) = raw_ws_backend(b"").await;
    let gw = TestGateway::start(&simple_config(&[addr])).await;
    let mut rx = gw.access_log();
    let mut client = raw_client(gw.addr("public")).await;
    let mut server = within("backend socket", accepted.recv())
        .await
        .expect("accepted");
    server
        .write_all(&[[0x81, 2, b'o', b'k'].to_vec(), masked_text(b"masked")].concat())
        .await
        .expect("write");
    let (op, payload) = read_frame(&mut client).await;
    assert_eq!((op, payload.as_slice()), (0x81, &b"ok"[..]));
    let mut expected = vec![0x88, 2 + 23, 0x03, 0xe9];
    expected.extend_from_slice(b"peer broke the protocol");
    let mut got = vec![0u8; expected.len()];
    within("the 1001 at the client", client.read_exact(&mut got))
        .await
        .expect("read");
    assert_eq!(got, expected, "unmasked, right after the good frame");
    let (op, payload) = read_frame(&mut server).await;
    assert_eq!(op, 0x88);
    assert_eq!(&payload[..2], &1002u16.to_be_bytes());
    assert_eq!(&payload[2..], b"protocol error");
    wait_closed(&mut server).await;
    drop(server);
    client.shutdown().await.expect("client FIN");
    let r = next_record(&mut rx).await;
    assert_eq!(r.end.reason, EndReason::ProtocolError, "{r:?}");
    assert_eq!(r.end.closed_by, Side::Backend);
    assert_eq!(r.end.close_frame_from, Some(Side::Proxy));
    assert_eq!(r.to_client.bytes, 4, "only the good frame was relayed");
    gw.wait_idle().await;
}

/// `[websocket] strict = false`: a frame with a reserved bit and an
/// unmasked client frame pass untouched both ways, and the tunnel goes on.
#[tokio::test]
async fn not_strict_passes_violations_untouched() {
    let (addr, mut accepted) = raw_ws_backend(b"").await;
    let toml = format!("{}\n[websocket]\nstrict = false\n", simple_config(&[addr]));
    let gw = TestGateway::start(&toml).await;
    let mut client = raw_client(gw.addr("public")).await;
    let mut server = within("backend socket", accepted.recv())
        .await
        .expect("accepted");
    let up = [0x81, 2, b'h', b'i'];
    client.write_all(&up).await.expect("unmasked");
    let mut got = [0u8; 4];
    within("the frame at the backend", server.read_exact(&mut got))
        .await
        .expect("read");
    assert_eq!(got, up);
    let down = [0xc1, 1, b'x'];
    server.write_all(&down).await.expect("rsv1");
    let mut got = [0u8; 3];
    within("the frame at the client", client.read_exact(&mut got))
        .await
        .expect("read");
    assert_eq!(got, down);
    assert_eq!(gw.gateway.registry().live_count(), 1);
}

/// A route's `max_message_bytes`, fragments summed, over real sockets: the
/// client whose third fragment goes over gets Close 1009, the backend the
/// first two fragments and then Close 1001; the record says `too_big`.
#[tokio::test]
async fn a_message_over_the_routes_limit_gets_1009_to_its_sender_and_1001_to_the_backend() {
    let (addr, mut accepted) = raw_ws_backend(b"").await;
    let toml = simple_config(&[addr]).replace(
        "upstream = \"u\"\n",
        "upstream = \"u\"\nmax_frame_bytes = 100\nmax_message_bytes = 150\n",
    );
    let gw = TestGateway::start(&toml).await;
    let mut rx = gw.access_log();
    let mut client = raw_client(gw.addr("public")).await;
    let mut server = within("backend socket", accepted.recv())
        .await
        .expect("accepted");
    let fragment = |b0: u8, n: usize| {
        let mut f = client_frame(b0, &vec![b'x'; n]);
        f[0] = b0;
        f
    };
    let good = [fragment(0x01, 60), fragment(0x00, 60)].concat();
    client
        .write_all(&[good.clone(), fragment(0x80, 31)].concat())
        .await
        .expect("write");
    let mut got = vec![0u8; good.len()];
    within("the fragments under the limit", server.read_exact(&mut got))
        .await
        .expect("read");
    assert_eq!(got, good);
    let (op, payload) = read_frame(&mut server).await;
    assert_eq!((op, &payload[..2]), (0x88, &1001u16.to_be_bytes()[..]));
    let mut expected = vec![0x88, 2 + 15, 0x03, 0xf1];
    expected.extend_from_slice(b"message too big");
    let mut to_client = Vec::new();
    within("the 1009 and EOF", client.read_to_end(&mut to_client))
        .await
        .expect("read");
    assert_eq!(to_client, expected);
    drop(client);
    server.shutdown().await.expect("backend FIN");
    let r = next_record(&mut rx).await;
    assert_eq!(r.end.reason, EndReason::TooBig, "{r:?}");
    assert_eq!(r.end.closed_by, Side::Client);
    assert_eq!(r.end.close_code, Some(1009));
    assert_eq!(r.to_backend.bytes, good.len() as u64);
    gw.wait_idle().await;
}
