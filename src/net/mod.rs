//! The byte streams under the data path, below any protocol logic.
//!
//! - [`admission`]: the count of open client connections per address and
//!   in all, for the connection limits; its place travels with the stream.
//! - [`tls`]: TLS termination (certificates chosen by SNI), TLS to
//!   backends, and [`tls::MaybeTls`], the plain-or-TLS stream every other
//!   module carries.
//! - [`client`]: a client stream wrapped for hyper, and unwrapped after
//!   an upgrade.
//! - [`guard`]: the raw-byte HTTP/1.1 framing guard that refuses anything
//!   that could desync a backend before hyper parses it.
//! - [`proxy_protocol`]: the PROXY protocol header (v1 and v2), parsed off
//!   a client socket without touching the bytes after it, and written to
//!   backends.
//! - [`linger`]: lingering close, so a client still sending reads wsgate's
//!   error answer instead of a reset.

pub mod admission;
pub mod client;
pub mod guard;
pub mod linger;
pub mod proxy_protocol;
pub mod tls;
