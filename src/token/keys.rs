//! Verification keys and the rule that binds each to its own algorithm family. A key records the
//! algorithms it may verify when it is built (the HS256 secret: HS*; an RSA key: RS*/PS*; a P-256
//! key: ES256; a P-384 key: ES384; an Ed25519 key: EdDSA), intersected with the pinned list, and
//! is never asked to verify anything else. That is what defeats algorithm confusion: an RSA
//! public key is never turned into an HMAC secret, whatever the token's `alg` says.

use std::fmt;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::error::KeyError;
use super::jws::Compact;

/// Where a key came from; shown in logs instead of the key itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The shared HMAC secret.
    Secret,
    /// `public_keys[n - 1]`.
    Pem(usize),
    /// The JWKS document.
    Jwks,
}

/// One key, with the algorithms it may verify.
pub(crate) struct VerifyingKey {
    /// `kid` from the JWKS; PEM keys and the secret have none.
    pub kid: Option<String>,
    /// SHA-256 of the key's defining parameters (JWKS keys only): tells whether a refresh
    /// dropped a key, in which case tokens it verified must be verified again.
    pub id: [u8; 32],
    /// Algorithms this key may verify: one family, already intersected with the pinned list.
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
    origin: Origin,
}

// By hand: `DecodingKey` would print the HMAC secret.
impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// A key allowed for `allowed ∩ pinned`; `None` when that is empty.
    pub(crate) fn new(
        key: DecodingKey,
        allowed: &[Algorithm],
        pinned: &[Algorithm],
        kid: Option<String>,
        origin: Origin,
    ) -> Option<Self> {
        let algorithms: Vec<Algorithm> = allowed
            .iter()
            .copied()
            .filter(|alg| pinned.contains(alg) && alg.family() == key.family())
            .collect();
        (!algorithms.is_empty()).then_some(VerifyingKey {
            kid,
            id: [0; 32],
            algorithms,
            key,
            origin,
        })
    }

    /// Sets [`VerifyingKey::id`].
    pub(crate) fn with_id(mut self, id: [u8; 32]) -> Self {
        self.id = id;
        self
    }

    /// Whether this key may verify `alg`.
    pub(crate) fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }

    /// Checks the signature of `token` with this key. A key of the wrong family, an unparsable
    /// key or a bad signature all answer `false`.
    pub(crate) fn verifies(&self, token: &Compact<'_>) -> bool {
        let alg = token.header.alg;
        self.allows(alg)
            && jsonwebtoken::crypto::verify(
                token.signature,
                token.signing_input.as_bytes(),
                &self.key,
                alg,
            )
            .unwrap_or(false)
    }

    /// Where the key came from, for logs.
    pub(crate) fn origin(&self) -> Origin {
        self.origin
    }
}

/// The algorithms an EC public point can verify, from its length (uncompressed SEC1 point).
pub(crate) fn ec_algorithms(point_len: usize) -> Option<&'static [Algorithm]> {
    match point_len {
        65 => Some(&[Algorithm::ES256]),
        97 => Some(&[Algorithm::ES384]),
        _ => None,
    }
}

/// Builds the keys that do not change while the gateway runs: the shared secret and the PEM
/// public keys. Also checks that every pinned algorithm has a key, or a JWKS that may supply one.
pub(crate) fn static_keys(
    pinned: &[Algorithm],
    secret: Option<&[u8]>,
    pems: &[Vec<u8>],
    has_jwks: bool,
) -> Result<Vec<VerifyingKey>, KeyError> {
    if pinned.is_empty() {
        return Err(KeyError::NoAlgorithms);
    }
    let mut keys = Vec::new();
    if let Some(secret) = secret {
        if secret.is_empty() {
            return Err(KeyError::EmptySecret);
        }
        if secret.len() < 32 {
            // RFC 7518 §3.2: an HS256 key must be at least 256 bits. Not fatal: the upstream
            // chose the secret, the gateway only has to match it.
            tracing::warn!(
                bytes = secret.len(),
                "the HS256 secret is shorter than 32 bytes"
            );
        }
        let key = DecodingKey::from_secret(secret);
        let hmac = AlgorithmFamily::Hmac.algorithms();
        let key = VerifyingKey::new(key, hmac, pinned, None, Origin::Secret)
            .ok_or(KeyError::UnusedSecret)?;
        keys.push(key);
    }
    for (i, pem) in pems.iter().enumerate() {
        keys.push(pem_key(i + 1, pem, pinned)?);
    }
    for &alg in pinned {
        let covered = keys.iter().any(|key| key.allows(alg))
            || (has_jwks && alg.family() != AlgorithmFamily::Hmac);
        if !covered {
            return Err(KeyError::NoKeyFor(alg));
        }
    }
    Ok(keys)
}

