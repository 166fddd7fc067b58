//! A client connection's stream while hyper serves it, and taking it back
//! out of hyper after an upgrade.
//!
//! Owns: the order of the wrappers around a client stream (the framing
//! guard outside, lingering close inside) and their removal, in one place,
//! so that the type the upgrade is downcast to can never disagree with the
//! type the listener built.
//!
//! Must not: read or write any byte itself.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

use crate::net::admission::Admitted;
use crate::net::guard::{Guarded, Scanner};
use crate::net::linger::{LingerPlan, Lingering};
use crate::net::tls::ClientStream;

/// What hyper serves: the client stream under the framing guard and
/// lingering close.
pub type ServedStream = TokioIo<Guarded<Lingering<ClientStream>>>;

/// Wraps a freshly accepted (and TLS-terminated) client stream for hyper,
/// with its place under the connection limits.
pub fn wrap(
    stream: ClientStream,
    plan: LingerPlan,
    scanner: Arc<Mutex<Scanner>>,
    place: Option<Admitted>,
) -> ServedStream {
    TokioIo::new(Guarded::new(Lingering::new(stream, plan), scanner, place))
}

/// The upgraded connection was not the stream [`wrap`] built, or its
/// lingering close had already taken it.
#[derive(Debug, thiserror::Error)]
#[error("upgraded client connection has an unexpected type")]
pub struct NotClientStream;

/// Takes the client stream back out of hyper after a 101, with the bytes
/// hyper had read past the request (the client's first frames). The guard
/// and the lingering close end here: what follows is frames, for the tunnel
/// alone. The connection's place under the limits comes along: the tunnel
/// holds it until the stream closes.
///
/// # Errors
/// [`NotClientStream`] when the upgrade does not hold a [`ServedStream`].
pub fn unwrap(
    upgraded: Upgraded,
) -> Result<(ClientStream, Bytes, Option<Admitted>), NotClientStream> {
    let parts = upgraded
        .downcast::<ServedStream>()
        .map_err(|_| NotClientStream)?;
    let (lingering, place) = parts.io.into_inner().into_inner();
    let stream = lingering.into_inner();
    stream
        .map(|s| (s, parts.read_buf, place))
        .ok_or(NotClientStream)
}
