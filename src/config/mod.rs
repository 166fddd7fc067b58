//! Configuration: the typed values the rest of wsgate reads, their errors,
//! and loading. The raw TOML shape and its validation live in `validate.rs`.
//!
//! Owns: reading the file, `deny_unknown_fields` parsing, and turning every
//! string into the type the data path uses (`SocketAddr`, `Duration`, host
//! patterns, loaded certificates). Every mistake becomes a [`Problem`] naming
//! file, line, column and key, and all problems are collected before failing,
//! so `wsgate check` shows an operator the whole list at once.
//!
//! Must not: keep raw strings for the hot path, know about sockets, or
//! resolve host names: a server given by name stays a name here, with where
//! it was written, and is looked up when a snapshot is compiled
//! (`control::resolve::resolve_names`), so `wsgate check` needs no DNS.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;
use serde::Serialize;

pub mod availability;
pub mod error;
pub mod health;
mod keepalive;
pub mod origin;
mod raw;
pub mod tls;
pub mod upstream;
pub mod validate;
mod values;
pub mod view;

pub use availability::Availability;
pub use error::{render_problems, ConfigError, Location, Problem};
pub use health::{HealthCheck, HealthKind};
pub use origin::{OriginPattern, OriginPolicy};

/// Default for `timeouts.client_handshake`: the client must finish TLS and its request headers within this.
pub const DEFAULT_CLIENT_HANDSHAKE: Duration = Duration::from_secs(10);
/// Default for `timeouts.connect`: TCP connect to a backend.
pub const DEFAULT_CONNECT: Duration = Duration::from_secs(5);
/// Default for `timeouts.upstream_handshake`: the backend must answer the upgrade within this.
pub const DEFAULT_UPSTREAM_HANDSHAKE: Duration = Duration::from_secs(10);
/// Default for `timeouts.upstream_response`: a plain HTTP backend must send its response headers within this (long polls included).
/// Counted from the end of the upload, or from the last body bytes the backend took while it takes no more.
pub const DEFAULT_UPSTREAM_RESPONSE: Duration = Duration::from_secs(60);
/// Default for `timeouts.client_body`: the longest a client may pause while
/// sending a request body before it is answered 408 (as nginx's default).
pub const DEFAULT_CLIENT_BODY: Duration = Duration::from_secs(60);
/// Default for `timeouts.client_write`: the longest a client may take no
/// bytes of a plain response before it is aborted and its backend
/// connection released (nginx's `send_timeout`).
pub const DEFAULT_CLIENT_WRITE: Duration = Duration::from_secs(60);
/// Default for `timeouts.linger`: reading and discarding what a client
/// still sends after wsgate closed its connection.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(2);
/// Default for `timeouts.half_close`: once one side of a tunnel has closed, how long the other may keep it open.
pub const DEFAULT_HALF_CLOSE: Duration = Duration::from_secs(30);
/// Default for `timeouts.close`: how long a closing handshake (started by wsgate or by a peer) may take before the connection is cut.
pub const DEFAULT_CLOSE: Duration = Duration::from_secs(5);
/// Default for a route's `write_stall_timeout`: the longest a tunnel's
/// peer may take none of the bytes written to it, as `timeouts.client_write`
/// for a plain response.
pub const DEFAULT_WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest `messages_per_second` and `burst` a route accepts.
pub const MAX_MESSAGES_PER_SECOND: usize = 1_000_000;
/// Longest duration any timeout accepts: a week. Larger values are typos,
/// and arithmetic on them must not overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default for `limits.max_request_headers`: bytes of request line and headers accepted from a client.
pub const DEFAULT_MAX_REQUEST_HEADERS: usize = 16 * 1024;
/// Default for `limits.max_headers`: header fields in one request head (hyper's own default).
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default for `limits.max_connections`: open client connections, all listeners together.
/// Each tunnel takes two descriptors, so this fits a `LimitNOFILE` of 262144 with room to spare.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Default for `limits.max_connections_per_ip`: open client connections from one address.
/// High enough for a large NAT or office behind one address.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 10_000;
/// Default for `limits.max_handshakes_in_flight`: TLS handshakes under way at once, per listener.
pub const DEFAULT_MAX_HANDSHAKES_IN_FLIGHT: usize = 512;

// === typed, validated configuration ===

/// A validated configuration. Everything the data path reads is already typed.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from; relative paths in it were resolved against its folder.
    pub source: PathBuf,
    /// Process-level settings read before the runtime starts.
    pub runtime: RuntimeConfig,
    /// The admin listener, if any.
    pub admin: Option<AdminConfig>,
    /// Logging settings.
    pub log: LogConfig,
    /// Short hash of the file's text: tells operators which config runs.
    pub version: String,
    /// Every named timeout, with defaults filled in.
    pub timeouts: Timeouts,
    /// Every named size limit, with defaults filled in.
    pub limits: Limits,
    /// How tunnels judge the frames they relay.
    pub websocket: WebSocketConfig,
    /// Listeners in file order; names are unique.
    pub listeners: Vec<ListenerConfig>,
    /// Routes in file order; the router sorts them by specificity.
    pub routes: Vec<RouteConfig>,
    /// Upstream pools by name; every route's upstream is present here.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
}

/// Default for `runtime.shutdown_spread`: long enough that a few thousand
/// clients told to reconnect do not land in the same second.
pub const DEFAULT_SHUTDOWN_SPREAD: Duration = Duration::from_secs(5);
/// Default for `runtime.shutdown_timeout`: the spread plus time for the
/// closing handshakes and slow plain requests, well under the 90 s systemd
/// and the 30 s Kubernetes give a stopping process by default.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);

