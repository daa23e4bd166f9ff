//! Why a token was refused ([`TokenError`]) and why a key configuration was refused
//! ([`KeyError`]). Neither ever carries token or secret bytes, so both can be logged as they are.

/// Why a token did not verify. Every variant is a 401; [`TokenError::code`] is the `code` the
/// gateway writes into the JSON:API error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a compact JWS: wrong segment count, bad base64url, header or payload not a JSON
    /// object, duplicate keys, missing `alg`, or too long.
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// A claim has the wrong type or a required claim is missing: `exp` absent or not a number
    /// (old documentation shows ISO strings), `nbf`/`iat` not numbers, `sub`/`scope` not strings.
    #[error("a token claim is missing or has the wrong type")]
    InvalidClaims,
    /// The header names a `crit` extension; RFC 7515 §4.1.11 requires refusing extensions we
    /// do not implement, and we implement none.
    #[error("the token header names critical extensions")]
    CriticalHeader,
    /// `alg` is not one of the pinned algorithms (this includes every spelling of `none`).
    #[error("the token algorithm is not allowed")]
    AlgorithmNotAllowed,
    /// No configured key matches the token's `kid` and algorithm family, even after a JWKS
    /// refetch (or the refetch was held back by the cooldown).
    #[error("no key is known for this token")]
    UnknownKey,
    /// Every candidate key rejected the signature.
    #[error("the token signature does not verify")]
    BadSignature,
    /// `exp` (plus the leeway) is past.
    #[error("the token has expired")]
    Expired,
    /// `nbf` or `iat` (minus the leeway) is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is missing or not the configured issuer.
    #[error("the token issuer is not accepted")]
    WrongIssuer,
    /// `aud` is missing or does not name the configured audience.
    #[error("the token audience is not accepted")]
    WrongAudience,
}

impl TokenError {
    /// The machine-readable reason for the JSON:API body and the `reason` metric label. A small
    /// fixed set (the validation codes, plus two for issuer/audience).
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed | TokenError::InvalidClaims | TokenError::CriticalHeader => {
                "token_malformed"
            }
            TokenError::AlgorithmNotAllowed => "algorithm_not_allowed",
            // An unknown key is, to the client, a signature nobody here can vouch for.
            TokenError::UnknownKey | TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::WrongIssuer => "token_wrong_issuer",
            TokenError::WrongAudience => "token_wrong_audience",
        }
    }
}

/// Why [`Verifier::new`](super::Verifier::new) refused the key configuration. Keys are named by
/// their position (`public key #2`), never by their contents.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `algorithms` is empty: nothing could ever verify.
    #[error("no signature algorithm is pinned")]
    NoAlgorithms,
    /// A pinned algorithm has no key that could verify it (and no JWKS that might supply one).
    #[error("algorithm {0:?} is pinned but no key for it is configured (an HS* algorithm needs the shared secret, RS*/PS*/ES*/EdDSA a public key or a JWKS URL)")]
    NoKeyFor(jsonwebtoken::Algorithm),
    /// The shared secret is empty; an empty HMAC key would make signatures forgeable.
    #[error("the HS256 secret is empty")]
    EmptySecret,
    /// The shared secret is configured but no HS* algorithm is pinned: probably a mistake.
    #[error("an HS256 secret is configured but no HS* algorithm is pinned")]
    UnusedSecret,
    /// A public key cannot be parsed.
    #[error("public key #{index} is not a PEM RSA, EC (P-256/P-384) or Ed25519 public key")]
    BadPem {
        /// 1-based position in `public_keys`.
        index: usize,
    },
    /// A PEM holds a private key. The gateway only verifies; a private key has no business on it.
    #[error("public key #{index} is a private key; configure the public key instead")]
    PrivateKey {
        /// 1-based position in `public_keys`.
        index: usize,
    },
    /// A PEM holds several blocks; we would silently use only the first.
    #[error("public key #{index} holds {blocks} PEM blocks; give one key per file")]
    SeveralBlocks {
        /// 1-based position in `public_keys`.
        index: usize,
        /// How many `-----BEGIN` lines it has.
        blocks: usize,
    },
    /// A public key's family matches no pinned algorithm.
    #[error("public key #{index} is an {family} key but no {family} algorithm is pinned")]
    UnusedKey {
        /// 1-based position in `public_keys`.
        index: usize,
        /// `RSA`, `EC` or `Ed25519`.
        family: &'static str,
    },
    /// `jwks_url` is neither `http://` nor `https://`, or has no host.
    #[error("jwks_url must be an http:// or https:// URL with a host")]
    JwksUrl,
    /// `jwks_ca_file` cannot be read or holds no certificate.
    #[error("jwks_ca_file {path}: {reason}")]
    JwksCa {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the TLS client configuration.
    #[error("JWKS TLS client: {0}")]
    Tls(#[from] rustls::Error),
    /// A duration that must be positive is zero.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_contract() {
        assert_eq!(TokenError::Malformed.code(), "token_malformed");
        assert_eq!(TokenError::InvalidClaims.code(), "token_malformed");
        assert_eq!(TokenError::CriticalHeader.code(), "token_malformed");
        assert_eq!(
            TokenError::AlgorithmNotAllowed.code(),
            "algorithm_not_allowed"
        );
        assert_eq!(TokenError::UnknownKey.code(), "bad_signature");
        assert_eq!(TokenError::BadSignature.code(), "bad_signature");
        assert_eq!(TokenError::Expired.code(), "token_expired");
        assert_eq!(TokenError::NotYetValid.code(), "token_not_yet_valid");
    }
}
