//! The benchmark's WebSocket load generator: one scenario per run, one JSON
//! line of results on stdout. Every scenario is bounded in count and time.
//! With `--pid`, the CPU time (and for `idle` the resident memory) of that
//! process is read from `/proc` at the start and end of the measured window
//! and divided by the work done in it.

mod broadcast;
mod echo;
mod handshakes;
mod idle;
mod open_loop;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::{json, Map, Value};
use wsgate_bench::{proc_sample, ProcSample, Target};

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Mode {
    /// Concurrent clients connecting, upgrading and closing.
    Handshakes,
    /// A fixed message rate over all connections; latency from the intended send time.
    EchoOpen,
    /// Each connection sends its next message when the last one comes back.
    EchoClosed,
    /// Large messages (64 KiB by default), a few in flight per connection.
    Throughput,
    /// Clients receiving the backend's timed pushes.
    Broadcast,
    /// As many idle connections as allowed, then one echo on each.
    Idle,
}

#[derive(Parser)]
#[command(about = "WebSocket load generator for bench/run")]
pub(crate) struct Args {
    #[arg(long, value_enum)]
    mode: Mode,
    /// ws://IP:PORT/path or wss://IP:PORT/path.
    #[arg(long)]
    url: String,
    /// PEM file of the CA that signed a wss:// server's certificate.
    #[arg(long)]
    ca: Option<String>,
    /// Connections (concurrent clients for `handshakes`; the target count for `idle`).
    #[arg(long, default_value_t = 100)]
    conns: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds run before the measured window opens.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Messages per second over all connections (`echo-open`).
    #[arg(long, default_value_t = 10000.0)]
    rate: f64,
    /// Message size in bytes (at least 8 for `echo-open`).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages in flight per connection (`throughput`).
    #[arg(long, default_value_t = 4)]
    inflight: usize,
    /// Most handshakes (`handshakes`).
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Process whose CPU time and memory are measured (the proxy).
    #[arg(long)]
    pid: Option<u32>,
    /// key=value copied into the JSON result (proxy, tls, rep, ...).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Tokio worker threads (1: a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

impl Args {
    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration.max(0.1))
    }
    fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup.max(0.0))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    let result = rt.block_on(run(&args))?;
    let mut out = Map::new();
    let mode = args
        .mode
        .to_possible_value()
        .map(|v| v.get_name().to_string());
    out.insert("mode".into(), json!(mode));
    for tag in &args.tags {
        let (k, v) = tag.split_once('=').unwrap_or((tag, ""));
        out.insert(k.into(), json!(v));
    }
    out.insert("url".into(), json!(args.url));
    out.insert("conns".into(), json!(args.conns));
    if let Value::Object(m) = result {
        out.extend(m);
    }
    println!("{}", Value::Object(out));
    // Connections still open are dropped with the runtime, not closed one by one.
    rt.shutdown_background();
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Value> {
    let read_buffer = if args.mode == Mode::Idle { 4096 } else { 16384 };
    let target = Arc::new(Target::new(&args.url, args.ca.as_deref(), read_buffer)?);
    match args.mode {
        Mode::Handshakes => handshakes::run(args, target).await,
        Mode::EchoOpen => open_loop::run(args, target).await,
        Mode::EchoClosed => echo::closed(args, target).await,
        Mode::Throughput => echo::throughput(args, target).await,
        Mode::Broadcast => broadcast::run(args, target).await,
        Mode::Idle => idle::run(args, target).await,
    }
}

/// The measured window: the process's CPU time at its start and end.
pub(crate) struct Window {
    pid: Option<u32>,
    start: Option<ProcSample>,
    began: Instant,
}

impl Window {
    pub(crate) fn open(pid: Option<u32>) -> Self {
        Self {
            pid,
            start: pid.and_then(|p| proc_sample(p).ok()),
            began: Instant::now(),
        }
    }

    /// Seconds elapsed, and the fields of the measured process: its CPU
    /// seconds, and under `key` its CPU seconds times `scale` per unit of
    /// work (`per` units done).
    pub(crate) fn close(&self, per: f64, key: &str, scale: f64) -> (f64, Value) {
        self.end().report(per, key, scale)
    }

    /// Reads the process at the window's end, for a report once the work
    /// done in it is counted.
    pub(crate) fn end(&self) -> Ended {
        Ended {
            elapsed: self.began.elapsed().as_secs_f64(),
            start: self.start,
            end: self.pid.and_then(|p| proc_sample(p).ok()),
        }
    }
}

/// A measured window, closed.
pub(crate) struct Ended {
    elapsed: f64,
    start: Option<ProcSample>,
    end: Option<ProcSample>,
}

impl Ended {
    /// See [`Window::close`].
    pub(crate) fn report(&self, per: f64, key: &str, scale: f64) -> (f64, Value) {
        let elapsed = self.elapsed;
        let mut m = Map::new();
        m.insert("elapsed_s".into(), json!(elapsed));
        if let (Some(a), Some(b)) = (self.start, self.end) {
            let cpu = b.cpu_s - a.cpu_s;
            m.insert("proxy_cpu_s".into(), json!(cpu));
            m.insert("proxy_cpu_util".into(), json!(cpu / elapsed.max(1e-9)));
            if per > 0.0 {
                m.insert(key.into(), json!(cpu * scale / per));
            }
        }
        (elapsed, Value::Object(m))
    }
}

/// Merges two JSON objects.
pub(crate) fn merge(mut a: Value, b: Value) -> Value {
    if let (Value::Object(a), Value::Object(b)) = (&mut a, b) {
        a.extend(b);
    }
    a
}

/// Opens `n` connections, at most `parallel` handshakes at once; the ones
/// that failed are counted, not retried, and the first failure is kept (and
/// printed to stderr) so a run that opened fewer than asked says why.
pub(crate) async fn open_many(
    target: &Arc<Target>,
    n: usize,
    parallel: usize,
) -> (
    Vec<tokio_tungstenite::WebSocketStream<wsgate_bench::Stream>>,
    usize,
) {
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let t = target.clone();
        set.spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(10), t.open()).await;
            drop(permit);
            match r {
                Ok(Ok(ws)) => Ok(ws),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("handshake timed out after 10 s".to_string()),
            }
        });
    }
    let mut conns = Vec::with_capacity(n);
    let mut failed = 0;
    let mut first_error = None;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(ws)) => conns.push(ws),
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    if let Some(e) = &first_error {
        eprintln!("loadgen: {failed} of {n} connections failed to open; first: {e}");
    }
    (conns, failed)
}
