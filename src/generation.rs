//! One generation of the gateway's request-handling state, built from one configuration. A
//! reload builds the next generation and swaps it in atomically; requests already in flight
//! finish on the generation they started with. What must outlive a reload — the token store,
//! the metrics, the rate-limit counts and the signature verifier (when their settings did not
//! change) — is carried over.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::admin_api::AdminApi;
use crate::config::SecretError;
use crate::config::{Config, Secret, SecretRef};
use crate::metrics::Metrics;
use crate::proxy::{Decisions, Gateway, Upstream};
use crate::scope::{Rule, Rules};
use crate::signup::{RateLimiter, RateLimits, Signup, SignupPolicy, SignupSettings};
use crate::store::Store;
use crate::token::{SignatureSettings, Verifier};
use crate::validator::{IdentityHeaders, Validator, ValidatorSettings};
use crate::StartError;

/// What every generation shares.
#[derive(Clone)]
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub store: Arc<Store>,
    /// The data listener's TLS settings (`[server.tls]`): each reload swaps in the settings
    /// built from the certificate files while validating it, for new handshakes.
    pub listener_tls: Option<Arc<arc_swap::ArcSwap<rustls::ServerConfig>>>,
}

/// The state built from one configuration.
pub struct Generation {
    /// The configuration it was built from.
    pub config: Config,
    /// The data plane.
    pub gateway: Arc<Gateway>,
    /// The decisions of the authz listener (`[authz]`), by the same validator.
    pub decisions: Arc<Decisions>,
    /// The signature verifier, in the signature modes.
    pub verifier: Option<Arc<Verifier>>,
    /// The admin API, when an admin token is configured.
    pub api: Option<AdminApi>,
    /// Token-request rate limits, kept across reloads that do not change them.
    limiter: Arc<RateLimiter>,
    /// SHA-256 of the key material the verifier was built with (the HS256 secret, the public key
    /// file): a reload whose references are unchanged but whose keys changed (a rotated Secret)
    /// builds a new verifier, and with it an empty verified cache.
    keys_digest: Option<[u8; 32]>,
    /// SHA-256 of `upstream.ca_file`'s contents, when set: a renewed CA rebuilds the client.
    upstream_digest: Option<[u8; 32]>,
}

impl Generation {
    /// Builds the generation for `config`, reusing from `previous` what `config` leaves as it was.
    pub async fn build(
        config: Config,
        shared: &Shared,
        previous: Option<&Generation>,
    ) -> Result<Generation, StartError> {
        // A reload that leaves `[upstream]` and its CA as they were keeps the client, and with
        // it the open connections: rebuilding would drop them all and reconnect under load.
        let upstream_digest = upstream_ca_digest(&config);
        let upstream = match previous {
            Some(old)
                if old.config.upstream == config.upstream
                    && old.upstream_digest == upstream_digest =>
            {
                old.gateway.upstream().clone()
            }
            _ => Arc::new(Upstream::new(&config.upstream)?),
        };
        let settings = config
            .tokens
            .mode
            .checks_signatures()
            .then(|| signature_settings(&config))
            .transpose()?;
        let keys_digest = settings.as_ref().map(key_material_digest);
        let verifier = match (previous, settings) {
            (Some(old), Some(_))
                if old.config.tokens.signature == config.tokens.signature
                    && old.keys_digest == keys_digest
                    && old.config.tokens.leeway == config.tokens.leeway
                    && old.config.tokens.cache_max_entries == config.tokens.cache_max_entries =>
            {
                old.verifier.clone()
            }
            (previous, Some(settings)) => {
                if previous.is_some_and(|old| old.keys_digest.is_some()) {
                    tracing::info!(
                        "signature keys or settings changed: verifier and its cache rebuilt"
                    );
                }
                let verifier = Arc::new(Verifier::new(settings).await?);
                if let Some(events) = shared.store.revocation_events() {
                    tokio::spawn(forget_revoked(Arc::downgrade(&verifier), events));
                }
                Some(verifier)
            }
            (_, None) => None,
        };
        let limiter = match previous {
            Some(old) if old.config.rate_limit == config.rate_limit => old.limiter.clone(),
            _ => Arc::new(RateLimiter::new(rate_limits(&config))),
        };
        let validator = Arc::new(Validator::new(
            validator_settings(&config),
            shared.store.clone(),
            verifier.clone(),
            shared.metrics.clone(),
        ));
        let api = resolve_secret(config.admin.token.as_ref(), "admin.token")?
            .map(|token| AdminApi::new(&token, shared.store.clone(), validator.clone()));
        let signup = Signup::new(
            signup_settings(&config),
            limiter.clone(),
            shared.store.clone(),
            shared.metrics.clone(),
        );
        let decisions = Arc::new(Decisions::new(
            validator.clone(),
            &config.authz,
            shared.metrics.clone(),
        ));
        let gateway = Arc::new(Gateway::new(
            upstream,
            signup,
            validator,
            &config.server.strip_request_headers,
            config.server.trusted_hops,
            shared.metrics.clone(),
        ));
        Ok(Generation {
            config,
            gateway,
            decisions,
            verifier,
            api,
            limiter,
            keys_digest,
            upstream_digest,
        })
    }
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
        learned_ttl: tokens.learned_ttl,
        negative_max_entries: tokens.negative_max_entries,
        rules: Rules::new(configured, &config.signup.path),
        identity: IdentityHeaders::new(&tokens.account_id_header, &tokens.member_id_header),
    }
}

