//! Many tunnels at once through one gateway: a thousand clients hold their
//! tunnels open together, each echoes one message and closes, and the
//! registry and the tunnel gauge return to zero.

mod common;

use std::sync::Arc;

use common::*;
use tokio::sync::{Barrier, Semaphore};

const TUNNELS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_tunnels_each_echo_and_close_and_nothing_is_left() {
    let echo = echo_backend().await;
    let gw = Arc::new(TestGateway::start(&simple_config(&[echo])).await);
    let addr = gw.addr("public");
    // All tunnels are open at the same moment; connecting is paced so the
    // listen backlog never overflows, which only slows a test down.
    let all_open = Arc::new(Barrier::new(TUNNELS + 1));
    let connecting = Arc::new(Semaphore::new(64));
    let mut clients = Vec::new();
    for i in 0..TUNNELS {
        let (all_open, connecting) = (all_open.clone(), connecting.clone());
        clients.push(tokio::spawn(async move {
            let permit = connecting.acquire_owned().await.expect("semaphore");
            let mut ws = ws_connect(addr, &format!("/ws/{i}")).await;
            drop(permit);
            all_open.wait().await;
            echo_once(&mut ws, &format!("message {i}")).await;
            ws.close(None).await.expect("close");
            finish(ws).await;
        }));
    }
    // Every client holds its tunnel open at the barrier until this task
    // joins it: count them first. Counting after the barrier raced the
    // clients, which close as soon as it releases them, so the registry
    // could be below a thousand before it was ever looked at.
    gw.wait_live(TUNNELS).await;
    within("every client to open its tunnel", all_open.wait()).await;
    for c in clients {
        within("a client to finish", c).await.expect("client task");
    }
    gw.wait_idle().await;
    let metrics = gw.gateway.shared().metrics.encode().expect("metrics");
    let gauge: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("wsgate_tunnels_active"))
        .collect();
    assert!(!gauge.is_empty(), "{metrics}");
    assert!(
        gauge.iter().all(|l| l.ends_with(" 0")),
        "the tunnel gauge did not return to zero: {gauge:?}"
    );
    let opened: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("wsgate_tunnels_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(opened, TUNNELS as f64, "{metrics}");
}
