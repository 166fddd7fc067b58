//! The routing table: one immutable [`Snapshot`] compiled from a [`Config`],
//! route matching by host and path, and request-path normalisation.
//!
//! Owns: what the data path reads per request. A snapshot is built once and
//! swapped whole behind one `ArcSwap` (see [`crate::Shared`]); connections load
//! it once and clone the `Arc`s they need, so a later swap never reaches them.
//!
//! Must not: do I/O or hold mutable state other than the balancer's counters.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{
    Config, HostPattern, Limits, ListenerConfig, RouteConfig, Timeouts, UpstreamConfig,
};
use crate::net::tls::TlsSettings;
use crate::tunnel::keepalive::{KeepalivePolicy, PingPolicy};
use crate::tunnel::RateLimit;
use crate::upstream::balancer::{Server, Upstream};

/// What every host-named server resolved to, by name and port, each list
/// sorted, each address once: looked up before a snapshot is compiled
/// (see `control::resolve::resolve_names`), since compiling does no I/O.
pub type Answers = BTreeMap<(String, u16), Vec<SocketAddr>>;

/// Everything a new connection needs, compiled once per config load.
pub struct Snapshot {
    /// The config this was compiled from.
    pub config: Arc<Config>,
    /// The addresses its host names were compiled with, so that
    /// re-resolution can tell whether they changed.
    pub answers: Answers,
    /// Routes ordered most specific first, so the first match wins.
    routes: Vec<Arc<Route>>,
    /// Upstream pools by name.
    upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Weights of carried-over servers, applied only once this snapshot is
    /// live: compiling must change nothing, since a reload may still fail.
    pending_weights: Vec<(Arc<Server>, u32)>,
    /// Per-listener settings by name.
    pub listeners: HashMap<String, Arc<ListenerSettings>>,
    /// Deadlines for new connections.
    pub timeouts: Timeouts,
    /// Size limits: `max_request_headers` for new connections,
    /// `max_request_body` for each new request.
    pub limits: Limits,
}

/// What a listener needs at accept time.
pub struct ListenerSettings {
    /// Listener name for logs and stats.
    pub name: Arc<str>,
    /// Certificates for TLS termination; `None` on a plain listener.
    pub tls: Option<Arc<TlsSettings>>,
    /// Peers whose forwarding headers are believed; with `proxy_protocol`,
    /// the only peers accepted at all.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
}

