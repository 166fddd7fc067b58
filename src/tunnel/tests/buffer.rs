//! One direction's copy buffer: held only while data moves.

use super::*;

/// Polls `half` once, as the tunnel does on each wake-up.
async fn poll_once(half: &mut Half, from: &mut Mem, to: &mut Mem, stats: &ConnStats) -> bool {
    poll_fn(|cx| {
        Poll::Ready(
            half.poll(cx, from, to, &stats.to_backend, stats)
                .is_pending(),
        )
    })
    .await
}

#[tokio::test]
async fn a_direction_holds_a_buffer_only_while_data_moves() {
    let (mut client, from) = tokio::io::duplex(64 * 1024);
    // A pipe shorter than a frame, so writing stalls until the backend reads.
    let (to, mut backend) = tokio::io::duplex(16);
    let (mut from, mut to) = (Mem::new(from), Mem::new(to));
    let stats = stats();
    let mut half = Half::new(Sender::Client);
    assert!(!half.holds_buffer(), "a new direction holds nothing");
    assert!(poll_once(&mut half, &mut from, &mut to, &stats).await);
    assert!(!half.holds_buffer(), "nothing to read, nothing held");

    for round in 0..2 {
        let f = from_client(FIN | BINARY, &payload(100));
        send(&mut client, &f).await;
        assert!(poll_once(&mut half, &mut from, &mut to, &stats).await);
        assert!(
            half.holds_buffer(),
            "round {round}: stalled with data still to write"
        );
        let mut got = Vec::new();
        while got.len() < f.len() {
            let mut piece = [0u8; 16];
            let n = within("a piece", backend.read(&mut piece))
                .await
                .expect("pipes never fail a read");
            got.extend_from_slice(&piece[..n]);
            assert!(poll_once(&mut half, &mut from, &mut to, &stats).await);
        }
        assert_eq!(got, f, "round {round}");
        assert!(poll_once(&mut half, &mut from, &mut to, &stats).await);
        assert!(
            !half.holds_buffer(),
            "round {round}: all written, reader pending: the buffer goes back"
        );
    }
}

/// Copy buffers are reused across tunnels on a thread without being
/// cleared: what one direction forwards must be only what it read itself.
#[tokio::test]
async fn a_reused_buffer_carries_nothing_of_the_tunnel_that_had_it_before() {
    let stats = stats();
    // The first direction fills a whole buffer with one byte value.
    let (mut client, from) = tokio::io::duplex(64 * 1024);
    let (to, mut backend) = tokio::io::duplex(64 * 1024);
    let (mut from, mut to) = (Mem::new(from), Mem::new(to));
    let mut first = Half::new(Sender::Client);
    let big = from_client(FIN | BINARY, &vec![0xAA; 16_000]);
    send(&mut client, &big).await;
    let mut got = Vec::new();
    while got.len() < big.len() {
        assert!(poll_once(&mut first, &mut from, &mut to, &stats).await);
        let mut piece = vec![0u8; 64 * 1024];
        let n = within("the big frame", backend.read(&mut piece))
            .await
            .expect("pipes never fail a read");
        got.extend_from_slice(&piece[..n]);
    }
    assert!(
        got == big,
        "the big frame came out changed ({} bytes)",
        got.len()
    );
    assert!(poll_once(&mut first, &mut from, &mut to, &stats).await);
    assert!(
        !first.holds_buffer(),
        "drained: the buffer is back in the pool"
    );
    drop(first);

    // The second, on the same thread, takes that buffer for a short frame.
    let (mut client, from) = tokio::io::duplex(64 * 1024);
    let (to, mut backend) = tokio::io::duplex(64 * 1024);
    let (mut from, mut to) = (Mem::new(from), Mem::new(to));
    let mut second = Half::new(Sender::Client);
    let small = from_client(FIN | TEXT, b"hi");
    send(&mut client, &small).await;
    drop(client);
    // The frame, then the end of the stream: the direction runs to its end.
    within("the second direction to end", async {
        while poll_once(&mut second, &mut from, &mut to, &stats).await {
            tokio::task::yield_now().await;
        }
    })
    .await;
    drop(to);
    let mut rest = Vec::new();
    within("the backend's bytes", backend.read_to_end(&mut rest))
        .await
        .expect("pipes never fail a read");
    assert_eq!(rest, small, "exactly the second sender's bytes");
}
