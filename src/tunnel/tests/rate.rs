//! The client's message rate (`messages_per_second`, `burst`): what passes,
//! where the refusal falls, and who gets which Close.

use super::*;
use crate::tunnel::RateLimit;

fn rated(per_second: u32, burst: u32) -> Tunnel {
    Setup {
        policy: FramePolicy {
            rate: Some(RateLimit { per_second, burst }),
            ..FramePolicy::default()
        },
        ..Setup::default()
    }
    .start()
}

/// One message over the burst, sent at once: the first `burst` reach the
/// backend whole, then its Close 1001; the client gets 1008; the record
/// says `rate_limited`, closed by the client.
#[tokio::test(start_paused = true)]
async fn a_message_over_the_burst_gets_1008_and_the_backend_1001() {
    let mut t = rated(1, 3);
    let one = from_client(FIN | TEXT, b"hello");
    let four = one.repeat(4);
    send(&mut t.client, &four).await;
    let got = read_n(&mut t.backend, 3 * one.len() + 31, "three and a Close").await;
    assert_eq!(got[..3 * one.len()], one.repeat(3)[..]);
    decode(&got[3 * one.len()..])[0].assert_close(true, 1001, "peer broke the protocol");
    let back = decode(&read_all(&mut t.client, "the 1008 and EOF").await);
    assert_eq!(back.len(), 1, "{back:?}");
    back[0].assert_close(false, 1008, "message rate exceeded");
    t.backend.shutdown().await.expect("EOF");
    t.client.shutdown().await.expect("EOF");
    let out = t.outcome().await;
    assert!(
        matches!(
            out.error,
            Some(TunnelError::RateLimited { side: Side::Client })
        ),
        "{:?}",
        out.error
    );
    assert_eq!(out.closed_by, Side::Client);
    assert_eq!(out.to_end().reason.as_str(), "rate_limited");
    assert_eq!(out.first_close, Some((Side::Proxy, Some(1008))));
    assert_eq!(t.stats.to_backend.totals().messages, 3);
}

/// Tokens come back at the configured rate: after a second at 2 per
/// second, two more messages pass, and the third is refused.
#[tokio::test(start_paused = true)]
async fn the_bucket_refills_at_its_rate() {
    let mut t = rated(2, 2);
    let one = from_client(FIN | BINARY, &payload(10));
    send(&mut t.client, &one.repeat(2)).await;
    assert_eq!(
        read_n(&mut t.backend, 2 * one.len(), "the burst").await,
        one.repeat(2)
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    send(&mut t.client, &one.repeat(2)).await;
    assert_eq!(
        read_n(&mut t.backend, 2 * one.len(), "the refill").await,
        one.repeat(2)
    );
    send(&mut t.client, &one).await;
    let got = decode(&read_n(&mut t.backend, 31, "the Close").await);
    got[0].assert_close(true, 1001, "peer broke the protocol");
    decode(&read_all(&mut t.client, "the 1008").await)[0].assert_close(
        false,
        1008,
        "message rate exceeded",
    );
}

/// Pongs that answer the backend's pings, Closes and continuations are
/// free; pings and unasked pongs are not (a backend's library hands its
/// application every pong, so a flood of them must not pass free); the
/// backend's direction is never metered.
#[tokio::test(start_paused = true)]
async fn answers_and_continuations_are_free_pings_and_unasked_pongs_are_not() {
    for extra in [PING, PONG] {
        let mut t = rated(1, 1);
        let pings = from_backend(FIN | PING, b"").repeat(2);
        send(&mut t.backend, &pings).await;
        assert_eq!(read_n(&mut t.client, pings.len(), "two pings").await, pings);
        let free = [
            from_client(FIN | TEXT, b"a"),
            from_client(FIN | PONG, b""),
            from_client(FIN | PONG, b""),
        ]
        .concat();
        send(&mut t.client, &free).await;
        assert_eq!(
            read_n(&mut t.backend, free.len(), "a message, two answers").await,
            free
        );
        let many = from_backend(FIN | TEXT, b"down").repeat(50);
        send(&mut t.backend, &many).await;
        assert_eq!(
            read_n(&mut t.client, many.len(), "the backend's").await,
            many
        );
        send(&mut t.client, &from_client(FIN | extra, b"")).await;
        decode(&read_n(&mut t.backend, 31, "the Close").await)[0].assert_close(
            true,
            1001,
            "peer broke the protocol",
        );
    }

    let mut t = rated(1, 1);
    let fragmented = [
        from_client(TEXT, b"a"),
        from_client(CONT, b"b"),
        from_client(FIN | CONT, b"c"),
    ]
    .concat();
    send(&mut t.client, &fragmented).await;
    assert_eq!(
        read_n(&mut t.backend, fragmented.len(), "three fragments").await,
        fragmented
    );
    assert_eq!(t.stats.to_backend.totals().messages, 1);
}

/// `[websocket] strict = false` passes broken frames, not a rate over the limit.
#[tokio::test(start_paused = true)]
async fn the_rate_holds_when_not_strict() {
    let mut t = Setup {
        policy: FramePolicy {
            strict: false,
            rate: Some(RateLimit {
                per_second: 1,
                burst: 1,
            }),
            ..FramePolicy::default()
        },
        ..Setup::default()
    }
    .start();
    let one = from_client(FIN | TEXT, b"x");
    send(&mut t.client, &one.repeat(2)).await;
    let got = read_n(&mut t.backend, one.len() + 31, "one and a Close").await;
    assert_eq!(got[..one.len()], one[..]);
    decode(&read_all(&mut t.client, "the 1008").await)[0].assert_close(
        false,
        1008,
        "message rate exceeded",
    );
}

/// Not strict, a broken frame passes untouched, and the route's limits
/// still hold after it: one frame with a reserved opcode or an unmasked
/// header must not turn the rate (and the size limits) off for the rest
/// of the tunnel.
#[tokio::test(start_paused = true)]
async fn a_broken_frame_when_not_strict_does_not_turn_the_limits_off() {
    let broken = [
        ("reserved opcode", from_client(FIN | 0x3, b"?")),
        ("reserved bit", from_client(FIN | 0x40 | PONG, b"?")),
        ("unmasked", from_backend(FIN | PONG, b"?")),
        ("lone continuation", from_client(FIN | CONT, b"?")),
        ("fragmented control", from_client(PONG, b"?")),
        ("long control", from_client(FIN | PONG, &payload(200))),
    ];
    for (what, bad) in broken {
        let mut t = Setup {
            policy: FramePolicy {
                strict: false,
                rate: Some(RateLimit {
                    per_second: 1,
                    burst: 1,
                }),
                ..FramePolicy::default()
            },
            ..Setup::default()
        }
        .start();
        let one = from_client(FIN | TEXT, b"x");
        // The message takes the one token; the broken frame takes another
        // or none, and the refusal falls on it or on the message after it.
        let sent = [one.clone(), bad.clone(), one.clone()].concat();
        send(&mut t.client, &sent).await;
        let got = read_n(&mut t.backend, one.len(), "the first message").await;
        assert_eq!(got, one, "{what}");
        decode(&read_all(&mut t.client, "the 1008").await)[0].assert_close(
            false,
            1008,
            "message rate exceeded",
        );
    }
}
