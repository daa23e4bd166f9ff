//! Account tokens: HS256 JWTs signed and checked exactly as the emulator's API does, so a
//! gateway verifying signatures sees the same claims it would see from the real API.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::options::EmulatorOptions;

/// The claims of an issued account token; `exp`/`iat` are numbers, as the live API sends them.
#[derive(Debug, Serialize)]
struct IssuedClaims<'a> {
    sub: &'a str,
    scope: &'a str,
    exp: i64,
    iat: i64,
    store_id: &'a str,
    realm_id: &'a str,
}

/// What a verified token tells a handler: who it is and which account it is scoped to.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct TokenIdentity {
    /// Account member id.
    pub sub: String,
    /// Account id.
    pub scope: String,
}

/// A signed token and its expiry in unix seconds.
pub(crate) struct SignedToken {
    pub token: String,
    pub exp: i64,
}

/// Current time in unix seconds.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        })
}

/// Formats unix seconds the way the API's `expires` field does (`2021-03-16T19:36:11.070Z`).
pub(crate) fn format_expires(unix_secs: i64) -> String {
    let secs = u64::try_from(unix_secs).unwrap_or(0);
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// Signs a token for `member_id` scoped to `account_id`, valid for `lifetime_secs` from now.
pub(crate) fn sign(
    opts: &EmulatorOptions,
    member_id: &str,
    account_id: &str,
    lifetime_secs: i64,
) -> Result<SignedToken, jsonwebtoken::errors::Error> {
    let iat = unix_now();
    let exp = iat.saturating_add(lifetime_secs);
    let claims = IssuedClaims {
        sub: member_id,
        scope: account_id,
        exp,
        iat,
        store_id: &opts.store_id,
        realm_id: &opts.realm_id,
    };
    let key = EncodingKey::from_secret(&opts.signing_secret);
    let token = encode(&Header::new(Algorithm::HS256), &claims, &key)?;
    Ok(SignedToken { token, exp })
}

/// Checks signature, algorithm and `exp` (no leeway: the emulator is the strict reference).
pub(crate) fn verify(opts: &EmulatorOptions, token: &str) -> Result<TokenIdentity, ApiError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let key = DecodingKey::from_secret(&opts.signing_secret);
    match decode::<TokenIdentity>(token, &key, &validation) {
        Ok(data) => Ok(data.claims),
        Err(err) => match err.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => Err(ApiError::Unauthorized(
                "account management authentication token has expired".to_owned(),
            )),
            _ => Err(ApiError::Unauthorized(
                "account management authentication token is invalid".to_owned(),
            )),
        },
    }
}

/// Signs a token exactly as the emulator would; for tests that need expired or foreign tokens.
///
/// A negative `lifetime_secs` gives a token that is already expired.
pub fn mint_token(
    opts: &EmulatorOptions,
    member_id: &str,
    account_id: &str,
    lifetime_secs: i64,
) -> String {
    // HMAC over serialisable string/number claims has no failure path; a panic here is a bug.
    sign(opts, member_id, account_id, lifetime_secs)
        .expect("HS256 signing of plain claims cannot fail")
        .token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_token_verifies_and_carries_identity() {
        let opts = EmulatorOptions::default();
        let token = mint_token(&opts, "member-1", "account-1", 60);
        let identity = verify(&opts, &token).unwrap();
        assert_eq!(identity.sub, "member-1");
        assert_eq!(identity.scope, "account-1");
    }

    #[test]
    fn expired_token_is_refused() {
        let opts = EmulatorOptions::default();
        let token = mint_token(&opts, "member-1", "account-1", -1);
        let err = verify(&opts, &token).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn foreign_secret_is_refused() {
        let opts = EmulatorOptions::default();
        let foreign = EmulatorOptions {
            signing_secret: b"someone else".to_vec(),
            ..EmulatorOptions::default()
        };
        let token = mint_token(&foreign, "member-1", "account-1", 60);
        assert!(verify(&opts, &token).is_err());
        assert!(verify(&opts, "not.a.jwt").is_err());
        assert!(verify(&opts, "").is_err());
    }

    #[test]
    fn expires_has_millis_and_zulu() {
        assert_eq!(format_expires(1_615_923_371), "2021-03-16T19:36:11.000Z");
    }
}
