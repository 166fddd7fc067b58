//! A route's keepalive policies over real sockets: `idle_timeout` closes a
//! silent tunnel with 1001 both ways; wsgate pings a silent client, its
//! Pong never reaches the backend, and a client that does not answer is
//! cut while the backend gets 1001; `max_connection_age` closes a busy
//! tunnel. Each end is named in the access record and counted in
//! `wsgate_tunnels_closed_total`.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use wsgate::observe::access::{EndReason, Side};

/// `simple_config` with `keys` on its route.
fn config_with(backend: std::net::SocketAddr, keys: &str) -> String {
    simple_config(&[backend]).replace("upstream = \"u\"\n", &format!("upstream = \"u\"\n{keys}"))
}

/// The value of `wsgate_tunnels_closed_total` for `closed_by` and `reason`
/// (0 when there is no such series).
fn closed_total(gw: &TestGateway, closed_by: &str, reason: &str) -> u64 {
    let text = gw.gateway.shared().metrics.encode().expect("metrics");
    let labels = [
        format!("closed_by=\"{closed_by}\""),
        format!("reason=\"{reason}\""),
    ];
    text.lines()
        .filter(|l| l.starts_with("wsgate_tunnels_closed_total{"))
        .filter(|l| labels.iter().all(|want| l.contains(want.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_with_1001_both_ways() {
    let mut backend = WsBackend::start().await;
    let gw = TestGateway::start(&config_with(backend.addr, "idle_timeout = \"100ms\"\n")).await;
    let mut rx = gw.access_log();
    let mut client = ws_connect(gw.addr("public"), "/ws").await;
    let mut server = backend.next().await.ws;
    client.send(Message::text("hello")).await.expect("send");
    match within("the text at the backend", server.next()).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "hello"),
        other => panic!("{other:?}"),
    }
    let (code, reason) = expect_close(&mut client, "the client's Close").await;
    assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
    let (code, reason) = expect_close(&mut server, "the backend's Close").await;
    assert_eq!((code, reason.as_str()), (1001, "idle timeout"));
    tokio::join!(finish(client), finish(server));
    let r = next_record(&mut rx).await;
    assert_eq!(r.end.reason, EndReason::IdleTimeout, "{r:?}");
    assert_eq!(r.end.closed_by, Side::Proxy);
    assert_eq!(r.end.close_code, Some(1001));
    assert_eq!(r.end.close_frame_from, Some(Side::Proxy));
    assert_eq!(r.end.proxy_close, Some(order(1001, "idle timeout")));
    assert_eq!(closed_total(&gw, "proxy", "idle_timeout"), 1);
    gw.wait_idle().await;
}

/// A client that sends nothing but answers pings (tungstenite does, as it
/// reads) gets ping after ping and stays; the backend never sees a Pong;
/// a message sent afterwards arrives as usual.
#[tokio::test]
async fn a_silent_client_that_answers_is_pinged_and_stays() {
    let mut backend = WsBackend::start().await;
    let keys = "ping_interval = \"50ms\"\nping_timeout = \"5s\"\n";
    let gw = TestGateway::start(&config_with(backend.addr, keys)).await;
    let mut client = ws_connect(gw.addr("public"), "/ws").await;
    let mut server = backend.next().await.ws;
    let mut pings = Vec::new();
    while pings.len() < 4 {
        match within("wsgate's ping", client.next()).await {
            Some(Ok(Message::Ping(p))) => pings.push(p.to_vec()),
            other => panic!("expected a ping, got {other:?}"),
        }
    }
    assert!(pings.iter().all(|p| p.len() == 8), "{pings:?}");
    client
        .send(Message::text("still here"))
        .await
        .expect("send");
    // The first thing the backend reads: no Pong before the text.
    match within("the text at the backend", server.next()).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "still here"),
        other => panic!("the backend got {other:?} first"),
    }
    server.send(Message::text("hi")).await.expect("send");
    loop {
        match within("the reply", client.next()).await {
            Some(Ok(Message::Ping(_))) => continue,
            Some(Ok(Message::Text(t))) => break assert_eq!(t.as_str(), "hi"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(gw.gateway.registry().live_count(), 1);
    assert_eq!(closed_total(&gw, "client", "ping_timeout"), 0);
}

/// A client whose TCP stays up but that never answers (a raw socket that
/// reads nothing) is dead: after its ping, the backend gets Close 1001
/// "ping timeout", the client's connection is cut, and the record and the
/// metric say `ping_timeout`, blaming the client. A live client on the
/// same route, answering, loses nothing meanwhile.
#[tokio::test]
async fn a_client_that_never_answers_is_cut_and_the_backend_gets_1001() {
    let echo = echo_backend().await;
    let mut backend = WsBackend::start().await;
    let toml = config_with(backend.addr, "ping_interval = \"50ms\"\nping_timeout = \"1s\"\n")
        .replace(
            "[upstreams.u]",
            &format!(
                "[[routes]]\npath_prefix = \"/echo\"\nupstream = \"e\"\nping_interval = \"50ms\"\nping_timeout = \"1s\"\n\n[upstreams.e]\nservers = [\"{echo}\"]\n\n[upstreams.u]"
            ),
        );
    let gw = TestGateway::start(&toml).await;
    let mut rx = gw.access_log();
    // Echoes messages, reading (and so answering pings) all along, until stopped.
    let mut steady = ws_connect(gw.addr("public"), "/echo").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let steady_task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut rounds = 0;
            while !stop.is_cancelled() {
                echo_once_past_pings(&mut steady, &format!("steady {rounds}")).await;
                rounds += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            (steady, rounds)
        }
    });
    let mut dead = raw_client(gw.addr("public")).await;
    let mut server = backend.next().await.ws;
    let (op, payload) = read_frame(&mut dead).await;
    assert_eq!((op, payload.len()), (0x89, 8), "wsgate's ping");
    let (code, reason) = expect_close(&mut server, "the backend's Close").await;
    assert_eq!((code, reason.as_str()), (1001, "ping timeout"));
    wait_closed(&mut dead).await;
    let r = next_record(&mut rx).await;
    assert_eq!(r.end.reason, EndReason::PingTimeout, "{r:?}");
    assert_eq!(r.end.closed_by, Side::Client);
    assert_eq!(r.end.close_code, Some(1001));
    assert_eq!(r.end.close_frame_from, Some(Side::Proxy));
    assert_eq!(r.to_client.bytes, 0, "the ping is wsgate's, not relayed");
    assert_eq!(closed_total(&gw, "client", "ping_timeout"), 1);
    stop.cancel();
    let (mut steady, rounds) = within("the steady client", steady_task)
        .await
        .expect("no lost echo");
    assert!(rounds > 0);
    echo_once_past_pings(&mut steady, "still here").await;
    assert_eq!(gw.gateway.registry().live_count(), 1);
    assert_eq!(closed_total(&gw, "client", "ping_timeout"), 1);
}

/// Sends `text` to an echo backend and reads its echo, skipping wsgate's pings.
async fn echo_once_past_pings(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    text: &str,
) {
    ws.send(Message::text(text)).await.expect("send");
    loop {
        match within("an echo", ws.next()).await {
            Some(Ok(Message::Ping(_))) => continue,
            Some(Ok(Message::Text(t))) => break assert_eq!(t.as_str(), text),
            other => panic!("expected the echo of {text:?}, got {other:?}"),
        }
    }
}

/// A busy tunnel is closed when it reaches its age, 1001 to both sides,
/// the record saying `max_age`.
#[tokio::test]
async fn a_tunnel_past_max_connection_age_is_closed_with_1001() {
    let echo = echo_backend().await;
    let gw = TestGateway::start(&config_with(echo, "max_connection_age = \"200ms\"\n")).await;
    let mut rx = gw.access_log();
    let mut client = ws_connect(gw.addr("public"), "/ws").await;
    let close = within("the age limit", async {
        loop {
            if client.send(Message::text("busy")).await.is_err() {
                panic!("the tunnel closed without a Close frame");
            }
            match within("an echo or the Close", client.next()).await {
                Some(Ok(Message::Text(t))) => {
                    assert_eq!(t.as_str(), "busy");
                }
                Some(Ok(Message::Close(Some(f)))) => {
                    break (u16::from(f.code), f.reason.to_string())
                }
                other => panic!("{other:?}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!((close.0, close.1.as_str()), (1001, "max connection age"));
    finish(client).await;
    let r = next_record(&mut rx).await;
    assert_eq!(r.end.reason, EndReason::MaxAge, "{r:?}");
    assert_eq!(r.end.closed_by, Side::Proxy);
    assert_eq!(r.end.proxy_close, Some(order(1001, "max connection age")));
    assert_eq!(closed_total(&gw, "proxy", "max_age"), 1);
    gw.wait_idle().await;
}
