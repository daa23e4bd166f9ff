//! rustls settings: for every outgoing TLS connection (the upstream, a JWKS endpoint) the
//! system's roots plus an optional extra CA file; for the data listener (`[server.tls]`) a
//! certificate and key from PEM files, optionally requiring client certificates. ring is the
//! provider throughout; TLS 1.2 and 1.3.

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

/// Why the data listener's TLS settings could not be built: the key of the file at fault, its
/// path and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{key} {path}: {reason}")]
pub struct ListenerTlsError {
    pub key: &'static str,
    pub path: String,
    pub reason: String,
}

fn listener_error(
    key: &'static str,
    path: &Path,
    reason: impl std::fmt::Display,
) -> ListenerTlsError {
    ListenerTlsError {
        key,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The data listener's settings from `[server.tls]`: the certificate chain and key, client
/// certificates required when `client_ca_file` is set, ALPN `h2` and `http/1.1`.
pub fn server_config(
    tls: &crate::config::ListenerTlsConfig,
) -> Result<rustls::ServerConfig, ListenerTlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    let certs = |key: &'static str, path: &Path| {
        let certs = pem_certificates(path).map_err(|e| listener_error(key, path, e))?;
        if certs.is_empty() {
            return Err(listener_error(key, path, "no certificate in the file"));
        }
        Ok(certs)
    };
    let (key_name, key_path) = ("server.tls.key_file", tls.key_file.as_path());
    let chain = certs("server.tls.cert_file", &tls.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| listener_error(key_name, key_path, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| listener_error(key_name, key_path, e))?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let key = "server.tls.client_ca_file";
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certs(key, path)?);
            if added == 0 {
                return Err(listener_error(key, path, "no usable CA certificate"));
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| listener_error(key, path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| listener_error(key_name, key_path, e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The client of the gateway's own occasional calls (the JWKS download, the trace export):
/// `http` or `https` with [`client_config`], connects bounded by `connect_timeout`, one idle
/// connection kept for a while, since such calls come seconds or minutes apart.
pub fn occasional_client<B>(
    ca_file: Option<&Path>,
    connect_timeout: std::time::Duration,
) -> Result<
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        B,
    >,
    TlsError,
>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    use hyper_util::rt::{TokioExecutor, TokioTimer};

    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_config(ca_file)?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(1)
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build(connector),
    )
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
        let ca_error = |reason: String| TlsError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let certs = pem_certificates(path).map_err(|e| ca_error(e.to_string()))?;
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

/// Every certificate of a PEM file, in order (the listener's chain, a CA bundle).
fn pem_certificates(
    path: &Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, rustls_pki_types::pem::Error> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_file_iter(path)?.collect()
}
