//! What passes and what ends a tunnel without wsgate's initiative: a
//! peer's own Close, EOF and half-close, framing violations, I/O failures;
//! and what is counted and flushed on the way.

use super::*;

/// The closing handshake is transparent: frames a peer sends after its own
/// Close (in the Close's own write or later) are discarded and counted,
/// and the other side's reply still reaches it.
#[tokio::test]
async fn frames_after_a_peers_close_are_discarded_and_the_reply_still_arrives() {
    for sender in [Side::Client, Side::Backend] {
        let mut t = start();
        let enc = |b0: u8, p: &[u8], from: Side| match from {
            Side::Client => from_client(b0, p),
            _ => from_backend(b0, p),
        };
        let other = if sender == Side::Client {
            Side::Backend
        } else {
            Side::Client
        };
        let close = enc(FIN | CLOSE, &close_payload(1000), sender);
        // A data frame in the same write as the Close, then a ping, a second
        // Close and a fragment, each alone.
        let glued = [close.clone(), enc(FIN | TEXT, b"glued", sender)].concat();
        let late = [
            enc(FIN | PING, b"p", sender),
            enc(FIN | CLOSE, &close_payload(4000), sender),
            enc(TEXT, &payload(300), sender),
        ];
        let reply = enc(FIN | CLOSE, &close_payload(1000), other);
        let (from, to) = match sender {
            Side::Client => (&mut t.client, &mut t.backend),
            _ => (&mut t.backend, &mut t.client),
        };
        send(from, &glued).await;
        for f in &late {
            send(from, f).await;
        }
        assert_eq!(read_n(to, close.len(), "the Close").await, close);
        send(to, &reply).await;
        assert_eq!(read_n(from, reply.len(), "the reply").await, reply);
        to.shutdown().await.expect("the answering side closes TCP");
        assert!(read_all(from, "EOF at the first closer").await.is_empty());
        from.shutdown().await.expect("the first closer closes TCP");
        assert!(
            read_all(to, "EOF, and nothing after the Close")
                .await
                .is_empty(),
            "{sender:?}"
        );
        let out = t.outcome().await;
        assert!(out.error.is_none(), "{sender:?}: {:?}", out.error);
        assert_eq!(out.first_close, Some((sender, Some(1000))));
        let (sent, answered) = match sender {
            Side::Client => (t.stats.to_backend.totals(), t.stats.to_client.totals()),
            _ => (t.stats.to_client.totals(), t.stats.to_backend.totals()),
        };
        assert_eq!((sent.bytes, sent.frames), (close.len() as u64, 1));
        assert_eq!(sent.discarded_frames, 4, "{sender:?}");
        assert_eq!(
            (answered.bytes, answered.discarded_frames),
            (reply.len() as u64, 0)
        );
    }
}

/// A peer's Close that is never answered does not hold the tunnel open:
/// at `timeouts.close` it ends, blaming the silent side.
#[tokio::test]
async fn an_unanswered_peer_close_ends_the_tunnel_at_the_close_deadline() {
    tokio::time::pause();
    for sender in [Side::Client, Side::Backend] {
        let mut t = Setup {
            timeouts: TunnelTimeouts {
                half_close: Duration::from_secs(3600),
                close: Duration::from_secs(5),
            },
            ..Setup::default()
        }
        .start();
        let (close, from, to, silent) = match sender {
            Side::Client => (
                from_client(FIN | CLOSE, &close_payload(1001)),
                &mut t.client,
                &mut t.backend,
                Side::Backend,
            ),
            _ => (
                from_backend(FIN | CLOSE, &close_payload(1001)),
                &mut t.backend,
                &mut t.client,
                Side::Client,
            ),
        };
        send(from, &close).await;
        assert_eq!(read_n(to, close.len(), "the Close").await, close);
        let out = t.outcome().await;
        assert!(
            matches!(
                out.error,
                Some(TunnelError::CloseUnanswered { waiting_for, .. }) if waiting_for == silent
            ),
            "{sender:?}: {:?}",
            out.error
        );
        assert_eq!(out.closed_by, silent);
        assert_eq!(out.to_end().reason.as_str(), "close_timeout");
    }
}