/// `[runtime]`.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeConfig {
    /// Threads serving client connections, each with its own event loop
    /// (`front::workers`); `None` means one per CPU. Read at start only.
    pub workers: Option<usize>,
    /// Reload when the config file changes.
    pub watch_config: bool,
    /// On SIGTERM, how long wsgate goes on serving established connections
    /// (not accepting, `/readyz` already 503) before closing tunnels: the
    /// time an orchestrator needs to stop sending it traffic.
    #[serde(serialize_with = "view::humantime")]
    pub shutdown_delay: Duration,
    /// The window over which every tunnel gets its Close 1001, so clients
    /// do not all reconnect in the same second. Shorter than `shutdown_timeout`.
    #[serde(serialize_with = "view::humantime")]
    pub shutdown_spread: Duration,
    /// From the end of `shutdown_delay`, how long tunnels and plain requests
    /// have to finish before what remains is cut.
    #[serde(serialize_with = "view::humantime")]
    pub shutdown_timeout: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            workers: None,
            watch_config: false,
            shutdown_delay: Duration::ZERO,
            shutdown_spread: DEFAULT_SHUTDOWN_SPREAD,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address of the admin listener.
    pub bind: SocketAddr,
    /// Bearer token required for everything but the probes; read from
    /// `token_file` at load time. Never logged nor shown by `/api/config`.
    pub token: Option<String>,
    /// The token file's path, for `/api/config` (the path, never the content).
    pub token_file: Option<PathBuf>,
    /// Whether `/metrics` is served without the token.
    pub metrics_public: bool,
    /// `/readyz` answers 503 while a routed upstream has no usable server,
    /// so an orchestrator sends traffic to a replica that can serve it.
    pub ready_requires_healthy: bool,
}

/// `[log]`.
#[derive(Debug, Clone, Default)]
pub struct LogConfig {
    /// Filter directive such as `info` or `wsgate=debug`; `RUST_LOG` wins when set.
    pub level: Option<String>,
    /// Line format; the `--log-format` flag wins when given.
    pub format: Option<LogFormat>,
    /// Where access lines go.
    pub access: AccessLog,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// Destination of the access log (`wsgate::access` lines).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AccessLog {
    /// With the other logs, on stdout.
    #[default]
    Stdout,
    /// Not written (records still feed metrics and the admin API).
    Off,
    /// Appended to this file.
    File(PathBuf),
}

/// `[timeouts]`: every deadline the proxy enforces. Serialized for
/// `/api/config` as the humantime strings the config accepts.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timeouts {
    /// TLS handshake and request headers from the client.
    #[serde(serialize_with = "view::humantime")]
    pub client_handshake: Duration,
    /// TCP connect to one backend.
    #[serde(serialize_with = "view::humantime")]
    pub connect: Duration,
    /// From sending the upgrade request to the backend's response headers.
    #[serde(serialize_with = "view::humantime")]
    pub upstream_handshake: Duration,
    /// From sending a plain HTTP request to the backend's response headers.
    #[serde(serialize_with = "view::humantime")]
    pub upstream_response: Duration,
    /// Longest pause in a client's request body (nginx's `client_body_timeout`).
    #[serde(serialize_with = "view::humantime")]
    pub client_body: Duration,
    /// Longest a client may take no bytes of a plain response (nginx's
    /// `send_timeout`): a client that stops reading must not hold a backend
    /// connection for ever.
    #[serde(serialize_with = "view::humantime")]
    pub client_write: Duration,
    /// How long a connection wsgate closed is still read and discarded, so
    /// a client still sending can read the answer (see linger.rs).
    #[serde(serialize_with = "view::humantime")]
    pub linger: Duration,
    /// How long a tunnel stays up after one side has finished sending.
    #[serde(serialize_with = "view::humantime")]
    pub half_close: Duration,
    /// How long a closing handshake started by wsgate (shutdown, drain) may take.
    #[serde(serialize_with = "view::humantime")]
    pub close: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            client_handshake: DEFAULT_CLIENT_HANDSHAKE,
            connect: DEFAULT_CONNECT,
            upstream_handshake: DEFAULT_UPSTREAM_HANDSHAKE,
            upstream_response: DEFAULT_UPSTREAM_RESPONSE,
            client_body: DEFAULT_CLIENT_BODY,
            client_write: DEFAULT_CLIENT_WRITE,
            linger: DEFAULT_LINGER,
            half_close: DEFAULT_HALF_CLOSE,
            close: DEFAULT_CLOSE,
        }
    }
}

/// `[websocket]`: how tunnels judge the frames they relay.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WebSocketConfig {
    /// A frame that breaks RFC 6455 in its header ends the tunnel with
    /// Close 1002 to its sender and 1001 to the other side; `false` passes
    /// it through untouched (for peers known to bend the rules).
    pub strict: bool,
}

/// `[limits]`: sizes the proxy refuses to exceed.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Limits {
    /// Largest request head (request line and headers) read from a client, in bytes.
    pub max_request_headers: usize,
    /// Most header fields in one request head: more get 431.
    pub max_headers: usize,
    /// Largest plain HTTP request body passed on, in bytes; `None`: no limit.
    pub max_request_body: Option<u64>,
    /// Most open client connections, all listeners together; more are refused at accept.
    pub max_connections: usize,
    /// Most open client connections from one IP address; more are refused at accept.
    pub max_connections_per_ip: usize,
    /// Most TLS handshakes under way at once on one listener; past it the
    /// listener stops accepting, so new connections wait in the kernel's backlog.
    pub max_handshakes_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_headers: DEFAULT_MAX_REQUEST_HEADERS,
            max_headers: DEFAULT_MAX_HEADERS,
            max_request_body: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            max_handshakes_in_flight: DEFAULT_MAX_HANDSHAKES_IN_FLIGHT,
        }
    }
}

