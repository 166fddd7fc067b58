//! A route's keepalive keys checked into durations: `idle_timeout`,
//! `ping_interval` and `ping_timeout`, `max_connection_age`.
//!
//! Owns: the rules between them (`ping_timeout` needs `ping_interval`, and
//! defaults to it). Must not: know what a tunnel does with them (the
//! tunnel's `keepalive.rs` does).

use std::time::Duration;

use crate::config::raw::RawRoute;
use crate::config::validate::Validator;

/// The keepalive keys of one route, checked; `None`: off.
pub(crate) struct RouteKeepalive {
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) ping_timeout: Option<Duration>,
    pub(crate) max_connection_age: Option<Duration>,
}

impl Validator<'_> {
    /// The keepalive keys of route `key`; each mistake is a problem naming
    /// its key.
    pub(crate) fn route_keepalive(&mut self, r: &RawRoute, key: &str) -> RouteKeepalive {
        let mut optional = |v: &Option<toml::Spanned<String>>, name: &str| {
            // On a mistake the problem is recorded and the config refused:
            // the value returned then is never used.
            v.clone()
                .map(|s| self.duration(Some(s), &format!("{key}.{name}"), Duration::ZERO))
        };
        let idle_timeout = optional(&r.idle_timeout, "idle_timeout");
        let ping_interval = optional(&r.ping_interval, "ping_interval");
        let ping_timeout = optional(&r.ping_timeout, "ping_timeout");
        let max_connection_age = optional(&r.max_connection_age, "max_connection_age");
        if let (Some(t), None) = (&r.ping_timeout, ping_interval) {
            self.problem(
                t,
                format!("{key}.ping_timeout"),
                "needs ping_interval: wsgate only waits for answers to its own pings",
            );
        }
        RouteKeepalive {
            idle_timeout,
            ping_interval,
            ping_timeout: ping_interval.map(|i| ping_timeout.unwrap_or(i)),
            max_connection_age,
        }
    }
}
