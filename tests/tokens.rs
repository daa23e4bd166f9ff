//! Account-scoped requests: every account token is validated before it reaches the upstream.

mod common;

use std::time::Duration;

use account_gate::config::UnknownTokens;
use account_gate::emulator::{mint_token, Emulator, EmulatorHandle, EmulatorOptions};
use account_gate::store::{Fingerprint, TokenRecord, TokenStore};
use common::commerce::{issued, signup_data, Commerce, ACCOUNT_TOKEN, TOKENS};
use common::upstream::{Seen, TestUpstream};
use common::{RunningGateway, TestGateway};
use http::{Method, StatusCode};

async fn emulator(options: EmulatorOptions) -> EmulatorHandle {
    Emulator::spawn("127.0.0.1:0".parse().expect("addr"), options)
        .await
        .expect("emulator")
}

/// An emulator and a gateway in front of it, configured by `configure`.
async fn stack(
    options: EmulatorOptions,
    configure: impl FnOnce(&mut account_gate::config::Config),
) -> (EmulatorHandle, RunningGateway, Commerce) {
    let emulator = emulator(options).await;
    let gateway = TestGateway::new(&emulator.url())
        .configure(configure)
        .start()
        .await;
    let api = Commerce::new(&gateway.url(""));
    (emulator, gateway, api)
}

/// The token with one character of its signature changed.
fn tampered(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let i = token.rfind('.').expect("signature") + 3;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("ascii")
}

#[tokio::test]
async fn issued_tokens_open_their_own_account_only_until_logout() {
    let (emulator, gateway, api) = stack(EmulatorOptions::default(), |_| {}).await;
    let (member, tokens) = issued(&api.tokens(signup_data("ann@example.com", "pw-ann")).await);
    let (account, token) = tokens[0].clone();
    let (_, other) = issued(&api.tokens(signup_data("bob@example.com", "pw-bob")).await);
    let other_account = other[0].0.clone();

    let own = api
        .scoped_get(&format!("/v2/accounts/{account}"), &token)
        .await;
    assert_eq!(own.status, StatusCode::OK);
    assert_eq!(own.json()["data"]["id"], account.as_str());
    let addresses = api
        .scoped_get(&format!("/v2/accounts/{account}/addresses"), &token)
        .await;
    assert_eq!(addresses.status, StatusCode::OK);
    let me = api
        .scoped_get(&format!("/v2/account-members/{member}"), &token)
        .await;
    assert_eq!(me.status, StatusCode::OK);

    // The classic IDOR: A's token on B's account never reaches the upstream.
    let idor = api
        .scoped_get(&format!("/v2/accounts/{other_account}"), &token)
        .await;
    idor.assert_refused(StatusCode::FORBIDDEN, "scope_mismatch");
    assert_eq!(
        emulator.requests_to(&format!("/v2/accounts/{other_account}")),
        0
    );
    let other_member = api
        .scoped_get("/v2/account-members/someone-else", &token)
        .await;
    other_member.assert_refused(StatusCode::FORBIDDEN, "member_mismatch");

    // One character changed: not a token anybody issued.
    let forged = api
        .scoped_get(&format!("/v2/accounts/{account}"), &tampered(&token))
        .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);

    // Logout: DELETE on the token endpoint revokes every token of the member.
    let bearer = format!("Bearer {}", api.implicit().await);
    let logout = api
        .send(
            Method::DELETE,
            TOKENS,
            &[("authorization", &bearer), (ACCOUNT_TOKEN, &token)],
            "",
        )
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let after = api
        .scoped_get(&format!("/v2/accounts/{account}"), &token)
        .await;
    after.assert_refused(StatusCode::UNAUTHORIZED, "token_revoked");
    // The upstream still accepts it (it has no logout); the gateway does not let it through.
    let direct = Commerce::new(&emulator.url())
        .scoped_get(&format!("/v2/accounts/{account}"), &token)
        .await;
    assert_eq!(direct.status, StatusCode::OK);
    // Logging out again with a revoked token is refused too.
    let again = api
        .send(Method::DELETE, TOKENS, &[(ACCOUNT_TOKEN, &token)], "")
        .await;
    again.assert_refused(StatusCode::UNAUTHORIZED, "token_revoked");

    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains("account_gate_tokens_revoked_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "account_gate_token_validations_total{outcome=\"rejected\",reason=\"scope_mismatch\"} 1"
    ));
    assert!(metrics.contains(
        "account_gate_token_validations_total{outcome=\"rejected\",reason=\"token_revoked\"} 2"
    ));
}