impl ListenerSettings {
    /// Whether `ip` is a trusted proxy on this listener.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

/// One compiled route.
pub struct Route {
    /// Stable human label such as `chat.example.com/ws`, used in logs and stats.
    pub label: Arc<str>,
    host: HostPattern,
    prefix: String,
    /// Where matching requests go.
    pub upstream: Arc<Upstream>,
    /// `max_frame_bytes` and `max_message_bytes` of its tunnels.
    pub max_frame_bytes: Option<u64>,
    /// See `max_frame_bytes`.
    pub max_message_bytes: Option<u64>,
    /// `idle_timeout`, pings and `max_connection_age` of its tunnels.
    pub keepalive: KeepalivePolicy,
    /// Which Origins may open a WebSocket here; `None`: any.
    pub origins: Option<crate::config::OriginPolicy>,
    /// `messages_per_second` and `burst` (filled in) of its tunnels' clients.
    pub rate: Option<RateLimit>,
    /// `write_stall_timeout` of its tunnels.
    pub write_stall_timeout: Duration,
}

/// Why a snapshot could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// A listener's certificates could not be turned into a TLS config.
    #[error("listener {listener}: {source}")]
    Tls {
        /// Listener name.
        listener: String,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
}

impl Snapshot {
    /// Compiles a validated config into a routing table, each host-named
    /// server becoming the addresses `answers` gives for it. Servers that
    /// were in `previous` (same upstream, same address) are carried over with
    /// their live state: active tunnels, enabled flag, drain in progress.
    ///
    /// # Errors
    /// [`CompileError::Tls`] if rustls refuses a listener's certificates.
    ///
    /// `draining` lists servers a reload removed that are still draining, by
    /// upstream name: one added back is carried over too, tunnels and all.
    pub fn compile(
        config: Arc<Config>,
        answers: Answers,
        previous: Option<&Snapshot>,
        draining: &[(Arc<str>, Arc<Server>)],
    ) -> Result<Self, CompileError> {
        let mut pending_weights = Vec::new();
        let upstreams: HashMap<&str, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|(name, u)| {
                let old = previous.and_then(|p| p.upstream(name));
                let pending = &mut pending_weights;
                let resolved = resolved_servers(u, &answers);
                let servers = resolved
                    .iter()
                    .map(|s| {
                        let back = || {
                            draining
                                .iter()
                                .find(|(u, d)| **u == **name && d.addr == s.addr)
                                .map(|(_, d)| d)
                        };
                        let kept = old.and_then(|o| o.server(s.addr)).or_else(back);
                        // Same address under another name is another server to
                        // TLS: carrying it over would keep verifying the old name.
                        let same_name = |k: &&Arc<Server>| k.host.as_deref() == s.host;
                        (s, kept.filter(same_name))
                    })
                    .map(|(s, kept)| match kept {
                        Some(kept) => {
                            pending.push((kept.clone(), s.weight));
                            kept.clone()
                        }
                        None => {
                            let fresh = Server::named(s.addr, s.weight, s.host.map(Arc::from));
                            // Added by a reload (at start every server is new):
                            // slow start ramps it up.
                            if previous.is_some() {
                                fresh.begin_ramp();
                            }
                            Arc::new(fresh)
                        }
                    })
                    .collect();
                let weights: Vec<u32> = resolved.iter().map(|s| s.weight).collect();
                let pool = Upstream::new(name, servers, &weights, u.settings.clone());
                (name.as_str(), Arc::new(pool))
            })
            .collect();
        let mut routes: Vec<Arc<Route>> = config
            .routes
            .iter()
            .filter_map(|r| {
                // Validation guarantees the upstream exists.
                let upstream = upstreams.get(r.upstream.as_str())?.clone();
                Some(Arc::new(Route {
                    label: format!("{}{}", r.host, r.path_prefix).into(),
                    host: r.host.clone(),
                    prefix: r.path_prefix.clone(),
                    upstream,
                    max_frame_bytes: r.max_frame_bytes,
                    max_message_bytes: r.max_message_bytes,
                    keepalive: keepalive_policy(r),
                    origins: r.origins.clone(),
                    rate: r.messages_per_second.map(|per_second| RateLimit {
                        per_second,
                        burst: r.burst.unwrap_or(per_second),
                    }),
                    write_stall_timeout: r.write_stall_timeout,
                }))
            })
            .collect();
        routes.sort_by_key(|r| {
            let host_rank = match &r.host {
                HostPattern::Exact(_) => (0, 0),
                // A longer suffix is more specific.
                HostPattern::Wildcard(s) => (1, usize::MAX - s.len()),
                HostPattern::Any => (2, 0),
            };
            (host_rank, usize::MAX - r.prefix.len())
        });
        let mut listeners = HashMap::new();
        for l in &config.listeners {
            listeners.insert(l.name.clone(), Arc::new(listener_settings(l)?));
        }
        let upstreams = upstreams
            .into_iter()
            .map(|(n, u)| (n.to_string(), u))
            .collect();
        Ok(Self {
            upstreams,
            answers,
            pending_weights,
            timeouts: config.timeouts,
            limits: config.limits,
            config,
            routes,
            listeners,
        })
    }

    /// Applies the weights of carried-over servers; call once this snapshot is live.
    pub fn apply_weights(&self) {
        for (server, weight) in &self.pending_weights {
            server.set_weight(*weight);
        }
    }

    /// Servers of `self` that `next` no longer has (by identity), with the
    /// upstream they were in: what a reload must drain.
    pub fn removed_servers(&self, next: &Snapshot) -> Vec<(Arc<Upstream>, Arc<Server>)> {
        let kept: Vec<*const Server> = next
            .upstreams()
            .flat_map(|u| u.servers.iter().map(Arc::as_ptr))
            .collect();
        self.upstreams()
            .flat_map(|u| u.servers.iter().map(move |s| (u.clone(), s.clone())))
            .filter(|(_, s)| !kept.contains(&Arc::as_ptr(s)))
            .collect()
    }

