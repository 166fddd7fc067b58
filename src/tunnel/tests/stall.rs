//! A side that stops reading (`write_stall_timeout`): back-pressure while
//! it is within the timeout, and past it the other side gets Close 1001
//! and the tunnel ends. Paused time: nothing here touches a socket.

use super::*;
use crate::tunnel::keepalive::{KeepalivePolicy, PingPolicy};

const STALL: Duration = Duration::from_millis(100);

fn stalling(backend_pipe: usize) -> Tunnel {
    Setup {
        backend_pipe,
        policy: FramePolicy {
            write_stall: Some(STALL),
            ..FramePolicy::default()
        },
        ..Setup::default()
    }
    .start()
}

/// The backend stops reading part-way through a client's frame: past the
/// timeout the client gets Close 1001 and EOF, the backend nothing more
/// than the bytes it had room for (no Close: it could not take one), and
/// the record says `write_stall`, closed by the backend.
#[tokio::test(start_paused = true)]
async fn a_backend_that_stops_reading_ends_the_tunnel_and_the_client_gets_1001() {
    let mut t = stalling(1024);
    let big = from_client(FIN | BINARY, &payload(60_000));
    send(&mut t.client, &big).await;
    let back = decode(&read_all(&mut t.client, "the 1001 and EOF").await);
    assert_eq!(back.len(), 1, "{back:?}");
    back[0].assert_close(false, 1001, "peer not reading");
    t.client.shutdown().await.expect("EOF");
    let out = t.outcome().await;
    assert!(
        matches!(out.error, Some(TunnelError::WriteStall { side: Side::Backend, after }) if after == STALL),
        "{:?}",
        out.error
    );
    assert_eq!(out.closed_by, Side::Backend);
    assert_eq!(out.to_end().reason.as_str(), "write_stall");
    assert_eq!(out.first_close, Some((Side::Proxy, Some(1001))));
    let got = read_all(&mut t.backend, "what the backend had room for").await;
    assert!(!got.is_empty() && got.len() < big.len(), "{}", got.len());
    assert_eq!(
        got[..],
        big[..got.len()],
        "a prefix of the frame, nothing else"
    );
}

/// The client stops reading: the backend gets Close 1001 (masked), and
/// what it still sends is read and dropped, so its own writes finish.
#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_ends_the_tunnel_and_the_backend_gets_1001() {
    let mut t = stalling(64 * 1024);
    let (mut backend_rd, mut backend_wr) = tokio::io::split(t.backend);
    let pushing = tokio::spawn(async move {
        let frame = from_backend(FIN | BINARY, &payload(60_000));
        for _ in 0..4 {
            backend_wr
                .write_all(&frame)
                .await
                .expect("the tunnel reads on");
        }
        backend_wr.shutdown().await.expect("EOF");
    });
    let mut got = Vec::new();
    within("the Close and EOF", backend_rd.read_to_end(&mut got))
        .await
        .expect("pipe");
    let back = decode(&got);
    assert_eq!(back.len(), 1, "{back:?}");
    back[0].assert_close(true, 1001, "peer not reading");
    within("the backend's writes", pushing)
        .await
        .expect("no panic");
    let out = within("the end", &mut t.task).await.expect("no panic");
    assert!(
        matches!(
            out.error,
            Some(TunnelError::WriteStall {
                side: Side::Client,
                ..
            })
        ),
        "{:?}",
        out.error
    );
    assert_eq!(out.closed_by, Side::Client);
}