#[tokio::test]
async fn issued_tokens_are_refused_after_their_expiry() {
    // Expiry is in whole seconds: a one-second token issued late in a second lives a few
    // milliseconds, less than a busy machine needs for the first request.
    let options = EmulatorOptions {
        token_lifetime: Duration::from_secs(3),
        ..EmulatorOptions::default()
    };
    let (emulator, _gateway, api) = stack(options, |c| c.tokens.leeway = Duration::ZERO).await;
    let (_, tokens) = issued(&api.tokens(signup_data("brief@example.com", "pw")).await);
    let (account, token) = tokens[0].clone();
    let path = format!("/v2/accounts/{account}");
    assert_eq!(api.scoped_get(&path, &token).await.status, StatusCode::OK);
    let before = emulator.requests_to(&path);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let expired = loop {
        let answer = api.scoped_get(&path, &token).await;
        if answer.status != StatusCode::OK {
            break answer;
        }
        assert!(std::time::Instant::now() < deadline, "still accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    expired.assert_refused(StatusCode::UNAUTHORIZED, "token_expired");
    let after = emulator.requests_to(&path);
    let expired_again = api.scoped_get(&path, &token).await;
    expired_again.assert_refused(StatusCode::UNAUTHORIZED, "token_expired");
    assert_eq!(
        emulator.requests_to(&path),
        after,
        "expired tokens are answered locally"
    );
    assert!(after >= before);
}

#[tokio::test]
async fn with_unknown_reject_a_genuine_token_never_seen_is_refused_locally() {
    let (emulator, _gateway, api) = stack(EmulatorOptions::default(), |c| {
        c.tokens.unknown = UnknownTokens::Reject
    })
    .await;
    // Signed up straight on the upstream: genuine, but this gateway never saw it issued.
    let direct = Commerce::new(&emulator.url());
    let (_, tokens) = issued(
        &direct
            .tokens(signup_data("elsewhere@example.com", "pw"))
            .await,
    );
    let (account, token) = tokens[0].clone();
    let path = format!("/v2/accounts/{account}");
    let answer = api.scoped_get(&path, &token).await;
    answer.assert_refused(StatusCode::UNAUTHORIZED, "token_unknown");
    assert_eq!(emulator.requests_to(&path), 0, "the upstream was not asked");
}

#[tokio::test]
async fn with_unknown_upstream_genuine_tokens_are_learnt_and_forged_ones_refused_once() {
    let (emulator, gateway, api) = stack(EmulatorOptions::default(), |_| {}).await;
    let direct = Commerce::new(&emulator.url());
    let (member, tokens) = issued(&direct.tokens(signup_data("old@example.com", "pw")).await);
    let (account, token) = tokens[0].clone();
    let path = format!("/v2/accounts/{account}");

    // Genuine: passes once through the upstream and is learnt.
    let first = api.scoped_get(&path, &token).await;
    assert_eq!(first.status, StatusCode::OK);
    let record = gateway
        .store
        .lookup(&Fingerprint::of(&token))
        .await
        .expect("lookup")
        .expect("learnt from the 2xx");
    assert_eq!(record.member_id, member);
    assert_eq!(record.account_id, account);
    // Provisional: kept for `learned_ttl` (15 minutes by default) at most, although the token
    // itself claims 24 hours.
    let left = record
        .expires_at
        .duration_since(std::time::SystemTime::now())
        .expect("not expired");
    assert!(
        left <= std::time::Duration::from_secs(15 * 60),
        "learnt for {left:?}"
    );
    // Learnt tokens are scoped like issued ones: no upstream call for another account.
    let (_, other) = issued(&direct.tokens(signup_data("other@example.com", "pw")).await);
    let other_path = format!("/v2/accounts/{}", other[0].0);
    let idor = api.scoped_get(&other_path, &token).await;
    idor.assert_refused(StatusCode::FORBIDDEN, "scope_mismatch");
    assert_eq!(emulator.requests_to(&other_path), 0);

    // Forged: right claims, wrong signature. Forwarded once, then refused locally.
    let forged = mint_token(
        &EmulatorOptions {
            signing_secret: b"not the emulator's secret".to_vec(),
            ..EmulatorOptions::default()
        },
        &member,
        &account,
        3600,
    );
    let before = emulator.requests_to(&path);
    assert_eq!(
        api.scoped_get(&path, &forged).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(emulator.requests_to(&path), before + 1, "asked once");
    for _ in 0..5 {
        let again = api.scoped_get(&path, &forged).await;
        again.assert_refused(StatusCode::UNAUTHORIZED, "token_unknown");
    }
    assert_eq!(
        emulator.requests_to(&path),
        before + 1,
        "then answered locally"
    );

    // A token for another account never reaches the upstream, known or not.
    let foreign = mint_token(
        &EmulatorOptions::default(),
        &member,
        "someone-elses-account",
        3600,
    );
    let answer = api.scoped_get(&path, &foreign).await;
    answer.assert_refused(StatusCode::FORBIDDEN, "scope_mismatch");
    assert_eq!(emulator.requests_to(&path), before + 1);

    // Revoked stays revoked, though the upstream would still accept it.
    let logout = api
        .send(Method::DELETE, TOKENS, &[(ACCOUNT_TOKEN, &token)], "")
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let revoked = api.scoped_get(&path, &token).await;
    revoked.assert_refused(StatusCode::UNAUTHORIZED, "token_revoked");
    assert_eq!(emulator.requests_to(&path), before + 1);
}

#[tokio::test]
async fn unknown_tokens_are_checked_locally_before_the_upstream_is_asked() {
    let (emulator, _gateway, api) = stack(EmulatorOptions::default(), |_| {}).await;
    let path = "/v2/accounts/acc-1";
    let expired = mint_token(&EmulatorOptions::default(), "m-1", "acc-1", -3600);
    api.scoped_get(path, &expired)
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "token_expired");
    // The seed's first example: `exp` as an ISO string.
    api.scoped_get(path, common::keys::SEED_STRING_EXP)
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "token_malformed");
    for garbage in ["not-a-token", "a.b", "a.b.c.d", "x.!!!.y"] {
        api.scoped_get(path, garbage)
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, "token_malformed");
    }
    assert_eq!(emulator.requests_to(path), 0);
}

