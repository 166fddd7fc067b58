//! `idle`: opens up to `--conns` connections (fewer if this process's file
//! limit is lower, or when the proxy starts refusing), reports how many it
//! reached and the measured process's resident memory grown per connection,
//! then sends one message on every connection and counts the echoes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use wsgate_bench::{proc_sample, raise_fd_limit, Target};

use crate::echo::next_data;
use crate::{Args, Window};

pub(crate) async fn run(args: &Args, target: Arc<Target>) -> anyhow::Result<Value> {
    let limit = raise_fd_limit();
    let want = args.conns.min(limit.saturating_sub(64) as usize);
    // A few connections opened and closed first, so the proxy's one-time
    // setup (lazy statics, TLS contexts, allocator arenas) is not counted.
    drop(crate::open_many(&target, 32, 32).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = args.pid.and_then(|p| proc_sample(p).ok());
    let window = Window::open(args.pid);
    let t0 = Instant::now();
    let mut conns = Vec::with_capacity(want);
    let mut failed = 0;
    // In batches, stopping at the first batch with failures: past the proxy's
    // limit every further attempt would fail too.
    while conns.len() < want {
        let batch = (want - conns.len()).min(500);
        let (mut got, f) = crate::open_many(&target, batch, 100).await;
        conns.append(&mut got);
        failed += f;
        if f > 0 {
            break;
        }
    }
    let open_s = t0.elapsed().as_secs_f64();
    // Let the proxy finish what each handshake left (freed buffers, timers).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = args.pid.and_then(|p| proc_sample(p).ok());
    let reached = conns.len();
    let (_, cpu) = window.close(reached as f64, "cpu_us_per_handshake", 1e6);
    let per_conn = match (before, after) {
        (Some(b), Some(a)) if reached > 0 => {
            json!((a.rss as f64 - b.rss as f64) / reached as f64)
        }
        _ => Value::Null,
    };
    let answered = prove(conns).await;
    Ok(json!({
        "fd_limit": limit,
        "wanted": want,
        "reached": reached,
        "open_failed": failed,
        "open_s": open_s,
        "answered": answered,
        "rss_before": before.map(|s| s.rss),
        "rss_after": after.map(|s| s.rss),
        "rss_bytes_per_conn": per_conn,
        "open_cpu": cpu,
    }))
}

/// Sends one message on every connection and counts those echoed within 20 s.
async fn prove(conns: Vec<tokio_tungstenite::WebSocketStream<wsgate_bench::Stream>>) -> usize {
    let mut set = tokio::task::JoinSet::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(500));
    for mut ws in conns {
        let sem = sem.clone();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let ping = Bytes::from_static(b"still there?");
            let r = tokio::time::timeout(Duration::from_secs(20), async {
                ws.send(Message::Binary(ping.clone())).await.ok()?;
                next_data(&mut ws).await
            })
            .await;
            // Kept open until every connection was asked, so none is freed early.
            (matches!(r, Ok(Some(b)) if b == ping), ws)
        });
    }
    let mut answered = 0;
    let mut keep = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok((ok, ws)) = r {
            answered += usize::from(ok);
            keep.push(ws);
        }
    }
    answered
}