/// Both Closes passed but neither peer closes TCP: the tunnel still ends
/// at the deadline, cleanly, since the handshake itself completed.
#[tokio::test]
async fn a_completed_handshake_left_open_ends_cleanly_at_the_close_deadline() {
    tokio::time::pause();
    let mut t = Setup {
        timeouts: TunnelTimeouts {
            half_close: Duration::from_secs(3600),
            close: Duration::from_secs(5),
        },
        ..Setup::default()
    }
    .start();
    let close = from_client(FIN | CLOSE, &close_payload(1000));
    let reply = from_backend(FIN | CLOSE, &close_payload(1000));
    send(&mut t.client, &close).await;
    assert_eq!(
        read_n(&mut t.backend, close.len(), "the Close").await,
        close
    );
    send(&mut t.backend, &reply).await;
    assert_eq!(read_n(&mut t.client, reply.len(), "the reply").await, reply);
    let out = t.outcome().await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.closed_by, Side::Client);
    assert_eq!(out.first_close, Some((Side::Client, Some(1000))));
}

#[tokio::test]
async fn a_half_close_is_passed_on_while_the_other_direction_flows() {
    let mut t = start();
    let hello = from_client(FIN | TEXT, b"hello");
    send(&mut t.client, &hello).await;
    t.client.shutdown().await.expect("client half-close");
    // The backend gets the frame, then EOF...
    assert_eq!(read_all(&mut t.backend, "EOF at the backend").await, hello);
    // ...and can still talk to the client, which still listens.
    let replies = [
        from_backend(FIN | TEXT, b"still here"),
        from_backend(FIN | BINARY, &payload(3000)),
    ];
    for r in &replies {
        send(&mut t.backend, r).await;
        assert_eq!(&read_n(&mut t.client, r.len(), "a reply").await, r);
    }
    t.backend.shutdown().await.expect("backend half-close");
    assert!(read_all(&mut t.client, "EOF at the client")
        .await
        .is_empty());
    let out = t.outcome().await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.closed_by, Side::Client);
    assert_eq!(out.first_close, None);
    assert_eq!(t.stats.to_backend.totals(), totals(hello.len(), 1, 1));
    assert_eq!(
        t.stats.to_client.totals(),
        totals(replies.iter().map(Vec::len).sum(), 2, 2)
    );
}

#[tokio::test]
async fn a_half_closed_tunnel_is_cut_at_the_half_close_deadline() {
    tokio::time::pause();
    let mut t = Setup {
        timeouts: TunnelTimeouts {
            half_close: Duration::from_secs(5),
            close: Duration::from_secs(3600),
        },
        ..Setup::default()
    }
    .start();
    t.backend.shutdown().await.expect("backend half-close");
    assert!(read_all(&mut t.client, "EOF at the client")
        .await
        .is_empty());
    // The client never finishes.
    let out = t.outcome().await;
    assert!(
        matches!(out.error, Some(TunnelError::HalfCloseTimeout(_))),
        "{:?}",
        out.error
    );
    assert_eq!(out.closed_by, Side::Backend);
}

