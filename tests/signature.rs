//! Signature verification of account tokens, end to end: real keys (PEM and JWKS), a real JWKS
//! server on 127.0.0.1:0 with a hit counter and a swappable key set, and an "attacker" server
//! that must never be contacted.

mod common;

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use account_gate::store::Fingerprint;
use account_gate::token::{KeyError, SignatureSettings, TokenError, Verifier};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use common::eventually;
use common::keys::*;
use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey};
use proptest::prelude::*;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------------
// Happy paths
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hs256_with_the_shared_secret() {
    let verifier = hs_verifier().await;
    let token = TestKey::hmac(SECRET).token(None);
    let verified = verifier.verify(&token).await.expect("verifies");
    assert_eq!(verified.member_id.as_deref(), Some("member-1"));
    assert_eq!(verified.account_id.as_deref(), Some("account-1"));
    let exp = verified
        .expires_at
        .duration_since(UNIX_EPOCH)
        .expect("after epoch");
    assert!((exp.as_secs() as i64 - (now() + 3600)).abs() <= 2);
}

#[tokio::test]
async fn public_keys_from_pem() {
    let rsa = TestKey::rsa_a();
    let ps = TestKey::rsa(RSA_A_KEY, RSA_A_PUB, Algorithm::PS256);
    let es256 = TestKey::generated(Algorithm::ES256);
    let es384 = TestKey::generated(Algorithm::ES384);
    let ed = TestKey::generated(Algorithm::EdDSA);
    let pinned = [
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];
    let verifier = pem_verifier(&pinned, &[&rsa, &es256, &es384, &ed]).await;
    for key in [&rsa, &ps, &es256, &es384, &ed] {
        let verified = verifier.verify(&key.token(None)).await;
        assert!(verified.is_ok(), "{:?}: {verified:?}", key.alg);
    }
}

#[tokio::test]
async fn public_keys_from_jwks() {
    let rsa = TestKey::rsa_a();
    let es = TestKey::generated(Algorithm::ES256);
    let ed = TestKey::generated(Algorithm::EdDSA);
    let server = JwksServer::start(&[(&rsa, "rsa-1"), (&es, "ec-1"), (&ed, "ed-1")]).await;
    let pinned = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
    let verifier = Verifier::new(server.settings(&pinned, LONG, LONG))
        .await
        .expect("verifier");
    assert_eq!(server.hits(), 1, "fetched once at start");
    for (key, kid) in [(&rsa, "rsa-1"), (&es, "ec-1"), (&ed, "ed-1")] {
        assert!(
            verifier.verify(&key.token(Some(kid))).await.is_ok(),
            "{kid}"
        );
        // Without a kid, the keys of the token's family are tried.
        assert!(
            verifier.verify(&key.token(None)).await.is_ok(),
            "{kid} without kid"
        );
    }
    // A kid names one key: no RSA key is called "ec-1".
    assert_eq!(
        verifier.verify(&rsa.token(Some("ec-1"))).await,
        Err(TokenError::UnknownKey)
    );
    assert_eq!(verifier.jwks_fetches(), 1);
}

#[tokio::test]
async fn https_jwks_with_an_extra_ca() {
    let rsa = TestKey::rsa_a();
    let server = JwksServer::start_tls(&[(&rsa, "k1")]).await;
    let verifier = Verifier::new(server.settings(&[Algorithm::RS256], LONG, LONG))
        .await
        .expect("verifier");
    assert!(verifier.verify(&rsa.token(Some("k1"))).await.is_ok());

    // Without the CA the certificate is refused: no keys, and the failure is not fatal.
    let mut untrusting = server.settings(&[Algorithm::RS256], LONG, LONG);
    untrusting.jwks_ca_file = None;
    let verifier = Verifier::new(untrusting)
        .await
        .expect("a failed first fetch is not fatal");
    assert_eq!(
        verifier.verify(&rsa.token(Some("k1"))).await,
        Err(TokenError::UnknownKey)
    );
}

