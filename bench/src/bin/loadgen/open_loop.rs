//! `echo-open`: `--rate` messages per second spread evenly over the
//! connections, each sent at its intended time whether or not earlier ones
//! came back (open loop). The latency counts from the intended send time, so
//! a stall delays every message queued behind it and shows in the figures
//! (no coordinated omission). A thread of its own paces the sends: its sleep
//! is precise to tens of microseconds, where tokio's timer ticks in whole
//! milliseconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use wsgate_bench::{histogram, record, summary, Target};

use crate::echo::next_data;
use crate::{merge, open_many, Args, Window};

pub(crate) async fn run(args: &Args, target: Arc<Target>) -> anyhow::Result<Value> {
    let (conns, failed) = open_many(&target, args.conns, 64).await;
    if conns.is_empty() {
        bail!("no connection opened ({failed} failed)");
    }
    let base = Instant::now();
    let start_at = base + args.warmup();
    let end_at = start_at + args.duration();
    let size = args.size.max(8);
    let sent = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::with_capacity(conns.len());
    let mut readers = tokio::task::JoinSet::new();
    let mut writers = Vec::new();
    for ws in conns {
        let (mut sink, mut stream) = futures_util::StreamExt::split(ws);
        let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
        senders.push(tx);
        let sent = sent.clone();
        writers.push(tokio::spawn(async move {
            let mut buf = vec![b'x'; size];
            while let Some(intended) = rx.recv().await {
                let offset = (intended - base).as_nanos() as u64;
                buf[..8].copy_from_slice(&offset.to_le_bytes());
                if sink
                    .send(Message::Binary(Bytes::copy_from_slice(&buf)))
                    .await
                    .is_err()
                {
                    break;
                }
                if intended >= start_at && intended < end_at {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        readers.spawn(async move {
            let mut h = histogram();
            let mut got = 0u64;
            // Past the window, wait a bounded grace for the last answers.
            let deadline = end_at + Duration::from_secs(2);
            loop {
                let next = tokio::time::timeout_at(deadline.into(), next_data(&mut stream));
                let Ok(Some(b)) = next.await else { break };
                let now = Instant::now();
                let Some(offset) = b.get(..8).and_then(|s| s.try_into().ok()) else {
                    continue;
                };
                let intended = base + Duration::from_nanos(u64::from_le_bytes(offset));
                if intended >= start_at && intended < end_at {
                    record(&mut h, now.saturating_duration_since(intended));
                    got += 1;
                }
                if intended >= end_at {
                    break;
                }
            }
            (h, got)
        });
    }
    let rate = args.rate.max(1.0);
    let pacer = std::thread::spawn(move || pace(senders, rate, base, end_at));
    tokio::time::sleep_until(start_at.into()).await;
    let window = Window::open(args.pid);
    tokio::time::sleep_until(end_at.into()).await;
    let ended = window.end();
    let mut h = histogram();
    let mut received = 0;
    while let Some(r) = readers.join_next().await {
        if let Ok((hh, got)) = r {
            let _ = h.add(&hh);
            received += got;
        }
    }
    let (_, cpu) = ended.report(received as f64, "cpu_us_per_msg", 1e6);
    let behind = pacer.join().unwrap_or(0);
    for w in writers {
        w.abort();
    }
    let sent = sent.load(Ordering::Relaxed);
    Ok(merge(
        json!({
            "open_failed": failed,
            "rate": rate,
            "sent": sent,
            "received": received,
            "lost": sent.saturating_sub(received),
            "msgs_per_s": received as f64 / args.duration().as_secs_f64(),
            "pacer_late_over_1ms": behind,
            "rtt": summary(&h),
        }),
        cpu,
    ))
}

/// Hands message k to connection k mod n at `base + k / rate`, until
/// `end_at` plus one message per connection (so every reader sees the end);
/// returns how many were handed over more than a millisecond late.
fn pace(
    senders: Vec<mpsc::UnboundedSender<Instant>>,
    rate: f64,
    base: Instant,
    end_at: Instant,
) -> u64 {
    let n = senders.len() as u64;
    let mut late = 0;
    let mut k: u64 = 0;
    loop {
        let intended = base + Duration::from_secs_f64(k as f64 / rate);
        if intended >= end_at && k % n == 0 {
            // One message past the window on every connection, then stop.
            for (i, s) in senders.iter().enumerate() {
                let _ = s.send(intended + Duration::from_nanos(i as u64));
            }
            return late;
        }
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        } else if now - intended > Duration::from_millis(1) {
            late += 1;
        }
        let _ = senders[(k % n) as usize].send(intended);
        k += 1;
    }
}
