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
    let stats = stats(&CancellationToken::new());
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
