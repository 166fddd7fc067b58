//! The running config as `GET /api/config` shows it: serde views of the
//! typed [`Config`], in the config file's own spelling, so that what the
//! API shows can be read against the README's reference and pasted back
//! into a file.
//!
//! Owns: the JSON shape. Keys are the config's keys; durations are the
//! humantime strings the config accepts (`"250ms"`, `"1m 30s"`); enums are
//! the config's words (`"least_conn"`, `"json"`); a key left out of the file
//! shows its default, or `null` where its absence means something (no
//! limit, no token, any host). Paths are shown; secrets never: the admin
//! token is not part of any view, and no view holds key material.
//!
//! Must not: be read by anything but the admin API, or grow a key that the
//! config does not accept (the admin tests hold the views to the README).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::config::*;

/// A duration as the humantime string the config accepts, such as `"1m 30s"`.
pub(crate) fn humantime<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// A duration as `humantime` writes it, for an optional key.
fn shown(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The whole running config.
#[derive(Serialize)]
pub struct ConfigView<'a> {
    /// Short hash of the file's text, as in `wsgate_config_version`.
    version: &'a str,
    /// The file it was read from.
    source: &'a Path,
    runtime: &'a RuntimeConfig,
    /// `null` without an `[admin]` table.
    admin: Option<AdminView<'a>>,
    log: LogView<'a>,
    timeouts: &'a Timeouts,
    limits: &'a Limits,
    websocket: &'a WebSocketConfig,
    listeners: Vec<ListenerView<'a>>,
    routes: Vec<RouteView<'a>>,
    upstreams: BTreeMap<&'a str, UpstreamView<'a>>,
}

impl<'a> From<&'a Config> for ConfigView<'a> {
    fn from(c: &'a Config) -> Self {
        Self {
            version: &c.version,
            source: &c.source,
            runtime: &c.runtime,
            admin: c.admin.as_ref().map(AdminView::from),
            log: LogView::from(&c.log),
            timeouts: &c.timeouts,
            limits: &c.limits,
            websocket: &c.websocket,
            listeners: c.listeners.iter().map(ListenerView::from).collect(),
            routes: c.routes.iter().map(RouteView::from).collect(),
            upstreams: c
                .upstreams
                .iter()
                .map(|(n, u)| (n.as_str(), UpstreamView::from(u)))
                .collect(),
        }
    }
}

/// `[admin]` without its token: the token file's path is shown, never
/// what it holds.
#[derive(Serialize)]
struct AdminView<'a> {
    bind: std::net::SocketAddr,
    token_file: Option<&'a Path>,
    metrics_public: bool,
    ready_requires_healthy: bool,
}

impl<'a> From<&'a AdminConfig> for AdminView<'a> {
    fn from(a: &'a AdminConfig) -> Self {
        Self {
            bind: a.bind,
            token_file: a.token_file.as_deref(),
            metrics_public: a.metrics_public,
            ready_requires_healthy: a.ready_requires_healthy,
        }
    }
}

/// `[log]`; `null` for a key left to the command line or `RUST_LOG`.
#[derive(Serialize)]
struct LogView<'a> {
    level: Option<&'a str>,
    format: Option<&'static str>,
    /// `"stdout"`, `"off"` or the file's path.
    access: &'a str,
}

impl<'a> From<&'a LogConfig> for LogView<'a> {
    fn from(l: &'a LogConfig) -> Self {
        Self {
            level: l.level.as_deref(),
            format: l.format.map(|f| match f {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }),
            access: match &l.access {
                AccessLog::Stdout => "stdout",
                AccessLog::Off => "off",
                AccessLog::File(p) => p.to_str().unwrap_or("(not UTF-8)"),
            },
        }
    }
}

/// One `[[listeners]]`.
#[derive(Serialize)]
struct ListenerView<'a> {
    name: &'a str,
    bind: std::net::SocketAddr,
    /// `{ certificates = [{ cert, key }] }`, paths only; `null` for plain TCP.
    tls: Option<ListenerTlsView<'a>>,
    trusted_proxies: Vec<String>,
    proxy_protocol: bool,
}

#[derive(Serialize)]
struct ListenerTlsView<'a> {
    certificates: Vec<CertificateView<'a>>,
}

/// A certificate's and its key's paths: the key itself is never shown.
#[derive(Serialize)]
struct CertificateView<'a> {
    cert: &'a Path,
    key: &'a Path,
}

impl<'a> From<&'a ListenerConfig> for ListenerView<'a> {
    fn from(l: &'a ListenerConfig) -> Self {
        Self {
            name: &l.name,
            bind: l.bind,
            tls: l.tls.as_ref().map(|t| ListenerTlsView {
                certificates: t
                    .certificates
                    .iter()
                    .map(|c| CertificateView {
                        cert: &c.cert_path,
                        key: &c.key_path,
                    })
                    .collect(),
            }),
            trusted_proxies: l.trusted_proxies.iter().map(ToString::to_string).collect(),
            proxy_protocol: l.proxy_protocol,
        }
    }
}

