//! `wsgate demo` and `wsgate client`: a newcomer's first contact.
//!
//! Owns: small backends on the addresses a config names (a page and
//! WebSocket echo on one port, as real applications serve them), a
//! self-made CA and server certificate when the config's are missing, a
//! self-check that sends one message through the proxy, and a line-based
//! WebSocket client for trying it by hand.
//!
//! Must not: be used by the data path. Nothing here runs in `wsgate run`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// Creates a CA (`ca.pem` beside the certificate) and a server certificate
/// for `localhost` and `127.0.0.1` at each TLS listener path of the config
/// text that does not exist yet. Returns the CA paths written.
///
/// # Errors
/// [`DemoError`] if the config cannot be read or a file cannot be written.
pub fn ensure_certificates(config_path: &Path) -> Result<Vec<PathBuf>, DemoError> {
    let text = std::fs::read_to_string(config_path)
        .map_err(io_err(format!("reading {}", config_path.display())))?;
    let Ok(value) = text.parse::<toml::Table>() else {
        // Let the real loader report the syntax error with its position.
        return Ok(Vec::new());
    };
    let base = config_path.parent().unwrap_or(Path::new("."));
    let mut written = Vec::new();
    let listeners = value
        .get("listeners")
        .and_then(|l| l.as_array())
        .cloned()
        .unwrap_or_default();
    for l in listeners {
        let Some(tls) = l.get("tls") else { continue };
        let (Some(cert), Some(key)) = (
            tls.get("cert").and_then(|c| c.as_str()),
            tls.get("key").and_then(|k| k.as_str()),
        ) else {
            continue;
        };
        let (cert, key) = (base.join(cert), base.join(key));
        if cert.exists() && key.exists() {
            continue;
        }
        let (ca_pem, cert_pem, key_pem) = make_certificates(&["localhost", "127.0.0.1"])?;
        let dir = cert.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_pem).map_err(io_err(format!("writing {}", ca.display())))?;
        std::fs::write(&cert, cert_pem).map_err(io_err(format!("writing {}", cert.display())))?;
        std::fs::write(&key, key_pem).map_err(io_err(format!("writing {}", key.display())))?;
        written.push(ca);
    }
    Ok(written)
}

/// A fresh CA and a server certificate signed by it for `names`, as PEM:
/// `(ca_cert, server_cert, server_key)`.
///
/// # Errors
/// [`DemoError::Cert`] if rcgen fails.
pub fn make_certificates(names: &[&str]) -> Result<(String, String, String), DemoError> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wsgate demo CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

