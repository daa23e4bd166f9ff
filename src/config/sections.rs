//! Sections whose file form is also their internal form: no conversion is needed, so one struct
//! serves both, with its defaults written once in its `Default` impl.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::signup::Mechanism;

/// `[signup]`: the token endpoint and what a token request must satisfy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignupConfig {
    /// Path of the token endpoint. Default `/v2/account-members/tokens`.
    pub path: String,
    /// Mechanisms accepted; the others get 400 `mechanism_disabled`. Default: all five.
    pub mechanisms: Vec<Mechanism>,
    /// Whether `username` must look like an e-mail address. Default false.
    pub username_must_be_email: bool,
    /// Minimum password length for `self_signup`, in characters; 0 is off. Default 0.
    pub min_password_length: usize,
    /// Largest `201` answer copied to learn its tokens; larger ones pass through unlearnt.
    /// Default 1 MiB.
    pub max_response_bytes: usize,
}

impl Default for SignupConfig {
    fn default() -> Self {
        SignupConfig {
            path: "/v2/account-members/tokens".to_owned(),
            mechanisms: Mechanism::ALL.to_vec(),
            username_must_be_email: false,
            min_password_length: 0,
            max_response_bytes: 1024 * 1024,
        }
    }
}

/// `[server.tls]`: TLS on the data listener (the admin listener stays plain HTTP, for probes and
/// Prometheus). The files are read at start and again whenever they change: new handshakes get
/// the new certificate, open connections keep theirs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerTlsConfig {
    /// PEM certificate chain, leaf first. Required.
    pub cert_file: std::path::PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC; RSA, ECDSA or Ed25519). Required.
    pub key_file: std::path::PathBuf,
    /// PEM CA certificates: when set, every client must present a certificate that chains to
    /// one of them (mutual TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<std::path::PathBuf>,
}

/// `[server.http2]`: limits of HTTP/2 client connections, sized for a sidecar's memory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Config {
    /// Streams one connection may have open at once. Default 100.
    pub max_concurrent_streams: u32,
    /// A connection the client has sent nothing on for this long is pinged. Default `20s`.
    #[serde(with = "super::file::duration")]
    pub keep_alive_interval: Duration,
    /// A ping unanswered for this long closes the connection. Default `10s`.
    #[serde(with = "super::file::duration")]
    pub keep_alive_timeout: Duration,
    /// Bytes a client may send on one stream before the gateway reads them. Default 64 KiB.
    pub initial_stream_window_size: u32,
    /// Bytes a client may send on all streams of a connection before the gateway reads them.
    /// Default 256 KiB.
    pub initial_connection_window_size: u32,
    /// Bytes of answer buffered per stream for a client that reads slowly. Default 64 KiB.
    pub max_send_buf_size: usize,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            max_concurrent_streams: 100,
            keep_alive_interval: Duration::from_secs(20),
            keep_alive_timeout: Duration::from_secs(10),
            initial_stream_window_size: 64 * 1024,
            initial_connection_window_size: 256 * 1024,
            max_send_buf_size: 64 * 1024,
        }
    }
}

/// `[rate_limit]`: token requests allowed per window; 0 turns one limit off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Length of a counting window. Default `60s`.
    #[serde(with = "super::file::duration")]
    pub window: Duration,
    /// Sign-ups per client IP per window. Default 100.
    pub signup_per_ip: u32,
    /// Sign-ups per username per window. Default 10.
    pub signup_per_username: u32,
    /// Logins (every other mechanism) per client IP per window. Default 100.
    pub login_per_ip: u32,
    /// Logins per username per window. Default 10.
    pub login_per_username: u32,
    /// Logouts per client IP per window. Default 100.
    pub logout_per_ip: u32,
    /// Logouts per account member per window. Default 10.
    pub logout_per_member: u32,
    /// Distinct clients (or usernames) counted exactly per limit and window, about 20 bytes
    /// each; beyond, a fixed-size estimator counts them, which may over-count. Default 100 000.
    pub max_keys: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            window: Duration::from_secs(60),
            signup_per_ip: 100,
            signup_per_username: 10,
            login_per_ip: 100,
            login_per_username: 10,
            logout_per_ip: 100,
            logout_per_member: 10,
            max_keys: 100_000,
        }
    }
}

