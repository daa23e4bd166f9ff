//! What operators see: every metric after a scenario that drives each route and outcome, the
//! admin API and its guard, and logs that never contain a password, a token or a secret.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use account_gate::config::{SecretRef, TokenMode};
use account_gate::emulator::{mint_token, Emulator, EmulatorHandle, EmulatorOptions};
use common::commerce::{issued, password_data, signup_data, Commerce, ACCOUNT_TOKEN, TOKENS};
use common::{sample, RunningGateway, TestGateway};
use http::{Method, StatusCode};

async fn emulator() -> EmulatorHandle {
    Emulator::spawn(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions::default(),
    )
    .await
    .expect("emulator")
}

fn secret_file(value: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp");
    writeln!(file, "{value}").expect("write");
    file
}

#[tokio::test]
async fn every_metric_counts_what_happened() {
    let emulator = emulator().await;
    let hs_secret = secret_file("an-hs256-secret-of-thirty-two-bytes!");
    let gateway = TestGateway::new(&emulator.url())
        .configure(|c| {
            c.rate_limit.login_per_username = 2;
            c.tokens.mode = TokenMode::Either;
            c.tokens.signature.hs256_secret_file = Some(hs_secret.path().to_owned());
        })
        .start()
        .await;
    let api = Commerce::new(&gateway.url(""));

    // Sign-ups and logins: 1 issued, 1 rejected by the checks, 1 refused by the upstream
    // (wrong password), 1 rate-limited.
    let (member, tokens) = issued(&api.tokens(signup_data("metrics@example.com", "pw")).await);
    let (account, token) = tokens[0].clone();
    assert_eq!(
        api.tokens_raw("application/json", "{}").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.tokens(password_data("metrics@example.com", "wrong"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.tokens(password_data("metrics@example.com", "pw"))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        api.tokens(password_data("metrics@example.com", "pw"))
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );

    // Account requests: 2 accepted (issued), 1 scope mismatch, 1 missing; a signed token the
    // store does not know is verified (either mode), twice: one miss, one hit.
    let path = format!("/v2/accounts/{account}");
    assert_eq!(api.scoped_get(&path, &token).await.status, StatusCode::OK);
    assert_eq!(
        api.scoped_get(&format!("/v2/accounts/{account}/addresses"), &token)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        api.scoped_get("/v2/accounts/not-mine", &token).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.send(Method::GET, &path, &[], "").await.status,
        StatusCode::UNAUTHORIZED
    );
    let signed = mint_token(
        &EmulatorOptions {
            signing_secret: b"an-hs256-secret-of-thirty-two-bytes!".to_vec(),
            ..EmulatorOptions::default()
        },
        &member,
        &account,
        600,
    );
    for _ in 0..2 {
        assert_eq!(
            api.scoped_get(&path, &signed).await.status,
            StatusCode::UNAUTHORIZED,
            "the emulator's own secret differs"
        );
    }
    // Logout revokes the member's live tokens (one or two: the login's token is identical to
    // the sign-up's when both fall in the same second).
    use account_gate::store::TokenStore;
    let live = gateway
        .store
        .list_member(&member)
        .await
        .expect("list")
        .len() as f64;
    // The gauge is counted at scrape time: the live tokens are there before the logout.
    let before_logout = gateway.metrics().await;
    let entries = format!("account_gate_store_entries {live}");
    assert!(
        before_logout.lines().any(|line| line == entries),
        "expected `{entries}`"
    );
    let logout = api
        .send(Method::DELETE, TOKENS, &[(ACCOUNT_TOKEN, &token)], "")
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    // Pass-through.
    assert_eq!(
        api.send(Method::GET, "/v2/products", &[], "").await.status,
        StatusCode::NOT_FOUND
    );

    let metrics = gateway.metrics().await;
    let expect = |name: &str, value: f64| {
        assert_eq!(sample(&metrics, name), value, "{name}");
    };
    expect(
        &format!(
            "account_gate_build_info{{revision=\"{}\",version=\"{}\"}}",
            account_gate::REVISION,
            account_gate::VERSION
        ),
        1.0,
    );
    expect(
        "account_gate_signups_total{mechanism=\"self_signup\",outcome=\"issued\"}",
        1.0,
    );
    expect(
        "account_gate_signups_total{mechanism=\"password\",outcome=\"issued\"}",
        1.0,
    );
    expect(
        "account_gate_signups_total{mechanism=\"password\",outcome=\"refused\"}",
        1.0,
    );
    expect(
        "account_gate_signups_total{mechanism=\"password\",outcome=\"rate_limited\"}",
        1.0,
    );
    expect(
        "account_gate_signups_total{mechanism=\"unknown\",outcome=\"rejected\"}",
        1.0,
    );
    expect(
        "account_gate_rate_limited_total{limit=\"login_username\"}",
        1.0,
    );
    expect("account_gate_tokens_issued_total", 2.0);
    expect("account_gate_tokens_revoked_total", live);
    expect("account_gate_store_entries", 0.0);
    expect(
        "account_gate_token_validations_total{outcome=\"accepted\",reason=\"issued\"}",
        3.0,
    );
    expect(
        "account_gate_token_validations_total{outcome=\"rejected\",reason=\"scope_mismatch\"}",
        1.0,
    );
    expect(
        "account_gate_token_validations_total{outcome=\"rejected\",reason=\"token_missing\"}",
        1.0,
    );
    expect(
        "account_gate_token_validations_total{outcome=\"accepted\",reason=\"signature\"}",
        2.0,
    );
    expect("account_gate_verified_cache_misses_total", 1.0);
    expect("account_gate_verified_cache_hits_total", 1.0);
    expect(
        "account_gate_requests_total{code_class=\"2xx\",route=\"signup\"}",
        3.0,
    );
    expect(
        "account_gate_requests_total{code_class=\"4xx\",route=\"signup\"}",
        3.0,
    );
    expect(
        "account_gate_requests_total{code_class=\"2xx\",route=\"scoped\"}",
        2.0,
    );
    expect(
        "account_gate_requests_total{code_class=\"4xx\",route=\"scoped\"}",
        4.0,
    );
    expect(
        "account_gate_requests_total{code_class=\"4xx\",route=\"passthrough\"}",
        1.0,
    );
    expect(
        "account_gate_request_duration_seconds_count{route=\"scoped\"}",
        6.0,
    );
    expect(
        "account_gate_upstream_duration_seconds_count{route=\"scoped\"}",
        4.0,
    );
    expect("account_gate_upstream_errors_total{kind=\"connect\"}", 0.0);
    assert!(sample(&metrics, "account_gate_process_resident_memory_bytes") > 0.0);
    // Nothing with a path, an id or a token in a label.
    assert!(!metrics.contains(&account) && !metrics.contains(&member) && !metrics.contains(&token));
}

async fn admin_gateway(emulator: &EmulatorHandle, token_file: &std::path::Path) -> RunningGateway {
    let path = token_file.to_owned();
    TestGateway::new(&emulator.url())
        .configure(|c| c.admin.token = Some(SecretRef::File(path)))
        .start()
        .await
}

#[tokio::test]
async fn the_admin_api_lists_and_revokes_a_members_tokens_behind_its_token() {
    let emulator = emulator().await;
    let admin_token = secret_file("admin-token-0123456789");
    let gateway = admin_gateway(&emulator, admin_token.path()).await;
    let api = Commerce::new(&gateway.url(""));
    let admin = Commerce::new(&gateway.admin_url(""));
    let (member, tokens) = issued(&api.tokens(signup_data("admin@example.com", "pw")).await);
    let (account, token) = tokens[0].clone();
    let tokens_path = format!("/members/{member}/tokens");

    for bad in [
        None,
        Some("Bearer wrong"),
        Some("admin-token-0123456789"),
        Some("Bearer "),
    ] {
        let headers: Vec<(&str, &str)> = bad.map(|b| ("authorization", b)).into_iter().collect();
        let answer = admin.send(Method::GET, &tokens_path, &headers, "").await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{bad:?}");
        assert_eq!(answer.error_code_and_pointer().0, "admin_token_invalid");
        let answer = admin.send(Method::DELETE, &tokens_path, &headers, "").await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{bad:?}");
    }
    let auth = [("authorization", "Bearer admin-token-0123456789")];
    let listing = admin.send(Method::GET, &tokens_path, &auth, "").await;
    assert_eq!(listing.status, StatusCode::OK);
    let body = listing.json();
    assert_eq!(body["meta"]["results"]["total"], 1);
    assert_eq!(body["data"][0]["account_id"], account.as_str());
    assert_eq!(
        body["data"][0]["fingerprint_prefix"].as_str().map(str::len),
        Some(12)
    );
    assert!(body["data"][0]["expires"]
        .as_str()
        .is_some_and(|e| e.ends_with('Z')));
    assert!(
        !String::from_utf8_lossy(&listing.body).contains(&token),
        "never the token"
    );

    let revoke = admin.send(Method::DELETE, &tokens_path, &auth, "").await;
    assert_eq!(revoke.status, StatusCode::NO_CONTENT);
    let after = api
        .scoped_get(&format!("/v2/accounts/{account}"), &token)
        .await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert_eq!(after.error_code_and_pointer().0, "token_revoked");
    let listing = admin.send(Method::GET, &tokens_path, &auth, "").await;
    assert_eq!(listing.json()["meta"]["results"]["total"], 0);
}

#[tokio::test]
async fn without_an_admin_token_the_admin_api_does_not_exist() {
    let emulator = emulator().await;
    let gateway = TestGateway::new(&emulator.url()).start().await;
    let admin = Commerce::new(&gateway.admin_url(""));
    for method in [Method::GET, Method::DELETE] {
        let answer = admin
            .send(
                method,
                "/members/m/tokens",
                &[("authorization", "Bearer anything")],
                "",
            )
            .await;
        assert!(
            answer.status == StatusCode::NOT_FOUND
                || answer.status == StatusCode::METHOD_NOT_ALLOWED,
            "{}",
            answer.status
        );
    }
}

/// Runs the binary at `trace` with JSON logs through a scenario full of secrets, and checks that
/// none of them appears in any log line.
#[tokio::test]
async fn logs_never_contain_passwords_tokens_or_secrets() {
    let emulator = emulator().await;
    let admin_secret = "admin-secret-Zq8w7e6r5t4y";
    let hs_secret = "hs256-secret-Mn3b4v5c6x7z8l9k0j1h2g";
    let admin_file = secret_file(admin_secret);
    let hs_file = secret_file(hs_secret);
    let mut config = tempfile::NamedTempFile::new().expect("config");
    write!(
        config,
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nshutdown_delay = \"0s\"\n\
         [upstream]\nurl = \"{}\"\n[admin]\ntoken_file = \"{}\"\n[tokens]\nmode = \"either\"\n\
         [tokens.signature]\nhs256_secret_file = \"{}\"\n[authz]\nlisten = \"127.0.0.1:0\"\n",
        emulator.url(),
        admin_file.path().display(),
        hs_file.path().display()
    )
    .expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_account-gate"))
        .args(["run", "--log-format", "json", "--config"])
        .arg(config.path())
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut log = Vec::new();
    let ready = loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("ready line");
        log.push(line.clone());
        if line.contains("account-gate ready") {
            break line;
        }
    };
    let field = |key: &str| -> String {
        let value: serde_json::Value = serde_json::from_str(&ready).expect("json log line");
        value[key].as_str().expect("field").to_owned()
    };
    let (listen, admin) = (field("listen"), field("admin"));
    let api = Commerce::new(&format!("http://{listen}"));

    let password = "correct-horse-Pq9o8i7u6y";
    let access = api.implicit().await;
    let (member, tokens) = issued(&api.tokens(signup_data("logs@example.com", password)).await);
    let token = tokens[0].1.clone();
    let _ = api
        .tokens(password_data("logs@example.com", "wrong-password-Lk2j3h4g"))
        .await;
    let _ = api
        .tokens(password_data("logs@example.com", password))
        .await;
    let _ = api
        .tokens_raw(
            "application/json",
            format!("{{\"data\":{{\"password\":\"{password}\"}}}}"),
        )
        .await;
    let _ = api
        .scoped_get(&format!("/v2/accounts/{}", tokens[0].0), &token)
        .await;
    let _ = api.scoped_get("/v2/accounts/other", &token).await;
    let _ = api
        .scoped_get(
            &format!("/v2/accounts/{}", tokens[0].0),
            &format!("{token}x"),
        )
        .await;
    let _ = api
        .send(Method::GET, &format!("/v2/carts?token={token}"), &[], "")
        .await;
    // The authz listener's decisions: a token in the header, and in the judged target's query.
    let authz = Commerce::new(&format!("http://{}", field("authz")));
    for target in [
        format!("/v2/accounts/{}", tokens[0].0),
        format!("/v2/carts?token={token}"),
        "/v2/accounts/other".to_owned(),
    ] {
        let _ = authz
            .send(
                Method::GET,
                "/",
                &[
                    (ACCOUNT_TOKEN, token.as_str()),
                    ("x-original-method", "GET"),
                    ("x-original-uri", target.as_str()),
                ],
                "",
            )
            .await;
    }
    let admin_api = Commerce::new(&format!("http://{admin}"));
    let auth = format!("Bearer {admin_secret}");
    let _ = admin_api
        .send(
            Method::GET,
            &format!("/members/{member}/tokens"),
            &[("authorization", &auth)],
            "",
        )
        .await;
    let _ = admin_api
        .send(
            Method::GET,
            "/members/x/tokens",
            &[("authorization", "Bearer not-the-admin-secret-Rt5")],
            "",
        )
        .await;
    let _ = api
        .send(Method::DELETE, TOKENS, &[(ACCOUNT_TOKEN, &token)], "")
        .await;

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success());
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(5)) {
        log.push(line);
    }
    let log = log.join("\n");
    assert!(log.lines().count() > 20, "trace logging produced lines");
    assert!(
        log.contains("\"target\":\"access\""),
        "access lines are there"
    );
    assert!(
        log.contains("\"route\":\"authz\""),
        "the decisions' access lines are there"
    );
    let signature = token.rsplit('.').next().expect("signature");
    let payload = token.split('.').nth(1).expect("payload");
    for (what, secret) in [
        ("password", password),
        ("wrong password", "wrong-password-Lk2j3h4g"),
        ("account token", token.as_str()),
        ("token signature", signature),
        ("token payload", payload),
        ("access token", access.as_str()),
        ("admin token", admin_secret),
        ("wrong admin token", "not-the-admin-secret-Rt5"),
        ("HS256 secret", hs_secret),
    ] {
        assert!(!log.contains(secret), "the {what} appears in the logs");
    }
}
