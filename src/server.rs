//! Start-up and shutdown of a whole gateway: bind both listeners, serve, and on the shutdown
//! signal turn unready, keep accepting for `shutdown_delay`, then drain within `shutdown_grace`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{Admin, Health};
use crate::config::Config;
use crate::config::{SecretError, SecretRef, StoreBackend};
use crate::metrics::Metrics;
use crate::proxy::{self, Gateway, ListenerSettings, Upstream, UpstreamSetupError};
use crate::scope::{Rule, Rules};
use crate::signup::{RateLimits, Signup, SignupPolicy, SignupSettings};
use crate::store::{
    MemoryStore, MemoryStoreOptions, RedisSetupError, RedisStore, RedisStoreOptions, Store,
};
use crate::token::{KeyError, SignatureSettings, Verifier};
use crate::validator::{IdentityHeaders, Validator, ValidatorSettings};

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
    /// A secret the configuration references is missing.
    #[error("{key}: {source}")]
    Secret {
        key: &'static str,
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
        let tokens = &config.tokens;
        let store = Arc::new(build_store(&config, &metrics)?);
        let verifier = if tokens.mode.checks_signatures() {
            Some(Arc::new(Verifier::new(signature_settings(&config)?).await?))
        } else {
            None
        };
        if let (Some(verifier), Some(events)) = (&verifier, store.revocation_events()) {
            tokio::spawn(forget_revoked(Arc::downgrade(verifier), events));
        }
        let validator = Validator::new(
            validator_settings(&config),
            store.clone(),
            verifier.clone(),
            metrics.clone(),
        );
        let signup = Signup::new(signup_settings(&config), store.clone(), metrics.clone());
        let gateway = Arc::new(Gateway::new(
            upstream,
            signup,
            validator,
            config.signup.path.clone(),
            config.server.trusted_hops,
            metrics.clone(),
        ));
        let admin = Arc::new(Admin {
            verifier,
            metrics,
            health: Arc::new(Health::default()),
            store: store.clone(),
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
            ..MemoryStoreOptions::with_max_entries(store.max_entries)
        })));
    }
    let password = match store.redis_password() {
        None => None,
        Some(reference) => {
            let key = match reference {
                SecretRef::Env(_) => "store.redis_password_env",
                SecretRef::File(_) => "store.redis_password_file",
            };
            let secret = reference
                .resolve()
                .map_err(|source| StartError::Secret { key, source })?;
            Some(secret.expose().to_owned())
        }
    };
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
        errors: Some(metrics.store_errors_total.clone()),
    })?;
    Ok(Store::Redis(redis))
}

/// Drops every fingerprint another replica revoked from the verified-token cache, until the
/// verifier or the store is gone. (Validation checks the deny-list first anyway; this keeps the
/// cache from holding what can no longer be used.)
async fn forget_revoked(
    verifier: std::sync::Weak<Verifier>,
    mut events: tokio::sync::broadcast::Receiver<crate::store::Fingerprint>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(fingerprint) => match verifier.upgrade() {
                Some(verifier) => verifier.invalidate(&fingerprint),
                None => return,
            },
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "revocations arrived faster than the verifier cache was updated"
                );
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// The validator's settings from the configuration (already validated).
fn validator_settings(config: &Config) -> ValidatorSettings {
    let tokens = &config.tokens;
    let configured = config
        .routes
        .iter()
        .filter_map(|route| Rule::new(&route.path, route.token).ok())
        .collect();
    ValidatorSettings {
        mode: tokens.mode,
        unknown: tokens.unknown,
        header: http::HeaderName::from_bytes(tokens.header.as_bytes()).unwrap_or_else(|_| {
            http::HeaderName::from_static("ep-account-management-authentication-token")
        }),
        leeway: tokens.leeway,
        negative_ttl: tokens.negative_ttl,
        negative_max_entries: tokens.negative_max_entries,
        rules: Rules::new(configured, &config.signup.path),
        identity: IdentityHeaders::new(&tokens.account_id_header, &tokens.member_id_header),
    }
}

/// The verifier's settings: secrets resolved and key files read.
fn signature_settings(config: &Config) -> Result<SignatureSettings, StartError> {
    let signature = &config.tokens.signature;
    let hs256_secret = match signature.hs256_secret() {
        None => None,
        Some(reference) => {
            let key = match reference {
                SecretRef::Env(_) => "tokens.signature.hs256_secret_env",
                SecretRef::File(_) => "tokens.signature.hs256_secret_file",
            };
            let secret = reference
                .resolve()
                .map_err(|source| StartError::Secret { key, source })?;
            Some(secret.expose().as_bytes().to_vec())
        }
    };
    let public_keys = match &signature.public_key_file {
        None => Vec::new(),
        Some(path) => vec![std::fs::read(path).map_err(|source| StartError::KeyFile {
            key: "tokens.signature.public_key_file",
            path: path.display().to_string(),
            source,
        })?],
    };
    Ok(SignatureSettings {
        algorithms: signature
            .algorithms
            .iter()
            .filter_map(|name| name.parse().ok())
            .collect(),
        hs256_secret,
        public_keys,
        jwks_url: signature.jwks_url.as_ref().and_then(|url| url.parse().ok()),
        jwks_ca_file: signature.jwks_ca_file.clone(),
        jwks_refresh: signature.jwks_refresh,
        jwks_cooldown: signature.jwks_cooldown,
        jwks_timeout: signature.jwks_timeout,
        leeway: config.tokens.leeway,
        issuer: signature.issuer.clone(),
        audience: signature.audience.clone(),
        cache_max_entries: config.tokens.cache_max_entries,
    })
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
