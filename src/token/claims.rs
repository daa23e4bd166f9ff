//! The claims of an account token, read without verifying the signature. Used where the
//! signature is not the question: learning the member and expiry of a token the upstream has
//! just issued, and local pre-checks.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

/// Why a token could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedToken {
    #[error("a token has three dot-separated segments")]
    Segments,
    #[error("a token segment is not base64url")]
    Encoding,
    #[error("the token payload is not a JSON object")]
    Payload,
}

/// The claims the gateway reads. Unknown claims are ignored.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Claims {
    /// The account member id.
    #[serde(default)]
    pub sub: Option<Value>,
    /// The account id the token is scoped to.
    #[serde(default)]
    pub scope: Option<Value>,
    /// Expiry. A number of seconds; old documentation shows ISO strings, kept as given.
    #[serde(default)]
    pub exp: Option<Value>,
    /// Not-before, in seconds.
    #[serde(default)]
    pub nbf: Option<Value>,
    /// Issued-at, in seconds.
    #[serde(default)]
    pub iat: Option<Value>,
}

impl Claims {
    /// `sub` when it is a string.
    pub fn member_id(&self) -> Option<&str> {
        self.sub.as_ref().and_then(Value::as_str)
    }

    /// `scope` when it is a string.
    pub fn account_id(&self) -> Option<&str> {
        self.scope.as_ref().and_then(Value::as_str)
    }

    /// `exp` when it is a number of seconds (fractions are truncated).
    pub fn expires_at(&self) -> Option<i64> {
        numeric(self.exp.as_ref())
    }
}

fn numeric(value: Option<&Value>) -> Option<i64> {
    let value = value?;
    value
        .as_i64()
        .or_else(|| value.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

/// Reads the claims of a compact JWS without checking its signature.
pub fn peek(token: &str) -> Result<Claims, MalformedToken> {
    let mut segments = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(MalformedToken::Segments);
    };
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err(MalformedToken::Segments);
    }
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| MalformedToken::Encoding)?;
    // serde reads a struct from a JSON array too (`[null, null, 5]` as `exp = 5`); a payload is
    // an object or nothing. Read straight into `Claims` (no intermediate `Value` tree), which
    // also refuses a claim given twice.
    if payload.trim_ascii_start().first() != Some(&b'{') {
        return Err(MalformedToken::Payload);
    }
    serde_json::from_slice::<Claims>(&payload).map_err(|_| MalformedToken::Payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's first example: `exp`/`iat` as ISO strings.
    const SEED_STRING_EXP: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOiIyMDIxLTAzLTE2VDE5OjM2OjExLjA3MFoiLCJpYXQiOiIyMDIxLTAzLTE1VDE5OjM2OjExLjA3MFoiLCJzY29wZSI6IjFjNDVlNGVjLTI2ZTAtNDA0My04NmU0LWMxNWI5Y2Y5ODVhMyIsInN1YiI6IjFjNDVlNGVjLTI2ZTAtNDA0My04NmU0LWMxNWI5Y2Y5ODVhMiJ9.ytQ3UutTl_RJ8NiB1xN29Ta23p-FXsYOhcUM7MUQ4CM";
    /// The seed's second example: numeric `exp`.
    const SEED_NUMERIC_EXP: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjE2MTU5MTg3NTksImlhdCI6MTYxNTkxODc0NCwic2NvcGUiOiI5N2FjYmU3OC05MjFmLTRhMjUtODRkYi0wOWRjMjc2NzU0YmEiLCJzdWIiOiI5N2FjYmU3OC05MjFmLTRhMjUtODRkYi0wOWRjMjc2NzU0YmEifQ.NphZBSWYxfl3-odXOxD0l6Zj7E9HxOG7qp34Sizm0WU";

    #[test]
    fn reads_the_seed_tokens() {
        let claims = peek(SEED_NUMERIC_EXP).unwrap();
        assert_eq!(claims.expires_at(), Some(1615918759));
        assert_eq!(
            claims.account_id(),
            Some("97acbe78-921f-4a25-84db-09dc276754ba")
        );
        let claims = peek(SEED_STRING_EXP).unwrap();
        assert_eq!(claims.expires_at(), None, "an ISO exp is not a number");
        assert_eq!(
            claims.member_id(),
            Some("1c45e4ec-26e0-4043-86e4-c15b9cf985a2")
        );
    }

    #[test]
    fn malformed_tokens() {
        assert_eq!(peek("a.b"), Err(MalformedToken::Segments));
        assert_eq!(peek("a.b.c.d"), Err(MalformedToken::Segments));
        assert_eq!(peek("a..c"), Err(MalformedToken::Segments));
        assert_eq!(peek("a.!!!.c"), Err(MalformedToken::Encoding));
        assert_eq!(peek("a.bnVsbA.c"), Err(MalformedToken::Payload));
        // `[null,null,5]`: an array is not a claims object.
        assert_eq!(peek("a.W251bGwsbnVsbCw1XQ.c"), Err(MalformedToken::Payload));
        // `{"exp":1,"exp":2}`: which one counts would depend on the reader.
        assert_eq!(
            peek("a.eyJleHAiOjEsImV4cCI6Mn0.c"),
            Err(MalformedToken::Payload)
        );
    }
}