#[tokio::test]
async fn a_framing_violation_gets_1002_to_the_offender_and_1001_to_the_other_side_unless_not_strict(
) {
    let cases: [(Side, Vec<u8>, FrameError); 7] = [
        (
            Side::Client,
            from_client(FIN | 0x20 | TEXT, b"rsv2"),
            FrameError::ReservedBits(2),
        ),
        (
            Side::Client,
            from_backend(FIN | TEXT, b"bare"),
            FrameError::Masking {
                expected_masked: true,
            },
        ),
        (
            Side::Backend,
            from_client(FIN | TEXT, b"masked"),
            FrameError::Masking {
                expected_masked: false,
            },
        ),
        (
            Side::Client,
            from_client(FIN | 0x3, b"x"),
            FrameError::ReservedOpcode(0x3),
        ),
        (
            Side::Backend,
            from_backend(FIN | CONT, b"x"),
            FrameError::UnexpectedContinuation,
        ),
        (
            Side::Client,
            from_client(FIN | PING, &payload(126)),
            FrameError::ControlTooLong(126),
        ),
        (
            Side::Backend,
            from_backend(FIN | CLOSE, &close_payload(1005)),
            FrameError::InvalidCloseCode(1005),
        ),
    ];
    for (sender, bad, error) in cases.clone() {
        let mut t = start();
        // A good frame first, which must pass, and the bad one in the same write.
        let good = match sender {
            Side::Client => from_client(FIN | TEXT, b"ok"),
            _ => from_backend(FIN | TEXT, b"ok"),
        };
        let (from, to) = match sender {
            Side::Client => (&mut t.client, &mut t.backend),
            _ => (&mut t.backend, &mut t.client),
        };
        send(from, &[good.clone(), bad.clone()].concat()).await;
        // The other side gets the good frame, then 1001 (masked toward the
        // backend), and not a byte of the bad frame.
        assert_eq!(read_n(to, good.len(), "the good frame").await, good);
        let notice =
            decode(&read_n(to, if sender == Side::Client { 31 } else { 27 }, "the 1001").await[..])
                .remove(0);
        notice.assert_close(sender == Side::Client, 1001, "peer broke the protocol");
        // The offender gets 1002, then EOF.
        let got = read_all(from, "the 1002 and EOF").await;
        let frames = decode(&got);
        assert_eq!(frames.len(), 1, "{error:?}: {frames:?}");
        frames[0].assert_close(sender == Side::Backend, 1002, "protocol error");
        to.shutdown().await.expect("the other side closes");
        from.shutdown().await.expect("the offender closes");
        let out = t.outcome().await;
        assert!(
            matches!(out.error, Some(TunnelError::Protocol { source, side }) if source == error && side == sender),
            "{error:?}: {:?}",
            out.error
        );
        assert_eq!(out.closed_by, sender, "{error:?}");
        assert_eq!(out.first_close, Some((Side::Proxy, Some(1002))));
    }
    // Not strict: the same frames pass untouched, and the tunnel goes on;
    // a Close, even with a code not allowed on the wire, is a Close: what
    // its sender sends after it is discarded, as after any Close.
    for (sender, bad, error) in cases {
        let mut t = Setup {
            policy: FramePolicy {
                strict: false,
                ..FramePolicy::default()
            },
            ..Setup::default()
        }
        .start();
        let (from, to) = match sender {
            Side::Client => (&mut t.client, &mut t.backend),
            _ => (&mut t.backend, &mut t.client),
        };
        send(from, &bad).await;
        assert_eq!(
            read_n(to, bad.len(), "the bad frame").await,
            bad,
            "{error:?}"
        );
        send(from, b"anything").await;
        from.shutdown().await.expect("EOF");
        let follows = read_all(to, "what follows").await;
        let closed = bad[0] & 0x0f == CLOSE;
        let expected: &[u8] = if closed { b"" } else { b"anything" };
        assert_eq!(follows, expected, "{error:?}");
        to.shutdown().await.expect("EOF");
        let out = t.outcome().await;
        assert!(out.error.is_none(), "{error:?}: {:?}", out.error);
    }
}

/// A reserved bit is a violation unless a negotiated extension defines it:
/// with permessage-deflate, RSV1 passes.
#[tokio::test]
async fn rsv1_passes_only_with_permessage_deflate() {
    let compressed = from_client(FIN | 0x40 | TEXT, b"deflated");
    let mut t = Setup {
        policy: FramePolicy::for_extensions(true, ["permessage-deflate"]),
        ..Setup::default()
    }
    .start();
    send(&mut t.client, &compressed).await;
    assert_eq!(
        read_n(&mut t.backend, compressed.len(), "RSV1 frame").await,
        compressed
    );
    let mut t = start();
    send(&mut t.client, &compressed).await;
    let notice = decode(&read_n(&mut t.backend, 31, "the 1001").await).remove(0);
    notice.assert_close(true, 1001, "peer broke the protocol");
    let frames = decode(&read_n(&mut t.client, 2 + 2 + 14, "the 1002").await);
    frames[0].assert_close(false, 1002, "protocol error");
}

#[tokio::test]
async fn a_write_to_a_vanished_backend_ends_the_tunnel_blaming_it() {
    let mut t = start();
    let backend = std::mem::replace(&mut t.backend, tokio::io::duplex(1).0);
    drop(backend);
    // The backend's going is passed on as EOF to the client first.
    assert!(read_all(&mut t.client, "EOF at the client")
        .await
        .is_empty());
    // Writes toward the backend can fail now; the client's next frame finds out.
    let _ = t
        .client
        .write_all(&from_client(FIN | TEXT, b"anyone?"))
        .await;
    let out = t.outcome().await;
    assert!(
        matches!(out.error, Some(TunnelError::Write { .. })),
        "{:?}",
        out.error
    );
    assert_eq!(out.closed_by, Side::Backend);
}