    /// Labels of every route.
    pub fn route_labels(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| &*r.label)
    }

    /// Every route, most specific first.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }

    /// The pool called `name`.
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(name)
    }

    /// Every pool, by name.
    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.upstreams.values()
    }

    /// The most specific route for a normalised host (lowercase, no port) and
    /// normalised path: exact host over wildcard over any, then longest prefix.
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| {
            let host_ok = match &r.host {
                HostPattern::Any => true,
                HostPattern::Exact(h) => h == host,
                HostPattern::Wildcard(suffix) => {
                    host.len() > suffix.len() && host.ends_with(suffix.as_str())
                }
            };
            host_ok && prefix_matches(&r.prefix, path)
        })
    }
}

/// One server of a compiled upstream: given by address, or one of the
/// addresses its name resolved to.
struct Resolved<'a> {
    addr: SocketAddr,
    weight: u32,
    /// The name it came from: the default TLS name for the server.
    host: Option<&'a str>,
}

/// An upstream's servers: those given by address, in file order, then each
/// name's addresses. An address already there adds nothing (a name may
/// resolve to an address that is listed too). A name without an answer
/// adds nothing either: resolution reported it before compiling.
fn resolved_servers<'a>(u: &'a UpstreamConfig, answers: &Answers) -> Vec<Resolved<'a>> {
    let mut servers: Vec<Resolved<'a>> = u
        .servers
        .iter()
        .map(|s| Resolved {
            addr: s.addr,
            weight: s.weight,
            host: None,
        })
        .collect();
    for n in &u.names {
        let addrs = answers.get(&(n.host.clone(), n.port));
        debug_assert!(addrs.is_some(), "{} was not resolved", n.host);
        for &addr in addrs.into_iter().flatten() {
            if !servers.iter().any(|s| s.addr == addr) {
                servers.push(Resolved {
                    addr,
                    weight: n.weight,
                    host: Some(&n.host),
                });
            }
        }
    }
    servers
}

/// A route's keepalive keys as its tunnels apply them.
fn keepalive_policy(r: &RouteConfig) -> KeepalivePolicy {
    KeepalivePolicy {
        idle_timeout: r.idle_timeout,
        // Validation sets `ping_timeout` whenever `ping_interval` is set.
        ping: r.ping_interval.map(|interval| PingPolicy {
            interval,
            timeout: r.ping_timeout.unwrap_or(interval),
        }),
        max_age: r.max_connection_age,
    }
}

fn listener_settings(l: &ListenerConfig) -> Result<ListenerSettings, CompileError> {
    let tls = match &l.tls {
        None => None,
        Some(t) => Some(Arc::new(TlsSettings::new(t).map_err(|source| {
            CompileError::Tls {
                listener: l.name.clone(),
                source,
            }
        })?)),
    };
    Ok(ListenerSettings {
        name: l.name.as_str().into(),
        tls,
        trusted_proxies: l.trusted_proxies.clone(),
        proxy_protocol: l.proxy_protocol,
    })
}

/// Whole-segment prefix match: `/ws` matches `/ws`, `/ws/` and `/ws/a`, never `/wsx`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Why a request path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not origin-form (`/...`).
    #[error("request target must be a path starting with '/'")]
    NotOriginForm,
    /// An encoding whose meaning differs between servers: `%2F`, `%5C`, `%00`.
    #[error("ambiguous percent-encoding {0} in path")]
    AmbiguousEncoding(String),
    /// `%` not followed by two hex digits.
    #[error("malformed percent-encoding in path")]
    BadEncoding,
    /// A raw backslash or control byte.
    #[error("forbidden character in path")]
    ForbiddenChar,
    /// A `..` that climbs above the root.
    #[error("path climbs above the root")]
    AboveRoot,
    /// A dot-segment with `;` parameters (`..;`): Tomcat-style servers read
    /// it as `..`, so it would escape the route it matched here.
    #[error("dot-segment with parameters in path")]
    DotSegmentParams,
}

