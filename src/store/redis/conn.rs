//! Connections to Redis: a few multiplexed [`ConnectionManager`]s used in turn (one node), or
//! one cluster connection (Redis Cluster). Every command goes through [`Pool::run`], which bounds
//! it by `command_timeout`, turns any failure into [`StoreError::Unavailable`] and counts it in
//! `store_errors_total{backend="redis",op}`.
//!
//! Connections are made lazily, so a gateway starts (unready) while Redis is down; the
//! connection manager reconnects in the background after a failure, so recovery needs no
//! restart.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus::IntCounterVec;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};
use tokio::sync::OnceCell;
use tracing::Instrument;

use super::BACKEND;
use crate::store::StoreError;
use crate::telemetry;

/// Reconnection attempts per failure before the manager waits for the next command.
const RECONNECT_RETRIES: usize = 3;
/// Longest wait between reconnection attempts: recovery after Redis returns takes about this.
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

/// One connection to use for a command; cheap to clone (a handle).
#[derive(Clone)]
pub(super) enum Conn {
    /// A node, through a reconnecting multiplexed connection.
    Single(ConnectionManager),
    /// A cluster, routing each command by its key's slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where commands go.
enum Target {
    Single(Vec<ConnectionManager>),
    /// The cluster connection is made on first use (it needs the cluster to answer).
    Cluster(Box<(redis::cluster::ClusterClient, OnceCell<ClusterConnection>)>),
}

/// The connections of one store, with the per-command bound and the error counter.
pub(super) struct Pool {
    target: Target,
    /// Round-robin position over `Target::Single`.
    next: AtomicUsize,
    /// Bound of one command, connection set-up included.
    timeout: Duration,
    /// `store_errors_total{backend,op}`, when the gateway's metrics are wired in.
    errors: Option<IntCounterVec>,
}

/// What [`Pool::new`] needs.
pub(super) struct PoolSettings<'a> {
    pub(super) nodes: &'a [String],
    pub(super) cluster: bool,
    pub(super) password: Option<&'a str>,
    pub(super) pool_size: usize,
    pub(super) timeout: Duration,
    pub(super) errors: Option<IntCounterVec>,
}

/// A Redis client for `url`, with the password (kept out of the URL) set.
pub(super) fn client(url: &str, password: Option<&str>) -> RedisResult<Client> {
    let mut info = url.into_connection_info()?;
    if let Some(password) = password {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    Client::open(info)
}

impl Pool {
    /// The pool; connects nothing yet.
    pub(super) fn new(settings: PoolSettings<'_>) -> RedisResult<Self> {
        let target = if settings.cluster {
            let mut builder = ClusterClientBuilder::new(settings.nodes.to_vec())
                .connection_timeout(settings.timeout)
                .response_timeout(settings.timeout)
                .retries(1);
            if let Some(password) = settings.password {
                builder = builder.password(password);
            }
            Target::Cluster(Box::new((builder.build()?, OnceCell::new())))
        } else {
            let url = settings.nodes.first().map_or("", String::as_str);
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(settings.timeout))
                .set_response_timeout(Some(settings.timeout))
                .set_number_of_retries(RECONNECT_RETRIES)
                .set_max_delay(RECONNECT_MAX_DELAY);
            let managers = (0..settings.pool_size.max(1))
                .map(|_| {
                    let client = client(url, settings.password)?;
                    ConnectionManager::new_lazy_with_config(client, config.clone())
                })
                .collect::<RedisResult<Vec<_>>>()?;
            Target::Single(managers)
        };
        Ok(Pool {
            target,
            next: AtomicUsize::new(0),
            timeout: settings.timeout,
            errors: settings.errors,
        })
    }

    /// A connection for the next command.
    async fn conn(&self) -> RedisResult<Conn> {
        match &self.target {
            Target::Single(managers) => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % managers.len();
                Ok(Conn::Single(managers[i].clone()))
            }
            Target::Cluster(cluster) => {
                let (client, cell) = &**cluster;
                let conn = cell
                    .get_or_try_init(|| client.get_async_connection())
                    .await?;
                Ok(Conn::Cluster(conn.clone()))
            }
        }
    }

    /// Runs `command` on a connection within the timeout; a failure is counted under `op`.
    pub(super) async fn run<T, F, Fut>(&self, op: &'static str, command: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let attempt =
            tokio::time::timeout(self.timeout, async { command(self.conn().await?).await });
        // A round trip to Redis is a span of the request it serves (none for the background
        // work: loading, resyncing, counting).
        let answer = if telemetry::enabled() && !tracing::Span::current().is_none() {
            attempt.instrument(redis_span(op)).await
        } else {
            attempt.await
        };
        match answer {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(self.failed(op, error.to_string())),
            Err(_) => Err(self.failed(
                op,
                format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                ),
            )),
        }
    }

    /// Counts and logs a failed call.
    pub(super) fn failed(&self, op: &'static str, reason: String) -> StoreError {
        if let Some(errors) = &self.errors {
            errors.with_label_values(&[BACKEND, op]).inc();
        }
        tracing::debug!(op, %reason, "redis call failed");
        StoreError::Unavailable {
            backend: BACKEND,
            op,
            reason,
        }
    }
}

/// The span of one Redis command, named by its operation (`store_errors_total{op}`).
fn redis_span(op: &'static str) -> tracing::Span {
    tracing::info_span!(
        target: telemetry::TARGET,
        "redis",
        otel.name = op,
        otel.kind = "client",
        db.system.name = "redis",
    )
}
