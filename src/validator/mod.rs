//! Account-token validation: for each request, the token header is read, the route rules say
//! what is required, and the token is checked — revocation first, then the configured mode
//! (issued / signature / either / both), time, and the route's account or member binding.
//!
//! The answer is a [`Verdict`]: forward (with the validated identity), forward once to let the
//! upstream decide on a token nobody here knows (`unknown = "upstream"`), or reject.

mod identity;
mod logout;
mod negative;
mod rejection;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, StatusCode};

use crate::config::{TokenMode, UnknownTokens};
use crate::metrics::Metrics;
use crate::scope::{Binding, PathError, Route, Rules, TokenRequirement};
use crate::store::{Fingerprint, Store, TokenRecord, TokenStore};
use crate::telemetry::{self, traced};
use crate::token::unverified;
use crate::token::{TokenError, Verifier};

pub use identity::IdentityHeaders;
pub use logout::Logout;
use negative::NegativeCache;
pub use rejection::Rejection;

/// Who a validated token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's fingerprint (for logout).
    pub fingerprint: Fingerprint,
    /// The account it is scoped to (`scope`).
    pub account_id: Option<String>,
    /// The account member (`sub`).
    pub member_id: Option<String>,
    /// When it stops being valid.
    pub expires_at: SystemTime,
}

/// A token nobody here knows, forwarded once for the upstream to decide.
#[derive(Debug, Clone)]
pub struct Unknown {
    fingerprint: Fingerprint,
    /// When it says it stops being valid (`exp`, unverified).
    expires_at: SystemTime,
    /// What to record if the upstream accepts it (only on token-required routes, where the
    /// upstream must have checked the token to answer 2xx).
    learn: Option<TokenRecord>,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Verdict {
    /// No checks apply (rule `off`): forward untouched.
    Untouched,
    /// Forward, telling the upstream the identity when there is one.
    Forward(Option<Identity>),
    /// Forward once; report the answer's status with [`Validator::settle`].
    Defer(Unknown),
    /// Answer with this; never forward.
    Reject(Rejection),
}

/// Settings of the validator, from the configuration.
pub struct ValidatorSettings {
    pub mode: TokenMode,
    pub unknown: UnknownTokens,
    pub header: HeaderName,
    pub leeway: Duration,
    pub negative_ttl: Duration,
    /// The longest a learned token is recorded for, whatever its `exp`.
    pub learned_ttl: Duration,
    pub negative_max_entries: u64,
    pub rules: Rules,
    pub identity: IdentityHeaders,
}

/// Validates account tokens against the store and, in the signature modes, the keys.
pub struct Validator {
    settings: ValidatorSettings,
    store: Arc<Store>,
    verifier: Option<Arc<Verifier>>,
    negative: NegativeCache,
    metrics: Arc<Metrics>,
}

impl Validator {
    /// A validator; `verifier` is required by the signature modes.
    pub fn new(
        settings: ValidatorSettings,
        store: Arc<Store>,
        verifier: Option<Arc<Verifier>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let negative = NegativeCache::new(settings.negative_max_entries, settings.negative_ttl);
        Validator {
            settings,
            store,
            verifier,
            negative,
            metrics,
        }
    }

    /// The header that carries the account token.
    pub fn token_header(&self) -> &HeaderName {
        &self.settings.header
    }

    /// The identity headers to set and strip.
    pub fn identity_headers(&self) -> &IdentityHeaders {
        &self.settings.identity
    }

    /// The route of a request to `uri`: its canonical target and what the rules require.
    pub fn route(&self, uri: &http::Uri) -> Result<Route, PathError> {
        self.settings.rules.route(uri)
    }

    /// Decides on a request on `route` carrying `headers` (CORS preflights are the proxy's).
    pub async fn check(&self, route: &Route, headers: &HeaderMap) -> Verdict {
        let requirement = route.requirement();
        if requirement == TokenRequirement::Off {
            return Verdict::Untouched;
        }
        traced!(check_span(), async {
            let token = match self.token(headers) {
                Ok(Some(token)) => token,
                Ok(None) if requirement == TokenRequirement::Optional => {
                    self.count("accepted", "no_token");
                    return Verdict::Forward(None);
                }
                Ok(None) => return self.rejected(Rejection::Unauthorized("token_missing")),
                Err(rejection) => return self.rejected(rejection),
            };
            let learns = requirement == TokenRequirement::Required;
            self.validate(token, route.binding(), learns).await
        })
    }

