//! The signature verifier: settings, the [`Verifier`] and the order of checks.
//!
//! A token is judged in this order, cheapest and least trusting first:
//! 1. length, then the verified cache (by [`Fingerprint`]; `exp` re-checked on a hit);
//! 2. three strict base64url segments, a JSON-object header whose `alg` is exactly one of the
//!    pinned algorithms and which has no `crit` ([`jws`](super::jws));
//! 3. the claim types (`exp` a number, …), so a string `exp` is a clear refusal, never a crash;
//! 4. the signature, with keys of the token's algorithm family only: the secret and the PEM keys
//!    (which have no `kid` and are tried for any token of their family), then the JWKS keys
//!    named by the token's `kid` (all of the family when it has none);
//! 5. `exp`/`nbf`/`iat` with leeway, then `iss`/`aud` when configured.
//!
//! A forged token therefore reads `bad_signature` whatever its claims say.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use http::Uri;
use jsonwebtoken::{Algorithm, AlgorithmFamily};

use super::cache::{Verified, VerifiedCache};
use super::error::{KeyError, TokenError};
use super::fetch::Fetcher;
use super::jws::{self, Compact, MAX_TOKEN_LEN};
use super::keys::{self, VerifyingKey};
use super::source::{JwksSource, Refresh};
use super::validate::{self, check_exp, unix_now, ClaimRules};
use crate::store::Fingerprint;

/// What the verifier needs, resolved by the config loader (secrets read, files loaded).
#[derive(Clone)]
pub struct SignatureSettings {
    /// The pinned algorithms; a token's `alg` must be one of them. `none` cannot be expressed.
    pub algorithms: Vec<Algorithm>,
    /// The shared HMAC secret (raw bytes), used for HS* only.
    pub hs256_secret: Option<Vec<u8>>,
    /// PEM public keys (RSA, EC P-256/P-384, Ed25519), one key per entry.
    pub public_keys: Vec<Vec<u8>>,
    /// JWKS document URL (`http://` or `https://`).
    pub jwks_url: Option<Uri>,
    /// Extra CA (PEM) trusted for an https JWKS, besides the system roots.
    pub jwks_ca_file: Option<PathBuf>,
    /// Interval between scheduled JWKS fetches.
    pub jwks_refresh: Duration,
    /// Least time since the previous JWKS fetch before an unknown `kid` may cause another.
    /// Zero disables the cooldown (concurrent misses still share one fetch).
    pub jwks_cooldown: Duration,
    /// Bound on one JWKS fetch, connect to last byte.
    pub jwks_timeout: Duration,
    /// Clock-skew allowance for `exp`, `nbf` and `iat` (whole seconds).
    pub leeway: Duration,
    /// Required `iss`, if any.
    pub issuer: Option<String>,
    /// Required member of `aud`, if any.
    pub audience: Option<String>,
    /// Bound on the verified-token cache.
    pub cache_max_entries: u64,
}

impl Default for SignatureSettings {
    fn default() -> Self {
        SignatureSettings {
            algorithms: vec![Algorithm::HS256],
            hs256_secret: None,
            public_keys: Vec::new(),
            jwks_url: None,
            jwks_ca_file: None,
            jwks_refresh: Duration::from_secs(300),
            jwks_cooldown: Duration::from_secs(30),
            jwks_timeout: Duration::from_secs(5),
            leeway: Duration::from_secs(30),
            issuer: None,
            audience: None,
            cache_max_entries: 100_000,
        }
    }
}

// By hand, so the secret never reaches a log line.
impl fmt::Debug for SignatureSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureSettings")
            .field("algorithms", &self.algorithms)
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("public_keys", &self.public_keys.len())
            .field("jwks_url", &self.jwks_url)
            .field("jwks_ca_file", &self.jwks_ca_file)
            .field("jwks_refresh", &self.jwks_refresh)
            .field("jwks_cooldown", &self.jwks_cooldown)
            .field("jwks_timeout", &self.jwks_timeout)
            .field("leeway", &self.leeway)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("cache_max_entries", &self.cache_max_entries)
            .finish()
    }
}

/// What a verified token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// `sub`: the account member id.
    pub member_id: Option<String>,
    /// `scope`: the account id the token is scoped to.
    pub account_id: Option<String>,
    /// `exp`.
    pub expires_at: SystemTime,
    /// `iat`, when present: compared with a member's revocation watermark.
    pub issued_at: Option<SystemTime>,
}