/// Serves a small application on `listener` until `shutdown`, as a real
/// backend would behind wsgate: WebSocket echo on any path (every text or
/// binary message comes back unchanged; pings are answered; a Close is
/// returned), and for any plain request a page whose script opens that
/// WebSocket, so a browser shows pages and WebSockets through one route.
pub async fn echo_backend(listener: TcpListener, tasks: TaskTracker, shutdown: CancellationToken) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(a) => a,
                // Out of descriptors, say: do not spin.
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let token = shutdown.clone();
        let upgrades = tasks.clone();
        tasks.spawn(async move {
            let stop = token.clone();
            let service = hyper::service::service_fn(move |req| {
                let (upgrades, token) = (upgrades.clone(), token.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(app_answer(req, &upgrades, &token).await)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// The demo page: a tiny chat box over a WebSocket to the same path.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8"><title>wsgate demo</title>
<h1>wsgate demo</h1>
<p>This page and its WebSocket come through wsgate, on the same route, to the same backend.</p>
<form id="f"><input id="m" autocomplete="off" placeholder="a message"> <button>send</button></form>
<pre id="log"></pre>
<script>
const log = t => document.getElementById('log').textContent += t + '\n';
const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + location.pathname + location.search);
ws.onopen = () => log('connected to ' + ws.url);
ws.onmessage = e => log('< ' + e.data);
ws.onclose = e => log('closed: ' + e.code + ' ' + e.reason);
document.getElementById('f').onsubmit = e => {
  e.preventDefault();
  const m = document.getElementById('m');
  if (ws.readyState !== WebSocket.OPEN) { log('not connected'); return; }
  ws.send(m.value); log('> ' + m.value); m.value = '';
};
</script>
"#;

type DemoBody = http_body_util::Full<bytes::Bytes>;

async fn app_answer(
    mut req: hyper::Request<hyper::body::Incoming>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> hyper::Response<DemoBody> {
    use http::header;
    use http_body_util::BodyExt;
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let Some(key) = key.filter(|_| {
        crate::proxy::handshake::classify(&req) == crate::proxy::handshake::RequestKind::WebSocket
    }) else {
        // Read what was sent (up to 1 MiB) before answering, as a well-behaved
        // server does: closing on an unread body resets the connection, and
        // the answer is lost with it.
        let _ = http_body_util::Limited::new(req.into_body(), 1 << 20)
            .collect()
            .await;
        let mut res = hyper::Response::new(DemoBody::from(PAGE));
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/html; charset=utf-8"),
        );
        return res;
    };
    let accept = crate::proxy::handshake::accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    let token = shutdown.clone();
    tasks.spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        loop {
            let msg = tokio::select! {
                _ = token.cancelled() => return,
                m = ws.next() => m,
            };
            match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    let mut res = hyper::Response::new(DemoBody::default());
    *res.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

/// Binds an echo backend on every address.
///
/// # Errors
/// [`DemoError::Io`] naming the address that could not be bound.
pub async fn start_echo_backends(
    addrs: &[SocketAddr],
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), DemoError> {
    for addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(io_err(format!("binding demo backend {addr}")))?;
        tasks.spawn(echo_backend(l, tasks.clone(), shutdown.clone()));
    }
    Ok(())
}

/// Opens a WebSocket to `url` (`ws://` or `wss://`, trusting `ca` for wss).
///
/// # Errors
/// [`DemoError`] if the connection, TLS or handshake fails.
pub async fn connect(
    url: &str,
    ca: Option<&Path>,
) -> Result<tokio_tungstenite::WebSocketStream<Box<dyn Io>>, DemoError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| DemoError::Check(format!("bad URL {url}: {e}")))?;
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => {
            return Err(DemoError::Check(format!(
                "URL must start with ws:// or wss://: {url}"
            )))
        }
    };
    let host = uri
        .host()
        .unwrap_or("localhost")
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(io_err(format!("connecting to {host}:{port}")))?;
    let stream: Box<dyn Io> = if tls {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = ca {
            use rustls::pki_types::pem::PemObject;
            for c in rustls::pki_types::CertificateDer::pem_file_iter(ca)
                .map_err(|e| DemoError::Tls(e.to_string()))?
            {
                roots
                    .add(c.map_err(|e| DemoError::Tls(e.to_string()))?)
                    .map_err(|e| DemoError::Tls(e.to_string()))?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| DemoError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| DemoError::Tls(e.to_string()))?;
        let s = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(io_err("TLS handshake"))?;
        Box::new(s)
    } else {
        Box::new(tcp)
    };
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    Ok(ws)
}

/// A byte stream the demo client can run WebSocket over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

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

/// Line-based client: each stdin line is sent as a text message; every
/// message received is printed.
///
/// # Errors
/// [`DemoError`] if the connection fails.
pub async fn client(url: &str, ca: Option<&Path>) -> Result<(), DemoError> {
    use tokio::io::AsyncBufReadExt;
    let ws = connect(url, ca).await?;
    eprintln!("connected to {url}; type a line to send it, Ctrl-D to close");
    let (mut tx, mut rx) = ws.split();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            line = lines.next_line(), if stdin_open => match line.map_err(io_err("reading stdin"))? {
                Some(l) => tx.send(Message::text(l)).await?,
                None => {
                    stdin_open = false;
                    tx.send(Message::Close(None)).await?;
                }
            },
            msg = rx.next() => match msg {
                Some(Ok(Message::Text(t))) => println!("< {t}"),
                Some(Ok(Message::Binary(b))) => println!("< ({} bytes binary)", b.len()),
                Some(Ok(Message::Close(c))) => {
                    // With stdin closed, our Close went first and this one answers it.
                    println!("< {}", close_line(c.as_ref(), !stdin_open));
                    return Ok(());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
        }
    }
}

/// How the client reports the server's Close frame, for a person to read:
/// `closed by server: 1001 (going away) "bye"`, or, when it answers the
/// Close we sent first, `server answered our close: 1000 (normal closure)`.
/// The reason is quoted and escaped, so control bytes a server sends cannot
/// reach the terminal.
pub fn close_line(frame: Option<&CloseFrame>, answering_ours: bool) -> String {
    let who = if answering_ours {
        "server answered our close"
    } else {
        "closed by server"
    };
    let Some(frame) = frame else {
        return format!("{who} without a close code");
    };
    let code = u16::from(frame.code);
    let mut line = match close_code_name(code) {
        Some(name) => format!("{who}: {code} ({name})"),
        None => format!("{who}: {code}"),
    };
    if !frame.reason.is_empty() {
        line.push_str(&format!(" {:?}", frame.reason.as_str()));
    }
    line
}

/// The name of a close code defined by RFC 6455 section 7.4.1 or the IANA
/// WebSocket close code registry it set up; `None` for the rest (reserved,
/// or chosen by an application).
pub fn close_code_name(code: u16) -> Option<&'static str> {
    Some(match code {
        1000 => "normal closure",
        1001 => "going away",
        1002 => "protocol error",
        1003 => "unsupported data",
        1007 => "invalid payload data",
        1008 => "policy violation",
        1009 => "message too big",
        1010 => "mandatory extension",
        1011 => "internal error",
        1012 => "service restart",
        1013 => "try again later",
        1014 => "bad gateway",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    fn frame(code: u16, reason: &str) -> CloseFrame {
        CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        }
    }

    #[test]
    fn a_close_names_its_code_and_quotes_its_reason() {
        assert_eq!(
            close_line(Some(&frame(1000, "done")), false),
            r#"closed by server: 1000 (normal closure) "done""#
        );
        assert_eq!(
            close_line(Some(&frame(1013, "")), false),
            "closed by server: 1013 (try again later)"
        );
    }

    #[test]
    fn every_code_of_the_registry_has_a_name_and_others_do_not() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
        ] {
            assert!(close_code_name(code).is_some(), "{code}");
        }
        for code in [999, 1004, 1005, 1006, 1015, 3000, 4000] {
            assert_eq!(close_code_name(code), None, "{code}");
        }
        assert_eq!(
            close_line(Some(&frame(4001, "kicked")), false),
            r#"closed by server: 4001 "kicked""#
        );
    }

    #[test]
    fn a_close_without_a_code_says_so() {
        assert_eq!(
            close_line(None, false),
            "closed by server without a close code"
        );
        assert_eq!(
            close_line(None, true),
            "server answered our close without a close code"
        );
    }

    #[test]
    fn a_reason_cannot_write_control_bytes_to_the_terminal() {
        let line = close_line(Some(&frame(1008, "a\u{1b}[31m\"b\"")), false);
        assert!(!line.contains('\u{1b}'), "{line}");
        assert_eq!(
            line,
            r#"closed by server: 1008 (policy violation) "a\u{1b}[31m\"b\"""#
        );
    }
}
