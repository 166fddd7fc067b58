//! The PROXY protocol (HAProxy's, versions 1 and 2): the header an L4 load
//! balancer writes first on a connection to say which client it carries.
//!
//! Owns: [`parse`], a pure function over a byte slice that tells a complete
//! header (and exactly how many bytes it took) from a prefix that needs more
//! bytes and from bytes that can never become a header; [`read_header`],
//! which takes exactly the header off a socket and leaves every byte after
//! it (a TLS ClientHello, an HTTP request) in the socket for the next layer;
//! and the encoders for the header wsgate sends to its backends.
//!
//! Must not: decide who may send a header (the listener checks
//! `trusted_proxies` first) or apply a deadline (the caller wraps
//! [`read_header`] in `timeouts.client_handshake`).
//!
//! Written here rather than taken from a crate: what matters is the exact
//! split between "incomplete" and "invalid" at every byte, and the bounds
//! on both versions, which are simplest to state and test in one place.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest version 1 header, CRLF included (the specification's bound).
pub const V1_MAX: usize = 107;

/// The version 2 signature, its first 12 bytes.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest version 2 header accepted, its 16 fixed bytes included: room
/// for both IPv6 addresses and the TLVs load balancers add (AWS and GCP
/// send well under 1 KiB). A longer declared length is refused as soon as
/// the length field is read, before its bytes are.
pub const V2_MAX: usize = 4096;

const V1_SIGNATURE: &[u8] = b"PROXY ";

/// Which version of the protocol a header was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text form: `PROXY TCP4 src dst sport dport\r\n`.
    V1,
    /// The binary form, with its 12-byte signature.
    V2,
}

/// A complete header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The version it was written in.
    pub version: Version,
    /// The connection it carries: `(source, destination)`, the source being
    /// the real client. `None` for a v2 LOCAL command, a v1 `UNKNOWN` or a
    /// v2 `UNSPEC` family (a load balancer's own health check): the TCP
    /// peer's addresses stand.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

/// What [`parse`] made of some bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header, taking the first `consumed` bytes; whatever follows
    /// belongs to the next layer.
    Complete {
        /// The header.
        header: ProxyHeader,
        /// Its length in bytes.
        consumed: usize,
    },
    /// Every byte so far can start a valid header: read more.
    Incomplete,
    /// These bytes can never start a valid header, whatever follows.
    Invalid(Invalid),
}

/// Why some bytes can never be a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Neither the v1 `PROXY ` nor the v2 signature.
    #[error("no PROXY protocol signature")]
    Signature,
    /// A v1 line with no CRLF within its 107 bytes.
    #[error("v1 header longer than {V1_MAX} bytes")]
    V1TooLong,
    /// A v1 line that breaks its grammar; says where.
    #[error("v1 header: {0}")]
    V1Syntax(&'static str),
    /// A v2 version nibble other than 2, or a command other than LOCAL or PROXY.
    #[error("v2 header: version/command byte {0:#04x}")]
    V2Command(u8),
    /// A v2 family or transport wsgate does not carry (UNIX, UDP, unknown).
    #[error("v2 header: address family/transport byte {0:#04x} is not TCP over IPv4 or IPv6")]
    V2Family(u8),
    /// A v2 length past [`V2_MAX`] in all.
    #[error("v2 header declares {0} bytes, more than {V2_MAX}")]
    V2TooLong(usize),
    /// A v2 length too short for the addresses its family needs.
    #[error("v2 header: {0} address bytes are too few for its family")]
    V2AddressLength(usize),
}

/// Parses the header at the start of `buf`.
///
/// Never looks past the header: `consumed` is its exact length, and a
/// prefix of a valid header (however it is split) is [`Parsed::Incomplete`],
/// never [`Parsed::Invalid`].
pub fn parse(buf: &[u8]) -> Parsed {
    match buf.first() {
        None => Parsed::Incomplete,
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Parsed::Invalid(Invalid::Signature),
    }
}

// === version 1 ===

