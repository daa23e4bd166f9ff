//! Token requests through the gateway: checks before forwarding, learning issued tokens, rate
//! limits, and answers passed through byte for byte.

mod common;

use std::time::{Duration, Instant, SystemTime};

use account_gate::emulator::{
    Emulator, EmulatorHandle, EmulatorOptions, DEMO_PASSWORD_PROFILE_ID, DEMO_REALM_ID,
};
use account_gate::store::{Fingerprint, TokenStore};
use bytes::Bytes;
use common::commerce::{
    issued, password_data, signup_data, Answer, Commerce, ACCOUNT_TOKEN, TOKEN_TYPE,
};
use common::raw::{http_response, RawUpstream};
use common::upstream::TestUpstream;
use common::{wait_until, RunningGateway, TestGateway};
use http::{Method, StatusCode};
use serde_json::{json, Value};

async fn emulator(options: EmulatorOptions) -> EmulatorHandle {
    Emulator::spawn("127.0.0.1:0".parse().expect("addr"), options)
        .await
        .expect("emulator")
}

/// An emulator and a gateway in front of it.
async fn stack() -> (EmulatorHandle, RunningGateway, Commerce) {
    let emulator = emulator(EmulatorOptions::default()).await;
    let gateway = TestGateway::new(&emulator.url()).start().await;
    let api = Commerce::new(&gateway.url(""));
    (emulator, gateway, api)
}

/// Asserts that the gateway learnt `tokens` for `member`, each with its account. (Earlier
/// answers' tokens may be listed too.)
async fn assert_learnt(gateway: &RunningGateway, member: &str, tokens: &[(String, String)]) {
    let listed = gateway.store.list_member(member).await.expect("list");
    for (account, token) in tokens {
        let record = listed
            .iter()
            .find(|r| r.fingerprint == Fingerprint::of(token))
            .unwrap_or_else(|| panic!("a token of {member} for {account} was not learnt"));
        assert_eq!(&record.account_id, account);
        assert_eq!(record.member_id, member);
        assert!(record.expires_at > SystemTime::now());
    }
}

