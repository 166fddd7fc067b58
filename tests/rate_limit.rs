//! A route's `messages_per_second` and `burst`, over real sockets: a client
//! that begins messages faster than allowed gets Close 1008, its backend
//! Close 1001, the access record and `wsgate_tunnels_closed_total` say
//! `rate_limited`; a steady client on the same route, within its rate,
//! loses nothing.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsgate::observe::access::{EndReason, Side};

/// Tokens per second and bucket size of the route under test.
const RATE: u32 = 40;
const BURST: usize = 10;

/// A masked text frame saying `n`, as a client sends it.
fn numbered(n: usize) -> Vec<u8> {
    masked_text(format!("message {n:03}").as_bytes())
}

async fn backend_socket(accepted: &mut tokio::sync::mpsc::Receiver<TcpStream>) -> TcpStream {
    within("the backend's socket", accepted.recv())
        .await
        .expect("accepted")
}

#[tokio::test]
async fn a_client_over_its_rate_gets_1008_and_a_steady_one_beside_it_loses_nothing() {
    let (addr, mut accepted) = raw_ws_backend(b"").await;
    let toml = format!(
        "{}\n[admin]\nbind = \"127.0.0.1:0\"\n",
        simple_config(&[addr]).replace(
            "upstream = \"u\"\n",
            &format!("upstream = \"u\"\nmessages_per_second = {RATE}\nburst = {BURST}\n"),
        )
    );
    let gw = TestGateway::start(&toml).await;
    let mut records = gw.access_log();
    let mut fast = raw_client(gw.addr("public")).await;
    let mut fast_server = backend_socket(&mut accepted).await;
    let mut steady = raw_client(gw.addr("public")).await;
    let mut steady_server = backend_socket(&mut accepted).await;

    // The steady client: one message per 1/20 s, half the rate. Whatever
    // the delays on the way, message i cannot arrive before i/20 s, when
    // the bucket has had BURST + 2i tokens: it is never refused.
    let steady_sender = tokio::spawn(async move {
        for i in 0..20 {
            steady.write_all(&numbered(i)).await.expect("steady write");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        steady
    });

    // Three times the burst in one write: the bucket's refill while they
    // arrive is a token or two at most.
    let all: Vec<u8> = (0..3 * BURST).flat_map(numbered).collect();
    fast.write_all(&all).await.expect("fast write");
    let mut passed = 0;
    let close = loop {
        let (b0, payload) = read_frame(&mut fast_server).await;
        if b0 != 0x81 {
            break (b0, payload);
        }
        assert_eq!(
            payload,
            format!("message {passed:03}").as_bytes(),
            "in order, whole"
        );
        passed += 1;
    };
    assert!((BURST..3 * BURST).contains(&passed), "{passed} passed");
    assert_eq!(close.0, 0x88, "a Close after the last message that passed");
    assert_eq!(close.1[..2], 1001u16.to_be_bytes());
    let mut to_client = Vec::new();
    within("the 1008 and EOF", fast.read_to_end(&mut to_client))
        .await
        .expect("read");
    let mut expected = vec![0x88, 2 + 21, 0x03, 0xf0];
    expected.extend_from_slice(b"message rate exceeded");
    assert_eq!(to_client, expected, "exactly one Close 1008, then EOF");
    drop(fast);
    fast_server.shutdown().await.expect("backend FIN");
    let r = next_record(&mut records).await;
    assert_eq!(r.end.reason, EndReason::RateLimited, "{r:?}");
    assert_eq!(r.end.closed_by, Side::Client);
    assert_eq!(r.end.close_code, Some(1008));
    assert_eq!(r.end.close_frame_from, Some(Side::Proxy));
    assert_eq!(r.to_backend.messages, passed as u64);

    let mut steady = within("the steady client's sends", steady_sender)
        .await
        .expect("no panic");
    for i in 0..20 {
        assert_eq!(
            read_frame(&mut steady_server).await,
            (0x81, format!("message {i:03}").into_bytes())
        );
    }
    let reply = [0x81, 2, b'o', b'k'];
    steady_server.write_all(&reply).await.expect("reply");
    let mut got = [0u8; 4];
    within("the reply", steady.read_exact(&mut got))
        .await
        .expect("read");
    assert_eq!(got, reply);
    assert_eq!(
        gw.gateway.registry().live_count(),
        1,
        "the steady tunnel lives on"
    );

    let admin = gw.admin.expect("[admin]");
    let (status, metrics) = http_text(admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    let closed: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("wsgate_tunnels_closed_total{"))
        .collect();
    assert!(
        closed.len() == 1
            && closed[0].contains("reason=\"rate_limited\"")
            && closed[0].contains("closed_by=\"client\"")
            && closed[0].ends_with(" 1"),
        "{closed:?}"
    );
    drop(steady);
    drop(steady_server);
    gw.wait_idle().await;
}
