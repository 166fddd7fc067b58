//! Closing on wsgate's initiative: a Close asked through the close control
//! (drain or order) lands at the next frame boundary each way, masked
//! toward the backend, and what follows is discarded; deadlines and the
//! hard shutdown.

use super::*;

#[tokio::test]
async fn a_close_asked_mid_frame_lands_after_that_frames_last_byte_each_way() {
    // Each direction has a 200-byte frame on its way, cut after `split`
    // bytes when the close is asked: 0 is a boundary; for the client's frame
    // (2 + 2 + 4 header bytes) 1 is in the first header bytes, 3 in the
    // extended length, 6 in the mask key, 100 and 203 in the payload; for
    // the backend's (2 + 2) 6 is already in the payload, 203 is its last byte.
    let to_backend = from_client(FIN | BINARY, &payload(200));
    let to_client = from_backend(FIN | BINARY, &payload(200));
    let late_up = from_client(FIN | TEXT, b"too late");
    let late_down = from_backend(FIN | TEXT, b"too late");
    for (split, ask) in [
        (0, Ask::Drain),
        (1, Ask::Order),
        (3, Ask::Drain),
        (6, Ask::Order),
        (100, Ask::Drain),
        (203, Ask::Order),
    ] {
        let what = format!("split at {split} by {ask:?}");
        let mut t = start();
        send(&mut t.client, &to_backend[..split]).await;
        send(&mut t.backend, &to_client[..split]).await;
        let got = read_n(&mut t.backend, split, "the first part at the backend").await;
        assert_eq!(got, &to_backend[..split], "{what}");
        let got = read_n(&mut t.client, split, "the first part at the client").await;
        assert_eq!(got, &to_client[..split], "{what}");

        let (code, reason) = ask.apply(&t);
        // Each peer finishes its frame, sends one more, then answers the
        // Close: only the rest of the frame may pass.
        send(
            &mut t.client,
            &[&to_backend[split..], &late_up[..]].concat(),
        )
        .await;
        send(
            &mut t.backend,
            &[&to_client[split..], &late_down[..]].concat(),
        )
        .await;
        send(
            &mut t.client,
            &from_client(FIN | CLOSE, &close_payload(code)),
        )
        .await;
        send(
            &mut t.backend,
            &from_backend(FIN | CLOSE, &close_payload(code)),
        )
        .await;

        let at_backend = read_all(&mut t.backend, "the backend's EOF").await;
        let at_client = read_all(&mut t.client, "the client's EOF").await;
        // At a boundary the Close goes first, and the whole frame is discarded.
        let rest = if split > 0 {
            to_backend.len() - split
        } else {
            0
        };
        assert_eq!(
            at_backend[..rest],
            to_backend[split..split + rest],
            "{what}"
        );
        let after = decode(&at_backend[rest..]);
        assert_eq!(after.len(), 1, "{what}: {after:?}");
        after[0].assert_close(true, code, reason);
        let rest = if split > 0 {
            to_client.len() - split
        } else {
            0
        };
        assert_eq!(at_client[..rest], to_client[split..split + rest], "{what}");
        let after = decode(&at_client[rest..]);
        assert_eq!(after.len(), 1, "{what}: {after:?}");
        after[0].assert_close(false, code, reason);

        let out = t.outcome().await;
        assert!(out.error.is_none(), "{what}: {:?}", out.error);
        assert_eq!(out.closed_by, Side::Proxy, "{what}");
        assert_eq!(out.first_close, Some((Side::Proxy, Some(code))), "{what}");
        assert_eq!(out.proxy_close.map(|o| o.code), Some(code), "{what}");
        // What was cut off at a boundary and discarded counts nowhere.
        let passed = u64::from(split > 0);
        assert_eq!(
            t.stats.to_backend.totals(),
            totals(if split > 0 { to_backend.len() } else { 0 }, passed, passed),
            "{what}"
        );
        assert_eq!(
            t.stats.to_client.totals(),
            totals(if split > 0 { to_client.len() } else { 0 }, passed, passed),
            "{what}"
        );
    }
}

