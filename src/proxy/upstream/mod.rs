//! The forwarding client: a pool of connections to the configured upstream, over plain TCP or
//! rustls (HTTP/2 when a TLS upstream offers it), with connect and response-head timeouts.
//!
//! Why not hyper-util's pooled client: it serves any number of hosts, so every request hashes a
//! pool key, locks a map, and spawns a task to hand the connection back once its body is read —
//! about a sixth of the gateway's own work per proxied request (callgrind, `benches/load`). One
//! upstream needs one list ([`pool`]). At most `upstream.max_connections` are open; a request
//! that finds none free waits for one up to `connect_timeout`, then gets 503.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsConnector;

use super::Body;
use crate::config::UpstreamConfig;
use pool::{Opening, Pool, Sender};

mod pool;

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
    /// `upstream.max_connections` were open and none came free within `connect_timeout`.
    #[error("all {0} upstream connections stayed busy")]
    Saturated(usize),
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
    /// The `upstream_errors_total{kind}` label, also the upstream span's `error.type`.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Failed(_) => "failed",
        }
    }

    /// The JSON:API `code`.
    pub fn code(&self) -> &'static str {
        match self {
            UpstreamError::Connect(ConnectError::Saturated(_)) => "overloaded",
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
    /// `upstream.body_timeout`: the longest pause in a forwarded body.
    body_timeout: Duration,
    /// A pooled HTTP/1.1 connection unused for this long may be closed by the upstream just as
    /// a request goes out on it; a safe request sent on one is kept for a second try.
    replay_after_idle: Duration,
}

/// Default [`Upstream::replay_after_idle`]: upstreams close idle connections after seconds, not
/// milliseconds, so connections reused under load never pay for the copy.
const REPLAY_AFTER_IDLE: Duration = Duration::from_secs(1);

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