/// One `[[listeners]]` entry.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Unique name used in logs and stats.
    pub name: String,
    /// Address to bind.
    pub bind: SocketAddr,
    /// TLS termination; `None` for plain TCP.
    pub tls: Option<TlsConfig>,
    /// Peers whose `X-Forwarded-For` and `Forwarded` are believed and
    /// extended, and, with `proxy_protocol`, the only peers accepted.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Every connection starts with a PROXY protocol header (v1 or v2),
    /// whose client address is the client's everywhere; peers outside
    /// `trusted_proxies` are refused.
    pub proxy_protocol: bool,
}

/// TLS settings of a listener: loaded certificates, the first being the default.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Non-empty; chosen by SNI, `certificates[0]` when SNI is absent or unknown.
    pub certificates: Vec<LoadedCertificate>,
}

/// A certificate chain and its key, read and checked at load time.
#[derive(Clone)]
pub struct LoadedCertificate {
    /// Path of the PEM chain, for logs.
    pub cert_path: PathBuf,
    /// Path of the PEM key, for logs.
    pub key_path: PathBuf,
    /// Chain and signing key as rustls uses them.
    pub key: Arc<CertifiedKey>,
}

impl fmt::Debug for LoadedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("LoadedCertificate")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish()
    }
}

/// Which request hosts a route accepts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// No `host` key: any host.
    Any,
    /// `host = "chat.example.com"`, lowercase.
    Exact(String),
    /// `host = "*.example.com"`: stored as the suffix `.example.com`; matches
    /// one or more labels in front of it, never `example.com` itself.
    Wildcard(String),
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Host the route applies to.
    pub host: HostPattern,
    /// Normalised prefix without trailing slash (`/` for the root); matches whole segments.
    pub path_prefix: String,
    /// Name of an entry in `upstreams`.
    pub upstream: String,
    /// Largest data frame payload either side may send; `None`: no limit.
    pub max_frame_bytes: Option<u64>,
    /// Largest message (fragments summed) either side may send; `None`: no limit.
    pub max_message_bytes: Option<u64>,
    /// No bytes relayed either way for this long closes a tunnel; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// A client silent this long gets a ping from wsgate; `None`: no pings.
    pub ping_interval: Option<Duration>,
    /// How long a client has to answer wsgate's ping; set exactly when
    /// `ping_interval` is (its value when the file leaves it out).
    pub ping_timeout: Option<Duration>,
    /// A tunnel is closed when it gets this old, less up to 10% of jitter;
    /// `None`: never.
    pub max_connection_age: Option<Duration>,
    /// `allowed_origins` and `allow_missing_origin`; `None`: any Origin.
    pub origins: Option<OriginPolicy>,
    /// Messages (and pings) a client may begin per second; `None`: no limit.
    pub messages_per_second: Option<u32>,
    /// How many of them may come back to back; `None`: as many as
    /// `messages_per_second`. Only with `messages_per_second`.
    pub burst: Option<u32>,
    /// How long a tunnel's direction may have bytes to write and make no
    /// progress before the tunnel is closed.
    pub write_stall_timeout: Duration,
}

/// One `[upstreams.NAME]` table: its servers, and every other setting in
/// one shared [`UpstreamSettings`].
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Servers given by IP address, in file order, each address once.
    /// With `names`, at least one entry (validated).
    pub servers: Vec<ServerConfig>,
    /// Servers given by host name, in file order, unresolved: looked up
    /// when a snapshot is compiled, and again every `resolve_interval`.
    pub names: Vec<NamedServer>,
    /// Everything else about the upstream. Shared, not copied: the
    /// balancer's `Upstream`, its keep-alive pool, drains and the admin API
    /// all read this one struct, so a new upstream key is added here once.
    pub settings: Arc<UpstreamSettings>,
}

/// The settings of an upstream besides its servers, with defaults filled in.
/// Serialized for `/api/config` under the config's keys (`tls` and its
/// files are shown by the upstream's view, as they need redacting).
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamSettings {
    /// The balancing algorithm (`balance`, `hash_key`, `hash_load_factor`).
    #[serde(flatten)]
    pub balance: Balance,
    /// Further servers tried when a connect fails or times out.
    pub retries: usize,
    /// How often names are resolved again.
    #[serde(serialize_with = "view::humantime")]
    pub resolve_interval: Duration,
    /// TLS to the servers; `None` for plain TCP.
    #[serde(skip)]
    pub tls: Option<UpstreamTls>,
    /// How long a draining server's tunnels may go on before wsgate closes them.
    #[serde(serialize_with = "view::humantime")]
    pub drain_timeout: Duration,
    /// Window over which those closes are spread, so clients do not all reconnect at once.
    #[serde(serialize_with = "view::humantime")]
    pub drain_spread: Duration,
    /// Idle keep-alive connections kept per server for plain HTTP.
    pub pool_max_idle: usize,
    /// How long an idle pooled connection is kept.
    #[serde(serialize_with = "view::humantime")]
    pub pool_idle_timeout: Duration,
    /// Passive checks, slow start and `close_on_unhealthy` (`availability.rs`).
    #[serde(flatten)]
    pub availability: Availability,
    /// The PROXY protocol header written first on every connection to the
    /// servers; `None`: none.
    pub send_proxy_protocol: Option<ProxyProtocolVersion>,
    /// The active health check; `None`: no checks, servers count as healthy.
    pub health: Option<HealthCheck>,
}

impl Default for UpstreamSettings {
    /// Every key's documented default, as an upstream table with only `servers` gets.
    fn default() -> Self {
        Self {
            balance: Balance::LeastConn,
            retries: DEFAULT_RETRIES,
            resolve_interval: DEFAULT_RESOLVE_INTERVAL,
            tls: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            drain_spread: DEFAULT_DRAIN_TIMEOUT / 10,
            pool_max_idle: DEFAULT_POOL_MAX_IDLE,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            availability: Availability::default(),
            health: None,
            send_proxy_protocol: None,
        }
    }
}

