//! The file schema: what `account-gate.toml` may contain, and every default — in this file only.
//!
//! These structs mirror the internal [`Config`] in the file's terms (durations as `"30s"`,
//! addresses and the upstream URL as strings, the admin token as a `token_env`/`token_file`
//! reference). Every key but `[upstream] url` has a default. The loader does not hand a whole file
//! to serde, which would stop at the first problem; `schema` checks it key by key against these
//! structs first, and only then deserialises what passed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    AdminConfig, AuthzConfig, Config, Http2Config, ListenerTlsConfig, LogConfig, LogFormat,
    RateLimitConfig, SecretRef, ServerConfig, SignupConfig, StoreConfig, TokensConfig,
    TracingConfig, UpstreamConfig,
};

/// The whole file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct FileConfig {
    pub server: ServerFile,
    pub upstream: UpstreamFile,
    pub log: LogFile,
    pub admin: AdminFile,
    pub signup: SignupConfig,
    pub rate_limit: RateLimitConfig,
    pub store: StoreConfig,
    pub tokens: TokensConfig,
    pub tracing: TracingConfig,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<crate::scope::RouteConfig>,
    pub authz: AuthzConfig,
}

/// `[server]`; see [`ServerConfig`] for what each key does.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ServerFile {
    #[serde(deserialize_with = "addr::deserialize")]
    pub listen: SocketAddr,
    #[serde(deserialize_with = "addr::deserialize")]
    pub admin_listen: SocketAddr,
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub max_connections: usize,
    #[serde(with = "duration")]
    pub shutdown_delay: Duration,
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    pub worker_threads: usize,
    pub trusted_hops: usize,
    #[serde(with = "duration")]
    pub config_poll_interval: Duration,
    pub strip_request_headers: Vec<String>,
    pub http2: Http2Config,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTlsConfig>,
}

impl Default for ServerFile {
    fn default() -> Self {
        ServerFile {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024,
            max_connections: 10_000,
            shutdown_delay: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            worker_threads: 0,
            trusted_hops: 0,
            config_poll_interval: Duration::from_secs(5),
            strip_request_headers: super::default_strip_request_headers(),
            http2: Http2Config::default(),
            tls: None,
        }
    }
}

/// `[upstream]`; see [`UpstreamConfig`]. `url` is an `Option` only so that its absence is
/// reported as "missing" alongside every other problem rather than by serde.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct UpstreamFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    #[serde(with = "duration")]
    pub response_timeout: Duration,
    #[serde(with = "duration")]
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub max_connections: usize,
    #[serde(with = "duration")]
    pub body_timeout: Duration,
}

impl Default for UpstreamFile {
    fn default() -> Self {
        UpstreamFile {
            url: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            pool_idle_timeout: Duration::from_secs(50),
            pool_max_idle_per_host: 64,
            max_connections: 256,
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// `[log]`; see [`LogConfig`].
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct LogFile {
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogFile {
    fn default() -> Self {
        LogFile {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// `[admin]`: the admin API token, as a reference to where it is kept. Neither is set by default.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct AdminFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl FileConfig {
    /// The internal configuration, given the parsed upstream URL and admin section (the only parts
    /// whose conversion can fail; `validate` checks those and everything else first).
    pub(super) fn into_config(self, url: http::Uri, admin: AdminConfig) -> Config {
        let FileConfig {
            server: s,
            upstream: u,
            log,
            admin: _,
            signup,
            rate_limit,
            store,
            tokens,
            tracing,
            routes,
            authz,
        } = self;
        Config {
            server: ServerConfig {
                listen: s.listen,
                admin_listen: s.admin_listen,
                header_read_timeout: s.header_read_timeout,
                body_read_timeout: s.body_read_timeout,
                idle_timeout: s.idle_timeout,
                max_header_bytes: s.max_header_bytes,
                max_body_bytes: s.max_body_bytes,
                max_connections: s.max_connections,
                shutdown_delay: s.shutdown_delay,
                shutdown_grace: s.shutdown_grace,
                worker_threads: s.worker_threads,
                trusted_hops: s.trusted_hops,
                config_poll_interval: s.config_poll_interval,
                strip_request_headers: s.strip_request_headers,
                http2: s.http2,
                tls: s.tls,
            },
            upstream: UpstreamConfig {
                url,
                ca_file: u.ca_file,
                connect_timeout: u.connect_timeout,
                response_timeout: u.response_timeout,
                pool_idle_timeout: u.pool_idle_timeout,
                pool_max_idle_per_host: u.pool_max_idle_per_host,
                max_connections: u.max_connections,
                body_timeout: u.body_timeout,
            },
            log: LogConfig {
                level: log.level,
                format: log.format,
            },
            admin,
            signup,
            rate_limit,
            store,
            tokens,
            tracing,
            routes,
            authz,
        }
    }
}

/// The way back, for rendering the effective configuration.
impl From<&Config> for FileConfig {
    fn from(c: &Config) -> Self {
        let (s, u) = (&c.server, &c.upstream);
        // A path that is not UTF-8 cannot be written as TOML; lossy is fine for display.
        let lossy = |p: &PathBuf| PathBuf::from(p.to_string_lossy().into_owned());
        FileConfig {
            server: ServerFile {
                listen: s.listen,
                admin_listen: s.admin_listen,
                header_read_timeout: s.header_read_timeout,
                body_read_timeout: s.body_read_timeout,
                idle_timeout: s.idle_timeout,
                max_header_bytes: s.max_header_bytes,
                max_body_bytes: s.max_body_bytes,
                max_connections: s.max_connections,
                shutdown_delay: s.shutdown_delay,
                shutdown_grace: s.shutdown_grace,
                worker_threads: s.worker_threads,
                trusted_hops: s.trusted_hops,
                config_poll_interval: s.config_poll_interval,
                strip_request_headers: s.strip_request_headers.clone(),
                http2: s.http2.clone(),
                tls: s.tls.clone(),
            },
            upstream: UpstreamFile {
                url: Some(u.url.to_string()),
                ca_file: u.ca_file.as_ref().map(lossy),
                connect_timeout: u.connect_timeout,
                response_timeout: u.response_timeout,
                pool_idle_timeout: u.pool_idle_timeout,
                pool_max_idle_per_host: u.pool_max_idle_per_host,
                max_connections: u.max_connections,
                body_timeout: u.body_timeout,
            },
            log: LogFile {
                level: c.log.level.clone(),
                format: c.log.format,
            },
            admin: match &c.admin.token {
                None => AdminFile::default(),
                Some(SecretRef::Env(name)) => AdminFile {
                    token_env: Some(name.clone()),
                    token_file: None,
                },
                Some(SecretRef::File(path)) => AdminFile {
                    token_env: None,
                    token_file: Some(lossy(path)),
                },
            },
            signup: c.signup.clone(),
            rate_limit: c.rate_limit.clone(),
            store: c.store.clone(),
            tokens: c.tokens.clone(),
            tracing: c.tracing.clone(),
            routes: c.routes.clone(),
            authz: c.authz.clone(),
        }
    }
}

/// Durations as humantime strings (`"30s"`, `"250ms"`), with an error that quotes the value.
pub(super) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(in crate::config) fn serialize<S: Serializer>(
        d: &Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format_args!(
                "invalid duration {text:?} (expected e.g. \"30s\" or \"250ms\"): {e}"
            ))
        })
    }
}

/// Socket addresses, with an error that quotes the value (serde's own does not).
mod addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|_| {
            serde::de::Error::custom(format_args!(
                "invalid socket address {text:?} (expected e.g. \"0.0.0.0:8080\" or \"[::1]:8080\")"
            ))
        })
    }
}
