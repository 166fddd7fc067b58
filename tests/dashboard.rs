//! The dashboard in a real browser (headless Chromium over WebDriver)
//! against a real wsgate: the page loads, shows the tunnels a test opened
//! with their bytes growing, closes one with the chosen code, drains and
//! enables a server, survives a reload and reconnects by itself after a
//! restart; and its feed over a plain WebSocket client: token, full
//! message, then deltas.

#[path = "support/browser.rs"]
mod browser;
mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use browser::{Driver, Page};
use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use wsgate::front::listener::BoundListener;
use wsgate::observe::registry::ConnStats;
use wsgate::Gateway;

const TOKEN: &str = "dash-board-token-77";

/// One listener, `/chat` to upstream `chat` with `servers` in round robin,
/// and an admin listener (with a token file `token` when asked).
fn config(servers: &[SocketAddr], token: bool) -> String {
    let token = if token {
        "token_file = \"token\"\n"
    } else {
        ""
    };
    format!(
        "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[routes]]\npath_prefix = \"/chat\"\nupstream = \"chat\"\n\n[upstreams.chat]\nservers = {}\nbalance = \"round_robin\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n{token}",
        server_list(servers)
    )
}

fn live_conn(gw: &TestGateway, path: &str) -> Arc<ConnStats> {
    gw.gateway
        .registry()
        .live()
        .into_iter()
        .find(|c| c.info.path == path)
        .unwrap_or_else(|| panic!("a live tunnel for {path}"))
}

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
        let server = c.info.backend.to_string();
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
        .select_by_value(&c1.info.backend.to_string())
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
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).expect("token file");
    let gw = TestGateway::start_in(dir, &config(&[echo], true)).await;
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

// === the feed without a browser ===

async fn feed(
    admin: SocketAddr,
    protocols: Option<&str>,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
        http::Response<Option<Vec<u8>>>,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let mut req = format!("ws://{admin}/api/live")
        .into_client_request()
        .expect("request");
    if let Some(p) = protocols {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().expect("header"));
    }
    let tcp = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    within(
        "the feed's handshake",
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
}

