//! Start-up, reload and shutdown of a whole gateway: bind both listeners, serve the current
//! [`Generation`], swap in a new one on reload, and on the shutdown signal turn unready, keep
//! accepting for `shutdown_delay`, then drain within `shutdown_grace`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{Admin, Health};
use crate::config::{Config, SecretError, StoreBackend};
use crate::generation::{resolve_secret, Generation, Shared};
use crate::metrics::Metrics;
use crate::proxy::{self, ListenerSettings, UpstreamSetupError};
use crate::reload::Reloader;
use crate::store::{
    MemoryStore, MemoryStoreOptions, RedisSetupError, RedisStore, RedisStoreOptions, Store,
};
use crate::token::KeyError;

/// Why the gateway could not start (or a configuration could not be put in force).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The upstream client could not be built (CA file, TLS).
    #[error(transparent)]
    Upstream(#[from] UpstreamSetupError),
    /// The metrics registry refused a metric (a bug: names clash).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A secret the configuration references is missing.
    #[error("{key}: {source}")]
    Secret {
        key: String,
        #[source]
        source: SecretError,
    },
    /// A key file could not be read.
    #[error("{key} {path}: {source}")]
    KeyFile {
        key: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The signature keys are unusable.
    #[error("tokens.signature: {0}")]
    Keys(#[from] KeyError),
    /// The Redis client could not be set up.
    #[error(transparent)]
    Store(#[from] RedisSetupError),
    /// The data listener's certificate, key or client CA is unusable.
    #[error(transparent)]
    ListenerTls(#[from] crate::tls::ListenerTlsError),
}

/// A gateway with its listeners bound, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    admin_listener: TcpListener,
    /// The authz listener, when `[authz] listen` is set.
    authz_listener: Option<TcpListener>,
    shared: Shared,
    /// The generation new requests are handled by; a reload swaps it.
    current: Arc<ArcSwap<Generation>>,
    health: Arc<Health>,
    /// Where to reload the configuration from (SIGHUP, file changes).
    config_path: Option<PathBuf>,
}

impl Server {
    /// Binds the data and admin listeners and builds the first generation.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        Self::bind_with_tls(config, None).await
    }

    /// As [`bind`](Server::bind), serving `listener_tls` on the data listener: the settings
    /// built when the configuration was loaded ([`Loaded::listener_tls`](crate::config::Loaded)).
    /// `None` builds them from `[server.tls]`.
    pub async fn bind_with_tls(
        config: Config,
        listener_tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new()?);
        let listener = bind(config.server.listen).await?;
        let admin_listener = bind(config.server.admin_listen).await?;
        let authz_listener = match config.authz.listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let store = Arc::new(build_store(&config, &metrics)?);
        let listener_tls = match (&config.server.tls, listener_tls) {
            (None, _) => None,
            (Some(_), Some(built)) => Some(Arc::new(ArcSwap::new(built))),
            (Some(tls), None) => Some(Arc::new(ArcSwap::from_pointee(crate::tls::server_config(
                tls,
            )?))),
        };
        let shared = Shared {
            metrics,
            store,
            listener_tls,
        };
        let generation = Generation::build(config, &shared, None).await?;
        Ok(Server {
            listener,
            admin_listener,
            authz_listener,
            shared,
            current: Arc::new(ArcSwap::from_pointee(generation)),
            health: Arc::new(Health::default()),
            config_path: None,
        })
    }

    /// Reloads from `path` (on [`Reloader::reload`], SIGHUP, and when the file changes).
    pub fn with_config_file(mut self, path: PathBuf) -> Self {
        self.config_path = Some(path);
        self
    }

    /// A handle that reloads the configuration file; `None` without one.
    pub fn reloader(&self) -> Option<Reloader> {
        let path = self.config_path.clone()?;
        Some(Reloader::new(
            path,
            self.shared.clone(),
            self.current.clone(),
        ))
    }

    /// The token store the gateway records into (for tests and embedding).
    pub fn store(&self) -> Arc<Store> {
        self.shared.store.clone()
    }

    /// The data-plane address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.current.load().config.server.listen)
    }

    /// The admin address actually bound.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.current.load().config.server.admin_listen)
    }

    /// The authz listener's address actually bound, when there is one.
    pub fn authz_addr(&self) -> Option<SocketAddr> {
        let listener = self.authz_listener.as_ref()?;
        listener
            .local_addr()
            .ok()
            .or(self.current.load().config.authz.listen)
    }

    /// Serves until `shutdown` completes, then shuts down gracefully and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        // Listener settings cannot change without a restart; they come from the first config.
        let server = self.current.load().config.server.clone();
        let settings = ListenerSettings {
            max_connections: server.max_connections,
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            // The answer toward the client is a forwarded body like any other.
            send_timeout: self.current.load().config.upstream.body_timeout,
            max_header_bytes: server.max_header_bytes,
            http2: server.http2.clone(),
            shutdown_grace: server.shutdown_grace,
            tls: self.shared.listener_tls.clone(),
        };
        let (listen, admin_listen) = (self.local_addr(), self.admin_addr());
        let authz_listen = self.authz_addr();
        let reloader = self.reloader();
        let (stop_data, data_stopped) = watch::channel(false);
        let (stop_admin, admin_stopped) = watch::channel(false);

        let current = self.current.clone();
        let data_plane = tokio::spawn(proxy::serve(
            self.listener,
            settings.clone(),
            self.shared.metrics.listener("data"),
            move |request, peer| current.load().gateway.clone().handle(request, peer),
            stopped(data_stopped.clone()),
        ));
        // The authz listener has the data listener's limits and deadlines, speaks plain HTTP
        // (the ingress calls it on a private network), and stops with the data listener.
        let authz_plane = self.authz_listener.map(|listener| {
            let current = self.current.clone();
            tokio::spawn(proxy::serve(
                listener,
                ListenerSettings {
                    tls: None,
                    ..settings.clone()
                },
                self.shared.metrics.listener("authz"),
                move |request, peer| current.load().decisions.clone().handle(request, peer),
                stopped(data_stopped.clone()),
            ))
        });
        let admin = Arc::new(Admin {
            store: self.shared.store.clone(),
            metrics: self.shared.metrics.clone(),
            health: self.health.clone(),
            current: self.current.clone(),
        });
        let admin_plane = tokio::spawn(proxy::serve(
            self.admin_listener,
            admin_settings(&settings),
            self.shared.metrics.listener("admin"),
            move |request, _peer| admin.clone().handle(request),
            stopped(admin_stopped),
        ));
        let watcher = reloader.map(|reloader| {
            tokio::spawn(reloader.watch(server.config_poll_interval, stopped(data_stopped)))
        });
        warn_if_out_of_files(
            &settings,
            self.current.load().config.upstream.max_connections,
            authz_listen.is_some(),
        );
        self.health.set_ready();
        tracing::info!(
            listen = %listen,
            admin = %admin_listen,
            authz = authz_listen.map(|addr| addr.to_string()),
            upstream = %self.current.load().config.upstream.url,
            "account-gate ready"
        );

        shutdown.await;
        self.health.set_draining();
        tracing::info!(
            delay = ?server.shutdown_delay,
            "shutdown requested; readiness is now false, still accepting"
        );
        tokio::time::sleep(server.shutdown_delay).await;
        let _ = stop_data.send(true);
        if let Err(error) = data_plane.await {
            tracing::error!(%error, "data plane task failed");
        }
        if let Some(authz_plane) = authz_plane {
            if let Err(error) = authz_plane.await {
                tracing::error!(%error, "authz listener task failed");
            }
        }
        if let Some(watcher) = watcher {
            let _ = watcher.await;
        }
        let _ = stop_admin.send(true);
        if let Err(error) = admin_plane.await {
            tracing::error!(%error, "admin task failed");
        }
        tracing::info!("account-gate stopped");
    }
}

