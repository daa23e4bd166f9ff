//! Start-up, reload and shutdown of a whole gateway: bind both listeners, serve the current
//! [`Generation`], swap in a new one on reload, and on the shutdown signal turn unready, keep
//! accepting for `shutdown_delay`, then drain within `shutdown_grace`.
//!
//! Requests are served by `server.worker_threads` threads (by default one per CPU the process
//! may use), each with a single-threaded runtime of its own and its own socket on the data (and
//! authz) address, bound with `SO_REUSEPORT` so that the kernel spreads new connections over
//! them, as nginx's workers do. A connection lives and dies on one thread: no work-stealing,
//! no wake-up crossing threads. On two cores that served 1.33 times the proxied GETs of one
//! multi-thread runtime with a worker per core, and as many as two single-core processes
//! (`benches/README.md`, 2026-11-30). The first thread is the caller's (its runtime also runs
//! the admin listener, reloads and the store's background work); everything the threads share
//! (the generation, the store, metrics, the connection limit) is shared across threads anyway.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch};

use crate::admin::{Admin, Health};
use crate::config::{Config, SecretError, StoreBackend};
use crate::generation::{resolve_secret, Generation, Shared};
use crate::metrics::Metrics;
use crate::proxy::{self, ListenerSettings, Places, UpstreamSetupError};
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
    listener: Sockets,
    admin_listener: TcpListener,
    /// The authz listener, when `[authz] listen` is set.
    authz_listener: Option<Sockets>,
    shared: Shared,
    /// The generation new requests are handled by; a reload swaps it.
    current: Arc<ArcSwap<Generation>>,
    health: Arc<Health>,
    /// Where to reload the configuration from (SIGHUP, file changes).
    config_path: Option<PathBuf>,
    /// The CPU of each serving thread, when the process has one per thread ([`dedicated_cpus`]).
    cpus: Option<Vec<usize>>,
    /// Whether the caller's thread, the first serving thread, is pinned too.
    pin_caller: bool,
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
        let threads = serving_threads(config.server.worker_threads);
        let listener = Sockets::bind(config.server.listen, threads)?;
        let admin_listener = bind(config.server.admin_listen).await?;
        let authz_listener = match config.authz.listen {
            Some(addr) => Some(Sockets::bind(addr, threads)?),
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
            cpus: dedicated_cpus(threads),
            pin_caller: false,
        })
    }

    /// Reloads from `path` (on [`Reloader::reload`], SIGHUP, and when the file changes).
    pub fn with_config_file(mut self, path: PathBuf) -> Self {
        self.config_path = Some(path);
        self
    }

    /// Pins the caller's thread to the first serving CPU as well, when the serving threads are
    /// pinned: for a process whose main thread does nothing but run the gateway.
    pub fn pinning_caller(mut self) -> Self {
        self.pin_caller = true;
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
            .first
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
            .first
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

        let planes = Arc::new(Planes {
            data: Places::new(settings.max_connections),
            authz: Places::new(settings.max_connections),
            settings: settings.clone(),
            metrics: self.shared.metrics.clone(),
            current: self.current.clone(),
        });
        let threads = 1 + self.listener.more.len();
        // A serving thread's runtime drives the upstream connections it opened, which other
        // threads' requests may be using: each runtime lives on until every thread has drained.
        let (release, released) = watch::channel(false);
        let cpus = self.cpus.unwrap_or_default();
        if let (true, Some(&cpu)) = (self.pin_caller, cpus.first()) {
            pin(cpu);
        }
        let (authz_first, mut authz_more) = match self.authz_listener {
            Some(sockets) => (Some(sockets.first), sockets.more.into_iter()),
            None => (None, Vec::new().into_iter()),
        };
        let mut serving = vec![serve_here(
            planes.clone(),
            self.listener.first,
            authz_first,
            data_stopped.clone(),
        )];
        for (index, data) in self.listener.more.into_iter().enumerate() {
            let authz = authz_more.next();
            let cpu = cpus.get(index + 1).copied();
            let signals = (data_stopped.clone(), released.clone());
            match serve_on_thread(index + 1, cpu, planes.clone(), data, authz, signals) {
                Ok(served) => serving.push(served),
                // Its sockets are closed with it: the kernel spreads connections over the rest.
                Err(error) => tracing::error!(%error, "cannot start a serving thread"),
            }
        }
        let admin = Arc::new(Admin {
            store: self.shared.store.clone(),
            metrics: self.shared.metrics.clone(),
            health: self.health.clone(),
            current: self.current.clone(),
        });
        let admin_settings = admin_settings(&settings);
        let admin_plane = tokio::spawn(proxy::serve(
            self.admin_listener,
            admin_settings.clone(),
            Places::new(admin_settings.max_connections),
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
            threads,
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
        for served in serving {
            if served.await.is_err() {
                tracing::error!("a serving thread failed");
            }
        }
        let _ = release.send(true);
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

/// What every serving thread serves: the data listener and, when on, the authz listener.
struct Planes {
    settings: ListenerSettings,
    /// The data listener's connection limit, shared by the threads; the authz listener's.
    data: Places,
    authz: Places,
    metrics: Arc<Metrics>,
    current: Arc<ArcSwap<Generation>>,
}

impl Planes {
    /// Serves `data` (and `authz`) until `stop` turns true, then drains them.
    async fn serve(
        self: Arc<Self>,
        data: TcpListener,
        authz: Option<TcpListener>,
        stop: watch::Receiver<bool>,
    ) {
        let current = self.current.clone();
        let data = proxy::serve(
            data,
            self.settings.clone(),
            self.data.clone(),
            self.metrics.listener("data"),
            move |request, peer| current.load().gateway.clone().handle(request, peer),
            stopped(stop.clone()),
        );
        let Some(authz) = authz else {
            return data.await;
        };
        // The authz listener has the data listener's limits and deadlines, speaks plain HTTP
        // (the ingress calls it on a private network), and stops with the data listener.
        let current = self.current.clone();
        let authz = proxy::serve(
            authz,
            ListenerSettings {
                tls: None,
                ..self.settings.clone()
            },
            self.authz.clone(),
            self.metrics.listener("authz"),
            move |request, peer| current.load().decisions.clone().handle(request, peer),
            stopped(stop),
        );
        tokio::join!(data, authz);
    }
}

/// Completes (with `Ok`) when a serving thread has drained; `Err` if it ended otherwise.
type Served = oneshot::Receiver<()>;

/// Serves the first sockets on the caller's runtime.
fn serve_here(
    planes: Arc<Planes>,
    data: TcpListener,
    authz: Option<TcpListener>,
    stop: watch::Receiver<bool>,
) -> Served {
    let (done, served) = oneshot::channel();
    tokio::spawn(async move {
        planes.serve(data, authz, stop).await;
        let _ = done.send(());
    });
    served
}

/// Serves a further thread's sockets on a thread of their own, with its own single-threaded
/// runtime, until `stop`; the runtime (and the upstream connections it drives) is kept until
/// `released`.
fn serve_on_thread(
    index: usize,
    cpu: Option<usize>,
    planes: Arc<Planes>,
    data: std::net::TcpListener,
    authz: Option<std::net::TcpListener>,
    (stop, released): (watch::Receiver<bool>, watch::Receiver<bool>),
) -> std::io::Result<Served> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, served) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("serve-{index}"))
        .spawn(move || {
            if let Some(cpu) = cpu {
                pin(cpu);
            }
            proxy::set_serving_thread(index);
            runtime.block_on(async move {
                // Registered with this thread's runtime, so their connections stay on it.
                let data = TcpListener::from_std(data);
                let authz = authz.map(TcpListener::from_std).transpose();
                match (data, authz) {
                    (Ok(data), Ok(authz)) => {
                        planes.serve(data, authz, stop).await;
                        let _ = done.send(());
                        stopped(released).await;
                    }
                    (Err(error), _) | (_, Err(error)) => {
                        tracing::error!(%error, "a serving thread cannot take its sockets");
                    }
                }
            });
        })?;
    Ok(served)
}