/// A reader that is slow but keeps taking bytes is never a stall, however
/// long the whole takes: each write's progress restarts the clock.
#[tokio::test(start_paused = true)]
async fn a_slow_reader_that_keeps_reading_is_not_a_stall() {
    let mut t = stalling(1024);
    let big = from_client(FIN | BINARY, &payload(30_000));
    send(&mut t.client, &big).await;
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while got.len() < big.len() {
        tokio::time::sleep(STALL * 3 / 5).await;
        let n = t.backend.read(&mut chunk).await.expect("pipe");
        assert!(n > 0, "EOF after {} bytes", got.len());
        got.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(got, big);
    assert!(!t.task.is_finished());
    let reply = from_backend(FIN | TEXT, b"done");
    send(&mut t.backend, &reply).await;
    assert_eq!(read_n(&mut t.client, reply.len(), "the reply").await, reply);
}

/// Four 60 kB frames the backend pushes at a client that has stopped
/// reading; the task gives the backend's writing half back once the
/// tunnel has taken all four (read and dropped past the stall).
fn push_at_stopped_client(
    backend: DuplexStream,
) -> (
    tokio::io::ReadHalf<DuplexStream>,
    JoinHandle<tokio::io::WriteHalf<DuplexStream>>,
    Vec<u8>,
) {
    let frame = from_backend(FIN | BINARY, &payload(60_000));
    let all = frame.repeat(4);
    let (backend_rd, mut backend_wr) = tokio::io::split(backend);
    let pushing = tokio::spawn(async move {
        for _ in 0..4 {
            backend_wr
                .write_all(&frame)
                .await
                .expect("the tunnel reads on");
        }
        backend_wr
    });
    (backend_rd, pushing, all)
}

/// The next whole Close at `rd`, decoded.
async fn close_at(rd: &mut tokio::io::ReadHalf<DuplexStream>) -> Frame {
    let mut head = [0u8; 2];
    within("a Close", rd.read_exact(&mut head))
        .await
        .expect("pipe");
    let mut rest = vec![0u8; usize::from(head[1] & 0x7f) + 4 * usize::from(head[1] >> 7)];
    within("its payload", rd.read_exact(&mut rest))
        .await
        .expect("pipe");
    decode(&[&head[..], &rest].concat()).remove(0)
}

/// A ping of wsgate's own, due while the backend's frame toward a client
/// that stopped reading was half-way out, is never written once that
/// client is given up on: the client gets a prefix of the backend's bytes
/// and nothing after it, and the backend's later frames are still read
/// and dropped (its writes finish) rather than held behind the ping.
#[tokio::test(start_paused = true)]
async fn a_queued_ping_is_not_written_to_a_client_given_up_on() {
    let mut t = Setup {
        policy: FramePolicy {
            write_stall: Some(STALL),
            keepalive: KeepalivePolicy {
                ping: Some(PingPolicy {
                    interval: STALL / 2,
                    timeout: STALL * 100,
                }),
                ..KeepalivePolicy::default()
            },
            ..FramePolicy::default()
        },
        ..Setup::default()
    }
    .start();
    let backend = std::mem::replace(&mut t.backend, tokio::io::duplex(1).0);
    let (mut backend_rd, pushing, sent) = push_at_stopped_client(backend);
    close_at(&mut backend_rd)
        .await
        .assert_close(true, 1001, "peer not reading");
    let mut backend_wr = within("the backend's writes", pushing)
        .await
        .expect("no panic");
    backend_wr.shutdown().await.expect("EOF");
    let out = t.outcome().await;
    assert!(
        matches!(
            out.error,
            Some(TunnelError::WriteStall {
                side: Side::Client,
                ..
            })
        ),
        "{:?}",
        out.error
    );
    let got = read_all(&mut t.client, "what the client had room for").await;
    assert!(!got.is_empty() && got.len() < sent.len(), "{}", got.len());
    assert_eq!(got[..], sent[..got.len()], "a prefix, nothing after it");
}

/// While a stall is closing the tunnel, a keepalive deadline (here the
/// idle timeout: nothing is relayed once the stalled side is given up on)
/// or an operator's close starts no second close: nothing is written to
/// the side that stopped reading, and the record keeps `write_stall`.
#[tokio::test(start_paused = true)]
async fn a_close_asked_for_during_a_stall_writes_nothing_to_the_stalled_side() {
    for ask in [None, Some(Ask::Order), Some(Ask::Drain)] {
        let t = Setup {
            policy: FramePolicy {
                write_stall: Some(STALL),
                keepalive: KeepalivePolicy {
                    idle_timeout: ask.is_none().then_some(STALL * 2),
                    ..KeepalivePolicy::default()
                },
                ..FramePolicy::default()
            },
            // The backend never answers: the stall's close ends on this.
            timeouts: TunnelTimeouts {
                half_close: STALL * 100,
                close: STALL * 10,
            },
            ..Setup::default()
        }
        .start();
        let mut t = t;
        let backend = std::mem::replace(&mut t.backend, tokio::io::duplex(1).0);
        let (mut backend_rd, pushing, sent) = push_at_stopped_client(backend);
        close_at(&mut backend_rd)
            .await
            .assert_close(true, 1001, "peer not reading");
        let _backend_wr = within("the backend's writes", pushing)
            .await
            .expect("no panic");
        if let Some(ask) = ask {
            ask.apply(&t);
        } else {
            // Past the idle timeout, with nothing relayed since the stall.
            tokio::time::sleep(STALL * 4).await;
        }
        // The client reads again, and the backend stays silent.
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        while got.len() < 64 * 1024 {
            let n = within("what the client had room for", t.client.read(&mut chunk))
                .await
                .expect("pipe");
            assert!(n > 0, "{ask:?}: EOF after {}", got.len());
            got.extend_from_slice(&chunk[..n]);
        }
        let out = t.outcome().await;
        assert!(
            matches!(
                out.error,
                Some(TunnelError::WriteStall {
                    side: Side::Client,
                    ..
                })
            ),
            "{ask:?}: {:?}",
            out.error
        );
        got.extend(read_all(&mut t.client, "the client's EOF").await);
        assert_eq!(
            got[..],
            sent[..got.len()],
            "{ask:?}: a prefix, nothing after it"
        );
    }
}
