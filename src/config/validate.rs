//! Validation: the raw TOML shape (`raw.rs`) checked into a typed
//! [`Config`]. Every mistake becomes a
//! [`Problem`] with line, column and key, and all are collected before
//! failing, so `wsgate check` shows an operator the whole list at once.
//!
//! Owns: the `Validator` that collects problems, and the
//! checks of `runtime`, `admin`, `log`, `timeouts`, `limits`, `listeners`
//! and `routes`, one method (phase) each, called in turn by `validate`.
//! Upstreams are checked in `upstream.rs`, TLS files and settings in
//! `tls.rs`, single values (addresses, durations, hosts, paths) in
//! `values.rs`, all as more methods of `Validator`.
//!
//! Must not: be used outside `config::parse`; the rest of wsgate reads
//! typed values only.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use crate::config::raw::*;
use crate::config::*;

/// Parses and validates config text; see [`crate::config::parse`].
pub(crate) fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let key = key_at(text, span.start);
            let message = e.message().trim().replace('\n', " ");
            let mut v = Validator::new(text, path);
            v.problem_at(span, key, message);
            return Err(v.into_error());
        }
    };
    let mut v = Validator::new(text, path);
    let config = v.validate(raw);
    if v.problems.is_empty() {
        Ok(config)
    } else {
        Err(v.into_error())
    }
}

/// Best-effort dotted key for a parse error: the table header above the
/// position and the key on its line, since toml's errors carry only a span.
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = &text[line_start..];
    let line = line.split('\n').next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let headers: Vec<&str> = before[..line_start]
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('['))
        .collect();
    let table = headers.last().map(|&h| {
        let name = h.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        if h.starts_with("[[") {
            // An array of tables: name the entry as validation errors do, `listeners[1]`.
            let index = headers.iter().filter(|&&o| o == h).count() - 1;
            format!("{name}[{index}]")
        } else {
            name
        }
    });
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (Some(t), None) => t,
        (None, Some(k)) => k,
        (None, None) => "(document)".to_string(),
    }
}

pub(crate) struct Validator<'a> {
    text: &'a str,
    path: &'a Path,
    pub(crate) base: PathBuf,
    problems: Vec<Problem>,
}

impl<'a> Validator<'a> {
    fn new(text: &'a str, path: &'a Path) -> Self {
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self {
            text,
            path,
            base,
            problems: Vec::new(),
        }
    }