/// Verifies account tokens against the configured keys. Share it behind an `Arc`; dropping it
/// stops the JWKS refresh task.
pub struct Verifier {
    inner: Arc<Inner>,
    refresher: Option<tokio::task::AbortHandle>,
}

struct Inner {
    pinned: Vec<Algorithm>,
    rules: ClaimRules,
    /// The secret and the PEM keys: fixed for the life of the verifier.
    static_keys: Vec<VerifyingKey>,
    jwks: Option<JwksSource>,
    cache: VerifiedCache,
}

impl Verifier {
    /// Builds keys; fetches the JWKS once if configured (a failed first fetch is logged and
    /// retried later, not fatal) and spawns the refresh task (stopped when the Verifier is
    /// dropped). Must run inside a tokio runtime.
    pub async fn new(settings: SignatureSettings) -> Result<Verifier, KeyError> {
        let pinned = settings.algorithms.clone();
        let static_keys = keys::static_keys(
            &pinned,
            settings.hs256_secret.as_deref(),
            &settings.public_keys,
            settings.jwks_url.is_some(),
        )?;
        let jwks = match settings.jwks_url.clone() {
            None => None,
            Some(url) => {
                if settings.jwks_refresh.is_zero() {
                    return Err(KeyError::ZeroDuration("jwks_refresh"));
                }
                if settings.jwks_timeout.is_zero() {
                    return Err(KeyError::ZeroDuration("jwks_timeout"));
                }
                let fetcher =
                    Fetcher::new(url, settings.jwks_ca_file.as_deref(), settings.jwks_timeout)?;
                Some(JwksSource::new(
                    fetcher,
                    pinned.clone(),
                    settings.jwks_cooldown,
                ))
            }
        };
        let leeway = i64::try_from(settings.leeway.as_secs()).unwrap_or(i64::MAX);
        let inner = Arc::new(Inner {
            rules: ClaimRules {
                leeway,
                issuer: settings.issuer,
                audience: settings.audience,
            },
            pinned,
            static_keys,
            jwks,
            cache: VerifiedCache::new(settings.cache_max_entries, leeway),
        });
        let mut refresher = None;
        if let Some(jwks) = &inner.jwks {
            if let Refresh::Replaced { .. } = jwks.refresh().await {
                tracing::info!(keys = jwks.snapshot().0.len(), "JWKS loaded");
            }
            let task = tokio::spawn(refresh_loop(Arc::downgrade(&inner), settings.jwks_refresh));
            refresher = Some(task.abort_handle());
        }
        Ok(Verifier { inner, refresher })
    }

    /// Verifies signature + claims. Answers from the verified cache when it can (a token is
    /// verified once, then served from the cache until its `exp`); `exp` with leeway is
    /// re-applied on every hit.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let fingerprint = Fingerprint::of(token);
        let inner = &self.inner;
        let verified = inner
            .cache
            .get_or_verify(fingerprint, || inner.verify_fresh(token, fingerprint))
            .await?;
        check_exp(verified.exp, unix_now(), inner.rules.leeway)?;
        Ok(verified.token.clone())
    }

    /// Verifies without reading or filling the cache (benchmarks, diagnostics).
    pub async fn verify_uncached(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let verified = self
            .inner
            .verify_fresh(token, Fingerprint::of(token))
            .await?;
        Ok(verified.token)
    }

    /// Drops a token's cache entry (revocation); its next use is verified again. A
    /// verification already in flight may still store its entry afterwards, so the store's
    /// deny-list, checked on every request, stays the authority on revocation.
    pub fn invalidate(&self, fp: &Fingerprint) {
        self.inner.cache.invalidate(fp);
    }

    /// Verifications answered without checking a signature (`verified_cache_hits_total`).
    pub fn cache_hits(&self) -> u64 {
        self.inner.cache.hits()
    }

    /// Signature verifications run (`verified_cache_misses_total`).
    pub fn cache_misses(&self) -> u64 {
        self.inner.cache.misses()
    }

    /// JWKS HTTP requests made, successful or not.
    pub fn jwks_fetches(&self) -> u64 {
        self.inner.jwks.as_ref().map_or(0, JwksSource::fetches)
    }

    /// JWKS fetches that failed or whose document was refused (`jwks_fetch_errors_total`).
    pub fn jwks_fetch_errors(&self) -> u64 {
        self.inner.jwks.as_ref().map_or(0, JwksSource::failures)
    }

    /// Unix seconds of the last JWKS fetch whose keys were taken, when a JWKS is configured
    /// (0 before the first).
    pub fn jwks_last_success(&self) -> Option<u64> {
        self.inner.jwks.as_ref().map(JwksSource::last_success)
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        if let Some(task) = &self.refresher {
            task.abort();
        }
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.inner.pinned)
            .field("static_keys", &self.inner.static_keys)
            .field("jwks", &self.inner.jwks.is_some())
            .finish_non_exhaustive()
    }
}

