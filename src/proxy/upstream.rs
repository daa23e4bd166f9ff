//! The forwarding client: one pooled hyper client to the configured upstream, over plain TCP or
//! rustls, with connect and response-head timeouts.

use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::Body;
use crate::config::UpstreamConfig;

/// Why a request could not be forwarded or got no answer. Each maps to 502 or 504.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP or TLS connect failed (refused, unreachable, bad certificate).
    #[error("the upstream could not be reached")]
    Connect(#[source] hyper_util::client::legacy::Error),
    /// No response head within `upstream.response_timeout`.
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection broke or the upstream answered something that is not HTTP.
    #[error("the upstream failed to answer")]
    Failed(#[source] hyper_util::client::legacy::Error),
}

impl UpstreamError {
    /// The JSON:API `code` and the `upstream_errors_total{kind}` label.
    pub fn code(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "upstream_unreachable",
            UpstreamError::Timeout(_) => "upstream_timeout",
            UpstreamError::Failed(_) => "upstream_failed",
        }
    }
}

/// Problems building the client from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    /// `upstream.ca_file` could not be read or holds no usable certificate.
    #[error("upstream.ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    /// rustls refused the protocol configuration.
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// The upstream every forwarded request goes to.
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    scheme: Scheme,
    authority: Authority,
    /// `Host` sent upstream: the upstream's own name, which virtual hosting and TLS SNI need.
    host: HeaderValue,
    response_timeout: Duration,
}

impl Upstream {
    /// Builds the pooled client for `config`.
    pub fn new(config: &UpstreamConfig) -> Result<Self, UpstreamSetupError> {
        let tls = tls_config(config)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .build(connector);
        let scheme = config.url.scheme().cloned().unwrap_or(Scheme::HTTP);
        // The config loader guarantees an authority; an empty one would only fail at connect.
        let authority = config
            .url
            .authority()
            .cloned()
            .unwrap_or_else(|| Authority::from_static("invalid"));
        let host = HeaderValue::from_str(authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        Ok(Upstream {
            client,
            scheme,
            authority,
            host,
            response_timeout: config.response_timeout,
        })
    }

    /// Points `request` at the upstream: absolute URI, upstream `Host`, HTTP/1.1 framing (the
    /// client negotiates HTTP/2 itself over TLS when the upstream offers it).
    pub fn retarget(&self, request: &mut Request<Body>) {
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path);
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        *request.version_mut() = Version::HTTP_11;
        request
            .headers_mut()
            .insert(header::HOST, self.host.clone());
    }

    /// Sends a request already passed through [`Upstream::retarget`] and waits for the head of
    /// the answer, at most `upstream.response_timeout`. The body streams afterwards.
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.response_timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) if err.is_connect() => Err(UpstreamError::Connect(err)),
            Ok(Err(err)) => Err(UpstreamError::Failed(err)),
            Err(_) => Err(UpstreamError::Timeout(self.response_timeout)),
        }
    }
}

/// rustls client settings for the upstream: the system's roots plus `upstream.ca_file`.
fn tls_config(config: &UpstreamConfig) -> Result<rustls::ClientConfig, UpstreamSetupError> {
    crate::tls::client_config(config.ca_file.as_deref()).map_err(|error| match error {
        crate::tls::TlsError::CaFile { path, reason } => {
            UpstreamSetupError::CaFile { path, reason }
        }
        crate::tls::TlsError::Rustls(e) => UpstreamSetupError::Tls(e),
    })
}
