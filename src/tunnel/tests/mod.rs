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
//!
//! Here: frames built and decoded by hand, and the harness that starts a
//! tunnel between two peers. The tests are in `close.rs` (closing on
//! wsgate's initiative), `flow.rs` (what passes, what ends a tunnel, what
//! is counted), `buffer.rs` (one direction's copy buffer), `keepalive.rs`
//! (the routes' idle, ping and age policies), `rate.rs` (the client's
//! message rate) and `stall.rs` (a side that stops reading); the
//! in-memory stream is in `mem.rs`.

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
use super::{FramePolicy, Splice, TunnelError, TunnelOutcome, TunnelTimeouts};
use crate::observe::access::{CloseOrder, DirectionTotals, Side};
use crate::observe::registry::{ConnInfo, ConnStats, Registry, RegistryGuard};

mod buffer;
mod close;
mod flow;
mod keepalive;
mod mem;
mod rate;
mod stall;

use mem::Mem;

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

/// A fresh tunnel's entry in a registry that obeys `drain` and
/// `shutdown`, as the gateway's does, so that they reach the tunnel the
/// way wsgate's own do. Listed for as long as the guard lives.
fn registered(drain: &CancellationToken, shutdown: &CancellationToken) -> RegistryGuard {
    let addr: SocketAddr = "127.0.0.1:9".parse().expect("literal address");
    let registry = Arc::new(Registry::default());
    let done = CancellationToken::new();
    tokio::spawn(registry.clone().obey(drain.clone(), shutdown.clone(), done));
    registry.open(ConnInfo::test(addr), drain, shutdown)
}

/// Live stats for a test that only counts what a direction passes.
fn stats() -> Arc<ConnStats> {
    let never = CancellationToken::new();
    registered(&never, &never).stats.clone()
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
    /// How frames are judged.
    policy: FramePolicy,
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
            policy: FramePolicy::default(),
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
    /// wsgate's drain, passed on to the tunnel by its registry.
    drain: CancellationToken,
    /// The hard shutdown, passed on the same way.
    shutdown: CancellationToken,
    task: JoinHandle<TunnelOutcome>,
    /// Keeps the tunnel listed, where the drain and shutdown find it.
    _listed: RegistryGuard,
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
            policy,
        } = self;
        let (client, client_side) = tokio::io::duplex(64 * 1024);
        let (backend, backend_side) = tokio::io::duplex(backend_pipe);
        let drain = CancellationToken::new();
        let shutdown = CancellationToken::new();
        let listed = registered(&drain, &shutdown);
        let stats = listed.stats.clone();
        if let Some(order) = order {
            stats.close.request(order);
        }
        let task = tokio::spawn({
            let stats = stats.clone();
            async move {
                super::run(
                    Mem::new(client_side)
                        .eof_as(client_eof_as)
                        .buffered(buffered),
                    client_leftover,
                    Mem::new(backend_side).buffered(buffered),
                    backend_leftover,
                    stats,
                    timeouts,
                    &policy,
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
            _listed: listed,
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
        discarded_frames: 0,
    }
}

fn order(code: u16, reason: &str) -> CloseOrder {
    CloseOrder {
        code,
        reason: reason.to_string(),
    }
}

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
