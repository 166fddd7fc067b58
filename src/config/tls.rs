//! Validation of TLS material, read from files at load time so a missing or
//! mismatched file fails then, naming its key: a listener's certificates
//! and keys, and an upstream's backend TLS (`tls`, `sni`, `ca_file`,
//! `client_cert`, `client_key`, `insecure_skip_verify`) built into the
//! rustls client config it connects with.
//!
//! Must not: run outside `validate::parse` (these are methods of its
//! `Validator`), report a mistake other than through `Validator::problem`,
//! or open connections: handshakes belong to `tls.rs` and `upstream.rs`.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use toml::Spanned;

use crate::config::raw::{RawTls, RawUpstream};
use crate::config::validate::Validator;
use crate::config::*;

impl Validator<'_> {
    /// A listener's `tls`: one `cert` and `key`, or a `certificates` list to
    /// choose from by SNI.
    pub(crate) fn tls(&mut self, t: Spanned<RawTls>, key: &str) -> Option<TlsConfig> {
        let span = t.span();
        let t = t.into_inner();
        let pairs: Vec<(Spanned<String>, Spanned<String>, String)> =
            match (t.cert, t.key, t.certificates) {
                (Some(c), Some(k), None) => vec![(c, k, key.to_string())],
                (None, None, Some(list)) if !list.is_empty() => list
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let p = p.into_inner();
                        (p.cert, p.key, format!("{key}.certificates[{i}]"))
                    })
                    .collect(),
                _ => {
                    self.problem_at(
                        span,
                        key,
                        "give either `cert` and `key`, or a non-empty `certificates` list",
                    );
                    return None;
                }
            };
        let mut certificates = Vec::new();
        for (cert, k, pkey) in pairs {
            if let Some(c) = self.certificate(&cert, &k, &pkey) {
                certificates.push(c);
            }
        }
        (!certificates.is_empty()).then_some(TlsConfig { certificates })
    }

    fn certificate(
        &mut self,
        cert: &Spanned<String>,
        key: &Spanned<String>,
        pkey: &str,
    ) -> Option<LoadedCertificate> {
        let cert_path = self.base.join(cert.get_ref());
        let key_path = self.base.join(key.get_ref());
        let chain: Vec<CertificateDer<'static>> = match CertificateDer::pem_file_iter(&cert_path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => {
                self.problem(
                    cert,
                    format!("{pkey}.cert"),
                    format!("{} holds no PEM certificate", cert_path.display()),
                );
                return None;
            }
            Err(e) => {
                self.problem(
                    cert,
                    format!("{pkey}.cert"),
                    format!("cannot read certificates from {}: {e}", cert_path.display()),
                );
                return None;
            }
        };
        let der = match PrivateKeyDer::from_pem_file(&key_path) {
            Ok(k) => k,
            Err(e) => {
                self.problem(
                    key,
                    format!("{pkey}.key"),
                    format!("cannot read a private key from {}: {e}", key_path.display()),
                );
                return None;
            }
        };
        let provider = rustls::crypto::ring::default_provider();
        match CertifiedKey::from_der(chain, der, &provider) {
            Ok(k) => Some(LoadedCertificate {
                cert_path,
                key_path,
                key: Arc::new(k),
            }),
            Err(e) => {
                self.problem(
                    key,
                    format!("{pkey}.key"),
                    format!(
                        "key {} does not fit certificate {}: {e}",
                        key_path.display(),
                        cert_path.display()
                    ),
                );
                None
            }
        }
    }

    /// `None` when `tls` is off (any other TLS key is then a mistake) or
    /// when a file it names is refused.
    pub(crate) fn upstream_tls(&mut self, up: &RawUpstream, key: &str) -> Option<UpstreamTls> {
        let on = up.tls.as_ref().is_some_and(|t| *t.get_ref());
        if !on {
            self.tls_keys_without_tls(up, key);
            return None;
        }
        let sni = self.backend_sni(up, key);
        let roots = self.backend_roots(up, key);
        let client_auth = self.backend_client_auth(up, key).ok()?;
        let insecure = up
            .insecure_skip_verify
            .as_ref()
            .is_some_and(|v| *v.get_ref());
        match client_config(roots, client_auth, insecure) {
            Ok(client) => Some(UpstreamTls {
                client: Arc::new(client),
                sni,
                insecure_skip_verify: insecure,
                ca_file: up.ca_file.as_ref().map(|f| self.base.join(f.get_ref())),
                client_cert: up.client_cert.as_ref().map(|f| self.base.join(f.get_ref())),
                client_key: up.client_key.as_ref().map(|f| self.base.join(f.get_ref())),
            }),
            Err(e) => {
                let at = up.client_cert.as_ref().map_or(0..0, Spanned::span);
                self.problem_at(
                    at,
                    format!("{key}.client_key"),
                    format!("client certificate and key do not fit: {e}"),
                );
                None
            }
        }
    }

    /// With `tls` off, every other TLS key is a mistake worth naming.
    fn tls_keys_without_tls(&mut self, up: &RawUpstream, key: &str) {
        for (k, span) in [
            ("sni", up.sni.as_ref().map(Spanned::span)),
            ("ca_file", up.ca_file.as_ref().map(Spanned::span)),
            ("client_cert", up.client_cert.as_ref().map(Spanned::span)),
            ("client_key", up.client_key.as_ref().map(Spanned::span)),
            (
                "insecure_skip_verify",
                up.insecure_skip_verify.as_ref().map(Spanned::span),
            ),
        ] {
            if let Some(span) = span {
                self.problem_at(
                    span,
                    format!("{key}.{k}"),
                    "only meaningful with tls = true",
                );
            }
        }
    }

    /// `sni =`, checked to be a valid TLS server name.
    fn backend_sni(
        &mut self,
        up: &RawUpstream,
        key: &str,
    ) -> Option<rustls::pki_types::ServerName<'static>> {
        let n = up.sni.as_ref()?;
        match rustls::pki_types::ServerName::try_from(n.get_ref().clone()) {
            Ok(name) => Some(name),
            Err(_) => {
                self.problem(
                    n,
                    format!("{key}.sni"),
                    format!("{:?} is not a valid TLS server name", n.get_ref()),
                );
                None
            }
        }
    }

    /// `ca_file =`: the roots to trust instead of the bundled ones; `None`
    /// when unset, or when the file is refused (a problem is then recorded,
    /// so the config fails to load).
    fn backend_roots(&mut self, up: &RawUpstream, key: &str) -> Option<rustls::RootCertStore> {
        let f = up.ca_file.as_ref()?;
        let path = self.base.join(f.get_ref());
        let certs =
            CertificateDer::pem_file_iter(&path).and_then(|it| it.collect::<Result<Vec<_>, _>>());
        let mut store = rustls::RootCertStore::empty();
        match certs {
            Ok(c) if !c.is_empty() => {
                let (added, _) = store.add_parsable_certificates(c);
                if added == 0 {
                    self.problem(
                        f,
                        format!("{key}.ca_file"),
                        format!("{} holds no usable CA certificate", path.display()),
                    );
                    return None;
                }
                Some(store)
            }
            Ok(_) => {
                self.problem(
                    f,
                    format!("{key}.ca_file"),
                    format!("{} holds no PEM certificate", path.display()),
                );
                None
            }
            Err(e) => {
                self.problem(
                    f,
                    format!("{key}.ca_file"),
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        }
    }

    /// `client_cert =` and `client_key =` for mutual TLS: `Ok(None)` when
    /// neither is set, `Err(())` when a problem was recorded.
    fn backend_client_auth(
        &mut self,
        up: &RawUpstream,
        key: &str,
    ) -> Result<Option<ClientAuth>, ()> {
        match (&up.client_cert, &up.client_key) {
            (None, None) => Ok(None),
            (Some(c), Some(k)) => {
                let (cp, kp) = (self.base.join(c.get_ref()), self.base.join(k.get_ref()));
                let chain = CertificateDer::pem_file_iter(&cp)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>());
                match (chain, PrivateKeyDer::from_pem_file(&kp)) {
                    (Ok(chain), Ok(key_der)) if !chain.is_empty() => Ok(Some((chain, key_der))),
                    (Ok(_), Ok(_)) => {
                        self.problem(
                            c,
                            format!("{key}.client_cert"),
                            format!("{} holds no PEM certificate", cp.display()),
                        );
                        Err(())
                    }
                    (Err(e), _) => {
                        self.problem(
                            c,
                            format!("{key}.client_cert"),
                            format!("cannot read {}: {e}", cp.display()),
                        );
                        Err(())
                    }
                    (_, Err(e)) => {
                        self.problem(
                            k,
                            format!("{key}.client_key"),
                            format!("cannot read {}: {e}", kp.display()),
                        );
                        Err(())
                    }
                }
            }
            (Some(c), None) => {
                self.problem(
                    c,
                    format!("{key}.client_key"),
                    "client_cert needs client_key",
                );
                Err(())
            }
            (None, Some(k)) => {
                self.problem(
                    k,
                    format!("{key}.client_cert"),
                    "client_key needs client_cert",
                );
                Err(())
            }
        }
    }
}

/// A certificate chain and its key, presented to backends for mutual TLS.
type ClientAuth = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// A client config for backends: TLS 1.2 and 1.3, ALPN `http/1.1`, trusting
/// `roots` (the bundled Mozilla roots when `None`), presenting `client_auth`
/// for mutual TLS, or, with `insecure`, verifying no certificate at all.
///
/// # Errors
/// A rustls error for an unusable client certificate or key.
pub fn client_config(
    roots: Option<rustls::RootCertStore>,
    client_auth: Option<ClientAuth>,
    insecure: bool,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let roots = roots.unwrap_or_else(|| rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
        builder.with_root_certificates(roots)
    };
    let mut config = match client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `insecure_skip_verify`: accepts any certificate, still checking that the
/// handshake is signed by it (so the stream is at least encrypted to
/// whoever holds that key).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
