//! The control path: the admin API, live reload, and draining.
//!
//! - [`admin`]: the HTTP admin API and its probes.
//! - [`reload`]: re-reads the config, compiles a new snapshot and swaps it,
//!   binding and closing listeners as needed.
//! - [`resolve`]: looks up servers' host names, at start and for reloads.
//! - [`drain`]: closes tunnels with Close frames, spread over a window.
//! - [`health`]: one active health checker per server, kept across reloads.

pub mod admin;
pub mod drain;
pub mod health;
pub mod reload;
pub mod resolve;
