//! The forwarding client: a pool of connections to the configured upstream, over plain TCP or
//! rustls (HTTP/2 when a TLS upstream offers it), with connect and response-head timeouts.
//!
//! Why not hyper-util's pooled client: it serves any number of hosts, so every request hashes a
//! pool key, locks a map, and spawns a task to hand the connection back once its body is read —
//! about a sixth of the gateway's own work per proxied request (callgrind, `benches/load`). One
//! upstream needs one list: a request takes the newest connection that is ready, puts it back
//! right away (hyper marks it ready again once the answer has been read), and the list is pruned
//! of closed and long-idle connections as it is walked and by a timer.

use std::io;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::Body;
use crate::config::UpstreamConfig;

/// Why a connection to the upstream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed (refused, unreachable, name not resolved).
    #[error("connect: {0}")]
    Tcp(#[source] io::Error),
    /// TCP or TLS connect took longer than `upstream.connect_timeout`.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// The TLS handshake failed (bad certificate, protocol mismatch).
    #[error("TLS handshake: {0}")]
    Tls(#[source] io::Error),
    /// The HTTP connection could not be set up on the stream.
    #[error("HTTP handshake: {0}")]
    Http(#[source] hyper::Error),
}

/// Why a request could not be forwarded or got no answer. Each maps to 502 or 504.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP or TLS connect failed (refused, unreachable, bad certificate).
    #[error("the upstream could not be reached")]
    Connect(#[source] ConnectError),
    /// No response head within `upstream.response_timeout`.
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection broke or the upstream answered something that is not HTTP.
    #[error("the upstream failed to answer")]
    Failed(#[source] hyper::Error),
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
    /// The host of an `https` upstream.url is no name a certificate could be checked against.
    #[error("upstream.url host {0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// The upstream every forwarded request goes to.
pub struct Upstream {
    pool: Arc<Pool>,
    /// Where and how to connect.
    target: Target,
    /// `Host` sent upstream: the upstream's own name, which virtual hosting and TLS SNI need.
    host: HeaderValue,
    response_timeout: Duration,
}

/// The upstream's address and transport.
struct Target {
    scheme: Scheme,
    authority: Authority,
    /// Host name or address to connect to, without IPv6 brackets.
    hostname: String,
    port: u16,
    /// Set for `https`: rustls with ALPN `h2`, `http/1.1`, and the name to verify.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
}

/// Open connections not held by a request.
struct Pool {
    /// HTTP/1.1 connections, newest last; each is ready again once its last answer was read.
    http1: Mutex<Vec<Idle>>,
    /// The HTTP/2 connection, shared by every request, when the upstream negotiated it.
    http2: Mutex<Option<http2::SendRequest<Body>>>,
    max_idle: usize,
    idle_timeout: Duration,
}

struct Idle {
    sender: http1::SendRequest<Body>,
    /// When it was last handed back.
    since: Instant,
}

/// A connection taken for one request.
enum Sender {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

impl Upstream {
    /// Builds the client for `config`. Connections open on first use.
    pub fn new(config: &UpstreamConfig) -> Result<Self, UpstreamSetupError> {
        let scheme = config.url.scheme().cloned().unwrap_or(Scheme::HTTP);
        // The config loader guarantees an authority; an empty one would only fail at connect.
        let authority = config
            .url
            .authority()
            .cloned()
            .unwrap_or_else(|| Authority::from_static("invalid"));
        let host = HeaderValue::from_str(authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        let hostname = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let https = scheme == Scheme::HTTPS;
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let mut tls = tls_config(config)?;
            tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let name = ServerName::try_from(hostname.clone())
                .map_err(|_| UpstreamSetupError::ServerName(hostname.clone()))?;
            Some((TlsConnector::from(Arc::new(tls)), name))
        } else {
            None
        };
        let pool = Arc::new(Pool {
            http1: Mutex::new(Vec::new()),
            http2: Mutex::new(None),
            max_idle: config.pool_max_idle_per_host,
            idle_timeout: config.pool_idle_timeout,
        });
        Pool::start_pruning(&pool);
        Ok(Upstream {
            pool,
            target: Target {
                scheme,
                authority,
                hostname,
                port,
                tls,
                connect_timeout: config.connect_timeout,
            },
            host,
            response_timeout: config.response_timeout,
        })
    }

    /// Points `request` at the upstream: origin-form target, upstream `Host`, HTTP/1.1 framing
    /// (an HTTP/2 upstream connection gets the absolute form it needs when the request is sent).
    pub fn retarget(&self, request: &mut Request<Body>) {
        if request.uri().scheme().is_some() || request.uri().authority().is_some() {
            *request.uri_mut() = origin_form(request.uri());
        }
        *request.version_mut() = Version::HTTP_11;
        request
            .headers_mut()
            .insert(header::HOST, self.host.clone());
    }

    /// Sends a request already passed through [`Upstream::retarget`] and waits for the head of
    /// the answer, at most `upstream.response_timeout` (connecting included). The body streams
    /// afterwards.
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.response_timeout, self.exchange(request)).await {
            Ok(answer) => answer,
            Err(_) => Err(UpstreamError::Timeout(self.response_timeout)),
        }
    }

    async fn exchange(
        &self,
        mut request: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        // A pooled connection may turn out closed before the request was written (the upstream
        // dropped it while idle, or sent an HTTP/2 GOAWAY); hyper then hands the request back
        // and it goes to another connection. Once written, a request is never sent twice.
        loop {
            let (sender, fresh) = match self.pool.take() {
                Some(sender) => (sender, false),
                None => (self.connect().await?, true),
            };
            let answer = match sender {
                Sender::Http2(mut sender) => {
                    *request.uri_mut() = self.absolute(request.uri());
                    sender.try_send_request(request).await
                }
                Sender::Http1(mut sender) => {
                    if request.uri().scheme().is_some() {
                        // Handed back by an HTTP/2 connection: HTTP/1.1 wants the origin form.
                        *request.uri_mut() = origin_form(request.uri());
                    }
                    let answer = sender.try_send_request(request).await;
                    if answer.is_ok() {
                        self.pool.put(sender);
                    }
                    answer
                }
            };
            match answer {
                Ok(response) => return Ok(response),
                Err(mut error) => match error.take_message() {
                    Some(unsent) if !fresh => request = unsent,
                    _ => return Err(UpstreamError::Failed(error.into_error())),
                },
            }
        }
    }

    /// `uri` as an absolute URI on the upstream (HTTP/2 needs scheme and authority).
    fn absolute(&self, uri: &Uri) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.target.scheme.clone());
        parts.authority = Some(self.target.authority.clone());
        parts.path_and_query = Some(path_and_query(uri));
        Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
    }

    /// Opens a connection: TCP, TLS for `https` (HTTP/2 if negotiated), the HTTP handshake, and
    /// a task driving it.
    async fn connect(&self) -> Result<Sender, UpstreamError> {
        let target = &self.target;
        let timeout = target.connect_timeout;
        let connecting = async {
            let tcp = TcpStream::connect((target.hostname.as_str(), target.port))
                .await
                .map_err(ConnectError::Tcp)?;
            let _ = tcp.set_nodelay(true);
            let tcp = TokioIo::new(tcp);
            match &target.tls {
                None => Ok((MaybeHttpsStream::Http(tcp), false)),
                Some((connector, name)) => {
                    let tls = connector
                        .connect(name.clone(), TokioIo::new(tcp))
                        .await
                        .map_err(ConnectError::Tls)?;
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    Ok((MaybeHttpsStream::Https(TokioIo::new(tls)), h2))
                }
            }
        };
        let (stream, h2) = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| UpstreamError::Connect(ConnectError::Timeout(timeout)))?
            .map_err(UpstreamError::Connect)?;
        if h2 {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(stream)
                .await
                .map_err(|e| UpstreamError::Connect(ConnectError::Http(e)))?;
            tokio::spawn(drive(connection));
            self.pool.share_http2(sender.clone());
            return Ok(Sender::Http2(sender));
        }
        let (sender, connection) = http1::handshake(stream)
            .await
            .map_err(|e| UpstreamError::Connect(ConnectError::Http(e)))?;
        tokio::spawn(drive(connection));
        Ok(Sender::Http1(sender))
    }
}

