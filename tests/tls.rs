//! TLS listeners: wss echo, certificate choice by SNI (exact, wildcard,
//! absent, unknown), ALPN, TLS 1.2, and the `client_handshake` deadline for
//! clients that never finish their handshake.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use wsgate::observe::access::{EndReason, Side};

/// Certificate files of one test: A (default) and B (exact and wildcard names).
struct Certs {
    a_pem: PathBuf,
    b_pem: PathBuf,
    a_ca: PathBuf,
    b_ca: PathBuf,
}

/// Makes both certificates in a fresh directory and starts a gateway on it
/// whose only listener `secure` serves them, routing everything to `backend`.
async fn start_tls_gateway(backend: SocketAddr, client_handshake: &str) -> (TestGateway, Certs) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_pem, _, a_ca) = make_cert(dir.path(), "a", &["a.example.test"]);
    let (b_pem, _, b_ca) = make_cert(dir.path(), "b", &["b.example.test", "*.wild.example.test"]);
    let toml = format!(
        r#"[timeouts]
client_handshake = "{client_handshake}"
connect = "2s"
upstream_handshake = "2s"

[[listeners]]
name = "secure"
bind = "127.0.0.1:0"
tls = {{ certificates = [ {{ cert = "a.pem", key = "a.key" }}, {{ cert = "b.pem", key = "b.key" }} ] }}

[[routes]]
upstream = "echo"

[upstreams.echo]
servers = ["{backend}"]
"#
    );
    let gw = TestGateway::start_in(dir, &toml).await;
    let certs = Certs {
        a_pem,
        b_pem,
        a_ca,
        b_ca,
    };
    (gw, certs)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file, as DER.
fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .expect("open PEM")
        .collect::<Result<Vec<_>, _>>()
        .expect("parse PEM")
}

/// A root store trusting both test CAs.
fn roots(certs: &Certs) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for ca in [&certs.a_ca, &certs.b_ca] {
        for c in pem_certs(ca) {
            roots.add(c).expect("add CA");
        }
    }
    roots
}

/// A client config trusting both test CAs, with the default protocol versions.
fn trusting(certs: &Certs) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots(certs))
        .with_no_client_auth()
}

/// Accepts any certificate for any name (signatures are still checked), so
/// that the certificate served for an absent or unknown SNI can be seen.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn accept_any() -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider())))
        .with_no_client_auth()
}

/// Connects over TCP and completes a TLS handshake for `name`.
async fn tls_connect(
    addr: SocketAddr,
    name: ServerName<'static>,
    config: ClientConfig,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    within(
        "the TLS handshake",
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("TLS handshake")
}

fn dns(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_string()).expect("server name")
}

/// The leaf certificate the server presented.
fn served_leaf(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("server presented a certificate")
        .clone()
        .into_owned()
}

/// Runs the WebSocket handshake over an established TLS stream for
/// `wss://{host}/echo` and checks one text and one binary echo.
async fn wss_echo(tls: TlsStream<TcpStream>, host: &str) {
    let (mut ws, response) = within(
        "the WebSocket handshake over TLS",
        tokio_tungstenite::client_async(format!("wss://{host}/echo"), tls),
    )
    .await
    .expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    ws.send(Message::text("hello over tls"))
        .await
        .expect("send text");
    match within("the text echo", ws.next()).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "hello over tls"),
        other => panic!("expected the text echo, got {other:?}"),
    }
    let payload: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    ws.send(Message::binary(payload.clone()))
        .await
        .expect("send binary");
    match within("the binary echo", ws.next()).await {
        Some(Ok(Message::Binary(b))) => assert_eq!(b.as_ref(), payload.as_slice()),
        other => panic!("expected the binary echo, got {other:?}"),
    }
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
    .await
    .expect("close");
    within("the closing handshake", async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    // A clean TLS end: the server's close_notify (passed on from the
    // backend's FIN), then ours.
    let tls = ws.get_mut();
    let mut buf = [0u8; 64];
    let n = within("the server's close_notify", tls.read(&mut buf))
        .await
        .expect("clean TLS close from the server");
    assert_eq!(n, 0, "no bytes may follow the Close frame");
    tls.shutdown().await.expect("send close_notify");
}

