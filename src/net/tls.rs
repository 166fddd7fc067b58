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
        self.matching(sni).unwrap_or(0)
    }

    /// Index of the certificate valid for `sni`; `None` when SNI is absent
    /// or no certificate covers it (the default is then served).
    pub fn matching(&self, sni: Option<&str>) -> Option<usize> {
        let name = sni?;
        (0..self.certs.len()).find(|&i| self.covers(i, name))
    }

    /// Whether certificate `index` is valid for host `name`.
    pub fn covers(&self, index: usize, name: &str) -> bool {
        let Ok(name) = ServerName::try_from(name.trim_matches(['[', ']']).to_string()) else {
            return false;
        };
        self.certs.get(index).is_some_and(|c| {
            c.key.end_entity_cert().ok().is_some_and(|der| {
                webpki::EndEntityCert::try_from(der)
                    .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
            })
        })
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

// === TLS to backends ===

/// How wsgate speaks TLS to an upstream's servers.
pub struct BackendTls {
    connector: tokio_rustls::TlsConnector,
    /// `sni =`: the name to send and verify, instead of each server's own.
    sni: Option<ServerName<'static>>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("sni", &self.sni)
            .finish()
    }
}

impl BackendTls {
    /// From a client config built by [`crate::config::tls::client_config`].
    pub fn new(config: Arc<rustls::ClientConfig>, sni: Option<ServerName<'static>>) -> Self {
        Self {
            connector: tokio_rustls::TlsConnector::from(config),
            sni,
        }
    }

    /// The name a server is verified against: `sni` if set, else the host
    /// name it was resolved from, else its IP address (no SNI is sent then).
    pub fn name_for(&self, host: Option<&str>, addr: std::net::SocketAddr) -> ServerName<'static> {
        if let Some(n) = &self.sni {
            return n.clone();
        }
        host.and_then(|h| ServerName::try_from(h.to_string()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }

    /// The TLS handshake with a backend.
    ///
    /// # Errors
    /// Any I/O or TLS error, certificate verification included.
    pub async fn connect(
        &self,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.connector.connect(name, tcp).await
    }
}

/// A TCP connection, plain or under TLS: the client side (`ClientStream`,
/// wsgate terminates TLS) and the backend side (`BackendStream`, wsgate
/// originates it) share this shape.
pub enum MaybeTls<T> {
    /// No TLS.
    Plain(TcpStream),
    /// TLS; boxed so the plain case stays small.
    Tls(Box<T>),
}

/// A client connection after TLS termination.
pub type ClientStream = MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>;

/// A backend connection, with TLS when the upstream asks for it.
pub type BackendStream = MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

/// A TLS stream over TCP, whichever side started it.
pub trait OverTcp {
    /// The TCP socket underneath.
    fn tcp(&self) -> &TcpStream;
}

impl OverTcp for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl OverTcp for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl<T: OverTcp> MaybeTls<T> {
    /// The TCP socket underneath, for readiness and addresses.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(s) => s.tcp(),
        }
    }
}

impl ClientStream {
    /// The SNI name the client sent, if any.
    pub fn sni(&self) -> Option<&str> {
        match self {
            MaybeTls::Plain(_) => None,
            MaybeTls::Tls(s) => s.get_ref().1.server_name(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
