//! Fuzz target: the config loader (`config::parse`), from TOML text to the
//! typed, validated `Config`.
//!
//! Input: any bytes, taken as the config file's text when UTF-8.
//!
//! Checked: the loader returns a `Config` or a typed `ConfigError`, never
//! panics, and an error's message can be written; a `Config` serialises as
//! `/api/config` shows it, and compiles into a routing snapshot the same
//! way twice (host-named servers get made-up answers: DNS is not asked).
//! The text is read as if from a file in a directory that does not exist,
//! so relative certificate and token paths name nothing; texts naming
//! device or process files are skipped, since reading `/dev/zero` as a
//! certificate is an operator's own doing, not a parser bug, and would
//! only stall the fuzzer.
#![no_main]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use wsgate::config::view::ConfigView;
use wsgate::config::Config;
use wsgate::proxy::routes::{Answers, Snapshot};

/// What resolving the host-named servers would give, without DNS (wsgate
/// resolves every name before it compiles): a loopback address on the
/// name's port, and the upstream's first listed address when there is one,
/// so that a name resolving to a listed address is covered too.
fn answers(config: &Config) -> Answers {
    let mut answers = Answers::new();
    for u in config.upstreams.values() {
        for n in &u.names {
            let mut addrs = vec![SocketAddr::from(([127, 0, 0, 1], n.port))];
            addrs.extend(u.servers.first().map(|s| s.addr));
            answers.insert((n.host.clone(), n.port), addrs);
        }
    }
    answers
}

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    // TOML's \u escapes could spell those paths too.
    if ["dev", "proc", "sys", "\\u", "\\U"]
        .iter()
        .any(|s| text.contains(s))
    {
        return;
    }
    let path = Path::new("/nonexistent-wsgate-fuzz/wsgate.toml");
    let config = match wsgate::config::parse(text, path) {
        Ok(config) => config,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    // What a valid config goes on to: the admin API's view of it, and the
    // routing snapshot compiled from it, then compiled again over itself
    // as a reload with no change would.
    serde_json::to_string(&ConfigView::from(&config)).expect("the config view serialises");
    let answers = answers(&config);
    let config = Arc::new(config);
    let Ok(first) = Snapshot::compile(config.clone(), answers.clone(), None, &[]) else {
        return;
    };
    let again = Snapshot::compile(config, answers, Some(&first), &[]);
    let again = again.expect("a config that compiled once compiles again");
    let _ = again.route("a.test", "/");
    assert_eq!(
        first.route_labels().collect::<Vec<_>>(),
        again.route_labels().collect::<Vec<_>>(),
        "a reload onto the same config changed the routes"
    );
});
