//! The route's keepalive policies over in-memory pipes, on paused time:
//! `idle_timeout` closes both sides with 1001 at frame boundaries and is
//! not fed by wsgate's own pings; wsgate's Ping goes to a silent client at a
//! frame boundary and its Pong never reaches the backend; a client that does
//! not answer is cut and the backend gets 1001; `max_connection_age` closes
//! a busy tunnel.

use super::*;
use crate::observe::access::EndReason;
use crate::tunnel::keepalive::{KeepaliveEnd, KeepalivePolicy, PingPolicy};

const MS_100: Duration = Duration::from_millis(100);

fn with(keepalive: KeepalivePolicy) -> Tunnel {
    Setup {
        policy: FramePolicy {
            keepalive,
            ..FramePolicy::default()
        },
        ..Setup::default()
    }
    .start()
}

fn pings(interval: Duration, timeout: Duration) -> Option<PingPolicy> {
    Some(PingPolicy { interval, timeout })
}

/// The next frame at the client, which must be wsgate's Ping: unmasked,
/// 8 bytes of payload. Returns the payload.
async fn ping_at_client(t: &mut Tunnel) -> Vec<u8> {
    let got = next_frame(&mut t.client).await;
    assert_eq!((got.b0, got.masked), (FIN | PING, false), "{got:?}");
    assert_eq!(got.payload.len(), 8);
    got.payload
}

/// The next whole frame `peer` receives (payloads under 126 bytes).
async fn next_frame(peer: &mut DuplexStream) -> Frame {
    let head = read_n(peer, 2, "a frame's header").await;
    let len = usize::from(head[1] & 0x7f);
    assert!(len < 126, "{head:?}");
    let key = if head[1] & 0x80 != 0 { 4 } else { 0 };
    let rest = read_n(peer, key + len, "the rest of the frame").await;
    decode(&[head, rest].concat()).remove(0)
}

/// wsgate's Close 1001 with `reason` is the next frame at each peer (the
/// client's first: the backend's may already be through); both answer it,
/// and nothing else reaches either before EOF.
async fn closed_both_ways(t: &mut Tunnel, reason: &str) {
    next_frame(&mut t.client)
        .await
        .assert_close(false, 1001, reason);
    next_frame(&mut t.backend)
        .await
        .assert_close(true, 1001, reason);
    let (at_client, at_backend) = answer_close(t).await;
    assert!(at_client.is_empty(), "{at_client:?}");
    assert!(at_backend.is_empty(), "{at_backend:?}");
}

/// Ends a tunnel that is still running with a shutdown, which must be
/// what ends it.
async fn shut_down(mut t: Tunnel) {
    assert!(!t.task.is_finished());
    t.shutdown.cancel();
    let out = t.outcome().await;
    assert!(matches!(out.error, Some(TunnelError::Shutdown)), "{out:?}");
}

/// Both peers answer wsgate's Close with their own, then everything each
/// received until EOF.
async fn answer_close(t: &mut Tunnel) -> (Vec<Frame>, Vec<Frame>) {
    send(
        &mut t.client,
        &from_client(FIN | CLOSE, &close_payload(1001)),
    )
    .await;
    send(
        &mut t.backend,
        &from_backend(FIN | CLOSE, &close_payload(1001)),
    )
    .await;
    let at_client = read_all(&mut t.client, "the client's EOF").await;
    let at_backend = read_all(&mut t.backend, "the backend's EOF").await;
    (decode(&at_client), decode(&at_backend))
}

#[tokio::test(start_paused = true)]
async fn an_idle_tunnel_gets_1001_both_ways_and_says_idle_timeout() {
    let mut t = with(KeepalivePolicy {
        idle_timeout: Some(MS_100),
        ..KeepalivePolicy::default()
    });
    let up = from_client(FIN | TEXT, b"hello");
    send(&mut t.client, &up).await;
    assert_eq!(read_n(&mut t.backend, up.len(), "the text").await, up);
    closed_both_ways(&mut t, "idle timeout").await;
    let out = t.outcome().await;
    assert!(
        matches!(out.error, Some(TunnelError::Keepalive(KeepaliveEnd::Idle(d))) if d == MS_100),
        "{:?}",
        out.error
    );
    assert_eq!(out.closed_by, Side::Proxy);
    assert_eq!(out.first_close, Some((Side::Proxy, Some(1001))));
    let end = out.to_end();
    assert_eq!(end.reason, EndReason::IdleTimeout);
    assert_eq!(end.proxy_close, Some(order(1001, "idle timeout")));
}

