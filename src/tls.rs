//! rustls client settings shared by every outgoing TLS connection (the upstream, a JWKS
//! endpoint): the system's roots plus an optional extra CA file, ring as the provider.

use std::path::Path;
use std::sync::Arc;

/// Why client TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The extra CA file could not be read or holds no usable certificate.
    #[error("{path}: {reason}")]
    CaFile { path: String, reason: String },
    /// rustls refused the protocol configuration.
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Client settings trusting the system roots and the certificates of `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    // A machine without a system store (scratch containers) still works with `ca_file`.
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "skipping unreadable system certificate");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        use rustls_pki_types::pem::PemObject;
        let ca_error = |reason: String| TlsError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_error(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_error(e.to_string()))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(ca_error("no usable certificate in the file".to_owned()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
