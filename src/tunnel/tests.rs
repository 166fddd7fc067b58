//! Unit tests of the tunnel core over in-memory pipes: [`super::run`] and
//! one direction's [`Half`], driven by a client peer and a backend peer
//! that write raw frames built by hand and read what reaches them.
//!
//! They pin down the state machine itself (a Close injected at a frame
//! boundary, discarding after it, half-close, counters, the idle buffer,
//! deadlines) densely and fast. The real-socket tests in `tests/tunnel.rs`
//! stay: they cover TCP and TLS underneath, which a pipe cannot.
//!
//! Assertions are on what each peer received, the counters, `closed_by`
//! and close codes, never on the wording of an error: that is for humans.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::direction::Half;
use super::frames::{FrameError, Sender};
use super::{Splice, TunnelError, TunnelOutcome, TunnelTimeouts};
use crate::observe::registry::{CloseOrder, ConnInfo, ConnStats, DirectionTotals, Registry, Side};
use crate::upstream::balancer::Server;

// === the in-memory stream ===

/// The tunnel's end of an in-memory pipe. `DuplexStream` cannot say it is
/// readable without reading, which `Splice` asks for, so this reads one
/// byte ahead when asked and hands it out first on the next read. The
/// mutex is there only because `poll_read_ready` takes `&self`.
struct Mem(Mutex<Ahead>);

struct Ahead {
    stream: DuplexStream,
    /// The byte read to learn readiness, not yet handed out.
    byte: Option<u8>,
    /// A read that would return EOF fails with this instead: rustls says
    /// `UnexpectedEof` for a peer gone without close_notify, a socket says
    /// `ConnectionReset`.
    eof_as: Option<io::ErrorKind>,
    /// Set, writes wait here until a flush, as in a TLS stream: what the
    /// tunnel never flushes never arrives.
    held: Option<Vec<u8>>,
}

impl Mem {
    fn new(stream: DuplexStream) -> Self {
        Mem(Mutex::new(Ahead {
            stream,
            byte: None,
            eof_as: None,
            held: None,
        }))
    }

    fn eof_as(self, kind: Option<io::ErrorKind>) -> Self {
        let mut ahead = self.0.into_inner().expect("no test panics holding it");
        ahead.eof_as = kind;
        Mem(Mutex::new(ahead))
    }

    fn buffered(self, yes: bool) -> Self {
        let mut ahead = self.0.into_inner().expect("no test panics holding it");
        ahead.held = yes.then(Vec::new);
        Mem(Mutex::new(ahead))
    }

    fn ahead(self: Pin<&mut Self>) -> &mut Ahead {
        self.get_mut()
            .0
            .get_mut()
            .expect("no test panics holding it")
    }
}

