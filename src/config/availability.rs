//! How an upstream's servers leave and re-enter service on their own:
//! passive checks (`max_fails` within `fail_window` eject a server for
//! `eject_for`, doubling up to `eject_max`), `slow_start` and
//! `close_on_unhealthy`. The typed [`Availability`] and its validation.
//!
//! Must not: report a mistake other than through `Validator::problem`.

use std::time::Duration;

use serde::Serialize;

use crate::config::raw::RawUpstream;
use crate::config::validate::Validator;
use crate::config::view;

/// Default for `upstreams.NAME.max_fails`.
pub const DEFAULT_MAX_FAILS: u32 = 3;
/// Default for `upstreams.NAME.fail_window`.
pub const DEFAULT_FAIL_WINDOW: Duration = Duration::from_secs(10);
/// Default for `upstreams.NAME.eject_for`.
pub const DEFAULT_EJECT_FOR: Duration = Duration::from_secs(10);
/// Default for `upstreams.NAME.eject_max`.
pub const DEFAULT_EJECT_MAX: Duration = Duration::from_secs(300);
/// Largest `max_fails`: more would never eject anything in practice.
pub const MAX_MAX_FAILS: usize = 1000;

/// How a server is taken out of service by its failures and brought back.
/// Serialized flat into the upstream's `/api/config` view, under the keys
/// of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Availability {
    /// Consecutive connect, TLS or handshake failures that eject a server;
    /// 0 turns passive checks off.
    pub max_fails: u32,
    /// The span those failures must fall within, first to last.
    #[serde(serialize_with = "view::humantime")]
    pub fail_window: Duration,
    /// The first ejection's length; each re-ejection doubles it.
    #[serde(serialize_with = "view::humantime")]
    pub eject_for: Duration,
    /// Cap of the doubling.
    #[serde(serialize_with = "view::humantime")]
    pub eject_max: Duration,
    /// Over how long a server back in service ramps up its share of new
    /// connections; zero: at once.
    #[serde(serialize_with = "view::humantime")]
    pub slow_start: Duration,
    /// Close an unusable (unhealthy or ejected) server's tunnels with 1001,
    /// spread over `drain_spread`, instead of leaving them be.
    pub close_on_unhealthy: bool,
}

impl Default for Availability {
    fn default() -> Self {
        Self {
            max_fails: DEFAULT_MAX_FAILS,
            fail_window: DEFAULT_FAIL_WINDOW,
            eject_for: DEFAULT_EJECT_FOR,
            eject_max: DEFAULT_EJECT_MAX,
            slow_start: Duration::ZERO,
            close_on_unhealthy: false,
        }
    }
}

impl Validator<'_> {
    /// The availability keys of `[upstreams.NAME]` (`key`), with defaults.
    pub(crate) fn availability(&mut self, up: &RawUpstream, key: &str) -> Availability {
        let d = Availability::default();
        let max_fails = self.count(
            up.max_fails.as_ref(),
            &format!("{key}.max_fails"),
            MAX_MAX_FAILS,
            d.max_fails as usize,
        ) as u32;
        let fail_window = self.duration(
            up.fail_window.clone(),
            &format!("{key}.fail_window"),
            d.fail_window,
        );
        let eject_for = self.duration(
            up.eject_for.clone(),
            &format!("{key}.eject_for"),
            d.eject_for,
        );
        let mut eject_max = self.duration(
            up.eject_max.clone(),
            &format!("{key}.eject_max"),
            d.eject_max,
        );
        if eject_max < eject_for {
            // Named where the operator wrote the value that does not fit.
            let (at, k) = match (&up.eject_max, &up.eject_for) {
                (Some(m), _) => (m.span(), "eject_max"),
                (None, Some(f)) => (f.span(), "eject_for"),
                (None, None) => (0..0, "eject_max"),
            };
            self.problem_at(
                at,
                format!("{key}.{k}"),
                format!(
                    "eject_max ({}) must be at least eject_for ({})",
                    humantime::format_duration(eject_max),
                    humantime::format_duration(eject_for)
                ),
            );
            eject_max = eject_for;
        }
        let slow_start = self.duration_or_zero(
            up.slow_start.clone(),
            &format!("{key}.slow_start"),
            Duration::ZERO,
        );
        Availability {
            max_fails,
            fail_window,
            eject_for,
            eject_max,
            slow_start,
            close_on_unhealthy: up.close_on_unhealthy.as_ref().is_some_and(|b| *b.get_ref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(extra: &str) -> Result<Availability, String> {
        let text = format!(
            "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n[[routes]]\nupstream = \"u\"\n[upstreams.u]\nservers = [\"127.0.0.1:2\"]\n{extra}"
        );
        crate::config::parse(&text, Path::new("t.toml"))
            .map(|c| c.upstreams["u"].settings.availability)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_apply_when_the_keys_are_absent() {
        assert_eq!(parse(""), Ok(Availability::default()));
        let d = Availability::default();
        assert_eq!(d.max_fails, 3);
        assert!(d.slow_start.is_zero() && !d.close_on_unhealthy);
    }

    #[test]
    fn every_key_is_read() {
        let a = parse("max_fails = 0\nfail_window = \"2s\"\neject_for = \"1s\"\neject_max = \"1m\"\nslow_start = \"30s\"\nclose_on_unhealthy = true\n")
            .expect("valid");
        assert_eq!(
            a,
            Availability {
                max_fails: 0,
                fail_window: Duration::from_secs(2),
                eject_for: Duration::from_secs(1),
                eject_max: Duration::from_secs(60),
                slow_start: Duration::from_secs(30),
                close_on_unhealthy: true,
            }
        );
        assert_eq!(
            parse("slow_start = \"0s\"\n").map(|a| a.slow_start),
            Ok(Duration::ZERO)
        );
    }

    #[test]
    fn mistakes_name_their_line_and_key() {
        let e = parse("eject_for = \"1m\"\neject_max = \"30s\"\n").unwrap_err();
        assert!(
            e.contains(":9:") && e.contains("upstreams.u.eject_max"),
            "{e}"
        );
        assert!(e.contains("must be at least eject_for (1m)"), "{e}");
        // Only eject_for written: it is the one named.
        let e = parse("eject_for = \"10m\"\n").unwrap_err();
        assert!(
            e.contains(":8:") && e.contains("upstreams.u.eject_for"),
            "{e}"
        );
        let e = parse("max_fails = -1\n").unwrap_err();
        assert!(e.contains("upstreams.u.max_fails"), "{e}");
        let e = parse("fail_window = \"0s\"\n").unwrap_err();
        assert!(
            e.contains("upstreams.u.fail_window: must be longer than zero"),
            "{e}"
        );
        let e = parse("slow_start = \"soon\"\n").unwrap_err();
        assert!(e.contains("upstreams.u.slow_start"), "{e}");
    }
}
