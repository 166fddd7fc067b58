//! `broadcast`: clients on the backend's `/broadcast` path, which sends
//! every client a sequence number and its wall-clock send time at a fixed
//! interval. The messages measured are those the backend sent inside the
//! window, received up to a grace period after it. Delivery latency is the
//! wall clock at arrival minus the send time (one machine, one clock); a
//! message lost is one of those that some client did not receive (the
//! backend drops messages for a client whose connection stays full). The
//! proxy's CPU is divided by the messages received inside the window.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use serde_json::{json, Value};
use wsgate_bench::{histogram, record, summary, Target};

use crate::echo::next_data;
use crate::{merge, open_many, Args, Window};

/// How long after the window the clients keep reading, for late deliveries.
const GRACE: Duration = Duration::from_secs(2);

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub(crate) async fn run(args: &Args, target: Arc<Target>) -> anyhow::Result<Value> {
    let (conns, failed) = open_many(&target, args.conns, 64).await;
    if conns.is_empty() {
        bail!("no connection opened ({failed} failed)");
    }
    let start_at = Instant::now() + args.warmup();
    let end_at = start_at + args.duration();
    // The same window on the wall clock the backend stamps its messages with.
    let wall_start = wall_ns() + args.warmup().as_nanos() as u64;
    let wall_end = wall_start + args.duration().as_nanos() as u64;
    let mut set = tokio::task::JoinSet::new();
    for mut ws in conns {
        set.spawn(async move {
            let mut h = histogram();
            let mut seqs = Vec::new();
            let mut in_window = 0u64;
            loop {
                let next = tokio::time::timeout_at((end_at + GRACE).into(), next_data(&mut ws));
                let Ok(Some(b)) = next.await else { break };
                let now = Instant::now();
                if now >= start_at && now < end_at {
                    in_window += 1;
                }
                let (Some(seq), Some(sent)) = (le_u64(&b, 0), le_u64(&b, 8)) else {
                    continue;
                };
                if sent >= wall_start && sent < wall_end {
                    record(&mut h, Duration::from_nanos(wall_ns().saturating_sub(sent)));
                    seqs.push(seq);
                }
            }
            (h, seqs, in_window)
        });
    }
    tokio::time::sleep_until(start_at.into()).await;
    let window = Window::open(args.pid);
    tokio::time::sleep_until(end_at.into()).await;
    let ended = window.end();
    let mut h = histogram();
    let mut all = Vec::new();
    let mut received = 0;
    while let Some(r) = set.join_next().await {
        if let Ok((hh, seqs, n)) = r {
            let _ = h.add(&hh);
            all.push(seqs);
            received += n;
        }
    }
    let (_, cpu) = ended.report(received as f64, "cpu_us_per_msg", 1e6);
    let lo = all.iter().flatten().min().copied().unwrap_or(0);
    let hi = all.iter().flatten().max().copied().unwrap_or(0);
    let sent = if all.iter().all(Vec::is_empty) {
        0
    } else {
        hi - lo + 1
    };
    let delivered: u64 = all.iter().map(|s| s.len() as u64).sum();
    let expected = sent * all.len() as u64;
    Ok(merge(
        json!({
            "open_failed": failed,
            "clients": all.len(),
            "sent_in_window": sent,
            "expected": expected,
            "delivered": delivered,
            "lost": expected.saturating_sub(delivered),
            "msgs_per_s": received as f64 / args.duration().as_secs_f64(),
            "latency": summary(&h),
        }),
        cpu,
    ))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}
