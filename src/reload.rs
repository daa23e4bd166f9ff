//! Live reload: on SIGHUP, or when the content of the configuration file or of a file it refers
//! to changes (which is how an updated Kubernetes ConfigMap or Secret arrives), the file is loaded and checked; a valid configuration
//! becomes the next [`Generation`], swapped in atomically for new requests while in-flight ones
//! finish on the old; an invalid one is refused with every error logged, and the old one stays.
//!
//! Settings bound to what is already running (listeners, runtime, store, logging) cannot change
//! live: a reload that changes them applies everything else, keeps them, and says which need a
//! restart.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::config::{self, Config, ConfigErrors};
use crate::generation::{Generation, Shared};
use crate::StartError;

/// Why a reload was refused; the running configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load or does not validate.
    #[error("invalid configuration:\n{0}")]
    Invalid(ConfigErrors),
    /// A secret the new configuration references is missing.
    #[error("{}", .0.join("; "))]
    MissingSecrets(Vec<String>),
    /// The new configuration could not be put in force (keys, CA file, …).
    #[error(transparent)]
    Build(#[from] StartError),
}

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Changed keys that only a restart applies; their running values were kept.
    pub restart_needed: Vec<&'static str>,
}

/// Reloads the configuration file into the running gateway.
#[derive(Clone)]
pub struct Reloader {
    path: PathBuf,
    shared: Shared,
    current: Arc<ArcSwap<Generation>>,
    /// The digest of the file and of every file it refers to when this reloader was made:
    /// taken here, before the gateway reports ready, and not when the watching task first runs,
    /// which under load can be after a file has already changed (the change would then never
    /// be seen).
    made_at: Option<[u8; 32]>,
    /// SHA-256 of the Redis password the store was built with (see [`redis_password_digest`]).
    redis_password: Option<[u8; 32]>,
}

impl Reloader {
    /// A reloader of `path` into `current`.
    pub fn new(path: PathBuf, shared: Shared, current: Arc<ArcSwap<Generation>>) -> Self {
        let running = current.load();
        let referenced = crate::generation::referenced_files(&running.config);
        let made_at = digest_of(&path, &referenced);
        let redis_password = redis_password_digest(&running.config);
        drop(running);
        Reloader {
            path,
            shared,
            current,
            made_at,
            redis_password,
        }
    }

    /// Loads, checks and swaps in the configuration file, counting the outcome in
    /// `config_reloads_total`.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let outcome = self.try_reload().await;
        let label = if outcome.is_ok() {
            "success"
        } else {
            "failure"
        };
        self.shared
            .metrics
            .config_reloads_total
            .with_label_values(&[label])
            .inc();
        match &outcome {
            Ok(reloaded) if reloaded.restart_needed.is_empty() => {
                tracing::info!(path = %self.path.display(), "configuration reloaded");
            }
            Ok(reloaded) => {
                self.shared.metrics.config_restart_required.set(1);
                for key in &reloaded.restart_needed {
                    tracing::warn!(
                        path = %self.path.display(),
                        key,
                        "configuration reloaded, but this change needs a restart: the running value is kept"
                    );
                }
            }
            Err(error) => {
                for line in error.to_string().lines() {
                    tracing::error!(path = %self.path.display(), "reload refused: {line}");
                }
            }
        }
        outcome
    }

    async fn try_reload(&self) -> Result<Reloaded, ReloadError> {
        let loaded = config::load(&self.path).map_err(ReloadError::Invalid)?;
        // As at start-up, a referenced secret that is missing keeps the old configuration.
        if !loaded.warnings.is_empty() {
            return Err(ReloadError::MissingSecrets(loaded.warnings));
        }
        let old = self.current.load_full();
        let mut config = loaded.config;
        // The listener's TLS settings are the ones loading built while validating the files. If
        // `[server.tls]` names other files now, the listener keeps its own (only a restart
        // applies new ones), whose contents are read again.
        let listener_tls = match (&self.shared.listener_tls, &old.config.server.tls) {
            (Some(_), Some(running)) => match loaded.listener_tls {
                Some(built) if config.server.tls.as_ref() == Some(running) => Some(built),
                _ => Some(Arc::new(
                    crate::tls::server_config(running).map_err(StartError::from)?,
                )),
            },
            _ => None,
        };
        let mut restart_needed = keep_fixed(&old.config, &mut config);
        // The Redis connections were made with the password the store was built with; a
        // rotated password file reaches them only through a restart.
        if self.redis_password != redis_password_digest(&config) {
            restart_needed.push("store.redis_password_file (its content)");
        }
        let next = Generation::build(config, &self.shared, Some(&old)).await?;
        // Only once everything else built: a reload that fails keeps the old certificate.
        if let (Some(handle), Some(tls)) = (&self.shared.listener_tls, listener_tls) {
            handle.store(tls);
        }
        self.current.store(Arc::new(next));
        Ok(Reloaded { restart_needed })
    }

    /// Reloads on SIGHUP and, every `poll` (zero: never), when the file's content changed;
    /// returns when `stop` completes.
    pub async fn watch(self, poll: Duration, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut seen = self.made_at;
        let mut hangups = hangups();
        let mut ticks = tokio::time::interval(if poll.is_zero() {
            Duration::from_secs(24 * 3600)
        } else {
            poll
        });
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = &mut stop => return,
                Some(()) = next_hangup(&mut hangups) => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    seen = self.digest().await;
                    let _ = self.reload().await;
                }
                _ = ticks.tick(), if !poll.is_zero() => {
                    let digest = self.digest().await;
                    // A file that cannot be read mid-update (ConfigMap symlink swap) is
                    // looked at again on the next tick.
                    if digest.is_some() && digest != seen {
                        seen = digest;
                        tracing::info!(path = %self.path.display(), "configuration file changed");
                        let _ = self.reload().await;
                    }
                }
            }
        }
    }

    /// The digest of the configuration file and of the files the running configuration refers
    /// to (secrets, keys, CAs: a rotated Kubernetes Secret changes those, not the file).
    async fn digest(&self) -> Option<[u8; 32]> {
        let referenced = crate::generation::referenced_files(&self.current.load().config);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || digest_of(&path, &referenced))
            .await
            .ok()
            .flatten()
    }
}

