//! TLS to backends: verified by a CA made in the test, the name from `sni`
//! or the server's host name, refused for a wrong name or an unknown CA,
//! mutual TLS, and `insecure_skip_verify`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket echo backend behind TLS with a certificate for `localhost`;
/// with `client_ca`, it requires a client certificate signed by it.
/// Returns its address and the CA that signed its certificate.
async fn tls_backend(dir: &Path, client_ca: Option<&Path>) -> (SocketAddr, PathBuf) {
    let (acceptor, ca) = backend_tls_acceptor(dir, client_ca);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, ca)
}

fn config(servers: &str, tls: &str) -> String {
    format!(
        "[timeouts]\nconnect = \"2s\"\nupstream_handshake = \"2s\"\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"u\"\n[upstreams.u]\nservers = {servers}\ntls = true\n{tls}\n"
    )
}

async fn echoes(gw: &TestGateway) {
    let mut ws = ws_connect(gw.addr("public"), "/ws").await;
    ws.send(Message::text("over tls")).await.expect("send");
    assert_eq!(
        within("echo", ws.next()).await.expect("msg").expect("ok"),
        Message::text("over tls")
    );
}

async fn refused(gw: &TestGateway) -> String {
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let (status, _, body) = raw_exchange(&mut tcp, handshake_request("/ws", "a").as_bytes()).await;
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    assert_eq!(gw.gateway.registry().live_count(), 0);
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn a_backend_verified_by_its_ca_and_sni_carries_websocket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (backend, _) = tls_backend(dir.path(), None).await;
    let toml = config(
        &format!("[\"{backend}\"]"),
        "sni = \"localhost\"\nca_file = \"backend-ca.pem\"",
    );
    let gw = TestGateway::start_in(dir, &toml).await;
    echoes(&gw).await;
}

#[tokio::test]
async fn a_host_name_is_the_default_tls_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (backend, _) = tls_backend(dir.path(), None).await;
    let toml = config(
        &format!("[\"localhost:{}\"]", backend.port()),
        "ca_file = \"backend-ca.pem\"",
    );
    let gw = TestGateway::start_in(dir, &toml).await;
    echoes(&gw).await;
}

#[tokio::test]
async fn a_wrong_name_or_an_unknown_ca_is_a_502() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (backend, _) = tls_backend(dir.path(), None).await;
    // The certificate is for localhost, not this name.
    let wrong_name = config(
        &format!("[\"{backend}\"]"),
        "sni = \"other.example\"\nca_file = \"backend-ca.pem\"",
    );
    let gw = TestGateway::start_in(
        tempfile::tempdir().expect("tempdir"),
        &wrong_name.replace(
            "backend-ca.pem",
            &dir.path().join("backend-ca.pem").display().to_string(),
        ),
    )
    .await;
    assert!(refused(&gw).await.contains("TLS with"));
    // No ca_file: the bundled public roots do not know the test's CA.
    let unknown_ca = config(&format!("[\"{backend}\"]"), "sni = \"localhost\"");
    let gw = TestGateway::start(&unknown_ca).await;
    assert!(refused(&gw).await.contains("TLS with"));
}

#[tokio::test]
async fn insecure_skip_verify_accepts_any_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (backend, _) = tls_backend(dir.path(), None).await;
    let gw = TestGateway::start(&config(
        &format!("[\"{backend}\"]"),
        "insecure_skip_verify = true",
    ))
    .await;
    echoes(&gw).await;
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, _, client_ca) = make_cert(dir.path(), "client", &["wsgate.client"]);
    let (backend, _) = tls_backend(dir.path(), Some(&client_ca)).await;
    let with_cert = config(
        &format!("[\"{backend}\"]"),
        "sni = \"localhost\"\nca_file = \"backend-ca.pem\"\nclient_cert = \"client.pem\"\nclient_key = \"client.key\"",
    );
    let path = dir.path().to_path_buf();
    let gw = TestGateway::start_in(dir, &with_cert).await;
    echoes(&gw).await;
    // The same backend refuses wsgate without a client certificate.
    let without = config(
        &format!("[\"{backend}\"]"),
        &format!(
            "sni = \"localhost\"\nca_file = \"{}\"",
            path.join("backend-ca.pem").display()
        ),
    );
    let gw2 = TestGateway::start(&without).await;
    refused(&gw2).await;
}

#[tokio::test]
async fn a_failed_tls_handshake_is_retried_on_another_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = tempfile::tempdir().expect("tempdir");
    // Each backend has its own CA; only the good one's is trusted.
    let (bad, _) = tls_backend(other.path(), None).await;
    let (good, _) = tls_backend(dir.path(), None).await;
    let toml = config(
        &format!("[\"{bad}\", \"{good}\"]"),
        "balance = \"round_robin\"\nsni = \"localhost\"\nca_file = \"backend-ca.pem\"",
    );
    let gw = TestGateway::start_in(dir, &toml).await;
    for _ in 0..4 {
        echoes(&gw).await;
    }
}