fn parse_v1(buf: &[u8]) -> Parsed {
    let n = buf.len().min(V1_SIGNATURE.len());
    if buf[..n] != V1_SIGNATURE[..n] {
        return Parsed::Invalid(Invalid::Signature);
    }
    let line_end = buf.iter().position(|&b| b == b'\n');
    let Some(lf) = line_end.filter(|&i| i < V1_MAX) else {
        // Refuse bytes no header has as soon as they arrive, not only
        // after 107 of them.
        let seen = &buf[..buf.len().min(V1_MAX)];
        if let Some(i) = seen.iter().position(|&b| !v1_byte(b)) {
            let cr_last = seen[i] == b'\r' && i + 1 == buf.len();
            if !cr_last {
                return Parsed::Invalid(Invalid::V1Syntax("a byte no header has"));
            }
        }
        return if buf.len() >= V1_MAX {
            Parsed::Invalid(Invalid::V1TooLong)
        } else {
            Parsed::Incomplete
        };
    };
    if lf < V1_SIGNATURE.len() || buf[lf - 1] != b'\r' {
        return Parsed::Invalid(Invalid::V1Syntax("line ends in LF without CR"));
    }
    let line = &buf[V1_SIGNATURE.len()..lf - 1];
    // The same bytes are refused however the line is split (see above).
    if !line.iter().all(|&b| v1_byte(b)) {
        return Parsed::Invalid(Invalid::V1Syntax("a byte no header has"));
    }
    match v1_fields(line) {
        Ok(addresses) => Parsed::Complete {
            header: ProxyHeader {
                version: Version::V1,
                addresses,
            },
            consumed: lf + 1,
        },
        Err(e) => Parsed::Invalid(e),
    }
}

/// Bytes a v1 line may hold before its CRLF.
fn v1_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b' ' | b'.' | b':')
}

/// The fields after `PROXY `: the protocol, then (unless `UNKNOWN`) two
/// addresses and two ports, each separated by exactly one space.
fn v1_fields(line: &[u8]) -> Result<Option<(SocketAddr, SocketAddr)>, Invalid> {
    let syntax = |what| Err(Invalid::V1Syntax(what));
    let Ok(line) = std::str::from_utf8(line) else {
        return syntax("a byte no header has");
    };
    let mut fields = line.split(' ');
    let proto = fields.next().unwrap_or("");
    let v6 = match proto {
        "TCP4" => false,
        "TCP6" => true,
        // The rest of an UNKNOWN line is ignored, as the specification says.
        "UNKNOWN" => return Ok(None),
        _ => return syntax("protocol is not TCP4, TCP6 or UNKNOWN"),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return syntax("not four fields after the protocol");
    };
    let ip = |s: &str| -> Option<IpAddr> {
        if v6 {
            s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
        } else {
            s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
        }
    };
    let (Some(src), Some(dst)) = (ip(src), ip(dst)) else {
        return syntax("an address is not of the protocol's family");
    };
    let (Some(sport), Some(dport)) = (v1_port(sport), v1_port(dport)) else {
        return syntax("a port is not a number from 0 to 65535");
    };
    Ok(Some((
        SocketAddr::new(src, sport),
        SocketAddr::new(dst, dport),
    )))
}

/// A decimal port without a sign or leading zero.
fn v1_port(s: &str) -> Option<u16> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let canonical = s == "0" || !s.starts_with('0');
    (digits && canonical && s.len() <= 5)
        .then(|| s.parse().ok())
        .flatten()
}

// === version 2 ===

fn parse_v2(buf: &[u8]) -> Parsed {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Parsed::Invalid(Invalid::Signature);
    }
    let local = match buf.get(12) {
        None => return Parsed::Incomplete,
        Some(0x20) => true,
        Some(0x21) => false,
        Some(&b) => return Parsed::Invalid(Invalid::V2Command(b)),
    };
    let Some(&family) = buf.get(13) else {
        return Parsed::Incomplete;
    };
    // Address bytes a family needs: both addresses and both ports.
    let needs = match family {
        // A LOCAL header's addresses are ignored, whatever their family.
        _ if local => 0,
        0x00 => 0,
        0x11 => 12,
        0x21 => 36,
        b => return Parsed::Invalid(Invalid::V2Family(b)),
    };
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return Parsed::Incomplete;
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    let total = 16 + len;
    if total > V2_MAX {
        return Parsed::Invalid(Invalid::V2TooLong(total));
    }
    if len < needs {
        return Parsed::Invalid(Invalid::V2AddressLength(len));
    }
    if buf.len() < total {
        return Parsed::Incomplete;
    }
    let body = &buf[16..total];
    let addresses = match family {
        _ if local => None,
        0x11 => {
            let ip = |at: usize| IpAddr::from([body[at], body[at + 1], body[at + 2], body[at + 3]]);
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            Some((
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            ))
        }
        0x21 => {
            let ip = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&body[at..at + 16]);
                IpAddr::from(o)
            };
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            Some((
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            ))
        }
        // UNSPEC with PROXY: the sender knows no addresses; the peer's stand.
        _ => None,
    };
    Parsed::Complete {
        header: ProxyHeader {
            version: Version::V2,
            addresses,
        },
        consumed: total,
    }
}

