//! What wsgate knows about its live traffic, for the operator.
//!
//! - [`registry`]: live tunnels: their counters, the handle that closes
//!   them, the list of them.
//! - [`access`]: the one access record each connection or request leaves,
//!   and the words it is written in (sides, close orders, end reasons).
//! - [`metrics`]: Prometheus metrics, read from the registry at scrape time.
//! - [`errorlog`]: folds repeated backend errors into counted log lines.
//!
//! Sits below the tunnel and the request lifecycle, which count into it,
//! and above `upstream`, whose servers a registry entry names.

pub mod access;
pub mod errorlog;
pub mod metrics;
pub mod registry;