/// The idle close waits for the end of a frame half-way through.
#[tokio::test(start_paused = true)]
async fn the_idle_close_lands_after_the_frame_in_flight() {
    let mut t = with(KeepalivePolicy {
        idle_timeout: Some(MS_100),
        ..KeepalivePolicy::default()
    });
    let down = from_backend(FIN | BINARY, &payload(300));
    send(&mut t.backend, &down[..50]).await;
    assert_eq!(
        read_n(&mut t.client, 50, "the first part").await,
        &down[..50]
    );
    tokio::time::sleep(MS_100 * 3).await;
    send(&mut t.backend, &down[50..]).await;
    let rest = read_n(&mut t.client, down.len() - 50, "the rest of the frame").await;
    assert_eq!(rest, &down[50..]);
    closed_both_ways(&mut t, "idle timeout").await;
    assert_eq!(t.outcome().await.to_end().reason, EndReason::IdleTimeout);
}

/// wsgate's pings and the pongs answering them are not traffic between
/// the peers: a client that only answers pings is still idle.
#[tokio::test(start_paused = true)]
async fn keepalive_pings_do_not_keep_an_idle_tunnel_open() {
    let mut t = with(KeepalivePolicy {
        idle_timeout: Some(MS_100 * 5),
        ping: pings(MS_100, MS_100 * 10),
        ..KeepalivePolicy::default()
    });
    let mut answered = 0;
    let close = loop {
        let got = next_frame(&mut t.client).await;
        if got.b0 == FIN | PING {
            // Pings every 100ms: an idle close due at 500ms never needs 50.
            assert!(answered < 50, "the pongs kept the tunnel open");
            send(&mut t.client, &from_client(FIN | PONG, &got.payload)).await;
            answered += 1;
            continue;
        }
        break got;
    };
    assert!(answered >= 2, "pings answered: {answered}");
    close.assert_close(false, 1001, "idle timeout");
    // The backend never saw a pong: only wsgate's Close.
    next_frame(&mut t.backend)
        .await
        .assert_close(true, 1001, "idle timeout");
    let (at_client, at_backend) = answer_close(&mut t).await;
    assert!(at_client.is_empty() && at_backend.is_empty());
    assert_eq!(t.outcome().await.to_end().reason, EndReason::IdleTimeout);
}

/// A silent client that answers is pinged again and again and stays; the
/// backend sees none of the pongs, and its own traffic still flows.
#[tokio::test(start_paused = true)]
async fn an_answering_client_is_pinged_and_its_pongs_never_reach_the_backend() {
    let mut t = with(KeepalivePolicy {
        ping: pings(MS_100, MS_100),
        ..KeepalivePolicy::default()
    });
    let mut payloads = Vec::new();
    for _ in 0..4 {
        let p = ping_at_client(&mut t).await;
        // Split as a slow client might send it.
        let pong = from_client(FIN | PONG, &p);
        send(&mut t.client, &pong[..5]).await;
        tokio::task::yield_now().await;
        send(&mut t.client, &pong[5..]).await;
        payloads.push(p);
    }
    payloads.dedup();
    assert_eq!(payloads.len(), 4, "each ping has its own payload");
    let up = from_client(FIN | TEXT, b"after the pings");
    send(&mut t.client, &up).await;
    assert_eq!(read_n(&mut t.backend, up.len(), "the text").await, up);
    let sent = t.stats.to_backend.totals();
    assert_eq!(sent.bytes, up.len() as u64, "no pong counted as passed");
    shut_down(t).await;
}

/// A pong wsgate did not ask for (another payload) passes untouched.
#[tokio::test(start_paused = true)]
async fn a_pong_that_does_not_match_passes_to_the_backend() {
    let mut t = with(KeepalivePolicy {
        ping: pings(MS_100, MS_100 * 10),
        ..KeepalivePolicy::default()
    });
    let p = ping_at_client(&mut t).await;
    let mut other = p.clone();
    other[0] ^= 0xff;
    let theirs = from_client(FIN | PONG, &other);
    let ours = from_client(FIN | PONG, &p);
    send(&mut t.client, &[theirs.clone(), ours].concat()).await;
    assert_eq!(
        read_n(&mut t.backend, theirs.len(), "their pong").await,
        theirs
    );
    let up = from_client(FIN | TEXT, b"next");
    send(&mut t.client, &up).await;
    assert_eq!(read_n(&mut t.backend, up.len(), "the text").await, up);
    shut_down(t).await;
}

