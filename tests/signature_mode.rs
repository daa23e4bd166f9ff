//! Signature modes through the gateway: every key family, pinned algorithms, JWKS rotation and
//! the verified-token cache — with an upstream that counts what reaches it.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use account_gate::config::{Config, TokenMode};
use account_gate::store::{Fingerprint, TokenRecord, TokenStore};
use common::commerce::{Answer, Commerce, ACCOUNT_TOKEN};
use common::keys::*;
use common::upstream::TestUpstream;
use common::{eventually, RunningGateway, TestGateway};
use http::{Method, StatusCode};
use jsonwebtoken::Algorithm;
use serde_json::json;

/// Keys written to files for the gateway's configuration; removed on drop.
struct KeyFiles {
    dir: tempfile::TempDir,
}

impl KeyFiles {
    fn new() -> Self {
        KeyFiles {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        let mut file = std::fs::File::create(&path).expect("create");
        file.write_all(bytes).expect("write");
        path
    }
}

/// A gateway in signature mode accepting `algorithms`.
async fn gateway(
    upstream: &TestUpstream,
    algorithms: &[&str],
    keys: impl FnOnce(&mut Config),
) -> RunningGateway {
    TestGateway::new(&upstream.url)
        .configure(|c| {
            c.tokens.mode = TokenMode::Signature;
            c.tokens.signature.algorithms = algorithms.iter().map(|a| a.to_string()).collect();
            keys(c);
        })
        .start()
        .await
}

async fn get(gateway: &RunningGateway, path: &str, token: &str) -> Answer {
    Commerce::new(&gateway.url(""))
        .send(Method::GET, path, &[(ACCOUNT_TOKEN, token)], "")
        .await
}

/// Sends one GET of `path` per token, all at once, and returns the statuses.
async fn concurrent_gets(
    gateway: &RunningGateway,
    path: &str,
    tokens: Vec<String>,
) -> Vec<StatusCode> {
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let (base, path) = (gateway.url(""), path.to_owned());
            tokio::spawn(async move {
                Commerce::new(&base)
                    .send(Method::GET, &path, &[(ACCOUNT_TOKEN, &token)], "")
                    .await
                    .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("task"));
    }
    statuses
}

fn code(answer: &Answer) -> String {
    answer.error_code_and_pointer().0
}

/// `token` with one character of its signature changed.
fn tampered(token: &str) -> String {
    let (head, signature) = token.rsplit_once('.').expect("signature");
    let flipped: String = signature
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 2 {
                if c == 'A' {
                    'B'
                } else {
                    'A'
                }
            } else {
                c
            }
        })
        .collect();
    format!("{head}.{flipped}")
}

/// Where a gateway finds its key.
enum KeySource {
    SecretFile(PathBuf),
    PublicKeyFile(PathBuf),
}

#[tokio::test]
async fn every_key_family_is_verified_and_scoped() {
    let files = KeyFiles::new();
    let cases = [
        ("HS256", TestKey::hmac(SECRET)),
        ("RS256", TestKey::rsa_a()),
        ("ES256", TestKey::generated(Algorithm::ES256)),
        ("EdDSA", TestKey::generated(Algorithm::EdDSA)),
    ];
    for (alg, key) in cases {
        let source = if key.public_pem.is_empty() {
            KeySource::SecretFile(files.write("hs256.secret", SECRET))
        } else {
            KeySource::PublicKeyFile(files.write(&format!("{alg}.pem"), &key.public_pem))
        };
        let upstream = TestUpstream::http().await;
        let gateway = gateway(&upstream, &[alg], |c| match source {
            KeySource::SecretFile(path) => c.tokens.signature.hs256_secret_file = Some(path),
            KeySource::PublicKeyFile(path) => c.tokens.signature.public_key_file = Some(path),
        })
        .await;
        let token = key.token(None);
        let own = get(&gateway, "/v2/accounts/account-1/addresses", &token).await;
        assert_eq!(own.status, StatusCode::OK, "{alg}");
        let seen = upstream.seen().pop().expect("forwarded");
        assert_eq!(seen.headers["x-account-id"], "account-1", "{alg}");
        assert_eq!(seen.headers["x-account-member-id"], "member-1", "{alg}");

        let other = get(&gateway, "/v2/accounts/account-2", &token).await;
        assert_eq!(
            (other.status, code(&other).as_str()),
            (StatusCode::FORBIDDEN, "scope_mismatch"),
            "{alg}"
        );
        let forged = get(&gateway, "/v2/accounts/account-1", &tampered(&token)).await;
        assert_eq!(
            (forged.status, code(&forged).as_str()),
            (StatusCode::UNAUTHORIZED, "bad_signature"),
            "{alg}"
        );
        assert_eq!(
            upstream.calls(),
            1,
            "{alg}: only the valid request was forwarded"
        );
        gateway.shutdown().await;
    }
}

