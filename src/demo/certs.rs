//! The demo's certificates: a fresh CA and a server certificate signed by
//! it, written where the config's TLS listeners expect them when missing.
//!
//! Must not: overwrite a certificate or key that exists.

use std::path::{Path, PathBuf};

use super::{io_err, DemoError};

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
