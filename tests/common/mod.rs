//! Shared test fixtures: a gateway builder on ephemeral ports, test upstreams, and clients.
#![allow(dead_code)] // each test binary uses a different part of the fixtures

pub mod commerce;
pub mod cut;
pub mod ingress;
pub mod keys;
pub mod lenient;
pub mod process;
pub mod raw;
pub mod redis;
pub mod upstream;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::Arc;

use account_gate::config::Config;
use account_gate::store::Store;
use account_gate::Server;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Builds a gateway in this process, on 127.0.0.1:0 for both listeners.
pub struct TestGateway {
    config: Config,
    config_file: Option<std::path::PathBuf>,
    /// The listener's TLS settings built when the file was loaded, used as `account-gate run` uses them.
    listener_tls: Option<Arc<rustls::ServerConfig>>,
}

/// A gateway running in this process.
pub struct RunningGateway {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The authz listener's address, when `[authz] listen` is set.
    pub authz_addr: Option<SocketAddr>,
    /// The gateway's token store, to see what it learnt.
    pub store: Arc<Store>,
    /// Reloads the configuration file, for gateways made with [`TestGateway::from_file`].
    pub reloader: Option<account_gate::reload::Reloader>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestGateway {
    /// A gateway forwarding to `upstream_url`, every other setting at its default except the
    /// listeners (ephemeral) and the shutdown delay (none).
    pub fn new(upstream_url: &str) -> Self {
        let mut config = Config::with_upstream(upstream_url.parse().expect("upstream url"));
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        config.server.admin_listen = "127.0.0.1:0".parse().expect("addr");
        config.server.shutdown_delay = Duration::ZERO;
        TestGateway {
            config,
            config_file: None,
            listener_tls: None,
        }
    }

    /// A gateway configured by the file at `path` (its listeners should be on port 0), which
    /// it reloads from.
    pub fn from_file(path: &std::path::Path) -> Self {
        let loaded = account_gate::config::load(path).expect("valid config file");
        TestGateway {
            config: loaded.config,
            config_file: Some(path.to_owned()),
            listener_tls: loaded.listener_tls,
        }
    }

    /// Changes the configuration before start.
    pub fn configure(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self
    }

    /// Binds and runs the gateway; it is ready when this returns.
    pub async fn start(self) -> RunningGateway {
        let gateway = self.spawn().await;
        let readyz = gateway.admin_url("/readyz");
        wait_until("gateway ready", || async {
            get(&readyz).await.0 == StatusCode::OK
        })
        .await;
        gateway
    }

    /// Binds and runs the gateway without waiting for it to be ready: its listeners are bound
    /// when this returns.
    pub async fn spawn(self) -> RunningGateway {
        let mut server = Server::bind_with_tls(self.config, self.listener_tls)
            .await
            .expect("gateway binds");
        if let Some(path) = self.config_file {
            server = server.with_config_file(path);
        }
        let reloader = server.reloader();
        let addr = server.local_addr();
        let admin_addr = server.admin_addr();
        let authz_addr = server.authz_addr();
        let store = server.store();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        RunningGateway {
            addr,
            admin_addr,
            authz_addr,
            store,
            reloader,
            stop: Some(stop),
            task,
        }
    }
}

impl RunningGateway {
    /// `http://ADDR` of the data plane.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://ADMIN_ADDR` of the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    /// The Prometheus text of the admin listener.
    pub async fn metrics(&self) -> String {
        let (_, body) = get(&self.admin_url("/metrics")).await;
        String::from_utf8_lossy(&body).into_owned()
    }

    /// The value of one sample of the admin listener's scrape, `name` with its labels as
    /// exported (`account_gate_connections_open{listener="data"}`).
    pub async fn sample(&self, name: &str) -> f64 {
        sample(&self.metrics().await, name)
    }

    /// Sends the shutdown signal without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Signals shutdown and waits for the gateway to finish.
    pub async fn shutdown(mut self) {
        self.signal_shutdown();
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("gateway stops in time")
            .expect("gateway task");
    }

    /// Waits for a gateway already told to stop.
    pub async fn join(mut self) {
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("gateway stops in time")
            .expect("gateway task");
    }
}

/// An HTTP/1.1 client (fresh pool).
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An h2c (prior knowledge) client.
pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends `request` with a fresh HTTP/1.1 client and collects the answer.
pub async fn send(request: Request<Full<Bytes>>) -> (Response<()>, Bytes) {
    collect(client().request(request).await.expect("request")).await
}

/// Collects a response's body.
pub async fn collect(response: Response<hyper::body::Incoming>) -> (Response<()>, Bytes) {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (Response::from_parts(parts, ()), body)
}

/// `GET url`: the status and body.
pub async fn get(url: &str) -> (StatusCode, Bytes) {
    let request = Request::get(url).body(Full::default()).expect("request");
    match client().request(request).await {
        Ok(response) => {
            let (parts, body) = collect(response).await;
            (parts.status(), body)
        }
        Err(_) => (StatusCode::from_u16(599).expect("status"), Bytes::new()),
    }
}

/// The value of the sample `name` (with its labels, as exported) in a scrape.
pub fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} not exported"))
        .parse()
        .expect("number")
}

/// The JSON body of an answer.
pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("JSON body")
}

/// Polls `condition` every 10 ms until it holds, failing after 10 s.
pub async fn wait_until<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually(what, Duration::from_secs(10), condition).await
}

/// Polls `condition` every 10 ms until it holds, failing after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every `*.toml` case file in `dir`, parsed, sorted by file name.
pub fn load_corpus<T: serde::de::DeserializeOwned>(dir: &str) -> Vec<(String, T)> {
    let mut cases: Vec<(String, T)> = std::fs::read_dir(dir)
        .expect("corpus directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .map(|path| {
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path).expect("read case");
            let case =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: bad case file: {e}"));
            (name, case)
        })
        .collect();
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    cases
}