#[tokio::test]
async fn a_senders_close_discarded_after_wsgates_is_not_the_first_to_pass() {
    // Both peers' Close frames are in the pipes before the tunnel's first
    // poll, where the order is already waiting: wsgate's Close goes out
    // first each way and the peers' are discarded, so the record must not
    // name a peer as the sender of the first Close.
    let mut t = Setup {
        order: Some(order(4000, "maintenance")),
        ..Setup::default()
    }
    .start();
    send(
        &mut t.client,
        &from_client(FIN | CLOSE, &close_payload(1000)),
    )
    .await;
    send(
        &mut t.backend,
        &from_backend(FIN | CLOSE, &close_payload(1000)),
    )
    .await;
    let at_backend = decode(&read_all(&mut t.backend, "the backend's EOF").await);
    assert_eq!(at_backend.len(), 1, "{at_backend:?}");
    at_backend[0].assert_close(true, 4000, "maintenance");
    let at_client = decode(&read_all(&mut t.client, "the client's EOF").await);
    assert_eq!(at_client.len(), 1, "{at_client:?}");
    at_client[0].assert_close(false, 4000, "maintenance");
    let out = t.outcome().await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.closed_by, Side::Proxy);
    assert_eq!(out.first_close, Some((Side::Proxy, Some(4000))));
    assert_eq!(t.stats.to_backend.totals(), totals(0, 0, 0));
    assert_eq!(t.stats.to_client.totals(), totals(0, 0, 0));
}

#[tokio::test]
async fn a_close_waits_for_the_write_of_a_frame_already_read() {
    // The whole frame is read at once, so the frame tracker stands at a
    // boundary while most of the frame still waits to be written to a
    // backend that reads slowly: the Close must wait for the write, not
    // for the read.
    let mut t = Setup {
        backend_pipe: 64,
        ..Setup::default()
    }
    .start();
    let big = from_client(FIN | BINARY, &payload(1000));
    send(&mut t.client, &big).await;
    let first = read_n(&mut t.backend, 1, "the frame's first byte").await;
    let (code, reason) = Ask::Order.apply(&t);
    send(&mut t.client, &from_client(FIN | TEXT, b"discarded")).await;
    send(
        &mut t.client,
        &from_client(FIN | CLOSE, &close_payload(code)),
    )
    .await;
    send(
        &mut t.backend,
        &from_backend(FIN | CLOSE, &close_payload(code)),
    )
    .await;

    let rest = read_all(&mut t.backend, "the backend's EOF").await;
    let got = [first, rest].concat();
    assert_eq!(got[..big.len()], big[..]);
    let after = decode(&got[big.len()..]);
    assert_eq!(after.len(), 1, "{after:?}");
    after[0].assert_close(true, code, reason);
    let at_client = decode(&read_all(&mut t.client, "the client's EOF").await);
    assert_eq!(at_client.len(), 1, "{at_client:?}");
    at_client[0].assert_close(false, code, reason);
    let out = t.outcome().await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(t.stats.to_backend.totals(), totals(big.len(), 1, 1));
}

#[tokio::test]
async fn a_close_ordered_before_the_start_waits_for_the_end_of_a_leftover_frame() {
    // hyper read past the 101 into the middle of a frame: what it kept is
    // delivered first, and a Close already asked for waits for that
    // frame's end, still to come from the client.
    let big = from_client(FIN | BINARY, &payload(300));
    let cut = 150;
    let mut t = Setup {
        client_leftover: Bytes::copy_from_slice(&big[..cut]),
        order: Some(order(4000, "maintenance")),
        ..Setup::default()
    }
    .start();
    let head = read_n(&mut t.backend, cut, "the leftover at the backend").await;
    assert_eq!(head, &big[..cut]);
    send(&mut t.client, &big[cut..]).await;
    send(
        &mut t.client,
        &from_client(FIN | CLOSE, &close_payload(1000)),
    )
    .await;
    send(
        &mut t.backend,
        &from_backend(FIN | CLOSE, &close_payload(1000)),
    )
    .await;
    let got = read_all(&mut t.backend, "the backend's EOF").await;
    assert_eq!(got[..big.len() - cut], big[cut..]);
    let after = decode(&got[big.len() - cut..]);
    assert_eq!(after.len(), 1, "{after:?}");
    after[0].assert_close(true, 4000, "maintenance");
    let out = t.outcome().await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(t.stats.to_backend.totals(), totals(big.len(), 1, 1));
}

