//! TLS to backends: verified by a CA made in the test, the name from `sni`
//! or the server's host name, refused for a wrong name or an unknown CA,
//! mutual TLS, and `insecure_skip_verify`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

// === plain HTTP to TLS backends ===

/// The application backend (pages and WebSockets) behind TLS.
async fn app_tls_backend(dir: &Path, client_ca: Option<&Path>) -> AppBackend {
    let (acceptor, _) = backend_tls_acceptor(dir, client_ca);
    AppBackend::start_tls(Some(acceptor)).await
}

#[tokio::test]
async fn pages_go_to_a_verified_tls_backend_over_reused_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = app_tls_backend(dir.path(), None).await;
    let toml = config(
        &format!("[\"{}\"]", backend.addr),
        "sni = \"localhost\"\nca_file = \"backend-ca.pem\"",
    );
    let gw = TestGateway::start_in(dir, &toml).await;
    let addr = gw.addr("public");
    for i in 0..6 {
        let (status, body) = http_text(addr, "GET", &format!("/big/{i}")).await;
        assert_eq!((status, body.len()), (200, i));
    }
    let (status, body) = http_send(addr, "POST", "/count", PatternBody::new(1 << 20, true)).await;
    assert_eq!((status, body.as_str()), (200, "1048576 0"));
    let seen = backend.seen();
    assert!(
        backend.connection_count() < seen.len(),
        "no TLS connection was reused: {} connections for {} requests",
        backend.connection_count(),
        seen.len()
    );
    // The same backend's WebSockets, over the same upstream.
    echoes(&gw).await;
}

#[tokio::test]
async fn a_page_to_a_backend_with_a_wrong_name_or_without_a_client_certificate_is_a_502() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, _, client_ca) = make_cert(dir.path(), "client", &["wsgate.client"]);
    let backend = app_tls_backend(dir.path(), Some(&client_ca)).await;
    let ca = dir.path().join("backend-ca.pem").display().to_string();
    let servers = format!("[\"{}\"]", backend.addr);
    let wrong_name = config(
        &servers,
        &format!("sni = \"other.example\"\nca_file = \"{ca}\"\nclient_cert = \"client.pem\"\nclient_key = \"client.key\""),
    );
    let no_cert = config(
        &servers,
        &format!("sni = \"localhost\"\nca_file = \"{ca}\""),
    );
    let with_cert = config(
        &servers,
        "sni = \"localhost\"\nca_file = \"backend-ca.pem\"\nclient_cert = \"client.pem\"\nclient_key = \"client.key\"",
    );
    let other = tempfile::tempdir().expect("tempdir");
    for (p, f) in [("client.pem", "client.pem"), ("client.key", "client.key")] {
        std::fs::copy(dir.path().join(p), other.path().join(f)).expect("copy");
    }
    let gw = TestGateway::start_in(other, &wrong_name).await;
    let (status, body) = http_text(gw.addr("public"), "GET", "/big/1").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("TLS with"), "the reason is named: {body}");
    let gw = TestGateway::start(&no_cert).await;
    let (status, body) = http_text(gw.addr("public"), "GET", "/big/1").await;
    assert_eq!(status, 502, "{body}");
    // Mutual TLS: with its client certificate, wsgate is let in.
    let gw = TestGateway::start_in(dir, &with_cert).await;
    assert_eq!(http_text(gw.addr("public"), "GET", "/big/1").await.0, 200);
    echoes(&gw).await;
}

#[tokio::test]
async fn pages_and_websockets_of_one_app_use_tls_on_both_legs() {
    use tokio_rustls::rustls;
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = app_tls_backend(dir.path(), None).await;
    let (_, _, edge_ca) = make_cert(dir.path(), "edge", &["app.example.test"]);
    let toml = format!(
        "[timeouts]\nconnect = \"2s\"\nupstream_handshake = \"2s\"\n[[listeners]]\nname = \"secure\"\nbind = \"127.0.0.1:0\"\ntls = {{ cert = \"edge.pem\", key = \"edge.key\" }}\n[[routes]]\nupstream = \"u\"\n[upstreams.u]\nservers = [\"{}\"]\ntls = true\nsni = \"localhost\"\nca_file = \"backend-ca.pem\"\n",
        backend.addr
    );
    let gw = TestGateway::start_in(dir, &toml).await;
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&edge_ca).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add");
    }
    let client_config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let connect = || async {
        let tcp = TcpStream::connect(gw.addr("secure"))
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("app.example.test").expect("name");
        within(
            "the TLS handshake",
            tokio_rustls::TlsConnector::from(client_config.clone()).connect(name, tcp),
        )
        .await
        .expect("TLS handshake")
    };
    // A page, over TLS to wsgate and TLS to the backend.
    let tls = connect().await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .expect("client handshake");
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method("POST")
        .uri("/count")
        .header("host", "app.example.test")
        .body(PatternBody::new(200_000, false))
        .expect("request");
    let res = within("a response", send.send_request(req))
        .await
        .expect("response");
    assert_eq!(res.status(), 200);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"200000 0");
    let headers = &backend.seen()[0].headers;
    assert_eq!(
        headers.get("x-forwarded-proto").map(|v| v.as_bytes()),
        Some(&b"https"[..])
    );
    // A host the SNI-chosen certificate does not cover, on this connection: 421.
    let req = hyper::Request::builder()
        .uri("/big/1")
        .header("host", "other.example.test")
        .body(PatternBody::new(0, false))
        .expect("request");
    let res = within("a response", send.send_request(req))
        .await
        .expect("response");
    assert_eq!(res.status(), 421);
    assert_eq!(
        backend.seen().len(),
        1,
        "a misdirected request reached the backend"
    );
    // Its WebSocket, the same way.
    let (mut ws, _) = within(
        "the WebSocket handshake over TLS",
        tokio_tungstenite::client_async("wss://app.example.test/live", connect().await),
    )
    .await
    .expect("WebSocket handshake");
    ws.send(Message::text("both legs")).await.expect("send");
    assert_eq!(
        within("echo", ws.next()).await.expect("msg").expect("ok"),
        Message::text("both legs")
    );
}
