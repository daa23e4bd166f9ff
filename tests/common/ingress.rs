//! Real ingresses for tests: nginx and Caddy, started from the configurations shipped under
//! `deploy/ingress/` on free loopback ports, each in a temporary directory of its own; and an
//! upstream that records what the ingress sent it and forwards it to the emulator.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::oneshot;

/// The path of `name` when it is installed (on `PATH` or in one of `also`), else `None`: the
/// test then skips, loudly. In CI (`CI=true`, where `.ci/run` installs it) a missing tool fails
/// instead: a test that silently does not run there is no test.
pub fn tool(name: &str, also: &[&str], package: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let found = on_path
        .iter()
        .map(|dir| dir.join(name))
        .chain(also.iter().map(PathBuf::from))
        .find(|path| path.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} is not installed; in CI it must be (Debian: apt-get install {package})"
        );
        eprintln!("SKIPPED: {name} not installed (Debian: apt-get install {package})");
    }
    found
}

/// A loopback port nothing listens on (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The shipped configuration `deploy/ingress/<path>`, with each `(from, to)` replaced; every
/// `from` must occur, so a changed file cannot leave the test testing something else.
pub fn shipped(path: &str, replacements: &[(&str, &str)]) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/ingress")
        .join(path);
    let mut text = std::fs::read_to_string(&file).expect("shipped ingress configuration");
    for (from, to) in replacements {
        assert!(text.contains(from), "{path} no longer contains {from:?}");
        text = text.replace(from, to);
    }
    text
}

/// An ingress process of the test's own; killed on drop.
pub struct Ingress {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Ingress {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// nginx in the foreground, one process, everything it writes under a temporary directory,
    /// serving `server` (a `server {}` block and its upstreams, as shipped) on `port`.
    pub async fn nginx(binary: &Path, server: &str, port: u16) -> Ingress {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        for temp in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(root.join("temp").join(temp)).expect("temp dirs");
        }
        std::fs::write(root.join("account-gate.conf"), server).expect("server block");
        let log = root.join("error.log");
        let p = root.display();
        // No master process: no worker switching to another user, whoever runs the tests.
        let main = format!(
            "daemon off;\nmaster_process off;\npid {p}/nginx.pid;\nerror_log {p}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log {p}/access.log;\n\
               client_body_temp_path {p}/temp/body;\n  proxy_temp_path {p}/temp/proxy;\n\
               fastcgi_temp_path {p}/temp/fastcgi;\n  uwsgi_temp_path {p}/temp/uwsgi;\n\
               scgi_temp_path {p}/temp/scgi;\n  include {p}/account-gate.conf;\n}}\n"
        );
        std::fs::write(root.join("nginx.conf"), main).expect("nginx.conf");
        let child = Command::new(binary)
            .arg("-p")
            .arg(root)
            .arg("-c")
            .arg(root.join("nginx.conf"))
            .arg("-e")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut ingress = Ingress {
            port,
            child,
            dir,
            log,
        };
        ingress.wait_listening().await;
        ingress
    }

    /// Caddy running `caddyfile` (as shipped, its site address replaced), with no admin
    /// endpoint, no automatic HTTPS, and its data and configuration under a temporary directory.
    pub async fn caddy(binary: &Path, caddyfile: &str, port: u16) -> Ingress {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let text = format!("{{\n\tadmin off\n\tauto_https off\n}}\n\n{caddyfile}");
        std::fs::write(root.join("Caddyfile"), text).expect("Caddyfile");
        let log = root.join("caddy.log");
        let output = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(root.join("Caddyfile"))
            .env("HOME", root)
            .env("XDG_DATA_HOME", root.join("data"))
            .env("XDG_CONFIG_HOME", root.join("config"))
            .stdout(Stdio::null())
            .stderr(output)
            .spawn()
            .expect("start caddy");
        let mut ingress = Ingress {
            port,
            child,
            dir,
            log,
        };
        ingress.wait_listening().await;
        ingress
    }

    /// What the ingress logged, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the ingress exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the ingress is not listening after 20 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Ingress {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

/// One request as the upstream behind the ingress received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
}

/// An upstream behind the ingress: records each request, then forwards it to `target` (the
/// emulator) and answers what that answered.
pub struct Recorder {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    _stop: oneshot::Sender<()>,
}

impl Recorder {
    pub async fn start(target: &str) -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let target: Uri = target.parse().expect("target");
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let record = received.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    _ = &mut stopped => return,
                };
                let (record, client, target) = (record.clone(), client.clone(), target.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        forward(request, record.clone(), client.clone(), target.clone())
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Recorder {
            addr,
            received,
            _stop: stop,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// The last request received on `path`.
    pub fn last(&self, path: &str) -> Received {
        self.received()
            .into_iter()
            .rev()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("nothing received on {path}"))
    }
}

async fn forward(
    request: Request<Incoming>,
    record: Arc<Mutex<Vec<Received>>>,
    client: Client<HttpConnector, Full<Bytes>>,
    target: Uri,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (mut parts, body) = request.into_parts();
    record.lock().expect("lock").push(Received {
        path: parts.uri.path().to_owned(),
        headers: parts.headers.clone(),
    });
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let authority = target.authority().map_or("", |a| a.as_str());
    parts.uri = format!("http://{authority}{path_and_query}")
        .parse()
        .expect("uri");
    parts.headers.remove(http::header::HOST);
    let answer = match client
        .request(Request::from_parts(parts, Full::new(body)))
        .await
    {
        Ok(answer) => answer,
        Err(_) => {
            let mut failed = Response::new(Full::new(Bytes::new()));
            *failed.status_mut() = http::StatusCode::BAD_GATEWAY;
            return Ok(failed);
        }
    };
    let (parts, body) = answer.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok(Response::from_parts(parts, Full::new(body)))
}