/// SHA-256 of the Redis password file's content, when the configuration uses one (an
/// environment variable cannot change under a running process).
fn redis_password_digest(config: &Config) -> Option<[u8; 32]> {
    let path = config.store.redis_password_file.as_ref()?;
    Some(Sha256::digest(std::fs::read(path).unwrap_or_default()).into())
}

/// SHA-256 over the configuration file and each referenced file (a missing referenced file
/// counts as empty: its disappearance is a change too); `None` if the configuration file cannot
/// be read.
fn digest_of(path: &std::path::Path, referenced: &[PathBuf]) -> Option<[u8; 32]> {
    let mut digest = Sha256::new();
    let config = std::fs::read(path).ok()?;
    digest.update(Sha256::digest(&config));
    for file in referenced {
        digest.update(Sha256::digest(std::fs::read(file).unwrap_or_default()));
    }
    Some(digest.finalize().into())
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

#[cfg(unix)]
fn hangups() -> Hangups {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangups() -> Hangups {
    None
}

/// The next SIGHUP; pending forever where there are none.
async fn next_hangup(hangups: &mut Hangups) -> Option<()> {
    #[cfg(unix)]
    if let Some(signal) = hangups {
        return signal.recv().await;
    }
    let _ = hangups;
    std::future::pending().await
}

/// Puts the running values of the settings that cannot change live back into `next`, and names
/// those that differed.
fn keep_fixed(running: &Config, next: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($($section:ident . $key:ident),* $(,)?) => {
            $(
                if running.$section.$key != next.$section.$key {
                    changed.push(concat!(stringify!($section), ".", stringify!($key)));
                    next.$section.$key = running.$section.$key.clone();
                }
            )*
        };
    }
    keep!(
        server.listen,
        server.admin_listen,
        server.header_read_timeout,
        server.idle_timeout,
        server.http2,
        // Whether the listener speaks TLS, and from which files; the files' contents reload live.
        server.tls,
        server.max_header_bytes,
        server.max_connections,
        server.shutdown_delay,
        server.shutdown_grace,
        server.worker_threads,
        server.config_poll_interval,
        // The authz listener is bound once, like the others; its `path_prefix` reloads live.
        authz.listen,
        log.level,
        log.format,
        // The store is built once: its connections, L1 and deny-list live as long as the
        // process, and a record written under one prefix or URL is not found under another.
        store.backend,
        store.max_entries,
        store.redis_url,
        store.redis_cluster,
        store.redis_password_env,
        store.redis_password_file,
        store.redis_pool_size,
        store.command_timeout,
        store.key_prefix,
        store.l1_ttl,
        store.l1_max_entries,
        store.max_revoked_per_member,
        store.revocation_resync,
        // The tracer provider, its exporter and its sampler are built once, at start.
        tracing.exporter,
        tracing.endpoint,
        tracing.traces_endpoint,
        tracing.ca_file,
        tracing.timeout,
        tracing.service_name,
        tracing.resource_attributes,
        tracing.sampler,
        tracing.sampler_arg,
        tracing.batch,
    );
    changed
}
