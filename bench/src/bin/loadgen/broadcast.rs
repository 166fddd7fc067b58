//! `broadcast`: clients on the backend's `/broadcast` path, which sends
//! every client a sequence number and its wall-clock send time at a fixed
//! interval. Delivery latency is the wall clock at arrival minus that time
//! (one machine, one clock); a message lost is a sequence number inside the
//! window that some client did not receive.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use serde_json::{json, Value};
use wsgate_bench::{histogram, record, summary, Target};

use crate::echo::next_data;
use crate::{merge, open_many, Args, Window};

pub(crate) async fn run(args: &Args, target: Arc<Target>) -> anyhow::Result<Value> {
    let (conns, failed) = open_many(&target, args.conns, 64).await;
    if conns.is_empty() {
        bail!("no connection opened ({failed} failed)");
    }
    let start_at = Instant::now() + args.warmup();
    let end_at = start_at + args.duration();
    let mut set = tokio::task::JoinSet::new();
    for mut ws in conns {
        set.spawn(async move {
            let mut h = histogram();
            let mut seqs = Vec::new();
            loop {
                let next = tokio::time::timeout_at(end_at.into(), next_data(&mut ws));
                let Ok(Some(b)) = next.await else { break };
                let now = Instant::now();
                if now < start_at || b.len() < 16 {
                    continue;
                }
                let seq = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
                let sent = u64::from_le_bytes(b[8..16].try_into().unwrap_or_default());
                let wall = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                record(&mut h, Duration::from_nanos(wall.saturating_sub(sent)));
                seqs.push(seq);
            }
            (h, seqs)
        });
    }
    tokio::time::sleep_until(start_at.into()).await;
    let window = Window::open(args.pid);
    let mut h = histogram();
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok((hh, seqs)) = r {
            let _ = h.add(&hh);
            all.push(seqs);
        }
    }
    let delivered: usize = all.iter().map(Vec::len).sum();
    let (_, cpu) = window.close(delivered as f64, "cpu_us_per_msg", 1e6);
    // The first and last sequence numbers seen may straddle the window's
    // edges: only those strictly between them are counted as expected.
    let lo = all.iter().flatten().min().copied().unwrap_or(0);
    let hi = all.iter().flatten().max().copied().unwrap_or(0);
    let expected_each = hi.saturating_sub(lo).saturating_sub(1);
    let inside: u64 = all
        .iter()
        .map(|s| s.iter().filter(|&&x| x > lo && x < hi).count() as u64)
        .sum();
    let expected = expected_each * all.len() as u64;
    Ok(merge(
        json!({
            "open_failed": failed,
            "clients": all.len(),
            "delivered": delivered,
            "msgs_per_s": delivered as f64 / args.duration().as_secs_f64(),
            "expected": expected,
            "lost": expected.saturating_sub(inside),
            "latency": summary(&h),
        }),
        cpu,
    ))
}
