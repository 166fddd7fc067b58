//! The dashboard in a real browser (headless Chromium over WebDriver)
//! against a real wsgate: the page loads, shows the tunnels a test opened
//! with their bytes growing, closes one with the chosen code, drains and
//! enables a server, survives a reload and reconnects by itself after a
//! restart, and shows text from a config as text. The feed over a plain
//! WebSocket client is tested in `tests/dashboard_feed.rs`.

#[path = "support/browser.rs"]
mod browser;
mod common;
#[path = "support/dashboard.rs"]
mod dashboard_support;

use std::net::SocketAddr;

use browser::{Driver, Page};
use common::*;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wsgate::front::listener::BoundListener;
use wsgate::Gateway;

use dashboard_support::{config, gateway_with_token, live_conn, TOKEN};

async fn open_dashboard(driver: &mut Driver, admin: SocketAddr) -> Page {
    let page = driver.session().await;
    page.goto(&format!("http://{admin}/")).await;
    page.wait_text("the feed to go live", "#status", |t| t == "live")
        .await;
    page
}

/// The number in `data-value` of the cell `css`.
async fn cell_value(page: &Page, css: &str) -> Option<u64> {
    page.attr(css, "data-value").await?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_tunnels_opened_with_their_bytes_growing() {
    let (a, b) = (echo_backend().await, echo_backend().await);
    let gw = TestGateway::start(&config(&[a, b], false)).await;
    let mut one = ws_connect(gw.addr("public"), "/chat/one").await;
    let _two = ws_connect(gw.addr("public"), "/chat/two").await;
    gw.wait_live(2).await;
    let (c1, c2) = (live_conn(&gw, "/chat/one"), live_conn(&gw, "/chat/two"));

    let mut driver = Driver::start();
    let page = open_dashboard(&mut driver, gw.admin.expect("admin")).await;
    let version = gw.gateway.shared().snapshot.load().config.version.clone();
    page.wait_text("the config version", "#version", |t| t == version)
        .await;
    page.wait_text("two active tunnels", "#t-active", |t| t == "2")
        .await;
    for c in [&c1, &c2] {
        let row = format!("#conns tr[data-id=\"{}\"]", c.id);
        let server = c.info.backend().to_string();
        page.wait_text("the tunnel's server", &format!("{row} td.server"), |t| {
            t == server
        })
        .await;
        assert_eq!(
            page.text(&format!("{row} td.route")).await.as_deref(),
            Some(&*c.info.route)
        );
    }

    // Bytes sent on one tunnel show up on its row, and only there.
    let up = format!("#conns tr[data-id=\"{}\"] td.up-bytes", c1.id);
    let down = format!("#conns tr[data-id=\"{}\"] td.down-bytes", c1.id);
    let mut shown = 0;
    for round in 1..=3 {
        echo_once(&mut one, &"x".repeat(1000 * round)).await;
        let sent = c1.to_backend.totals().bytes;
        assert!(sent > shown, "the tunnel moved bytes");
        shown = page
            .wait_for("the row's bytes to grow", || async {
                cell_value(&page, &up).await.filter(|v| *v == sent)
            })
            .await;
        let back = c1.to_client.totals().bytes;
        page.wait_for("the echo's bytes on the row", || async {
            cell_value(&page, &down).await.filter(|v| *v == back)
        })
        .await;
    }
    let other = format!("#conns tr[data-id=\"{}\"] td.up-bytes", c2.id);
    assert_eq!(cell_value(&page, &other).await, Some(0));

    // Filtering by server leaves only that server's tunnel.
    page.element("#f-server")
        .await
        .select_by_value(&c1.info.backend().to_string())
        .await
        .expect("filter by server");
    page.wait_for("only the filtered server's tunnel", || async {
        let ids = page
            .eval(
                "return [...document.querySelectorAll('#conns tbody tr')].map(r => r.dataset.id).join(',');",
                vec![],
            )
            .await;
        (ids.as_str() == Some(c1.id.to_string().as_str())).then_some(())
    })
    .await;
    page.close().await;
}

/// The ids of the rows the connections table shows, in order.
async fn shown_ids(page: &Page) -> Vec<u64> {
    let v = page
        .eval(
            "return [...document.querySelectorAll('#conns tbody tr')].map(r => Number(r.dataset.id));",
            vec![],
        )
        .await;
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connections_table_is_paged_and_sorts_by_any_column() {
    let echo = echo_backend().await;
    let gw = TestGateway::start(&config(&[echo], false)).await;
    let mut clients = Vec::new();
    for i in 0..60 {
        clients.push(ws_connect(gw.addr("public"), &format!("/chat/{i}")).await);
    }
    gw.wait_live(60).await;
    // Three tunnels carry more than the others, the most on the 7th.
    for (i, len) in [(7, 3000), (30, 2000), (55, 1000)] {
        echo_once(&mut clients[i], &"y".repeat(len)).await;
    }
    let busiest: Vec<u64> = [7, 30, 55]
        .iter()
        .map(|i| live_conn(&gw, &format!("/chat/{i}")).id)
        .collect();

    let mut driver = Driver::start();
    let page = open_dashboard(&mut driver, gw.admin.expect("admin")).await;
    page.wait_text("sixty tunnels", "#conn-count", |t| t == "60 shown of 60")
        .await;
    assert_eq!(page.text("#page").await.as_deref(), Some("1/2"));
    assert_eq!(shown_ids(&page).await.len(), 50, "one page of rows");
    page.click("#next").await;
    page.wait_text("the second page", "#page", |t| t == "2/2")
        .await;
    assert_eq!(shown_ids(&page).await.len(), 10);
    page.click("#prev").await;

    // Bytes to backends, most first: a click sorts up, a second down.
    page.click("#conns th button[data-sort=\"up_bytes\"]").await;
    page.click("#conns th button[data-sort=\"up_bytes\"]").await;
    let top = page
        .wait_for("the busiest tunnels first", || async {
            let ids = shown_ids(&page).await;
            (ids.len() == 50 && ids[..3] == busiest[..]).then_some(ids)
        })
        .await;
    assert_eq!(top.len(), 50);
    assert_eq!(
        page.attr("#conns th button[data-sort=\"up_bytes\"]", "aria-sort")
            .await
            .as_deref(),
        Some("descending")
    );
    page.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_close_button_ends_that_tunnel_with_the_chosen_code() {
    let echo = echo_backend().await;
    let gw = TestGateway::start(&config(&[echo], false)).await;
    let mut victim = ws_connect(gw.addr("public"), "/chat/victim").await;
    let mut bystander = ws_connect(gw.addr("public"), "/chat/bystander").await;
    gw.wait_live(2).await;
    let id = live_conn(&gw, "/chat/victim").id;

    let mut driver = Driver::start();
    let page = open_dashboard(&mut driver, gw.admin.expect("admin")).await;
    page.click(&format!("#conns tr[data-id=\"{id}\"] button.close"))
        .await;
    page.element("#close-code")
        .await
        .select_by_value("4000")
        .await
        .expect("choose the close code");
    page.type_into("#close-reason", "bye from the dashboard")
        .await;
    page.click("#confirm-ok").await;

    let (code, reason) = expect_close(&mut victim, "the operator's Close").await;
    assert_eq!((code, reason.as_str()), (4000, "bye from the dashboard"));
    echo_once(&mut bystander, "still here").await;
    gw.wait_live(1).await;
    page.wait_for("the closed tunnel's row to go", || async {
        page.text(&format!("#conns tr[data-id=\"{id}\"]"))
            .await
            .is_none()
            .then_some(())
    })
    .await;
    page.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_and_enable_buttons_change_the_server() {
    let (a, b) = (echo_backend().await, echo_backend().await);
    let gw = TestGateway::start(&config(&[a, b], false)).await;
    let mut driver = Driver::start();
    let page = open_dashboard(&mut driver, gw.admin.expect("admin")).await;
    let server = |addr: SocketAddr| {
        gw.gateway
            .shared()
            .snapshot
            .load()
            .upstream("chat")
            .and_then(|u| u.server(addr).cloned())
            .expect("the server")
    };
    let row = format!("div[data-upstream=\"chat\"] tr[data-server=\"{a}\"]");
    page.wait_text("the server's state", &format!("{row} td.state"), |t| {
        t == "up"
    })
    .await;

    page.click(&format!("{row} button.drain")).await;
    page.wait_text("the confirmation", "#confirm-text", |t| {
        t.contains("Drain") && t.contains(&a.to_string())
    })
    .await;
    page.click("#confirm-ok").await;
    page.wait_text(
        "the page to show it draining",
        &format!("{row} td.state"),
        |t| t == "draining",
    )
    .await;
    assert_eq!(server(a).state().as_str(), "draining");
    assert_eq!(server(b).state().as_str(), "up", "only that server");

    page.click(&format!("{row} button.enable")).await;
    page.click("#confirm-ok").await;
    page.wait_text(
        "the page to show it up again",
        &format!("{row} td.state"),
        |t| t == "up",
    )
    .await;
    assert_eq!(server(a).state().as_str(), "up");
    page.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebalance_button_closes_tunnels_above_the_mean() {
    let (a, b) = (echo_backend().await, echo_backend().await);
    let toml = config(&[a], false).replace(
        "balance = \"round_robin\"",
        "balance = \"round_robin\"\ndrain_spread = \"100ms\"",
    );
    let gw = TestGateway::start(&toml).await;
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(ws_connect(gw.addr("public"), &format!("/chat/{i}")).await);
    }
    gw.wait_live(4).await;
    // A scale-out: the new server has none of the tunnels.
    std::fs::write(
        gw.dir.path().join("wsgate.toml"),
        toml.replace(&server_list(&[a]), &server_list(&[a, b])),
    )
    .expect("write config");
    gw.gateway.reload().await.expect("reload");

    let mut driver = Driver::start();
    let page = open_dashboard(&mut driver, gw.admin.expect("admin")).await;
    page.wait_text("the new server", "div[data-upstream=\"chat\"] tbody", |t| {
        t.contains(&b.to_string())
    })
    .await;
    page.click("div[data-upstream=\"chat\"] button.rebalance")
        .await;
    page.type_into("#fraction", "0.5").await;
    page.click("#confirm-ok").await;

    // Half of the four, down to the mean of two: two get 1012.
    gw.wait_live(2).await;
    let left: Vec<String> = gw
        .gateway
        .registry()
        .live()
        .iter()
        .map(|c| c.info.path.clone())
        .collect();
    let mut closed = 0;
    for (i, c) in clients.iter_mut().enumerate() {
        if !left.contains(&format!("/chat/{i}")) {
            let (code, reason) = expect_close(c, "the rebalance's Close").await;
            assert_eq!((code, reason.as_str()), (1012, "rebalancing"));
            closed += 1;
        }
    }
    assert_eq!(closed, 2);
    page.wait_text("the toast", "#toast", |t| t.starts_with("done: Rebalance"))
        .await;
    page.close().await;
}

/// Starts wsgate from the config file in `dir`, its admin listener on
/// `admin` (the address a previous run had), as a restart would.
async fn start_on(dir: &std::path::Path, admin: SocketAddr) -> (Gateway, CancellationToken) {
    let config = wsgate::config::load(&dir.join("wsgate.toml")).expect("config");
    let mut bound = Vec::new();
    for l in &config.listeners {
        bound.push(BoundListener {
            name: l.name.clone(),
            socket: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        });
    }
    let shutdown = CancellationToken::new();
    let gateway = Gateway::start(config, bound, shutdown.clone()).expect("start");
    // The old admin listener closes as its gateway stops.
    let listener = within("the admin port to be free again", async {
        loop {
            match TcpListener::bind(admin).await {
                Ok(l) => return l,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    gateway.serve_admin(listener);
    (gateway, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_survives_a_reload_and_reconnects_after_a_restart() {
    let echo = echo_backend().await;
    let toml = config(&[echo], false);
    let gw = TestGateway::start(&toml).await;
    let admin = gw.admin.expect("admin");
    let path = gw.dir.path().join("wsgate.toml");
    let mut driver = Driver::start();
    let page = open_dashboard(&mut driver, admin).await;
    page.wait_text("no reload yet", "#no-reloads", |t| !t.is_empty())
        .await;

    // A reload that adds a route: new version, an "ok" row naming it.
    let reloaded = toml.replace(
        "[upstreams.chat]",
        "[[routes]]\npath_prefix = \"/news\"\nupstream = \"chat\"\n\n[upstreams.chat]",
    );
    std::fs::write(&path, &reloaded).expect("write config");
    let report = gw.gateway.reload().await.expect("reload");
    page.wait_text("the new version", "#version", |t| t == report.version)
        .await;
    let first = page
        .wait_text("the reload's row", "#reloads tbody tr", |t| {
            t.contains("ok")
        })
        .await;
    assert!(first.contains("/news"), "{first}");
    page.wait_text("the new route", "#routes tbody", |t| t.contains("/news"))
        .await;

    // A rejected reload: a row saying so, and the version stays.
    std::fs::write(&path, "[[listeners]]\nname = 5\n").expect("write bad config");
    gw.gateway.reload().await.expect_err("a bad config");
    page.wait_text("the rejected reload's row", "#reloads tbody tr", |t| {
        t.contains("rejected")
    })
    .await;
    assert_eq!(
        page.text("#version").await.as_deref(),
        Some(report.version.as_str())
    );
    assert_eq!(page.attr("body", "data-feeds").await.as_deref(), Some("1"));

    // A restart: the old wsgate goes, a new one comes on the same admin
    // port with the reloaded config; the page finds it by itself.
    std::fs::write(&path, &reloaded).expect("write config");
    gw.shutdown.cancel();
    page.wait_for("the page to see wsgate gone", || async {
        (page.attr("#status", "data-state").await.as_deref() != Some("live")).then_some(())
    })
    .await;
    let (gateway, shutdown) = start_on(gw.dir.path(), admin).await;
    page.wait_for("the page to reconnect", || async {
        (page.attr("body", "data-feeds").await.as_deref() == Some("2")).then_some(())
    })
    .await;
    page.wait_text("live again", "#status", |t| t == "live")
        .await;
    let mut ws = ws_connect(gateway.local_addr("public").expect("listener"), "/news/x").await;
    let id = within("the new tunnel", async {
        loop {
            if let Some(c) = gateway.registry().live().first() {
                return c.id;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    page.wait_text(
        "the new wsgate's tunnel",
        &format!("#conns tr[data-id=\"{id}\"] td.route"),
        |t| t == "*/news",
    )
    .await;
    echo_once(&mut ws, "after the restart").await;
    page.close().await;
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_asks_for_the_token_once_per_session() {
    let gw = gateway_with_token().await;
    let admin = gw.admin.expect("admin");
    let mut driver = Driver::start();
    let page = driver.session().await;
    page.goto(&format!("http://{admin}/")).await;
    page.wait_for("the token form", || async {
        (page.attr("#token-form", "hidden").await.is_none()).then_some(())
    })
    .await;

    page.type_into("#token", "not-the-token").await;
    page.click("#token-form button").await;
    page.wait_text("the refusal", "#token-error", |t| t.contains("refused"))
        .await;

    page.type_into("#token", TOKEN).await;
    page.click("#token-form button").await;
    page.wait_text("the feed to go live", "#status", |t| t == "live")
        .await;

    // Kept for the session: a reload of the page goes straight to live.
    page.client.refresh().await.expect("refresh");
    page.wait_text("live without asking again", "#status", |t| t == "live")
        .await;
    assert!(page.attr("#token-form", "hidden").await.is_some());
    page.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_from_a_config_is_shown_as_text_never_as_html() {
    let echo = echo_backend().await;
    let toml = config(&[echo], false);
    let gw = TestGateway::start(&toml).await;
    let mut driver = Driver::start();
    let page = open_dashboard(&mut driver, gw.admin.expect("admin")).await;
    // A rejected reload's problems quote the file: here, a key that is markup.
    let markup = "<img src=x id=injected onerror=alert(1)>";
    std::fs::write(
        gw.dir.path().join("wsgate.toml"),
        format!("{toml}\n\"{markup}\" = 1\n"),
    )
    .expect("write config");
    gw.gateway.reload().await.expect_err("an unknown key");
    let row = page
        .wait_text("the rejected reload's row", "#reloads tbody tr", |t| {
            t.contains("rejected")
        })
        .await;
    assert!(row.contains(markup), "the markup shown as text: {row}");
    assert_eq!(page.text("#injected").await, None, "no element made of it");
    page.close().await;
}