#[tokio::test]
async fn wss_echoes_text_and_binary() {
    let backend = echo_backend().await;
    let (gw, certs) = start_tls_gateway(backend, "10s").await;
    let mut log = gw.access_log();
    let tls = tls_connect(gw.addr("secure"), dns("a.example.test"), trusting(&certs)).await;
    wss_echo(tls, "a.example.test").await;
    let record = next_record(&mut log).await;
    assert_eq!(record.listener, "secure");
    assert_eq!(record.path, "/echo");
    assert_eq!(record.backend, backend);
    assert_eq!(record.to_backend.messages, 2);
    assert_eq!(record.to_client.messages, 2);
    assert_eq!(record.end.close_code, Some(1000), "{record:?}");
    assert_eq!(
        record.end.close_frame_from,
        Some(Side::Client),
        "{record:?}"
    );
    assert_eq!(record.end.closed_by, Side::Backend, "{record:?}");
    assert_eq!(record.end.reason, EndReason::Closed, "{record:?}");
    gw.wait_idle().await;
}

#[tokio::test]
async fn backend_is_told_the_client_used_https() {
    let mut backend = WsBackend::start().await;
    let (gw, certs) = start_tls_gateway(backend.addr, "10s").await;
    let tls = tls_connect(gw.addr("secure"), dns("b.example.test"), trusting(&certs)).await;
    let (ws, _) = within(
        "the WebSocket handshake over TLS",
        tokio_tungstenite::client_async("wss://b.example.test/feed", tls),
    )
    .await
    .expect("WebSocket handshake");
    let accepted = backend.next().await;
    assert_eq!(accepted.path, "/feed");
    let h = &accepted.headers;
    assert_eq!(h["host"], "b.example.test");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(
        h["forwarded"],
        "for=127.0.0.1;proto=https;host=b.example.test"
    );
    drop(ws);
    drop(accepted);
    gw.wait_idle().await;
}

#[tokio::test]
async fn sni_chooses_the_certificate() {
    let backend = echo_backend().await;
    let (gw, certs) = start_tls_gateway(backend, "10s").await;
    let a = pem_certs(&certs.a_pem)[0].clone();
    let b = pem_certs(&certs.b_pem)[0].clone();
    assert_ne!(a, b);
    // (SNI, expected leaf, its label, whether a trusting client can verify it)
    for (sni, want, which, covered) in [
        ("a.example.test", &a, "A", true),
        ("b.example.test", &b, "B", true),
        ("x.wild.example.test", &b, "B", true),
        // SNI names compare case-insensitively.
        ("B.Example.Test", &b, "B", true),
        // A wildcard covers one label only: no certificate covers this name.
        ("deep.x.wild.example.test", &a, "A (default)", false),
    ] {
        let config = if covered {
            trusting(&certs)
        } else {
            accept_any()
        };
        let tls = tls_connect(gw.addr("secure"), dns(sni), config).await;
        assert!(
            &served_leaf(&tls) == want,
            "SNI {sni}: expected certificate {which}"
        );
    }
    // The chosen certificate also carries the WebSocket traffic.
    let tls = tls_connect(
        gw.addr("secure"),
        dns("x.wild.example.test"),
        trusting(&certs),
    )
    .await;
    wss_echo(tls, "x.wild.example.test").await;
    gw.wait_idle().await;
}

#[tokio::test]
async fn absent_or_unknown_sni_gets_the_default_certificate() {
    let backend = echo_backend().await;
    let (gw, certs) = start_tls_gateway(backend, "10s").await;
    let a = pem_certs(&certs.a_pem)[0].clone();
    // rustls sends no SNI for an IP address.
    let no_sni = ServerName::IpAddress("127.0.0.1".parse::<std::net::IpAddr>().unwrap().into());
    for (what, name) in [
        ("no SNI", no_sni),
        ("unknown SNI", dns("other.example.test")),
    ] {
        let tls = tls_connect(gw.addr("secure"), name, accept_any()).await;
        assert!(
            served_leaf(&tls) == a,
            "{what}: expected the default certificate A"
        );
        wss_echo(tls, "127.0.0.1").await;
    }
    gw.wait_idle().await;
}

#[tokio::test]
async fn alpn_negotiates_http_1_1() {
    let backend = echo_backend().await;
    let (gw, certs) = start_tls_gateway(backend, "10s").await;
    let mut config = trusting(&certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tls = tls_connect(gw.addr("secure"), dns("a.example.test"), config).await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "the server must pick http/1.1, never h2"
    );
    wss_echo(tls, "a.example.test").await;
    gw.wait_idle().await;
}

