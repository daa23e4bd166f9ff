//! Revocations that hold: no flood pushes one out, a member past their quota is revoked as a
//! whole, a token nobody vouches for can still log itself out, learned records never stand in for
//! a signature, and logouts are rate-limited — through the real gateway and the emulator.

mod common;

use std::time::{Duration, SystemTime};

use account_gate::config::{Config, TokenMode, UnknownTokens};
use account_gate::emulator::{mint_token, Emulator, EmulatorHandle, EmulatorOptions};
use account_gate::store::{Fingerprint, TokenRecord, TokenStore};
use common::commerce::{
    issued, password_data, signup_data, Answer, Commerce, ACCOUNT_TOKEN, TOKENS,
};
use common::upstream::TestUpstream;
use common::{eventually, RunningGateway, TestGateway};
use http::{Method, StatusCode};

/// The emulator's signing secret in a file, for the signature modes.
struct Secret(tempfile::NamedTempFile);

impl Secret {
    fn emulators() -> Self {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), EmulatorOptions::default().signing_secret).expect("write");
        Secret(file)
    }

    /// Signature mode with HS256 and this secret.
    fn signature_mode(&self, c: &mut Config, mode: TokenMode) {
        c.tokens.mode = mode;
        c.tokens.signature.algorithms = vec!["HS256".to_owned()];
        c.tokens.signature.hs256_secret_file = Some(self.0.path().to_owned());
    }
}

/// Rate limits off: these tests send many token requests from one address.
fn unlimited(c: &mut Config) {
    c.rate_limit.signup_per_ip = 0;
    c.rate_limit.signup_per_username = 0;
    c.rate_limit.login_per_ip = 0;
    c.rate_limit.login_per_username = 0;
    c.rate_limit.logout_per_ip = 0;
    c.rate_limit.logout_per_member = 0;
}

async fn emulator() -> EmulatorHandle {
    Emulator::spawn(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions::default(),
    )
    .await
    .expect("emulator")
}

/// GET of an account as a storefront sends it (with the emulator's client credentials).
async fn account(api: &Commerce, account: &str, token: &str) -> Answer {
    api.scoped_get(&format!("/v2/accounts/{account}"), token)
        .await
}

/// GET of an account with nothing but the account token (to the echoing test upstream).
async fn bare(api: &Commerce, account: &str, token: &str) -> Answer {
    let path = format!("/v2/accounts/{account}");
    api.send(Method::GET, &path, &[(ACCOUNT_TOKEN, token)], "")
        .await
}

fn code(answer: &Answer) -> String {
    answer.error_code_and_pointer().0
}