#[tokio::test]
async fn missing_or_repeated_token_headers_and_odd_paths_are_refused() {
    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url).start().await;
    let api = Commerce::new(&gateway.url(""));
    let missing = api.send(Method::GET, "/v2/accounts/a1", &[], "").await;
    missing.assert_refused(StatusCode::UNAUTHORIZED, "token_missing");
    let token = mint_token(&EmulatorOptions::default(), "m1", "a1", 3600);
    let twice = api
        .send(
            Method::GET,
            "/v2/accounts/a1",
            &[
                (ACCOUNT_TOKEN, &token),
                ("ep-account-management-authentication-token", &token),
            ],
            "",
        )
        .await;
    twice.assert_refused(StatusCode::UNAUTHORIZED, "token_malformed");
    for path in [
        "/v2/accounts/a1/../b2",
        "/v2/accounts/a1/%2e%2e/b2",
        "/v2//accounts/b2",
    ] {
        let answer = api
            .send(Method::GET, path, &[(ACCOUNT_TOKEN, &token)], "")
            .await;
        answer.assert_refused(StatusCode::BAD_REQUEST, "path_not_normalized");
    }
    // A CORS preflight carries no token and passes.
    let preflight = api
        .send(
            Method::OPTIONS,
            "/v2/accounts/a1",
            &[
                ("origin", "https://shop.example.com"),
                ("access-control-request-method", "GET"),
            ],
            "",
        )
        .await;
    assert_eq!(preflight.status, StatusCode::OK);
    // Routes that only validate a present token pass without one.
    assert_eq!(
        api.send(Method::GET, "/v2/carts", &[], "").await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.send(Method::GET, "/v2/products", &[], "").await.status,
        StatusCode::OK
    );
    assert_eq!(
        upstream.calls(),
        3,
        "only the preflight and the two open reads were forwarded"
    );
}

/// A gateway (unknown tokens refused) in front of a recording upstream, with one token of
/// `member-a` on `account-a` in its store.
async fn gateway_knowing_a_token() -> (TestUpstream, RunningGateway, String) {
    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url)
        .configure(|c| c.tokens.unknown = UnknownTokens::Reject)
        .start()
        .await;
    let token = mint_token(&EmulatorOptions::default(), "member-a", "account-a", 3600);
    gateway
        .store
        .record(TokenRecord {
            fingerprint: Fingerprint::of(&token),
            member_id: "member-a".into(),
            account_id: "account-a".into(),
            account_name: None,
            expires_at: std::time::SystemTime::now() + Duration::from_secs(3600),
            learned: false,
        })
        .await
        .expect("record");
    (upstream, gateway, token)
}