/// Refetches the JWKS every `every` while the verifier lives.
async fn refresh_loop(inner: Weak<Inner>, every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if let Some(jwks) = &inner.jwks {
            let outcome = jwks.refresh().await;
            inner.after_refresh(outcome);
        }
    }
}

impl Inner {
    /// Steps 2–5 of the module docs.
    async fn verify_fresh(
        &self,
        token: &str,
        fingerprint: Fingerprint,
    ) -> Result<Verified, TokenError> {
        let outcome: Result<Verified, TokenError> = async {
            let compact = jws::split(token, &self.pinned)?;
            let claims = validate::read(&compact.payload, &self.rules)?;
            self.check_signature(&compact).await?;
            claims.check(unix_now(), &self.rules)?;
            Ok(Verified {
                exp: claims.exp,
                token: VerifiedToken {
                    expires_at: claims.expires_at(),
                    issued_at: claims.issued_at(),
                    member_id: claims.member_id,
                    account_id: claims.account_id,
                },
            })
        }
        .await;
        if let Err(error) = &outcome {
            tracing::debug!(%fingerprint, reason = error.code(), "token refused");
        }
        outcome
    }

    /// Finds a key of the token's family that verifies it; refetches the JWKS (under its
    /// cooldown) once when the token's `kid` is unknown or no key of its family is known.
    async fn check_signature(&self, token: &Compact<'_>) -> Result<(), TokenError> {
        let alg = token.header.alg;
        let kid = token.header.kid.as_deref();
        let statics: Vec<&VerifyingKey> = self
            .static_keys
            .iter()
            .filter(|key| key.allows(alg))
            .collect();
        if let Some(key) = statics.iter().find(|key| key.verifies(token)) {
            tracing::trace!(origin = ?key.origin(), "signature verified");
            return Ok(());
        }
        let Some(jwks) = &self.jwks else {
            return Err(if statics.is_empty() {
                TokenError::UnknownKey
            } else {
                TokenError::BadSignature
            });
        };
        // The JWKS never holds HMAC keys: no fetch can help an HS* token.
        if alg.family() == AlgorithmFamily::Hmac {
            return Err(TokenError::BadSignature);
        }
        let mut refetched = false;
        loop {
            let (keys, generation) = jwks.snapshot();
            let candidates: Vec<&VerifyingKey> = keys
                .iter()
                .filter(|key| key.allows(alg) && (kid.is_none() || key.kid.as_deref() == kid))
                .collect();
            if let Some(key) = candidates.iter().find(|key| key.verifies(token)) {
                tracing::trace!(origin = ?key.origin(), kid = key.kid.as_deref(), "signature verified");
                return Ok(());
            }
            if !candidates.is_empty() {
                return Err(TokenError::BadSignature);
            }
            if refetched {
                tracing::debug!(kid = kid.unwrap_or("-"), ?alg, "no key for token");
                return Err(if statics.is_empty() {
                    TokenError::UnknownKey
                } else {
                    TokenError::BadSignature
                });
            }
            refetched = true;
            let outcome = jwks.refresh_for_unknown_kid(generation).await;
            self.after_refresh(outcome);
        }
    }

    /// A refresh that withdrew a key also withdraws what that key vouched for.
    fn after_refresh(&self, outcome: Refresh) {
        if outcome == (Refresh::Replaced { dropped: true }) {
            tracing::info!("a JWKS key was withdrawn; cached verifications are dropped");
            self.cache.clear();
        }
    }
}