#[tokio::test]
async fn a_flood_of_logouts_on_a_small_store_cannot_push_a_revocation_out() {
    let secret = Secret::emulators();
    let emulator = emulator().await;
    for (name, mode) in [
        ("signature", TokenMode::Signature),
        ("issued, unknown = upstream", TokenMode::Issued),
    ] {
        let gateway = TestGateway::new(&emulator.url())
            .configure(|c| {
                unlimited(c);
                c.store.max_entries = 200;
                if mode == TokenMode::Signature {
                    secret.signature_mode(c, mode);
                } else {
                    c.tokens.unknown = UnknownTokens::Upstream;
                }
            })
            .start()
            .await;
        let api = Commerce::new(&gateway.url(""));
        let (_, tokens) = issued(
            &api.tokens(signup_data(&format!("first-{}@x.com", name.len()), "pw"))
                .await,
        );
        let (first_account, first) = tokens[0].clone();
        assert_eq!(api.logout(&first).await.status, StatusCode::NO_CONTENT);

        // 600 members sign up and log out, 16 at a time: three times the store's size.
        let base = gateway.url("");
        for batch in 0..600 / 16 + 1 {
            let tasks: Vec<_> = (0..16)
                .map(|i| {
                    let (api, user) = (
                        Commerce::new(&base),
                        format!("{}-{batch}-{i}@x.com", name.len()),
                    );
                    tokio::spawn(async move {
                        let (_, tokens) = issued(&api.tokens(signup_data(&user, "pw")).await);
                        api.logout(&tokens[0].1).await.status
                    })
                })
                .collect();
            for task in tasks {
                assert_eq!(task.await.expect("task"), StatusCode::NO_CONTENT);
            }
        }

        let after = account(&api, &first_account, &first).await;
        assert_eq!(after.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(code(&after), "token_revoked", "{name}");
        let held = gateway.sample("account_gate_revocations_held").await;
        assert!(held >= 601.0, "{name}: {held} revocations held");
        gateway.shutdown().await;
    }
}

#[tokio::test]
async fn a_member_past_the_quota_is_revoked_as_a_whole_and_can_log_in_again() {
    let secret = Secret::emulators();
    let emulator = emulator().await;
    let gateway = TestGateway::new(&emulator.url())
        .configure(|c| {
            unlimited(c);
            c.store.max_revoked_per_member = 2;
            secret.signature_mode(c, TokenMode::Signature);
        })
        .start()
        .await;
    let api = Commerce::new(&gateway.url(""));
    let user = "many-tokens@example.com";
    let (member, first) = issued(&api.tokens(signup_data(user, "pw")).await);
    // Five more tokens of the member, for five more accounts, recorded as the sign-up tee
    // records what the token endpoint issues (a thief switching accounts with a stolen token).
    let mut tokens = first;
    for i in 0..5 {
        let account_id = format!("account-{i}");
        let token = mint_token(&EmulatorOptions::default(), &member, &account_id, 3600);
        gateway
            .store
            .record(TokenRecord {
                fingerprint: Fingerprint::of(&token),
                member_id: member.clone(),
                account_id: account_id.clone(),
                account_name: None,
                expires_at: SystemTime::now() + Duration::from_secs(3600),
                learned: false,
            })
            .await
            .expect("record");
        tokens.push((account_id, token));
    }
    assert_eq!(
        api.logout(&tokens[0].1).await.status,
        StatusCode::NO_CONTENT
    );
    for (account_id, token) in &tokens {
        let answer = account(&api, account_id, token).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{account_id}");
        assert_eq!(code(&answer), "token_revoked");
    }
    let account_id = tokens[0].0.clone();
    // Two entries of their own, then one for the rest of the member's tokens.
    assert_eq!(gateway.sample("account_gate_revocations_held").await, 3.0);

    // The fold covers tokens issued until it, not after: `iat` has whole seconds, so a login in
    // the same second is still covered and the next second's is not.
    eventually(
        "a fresh login is accepted",
        Duration::from_secs(5),
        || async {
            let (_, fresh) = issued(&api.tokens(password_data(user, "pw")).await);
            account(&api, &account_id, &fresh[0].1).await.status == StatusCode::OK
        },
    )
    .await;
    // And the folded tokens stay refused.
    let again = account(&api, &tokens[5].0, &tokens[5].1).await;
    assert_eq!(code(&again), "token_revoked");
}

#[tokio::test]
async fn a_logout_with_a_token_nobody_vouches_for_revokes_only_that_token() {
    let emulator = emulator().await;
    let gateway = TestGateway::new(&emulator.url())
        .configure(|c| c.tokens.unknown = UnknownTokens::Upstream)
        .start()
        .await;
    let api = Commerce::new(&gateway.url(""));
    let (member, tokens) = issued(&api.tokens(signup_data("vouched@example.com", "pw")).await);
    let (account_id, known) = tokens[0].clone();
    // Genuine, but never seen in a token answer here: the gateway cannot vouch for it.
    let unseen = mint_token(&EmulatorOptions::default(), &member, &account_id, 3600);
    let logout_requests = emulator.requests_to(TOKENS);

    assert_eq!(api.logout(&unseen).await.status, StatusCode::NO_CONTENT);
    assert_eq!(
        emulator.requests_to(TOKENS),
        logout_requests,
        "answered here"
    );
    let refused = account(&api, &account_id, &unseen).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&refused), "token_revoked");
    // Its unverified claims name the member, but revoke nobody else's token.
    assert_eq!(
        account(&api, &account_id, &known).await.status,
        StatusCode::OK
    );
    assert!(gateway
        .metrics()
        .await
        .contains("account_gate_tokens_revoked_total 1"));

    // A token that is not even well-formed revokes nothing and is told so.
    let garbage = api.logout("not-a-token").await;
    assert_eq!(garbage.status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&garbage), "token_malformed");
}

