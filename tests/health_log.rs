//! Each health state change is logged once, with what the probe saw.
//!
//! Alone in its binary: it captures log lines with a subscriber set for
//! its thread, and tracing decides once per call site whether anyone
//! listens, which a test running beside it on another thread could settle
//! for it.

#[path = "support/capture.rs"]
mod capture;
mod common;

use std::time::Duration;

use capture::Capture;
use common::*;
use serde_json::Value;
use tokio::net::TcpListener;

/// The one server's entry in `/api/upstreams`.
async fn server_view(gw: &TestGateway) -> Value {
    let (status, body) = http_text(gw.admin.expect("admin"), "GET", "/api/upstreams").await;
    assert_eq!(status, 200, "{body}");
    let all: Value = serde_json::from_str(&body).expect("json");
    all[0]["servers"][0].clone()
}

/// Polls until the server matches `ok`; returns its view.
async fn wait_for(gw: &TestGateway, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    within(what, async {
        loop {
            let v = server_view(gw).await;
            if ok(&v) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Waits for `state`, then for four more probes in it.
async fn settle(gw: &TestGateway, state: &str) {
    let v = wait_for(gw, state, |v| v["state"] == state).await;
    let probes = v["check"]["probes"].as_u64().unwrap_or(0);
    wait_for(gw, "four more probes", |v| {
        v["check"]["probes"].as_u64().unwrap_or(0) >= probes + 4
    })
    .await;
}

#[tokio::test]
async fn each_state_change_is_logged_once_with_what_the_probe_saw() {
    // The test's runtime runs on this thread, and so do the checkers.
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _log = tracing::subscriber::set_default(subscriber);

    // A tcp check needs only a listening socket (the kernel completes the
    // connects); closing it makes connects refused.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"u\"\n[upstreams.u]\nservers = [\"{addr}\"]\nhealth = {{ kind = \"tcp\", interval = \"50ms\", timeout = \"50ms\", unhealthy_threshold = 2, healthy_threshold = 2 }}\n"
    );
    let gw = TestGateway::start(&toml).await;
    wait_for(&gw, "a passed probe", |v| {
        v["check"]["last"]["result"] == "ok"
    })
    .await;
    drop(listener);
    // Failing on and on while down logs nothing more.
    settle(&gw, "down").await;
    let server = format!("server={addr}");
    let down = capture.lines("server down");
    assert_eq!(down.len(), 1, "{down:#?}");
    for field in [
        "WARN",
        "upstream=u",
        &server,
        "check=\"tcp\"",
        "reason=connect failed: Connection refused",
    ] {
        assert!(down[0].contains(field), "{field} missing in {}", down[0]);
    }
    let _listener = within("the port to be free again", async {
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => return l,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await;
    settle(&gw, "up").await;
    let up = capture.lines("server up");
    assert_eq!(up.len(), 1, "{up:#?}");
    for field in [
        "INFO",
        "upstream=u",
        &server,
        "check=\"tcp\"",
        "latency_ms=",
    ] {
        assert!(up[0].contains(field), "{field} missing in {}", up[0]);
    }
    assert_eq!(capture.lines("server down").len(), 1);
}
