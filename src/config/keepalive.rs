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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::validate::parse;
    use crate::config::RouteConfig;

    const HEAD: &str = "[[listeners]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[upstreams.u]\nservers=[\"127.0.0.1:2\"]\n[[routes]]\nupstream=\"u\"\n";

    fn route(keys: &str) -> RouteConfig {
        let c = parse(&format!("{HEAD}{keys}"), Path::new("c.toml")).expect("valid");
        c.routes[0].clone()
    }

    /// (key, line) of each problem.
    fn problems(keys: &str) -> Vec<(String, usize)> {
        match parse(&format!("{HEAD}{keys}"), Path::new("c.toml")) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .problems()
                .iter()
                .map(|p| (p.key.clone(), p.line))
                .collect(),
        }
    }

    #[test]
    fn all_are_off_by_default() {
        let r = route("");
        assert_eq!(
            (
                r.idle_timeout,
                r.ping_interval,
                r.ping_timeout,
                r.max_connection_age
            ),
            (None, None, None, None)
        );
    }

    #[test]
    fn each_is_a_duration_and_ping_timeout_defaults_to_ping_interval() {
        let r =
            route("idle_timeout = \"5m\"\nping_interval = \"30s\"\nmax_connection_age = \"1h\"\n");
        assert_eq!(r.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(r.ping_interval, Some(Duration::from_secs(30)));
        assert_eq!(r.ping_timeout, Some(Duration::from_secs(30)));
        assert_eq!(r.max_connection_age, Some(Duration::from_secs(3600)));
        let r = route("ping_interval = \"30s\"\nping_timeout = \"250ms\"\n");
        assert_eq!(r.ping_timeout, Some(Duration::from_millis(250)));
    }

    #[test]
    fn a_bad_value_names_its_key_and_line() {
        for key in [
            "idle_timeout",
            "ping_interval",
            "ping_timeout",
            "max_connection_age",
        ] {
            for bad in ["\"0s\"", "\"soon\"", "\"8days\""] {
                // ping_timeout alone would also lack its ping_interval.
                let (before, line) = match key {
                    "ping_interval" => ("", 8),
                    _ => ("ping_interval = \"1s\"\n", 9),
                };
                let p = problems(&format!("{before}{key} = {bad}\n"));
                assert!(
                    p.contains(&(format!("routes[0].{key}"), line)),
                    "{key} = {bad}: {p:?}"
                );
            }
        }
    }

    #[test]
    fn ping_timeout_without_ping_interval_is_refused() {
        assert_eq!(
            problems("ping_timeout = \"5s\"\n"),
            [("routes[0].ping_timeout".to_string(), 8)]
        );
    }
}
