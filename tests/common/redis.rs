//! A `redis-server` of the test's own, on a free loopback port, that can be stopped and restarted
//! on the same port. Never a shared Redis: every test gets a fresh, empty, unpersisted server.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use account_gate::config::{Config, StoreBackend, UnknownTokens};

/// A running (or stopped) test Redis.
pub struct TestRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    cluster: bool,
}

impl TestRedis {
    /// Starts a fresh server on a free port and waits until it answers.
    pub async fn start() -> Self {
        Self::launch(false).await
    }

    /// Starts a fresh server, or `None` when `redis-server` is not installed: the test then skips,
    /// loudly. In CI (`CI=true`, where `.ci/run` installs it) a missing server fails instead: a
    /// test that silently does not run there is no test.
    pub async fn try_start() -> Option<Self> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !installed {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "redis-server is not installed; in CI it must be (Debian: apt-get install redis-server)"
            );
            eprintln!("SKIPPED: redis-server not installed (Debian: apt-get install redis-server)");
            return None;
        }
        Some(Self::start().await)
    }

    /// Starts a one-node Redis Cluster (every slot on this node) and waits until it is ok.
    pub async fn start_cluster() -> Self {
        let redis = Self::launch(true).await;
        let mut conn = redis.connection().await;
        let _: () = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(0)
            .arg(16383)
            .query_async(&mut conn)
            .await
            .expect("CLUSTER ADDSLOTSRANGE");
        super::wait_until("cluster state ok", || {
            let mut conn = conn.clone();
            async move {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
            }
        })
        .await;
        redis
    }

    async fn launch(cluster: bool) -> Self {
        // Bind and release: the kernel does not hand the port out again at once.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut redis = TestRedis {
            port,
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
            cluster,
        };
        redis.restart().await;
        redis
    }

    /// The server's address (for a proxy in front of it).
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on its port (empty: nothing is persisted) and waits until it
    /// answers `PING`.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.cluster {
            command.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
        }
        let child = command
            .spawn()
            .expect("redis-server (Debian package redis-server) is installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                    if redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .is_ok()
                    {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server (as a crash or a partition would look: connections reset).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A connection for the test itself to look at keys.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }

    /// Points `config` at this Redis, in the strict shared-store setup: `issued` tokens,
    /// `unknown = "reject"`.
    pub fn configure(&self, config: &mut Config) {
        config.store.backend = StoreBackend::Redis;
        config.store.redis_url = Some(self.url());
        config.store.redis_cluster = self.cluster;
        config.tokens.unknown = UnknownTokens::Reject;
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
