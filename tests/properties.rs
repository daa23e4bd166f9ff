//! Property tests over the three parsers that read what clients and operators send: account
//! tokens (`claims::peek`, `unverified::precheck`, `Verifier::verify`), token-request bodies
//! (`signup::check_body`) and configuration files (`config::from_toml_str`). Each must be total
//! — never panic, whatever the input — and fail only in its documented ways. The JOSE header
//! parser's own properties are unit tests in `src/token/jws.rs`. Long runs of the same
//! targets under a coverage-guided fuzzer: `fuzz/` (see the README).

mod common;

use account_gate::signup::{check_body, SignupError, SignupPolicy};
use account_gate::token::claims;
use account_gate::token::unverified::precheck;
use account_gate::token::{TokenError, Verifier};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::keys::{now, sign_as, SECRET};
use jsonwebtoken::{Algorithm, EncodingKey};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,16}".prop_map(Value::String),
        prop::sample::select(vec![
            "password",
            "self_signup",
            "account_management_authentication_token",
            "a@b.co",
        ])
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Claims that look like an account token's, each member possibly of the wrong type.
fn claims_value() -> impl Strategy<Value = Value> {
    let member = |name: &'static str| {
        prop_oneof![
            2 => Just(None),
            1 => json_value().prop_map(Some),
            2 => prop_oneof![
                Just(json!(now() + 3600)),
                Just(json!(now() - 3600)),
                Just(json!("2021-03-16T19:36:11.070Z")),
                Just(json!("member-1")),
            ].prop_map(Some),
        ]
        .prop_map(move |v| v.map(|v| (name, v)))
    };
    (
        member("sub"),
        member("scope"),
        member("exp"),
        member("nbf"),
        member("iat"),
    )
        .prop_map(|(a, b, c, d, e)| {
            Value::Object(
                [a, b, c, d, e]
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
            )
        })
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Token-shaped strings: arbitrary text, base64url soup, and three segments of (mostly) JSON.
fn token_like() -> impl Strategy<Value = String> {
    let header = prop_oneof![
        prop::sample::select(vec!["HS256", "RS256", "none", "None", "HS512", ""])
            .prop_map(|alg| json!({"alg": alg, "typ": "JWT"}).to_string()),
        json_value().prop_map(|v| v.to_string()),
    ];
    let payload = prop_oneof![
        3 => claims_value().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ];
    prop_oneof![
        1 => ".{0,200}",
        1 => "[A-Za-z0-9_.=+/-]{0,300}",
        4 => (header, payload, prop::collection::vec(any::<u8>(), 0..48))
            .prop_map(|(h, p, s)| format!("{}.{}.{}", b64(h), b64(p), b64(s))),
    ]
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    /// HS256 with the test secret, and the RSA fixture; no JWKS, no issuer or audience.
    static VERIFIER: Verifier = RUNTIME.with(|runtime| {
        let mut settings = common::keys::settings(&[Algorithm::HS256, Algorithm::RS256]);
        settings.hs256_secret = Some(SECRET.to_vec());
        settings.public_keys = vec![common::keys::RSA_A_PUB.to_vec()];
        runtime.block_on(Verifier::new(settings)).expect("verifier")
    });
}

fn verify(token: &str) -> Result<account_gate::token::VerifiedToken, TokenError> {
    RUNTIME.with(|runtime| VERIFIER.with(|verifier| runtime.block_on(verifier.verify(token))))
}

