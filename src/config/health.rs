//! `[upstreams.NAME] health = { ... }`: an upstream's active health check,
//! checked into a typed [`HealthCheck`].
//!
//! Owns: the check's typed settings, their defaults, and the validation of
//! the `health` table (a method of `Validator`). Must not: run a check (the
//! probes are in `upstream::health`, their schedule in `control::health`).

use std::time::Duration;

use serde::Serialize;
use toml::Spanned;

use crate::config::raw::RawHealth;
use crate::config::validate::Validator;

/// Default for `health.interval`.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// Default for `health.timeout`.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Default for `health.healthy_threshold`.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// Default for `health.unhealthy_threshold`.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Default for `health.expect_status`.
pub const DEFAULT_EXPECT_STATUS: u16 = 200;
/// Default for `health.path`.
pub const DEFAULT_HEALTH_PATH: &str = "/";
/// Shortest `health.interval`: below it a check becomes a load test.
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(10);
/// Largest threshold: beyond it a dead server would stay "up" for hours.
pub const MAX_THRESHOLD: u32 = 100;

/// What a probe does (`health.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// TCP connect, and the TLS handshake when the upstream uses TLS.
    Tcp,
    /// `GET path`, answered with `expect_status`.
    Http,
    /// A real upgrade on `path`: a verified 101, a ping answered by its
    /// pong, and a Close 1000.
    #[serde(rename = "websocket")]
    WebSocket,
}

impl HealthKind {
    /// The config's word, also used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthKind::Tcp => "tcp",
            HealthKind::Http => "http",
            HealthKind::WebSocket => "websocket",
        }
    }
}

/// An upstream's active health check, every key with its default filled
/// in. Compared whole on reload: a checker whose check is unchanged keeps
/// running, any difference restarts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// What a probe does.
    pub kind: HealthKind,
    /// Request path (and query) for `http` and `websocket`.
    pub path: String,
    /// Time from one probe's start to the next one's, before jitter.
    #[serde(serialize_with = "crate::config::view::humantime")]
    pub interval: Duration,
    /// Bound on a whole probe: connect, TLS, exchange, ping and close.
    #[serde(serialize_with = "crate::config::view::humantime")]
    pub timeout: Duration,
    /// Consecutive successes that bring a down server back.
    pub healthy_threshold: u32,
    /// Consecutive failures that take an up server down.
    pub unhealthy_threshold: u32,
    /// The status an `http` check expects.
    pub expect_status: u16,
    /// `Host` header; `None`: the server's host name and port, or its
    /// address when it was given by address.
    pub host: Option<String>,
}

impl Default for HealthCheck {
    /// A `tcp` check with every documented default.
    fn default() -> Self {
        Self {
            kind: HealthKind::Tcp,
            path: DEFAULT_HEALTH_PATH.to_string(),
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            healthy_threshold: DEFAULT_HEALTHY_THRESHOLD,
            unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD,
            expect_status: DEFAULT_EXPECT_STATUS,
            host: None,
        }
    }
}