/// `[store]`: where issued tokens are recorded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `memory`: in this process; `redis`: shared by every replica. Default `memory`.
    pub backend: StoreBackend,
    /// Most token records held by the memory backend; beyond it, the least recently used are
    /// evicted (sampled). Each costs about 200 bytes (measured: `benches/store_memory.rs`).
    /// Default 100 000.
    pub max_entries: u64,
    /// Redis to use with `backend = "redis"`: `redis://host:port/db` or `rediss://` (TLS). With
    /// `redis_cluster`, a comma-separated list of seed nodes. No password here (see
    /// `redis_password_env` / `redis_password_file`). Required for the redis backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Whether `redis_url` names a Redis Cluster. Default false.
    pub redis_cluster: bool,
    /// Environment variable holding the Redis password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_password_env: Option<String>,
    /// File holding the Redis password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_password_file: Option<std::path::PathBuf>,
    /// Multiplexed connections to Redis, used round-robin. Default 2.
    pub redis_pool_size: usize,
    /// Longest wait for one Redis command; past it the call fails as `store_unavailable`.
    /// Default `250ms`.
    #[serde(with = "super::file::duration")]
    pub command_timeout: Duration,
    /// Prefix of every Redis key and of the revocation channel. Default `account-gate:`.
    pub key_prefix: String,
    /// How long a Redis answer is reused from the in-process L1 cache. Default `5s`.
    #[serde(with = "super::file::duration")]
    pub l1_ttl: Duration,
    /// Most fingerprints held in the L1 cache. Default 100 000.
    pub l1_max_entries: u64,
    /// Revocations one account member holds one by one; past it, the member's tokens issued
    /// until then are revoked together (one entry). The deny-list's only bound: no member can
    /// push out another's revocation. Default 32.
    pub max_revoked_per_member: usize,
    /// How often each replica re-reads every revocation from Redis into its local deny-list
    /// (Redis backend), besides after each resubscription: catches a revocation whose message
    /// was lost without the subscription dropping. Default `60s`.
    #[serde(with = "super::file::duration")]
    pub revocation_resync: Duration,
}

impl StoreConfig {
    /// The Redis password's reference, when one of `redis_password_env` / `redis_password_file`
    /// is set (validation refuses both).
    pub fn redis_password(&self) -> Option<super::SecretRef> {
        match (&self.redis_password_env, &self.redis_password_file) {
            (Some(name), _) => Some(super::SecretRef::Env(name.clone())),
            (None, Some(path)) => Some(super::SecretRef::File(path.clone())),
            (None, None) => None,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Memory,
            max_entries: 100_000,
            redis_url: None,
            redis_cluster: false,
            redis_password_env: None,
            redis_password_file: None,
            redis_pool_size: 2,
            command_timeout: Duration::from_millis(250),
            key_prefix: "account-gate:".to_owned(),
            l1_ttl: Duration::from_secs(5),
            l1_max_entries: 100_000,
            max_revoked_per_member: 32,
            revocation_resync: Duration::from_secs(60),
        }
    }
}

/// Store backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// Striped tables in this process.
    Memory,
    /// Redis (or Redis Cluster), shared by every replica, with a moka L1 in front.
    Redis,
}