async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match within("a feed message", ws.next()).await {
        Some(Ok(Message::Text(t))) => serde_json::from_str(t.as_str()).expect("JSON"),
        other => panic!("expected a feed message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_takes_the_token_as_a_subprotocol_and_sends_deltas() {
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).expect("token file");
    let gw = TestGateway::start_in(dir, &config(&[echo], true)).await;
    let admin = gw.admin.expect("admin");

    for protocols in [
        None,
        Some("wsgate.live"),
        Some("wsgate.live, bearer.bm90LWl0"),
    ] {
        match feed(admin, protocols).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                assert_eq!(res.status(), 401, "{protocols:?}")
            }
            other => panic!("{protocols:?}: expected 401, got {other:?}"),
        }
    }
    // The page's files are open: they hold no data.
    let (status, page) = http_text(admin, "GET", "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("/dashboard/app.js"), "{page}");

    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(TOKEN);
    let (mut ws, res) = feed(admin, Some(&format!("wsgate.live, bearer.{b64}")))
        .await
        .expect("the feed with the token");
    assert_eq!(
        res.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"wsgate.live"[..]),
        "the token's subprotocol is never echoed back"
    );
    let full = next_json(&mut ws).await;
    assert_eq!(full["type"], "full");
    assert_eq!(full["conns"]["reset"], true);
    assert_eq!(full["conns"]["upsert"], Value::Array(vec![]));
    assert_eq!(full["upstreams"][0]["name"], "chat");
    assert!(full["config"]["version"].is_string(), "{full}");

    // A tunnel opens: the next deltas carry it, and only once unchanged.
    let _client = ws_connect(gw.addr("public"), "/chat/feed").await;
    gw.wait_live(1).await;
    let id = live_conn(&gw, "/chat/feed").id;
    let mut seen = 0;
    let mut quiet = None;
    while quiet.is_none() {
        let d = next_json(&mut ws).await;
        assert_eq!(d["type"], "delta");
        assert!(d.get("upstreams").is_none() || seen == 0, "{d}");
        let rows = d["conns"]["upsert"].as_array().cloned().unwrap_or_default();
        if rows.iter().any(|r| r["id"] == id) {
            seen += 1;
            assert_eq!(rows[0]["path"], "/chat/feed");
        } else if seen > 0 {
            quiet = Some(d);
        }
    }
    assert_eq!(seen, 1, "an unchanged row is sent once");
    let quiet = quiet.expect("a quiet delta");
    assert_eq!(quiet["totals"]["active"], 1);
    assert!(
        quiet.get("config").is_none(),
        "unchanged sections are left out: {quiet}"
    );

    // The page leaves: its feed ends with it, and nothing runs for none.
    let board = &gw.gateway.shared().dashboard;
    assert_eq!(board.open_feeds(), 1);
    ws.close(None).await.expect("close the feed");
    while let Some(Ok(_)) = within("the feed's closing handshake", ws.next()).await {}
    within("the feed to end", async {
        while board.open_feeds() != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_sending_a_large_message_gets_1009_not_a_buffer() {
    let echo = echo_backend().await;
    let gw = TestGateway::start(&config(&[echo], false)).await;
    let (mut ws, _) = feed(gw.admin.expect("admin"), Some("wsgate.live"))
        .await
        .expect("the feed");
    assert_eq!(next_json(&mut ws).await["type"], "full");
    let big = "z".repeat(wsgate::control::dashboard::LIVE_MAX_INCOMING * 16);
    futures_util::SinkExt::send(&mut ws, Message::text(big))
        .await
        .expect("send");
    let (code, reason) = within("the feed's Close", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => {
                    return (u16::from(f.code), f.reason.to_string())
                }
                // Deltas already on their way.
                Some(Ok(Message::Text(_))) => {}
                other => panic!("expected Close 1009, got {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(
        (code, reason.as_str()),
        (1009, "the page sends no messages")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_feeds_are_bounded_and_a_freed_place_is_taken_again() {
    use wsgate::control::dashboard::MAX_FEEDS;
    let echo = echo_backend().await;
    let gw = TestGateway::start(&config(&[echo], false)).await;
    let admin = gw.admin.expect("admin");
    let mut open = Vec::new();
    for _ in 0..MAX_FEEDS {
        let (mut ws, _) = feed(admin, Some("wsgate.live")).await.expect("a feed");
        assert_eq!(next_json(&mut ws).await["type"], "full");
        open.push(ws);
    }
    let board = &gw.gateway.shared().dashboard;
    assert_eq!(board.open_feeds(), MAX_FEEDS);
    match feed(admin, Some("wsgate.live")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), 503);
            let body: Value =
                serde_json::from_slice(res.body().as_deref().unwrap_or_default()).expect("JSON");
            assert!(
                body["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("close a page")),
                "{body}"
            );
        }
        other => panic!("expected 503 past {MAX_FEEDS} feeds, got {other:?}"),
    }
    // The others still flow.
    assert_eq!(next_json(&mut open[0]).await["type"], "delta");

    let mut gone = open.pop().expect("a feed");
    gone.close(None).await.expect("close a feed");
    while let Some(Ok(_)) = within("the closing handshake", gone.next()).await {}
    within("the place to be freed", async {
        while board.open_feeds() != MAX_FEEDS - 1 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let (mut again, _) = feed(admin, Some("wsgate.live"))
        .await
        .expect("a feed again");
    assert_eq!(next_json(&mut again).await["type"], "full");
}

// === another site in the operator's browser ===

/// A raw request `method path` to the admin listener with `headers`
/// (each `Name: value`) and the admin address as `Host` unless given.
async fn admin_raw(admin: SocketAddr, method: &str, path: &str, headers: &[&str]) -> u16 {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"))
    {
        head.push_str(&format!("Host: {admin}\r\n"));
    }
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if path == "/api/live" {
        head.push_str("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n");
    } else {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    let mut tcp = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    raw_exchange(&mut tcp, head.as_bytes()).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_other_sites_in_a_browser_are_refused() {
    let (a, b) = (echo_backend().await, echo_backend().await);
    let gw = TestGateway::start(&config(&[a, b], false)).await;
    let admin = gw.admin.expect("admin");
    let port = admin.port();
    let drain = format!("/api/upstreams/chat/servers/{a}/drain");
    let evil = "Origin: http://evil.example";
    let rebound_host = format!("Host: evil.example:{port}");
    let rebound_origin = format!("Origin: http://evil.example:{port}");
    let other_port = "Origin: http://127.0.0.1:1".to_string();
    let refused: Vec<(&str, &str, Vec<&str>)> = vec![
        // Cross-site WebSocket hijacking of the live feed.
        ("GET", "/api/live", vec![evil]),
        ("GET", "/api/live", vec!["Origin: null"]),
        // Another port on this host: the demo's chat page, say.
        ("GET", "/api/live", vec![&other_port]),
        // A form on another site.
        ("POST", &drain, vec![evil]),
        ("POST", &drain, vec!["Sec-Fetch-Site: cross-site"]),
        ("POST", &drain, vec!["Sec-Fetch-Site: same-site"]),
        ("POST", "/reload", vec![evil]),
        // DNS rebinding: the other site's name now leads here.
        ("GET", "/api/live", vec![&rebound_host, &rebound_origin]),
        (
            "GET",
            "/api/connections",
            vec![&rebound_host, "Sec-Fetch-Site: same-origin"],
        ),
    ];
    for (method, path, headers) in &refused {
        assert_eq!(
            admin_raw(admin, method, path, headers).await,
            403,
            "{method} {path} {headers:?}"
        );
    }
    let server = gw
        .gateway
        .shared()
        .snapshot
        .load()
        .upstream("chat")
        .and_then(|u| u.server(a).cloned())
        .expect("the server");
    assert_eq!(server.state().as_str(), "up", "no refused request acted");

    // The page itself, and clients that are not browsers, are served.
    let own = format!("Origin: http://{admin}");
    let localhost_host = format!("Host: localhost:{port}");
    let localhost_origin = format!("Origin: http://localhost:{port}");
    let served: Vec<(&str, &str, Vec<&str>, u16)> = vec![
        (
            "GET",
            "/api/live",
            vec![&own, "Sec-Fetch-Site: same-origin"],
            101,
        ),
        (
            "GET",
            "/api/live",
            vec![&localhost_host, &localhost_origin],
            101,
        ),
        ("GET", "/api/live", vec![], 101),
        (
            "GET",
            "/api/connections",
            vec!["Sec-Fetch-Site: same-origin"],
            200,
        ),
        ("GET", "/", vec![evil], 200),
        ("POST", &drain, vec![&own], 202),
    ];
    for (method, path, headers, status) in &served {
        assert_eq!(
            admin_raw(admin, method, path, headers).await,
            *status,
            "{method} {path} {headers:?}"
        );
    }
    assert_eq!(server.state().as_str(), "draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_token_decides_whatever_the_origin() {
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).expect("token file");
    let gw = TestGateway::start_in(dir, &config(&[echo], true)).await;
    let admin = gw.admin.expect("admin");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(TOKEN);
    let protocol = format!("Sec-WebSocket-Protocol: wsgate.live, bearer.{b64}");
    let evil = "Origin: http://evil.example";
    assert_eq!(admin_raw(admin, "GET", "/api/live", &[evil]).await, 401);
    assert_eq!(
        admin_raw(admin, "GET", "/api/live", &[evil, &protocol]).await,
        101
    );
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