/// How often a request waiting for a busy pool looks for a connection that came free: hyper
/// says when a connection closes, not when an answer has been read.
const SATURATED_POLL: Duration = Duration::from_millis(2);

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
        let pool = Pool::new(config);
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
            body_timeout: config.body_timeout,
            replay_after_idle: REPLAY_AFTER_IDLE,
        })
    }

    /// The host name (or address) and port requests are sent to.
    pub fn address(&self) -> (&str, u16) {
        (&self.target.hostname, self.target.port)
    }

    /// The longest pause allowed in a body forwarded either way (`upstream.body_timeout`).
    pub fn body_timeout(&self) -> Duration {
        self.body_timeout
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
    /// the answer, at most `upstream.response_timeout` (connecting included) from `sent`, the
    /// caller's reading of the clock as it sends. The body streams afterwards. With the answer
    /// comes the moment its head arrived, so that the caller need not read the clock again.
    pub async fn send(
        &self,
        request: Request<Body>,
        sent: Instant,
    ) -> Result<(Response<Incoming>, Instant), UpstreamError> {
        self.exchange(request, sent, later(sent, self.response_timeout))
            .await
    }

    /// Each step that waits (for a connection, for an answer's head) is bounded by `deadline`.
    async fn exchange(
        &self,
        mut request: Request<Body>,
        sent: Instant,
        deadline: tokio::time::Instant,
    ) -> Result<(Response<Incoming>, Instant), UpstreamError> {
        let timed_out = || UpstreamError::Timeout(self.response_timeout);
        // A pooled connection may turn out closed before the request was written (the upstream
        // dropped it while idle, or sent an HTTP/2 GOAWAY); hyper then hands the request back
        // and it goes to another connection. A written request is sent again only when it is
        // safe (GET, HEAD, OPTIONS without a body) and went out on a connection that had been
        // idle, which the upstream may have been closing at that moment (the keep-alive race
        // nginx also retries); at most once.
        let mut replayed = false;
        let mut now = sent;
        loop {
            let (sender, fresh, idle) = match self.pool.take(now) {
                Some((sender, idle)) => (sender, false, idle),
                // Boxed: connecting (TCP, TLS, HTTP/2 handshake) is a 5 KiB future that would
                // otherwise be part of, and copied with, every request's future.
                None => match tokio::time::timeout_at(deadline, Box::pin(self.acquire())).await {
                    Ok(acquired) => acquired?,
                    Err(_) => return Err(timed_out()),
                },
            };
            let replay = (!fresh && !replayed && idle >= self.replay_after_idle)
                .then(|| safe_copy(&request))
                .flatten();
            let answer = match sender {
                Sender::Http2(mut sender, stream) => {
                    *request.uri_mut() = self.absolute(request.uri());
                    let sending = sender.try_send_request(request);
                    let Ok(answer) = tokio::time::timeout_at(deadline, sending).await else {
                        return Err(timed_out());
                    };
                    drop(stream);
                    answer.map(|response| (response, Instant::now()))
                }
                Sender::Http1(mut sender, thread, timer) => {
                    if request.uri().scheme().is_some() {
                        // Handed back by an HTTP/2 connection: HTTP/1.1 wants the origin form.
                        *request.uri_mut() = origin_form(request.uri());
                    }
                    // The connection's own timer, moved to this request's deadline. A deadline
                    // later than the one it holds costs tokio one atomic exchange, where a timer
                    // per request was put into the timer wheel and taken out again, each under
                    // the wheel's lock.
                    let mut timer = match timer {
                        Some(mut timer) => {
                            timer.as_mut().reset(deadline);
                            timer
                        }
                        None => Box::pin(tokio::time::sleep_until(deadline)),
                    };
                    let answer = tokio::select! {
                        biased;
                        answer = sender.try_send_request(request) => answer,
                        () = timer.as_mut() => return Err(timed_out()),
                    };
                    answer.map(|response| {
                        let arrived = Instant::now();
                        self.pool.put(sender, thread, timer, arrived);
                        (response, arrived)
                    })
                }
            };
            match answer {
                Ok(answered) => return Ok(answered),
                Err(mut error) => match (error.take_message(), replay) {
                    (Some(unsent), _) if !fresh => request = unsent,
                    (_, Some(copy)) => {
                        tracing::debug!(error = %error.error(), idle_ms = idle.as_millis(),
                            "idle upstream connection failed; sending the safe request again");
                        replayed = true;
                        request = copy;
                    }
                    _ => return Err(UpstreamError::Failed(error.into_error())),
                },
            }
            now = Instant::now();
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

    /// A connection when the pool has none ready: a new one while fewer than
    /// `upstream.max_connections` are open, else the first pooled one to come free, waiting at
    /// most `connect_timeout`. With whether it is new and how long it sat idle.
    async fn acquire(&self) -> Result<(Sender, bool, Duration), UpstreamError> {
        let deadline = tokio::time::Instant::now() + self.target.connect_timeout;
        loop {
            // An HTTP/2 upstream needs one new connection for a burst, not one per request:
            // while one is being opened, the others wait for it.
            let opener = Opening::claim(&self.pool.h2_opening);
            let h2_opening = opener.is_none() && self.pool.speaks_h2.load(Ordering::Relaxed);
            if let Some((sender, idle)) = self.pool.take(Instant::now()) {
                return Ok((sender, false, idle));
            }
            if !h2_opening {
                if let Ok(permit) = self.pool.slots.clone().try_acquire_owned() {
                    return Ok((self.connect(permit).await?, true, Duration::ZERO));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let saturated = ConnectError::Saturated(self.pool.max_connections);
                return Err(UpstreamError::Connect(saturated));
            }
            if h2_opening {
                tokio::time::sleep(SATURATED_POLL).await;
                continue;
            }
            tokio::select! {
                permit = self.pool.slots.clone().acquire_owned() => if let Ok(permit) = permit {
                    return Ok((self.connect(permit).await?, true, Duration::ZERO));
                },
                () = tokio::time::sleep(SATURATED_POLL) => {}
            }
        }
    }

    /// Opens a connection: TCP, TLS for `https` (HTTP/2 if negotiated), the HTTP handshake, and
    /// a task driving it, which holds `permit` until the connection closes.
    async fn connect(&self, permit: OwnedSemaphorePermit) -> Result<Sender, UpstreamError> {
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
            tokio::spawn(drive(connection, permit));
            self.pool.speaks_h2.store(true, Ordering::Relaxed);
            return Ok(self.pool.share_http2(sender));
        }
        let (sender, connection) = http1::handshake(stream)
            .await
            .map_err(|e| UpstreamError::Connect(ConnectError::Http(e)))?;
        tokio::spawn(drive(connection, permit));
        Ok(Sender::Http1(sender, super::serving_thread(), None))
    }
}

/// A copy of `request` to send again if it is safe to: a GET, HEAD or OPTIONS with no body.
fn safe_copy(request: &Request<Body>) -> Option<Request<Body>> {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !safe || !http_body::Body::is_end_stream(request.body()) {
        return None;
    }
    let mut copy = Request::new(super::full_body(bytes::Bytes::new()));
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// The path and query of `uri` (`/` when it has none).
fn path_and_query(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// `after` past `from`, as a tokio deadline; a duration too long to add is as good as never.
fn later(from: Instant, after: Duration) -> tokio::time::Instant {
    let never = Duration::from_secs(86_400 * 365 * 30);
    let at = from
        .checked_add(after)
        .unwrap_or_else(|| from + never.min(after));
    tokio::time::Instant::from_std(at)
}

/// `uri` in origin form (path and query only), as HTTP/1.1 sends it to an origin server.
fn origin_form(uri: &Uri) -> Uri {
    Uri::from(path_and_query(uri))
}

/// Runs one upstream connection until it closes, then frees its place.
async fn drive<F: std::future::Future<Output = hyper::Result<()>>>(
    connection: F,
    permit: OwnedSemaphorePermit,
) {
    if let Err(error) = connection.await {
        tracing::debug!(%error, "upstream connection ended with an error");
    }
    drop(permit);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use http::StatusCode;

    use super::*;
    use crate::sync::lock;
    use std::time::Instant;

    /// Reads one request head (the tests send no bodies); `false` at end of stream.
    async fn read_head(stream: &mut TcpStream) -> bool {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return false,
            }
        }
        true
    }

    /// An upstream on a free port that hands each connection it accepts to a task running
    /// `serve`. Returns its URL and the count of connections accepted.
    async fn upstream_serving<F, S>(serve: F) -> (String, Arc<AtomicUsize>)
    where
        F: Fn(TcpStream) -> S + Send + 'static,
        S: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream));
            }
        });
        (url, accepted)
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// An upstream that answers the first request of each connection and keeps it open, then
    /// reads the next request and closes without a word: the upstream side of the keep-alive
    /// race.
    async fn closes_after_one_answer() -> (String, Arc<AtomicUsize>) {
        upstream_serving(|mut stream| async move {
            if read_head(&mut stream).await {
                let _ = stream.write_all(OK).await;
                read_head(&mut stream).await;
            }
        })
        .await
    }

    /// An upstream that gives every request `answer`, keeping its connections open.
    async fn answering(answer: &'static [u8]) -> (String, Arc<AtomicUsize>) {
        upstream_serving(move |mut stream| async move {
            while read_head(&mut stream).await {
                if stream.write_all(answer).await.is_err() {
                    return;
                }
            }
        })
        .await
    }

    fn upstream(url: &str) -> Upstream {
        let mut upstream = Upstream::new(&upstream_config(url)).expect("upstream");
        // Every pooled connection counts as idle long enough.
        upstream.replay_after_idle = Duration::ZERO;
        upstream
    }

    fn upstream_config(url: &str) -> UpstreamConfig {
        UpstreamConfig {
            url: url.parse().expect("url"),
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle_per_host: 8,
            max_connections: 16,
            body_timeout: Duration::from_secs(5),
        }
    }

    /// The answer to a bodiless `method` request, its body still to be read.
    async fn answer(
        upstream: &Upstream,
        method: Method,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut request = Request::new(super::super::full_body(bytes::Bytes::new()));
        *request.method_mut() = method;
        *request.uri_mut() = Uri::from_static("/v2/carts");
        upstream.retarget(&mut request);
        Ok(upstream.send(request, Instant::now()).await?.0)
    }

    async fn send(upstream: &Upstream, method: Method) -> Result<StatusCode, UpstreamError> {
        let response = answer(upstream, method).await?;
        let status = response.status();
        // Read the answer whole, and wait for hyper to mark its connection ready again, so the
        // next request takes it from the pool.
        let _ = response.into_body().collect().await;
        ready_again(upstream).await;
        Ok(status)
    }

    /// Waits (at most 5 s) until a pooled connection is ready for another request.
    async fn ready_again(upstream: &Upstream) {
        let ready = || {
            lock(&upstream.pool.http1)
                .iter()
                .any(|entry| entry.sender.is_ready())
        };
        eventually(ready).await;
    }

    /// Whether `done` holds within 5 s, asked every millisecond.
    async fn eventually(mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }

    #[tokio::test]
    async fn a_safe_request_on_a_connection_the_upstream_is_closing_is_sent_once_more() {
        let (url, accepted) = closes_after_one_answer().await;
        let upstream = upstream(&url);
        assert_eq!(
            send(&upstream, Method::GET).await.ok(),
            Some(StatusCode::OK)
        );
        // Goes out on the pooled connection, which the upstream closes: sent again on a new one.
        assert_eq!(
            send(&upstream, Method::GET).await.ok(),
            Some(StatusCode::OK)
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_pooled_connection_times_out_at_its_new_request_deadline() {
        // Answers the first request, then reads the second and stays silent.
        let (url, _) = upstream_serving(|mut stream| async move {
            if read_head(&mut stream).await {
                let _ = stream.write_all(OK).await;
                read_head(&mut stream).await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        })
        .await;
        let mut upstream = upstream(&url);
        let timeout = Duration::from_millis(300);
        upstream.response_timeout = timeout;
        assert_eq!(
            send(&upstream, Method::GET).await.ok(),
            Some(StatusCode::OK)
        );
        // The connection's timer, still set for the first request's deadline, is moved on to
        // the second's: it must fire then, neither at the first's nor never.
        tokio::time::sleep(timeout / 2).await;
        let started = Instant::now();
        let failed = send(&upstream, Method::GET).await;
        let took = started.elapsed();
        assert!(
            matches!(failed, Err(UpstreamError::Timeout(_))),
            "{failed:?}"
        );
        assert!(took >= timeout && took < timeout * 4, "{took:?}");
    }

    #[tokio::test]
    async fn an_unsafe_request_is_never_sent_twice() {
        let (url, accepted) = closes_after_one_answer().await;
        let upstream = upstream(&url);
        assert_eq!(
            send(&upstream, Method::GET).await.ok(),
            Some(StatusCode::OK)
        );
        let failed = send(&upstream, Method::POST).await;
        assert!(
            matches!(failed, Err(UpstreamError::Failed(_))),
            "{failed:?}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_without_a_body_leaves_its_connection_for_the_next_request() {
        // A 204 has no body to read: the server may drop it unpolled, and its connection must
        // still be ready for the next request.
        let (url, accepted) = answering(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let upstream = upstream(&url);
        for _ in 0..3 {
            let response = answer(&upstream, Method::GET).await.expect("answer");
            assert_eq!(response.status(), StatusCode::NO_CONTENT);
            assert!(http_body::Body::is_end_stream(response.body()));
            drop(response);
            ready_again(&upstream).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_given_up_halfway_closes_its_connection_and_frees_its_place() {
        // Declares more than it sends: the body never ends.
        let cut = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf";
        let (url, accepted) = answering(cut).await;
        let mut upstream = upstream(&url);
        upstream.pool = Pool::new(&UpstreamConfig {
            max_connections: 1,
            ..upstream_config(&url)
        });
        for round in 1..=2 {
            let response = answer(&upstream, Method::GET).await.expect("answer");
            let mut body = response.into_body();
            let first = body.frame().await.expect("a frame").expect("data");
            assert_eq!(first.into_data().ok().as_deref(), Some(&b"half"[..]));
            // The client goes away: the connection, with the rest of its answer still on the
            // way, must not be reused, and its one place must come free for the next request.
            drop(body);
            assert_eq!(accepted.load(Ordering::SeqCst), round);
            let freed = || upstream.pool.slots.available_permits() > 0;
            assert!(eventually(freed).await, "the connection kept its place");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(upstream.pool.slots.available_permits(), 1);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_upstream_closes_leaves_the_pool_and_frees_its_place() {
        // Answers one request per connection, then closes it when told, while the connection
        // sits in the pool: the pool must let it go, and its place with it.
        let (close, closing) = tokio::sync::watch::channel(false);
        let (url, accepted) = upstream_serving(move |mut stream| {
            let mut closing = closing.clone();
            async move {
                if read_head(&mut stream).await {
                    let _ = stream.write_all(OK).await;
                    let _ = closing.wait_for(|close| *close).await;
                }
            }
        })
        .await;
        let upstream = upstream(&url);
        assert_eq!(
            send(&upstream, Method::GET).await.ok(),
            Some(StatusCode::OK)
        );
        assert_eq!(lock(&upstream.pool.http1).len(), 1);
        let _ = close.send(true);
        let let_go = || {
            upstream.pool.prune();
            lock(&upstream.pool.http1).is_empty()
        };
        assert!(
            eventually(let_go).await,
            "the closed connection stayed in the pool"
        );
        // Its place is free again, and a request that may not be sent twice goes out whole on
        // a new connection.
        assert_eq!(upstream.pool.slots.available_permits(), 16);
        let posted = answer(&upstream, Method::POST).await.map(|a| a.status());
        assert_eq!(posted.ok(), Some(StatusCode::OK));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
