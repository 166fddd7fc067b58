//! A route's `allowed_origins`: which browser origins may open its
//! WebSockets (RFC 6455 section 10.2, RFC 6454).
//!
//! Owns: the origin grammar (`scheme://host[:port]`, the host possibly
//! `*.` and a suffix), its normal form, and the match of a request's
//! `Origin` against the list. Browsers send an origin serialised by RFC
//! 6454 section 6.2: lowercase, default port left out; the normal form here
//! is the same, so `https://App.example.com:443` in a config matches what
//! a browser sends for that page.
//!
//! Must not: know about requests or responses; the proxy asks and answers.

use std::fmt;
use std::net::Ipv6Addr;

/// One entry of `allowed_origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `"null"`: the opaque origin of sandboxed frames and `file:` pages,
    /// which any page can produce, so only ever allowed when listed.
    Null,
    /// `scheme://host[:port]`, or `scheme://*.suffix[:port]`.
    Tuple {
        /// Lowercase scheme.
        scheme: String,
        /// The host, or for a wildcard the suffix with its leading dot.
        host: String,
        /// Whether `host` is a suffix (`*.example.com`): one or more labels
        /// in front of it, never the bare suffix.
        wildcard: bool,
        /// The port when not the scheme's default.
        port: Option<u16>,
    },
}

/// A route's Origin rule: `allowed_origins` and `allow_missing_origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPolicy {
    /// The origins allowed, in file order.
    pub allowed: Vec<OriginPattern>,
    /// Whether a handshake without `Origin` (native clients send none) passes.
    pub allow_missing: bool,
}

/// Why a handshake's Origin was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginRefusal {
    /// No `Origin` header, and the route wants one.
    #[error("no Origin header, and the route allows only listed origins")]
    Missing,
    /// More than one `Origin` header: which one the backend believes is
    /// anyone's guess.
    #[error("more than one Origin header")]
    Repeated,
    /// An origin not on the list (or not an origin at all).
    #[error("Origin {0:?} is not allowed on this route")]
    NotAllowed(String),
}

/// The port a scheme implies, left out of a serialised origin.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Parses `scheme://host[:port]` into its normal form; `wildcard_ok` lets
/// the host start with `*.`.
fn parse_tuple(raw: &str, wildcard_ok: bool) -> Result<OriginPattern, String> {
    let lower = raw.to_ascii_lowercase();
    let Some((scheme, rest)) = lower.split_once("://") else {
        return Err("an origin is scheme://host[:port]".into());
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return Err(format!("{scheme:?} is not a URI scheme"));
    }
    if rest.contains(['/', '?', '#']) {
        return Err("an origin has no path, query or fragment (not even a final '/')".into());
    }
    let (host, port) = split_port(rest)?;
    let (wildcard, host) = match host.strip_prefix("*.") {
        Some(suffix) if wildcard_ok => (true, format!(".{suffix}")),
        _ => (false, host.to_string()),
    };
    let name = host.strip_prefix('.').unwrap_or(&host);
    if !valid_host(name) || (wildcard && name.starts_with('[')) {
        return Err(format!("{name:?} is not a host name or IP address"));
    }
    Ok(OriginPattern::Tuple {
        port: port.filter(|p| Some(*p) != default_port(scheme)),
        scheme: scheme.to_string(),
        host,
        wildcard,
    })
}

/// Splits `host[:port]`, with IPv6 literals in brackets.
fn split_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("port {p:?} is above 65535"))?,
        ),
        Some(p) => return Err(format!("port {p:?} is not a number")),
    };
    Ok((host, port))
}

/// A reg-name of unreserved characters, or a bracketed IPv6 literal.
fn valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~'))
        })
}

