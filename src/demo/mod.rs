//! `wsgate demo` and `wsgate client`: a newcomer's first contact.
//!
//! Owns: small backends on the addresses a config names (a chat page and
//! its WebSocket on one port, as real applications serve them; every
//! backend in one chat room), a
//! self-made CA and server certificate when the config's are missing, a
//! self-check that sends one message through the proxy, and a line-based
//! WebSocket client for trying it by hand.
//!
//! Must not: be used by the data path. Nothing here runs in `wsgate run`.
//!
//! - `certs.rs`: the self-made CA and server certificate.
//! - `backend.rs`: the demo application, a chat whose backends share one
//!   broadcast channel; `chat.html`: its page.
//! - `client.rs`: connecting as a WebSocket client, and `wsgate client`.
//! - here: [`DemoError`] and the self-check.

mod backend;
mod certs;
mod client;

use std::net::SocketAddr;
use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

pub use backend::{
    chat_backend, echo_backend, start_echo_backends, ChatRoom, CHAT_MAX_MESSAGE, CHAT_PROTOCOL,
};
pub use certs::{ensure_certificates, make_certificates};
pub use client::{client, close_code_name, close_line, connect, Io};

/// Errors of the demo helpers; they run at the top of the binary only.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// File or socket trouble.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("generating a demo certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// WebSocket trouble.
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    /// TLS setup trouble.
    #[error("tls: {0}")]
    Tls(String),
    /// The self-check got an unexpected answer.
    #[error("self-check: {0}")]
    Check(String),
}

/// Every server address `config` names, where the demo's backends listen:
/// those given by address, then what each host name resolves to (with
/// `resolver`, as `run` resolves them), each address once. Validation
/// leaves names unresolved, so reading `servers` alone would leave a
/// host-named server without a backend.
///
/// # Errors
/// [`ResolveError`](crate::control::resolve::ResolveError) when a name does not resolve.
pub fn backend_addrs(
    config: &crate::config::Config,
    resolver: crate::control::resolve::Resolver,
) -> Result<Vec<SocketAddr>, crate::control::resolve::ResolveError> {
    let answers = crate::control::resolve::resolve_names(config, resolver)?;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let literal = config
        .upstreams
        .values()
        .flat_map(|u| u.servers.iter().map(|s| s.addr));
    for addr in literal.chain(answers.into_values().flatten()) {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    Ok(addrs)
}

/// The line `wsgate demo` prints once it runs: the chat page's URL (from
/// the first plain listener's `ws://` URL) and the dashboard's, side by
/// side, so a newcomer opens both.
pub fn open_line(chat_ws_url: &str, admin: Option<SocketAddr>) -> String {
    let chat = chat_ws_url.replacen("ws://", "http://", 1);
    match admin {
        Some(a) => format!(
            "demo: open {chat} in a browser, in two tabs: a message typed in one appears in the other  |  dashboard: http://{a}/"
        ),
        None => format!(
            "demo: open {chat} in a browser, in two tabs: a message typed in one appears in the other"
        ),
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// Fetches the page at `url` (for `ws://`), then sends one text message to
/// `url` and checks it comes back.
///
/// # Errors
/// [`DemoError`] if it does not.
pub async fn self_check(url: &str, ca: Option<&Path>) -> Result<(), DemoError> {
    if url.starts_with("ws://") {
        page_check(url).await?;
    }
    let mut ws = connect(url, ca).await?;
    let text = "hello through wsgate";
    ws.send(Message::text(text)).await?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.as_str() == text => {}
        other => {
            return Err(DemoError::Check(format!(
                "expected the echo of {text:?}, got {other:?}"
            )))
        }
    }
    ws.close(None).await?;
    // Finish the closing handshake so neither side sees a reset.
    while let Some(Ok(_)) = ws.next().await {}
    Ok(())
}

/// Fetches the page at the `ws://` URL's address and path as plain HTTP:
/// the same route serves it.
async fn page_check(url: &str) -> Result<(), DemoError> {
    use http_body_util::BodyExt;
    let uri: http::Uri = url
        .parse()
        .map_err(|e| DemoError::Check(format!("bad URL {url}: {e}")))?;
    let authority = uri
        .authority()
        .ok_or_else(|| DemoError::Check(format!("no address in {url}")))?
        .to_string();
    let tcp = TcpStream::connect(authority.as_str())
        .await
        .map_err(io_err(format!("connecting to {authority}")))?;
    let check = |e: hyper::Error| DemoError::Check(format!("page: {e}"));
    let (mut send, conn) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(hyper_util::rt::TokioIo::new(tcp))
    .await
    .map_err(check)?;
    let req = hyper::Request::builder()
        .uri(uri.path())
        .header(http::header::HOST, authority)
        .body(http_body_util::Empty::new())
        .map_err(|e| DemoError::Check(format!("page request: {e}")))?;
    let exchange = async {
        let res = send.send_request(req).await.map_err(check)?;
        let status = res.status();
        let body = res.into_body().collect().await.map_err(check)?.to_bytes();
        if status != http::StatusCode::OK || !body.starts_with(b"<!doctype html>") {
            return Err(DemoError::Check(format!("the page answered {status}")));
        }
        Ok(())
    };
    // The connection is driven here, alongside the exchange, not detached.
    tokio::select! {
        r = exchange => r,
        r = conn => Err(DemoError::Check(format!("page connection ended early: {r:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pretend(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        assert_eq!(host, "chat.internal");
        Ok(vec![
            SocketAddr::from(([127, 0, 0, 7], port)),
            SocketAddr::from(([127, 0, 0, 1], 9001)),
        ])
    }

    #[test]
    fn the_chat_and_the_dashboard_are_printed_side_by_side() {
        let line = open_line(
            "ws://127.0.0.1:8080/chat",
            Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
        );
        assert!(
            line.starts_with("demo: open http://127.0.0.1:8080/chat in a browser"),
            "{line}"
        );
        assert!(
            line.ends_with("|  dashboard: http://127.0.0.1:9090/"),
            "{line}"
        );
        assert!(!open_line("ws://127.0.0.1:8080/chat", None).contains("dashboard"));
    }

    #[test]
    fn the_demo_serves_every_address_a_host_name_resolves_to() {
        let config = crate::config::parse(
            r#"
[[listeners]]
name = "plain"
bind = "127.0.0.1:0"

[[routes]]
upstream = "chat"

[upstreams.chat]
servers = ["127.0.0.1:9001", "chat.internal:9005"]
"#,
            Path::new("demo.toml"),
        )
        .expect("a valid config");
        assert_eq!(
            backend_addrs(&config, pretend).expect("resolves"),
            vec![
                SocketAddr::from(([127, 0, 0, 1], 9001)),
                SocketAddr::from(([127, 0, 0, 7], 9005)),
            ]
        );
    }
}
