//! The compact JWS form, taken apart by hand before any cryptography runs: exactly three
//! base64url segments, a JOSE header that is a JSON object, an `alg` that is exactly one of the
//! pinned algorithms, no `crit`. The header is read here rather than by `jsonwebtoken` so that
//! nothing the token says can pick an algorithm, a key source or an extension: `jku`, `x5u`,
//! `x5c` and `jwk` are never even deserialized, and `kid` is an opaque selector.

use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::error::TokenError;

/// Longest token accepted. Commerce account tokens are ~400 bytes; anything near this is an
/// attack on the decoder, not a credential.
pub(crate) const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Longest `kid` accepted; also keeps log lines that name a `kid` short.
const MAX_KID_LEN: usize = 256;

/// A token split into its parts, the header checked, the payload decoded but not yet read.
#[derive(Debug)]
pub(crate) struct Compact<'a> {
    /// The checked header.
    pub header: Header,
    /// The decoded payload bytes (JSON, not yet parsed).
    pub payload: Vec<u8>,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a str,
    /// The base64url signature segment (already known to decode).
    pub signature: &'a str,
}

/// The JOSE header fields the verifier acts on. Everything else in the header is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// One of the pinned algorithms.
    pub alg: Algorithm,
    /// Key id: selects among configured keys, never used as a path or URL.
    pub kid: Option<String>,
}

/// The header as it is on the wire. Only the fields we act on are named, so duplicates of them
/// are refused by serde (a parser differential on `alg` or `kid` is not possible).
#[derive(Deserialize)]
struct RawHeader {
    #[serde(default, deserialize_with = "member")]
    alg: Option<Value>,
    #[serde(default, deserialize_with = "member")]
    kid: Option<Value>,
    /// Whether `crit` is present at all, whatever its value (even `null`).
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

/// `Some` for any value that is there, `null` included: `"alg": null` is a bad `alg`, not a
/// missing one.
fn member<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(deserializer)?;
    Ok(true)
}

/// Splits and checks a compact JWS. The order matters: the header (and so `alg`) is judged
/// before the signature segment, so `alg: none` with an empty signature says
/// [`TokenError::AlgorithmNotAllowed`], not [`TokenError::Malformed`].
pub(crate) fn split<'a>(token: &'a str, pinned: &[Algorithm]) -> Result<Compact<'a>, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let mut segments = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(TokenError::Malformed);
    };
    if header.is_empty() || payload.is_empty() {
        return Err(TokenError::Malformed);
    }
    let header = parse_header(&decode_segment(header)?, pinned)?;
    if signature.is_empty() {
        return Err(TokenError::Malformed);
    }
    decode_segment(signature)?;
    let payload = decode_segment(payload)?;
    if !is_json_object(&payload) {
        return Err(TokenError::Malformed);
    }
    // Cannot fail: the two dots were found above.
    let signing_input = token.rsplit_once('.').map_or(token, |(signed, _)| signed);
    Ok(Compact {
        header,
        payload,
        signing_input,
        signature,
    })
}

/// Strict base64url: no padding, no `+`/`/`, no whitespace, no non-zero trailing bits.
fn decode_segment(segment: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed)
}

