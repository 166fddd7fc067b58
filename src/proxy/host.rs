//! The `Host` header, validated before anything reads it (RFC 9112 section
//! 3.2, RFC 3986 section 3.2.2): a reg-name, an IPv4 address or a bracketed
//! IPv6 address, with an optional numeric port, and nothing else.
//!
//! Owns: the one grammar every later phase relies on. Routing, the 421
//! check and the forwarding headers all see a value that passed here, so
//! the name routed on is the name the backend is told (`a.test:1@evil.com`
//! or `evil.com/.wild.test` never get as far as a route).
//!
//! Must not: do I/O, or resolve names.

use std::net::Ipv6Addr;

/// Why a `Host` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// A byte outside the grammar (`@`, `/`, `?`, `#`, `%`, a space, ...).
    #[error("Host {0:?} is not a host name, IPv4 or bracketed IPv6 address")]
    Name(String),
    /// A port that is empty, not all digits, or above 65535.
    #[error("Host {0:?} has a port that is not a number up to 65535")]
    Port(String),
}

/// Validates a `Host` value and returns the name routing compares:
/// lowercased, port and one trailing dot removed, IPv6 literals bracketed.
/// An empty value (allowed by RFC 9112 for a target without authority)
/// stays empty and matches only routes without a host.
///
/// Reg-names are held to RFC 3986's unreserved characters (letters,
/// digits, `-`, `.`, `_`, `~`): its sub-delims and percent-encoding are
/// legal there but name no DNS host, and `,` or `;` have a meaning of
/// their own in `X-Forwarded-Host` and `Forwarded`.
///
/// # Errors
/// [`HostError`] naming the value.
pub fn parse_host(raw: &str) -> Result<String, HostError> {
    let host = raw.trim();
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return Err(HostError::Name(raw.to_string()));
        };
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(HostError::Name(raw.to_string()));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| HostError::Name(raw.to_string()))?,
            ),
        };
        (&host[..inner.len() + 2], port)
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if let Some(port) = port {
        let numeric =
            !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        if !numeric || port.parse::<u16>().is_err() {
            return Err(HostError::Port(raw.to_string()));
        }
    }
    if !name.starts_with('[') && !name.bytes().all(is_unreserved) {
        return Err(HostError::Name(raw.to_string()));
    }
    if name.is_empty() && port.is_some() {
        return Err(HostError::Name(raw.to_string()));
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    Ok(name.to_ascii_lowercase())
}

/// RFC 3986 section 2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_hosts_are_normalised() {
        for (raw, name) in [
            ("Chat.Example.COM:8443", "chat.example.com"),
            ("example.com.", "example.com"),
            ("[::1]:8080", "[::1]"),
            ("[2001:DB8::1]", "[2001:db8::1]"),
            ("127.0.0.1", "127.0.0.1"),
            ("127.0.0.1:65535", "127.0.0.1"),
            ("a_b-c~d", "a_b-c~d"),
            (" a.test ", "a.test"),
            ("", ""),
        ] {
            assert_eq!(parse_host(raw).as_deref(), Ok(name), "{raw:?}");
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for raw in [
            "a.test:1@evil.com",
            "evil.com/.wild.test",
            "evil.com?.wild.test",
            "evil.com#.wild.test",
            "user@a.test",
            "a.test%2f",
            "a test",
            "a.test,b.test",
            "a.test;x",
            "[::1",
            "[::1]x",
            "[v1.x]",
            "[fe80::1%25eth0]",
            "[not-ip]",
            ":80",
            "\u{e9}.test",
        ] {
            assert!(parse_host(raw).is_err(), "{raw:?}: {:?}", parse_host(raw));
        }
        assert!(matches!(parse_host("evil.com/.a"), Err(HostError::Name(_))));
        for raw in [
            "a.test:",
            "a.test:x",
            "a.test:1:2",
            "[::1]:8080@evil",
            "a.test:65536",
            "a.test:000080",
            "a.test:-1",
        ] {
            assert!(
                matches!(parse_host(raw), Err(HostError::Port(_))),
                "{raw:?}: {:?}",
                parse_host(raw)
            );
        }
    }
}