/// A PROXY protocol version, as `send_proxy_protocol` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ProxyProtocolVersion {
    /// The text form.
    #[serde(rename = "v1")]
    V1,
    /// The binary form.
    #[serde(rename = "v2")]
    V2,
}

/// A server given by host name, kept unresolved so that validation needs
/// no DNS, and so that it can be resolved again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedServer {
    /// The DNS name, lowercase.
    pub host: String,
    /// The port.
    pub port: u16,
    /// Weight of every address it resolves to.
    pub weight: u32,
    /// Where it was written: a name that does not resolve is reported
    /// there, as a validation problem would be.
    pub at: Location,
}

/// Default for `upstreams.NAME.resolve_interval`.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// TLS to an upstream's servers, ready to use.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Trust roots, client certificate, protocol versions.
    pub client: Arc<rustls::ClientConfig>,
    /// Name sent and verified instead of each server's own.
    pub sni: Option<rustls::pki_types::ServerName<'static>>,
    /// No certificate verification (warned about loudly at start and reload).
    pub insecure_skip_verify: bool,
    /// `ca_file`, for `/api/config`: the trust roots were read from it.
    pub ca_file: Option<PathBuf>,
    /// `client_cert`, for `/api/config`.
    pub client_cert: Option<PathBuf>,
    /// `client_key`, for `/api/config`: the path only; the key is in `client`.
    pub client_key: Option<PathBuf>,
}

/// One server of an upstream given by its IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Relative share of connections, 1-1000.
    pub weight: u32,
}

/// Default for `upstreams.NAME.hash_load_factor`.
pub const DEFAULT_HASH_LOAD_FACTOR: f64 = 1.25;
/// Default for `upstreams.NAME.retries`.
pub const DEFAULT_RETRIES: usize = 1;

/// Default for `upstreams.NAME.pool_max_idle`: idle keep-alive connections kept per server.
pub const DEFAULT_POOL_MAX_IDLE: usize = 32;
/// Default for `upstreams.NAME.pool_idle_timeout`: below the 5 s keep-alive
/// of Node.js and Apache, so wsgate does not reuse a connection the backend
/// is about to close.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Default for `upstreams.NAME.drain_timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

// === loading ===

/// Reads and validates the config file at `path`.
///
/// # Errors
/// [`ConfigError::Read`] if the file cannot be read, [`ConfigError::Invalid`]
/// with every problem otherwise.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Validates config text as if read from `path` (used for relative paths and messages).
///
/// # Errors
/// [`ConfigError::Invalid`] with every problem found.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    crate::config::validate::parse(text, path)
}

/// How an upstream picks a server (`balance =`).
#[derive(Debug, Clone, PartialEq)]
pub enum Balance {
    /// Fewest active tunnels per unit of weight: right for long-lived connections.
    LeastConn,
    /// Smooth weighted round-robin (as nginx does it).
    RoundRobin,
    /// Power of two random choices over active tunnels.
    RandomTwo,
    /// Consistent hashing with bounded loads: one key reaches one server from
    /// every wsgate sharing the config, and no server takes more than
    /// `load_factor` times its fair share.
    Hash {
        /// What identifies a client.
        key: HashKey,
        /// At least 1.0; 1.25 by default.
        load_factor: f64,
    },
}

/// What a `hash` upstream hashes (`hash_key =`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// `header:NAME`, a request header (lowercase name).
    Header(http::HeaderName),
    /// `cookie:NAME`, a cookie.
    Cookie(String),
    /// `query:NAME`, a query parameter.
    Query(String),
    /// `ip`, the client address.
    Ip,
}

impl fmt::Display for HashKey {
    /// As the config writes it: `header:NAME`, `cookie:NAME`, `query:NAME`, `ip`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
            HashKey::Query(name) => write!(f, "query:{name}"),
            HashKey::Ip => f.write_str("ip"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::upstream::split_host_port;
    use crate::config::validate::line_column;

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text, Path::new("/etc/wsgate/test.toml")) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems().to_vec(),
        }
    }

    const GOOD: &str = r#"
[timeouts]
connect = "250ms"

[[listeners]]
name = "public"
bind = "127.0.0.1:8080"

[[routes]]
host = "*.Example.com"
path_prefix = "/ws/"
upstream = "chat"

[[routes]]
upstream = "chat"

