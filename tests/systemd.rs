//! Running under systemd, with real processes: socket activation (a
//! listener on an inherited socket, matched by name; an unknown name or a
//! socket that is not listening refused at start; sockets whose
//! `LISTEN_PID` names another process ignored) and the notify protocol
//! on a test `NOTIFY_SOCKET` (READY, RELOADING with MONOTONIC_USEC around
//! a SIGHUP reload, STATUS, WATCHDOG, STOPPING), in order.

mod common;
#[path = "support/process.rs"]
mod process;

use std::os::unix::net::UnixDatagram;
use std::path::Path;

use common::*;
use process::Wsgate;

/// Addresses no process here can bind (TEST-NET-1): a listener that bound
/// its configured address instead of the inherited socket fails to start.
const UNBINDABLE: &str = "192.0.2.1";

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("wsgate.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn activated_config(echo: std::net::SocketAddr) -> String {
    format!(
        "[admin]\nbind = \"{UNBINDABLE}:9\"\n\
         [[listeners]]\nname = \"public\"\nbind = \"{UNBINDABLE}:80\"\n\
         [[listeners]]\nname = \"other\"\nbind = \"127.0.0.1:0\"\n\
         [[routes]]\nupstream = \"echo\"\n\
         [upstreams.echo]\nservers = [\"{echo}\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_named_like_inherited_sockets_use_them_and_the_others_bind() {
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &activated_config(echo));
    let mut wsgate =
        Wsgate::activate(&["public=127.0.0.1:0", "admin=127.0.0.1:0"], &config, &[]).await;
    // The admin listener is served first, so that it can answer while the
    // config is being made live.
    let admin_used = wsgate.logged("admin: using the socket passed").await;
    let used = wsgate
        .logged("using the socket passed by the service manager")
        .await;
    assert_eq!(admin_used["configured"], format!("{UNBINDABLE}:9"));
    let (public, admin) = (wsgate.addr("public"), wsgate.addr("admin"));
    assert_eq!(used["listener"], "public");
    assert_eq!(used["configured"], format!("{UNBINDABLE}:80"));
    assert_eq!(used["addr"], public.to_string());
    // The listener without a passed socket binds its own address.
    let other = wsgate
        .line_until("the other listener", |l| {
            l.contains("\"listening\"") && l.contains("\"other\"")
        })
        .await;
    assert!(other.contains("127.0.0.1:"), "{other}");
    let mut ws = within("ws connect", ws_connect(public, "/ws")).await;
    echo_once(&mut ws, "through an inherited socket").await;
    assert_eq!(http_text(admin, "GET", "/readyz").await.0, 200);
    wsgate.signal("TERM");
    let (code, _) = expect_close(&mut ws, "the 1001").await;
    assert_eq!(code, 1001);
    drop(ws);
    let status = wsgate.wait_exit().await;
    assert!(status.success(), "exit after SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inherited_socket_that_matches_no_listener_is_refused_at_start() {
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &activated_config(echo));
    let mut wsgate =
        Wsgate::activate(&["public=127.0.0.1:0", "pubilc=127.0.0.1:0"], &config, &[]).await;
    let status = wsgate.wait_exit().await;
    assert_eq!(status.code(), Some(1), "{status}");
    let stderr = wsgate.stderr();
    assert!(
        stderr.contains(
            "the socket named pubilc matches no [[listeners]] name (public, other, admin)"
        ),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inherited_socket_that_is_not_listening_is_refused_at_start() {
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &activated_config(echo));
    let mut wsgate = Wsgate::activate(&["public=127.0.0.1:0,nolisten"], &config, &[]).await;
    let status = wsgate.wait_exit().await;
    assert_eq!(status.code(), Some(1), "{status}");
    let stderr = wsgate.stderr();
    assert!(
        stderr.contains("the socket named public (fd 3) is not listening"),
        "{stderr}"
    );
}

/// `LISTEN_PID` names another process (a parent that was activated and
/// did not exec): the sockets and their names are not wsgate's, so it
/// ignores them and binds its own addresses instead of refusing to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_passed_to_another_process_are_ignored() {
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &format!(
            "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\
             [[routes]]\nupstream = \"echo\"\n\
             [upstreams.echo]\nservers = [\"{echo}\"]\n"
        ),
    );
    let mut wsgate = Wsgate::activate(
        &["public=127.0.0.1:0"],
        &config,
        &[("ACTIVATE_LISTEN_PID", "1")],
    )
    .await;
    let listening = wsgate
        .line_until("the listener bound by wsgate itself", |l| {
            l.contains("\"listening\"") || l.contains("socket activation")
        })
        .await;
    let line: serde_json::Value = serde_json::from_str(&listening).expect("JSON");
    let addr: std::net::SocketAddr = line["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("a listener address: {listening}"));
    assert_ne!(addr, wsgate.addr("public"), "not the passed socket");
    let mut ws = within("ws connect", ws_connect(addr, "/ws")).await;
    echo_once(&mut ws, "through its own listener").await;
    wsgate.signal("TERM");
    let (code, _) = expect_close(&mut ws, "the 1001").await;
    assert_eq!(code, 1001);
    drop(ws);
    let status = wsgate.wait_exit().await;
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        wsgate.stderr()
    );
}

// === the notify protocol ===

