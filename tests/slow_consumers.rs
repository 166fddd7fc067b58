//! Slow consumers, over real sockets: a peer that stops reading
//! back-pressures the other side while wsgate's memory for the tunnel stays
//! bounded, and after the route's `write_stall_timeout` without progress
//! the tunnel ends: the side still reading gets Close 1001, the record and
//! `wsgate_tunnels_closed_total` say `write_stall`. A steady echo client
//! beside it loses nothing.
//!
//! The memory test runs wsgate as a child process, so that its resident
//! memory can be read from `/proc`, and pushes 1 GiB through a tunnel
//! whose client has stopped reading, then resumes the client and checks
//! every byte, in order.

mod common;
#[path = "support/process.rs"]
mod process;
#[path = "support/push.rs"]
mod push;

use std::time::{Duration, Instant};

use common::*;
use push::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use wsgate::observe::access::{EndReason, Side};

fn config(backend: std::net::SocketAddr, echo: std::net::SocketAddr, stall: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n\
         [[routes]]\nupstream = \"u\"\nwrite_stall_timeout = \"{stall}\"\n\n\
         [[routes]]\npath_prefix = \"/echo\"\nupstream = \"e\"\n\n\
         [upstreams.u]\nservers = [\"{backend}\"]\n\n[upstreams.e]\nservers = [\"{echo}\"]\n"
    )
}

/// The client stops reading while the backend pushes; past the route's
/// 200 ms `write_stall_timeout` the backend gets Close 1001 (masked) and
/// EOF, the client nothing but a prefix of what the backend sent, the
/// record says `write_stall`, closed by the client, and every count
/// returns to zero. An echo client beside it is served throughout.
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_the_write_stall_timeout() {
    let (addr, mut accepted) = raw_ws_backend(b"").await;
    let gw = TestGateway::start(&config(addr, echo_backend().await, "200ms")).await;
    let mut records = gw.access_log();
    let mut echo = ws_connect(gw.addr("public"), "/echo").await;
    echo_once(&mut echo, "before").await;
    let mut client = raw_client(gw.addr("public")).await;
    let server = within("backend socket", accepted.recv())
        .await
        .expect("accepted");
    let (mut server_rd, server_wr) = server.into_split();
    let (pusher, pushed, stop) = start_push(server_wr, 256, false);
    assert_peer_not_reading(&mut server_rd, true).await;
    echo_once(&mut echo, "during").await;
    assert_nothing_more(&mut server_rd, "EOF at the backend").await;
    let sent = stop_push(pusher, pushed, stop).await;

    let r = next_record(&mut records).await;
    assert_eq!(r.end.reason, EndReason::WriteStall, "{r:?}");
    assert_eq!(r.end.closed_by, Side::Client);
    assert_eq!(r.end.close_code, Some(1001));
    assert_eq!(r.end.close_frame_from, Some(Side::Proxy));

    // The client got what fitted on the way, in order, and then its EOF.
    let mut got = Vec::new();
    within("the client's EOF", client.read_to_end(&mut got))
        .await
        .expect("read");
    assert_prefix_of_pushed(&got, sent, false);

    echo_once(&mut echo, "after").await;
    echo.close(None).await.expect("close");
    finish(echo).await;
    gw.wait_idle().await;
    let (status, metrics) = http_text(gw.admin.expect("[admin]"), "GET", "/metrics").await;
    assert_eq!(status, 200);
    let stalled: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("wsgate_tunnels_closed_total{") && l.contains("write_stall"))
        .collect();
    assert!(
        stalled.len() == 1
            && stalled[0].contains("closed_by=\"client\"")
            && stalled[0].ends_with(" 1"),
        "{stalled:?}"
    );
    let active: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("wsgate_tunnels_active{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(active, 0.0, "{metrics}");
}

