//! Validation of `[upstreams.NAME]`: servers and their weights, host names
//! (checked for form only and kept with their location: they are resolved
//! when a snapshot is compiled, and again every `resolve_interval`), balancing and hash keys, retries, and the drain and
//! pool settings, each turned into its typed value in [`UpstreamConfig`]
//! and its [`UpstreamSettings`].
//! An upstream's backend TLS is checked in `tls.rs`, its health
//! check in `health.rs`.
//!
//! Must not: run outside `validate::parse` (these are methods of its
//! `Validator`), or report a mistake other than through `Validator::problem`,
//! so that every problem keeps its line, column and key and is sorted with
//! the rest.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use toml::Spanned;

use crate::config::raw::{RawServer, RawUpstream};
use crate::config::validate::Validator;
use crate::config::*;

impl Validator<'_> {
    /// Every `[upstreams.NAME]`, in name order. One with mistakes is kept
    /// all the same, so that a route naming it is not reported as well.
    pub(crate) fn upstreams(
        &mut self,
        raw: BTreeMap<String, Spanned<RawUpstream>>,
    ) -> BTreeMap<String, UpstreamConfig> {
        let mut upstreams = BTreeMap::new();
        for (name, up) in raw {
            let key = format!("upstreams.{name}");
            if up.get_ref().servers.get_ref().is_empty() {
                self.problem(
                    &up.get_ref().servers,
                    format!("{key}.servers"),
                    "must name at least one server",
                );
            }
            let (servers, names) = self.servers(up.get_ref(), &key);
            let settings = self.upstream_settings(up.into_inner(), &key);
            upstreams.insert(
                name,
                UpstreamConfig {
                    servers,
                    names,
                    settings: Arc::new(settings),
                },
            );
        }
        upstreams
    }

    /// `servers =`: those given by address, and the host names to resolve
    /// later (not here: `check` must not need DNS).
    fn servers(&mut self, up: &RawUpstream, key: &str) -> (Vec<ServerConfig>, Vec<NamedServer>) {
        let mut names: Vec<NamedServer> = Vec::new();
        let mut servers = Vec::new();
        for (i, s) in up.servers.get_ref().iter().enumerate() {
            let skey = format!("{key}.servers[{i}]");
            let (addr, weight) = match s.get_ref() {
                RawServer::Addr(a) => (a.clone(), None),
                RawServer::Table(t) => (t.addr.clone(), t.weight),
            };
            let weight = match weight.map(u32::try_from) {
                None => 1,
                Some(Ok(w)) if (1..=1000).contains(&w) => w,
                Some(_) => {
                    self.problem(
                        s,
                        format!("{skey}.weight"),
                        "must be a whole number from 1 to 1000",
                    );
                    1
                }
            };
            if let Ok(addr) = addr.parse::<SocketAddr>() {
                if servers.iter().any(|c: &ServerConfig| c.addr == addr) {
                    // The second's weight would be lost.
                    self.problem(s, skey, format!("{addr} is listed twice"));
                } else {
                    servers.push(ServerConfig { addr, weight });
                }
                continue;
            }
            match split_host_port(&addr) {
                // Not resolved here: `check` must not need DNS. An
                // address it resolves to that is listed too adds nothing.
                Some((host, port)) => names.push(NamedServer {
                    host,
                    port,
                    weight,
                    at: self.location(s.span(), &skey),
                }),
                None => self.problem(s, skey, format!("{addr:?} is not IP:port nor host:port, such as \"127.0.0.1:9001\" or \"chat-1.internal:9001\"")),
            }
        }
        (servers, names)
    }

    /// Everything of an upstream besides its servers, with defaults.
    fn upstream_settings(&mut self, up: RawUpstream, key: &str) -> UpstreamSettings {
        let balance = self.balance(&up, key);
        let tls = self.upstream_tls(&up, key);
        let availability = self.availability(&up, key);
        let resolve_interval = self.duration(
            up.resolve_interval.clone(),
            &format!("{key}.resolve_interval"),
            DEFAULT_RESOLVE_INTERVAL,
        );
        let retries = self.count(
            up.retries.as_ref(),
            &format!("{key}.retries"),
            10,
            DEFAULT_RETRIES,
        );
        let drain_timeout = self.duration(
            up.drain_timeout,
            &format!("{key}.drain_timeout"),
            DEFAULT_DRAIN_TIMEOUT,
        );
        // Default: a tenth of the drain timeout, as operators expect a short tail.
        let drain_spread = self.duration(
            up.drain_spread,
            &format!("{key}.drain_spread"),
            drain_timeout / 10,
        );
        let pool_max_idle = self.count(
            up.pool_max_idle.as_ref(),
            &format!("{key}.pool_max_idle"),
            10_000,
            DEFAULT_POOL_MAX_IDLE,
        );
        let pool_idle_timeout = self.duration(
            up.pool_idle_timeout,
            &format!("{key}.pool_idle_timeout"),
            DEFAULT_POOL_IDLE_TIMEOUT,
        );
        let send_proxy_protocol =
            up.send_proxy_protocol
                .as_ref()
                .and_then(|v| match v.get_ref().as_str() {
                    "v1" => Some(ProxyProtocolVersion::V1),
                    "v2" => Some(ProxyProtocolVersion::V2),
                    other => {
                        self.problem(
                            v,
                            format!("{key}.send_proxy_protocol"),
                            format!("{other:?} is not \"v1\" or \"v2\""),
                        );
                        None
                    }
                });
        let health = up.health.map(|h| self.health(h, key));
        UpstreamSettings {
            send_proxy_protocol,
            health,
            balance,
            retries,
            resolve_interval,
            tls,
            drain_timeout,
            drain_spread,
            pool_max_idle,
            pool_idle_timeout,
            availability,
        }
    }

    fn balance(&mut self, up: &RawUpstream, key: &str) -> Balance {
        let name = up
            .balance
            .as_ref()
            .map_or("least_conn", |b| b.get_ref().as_str());
        let balance = match name {
            "least_conn" => Balance::LeastConn,
            "round_robin" => Balance::RoundRobin,
            "random_two" => Balance::RandomTwo,
            "hash" => {
                let hash_key = match &up.hash_key {
                    None => {
                        if let Some(b) = &up.balance {
                            self.problem(
                                b,
                                format!("{key}.hash_key"),
                                "balance = \"hash\" needs hash_key",
                            );
                        }
                        HashKey::Ip
                    }
                    Some(k) => self
                        .hash_key(k, &format!("{key}.hash_key"))
                        .unwrap_or(HashKey::Ip),
                };
                let load_factor = match &up.hash_load_factor {
                    None => DEFAULT_HASH_LOAD_FACTOR,
                    Some(f) if (1.0..=100.0).contains(f.get_ref()) => *f.get_ref(),
                    Some(f) => {
                        self.problem(
                            f,
                            format!("{key}.hash_load_factor"),
                            "must be a number from 1.0 to 100",
                        );
                        DEFAULT_HASH_LOAD_FACTOR
                    }
                };
                Balance::Hash {
                    key: hash_key,
                    load_factor,
                }
            }
            other => {
                if let Some(b) = &up.balance {
                    self.problem(
                        b,
                        format!("{key}.balance"),
                        format!("{other:?} is not least_conn, round_robin, random_two or hash"),
                    );
                }
                Balance::LeastConn
            }
        };
        if !matches!(balance, Balance::Hash { .. }) {
            for (k, span) in [
                ("hash_key", up.hash_key.as_ref().map(Spanned::span)),
                (
                    "hash_load_factor",
                    up.hash_load_factor.as_ref().map(Spanned::span),
                ),
            ] {
                if let Some(span) = span {
                    self.problem_at(
                        span,
                        format!("{key}.{k}"),
                        "only meaningful with balance = \"hash\"",
                    );
                }
            }
        }
        balance
    }

    fn hash_key(&mut self, k: &Spanned<String>, key: &str) -> Option<HashKey> {
        let v = k.get_ref();
        let parsed = match v.split_once(':') {
            _ if v == "ip" => Some(HashKey::Ip),
            Some(("header", name)) => http::HeaderName::from_bytes(name.as_bytes())
                .ok()
                .map(HashKey::Header),
            Some(("cookie", name)) if !name.is_empty() => Some(HashKey::Cookie(name.to_string())),
            Some(("query", name)) if !name.is_empty() => Some(HashKey::Query(name.to_string())),
            _ => None,
        };
        if parsed.is_none() {
            self.problem(
                k,
                key,
                format!("{v:?} is not \"header:NAME\", \"cookie:NAME\", \"query:NAME\" or \"ip\""),
            );
        }
        parsed
    }
}

/// `host:port` with a plausible DNS name (letters, digits, `-`, `.`, `_`).
pub(crate) fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then(|| (host.to_ascii_lowercase(), port))
}