#[tokio::test]
async fn counters_equal_what_moved_with_fragments_and_control_frames_interleaved() {
    let mut t = start();
    // Client: a text message in three fragments with a Ping and a Pong
    // between them, a binary message with a 16-bit length, then a Close.
    let up = [
        from_client(TEXT, b"he"),
        from_client(FIN | PING, b"p"),
        from_client(CONT, b"ll"),
        from_client(FIN | PONG, b""),
        from_client(FIN | CONT, b"o"),
        from_client(FIN | BINARY, &payload(300)),
        from_client(FIN | CLOSE, &close_payload(1000)),
    ]
    .concat();
    // Sent in uneven pieces, so headers and payloads are cut anywhere.
    let mut rest = &up[..];
    for n in [1, 2, 5, 9, 17, 33, 65, 129].iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at((*n).min(rest.len()));
        send(&mut t.client, piece).await;
        rest = tail;
    }
    assert_eq!(
        read_n(&mut t.backend, up.len(), "the client's frames").await,
        up
    );
    // Backend: a Ping, a binary message in two fragments around a Pong,
    // then its Close.
    let down = [
        from_backend(FIN | PING, b"are you there"),
        from_backend(BINARY, &payload(200)),
        from_backend(FIN | PONG, b"p"),
        from_backend(FIN | CONT, &payload(20)),
        from_backend(FIN | CLOSE, &close_payload(1000)),
    ]
    .concat();
    send(&mut t.backend, &down).await;
    assert_eq!(
        read_n(&mut t.client, down.len(), "the backend's frames").await,
        down
    );
    t.client.shutdown().await.expect("client EOF");
    t.backend.shutdown().await.expect("backend EOF");
    assert!(read_all(&mut t.backend, "EOF at the backend")
        .await
        .is_empty());
    assert!(read_all(&mut t.client, "EOF at the client")
        .await
        .is_empty());
    let out = t.outcome().await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.first_close, Some((Side::Client, Some(1000))));
    assert_eq!(t.stats.to_backend.totals(), totals(up.len(), 7, 2));
    assert_eq!(t.stats.to_client.totals(), totals(down.len(), 5, 1));
}

#[tokio::test]
async fn leftover_bytes_are_delivered_first_and_counted() {
    let up_early = from_client(FIN | TEXT, b"read past the handshake");
    let up_late = from_client(FIN | TEXT, b"after");
    let down_early = from_backend(FIN | BINARY, &payload(40));
    let down_late = from_backend(FIN | TEXT, b"after");
    // The client's leftover ends inside its second frame.
    let cut = 3;
    let mut t = Setup {
        client_leftover: Bytes::from([&up_early[..], &up_late[..cut]].concat()),
        backend_leftover: Bytes::from(down_early.clone()),
        ..Setup::default()
    }
    .start();
    send(&mut t.client, &up_late[cut..]).await;
    send(&mut t.backend, &down_late).await;
    let up = [up_early, up_late].concat();
    let down = [down_early, down_late].concat();
    assert_eq!(read_n(&mut t.backend, up.len(), "the client's").await, up);
    assert_eq!(
        read_n(&mut t.client, down.len(), "the backend's").await,
        down
    );
    assert_eq!(t.stats.to_backend.totals(), totals(up.len(), 2, 2));
    assert_eq!(t.stats.to_client.totals(), totals(down.len(), 2, 2));
}

#[tokio::test]
async fn what_a_direction_writes_is_flushed_when_its_sender_goes_quiet() {
    // Over streams that deliver only what is flushed (as TLS does), frames
    // and wsgate's own Close must still arrive without anything further
    // from the sender to push them along, even when a flush must wait for
    // a slow backend to read.
    let mut t = Setup {
        buffered: true,
        backend_pipe: 64,
        ..Setup::default()
    }
    .start();
    let up = from_client(FIN | TEXT, &payload(1000));
    let down = from_backend(FIN | BINARY, &payload(500));
    send(&mut t.client, &up).await;
    assert_eq!(read_n(&mut t.backend, up.len(), "the client's").await, up);
    send(&mut t.backend, &down).await;
    assert_eq!(
        read_n(&mut t.client, down.len(), "the backend's").await,
        down
    );
    let (code, reason) = Ask::Order.apply(&t);
    // Each peer reads wsgate's Close before answering it.
    let close = read_n(&mut t.backend, 2 + 4 + 2 + reason.len(), "the Close").await;
    decode(&close)[0].assert_close(true, code, reason);
    let close = read_n(&mut t.client, 2 + 2 + reason.len(), "the Close").await;
    decode(&close)[0].assert_close(false, code, reason);
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
    assert!(read_all(&mut t.backend, "EOF at the backend")
        .await
        .is_empty());
    assert!(read_all(&mut t.client, "EOF at the client")
        .await
        .is_empty());
    let out = t.outcome().await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.closed_by, Side::Proxy);
}