impl OriginPattern {
    /// Parses one `allowed_origins` entry.
    ///
    /// # Errors
    /// A message saying what is wrong with it.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.eq_ignore_ascii_case("null") {
            return Ok(Self::Null);
        }
        parse_tuple(raw.trim(), true)
    }

    /// Whether `origin`, parsed as a request's Origin, is this pattern.
    fn matches(&self, origin: &OriginPattern) -> bool {
        match (self, origin) {
            (Self::Null, Self::Null) => true,
            (
                Self::Tuple {
                    scheme,
                    host,
                    wildcard,
                    port,
                },
                Self::Tuple {
                    scheme: s,
                    host: h,
                    port: p,
                    ..
                },
            ) => {
                let host_ok = if *wildcard {
                    h.len() > host.len() && h.ends_with(host.as_str())
                } else {
                    h == host
                };
                scheme == s && port == p && host_ok
            }
            _ => false,
        }
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("null"),
            Self::Tuple {
                scheme,
                host,
                wildcard,
                port,
            } => {
                let star = if *wildcard { "*" } else { "" };
                write!(f, "{scheme}://{star}{host}")?;
                match port {
                    Some(p) => write!(f, ":{p}"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl OriginPolicy {
    /// Judges a handshake's `Origin` values (every header of that name).
    ///
    /// # Errors
    /// [`OriginRefusal`] saying why the handshake is refused.
    pub fn check<'a>(
        &self,
        mut values: impl Iterator<Item = &'a [u8]>,
    ) -> Result<(), OriginRefusal> {
        let Some(first) = values.next() else {
            return if self.allow_missing {
                Ok(())
            } else {
                Err(OriginRefusal::Missing)
            };
        };
        if values.next().is_some() {
            return Err(OriginRefusal::Repeated);
        }
        let text = String::from_utf8_lossy(first);
        let refused = || OriginRefusal::NotAllowed(text.to_string());
        // A request's origin is exactly one serialised origin: no wildcard,
        // no surrounding space, no list (RFC 6454 section 7.1 allows a
        // list only for redirects, which a WebSocket handshake never is).
        let origin = if text == "null" {
            OriginPattern::Null
        } else if text.trim() != text {
            return Err(refused());
        } else {
            parse_tuple(&text, false).map_err(|_| refused())?
        };
        if self.allowed.iter().any(|p| p.matches(&origin)) {
            Ok(())
        } else {
            Err(refused())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str], allow_missing: bool) -> OriginPolicy {
        OriginPolicy {
            allowed: allowed
                .iter()
                .map(|a| OriginPattern::parse(a).expect("valid pattern"))
                .collect(),
            allow_missing,
        }
    }

    fn check(p: &OriginPolicy, origin: &str) -> Result<(), OriginRefusal> {
        p.check(std::iter::once(origin.as_bytes()))
    }

    #[test]
    fn exact_origin_matches_in_normal_form_only() {
        let p = policy(&["https://App.Example.com:443"], false);
        assert_eq!(check(&p, "https://app.example.com"), Ok(()));
        assert_eq!(check(&p, "https://APP.example.com"), Ok(()));
        assert_eq!(check(&p, "https://app.example.com:443"), Ok(()));
        for bad in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.com.evil.test",
            "https://evil.test/https://app.example.com",
            "https://app.example.com/",
            " https://app.example.com",
            "https://x.app.example.com",
            "null",
            "",
        ] {
            assert!(
                matches!(check(&p, bad), Err(OriginRefusal::NotAllowed(_))),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn wildcard_needs_at_least_one_label_in_front() {
        let p = policy(&["https://*.example.com"], false);
        assert_eq!(check(&p, "https://a.example.com"), Ok(()));
        assert_eq!(check(&p, "https://a.b.example.com"), Ok(()));
        for bad in [
            "https://example.com",
            "https://aexample.com",
            "https://a.example.com.evil.test",
            "http://a.example.com",
            "https://a.example.com:444",
            "https://*.example.com",
        ] {
            assert!(check(&p, bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn ports_and_ipv6_literals_compare_by_value() {
        let p = policy(&["http://localhost:8080", "http://[::1]:3000"], false);
        assert_eq!(check(&p, "http://localhost:8080"), Ok(()));
        assert_eq!(check(&p, "http://[::1]:3000"), Ok(()));
        assert!(check(&p, "http://localhost").is_err());
        assert!(check(&p, "http://[::1]").is_err());
    }

    #[test]
    fn missing_and_repeated_origins() {
        let strict = policy(&["https://a.test"], false);
        assert_eq!(
            strict.check(std::iter::empty()),
            Err(OriginRefusal::Missing)
        );
        let lenient = policy(&["https://a.test"], true);
        assert_eq!(lenient.check(std::iter::empty()), Ok(()));
        let twice = [b"https://a.test".as_slice(), b"https://a.test".as_slice()];
        assert_eq!(
            lenient.check(twice.into_iter()),
            Err(OriginRefusal::Repeated)
        );
    }

    #[test]
    fn null_only_when_listed() {
        assert_eq!(check(&policy(&["null"], false), "null"), Ok(()));
        assert!(check(&policy(&["https://a.test"], false), "null").is_err());
    }

    #[test]
    fn bad_patterns_say_why() {
        for (bad, says) in [
            ("app.example.com", "scheme://host"),
            ("https://app.example.com/", "no path"),
            ("https://app.example.com/chat", "no path"),
            ("https://app.example.com:99999", "above 65535"),
            ("https://app.example.com:x", "not a number"),
            ("https://", "not a host"),
            ("https://a..b", "not a host"),
            ("https://us@er.test", "not a host"),
            ("https://*.[::1]", "not a host"),
            ("1http://a.test", "not a URI scheme"),
        ] {
            let err = OriginPattern::parse(bad).expect_err(bad);
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn patterns_print_in_normal_form() {
        for (raw, shown) in [
            ("HTTPS://App.Test:443", "https://app.test"),
            ("https://*.Example.com:8443", "https://*.example.com:8443"),
            ("NULL", "null"),
        ] {
            assert_eq!(OriginPattern::parse(raw).expect(raw).to_string(), shown);
        }
    }
}