/// `[tokens]`: how account tokens travel and how they are validated.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// Header carrying the account token (case-insensitive).
    /// Default `EP-Account-Management-Authentication-Token`.
    pub header: String,
    /// What makes a token valid. Default `issued`.
    pub mode: TokenMode,
    /// What to do with a token the store does not know (modes `issued` and `either`).
    /// Default `upstream`.
    pub unknown: UnknownTokens,
    /// Clock skew allowed on `exp` and `nbf`. Default `30s`.
    #[serde(with = "super::file::duration")]
    pub leeway: Duration,
    /// How long a token the upstream refused is answered locally. Default `60s`.
    #[serde(with = "super::file::duration")]
    pub negative_ttl: Duration,
    /// How long a token learned from an upstream 2xx (`unknown = "upstream"`) is trusted, at
    /// most: a learned token is provisional, unlike one issued in a `201`. Default `15m`.
    #[serde(with = "super::file::duration")]
    pub learned_ttl: Duration,
    /// Most refused tokens remembered. Default 100 000.
    pub negative_max_entries: u64,
    /// Most verified signatures cached. Default 100 000.
    pub cache_max_entries: u64,
    /// Header telling the upstream the validated account; empty turns it off. A copy sent by
    /// the client is always removed. Default `X-Account-Id`.
    pub account_id_header: String,
    /// Header telling the upstream the validated member; empty turns it off. A copy sent by
    /// the client is always removed. Default `X-Account-Member-Id`.
    pub member_id_header: String,
    /// `[tokens.signature]`: keys for the modes that check signatures.
    pub signature: SignatureConfig,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            header: "EP-Account-Management-Authentication-Token".to_owned(),
            mode: TokenMode::Issued,
            unknown: UnknownTokens::Upstream,
            leeway: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(60),
            learned_ttl: Duration::from_secs(15 * 60),
            negative_max_entries: 100_000,
            cache_max_entries: 100_000,
            account_id_header: "X-Account-Id".to_owned(),
            member_id_header: "X-Account-Member-Id".to_owned(),
            signature: SignatureConfig::default(),
        }
    }
}

/// `[tokens] mode` (docs/design.md, "Validation modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenMode {
    /// Seen issued by the upstream (through this gateway or its shared store).
    Issued,
    /// A valid signature with the configured keys.
    Signature,
    /// Issued, or else a valid signature.
    Either,
    /// Issued and a valid signature.
    Both,
}

impl TokenMode {
    /// Whether signatures are checked at all, so keys are needed.
    pub fn checks_signatures(self) -> bool {
        self != TokenMode::Issued
    }
}

/// `[tokens] unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownTokens {
    /// Check locally, let the upstream decide once, learn from its answer.
    Upstream,
    /// 401 `token_unknown`.
    Reject,
}

/// How a secret's value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretEncoding {
    /// The value's UTF-8 bytes.
    #[default]
    Text,
    /// Base64 of the bytes.
    Base64,
}

impl SecretEncoding {
    /// The key bytes `value` stands for; `None` if it is not in this encoding.
    pub fn decode(self, value: &str) -> Option<Vec<u8>> {
        use base64::Engine;
        match self {
            SecretEncoding::Text => Some(value.as_bytes().to_vec()),
            SecretEncoding::Base64 => {
                let compact: String = value.split_whitespace().collect();
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(compact.trim_end_matches('='))
                    .ok()
                    .filter(|bytes| !bytes.is_empty())
            }
        }
    }
}

/// `[tokens.signature]`: keys, pinned algorithms and claim checks for signature validation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignatureConfig {
    /// Algorithms accepted; a token's `alg` must be one of them. `none` is never accepted.
    /// Default `["HS256"]`, what the Commerce API signs with.
    pub algorithms: Vec<String>,
    /// Environment variable holding the HS256 secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hs256_secret_env: Option<String>,
    /// File holding the HS256 secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hs256_secret_file: Option<std::path::PathBuf>,
    /// How the HS256 secret is written: `text` (default; its UTF-8 bytes are the key, a file's
    /// trailing newline removed, nothing else trimmed) or `base64` (standard alphabet, padding
    /// optional, surrounding whitespace ignored: for a key of raw bytes).
    pub hs256_secret_encoding: SecretEncoding,
    /// PEM file with a public key (RSA, EC or Ed25519).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<std::path::PathBuf>,
    /// JWKS document to fetch keys from: `https://`, or `http://` with `jwks_allow_http`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Allows an `http://` `jwks_url` (keys fetched in clear can be replaced on the way: only for
    /// a JWKS served on the same host or pod). Default false.
    pub jwks_allow_http: bool,
    /// Extra CA (PEM) for an https `jwks_url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_ca_file: Option<std::path::PathBuf>,
    /// How often the JWKS is refetched. Default `5m`.
    #[serde(with = "super::file::duration")]
    pub jwks_refresh: Duration,
    /// Least time between refetches triggered by an unknown `kid`. Default `30s`.
    #[serde(with = "super::file::duration")]
    pub jwks_cooldown: Duration,
    /// Timeout of one JWKS fetch. Default `5s`.
    #[serde(with = "super::file::duration")]
    pub jwks_timeout: Duration,
    /// Required `iss`, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

