//! The gateway the dashboard's tests run against, for the tests with a
//! browser (dashboard.rs) and without one (dashboard_feed.rs). Included
//! with `#[path]`, after `mod common`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use wsgate::observe::registry::ConnStats;

use crate::common::{echo_backend, server_list, TestGateway};

pub const TOKEN: &str = "dash-board-token-77";

/// One listener, `/chat` to upstream `chat` with `servers` in round robin,
/// and an admin listener (with a token file `token` when asked).
pub fn config(servers: &[SocketAddr], token: bool) -> String {
    let token = if token {
        "token_file = \"token\"\n"
    } else {
        ""
    };
    format!(
        "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n[[routes]]\npath_prefix = \"/chat\"\nupstream = \"chat\"\n\n[upstreams.chat]\nservers = {}\nbalance = \"round_robin\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n{token}",
        server_list(servers)
    )
}

/// A gateway on `config(&[an echo backend], true)`, its token file
/// holding [`TOKEN`].
pub async fn gateway_with_token() -> TestGateway {
    let echo = echo_backend().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).expect("token file");
    TestGateway::start_in(dir, &config(&[echo], true)).await
}

/// The live tunnel whose path is `path`.
pub fn live_conn(gw: &TestGateway, path: &str) -> Arc<ConnStats> {
    gw.gateway
        .registry()
        .live()
        .into_iter()
        .find(|c| c.info.path == path)
        .unwrap_or_else(|| panic!("a live tunnel for {path}"))
}
