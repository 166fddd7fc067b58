//! Closed-loop scenarios over connections opened before the window:
//! `echo-closed` (each connection sends its next message when the last one
//! is back: messages per second, round trips, and how evenly the connections
//! were served) and `throughput` (large messages, a few in flight per
//! connection: megabytes per second echoed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use wsgate_bench::{histogram, record, summary, Target};

use crate::{merge, open_many, Args, Window};

pub(crate) async fn closed(args: &Args, target: Arc<Target>) -> anyhow::Result<Value> {
    let (conns, failed) = open_many(&target, args.conns, 64).await;
    if conns.is_empty() {
        bail!("no connection opened ({failed} failed)");
    }
    let start_at = Instant::now() + args.warmup();
    let end_at = start_at + args.duration();
    let payload = Bytes::from(vec![b'x'; args.size]);
    let mut set = tokio::task::JoinSet::new();
    for mut ws in conns {
        let payload = payload.clone();
        set.spawn(async move {
            let mut h = histogram();
            let mut n = 0u64;
            let mut errors = 0u64;
            while Instant::now() < end_at {
                let t0 = Instant::now();
                if ws.send(Message::Binary(payload.clone())).await.is_err() {
                    errors += 1;
                    break;
                }
                match tokio::time::timeout(Duration::from_secs(10), next_data(&mut ws)).await {
                    Ok(Some(_)) => {}
                    _ => {
                        errors += 1;
                        break;
                    }
                }
                let t1 = Instant::now();
                if t0 >= start_at && t1 <= end_at {
                    record(&mut h, t1 - t0);
                    n += 1;
                }
            }
            (h, n, errors)
        });
    }
    tokio::time::sleep_until(start_at.into()).await;
    let window = Window::open(args.pid);
    tokio::time::sleep_until(end_at.into()).await;
    let ended = window.end();
    let mut h = histogram();
    let mut per_conn = Vec::new();
    let mut errors = 0;
    while let Some(r) = set.join_next().await {
        if let Ok((hh, n, e)) = r {
            let _ = h.add(&hh);
            per_conn.push(n);
            errors += e;
        }
    }
    let total: u64 = per_conn.iter().sum();
    let (elapsed, cpu) = ended.report(total as f64, "cpu_us_per_msg", 1e6);
    Ok(merge(
        json!({
            "opened": per_conn.len(),
            "open_failed": failed,
            "errors": errors,
            "messages": total,
            "msgs_per_s": total as f64 / elapsed,
            "rtt": summary(&h),
            "fairness": fairness(&per_conn),
        }),
        cpu,
    ))
}

/// Messages per connection: least, most, how many got none, and Jain's index
/// (1: all equal; 1/n: one connection got everything).
fn fairness(per_conn: &[u64]) -> Value {
    let n = per_conn.len().max(1) as f64;
    let sum: f64 = per_conn.iter().map(|&x| x as f64).sum();
    let sq: f64 = per_conn.iter().map(|&x| (x as f64) * (x as f64)).sum();
    json!({
        "min_msgs": per_conn.iter().min().copied().unwrap_or(0),
        "max_msgs": per_conn.iter().max().copied().unwrap_or(0),
        "starved": per_conn.iter().filter(|&&x| x == 0).count(),
        "jain": if sq > 0.0 { sum * sum / (n * sq) } else { 0.0 },
    })
}

/// The next data message, skipping control frames; `None` at the end of the stream.
pub(crate) async fn next_data<S>(ws: &mut S) -> Option<Bytes>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(m) = ws.next().await {
        match m.ok()? {
            Message::Binary(b) => return Some(b),
            Message::Text(t) => return Some(Bytes::from(t.as_str().to_owned())),
            Message::Close(_) => return None,
            _ => {}
        }
    }
    None
}

pub(crate) async fn throughput(args: &Args, target: Arc<Target>) -> anyhow::Result<Value> {
    let (conns, failed) = open_many(&target, args.conns, 64).await;
    if conns.is_empty() {
        bail!("no connection opened ({failed} failed)");
    }
    let start_at = Instant::now() + args.warmup();
    let end_at = start_at + args.duration();
    let payload = Bytes::from(vec![b'x'; args.size]);
    let bytes = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for ws in conns {
        let (mut sink, mut stream) = ws.split();
        let window = Arc::new(Semaphore::new(args.inflight.max(1)));
        let (payload, w) = (payload.clone(), window.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end_at {
                let Ok(p) = w.acquire().await else { break };
                p.forget();
                if sink.send(Message::Binary(payload.clone())).await.is_err() {
                    break;
                }
            }
        }));
        let bytes = bytes.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(b) = next_data(&mut stream).await {
                let now = Instant::now();
                if now >= start_at && now <= end_at {
                    bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                window.add_permits(1);
            }
        }));
    }
    tokio::time::sleep_until(start_at.into()).await;
    let window = Window::open(args.pid);
    let before = bytes.load(Ordering::Relaxed);
    tokio::time::sleep_until(end_at.into()).await;
    let moved = bytes.load(Ordering::Relaxed) - before;
    let (elapsed, cpu) = window.close(moved as f64 / 1e9, "cpu_ms_per_gb", 1e3);
    for t in tasks {
        t.abort();
    }
    Ok(merge(
        json!({
            "open_failed": failed,
            "message_bytes": args.size,
            "bytes_echoed": moved,
            "mb_per_s": moved as f64 / 1e6 / elapsed,
        }),
        cpu,
    ))
}