/// One `[[routes]]`.
#[derive(Serialize)]
struct RouteView<'a> {
    /// `null` for any host, as when the key is left out.
    host: Option<String>,
    path_prefix: &'a str,
    upstream: &'a str,
    /// `null`: no limit, as when the key is left out.
    max_frame_bytes: Option<u64>,
    max_message_bytes: Option<u64>,
    /// `null`: off, as when the key is left out.
    idle_timeout: Option<String>,
    ping_interval: Option<String>,
    ping_timeout: Option<String>,
    max_connection_age: Option<String>,
    /// `null`: any Origin, as when the key is left out.
    allowed_origins: Option<Vec<String>>,
    allow_missing_origin: bool,
    /// `null`: no limit.
    messages_per_second: Option<u32>,
    /// `null`: as `messages_per_second`, as when the key is left out.
    burst: Option<u32>,
    #[serde(serialize_with = "humantime")]
    write_stall_timeout: Duration,
}

impl<'a> From<&'a RouteConfig> for RouteView<'a> {
    fn from(r: &'a RouteConfig) -> Self {
        Self {
            host: (r.host != HostPattern::Any).then(|| r.host.to_string()),
            path_prefix: &r.path_prefix,
            upstream: &r.upstream,
            max_frame_bytes: r.max_frame_bytes,
            max_message_bytes: r.max_message_bytes,
            idle_timeout: r.idle_timeout.map(shown),
            ping_interval: r.ping_interval.map(shown),
            ping_timeout: r.ping_timeout.map(shown),
            max_connection_age: r.max_connection_age.map(shown),
            allowed_origins: r
                .origins
                .as_ref()
                .map(|o| o.allowed.iter().map(ToString::to_string).collect()),
            allow_missing_origin: r.origins.as_ref().is_some_and(|o| o.allow_missing),
            messages_per_second: r.messages_per_second,
            burst: r.burst,
            write_stall_timeout: r.write_stall_timeout,
        }
    }
}

/// One `[upstreams.NAME]`: its servers as written, then every setting.
#[derive(Serialize)]
struct UpstreamView<'a> {
    /// `{ addr, weight }`: those given by address, then those given by
    /// host name, each in file order; a name is shown as written (what it
    /// resolves to is in `/api/upstreams`).
    servers: Vec<ServerView>,
    #[serde(flatten)]
    settings: &'a UpstreamSettings,
    #[serde(flatten)]
    tls: UpstreamTlsView<'a>,
}

#[derive(Serialize)]
struct ServerView {
    addr: String,
    weight: u32,
}

/// The backend TLS keys, flat in the upstream's table as in the file.
#[derive(Serialize)]
struct UpstreamTlsView<'a> {
    tls: bool,
    sni: Option<String>,
    ca_file: Option<&'a Path>,
    client_cert: Option<&'a Path>,
    client_key: Option<&'a Path>,
    insecure_skip_verify: bool,
}

impl<'a> From<&'a UpstreamConfig> for UpstreamView<'a> {
    fn from(u: &'a UpstreamConfig) -> Self {
        let literal = u.servers.iter().map(|s| ServerView {
            addr: s.addr.to_string(),
            weight: s.weight,
        });
        let named = u.names.iter().map(|n| ServerView {
            addr: format!("{}:{}", n.host, n.port),
            weight: n.weight,
        });
        let tls = u.settings.tls.as_ref();
        Self {
            servers: literal.chain(named).collect(),
            settings: &u.settings,
            tls: UpstreamTlsView {
                tls: tls.is_some(),
                sni: tls
                    .and_then(|t| t.sni.as_ref())
                    .map(|n| n.to_str().into_owned()),
                ca_file: tls.and_then(|t| t.ca_file.as_deref()),
                client_cert: tls.and_then(|t| t.client_cert.as_deref()),
                client_key: tls.and_then(|t| t.client_key.as_deref()),
                insecure_skip_verify: tls.is_some_and(|t| t.insecure_skip_verify),
            },
        }
    }
}

impl Serialize for Balance {
    /// As the three keys of the file: `balance`, and `hash_key` and
    /// `hash_load_factor` (`null` unless `balance = "hash"`), so that an
    /// upstream's view can flatten it.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (name, key, factor) = match self {
            Balance::LeastConn => ("least_conn", None, None),
            Balance::RoundRobin => ("round_robin", None, None),
            Balance::RandomTwo => ("random_two", None, None),
            Balance::Hash { key, load_factor } => ("hash", Some(key), Some(*load_factor)),
        };
        let mut map = s.serialize_map(Some(3))?;
        map.serialize_entry("balance", name)?;
        map.serialize_entry("hash_key", &key.map(ToString::to_string))?;
        map.serialize_entry("hash_load_factor", &factor)?;
        map.end()
    }
}
