//! The `wsgate` binary: command line, logging, runtime, signals. Everything
//! else is the library; this is the only place `anyhow` appears.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wsgate::config::{self, Config};
use wsgate::control::lifecycle::{self, StopPlan};
use wsgate::control::systemd;
#[cfg(feature = "demo")]
use wsgate::demo;
use wsgate::front::listener;
use wsgate::{AdminServer, Gateway, Launch, Shared};

/// A reverse proxy and load balancer built for WebSocket traffic.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    /// Log line format [default: `[log] format` of the config, else text].
    #[arg(long, value_enum, global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file: exit 0, or print every problem and exit 1.
    Check {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a config together with local echo backends on the addresses it names.
    #[cfg(feature = "demo")]
    Demo {
        /// Config file (TOML).
        #[arg(long, short, default_value = "config.example.toml")]
        config: PathBuf,
    },
    /// Connect to a WebSocket URL; send stdin lines, print what comes back.
    #[cfg(feature = "demo")]
    Client {
        /// ws:// or wss:// URL.
        url: String,
        /// PEM CA certificate to trust for wss://.
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    // Hidden stand-ins, so that a build without the feature says why these
    // commands are missing instead of calling them unknown.
    #[cfg(not(feature = "demo"))]
    #[command(hide = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        _args: Vec<String>,
    },
    #[cfg(not(feature = "demo"))]
    #[command(hide = true)]
    Client {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        _args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let flag = cli.log_format;
    match cli.command {
        Command::Check { config } => match config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => report(load(&config).and_then(|c| {
            init_logging(flag, &c.log)?;
            // Before any thread starts: this clears the LISTEN_* variables.
            let inherited = systemd::take_inherited()?;
            runtime()?.block_on(run(c, inherited))
        })),
        #[cfg(feature = "demo")]
        Command::Demo { config } => report(
            demo::ensure_certificates(&config)
                .map_err(anyhow::Error::from)
                .and_then(|cas| {
                    let c = load(&config)?;
                    init_logging(flag, &c.log)?;
                    runtime()?.block_on(run_demo(c, cas))
                }),
        ),
        #[cfg(feature = "demo")]
        Command::Client { url, ca } => report(
            init_logging(flag, &config::LogConfig::default())
                .and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("starting the runtime")
                })
                .and_then(|rt| {
                    let done = rt.block_on(demo::client(&url, ca.as_deref()));
                    // A read of stdin still waiting on its blocking thread would
                    // hold a normal shutdown until the user pressed Enter, after
                    // the server had already closed.
                    rt.shutdown_background();
                    Ok(done?)
                }),
        ),
        #[cfg(not(feature = "demo"))]
        Command::Demo { .. } | Command::Client { .. } => {
            eprintln!(
                "wsgate: this build has no `demo` or `client` command: \
                 it was built without the `demo` cargo feature"
            );
            ExitCode::FAILURE
        }
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(config::load(path)?)
}

/// Logs go to stdout; access lines (`wsgate::access`) go with them, nowhere,
/// or to their own file, per `[log] access`. `RUST_LOG` beats `[log] level`;
/// the `--log-format` flag beats `[log] format`. Text lines are coloured only
/// on a terminal, and not even there when `NO_COLOR` is set (no-color.org):
/// escape codes in a file or a log collector are noise to grep and to people.
fn init_logging(flag: Option<LogFormat>, log: &config::LogConfig) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

    let json = match (flag, log.format) {
        (Some(f), _) => matches!(f, LogFormat::Json),
        (None, Some(f)) => f == config::LogFormat::Json,
        (None, None) => false,
    };
    let level = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| log.level.clone())
        .unwrap_or_else(|| "info".to_string());
    let mut main_filter = EnvFilter::try_new(&level).context("log level")?;
    if log.access != config::AccessLog::Stdout {
        main_filter =
            main_filter.add_directive("wsgate::access=off".parse().context("log filter")?);
    }
    fn layer<W>(json: bool, ansi: bool, writer: W) -> Boxed
    where
        W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        let fmt = tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer);
        if json {
            fmt.json().flatten_event(true).boxed()
        } else {
            fmt.boxed()
        }
    }
    let colour = std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut layers: Vec<Boxed> = vec![layer(json, colour, std::io::stdout)
        .with_filter(main_filter)
        .boxed()];
    if let config::AccessLog::File(path) = &log.access {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening access log {}", path.display()))?;
        let only_access = tracing_subscriber::filter::Targets::new()
            .with_target("wsgate::access", tracing::Level::INFO);
        layers.push(
            layer(json, false, std::sync::Mutex::new(file))
                .with_filter(only_access)
                .boxed(),
        );
    }
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .context("logging")?;
    Ok(())
}

/// The control plane's runtime, on the main thread: signals, reloads, health
/// checks and the admin API. Client connections are served by the worker
/// threads the gateway starts (`front::workers`, `runtime.workers`).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// SIGINT and SIGTERM, watched from before anything is bound: a signal
/// that arrives before its handler exists kills the process at once,
/// without the drain.
struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn watch() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("watching SIGINT")?,
            term: signal(SignalKind::terminate()).context("watching SIGTERM")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// On SIGINT or SIGTERM, stops gracefully in phases (see