/// The path and query of `uri` (`/` when it has none).
fn path_and_query(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// `uri` in origin form (path and query only), as HTTP/1.1 sends it to an origin server.
fn origin_form(uri: &Uri) -> Uri {
    Uri::from(path_and_query(uri))
}

/// Runs one upstream connection until it closes.
async fn drive<F: std::future::Future<Output = hyper::Result<()>>>(connection: F) {
    if let Err(error) = connection.await {
        tracing::debug!(%error, "upstream connection ended with an error");
    }
}

impl Pool {
    /// A connection ready for a request: the shared HTTP/2 one, or the newest ready HTTP/1.1
    /// one. Closed and long-idle connections met on the way are dropped.
    fn take(&self) -> Option<Sender> {
        {
            let mut http2 = lock(&self.http2);
            match http2.as_ref() {
                Some(sender) if !sender.is_closed() => return Some(Sender::Http2(sender.clone())),
                Some(_) => *http2 = None,
                None => {}
            }
        }
        let now = Instant::now();
        let mut idle = lock(&self.http1);
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let entry = &idle[i];
            if entry.sender.is_closed() || self.expired(entry, now) {
                idle.remove(i);
            } else if entry.sender.is_ready() {
                return Some(Sender::Http1(idle.remove(i).sender));
            }
        }
        None
    }

    /// Hands an HTTP/1.1 connection back as soon as its request is answered; it is ready
    /// again once the answer's body has been read. Beyond `max_idle`, the oldest goes (it
    /// closes after its current exchange).
    fn put(&self, sender: http1::SendRequest<Body>) {
        if self.max_idle == 0 {
            return;
        }
        let mut idle = lock(&self.http1);
        if idle.len() >= self.max_idle {
            idle.remove(0);
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    fn share_http2(&self, sender: http2::SendRequest<Body>) {
        *lock(&self.http2) = Some(sender);
    }

    /// Ready (so not answering) and handed back longer ago than the idle timeout.
    fn expired(&self, entry: &Idle, now: Instant) -> bool {
        now.duration_since(entry.since) >= self.idle_timeout && entry.sender.is_ready()
    }

    /// Drops closed and expired connections.
    fn prune(&self) {
        let now = Instant::now();
        lock(&self.http1).retain(|entry| !entry.sender.is_closed() && !self.expired(entry, now));
        let mut http2 = lock(&self.http2);
        if http2.as_ref().is_some_and(http2::SendRequest::is_closed) {
            *http2 = None;
        }
    }

    /// Prunes the pool every half idle timeout while it exists (when built inside a runtime),
    /// so idle connections close on time even when no request comes.
    fn start_pruning(pool: &Arc<Pool>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Pool> = Arc::downgrade(pool);
        let period = (pool.idle_timeout / 2).max(Duration::from_millis(100));
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                pool.prune();
            }
        });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
