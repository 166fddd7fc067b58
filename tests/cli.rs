//! The `wsgate` binary: `check` and its error report (without DNS), `--help` and
//! `--version`, `run` with JSON logs, its access-log line, its refusals and
//! SIGTERM, the line-based `client`, and the demo on its fixed ports.

mod common;

use std::io::{BufRead, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_wsgate");

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    // NO_COLOR is removed so that what the tests see of colour does not
    // depend on the environment they run in.
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    cmd
}

/// Runs wsgate to completion (waiting on a blocking thread).
async fn wsgate(args: &[&str]) -> Output {
    let child = command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wsgate");
    within(
        &format!("wsgate {args:?} to exit"),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("join")
    .expect("run wsgate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write file");
    path.to_str().expect("utf-8 path").to_string()
}

const GOOD: &str = r#"[timeouts]
connect = "2s"

[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[routes]]
upstream = "u"

[upstreams.u]
servers = ["127.0.0.1:9"]
"#;

#[tokio::test]
async fn check_accepts_a_good_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "good.toml", GOOD);
    let out = wsgate(&["check", "--config", &path]).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{path}: ok\n"));
    assert_eq!(text(&out.stderr), "");
}

#[tokio::test]
async fn check_reports_every_problem_with_line_column_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = r#"[timeouts]
connect = "soon"

[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[routes]]
upstream = "missing"

[upstreams.u]
servers = ["127.0.0.1:9"]
"#;
    let path = write(dir.path(), "bad.toml", config);
    let out = wsgate(&["check", "--config", &path]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "", "nothing on stdout for a bad config");
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "exactly two problems: {stderr}");
    let connect = format!("{path}:2:11: timeouts.connect: ");
    assert!(lines[0].starts_with(&connect), "{}", lines[0]);
    assert!(lines[0].contains("\"soon\""), "{}", lines[0]);
    let upstream = format!("{path}:9:12: routes[0].upstream: ");
    assert!(lines[1].starts_with(&upstream), "{}", lines[1]);
    assert!(lines[1].contains("missing"), "{}", lines[1]);
}

#[tokio::test]
async fn check_reports_a_syntax_error_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "syntax.toml",
        "[[listeners]]\nname = \"unterminated\nbind = \"127.0.0.1:0\"\n",
    );
    let out = wsgate(&["check", "--config", &path]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with(&format!("{path}:2:")), "{stderr}");
    assert!(stderr.contains("name"), "the key is named: {stderr}");
}

/// `GOOD` with its server given by a name under `.invalid`, which never
/// resolves (RFC 6761): no network is needed to see it fail.
fn unresolvable() -> String {
    GOOD.replace("\"127.0.0.1:9\"", "\"backend.invalid:9\"")
}

#[tokio::test]
async fn check_does_not_resolve_host_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "names.toml", &unresolvable());
    let out = wsgate(&["check", "--config", &path]).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{path}: ok\n"));
}

#[tokio::test]
async fn run_refuses_a_host_name_that_does_not_resolve_naming_where_it_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "names.toml", &unresolvable());
    let out = wsgate(&["run", "--config", &path]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{path}:12:12: upstreams.u.servers[0]: cannot resolve backend.invalid"
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn check_reports_a_missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent.toml");
    let path = path.to_str().expect("utf-8 path");
    let out = wsgate(&["check", "--config", path]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{path}: cannot read config")),
        "{stderr}"
    );
}

#[tokio::test]
async fn help_on_every_subcommand() {
    for (sub, must_mention) in [
        ("run", "--config"),
        ("check", "--config"),
        ("demo", "--config"),
        ("client", "--ca"),
    ] {
        let out = wsgate(&[sub, "--help"]).await;
        assert_eq!(out.status.code(), Some(0), "{sub} --help");
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains(&format!("Usage: wsgate {sub}")),
            "{sub}: {stdout}"
        );
        assert!(stdout.contains(must_mention), "{sub}: {stdout}");
        assert!(stdout.contains("--log-format"), "{sub}: {stdout}");
    }
    let out = wsgate(&["--help"]).await;
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    for sub in ["run", "check", "demo", "client"] {
        assert!(stdout.contains(sub), "top-level help lists {sub}: {stdout}");
    }
}

