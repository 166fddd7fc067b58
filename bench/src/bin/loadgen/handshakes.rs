//! `handshakes`: `--conns` clients, each in a loop: connect (and TLS), upgrade,
//! send a Close, wait for the server's Close and the end of the stream. The
//! latency is from the connect to the 101 (TLS included); the proxy's CPU is
//! divided by the handshakes completed, their close included.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use wsgate_bench::{histogram, record, summary, Target};

use crate::{merge, Args, Window};

pub(crate) async fn run(args: &Args, target: Arc<Target>) -> anyhow::Result<Value> {
    // A short warm-up, unmeasured, so lazy setup in every peer is paid before the window.
    let warm_until = Instant::now() + args.warmup();
    let _ = drive(&target, args.conns.min(16), warm_until, u64::MAX).await;
    let window = Window::open(args.pid);
    let until = Instant::now() + args.duration();
    let (h, ok, errors) = drive(&target, args.conns, until, args.count).await;
    let (elapsed, cpu) = window.close(ok as f64, "cpu_us_per_handshake", 1e6);
    Ok(merge(
        json!({
            "handshakes": ok,
            "errors": errors,
            "handshakes_per_s": ok as f64 / elapsed,
            "latency": summary(&h),
        }),
        cpu,
    ))
}

async fn drive(
    target: &Arc<Target>,
    conns: usize,
    until: Instant,
    count: u64,
) -> (hdrhistogram::Histogram<u64>, u64, u64) {
    let started = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conns.max(1) {
        let t = target.clone();
        let started = started.clone();
        set.spawn(async move {
            let mut h = histogram();
            let (mut ok, mut errors) = (0u64, 0u64);
            while Instant::now() < until && started.fetch_add(1, Ordering::Relaxed) < count {
                let t0 = Instant::now();
                match tokio::time::timeout(Duration::from_secs(10), t.open()).await {
                    Ok(Ok(mut ws)) => {
                        record(&mut h, t0.elapsed());
                        let closed = tokio::time::timeout(Duration::from_secs(10), async {
                            ws.close(None).await?;
                            // The server's Close answers ours; the end of the stream may follow.
                            while let Some(m) = ws.next().await {
                                if matches!(m?, Message::Close(_)) {
                                    break;
                                }
                            }
                            anyhow::Ok(())
                        })
                        .await;
                        match closed {
                            Ok(Ok(())) => ok += 1,
                            _ => errors += 1,
                        }
                    }
                    _ => {
                        errors += 1;
                        // A refused connect returns at once: do not spin on it.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (h, ok, errors)
        });
    }
    let mut h = histogram();
    let (mut ok, mut errors) = (0, 0);
    while let Some(r) = set.join_next().await {
        if let Ok((hh, o, e)) = r {
            let _ = h.add(&hh);
            ok += o;
            errors += e;
        }
    }
    (h, ok, errors)
}