/// The other way: the backend stops reading while the client pushes;
/// past the timeout the client gets Close 1001 (unmasked) and EOF, the
/// backend only part of what was sent and no Close, and the record says
/// `write_stall`, closed by the backend.
#[tokio::test]
async fn a_backend_that_stops_reading_is_closed_after_the_write_stall_timeout() {
    let (addr, mut accepted) = raw_ws_backend(b"").await;
    let gw = TestGateway::start(&config(addr, echo_backend().await, "200ms")).await;
    let mut records = gw.access_log();
    let mut echo = ws_connect(gw.addr("public"), "/echo").await;
    let client = raw_client(gw.addr("public")).await;
    let mut server = within("backend socket", accepted.recv())
        .await
        .expect("accepted");
    let (mut client_rd, client_wr) = client.into_split();
    let (pusher, pushed, stop) = start_push(client_wr, 256, true);
    assert_peer_not_reading(&mut client_rd, false).await;
    echo_once(&mut echo, "during").await;
    assert_nothing_more(&mut client_rd, "EOF at the client").await;
    let sent = stop_push(pusher, pushed, stop).await;
    let r = next_record(&mut records).await;
    assert_eq!(r.end.reason, EndReason::WriteStall, "{r:?}");
    assert_eq!(r.end.closed_by, Side::Backend);
    assert_eq!(r.end.close_code, Some(1001));
    let mut got = Vec::new();
    within("the backend's EOF", server.read_to_end(&mut got))
        .await
        .expect("read");
    // A prefix of what the client sent, so no Close of wsgate's among it.
    assert_prefix_of_pushed(&got, sent, true);
    echo.close(None).await.expect("close");
    finish(echo).await;
    gw.wait_idle().await;
}

/// wsgate's resident memory, from `/proc/PID/status`.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// How much wsgate's memory may grow over its baseline while it relays:
/// its own copy buffers are 16 KiB per direction; the rest is allocator slack.
const GROWTH_BOUND: u64 = 4 << 20;

/// Reads `frames` frames of `FRAME` bytes from `client`, checking every
/// word, and samples wsgate's memory every 64 frames; returns the largest sample.
async fn read_and_check(client: &mut TcpStream, frames: u64, pid: u32) -> u64 {
    let mut got = vec![0u8; FRAME];
    let base = base();
    let mut max_rss = 0;
    for n in 0..frames {
        let mut h = [0u8; 10];
        client.read_exact(&mut h).await.expect("a frame header");
        assert_eq!(h, header(), "frame {n}");
        client.read_exact(&mut got).await.expect("a payload");
        assert_eq!(got[..8], n.to_le_bytes(), "frame {n} in its place");
        assert!(got[8..] == base[8..], "frame {n}'s payload differs");
        if n % 64 == 0 {
            max_rss = max_rss.max(rss(pid));
        }
    }
    max_rss
}

/// 1 GiB pushed at a client that has stopped reading: the backend's writes
/// block and wsgate's memory stays within a few MiB of its baseline; once
/// the client reads again, every byte arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_at_a_stopped_reader_keeps_memory_bounded_and_arrives_whole() {
    const FRAMES: u64 = 1024;
    let (addr, mut accepted) = raw_ws_backend(b"").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wsgate.toml");
    std::fs::write(&path, config(addr, echo_backend().await, "10m")).expect("config");
    let mut wsgate =
        process::Wsgate::activate(&["public=127.0.0.1:0", "admin=127.0.0.1:0"], &path, &[]).await;
    wsgate.logged("listening").await;
    let pid = wsgate.pid();
    let mut client = raw_client(wsgate.addr("public")).await;
    let server = within("backend socket", accepted.recv())
        .await
        .expect("accepted");
    let (_server_rd, server_wr) = server.into_split();
    let baseline = rss(pid);

    let started = Instant::now();
    let (pusher, mut pushed, _stop) = start_push(server_wr, FRAMES, false);
    let blocked_at = match tokio::time::timeout(Duration::from_secs(120), pushed.recv()).await {
        Ok(Some(Pushed::Blocked(n))) => n,
        Ok(Some(Pushed::Done(n))) => panic!("all {n} bytes written to a client that reads nothing"),
        _ => panic!("the backend's writes never blocked"),
    };
    let mut blocked_rss = 0;
    for _ in 0..10 {
        blocked_rss = blocked_rss.max(rss(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        blocked_rss <= baseline + GROWTH_BOUND,
        "{blocked_rss} bytes resident with the writer blocked after {blocked_at} bytes, baseline {baseline}"
    );

    let flowing_rss = tokio::time::timeout(
        Duration::from_secs(600),
        read_and_check(&mut client, FRAMES, pid),
    )
    .await
    .expect("1 GiB within 10 minutes");
    let sent = match within("the pusher's total", pushed.recv()).await {
        Some(Pushed::Done(n)) => n,
        _ => panic!("the pusher ended without a total"),
    };
    within("the pusher", pusher).await.expect("no panic");
    assert_eq!(sent, FRAMES * (FRAME as u64 + 10));
    assert!(
        flowing_rss <= baseline + GROWTH_BOUND,
        "{flowing_rss} bytes resident while relaying, baseline {baseline}"
    );
    eprintln!(
        "1 GiB relayed in {:?}; resident: baseline {baseline}, writer blocked (after {blocked_at} bytes) {blocked_rss}, flowing {flowing_rss}",
        started.elapsed()
    );
}