/// `control::lifecycle`) with the running config's `[runtime]` timing; a
/// second signal cuts what is left at once. Either way the process then
/// exits 0: the stop was asked for.
fn on_signals(
    mut signals: StopSignals,
    shared: Arc<Shared>,
    notifier: systemd::Notifier,
    tasks: &TaskTracker,
) {
    tasks.spawn(async move {
        tokio::select! {
            _ = signals.recv() => {}
            _ = shared.stopping.cancelled() => return,
        }
        notifier.stopping(&format!(
            "stopping: {} tunnels open",
            shared.registry.live_count()
        ));
        let plan = StopPlan::from(&shared.snapshot.load().config.runtime);
        tokio::select! {
            _ = lifecycle::stop(shared.clone(), plan) => {}
            _ = signals.recv() => {
                tracing::info!("second signal: stopping now");
                shared.shut_down();
            }
        }
    });
}

async fn run(config: Config, mut inherited: systemd::Inherited) -> anyhow::Result<()> {
    let signals = StopSignals::watch()?;
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("watching SIGHUP")?;
    let notifier = systemd::Notifier::from_env();
    let mut names: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
    if config.admin.is_some() {
        names.push("admin".to_string());
    }
    inherited.check_names(&names)?;
    let shutdown = CancellationToken::new();
    // The admin listener first: while host names resolve, its /readyz
    // answers 503 "starting" instead of refusing connections.
    let admin = match (&config.admin, inherited.take("admin")) {
        (Some(a), Some(l)) => {
            tracing::info!(configured = %a.bind, "admin: using the socket passed by the service manager; the configured bind is only informative");
            Some(tokio::net::TcpListener::from_std(l).context("admin: the passed socket")?)
        }
        _ => bind_admin(&config).await?,
    }
    .map(|l| AdminServer::serve(l, &shutdown));
    let bound = listener::bind_all_with(&config, |name| inherited.take(name)).await?;
    let launch = Launch {
        admin,
        notifier,
        ..Launch::default()
    };
    let gateway = Gateway::launch(config, bound, shutdown.clone(), launch).await?;
    notifier.ready(&systemd::status_line(gateway.shared()));
    // The signal watcher is not the gateway's task: the gateway must be able
    // to finish draining without waiting for the watcher's fallback timer.
    let tasks = TaskTracker::new();
    on_signals(signals, gateway.shared().clone(), notifier, &tasks);
    tasks.spawn(systemd::heartbeat(
        gateway.shared().clone(),
        notifier,
        shutdown.clone(),
    ));
    on_hangup(gateway.shared().clone(), hup, &tasks);
    gateway.wait().await;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// Reloads the config on every SIGHUP until the gateway drains. The
/// signal stream is created by the caller before anything is bound, since
/// SIGHUP's default action would kill the process.
fn on_hangup(shared: Arc<Shared>, mut hup: tokio::signal::unix::Signal, tasks: &TaskTracker) {
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = shared.stopping.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            tracing::info!("SIGHUP: reloading the config");
            // The outcome is logged and counted by reload itself.
            let _ = wsgate::control::reload::reload(&shared).await;
        }
    });
}

async fn bind_admin(config: &Config) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    match &config.admin {
        Some(a) => Ok(Some(
            tokio::net::TcpListener::bind(a.bind)
                .await
                .with_context(|| format!("admin: cannot bind {}", a.bind))?,
        )),
        None => Ok(None),
    }
}

#[cfg(feature = "demo")]
async fn run_demo(config: Config, cas: Vec<PathBuf>) -> anyhow::Result<()> {
    let signals = StopSignals::watch()?;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    // Host-named servers too: validation leaves their names unresolved.
    let servers = demo::backend_addrs(&config, wsgate::control::resolve::system_resolver)?;
    demo::start_echo_backends(&servers, &tasks, &shutdown).await?;
    for ca in &cas {
        println!(
            "demo: made a CA and server certificate; the CA is {}",
            ca.display()
        );
    }
    let listeners = config.listeners.clone();
    let bound = listener::bind_all(&config).await?;
    let admin = bind_admin(&config).await?;
    let gateway = Gateway::start(config, bound, shutdown.clone())?;
    let mut admin_addr = None;
    if let Some(l) = admin {
        admin_addr = l.local_addr().ok();
        if let Some(a) = admin_addr {
            println!(
                "demo: admin API at http://{a}/api/connections, metrics at http://{a}/metrics"
            );
        }
        gateway.serve_admin(l);
    }
    on_signals(
        signals,
        gateway.shared().clone(),
        systemd::Notifier::disabled(),
        &tasks,
    );
    println!(
        "demo: chat backends (its page, and one room shared by both) on {}",
        servers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut first_url = None;
    for l in &listeners {
        let Some(addr) = gateway.local_addr(&l.name) else {
            continue;
        };
        let (scheme, host) = if l.tls.is_some() {
            ("wss", "localhost")
        } else {
            ("ws", "127.0.0.1")
        };
        let url = format!("{scheme}://{host}:{}/chat", addr.port());
        println!("demo: listener {} at {url}", l.name);
        if l.tls.is_none() && first_url.is_none() {
            first_url = Some(url);
        }
    }
    if let Some(url) = &first_url {
        demo::self_check(url, None)
            .await
            .context("demo self-check")?;
        println!("demo: self-check passed: a message to {url} came back through wsgate, and so did its page");
        println!("{}", demo::open_line(url, admin_addr));
        println!("demo: try it yourself:\n    cargo run --release -- client {url}");
        if let Some(ca) = cas.first().or(None) {
            println!("demo: or over TLS:\n    cargo run --release -- client --ca {} wss://localhost:8443/chat", ca.display());
        }
    }
    println!("demo: press Ctrl-C to stop");
    gateway.wait().await;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}