/// Reads `account-a` with `headers` (which carry member-a's token), and returns what the
/// upstream saw after checking it was told member-a's identity.
async fn forwarded_as_member_a(
    api: &Commerce,
    upstream: &TestUpstream,
    headers: &[(&str, &str)],
) -> Seen {
    let answer = api
        .send(Method::GET, "/v2/accounts/account-a", headers, "")
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = upstream.seen().pop().expect("seen");
    assert_eq!(seen.headers["x-account-id"], "account-a");
    assert_eq!(seen.headers["x-account-member-id"], "member-a");
    seen
}

#[tokio::test]
async fn identity_headers_come_from_the_token_never_from_the_client() {
    let (upstream, gateway, token) = gateway_knowing_a_token().await;
    let api = Commerce::new(&gateway.url(""));
    let spoof = [
        ("x-account-id", "account-b"),
        ("x-account-member-id", "member-b"),
    ];

    let mut headers = vec![(ACCOUNT_TOKEN, token.as_str())];
    headers.extend_from_slice(&spoof);
    let seen = forwarded_as_member_a(&api, &upstream, &headers).await;
    assert_eq!(seen.headers.get_all("x-account-id").iter().count(), 1);

    // Without a token, the client's copies are removed all the same.
    let answer = api.send(Method::GET, "/v2/carts", &spoof, "").await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = upstream.seen().pop().expect("seen");
    assert!(!seen.headers.contains_key("x-account-id"));
    assert!(!seen.headers.contains_key("x-account-member-id"));
}

#[tokio::test]
async fn a_connection_header_cannot_remove_what_the_gateway_adds_or_checks() {
    let (upstream, gateway, token) = gateway_knowing_a_token().await;
    let api = Commerce::new(&gateway.url(""));

    // Options naming the headers the gateway adds: they reach the upstream all the same.
    let connection = "X-Account-Id, x-account-member-id, X-Forwarded-For, x-request-id";
    let headers = [(ACCOUNT_TOKEN, token.as_str()), ("connection", connection)];
    let seen = forwarded_as_member_a(&api, &upstream, &headers).await;
    assert!(seen.headers.contains_key("x-forwarded-for"));
    assert!(seen.headers.contains_key("x-request-id"));
    assert!(!seen.headers.contains_key("connection"));

    // A token the client declares hop-by-hop is not part of the message: not checked, not
    // forwarded, so the account route answers as it does without one.
    let calls = upstream.calls();
    let headers = [
        (ACCOUNT_TOKEN, token.as_str()),
        ("connection", "EP-Account-Management-Authentication-Token"),
    ];
    let answer = api
        .send(Method::GET, "/v2/accounts/account-a", &headers, "")
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        upstream.calls(),
        calls,
        "refused without reaching the upstream"
    );
}

#[tokio::test]
async fn a_switch_account_request_needs_a_valid_current_token() {
    let (emulator, _gateway, api) = stack(EmulatorOptions::default(), |c| {
        c.tokens.unknown = UnknownTokens::Reject
    })
    .await;
    let switch = serde_json::json!({
        "type": "account_management_authentication_token",
        "authentication_mechanism": "account_management_authentication_token",
    });
    let before = emulator.requests_to(TOKENS);
    let forged = mint_token(&EmulatorOptions::default(), "m", "a", 3600);
    let answer = api
        .tokens_with(switch.clone(), &[(ACCOUNT_TOKEN, &forged)])
        .await;
    answer.assert_refused(StatusCode::UNAUTHORIZED, "token_unknown");
    let answer = api.tokens_with(switch.clone(), &[]).await;
    answer.assert_refused(StatusCode::UNAUTHORIZED, "token_missing");
    assert_eq!(emulator.requests_to(TOKENS), before, "not forwarded");

    let (member, tokens) = issued(&api.tokens(signup_data("switch@example.com", "pw")).await);
    let (again, _) = issued(
        &api.tokens_with(switch, &[(ACCOUNT_TOKEN, &tokens[0].1)])
            .await,
    );
    assert_eq!(again, member);
}
