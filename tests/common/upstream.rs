//! A purpose-built upstream for tests: echoes what it receives and records every request, over
//! plain HTTP or TLS with a CA made for the test.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub version: Version,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A running test upstream. Dropping it stops it.
pub struct TestUpstream {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub url: String,
    /// The CA (PEM file) that signed an https upstream's certificate.
    pub ca_file: Option<PathBuf>,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
    _dir: Option<tempfile::TempDir>,
}

impl TestUpstream {
    /// An echoing upstream over plain HTTP.
    pub async fn http() -> Self {
        Self::start(None).await
    }

    /// An echoing upstream over TLS, with a certificate for 127.0.0.1 signed by a fresh CA.
    pub async fn https() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (acceptor, ca_pem) = test_tls();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem).expect("write CA");
        let mut upstream = Self::start(Some(acceptor)).await;
        upstream.url = format!("https://{}", upstream.addr);
        upstream.ca_file = Some(ca_file);
        upstream._dir = Some(dir);
        upstream
    }

    /// An echoing upstream over TLS with the given acceptor (a certificate made to be wrong).
    pub async fn https_with(acceptor: tokio_rustls::TlsAcceptor) -> Self {
        let mut upstream = Self::start(Some(acceptor)).await;
        upstream.url = format!("https://{}", upstream.addr);
        upstream
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// How many connections were accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// How many connections are open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// How many requests were received.
    pub fn calls(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }

    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let recorder = seen.clone();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted_count = connections.clone();
        let open = Arc::new(AtomicUsize::new(0));
        let open_count = open.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    _ = &mut stopped => return,
                };
                accepted_count.fetch_add(1, Ordering::SeqCst);
                open_count.fetch_add(1, Ordering::SeqCst);
                let open_count = open_count.clone();
                let recorder = recorder.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| echo(req, recorder.clone()));
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                    open_count.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        TestUpstream {
            addr,
            url: format!("http://{addr}"),
            ca_file: None,
            seen,
            connections,
            open,
            _stop: stop,
            _dir: None,
        }
    }
}

/// Echo service. `/slow?ms=N` waits N ms first; `/hop` answers with hop-by-hop headers that a
/// proxy must strip; every answer says whether the request came chunked.
async fn echo(
    request: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let chunked = parts
        .headers
        .get("transfer-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    seen.lock().expect("lock").push(Seen {
        method: parts.method.clone(),
        version: parts.version,
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    if parts.uri.path() == "/slow" {
        let ms = parts
            .uri
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut response = Response::builder()
        .status(200)
        .header("x-upstream-chunked", if chunked { "yes" } else { "no" })
        .header("x-upstream-method", parts.method.as_str());
    if parts.uri.path() == "/hop" {
        response = response
            .header("connection", "x-hop-secret")
            .header("x-hop-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("x-end-to-end", "1");
    }
    Ok(response.body(Full::new(body)).expect("response"))
}

/// A TLS acceptor for 127.0.0.1 and the PEM of the CA that signed it.
pub fn test_tls() -> (tokio_rustls::TlsAcceptor, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf_params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("leaf params");
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf cert");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls_pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).expect("key");
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca.pem())
}

/// A loopback address where nothing listens: connecting to it is refused.
pub async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

/// A loopback server that accepts connections and never answers.
pub async fn silent_upstream() -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, mut stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => if let Ok((s, _)) = accepted { held.push(s) },
                _ = &mut stopped => return,
            }
        }
    });
    (addr, stop)
}