/// How many threads serve requests for `server.worker_threads = configured`: `configured`
/// itself, or for 0 one per CPU the process may really use (its affinity mask and its cgroup's
/// CPU quota: a container limited to 1.5 CPUs gets 1, as the standard library reads them).
pub fn serving_threads(configured: usize) -> usize {
    let available = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    thread_count(configured, available)
}

/// [`serving_threads`] on a machine where the process may use `available` CPUs.
pub fn thread_count(configured: usize, available: usize) -> usize {
    match configured {
        0 => available.max(1),
        n => n,
    }
}

/// The CPU for each serving thread: the process's own CPUs (its affinity mask) when there is
/// exactly one per thread, that is CPUs dedicated to it (`taskset`, a cpuset, Kubernetes' static
/// CPU manager), so that each thread keeps its core's caches and its connections' wake-ups stay
/// on one core (on two cores, 1.3 times the requests of unpinned threads). Otherwise none, and
/// the scheduler places the threads: a CPU quota spread over more CPUs than threads is time,
/// not CPUs to own.
#[cfg(target_os = "linux")]
fn dedicated_cpus(threads: usize) -> Option<Vec<usize>> {
    use rustix::thread::{sched_getaffinity, CpuSet};
    let mask = sched_getaffinity(None).ok()?;
    let cpus: Vec<usize> = (0..CpuSet::MAX_CPU)
        .filter(|&cpu| mask.is_set(cpu))
        .collect();
    (threads > 1 && cpus.len() == threads).then_some(cpus)
}

