//! Logout and revocation: which tokens a `DELETE` on the token endpoint revokes, and the
//! bookkeeping every revocation needs (the verified cache forgets, the metrics count).

use std::time::{Duration, SystemTime};

use http::HeaderMap;

use super::{Identity, Rejection, Validator, Verdict};
use crate::store::{Fingerprint, TokenStore};
use crate::telemetry::traced;

/// The longest a deny entry of a token nobody here vouched for lasts: its `exp` is unverified.
/// A day is the Commerce API's token lifetime.
const MAX_UNVOUCHED_LIFE: Duration = Duration::from_secs(24 * 60 * 60);

/// What a logout revokes.
#[derive(Debug, Clone)]
pub enum Logout {
    /// A validated token: every token of its member, and itself.
    Member(Identity),
    /// A token nobody here can vouch for (deferred to the upstream): only itself.
    Token {
        fingerprint: Fingerprint,
        expires_at: SystemTime,
    },
}

impl Logout {
    /// The member logged out, when known.
    pub fn member(&self) -> Option<&str> {
        match self {
            Logout::Member(identity) => identity.member_id.as_deref(),
            Logout::Token { .. } => None,
        }
    }
}

impl Validator {
    /// Whose tokens a logout presenting `headers` revokes. A token nobody here can vouch for (one
    /// `unknown = "upstream"` would defer) still logs itself out, and only itself: its claims are
    /// unverified, so they name nobody whose tokens could be revoked with it.
    pub async fn check_logout(&self, headers: &HeaderMap) -> Result<Logout, Rejection> {
        traced!(super::check_span(), async {
            let token = self.required_token(headers)?;
            match self.validate(token, None, false).await {
                Verdict::Forward(Some(identity)) => Ok(Logout::Member(identity)),
                Verdict::Reject(rejection) => Err(rejection),
                Verdict::Defer(unknown) => Ok(Logout::Token {
                    fingerprint: unknown.fingerprint,
                    // Unverified, so capped: a made-up `exp` cannot pin an entry for years.
                    expires_at: unknown
                        .expires_at
                        .min(SystemTime::now() + MAX_UNVOUCHED_LIFE),
                }),
                Verdict::Forward(None) | Verdict::Untouched => {
                    Err(self.reject(Rejection::Unauthorized("token_unknown")))
                }
            }
        })
    }

    /// Logout: revokes every known token of the member and the presented token itself (which
    /// the store may not know, in the signature modes), or only the presented token when nobody
    /// can vouch for it; the number newly revoked.
    pub async fn revoke(&self, logout: &Logout) -> Result<u64, Rejection> {
        let (fingerprint, expires_at, member) = match logout {
            Logout::Member(identity) => (
                identity.fingerprint,
                identity.expires_at,
                identity.member_id.as_deref(),
            ),
            Logout::Token {
                fingerprint,
                expires_at,
            } => (*fingerprint, *expires_at, None),
        };
        // The presented token first: should the store fail halfway (Redis down), the token in
        // hand is the one that must not keep working, and a backend denies it locally before
        // it reports the failure.
        let newly = self
            .store
            .revoke(&fingerprint, expires_at, member)
            .await
            .map_err(|_| Rejection::StoreUnavailable)?;
        let mut revoked = u64::from(newly);
        if newly {
            self.revoked(&[fingerprint]);
        }
        if let Some(member) = member {
            revoked += self.revoke_member(member).await?;
        }
        Ok(revoked)
    }

    /// Revokes every known token of `member`; the number revoked.
    pub async fn revoke_member(&self, member: &str) -> Result<u64, Rejection> {
        let records = self
            .store
            .revoke_member(member)
            .await
            .map_err(|_| Rejection::StoreUnavailable)?;
        let fingerprints: Vec<Fingerprint> = records.iter().map(|r| r.fingerprint).collect();
        self.revoked(&fingerprints);
        Ok(fingerprints.len() as u64)
    }

    /// Bookkeeping after revocation: the verified cache forgets, the metrics count.
    fn revoked(&self, fingerprints: &[Fingerprint]) {
        if let Some(verifier) = &self.verifier {
            for fingerprint in fingerprints {
                verifier.invalidate(fingerprint);
            }
        }
        self.metrics
            .tokens_revoked_total
            .inc_by(fingerprints.len() as u64);
    }
}