#[tokio::test]
async fn an_unexpected_eof_ends_a_direction_like_eof_and_a_reset_is_a_read_failure() {
    // rustls reports a peer gone without close_notify as UnexpectedEof:
    // frames carry their lengths, so that is an EOF. A reset is not.
    for (kind, clean) in [
        (io::ErrorKind::UnexpectedEof, true),
        (io::ErrorKind::ConnectionReset, false),
    ] {
        let mut t = Setup {
            client_eof_as: Some(kind),
            ..Setup::default()
        }
        .start();
        let hello = from_client(FIN | TEXT, b"hello");
        send(&mut t.client, &hello).await;
        t.client.shutdown().await.expect("client EOF");
        if clean {
            // Passed on as a half-close: the backend may still answer.
            assert_eq!(read_all(&mut t.backend, "EOF at the backend").await, hello);
            let reply = from_backend(FIN | TEXT, b"bye");
            send(&mut t.backend, &reply).await;
            assert_eq!(read_n(&mut t.client, reply.len(), "the reply").await, reply);
            t.backend.shutdown().await.expect("backend EOF");
        }
        let out = t.outcome().await;
        if clean {
            assert!(out.error.is_none(), "{kind:?}: {:?}", out.error);
        } else {
            assert!(
                matches!(out.error, Some(TunnelError::Read { .. })),
                "{kind:?}: {:?}",
                out.error
            );
            assert_eq!(read_all(&mut t.backend, "EOF at the backend").await, hello);
        }
        assert_eq!(out.closed_by, Side::Client, "{kind:?}");
    }
}

/// Over the route's limits, each way: the sender gets 1009, the other side
/// 1001, and not a byte of the frame that went over passes, even when not
/// strict.
#[tokio::test]
async fn a_frame_or_message_over_the_limits_gets_1009_to_its_sender_and_1001_to_the_other() {
    for strict in [true, false] {
        for sender in [Side::Client, Side::Backend] {
            for (frames, error) in [
                (vec![(FIN | BINARY, 101)], FrameError::FrameTooBig(101)),
                (
                    vec![(TEXT, 100), (CONT, 100), (FIN | CONT, 51)],
                    FrameError::MessageTooBig(251),
                ),
            ] {
                let mut t = Setup {
                    policy: FramePolicy {
                        strict,
                        max_frame: Some(100),
                        max_message: Some(250),
                        ..FramePolicy::default()
                    },
                    ..Setup::default()
                }
                .start();
                let enc: Vec<Vec<u8>> = frames
                    .iter()
                    .map(|&(b0, n)| match sender {
                        Side::Client => from_client(b0, &payload(n)),
                        _ => from_backend(b0, &payload(n)),
                    })
                    .collect();
                let (last, good) = enc.split_last().expect("frames");
                let good = good.concat();
                let (from, to) = match sender {
                    Side::Client => (&mut t.client, &mut t.backend),
                    _ => (&mut t.backend, &mut t.client),
                };
                send(from, &[good.clone(), last.clone()].concat()).await;
                let masked = sender == Side::Client;
                let notice_len = if masked { 31 } else { 27 };
                let got = read_n(to, good.len() + notice_len, "the good part and 1001").await;
                assert_eq!(got[..good.len()], good[..]);
                decode(&got[good.len()..])[0].assert_close(masked, 1001, "peer broke the protocol");
                let back = decode(&read_all(from, "the 1009 and EOF").await);
                assert_eq!(back.len(), 1, "{back:?}");
                back[0].assert_close(!masked, 1009, "message too big");
                to.shutdown().await.expect("EOF");
                from.shutdown().await.expect("EOF");
                let out = t.outcome().await;
                assert!(
                    matches!(out.error, Some(TunnelError::TooBig { source, side }) if source == error && side == sender),
                    "{strict} {sender:?}: {:?}",
                    out.error
                );
                assert_eq!(out.to_end().reason.as_str(), "too_big");
                assert_eq!(out.first_close, Some((Side::Proxy, Some(1009))));
            }
        }
    }
}
