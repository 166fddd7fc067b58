//! The config file's raw shape, exactly as written in TOML: every table
//! refuses unknown keys (`deny_unknown_fields`), and values keep their
//! spans so that a problem can name its line and column.
//!
//! Owns: the types serde reads into. Must not: check anything (the
//! `Validator` in `validate.rs` does) or be seen outside `config`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) runtime: RawRuntime,
    pub(crate) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(crate) timeouts: RawTimeouts,
    #[serde(default)]
    pub(crate) limits: RawLimits,
    #[serde(default)]
    pub(crate) listeners: Vec<Spanned<RawListener>>,
    #[serde(default)]
    pub(crate) routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub(crate) upstreams: BTreeMap<String, Spanned<RawUpstream>>,
    #[serde(default)]
    pub(crate) log: RawLog,
    #[serde(default)]
    pub(crate) websocket: RawWebSocket,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebSocket {
    pub(crate) strict: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub(crate) level: Option<Spanned<String>>,
    pub(crate) format: Option<Spanned<String>>,
    pub(crate) access: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRuntime {
    pub(crate) workers: Option<Spanned<i64>>,
    pub(crate) watch_config: Option<bool>,
    pub(crate) shutdown_delay: Option<Spanned<String>>,
    pub(crate) shutdown_spread: Option<Spanned<String>>,
    pub(crate) shutdown_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) bind: Spanned<String>,
    pub(crate) token_file: Option<Spanned<String>>,
    pub(crate) metrics_public: Option<bool>,
    pub(crate) ready_requires_healthy: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    pub(crate) client_handshake: Option<Spanned<String>>,
    pub(crate) connect: Option<Spanned<String>>,
    pub(crate) upstream_handshake: Option<Spanned<String>>,
    pub(crate) upstream_response: Option<Spanned<String>>,
    pub(crate) client_body: Option<Spanned<String>>,
    pub(crate) client_write: Option<Spanned<String>>,
    pub(crate) linger: Option<Spanned<String>>,
    pub(crate) half_close: Option<Spanned<String>>,
    pub(crate) close: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub(crate) max_request_headers: Option<Spanned<i64>>,
    pub(crate) max_request_body: Option<Spanned<i64>>,
    pub(crate) max_headers: Option<Spanned<i64>>,
    pub(crate) max_connections: Option<Spanned<i64>>,
    pub(crate) max_connections_per_ip: Option<Spanned<i64>>,
    pub(crate) max_handshakes_in_flight: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub(crate) name: Spanned<String>,
    pub(crate) bind: Spanned<String>,
    pub(crate) tls: Option<Spanned<RawTls>>,
    pub(crate) trusted_proxies: Option<Vec<Spanned<String>>>,
    pub(crate) proxy_protocol: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub(crate) cert: Option<Spanned<String>>,
    pub(crate) key: Option<Spanned<String>>,
    pub(crate) certificates: Option<Vec<Spanned<RawCertPair>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertPair {
    pub(crate) cert: Spanned<String>,
    pub(crate) key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) host: Option<Spanned<String>>,
    pub(crate) path_prefix: Option<Spanned<String>>,
    pub(crate) upstream: Spanned<String>,
    pub(crate) max_frame_bytes: Option<Spanned<i64>>,
    pub(crate) max_message_bytes: Option<Spanned<i64>>,
    pub(crate) idle_timeout: Option<Spanned<String>>,
    pub(crate) ping_interval: Option<Spanned<String>>,
    pub(crate) ping_timeout: Option<Spanned<String>>,
    pub(crate) max_connection_age: Option<Spanned<String>>,
    pub(crate) allowed_origins: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) allow_missing_origin: Option<Spanned<bool>>,
    pub(crate) messages_per_second: Option<Spanned<i64>>,
    pub(crate) burst: Option<Spanned<i64>>,
    pub(crate) write_stall_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub(crate) servers: Spanned<Vec<Spanned<RawServer>>>,
    pub(crate) balance: Option<Spanned<String>>,
    pub(crate) hash_key: Option<Spanned<String>>,
    pub(crate) hash_load_factor: Option<Spanned<f64>>,
    pub(crate) retries: Option<Spanned<i64>>,
    pub(crate) drain_timeout: Option<Spanned<String>>,
    pub(crate) drain_spread: Option<Spanned<String>>,
    pub(crate) pool_max_idle: Option<Spanned<i64>>,
    pub(crate) pool_idle_timeout: Option<Spanned<String>>,
    pub(crate) resolve_interval: Option<Spanned<String>>,
    pub(crate) tls: Option<Spanned<bool>>,
    pub(crate) sni: Option<Spanned<String>>,
    pub(crate) ca_file: Option<Spanned<String>>,
    pub(crate) client_cert: Option<Spanned<String>>,
    pub(crate) client_key: Option<Spanned<String>>,
    pub(crate) insecure_skip_verify: Option<Spanned<bool>>,
    pub(crate) send_proxy_protocol: Option<Spanned<String>>,
    // === availability (passive checks, slow start) ===
    pub(crate) max_fails: Option<Spanned<i64>>,
    pub(crate) fail_window: Option<Spanned<String>>,
    pub(crate) eject_for: Option<Spanned<String>>,
    pub(crate) eject_max: Option<Spanned<String>>,
    pub(crate) slow_start: Option<Spanned<String>>,
    pub(crate) close_on_unhealthy: Option<Spanned<bool>>,
    pub(crate) health: Option<Spanned<RawHealth>>,
}

/// `health = { kind = "websocket", path = "/health", ... }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub(crate) kind: Option<Spanned<String>>,
    pub(crate) path: Option<Spanned<String>>,
    pub(crate) interval: Option<Spanned<String>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) healthy_threshold: Option<Spanned<i64>>,
    pub(crate) unhealthy_threshold: Option<Spanned<i64>>,
    pub(crate) expect_status: Option<Spanned<i64>>,
    pub(crate) host: Option<Spanned<String>>,
}

/// `"10.0.0.1:9001"` or `{ addr = "10.0.0.1:9001", weight = 3 }`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum RawServer {
    Addr(String),
    Table(RawServerTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServerTable {
    pub(crate) addr: String,
    pub(crate) weight: Option<i64>,
}
