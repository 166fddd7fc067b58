//! Live reload: new connections see the new config at once, established
//! ones never notice, a bad config, a host name that does not resolve or
//! an unbindable listener changes nothing, removed servers drain with
//! spread Close 1001, certificates rotate, and the file watcher triggers
//! reloads.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use wsgate::control::reload::ReloadError;

fn write_config(gw: &TestGateway, text: &str) {
    std::fs::write(gw.dir.path().join("wsgate.toml"), text).expect("write config");
}

fn base(listeners: &str, routes: &str, upstreams: &str) -> String {
    format!("[timeouts]\nconnect = \"2s\"\n{listeners}\n{routes}\n{upstreams}\n")
}

const PUBLIC: &str = "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n";

#[tokio::test]
async fn a_bad_config_is_rejected_and_the_old_one_keeps_serving() {
    let echo = echo_backend().await;
    let good = base(
        PUBLIC,
        "[[routes]]\nupstream = \"u\"",
        &format!("[upstreams.u]\nservers = [\"{echo}\"]"),
    );
    let gw = TestGateway::start(&good).await;
    let mut ws = ws_connect(gw.addr("public"), "/ws").await;
    write_config(&gw, &format!("{good}\n[timeouts]\nconnect = \"soon\"\n"));
    match gw.gateway.reload().await {
        Err(ReloadError::Config(e)) => assert!(!e.problems().is_empty(), "{e}"),
        other => panic!("expected a config error, got {other:?}"),
    }
    echo_once(&mut ws, "still here").await;
    let mut fresh = ws_connect(gw.addr("public"), "/ws").await;
    echo_once(&mut fresh, "new connections too").await;
    let metrics = gw.gateway.shared().metrics.encode().expect("metrics");
    assert!(
        metrics.contains("wsgate_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_reload_to_a_host_name_that_does_not_resolve_is_refused_and_the_old_routes_keep_serving()
{
    let echo = echo_backend().await;
    let good = base(
        PUBLIC,
        "[[routes]]\nupstream = \"u\"",
        &format!("[upstreams.u]\nservers = [\"{echo}\"]"),
    );
    let gw = TestGateway::start(&good).await;
    let mut ws = ws_connect(gw.addr("public"), "/ws").await;
    // `.invalid` never resolves (RFC 6761): no network is needed to see it fail.
    let bad = base(
        PUBLIC,
        "[[routes]]\nupstream = \"v\"",
        "[upstreams.v]\nservers = [\"backend.invalid:9001\"]",
    );
    write_config(&gw, &bad);
    match gw.gateway.reload().await {
        Err(ReloadError::Resolve(e)) => {
            let path = gw.dir.path().join("wsgate.toml");
            let want = format!(
                "{}:10:12: upstreams.v.servers[0]: cannot resolve backend.invalid",
                path.display()
            );
            assert!(e.to_string().starts_with(&want), "{e}");
            assert_eq!(e.problems.len(), 1, "{e}");
        }
        other => panic!("expected a resolution error, got {other:?}"),
    }
    echo_once(&mut ws, "still here").await;
    let mut fresh = ws_connect(gw.addr("public"), "/ws").await;
    echo_once(&mut fresh, "the old route still serves").await;
    let metrics = gw.gateway.shared().metrics.encode().expect("metrics");
    assert!(
        metrics.contains("wsgate_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn new_routes_apply_at_once_and_established_tunnels_keep_theirs() {
    let old = echo_backend().await;
    let mut new = WsBackend::start().await;
    let first = base(
        PUBLIC,
        "[[routes]]\nupstream = \"old\"",
        &format!("[upstreams.old]\nservers = [\"{old}\"]"),
    );
    let gw = TestGateway::start(&first).await;
    let mut established = ws_connect(gw.addr("public"), "/chat").await;
    let second = base(
        PUBLIC,
        "[[routes]]\nupstream = \"old\"\n[[routes]]\npath_prefix = \"/chat\"\nupstream = \"new\"",
        &format!(
            "[upstreams.old]\nservers = [\"{old}\"]\n[upstreams.new]\nservers = [\"{}\"]",
            new.addr
        ),
    );
    write_config(&gw, &second);
    let report = gw.gateway.reload().await.expect("reload");
    assert_eq!(report.routes_added, ["*/chat"]);
    assert_eq!(report.servers_added, [format!("new/{}", new.addr)]);
    // A new connection to /chat goes to the new upstream...
    let _fresh = ws_connect(gw.addr("public"), "/chat").await;
    let accepted = new.next().await;
    assert_eq!(accepted.path, "/chat");
    // ...while the established one still talks to the old backend.
    echo_once(&mut established, "old route").await;
}

#[tokio::test]
async fn an_unbindable_listener_rejects_the_whole_reload() {
    let a = echo_backend().await;
    let mut b = WsBackend::start().await;
    let first = base(
        PUBLIC,
        "[[routes]]\nupstream = \"a\"",
        &format!(
            "[upstreams.a]\nservers = [\"{a}\"]\n[upstreams.b]\nservers = [\"{}\"]",
            b.addr
        ),
    );
    let gw = TestGateway::start(&first).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = taken.local_addr().expect("addr");
    let second = base(
        &format!("{PUBLIC}[[listeners]]\nname = \"extra\"\nbind = \"{busy}\"\n"),
        "[[routes]]\nupstream = \"b\"",
        &format!(
            "[upstreams.a]\nservers = [\"{a}\"]\n[upstreams.b]\nservers = [\"{}\"]",
            b.addr
        ),
    );
    write_config(&gw, &second);
    match gw.gateway.reload().await {
        Err(ReloadError::Bind(e)) => assert_eq!(e.addr, busy),
        other => panic!("expected a bind error, got {other:?}"),
    }
    // The route change did not happen either.
    let mut ws = ws_connect(gw.addr("public"), "/ws").await;
    echo_once(&mut ws, "routed to a").await;
    assert!(
        b.accepted.try_recv().is_err(),
        "the rejected config's route was used"
    );
    assert!(gw.gateway.local_addr("extra").is_none());
}

#[tokio::test]
async fn listeners_are_added_and_removed_without_touching_established_tunnels() {
    let echo = echo_backend().await;
    let up = format!("[upstreams.u]\nservers = [\"{echo}\"]");
    let gw = TestGateway::start(&base(PUBLIC, "[[routes]]\nupstream = \"u\"", &up)).await;
    let public = gw.addr("public");
    let mut established = ws_connect(public, "/ws").await;
    let second = "[[listeners]]\nname = \"second\"\nbind = \"127.0.0.1:0\"\n";
    write_config(
        &gw,
        &base(
            &format!("{PUBLIC}{second}"),
            "[[routes]]\nupstream = \"u\"",
            &up,
        ),
    );
    let report = gw.gateway.reload().await.expect("reload adds");
    assert_eq!(report.listeners_added, ["second"]);
    assert_eq!(
        gw.addr("public"),
        public,
        "an unchanged listener is not re-bound"
    );
    let mut via_second = ws_connect(gw.addr("second"), "/ws").await;
    echo_once(&mut via_second, "second").await;

    write_config(&gw, &base(second, "[[routes]]\nupstream = \"u\"", &up));
    let report = gw.gateway.reload().await.expect("reload removes");
    assert_eq!(report.listeners_removed, ["public"]);
    within("the removed listener to stop accepting", async {
        while TcpStream::connect(public).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    echo_once(&mut established, "still open through the removed listener").await;
}

#[tokio::test]
async fn a_removed_server_is_drained_with_spread_1001_and_others_are_untouched() {
    let mut a = WsBackend::start().await;
    let mut b = WsBackend::start().await;
    let up = |servers: String| {
        format!("[upstreams.u]\nservers = {servers}\ndrain_timeout = \"100ms\"\ndrain_spread = \"800ms\"")
    };
    let gw = TestGateway::start(&base(
        PUBLIC,
        "[[routes]]\nupstream = \"u\"",
        &up(server_list(&[a.addr, b.addr])),
    ))
    .await;
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for i in 0..4 {
        let client = ws_connect(gw.addr("public"), "/ws").await;
        // Registered before the next one opens, so ids follow this order.
        gw.wait_live(i + 1).await;
        let server = tokio::select! {
            s = a.next() => { on_a.push(client); s }
            s = b.next() => { on_b.push(client); s }
        };
        tokio::spawn(async move {
            let mut ws = server.ws;
            while let Some(Ok(m)) = ws.next().await {
                if m.is_text() && ws.send(m).await.is_err() {
                    break;
                }
            }
        });
    }
    assert_eq!(
        (on_a.len(), on_b.len()),
        (2, 2),
        "least_conn spreads 4 tunnels 2/2"
    );
    write_config(
        &gw,
        &base(
            PUBLIC,
            "[[routes]]\nupstream = \"u\"",
            &up(server_list(&[a.addr])),
        ),
    );
    let report = gw.gateway.reload().await.expect("reload");
    assert_eq!(report.servers_removed, [format!("u/{}", b.addr)]);
    // B's clients get Close 1001 one at a time, oldest first (when each
    // falls in drain_spread is the schedule's unit tests' business, in
    // src/control/drain.rs).
    let arrivals = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut waits = Vec::new();
    for (age, mut ws) in on_b.into_iter().enumerate() {
        let arrivals = arrivals.clone();
        waits.push(tokio::spawn(async move {
            let (code, _) = expect_close(&mut ws, "Close 1001 from the drain").await;
            let rank = arrivals.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            finish(ws).await;
            (age, rank, code)
        }));
    }
    for w in waits {
        let (age, rank, code) = within("a drained tunnel", w).await.expect("task");
        assert_eq!(code, 1001);
        assert_eq!(rank, age, "the drain closes the oldest tunnel first");
    }
    for ws in &mut on_a {
        echo_once(ws, "A is untouched").await;
    }
    let kept = gw
        .gateway
        .shared()
        .snapshot
        .load()
        .upstream("u")
        .and_then(|u| u.server(a.addr).cloned())
        .expect("A");
    assert_eq!(kept.active(), 2, "A's live count survived the reload");
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_the_next_tls_connection() {
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, _, ca1) = make_cert(dir.path(), "server", &["localhost"]);
    let toml = format!(
        "[[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\ntls = {{ cert = \"server.pem\", key = \"server.key\" }}\n[[routes]]\nupstream = \"u\"\n[upstreams.u]\nservers = [\"{echo}\"]\n"
    );
    let gw = TestGateway::start_in(dir, &toml).await;
    let addr = gw.addr("tls");
    let first = served_cert(addr, &ca1).await;
    // Rotate: a new CA and certificate in the same files.
    let (_, _, ca2) = make_cert(gw.dir.path(), "server", &["localhost"]);
    gw.gateway.reload().await.expect("reload");
    let second = served_cert(addr, &ca2).await;
    assert_ne!(first, second, "the rotated certificate must be served");
    assert_eq!(gw.addr("tls"), addr, "rotation does not re-bind");
}

/// The leaf certificate the listener serves, trusting only `ca`.
async fn served_cert(addr: SocketAddr, ca: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("cert")).expect("add");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = within(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("handshake with the expected CA");
    tls.get_ref().1.peer_certificates().expect("certs")[0].to_vec()
}

#[tokio::test]
async fn a_file_change_triggers_a_reload_when_watching() {
    let echo = echo_backend().await;
    let mut other = WsBackend::start().await;
    let ups = format!(
        "[upstreams.u]\nservers = [\"{echo}\"]\n[upstreams.o]\nservers = [\"{}\"]",
        other.addr
    );
    let first = format!(
        "[runtime]\nwatch_config = true\n{}",
        base(PUBLIC, "[[routes]]\nupstream = \"u\"", &ups)
    );
    let gw = TestGateway::start(&first).await;
    let second = format!(
        "[runtime]\nwatch_config = true\n{}",
        base(
            PUBLIC,
            "[[routes]]\nupstream = \"u\"\n[[routes]]\npath_prefix = \"/other\"\nupstream = \"o\"",
            &ups
        )
    );
    // The watcher may not be armed the instant start returns: keep rewriting until it reacts.
    within("the watcher to reload", async {
        loop {
            write_config(&gw, &second);
            tokio::time::sleep(Duration::from_millis(400)).await;
            if gw
                .gateway
                .shared()
                .snapshot
                .load()
                .route_labels()
                .any(|l| l == "*/other")
            {
                return;
            }
        }
    })
    .await;
    let _ws = ws_connect(gw.addr("public"), "/other").await;
    assert_eq!(other.next().await.path, "/other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tunnels_survive_twenty_reloads_without_losing_a_message() {
    let echo = echo_backend().await;
    let spare = echo_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    make_cert(dir.path(), "server", &["localhost"]);
    let config = |i: usize| {
        // Each version changes routes, listeners, certificates and servers.
        let extra_listener = if i % 2 == 1 {
            "[[listeners]]\nname = \"extra\"\nbind = \"127.0.0.1:0\"\n"
        } else {
            ""
        };
        let extra_route = if i % 3 == 1 {
            format!("[[routes]]\npath_prefix = \"/v{i}\"\nupstream = \"u\"\n")
        } else {
            String::new()
        };
        let servers = if i % 2 == 1 {
            server_list(&[echo, spare])
        } else {
            server_list(&[echo])
        };
        format!(
            "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n[[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\ntls = {{ cert = \"server.pem\", key = \"server.key\" }}\n{extra_listener}[[routes]]\nupstream = \"u\"\n{extra_route}[upstreams.u]\nservers = {servers}\ndrain_timeout = \"1h\"\n"
        )
    };
    let gw = TestGateway::start_in(dir, &config(0)).await;
    let addr = gw.addr("public");
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(ws_connect(addr, "/ws").await);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let exchanged = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::new();
    for (c, mut ws) in clients.into_iter().enumerate() {
        let stop = stop.clone();
        let exchanged = exchanged.clone();
        workers.push(tokio::spawn(async move {
            let mut seq = 0u64;
            // Bounded: stops when the reloads are done, or after 100000 messages.
            while !stop.is_cancelled() && seq < 100_000 {
                let text = format!("{c}:{seq}");
                ws.send(Message::text(text.clone())).await.expect("send");
                match tokio::time::timeout(WAIT, ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        assert_eq!(t.as_str(), text, "lost, reordered or corrupted");
                        exchanged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    other => panic!("client {c} at {seq}: {other:?}"),
                }
                seq += 1;
            }
            ws.close(None).await.expect("close");
            seq
        }));
    }
    for i in 1..=20 {
        // Traffic flows between every two reloads, not just around them.
        let before = exchanged.load(std::sync::atomic::Ordering::Relaxed);
        within("messages to flow between reloads", async {
            while exchanged.load(std::sync::atomic::Ordering::Relaxed) < before + 200 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        // Spare is never the server of these tunnels: removing it drains nothing of theirs.
        if i % 5 == 0 {
            make_cert(gw.dir.path(), "server", &["localhost"]);
        }
        write_config(&gw, &config(i));
        gw.gateway
            .reload()
            .await
            .unwrap_or_else(|e| panic!("reload {i}: {e}"));
    }
    stop.cancel();
    let mut total = 0;
    for w in workers {
        let sent = within("a worker to finish", w).await.expect("worker");
        assert!(sent > 0, "every tunnel kept exchanging messages");
        total += sent;
    }
    assert!(total >= 200, "{total}");
    gw.wait_idle().await;
}

#[tokio::test]
async fn host_names_are_resolved_at_load() {
    let echo = echo_backend().await;
    let toml = base(
        PUBLIC,
        "[[routes]]\nupstream = \"u\"",
        &format!("[upstreams.u]\nservers = [\"localhost:{}\"]", echo.port()),
    );
    let gw = TestGateway::start(&toml).await;
    let servers: Vec<SocketAddr> = gw
        .gateway
        .shared()
        .snapshot
        .load()
        .upstream("u")
        .expect("u")
        .servers
        .iter()
        .map(|s| s.addr)
        .collect();
    assert!(servers.contains(&echo), "localhost resolved to {servers:?}");
    // Whatever else localhost resolves to (::1), the retry reaches the backend.
    for i in 0..3 {
        let mut ws = ws_connect(gw.addr("public"), "/ws").await;
        echo_once(&mut ws, &format!("by name {i}")).await;
    }
}

/// The port the substitute resolver answers with.
static RESOLVED_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

fn substitute_resolver(_host: &str, _port: u16) -> std::io::Result<Vec<SocketAddr>> {
    Ok(vec![SocketAddr::from((
        [127, 0, 0, 1],
        RESOLVED_PORT.load(std::sync::atomic::Ordering::SeqCst),
    ))])
}

#[tokio::test]
async fn a_name_that_resolves_differently_moves_new_connections_and_drains_the_old_address() {
    let old = echo_backend().await;
    let mut new = WsBackend::start().await;
    let toml = base(
        PUBLIC,
        "[[routes]]\nupstream = \"u\"",
        &format!("[upstreams.u]\nservers = [\"localhost:{}\"]\ndrain_timeout = \"100ms\"\ndrain_spread = \"100ms\"\nresolve_interval = \"1h\"", old.port()),
    );
    let gw = TestGateway::start(&toml).await;
    let mut established = ws_connect(gw.addr("public"), "/ws").await;
    echo_once(&mut established, "before").await;
    // The name now points at the new backend.
    RESOLVED_PORT.store(new.addr.port(), std::sync::atomic::Ordering::SeqCst);
    gw.gateway.shared().set_resolver(substitute_resolver);
    let report = wsgate::control::reload::re_resolve(gw.gateway.shared())
        .await
        .expect("a change");
    assert_eq!(report.servers_added, [format!("u/{}", new.addr)]);
    assert!(
        report.servers_removed.contains(&format!("u/{old}")),
        "{report:?}"
    );
    // Unchanged answers change nothing.
    assert!(wsgate::control::reload::re_resolve(gw.gateway.shared())
        .await
        .is_none());
    let _fresh = ws_connect(gw.addr("public"), "/ws").await;
    assert_eq!(new.next().await.path, "/ws");
    // The old address's tunnel drains with 1001.
    assert_eq!(
        expect_close(&mut established, "the drain's Close").await.0,
        1001
    );
}

#[tokio::test]
async fn a_reload_cannot_open_the_admin_api() {
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), "s3cret").expect("token");
    let body = base(
        PUBLIC,
        "[[routes]]\nupstream = \"u\"",
        &format!("[upstreams.u]\nservers = [\"{echo}\"]"),
    );
    let gw = TestGateway::start_in(
        dir,
        &format!("[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"token\"\n{body}"),
    )
    .await;
    for changed in [body.clone(), format!("[admin]\nbind = \"127.0.0.1:0\"\n{body}"), format!("[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"token\"\nmetrics_public = true\n{body}")] {
        write_config(&gw, &changed);
        match gw.gateway.reload().await {
            Err(ReloadError::AdminChanged) => {}
            other => panic!("expected the admin change to be refused, got {other:?}"),
        }
    }
    let mut tcp = TcpStream::connect(gw.admin.expect("admin"))
        .await
        .expect("connect");
    let (status, _, _) = raw_exchange(
        &mut tcp,
        b"GET /api/config HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 401, "the token still applies");
}

#[tokio::test]
async fn a_rejected_reload_changes_no_weight() {
    let echo = echo_backend().await;
    let up = |w: u32| format!("[upstreams.u]\nservers = [{{ addr = \"{echo}\", weight = {w} }}]");
    let gw = TestGateway::start(&base(PUBLIC, "[[routes]]\nupstream = \"u\"", &up(1))).await;
    let weight = || {
        gw.gateway
            .shared()
            .snapshot
            .load()
            .upstream("u")
            .and_then(|u| u.server(echo).map(|s| s.weight()))
            .expect("server")
    };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = taken.local_addr().expect("addr");
    write_config(
        &gw,
        &base(
            &format!("{PUBLIC}[[listeners]]\nname = \"x\"\nbind = \"{busy}\"\n"),
            "[[routes]]\nupstream = \"u\"",
            &up(7),
        ),
    );
    assert!(matches!(
        gw.gateway.reload().await,
        Err(ReloadError::Bind(_))
    ));
    assert_eq!(weight(), 1, "a rejected reload must change nothing");
    write_config(&gw, &base(PUBLIC, "[[routes]]\nupstream = \"u\"", &up(7)));
    gw.gateway.reload().await.expect("reload");
    assert_eq!(weight(), 7);
}

#[tokio::test]
async fn a_server_added_back_while_draining_keeps_its_tunnels() {
    let a = echo_backend().await;
    let b = echo_backend().await;
    let up = |servers: String| {
        format!("[upstreams.u]\nservers = {servers}\ndrain_timeout = \"300ms\"\ndrain_spread = \"100ms\"")
    };
    let gw = TestGateway::start(&base(
        PUBLIC,
        "[[routes]]\nupstream = \"u\"",
        &up(server_list(&[b])),
    ))
    .await;
    let mut on_b = ws_connect(gw.addr("public"), "/ws").await;
    echo_once(&mut on_b, "on b").await;
    // Remove B: its drain starts...
    write_config(
        &gw,
        &base(
            PUBLIC,
            "[[routes]]\nupstream = \"u\"",
            &up(server_list(&[a])),
        ),
    );
    gw.gateway.reload().await.expect("remove b");
    // ...and B comes back before the drain timeout passes.
    write_config(
        &gw,
        &base(
            PUBLIC,
            "[[routes]]\nupstream = \"u\"",
            &up(server_list(&[a, b])),
        ),
    );
    gw.gateway.reload().await.expect("add b back");
    let server = gw
        .gateway
        .shared()
        .snapshot
        .load()
        .upstream("u")
        .and_then(|u| u.server(b).cloned())
        .expect("b");
    assert_eq!(
        server.active(),
        1,
        "B's tunnel is counted on the server added back"
    );
    assert!(server.is_enabled());
    // Well past the drain timeout, the tunnel was never closed.
    match tokio::time::timeout(Duration::from_millis(800), on_b.next()).await {
        Err(_) => {}
        Ok(got) => panic!("the re-added server's tunnel got {got:?}"),
    }
    echo_once(&mut on_b, "still on b").await;
}

#[tokio::test]
async fn a_reload_lets_plain_responses_in_flight_finish_and_moves_new_requests() {
    let old = AppBackend::start().await;
    let new = AppBackend::start().await;
    let upstream = |b: &AppBackend| format!("[upstreams.u]\nservers = [\"{}\"]", b.addr);
    let gw = TestGateway::start(&base(
        PUBLIC,
        "[[routes]]\nupstream = \"u\"",
        &upstream(&old),
    ))
    .await;
    let addr = gw.addr("public");
    // A download in flight, and a keep-alive client between requests.
    let len = 16 * 1024 * 1024;
    let mut downloading = http_client::<http_body_util::Empty<bytes::Bytes>>(addr).await;
    let res = within(
        "a response",
        downloading.send_request(http_request(
            "GET",
            &format!("/big/{len}"),
            Default::default(),
        )),
    )
    .await
    .expect("response");
    let mut body = res.into_body();
    let first = within("the first bytes", http_body_util::BodyExt::frame(&mut body))
        .await
        .expect("body open")
        .expect("frame")
        .into_data()
        .expect("data");
    let mut idle = http_client::<http_body_util::Empty<bytes::Bytes>>(addr).await;
    assert_eq!(whoami(&mut idle).await, old.addr.to_string());

    write_config(
        &gw,
        &base(PUBLIC, "[[routes]]\nupstream = \"u\"", &upstream(&new)),
    );
    gw.gateway.reload().await.expect("reload");

    // The download finishes whole, from the old server.
    let rest = check_pattern_from(body, first.len() as u64);
    assert_eq!(within("the rest", rest).await.expect("body"), (len, 0));
    // The kept-alive client connection goes on, its next request routed anew.
    assert_eq!(whoami(&mut idle).await, new.addr.to_string());
    assert_eq!(
        http_text(addr, "GET", "/whoami").await.1,
        new.addr.to_string()
    );
}

async fn whoami(
    client: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
) -> String {
    client.ready().await.expect("ready");
    let res = within(
        "a response",
        client.send_request(http_request("GET", "/whoami", Default::default())),
    )
    .await
    .expect("response");
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn reloads_do_not_drain_the_servers_they_keep() {
    let kept = echo_backend().await;
    let removed = echo_backend().await;
    // A short drain_timeout on the kept server: a reload that wrongly
    // drained it would close its tunnels long before the removed server's
    // (longer) drain closes its own, which the test waits for.
    let config = |i: usize| {
        let extra_route = format!("[[routes]]\npath_prefix = \"/v{i}\"\nupstream = \"u\"\n");
        let gone = if i < 4 {
            format!("[[routes]]\npath_prefix = \"/g\"\nupstream = \"g\"\n[upstreams.g]\nservers = [\"{removed}\"]\ndrain_timeout = \"300ms\"\ndrain_spread = \"1ms\"\n")
        } else {
            String::new()
        };
        base(
            PUBLIC,
            &format!("[[routes]]\nupstream = \"u\"\n{extra_route}"),
            &format!("[upstreams.u]\nservers = [\"{kept}\"]\ndrain_timeout = \"50ms\"\ndrain_spread = \"1ms\"\n{gone}"),
        )
    };
    let gw = TestGateway::start(&config(0)).await;
    let mut on_kept = Vec::new();
    for _ in 0..3 {
        on_kept.push(ws_connect(gw.addr("public"), "/ws").await);
    }
    let mut on_removed = ws_connect(gw.addr("public"), "/g").await;
    echo_once(&mut on_removed, "on the removed server").await;
    for i in 1..=3 {
        write_config(&gw, &config(i));
        let report = gw.gateway.reload().await.expect("reload");
        assert!(report.servers_removed.is_empty(), "reload {i}: {report:?}");
        for ws in &mut on_kept {
            echo_once(ws, &format!("after reload {i}")).await;
        }
    }
    write_config(&gw, &config(4));
    let report = gw.gateway.reload().await.expect("reload removing g");
    assert_eq!(report.servers_removed, [format!("g/{removed}")]);
    let (code, _) = expect_close(
        &mut on_removed,
        "Close 1001 from the removed server's drain",
    )
    .await;
    assert_eq!(code, 1001);
    finish(on_removed).await;
    // Every drain these reloads started has run by now: the kept server's
    // tunnels are open and still echo.
    for ws in &mut on_kept {
        echo_once(ws, "after the removed server's drain").await;
    }
    assert_eq!(gw.gateway.registry().live_count(), 3);
}

fn lookup_fails(host: &str, _port: u16) -> std::io::Result<Vec<SocketAddr>> {
    Err(std::io::Error::other(format!("{host}: no answer")))
}

/// Resolving again is not a reload: a name whose lookup now fails keeps
/// the addresses it had, and its servers stay the same servers (live
/// count, enabled, weight), so their tunnels are neither drained nor cut.
#[tokio::test]
async fn a_name_whose_lookup_fails_when_resolved_again_keeps_its_servers_and_tunnels() {
    let backend = echo_backend().await;
    let toml = base(
        PUBLIC,
        "[[routes]]\nupstream = \"u\"",
        &format!(
            "[upstreams.u]\nservers = [{{ addr = \"localhost:{}\", weight = 3 }}]\ndrain_timeout = \"1ms\"\ndrain_spread = \"1ms\"\nresolve_interval = \"1h\"",
            backend.port()
        ),
    );
    let gw = TestGateway::start(&toml).await;
    let shared = gw.gateway.shared().clone();
    let mut ws = ws_connect(gw.addr("public"), "/ws").await;
    echo_once(&mut ws, "before").await;
    let before: Vec<Arc<wsgate::upstream::balancer::Server>> = shared
        .snapshot
        .load()
        .upstream("u")
        .expect("u")
        .servers
        .clone();
    let serving = before
        .iter()
        .find(|s| s.addr == backend)
        .expect("the name's 127.0.0.1 address is a server")
        .clone();
    assert_eq!(serving.active(), 1);

    shared.set_resolver(lookup_fails);
    assert!(
        wsgate::control::reload::re_resolve(&shared).await.is_none(),
        "a failed lookup changes nothing"
    );
    let after = shared
        .snapshot
        .load()
        .upstream("u")
        .expect("u")
        .servers
        .clone();
    assert_eq!(after.len(), before.len());
    for (a, b) in after.iter().zip(&before) {
        assert!(Arc::ptr_eq(a, b), "{} is the same server", a.addr);
        assert!(a.is_enabled(), "{} still takes connections", a.addr);
        assert_eq!(a.weight(), 3);
    }
    assert!(shared.draining_list().is_empty(), "nothing drains");
    assert_eq!(serving.active(), 1);
    echo_once(&mut ws, "after").await;

    // A reload meanwhile is refused, naming the server entry, and changes nothing either.
    let refused = gw
        .gateway
        .reload()
        .await
        .expect_err("a name that does not resolve");
    assert!(matches!(refused, ReloadError::Resolve(_)), "{refused}");
    let again = shared
        .snapshot
        .load()
        .upstream("u")
        .expect("u")
        .servers
        .clone();
    assert!(again.iter().zip(&before).all(|(a, b)| Arc::ptr_eq(a, b)));
    echo_once(&mut ws, "after the refused reload").await;
    ws.close(None).await.expect("close");
    finish(ws).await;
}

/// An operator drains a server, a reload removes it and another adds it
/// back before its tunnels are gone: it is the same server again, still
/// draining as the operator asked, its tunnel counted on it (the API's two
/// views agree), and `enable` stops the drain, so the tunnel is never closed.
#[tokio::test]
async fn an_operators_drain_survives_a_remove_and_add_reload_and_stays_cancellable() {
    let a = echo_backend().await;
    let b = echo_backend().await;
    let up = |servers: String| {
        format!("[upstreams.u]\nservers = {servers}\ndrain_timeout = \"300ms\"\ndrain_spread = \"50ms\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n")
    };
    let routes = "[[routes]]\nupstream = \"u\"";
    let gw = TestGateway::start(&base(PUBLIC, routes, &up(server_list(&[b])))).await;
    let admin = gw.admin.expect("admin listener");
    let mut on_b = ws_connect(gw.addr("public"), "/ws").await;
    echo_once(&mut on_b, "on b").await;
    let drain = format!("/api/upstreams/u/servers/{b}/drain");
    let (status, body) = http_text(admin, "POST", &drain).await;
    assert_eq!(status, 202, "{body}");

    write_config(&gw, &base(PUBLIC, routes, &up(server_list(&[a]))));
    gw.gateway.reload().await.expect("remove b");
    write_config(&gw, &base(PUBLIC, routes, &up(server_list(&[a, b]))));
    gw.gateway.reload().await.expect("add b back");

    let server = gw
        .gateway
        .shared()
        .snapshot
        .load()
        .upstream("u")
        .and_then(|u| u.server(b).cloned())
        .expect("b");
    assert_eq!(server.active(), 1, "B's tunnel is counted on B again");
    assert!(!server.is_enabled(), "the operator's drain goes on");
    let (_, text) = http_text(admin, "GET", "/api/upstreams").await;
    let ups: serde_json::Value = serde_json::from_str(&text).expect("json");
    let listed = ups
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == "u"))
        .and_then(|u| u["servers"].as_array().cloned())
        .expect("upstream u");
    let b_view = listed
        .iter()
        .find(|s| s["addr"] == b.to_string())
        .expect("b listed");
    assert_eq!(b_view["active"], 1, "{b_view}");
    assert_eq!(b_view["state"], "draining", "{b_view}");
    let (_, text) = http_text(admin, "GET", "/api/connections").await;
    let conns: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(conns.as_array().map(Vec::len), Some(1), "{conns}");

    let (status, body) = http_text(
        admin,
        "POST",
        &format!("/api/upstreams/u/servers/{b}/enable"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(server.is_enabled());
    // Well past the drain timeout, the tunnel was never closed.
    match tokio::time::timeout(Duration::from_millis(800), on_b.next()).await {
        Err(_) => {}
        Ok(got) => panic!("the enabled server's tunnel got {got:?}"),
    }
    echo_once(&mut on_b, "still on b").await;
}
