//! A real `wsgate run` child for process-level tests, started through
//! `activate.py` (socket activation, as systemd does it), so that its
//! listeners are on free ports the test knows before the child starts.
//! Included by the test files that need it with `#[path]`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

/// The launcher script.
pub const ACTIVATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/activate.py");

/// Generous bound on every wait.
const WAIT: Duration = Duration::from_secs(30);

/// A running wsgate whose stdout is read line by line; killed when dropped.
pub struct Wsgate {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    /// The thread reading stderr to its end, joined once the child exits so
    /// that [`Wsgate::stderr`] is then complete.
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    /// Every stdout line read so far.
    pub seen: Vec<String>,
    /// The sockets passed to it, by name.
    pub sockets: HashMap<String, SocketAddr>,
}

impl Wsgate {
    /// Starts `wsgate --log-format json run --config CONFIG` with a socket
    /// per `NAME=HOST:PORT[,nolisten]` spec, and `env` added to its
    /// environment.
    pub async fn activate(specs: &[&str], config: &Path, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new("python3");
        cmd.arg(ACTIVATE)
            .args(specs)
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_wsgate"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn python3 activate.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        // Blocking pipe reads on their own threads; both end at the child's exit.
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
        let stderr_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err_pipe.read_to_string(&mut s);
            sink.lock().unwrap_or_else(|e| e.into_inner()).push_str(&s);
        });
        let mut this = Self {
            child,
            lines,
            stderr,
            stderr_reader: Some(stderr_reader),
            seen: Vec::new(),
            sockets: HashMap::new(),
        };
        for _ in specs {
            let line = this
                .line_until("the launcher's socket line", |l| {
                    l.starts_with("activate: ")
                })
                .await;
            let (name, addr) = line["activate: ".len()..]
                .split_once('=')
                .expect("NAME=ADDR");
            this.sockets
                .insert(name.to_string(), addr.parse().expect("an address"));
        }
        this
    }

    /// The passed socket called `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.sockets[name]
    }

    /// The child's process id (the launcher execs, so it is wsgate's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads stdout until a line satisfies `pred`; panics with everything
    /// seen (and stderr) if stdout ends or the wait is too long.
    pub async fn line_until(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let found = tokio::time::timeout(WAIT, async {
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
            Ok(Some(line)) => line,
            _ => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "no {what} on wsgate's stdout\nstdout:\n{}\nstderr:\n{}",
                    self.seen.join("\n"),
                    self.stderr.lock().unwrap_or_else(|e| e.into_inner())
                );
            }
        }
    }

    /// Waits for the JSON log line whose message contains `msg`.
    pub async fn logged(&mut self, msg: &str) -> serde_json::Value {
        let line = self
            .line_until(&format!("a log line {msg:?}"), |l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .is_ok_and(|v| v["message"].as_str().is_some_and(|m| m.contains(msg)))
            })
            .await;
        serde_json::from_str(&line).expect("JSON")
    }

    /// Sends `signal` (such as `TERM` or `HUP`) to the child.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the child to exit.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let waited = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(status) = self.child.try_wait().expect("try_wait") {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        let status = waited
            .unwrap_or_else(|_| panic!("wsgate did not exit\nstdout:\n{}", self.seen.join("\n")));
        // wsgate was exec'd, so its exit closed the pipe: the read ends now.
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        status
    }

    /// What it wrote to stderr (complete once [`Wsgate::wait_exit`] returned).
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Wsgate {
    fn drop(&mut self) {
        // Never leave a wsgate behind a failed test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