    /// Validates the token of a request that must carry one but names no account in its path
    /// (logout, account switch).
    pub async fn check_token(&self, headers: &HeaderMap) -> Result<Identity, Rejection> {
        traced!(check_span(), async {
            let token = self.required_token(headers)?;
            match self.validate(token, None, false).await {
                Verdict::Forward(Some(identity)) => Ok(identity),
                Verdict::Reject(rejection) => Err(rejection),
                // A token nobody here can vouch for cannot log anyone out or switch accounts.
                Verdict::Defer(_) | Verdict::Forward(None) | Verdict::Untouched => {
                    Err(self.reject(Rejection::Unauthorized("token_unknown")))
                }
            }
        })
    }

    /// Learns from the upstream's answer to a deferred token: a 2xx on a token-required route
    /// records it, a 401/403 refuses it locally for `negative_ttl`.
    pub async fn settle(&self, unknown: Unknown, status: StatusCode) {
        if status.is_success() {
            if let Some(record) = unknown.learn {
                match self.store.record(record).await {
                    Ok(()) => {
                        self.count("accepted", "learned");
                    }
                    Err(error) => tracing::warn!(%error, "learning a token failed"),
                }
            }
        } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            self.negative.insert(unknown.fingerprint);
            self.count("rejected", "upstream_refused");
        }
    }