#[tokio::test]
async fn every_mechanism_is_forwarded_and_its_tokens_learnt() {
    let (emulator, gateway, api) = stack().await;

    // self_signup
    let (member, tokens) = issued(&api.tokens(signup_data("ann@example.com", "pw-ann-1")).await);
    assert_learnt(&gateway, &member, &tokens).await;

    // password
    let (again, tokens) = issued(
        &api.tokens(password_data("ann@example.com", "pw-ann-1"))
            .await,
    );
    assert_eq!(again, member);
    assert_learnt(&gateway, &member, &tokens).await;

    // passwordless: the one-time password is requested from the upstream, through the gateway.
    let bearer = format!("Bearer {}", api.implicit().await);
    let otp_path = format!(
        "/v2/authentication-realms/{DEMO_REALM_ID}/password-profiles/{DEMO_PASSWORD_PROFILE_ID}/one-time-password-token-request"
    );
    let request = json!({"data": {"type": "one_time_password_token_request", "username": "ann@example.com", "purpose": "passwordless_authentication"}});
    let answer = api
        .send(
            Method::POST,
            &otp_path,
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
            request.to_string(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    let otp = emulator.last_otp("ann@example.com").expect("otp");
    let (again, tokens) = issued(
        &api.tokens(json!({
            "type": TOKEN_TYPE,
            "authentication_mechanism": "passwordless",
            "password_profile_id": DEMO_PASSWORD_PROFILE_ID,
            "username": "ann@example.com",
            "one_time_password_token": otp,
        }))
        .await,
    );
    assert_eq!(again, member);
    assert_learnt(&gateway, &member, &tokens).await;

    // account switch, with the current token in the header
    let current = tokens[0].1.clone();
    let (again, tokens) = issued(
        &api.tokens_with(
            json!({"type": TOKEN_TYPE, "authentication_mechanism": TOKEN_TYPE}),
            &[(ACCOUNT_TOKEN, &current)],
        )
        .await,
    );
    assert_eq!(again, member);
    assert_learnt(&gateway, &member, &tokens).await;

    // oidc: another member
    let (oidc_member, tokens) = issued(
        &api.tokens(json!({
            "type": TOKEN_TYPE,
            "authentication_mechanism": "oidc",
            "oauth_authorization_code": "code-of-bob",
            "oauth_redirect_uri": "https://shop.example.com/callback",
            "oauth_code_verifier": "verifier-0123456789",
        }))
        .await,
    );
    assert_ne!(oidc_member, member);
    assert_learnt(&gateway, &oidc_member, &tokens).await;

    let metrics = gateway.metrics().await;
    for mechanism in [
        "self_signup",
        "password",
        "passwordless",
        "oidc",
        TOKEN_TYPE,
    ] {
        let line =
            format!("account_gate_signups_total{{mechanism=\"{mechanism}\",outcome=\"issued\"}} 1");
        assert!(metrics.contains(&line), "{line} missing");
    }
    assert!(metrics.contains("account_gate_tokens_issued_total 5"));
    drop(emulator);
}

/// `data` for a valid request of `mechanism`.
fn valid(mechanism: &str) -> Value {
    let mut data = json!({"type": TOKEN_TYPE, "authentication_mechanism": mechanism});
    let fields: &[(&str, &str)] = match mechanism {
        "self_signup" => &[
            ("password_profile_id", DEMO_PASSWORD_PROFILE_ID),
            ("username", "joe@example.com"),
            ("password", "secret-pw"),
            ("name", "Joe"),
            ("email", "joe@example.com"),
        ],
        "password" => &[
            ("password_profile_id", DEMO_PASSWORD_PROFILE_ID),
            ("username", "joe@example.com"),
            ("password", "secret-pw"),
        ],
        "passwordless" => &[
            ("password_profile_id", DEMO_PASSWORD_PROFILE_ID),
            ("username", "joe@example.com"),
            ("one_time_password_token", "123456"),
        ],
        "oidc" => &[
            ("oauth_authorization_code", "code"),
            ("oauth_redirect_uri", "https://shop.example.com/cb"),
            ("oauth_code_verifier", "verifier"),
        ],
        _ => &[],
    };
    for (key, value) in fields {
        data[*key] = json!(value);
    }
    data
}

#[tokio::test]
async fn a_missing_required_field_is_a_400_naming_it_and_is_never_forwarded() {
    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url).start().await;
    let api = Commerce::new(&gateway.url(""));
    for mechanism in ["self_signup", "password", "passwordless", "oidc"] {
        let data = valid(mechanism);
        let fields: Vec<String> = data
            .as_object()
            .expect("object")
            .keys()
            .filter(|k| *k != "type" && *k != "authentication_mechanism")
            .cloned()
            .collect();
        for field in fields {
            for broken in [Value::Null, json!(""), json!(42)] {
                let mut data = data.clone();
                if broken.is_null() {
                    data.as_object_mut().expect("object").remove(&field);
                } else {
                    data[&field] = broken.clone();
                }
                let answer = api
                    .tokens_raw("application/json", json!({"data": data}).to_string())
                    .await;
                assert_eq!(
                    answer.status,
                    StatusCode::BAD_REQUEST,
                    "{mechanism} {field} {broken}"
                );
                let (code, pointer) = answer.error_code_and_pointer();
                assert_eq!(pointer, format!("/data/{field}"), "{mechanism} {field}");
                let expected = if broken == json!(42) {
                    "invalid_field"
                } else {
                    "missing_field"
                };
                assert_eq!(code, expected);
                assert_eq!(answer.json()["errors"][0]["status"], "400");
            }
        }
    }
    // The switch mechanism needs its token in the header instead.
    let answer = api
        .tokens_raw(
            "application/json",
            json!({"data": valid(TOKEN_TYPE)}).to_string(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.error_code_and_pointer().0, "token_missing");
    assert!(answer.headers["www-authenticate"]
        .to_str()
        .expect("ascii")
        .starts_with("Bearer realm=\"account-gate\""));
    assert_eq!(upstream.calls(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn malformed_requests_get_their_status_and_are_never_forwarded() {
    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url).start().await;
    let api = Commerce::new(&gateway.url(""));
    let with = |key: &str, value: Value| {
        let mut data = valid("password");
        data[key] = value;
        json!({ "data": data }).to_string()
    };
    let huge = format!(
        "{{\"data\":{{\"type\":\"{TOKEN_TYPE}\",\"pad\":\"{}\"}}}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let cases: Vec<(&str, String, &str, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            "{\"data\": {".into(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "wrong type",
            with("type", json!("account")),
            "application/json",
            StatusCode::BAD_REQUEST,
            "invalid_type",
        ),
        (
            "unknown mechanism",
            with("authentication_mechanism", json!("magic")),
            "application/json",
            StatusCode::BAD_REQUEST,
            "unknown_mechanism",
        ),
        (
            "wrong JSON type",
            with("username", json!(["joe@example.com"])),
            "application/json",
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "2 MiB body",
            huge,
            "application/json",
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            "text/plain",
            with("type", json!(TOKEN_TYPE)),
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "bad email",
            {
                let mut d = valid("self_signup");
                d["email"] = json!("not-an-email");
                json!({"data": d}).to_string()
            },
            "application/json",
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "duplicate keys",
            format!("{{\"data\":{{\"type\":\"{TOKEN_TYPE}\",\"type\":\"x\"}}}}"),
            "application/json",
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "data not an object",
            "{\"data\":[]}".into(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
    ];
    for (name, body, content_type, status, code) in cases {
        let answer = api.tokens_raw(content_type, body).await;
        assert_eq!(answer.status, status, "{name}");
        assert_eq!(answer.error_code_and_pointer().0, code, "{name}");
        assert_eq!(answer.headers["content-type"], "application/json");
    }
    // A chunked body over the limit (no Content-Length to refuse it up front).
    let chunks: Vec<Bytes> = (0..40)
        .map(|_| Bytes::from(vec![b' '; 64 * 1024]))
        .collect();
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(2);
    tokio::spawn(async move {
        for chunk in chunks {
            if tx.send_data(chunk).await.is_err() {
                return;
            }
        }
    });
    let request = http::Request::post(gateway.url("/v2/account-members/tokens"))
        .header("content-type", "application/json")
        .body(body)
        .expect("request");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let response = client.request(request).await.expect("answer");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    assert_eq!(upstream.calls(), 0, "nothing reached the upstream");
    let metrics = gateway.metrics().await;
    assert!(
        metrics
            .contains("account_gate_signups_total{mechanism=\"unknown\",outcome=\"rejected\"} 10"),
        "{metrics}"
    );
}

#[tokio::test]
async fn answers_are_byte_identical_with_and_without_the_gateway() {
    let bodies: [(u16, &[u8]); 4] = [
        (201, include_bytes!("corpus/seed-201.json")),
        (400, br#"{"errors":[{"status":"400","title":"Bad Request","detail":"username is required"}]}"#),
        (401, br#"{"errors":[{"status":"401","title":"Unauthorized","detail":"invalid credentials"}]}"#),
        (409, br#"{"errors":[{"status":"409","title":"Conflict","detail":"user already exists"}]}"#),
    ];
    for (status, body) in bodies {
        let upstream = RawUpstream::answering(status, "application/json", body).await;
        let gateway = TestGateway::new(&upstream.url).start().await;
        let request = json!({"data": valid("password")}).to_string();
        let direct = Commerce::new(&upstream.url)
            .tokens_raw("application/json", request.clone())
            .await;
        let proxied = Commerce::new(&gateway.url(""))
            .tokens_raw("application/json", request)
            .await;
        assert_eq!(proxied.status, direct.status);
        assert_eq!(proxied.status.as_u16(), status);
        assert_eq!(proxied.body, direct.body, "{status} body altered");
        assert_eq!(proxied.body.as_ref(), body);
        for name in ["content-type", "content-length", "x-upstream"] {
            assert_eq!(
                proxied.headers.get(name),
                direct.headers.get(name),
                "{status} {name}"
            );
        }
        assert_eq!(upstream.calls(), 2);
    }
}

#[tokio::test]
async fn unusable_201_answers_pass_through_and_teach_nothing() {
    let seed = include_bytes!("corpus/seed-201.json");
    // A body cut off mid-way: Content-Length promises more than is sent.
    let mut cut = http_response(201, "application/json", seed);
    cut.truncate(cut.len() - 100);
    let mut over_cap = b"{\"data\":[],\"pad\":\"".to_vec();
    over_cap.extend(std::iter::repeat_n(b'x', 4096));
    over_cap.extend_from_slice(b"\"}");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "broken JSON",
            http_response(201, "application/json", &seed[..seed.len() / 2]),
        ),
        (
            "not JSON",
            http_response(201, "text/html", b"<html>created</html>"),
        ),
        (
            "over the cap",
            http_response(
                201,
                "application/json",
                &[seed.as_slice(), &over_cap].concat(),
            ),
        ),
        ("cut off", cut),
    ];
    for (name, response) in cases {
        let expected_body = response[response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head")
            + 4..]
            .to_vec();
        let upstream = RawUpstream::start(response).await;
        let gateway = TestGateway::new(&upstream.url)
            .configure(|c| c.signup.max_response_bytes = seed.len() + 1024)
            .start()
            .await;
        let request = json!({"data": valid("password")}).to_string();
        let api = Commerce::new(&gateway.url(""));
        if name == "cut off" {
            let request = http::Request::post(gateway.url("/v2/account-members/tokens"))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(Bytes::from(request)))
                .expect("request");
            let response = common::client()
                .request(request)
                .await
                .expect("head arrives");
            assert_eq!(response.status(), StatusCode::CREATED);
            let body = http_body_util::BodyExt::collect(response.into_body()).await;
            assert!(body.is_err(), "a cut-off body stays cut off");
        } else {
            let answer: Answer = api.tokens_raw("application/json", request).await;
            assert_eq!(answer.status, StatusCode::CREATED, "{name}");
            assert_eq!(
                answer.body.as_ref(),
                expected_body.as_slice(),
                "{name}: passed through"
            );
        }
        assert_eq!(upstream.calls(), 1);
        let metrics_ok = || async {
            gateway.metrics().await.contains(
                "account_gate_signups_total{mechanism=\"password\",outcome=\"unrecorded\"} 1",
            )
        };
        wait_until("the unrecorded answer is counted", metrics_ok).await;
        assert_eq!(gateway.store.count(), 0, "{name}: nothing recorded");
    }
}

#[tokio::test]
async fn a_member_with_three_accounts_gets_three_tokens_recorded() {
    let (emulator, gateway, api) = stack().await;
    let (member, _) = issued(&api.tokens(signup_data("trio@example.com", "pw-trio")).await);
    // Two more accounts for the member, made with client credentials straight on the emulator.
    let direct = Commerce::new(&emulator.url());
    let admin = format!("Bearer {}", direct.client_credentials().await);
    for name in ["Second Ltd", "Third Ltd"] {
        let created = direct
            .send(
                Method::POST,
                "/v2/accounts",
                &[
                    ("authorization", &admin),
                    ("content-type", "application/json"),
                ],
                json!({"data": {"type": "account", "name": name, "legal_name": name}}).to_string(),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED);
        let account = created.json()["data"]["id"]
            .as_str()
            .expect("id")
            .to_owned();
        let membership = direct
            .send(
                Method::POST,
                &format!("/v2/accounts/{account}/account-memberships"),
                &[
                    ("authorization", &admin),
                    ("content-type", "application/json"),
                ],
                json!({"data": {"type": "account_membership", "account_member_id": member}})
                    .to_string(),
            )
            .await;
        assert_eq!(membership.status, StatusCode::CREATED);
    }
    let login = api
        .tokens(password_data("trio@example.com", "pw-trio"))
        .await;
    let names: Vec<String> = login.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|e| e["account_name"].as_str().unwrap_or_default().to_owned())
        .collect();
    let (again, tokens) = issued(&login);
    assert_eq!(again, member);
    assert_eq!(tokens.len(), 3);
    let listed = gateway.store.list_member(&member).await.expect("list");
    // The login's three, plus the sign-up's unless it is byte-identical to the login's token for
    // the same account (same claims within the same second).
    assert!((3..=4).contains(&listed.len()), "{listed:?}");
    for (account, token) in &tokens {
        assert!(listed
            .iter()
            .any(|r| r.fingerprint == Fingerprint::of(token) && &r.account_id == account));
    }
    for (account, token) in &tokens {
        let record = gateway
            .store
            .lookup(&Fingerprint::of(token))
            .await
            .expect("lookup")
            .expect("recorded");
        assert_eq!(&record.account_id, account);
        assert_eq!(record.member_id, member);
        assert!(names.contains(&record.account_name.clone().unwrap_or_default()));
    }
}

#[tokio::test]
async fn learnt_tokens_disappear_at_their_expiry() {
    let emulator = emulator(EmulatorOptions {
        token_lifetime: Duration::from_secs(2),
        ..EmulatorOptions::default()
    })
    .await;
    let gateway = TestGateway::new(&emulator.url()).start().await;
    let api = Commerce::new(&gateway.url(""));
    let (member, tokens) = issued(&api.tokens(signup_data("brief@example.com", "pw")).await);
    let fingerprint = Fingerprint::of(&tokens[0].1);
    assert!(gateway
        .store
        .lookup(&fingerprint)
        .await
        .expect("lookup")
        .is_some());
    let expires = gateway.store.list_member(&member).await.expect("list")[0].expires_at;
    let store = gateway.store.clone();
    wait_until("the record expires", || {
        let store = store.clone();
        async move { store.lookup(&fingerprint).await.expect("lookup").is_none() }
    })
    .await;
    assert!(
        SystemTime::now() >= expires,
        "gone at, not before, its expiry"
    );
    assert!(gateway
        .store
        .list_member(&member)
        .await
        .expect("list")
        .is_empty());
}

#[tokio::test]
async fn the_eleventh_signup_from_one_ip_in_a_window_gets_429() {
    let emulator = emulator(EmulatorOptions::default()).await;
    let gateway = TestGateway::new(&emulator.url())
        .configure(|c| c.rate_limit.signup_per_ip = 10)
        .start()
        .await;
    let api = Commerce::new(&gateway.url(""));
    let started = Instant::now();
    // Malformed requests are stopped by the checks and do not use up the budget.
    for _ in 0..15 {
        let answer = api.tokens_raw("application/json", "{\"data\":{}}").await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    }
    for i in 0..10 {
        let answer = api
            .tokens(signup_data(&format!("user{i}@example.com"), "pw"))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "sign-up {i}");
    }
    let before = emulator.requests_to("/v2/account-members/tokens");
    let answer = api.tokens(signup_data("user10@example.com", "pw")).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.error_code_and_pointer().0, "rate_limited");
    let retry: u64 = answer.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        emulator.requests_to("/v2/account-members/tokens"),
        before,
        "not forwarded"
    );
    // Logins have their own budget; malformed requests do not count.
    let login = api.tokens(password_data("user0@example.com", "pw")).await;
    assert_eq!(login.status, StatusCode::CREATED);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "all within one window"
    );
    let metrics = gateway.metrics().await;
    assert!(metrics.contains("account_gate_rate_limited_total{limit=\"signup_ip\"} 1"));
    assert!(metrics.contains(
        "account_gate_signups_total{mechanism=\"self_signup\",outcome=\"rate_limited\"} 1"
    ));
}
