//! Reading a JWKS document (RFC 7517) into verification keys. Each key is judged on its own: one
//! key the gateway cannot use (an encryption key, an unsupported curve, a symmetric `oct` key) is
//! skipped and logged by `kid`, and does not cost the others. Symmetric keys are never taken from a
//! JWKS: an HMAC key served over the network would let whoever serves it mint tokens.

use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::keys::{ec_algorithms, Origin, VerifyingKey};

/// Keys read from one document at most; a JWKS holds a handful, more is a mistake or an attack.
pub(crate) const MAX_KEYS: usize = 64;

/// Smallest RSA modulus accepted from a JWKS, in bytes (2048 bits, RFC 7518 §3.3).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// Why a JWKS document was refused as a whole (the last good key set stays in use).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JwksError {
    #[error("the JWKS is not a JSON object with a \"keys\" array")]
    NotAJwks,
    #[error("the JWKS has no key usable with the pinned algorithms")]
    NoUsableKey,
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<Value>,
}

/// The JWK members we read. `x5c`, `x5u` and the rest are ignored: the key is its parameters.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// Parses a JWKS document into the keys usable with `pinned`.
pub(crate) fn parse(body: &[u8], pinned: &[Algorithm]) -> Result<Vec<VerifyingKey>, JwksError> {
    let document: Document = serde_json::from_slice(body).map_err(|_| JwksError::NotAJwks)?;
    if document.keys.len() > MAX_KEYS {
        tracing::warn!(
            keys = document.keys.len(),
            max = MAX_KEYS,
            "JWKS has too many keys; reading the first ones only"
        );
    }
    let keys: Vec<VerifyingKey> = document
        .keys
        .into_iter()
        .take(MAX_KEYS)
        .filter_map(|value| match serde_json::from_value::<RawJwk>(value) {
            Ok(raw) => {
                let kid = raw.kid.clone();
                match key(raw, pinned) {
                    Ok(key) => Some(key),
                    Err(reason) => {
                        tracing::info!(
                            kid = kid.as_deref().unwrap_or("-"),
                            reason,
                            "skipping JWKS key"
                        );
                        None
                    }
                }
            }
            Err(_) => {
                tracing::info!("skipping a JWKS entry that is not a JWK");
                None
            }
        })
        .collect();
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey);
    }
    Ok(keys)
}

/// One JWK to a key, or the reason (for the log) it is skipped.
fn key(raw: RawJwk, pinned: &[Algorithm]) -> Result<VerifyingKey, &'static str> {
    if raw.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err("not a signature key (use)");
    }
    let component = |value: &Option<String>| -> Result<Vec<u8>, &'static str> {
        let value = value.as_deref().ok_or("missing key parameter")?;
        URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|_| "key parameter is not base64url")
    };
    let (decoding, allowed): (DecodingKey, &[Algorithm]) =
        match (raw.kty.as_str(), raw.crv.as_deref()) {
            ("RSA", _) => {
                let n = component(&raw.n)?;
                let e = component(&raw.e)?;
                let significant = n.iter().skip_while(|b| **b == 0).count();
                if significant < MIN_RSA_MODULUS_BYTES {
                    return Err("RSA modulus shorter than 2048 bits");
                }
                if e.is_empty() || e.len() > 8 {
                    return Err("RSA exponent out of range");
                }
                (
                    DecodingKey::from_rsa_raw_components(&n, &e),
                    AlgorithmFamily::Rsa.algorithms(),
                )
            }
            ("EC", Some(crv @ ("P-256" | "P-384"))) => {
                let x = component(&raw.x)?;
                let y = component(&raw.y)?;
                let size = if crv == "P-256" { 32 } else { 48 };
                if x.len() != size || y.len() != size {
                    return Err("EC coordinates do not fit the curve");
                }
                let point = [&[0x04][..], &x, &y].concat();
                let allowed = ec_algorithms(point.len()).ok_or("unsupported EC point")?;
                (DecodingKey::from_ec_der(&point), allowed)
            }
            ("OKP", Some("Ed25519")) => {
                let x = component(&raw.x)?;
                if x.len() != 32 {
                    return Err("Ed25519 key is not 32 bytes");
                }
                (
                    DecodingKey::from_ed_der(&x),
                    AlgorithmFamily::Ed.algorithms(),
                )
            }
            ("oct", _) => return Err("symmetric keys are never taken from a JWKS"),
            _ => return Err("unsupported key type or curve"),
        };
    // A key that names its algorithm is held to it (RFC 7517 §4.4).
    let allowed: Vec<Algorithm> = match raw.alg.as_deref() {
        None => allowed.to_vec(),
        Some(name) => match Algorithm::from_str(name) {
            Ok(alg) if allowed.contains(&alg) => vec![alg],
            _ => return Err("its alg does not fit the key type"),
        },
    };
    let id = key_id(&raw);
    VerifyingKey::new(decoding, &allowed, pinned, raw.kid, Origin::Jwks)
        .map(|key| key.with_id(id))
        .ok_or("no pinned algorithm uses this key")
}

