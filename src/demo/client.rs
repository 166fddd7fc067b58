//! The demo's WebSocket client: connecting over `ws://` or `wss://`, and
//! `wsgate client`, which sends stdin lines and prints what comes back,
//! closes included, for a person to read.
//!
//! Must not: be used by the proxy; it is a peer for trying wsgate by hand.

use std::path::Path;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::{io_err, DemoError};

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