/// Warns when the connection limits need more file descriptors than the process may open:
/// past that, accept fails and clients wait in the kernel backlog, where the limits cannot help
/// them.
fn warn_if_out_of_files(data: &ListenerSettings, upstream_max: usize, authz: bool) {
    let Some(limit) = open_files_limit() else {
        return;
    };
    // The authz listener, when on, has as many places as the data listener; then the
    // listeners, the runtime, the store, logs and refusals in progress.
    let listeners = data.max_connections * (1 + usize::from(authz));
    let needed = listeners + ADMIN_MAX_CONNECTIONS + upstream_max + 128;
    if needed > limit {
        tracing::warn!(
            open_files_limit = limit,
            needed,
            "server.max_connections + upstream.max_connections exceed the open-files limit \
             (ulimit -n): raise the limit or lower server.max_connections"
        );
    }
}

/// The soft limit on open files of this process (Linux; `None` elsewhere or unlimited).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The admin listener's own limits: a probe or a scrape is one small request on a fresh or
/// kept-alive connection, so it gets few places and short deadlines, and a flood of its port
/// only ever evicts its own connections (the idlest first), never the probe that just arrived.
fn admin_settings(data: &ListenerSettings) -> ListenerSettings {
    ListenerSettings {
        max_connections: ADMIN_MAX_CONNECTIONS,
        header_read_timeout: data.header_read_timeout.min(ADMIN_HEADER_READ_TIMEOUT),
        // Probes and Prometheus speak plain HTTP to the admin port.
        tls: None,
        ..data.clone()
    }
}

/// Connections the admin listener serves at once (kubelet probes, Prometheus, an operator).
const ADMIN_MAX_CONNECTIONS: usize = 64;
/// The admin listener's header deadline, when `server.header_read_timeout` is longer: a probe
/// sends its head at once, and kubelet's probe timeout defaults to 1 s.
const ADMIN_HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The configured token store.
fn build_store(config: &Config, metrics: &Metrics) -> Result<Store, StartError> {
    let (store, tokens) = (&config.store, &config.tokens);
    // A deny entry must outlive every leeway-extended acceptance of its token.
    let revoked_grace = tokens
        .leeway
        .max(MemoryStoreOptions::default().revoked_grace);
    if store.backend == StoreBackend::Memory {
        return Ok(Store::Memory(MemoryStore::new(MemoryStoreOptions {
            revoked_grace,
            max_revoked_per_member: store.max_revoked_per_member,
            ..MemoryStoreOptions::with_max_entries(store.max_entries)
        })));
    }
    let password = resolve_secret(store.redis_password().as_ref(), "store.redis_password")?
        .map(|secret| secret.expose().to_owned());
    let redis = RedisStore::new(RedisStoreOptions {
        url: store.redis_url.clone().unwrap_or_default(),
        cluster: store.redis_cluster,
        password,
        pool_size: store.redis_pool_size,
        command_timeout: store.command_timeout,
        key_prefix: store.key_prefix.clone(),
        l1_ttl: store.l1_ttl,
        l1_max_entries: store.l1_max_entries,
        revoked_grace,
        max_revoked_per_member: store.max_revoked_per_member,
        revocation_resync: store.revocation_resync,
        errors: Some(metrics.store_errors_total.clone()),
    })?;
    Ok(Store::Redis(redis))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Completes once `true` has been sent on the channel (or its sender is gone).
async fn stopped(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}