#[tokio::test]
async fn a_sender_whose_close_is_under_way_gets_no_second_close() {
    // The client's Close has passed wholly, partly or barely when the drain
    // comes: the backend gets that Close and no other; the client, whose
    // backend sent none, gets wsgate's.
    let client_close = from_client(FIN | CLOSE, &close_payload(1000));
    for split in [client_close.len(), 3, 1] {
        let mut t = start();
        send(&mut t.client, &client_close[..split]).await;
        let head = read_n(&mut t.backend, split, "the Close's head at the backend").await;
        assert_eq!(head, &client_close[..split]);
        let (code, reason) = Ask::Drain.apply(&t);
        let at_client = read_n(&mut t.client, 2 + 2 + reason.len(), "wsgate's Close").await;
        let at_client = decode(&at_client);
        assert_eq!(at_client.len(), 1, "split {split}: {at_client:?}");
        at_client[0].assert_close(false, code, reason);
        // Only now does the client finish its Close, so wsgate's passed first.
        send(&mut t.client, &client_close[split..]).await;
        // The backend's answer completes the handshake; the client already has a Close.
        send(
            &mut t.backend,
            &from_backend(FIN | CLOSE, &close_payload(1000)),
        )
        .await;

        let tail = read_all(&mut t.backend, "the backend's EOF").await;
        assert_eq!(tail, &client_close[split..], "split {split}");
        assert!(
            read_all(&mut t.client, "the client's EOF").await.is_empty(),
            "split {split}"
        );
        let out = t.outcome().await;
        assert!(out.error.is_none(), "split {split}: {:?}", out.error);
        assert_eq!(out.closed_by, Side::Proxy, "split {split}");
        let first = if split == client_close.len() {
            (Side::Client, Some(1000))
        } else {
            (Side::Proxy, Some(code))
        };
        assert_eq!(out.first_close, Some(first), "split {split}");
        assert_eq!(
            t.stats.to_backend.totals(),
            totals(client_close.len(), 1, 0)
        );
    }
}

#[tokio::test]
async fn an_unanswered_close_is_cut_at_the_close_deadline() {
    tokio::time::pause();
    let mut t = Setup {
        timeouts: TunnelTimeouts {
            half_close: Duration::from_secs(3600),
            close: Duration::from_secs(5),
        },
        ..Setup::default()
    }
    .start();
    let (code, reason) = Ask::Order.apply(&t);
    // Neither peer answers.
    let out = t.outcome().await;
    assert!(
        matches!(
            out.error,
            Some(TunnelError::CloseTimeout { code: 4000, .. })
        ),
        "{:?}",
        out.error
    );
    assert_eq!(out.closed_by, Side::Proxy);
    assert_eq!(out.first_close, Some((Side::Proxy, Some(code))));
    let at_backend = decode(&read_all(&mut t.backend, "the backend's EOF").await);
    assert_eq!(at_backend.len(), 1, "{at_backend:?}");
    at_backend[0].assert_close(true, code, reason);
    let at_client = decode(&read_all(&mut t.client, "the client's EOF").await);
    assert_eq!(at_client.len(), 1, "{at_client:?}");
    at_client[0].assert_close(false, code, reason);
}

#[tokio::test]
async fn a_hard_shutdown_cuts_the_tunnel_without_a_close_frame() {
    let mut t = start();
    let hello = from_client(FIN | TEXT, b"hello");
    send(&mut t.client, &hello).await;
    assert_eq!(read_n(&mut t.backend, hello.len(), "hello").await, hello);
    t.shutdown.cancel();
    let out = t.outcome().await;
    assert!(
        matches!(out.error, Some(TunnelError::Shutdown)),
        "{:?}",
        out.error
    );
    assert_eq!(out.closed_by, Side::Proxy);
    assert!(read_all(&mut t.backend, "the backend's EOF")
        .await
        .is_empty());
    assert!(read_all(&mut t.client, "the client's EOF").await.is_empty());
}