#[tokio::test]
async fn logouts_are_rate_limited_per_client_and_per_member() {
    let emulator = emulator().await;
    let gateway = TestGateway::new(&emulator.url())
        .configure(|c| {
            unlimited(c);
            c.rate_limit.logout_per_ip = 3;
            c.rate_limit.logout_per_member = 1;
        })
        .start()
        .await;
    let api = Commerce::new(&gateway.url(""));
    let user = "leaving@example.com";
    let (_, first) = issued(&api.tokens(signup_data(user, "pw")).await);
    assert_eq!(api.logout(&first[0].1).await.status, StatusCode::NO_CONTENT);
    // The same member again, with a fresh token (the emulator's tokens differ from one second
    // to the next): over the member's limit, nothing revoked.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let second = loop {
        let (_, fresh) = issued(&api.tokens(password_data(user, "pw")).await);
        if fresh[0].1 != first[0].1 {
            break fresh;
        }
        assert!(std::time::Instant::now() < deadline, "no fresh token");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let limited = api.logout(&second[0].1).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(code(&limited), "rate_limited");
    assert!(limited.headers.contains_key("retry-after"));
    assert_eq!(
        account(&api, &second[0].0, &second[0].1).await.status,
        StatusCode::OK
    );
    // The client's third logout is its last; the fourth is refused before its token is read.
    assert_eq!(
        api.logout("not-a-token").await.status,
        StatusCode::UNAUTHORIZED
    );
    let over = api.logout("not-a-token").await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    let metrics = gateway.metrics().await;
    for limit in ["logout_ip", "logout_member"] {
        assert!(
            metrics.contains(&format!(
                "account_gate_rate_limited_total{{limit=\"{limit}\"}} 1"
            )),
            "{metrics}"
        );
    }
}

/// Records `token` in the gateway's store as learned from an upstream 2xx, for member-a on
/// account-a.
async fn record_learned(gateway: &RunningGateway, token: &str) {
    gateway
        .store
        .record(TokenRecord {
            fingerprint: Fingerprint::of(token),
            member_id: "member-a".into(),
            account_id: "account-a".into(),
            account_name: None,
            expires_at: SystemTime::now() + Duration::from_secs(600),
            learned: true,
        })
        .await
        .expect("record");
}

/// A gateway whose store holds a learned record of a token signed by a key it does not have.
async fn holding_a_learned_record(mode: TokenMode) -> (TestUpstream, RunningGateway, String) {
    let secret = Secret::emulators();
    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url)
        .configure(|c| {
            secret.signature_mode(c, mode);
            c.tokens.unknown = UnknownTokens::Reject;
        })
        .start()
        .await;
    let other_key = EmulatorOptions {
        signing_secret: b"another-issuer-s-secret-of-32-bytes!".to_vec(),
        ..EmulatorOptions::default()
    };
    let token = mint_token(&other_key, "member-a", "account-a", 3600);
    record_learned(&gateway, &token).await;
    (upstream, gateway, token)
}

#[tokio::test]
async fn a_learned_record_never_stands_in_for_a_signature() {
    for mode in [TokenMode::Either, TokenMode::Both] {
        let (upstream, gateway, token) = holding_a_learned_record(mode).await;
        let api = Commerce::new(&gateway.url(""));
        let answer = bare(&api, "account-a", &token).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{mode:?}");
        assert_eq!(upstream.seen().len(), 0, "{mode:?}: nothing forwarded");
        gateway.shutdown().await;
    }
}

#[tokio::test]
async fn a_learned_record_vouches_in_issued_mode_and_is_counted_as_learned() {
    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url).start().await;
    let token = mint_token(&EmulatorOptions::default(), "member-a", "account-a", 3600);
    record_learned(&gateway, &token).await;
    let api = Commerce::new(&gateway.url(""));
    assert_eq!(bare(&api, "account-a", &token).await.status, StatusCode::OK);
    assert!(gateway.metrics().await.contains(
        "account_gate_token_validations_total{outcome=\"accepted\",reason=\"learned\"} 1"
    ));
}