impl SignatureConfig {
    /// The HS256 secret's reference, when one of `hs256_secret_env` / `hs256_secret_file` is set
    /// (validation refuses both).
    pub fn hs256_secret(&self) -> Option<super::SecretRef> {
        match (&self.hs256_secret_env, &self.hs256_secret_file) {
            (Some(name), _) => Some(super::SecretRef::Env(name.clone())),
            (None, Some(path)) => Some(super::SecretRef::File(path.clone())),
            (None, None) => None,
        }
    }
}

impl Default for SignatureConfig {
    fn default() -> Self {
        SignatureConfig {
            algorithms: vec!["HS256".to_owned()],
            hs256_secret_env: None,
            hs256_secret_file: None,
            hs256_secret_encoding: SecretEncoding::Text,
            jwks_allow_http: false,
            public_key_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            jwks_refresh: Duration::from_secs(300),
            jwks_cooldown: Duration::from_secs(30),
            jwks_timeout: Duration::from_secs(5),
            issuer: None,
            audience: None,
        }
    }
}

/// `[authz]`: the external-authorization listener, where an ingress (nginx `auth_request`,
/// Caddy `forward_auth`, Traefik `forwardAuth`, Envoy or Istio `ext_authz`) asks whether one
/// request may go on. It judges and forwards nothing; off unless `listen` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzConfig {
    /// Where the ingress calls. Not set by default (no such listener). It must be reachable by
    /// the ingress only: it trusts `X-Forwarded-Method`/`-Uri` and `X-Original-Method`/`-URI`.
    #[serde(
        deserialize_with = "optional_addr",
        skip_serializing_if = "Option::is_none"
    )]
    pub listen: Option<std::net::SocketAddr>,
    /// Removed from the front of a call's own path when the call carries no target header
    /// (Envoy's HTTP `ext_authz` service prepends its `path_prefix`): `/authz` makes a call to
    /// `/authz/v2/accounts/A` judge `/v2/accounts/A`. Empty (the default) removes nothing.
    pub path_prefix: String,
    /// Where the judged request's method and target are read: `any` (the default) takes
    /// `X-Forwarded-Method`/`-Uri`, else `X-Original-Method`/`-URI`, else the call's own method
    /// and path, and refuses a call carrying both pairs; `forwarded` (Traefik, Caddy),
    /// `original` (nginx) or `path` (Envoy, Istio) reads that source alone and ignores the
    /// others, so that headers a client slipped past the ingress cannot name the target.
    pub target_from: TargetFrom,
}

/// `[authz] target_from`: where the judged request is named.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetFrom {
    /// Whichever the call carries (both header pairs: 400).
    #[default]
    Any,
    /// `X-Forwarded-Method` and `X-Forwarded-Uri` only.
    Forwarded,
    /// `X-Original-Method` and `X-Original-URI` only.
    Original,
    /// The call's own method and path, `path_prefix` removed, only.
    Path,
}

/// An optional socket address, with an error that quotes the value.
fn optional_addr<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format_args!(
            "invalid socket address {text:?} (expected e.g. \"127.0.0.1:8081\" or \"[::1]:8081\")"
        ))
    })
}