    /// The token of a request that must carry one (counted as a rejection when it does not).
    fn required_token<'h>(&self, headers: &'h HeaderMap) -> Result<&'h str, Rejection> {
        match self.token(headers) {
            Ok(Some(token)) => Ok(token),
            Ok(None) => Err(self.reject(Rejection::Unauthorized("token_missing"))),
            Err(rejection) => Err(self.reject(rejection)),
        }
    }

    /// The token in the configured header: `None` when absent or empty, an error when there
    /// are several or it is not text.
    fn token<'h>(&self, headers: &'h HeaderMap) -> Result<Option<&'h str>, Rejection> {
        let mut values = headers.get_all(&self.settings.header).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(_), Some(_)) => Err(Rejection::Unauthorized("token_malformed")),
            (Some(value), None) => {
                let token = value
                    .to_str()
                    .map_err(|_| Rejection::Unauthorized("token_malformed"))?
                    .trim();
                Ok((!token.is_empty()).then_some(token))
            }
        }
    }

    async fn validate(
        &self,
        token: &str,
        binding: Option<(Binding, &str)>,
        learns: bool,
    ) -> Verdict {
        let fingerprint = Fingerprint::of(token);
        // Revocation beats everything: a valid signature or the upstream cannot bring it back.
        match self.store.is_revoked(&fingerprint).await {
            Ok(false) => {}
            Ok(true) => return self.rejected(Rejection::Unauthorized("token_revoked")),
            Err(_) => return self.rejected(Rejection::StoreUnavailable),
        }
        let mode = self.settings.mode;
        let (issued, store_down) = if mode == TokenMode::Signature {
            (None, false)
        } else {
            match self.store.lookup(&fingerprint).await {
                Ok(record) => (record, false),
                Err(_) => (None, true),
            }
        };
        // A learned record vouches for a token only where nothing else is asked of it: in
        // `issued` mode. Elsewhere it is as good as no record.
        let issued = issued.filter(|record| mode == TokenMode::Issued || !record.learned);

        let (identity, reason) = match (mode, issued) {
            (TokenMode::Issued, Some(record)) if record.learned => (identity_of(record), "learned"),
            (TokenMode::Issued | TokenMode::Either, Some(record)) => {
                (identity_of(record), "issued")
            }
            (TokenMode::Issued, None) => {
                return self
                    .unknown(token, fingerprint, binding, learns, store_down)
                    .await
            }
            (TokenMode::Signature, _) => match self.verify(token, fingerprint).await {
                Ok(identity) => (identity, "signature"),
                Err(unverified) => return self.rejected(unverified.rejection()),
            },
            (TokenMode::Either, None) => match self.verify(token, fingerprint).await {
                Ok(identity) => (identity, "signature"),
                // No key could decide: treat it as unknown rather than forged. A signature a
                // known key refuses is a forgery, and never reaches the upstream.
                Err(Unverified::NoKey) => {
                    return self
                        .unknown(token, fingerprint, binding, learns, store_down)
                        .await
                }
                Err(Unverified::Refused(rejection)) => return self.rejected(rejection),
            },
            (TokenMode::Both, None) if store_down => {
                return self.rejected(Rejection::StoreUnavailable)
            }
            (TokenMode::Both, None) => {
                return self.rejected(Rejection::Unauthorized("token_unknown"))
            }
            (TokenMode::Both, Some(record)) => match self.verify(token, fingerprint).await {
                Ok(_) => (identity_of(record), "issued_and_signature"),
                Err(unverified) => return self.rejected(unverified.rejection()),
            },
        };
        let claimed = bound(
            binding,
            identity.account_id.as_deref(),
            identity.member_id.as_deref(),
        );
        if let Err(rejection) = claimed {
            return self.rejected(rejection);
        }
        self.count("accepted", reason);
        Verdict::Forward(Some(identity))
    }

    /// Whether `member`'s folded revocations cover a token issued at `issued_at` (see
    /// `store::DenyList`). Records need no such check: folding removed the member's records, and
    /// a record written since is a token issued since.
    async fn folded(
        &self,
        member: Option<&str>,
        issued_at: Option<SystemTime>,
    ) -> Result<(), Rejection> {
        let Some(member) = member else {
            return Ok(());
        };
        match self.store.member_revoked(member, issued_at).await {
            Ok(false) => Ok(()),
            Ok(true) => Err(Rejection::Unauthorized("token_revoked")),
            Err(_) => Err(Rejection::StoreUnavailable),
        }
    }

    /// Verifies the signature with the configured keys, then that the member's folded
    /// revocations do not cover the token.
    async fn verify(&self, token: &str, fingerprint: Fingerprint) -> Result<Identity, Unverified> {
        // The configuration refuses signature modes without keys; refuse rather than accept.
        let Some(verifier) = &self.verifier else {
            return Err(Unverified::NoKey);
        };
        let verified = verifier.verify(token).await.map_err(|error| match error {
            TokenError::UnknownKey => Unverified::NoKey,
            error => Unverified::Refused(Rejection::Unauthorized(error.code())),
        })?;
        self.folded(verified.member_id.as_deref(), verified.issued_at)
            .await
            .map_err(Unverified::Refused)?;
        Ok(Identity {
            fingerprint,
            account_id: verified.account_id,
            member_id: verified.member_id,
            expires_at: verified.expires_at,
        })
    }

    /// A token the store does not know, under `unknown = "upstream"` checked locally and
    /// deferred to the upstream.
    async fn unknown(
        &self,
        token: &str,
        fingerprint: Fingerprint,
        binding: Option<(Binding, &str)>,
        learns: bool,
        store_down: bool,
    ) -> Verdict {
        if self.settings.unknown == UnknownTokens::Reject {
            return self.rejected(if store_down {
                Rejection::StoreUnavailable
            } else {
                Rejection::Unauthorized("token_unknown")
            });
        }
        if self.negative.contains(&fingerprint) {
            return self.rejected(Rejection::Unauthorized("token_unknown"));
        }
        // Everything but the signature, exactly as the verifier would judge it: a token no key
        // could ever vouch for (`alg: none`, a duplicated or mistyped claim, trailing garbage)
        // is refused here rather than shown to the upstream.
        let leeway = i64::try_from(self.settings.leeway.as_secs()).unwrap_or(i64::MAX);
        let claims = match unverified::precheck(token, leeway) {
            Ok(claims) => claims,
            Err(error) => return self.rejected(Rejection::Unauthorized(error.code())),
        };
        let (member, account) = (claims.member_id.as_deref(), claims.account_id.as_deref());
        if let Err(rejection) = bound(binding, account, member) {
            return self.rejected(rejection);
        }
        // A forged `sub`/`iat` can only make the gateway refuse a token the upstream would
        // refuse anyway; a genuine token of a folded member is refused here.
        if let Err(rejection) = self.folded(member, claims.issued_at).await {
            return self.rejected(rejection);
        }
        // Learned, not issued: recorded for `learned_ttl` at most, whatever the token claims,
        // and never in `either` mode, where a record would stand in for a signature no key
        // here could check.
        let learns = learns && self.settings.mode == TokenMode::Issued;
        let learn = match (learns, member, account) {
            (true, Some(member), Some(account)) => Some(TokenRecord {
                fingerprint,
                member_id: member.to_owned(),
                account_id: account.to_owned(),
                account_name: None,
                expires_at: (UNIX_EPOCH + Duration::from_secs(claims.exp.max(0) as u64))
                    .min(SystemTime::now() + self.settings.learned_ttl),
                learned: true,
            }),
            _ => None,
        };
        self.count("deferred", "token_unknown");
        let expires_at = UNIX_EPOCH + Duration::from_secs(claims.exp.max(0) as u64);
        Verdict::Defer(Unknown {
            fingerprint,
            expires_at,
            learn,
        })
    }

    fn rejected(&self, rejection: Rejection) -> Verdict {
        Verdict::Reject(self.reject(rejection))
    }

    fn reject(&self, rejection: Rejection) -> Rejection {
        self.count("rejected", rejection.code());
        rejection
    }

    /// Counts a decision, and names it on the token check's span when tracing is on.
    fn count(&self, outcome: &str, reason: &str) {
        self.metrics.count_validation(outcome, reason);
        if telemetry::enabled() {
            let span = tracing::Span::current();
            span.record("account_gate.token.outcome", outcome);
            span.record("account_gate.token.reason", reason);
        }
    }
}

