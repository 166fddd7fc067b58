//! A side that stops reading (`write_stall_timeout`): back-pressure while
//! it is within the timeout, and past it the other side gets Close 1001
//! and the tunnel ends. Paused time: nothing here touches a socket.

use super::*;

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
