//! A peer that pushes large binary frames until its writes block, and the
//! checks of what reached the other side: for the slow-consumer tests over
//! plain TCP (slow_consumers.rs) and TLS (tls_policies.rs). Included with
//! `#[path]`.
#![allow(dead_code)]

use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Payload of each frame pushed: large, so that a debug build moves a
/// gibibyte in seconds.
pub const FRAME: usize = 1 << 20;

/// Header of an unmasked binary frame of `FRAME` bytes (64-bit length).
pub fn header() -> [u8; 10] {
    let mut h = [0x82, 127, 0, 0, 0, 0, 0, 0, 0, 0];
    h[2..].copy_from_slice(&(FRAME as u64).to_be_bytes());
    h
}

/// The header of a frame as a client sends it: masked, with the all-zero
/// key (legal, and the payload is then sent as it is).
pub fn masked_header() -> Vec<u8> {
    let mut h = header().to_vec();
    h[1] |= 0x80;
    h.extend_from_slice(&[0; 4]);
    h
}

/// The payload every frame shares: little-endian 64-bit words counting
/// from 0, so a byte lost, repeated or moved within a frame shows.
pub fn base() -> Vec<u8> {
    (0..FRAME as u64 / 8).flat_map(u64::to_le_bytes).collect()
}

/// Frame `n`'s payload: the base with its first word set to `n`, so a
/// frame lost, repeated or out of order shows too. Copies and compares
/// stay memcpy and memcmp, fast even in a debug build.
pub fn fill(n: u64, base: &[u8], buf: &mut [u8]) {
    buf.copy_from_slice(base);
    buf[..8].copy_from_slice(&n.to_le_bytes());
}

/// What a pushing peer reports.
pub enum Pushed {
    /// One write made no progress for a second: the path is full.
    Blocked(u64),
    /// Everything was written: the bytes.
    Done(u64),
}

/// Writes `frames` frames of `FRAME` bytes to `w` (masked as a client's
/// when `masked`), until `stop` is set or a write fails; says once when a
/// write has been blocked for a second, and at the end how much it wrote.
pub async fn push<W: AsyncWrite + Unpin>(
    mut w: W,
    frames: u64,
    masked: bool,
    stop: watch::Receiver<bool>,
    tx: mpsc::UnboundedSender<Pushed>,
) {
    let mut frame = if masked {
        masked_header()
    } else {
        header().to_vec()
    };
    let head = frame.len();
    frame.resize(head + FRAME, 0);
    let base = base();
    let (mut written, mut said_blocked) = (0u64, false);
    'frames: for n in 0..frames {
        fill(n, &base, &mut frame[head..]);
        let mut pos = 0;
        while pos < frame.len() {
            if *stop.borrow() {
                break 'frames;
            }
            let write = w.write(&frame[pos..]);
            let m = match tokio::time::timeout(Duration::from_secs(1), write).await {
                Ok(Ok(m)) if m > 0 => m,
                Ok(_) => break 'frames,
                Err(_) => {
                    if !said_blocked {
                        said_blocked = true;
                        let _ = tx.send(Pushed::Blocked(written));
                    }
                    continue;
                }
            };
            pos += m;
            written += m as u64;
        }
    }
    let _ = w.shutdown().await;
    let _ = tx.send(Pushed::Done(written));
}

/// A pusher started on `w`, and what it reports; setting the sender to
/// true stops it.
pub fn start_push<W: AsyncWrite + Unpin + Send + 'static>(
    w: W,
    frames: u64,
    masked: bool,
) -> (
    tokio::task::JoinHandle<()>,
    mpsc::UnboundedReceiver<Pushed>,
    watch::Sender<bool>,
) {
    let (stop_tx, stop) = watch::channel(false);
    let (tx, pushed) = mpsc::unbounded_channel();
    (
        tokio::spawn(push(w, frames, masked, stop, tx)),
        pushed,
        stop_tx,
    )
}

/// Stops a pusher (it may have finished already: what it sent was read
/// and dropped) and returns how many bytes it wrote.
pub async fn stop_push(
    pusher: tokio::task::JoinHandle<()>,
    mut pushed: mpsc::UnboundedReceiver<Pushed>,
    stop: watch::Sender<bool>,
) -> u64 {
    let _ = stop.send(true);
    let wait = async {
        loop {
            match pushed.recv().await {
                Some(Pushed::Done(n)) => break n,
                Some(Pushed::Blocked(_)) => {}
                None => panic!("the pusher ended without a word"),
            }
        }
    };
    let sent = tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .expect("the pusher's end");
    tokio::time::timeout(Duration::from_secs(30), pusher)
        .await
        .expect("the pusher")
        .expect("no panic");
    sent
}

/// Panics unless `got` is a prefix of what a pusher sent (masked as a
/// client's when `masked`), and shorter than `sent`: nothing of wsgate's
/// own (no Close) among it, nothing lost, repeated or moved.
pub fn assert_prefix_of_pushed(got: &[u8], sent: u64, masked: bool) {
    assert!((got.len() as u64) < sent, "{} of {sent}", got.len());
    let mut frame = if masked {
        masked_header()
    } else {
        header().to_vec()
    };
    let head = frame.len();
    frame.resize(head + FRAME, 0);
    let base = base();
    for (n, part) in got.chunks(frame.len()).enumerate() {
        fill(n as u64, &base, &mut frame[head..]);
        assert!(part == &frame[..part.len()], "frame {n} differs");
    }
}

/// Reads wsgate's Close 1001 "peer not reading" from `rd`, masked when it
/// goes to a backend.
pub async fn assert_peer_not_reading<R: tokio::io::AsyncRead + Unpin>(rd: &mut R, masked: bool) {
    let (b0, was_masked, payload) = super::common::read_frame_masked(rd).await;
    assert_eq!(
        (b0, was_masked),
        (0x88, masked),
        "a Close, masked: {masked}"
    );
    assert_eq!(payload[..2], 1001u16.to_be_bytes());
    assert_eq!(&payload[2..], b"peer not reading");
}

/// Reads `rd` to its end, which must come with nothing before it.
pub async fn assert_nothing_more<R: tokio::io::AsyncRead + Unpin>(rd: &mut R, what: &str) {
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut rest));
    read.await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
        .expect("read");
    assert!(rest.is_empty(), "{what}: {} bytes first", rest.len());
}