/// The codes a token request may be refused with (README, "Answers the gateway writes itself").
const SIGNUP_CODES: &[&str] = &[
    "malformed_json",
    "invalid_body",
    "missing_field",
    "invalid_field",
    "invalid_type",
    "unknown_mechanism",
    "mechanism_disabled",
    "weak_password",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `peek` never panics; what it reads came from three non-empty segments.
    #[test]
    fn peek_is_total(token in token_like()) {
        if claims::peek(&token).is_ok() {
            let segments: Vec<&str> = token.split('.').collect();
            prop_assert_eq!(segments.len(), 3);
            prop_assert!(segments.iter().all(|s| !s.is_empty()));
        }
    }

    /// The checks run on unknown tokens never panic, never report an error that needs a key or
    /// an issuer, and never pass an unsigned token.
    #[test]
    fn precheck_is_total(token in token_like()) {
        match precheck(&token, 30) {
            Ok(_) => prop_assert!(!token.ends_with('.')),
            Err(error) => prop_assert!(matches!(
                error,
                TokenError::Malformed
                    | TokenError::InvalidClaims
                    | TokenError::CriticalHeader
                    | TokenError::AlgorithmNotAllowed
                    | TokenError::Expired
                    | TokenError::NotYetValid
            ), "{error:?}"),
        }
    }

    /// Random tokens never verify, and the verifier refuses them only in documented ways: with
    /// no issuer or audience configured, those two errors never appear.
    #[test]
    fn verify_refuses_garbage_with_documented_errors(token in token_like()) {
        match verify(&token) {
            Ok(_) => prop_assert!(false, "a random token verified: {token}"),
            Err(error) => prop_assert!(
                !matches!(error, TokenError::WrongIssuer | TokenError::WrongAudience),
                "{error:?}"
            ),
        }
    }

    /// Changing any one character of a genuine token to another base64url character (or a
    /// dot) makes it fail: nothing in a token is outside the signature or the strict encoding.
    #[test]
    fn any_one_character_change_breaks_a_genuine_token(
        position in any::<prop::sample::Index>(),
        replacement in prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.".chars().collect::<Vec<_>>()
        ),
    ) {
        let claims = json!({"sub": "member-1", "scope": "account-1", "exp": now() + 3600});
        let token = sign_as(Algorithm::HS256, &EncodingKey::from_secret(SECRET), json!({}), claims);
        prop_assert!(verify(&token).is_ok());
        let mut chars: Vec<char> = token.chars().collect();
        let i = position.index(chars.len());
        prop_assume!(chars[i] != replacement);
        chars[i] = replacement;
        let changed: String = chars.into_iter().collect();
        prop_assert!(verify(&changed).is_err(), "{changed}");
    }

    /// The sign-up validator never panics on any body, and every refusal is a 400 with a
    /// documented code and a JSON pointer (`""` for the whole body, else starting with `/`).
    #[test]
    fn check_body_is_total(
        body in prop_oneof![
            1 => prop::collection::vec(any::<u8>(), 0..200),
            2 => json_value().prop_map(|v| v.to_string().into_bytes()),
            4 => (json_value(), prop::sample::select(vec![
                "password", "self_signup", "passwordless", "oidc",
                "account_management_authentication_token", "magic",
            ]), prop::collection::btree_map(
                prop::sample::select(vec![
                    "type", "password_profile_id", "username", "password", "name", "email",
                    "given_name", "one_time_password_token", "oauth_authorization_code",
                    "oauth_redirect_uri", "oauth_code_verifier",
                ]),
                prop_oneof![json_value(), Just(json!("value")), Just(json!("a@b.co")),
                            Just(json!("account_management_authentication_token"))],
                0..10,
            )).prop_map(|(extra, mechanism, fields)| {
                let mut data: serde_json::Map<String, Value> = fields
                    .into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                data.insert("authentication_mechanism".into(), json!(mechanism));
                data.insert("extra".into(), extra);
                json!({"data": data}).to_string().into_bytes()
            }),
        ],
        strict in any::<bool>(),
    ) {
        let policy = SignupPolicy {
            username_must_be_email: strict,
            min_password_length: if strict { 8 } else { 0 },
            ..SignupPolicy::default()
        };
        match check_body(&body, &policy) {
            Ok(checked) => prop_assert!(serde_json::from_slice::<Value>(&body).is_ok(),
                                        "{checked:?}"),
            Err(SignupError::Invalid { code, pointer, .. }) => {
                prop_assert!(SIGNUP_CODES.contains(&code), "{code}");
                prop_assert!(pointer.is_empty() || pointer.starts_with('/'), "{pointer}");
            }
            Err(other) => prop_assert!(false, "not a body error: {other:?}"),
        }
    }

    /// The configuration loader never panics, whatever the text: it loads or lists errors.
    #[test]
    fn from_toml_str_is_total(
        text in prop_oneof![
            1 => ".{0,200}",
            3 => prop::collection::vec(
                (prop::sample::select(account_gate::config::schema_keys()),
                 prop_oneof![
                     Just("\"http://127.0.0.1:1\"".to_owned()),
                     Just("\"5s\"".to_owned()),
                     Just("\"5 parsecs\"".to_owned()),
                     Just("\"127.0.0.1:0\"".to_owned()),
                     Just("[\"HS256\", \"none\"]".to_owned()),
                     any::<i64>().prop_map(|n| n.to_string()),
                     any::<bool>().prop_map(|b| b.to_string()),
                     ".{0,12}".prop_map(|s| format!("{s:?}")),
                     Just("{}".to_owned()),
                 ]),
                0..8,
            ).prop_map(|pairs| {
                // `section.key = value` lines under their tables.
                let mut text = String::new();
                for (key, value) in pairs {
                    match key.rsplit_once('.') {
                        Some((table, name)) => text.push_str(&format!("[{table}]\n{name} = {value}\n")),
                        None => text.push_str(&format!("{key} = {value}\n")),
                    }
                }
                text
            }),
        ],
        env in prop::collection::vec(
            (prop::sample::select(vec![
                "ACCOUNT_GATE__UPSTREAM__URL", "ACCOUNT_GATE__SERVER__MAX_CONNECTIONS",
                "ACCOUNT_GATE__SERVER__BOGUS", "ACCOUNT_GATE__TOKENS__MODE", "SECRET",
            ]), ".{0,12}"),
            0..3,
        ),
    ) {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if let Err(errors) = account_gate::config::from_toml_str(&text, &env) {
            prop_assert!(!errors.to_string().is_empty());
        }
    }
}