/// Normalises a request path per RFC 3986: percent-encoded unreserved
/// characters are decoded (so `%2e%2e` is seen as the `..` it is), other
/// escapes are uppercased, and dot-segments are removed (section 5.2.4).
///
/// Refuses what different servers would read differently rather than guess:
/// encoded slash, backslash or NUL, and a `..` above the root.
///
/// # Errors
/// A [`PathError`] naming the offending construct.
pub fn normalize_path(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
                let v = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(PathError::BadEncoding)?;
                match v {
                    b'/' | b'\\' | 0 => {
                        return Err(PathError::AmbiguousEncoding(format!("%{}", hex_upper(v))));
                    }
                    v if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => {
                        decoded.push(v as char)
                    }
                    v => {
                        decoded.push('%');
                        decoded.push_str(&hex_upper(v));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::ForbiddenChar),
            b if b.is_ascii_control() => return Err(PathError::ForbiddenChar),
            _ => {
                // Multi-byte UTF-8 sequences are copied byte by byte via the char.
                let ch = path[i..].chars().next().ok_or(PathError::ForbiddenChar)?;
                decoded.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    remove_dot_segments(&decoded)
}

fn hex_upper(v: u8) -> String {
    format!("{v:02X}")
}

/// RFC 3986 5.2.4 over a path already starting with `/`, refusing to climb above the root.
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    // A trailing "." or ".." leaves a trailing slash, as the RFC's algorithm does.
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        if let Some((name, _)) = seg.split_once(';') {
            if name == "." || name == ".." {
                return Err(PathError::DotSegmentParams);
            }
        }
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(path.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if trailing_slash || result.is_empty() {
        result.push('/');
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn dot_segments_are_resolved() {
        for (input, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/%2e%2E/b", "/b"),
            ("/a/%2E/b", "/a/b"),
            ("/ws/", "/ws/"),
            ("/a//b", "/a//b"),
            ("/%7euser", "/~user"),
            ("/a%20b", "/a%20b"),
            ("/a%c3%a9", "/a%C3%A9"),
            ("/..a/b..", "/..a/b.."),
            ("/a;v=1/b", "/a;v=1/b"),
            ("/é", "/é"),
        ] {
            assert_eq!(normalize_path(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for (input, want) in [
            ("/a%2fb", PathError::AmbiguousEncoding("%2F".into())),
            ("/a%2Fb", PathError::AmbiguousEncoding("%2F".into())),
            ("/a%5cb", PathError::AmbiguousEncoding("%5C".into())),
            ("/a%00", PathError::AmbiguousEncoding("%00".into())),
            ("/..", PathError::AboveRoot),
            ("/a/../../b", PathError::AboveRoot),
            ("/%2e%2e/etc", PathError::AboveRoot),
            ("/public/..;/private", PathError::DotSegmentParams),
            ("/public/%2e%2e;x=1/private", PathError::DotSegmentParams),
            ("/a/.;/b", PathError::DotSegmentParams),
            ("/a%zz", PathError::BadEncoding),
            ("/a%2", PathError::BadEncoding),
            ("/a\\b", PathError::ForbiddenChar),
            ("*", PathError::NotOriginForm),
            ("http://x/", PathError::NotOriginForm),
        ] {
            assert_eq!(normalize_path(input), Err(want), "{input}");
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/ws", "/ws"));
        assert!(prefix_matches("/ws", "/ws/"));
        assert!(prefix_matches("/ws", "/ws/a"));
        assert!(!prefix_matches("/ws", "/wsx"));
        assert!(!prefix_matches("/ws", "/"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn most_specific_route_wins() {
        let text = r#"
[[listeners]]
name = "l"
bind = "127.0.0.1:0"
[[routes]]
upstream = "any"
[[routes]]
upstream = "anyws"
path_prefix = "/ws"
[[routes]]
host = "*.example.com"
upstream = "wild"
[[routes]]
host = "*.eu.example.com"
upstream = "wildeu"
[[routes]]
host = "chat.example.com"
upstream = "exact"
[[routes]]
host = "chat.example.com"
path_prefix = "/ws/admin"
upstream = "exactadmin"
[upstreams.any]
servers = ["127.0.0.1:1"]
[upstreams.anyws]
servers = ["127.0.0.1:2"]
[upstreams.wild]
servers = ["127.0.0.1:3"]
[upstreams.wildeu]
servers = ["127.0.0.1:4"]
[upstreams.exact]
servers = ["127.0.0.1:5"]
[upstreams.exactadmin]
servers = ["127.0.0.1:6"]
"#;
        let config = crate::config::parse(text, Path::new("t.toml")).expect("valid");
        let snap =
            Snapshot::compile(Arc::new(config), Answers::new(), None, &[]).expect("compiles");
        let pick = |h: &str, p: &str| snap.route(h, p).map(|r| r.upstream.name.to_string());
        assert_eq!(
            pick("chat.example.com", "/ws/admin/x").as_deref(),
            Some("exactadmin")
        );
        assert_eq!(
            pick("chat.example.com", "/ws/adminx").as_deref(),
            Some("exact")
        );
        assert_eq!(pick("a.eu.example.com", "/").as_deref(), Some("wildeu"));
        assert_eq!(pick("a.b.example.com", "/ws").as_deref(), Some("wild"));
        assert_eq!(pick("example.com", "/ws").as_deref(), Some("anyws"));
        assert_eq!(pick("other", "/x").as_deref(), Some("any"));
        assert_eq!(
            snap.route("chat.example.com", "/ws/admin")
                .map(|r| &*r.label),
            Some("chat.example.com/ws/admin")
        );
    }

    #[test]
    fn a_names_addresses_follow_the_listed_ones_and_none_is_added_twice() {
        let text = "[[listeners]]\nname=\"l\"\nbind=\"127.0.0.1:0\"\n[[routes]]\nupstream=\"u\"\n[upstreams.u]\nservers=[\"chat.internal:9\", { addr = \"127.0.0.1:9\", weight = 2 }]\n";
        let config = crate::config::parse(text, Path::new("t.toml")).expect("valid");
        let (listed, other): (SocketAddr, SocketAddr) = (
            "127.0.0.1:9".parse().unwrap(),
            "127.0.0.2:9".parse().unwrap(),
        );
        let answers = Answers::from([(("chat.internal".to_string(), 9), vec![listed, other])]);
        let snap = Snapshot::compile(Arc::new(config), answers, None, &[]).expect("compiles");
        let servers: Vec<(SocketAddr, u32, Option<&str>)> = snap
            .upstream("u")
            .expect("u")
            .servers
            .iter()
            .map(|s| (s.addr, s.weight(), s.host.as_deref()))
            .collect();
        // The listed address keeps its weight and has no name to verify.
        assert_eq!(
            servers,
            [(listed, 2, None), (other, 1, Some("chat.internal"))]
        );
    }

    #[test]
    fn servers_are_carried_over_only_under_the_same_name() {
        let cfg = |servers: &str| {
            let text = format!("[[listeners]]\nname=\"l\"\nbind=\"127.0.0.1:0\"\n[[routes]]\nupstream=\"u\"\n[upstreams.u]\nservers={servers}\n");
            Arc::new(crate::config::parse(&text, Path::new("t.toml")).expect("valid"))
        };
        let addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
        let first = Snapshot::compile(cfg("[\"127.0.0.1:9\"]"), Answers::new(), None, &[])
            .expect("compiles");
        let same = Snapshot::compile(
            cfg("[{ addr = \"127.0.0.1:9\", weight = 2 }]"),
            Answers::new(),
            Some(&first),
            &[],
        )
        .expect("compiles");
        let old = first
            .upstream("u")
            .and_then(|u| u.server(addr))
            .expect("server");
        let kept = same
            .upstream("u")
            .and_then(|u| u.server(addr))
            .expect("server");
        assert!(
            Arc::ptr_eq(old, kept),
            "same address, same name: the same server"
        );
        // The name resolves to 127.0.0.1: same address, now by name.
        let answers = Answers::from([(("localhost".to_string(), 9), vec![addr])]);
        let named = Snapshot::compile(cfg("[\"localhost:9\"]"), answers, Some(&first), &[])
            .expect("compiles");
        let renamed = named
            .upstream("u")
            .and_then(|u| u.server(addr))
            .expect("server");
        assert!(
            !Arc::ptr_eq(old, renamed),
            "a new name is a new server to TLS"
        );
        assert_eq!(renamed.host.as_deref(), Some("localhost"));
    }
}