/// Parses one PEM public key (SPKI `PUBLIC KEY`, PKCS#1 `RSA PUBLIC KEY`, or a `CERTIFICATE`
/// whose key is used as is; the certificate itself is not validated).
fn pem_key(index: usize, pem: &[u8], pinned: &[Algorithm]) -> Result<VerifyingKey, KeyError> {
    let text = String::from_utf8_lossy(pem);
    let labels: Vec<&str> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("-----BEGIN "))
        .collect();
    if labels.iter().any(|label| label.contains("PRIVATE")) {
        return Err(KeyError::PrivateKey { index });
    }
    match labels.len() {
        0 => return Err(KeyError::BadPem { index }),
        1 => {}
        blocks => return Err(KeyError::SeveralBlocks { index, blocks }),
    }
    let (key, allowed, family): (DecodingKey, &[Algorithm], &'static str) =
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            (key, AlgorithmFamily::Rsa.algorithms(), "RSA")
        } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            let point_len = key.try_get_as_bytes().map_or(0, <[u8]>::len);
            let allowed = ec_algorithms(point_len).ok_or(KeyError::BadPem { index })?;
            (key, allowed, "EC")
        } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            if key.try_get_as_bytes().map_or(0, <[u8]>::len) != 32 {
                return Err(KeyError::BadPem { index });
            }
            (key, AlgorithmFamily::Ed.algorithms(), "Ed25519")
        } else {
            return Err(KeyError::BadPem { index });
        };
    VerifyingKey::new(key, allowed, pinned, None, Origin::Pem(index))
        .ok_or(KeyError::UnusedKey { index, family })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_PUB: &[u8] = include_bytes!("../../tests/fixtures/keys/rsa-a.pub.pem");
    const RSA_PRIV: &[u8] = include_bytes!("../../tests/fixtures/keys/rsa-a.key.pem");

    #[test]
    fn secret_is_hmac_only() {
        let pinned = [Algorithm::HS256, Algorithm::RS256];
        let keys = static_keys(&pinned, Some(b"s".repeat(32).as_slice()), &[], true).unwrap();
        assert!(keys[0].allows(Algorithm::HS256));
        assert!(!keys[0].allows(Algorithm::RS256));
        assert!(!keys[0].allows(Algorithm::HS512), "not pinned");
    }

    #[test]
    fn rsa_pem_is_rsa_only() {
        let pinned = [Algorithm::HS256, Algorithm::RS256, Algorithm::PS256];
        let keys = static_keys(&pinned, Some(b"secret"), &[RSA_PUB.to_vec()], false).unwrap();
        let rsa = &keys[1];
        assert!(rsa.allows(Algorithm::RS256) && rsa.allows(Algorithm::PS256));
        assert!(!rsa.allows(Algorithm::HS256));
        assert_eq!(rsa.origin(), Origin::Pem(1));
        assert!(!format!("{rsa:?}").contains("MII"), "no key bytes in Debug");
    }

    #[test]
    fn configuration_mistakes_are_named() {
        let rs = [Algorithm::RS256];
        let hs = [Algorithm::HS256];
        assert!(matches!(
            static_keys(&[], None, &[], true),
            Err(KeyError::NoAlgorithms)
        ));
        assert!(matches!(
            static_keys(&rs, None, &[], false),
            Err(KeyError::NoKeyFor(Algorithm::RS256))
        ));
        assert!(
            static_keys(&rs, None, &[], true).is_ok(),
            "a JWKS may supply it"
        );
        assert!(
            matches!(
                static_keys(&hs, None, &[], true),
                Err(KeyError::NoKeyFor(Algorithm::HS256))
            ),
            "a JWKS never supplies an HMAC key"
        );
        assert!(matches!(
            static_keys(&hs, Some(b""), &[], false),
            Err(KeyError::EmptySecret)
        ));
        assert!(matches!(
            static_keys(&rs, Some(b"secret"), &[RSA_PUB.to_vec()], false),
            Err(KeyError::UnusedSecret)
        ));
        assert!(matches!(
            static_keys(&hs, Some(b"secret"), &[RSA_PUB.to_vec()], false),
            Err(KeyError::UnusedKey {
                index: 1,
                family: "RSA"
            })
        ));
        assert!(matches!(
            static_keys(&rs, None, &[RSA_PRIV.to_vec()], false),
            Err(KeyError::PrivateKey { index: 1 })
        ));
        assert!(matches!(
            static_keys(&rs, None, &[b"not a pem".to_vec()], false),
            Err(KeyError::BadPem { index: 1 })
        ));
        let two = [RSA_PUB, RSA_PUB].concat();
        assert!(matches!(
            static_keys(&rs, None, &[two], false),
            Err(KeyError::SeveralBlocks {
                index: 1,
                blocks: 2
            })
        ));
    }

    #[test]
    fn ec_point_length_picks_the_curve() {
        assert_eq!(ec_algorithms(65), Some(&[Algorithm::ES256][..]));
        assert_eq!(ec_algorithms(97), Some(&[Algorithm::ES384][..]));
        assert_eq!(
            ec_algorithms(33),
            None,
            "compressed points are not supported"
        );
    }
}
