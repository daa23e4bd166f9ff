//! The HTTP(S) client that downloads the JWKS: one GET to the configured URL, bounded in time and
//! size, no redirects followed (a redirect is a failed fetch, never a new key source), rustls with
//! the system roots plus an optional extra CA.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use super::error::KeyError;

/// Largest JWKS body read. A real one is a few KiB.
pub(crate) const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Why one fetch failed; logged, never fatal.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    #[error("answered HTTP {0}")]
    Status(StatusCode),
    #[error("body larger than {MAX_JWKS_BYTES} bytes or unreadable")]
    Body,
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
}

/// A JWKS downloader for one URL.
pub(crate) struct Fetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    url: Uri,
    /// Bounds the whole exchange, connect to last body byte.
    timeout: Duration,
}

impl Fetcher {
    /// Checks the URL and builds the client.
    pub(crate) fn new(
        url: Uri,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, KeyError> {
        let scheme_ok = matches!(url.scheme_str(), Some("http" | "https"));
        if !scheme_ok || url.host().is_none_or(str::is_empty) {
            return Err(KeyError::JwksUrl);
        }
        let client = crate::tls::occasional_client(ca_file, timeout).map_err(ca_error)?;
        Ok(Fetcher {
            client,
            url,
            timeout,
        })
    }

    /// Downloads the document.
    pub(crate) async fn fetch(&self) -> Result<Bytes, FetchError> {
        match tokio::time::timeout(self.timeout, self.exchange()).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout(self.timeout)),
        }
    }

    async fn exchange(&self) -> Result<Bytes, FetchError> {
        let request = Request::get(self.url.clone())
            .header(header::ACCEPT, "application/jwk-set+json, application/json")
            .header(
                header::USER_AGENT,
                concat!("account-gate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|_| FetchError::Body)?;
        let response = self.client.request(request).await?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|_| FetchError::Body)?;
        Ok(body.to_bytes())
    }
}

/// A TLS setting error as the JWKS source's: `jwks_ca_file` is the only file involved.
fn ca_error(error: crate::tls::TlsError) -> KeyError {
    match error {
        crate::tls::TlsError::CaFile { path, reason } => KeyError::JwksCa { path, reason },
        crate::tls::TlsError::Rustls(e) => KeyError::Tls(e),
    }
}
