//! Single values checked into typed ones: addresses, durations, host
//! patterns, path prefixes. Each mistake becomes a problem naming its key.
//!
//! Owns: the rule for each kind of value, shared by every table that has
//! one. Must not: know which table a value is in (the caller passes the key).

use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use crate::config::validate::Validator;
use crate::config::{HostPattern, OriginPattern, OriginPolicy, MAX_DURATION};

impl Validator<'_> {
    pub(crate) fn socket_addr(&mut self, s: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        match s.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(s, key, format!("{:?} is not an IP address with a port, such as \"127.0.0.1:8080\" or \"[::1]:8080\"", s.get_ref()));
                None
            }
        }
    }

    pub(crate) fn duration(
        &mut self,
        s: Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(s) = s else { return default };
        match humantime::parse_duration(s.get_ref()) {
            Ok(d) if !d.is_zero() && d <= MAX_DURATION => d,
            Ok(d) if d.is_zero() => {
                self.problem(&s, key, "must be longer than zero");
                default
            }
            Ok(_) => {
                self.problem(&s, key, "must be at most 7 days");
                default
            }
            Err(e) => {
                self.problem(
                    &s,
                    key,
                    format!(
                        "{:?} is not a duration such as \"5s\" or \"250ms\": {e}",
                        s.get_ref()
                    ),
                );
                default
            }
        }
    }

    /// Like [`Self::duration`], for a wait where zero means "none".
    pub(crate) fn duration_or_zero(
        &mut self,
        s: Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        match &s {
            Some(v) if humantime::parse_duration(v.get_ref()).is_ok_and(|d| d.is_zero()) => {
                Duration::ZERO
            }
            _ => self.duration(s, key, default),
        }
    }

    pub(crate) fn host_pattern(&mut self, h: &Spanned<String>, key: &str) -> Option<HostPattern> {
        let raw = h.get_ref().trim().to_ascii_lowercase();
        let raw = raw.strip_suffix('.').unwrap_or(&raw).to_string();
        let (wild, name) = match raw.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, raw.clone()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            self.problem(
                h,
                key,
                format!(
                    "{:?} is not a host name, nor \"*.\" followed by one (no port, no scheme)",
                    h.get_ref()
                ),
            );
            return None;
        }
        Some(if wild {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name)
        })
    }

    pub(crate) fn path_prefix(&mut self, p: &Spanned<String>, key: &str) -> Option<String> {
        let s = p.get_ref();
        let bad = !s.starts_with('/')
            || s.contains(['?', '#', '%', '\\'])
            || s.chars().any(|c| c.is_whitespace() || c.is_control())
            || s.split('/').any(|seg| seg == "." || seg == "..");
        if bad {
            self.problem(p, key, format!("{s:?} must start with '/' and hold no '?', '#', '%', '\\', spaces or dot-segments"));
            return None;
        }
        let trimmed = s.trim_end_matches('/');
        Some(if trimmed.is_empty() {
            "/".to_string()
        } else {
            trimmed.to_string()
        })
    }

    /// A route's `allowed_origins` and `allow_missing_origin`: `None` when
    /// the route takes any Origin.
    pub(crate) fn origins(
        &mut self,
        allowed: Option<Spanned<Vec<Spanned<String>>>>,
        allow_missing: Option<Spanned<bool>>,
        route: &str,
    ) -> Option<OriginPolicy> {
        let Some(allowed) = allowed else {
            if let Some(m) = &allow_missing {
                self.problem(
                    m,
                    format!("{route}.allow_missing_origin"),
                    "has no effect without allowed_origins on the same route",
                );
            }
            return None;
        };
        if allowed.get_ref().is_empty() {
            self.problem(
                &allowed,
                format!("{route}.allowed_origins"),
                "an empty list would refuse every browser; leave the key out to allow any Origin",
            );
        }
        let patterns = allowed
            .into_inner()
            .into_iter()
            .enumerate()
            .filter_map(|(i, o)| match OriginPattern::parse(o.get_ref()) {
                Ok(p) => Some(p),
                Err(why) => {
                    let key = format!("{route}.allowed_origins[{i}]");
                    self.problem(&o, key, format!("{:?}: {why}", o.get_ref()));
                    None
                }
            })
            .collect();
        Some(OriginPolicy {
            allowed: patterns,
            allow_missing: allow_missing.is_some_and(|m| *m.get_ref()),
        })
    }
}