#[tokio::test]
async fn tls_1_2_only_client_is_served() {
    let backend = echo_backend().await;
    let (gw, certs) = start_tls_gateway(backend, "10s").await;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2")
        .with_root_certificates(roots(&certs))
        .with_no_client_auth();
    let tls = tls_connect(gw.addr("secure"), dns("b.example.test"), config).await;
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert!(served_leaf(&tls) == pem_certs(&certs.b_pem)[0]);
    wss_echo(tls, "b.example.test").await;

    // A default client gets TLS 1.3.
    let tls = tls_connect(gw.addr("secure"), dns("a.example.test"), trusting(&certs)).await;
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    drop(tls);
    gw.wait_idle().await;
}

#[tokio::test]
async fn silent_client_is_disconnected_after_client_handshake() {
    let backend = echo_backend().await;
    let (gw, certs) = start_tls_gateway(backend, "300ms").await;

    // TCP connected, no ClientHello ever sent.
    let mut silent = TcpStream::connect(gw.addr("secure"))
        .await
        .expect("connect");
    wait_closed(&mut silent).await;

    // Plain HTTP on the TLS port is not a ClientHello: closed too.
    let mut plain = TcpStream::connect(gw.addr("secure"))
        .await
        .expect("connect");
    plain
        .write_all(handshake_request("/echo", "a.example.test").as_bytes())
        .await
        .expect("write");
    wait_closed(&mut plain).await;

    // TLS finished, but no request headers ever sent.
    let mut quiet = tls_connect(gw.addr("secure"), dns("a.example.test"), trusting(&certs)).await;
    let mut buf = [0u8; 1024];
    let mut received = Vec::new();
    within(
        "the server to close a TLS connection that sends no request",
        async {
            loop {
                match quiet.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                }
            }
        },
    )
    .await;
    // hyper may answer 408 before closing; nothing else may arrive.
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "unexpected bytes before the close: {text:?}"
    );
}

/// Sends a handshake for `host` on an open TLS stream; returns the status.
async fn status_for_host(tls: &mut TlsStream<TcpStream>, host: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(handshake_request("/ws", host).as_bytes())
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    within("a response head", async {
        while !head.ends_with(b"\r\n\r\n") {
            let n = tls.read(&mut byte).await.expect("read");
            assert!(n > 0, "closed before a response");
            head.push(byte[0]);
        }
    })
    .await;
    let head = String::from_utf8_lossy(&head).into_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    if let Some(len) = header_value(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        let mut body = vec![0u8; len];
        within("the body", tls.read_exact(&mut body))
            .await
            .expect("body");
    }
    status
}

#[tokio::test]
async fn a_host_the_sni_certificate_does_not_cover_is_misdirected() {
    let backend = echo_backend().await;
    let (gw, certs) = start_tls_gateway(backend, "10s").await;
    let addr = gw.addr("secure");
    // SNI chose certificate A; Host asks for B's host: 421, and the same
    // connection may still ask for a host A covers.
    let mut tls = tls_connect(addr, dns("a.example.test"), trusting(&certs)).await;
    assert_eq!(status_for_host(&mut tls, "b.example.test").await, 421);
    assert_eq!(status_for_host(&mut tls, "a.example.test:443").await, 101);
    // A Host that is not a host (userinfo, a path) is refused before the
    // certificate check could read a cut-down name from it.
    for host in [
        "a.example.test:1@evil.test",
        "a.example.test/x",
        "evil.test/.a.example.test",
    ] {
        let mut tls = tls_connect(addr, dns("a.example.test"), trusting(&certs)).await;
        assert_eq!(status_for_host(&mut tls, host).await, 400, "Host {host}");
    }
    // A wildcard host under B's certificate, with B's SNI: served.
    let mut tls = tls_connect(addr, dns("b.example.test"), trusting(&certs)).await;
    assert_eq!(status_for_host(&mut tls, "x.wild.example.test").await, 101);
    // No SNI (an IP address): nothing was chosen by name, nothing is misdirected.
    let ip = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let mut tls = tls_connect(addr, ip, accept_any()).await;
    assert_eq!(status_for_host(&mut tls, "b.example.test").await, 101);
}
