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
}

impl Server {
    /// Binds the data and admin listeners and builds the shared state.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new()?);
        let upstream = Upstream::new(&config.upstream)?;
        let listener = bind(config.server.listen).await?;
        let admin_listener = bind(config.server.admin_listen).await?;
        let gateway = Arc::new(Gateway::new(upstream, metrics.clone()));
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
        })
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

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// Completes once `true` has been sent on the channel (or its sender is gone).
async fn stopped(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}
