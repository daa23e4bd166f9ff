//! Start-up and shutdown of a whole gateway: bind both listeners, serve, and on the shutdown
//! signal turn unready, keep accepting for `shutdown_delay`, then drain within `shutdown_grace`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{Admin, Health};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::{self, Gateway, ListenerSettings, Upstream, UpstreamSetupError};
use crate::signup::{RateLimits, Signup, SignupPolicy, SignupSettings};
use crate::store::{MemoryStore, MemoryStoreOptions, Store};

/// Why the gateway could not start.
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
}

/// A gateway with its listeners bound, ready to [`run`](Server::run).
pub struct Server {
    config: Config,
    listener: TcpListener,
    admin_listener: TcpListener,
    gateway: Arc<Gateway>,
    admin: Arc<Admin>,
    store: Arc<Store>,
}

impl Server {
    /// Binds the data and admin listeners and builds the shared state.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new()?);
        let upstream = Upstream::new(&config.upstream)?;
        let listener = bind(config.server.listen).await?;
        let admin_listener = bind(config.server.admin_listen).await?;
        let store = Arc::new(Store::Memory(MemoryStore::new(
            MemoryStoreOptions::with_max_entries(config.store.max_entries),
        )));
        let signup = Signup::new(signup_settings(&config), store.clone(), metrics.clone());
        let gateway = Arc::new(Gateway::new(
            upstream,
            signup,
            config.signup.path.clone(),
            config.server.trusted_hops,
            metrics.clone(),
        ));
        let admin = Arc::new(Admin {
            metrics,
            health: Arc::new(Health::default()),
        });
        Ok(Server {
            config,
            listener,
            admin_listener,
            gateway,
            admin,
            store,
        })
    }

    /// The token store the gateway records into (for tests and embedding).
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// The data-plane address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.config.server.listen)
    }

    /// The admin address actually bound.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .unwrap_or(self.config.server.admin_listen)
    }

    /// Serves until `shutdown` completes, then shuts down gracefully and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let server = &self.config.server;
        let settings = ListenerSettings {
            max_connections: server.max_connections,
            header_read_timeout: server.header_read_timeout,
            max_header_bytes: server.max_header_bytes,
            shutdown_grace: server.shutdown_grace,
        };
        let (listen, admin_listen) = (self.local_addr(), self.admin_addr());
        let (stop_data, data_stopped) = watch::channel(false);
        let (stop_admin, admin_stopped) = watch::channel(false);

        let gateway = self.gateway.clone();
        let data_plane = tokio::spawn(proxy::serve(
            self.listener,
            settings.clone(),
            move |request, peer| gateway.clone().handle(request, peer),
            stopped(data_stopped),
        ));
        let admin = self.admin.clone();
        let admin_plane = tokio::spawn(proxy::serve(
            self.admin_listener,
            ListenerSettings {
                max_connections: 64,
                ..settings
            },
            move |request, _peer| admin.clone().handle(request),
            stopped(admin_stopped),
        ));
        self.admin.health.set_ready();
        tracing::info!(
            listen = %listen,
            admin = %admin_listen,
            upstream = %self.config.upstream.url,
            "account-gate ready"
        );

        shutdown.await;
        self.admin.health.set_draining();
        tracing::info!(
            delay = ?server.shutdown_delay,
            "shutdown requested; readiness is now false, still accepting"
        );
        tokio::time::sleep(server.shutdown_delay).await;
        let _ = stop_data.send(true);
        if let Err(error) = data_plane.await {
            tracing::error!(%error, "data plane task failed");
        }
        let _ = stop_admin.send(true);
        if let Err(error) = admin_plane.await {
            tracing::error!(%error, "admin task failed");
        }
        tracing::info!("account-gate stopped");
    }
}

/// The sign-up path's settings from the configuration.
fn signup_settings(config: &Config) -> SignupSettings {
    let (signup, limits) = (&config.signup, &config.rate_limit);
    SignupSettings {
        policy: SignupPolicy {
            mechanisms: signup.mechanisms.clone(),
            username_must_be_email: signup.username_must_be_email,
            min_password_length: signup.min_password_length,
        },
        rate_limits: RateLimits {
            window: limits.window,
            signup_per_ip: limits.signup_per_ip,
            signup_per_username: limits.signup_per_username,
            login_per_ip: limits.login_per_ip,
            login_per_username: limits.login_per_username,
        },
        max_body_bytes: config.server.max_body_bytes,
        max_response_bytes: signup.max_response_bytes,
        // The config loader has checked that the header name is valid.
        token_header: http::HeaderName::from_bytes(config.tokens.header.as_bytes()).unwrap_or_else(
            |_| http::HeaderName::from_static("ep-account-management-authentication-token"),
        ),
    }
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
