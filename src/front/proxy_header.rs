//! Accepting the PROXY protocol on a listener with `proxy_protocol = true`:
//! who may send a header, reading it within `timeouts.client_handshake`,
//! and counting the connection under the client it carries.
//!
//! Owns: the phase between accept and TLS (or HTTP) on such a listener.
//! Its legal steps, each refusal counted in
//! `wsgate_connections_refused_total` under the reason named:
//!
//! ```text
//! accepted --peer outside trusted_proxies--> closed ("untrusted_proxy", at accept)
//! accepted --global place--> reading header --invalid, cut short, late--> closed ("proxy_header")
//!                                           --complete--> per-IP place under the carried address
//!                                                          --over the limit--> refused ("max_connections_per_ip")
//!                                                          --placed--> TLS handshake or HTTP
//! ```
//!
//! Must not: read a byte past the header (the TLS ClientHello or request
//! after it may have come in the same segment; `net::proxy_protocol` takes
//! exactly the header), or believe a header from an untrusted peer.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::config::{Limits, Timeouts};
use crate::net::admission::Admitted;
use crate::net::proxy_protocol;
use crate::Shared;

/// Reason label of a peer outside `trusted_proxies` on a PROXY listener.
pub(super) const UNTRUSTED: &str = "untrusted_proxy";

/// Reason label of a header that was invalid, cut short or too slow.
pub(super) const BAD_HEADER: &str = "proxy_header";

/// The two ends of the client's connection as the header tells them.
pub(super) struct Carried {
    /// The client: the header's source, or the TCP peer for a v2 LOCAL or
    /// v1 UNKNOWN header (a load balancer's own health check).
    pub(super) client: SocketAddr,
    /// The address the client connected to: the header's destination, or
    /// this socket's own address.
    pub(super) local: SocketAddr,
}

/// What one listener's accept knows, for [`read`].
pub(super) struct Accepted<'a> {
    pub(super) peer: SocketAddr,
    pub(super) name: &'a str,
    pub(super) tls: bool,
    pub(super) timeouts: Timeouts,
    pub(super) limits: Limits,
}

/// Reads the header off `tcp` and places the connection under the client
/// it carries. `None` when the connection was refused (and answered,
/// counted and logged) or a drain began.
pub(super) async fn read(
    mut tcp: TcpStream,
    place: &mut Admitted,
    at: &Accepted<'_>,
    shared: &Shared,
) -> Option<(TcpStream, Carried)> {
    let read = tokio::select! {
        r = tokio::time::timeout(at.timeouts.client_handshake, proxy_protocol::read_header(&mut tcp)) => r,
        _ = shared.winding.cancelled() => return None,
    };
    let header = match read {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            refuse_header(at, shared, &e);
            return None;
        }
        Err(_) => {
            let after = at.timeouts.client_handshake;
            let e =
                format!("no complete PROXY header within timeouts.client_handshake ({after:?})");
            refuse_header(at, shared, &e);
            return None;
        }
    };
    let own = tcp.local_addr().unwrap_or(at.peer);
    let carried = match header.addresses {
        Some((client, local)) => Carried { client, local },
        None => Carried {
            client: at.peer,
            local: own,
        },
    };
    if let Err(r) = place.place(carried.client.ip(), at.limits.max_connections_per_ip) {
        super::listener::refused(shared, at.name, carried.client, r.label(), &r);
        if !at.tls {
            super::listener::refuse_plain(tcp);
        }
        return None;
    }
    Some((tcp, carried))
}

fn refuse_header(at: &Accepted<'_>, shared: &Shared, e: &dyn std::fmt::Display) {
    super::listener::refused(shared, at.name, at.peer, BAD_HEADER, e);
}
