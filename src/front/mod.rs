//! The front door: listeners, the accept loop, and serving each client
//! connection with hyper (HTTP/1.1 with upgrades) into `proxy::handle`, refusing
//! connections over the limits at accept, and reading the PROXY protocol
//! header on listeners that expect one; the worker threads that run it all.

pub mod listener;
mod proxy_header;
pub mod workers;
