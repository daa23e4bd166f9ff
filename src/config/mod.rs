//! Configuration: the TOML file schema, environment overrides, validation that reports every
//! problem at once, and the internal [`Config`] the rest of the gateway reads.
//!
//! The types in this file are the *internal* configuration: already validated, with defaults
//! filled in. Everything else in the crate reads these and never the raw TOML.
//!
//! # Loading
//!
//! [`load`] reads a file and the process environment; [`from_toml_str`] does the same from a
//! string and an explicit list of variables, touching nothing global. Both:
//!
//! 1. parse the TOML (a syntax error is reported with its line and column, and stops there);
//! 2. apply the environment overrides on the parsed tree (below);
//! 3. check the tree key by key against the file schema (`file.rs`): unknown sections and keys,
//!    values of the wrong type or syntax (`"5 parsecs"`, `"x"` for an address);
//! 4. check ranges and relations (upstream URL shape, listener collisions, `ca_file` readable, …);
//! 5. return the [`Config`] with any warnings, or *every* problem found, each with its dotted key:
//!
//! ```text
//! server.bogus: unknown key
//! server.listen: invalid socket address "x" (expected e.g. "0.0.0.0:8080" or "[::1]:8080")
//! upstream.connect_timeout: invalid duration "5 parsecs" (unknown time unit "parsecs", …)
//! ```
//!
//! # Environment overrides
//!
//! Every key can be set as `ACCOUNT_GATE__<SECTION>__<KEY>`: upper-case, `__` between the
//! segments, e.g. `ACCOUNT_GATE__UPSTREAM__URL=https://useast.api.elasticpath.com` or
//! `ACCOUNT_GATE__SERVER__SHUTDOWN_GRACE=10s`. An override replaces the file's value before
//! validation and is typed by its key (`ACCOUNT_GATE__SERVER__MAX_CONNECTIONS=500` is an
//! integer); an empty value restores the default; a variable naming an unknown section or key is
//! an error. Errors about an overridden value name the variable.
//!
//! The standard OpenTelemetry variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, …) set the keys of `[tracing]` the same way; see
//! `tracing.rs` for the list.
//!
//! # Secrets
//!
//! The configuration holds only references to secrets ([`SecretRef`]: `*_env` or `*_file`), which
//! are resolved where they are used. A reference whose target is missing at load time is a
//! warning, not an error: the admin API that needs it refuses to start without it.

mod env;
mod error;
mod file;
mod render;
mod schema;
mod secret;
mod sections;
mod store;
mod tracing;
mod validate;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use env::ENV_PREFIX;
pub use error::{ConfigError, ConfigErrors};
pub use schema::schema_keys;
pub use secret::{Secret, SecretError, SecretRef};
pub use sections::{
    AuthzConfig, Http2Config, ListenerTlsConfig, RateLimitConfig, SecretEncoding, SignatureConfig,
    SignupConfig, StoreBackend, StoreConfig, TargetFrom, TokenMode, TokensConfig, UnknownTokens,
};
pub use tracing::{Ratio, TraceBatchConfig, TraceExporter, TraceSampler, TracingConfig};

/// The whole, validated configuration of one gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[server]`: the listeners.
    pub server: ServerConfig,
    /// `[upstream]`: where requests go.
    pub upstream: UpstreamConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
    /// `[admin]`: the admin API's credentials.
    pub admin: AdminConfig,
    pub signup: SignupConfig,
    pub rate_limit: RateLimitConfig,
    pub store: StoreConfig,
    pub tokens: TokensConfig,
    /// `[tracing]`: OpenTelemetry traces, also set by the standard `OTEL_*` variables.
    pub tracing: TracingConfig,
    /// `[[routes]]`: rules checked before the built-in ones (see [`crate::scope`]).
    pub routes: Vec<crate::scope::RouteConfig>,
    /// `[authz]`: the external-authorization listener for an ingress.
    pub authz: AuthzConfig,
}

/// The downstream listeners and what they accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where clients (the storefront) connect. Default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// Metrics, health and (later) the admin API; kept off the data port so it is never exposed
    /// with it. Default `0.0.0.0:9090`.
    pub admin_listen: SocketAddr,
    /// A client that has not sent its full request head within this is disconnected
    /// (slowloris protection), counted from accept for the first request (so it covers the
    /// HTTP/1-or-HTTP/2 detection too) and from the first byte of each later HTTP/1 head.
    /// Default `10s`.
    pub header_read_timeout: Duration,
    /// The whole body of a request the gateway reads itself (token requests) must arrive within
    /// this after its head; `408` and the connection closed after. Default `10s`.
    pub body_read_timeout: Duration,
    /// A connection with no request in flight is closed after this (HTTP/1 keep-alive, an
    /// HTTP/2 connection with no open stream). Default `60s`.
    pub idle_timeout: Duration,
    /// Largest request head accepted; more gets `431`. Default 16 KiB (hyper's floor is 8 KiB).
    pub max_header_bytes: usize,
    /// Largest body of a request the gateway reads itself (sign-up/login). Default 64 KiB.
    pub max_body_bytes: usize,
    /// Connections served at once. A client beyond it is still accepted: the idlest connection
    /// is closed for it, or, when every connection has a request in flight, it gets `503`.
    /// Default 10 000.
    pub max_connections: usize,
    /// After SIGTERM, how long the listener keeps accepting while readiness is already false, so
    /// that Kubernetes can take the pod out of its endpoints first. Default `5s`.
    pub shutdown_delay: Duration,
    /// How long in-flight requests may take to finish once the listener has stopped. Default `30s`.
    pub shutdown_grace: Duration,
    /// Runtime worker threads: 0 means one per CPU this process may use (its affinity and its
    /// cgroup's CPU quota), and one is a single-threaded runtime, the fastest on one core.
    /// Default 0.
    pub worker_threads: usize,
    /// Proxies in front of the gateway that append to `X-Forwarded-For`: the client IP used for
    /// rate limits is the address that many entries from the right of that header; 0 uses the
    /// connection's peer. Default 0.
    pub trusted_hops: usize,
    /// How often the configuration file is checked for changes (a new ConfigMap); a change is
    /// reloaded like a SIGHUP. Zero turns the check off. Default `5s`.
    pub config_poll_interval: Duration,
    /// Headers removed from every request before any decision and before forwarding: the ones
    /// some frameworks route by instead of the request line (`X-Original-URL`, method
    /// overrides), which would let a request checked as one route be served as another. Default
    /// [`default_strip_request_headers`]; `[]` turns it off.
    pub strip_request_headers: Vec<String>,
    /// `[server.http2]`: what one HTTP/2 client connection may hold.
    pub http2: Http2Config,
    /// `[server.tls]`: TLS on the data listener, when set.
    pub tls: Option<ListenerTlsConfig>,
}

