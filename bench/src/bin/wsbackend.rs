//! The benchmark's backend: plain WebSocket only (the proxy under test
//! terminates TLS). `/broadcast` clients receive a 16-byte message every
//! `--interval-ms`: a sequence number and the wall-clock time it was sent
//! (both little-endian u64, nanoseconds since the Unix epoch), so the load
//! generator on the same machine can tell the delivery latency and the
//! messages lost. Any other path echoes every data message back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message};

#[derive(Parser)]
#[command(about = "WebSocket echo and broadcast backend for bench/run")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Milliseconds between two broadcast messages.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// Tokio worker threads (1: a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Bytes read from a socket at once; small keeps idle connections cheap.
    #[arg(long, default_value_t = 16384)]
    read_buffer: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    wsgate_bench::raise_fd_limit();
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let (tx, _) = broadcast::channel::<Bytes>(64);
    let subscribers = Arc::new(AtomicUsize::new(0));
    tokio::spawn(ticker(
        tx.clone(),
        subscribers.clone(),
        Duration::from_millis(args.interval_ms.max(1)),
    ));
    let config = WebSocketConfig::default()
        .read_buffer_size(args.read_buffer)
        .write_buffer_size(0)
        .max_message_size(Some(16 << 20));
    eprintln!("wsbackend: listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            // Out of file descriptors or similar: pause instead of spinning.
            Err(e) => {
                eprintln!("wsbackend: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let tx = tx.clone();
        let subscribers = subscribers.clone();
        tokio::spawn(async move {
            let _ = connection(tcp, config, tx, subscribers).await;
        });
    }
}

/// Sends the next sequence number and the time to every `/broadcast` client.
async fn ticker(tx: broadcast::Sender<Bytes>, subscribers: Arc<AtomicUsize>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    loop {
        tick.tick().await;
        if subscribers.load(Ordering::Relaxed) == 0 {
            continue;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut msg = Vec::with_capacity(16);
        msg.extend_from_slice(&seq.to_le_bytes());
        msg.extend_from_slice(&now.to_le_bytes());
        let _ = tx.send(Bytes::from(msg));
        seq += 1;
    }
}

// The handshake callback's error type is tungstenite's, whatever its size.
#[allow(clippy::result_large_err)]
async fn connection(
    tcp: TcpStream,
    config: WebSocketConfig,
    tx: broadcast::Sender<Bytes>,
    subscribers: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    let mut path = String::new();
    let callback = |req: &Request, resp: Response| {
        path = req.uri().path().to_string();
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config)).await?;
    if path == "/broadcast" {
        subscribers.fetch_add(1, Ordering::Relaxed);
        let r = broadcast_to(ws, tx.subscribe()).await;
        subscribers.fetch_sub(1, Ordering::Relaxed);
        return r;
    }
    let (mut sink, mut stream) = ws.split();
    while let Some(msg) = stream.next().await {
        match msg? {
            m @ (Message::Binary(_) | Message::Text(_)) => sink.send(m).await?,
            // tungstenite answers pings and closes by itself on the next write or flush.
            Message::Close(_) => {
                let _ = sink.close().await;
                break;
            }
            _ => {}
        }
    }
    Ok(())
}

async fn broadcast_to<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    mut rx: broadcast::Receiver<Bytes>,
) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Ok(b) => sink.send(Message::Binary(b)).await?,
                // A slow client misses messages: the load generator counts them as lost.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            },
            m = stream.next() => match m {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = sink.close().await;
    Ok(())
}