/// Identity of a key: its `kid`, type and parameters. Two documents naming the same key give the
/// same id, so a refresh can tell "unchanged" from "removed".
fn key_id(raw: &RawJwk) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [
        Some(raw.kty.as_str()),
        raw.kid.as_deref(),
        raw.alg.as_deref(),
        raw.crv.as_deref(),
        raw.n.as_deref(),
        raw.e.as_deref(),
        raw.x.as_deref(),
        raw.y.as_deref(),
    ] {
        let part = part.unwrap_or("");
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Algorithm] = &[
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
        Algorithm::HS256,
    ];

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rsa(kid: &str) -> String {
        let n = b64(&[0xc5; 256]);
        format!(r#"{{"kty":"RSA","kid":"{kid}","n":"{n}","e":"AQAB"}}"#)
    }

    fn ec(kid: &str) -> String {
        let c = b64(&[7; 32]);
        format!(r#"{{"kty":"EC","crv":"P-256","kid":"{kid}","x":"{c}","y":"{c}"}}"#)
    }

    #[test]
    fn reads_each_key_type() {
        let ed = format!(
            r#"{{"kty":"OKP","crv":"Ed25519","kid":"ed","x":"{}"}}"#,
            b64(&[1; 32])
        );
        let doc = format!(r#"{{"keys":[{},{},{ed}]}}"#, rsa("r"), ec("e"));
        let keys = parse(doc.as_bytes(), ALL).unwrap();
        assert_eq!(keys.len(), 3);
        assert!(keys[0].allows(Algorithm::RS256) && keys[0].allows(Algorithm::PS256));
        assert!(!keys[0].allows(Algorithm::HS256));
        assert!(keys[1].allows(Algorithm::ES256) && !keys[1].allows(Algorithm::ES384));
        assert!(keys[2].allows(Algorithm::EdDSA));
        assert_eq!(keys[2].kid.as_deref(), Some("ed"));
    }

    #[test]
    fn skips_what_it_cannot_use_and_keeps_the_rest() {
        let secret = format!(r#"{{"kty":"oct","kid":"h","k":"{}"}}"#, b64(b"secret"));
        let enc = rsa("enc").replace(r#""kty""#, r#""use":"enc","kty""#);
        let wrong_alg = rsa("wa").replace(r#""kty""#, r#""alg":"ES256","kty""#);
        let oaep = rsa("oaep").replace(r#""kty""#, r#""alg":"RSA-OAEP","kty""#);
        let short = format!(
            r#"{{"kty":"RSA","kid":"s","n":"{}","e":"AQAB"}}"#,
            b64(&[9; 128])
        );
        let x448 = format!(r#"{{"kty":"OKP","crv":"X25519","x":"{}"}}"#, b64(&[1; 32]));
        let bad_ec = format!(
            r#"{{"kty":"EC","crv":"P-256","x":"{0}","y":"{0}"}}"#,
            b64(&[1; 31])
        );
        let doc = format!(
            r#"{{"keys":[{secret},{enc},{wrong_alg},{oaep},{short},{x448},{bad_ec},17,{{"kty":5}},{}]}}"#,
            ec("good")
        );
        let keys = parse(doc.as_bytes(), ALL).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("good"));
    }

    #[test]
    fn alg_member_narrows_the_key() {
        let doc = format!(
            r#"{{"keys":[{}]}}"#,
            rsa("r").replace(r#""kty""#, r#""alg":"PS256","kty""#)
        );
        let keys = parse(doc.as_bytes(), ALL).unwrap();
        assert!(keys[0].allows(Algorithm::PS256) && !keys[0].allows(Algorithm::RS256));
    }

    #[test]
    fn garbage_and_empty_documents_are_refused() {
        for doc in [
            "",
            "[]",
            "{}",
            r#"{"keys":{}}"#,
            "<html>",
            r#"{"keys":"x"}"#,
        ] {
            assert_eq!(
                parse(doc.as_bytes(), ALL).err(),
                Some(JwksError::NotAJwks),
                "{doc}"
            );
        }
        assert_eq!(
            parse(br#"{"keys":[]}"#, ALL).err(),
            Some(JwksError::NoUsableKey)
        );
        let only_rsa = format!(r#"{{"keys":[{}]}}"#, rsa("r"));
        assert_eq!(
            parse(only_rsa.as_bytes(), &[Algorithm::ES256]).err(),
            Some(JwksError::NoUsableKey),
            "no pinned algorithm fits"
        );
    }

    #[test]
    fn key_ids_track_parameters() {
        let one = parse(format!(r#"{{"keys":[{}]}}"#, rsa("r")).as_bytes(), ALL).unwrap();
        let same = parse(format!(r#"{{"keys":[{}]}}"#, rsa("r")).as_bytes(), ALL).unwrap();
        let other = parse(format!(r#"{{"keys":[{}]}}"#, rsa("r2")).as_bytes(), ALL).unwrap();
        assert_eq!(one[0].id, same[0].id);
        assert_ne!(one[0].id, other[0].id);
    }
}
