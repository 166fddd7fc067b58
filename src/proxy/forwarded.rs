//! The forwarding headers of this hop: who the real client is behind
//! trusted proxies, and the `X-Forwarded-*` and RFC 7239 `Forwarded`
//! headers a backend gets, for upgrades and plain requests alike.
//!
//! Owns: the trust rule (only the right-most entries written by trusted
//! proxies are believed) and the headers' exact form.
//!
//! Must not: trust any header from a peer outside `trusted_proxies`.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The real client: the peer itself, unless the peer is a trusted proxy;
/// then the right-most `X-Forwarded-For` entry that is not a trusted proxy
/// (entries further left could have been written by anyone). The port is
/// the peer's when the client is the peer, else 0 (headers carry no port).
pub fn real_client(
    headers: &HeaderMap,
    peer: SocketAddr,
    trusts: impl Fn(IpAddr) -> bool,
) -> SocketAddr {
    // On a [::] listener IPv4 peers arrive as ::ffff:a.b.c.d; ranges are written as IPv4.
    let trusts = |ip: IpAddr| trusts(ip.to_canonical());
    if !trusts(peer.ip()) {
        return peer;
    }
    let entries: Vec<String> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|e| e.trim().to_string())
        .collect();
    let mut client = peer.ip().to_canonical();
    for entry in entries.iter().rev() {
        match parse_forwarded_ip(entry) {
            Some(ip) if trusts(ip) => client = ip,
            Some(ip) => {
                client = ip;
                break;
            }
            // A malformed entry ends what can be believed.
            None => break,
        }
    }
    let port = if client == peer.ip().to_canonical() {
        peer.port()
    } else {
        0
    };
    SocketAddr::new(client, port)
}

/// An `X-Forwarded-For` entry as proxies write it: `ip`, `ip:port`,
/// `[v6]`, `[v6]:port`, possibly quoted. `None` for `unknown` and
/// obfuscated identifiers.
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    let e = entry.trim().trim_matches('"');
    e.parse::<IpAddr>()
        .ok()
        .or_else(|| e.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            e.strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<IpAddr>()
                .ok()
        })
        .map(|ip| ip.to_canonical())
}

// Names made once: a `&str` name is parsed on every use, and inserting
// one that is not a standard header copies it into a fresh allocation
// (twice, counting the clone of the request for a retry).
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Sets the forwarding headers for this hop. From a trusted proxy
/// (`extend`), incoming `X-Forwarded-For` and `Forwarded` are kept and this
/// hop appended, and its `X-Forwarded-Proto`/`-Host` kept; from anyone
/// else, all of them are replaced by what this hop knows. `X-Real-IP` is
/// always dropped.
pub fn set_forwarding_headers(
    headers: &mut HeaderMap,
    peer: IpAddr,
    extend: bool,
    tls: bool,
    host: Option<&HeaderValue>,
) {
    let joined = |headers: &HeaderMap, name: &HeaderName| -> Option<String> {
        let parts: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    };
    let kept = |name: &HeaderName| if extend { joined(headers, name) } else { None };
    let (xff, fwd, xfp, xfh) = (
        kept(&X_FORWARDED_FOR),
        kept(&header::FORWARDED),
        kept(&X_FORWARDED_PROTO),
        kept(&X_FORWARDED_HOST),
    );
    for name in [
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &header::FORWARDED,
        &X_REAL_IP,
    ] {
        headers.remove(name);
    }
    let proto = if tls { "https" } else { "http" };
    // Each value is written once into the buffer that becomes the header.
    let mut xff = xff.map_or_else(String::new, |chain| chain + ", ");
    let _ = write!(xff, "{peer}");
    if let Some(v) = owned_value(xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    let xfp = match xfp {
        Some(chain) => owned_value(chain),
        None => Some(HeaderValue::from_static(proto)),
    };
    if let Some(v) = xfp {
        headers.insert(X_FORWARDED_PROTO.clone(), v);
    }
    let mut forwarded = fwd.map_or_else(String::new, |chain| chain + ", ");
    // RFC 7239 section 6: IPv6 addresses are bracketed and quoted; a Host with
    // a port holds ':' and must be a quoted-string.
    let _ = match peer {
        IpAddr::V4(_) => write!(forwarded, "for={peer};proto={proto}"),
        IpAddr::V6(_) => write!(forwarded, "for=\"[{peer}]\";proto={proto}"),
    };
    let host_text = host.and_then(|h| h.to_str().ok());
    if let Some(h) = host_text {
        if h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'*+^`|".contains(&b))
        {
            let _ = write!(forwarded, ";host={h}");
        } else if !h.contains(['"', '\\']) {
            let _ = write!(forwarded, ";host=\"{h}\"");
        }
    }
    // The client's own Host value, shared rather than copied.
    let xfh = match xfh {
        Some(chain) => owned_value(chain),
        None => host.filter(|_| host_text.is_some()).cloned(),
    };
    if let Some(v) = xfh {
        headers.insert(X_FORWARDED_HOST.clone(), v);
    }
    if let Some(v) = owned_value(forwarded) {
        headers.insert(header::FORWARDED, v);
    }
}

/// A header value that takes `s`'s buffer instead of copying it.
fn owned_value(s: String) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from(s)).ok()
}