/// serde would also read a struct from a JSON *array*; a JOSE header or claim set is an object.
pub(crate) fn is_json_object(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{')
}

/// Reads and judges a decoded JOSE header.
pub(crate) fn parse_header(bytes: &[u8], pinned: &[Algorithm]) -> Result<Header, TokenError> {
    if !is_json_object(bytes) {
        return Err(TokenError::Malformed);
    }
    let raw: RawHeader = serde_json::from_slice(bytes).map_err(|_| TokenError::Malformed)?;
    let alg = match raw.alg {
        None => return Err(TokenError::Malformed),
        // `Algorithm::from_str` is an exact, case-sensitive match and has no `none`.
        Some(Value::String(name)) => Algorithm::from_str(&name)
            .ok()
            .filter(|alg| pinned.contains(alg))
            .ok_or(TokenError::AlgorithmNotAllowed)?,
        Some(_) => return Err(TokenError::AlgorithmNotAllowed),
    };
    if raw.crit {
        return Err(TokenError::CriticalHeader);
    }
    let kid = match raw.kid {
        None => None,
        Some(Value::String(kid)) if kid.len() <= MAX_KID_LEN => Some(kid),
        Some(_) => return Err(TokenError::Malformed),
    };
    Ok(Header { alg, kid })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: &[Algorithm] = &[Algorithm::HS256, Algorithm::RS256];

    fn header(json: &str) -> Result<Header, TokenError> {
        parse_header(json.as_bytes(), PINNED)
    }

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn reads_alg_and_kid() {
        assert_eq!(
            header(r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#),
            Ok(Header {
                alg: Algorithm::RS256,
                kid: Some("k1".into())
            })
        );
        assert_eq!(
            header(r#"{"alg":"HS256"}"#).map(|h| h.kid),
            Ok(None),
            "kid is optional"
        );
    }

    #[test]
    fn alg_must_be_an_exact_pinned_name() {
        for alg in [
            r#""none""#,
            r#""None""#,
            r#""NONE""#,
            r#""hs256""#,
            r#""HS256 ""#,
            r#""ES256""#,
            r#""XYZ""#,
            "null",
            "256",
            r#"["HS256"]"#,
        ] {
            let json = format!(r#"{{"alg":{alg}}}"#);
            assert_eq!(
                header(&json),
                Err(TokenError::AlgorithmNotAllowed),
                "{json}"
            );
        }
        assert_eq!(header(r#"{"typ":"JWT"}"#), Err(TokenError::Malformed));
    }

    #[test]
    fn crit_is_refused_whatever_its_value() {
        for crit in [r#"["exp"]"#, "[]", "null", r#""b64""#] {
            let json = format!(r#"{{"alg":"HS256","crit":{crit}}}"#);
            assert_eq!(header(&json), Err(TokenError::CriticalHeader), "{json}");
        }
    }

    #[test]
    fn key_source_headers_are_ignored() {
        let json = r#"{"alg":"RS256","jku":"http://evil/jwks","x5u":"http://evil/c","x5c":["AAAA"],"jwk":{"kty":"RSA","n":"AQAB","e":"AQAB"}}"#;
        assert_eq!(
            header(json),
            Ok(Header {
                alg: Algorithm::RS256,
                kid: None
            })
        );
    }

    #[test]
    fn header_shape() {
        assert_eq!(header(r#"["HS256"]"#), Err(TokenError::Malformed));
        assert_eq!(header("null"), Err(TokenError::Malformed));
        assert_eq!(header(r#"{"alg":"HS256""#), Err(TokenError::Malformed));
        assert_eq!(
            header(r#"{"alg":"HS256","alg":"HS256"}"#),
            Err(TokenError::Malformed),
            "duplicate alg"
        );
        assert_eq!(
            header(r#"{"alg":"HS256","kid":7}"#),
            Err(TokenError::Malformed)
        );
        let long = format!(r#"{{"alg":"HS256","kid":"{}"}}"#, "a".repeat(300));
        assert_eq!(header(&long), Err(TokenError::Malformed));
        assert_eq!(
            header(r#"{"alg":"HS256","kid":"../../etc/passwd"}"#).map(|h| h.kid),
            Ok(Some("../../etc/passwd".into())),
            "a kid is opaque text"
        );
    }

    #[test]
    fn segments() {
        let h = b64(r#"{"alg":"HS256"}"#);
        let p = b64(r#"{"exp":1}"#);
        let ok = format!("{h}.{p}.c2ln");
        let compact = split(&ok, PINNED).unwrap();
        assert_eq!(compact.signing_input, format!("{h}.{p}"));
        assert_eq!(compact.signature, "c2ln");
        assert_eq!(compact.payload, br#"{"exp":1}"#);

        for bad in [
            String::new(),
            format!("{h}.{p}"),
            format!("{h}.{p}.c2ln.c2ln"),
            format!("{h}..c2ln"),
            format!(".{p}.c2ln"),
            format!("{h}.{p}."),
            format!("{h}.{p}.c2ln="),
            format!("{h}.{p}.c2l+"),
            format!("{h}.{p} .c2ln"),
            format!("{h}=.{p}.c2ln"),
            format!("{h}.{}.c2ln", b64("[1]")),
            format!("{h}.{}.c2ln", b64("null")),
            format!("{h}.{p}.{}", "A".repeat(MAX_TOKEN_LEN)),
        ] {
            assert_eq!(
                split(&bad, PINNED).map(|_| ()),
                Err(TokenError::Malformed),
                "{bad:.80}"
            );
        }
    }

    #[test]
    fn alg_none_is_judged_before_the_empty_signature() {
        let token = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(r#"{"exp":1}"#));
        assert_eq!(
            split(&token, PINNED).map(|_| ()),
            Err(TokenError::AlgorithmNotAllowed)
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    const PINNED: &[Algorithm] = &[Algorithm::HS256, Algorithm::RS256, Algorithm::EdDSA];

    /// JSON-ish header text: real member names with values of every type, or arbitrary text.
    fn header_text() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            Just("null".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            prop::sample::select(vec!["HS256", "RS256", "EdDSA", "none", "NONE", "hs256", ""])
                .prop_map(|s| format!("{s:?}")),
            ".{0,8}".prop_map(|s| format!("{s:?}")),
            Just("[]".to_owned()),
            Just(r#"["exp"]"#.to_owned()),
            Just("{}".to_owned()),
        ];
        let member = (
            prop::sample::select(vec!["alg", "kid", "crit", "typ", "jku", "jwk", "x5u"]),
            value,
        )
            .prop_map(|(name, value)| format!("{name:?}:{value}"));
        prop_oneof![
            3 => prop::collection::vec(member, 0..5).prop_map(|m| format!("{{{}}}", m.join(","))),
            1 => ".{0,40}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The header parser never panics, refuses only with its three documented errors, and
        /// accepts only a pinned algorithm with no `crit`.
        #[test]
        fn parse_header_is_total(text in header_text()) {
            match parse_header(text.as_bytes(), PINNED) {
                Ok(header) => {
                    prop_assert!(PINNED.contains(&header.alg));
                    prop_assert!(!text.contains("\"crit\""));
                    prop_assert!(header.kid.as_ref().is_none_or(|kid| kid.len() <= MAX_KID_LEN));
                }
                Err(error) => prop_assert!(matches!(
                    error,
                    TokenError::Malformed
                        | TokenError::AlgorithmNotAllowed
                        | TokenError::CriticalHeader
                )),
            }
        }

        /// `split` never panics on arbitrary bytes of any shape, and whatever it accepts has a
        /// signing input and signature that put the token back together.
        #[test]
        fn split_is_total(
            header in header_text(),
            payload in prop::collection::vec(any::<u8>(), 0..64),
            signature in prop::collection::vec(any::<u8>(), 0..64),
            raw in "[A-Za-z0-9_.=+/ -]{0,120}",
            shape in 0..3u8,
        ) {
            let token = match shape {
                0 => raw,
                1 => format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(&header),
                             URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(&signature)),
                _ => format!("{}.{}", URL_SAFE_NO_PAD.encode(&header), raw),
            };
            match split(&token, PINNED) {
                Ok(compact) => {
                    prop_assert_eq!(format!("{}.{}", compact.signing_input, compact.signature), token.clone());
                    prop_assert!(is_json_object(&compact.payload));
                }
                Err(error) => prop_assert!(matches!(
                    error,
                    TokenError::Malformed
                        | TokenError::AlgorithmNotAllowed
                        | TokenError::CriticalHeader
                )),
            }
        }
    }
}