/// wsgate's Ping never lands inside a frame: due while the backend's frame
/// is half-way through, it follows that frame's last byte.
#[tokio::test(start_paused = true)]
async fn the_ping_waits_for_the_end_of_the_backends_frame() {
    let mut t = with(KeepalivePolicy {
        ping: pings(MS_100, MS_100 * 10),
        ..KeepalivePolicy::default()
    });
    let down = from_backend(FIN | BINARY, &payload(300));
    send(&mut t.backend, &down[..7]).await;
    assert_eq!(read_n(&mut t.client, 7, "the first part").await, &down[..7]);
    tokio::time::sleep(MS_100 * 3).await;
    send(&mut t.backend, &down[7..]).await;
    let got = read_n(&mut t.client, down.len() - 7, "the rest of the frame").await;
    assert_eq!(got, &down[7..]);
    ping_at_client(&mut t).await;
    shut_down(t).await;
}

/// A client that never answers is dead: the backend gets Close 1001 and
/// EOF, the client only EOF, and the outcome blames the client.
#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_answer_is_cut_and_the_backend_gets_1001() {
    let mut t = with(KeepalivePolicy {
        ping: pings(MS_100, MS_100 * 2),
        ..KeepalivePolicy::default()
    });
    ping_at_client(&mut t).await;
    let at_backend = decode(&read_all(&mut t.backend, "the backend's EOF").await);
    assert_eq!(at_backend.len(), 1, "{at_backend:?}");
    at_backend[0].assert_close(true, 1001, "ping timeout");
    let out = t.outcome().await;
    assert!(
        matches!(
            out.error,
            Some(TunnelError::Keepalive(KeepaliveEnd::PingTimeout(d))) if d == MS_100 * 2
        ),
        "{:?}",
        out.error
    );
    assert_eq!(out.closed_by, Side::Client);
    assert_eq!(out.first_close, Some((Side::Proxy, Some(1001))));
    assert_eq!(out.to_end().reason, EndReason::PingTimeout);
    drop(t.task);
    assert!(read_all(&mut t.client, "the client's EOF").await.is_empty());
}