impl Ahead {
    /// Moves what writes left waiting into the pipe.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(held) = self.held.as_mut().filter(|h| !h.is_empty()) {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, held))?;
            held.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl Splice for Mem {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut ahead = self.0.lock().expect("no test panics holding it");
        if ahead.byte.is_some() {
            return Poll::Ready(Ok(()));
        }
        let mut one = [0u8; 1];
        let mut rb = ReadBuf::new(&mut one);
        ready!(Pin::new(&mut ahead.stream).poll_read(cx, &mut rb))?;
        // Nothing read means EOF: that is readable too, the next read says so.
        ahead.byte = rb.filled().first().copied();
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Mem {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let ahead = self.ahead();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let Some(byte) = ahead.byte.take() else {
            let before = buf.filled().len();
            ready!(Pin::new(&mut ahead.stream).poll_read(cx, buf))?;
            return match ahead.eof_as {
                Some(kind) if buf.filled().len() == before => Poll::Ready(Err(kind.into())),
                _ => Poll::Ready(Ok(())),
            };
        };
        buf.put_slice(&[byte]);
        // Whatever else is already there comes along, as from a socket, so
        // a frame written at once is read at once. A pipe never fails a
        // read, and a Pending here only leaves a waker behind.
        let _ = Pin::new(&mut ahead.stream).poll_read(cx, buf);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Mem {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let ahead = self.ahead();
        match ahead.held.as_mut() {
            Some(held) => {
                held.extend_from_slice(buf);
                Poll::Ready(Ok(buf.len()))
            }
            None => Pin::new(&mut ahead.stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let ahead = self.ahead();
        ready!(ahead.poll_release(cx))?;
        Pin::new(&mut ahead.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let ahead = self.ahead();
        ready!(ahead.poll_release(cx))?;
        Pin::new(&mut ahead.stream).poll_shutdown(cx)
    }
}

// === frames, built and read by hand ===

const FIN: u8 = 0x80;
const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The key test clients mask with: not zero, so an unmasked payload can
/// never pass for a masked one.
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A whole frame with first byte `b0` (FIN and opcode), masked with `key`
/// when given. Payloads up to 65535 bytes.
fn frame(b0: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
    let mask_bit = if key.is_some() { 0x80 } else { 0 };
    let mut f = vec![b0];
    match u8::try_from(payload.len()) {
        Ok(n) if n < 126 => f.push(mask_bit | n),
        _ => {
            let n = u16::try_from(payload.len()).expect("test payloads fit 16 bits");
            f.push(mask_bit | 126);
            f.extend_from_slice(&n.to_be_bytes());
        }
    }
    match key {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// A frame as a client sends it: masked.
fn from_client(b0: u8, payload: &[u8]) -> Vec<u8> {
    frame(b0, payload, Some(KEY))
}

/// A frame as a backend sends it: unmasked.
fn from_backend(b0: u8, payload: &[u8]) -> Vec<u8> {
    frame(b0, payload, None)
}

fn close_payload(code: u16) -> Vec<u8> {
    code.to_be_bytes().to_vec()
}

/// A payload whose bytes differ from their neighbours, so a shifted or
/// repeated byte shows.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// One frame as a peer decoded it, payload unmasked.
#[derive(Debug, PartialEq)]
struct Frame {
    b0: u8,
    masked: bool,
    payload: Vec<u8>,
}

impl Frame {
    /// Panics unless this is a Close with `code` and `reason`, masked
    /// exactly when `masked`.
    fn assert_close(&self, masked: bool, code: u16, reason: &str) {
        assert_eq!(self.b0, FIN | CLOSE, "not a Close: {self:?}");
        assert_eq!(self.masked, masked, "masking of {self:?}");
        assert!(self.payload.len() >= 2, "no code in {self:?}");
        assert_eq!(u16::from_be_bytes([self.payload[0], self.payload[1]]), code);
        assert_eq!(&self.payload[2..], reason.as_bytes());
    }
}

/// Splits `bytes` into whole frames; panics on a partial one: no peer
/// may ever be left with half a frame.
fn decode(mut bytes: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 2, "partial frame: {bytes:?}");
        let masked = bytes[1] & 0x80 != 0;
        let (len, mut at) = match bytes[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 => panic!("no test sends 64-bit lengths"),
            n => (usize::from(n), 2),
        };
        let key = masked.then(|| {
            at += 4;
            [bytes[at - 4], bytes[at - 3], bytes[at - 2], bytes[at - 1]]
        });
        assert!(bytes.len() >= at + len, "partial frame: {bytes:?}");
        let payload = bytes[at..at + len]
            .iter()
            .enumerate()
            .map(|(i, b)| key.map_or(*b, |k| b ^ k[i % 4]))
            .collect();
        out.push(Frame {
            b0: bytes[0],
            masked,
            payload,
        });
        bytes = &bytes[at + len..];
    }
    out
}

// === the harness ===

/// Far longer than anything here takes; only a broken tunnel hits it.
const PATIENCE: Duration = Duration::from_secs(30);

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Everything `peer` receives until EOF.
async fn read_all(peer: &mut DuplexStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    within(what, peer.read_to_end(&mut got))
        .await
        .expect("pipes never fail a read");
    got
}

/// Exactly `n` bytes from `peer`.
async fn read_n(peer: &mut DuplexStream, n: usize, what: &str) -> Vec<u8> {
    let mut got = vec![0; n];
    within(what, peer.read_exact(&mut got))
        .await
        .expect("the tunnel passes them");
    got
}

/// A fresh tunnel's live stats, from the registry as the proxy gets them,
/// so that `drain` reaches them the way the control path's drain does.
fn stats(drain: &CancellationToken) -> Arc<ConnStats> {
    let addr: SocketAddr = "127.0.0.1:9".parse().expect("literal address");
    let registry = Arc::new(Registry::default());
    let guard = registry.open(
        ConnInfo {
            client: addr,
            listener: "l".into(),
            route: "r".into(),
            upstream: "u".into(),
            backend: addr,
            server: Arc::new(Server::new(addr, 1)),
            path: "/".into(),
        },
        drain,
    );
    guard.stats.clone()
}

/// How a test's tunnel starts.
struct Setup {
    client_leftover: Bytes,
    backend_leftover: Bytes,
    /// Capacity of the pipe from the tunnel to the backend: small makes
    /// writes toward the backend stall until it reads.
    backend_pipe: usize,
    timeouts: TunnelTimeouts,
    /// A close ordered before the tunnel's first poll.
    order: Option<CloseOrder>,
    /// What the client's stream says instead of EOF (see `Ahead::eof_as`).
    client_eof_as: Option<io::ErrorKind>,
    /// Both of the tunnel's streams hold writes until flushed.
    buffered: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            client_leftover: Bytes::new(),
            backend_leftover: Bytes::new(),
            backend_pipe: 64 * 1024,
            timeouts: TunnelTimeouts {
                half_close: Duration::from_secs(3600),
                close: Duration::from_secs(3600),
            },
            order: None,
            client_eof_as: None,
            buffered: false,
        }
    }
}

/// A running tunnel and the peers' ends of its pipes.
struct Tunnel {
    /// The WebSocket client's end.
    client: DuplexStream,
    /// The backend's end.
    backend: DuplexStream,
    stats: Arc<ConnStats>,
    /// The drain token the tunnel's close control descends from.
    drain: CancellationToken,
    /// The hard shutdown.
    shutdown: CancellationToken,
    task: JoinHandle<TunnelOutcome>,
}

impl Setup {
    fn start(self) -> Tunnel {
        let Setup {
            client_leftover,
            backend_leftover,
            backend_pipe,
            timeouts,
            order,
            client_eof_as,
            buffered,
        } = self;
        let (client, client_side) = tokio::io::duplex(64 * 1024);
        let (backend, backend_side) = tokio::io::duplex(backend_pipe);
        let drain = CancellationToken::new();
        let shutdown = CancellationToken::new();
        let stats = stats(&drain);
        if let Some(order) = order {
            stats.close.request(order);
        }
        let task = tokio::spawn({
            let (stats, shutdown) = (stats.clone(), shutdown.clone());
            async move {
                super::run(
                    Mem::new(client_side)
                        .eof_as(client_eof_as)
                        .buffered(buffered),
                    client_leftover,
                    Mem::new(backend_side).buffered(buffered),
                    backend_leftover,
                    &stats,
                    timeouts,
                    &shutdown,
                )
                .await
            }
        });
        Tunnel {
            client,
            backend,
            stats,
            drain,
            shutdown,
            task,
        }
    }
}

fn start() -> Tunnel {
    Setup::default().start()
}

impl Tunnel {
    async fn outcome(&mut self) -> TunnelOutcome {
        within("the tunnel to end", &mut self.task)
            .await
            .expect("the tunnel task does not panic")
    }
}

async fn send(peer: &mut DuplexStream, bytes: &[u8]) {
    peer.write_all(bytes).await.expect("the tunnel is reading");
}

fn totals(bytes: usize, frames: u64, messages: u64) -> DirectionTotals {
    DirectionTotals {
        bytes: bytes as u64,
        frames,
        messages,
    }
}

fn order(code: u16, reason: &str) -> CloseOrder {
    CloseOrder {
        code,
        reason: reason.to_string(),
    }
}

// === closing on wsgate's initiative ===

/// How the control path asks a tunnel to close.
#[derive(Clone, Copy, Debug)]
enum Ask {
    /// A drain: the parent token, no order, so 1001 "going away".
    Drain,
    /// An operator's order with its own code and reason.
    Order,
}

impl Ask {
    fn apply(self, t: &Tunnel) -> (u16, &'static str) {
        match self {
            Ask::Drain => {
                t.drain.cancel();
                (1001, "going away")
            }
            Ask::Order => {
                assert!(t.stats.close.request(order(4000, "maintenance")));
                (4000, "maintenance")
            }
        }
    }
}

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

// === a peer's own Close, EOF and framing ===

#[tokio::test]
async fn frames_a_peer_sends_after_its_own_close_are_not_forwarded() {
    for sender in [Side::Client, Side::Backend] {
        let mut t = start();
        let (close, late) = match sender {
            Side::Client => (
                from_client(FIN | CLOSE, &close_payload(1000)),
                from_client(FIN | TEXT, b"late"),
            ),
            _ => (
                from_backend(FIN | CLOSE, &close_payload(1000)),
                from_backend(FIN | TEXT, b"late"),
            ),
        };
        let (from, to) = match sender {
            Side::Client => (&mut t.client, &mut t.backend),
            _ => (&mut t.backend, &mut t.client),
        };
        send(from, &close).await;
        assert_eq!(read_n(to, close.len(), "the Close").await, close);
        send(from, &late).await;
        assert!(
            read_all(to, "the receiver's EOF").await.is_empty(),
            "{sender:?}"
        );
        let out = t.outcome().await;
        assert!(
            matches!(
                out.error,
                Some(TunnelError::Protocol {
                    source: FrameError::FrameAfterClose,
                    ..
                })
            ),
            "{sender:?}: {:?}",
            out.error
        );
        assert_eq!(out.closed_by, sender);
        assert_eq!(out.first_close, Some((sender, Some(1000))));
    }
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
async fn a_framing_violation_ends_the_tunnel_and_the_bad_frame_never_passes_whole() {
    let cases: [(Side, Vec<u8>, FrameError); 6] = [
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
    for (sender, bad, error) in cases {
        let mut t = start();
        // A good frame first, which must pass.
        let good = match sender {
            Side::Client => from_client(FIN | TEXT, b"ok"),
            _ => from_backend(FIN | TEXT, b"ok"),
        };
        let (from, to) = match sender {
            Side::Client => (&mut t.client, &mut t.backend),
            _ => (&mut t.backend, &mut t.client),
        };
        send(from, &good).await;
        assert_eq!(read_n(to, good.len(), "the good frame").await, good);
        send(from, &bad).await;
        let got = read_all(to, "the receiver's EOF").await;
        assert!(
            got.len() < bad.len() && bad.starts_with(&got),
            "{error:?}: {got:?}"
        );
        let out = t.outcome().await;
        assert!(
            matches!(out.error, Some(TunnelError::Protocol { source, .. }) if source == error),
            "{error:?}: {:?}",
            out.error
        );
        assert_eq!(out.closed_by, sender, "{error:?}");
    }
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

// === what passes, and what is counted ===

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

// === one direction's buffer ===

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
