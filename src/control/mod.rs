//! The control path: the admin API, live reload, and draining.
//!
//! - [`admin`]: the HTTP admin API and its probes.
//! - [`dashboard`]: the admin listener's page, its live feed, and the
//!   history of reloads it shows.
//! - [`reload`]: re-reads the config, compiles a new snapshot and swaps it,
//!   binding and closing listeners as needed.
//! - [`resolve`]: looks up servers' host names, at start and for reloads.
//! - [`drain`]: closes tunnels with Close frames, spread over a window.
//! - [`lifecycle`]: readiness, and the graceful stop in phases.
//! - [`systemd`]: the notify protocol and socket activation.
//! - [`health`]: one active health checker per server, kept across reloads.
//! - [`eject`]: reacts to servers' ejections and health changes: logs,
//!   metrics, `close_on_unhealthy`.

pub mod admin;
pub mod dashboard;
pub mod drain;
pub mod eject;
pub mod health;
pub mod lifecycle;
pub mod reload;
pub mod resolve;
pub mod systemd;