/// SHA-256 over the key material of `settings`, each piece length-prefixed.
fn key_material_digest(settings: &SignatureSettings) -> [u8; 32] {
    let mut digest = Sha256::new();
    let pieces = settings.hs256_secret.iter().chain(&settings.public_keys);
    for piece in pieces {
        digest.update((piece.len() as u64).to_le_bytes());
        digest.update(piece);
    }
    digest.update([u8::from(settings.hs256_secret.is_some())]);
    // The JWKS endpoint's extra CA is read when the verifier is built: a renewed one counts too.
    if let Some(path) = &settings.jwks_ca_file {
        digest.update(file_digest(path));
    }
    digest.finalize().into()
}

/// SHA-256 of the upstream's extra CA file, when one is set.
fn upstream_ca_digest(config: &Config) -> Option<[u8; 32]> {
    config.upstream.ca_file.as_deref().map(file_digest)
}

/// SHA-256 of a referenced file's contents. An unreadable file hashes as empty: whatever is
/// built from it failed or will fail on its own, and a later readable version still differs.
fn file_digest(path: &Path) -> [u8; 32] {
    Sha256::digest(std::fs::read(path).unwrap_or_default()).into()
}

/// The files a configuration refers to (secrets, keys, CAs): a change to one of them is a change
/// of the configuration, and reloads it.
pub(crate) fn referenced_files(config: &Config) -> Vec<std::path::PathBuf> {
    let signature = &config.tokens.signature;
    let admin = match &config.admin.token {
        Some(SecretRef::File(path)) => Some(path),
        _ => None,
    };
    let tls = config.server.tls.as_ref();
    [
        tls.map(|tls| &tls.cert_file),
        tls.map(|tls| &tls.key_file),
        tls.and_then(|tls| tls.client_ca_file.as_ref()),
        signature.hs256_secret_file.as_ref(),
        signature.public_key_file.as_ref(),
        signature.jwks_ca_file.as_ref(),
        config.store.redis_password_file.as_ref(),
        config.upstream.ca_file.as_ref(),
        admin,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect()
}

/// The verifier's settings: secrets resolved and key files read.
fn signature_settings(config: &Config) -> Result<SignatureSettings, StartError> {
    let signature = &config.tokens.signature;
    let hs256_secret = resolve_secret(
        signature.hs256_secret().as_ref(),
        "tokens.signature.hs256_secret",
    )?
    .map(|secret| {
        signature
            .hs256_secret_encoding
            .decode(secret.expose())
            .ok_or(StartError::Secret {
                key: "tokens.signature.hs256_secret".to_owned(),
                source: SecretError::Encoding("base64"),
            })
    })
    .transpose()?;
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
    let signup = &config.signup;
    SignupSettings {
        policy: SignupPolicy {
            mechanisms: signup.mechanisms.clone(),
            username_must_be_email: signup.username_must_be_email,
            min_password_length: signup.min_password_length,
        },
        max_body_bytes: config.server.max_body_bytes,
        body_read_timeout: config.server.body_read_timeout,
        max_response_bytes: signup.max_response_bytes,
    }
}

/// The rate limits from the configuration.
fn rate_limits(config: &Config) -> RateLimits {
    let limits = &config.rate_limit;
    RateLimits {
        window: limits.window,
        signup_per_ip: limits.signup_per_ip,
        signup_per_username: limits.signup_per_username,
        login_per_ip: limits.login_per_ip,
        login_per_username: limits.login_per_username,
        logout_per_ip: limits.logout_per_ip,
        logout_per_member: limits.logout_per_member,
        max_keys: limits.max_keys,
    }
}

/// Resolves an optional secret reference. `key` names it without its `_env`/`_file` suffix
/// (`admin.token`), for the error.
pub(crate) fn resolve_secret(
    reference: Option<&SecretRef>,
    key: &str,
) -> Result<Option<Secret>, StartError> {
    let Some(reference) = reference else {
        return Ok(None);
    };
    let suffix = match reference {
        SecretRef::Env(_) => "_env",
        SecretRef::File(_) => "_file",
    };
    reference
        .resolve()
        .map(Some)
        .map_err(|source| StartError::Secret {
            key: format!("{key}{suffix}"),
            source,
        })
}