#[tokio::test]
async fn version_matches_cargo_toml() {
    let out = wsgate(&["--version"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("wsgate {}", env!("CARGO_PKG_VERSION"))
    );
}

/// README: "`--help`, `--version`: as usual, on every command".
#[tokio::test]
async fn version_on_every_subcommand() {
    for sub in ["run", "check", "demo", "client"] {
        let out = wsgate(&[sub, "--version"]).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "wsgate {sub} --version: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains(env!("CARGO_PKG_VERSION")),
            "wsgate {sub} --version: {}",
            text(&out.stdout)
        );
    }
}

/// The README points readers at source files and folders (its Layout, the
/// smuggling guard): every one it names exists, so moving code cannot
/// leave the README pointing at files that are gone.
#[test]
fn every_source_path_the_readme_names_exists() {
    let readme = include_str!("../README.md");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Paths written out in full, anywhere.
    let mut named: Vec<String> = readme
        .match_indices("`src/")
        .filter_map(|(at, _)| readme[at + 1..].split('`').next())
        .map(str::to_string)
        .collect();
    // The layout table: `| `folder/` | ... `file.rs` ... `dir/` ... |`, each
    // file or folder named inside its row's folder.
    for row in readme.lines().filter(|l| l.starts_with("| `")) {
        let mut cells = row.split('|').skip(1);
        let (Some(first), Some(rest)) = (cells.next(), cells.next()) else {
            continue;
        };
        let folder = first.trim().trim_matches('`');
        if !folder.ends_with('/') || !root.join("src").join(folder).is_dir() {
            continue;
        }
        named.push(format!("src/{folder}"));
        for part in rest.split('`').skip(1).step_by(2) {
            if part.ends_with(".rs") || (part.ends_with('/') && !part.contains(' ')) {
                named.push(format!("src/{folder}{part}"));
            }
        }
    }
    assert!(
        named.len() >= 30,
        "the README names the source files: {named:?}"
    );
    let missing: Vec<&String> = named.iter().filter(|p| !root.join(p).exists()).collect();
    assert!(
        missing.is_empty(),
        "the README names source paths that do not exist: {missing:?}"
    );
}

// === running children ===

/// A running wsgate whose stdout is read line by line; killed when dropped.
struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    seen: Vec<String>,
}

