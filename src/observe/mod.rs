//! What wsgate knows about its live traffic, for the operator.
//!
//! - [`registry`]: live tunnels (their counters, the handle that closes
//!   them) and the one access record each connection writes at its end.
//! - [`metrics`]: Prometheus metrics, read from the registry at scrape time.
//! - [`errorlog`]: folds repeated backend errors into counted log lines.
//!
//! Sits below the tunnel and the request lifecycle, which count into it,
//! and above `upstream`, whose servers a registry entry names.

pub mod errorlog;
pub mod metrics;
pub mod registry;