    fn into_error(mut self) -> ConfigError {
        self.problems.sort_by_key(|p| (p.line, p.column));
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            problems: self.problems,
        }
    }

    pub(crate) fn problem_at(
        &mut self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let (line, column) = line_column(self.text, span.start);
        self.problems.push(Problem {
            line,
            column,
            key: key.into(),
            message: message.into(),
        });
    }

    pub(crate) fn problem<T>(
        &mut self,
        at: &Spanned<T>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.problem_at(at.span(), key, message);
    }

    /// Where `span` is, for a value whose mistakes may only show later.
    pub(crate) fn location(&self, span: Range<usize>, key: &str) -> Location {
        let (line, column) = line_column(self.text, span.start);
        Location {
            line,
            column,
            key: key.to_string(),
        }
    }

    /// A whole number from 0 to `max`; `default` when absent or refused.
    pub(crate) fn count(
        &mut self,
        v: Option<&Spanned<i64>>,
        key: &str,
        max: usize,
        default: usize,
    ) -> usize {
        self.count_in(v, key, 0..=max, default)
    }

    /// A whole number within `range`; a problem naming `key`, and
    /// `default`, otherwise.
    pub(crate) fn count_in(
        &mut self,
        v: Option<&Spanned<i64>>,
        key: &str,
        range: std::ops::RangeInclusive<usize>,
        default: usize,
    ) -> usize {
        let Some(v) = v else { return default };
        match usize::try_from(*v.get_ref()) {
            Ok(n) if range.contains(&n) => n,
            _ => {
                let (lo, hi) = range.into_inner();
                self.problem(v, key, format!("must be a whole number from {lo} to {hi}"));
                default
            }
        }
    }

    /// Every phase in file order of the tables, each collecting its own
    /// problems; upstreams come before routes, which must name one.
    fn validate(&mut self, raw: RawConfig) -> Config {
        let runtime = self.runtime(raw.runtime);
        let admin = raw.admin.and_then(|a| self.admin(a));
        let log = self.log(raw.log);
        let timeouts = self.timeouts(raw.timeouts);
        let limits = self.limits(raw.limits);
        let upstreams = self.upstreams(raw.upstreams);
        let listeners = self.listeners(raw.listeners);
        let routes = self.routes(raw.routes, &upstreams);
        Config {
            source: self.path.to_path_buf(),
            runtime,
            admin,
            log,
            version: version_of(self.text),
            timeouts,
            limits,
            websocket: WebSocketConfig {
                strict: raw.websocket.strict.unwrap_or(true),
            },
            listeners,
            routes,
            upstreams,
        }
    }

    fn runtime(&mut self, raw: RawRuntime) -> RuntimeConfig {
        let d = RuntimeConfig::default();
        let shutdown_delay = self.duration_or_zero(
            raw.shutdown_delay,
            "runtime.shutdown_delay",
            d.shutdown_delay,
        );
        let shutdown_timeout = self.duration(
            raw.shutdown_timeout,
            "runtime.shutdown_timeout",
            d.shutdown_timeout,
        );
        let spread_at = raw.shutdown_spread.as_ref().map(|s| s.span());
        let mut shutdown_spread = self.duration_or_zero(
            raw.shutdown_spread,
            "runtime.shutdown_spread",
            d.shutdown_spread.min(shutdown_timeout / 2),
        );
        if shutdown_spread >= shutdown_timeout {
            // The last closes would be cut before their handshake could run.
            let message = "must be shorter than runtime.shutdown_timeout";
            if let Some(span) = spread_at {
                self.problem_at(span, "runtime.shutdown_spread", message);
            }
            shutdown_spread = shutdown_timeout / 2;
        }
        RuntimeConfig {
            workers: raw
                .workers
                .and_then(|w| match usize::try_from(*w.get_ref()) {
                    Ok(n) if (1..=1024).contains(&n) => Some(n),
                    _ => {
                        self.problem(
                            &w,
                            "runtime.workers",
                            "must be a whole number from 1 to 1024",
                        );
                        None
                    }
                }),
            watch_config: raw.watch_config.unwrap_or(false),
            shutdown_delay,
            shutdown_spread,
            shutdown_timeout,
        }
    }

    /// `[admin]`, its token read from `token_file` now.
    fn admin(&mut self, a: RawAdmin) -> Option<AdminConfig> {
        let token_file = a.token_file.as_ref().map(|f| self.base.join(f.get_ref()));
        let token = match (&a.token_file, &token_file) {
            (Some(at), Some(path)) => match std::fs::read_to_string(path) {
                Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
                Ok(_) => {
                    self.problem(
                        at,
                        "admin.token_file",
                        format!("{} is empty", path.display()),
                    );
                    None
                }
                Err(e) => {
                    self.problem(
                        at,
                        "admin.token_file",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            },
            _ => None,
        };
        self.socket_addr(&a.bind, "admin.bind")
            .map(|bind| AdminConfig {
                bind,
                token,
                token_file,
                metrics_public: a.metrics_public.unwrap_or(false),
                ready_requires_healthy: a.ready_requires_healthy.unwrap_or(false),
            })
    }

    fn timeouts(&mut self, t: RawTimeouts) -> Timeouts {
        let d = Timeouts::default();
        Timeouts {
            client_handshake: self.duration(
                t.client_handshake,
                "timeouts.client_handshake",
                d.client_handshake,
            ),
            connect: self.duration(t.connect, "timeouts.connect", d.connect),
            upstream_handshake: self.duration(
                t.upstream_handshake,
                "timeouts.upstream_handshake",
                d.upstream_handshake,
            ),
            upstream_response: self.duration(
                t.upstream_response,
                "timeouts.upstream_response",
                d.upstream_response,
            ),
            client_body: self.duration(t.client_body, "timeouts.client_body", d.client_body),
            client_write: self.duration(t.client_write, "timeouts.client_write", d.client_write),
            linger: self.duration(t.linger, "timeouts.linger", d.linger),
            half_close: self.duration(t.half_close, "timeouts.half_close", d.half_close),
            close: self.duration(t.close, "timeouts.close", d.close),
        }
    }

    /// An optional size in bytes, at least 1; `None` when absent (no limit).
    fn bytes_at_least_1(
        &mut self,
        v: Option<Spanned<i64>>,
        table: &str,
        name: &str,
    ) -> Option<u64> {
        let v = v?;
        match u64::try_from(*v.get_ref()) {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                self.problem(
                    &v,
                    format!("{table}.{name}"),
                    "must be a number of bytes, at least 1",
                );
                None
            }
        }
    }

    fn limits(&mut self, raw: RawLimits) -> Limits {
        let d = Limits::default();
        Limits {
            max_headers: self.count_in(
                raw.max_headers.as_ref(),
                "limits.max_headers",
                1..=10_000,
                d.max_headers,
            ),
            max_connections: self.count_in(
                raw.max_connections.as_ref(),
                "limits.max_connections",
                1..=10_000_000,
                d.max_connections,
            ),
            max_connections_per_ip: self.count_in(
                raw.max_connections_per_ip.as_ref(),
                "limits.max_connections_per_ip",
                1..=10_000_000,
                d.max_connections_per_ip,
            ),
            max_handshakes_in_flight: self.count_in(
                raw.max_handshakes_in_flight.as_ref(),
                "limits.max_handshakes_in_flight",
                1..=1_000_000,
                d.max_handshakes_in_flight,
            ),
            max_request_headers: match raw.max_request_headers {
                None => DEFAULT_MAX_REQUEST_HEADERS,
                Some(v) => match usize::try_from(*v.get_ref()) {
                    // hyper needs room for at least its own minimum read buffer.
                    Ok(n) if (8192..=1024 * 1024).contains(&n) => n,
                    _ => {
                        self.problem(
                            &v,
                            "limits.max_request_headers",
                            "must be a number of bytes from 8192 to 1048576",
                        );
                        DEFAULT_MAX_REQUEST_HEADERS
                    }
                },
            },
            max_request_body: self.bytes_at_least_1(
                raw.max_request_body,
                "limits",
                "max_request_body",
            ),
        }
    }

    /// A whole number within `range`; `default` when absent or refused.
    /// Every `[[listeners]]`: names and (non-zero) ports unique.
    fn listeners(&mut self, raw: Vec<Spanned<RawListener>>) -> Vec<ListenerConfig> {
        let mut listeners: Vec<ListenerConfig> = Vec::new();
        if raw.is_empty() {
            self.problem_at(0..0, "listeners", "at least one [[listeners]] is required");
        }
        let mut names = HashSet::new();
        let mut binds = HashSet::new();
        for (i, l) in raw.into_iter().enumerate() {
            let key = format!("listeners[{i}]");
            let l = l.into_inner();
            let name = l.name.get_ref().trim().to_string();
            if name.is_empty() {
                self.problem(&l.name, format!("{key}.name"), "must not be empty");
            } else if !names.insert(name.clone()) {
                self.problem(
                    &l.name,
                    format!("{key}.name"),
                    format!("listener name {name:?} is used twice"),
                );
            }
            let bind = self.socket_addr(&l.bind, &format!("{key}.bind"));
            if let Some(b) = bind {
                // Port 0 binds anywhere, so two of them never collide.
                if b.port() != 0 && !binds.insert(b) {
                    self.problem(
                        &l.bind,
                        format!("{key}.bind"),
                        format!("{b} is bound by another listener"),
                    );
                }
            }
            let tls = l.tls.and_then(|t| self.tls(t, &format!("{key}.tls")));
            let trusted_proxies = self.trusted_proxies(l.trusted_proxies, &key);
            let proxy_protocol = l.proxy_protocol.as_ref().is_some_and(|p| *p.get_ref());
            if let (true, Some(p)) = (
                proxy_protocol && trusted_proxies.is_empty(),
                &l.proxy_protocol,
            ) {
                // Without it anyone could name any client address.
                self.problem(
                    p,
                    format!("{key}.proxy_protocol"),
                    "needs trusted_proxies: the load balancers allowed to send a PROXY header",
                );
            }
            if let Some(bind) = bind {
                listeners.push(ListenerConfig {
                    name,
                    bind,
                    tls,
                    trusted_proxies,
                    proxy_protocol,
                });
            }
        }
        listeners
    }

    /// A listener's `trusted_proxies`: CIDR ranges, a bare address being a range of one.
    fn trusted_proxies(
        &mut self,
        raw: Option<Vec<Spanned<String>>>,
        key: &str,
    ) -> Vec<ipnet::IpNet> {
        let mut trusted = Vec::new();
        for (j, p) in raw.iter().flatten().enumerate() {
            let text = p.get_ref().trim();
            let parsed = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => trusted.push(net.trunc()),
                Err(_) => self.problem(
                    p,
                    format!("{key}.trusted_proxies[{j}]"),
                    format!("{text:?} is not an address or CIDR range such as \"10.0.0.0/8\""),
                ),
            }
        }
        trusted
    }

    /// Every `[[routes]]`: each names a defined upstream, no two share host and prefix.
    fn routes(
        &mut self,
        raw: Vec<Spanned<RawRoute>>,
        upstreams: &BTreeMap<String, UpstreamConfig>,
    ) -> Vec<RouteConfig> {
        let mut routes = Vec::new();
        if raw.is_empty() {
            self.problem_at(0..0, "routes", "at least one [[routes]] is required");
        }
        let mut seen_routes = HashSet::new();
        for (i, r) in raw.into_iter().enumerate() {
            let key = format!("routes[{i}]");
            let span = r.span();
            let r = r.into_inner();
            let host = match &r.host {
                None => Some(HostPattern::Any),
                Some(h) => self.host_pattern(h, &format!("{key}.host")),
            };
            let prefix = match &r.path_prefix {
                None => Some("/".to_string()),
                Some(p) => self.path_prefix(p, &format!("{key}.path_prefix")),
            };
            let upstream = r.upstream.get_ref().clone();
            if !upstreams.contains_key(&upstream) {
                self.problem(
                    &r.upstream,
                    format!("{key}.upstream"),
                    format!("no [upstreams.{upstream}] is defined"),
                );
            }
            if let (Some(host), Some(path_prefix)) = (host, prefix) {
                if !seen_routes.insert((host.clone(), path_prefix.clone())) {
                    self.problem_at(
                        span,
                        key.clone(),
                        "another route has the same host and path_prefix",
                    );
                }
                let keepalive = self.route_keepalive(&r, &key);
                let max_frame_bytes =
                    self.bytes_at_least_1(r.max_frame_bytes, &key, "max_frame_bytes");
                let max_message_bytes =
                    self.bytes_at_least_1(r.max_message_bytes, &key, "max_message_bytes");
                let origins = self.origins(r.allowed_origins, r.allow_missing_origin, &key);
                let (messages_per_second, burst) =
                    self.route_rate(&r.messages_per_second, &r.burst, &key);
                let write_stall_timeout = self.duration(
                    r.write_stall_timeout,
                    &format!("{key}.write_stall_timeout"),
                    DEFAULT_WRITE_STALL_TIMEOUT,
                );
                routes.push(RouteConfig {
                    host,
                    path_prefix,
                    upstream,
                    max_frame_bytes,
                    max_message_bytes,
                    idle_timeout: keepalive.idle_timeout,
                    ping_interval: keepalive.ping_interval,
                    ping_timeout: keepalive.ping_timeout,
                    max_connection_age: keepalive.max_connection_age,
                    origins,
                    messages_per_second,
                    burst,
                    write_stall_timeout,
                });
            }
        }
        routes
    }

    /// A route's `messages_per_second` and `burst`: whole numbers from 1,
    /// `burst` only beside a rate.
    fn route_rate(
        &mut self,
        rate: &Option<Spanned<i64>>,
        burst: &Option<Spanned<i64>>,
        key: &str,
    ) -> (Option<u32>, Option<u32>) {
        let mut whole = |v: &Option<Spanned<i64>>, name: &str| {
            let range = 1..=MAX_MESSAGES_PER_SECOND;
            let n = self.count_in(v.as_ref(), &format!("{key}.{name}"), range, 1);
            v.as_ref().map(|_| u32::try_from(n).unwrap_or(u32::MAX))
        };
        let per_second = whole(rate, "messages_per_second");
        let burst_n = whole(burst, "burst");
        if let (Some(b), None) = (burst, per_second) {
            self.problem(
                b,
                format!("{key}.burst"),
                "needs messages_per_second on the same route",
            );
        }
        (per_second, burst_n)
    }

    fn log(&mut self, raw: RawLog) -> LogConfig {
        let format = raw.format.and_then(|f| match f.get_ref().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            other => {
                self.problem(
                    &f,
                    "log.format",
                    format!("{other:?} is not \"text\" or \"json\""),
                );
                None
            }
        });
        let level = raw.level.and_then(|l| {
            match tracing_subscriber::EnvFilter::builder().parse(l.get_ref()) {
                Ok(_) => Some(l.get_ref().clone()),
                Err(e) => {
                    self.problem(
                        &l,
                        "log.level",
                        format!(
                            "{:?} is not a log filter such as \"info\" or \"wsgate=debug\": {e}",
                            l.get_ref()
                        ),
                    );
                    None
                }
            }
        });
        let access = match raw.access {
            None => AccessLog::Stdout,
            Some(a) => match a.get_ref().as_str() {
                "stdout" => AccessLog::Stdout,
                "off" => AccessLog::Off,
                "" => {
                    self.problem(&a, "log.access", "give \"stdout\", \"off\" or a file path");
                    AccessLog::Stdout
                }
                path => AccessLog::File(self.base.join(path)),
            },
        };
        LogConfig {
            level,
            format,
            access,
        }
    }
}

/// The first 12 hex digits of the SHA-1 of the config text.
fn version_of(text: &str) -> String {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(text.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let mut end = offset;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