/// A close is asked while the client's frame is half-way through its
/// header, and the rest of that header breaks the protocol: no boundary is
/// left toward the backend, so it gets no Close in the middle of the frame
/// (only the bytes that had passed, then EOF), and the client, which
/// already has wsgate's Close, gets no second one. The same when the bad
/// frame is the backend's.
#[tokio::test]
async fn a_violation_in_the_frame_a_close_waits_for_gets_no_close_mid_frame_and_no_second_close() {
    for offender in [Side::Client, Side::Backend] {
        let mut t = Setup {
            timeouts: TunnelTimeouts {
                half_close: Duration::from_secs(3600),
                close: Duration::from_secs(1),
            },
            ..Setup::default()
        }
        .start();
        // A text frame's first byte; the second says unmasked from a client,
        // masked from a backend: the wrong way each time.
        let (first, bad) = match offender {
            Side::Client => (vec![FIN | TEXT], vec![5, b'h', b'e', b'l', b'l', b'o']),
            _ => (
                vec![FIN | TEXT],
                vec![0x85, 1, 2, 3, 4, b'h', b'e', b'l', b'l', b'o'],
            ),
        };
        let (from, to) = match offender {
            Side::Client => (&mut t.client, &mut t.backend),
            _ => (&mut t.backend, &mut t.client),
        };
        send(from, &first).await;
        assert_eq!(read_n(to, 1, "the first byte").await, first);
        let (code, reason) = Ask::Order.apply(&t);
        let (from, to) = match offender {
            Side::Client => (&mut t.client, &mut t.backend),
            _ => (&mut t.backend, &mut t.client),
        };
        // The offender has wsgate's Close at once: its side was at a boundary.
        let masked = offender == Side::Backend;
        let got = read_n(from, if masked { 19 } else { 15 }, "wsgate's Close").await;
        decode(&got)[0].assert_close(masked, code, reason);
        send(from, &bad).await;
        let after = read_all(to, "the other side's EOF").await;
        assert!(
            after.is_empty(),
            "{offender:?}: {after:?} after the frame's first byte"
        );
        let after = read_all(from, "the offender's EOF").await;
        assert!(
            after.is_empty(),
            "{offender:?}: {after:?} after wsgate's Close"
        );
        let out = t.outcome().await;
        assert!(
            matches!(out.error, Some(TunnelError::Protocol { side, .. }) if side == offender),
            "{offender:?}: {:?}",
            out.error
        );
    }
}

/// wsgate's Close is half-way out to a slow backend when the backend
/// breaks the protocol: that Close is finished whole (never cut short,
/// never followed by a second), then the backend's writer is shut.
#[tokio::test(start_paused = true)]
async fn a_close_half_way_out_is_finished_whole_when_its_receiver_then_breaks_the_protocol() {
    let mut t = Setup {
        backend_pipe: 64,
        ..Setup::default()
    }
    .start();
    // The backend is mid-header, so its direction's Close waits.
    send(&mut t.backend, &[FIN | TEXT]).await;
    assert_eq!(
        read_n(&mut t.client, 1, "the first byte").await,
        [FIN | TEXT]
    );
    // 124 bytes: 64 fill the pipe, 60 wait in the tunnel.
    let up = from_client(FIN | BINARY, &payload(118));
    send(&mut t.client, &up).await;
    within("the tunnel to take the frame", async {
        while t.stats.to_backend.totals().bytes < up.len() as u64 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let (code, reason) = Ask::Order.apply(&t);
    let mut got = read_n(&mut t.backend, 64, "what fits in the pipe").await;
    // The rest of the frame goes, and the first 4 bytes of the Close.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    // Masked, from a backend: the wrong way.
    send(&mut t.backend, &[0x85, 1, 2, 3, 4]).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    got.extend(read_all(&mut t.backend, "the backend's EOF").await);
    assert_eq!(got[..up.len()], up[..]);
    let closes = decode(&got[up.len()..]);
    assert_eq!(closes.len(), 1, "{closes:?}");
    closes[0].assert_close(true, code, reason);
    t.client.shutdown().await.expect("EOF");
    let out = t.outcome().await;
    assert!(
        matches!(
            out.error,
            Some(TunnelError::Protocol {
                side: Side::Backend,
                ..
            })
        ),
        "{:?}",
        out.error
    );
}
