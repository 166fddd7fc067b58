//! TLS termination: certificates chosen by SNI, and the client stream type.
//!
//! Owns: one rustls `ServerConfig` per configured certificate (TLS 1.2 and
//! 1.3 only, ALPN `http/1.1`), the SNI choice made after reading the
//! ClientHello, and [`ClientStream`], the plain-or-TLS stream the rest of
//! the data path uses.
//!
//! Must not: read certificate files (config.rs does, at load time).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use rustls::server::{Acceptor, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

use crate::config::TlsConfig;

/// The compiled TLS side of a listener.
pub struct TlsSettings {
    /// One entry per certificate, in config order; the first is the default.
    certs: Vec<CertEntry>,
}

struct CertEntry {
    key: Arc<CertifiedKey>,
    config: Arc<ServerConfig>,
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl TlsSettings {
    /// Builds one server config per certificate.
    ///
    /// # Errors
    /// A rustls error if the protocol versions cannot be set up.
    pub fn new(tls: &TlsConfig) -> Result<Self, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut certs = Vec::with_capacity(tls.certificates.len());
        for c in &tls.certificates {
            let mut config = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(Fixed(c.key.clone())));
            // Only HTTP/1.1 carries the WebSocket upgrade here; offering h2 would break it.
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            certs.push(CertEntry {
                key: c.key.clone(),
                config: Arc::new(config),
            });
        }
        Ok(Self { certs })
    }

    /// Index of the certificate valid for `sni`, or 0 (the default) when SNI
    /// is absent or no certificate covers it.
    pub fn choose(&self, sni: Option<&str>) -> usize {
        let Some(name) = sni.and_then(|s| ServerName::try_from(s.to_string()).ok()) else {
            return 0;
        };
        self.certs
            .iter()
            .position(|c| {
                c.key.end_entity_cert().ok().is_some_and(|der| {
                    webpki::EndEntityCert::try_from(der)
                        .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
                })
            })
            .unwrap_or(0)
    }

    /// Reads the ClientHello, picks the certificate by SNI and completes the handshake.
    ///
    /// # Errors
    /// Any I/O or TLS error from the client.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        let start = LazyConfigAcceptor::new(Acceptor::default(), tcp).await?;
        let index = self.choose(start.client_hello().server_name());
        let config = self
            .certs
            .get(index)
            .or(self.certs.first())
            .map(|c| c.config.clone());
        let config = config.ok_or_else(|| io::Error::other("listener has no certificate"))?;
        start.into_stream(config).await
    }
}

/// A client connection after TLS termination, plain or encrypted.
pub enum ClientStream {
    /// A plain TCP listener.
    Plain(TcpStream),
    /// A TLS listener; boxed so the plain case stays small.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl ClientStream {
    /// The TCP socket underneath, for readiness and addresses.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(s) => s,
            ClientStream::Tls(s) => s.get_ref().0,
        }
    }

    /// The SNI name the client sent, if any.
    pub fn sni(&self) -> Option<&str> {
        match self {
            ClientStream::Plain(_) => None,
            ClientStream::Tls(s) => s.get_ref().1.server_name(),
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