// ---------------------------------------------------------------------------------------------
// Forgery and tampering
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tampered_payload_or_signature() {
    let rsa = TestKey::rsa_a();
    let verifier = pem_verifier(&[Algorithm::RS256], &[&rsa]).await;
    let token = rsa.token(None);
    let (signed, signature) = token.rsplit_once('.').expect("three parts");
    let (header, _) = signed.split_once('.').expect("three parts");

    let mut other = claims();
    other["scope"] = json!("account-2");
    let new_payload = format!("{header}.{}.{signature}", b64(other.to_string()));
    assert_eq!(
        verifier.verify(&new_payload).await,
        Err(TokenError::BadSignature)
    );

    let mut bytes = URL_SAFE_NO_PAD.decode(signature).expect("b64");
    bytes[10] ^= 1;
    let new_signature = format!("{signed}.{}", b64(bytes));
    assert_eq!(
        verifier.verify(&new_signature).await,
        Err(TokenError::BadSignature)
    );

    let other_key = TestKey::rsa_b().token(None);
    assert_eq!(
        verifier.verify(&other_key).await,
        Err(TokenError::BadSignature)
    );

    let hs = hs_verifier().await;
    let wrong_secret = TestKey::hmac(b"another secret, also 32 bytes long").token(None);
    assert_eq!(
        hs.verify(&wrong_secret).await,
        Err(TokenError::BadSignature)
    );
    assert_eq!(
        hs.verify(&wrong_secret).await.map_err(|e| e.code()),
        Err("bad_signature")
    );
}

#[tokio::test]
async fn alg_none_in_every_spelling() {
    let verifier = hs_verifier().await;
    let good = TestKey::hmac(SECRET).token(None);
    let signature = good.rsplit_once('.').expect("parts").1;
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
        for sig in ["", signature] {
            let token = with_raw_header(&header, claims(), sig);
            let outcome = verifier.verify(&token).await;
            assert_eq!(
                outcome,
                Err(TokenError::AlgorithmNotAllowed),
                "{alg} sig={}",
                !sig.is_empty()
            );
            assert_eq!(outcome.map_err(|e| e.code()), Err("algorithm_not_allowed"));
        }
    }
}

