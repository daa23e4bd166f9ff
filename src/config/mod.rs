//! Configuration: the TOML file schema, environment overrides, validation that reports every
//! problem at once, and the internal [`Config`] the rest of the gateway reads.
//!
//! The types in this file are the *internal* configuration: already validated, with defaults
//! filled in. Everything else in the crate reads these and never the raw TOML.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole, validated configuration of one gateway.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub log: LogConfig,
}

/// The downstream listeners and what they accept.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where clients (the storefront) connect. Default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// Metrics, health and (later) the admin API; kept off the data port so it is never exposed
    /// with it. Default `0.0.0.0:9090`.
    pub admin_listen: SocketAddr,
    /// A client that has not sent its full request head within this is disconnected
    /// (slowloris protection). Default `10s`.
    pub header_read_timeout: Duration,
    /// Largest request head accepted; more gets `431`. Default 16 KiB (hyper's floor is 8 KiB).
    pub max_header_bytes: usize,
    /// Largest body of a request the gateway reads itself (sign-up/login). Default 64 KiB.
    pub max_body_bytes: usize,
    /// Connections served at once; further clients wait in the kernel backlog. Default 10 000.
    pub max_connections: usize,
    /// After SIGTERM, how long the listener keeps accepting while readiness is already false, so
    /// that Kubernetes can take the pod out of its endpoints first. Default `5s`.
    pub shutdown_delay: Duration,
    /// How long in-flight requests may take to finish once the listener has stopped. Default `30s`.
    pub shutdown_grace: Duration,
}

/// The Commerce API (or the emulator) that requests are forwarded to.
#[derive(Debug, Clone)]
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
    /// Idle pooled connections are closed after this. Default `90s`.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per upstream host. Default `64`.
    pub pool_max_idle_per_host: usize,
}

/// Logging.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `tracing` filter directive used when `RUST_LOG` is not set. Default `info`.
    pub level: String,
    /// Output format. Default text.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, for terminals.
    Text,
    /// One JSON object a line, for Kubernetes log collectors.
    Json,
}

impl Config {
    /// A configuration with every default and the given upstream, as a file holding only
    /// `[upstream] url` would give.
    pub fn with_upstream(url: http::Uri) -> Self {
        Config {
            server: ServerConfig {
                listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
                admin_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
                header_read_timeout: Duration::from_secs(10),
                max_header_bytes: 16 * 1024,
                max_body_bytes: 64 * 1024,
                max_connections: 10_000,
                shutdown_delay: Duration::from_secs(5),
                shutdown_grace: Duration::from_secs(30),
            },
            upstream: UpstreamConfig {
                url,
                ca_file: None,
                connect_timeout: Duration::from_secs(5),
                response_timeout: Duration::from_secs(30),
                pool_idle_timeout: Duration::from_secs(90),
                pool_max_idle_per_host: 64,
            },
            log: LogConfig {
                level: "info".to_owned(),
                format: LogFormat::Text,
            },
        }
    }
}