/// The span of one token check: its outcome and reason, as counted in
/// `token_validations_total`, and never the token.
fn check_span() -> tracing::Span {
    tracing::info_span!(
        target: telemetry::TARGET,
        "token check",
        account_gate.token.outcome = tracing::field::Empty,
        account_gate.token.reason = tracing::field::Empty,
    )
}

/// Why [`Validator::verify`] did not vouch for a token. Told apart by type, not by the answer's
/// `code`: to a client both an unknown key and a bad signature read `bad_signature`, but only
/// the first may fall back to the unknown-token path in `either` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unverified {
    /// No configured key could decide: the token's `kid` is unknown (even after a JWKS
    /// refetch), no key of its algorithm family is configured, or there is no verifier.
    NoKey,
    /// Refused: a signature a configured key rejects, a bad claim, a folded revocation, or a
    /// store that cannot be asked.
    Refused(Rejection),
}

impl Unverified {
    /// The refusal where a signature is required: a token no key can vouch for is refused as
    /// `bad_signature`, like a forged one.
    fn rejection(self) -> Rejection {
        match self {
            Unverified::NoKey => Rejection::Unauthorized(TokenError::UnknownKey.code()),
            Unverified::Refused(rejection) => rejection,
        }
    }
}

/// The identity of an issued token's record.
fn identity_of(record: TokenRecord) -> Identity {
    Identity {
        fingerprint: record.fingerprint,
        account_id: Some(record.account_id),
        member_id: Some(record.member_id),
        expires_at: record.expires_at,
    }
}

/// Checks the route's binding: the path's account or member must be the token's.
fn bound(
    binding: Option<(Binding, &str)>,
    account_id: Option<&str>,
    member_id: Option<&str>,
) -> Result<(), Rejection> {
    match binding {
        None => Ok(()),
        Some((Binding::Account, id)) if account_id == Some(id) => Ok(()),
        Some((Binding::Account, _)) => Err(Rejection::ScopeMismatch),
        Some((Binding::Member, id)) if member_id == Some(id) => Ok(()),
        Some((Binding::Member, _)) => Err(Rejection::MemberMismatch),
    }
}