// === reading from a socket ===

/// Why no header could be read off a socket.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes can never be a header.
    #[error("invalid PROXY header: {0}")]
    Invalid(#[from] Invalid),
    /// The peer ended the connection before the header was complete.
    #[error("connection closed after {0} bytes of a PROXY header")]
    Truncated(usize),
    /// The socket failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Takes exactly one header off `tcp`, however its bytes arrive.
///
/// Each round peeks at what has arrived, and reads only bytes known to be
/// header: all of them while the header is incomplete (so the next peek
/// waits for new bytes instead of spinning), exactly its remainder once it
/// is complete. Bytes after the header stay in the socket, even when they
/// came in the same segment. Holds at most [`V2_MAX`] bytes.
///
/// # Errors
/// [`ReadError`]: invalid, cut short, or a socket error. No deadline here:
/// the caller bounds the wait.
pub async fn read_header(tcp: &mut TcpStream) -> Result<ProxyHeader, ReadError> {
    let mut buf = Vec::with_capacity(V1_MAX);
    loop {
        let have = buf.len();
        debug_assert!(have < V2_MAX, "an incomplete header is shorter than V2_MAX");
        buf.resize(V2_MAX, 0);
        let n = tcp.peek(&mut buf[have..]).await?;
        buf.truncate(have + n);
        if n == 0 {
            return Err(ReadError::Truncated(have));
        }
        let take = match parse(&buf) {
            Parsed::Invalid(e) => return Err(e.into()),
            Parsed::Incomplete => n,
            Parsed::Complete { consumed, .. } => consumed - have,
        };
        // The same bytes the peek saw, now taken off the socket.
        tcp.read_exact(&mut buf[have..have + take]).await?;
        buf.truncate(have + take);
        if let Parsed::Complete { header, consumed } = parse(&buf) {
            debug_assert_eq!(consumed, buf.len());
            return Ok(header);
        }
    }
}

// === writing ===

impl From<crate::config::ProxyProtocolVersion> for Version {
    fn from(v: crate::config::ProxyProtocolVersion) -> Self {
        match v {
            crate::config::ProxyProtocolVersion::V1 => Version::V1,
            crate::config::ProxyProtocolVersion::V2 => Version::V2,
        }
    }
}

/// The header wsgate sends to its backends, in `version`, carrying `src`
/// (the client) and `dst` (the address it connected to). An IPv4 address
/// written as IPv4-mapped IPv6 is sent as IPv4; when one side is IPv4 and
/// the other IPv6, both go as IPv6.
pub fn encode(version: Version, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    match version {
        Version::V1 => {
            let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {proto} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }
        Version::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            out.push(0x21);
            match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.extend_from_slice(&[0x11, 0, 12]);
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    out.extend_from_slice(&[0x21, 0, 36]);
                    out.extend_from_slice(&v6(s).octets());
                    out.extend_from_slice(&v6(d).octets());
                }
            }
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
            out
        }
    }
}

/// The header of a connection made by wsgate itself (a health probe): v1
/// `PROXY UNKNOWN`, v2 LOCAL, so a backend that requires a header takes it
/// and uses the connection's own addresses.
pub fn encode_local(version: Version) -> Vec<u8> {
    match version {
        Version::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        Version::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            out.extend_from_slice(&[0x20, 0x00, 0, 0]);
            out
        }
    }
}

fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (src, dst) = (canon(src), canon(dst));
    if src.is_ipv4() == dst.is_ipv4() {
        return (src, dst);
    }
    let widen = |a: SocketAddr| SocketAddr::new(IpAddr::V6(v6(a.ip())), a.port());
    (widen(src), widen(dst))
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests;