/// The PROXY protocol header an upstream with `send_proxy_protocol` gets
/// first on a connection for `client` (the real client, as in the
/// forwarding headers), who connected to `local`; empty without it.
pub(crate) fn proxy_header(
    send: Option<crate::config::ProxyProtocolVersion>,
    client: SocketAddr,
    local: SocketAddr,
) -> Vec<u8> {
    send.map_or_else(Vec::new, |v| {
        crate::net::proxy_protocol::encode(v.into(), client, local)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_headers_replace_incoming_ones() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        let host = HeaderValue::from_static("chat.example.com:8443");
        set_forwarding_headers(
            &mut h,
            "10.1.2.3".parse().unwrap(),
            false,
            true,
            Some(&host),
        );
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "chat.example.com:8443");
        assert_eq!(
            h["forwarded"],
            "for=10.1.2.3;proto=https;host=\"chat.example.com:8443\""
        );
        set_forwarding_headers(
            &mut h,
            "::1".parse().unwrap(),
            false,
            false,
            Some(&HeaderValue::from_static("a.b")),
        );
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http;host=a.b");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn the_real_client_is_the_rightmost_untrusted_entry() {
        let trusted =
            |ip: IpAddr| ip.is_loopback() || matches!(ip, IpAddr::V4(v) if v.octets()[0] == 10);
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(real_client(&h, peer, trusted), peer, "no header: the peer");
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.7, 10.0.0.5"),
        );
        assert_eq!(
            real_client(&h, peer, trusted),
            "203.0.113.7:0".parse().unwrap()
        );
        let stranger: SocketAddr = "198.51.100.1:7".parse().unwrap();
        assert_eq!(
            real_client(&h, stranger, trusted),
            stranger,
            "an untrusted peer's header is ignored"
        );
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("garbage, 10.0.0.5"),
        );
        assert_eq!(
            real_client(&h, peer, trusted),
            "10.0.0.5:0".parse().unwrap()
        );
    }

    #[test]
    fn a_trusted_proxy_chain_is_extended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        h.insert(
            "forwarded",
            HeaderValue::from_static("for=203.0.113.7;proto=https"),
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-real-ip", HeaderValue::from_static("1.2.3.4"));
        let host = HeaderValue::from_static("a.b");
        set_forwarding_headers(
            &mut h,
            "10.0.0.5".parse().unwrap(),
            true,
            false,
            Some(&host),
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 10.0.0.5");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.7;proto=https, for=10.0.0.5;proto=http;host=a.b"
        );
        assert_eq!(
            h["x-forwarded-proto"], "https",
            "the first proxy saw the real scheme"
        );
        assert!(h.get("x-real-ip").is_none());
    }

    #[test]
    fn forwarded_entries_in_every_common_form_are_understood() {
        for (e, want) in [
            ("203.0.113.7", "203.0.113.7"),
            ("203.0.113.7:1234", "203.0.113.7"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("\"[2001:db8::1]\"", "2001:db8::1"),
            ("::ffff:10.0.0.5", "10.0.0.5"),
        ] {
            assert_eq!(parse_forwarded_ip(e), Some(want.parse().unwrap()), "{e}");
        }
        assert_eq!(parse_forwarded_ip("unknown"), None);
        // A [::] listener sees IPv4 peers as mapped addresses: still trusted.
        let trusted = |ip: IpAddr| matches!(ip, IpAddr::V4(v) if v.octets()[0] == 10);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.7:999"),
        );
        let mapped: SocketAddr = "[::ffff:10.0.0.5]:4000".parse().unwrap();
        assert_eq!(
            real_client(&h, mapped, trusted),
            "203.0.113.7:0".parse().unwrap()
        );
    }
}