impl Running {
    fn spawn(args: &[&str]) -> Self {
        let mut child = command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wsgate");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        // Blocking pipe reads live on their own threads; both end at the child's exit.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err_pipe = child.stderr.take().expect("stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err_pipe.read_to_string(&mut s);
            sink.lock().unwrap().push_str(&s);
        });
        Self {
            child,
            lines,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Reads stdout until a line satisfies `pred`; panics with everything
    /// seen (and stderr) if stdout ends first.
    async fn line_until(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let found = within(what, async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if pred(&line) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Some(line) => line,
            None => {
                // stdout is closed: the child has exited or is exiting.
                let _ = self.wait_exit().await;
                panic!(
                    "wsgate's stdout ended before {what}\nstdout:\n{}\nstderr:\n{}",
                    self.seen.join("\n"),
                    self.stderr.lock().unwrap()
                );
            }
        }
    }

    /// Reads JSON log lines until one has `message == msg`.
    async fn json_event(&mut self, msg: &str) -> Value {
        let line = self
            .line_until(&format!("a JSON log line {msg:?}"), |l| {
                let v: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}"));
                v["message"] == msg
            })
            .await;
        serde_json::from_str(&line).expect("JSON")
    }

    /// Waits for the "listening" event and returns the address it names.
    async fn listening_addr(&mut self) -> std::net::SocketAddr {
        let listening = self.json_event("listening").await;
        listening["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no socket address in {listening}"))
    }

    /// Waits for the child to exit.
    async fn wait_exit(&mut self) -> ExitStatus {
        within("wsgate to exit", async {
            loop {
                if let Some(status) = self.child.try_wait().expect("try_wait") {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Reads what is left on stdout once the child has exited.
    async fn drain(&mut self) {
        within("the rest of wsgate's stdout", async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line);
            }
        })
        .await;
    }

    /// Sends SIGTERM and waits for the exit status.
    async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
        self.wait_exit().await
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Like tokio's kill_on_drop: never leave a wsgate behind a failed test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago (the child must bind it itself).
async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_json_with_one_access_line_per_tunnel() {
    let backend = echo_backend().await;
    let port = free_port().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        r#"[timeouts]
connect = "2s"
upstream_handshake = "2s"

[[listeners]]
name = "edge"
bind = "127.0.0.1:{port}"

[[routes]]
path_prefix = "/chat"
upstream = "echo"

[upstreams.echo]
servers = ["{backend}"]
"#
    );
    let path = write(dir.path(), "run.toml", &config);
    let mut wsgate = Running::spawn(&["run", "--config", &path, "--log-format", "json"]);

    let listening = wsgate.json_event("listening").await;
    assert_eq!(listening["listener"], "edge", "{listening}");
    assert_eq!(listening["level"], "INFO", "{listening}");
    let addr: std::net::SocketAddr = listening["addr"]
        .as_str()
        .expect("addr field")
        .parse()
        .expect("addr is a socket address");
    assert_eq!(addr.port(), port);

    let mut ws = ws_connect(addr, "/chat/room").await;
    let client_addr = ws.get_ref().local_addr().expect("local addr");
    for m in ["one", "two", "three"] {
        echo_once(&mut ws, m).await;
    }
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
    .await
    .expect("close");
    within("the closing handshake", async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    // The backend closes TCP first (RFC 6455 5.5.1); wsgate passes its FIN on.
    wait_closed(ws.get_mut()).await;
    drop(ws);

    let closed = wsgate.json_event("websocket closed").await;
    // Masked client frames: 3 texts (2+4+len) and a Close with a code (2+4+2);
    // unmasked echoes (2+len) and the echoed Close (2+2).
    assert_json_fields(
        &closed,
        &[
            ("target", json!("wsgate::access")),
            ("listener", json!("edge")),
            ("route", json!("*/chat")),
            ("upstream", json!("echo")),
            ("path", json!("/chat/room")),
            ("closed_by", json!("backend")),
            ("close_frame_from", json!("client")),
            ("reason", json!("closed")),
            ("client", json!(client_addr.to_string())),
            ("backend", json!(backend.to_string())),
            ("messages_to_backend", json!(3)),
            ("messages_to_client", json!(3)),
            ("frames_to_backend", json!(4)),
            ("frames_to_client", json!(4)),
            ("bytes_to_backend", json!(9 + 9 + 11 + 8)),
            ("bytes_to_client", json!(5 + 5 + 7 + 4)),
            ("close_code", json!(1000)),
        ],
    );
    assert!(closed["id"].is_u64(), "{closed}");
    assert!(closed["duration_ms"].is_u64(), "{closed}");
    assert!(
        closed.get("error").is_none(),
        "a clean end has no error: {closed}"
    );

    // A Close frame without a code: the line has no close_code at all (not
    // a sentinel such as -1), and still says who sent the Close.
    let mut ws = ws_connect(addr, "/chat/room").await;
    ws.close(None).await.expect("close without a code");
    within("the closing handshake", async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    drop(ws);
    let closed = wsgate.json_event("websocket closed").await;
    assert!(closed.get("close_code").is_none(), "{closed}");
    assert_eq!(closed["close_frame_from"], "client", "{closed}");
    assert_eq!(closed["reason"], "closed", "{closed}");

    let status = wsgate.terminate().await;
    assert!(status.success(), "exit after SIGTERM: {status}");
    wsgate.drain().await;
    // Every line, including what shutdown logs, is one JSON object.
    assert!(wsgate.seen.len() > 2, "{:?}", wsgate.seen);
    for line in &wsgate.seen {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
        assert!(v["message"].is_string() && v["level"].is_string(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_a_bad_config_and_a_busy_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = write(
        dir.path(),
        "bad.toml",
        &GOOD.replace("connect = \"2s\"", "connect = \"0s\""),
    );
    let out = wsgate(&["run", "--config", &bad]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{bad}:2:11: timeouts.connect: must be longer than zero"
        )),
        "{stderr}"
    );

    // A listener address that is already taken.
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let busy = write(
        dir.path(),
        "busy.toml",
        &GOOD.replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    );
    let out = wsgate(&["run", "--config", &busy]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("listener public: cannot bind 127.0.0.1:{port}")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sends_stdin_lines_and_prints_replies() {
    let gw = TestGateway::start(&simple_config(&[echo_backend().await])).await;
    let url = format!("ws://{}/chat", gw.addr("public"));
    let mut child = command(&["client", &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wsgate client");
    let mut stdin = child.stdin.take().expect("stdin");
    // Closing stdin makes the client send a Close after the lines.
    std::io::Write::write_all(&mut stdin, b"first line\nsecond line\n").expect("write stdin");
    drop(stdin);
    let out = within(
        "wsgate client to exit",
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("join")
    .expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0], "< first line");
    assert_eq!(lines[1], "< second line");
    // The client closed first, without a code, and the echo answered alike.
    assert_eq!(lines[2], "< server answered our close without a close code");
    assert!(text(&out.stderr).contains(&format!("connected to {url}")));
    gw.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_prints_a_close_from_the_server_with_its_code_name_and_reason() {
    let cases = [
        (
            Some(CloseFrame {
                code: CloseCode::Away,
                reason: "bye \"now\"".into(),
            }),
            r#"< closed by server: 1001 (going away) "bye \"now\"""#,
        ),
        (
            Some(CloseFrame {
                code: CloseCode::from(4000),
                reason: "".into(),
            }),
            "< closed by server: 4000",
        ),
        (None, "< closed by server without a close code"),
    ];
    for (close, want) in cases {
        let mut backend = WsBackend::start().await;
        let url = format!("ws://{}/chat", backend.addr);
        let mut child = command(&["client", &url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wsgate client");
        // Stdin stays open, so the server's Close is the first one.
        let stdin = child.stdin.take().expect("stdin");
        let mut accepted = backend.next().await;
        accepted.ws.close(close).await.expect("send the Close");
        within("the client to leave", async {
            while let Some(Ok(_)) = accepted.ws.next().await {}
        })
        .await;
        let out = within(
            "wsgate client to exit",
            tokio::task::spawn_blocking(move || child.wait_with_output()),
        )
        .await
        .expect("join")
        .expect("wait");
        drop(stdin);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{want}\n"));
    }
}

/// The only test that uses the demo's fixed ports (8080, 8443, 9001, 9002, 9101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_the_example_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let config = dir.path().join("config.example.toml");
    std::fs::copy(&example, &config).expect("copy the example config");
    let config = config.to_str().expect("utf-8 path").to_string();

    let mut demo = Running::spawn(&["demo", "--config", &config]);
    demo.line_until("the demo's self-check", |l| l.contains("self-check passed"))
        .await;
    let ca = dir.path().join("certs/ca.pem");
    assert!(ca.is_file(), "the demo made {}", ca.display());
    assert!(dir.path().join("certs/server.pem").is_file());
    assert!(dir.path().join("certs/server.key").is_file());
    assert!(
        demo.seen
            .iter()
            .any(|l| l.contains("ws://127.0.0.1:8080/chat")),
        "{:?}",
        demo.seen
    );

    let addr = "127.0.0.1:8080".parse().expect("addr");
    // The page of the same route, as a browser would load it first.
    let (status, page) = http_text(addr, "GET", "/chat").await;
    assert_eq!(status, 200);
    assert!(page.contains("new WebSocket("), "{page}");
    // A form post to the same page: the demo backend reads it, no reset.
    let (status, _) = http_send(addr, "POST", "/chat", PatternBody::new(100_000, false)).await;
    assert_eq!(status, 200);
    let open = demo
        .line_until("the page's URL", |l| {
            l.contains("open http://127.0.0.1:8080/chat in a browser")
        })
        .await;
    // The dashboard's URL beside it, and the page is there.
    assert!(
        open.ends_with("|  dashboard: http://127.0.0.1:9090/"),
        "{open}"
    );
    let (status, page) = http_text("127.0.0.1:9090".parse().expect("addr"), "GET", "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "{page}");
    let mut ws = ws_connect(addr, "/chat").await;
    ws.send(Message::text("ping through the demo"))
        .await
        .expect("send");
    match within("the demo's echo", ws.next()).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "ping through the demo"),
        other => panic!("expected the echo, got {other:?}"),
    }
    drop(ws);

    // The TLS listener serves the certificate the demo made, signed by its CA.
    let mut roots = rustls::RootCertStore::empty();
    {
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_file_iter(&ca).expect("open CA") {
            roots.add(c.expect("CA PEM")).expect("add CA");
        }
    }
    let tls_config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect("127.0.0.1:8443").await.expect("connect");
    let tls = within(
        "the TLS handshake with the demo",
        tokio_rustls::TlsConnector::from(Arc::new(tls_config))
            .connect("localhost".try_into().expect("name"), tcp),
    )
    .await
    .expect("TLS handshake with the demo's certificate");
    let (mut wss, _) = within(
        "the wss handshake",
        tokio_tungstenite::client_async("wss://localhost:8443/chat", tls),
    )
    .await
    .expect("wss handshake");
    wss.send(Message::text("over tls")).await.expect("send");
    match within("the demo's wss echo", wss.next()).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "over tls"),
        other => panic!("expected the echo, got {other:?}"),
    }
    drop(wss);

    let status = demo.terminate().await;
    assert!(status.success(), "demo exit after SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_live_tunnels_with_1001_then_exits_0() {
    let backend = echo_backend().await;
    let port = free_port().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "[[listeners]]\nname = \"edge\"\nbind = \"127.0.0.1:{port}\"\n\n[[routes]]\nupstream = \"echo\"\n\n[upstreams.echo]\nservers = [\"{backend}\"]\n"
    );
    let path = write(dir.path(), "term.toml", &config);
    let mut wsgate = Running::spawn(&["run", "--config", &path, "--log-format", "json"]);
    let addr = wsgate.listening_addr().await;
    let mut ws = ws_connect(addr, "/live").await;
    echo_once(&mut ws, "before").await;
    let client = async {
        let (code, _) = expect_close(&mut ws, "the Close from wsgate").await;
        assert_eq!(code, 1001);
        // tungstenite answers the Close; then the connection ends.
        finish(ws).await;
    };
    let (status, ()) = tokio::join!(wsgate.terminate(), client);
    assert!(status.success(), "exit after SIGTERM: {status}");
    let closed = wsgate.json_event("websocket closed").await;
    assert_eq!(closed["reason"], "proxy_close", "{closed}");
    assert_eq!(closed["proxy_close_code"], 1001, "{closed}");
    assert_eq!(closed["proxy_close_reason"], "going away", "{closed}");
    assert_eq!(closed["closed_by"], "proxy", "{closed}");
    assert_eq!(closed["close_code"].as_i64(), Some(1001), "{closed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_goes_to_its_own_file_and_repeated_backend_errors_are_folded() {
    let backend = echo_backend().await;
    let dead = dead_addr().await;
    let port = free_port().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let access = dir.path().join("access.log");
    let config = format!(
        "[log]\nformat = \"json\"\naccess = \"access.log\"\n\n[[listeners]]\nname = \"edge\"\nbind = \"127.0.0.1:{port}\"\n\n[[routes]]\npath_prefix = \"/dead\"\nupstream = \"dead\"\n\n[[routes]]\nupstream = \"echo\"\n\n[upstreams.dead]\nservers = [\"{dead}\"]\n# Every handshake reaches the dead server: no ejection.\nmax_fails = 0\n\n[upstreams.echo]\nservers = [\"{backend}\"]\n"
    );
    let path = write(dir.path(), "log.toml", &config);
    // No --log-format flag: the JSON format comes from [log].
    let mut wsgate = Running::spawn(&["run", "--config", &path]);
    let addr = wsgate.listening_addr().await;
    for _ in 0..5 {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let (status, _, _) =
            raw_exchange(&mut tcp, handshake_request("/dead", "a").as_bytes()).await;
        assert_eq!(status, 502);
    }
    let mut ws = ws_connect(addr, "/live").await;
    ws.send(Message::text("x")).await.expect("send");
    within("an echo", ws.next())
        .await
        .expect("message")
        .expect("ok");
    ws.close(None).await.expect("close");
    within("the closing handshake", async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    drop(ws);
    // Six access lines (five refusals, one tunnel) land in the file, as JSON.
    let lines = within("six access lines in the file", async {
        loop {
            let text = std::fs::read_to_string(&access).unwrap_or_default();
            let lines: Vec<Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if lines.len() >= 6 {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        lines.iter().filter(|l| l["status"] == 502).count(),
        5,
        "{lines:?}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["message"] == "websocket closed")
            .count(),
        1,
        "{lines:?}"
    );
    let status = wsgate.terminate().await;
    assert!(status.success(), "{status}");
    wsgate.drain().await;
    // Stdout has the rest of the log, no access line, and one folded backend warning.
    let stdout: Vec<Value> = wsgate
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        stdout.iter().all(|l| l["target"] != "wsgate::access"),
        "{:?}",
        wsgate.seen
    );
    let failures: Vec<&Value> = stdout
        .iter()
        .filter(|l| l["message"] == "backend failure")
        .collect();
    assert_eq!(failures.len(), 1, "{:?}", wsgate.seen);
    assert_eq!(failures[0]["repeated_since_last"], 0);
    assert!(failures[0]["error"]
        .as_str()
        .unwrap_or("")
        .contains(&dead.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_and_a_bad_one_is_refused() {
    let backend = echo_backend().await;
    let port = free_port().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let first = format!(
        "[[listeners]]\nname = \"edge\"\nbind = \"127.0.0.1:{port}\"\n\n[[routes]]\npath_prefix = \"/a\"\nupstream = \"echo\"\n\n[upstreams.echo]\nservers = [\"{backend}\"]\n"
    );
    let path = write(dir.path(), "hup.toml", &first);
    let mut wsgate = Running::spawn(&["run", "--config", &path, "--log-format", "json"]);
    let addr = wsgate.listening_addr().await;
    let mut established = ws_connect(addr, "/a").await;
    let hup = |pid: u32| {
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    // A bad config is refused, with its line, and the old one keeps serving.
    write(
        dir.path(),
        "hup.toml",
        &format!("{first}\n[timeouts]\nconnect = \"soon\"\n"),
    );
    hup(wsgate.child.id());
    let refused = wsgate
        .json_event("config reload rejected; the running config stays")
        .await;
    assert!(
        refused["problem"]
            .as_str()
            .unwrap_or("")
            .contains(":13:11: timeouts.connect"),
        "{refused}"
    );
    // A good one adds a route.
    write(
        dir.path(),
        "hup.toml",
        &first.replace("path_prefix = \"/a\"", "path_prefix = \"/b\""),
    );
    hup(wsgate.child.id());
    let reloaded = wsgate.json_event("config reloaded").await;
    assert!(
        reloaded["routes_added"]
            .as_str()
            .unwrap_or("")
            .contains("*/b"),
        "{reloaded}"
    );
    let mut fresh = ws_connect(addr, "/b").await;
    for ws in [&mut established, &mut fresh] {
        ws.send(Message::text("after")).await.expect("send");
        assert_eq!(
            within("echo", ws.next()).await.expect("msg").expect("ok"),
            Message::text("after")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_one_access_line_per_plain_request() {
    let backend = AppBackend::start().await;
    let port = free_port().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "[[listeners]]\nname = \"edge\"\nbind = \"127.0.0.1:{port}\"\n\n[[routes]]\nupstream = \"app\"\n\n[upstreams.app]\nservers = [\"{}\"]\n",
        backend.addr
    );
    let path = write(dir.path(), "http.toml", &config);
    let mut wsgate = Running::spawn(&["run", "--config", &path, "--log-format", "json"]);
    let addr = wsgate.listening_addr().await;
    let (status, body) = http_send(addr, "POST", "/count?x=1", PatternBody::new(1234, false)).await;
    assert_eq!((status, body.as_str()), (200, "1234 0"));
    let line = wsgate.json_event("http request").await;
    assert_json_fields(
        &line,
        &[
            ("target", json!("wsgate::access")),
            ("listener", json!("edge")),
            ("upstream", json!("app")),
            ("method", json!("POST")),
            ("path", json!("/count?x=1")),
            ("backend", json!(backend.addr.to_string())),
            ("status", json!(200)),
            ("bytes_to_backend", json!(1234)),
            ("bytes_to_client", json!(body.len())),
        ],
    );
    assert!(line["duration_ms"].is_u64(), "{line}");
    // A refused request has its line too, with its reason.
    let (status, _) = http_text(addr, "GET", "/%2f").await;
    assert_eq!(status, 400);
    let line = wsgate.json_event("http request").await;
    assert_eq!(line["status"].as_u64(), Some(400), "{line}");
    assert!(
        line["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("client")),
        "{line}"
    );
    // An idle pooled backend connection does not hold up the exit.
    assert!(backend.connection_count() >= 1);
    let status = wsgate.terminate().await;
    assert!(status.success(), "exit after SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_to_a_pipe_or_a_file_carry_no_colour_codes() {
    let dead = dead_addr().await;
    let port = free_port().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let access = dir.path().join("access.log");
    // Text lines (the default format), the access lines in their own file.
    let config = format!(
        "[log]\naccess = \"access.log\"\n\n[[listeners]]\nname = \"edge\"\nbind = \"127.0.0.1:{port}\"\n\n[[routes]]\nupstream = \"dead\"\n\n[upstreams.dead]\nservers = [\"{dead}\"]\n"
    );
    let path = write(dir.path(), "text.toml", &config);
    let mut wsgate = Running::spawn(&["run", "--config", &path]);
    wsgate
        .line_until("the listening line", |l| l.contains("listening"))
        .await;
    let mut tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (status, _, _) = raw_exchange(&mut tcp, handshake_request("/x", "a").as_bytes()).await;
    assert_eq!(status, 502);
    let access_line = within("the access line in its file", async {
        loop {
            let text = std::fs::read_to_string(&access).unwrap_or_default();
            if text.ends_with('\n') {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let status = wsgate.terminate().await;
    assert!(status.success(), "{status}");
    wsgate.drain().await;
    let stdout = wsgate.seen.iter().map(String::as_str);
    for line in stdout.chain(access_line.lines()) {
        assert!(!line.contains('\u{1b}'), "an ESC byte in {line:?}");
    }
    assert!(
        wsgate.seen.iter().any(|l| l.contains(" INFO ")),
        "text lines on stdout: {:?}",
        wsgate.seen
    );
}