impl Validator<'_> {
    /// `health = { ... }` of the upstream at `key`.
    pub(crate) fn health(&mut self, raw: Spanned<RawHealth>, key: &str) -> HealthCheck {
        let key = format!("{key}.health");
        let raw = raw.into_inner();
        let d = HealthCheck::default();
        let kind = match raw.kind.as_ref() {
            None => d.kind,
            Some(k) => match k.get_ref().as_str() {
                "tcp" => HealthKind::Tcp,
                "http" => HealthKind::Http,
                "websocket" => HealthKind::WebSocket,
                other => {
                    self.problem(
                        k,
                        format!("{key}.kind"),
                        format!("{other:?} is not tcp, http or websocket"),
                    );
                    d.kind
                }
            },
        };
        self.health_keys_for_kind(&raw, kind, &key);
        let path = raw
            .path
            .as_ref()
            .and_then(|p| self.health_path(p, &format!("{key}.path")))
            .unwrap_or(d.path);
        let host = raw
            .host
            .as_ref()
            .and_then(|h| self.health_host(h, &format!("{key}.host")));
        let interval = self.duration(raw.interval.clone(), &format!("{key}.interval"), d.interval);
        if let Some(i) = raw
            .interval
            .as_ref()
            .filter(|_| interval < MIN_HEALTH_INTERVAL)
        {
            self.problem(i, format!("{key}.interval"), "must be at least 10ms");
        }
        let timeout = self.duration(raw.timeout.clone(), &format!("{key}.timeout"), d.timeout);
        if timeout > interval {
            // Probes of one server never overlap: a longer timeout would
            // silently stretch the interval.
            let at = raw.timeout.as_ref().or(raw.interval.as_ref());
            self.problem_at(
                at.map_or(0..0, Spanned::span),
                format!("{key}.timeout"),
                format!(
                    "{} is longer than the interval ({}): a probe must end before the next one starts",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
            );
        }
        let healthy_threshold = self.threshold(
            raw.healthy_threshold.as_ref(),
            &key,
            "healthy_threshold",
            d.healthy_threshold,
        );
        let unhealthy_threshold = self.threshold(
            raw.unhealthy_threshold.as_ref(),
            &key,
            "unhealthy_threshold",
            d.unhealthy_threshold,
        );
        let expect_status = match raw.expect_status.as_ref() {
            None => d.expect_status,
            Some(s) => match u16::try_from(*s.get_ref()) {
                Ok(code) if (200..=599).contains(&code) => code,
                _ => {
                    self.problem(
                        s,
                        format!("{key}.expect_status"),
                        "must be an HTTP status from 200 to 599",
                    );
                    d.expect_status
                }
            },
        };
        HealthCheck {
            kind,
            path,
            interval,
            timeout,
            healthy_threshold,
            unhealthy_threshold,
            expect_status,
            host,
        }
    }

    /// Keys that the chosen kind would ignore are mistakes, not no-ops.
    fn health_keys_for_kind(&mut self, raw: &RawHealth, kind: HealthKind, key: &str) {
        let span = |v: Option<&Spanned<String>>| v.map(Spanned::span);
        let ignored = [
            (
                "path",
                span(raw.path.as_ref()),
                kind == HealthKind::Tcp,
                "http or websocket",
            ),
            (
                "host",
                span(raw.host.as_ref()),
                kind == HealthKind::Tcp,
                "http or websocket",
            ),
            (
                "expect_status",
                raw.expect_status.as_ref().map(Spanned::span),
                kind != HealthKind::Http,
                "http (a websocket check expects 101)",
            ),
        ];
        for (k, at, refused, kinds) in ignored {
            if let (Some(at), true) = (at, refused) {
                self.problem_at(
                    at,
                    format!("{key}.{k}"),
                    format!("only meaningful with kind = {kinds}"),
                );
            }
        }
    }

    fn threshold(&mut self, v: Option<&Spanned<i64>>, key: &str, name: &str, default: u32) -> u32 {
        let range = 1..=MAX_THRESHOLD as usize;
        let n = self.count_in(v, &format!("{key}.{name}"), range, default as usize);
        u32::try_from(n).unwrap_or(default)
    }

    fn health_path(&mut self, p: &Spanned<String>, key: &str) -> Option<String> {
        let s = p.get_ref();
        let ok =
            s.starts_with('/') && !s.contains('#') && s.parse::<http::uri::PathAndQuery>().is_ok();
        if !ok {
            self.problem(p, key, format!("{s:?} must start with '/' and be a valid request path (an optional query, no fragment, no spaces)"));
            return None;
        }
        Some(s.clone())
    }

    fn health_host(&mut self, h: &Spanned<String>, key: &str) -> Option<String> {
        let s = h.get_ref();
        let ok = !s.is_empty() && !s.contains('@') && s.parse::<http::uri::Authority>().is_ok();
        if !ok {
            self.problem(h, key, format!("{s:?} is not a Host header value such as \"chat.internal\" or \"chat.internal:8080\""));
            return None;
        }
        Some(s.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{parse, Problem};

    const BASE: &str = "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\n[[routes]]\nupstream = \"u\"\n[upstreams.u]\nservers = [\"127.0.0.1:2\"]\n";

    fn check(health: &str) -> Result<Option<HealthCheck>, Vec<Problem>> {
        let text = format!("{BASE}health = {health}\n");
        match parse(&text, Path::new("h.toml")) {
            Ok(c) => Ok(c.upstreams["u"].settings.health.clone()),
            Err(e) => Err(e.problems().to_vec()),
        }
    }

    /// The one problem of a health table, as (column, key, message).
    fn problem(health: &str) -> (usize, String, String) {
        let p = check(health).expect_err(health);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].line, 8, "{p:?}");
        (p[0].column, p[0].key.clone(), p[0].message.clone())
    }

    #[test]
    fn absent_means_no_checks() {
        let c = parse(BASE, Path::new("h.toml")).expect("valid");
        assert_eq!(c.upstreams["u"].settings.health, None);
    }

    #[test]
    fn defaults_fill_every_key() {
        assert_eq!(check("{}"), Ok(Some(HealthCheck::default())));
        assert_eq!(
            check("{ kind = \"http\" }"),
            Ok(Some(HealthCheck {
                kind: HealthKind::Http,
                ..HealthCheck::default()
            }))
        );
    }

    #[test]
    fn every_key_is_typed() {
        let c = check(
            "{ kind = \"http\", path = \"/health?deep=1\", interval = \"250ms\", timeout = \"100ms\", healthy_threshold = 1, unhealthy_threshold = 5, expect_status = 204, host = \"chat.internal:8080\" }",
        );
        assert_eq!(
            c,
            Ok(Some(HealthCheck {
                kind: HealthKind::Http,
                path: "/health?deep=1".into(),
                interval: Duration::from_millis(250),
                timeout: Duration::from_millis(100),
                healthy_threshold: 1,
                unhealthy_threshold: 5,
                expect_status: 204,
                host: Some("chat.internal:8080".into()),
            }))
        );
        let ws = check("{ kind = \"websocket\", path = \"/ws\" }").expect("valid");
        assert_eq!(ws.map(|h| h.kind), Some(HealthKind::WebSocket));
    }

    #[test]
    fn a_sub_table_works_too() {
        let text = format!(
            "{BASE}[upstreams.u.health]\nkind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"1s\"\n"
        );
        let c = parse(&text, Path::new("h.toml")).expect("valid");
        let h = c.upstreams["u"].settings.health.clone().expect("a check");
        assert_eq!(
            (h.interval, h.timeout),
            (Duration::from_secs(1), Duration::from_secs(1))
        );
    }

    #[test]
    fn mistakes_name_their_key_and_place() {
        // (table, the value the problem points at, key, message)
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "{ kind = \"icmp\" }",
                "\"icmp\"",
                "kind",
                "not tcp, http or websocket",
            ),
            (
                "{ interval = \"0s\" }",
                "\"0s\"",
                "interval",
                "longer than zero",
            ),
            (
                "{ interval = \"5ms\", timeout = \"1ms\" }",
                "\"5ms\"",
                "interval",
                "at least 10ms",
            ),
            (
                "{ interval = \"1s\", timeout = \"2s\" }",
                "\"2s\"",
                "timeout",
                "longer than the interval",
            ),
            (
                "{ timeout = \"6s\" }",
                "\"6s\"",
                "timeout",
                "longer than the interval",
            ),
            (
                "{ healthy_threshold = 0 }",
                "0",
                "healthy_threshold",
                "from 1 to 100",
            ),
            (
                "{ unhealthy_threshold = 101 }",
                "101",
                "unhealthy_threshold",
                "from 1 to 100",
            ),
            (
                "{ kind = \"http\", expect_status = 101 }",
                "101",
                "expect_status",
                "from 200 to 599",
            ),
            (
                "{ kind = \"http\", path = \"health\" }",
                "\"health\"",
                "path",
                "must start with '/'",
            ),
            (
                "{ kind = \"http\", path = \"/a b\" }",
                "\"/a b\"",
                "path",
                "must start with '/'",
            ),
            (
                "{ kind = \"http\", host = \"a b\" }",
                "\"a b\"",
                "host",
                "not a Host header",
            ),
            (
                "{ path = \"/h\" }",
                "\"/h\"",
                "path",
                "only meaningful with kind = http or websocket",
            ),
            (
                "{ host = \"h\" }",
                "\"h\"",
                "host",
                "only meaningful with kind = http or websocket",
            ),
            (
                "{ kind = \"websocket\", expect_status = 200 }",
                "200",
                "expect_status",
                "only meaningful with kind = http",
            ),
        ];
        for (health, at, key, message) in cases {
            let (c, k, m) = problem(health);
            assert_eq!(k, format!("upstreams.u.health.{key}"), "{health}");
            assert!(m.contains(message), "{health}: {m}");
            // `health = ` is 9 characters: the table starts at column 10.
            let column = 10 + health.find(at).expect("the value is in the table");
            assert_eq!(c, column, "{health}: {k}: {m}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let p = check("{ kind = \"tcp\", intervl = \"1s\" }").expect_err("unknown key");
        assert!(p[0].message.contains("unknown field"), "{p:?}");
    }
}
