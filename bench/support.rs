//! What the benchmarks share: the real `wsgate` binary, started as its own
//! process on a config made for the run, and ended however the run ends.
// Each bench uses its own part of this.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running wsgate; killed when dropped (a failed assertion included).
pub struct Wsgate {
    child: Child,
    /// Its listener `bench`.
    pub addr: SocketAddr,
    /// For reading its memory.
    pub pid: u32,
    /// Holds the config file.
    _dir: tempfile::TempDir,
}

/// Starts wsgate with `[runtime] workers`, one listener `bench` on a free
/// loopback port, and `rest` (routes and upstreams); waits until it accepts.
/// `RUST_LOG=warn`: no access lines, so the figures are the proxy's own.
pub fn start(workers: usize, rest: &str) -> Wsgate {
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("pick port")
        .local_addr()
        .expect("addr")
        .port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!("[runtime]\nworkers = {workers}\n[[listeners]]\nname = \"bench\"\nbind = \"127.0.0.1:{port}\"\n{rest}"),
    )
    .expect("write config");
    // WSGATE_BIN runs another build (before and after figures of a change).
    let bin = std::env::var("WSGATE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_wsgate").into());
    let child = Command::new(bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start wsgate");
    let pid = child.id();
    let wsgate = Wsgate {
        child,
        addr: ([127, 0, 0, 1], port).into(),
        pid,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(wsgate.addr).is_err() {
        assert!(Instant::now() < deadline, "wsgate did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    wsgate
}

impl Drop for Wsgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
