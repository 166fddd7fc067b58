//! The front door: listeners, the accept loop, and serving each client
//! connection with hyper (HTTP/1.1 with upgrades) into `proxy::handle`, refusing
//! connections over the limits at accept.

pub mod listener;