/// A busy tunnel still ends at its age limit, at a frame boundary, both
/// sides getting 1001; the limit drawn is within its jitter.
#[tokio::test(start_paused = true)]
async fn a_tunnel_past_its_age_gets_1001_both_ways() {
    let age = MS_100 * 5;
    let mut t = with(KeepalivePolicy {
        max_age: Some(age),
        ..KeepalivePolicy::default()
    });
    let up = from_client(FIN | TEXT, b"busy");
    let mut passed = 0;
    let close = loop {
        send(&mut t.client, &up).await;
        let f = next_frame(&mut t.backend).await;
        if f.b0 != FIN | TEXT {
            break f;
        }
        passed += 1;
        // One every 25ms: an age of 500ms never lets 100 pass.
        assert!(passed < 100, "the age limit never came");
        tokio::time::sleep(MS_100 / 4).await;
    };
    assert!(passed >= 10, "{passed} frames passed before the limit");
    close.assert_close(true, 1001, "max connection age");
    next_frame(&mut t.client)
        .await
        .assert_close(false, 1001, "max connection age");
    let (at_client, at_backend) = answer_close(&mut t).await;
    assert!(at_client.is_empty() && at_backend.is_empty());
    let out = t.outcome().await;
    match out.error {
        Some(TunnelError::Keepalive(KeepaliveEnd::MaxAge(limit))) => {
            assert!(limit >= age.mul_f64(0.9) && limit <= age, "{limit:?}");
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(out.to_end().reason, EndReason::MaxAge);
}

/// A route with no keepalive policy: a silent tunnel gets no ping and is
/// never closed for it.
#[tokio::test(start_paused = true)]
async fn without_a_policy_a_silent_tunnel_is_left_alone() {
    let mut t = start();
    tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
    let up = from_client(FIN | TEXT, b"still here");
    send(&mut t.client, &up).await;
    assert_eq!(read_n(&mut t.backend, up.len(), "the text").await, up);
    let down = from_backend(FIN | TEXT, b"yes");
    send(&mut t.backend, &down).await;
    assert_eq!(read_n(&mut t.client, down.len(), "the reply").await, down);
    assert!(!t.task.is_finished());
}

/// A client may answer only the most recent of several pings (RFC 6455
/// 5.5.3; tungstenite keeps one pending Pong, the last): when the
/// backend's Ping follows wsgate's and the client answers only the
/// backend's, the client is alive. Its Pong goes to the backend, and it
/// is not cut at `ping_timeout`.
#[tokio::test(start_paused = true)]
async fn a_client_answering_only_the_backends_later_ping_is_not_cut() {
    let mut t = with(KeepalivePolicy {
        ping: pings(MS_100, MS_100 * 2),
        ..KeepalivePolicy::default()
    });
    ping_at_client(&mut t).await;
    let theirs = from_backend(FIN | PING, b"backend");
    send(&mut t.backend, &theirs).await;
    assert_eq!(
        read_n(&mut t.client, theirs.len(), "its ping").await,
        theirs
    );
    let answer = from_client(FIN | PONG, b"backend");
    send(&mut t.client, &answer).await;
    assert_eq!(
        read_n(&mut t.backend, answer.len(), "the answer").await,
        answer
    );
    // Well past ping_timeout: the next thing at the client is wsgate's
    // next ping, not the end of its connection.
    ping_at_client(&mut t).await;
    shut_down(t).await;
}

/// A drain that comes while wsgate's Close for a ping timeout is half-way
/// out to a slow backend adds no second Close: the backend gets the rest
/// of the client's frame, one Close ("ping timeout"), then EOF.
#[tokio::test(start_paused = true)]
async fn a_drain_during_the_ping_timeout_close_adds_no_second_close() {
    let mut t = Setup {
        backend_pipe: 64,
        policy: FramePolicy {
            keepalive: KeepalivePolicy {
                ping: pings(MS_100, MS_100 * 2),
                ..KeepalivePolicy::default()
            },
            ..FramePolicy::default()
        },
        ..Setup::default()
    }
    .start();
    // 64 bytes: they fill the pipe.
    let up = from_client(FIN | BINARY, &payload(58));
    send(&mut t.client, &up).await;
    ping_at_client(&mut t).await;
    // Past the ping timeout, the Close waits for room in the pipe.
    tokio::time::sleep(MS_100 * 5).await;
    let mut got = read_n(&mut t.backend, 4, "room for 4 bytes").await;
    // The first 4 bytes of the Close go.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    t.drain.cancel();
    got.extend(read_all(&mut t.backend, "the backend's EOF").await);
    assert_eq!(got[..up.len()], up[..]);
    let closes = decode(&got[up.len()..]);
    assert_eq!(closes.len(), 1, "{closes:?}");
    closes[0].assert_close(true, 1001, "ping timeout");
    let out = t.outcome().await;
    assert!(
        matches!(
            out.error,
            Some(TunnelError::Keepalive(KeepaliveEnd::PingTimeout(_)))
        ),
        "{:?}",
        out.error
    );
}

/// A backend that stops reading stops wsgate reading the client (back-
/// pressure), so the client's answer to a ping could not be heard: that
/// is no sign of a dead client. It is neither pinged nor cut for a ping
/// timeout; the backend's stall ends the tunnel, the client getting
/// Close 1001.
#[tokio::test(start_paused = true)]
async fn a_client_unheard_because_the_backend_stopped_reading_is_not_cut_as_dead() {
    let stall = MS_100 * 30;
    let mut t = Setup {
        backend_pipe: 64,
        policy: FramePolicy {
            keepalive: KeepalivePolicy {
                ping: pings(MS_100, MS_100 * 2),
                ..KeepalivePolicy::default()
            },
            write_stall: Some(stall),
            ..FramePolicy::default()
        },
        ..Setup::default()
    }
    .start();
    send(&mut t.client, &from_client(FIN | BINARY, &payload(1000))).await;
    // No ping first: its answer could not be heard.
    next_frame(&mut t.client)
        .await
        .assert_close(false, 1001, "peer not reading");
    t.client.shutdown().await.expect("EOF");
    let out = t.outcome().await;
    assert!(
        matches!(out.error, Some(TunnelError::WriteStall { side: Side::Backend, after }) if after == stall),
        "{:?}",
        out.error
    );
}

/// Bytes waiting for a receiver that takes none are not idleness: a
/// tunnel whose backend stopped reading is ended by its stall (the client
/// getting 1001 "peer not reading", the record blaming the backend), not
/// by `idle_timeout` with a Close the stalled backend could never take.
#[tokio::test(start_paused = true)]
async fn a_stalled_tunnel_is_not_idle() {
    let stall = MS_100 * 30;
    let mut t = Setup {
        backend_pipe: 64,
        policy: FramePolicy {
            keepalive: KeepalivePolicy {
                idle_timeout: Some(MS_100 * 2),
                ..KeepalivePolicy::default()
            },
            write_stall: Some(stall),
            ..FramePolicy::default()
        },
        timeouts: TunnelTimeouts {
            half_close: stall * 100,
            close: stall * 3,
        },
        ..Setup::default()
    }
    .start();
    send(&mut t.client, &from_client(FIN | BINARY, &payload(1000))).await;
    next_frame(&mut t.client)
        .await
        .assert_close(false, 1001, "peer not reading");
    t.client.shutdown().await.expect("EOF");
    let out = t.outcome().await;
    assert!(
        matches!(out.error, Some(TunnelError::WriteStall { side: Side::Backend, after }) if after == stall),
        "{:?}",
        out.error
    );
}
