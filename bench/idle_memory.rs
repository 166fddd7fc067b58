//! Memory per idle WebSocket connection: a benchmark, not a test.
//!
//! Starts the real `wsgate` binary as its own process, opens N tunnels to a
//! raw backend in this process, and reports the growth of wsgate's resident
//! memory per connection: right after the handshakes, and again after one
//! message has crossed every tunnel both ways (the copy buffers must have
//! been given back). Run with `cargo bench --bench idle_memory`;
//! `IDLE_CONNS` sets N (default 5000; each costs wsgate two descriptors and
//! this process two).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

#[path = "support.rs"]
mod support;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap_or(0) == 0 {
            break;
        }
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Backend: answers every handshake with a correct 101, then echoes raw bytes.
fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let head = read_head(&mut s);
                    let key = head
                        .lines()
                        .find_map(|l| l.strip_prefix("sec-websocket-key: ").or_else(|| l.strip_prefix("Sec-WebSocket-Key: ")))
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    let accept = wsgate::proxy::handshake::accept_key(key.as_bytes());
                    let _ = write!(s, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
                    let mut buf = [0u8; 256];
                    while let Ok(n) = s.read(&mut buf) {
                        // Echo as an unmasked server frame of the same payload.
                        if n < 6 {
                            break;
                        }
                        let payload: Vec<u8> = buf[6..n].iter().enumerate().map(|(i, b)| b ^ buf[2 + i % 4]).collect();
                        let mut f = vec![0x81, payload.len() as u8];
                        f.extend_from_slice(&payload);
                        if s.write_all(&f).is_err() {
                            break;
                        }
                    }
                })
                .expect("spawn");
        }
    });
    addr
}

fn main() {
    let n: usize = std::env::var("IDLE_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let backend = backend();
    let wsgate = support::start(
        2,
        &format!("[[routes]]\nupstream = \"u\"\n[upstreams.u]\nservers = [\"{backend}\"]\n"),
    );
    let (pid, gw) = (wsgate.pid, wsgate.addr);
    let handshake = "GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let open = |count: usize| -> Vec<TcpStream> {
        (0..count)
            .map(|_| {
                let mut s = TcpStream::connect(gw).expect("connect");
                s.write_all(handshake.as_bytes()).expect("write");
                let head = read_head(&mut s);
                assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                s
            })
            .collect()
    };
    // Warm up the runtime and allocator with a few connections, then measure growth.
    let warm = open(50);
    std::thread::sleep(Duration::from_millis(500));
    let base = rss_kib(pid);
    let started = Instant::now();
    let mut conns = open(n);
    let handshake_time = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let after_open = rss_kib(pid);
    let frame = [
        0x81u8,
        0x84,
        1,
        2,
        3,
        4,
        b'p' ^ 1,
        b'i' ^ 2,
        b'n' ^ 3,
        b'g' ^ 4,
    ];
    for s in &mut conns {
        s.write_all(&frame).expect("send");
        let mut echo = [0u8; 6];
        s.read_exact(&mut echo).expect("echo");
        assert_eq!(&echo[2..], b"ping");
    }
    std::thread::sleep(Duration::from_secs(1));
    let after_traffic = rss_kib(pid);
    let per = |kib: u64| (kib.saturating_sub(base) as f64 * 1024.0) / n as f64;
    println!(
        "idle_memory: {n} tunnels, handshakes in {handshake_time:.2?} ({:.0}/s)",
        n as f64 / handshake_time.as_secs_f64()
    );
    println!("idle_memory: wsgate RSS {base} KiB before, {after_open} KiB after opening, {after_traffic} KiB after one message each way");
    println!(
        "idle_memory: {:.0} bytes per idle tunnel after the handshake",
        per(after_open)
    );
    println!(
        "idle_memory: {:.0} bytes per idle tunnel after traffic",
        per(after_traffic)
    );
    drop(conns);
    drop(warm);
    drop(wsgate);
}
