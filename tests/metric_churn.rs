//! Servers that come and go (reloads, DNS answers) do not grow the metric
//! label set: once a removed server has no live tunnel, its tunnel and
//! traffic totals are folded into `server="removed"`, so each total summed
//! over servers never goes down, and the series left are the servers
//! configured now plus one `removed` per listener, route and upstream.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::*;

fn config(server: SocketAddr) -> String {
    simple_config(&[server])
}

fn reload_to(gw: &TestGateway, server: SocketAddr) -> impl std::future::Future<Output = ()> + '_ {
    std::fs::write(gw.dir.path().join("wsgate.toml"), config(server)).expect("write config");
    async move {
        gw.gateway.reload().await.expect("reload");
    }
}

fn metrics(gw: &TestGateway) -> String {
    gw.gateway.shared().metrics.encode().expect("encode")
}

/// Scrapes until `family` carries only `server="removed"`: a removed
/// server is drained first (even with no tunnel, a task ends its drain),
/// and keeps its series until then.
async fn folded(gw: &TestGateway, family: &str) -> String {
    let only_removed = BTreeSet::from(["removed".to_string()]);
    within(&format!("{family} to fold into removed"), async {
        loop {
            let text = metrics(gw);
            if servers_of(&text, family) == only_removed {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
}

/// The `server` labels on the series of `family`.
fn servers_of(text: &str, family: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter_map(|l| l.split("server=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}

/// The value of the one series of `family` whose labels include `needle`.
fn value(text: &str, family: &str, needle: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{family}{{")) && l.contains(needle))
        .unwrap_or_else(|| panic!("no {family} with {needle} in\n{text}"));
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {line}"))
}

#[tokio::test]
async fn a_removed_server_folds_into_removed_once_its_tunnels_end() {
    let (a, b) = (echo_backend().await, echo_backend().await);
    let gw = TestGateway::start(&config(a)).await;
    let addr = gw.addr("public");

    let mut done = ws_connect(addr, "/").await;
    echo_once(&mut done, "first").await;
    done.close(None).await.expect("close");
    finish(done).await;
    let mut live = ws_connect(addr, "/").await;
    echo_once(&mut live, "second").await;
    gw.wait_live(1).await;

    reload_to(&gw, b).await;
    let text = metrics(&gw);
    assert_eq!(
        servers_of(&text, "wsgate_tunnels_active"),
        BTreeSet::from([a.to_string()]),
        "a server with a live tunnel keeps its series"
    );
    assert_eq!(value(&text, "wsgate_tunnels_active", &a.to_string()), 1.0);

    echo_once(&mut live, "after the reload").await;
    live.close(None).await.expect("close");
    finish(live).await;
    gw.wait_idle().await;

    let text = folded(&gw, "wsgate_tunnels_total").await;
    for family in [
        "wsgate_tunnels_active",
        "wsgate_tunnels_total",
        "wsgate_traffic_bytes_total",
        "wsgate_traffic_messages_total",
    ] {
        assert_eq!(
            servers_of(&text, family),
            BTreeSet::from(["removed".to_string()]),
            "{family} in\n{text}"
        );
    }
    assert_eq!(value(&text, "wsgate_tunnels_total", "removed"), 2.0);
    assert_eq!(value(&text, "wsgate_tunnels_active", "removed"), 0.0);
    // Three echoes went each way, every one a message.
    assert_eq!(
        value(
            &text,
            "wsgate_traffic_messages_total",
            "direction=\"to_client\""
        ),
        3.0
    );
}

#[tokio::test]
async fn churning_servers_keep_the_label_set_bounded() {
    let first = echo_backend().await;
    let gw = TestGateway::start(&config(first)).await;
    let addr = gw.addr("public");
    let rounds = 5;
    for i in 0..rounds {
        let next = echo_backend().await;
        let mut ws = ws_connect(addr, "/").await;
        echo_once(&mut ws, &format!("round {i}")).await;
        ws.close(None).await.expect("close");
        finish(ws).await;
        gw.wait_idle().await;
        reload_to(&gw, next).await;
        let text = folded(&gw, "wsgate_traffic_bytes_total").await;
        assert_eq!(
            value(&text, "wsgate_tunnels_total", "removed"),
            f64::from(i + 1),
            "round {i}: the total never goes down"
        );
    }
}
