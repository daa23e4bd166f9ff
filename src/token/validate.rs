//! Claim checks after (and type checks before) the signature: `exp` required and a number, `nbf`
//! and `iat` honoured, `sub`/`scope` strings when present, `iss`/`aud` when configured. The claim
//! set is read with [`claims::Claims`](super::claims::Claims), the same reader the rest of the
//! gateway uses, so a token means the same thing to every part of it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::Value;

use super::claims::Claims;
use super::error::TokenError;
use super::jws::is_json_object;

/// The claims of a token, typed. Built before the signature is checked (so a string `exp` is
/// [`TokenError::InvalidClaims`] whoever signed it) and judged after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TypedClaims {
    pub member_id: Option<String>,
    pub account_id: Option<String>,
    /// Unix seconds.
    pub exp: i64,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
    iss: Option<Value>,
    aud: Option<Value>,
}

/// What the configuration asks of the claims besides time.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClaimRules {
    /// Clock-skew allowance for `exp`, `nbf` and `iat`, in seconds.
    pub leeway: i64,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// Only read when an issuer or audience is configured; the common path parses the payload once.
#[derive(Deserialize)]
struct Registered {
    #[serde(default)]
    iss: Option<Value>,
    #[serde(default)]
    aud: Option<Value>,
}

/// Reads and type-checks the claim set.
pub(crate) fn read(payload: &[u8], rules: &ClaimRules) -> Result<TypedClaims, TokenError> {
    if !is_json_object(payload) {
        return Err(TokenError::Malformed);
    }
    // Duplicate `exp`/`sub`/`scope`/… are refused by serde: no parser differential with the
    // upstream over which copy counts.
    let claims: Claims = serde_json::from_slice(payload).map_err(|_| TokenError::Malformed)?;
    let exp = claims.expires_at().ok_or(TokenError::InvalidClaims)?;
    let (iss, aud) = if rules.issuer.is_some() || rules.audience.is_some() {
        let registered: Registered =
            serde_json::from_slice(payload).map_err(|_| TokenError::Malformed)?;
        (registered.iss, registered.aud)
    } else {
        (None, None)
    };
    Ok(TypedClaims {
        member_id: string_claim(claims.sub)?,
        account_id: string_claim(claims.scope)?,
        exp,
        nbf: numeric_claim(claims.nbf)?,
        iat: numeric_claim(claims.iat)?,
        iss,
        aud,
    })
}

/// `None` when absent or `null`; a string; anything else (a number, an array) is refused rather
/// than read as "no claim", so a scope rule can never be dodged by a differently typed claim.
fn string_claim(value: Option<Value>) -> Result<Option<String>, TokenError> {
    match value {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(TokenError::InvalidClaims),
    }
}

/// A NumericDate (fractions truncated), absent, or [`TokenError::InvalidClaims`].
fn numeric_claim(value: Option<Value>) -> Result<Option<i64>, TokenError> {
    let Some(value) = value else { return Ok(None) };
    value
        .as_i64()
        .or_else(|| value.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
        .map(Some)
        .ok_or(TokenError::InvalidClaims)
}

impl TypedClaims {
    /// Judges time, issuer and audience at `now` (unix seconds).
    pub(crate) fn check(&self, now: i64, rules: &ClaimRules) -> Result<(), TokenError> {
        check_exp(self.exp, now, rules.leeway)?;
        let future = |t: Option<i64>| t.is_some_and(|t| t > now.saturating_add(rules.leeway));
        // An `iat` in the future is as suspicious as an `nbf` there: no honest issuer does it.
        if future(self.nbf) || future(self.iat) {
            return Err(TokenError::NotYetValid);
        }
        if let Some(issuer) = &rules.issuer {
            if !matches!(&self.iss, Some(Value::String(iss)) if iss == issuer) {
                return Err(TokenError::WrongIssuer);
            }
        }
        if let Some(audience) = &rules.audience {
            let named = match &self.aud {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(audience)),
                _ => false,
            };
            if !named {
                return Err(TokenError::WrongAudience);
            }
        }
        Ok(())
    }

    /// `exp` as a [`SystemTime`].
    pub(crate) fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(u64::try_from(self.exp).unwrap_or(0))
    }

    /// `iat` as a [`SystemTime`], when the token has one.
    pub(crate) fn issued_at(&self) -> Option<SystemTime> {
        let iat = u64::try_from(self.iat?).unwrap_or(0);
        Some(UNIX_EPOCH + Duration::from_secs(iat))
    }
}

/// The one expiry rule, shared by fresh verifications and cache hits.
pub(crate) fn check_exp(exp: i64, now: i64, leeway: i64) -> Result<(), TokenError> {
    if now >= exp.saturating_add(leeway) {
        Err(TokenError::Expired)
    } else {
        Ok(())
    }
}