/// The default `server.strip_request_headers`.
pub fn default_strip_request_headers() -> Vec<String> {
    [
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The Commerce API (or the emulator) that requests are forwarded to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// `http://` or `https://` scheme plus authority, no path beyond `/`. Required.
    pub url: http::Uri,
    /// Extra CA certificates (PEM) trusted for an `https` upstream, on top of the system roots.
    pub ca_file: Option<PathBuf>,
    /// TCP (and TLS) connect timeout. Default `5s`.
    pub connect_timeout: Duration,
    /// Time from sending the request to receiving the upstream's response head; `504` after.
    /// Default `30s`.
    pub response_timeout: Duration,
    /// Idle pooled connections are closed after this; below the upstream's own idle timeout, so
    /// the upstream does not close a connection just as a request goes out on it. Default `50s`.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per upstream host. Default `64`.
    pub pool_max_idle_per_host: usize,
    /// Connections open to the upstream at once; a request finding none free waits for one up
    /// to `connect_timeout`, then gets `503`. Default 256.
    pub max_connections: usize,
    /// The longest pause in a forwarded body, either way: a client's request body on its way
    /// up, the upstream's answer on its way down, and a client leaving an answer unread (read
    /// once, at start). Default `30s`.
    pub body_timeout: Duration,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `tracing` filter directive used when `RUST_LOG` is not set. Default `info`.
    pub level: String,
    /// Output format. Default text.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, for terminals.
    Text,
    /// One JSON object a line, for Kubernetes log collectors.
    Json,
}

/// The admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where the bearer token of the admin API is kept (`token_env` or `token_file`). Not set by
    /// default; the admin API is then unavailable.
    pub token: Option<SecretRef>,
}

impl Config {
    /// A configuration with every default and the given upstream, as a file holding only
    /// `[upstream] url` would give. (The defaults themselves live in `file.rs`.)
    pub fn with_upstream(url: http::Uri) -> Self {
        file::FileConfig::default().into_config(url, AdminConfig::default())
    }
}

/// A loaded configuration and what the operator should be told about it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Problems that do not stop the gateway, one sentence each, prefixed with their key.
    pub warnings: Vec<String>,
    /// The data listener's TLS settings, built from `[server.tls]`'s files while validating
    /// them: the gateway serves these rather than reading the files a second time.
    pub listener_tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

/// Loads the file at `path` with overrides from the process environment.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    // A variable whose name is not Unicode cannot be an override or a secret reference; a value
    // that is not Unicode is kept lossily (with U+FFFD), which the key's checks usually reject.
    let vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
        .collect();
    let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    from_toml_str(&text, &env)
}

/// Loads a configuration from TOML text, with `env` (name, value) as the environment: the
/// source of `ACCOUNT_GATE__*` overrides and of the variables secret references name.
pub fn from_toml_str(text: &str, env: &[(&str, &str)]) -> Result<Loaded, ConfigErrors> {
    let mut tree: toml::Table = text.parse().map_err(|e| syntax_error(text, &e))?;
    let mut report = error::Report::default();
    env::apply_overrides(&mut tree, env, &mut report);
    tracing::apply_standard_variables(&mut tree, env, &mut report);
    schema::check_tree(&mut tree, &mut report);
    let file = toml::Value::Table(tree)
        .try_into::<file::FileConfig>()
        .unwrap_or_else(|e| {
            // Everything the schema rejects was removed above, so this is a bug; report it
            // rather than panic, and go on to find the other problems.
            report.error(ConfigError::Invalid {
                key: "config".to_owned(),
                reason: format!("internal error: {}", e.message().trim_end()),
                env_var: None,
            });
            file::FileConfig::default()
        });
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| OsString::from(v))
    };
    let validated = validate::validate(file, &lookup, &mut report);
    let warnings = report.finish()?;
    match validated {
        Some(validate::Validated {
            config,
            listener_tls,
        }) => Ok(Loaded {
            config,
            warnings,
            listener_tls,
        }),
        // validate returns None only after reporting an error, which finish() has returned.
        None => Err(ConfigError::Invalid {
            key: "upstream.url".to_owned(),
            reason: "internal error: rejected without a reason".to_owned(),
            env_var: None,
        }
        .into()),
    }
}

fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let offset = error.span().map_or(0, |span| span.start).min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    ConfigError::Syntax {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
        reason: error.message().trim_end().replace('\n', "; "),
    }
}