#[tokio::test]
async fn an_hs256_key_of_raw_bytes_is_configured_in_base64() {
    use base64::Engine;
    // Bytes no text file could hold: a NUL, invalid UTF-8, a trailing newline byte.
    let raw: Vec<u8> = (0u8..=31).chain([0xff, 0xfe, b'\n']).collect();
    let files = KeyFiles::new();
    let encoded = base64::engine::general_purpose::STANDARD.encode(&raw);
    let path = files.write("hs256.b64", format!("{encoded}\n").as_bytes());
    let upstream = TestUpstream::http().await;
    let gateway = gateway(&upstream, &["HS256"], |c| {
        c.tokens.signature.hs256_secret_file = Some(path);
        c.tokens.signature.hs256_secret_encoding = account_gate::config::SecretEncoding::Base64;
    })
    .await;
    let token = TestKey::hmac(&raw).token(None);
    assert_eq!(
        get(&gateway, "/v2/accounts/account-1", &token).await.status,
        StatusCode::OK
    );
    // The base64 text itself is not the key.
    let as_text = TestKey::hmac(encoded.as_bytes()).token(None);
    let refused = get(&gateway, "/v2/accounts/account-1", &as_text).await;
    assert_eq!(code(&refused), "bad_signature");
}

#[tokio::test]
async fn refused_algorithms_and_forgeries_never_reach_the_upstream() {
    let files = KeyFiles::new();
    let rsa_pub = files.write("rsa.pem", RSA_A_PUB);
    let secret = files.write("hs.secret", SECRET);
    let upstream = TestUpstream::http().await;
    // RS256 pinned, and HS256 too with its own secret: the RSA public key must still never
    // serve as an HMAC secret.
    let gateway = gateway(&upstream, &["RS256", "HS256"], |c| {
        c.tokens.signature.public_key_file = Some(rsa_pub);
        c.tokens.signature.hs256_secret_file = Some(secret);
    })
    .await;
    let rsa = TestKey::rsa_a();
    let confused = sign_as(
        Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(RSA_A_PUB),
        json!({}),
        claims(),
    );
    let cases = [
        ("alg none", with_raw_header(r#"{"alg":"none","typ":"JWT"}"#, claims(), ""), "algorithm_not_allowed"),
        ("alg None", with_raw_header(r#"{"alg":"None"}"#, claims(), "sig"), "algorithm_not_allowed"),
        ("alg NONE", with_raw_header(r#"{"alg":"NONE"}"#, claims(), "sig"), "algorithm_not_allowed"),
        ("HS384 not pinned", TestKey::hmac(SECRET).sign_with(Algorithm::HS384), "algorithm_not_allowed"),
        ("ES256 not pinned", TestKey::generated(Algorithm::ES256).token(None), "algorithm_not_allowed"),
        ("RSA public key as HMAC secret", confused, "bad_signature"),
        ("another RSA key", TestKey::rsa_b().token(None), "bad_signature"),
        ("tampered", tampered(&rsa.token(None)), "bad_signature"),
        ("string exp", SEED_STRING_EXP.to_owned(), "token_malformed"),
        ("expired", rsa.sign(json!({}), json!({"sub": "member-1", "scope": "account-1", "exp": now() - 3600})), "token_expired"),
        ("not yet valid", rsa.sign(json!({}), json!({"sub": "member-1", "scope": "account-1", "exp": now() + 7200, "nbf": now() + 3600})), "token_not_yet_valid"),
        ("jku pointing elsewhere", TestKey::rsa_b().sign(json!({"jku": "http://127.0.0.1:9/jwks"}), claims()), "bad_signature"),
    ];
    for (name, token, expected) in cases {
        let answer = get(&gateway, "/v2/accounts/account-1", &token).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(code(&answer), expected, "{name}");
    }
    assert_eq!(upstream.calls(), 0, "the upstream saw none of them");
    // The genuine token still passes.
    assert_eq!(
        get(&gateway, "/v2/accounts/account-1", &rsa.token(None))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn rotated_jwks_keys_are_picked_up_without_a_restart() {
    let upstream = TestUpstream::http().await;
    let (first, second) = (TestKey::rsa_a(), TestKey::rsa_b());
    let jwks = JwksServer::start(&[(&first, "k1")]).await;
    let gateway = gateway(&upstream, &["RS256"], |c| {
        let signature = &mut c.tokens.signature;
        signature.jwks_url = Some(jwks.url.clone());
        signature.jwks_refresh = Duration::from_secs(3600);
        signature.jwks_cooldown = Duration::from_millis(200);
    })
    .await;
    let path = "/v2/accounts/account-1";
    assert_eq!(
        get(&gateway, path, &first.token(Some("k1"))).await.status,
        StatusCode::OK
    );

    // The identity provider rotates: k2 replaces k1.
    jwks.serve_keys(&[(&second, "k2")]);
    let token = second.token(Some("k2"));
    eventually("the new key is fetched", Duration::from_secs(5), || async {
        get(&gateway, path, &token).await.status == StatusCode::OK
    })
    .await;
    // The withdrawn key's token was verified and cached before: it stops at once all the same.
    let old = get(&gateway, path, &first.token(Some("k1"))).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_one_jwks_fetch_per_cooldown() {
    let upstream = TestUpstream::http().await;
    let key = TestKey::rsa_a();
    let jwks = JwksServer::start(&[(&key, "k1")]).await;
    let gateway = gateway(&upstream, &["RS256"], |c| {
        c.tokens.signature.jwks_url = Some(jwks.url.clone());
        c.tokens.signature.jwks_cooldown = Duration::from_secs(3600);
    })
    .await;
    let after_start = jwks.hits();
    let tokens = (0..200)
        .map(|i| key.token(Some(&format!("unknown-{i}"))))
        .collect();
    let statuses = concurrent_gets(&gateway, "/v2/accounts/account-1", tokens).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED));
    assert!(
        jwks.hits() - after_start <= 1,
        "{} fetches",
        jwks.hits() - after_start
    );
    assert_eq!(upstream.calls(), 0);
}

#[tokio::test]
async fn fifty_concurrent_clients_cost_one_rs256_verification() {
    let files = KeyFiles::new();
    let rsa_pub = files.write("rsa.pem", RSA_A_PUB);
    let upstream = TestUpstream::http().await;
    let gateway = gateway(&upstream, &["RS256"], |c| {
        c.tokens.signature.public_key_file = Some(rsa_pub)
    })
    .await;
    let token = TestKey::rsa_a().token(None);
    let statuses = concurrent_gets(&gateway, "/v2/accounts/account-1", vec![token; 50]).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("account_gate_verified_cache_misses_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("account_gate_verified_cache_hits_total 49\n"),
        "{metrics}"
    );
    assert_eq!(upstream.calls(), 50);
}

#[tokio::test]
async fn both_mode_needs_an_issued_and_signed_token_and_revocation_beats_the_signature() {
    let files = KeyFiles::new();
    let secret = files.write("hs.secret", SECRET);
    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url)
        .configure(|c| {
            c.tokens.mode = TokenMode::Both;
            c.tokens.signature.hs256_secret_file = Some(secret);
        })
        .start()
        .await;
    let key = TestKey::hmac(SECRET);
    let token = key.token(None);
    let path = "/v2/accounts/account-1";
    let unknown = get(&gateway, path, &token).await;
    assert_eq!(
        (unknown.status, code(&unknown).as_str()),
        (StatusCode::UNAUTHORIZED, "token_unknown")
    );
    gateway
        .store
        .record(TokenRecord {
            fingerprint: Fingerprint::of(&token),
            member_id: "member-1".into(),
            account_id: "account-1".into(),
            account_name: None,
            expires_at: std::time::SystemTime::now() + Duration::from_secs(3600),
            learned: false,
        })
        .await
        .expect("record");
    assert_eq!(get(&gateway, path, &token).await.status, StatusCode::OK);
    let logout = Commerce::new(&gateway.url(""))
        .send(
            Method::DELETE,
            "/v2/account-members/tokens",
            &[(ACCOUNT_TOKEN, &token)],
            "",
        )
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let revoked = get(&gateway, path, &token).await;
    assert_eq!(
        (revoked.status, code(&revoked).as_str()),
        (StatusCode::UNAUTHORIZED, "token_revoked")
    );
    assert_eq!(upstream.calls(), 1);
}

/// A gateway in `either` mode whose JWKS holds RSA key A as `k1`, with that key and the JWKS
/// server (keep it alive).
async fn either_with_k1(upstream: &TestUpstream) -> (RunningGateway, TestKey, JwksServer) {
    let key = TestKey::rsa_a();
    let jwks = JwksServer::start(&[(&key, "k1")]).await;
    let gateway = gateway(upstream, &["RS256"], |c| {
        c.tokens.mode = TokenMode::Either;
        c.tokens.signature.jwks_url = Some(jwks.url.clone());
    })
    .await;
    (gateway, key, jwks)
}

#[tokio::test]
async fn in_either_mode_a_token_no_key_can_verify_is_asked_about_each_time_never_learnt() {
    // A kid the JWKS does not hold: no key can decide, so `either` lets the upstream judge it
    // (`unknown = "upstream"`) — every time, since a record would stand in for a signature.
    let upstream = TestUpstream::http().await;
    let (gateway, _, _jwks) = either_with_k1(&upstream).await;
    let token = TestKey::rsa_b().token(Some("rotated-away"));
    for asked in 1..=2 {
        let answer = get(&gateway, "/v2/accounts/account-1", &token).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            upstream.seen().len(),
            asked,
            "the upstream decides each time"
        );
    }
    let record = gateway.store.lookup(&Fingerprint::of(&token)).await;
    assert!(matches!(record, Ok(None)), "{record:?}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn in_either_mode_a_bad_signature_under_a_known_kid_is_refused_never_deferred() {
    // The JWKS holds `k1`. A token naming `k1` but signed with another key is a forgery that
    // key can decide on: refused as `bad_signature`, never shown to the upstream. Only a kid
    // no key answers to takes the unknown-token path.
    let upstream = TestUpstream::http().await;
    let (gateway, key, _jwks) = either_with_k1(&upstream).await;
    let path = "/v2/accounts/account-1";
    let forged = TestKey::rsa_b().token(Some("k1"));
    let tampered = tampered(&key.token(Some("k1")));
    for (name, token) in [("another key", &forged), ("tampered", &tampered)] {
        let answer = get(&gateway, path, token).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(code(&answer), "bad_signature", "{name}");
    }
    assert_eq!(upstream.calls(), 0, "the upstream saw no forgery");
    let rejected =
        r#"account_gate_token_validations_total{outcome="rejected",reason="bad_signature"}"#;
    assert_eq!(gateway.sample(rejected).await, 2.0);

    let unknown_kid = TestKey::rsa_b().token(Some("rotated-away"));
    assert_eq!(
        get(&gateway, path, &unknown_kid).await.status,
        StatusCode::OK
    );
    assert_eq!(upstream.calls(), 1, "the upstream judges the unknown kid");
    assert_eq!(
        get(&gateway, path, &key.token(Some("k1"))).await.status,
        StatusCode::OK
    );
    assert_eq!(upstream.calls(), 2);
    gateway.shutdown().await;
}

#[tokio::test]
async fn jwks_freshness_and_failures_are_exported() {
    let upstream = TestUpstream::http().await;
    let key = TestKey::rsa_a();
    let jwks = JwksServer::start(&[(&key, "k1")]).await;
    let gateway = gateway(&upstream, &["RS256"], |c| {
        c.tokens.signature.jwks_url = Some(jwks.url.clone());
        c.tokens.signature.jwks_cooldown = Duration::from_millis(1);
    })
    .await;
    let fetched = gateway
        .sample("account_gate_jwks_last_success_timestamp_seconds")
        .await;
    assert!((now() as f64 - fetched).abs() < 60.0, "{fetched}");
    assert_eq!(
        gateway.sample("account_gate_jwks_fetch_errors_total").await,
        0.0
    );

    // The identity provider answers 500: an unknown kid makes the gateway ask, the old keys
    // stay, and the failure is counted.
    jwks.serve(Serve::Status(StatusCode::INTERNAL_SERVER_ERROR));
    let unknown = key.token(Some("k-unknown"));
    eventually(
        "the failed fetch is counted",
        Duration::from_secs(5),
        || async {
            get(&gateway, "/v2/accounts/account-1", &unknown).await;
            gateway.sample("account_gate_jwks_fetch_errors_total").await >= 1.0
        },
    )
    .await;
    let known = key.token(Some("k1"));
    assert_eq!(
        get(&gateway, "/v2/accounts/account-1", &known).await.status,
        StatusCode::OK
    );
    gateway.shutdown().await;
}
