//! What can be said of a token without any key: the checks the gateway runs on a token that it
//! does not know before letting the upstream judge it (`[tokens] unknown = "upstream"`).
//!
//! They are the verifier's own checks minus the signature — the same strict compact form, the
//! same JOSE header rules (an `alg`, never `none`, no `crit`), the same typed claim reader (so a
//! duplicated `scope` or an array `scope` is refused, not read one way here and another way
//! upstream) and the same time rules. A token refused here could never verify with any key, so
//! the upstream is not asked about it.

use jsonwebtoken::Algorithm;

use super::error::TokenError;
use super::jws;
use super::validate::{self, unix_now, ClaimRules};

/// Every algorithm a signed token may name. `none` is not among them: an unsigned token is
/// never a credential, whoever is asked.
const SIGNED: &[Algorithm] = &[
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The claims of a token that passed [`precheck`]; its signature is not verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    /// `sub`.
    pub member_id: Option<String>,
    /// `scope`.
    pub account_id: Option<String>,
    /// `exp`, unix seconds.
    pub exp: i64,
    /// `iat`, when present.
    pub issued_at: Option<std::time::SystemTime>,
}

/// Checks everything but the signature: form, header, claim types, `exp`/`nbf`/`iat` with
/// `leeway` seconds.
pub fn precheck(token: &str, leeway: i64) -> Result<Unverified, TokenError> {
    let compact = jws::split(token, SIGNED)?;
    let rules = ClaimRules {
        leeway,
        ..ClaimRules::default()
    };
    let claims = validate::read(&compact.payload, &rules)?;
    claims.check(unix_now(), &rules)?;
    Ok(Unverified {
        issued_at: claims.issued_at(),
        member_id: claims.member_id,
        account_id: claims.account_id,
        exp: claims.exp,
    })
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    use super::*;

    fn token(header: &str, claims: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn reads_a_plausible_token() {
        let exp = unix_now() + 60;
        let claims = format!(r#"{{"sub":"m","scope":"a","exp":{exp}}}"#);
        assert_eq!(
            precheck(&token(r#"{"alg":"HS256","typ":"JWT"}"#, &claims), 30),
            Ok(Unverified {
                member_id: Some("m".into()),
                account_id: Some("a".into()),
                exp,
                issued_at: None,
            })
        );
    }

    #[test]
    fn refuses_what_no_key_could_save() {
        let exp = unix_now() + 60;
        let good = format!(r#"{{"sub":"m","scope":"a","exp":{exp}}}"#);
        let cases = [
            (
                token(r#"{"alg":"none"}"#, &good),
                TokenError::AlgorithmNotAllowed,
            ),
            (
                token(r#"{"alg":"NONE"}"#, &good),
                TokenError::AlgorithmNotAllowed,
            ),
            (token(r#"{"typ":"JWT"}"#, &good), TokenError::Malformed),
            (
                token(r#"{"alg":"HS256","alg":"HS256"}"#, &good),
                TokenError::Malformed,
            ),
            (
                token(r#"{"alg":"HS256","crit":["exp"]}"#, &good),
                TokenError::CriticalHeader,
            ),
            (
                token(
                    r#"{"alg":"HS256"}"#,
                    &format!(r#"{{"scope":"a","scope":"b","exp":{exp}}}"#),
                ),
                TokenError::Malformed,
            ),
            (
                token(
                    r#"{"alg":"HS256"}"#,
                    &format!(r#"{{"scope":["a"],"exp":{exp}}}"#),
                ),
                TokenError::InvalidClaims,
            ),
            (
                token(
                    r#"{"alg":"HS256"}"#,
                    &format!(r#"{{"exp":{exp},"iat":{}}}"#, exp + 86_400),
                ),
                TokenError::NotYetValid,
            ),
            (
                format!("{}~", token(r#"{"alg":"HS256"}"#, &good)),
                TokenError::Malformed,
            ),
        ];
        for (token, error) in cases {
            assert_eq!(precheck(&token, 30), Err(error), "{token}");
        }
    }
}
