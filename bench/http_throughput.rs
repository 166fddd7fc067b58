//! Plain HTTP through wsgate: a benchmark, not a test.
//!
//! Starts the real `wsgate` binary (one worker thread) as its own process
//! in front of a small hyper backend in this process, and reports, each
//! measured directly against the backend and then through wsgate:
//! - requests per second for small GETs over keep-alive connections, with
//!   `HTTP_CONCURRENCY` connections (default 16), `HTTP_REQUESTS` requests
//!   in all (default 20000);
//! - the latency of one request at a time (median and 99th percentile);
//! - the throughput of one `HTTP_UPLOAD_MIB` upload (default 256 MiB).
//!
//! Run with `cargo bench --bench http_throughput`. Every loop is bounded in
//! count; traffic goes to loopback only. wsgate runs with `RUST_LOG=warn`,
//! so no access line is written: the numbers are the proxy's own cost.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[path = "support.rs"]
mod support;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `/small`: 100 bytes; `/upload`: reads the body and answers its length.
async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/upload" {
        let mut body = req.into_body();
        let mut n = 0usize;
        while let Some(Ok(f)) = body.frame().await {
            n += f.data_ref().map_or(0, Bytes::len);
        }
        return Ok(Response::new(Full::new(Bytes::from(n.to_string()))));
    }
    Ok(Response::new(Full::new(Bytes::from_static(&[b'x'; 100]))))
}

async fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(answer))
                    .await;
            });
        }
    });
    addr
}

async fn client<B>(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let _ = tcp.set_nodelay(true);
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    send
}

async fn get(send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) {
    // The previous response must be done with before the next request.
    send.ready().await.expect("connection ready");
    let req = Request::builder()
        .uri("/small")
        .header("host", "bench")
        .body(Empty::new())
        .expect("request");
    let res = send.send_request(req).await.expect("response");
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body.len(), 100);
}

/// Requests per second with `conns` keep-alive connections sharing `total`.
async fn rate(addr: SocketAddr, conns: usize, total: usize) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut send = client(addr).await;
            for _ in 0..total / conns {
                get(&mut send).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    (total / conns * conns) as f64 / started.elapsed().as_secs_f64()
}

/// Median and 99th percentile of one request at a time.
async fn latency(addr: SocketAddr, count: usize) -> (Duration, Duration) {
    let mut send = client(addr).await;
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        get(&mut send).await;
        times.push(t.elapsed());
    }
    times.sort();
    (times[count / 2], times[count * 99 / 100])
}

/// MiB per second of one upload of `mib` MiB.
async fn upload(addr: SocketAddr, mib: usize) -> f64 {
    let chunk = Bytes::from(vec![7u8; 1 << 20]);
    let frames: Vec<Result<http_body::Frame<Bytes>, Infallible>> = (0..mib)
        .map(|_| Ok(http_body::Frame::data(chunk.clone())))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let mut send = client(addr).await;
    let req = Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", "bench")
        .body(body)
        .expect("request");
    let started = Instant::now();
    let res = send.send_request(req).await.expect("response");
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, (mib << 20).to_string());
    mib as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let conns = env_or("HTTP_CONCURRENCY", 16).max(1);
    let total = env_or("HTTP_REQUESTS", 20_000).max(conns);
    let mib = env_or("HTTP_UPLOAD_MIB", 256).max(1);
    let backend = backend().await;
    let wsgate = support::start(
        1,
        &format!("[[routes]]\nupstream = \"u\"\n[upstreams.u]\nservers = [\"{backend}\"]\n"),
    );
    let gw = wsgate.addr;
    // Warm both paths (connections, pools, allocators).
    rate(backend, conns, conns * 20).await;
    rate(gw, conns, conns * 20).await;

    for (name, addr) in [("direct", backend), ("wsgate", gw)] {
        let rps = rate(addr, conns, total).await;
        let (p50, p99) = latency(addr, 2000).await;
        let mibs = upload(addr, mib).await;
        println!(
            "http_throughput: {name}: {rps:.0} requests/s over {conns} keep-alive connections; one at a time p50 {p50:.1?} p99 {p99:.1?}; {mib} MiB upload at {mibs:.0} MiB/s"
        );
    }
}
