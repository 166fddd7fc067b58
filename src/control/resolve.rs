//! Resolving servers' host names: the one lookup every path uses (at
//! start, at reload, and again every `resolve_interval`), and its errors
//! in the shape of a validation problem.
//!
//! Owns: [`Resolver`] (tests swap it), [`resolve_names`] for a whole
//! config, and the rule that a name under `.invalid` never resolves.
//!
//! Must not: be called from config validation (`wsgate check` needs no DNS)
//! or on a request's path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{self, Problem};
use crate::proxy::routes::Answers;

/// Resolves a host name to addresses (blocking); [`system_resolver`]
/// unless a test swaps it.
pub type Resolver = fn(&str, u16) -> std::io::Result<Vec<SocketAddr>>;

/// The system resolver (blocking). A name under `.invalid` fails at once
/// without asking anyone, as RFC 6761 (6.4) asks of resolver libraries:
/// such a name can never resolve.
///
/// # Errors
/// The resolver's error.
pub fn system_resolver(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    if host == "invalid" || host.ends_with(".invalid") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "a name under .invalid never resolves (RFC 6761)",
        ));
    }
    Ok((host, port).to_socket_addrs()?.collect())
}

/// Host names that did not resolve, each reported where it was written, in
/// the shape of a validation problem: `file:line:column: key: message`.
#[derive(Debug, thiserror::Error)]
#[error("{}", config::render_problems(path, problems))]
pub struct ResolveError {
    /// The config file.
    pub path: PathBuf,
    /// One per server entry whose name did not resolve, in file order.
    pub problems: Vec<Problem>,
}

/// One name's addresses, sorted, each once; an empty answer is
/// an error too, since a server must have an address.
pub(crate) fn lookup(resolver: Resolver, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    match resolver(host, port) {
        Ok(mut addrs) if !addrs.is_empty() => {
            addrs.sort();
            addrs.dedup();
            Ok(addrs)
        }
        Ok(_) => Err(format!("{host} resolves to no address")),
        Err(e) => Err(format!("cannot resolve {host}: {e}")),
    }
}

/// Looks up every host-named server of `config` with `resolver`, before
/// its snapshot is compiled: at start and at every reload (blocking).
///
/// # Errors
/// [`ResolveError`] with every server whose name does not resolve.
pub fn resolve_names(config: &config::Config, resolver: Resolver) -> Result<Answers, ResolveError> {
    let mut answers = Answers::new();
    let mut failed: HashMap<(String, u16), String> = HashMap::new();
    let mut problems = Vec::new();
    for n in config.upstreams.values().flat_map(|u| &u.names) {
        let key = (n.host.clone(), n.port);
        if answers.contains_key(&key) {
            continue;
        }
        // Each entry naming a failed name is reported, the lookup made once.
        let result = match failed.get(&key) {
            Some(message) => Err(message.clone()),
            None => lookup(resolver, &n.host, n.port),
        };
        match result {
            Ok(addrs) => {
                answers.insert(key, addrs);
            }
            Err(message) => {
                problems.push(n.at.problem(&message));
                failed.insert(key, message);
            }
        }
    }
    if problems.is_empty() {
        Ok(answers)
    } else {
        problems.sort_by_key(|p| (p.line, p.column));
        Err(ResolveError {
            path: config.source.clone(),
            problems,
        })
    }
}
