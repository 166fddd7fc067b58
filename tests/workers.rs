//! `runtime.workers`: client connections are served by that many threads,
//! each with its own event loop, every one of them accepting; the count is
//! fixed at start, so a reload that changes it is refused.

mod common;
#[path = "support/process.rs"]
mod process;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use wsgate::control::reload::ReloadError;

fn config(echo: SocketAddr, workers: usize) -> String {
    format!(
        "[runtime]\nworkers = {workers}\n\
         [admin]\nbind = \"127.0.0.1:0\"\n\
         [[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\
         [[routes]]\nupstream = \"echo\"\n\
         [upstreams.echo]\nservers = [\"{echo}\"]\n"
    )
}

/// The names of the process's threads that serve connections.
fn worker_threads(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .filter(|n| n.starts_with("wsgate-worker-"))
        .collect();
    names.sort();
    names
}

/// `wsgate_worker_connections_accepted_total` by worker.
fn accepted(metrics: &str) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("wsgate_worker_connections_accepted_total{worker=\""))
        .filter_map(|rest| {
            let (worker, value) = rest.split_once("\"} ")?;
            Some((worker.to_string(), value.trim().parse().ok()?))
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_serve_every_connection_and_count_what_each_accepted() {
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wsgate.toml");
    std::fs::write(&path, config(echo, 3)).expect("write");
    let wsgate =
        process::Wsgate::activate(&["public=127.0.0.1:0", "admin=127.0.0.1:0"], &path, &[]).await;
    let (public, admin) = (wsgate.addr("public"), wsgate.addr("admin"));
    within("/readyz 200", async {
        while http_text(admin, "GET", "/readyz").await.0 != 200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        worker_threads(wsgate.pid()),
        ["wsgate-worker-0", "wsgate-worker-1", "wsgate-worker-2"]
    );

    // Open together, so that every worker is offered some.
    let mut tunnels = Vec::new();
    for _ in 0..60 {
        tunnels.push(ws_connect(public, "/ws").await);
    }
    for (i, ws) in tunnels.iter_mut().enumerate() {
        echo_once(ws, &format!("message {i}")).await;
    }
    let (status, body) = http_text(admin, "GET", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let counts = accepted(&body);
    let workers: Vec<&str> = counts.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(workers, ["0", "1", "2"], "{body}");
    assert_eq!(
        counts.iter().map(|(_, n)| n).sum::<u64>(),
        60,
        "every client connection is accepted by exactly one worker: {counts:?}"
    );
    for mut ws in tunnels {
        ws.close(None).await.expect("close");
        finish(ws).await;
    }
}

#[tokio::test]
async fn a_reload_changing_the_worker_count_is_refused_and_the_old_config_serves_on() {
    let echo = echo_backend().await;
    let gw = TestGateway::start(&config(echo, 2)).await;
    let mut ws = ws_connect(gw.addr("public"), "/ws").await;
    std::fs::write(gw.dir.path().join("wsgate.toml"), config(echo, 3)).expect("write");
    match gw.gateway.reload().await {
        Err(ReloadError::WorkersChanged) => {}
        other => panic!("expected the worker change to be refused, got {other:?}"),
    }
    echo_once(&mut ws, "still served").await;
    let mut fresh = ws_connect(gw.addr("public"), "/ws").await;
    echo_once(&mut fresh, "and new ones too").await;
    // The same count with another change goes through.
    let same = config(echo, 2).replace("[[routes]]\n", "[[routes]]\npath_prefix = \"/\"\n");
    std::fs::write(gw.dir.path().join("wsgate.toml"), same).expect("write");
    gw.gateway.reload().await.expect("same worker count");
    for mut ws in [ws, fresh] {
        ws.close(None).await.expect("close");
        finish(ws).await;
    }
}