/// Unix seconds now; a clock before 1970 reads as 0 (every token then looks fresh by `nbf`
/// and expired by nothing, but such a clock breaks TLS long before it breaks this).
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> ClaimRules {
        ClaimRules {
            leeway: 30,
            ..ClaimRules::default()
        }
    }

    fn read_str(json: &str) -> Result<TypedClaims, TokenError> {
        read(json.as_bytes(), &rules())
    }

    #[test]
    fn exp_must_be_a_number() {
        assert_eq!(read_str(r#"{"sub":"m"}"#), Err(TokenError::InvalidClaims));
        assert_eq!(
            read_str(r#"{"exp":"2021-03-16T19:36:11.070Z"}"#),
            Err(TokenError::InvalidClaims),
            "the seed's first example"
        );
        assert_eq!(read_str(r#"{"exp":null}"#), Err(TokenError::InvalidClaims));
        assert_eq!(read_str(r#"{"exp":100.9}"#).map(|c| c.exp), Ok(100));
        assert_eq!(
            read_str(r#"{"exp":1,"nbf":"soon"}"#),
            Err(TokenError::InvalidClaims)
        );
        assert_eq!(
            read_str(r#"{"exp":1,"iat":"2021-03-15T19:36:11.070Z"}"#),
            Err(TokenError::InvalidClaims)
        );
    }

    #[test]
    fn sub_and_scope_are_strings_or_absent() {
        let claims = read_str(r#"{"exp":1,"sub":"m","scope":"a"}"#).unwrap();
        assert_eq!(claims.member_id.as_deref(), Some("m"));
        assert_eq!(claims.account_id.as_deref(), Some("a"));
        assert_eq!(read_str(r#"{"exp":1}"#).map(|c| c.account_id), Ok(None));
        for bad in [
            r#"{"exp":1,"scope":["a"]}"#,
            r#"{"exp":1,"scope":7}"#,
            r#"{"exp":1,"sub":{}}"#,
        ] {
            assert_eq!(read_str(bad), Err(TokenError::InvalidClaims), "{bad}");
        }
    }

    #[test]
    fn payload_shape() {
        assert_eq!(read_str("[1,2,3]"), Err(TokenError::Malformed));
        assert_eq!(
            read_str(r#"{"exp":1,"exp":2}"#),
            Err(TokenError::Malformed),
            "duplicate exp"
        );
        assert_eq!(
            read_str(r#"{"exp":1,"scope":"a","scope":"b"}"#),
            Err(TokenError::Malformed),
            "duplicate scope"
        );
    }

    #[test]
    fn time_rules_with_leeway() {
        let now = 1_000_000;
        let at = |json: &str| read_str(json).unwrap().check(now, &rules());
        assert_eq!(at(r#"{"exp":1000100}"#), Ok(()));
        assert_eq!(
            at(r#"{"exp":999990}"#),
            Ok(()),
            "expired 10s ago, within leeway"
        );
        assert_eq!(at(r#"{"exp":999970}"#), Err(TokenError::Expired));
        assert_eq!(at(r#"{"exp":1000100,"nbf":1000020}"#), Ok(()));
        assert_eq!(
            at(r#"{"exp":1000100,"nbf":1000031}"#),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            at(r#"{"exp":9000000,"iat":5000000}"#),
            Err(TokenError::NotYetValid),
            "issued in the far future"
        );
        assert_eq!(
            at(r#"{"exp":-5}"#),
            Err(TokenError::Expired),
            "negative exp"
        );
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let rules = ClaimRules {
            leeway: 0,
            issuer: Some("https://issuer".into()),
            audience: Some("gate".into()),
        };
        let now = 10;
        let check = |json: &str| read(json.as_bytes(), &rules).and_then(|c| c.check(now, &rules));
        assert_eq!(
            check(r#"{"exp":99,"iss":"https://issuer","aud":"gate"}"#),
            Ok(())
        );
        assert_eq!(
            check(r#"{"exp":99,"iss":"https://issuer","aud":["x","gate"]}"#),
            Ok(())
        );
        assert_eq!(
            check(r#"{"exp":99,"aud":"gate"}"#),
            Err(TokenError::WrongIssuer)
        );
        assert_eq!(
            check(r#"{"exp":99,"iss":"https://other","aud":"gate"}"#),
            Err(TokenError::WrongIssuer)
        );
        assert_eq!(
            check(r#"{"exp":99,"iss":"https://issuer","aud":["x"]}"#),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            check(r#"{"exp":99,"iss":"https://issuer"}"#),
            Err(TokenError::WrongAudience)
        );
    }
}