[upstreams.chat]
servers = ["127.0.0.1:9001", "[::1]:9002"]
"#;

    #[test]
    fn good_config_is_typed() {
        let c = parse(GOOD, Path::new("x.toml")).expect("valid");
        assert_eq!(c.timeouts.connect, Duration::from_millis(250));
        assert_eq!(c.timeouts.client_handshake, DEFAULT_CLIENT_HANDSHAKE);
        assert_eq!(c.listeners[0].bind, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            c.routes[0].host,
            HostPattern::Wildcard(".example.com".into())
        );
        assert_eq!(c.routes[0].path_prefix, "/ws");
        assert_eq!(c.routes[1].host, HostPattern::Any);
        assert_eq!(c.routes[1].path_prefix, "/");
        assert_eq!(c.upstreams["chat"].servers.len(), 2);
        assert_eq!(c.upstreams["chat"].settings.balance, Balance::LeastConn);
        assert_eq!(c.upstreams["chat"].settings.retries, DEFAULT_RETRIES);
    }

    #[test]
    fn every_problem_is_reported_with_position_and_key() {
        let text = "[timeouts]\nconnect = \"soon\"\n\n[[listeners]]\nname = \"a\"\nbind = \"nowhere\"\n\n[[routes]]\nupstream = \"missing\"\n";
        let p = problems(text);
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!(
            (p[0].line, p[0].column, p[0].key.as_str()),
            (2, 11, "timeouts.connect")
        );
        assert_eq!(
            (p[1].line, p[1].column, p[1].key.as_str()),
            (6, 8, "listeners[0].bind")
        );
        assert_eq!(
            (p[2].line, p[2].column, p[2].key.as_str()),
            (9, 12, "routes[0].upstream")
        );
    }

    #[test]
    fn connection_limits_are_whole_numbers_in_range_each_named() {
        let c = parse(GOOD, Path::new("x.toml")).expect("valid");
        assert_eq!(
            (c.limits.max_connections, c.limits.max_connections_per_ip),
            (DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP)
        );
        let bad = "[limits]\nmax_headers = 0\nmax_connections = -1\nmax_connections_per_ip = 0\nmax_handshakes_in_flight = 1000001\n";
        let p = problems(&format!("{bad}{GOOD}"));
        let keys: Vec<_> = p.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(
            keys,
            [
                (2, "limits.max_headers"),
                (3, "limits.max_connections"),
                (4, "limits.max_connections_per_ip"),
                (5, "limits.max_handshakes_in_flight"),
            ]
        );
    }

    #[test]
    fn unknown_key_names_its_table() {
        let p = problems("[timeouts]\nconect = \"1s\"\n");
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].line, p[0].column), (2, 1));
        assert_eq!(p[0].key, "timeouts.conect");
        assert!(p[0].message.contains("unknown field"), "{}", p[0].message);
    }

    #[test]
    fn syntax_error_has_position() {
        let p = problems("[[listeners]]\nname = \"a\nbind = 1\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].line, 2);
        let p = problems("[[listeners]]\nname = \"a\"\n[[listeners]]\nname = \"b\n");
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].line, p[0].key.as_str()), (4, "listeners[1].name"));
    }

    #[test]
    fn bad_values_are_refused() {
        let base = "[[listeners]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[upstreams.u]\nservers=[\"127.0.0.1:2\"]\n";
        for (route, key) in [
            ("host = \"a b\"", "routes[0].host"),
            ("host = \"ex.com:80\"", "routes[0].host"),
            ("host = \"*\"", "routes[0].host"),
            ("path_prefix = \"ws\"", "routes[0].path_prefix"),
            ("path_prefix = \"/a/../b\"", "routes[0].path_prefix"),
            ("path_prefix = \"/a%2f\"", "routes[0].path_prefix"),
        ] {
            let p = problems(&format!("{base}[[routes]]\nupstream=\"u\"\n{route}\n"));
            assert_eq!(p.len(), 1, "{route}: {p:?}");
            assert_eq!(p[0].key, key);
        }
        let p = problems(&format!("{base}[[routes]]\nupstream=\"u\"\n[upstreams.v]\nservers=[]\n[runtime]\nworkers=0\n[timeouts]\nconnect=\"0s\"\nclose=\"9999d\"\n"));
        let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "upstreams.v.servers",
                "runtime.workers",
                "timeouts.connect",
                "timeouts.close"
            ]
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let text = "[[listeners]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[[listeners]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[[routes]]\nupstream=\"u\"\n[[routes]]\nupstream=\"u\"\npath_prefix=\"/\"\n[upstreams.u]\nservers=[\"127.0.0.1:2\",\"127.0.0.1:2\"]\n";
        let keys: Vec<_> = problems(text).into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "listeners[1].name",
                "listeners[1].bind",
                "routes[1]",
                "upstreams.u.servers[1]"
            ]
        );
    }

    #[test]
    fn missing_tls_files_name_the_key() {
        let text = "[[listeners]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\ntls = { cert = \"nope.pem\", key = \"nope.key\" }\n[[routes]]\nupstream=\"u\"\n[upstreams.u]\nservers=[\"127.0.0.1:2\"]\n";
        let p = problems(text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "listeners[0].tls.cert");
        assert!(
            p[0].message.contains("/etc/wsgate/nope.pem"),
            "{}",
            p[0].message
        );
        let text = text.replace(
            "cert = \"nope.pem\", key = \"nope.key\"",
            "certificates = []",
        );
        assert_eq!(problems(&text)[0].key, "listeners[0].tls");
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("ab\ncé=x", 6), (2, 3));
        assert_eq!(line_column("", 0), (1, 1));
    }

    #[test]
    fn admin_log_and_drain_keys_are_typed() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("token"), "  s3cret\n").expect("token");
        let text = "[admin]\nbind = \"127.0.0.1:9090\"\ntoken_file = \"token\"\nmetrics_public = true\n[log]\nlevel = \"wsgate=debug\"\nformat = \"json\"\naccess = \"logs/access.log\"\n[[listeners]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[[routes]]\nupstream=\"u\"\n[upstreams.u]\nservers=[\"127.0.0.1:2\"]\ndrain_timeout = \"20s\"\n";
        let c = parse(text, &dir.path().join("c.toml")).expect("valid");
        let admin = c.admin.expect("admin");
        assert_eq!(admin.token.as_deref(), Some("s3cret"));
        assert!(admin.metrics_public);
        assert_eq!(c.log.format, Some(LogFormat::Json));
        assert_eq!(c.log.level.as_deref(), Some("wsgate=debug"));
        assert_eq!(
            c.log.access,
            AccessLog::File(dir.path().join("logs/access.log"))
        );
        assert_eq!(
            c.upstreams["u"].settings.drain_timeout,
            Duration::from_secs(20)
        );
        assert_eq!(
            c.upstreams["u"].settings.drain_spread,
            Duration::from_secs(2),
            "a tenth of drain_timeout"
        );
        assert_eq!(c.version.len(), 12);

        let bad = text
            .replace("\"json\"", "\"xml\"")
            .replace("token_file = \"token\"", "token_file = \"missing\"");
        let keys: Vec<String> = match parse(&bad, &dir.path().join("c.toml")) {
            Err(e) => e.problems().iter().map(|p| p.key.clone()).collect(),
            Ok(_) => Vec::new(),
        };
        assert_eq!(keys, ["admin.token_file", "log.format"]);
    }

    #[test]
    fn shutdown_keys_are_typed_and_the_spread_fits_in_the_timeout() {
        let base = "[[listeners]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[[routes]]\nupstream=\"u\"\n[upstreams.u]\nservers=[\"127.0.0.1:2\"]\n";
        let c = parse(base, Path::new("x.toml")).expect("valid");
        assert_eq!(c.runtime.shutdown_delay, Duration::ZERO);
        assert_eq!(c.runtime.shutdown_spread, DEFAULT_SHUTDOWN_SPREAD);
        assert_eq!(c.runtime.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT);
        let c = parse(
            &format!("[runtime]\nshutdown_delay = \"0s\"\nshutdown_spread = \"0s\"\nshutdown_timeout = \"1s\"\n[admin]\nbind = \"127.0.0.1:9\"\nready_requires_healthy = true\n{base}"),
            Path::new("x.toml"),
        )
        .expect("valid");
        assert_eq!(c.runtime.shutdown_spread, Duration::ZERO);
        assert!(c.admin.expect("admin").ready_requires_healthy);
        // Left out, the spread shrinks to fit a short timeout.
        let c = parse(
            &format!("[runtime]\nshutdown_delay = \"3s\"\nshutdown_timeout = \"2s\"\n{base}"),
            Path::new("x.toml"),
        )
        .expect("valid");
        assert_eq!(c.runtime.shutdown_delay, Duration::from_secs(3));
        assert_eq!(c.runtime.shutdown_spread, Duration::from_secs(1));
        let p = problems(&format!(
            "[runtime]\nshutdown_spread = \"10s\"\nshutdown_timeout = \"10s\"\nshutdown_delay = \"soon\"\n{base}"
        ));
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["runtime.shutdown_spread", "runtime.shutdown_delay"],
            "{p:?}"
        );
        assert_eq!(p[0].line, 2, "{p:?}");
    }

    #[test]
    fn balance_keys_are_typed_and_checked() {
        let base = "[[listeners]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[[routes]]\nupstream=\"u\"\n[upstreams.u]\n";
        let c = parse(
            &format!("{base}servers = [\"127.0.0.1:2\", {{ addr = \"127.0.0.1:3\", weight = 3 }}]\nbalance = \"hash\"\nhash_key = \"header:X-User\"\nhash_load_factor = 1.5\nretries = 2\n"),
            Path::new("c.toml"),
        )
        .expect("valid");
        let u = &c.upstreams["u"];
        assert_eq!(
            u.servers[1],
            ServerConfig {
                addr: "127.0.0.1:3".parse().unwrap(),
                weight: 3,
            }
        );
        assert_eq!(u.settings.retries, 2);
        assert_eq!(
            u.settings.balance,
            Balance::Hash {
                key: HashKey::Header(http::HeaderName::from_static("x-user")),
                load_factor: 1.5
            }
        );
        for (body, key) in [
            ("servers=[\"127.0.0.1:2\"]\nbalance=\"fastest\"", "upstreams.u.balance"),
            ("servers=[\"127.0.0.1:2\"]\nbalance=\"hash\"", "upstreams.u.hash_key"),
            ("servers=[\"127.0.0.1:2\"]\nbalance=\"hash\"\nhash_key=\"body:x\"", "upstreams.u.hash_key"),
            ("servers=[\"127.0.0.1:2\"]\nbalance=\"hash\"\nhash_key=\"ip\"\nhash_load_factor=0.5", "upstreams.u.hash_load_factor"),
            ("servers=[\"127.0.0.1:2\"]\nhash_key=\"ip\"", "upstreams.u.hash_key"),
            ("servers=[{ addr = \"127.0.0.1:2\", weight = 0 }]", "upstreams.u.servers[0].weight"),
            ("servers=[\"127.0.0.1:2\"]\nretries=11", "upstreams.u.retries"),
            ("servers=[\"127.0.0.1:2\", { addr = \"127.0.0.1:2\", weight = 2 }]", "upstreams.u.servers[1]"),
            ("servers=[\"nowhere\"]", "upstreams.u.servers[0]"),
        ] {
            let p = problems(&format!("{base}{body}\n"));
            assert_eq!(p.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(), [key], "{body}");
        }
    }

    #[test]
    fn proxy_protocol_keys_are_typed_and_checked() {
        let routes = "[[routes]]\nupstream=\"u\"\n";
        let listener = |extra: &str| {
            format!("[[listeners]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n{extra}\n{routes}")
        };
        let up = |extra: &str| format!("[upstreams.u]\nservers=[\"127.0.0.1:2\"]\n{extra}\n");
        let c = parse(
            &format!(
                "{}{}",
                listener("trusted_proxies=[\"10.0.0.0/8\"]\nproxy_protocol=true"),
                up("send_proxy_protocol=\"v2\"")
            ),
            Path::new("c.toml"),
        )
        .expect("valid");
        assert!(c.listeners[0].proxy_protocol);
        let v = c.upstreams["u"].settings.send_proxy_protocol;
        assert_eq!(v, Some(ProxyProtocolVersion::V2));
        let c = parse(&format!("{}{}", listener(""), up("")), Path::new("c.toml")).expect("valid");
        assert!(!c.listeners[0].proxy_protocol);
        assert_eq!(c.upstreams["u"].settings.send_proxy_protocol, None);
        // No trusted peer: anyone could name any client.
        let p = problems(&format!("{}{}", listener("proxy_protocol = true"), up("")));
        assert_eq!(
            p.iter()
                .map(|p| (p.line, p.column, p.key.as_str()))
                .collect::<Vec<_>>(),
            [(4, 18, "listeners[0].proxy_protocol")]
        );
        let p = problems(&format!(
            "{}{}",
            listener(""),
            up("send_proxy_protocol = \"v3\"")
        ));
        assert_eq!(
            p.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
            ["upstreams.u.send_proxy_protocol"]
        );
    }

    #[test]
    fn plain_http_keys_are_typed_and_checked() {
        let base = "[[listeners]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[[routes]]\nupstream=\"u\"\n";
        let c = parse(
            &format!("[timeouts]\nupstream_response = \"90s\"\nclient_body = \"3s\"\nlinger = \"1s\"\n{base}[upstreams.u]\nservers = [\"127.0.0.1:2\"]\npool_max_idle = 0\npool_idle_timeout = \"2s\"\n"),
            Path::new("c.toml"),
        )
        .expect("valid");
        assert_eq!(c.timeouts.upstream_response, Duration::from_secs(90));
        assert_eq!(c.timeouts.client_body, Duration::from_secs(3));
        assert_eq!(c.timeouts.linger, Duration::from_secs(1));
        let u = &c.upstreams["u"];
        assert_eq!(
            (u.settings.pool_max_idle, u.settings.pool_idle_timeout),
            (0, Duration::from_secs(2))
        );
        let c = parse(
            &format!("{base}[upstreams.u]\nservers = [\"127.0.0.1:2\"]\n"),
            Path::new("c.toml"),
        )
        .expect("valid");
        assert_eq!(c.timeouts.upstream_response, DEFAULT_UPSTREAM_RESPONSE);
        assert_eq!(c.timeouts.client_body, DEFAULT_CLIENT_BODY);
        assert_eq!(c.timeouts.linger, DEFAULT_LINGER);
        let u = &c.upstreams["u"];
        assert_eq!(
            (u.settings.pool_max_idle, u.settings.pool_idle_timeout),
            (DEFAULT_POOL_MAX_IDLE, DEFAULT_POOL_IDLE_TIMEOUT)
        );
        for (body, key) in [
            ("pool_max_idle = -1", "upstreams.u.pool_max_idle"),
            ("pool_max_idle = 10001", "upstreams.u.pool_max_idle"),
            (
                "pool_idle_timeout = \"0s\"",
                "upstreams.u.pool_idle_timeout",
            ),
        ] {
            let p = problems(&format!(
                "{base}[upstreams.u]\nservers=[\"127.0.0.1:2\"]\n{body}\n"
            ));
            assert_eq!(
                p.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
                [key],
                "{body}"
            );
            assert_eq!(p[0].line, 8, "{body}");
        }
        let p = problems(&format!("[timeouts]\nupstream_response = \"never\"\n{base}[upstreams.u]\nservers=[\"127.0.0.1:2\"]\n"));
        assert_eq!(
            (p[0].key.as_str(), p[0].line, p[0].column),
            ("timeouts.upstream_response", 2, 21)
        );
    }

    #[test]
    fn route_rate_and_stall_keys_have_defaults_and_ranges() {
        let head = "[[listeners]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[upstreams.u]\nservers=[\"127.0.0.1:2\"]\n[[routes]]\nupstream=\"u\"\n";
        let c = parse(head, Path::new("c.toml")).expect("valid");
        let r = &c.routes[0];
        assert_eq!((r.messages_per_second, r.burst), (None, None));
        assert_eq!(r.write_stall_timeout, DEFAULT_WRITE_STALL_TIMEOUT);
        let text = format!(
            "{head}messages_per_second = 20\nburst = 50\nwrite_stall_timeout = \"250ms\"\n"
        );
        let c = parse(&text, Path::new("c.toml")).expect("valid");
        let r = &c.routes[0];
        assert_eq!((r.messages_per_second, r.burst), (Some(20), Some(50)));
        assert_eq!(r.write_stall_timeout, Duration::from_millis(250));
        for (body, key) in [
            ("messages_per_second = 0", "messages_per_second"),
            ("messages_per_second = 1000001", "messages_per_second"),
            ("messages_per_second = 5\nburst = 0", "burst"),
            ("burst = 5", "burst"),
            ("write_stall_timeout = \"0s\"", "write_stall_timeout"),
            ("write_stall_timeout = \"soon\"", "write_stall_timeout"),
        ] {
            let p = problems(&format!("{head}{body}\n"));
            let line = 8 + body.lines().count() - 1;
            assert_eq!(
                p.iter()
                    .map(|p| (p.key.clone(), p.line))
                    .collect::<Vec<_>>(),
                [(format!("routes[0].{key}"), line)],
                "{body}"
            );
        }
    }

    #[test]
    fn route_size_limits_are_optional_and_positive() {
        let head = "[[listeners]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[upstreams.u]\nservers=[\"127.0.0.1:2\"]\n[[routes]]\nupstream=\"u\"\n";
        let c = parse(head, Path::new("c.toml")).expect("valid");
        assert_eq!(
            (c.routes[0].max_frame_bytes, c.routes[0].max_message_bytes),
            (None, None)
        );
        let text = format!("{head}max_frame_bytes = 1024\nmax_message_bytes = 65536\n");
        let c = parse(&text, Path::new("c.toml")).expect("valid");
        assert_eq!(
            (c.routes[0].max_frame_bytes, c.routes[0].max_message_bytes),
            (Some(1024), Some(65536))
        );
        for key in ["max_frame_bytes", "max_message_bytes"] {
            for bad in ["0", "-5"] {
                let p = problems(&format!("{head}{key} = {bad}\n"));
                assert_eq!(
                    p.iter()
                        .map(|p| (p.key.clone(), p.line))
                        .collect::<Vec<_>>(),
                    [(format!("routes[0].{key}"), 8)],
                    "{key} = {bad}"
                );
            }
        }
    }

    #[test]
    fn route_origins_are_checked_with_their_keys() {
        let head = "[[listeners]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[upstreams.u]\nservers=[\"127.0.0.1:2\"]\n[[routes]]\nupstream=\"u\"\n";
        let c = parse(head, Path::new("c.toml")).expect("valid");
        assert_eq!(c.routes[0].origins, None, "no key: any Origin");
        let text = format!("{head}allowed_origins = [\"https://A.test:443\", \"null\"]\n");
        let c = parse(&text, Path::new("c.toml")).expect("valid");
        let o = c.routes[0].origins.as_ref().expect("a policy");
        assert_eq!(o.allowed.len(), 2);
        assert!(!o.allow_missing);
        for (body, key, column) in [
            (
                "allowed_origins = [\"https://a.test\", \"a.test\"]",
                "routes[0].allowed_origins[1]",
                38,
            ),
            ("allowed_origins = []", "routes[0].allowed_origins", 19),
            (
                "allow_missing_origin = true",
                "routes[0].allow_missing_origin",
                24,
            ),
        ] {
            let p = problems(&format!("{head}{body}\n"));
            assert_eq!(
                p.iter()
                    .map(|p| (p.key.as_str(), p.line, p.column))
                    .collect::<Vec<_>>(),
                [(key, 8, column)],
                "{body}"
            );
        }
    }

    #[test]
    fn max_request_body_is_optional_and_positive() {
        let base = "[[listeners]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[[routes]]\nupstream=\"u\"\n[upstreams.u]\nservers=[\"127.0.0.1:2\"]\n";
        let c = parse(base, Path::new("c.toml")).expect("valid");
        assert_eq!(c.limits.max_request_body, None);
        let c = parse(
            &format!("[limits]\nmax_request_body = 1048576\n{base}"),
            Path::new("c.toml"),
        )
        .expect("valid");
        assert_eq!(c.limits.max_request_body, Some(1 << 20));
        for bad in ["0", "-5"] {
            let p = problems(&format!("[limits]\nmax_request_body = {bad}\n{base}"));
            assert_eq!(
                p.iter()
                    .map(|p| (p.key.as_str(), p.line))
                    .collect::<Vec<_>>(),
                [("limits.max_request_body", 2)],
                "{bad}"
            );
        }
    }

    #[test]
    fn servers_may_be_host_names() {
        assert_eq!(
            split_host_port("Chat-1.internal:9001"),
            Some(("chat-1.internal".to_string(), 9001))
        );
        assert_eq!(split_host_port("chat..internal:9001"), None);
        assert_eq!(split_host_port("chat:0"), None);
        assert_eq!(split_host_port("bad host:80"), None);
        let base = "[[listeners]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[[routes]]\nupstream=\"u\"\n[upstreams.u]\n";
        let c = parse(&format!("{base}servers = [\"localhost:9001\", \"127.0.0.1:9002\"]\nresolve_interval = \"5s\"\n"), Path::new("c.toml")).expect("valid");
        let u = &c.upstreams["u"];
        assert_eq!(
            u.names,
            [NamedServer {
                host: "localhost".into(),
                port: 9001,
                weight: 1,
                at: Location {
                    line: 7,
                    column: 12,
                    key: "upstreams.u.servers[0]".into()
                },
            }]
        );
        assert_eq!(
            u.servers,
            [ServerConfig {
                addr: "127.0.0.1:9002".parse().unwrap(),
                weight: 1
            }]
        );
        assert_eq!(u.settings.resolve_interval, Duration::from_secs(5));
        let p = problems(&format!("{base}servers = [\"bad host:80\"]\n"));
        assert_eq!(
            p.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
            ["upstreams.u.servers[0]"]
        );
    }

    #[test]
    fn validation_resolves_no_host_name() {
        // A name under `.invalid` never resolves (RFC 6761): validation
        // passes only because it does not try.
        let base = "[[listeners]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[[routes]]\nupstream=\"u\"\n[upstreams.u]\n";
        let c = parse(
            &format!("{base}servers = [\"backend.invalid:9001\"]\n"),
            Path::new("c.toml"),
        )
        .expect("valid without DNS");
        let u = &c.upstreams["u"];
        assert!(u.servers.is_empty());
        assert_eq!(
            u.names
                .iter()
                .map(|n| (n.host.as_str(), n.port, n.at.line, n.at.key.as_str()))
                .collect::<Vec<_>>(),
            [("backend.invalid", 9001, 7, "upstreams.u.servers[0]")]
        );
    }

    #[test]
    fn upstream_tls_keys_are_checked() {
        let base = "[[listeners]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[[routes]]\nupstream=\"u\"\n[upstreams.u]\nservers=[\"127.0.0.1:2\"]\n";
        let c = parse(
            &format!("{base}tls = true\nsni = \"backend.internal\"\n"),
            Path::new("c.toml"),
        )
        .expect("valid");
        let tls = c.upstreams["u"].settings.tls.as_ref().expect("tls");
        assert_eq!(
            tls.sni.as_ref().map(|n| n.to_str().into_owned()).as_deref(),
            Some("backend.internal")
        );
        assert!(!tls.insecure_skip_verify);
        for (body, key) in [
            ("sni = \"x\"", "upstreams.u.sni"),
            (
                "tls = true\nclient_cert = \"c.pem\"",
                "upstreams.u.client_key",
            ),
            (
                "tls = true\nca_file = \"missing.pem\"",
                "upstreams.u.ca_file",
            ),
            ("tls = true\nsni = \"not a name!\"", "upstreams.u.sni"),
            (
                "insecure_skip_verify = true",
                "upstreams.u.insecure_skip_verify",
            ),
        ] {
            let p = problems(&format!("{base}{body}\n"));
            assert_eq!(
                p.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
                [key],
                "{body}"
            );
        }
    }
}