/// Receives the notify datagrams on a thread (the socket is blocking) and
/// hands them over one message at a time.
fn notify_socket(path: &Path) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let sock = UnixDatagram::bind(path).expect("bind NOTIFY_SOCKET");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            if tx
                .send(String::from_utf8_lossy(&buf[..n]).to_string())
                .is_err()
            {
                break;
            }
        }
    });
    rx
}

/// Reads messages until one satisfies `pred`; returns it and those before.
async fn message_until(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    all: &mut Vec<String>,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    within(what, async {
        loop {
            let m = rx.recv().await.expect("notify socket open");
            all.push(m.clone());
            if pred(&m) {
                return m;
            }
        }
    })
    .await
}

fn has(message: &str, line: &str) -> bool {
    message.lines().any(|l| l == line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_messages_come_in_order_around_a_reload_and_a_stop() {
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "[runtime]\nshutdown_spread = \"0s\"\n\
         [[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\
         [[routes]]\nupstream = \"echo\"\n\
         [upstreams.echo]\nservers = [\"{echo}\"]\n"
    );
    let config = write_config(dir.path(), &text);
    let socket_path = dir.path().join("notify.sock");
    let mut rx = notify_socket(&socket_path);
    let socket = socket_path.to_str().expect("UTF-8 path");
    let mut wsgate = Wsgate::activate(
        &["public=127.0.0.1:0"],
        &config,
        &[("NOTIFY_SOCKET", socket), ("WATCHDOG_USEC", "200000")],
    )
    .await;
    let mut all = Vec::new();
    let first = message_until(&mut rx, &mut all, "READY=1", |_| true).await;
    assert!(has(&first, "READY=1"), "the first message: {first:?}");
    assert!(first.contains("STATUS=0 tunnels open"), "{first:?}");

    // Watchdog pings carry the number of open tunnels.
    let mut ws = within("ws connect", ws_connect(wsgate.addr("public"), "/ws")).await;
    echo_once(&mut ws, "counted").await;
    let ping = message_until(&mut rx, &mut all, "a ping counting the tunnel", |m| {
        m.contains("STATUS=1 tunnels open")
    })
    .await;
    assert!(has(&ping, "WATCHDOG=1"), "{ping:?}");

    // A reload: RELOADING=1 with the monotonic clock, then READY=1.
    wsgate.signal("HUP");
    let reloading =
        message_until(&mut rx, &mut all, "RELOADING=1", |m| has(m, "RELOADING=1")).await;
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert!(usec.parse::<u64>().is_ok_and(|u| u > 0), "{reloading:?}");
    let ready = message_until(&mut rx, &mut all, "READY=1 after the reload", |m| {
        has(m, "READY=1")
    })
    .await;
    assert!(ready.contains("STATUS=reloaded"), "{ready:?}");

    // A failed reload is followed by READY=1 too, saying it failed.
    std::fs::write(&config, "[[listeners]]\nname = 1\n").expect("break the config");
    wsgate.signal("HUP");
    message_until(&mut rx, &mut all, "RELOADING=1", |m| has(m, "RELOADING=1")).await;
    let ready = message_until(&mut rx, &mut all, "READY=1 after the failed reload", |m| {
        has(m, "READY=1")
    })
    .await;
    assert!(ready.contains("STATUS=reload failed"), "{ready:?}");

    wsgate.signal("TERM");
    let stopping = message_until(&mut rx, &mut all, "STOPPING=1", |m| has(m, "STOPPING=1")).await;
    assert!(
        stopping.contains("STATUS=stopping: 1 tunnels open"),
        "{stopping:?}"
    );
    assert_eq!(expect_close(&mut ws, "the 1001").await.0, 1001);
    drop(ws);
    let status = wsgate.wait_exit().await;
    assert!(status.success(), "exit after SIGTERM: {status}");
    // Nothing says READY once stopping.
    while let Ok(m) = rx.try_recv() {
        all.push(m);
    }
    let stop_at = all
        .iter()
        .position(|m| has(m, "STOPPING=1"))
        .expect("STOPPING");
    assert!(
        !all[stop_at..].iter().any(|m| has(m, "READY=1")),
        "{all:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watchdog_meant_for_another_process_is_not_pinged() {
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\
         [[routes]]\nupstream = \"echo\"\n\
         [upstreams.echo]\nservers = [\"{echo}\"]\n"
    );
    let config = write_config(dir.path(), &text);
    let socket_path = dir.path().join("notify.sock");
    let mut rx = notify_socket(&socket_path);
    let socket = socket_path.to_str().expect("UTF-8 path");
    // WATCHDOG_PID names another process (init), as after a fork.
    let mut wsgate = Wsgate::activate(
        &["public=127.0.0.1:0"],
        &config,
        &[
            ("NOTIFY_SOCKET", socket),
            ("WATCHDOG_USEC", "100000"),
            ("WATCHDOG_PID", "1"),
        ],
    )
    .await;
    let mut all = Vec::new();
    message_until(&mut rx, &mut all, "READY=1", |m| has(m, "READY=1")).await;
    // The heartbeat's first beat comes right after READY=1: a STATUS line
    // alone, without the ping.
    let beat = message_until(&mut rx, &mut all, "the first STATUS", |m| {
        m.contains("tunnels open")
    })
    .await;
    assert!(!has(&beat, "WATCHDOG=1"), "{beat:?}");
    wsgate.signal("TERM");
    assert!(wsgate.wait_exit().await.success());
}