#[tokio::test]
async fn algorithms_outside_the_pinned_list() {
    let verifier = hs_verifier().await;
    let hs = TestKey::hmac(SECRET);
    // Same secret, but HS512 is not pinned.
    let hs512 = sign_as(Algorithm::HS512, &hs.signing, json!({}), claims());
    assert_eq!(
        verifier.verify(&hs512).await,
        Err(TokenError::AlgorithmNotAllowed)
    );
    let rs = TestKey::rsa_a().token(None);
    assert_eq!(
        verifier.verify(&rs).await,
        Err(TokenError::AlgorithmNotAllowed)
    );
    let lowercase = with_raw_header(r#"{"alg":"hs256"}"#, claims(), "c2ln");
    assert_eq!(
        verifier.verify(&lowercase).await,
        Err(TokenError::AlgorithmNotAllowed)
    );
}

#[tokio::test]
async fn algorithm_confusion_rsa_public_key_as_hmac_secret() {
    let rsa = TestKey::rsa_a();
    // The classic attack: HS256 keyed with the bytes of the RSA public key PEM.
    let forged = sign_as(
        Algorithm::HS256,
        &EncodingKey::from_secret(&rsa.public_pem),
        json!({}),
        claims(),
    );
    // HS256 pinned too, with its own secret: the RSA key is still never an HMAC key.
    let mut both = settings(&[Algorithm::RS256, Algorithm::HS256]);
    both.public_keys = vec![rsa.public_pem.clone()];
    both.hs256_secret = Some(SECRET.to_vec());
    let verifier = Verifier::new(both).await.expect("verifier");
    assert_eq!(
        verifier.verify(&forged).await,
        Err(TokenError::BadSignature)
    );
    assert!(verifier.verify(&rsa.token(None)).await.is_ok());
    assert!(verifier
        .verify(&TestKey::hmac(SECRET).token(None))
        .await
        .is_ok());

    let rs_only = pem_verifier(&[Algorithm::RS256], &[&rsa]).await;
    assert_eq!(
        rs_only.verify(&forged).await,
        Err(TokenError::AlgorithmNotAllowed)
    );

    // The same with a JWKS-served RSA key: the JWK is never an HMAC key either.
    let server = JwksServer::start(&[(&rsa, "k1")]).await;
    let mut jwks = server.settings(&[Algorithm::RS256, Algorithm::HS256], LONG, LONG);
    jwks.hs256_secret = Some(SECRET.to_vec());
    let verifier = Verifier::new(jwks).await.expect("verifier");
    let forged_kid = sign_as(
        Algorithm::HS256,
        &EncodingKey::from_secret(rsa.jwk_with_kid("k1").to_string().as_bytes()),
        json!({"kid": "k1"}),
        claims(),
    );
    assert_eq!(
        verifier.verify(&forged_kid).await,
        Err(TokenError::BadSignature)
    );
}

#[tokio::test]
async fn key_source_headers_are_never_fetched_or_used() {
    let trusted = TestKey::rsa_a();
    let attacker_key = TestKey::rsa_b();
    let attacker = JwksServer::start(&[(&attacker_key, "evil")]).await;
    let server = JwksServer::start(&[(&trusted, "good")]).await;
    let verifier = Verifier::new(server.settings(&[Algorithm::RS256], LONG, Duration::ZERO))
        .await
        .expect("verifier");
    let pem_verifier = pem_verifier(&[Algorithm::RS256], &[&trusted]).await;
    let evil_jwk = attacker_key.jwk_with_kid("evil");
    for header in [
        json!({"jku": attacker.url, "kid": "evil"}),
        json!({"x5u": attacker.url, "kid": "evil"}),
        json!({"jwk": evil_jwk, "kid": "evil"}),
        json!({"jwk": evil_jwk}),
        json!({"jku": attacker.url, "x5u": attacker.url, "jwk": evil_jwk, "x5c": ["MIIB"]}),
    ] {
        let token = attacker_key.sign(header.clone(), claims());
        let outcome = verifier.verify(&token).await;
        assert!(
            matches!(
                outcome,
                Err(TokenError::BadSignature | TokenError::UnknownKey)
            ),
            "{header}: {outcome:?}"
        );
        assert_eq!(
            pem_verifier.verify(&token).await,
            Err(TokenError::BadSignature),
            "{header}"
        );
    }
    assert_eq!(attacker.hits(), 0, "the attacker's URL was never contacted");
    // A genuine token with the same headers still verifies: they are ignored, not refused.
    let decorated = trusted.sign(json!({"kid": "good", "jku": attacker.url}), claims());
    assert!(verifier.verify(&decorated).await.is_ok());
    assert_eq!(attacker.hits(), 0);
}

#[tokio::test]
async fn crit_headers_are_refused() {
    let hs = TestKey::hmac(SECRET);
    let verifier = hs_verifier().await;
    for crit in [json!(["exp"]), json!(["b64"]), json!([])] {
        let token = hs.sign(json!({"crit": crit, "b64": false}), claims());
        let outcome = verifier.verify(&token).await;
        assert_eq!(outcome, Err(TokenError::CriticalHeader), "{crit}");
        assert_eq!(outcome.map_err(|e| e.code()), Err("token_malformed"));
    }
}

#[tokio::test]
async fn kid_is_an_opaque_selector() {
    let rsa = TestKey::rsa_a();
    let server = JwksServer::start(&[(&rsa, "k1")]).await;
    let verifier = Verifier::new(server.settings(&[Algorithm::RS256], LONG, LONG))
        .await
        .expect("verifier");
    for kid in [
        "../../etc/passwd",
        "/etc/passwd",
        "file:///etc/passwd",
        "http://127.0.0.1:1/",
    ] {
        let outcome = verifier.verify(&rsa.token(Some(kid))).await;
        assert_eq!(outcome, Err(TokenError::UnknownKey), "{kid}");
        assert_eq!(outcome.map_err(|e| e.code()), Err("bad_signature"));
    }
}

// ---------------------------------------------------------------------------------------------
// Claims
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn expiry_not_before_and_leeway() {
    let hs = TestKey::hmac(SECRET);
    let verifier = hs_verifier().await; // leeway 30 s
    let at = |exp: i64, nbf: Option<i64>| {
        let mut claims = claims();
        claims["exp"] = json!(exp);
        if let Some(nbf) = nbf {
            claims["nbf"] = json!(nbf);
        }
        hs.sign(json!({}), claims)
    };
    let t = now();
    assert_eq!(
        verifier.verify(&at(t - 120, None)).await,
        Err(TokenError::Expired)
    );
    assert_eq!(
        verifier
            .verify(&at(t - 120, None))
            .await
            .map_err(|e| e.code()),
        Err("token_expired")
    );
    assert!(
        verifier.verify(&at(t - 5, None)).await.is_ok(),
        "within leeway"
    );
    assert_eq!(
        verifier.verify(&at(t + 600, Some(t + 300))).await,
        Err(TokenError::NotYetValid)
    );
    assert_eq!(
        verifier
            .verify(&at(t + 600, Some(t + 300)))
            .await
            .map_err(|e| e.code()),
        Err("token_not_yet_valid")
    );
    assert!(
        verifier.verify(&at(t + 600, Some(t + 5))).await.is_ok(),
        "nbf within leeway"
    );

    let mut strict = settings(&[Algorithm::HS256]);
    strict.hs256_secret = Some(SECRET.to_vec());
    strict.leeway = Duration::ZERO;
    let strict = Verifier::new(strict).await.expect("verifier");
    assert_eq!(
        strict.verify(&at(t - 5, None)).await,
        Err(TokenError::Expired)
    );
}

#[tokio::test]
async fn expiry_is_rechecked_on_cache_hits() {
    let hs = TestKey::hmac(SECRET);
    let mut settings = settings(&[Algorithm::HS256]);
    settings.hs256_secret = Some(SECRET.to_vec());
    settings.leeway = Duration::ZERO;
    let verifier = Verifier::new(settings).await.expect("verifier");
    let mut claims = claims();
    claims["exp"] = json!(now() + 2);
    let token = hs.sign(json!({}), claims);
    assert!(verifier.verify(&token).await.is_ok());
    eventually("the token to expire", Duration::from_secs(5), || async {
        verifier.verify(&token).await == Err(TokenError::Expired)
    })
    .await;
    assert_eq!(
        verifier.cache_misses(),
        1,
        "answered from the cache until it expired"
    );
}

#[tokio::test]
async fn exp_must_be_a_number() {
    let hs = TestKey::hmac(SECRET);
    let verifier = hs_verifier().await;
    let outcome = verifier.verify(SEED_STRING_EXP).await;
    assert_eq!(
        outcome,
        Err(TokenError::InvalidClaims),
        "the seed's first example"
    );
    assert_eq!(outcome.map_err(|e| e.code()), Err("token_malformed"));
    for exp in [
        json!("2030-01-01T00:00:00Z"),
        json!(null),
        json!([1]),
        json!({"n": 1}),
    ] {
        let mut claims = claims();
        claims["exp"] = exp.clone();
        let token = hs.sign(json!({}), claims);
        assert_eq!(
            verifier.verify(&token).await,
            Err(TokenError::InvalidClaims),
            "{exp}"
        );
    }
    let mut no_exp = claims();
    no_exp.as_object_mut().expect("object").remove("exp");
    assert_eq!(
        verifier.verify(&hs.sign(json!({}), no_exp)).await,
        Err(TokenError::InvalidClaims)
    );
    let mut scope_array = claims();
    scope_array["scope"] = json!(["account-1", "account-2"]);
    assert_eq!(
        verifier.verify(&hs.sign(json!({}), scope_array)).await,
        Err(TokenError::InvalidClaims)
    );
}

#[tokio::test]
async fn issuer_and_audience() {
    let hs = TestKey::hmac(SECRET);
    let mut settings = settings(&[Algorithm::HS256]);
    settings.hs256_secret = Some(SECRET.to_vec());
    settings.issuer = Some("https://commerce.example".into());
    settings.audience = Some("store-1".into());
    let verifier = Verifier::new(settings).await.expect("verifier");
    let with = |iss: &str, aud: Value| {
        let mut claims = claims();
        claims["iss"] = json!(iss);
        claims["aud"] = aud;
        hs.sign(json!({}), claims)
    };
    assert!(verifier
        .verify(&with("https://commerce.example", json!("store-1")))
        .await
        .is_ok());
    assert_eq!(
        verifier
            .verify(&with("https://other.example", json!("store-1")))
            .await,
        Err(TokenError::WrongIssuer)
    );
    assert_eq!(
        verifier
            .verify(&with("https://commerce.example", json!(["store-2"])))
            .await,
        Err(TokenError::WrongAudience)
    );
}

#[tokio::test]
async fn malformed_shapes() {
    let verifier = hs_verifier().await;
    let good = TestKey::hmac(SECRET).token(None);
    let cases = [
        String::new(),
        "abc".to_owned(),
        good.splitn(3, '.').take(2).collect::<Vec<_>>().join("."),
        format!("{good}.extra"),
        format!("{good}="),
        format!(" {good}"),
        good.replacen('.', "..", 1),
        "a".repeat(64 * 1024),
    ];
    for token in cases {
        let outcome = verifier.verify(&token).await;
        assert_eq!(outcome, Err(TokenError::Malformed), "{token:.60}");
        assert_eq!(outcome.map_err(|e| e.code()), Err("token_malformed"));
    }
}

// ---------------------------------------------------------------------------------------------
// JWKS life cycle
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn jwks_rotation_is_picked_up_without_restart() {
    let old = TestKey::rsa_a();
    let new = TestKey::rsa_b();
    let server = JwksServer::start(&[(&old, "2024")]).await;
    let cooldown = Duration::from_millis(100);
    let verifier = Verifier::new(server.settings(&[Algorithm::RS256], LONG, cooldown))
        .await
        .expect("verifier");
    let new_token = new.token(Some("2025"));
    assert_eq!(
        verifier.verify(&new_token).await,
        Err(TokenError::UnknownKey)
    );

    // The issuer publishes the new key; the next unknown-kid miss after the cooldown finds it.
    server.serve_keys(&[(&old, "2024"), (&new, "2025")]);
    eventually("the new kid to verify", Duration::from_secs(5), || async {
        verifier.verify(&new_token).await.is_ok()
    })
    .await;
    assert!(verifier.verify(&old.token(Some("2024"))).await.is_ok());
}

#[tokio::test]
async fn withdrawn_keys_stop_verifying_even_cached_tokens() {
    let old = TestKey::rsa_a();
    let new = TestKey::rsa_b();
    let server = JwksServer::start(&[(&old, "old"), (&new, "new")]).await;
    let refresh = Duration::from_millis(100);
    let verifier = Verifier::new(server.settings(&[Algorithm::RS256], refresh, LONG))
        .await
        .expect("verifier");
    let token = old.token(Some("old"));
    assert!(verifier.verify(&token).await.is_ok());
    assert!(verifier.verify(&token).await.is_ok());
    assert_eq!(
        verifier.cache_misses(),
        1,
        "second answer came from the cache"
    );

    server.serve_keys(&[(&new, "new")]);
    eventually(
        "the scheduled refresh to drop the old key",
        Duration::from_secs(5),
        || async { verifier.verify(&token).await == Err(TokenError::UnknownKey) },
    )
    .await;
    assert!(verifier.verify(&new.token(Some("new"))).await.is_ok());
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_one_fetch_per_cooldown() {
    let rsa = TestKey::rsa_a();
    let server = JwksServer::start(&[(&rsa, "k1")]).await;
    let cooldown = Duration::from_millis(400);
    let verifier = Arc::new(
        Verifier::new(server.settings(&[Algorithm::RS256], LONG, cooldown))
            .await
            .expect("verifier"),
    );
    let started = tokio::time::Instant::now();
    assert_eq!(server.hits(), 1);
    // The kid is unknown, so no signature is ever checked: a dummy one keeps the flood fast.
    let flood = |round: usize| {
        let tokens: Vec<String> = (0..200)
            .map(|i| {
                let header = format!(r#"{{"alg":"RS256","kid":"made-up-{round}-{i}"}}"#);
                with_raw_header(&header, claims(), "c2lnbmF0dXJl")
            })
            .collect();
        let verifier = verifier.clone();
        async move {
            let tasks: Vec<_> = tokens
                .into_iter()
                .map(|token| {
                    let verifier = verifier.clone();
                    tokio::spawn(async move { verifier.verify(&token).await })
                })
                .collect();
            for task in tasks {
                assert_eq!(task.await.expect("task"), Err(TokenError::UnknownKey));
            }
        }
    };
    // Inside the start-up fetch's cooldown: nothing is fetched.
    flood(0).await;
    if started.elapsed() < cooldown {
        assert_eq!(
            server.hits(),
            1,
            "within the cooldown of the start-up fetch"
        );
    }
    // Once the cooldown has passed: one fetch for the whole flood.
    tokio::time::sleep_until(started + cooldown).await;
    let before = server.hits();
    let flood_started = tokio::time::Instant::now();
    flood(1).await;
    assert_eq!(server.hits(), before + 1, "one fetch for 200 unknown kids");
    // And none for the next flood while that fetch's cooldown holds.
    flood(2).await;
    if flood_started.elapsed() < cooldown {
        assert_eq!(server.hits(), before + 1, "within the cooldown");
    }
    assert_eq!(verifier.jwks_fetches() as usize, server.hits());
    // The real key still works throughout.
    assert!(verifier.verify(&rsa.token(Some("k1"))).await.is_ok());
}

#[tokio::test]
async fn last_good_keys_survive_a_failing_jwks() {
    let rsa = TestKey::rsa_a();
    let server = JwksServer::start(&[(&rsa, "k1")]).await;
    let refresh = Duration::from_millis(50);
    let verifier = Verifier::new(server.settings(&[Algorithm::RS256], refresh, LONG))
        .await
        .expect("verifier");
    let failures = [
        Serve::Status(StatusCode::INTERNAL_SERVER_ERROR),
        Serve::Status(StatusCode::FOUND),
        Serve::Body(Bytes::from_static(b"<html>not json</html>")),
        Serve::Body(Bytes::from_static(br#"{"keys":[]}"#)),
        Serve::Keys(json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k1"}]})),
        // Over the 1 MiB bound.
        Serve::Body(Bytes::from(format!(
            r#"{{"keys":[{}],"pad":"{}"}}"#,
            rsa.jwk_with_kid("k1"),
            "x".repeat(2 << 20)
        ))),
    ];
    for (round, failure) in failures.into_iter().enumerate() {
        server.serve(failure);
        let before = server.hits();
        eventually(
            "a refresh against the failing server",
            Duration::from_secs(5),
            || async { server.hits() >= before + 2 },
        )
        .await;
        // A token never seen before, so the answer cannot come from the verified cache.
        let mut claims = claims();
        claims["jti"] = json!(round);
        let token = rsa.sign(json!({"kid": "k1"}), claims);
        assert!(verifier.verify(&token).await.is_ok(), "failure #{round}");
    }
    drop(server);
    let mut claims = claims();
    claims["jti"] = json!("server gone");
    assert!(verifier
        .verify(&rsa.sign(json!({"kid": "k1"}), claims))
        .await
        .is_ok());
}

#[tokio::test]
async fn dropping_the_verifier_stops_the_refresh_task() {
    let rsa = TestKey::rsa_a();
    let server = JwksServer::start(&[(&rsa, "k1")]).await;
    let refresh = Duration::from_millis(30);
    let verifier = Verifier::new(server.settings(&[Algorithm::RS256], refresh, LONG))
        .await
        .expect("verifier");
    eventually("a scheduled refresh", Duration::from_secs(5), || async {
        server.hits() >= 2
    })
    .await;
    drop(verifier);
    let after_drop = server.hits();
    // Proving a negative needs a little time: ten refresh intervals.
    tokio::time::sleep(refresh * 10).await;
    assert!(
        server.hits() <= after_drop + 1,
        "a fetch in flight may finish, no new ones"
    );
}

// ---------------------------------------------------------------------------------------------
// The verified cache
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_rs256_verification_for_fifty_concurrent_uses() {
    let rsa = TestKey::rsa_a();
    let verifier = Arc::new(pem_verifier(&[Algorithm::RS256], &[&rsa]).await);
    let token = Arc::new(rsa.token(None));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (verifier, token) = (verifier.clone(), token.clone());
            tokio::spawn(async move { verifier.verify(&token).await })
        })
        .collect();
    for task in tasks {
        let verified = task.await.expect("task").expect("verifies");
        assert_eq!(verified.account_id.as_deref(), Some("account-1"));
    }
    assert_eq!(verifier.cache_misses(), 1);
    assert_eq!(verifier.cache_hits(), 49);

    // Revocation drops the entry: the next use is verified again.
    verifier.invalidate(&Fingerprint::of(&token));
    assert!(verifier.verify(&token).await.is_ok());
    assert_eq!(verifier.cache_misses(), 2);
    assert!(verifier.verify(&token).await.is_ok());
    assert_eq!(verifier.cache_misses(), 2);

    // Refusals are not cached as successes, and never become one.
    let forged = TestKey::rsa_b().token(None);
    for _ in 0..3 {
        assert_eq!(
            verifier.verify(&forged).await,
            Err(TokenError::BadSignature)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Key configuration
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn key_configuration_errors_name_the_problem_not_the_secret() {
    let rsa = TestKey::rsa_a();
    let cases: Vec<(SignatureSettings, &str)> = vec![
        (settings(&[]), "no signature algorithm"),
        (settings(&[Algorithm::RS256]), "RS256"),
        (
            SignatureSettings {
                public_keys: vec![RSA_A_KEY.to_vec()],
                ..settings(&[Algorithm::RS256])
            },
            "private key",
        ),
        (
            SignatureSettings {
                public_keys: vec![
                    b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_vec(),
                ],
                ..settings(&[Algorithm::RS256])
            },
            "public key #1",
        ),
        (
            SignatureSettings {
                hs256_secret: Some(SECRET.to_vec()),
                public_keys: vec![rsa.public_pem.clone()],
                ..settings(&[Algorithm::RS256])
            },
            "no HS* algorithm",
        ),
        (
            SignatureSettings {
                jwks_url: Some("ftp://keys.example/jwks".parse().expect("uri")),
                ..settings(&[Algorithm::RS256])
            },
            "jwks_url",
        ),
        (
            SignatureSettings {
                jwks_url: Some("http://127.0.0.1:1/jwks".parse().expect("uri")),
                jwks_ca_file: Some("/nonexistent/ca.pem".into()),
                ..settings(&[Algorithm::RS256])
            },
            "jwks_ca_file",
        ),
    ];
    for (settings, expected) in cases {
        let debug = format!("{settings:?}");
        assert!(
            !debug.contains("thirty-two"),
            "Debug redacts the secret: {debug}"
        );
        let error: KeyError = Verifier::new(settings).await.expect_err("refused");
        let message = error.to_string();
        assert!(
            message.contains(expected),
            "{message:?} should mention {expected:?}"
        );
        assert!(
            !message.contains("thirty-two") && !message.contains("MII"),
            "{message}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Arbitrary input
// ---------------------------------------------------------------------------------------------

fn fuzz_verifier(runtime: &tokio::runtime::Runtime) -> Verifier {
    let rsa = TestKey::rsa_a();
    let es = TestKey::generated(Algorithm::ES256);
    let ed = TestKey::generated(Algorithm::EdDSA);
    let mut settings = settings(&[
        Algorithm::HS256,
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ]);
    settings.hs256_secret = Some(SECRET.to_vec());
    settings.public_keys = vec![rsa.public_pem, es.public_pem, ed.public_pem];
    runtime.block_on(Verifier::new(settings)).expect("verifier")
}

/// Three segments of arbitrary bytes, base64url-encoded, with an arbitrary `alg`-ish header.
fn jws_like() -> impl Strategy<Value = String> {
    let alg = prop::sample::select(vec![
        "HS256", "RS256", "ES256", "EdDSA", "none", "HS512", "",
    ]);
    let json_value = prop_oneof![
        Just(json!(null)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        ".{0,12}".prop_map(|s| json!(s)),
        Just(json!([])),
        Just(json!({})),
    ];
    (
        alg,
        json_value.clone(),
        json_value.clone(),
        json_value,
        prop::collection::vec(any::<u8>(), 0..80),
        prop::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(|(alg, kid, exp, scope, raw, sig)| {
            let header = json!({"alg": alg, "kid": kid});
            let claims = json!({"exp": exp, "scope": scope, "sub": "m"});
            let payload = if raw.len() % 2 == 0 {
                claims.to_string().into_bytes()
            } else {
                raw
            };
            format!("{}.{}.{}", b64(header.to_string()), b64(payload), b64(sig))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn verify_never_panics(
        token in prop_oneof![".*", "[A-Za-z0-9_.=+/-]{0,300}", jws_like()]
    ) {
        thread_local! {
            static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
        }
        RUNTIME.with(|runtime| {
            thread_local! { static VERIFIER: std::cell::OnceCell<Verifier> = const { std::cell::OnceCell::new() }; }
            VERIFIER.with(|cell| {
                let verifier = cell.get_or_init(|| fuzz_verifier(runtime));
                let outcome = runtime.block_on(verifier.verify(&token));
                // Random bytes never make a valid signature.
                prop_assert!(outcome.is_err());
                Ok(())
            })
        })?;
    }
}