#[cfg(not(target_os = "linux"))]
fn dedicated_cpus(_threads: usize) -> Option<Vec<usize>> {
    None
}

/// Keeps the calling thread on `cpu`. A refusal (a cpuset changed since) leaves it where the
/// scheduler puts it.
#[cfg(target_os = "linux")]
fn pin(cpu: usize) {
    use rustix::thread::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    set.set(cpu);
    if let Err(error) = sched_setaffinity(None, &set) {
        tracing::warn!(cpu, %error, "cannot pin a serving thread to its CPU");
    }
}

#[cfg(not(target_os = "linux"))]
fn pin(_cpu: usize) {}

/// One address's listening sockets: the one the caller's thread accepts on, and one for each
/// further serving thread, all bound with `SO_REUSEPORT` when there is more than one.
struct Sockets {
    first: TcpListener,
    more: Vec<std::net::TcpListener>,
}

impl Sockets {
    fn bind(addr: SocketAddr, threads: usize) -> Result<Self, StartError> {
        let error = |source| StartError::Bind { addr, source };
        let first = listen(addr, threads > 1).map_err(error)?;
        // Port 0 chose a port: the others join the first on it.
        let bound = first.local_addr().map_err(error)?;
        let more = (1..threads)
            .map(|_| listen(bound, true).and_then(TcpListener::into_std))
            .collect::<Result<_, _>>()
            .map_err(error)?;
        Ok(Sockets { first, more })
    }
}

/// A listening socket on `addr`, as `TcpListener::bind` makes one (`SO_REUSEADDR`, a backlog of
/// 1024), with `SO_REUSEPORT` when it is one of several.
fn listen(addr: SocketAddr, shared: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if shared {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
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

#[cfg(test)]
mod tests {
    use super::thread_count;

    #[test]
    fn zero_threads_means_one_per_available_cpu() {
        assert_eq!(thread_count(0, 1), 1);
        assert_eq!(thread_count(0, 6), 6);
        assert_eq!(thread_count(0, 0), 1);
        assert_eq!(thread_count(3, 8), 3);
        assert_eq!(thread_count(1, 8), 1);
    }
}
