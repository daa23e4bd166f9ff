//! The external-authorization listener (`[authz]`), called the way each ingress calls it, with the
//! emulator behind the gateway's proxy for sign-up and logout: the proxy's decisions, the
//! identity headers for the ingress to copy, the proxy's refusals, and every malformed call an
//! attacker or a misconfigured ingress could make answered 400, never a 5xx or a guess.

mod common;

use account_gate::config::{Config, UnknownTokens};
use account_gate::emulator::{Emulator, EmulatorHandle, EmulatorOptions};
use common::commerce::{issued, signup_data, Answer, Commerce, ACCOUNT_TOKEN, TOKENS};
use common::{RunningGateway, TestGateway};
use http::{Method, StatusCode};

/// How an ingress names the judged request.
#[derive(Debug, Clone, Copy)]
enum Convention {
    /// Traefik, Caddy: `X-Forwarded-Method` and `X-Forwarded-Uri`.
    Forwarded,
    /// nginx: `X-Original-Method` and `X-Original-URI`.
    Original,
    /// Envoy's HTTP service: the call's own method and path, behind `path_prefix`.
    Own,
}

const PREFIX: &str = "/authz";

/// An emulator, and a gateway in front of it with the authz listener on, configured further by
/// `configure`.
async fn stack(
    configure: impl FnOnce(&mut Config),
) -> (EmulatorHandle, RunningGateway, Commerce, Commerce) {
    let emulator = Emulator::spawn(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions::default(),
    )
    .await
    .expect("emulator");
    let gateway = TestGateway::new(&emulator.url())
        .configure(|c| {
            c.authz.listen = Some("127.0.0.1:0".parse().expect("addr"));
            c.authz.path_prefix = PREFIX.to_owned();
            configure(c);
        })
        .start()
        .await;
    let proxy = Commerce::new(&gateway.url(""));
    let authz = Commerce::new(&format!(
        "http://{}",
        gateway.authz_addr.expect("the authz listener is on")
    ));
    (emulator, gateway, proxy, authz)
}

/// Asks the authz listener about `method target` with `headers`, the way `convention` does.
async fn decide(
    authz: &Commerce,
    convention: Convention,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    match convention {
        Convention::Forwarded => {
            all.extend([("x-forwarded-method", method), ("x-forwarded-uri", target)]);
            authz.send(Method::GET, "/", &all, "").await
        }
        Convention::Original => {
            all.extend([("x-original-method", method), ("x-original-uri", target)]);
            authz.send(Method::GET, "/auth", &all, "").await
        }
        Convention::Own => {
            let method = Method::from_bytes(method.as_bytes()).expect("method");
            authz
                .send(method, &format!("{PREFIX}{target}"), &all, "")
                .await
        }
    }
}

/// A refusal of a decision: the proxy's answer, and no identity for the ingress to copy.
fn assert_refused(answer: &Answer, status: StatusCode, code: &str) {
    answer.assert_refused(status, code);
    assert_eq!(answer.headers["content-type"], "application/json");
    assert!(!answer.headers.contains_key("x-account-id"));
    assert!(!answer.headers.contains_key("x-account-member-id"));
}

fn assert_allowed(answer: &Answer, identity: Option<(&str, &str)>) {
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert!(answer.body.is_empty());
    let values = |name| {
        answer
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("text").to_owned())
            .collect::<Vec<_>>()
    };
    match identity {
        Some((account, member)) => {
            assert_eq!(values("x-account-id"), [account]);
            assert_eq!(values("x-account-member-id"), [member]);
        }
        None => {
            assert!(values("x-account-id").is_empty());
            assert!(values("x-account-member-id").is_empty());
        }
    }
}

/// The token with one character of its signature changed.
fn tampered(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let i = token.rfind('.').expect("signature") + 3;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("ascii")
}

#[tokio::test]
async fn every_ingress_convention_gets_the_proxys_decisions_until_logout() {
    let (_emulator, gateway, proxy, authz) =
        stack(|c| c.tokens.unknown = UnknownTokens::Reject).await;
    for convention in [Convention::Forwarded, Convention::Original, Convention::Own] {
        let user = format!("{convention:?}@example.com").to_lowercase();
        let (member, tokens) = issued(&proxy.tokens(signup_data(&user, "pw-secret")).await);
        let (account, token) = tokens[0].clone();
        let (_, other) = issued(
            &proxy
                .tokens(signup_data(&format!("other-{user}"), "pw-other"))
                .await,
        );
        let other_account = other[0].0.clone();
        let own = format!("/v2/accounts/{account}");
        let with_token = [(ACCOUNT_TOKEN, token.as_str())];

        let answer = decide(&authz, convention, "GET", &own, &with_token).await;
        assert_allowed(&answer, Some((&account, &member)));
        assert!(answer.headers.contains_key("x-request-id"));
        let answer = decide(
            &authz,
            convention,
            "PUT",
            &format!("/v2/account-members/{member}?x=1"),
            &with_token,
        )
        .await;
        assert_allowed(&answer, Some((&account, &member)));
        let answer = decide(
            &authz,
            convention,
            "GET",
            &format!("/v2/accounts/{other_account}/addresses"),
            &with_token,
        )
        .await;
        assert_refused(&answer, StatusCode::FORBIDDEN, "scope_mismatch");
        let answer = decide(&authz, convention, "GET", &own, &[]).await;
        assert_refused(&answer, StatusCode::UNAUTHORIZED, "token_missing");
        let forged = tampered(&token);
        let answer = decide(&authz, convention, "GET", &own, &[(ACCOUNT_TOKEN, &forged)]).await;
        assert_refused(&answer, StatusCode::UNAUTHORIZED, "token_unknown");
        // Optional routes: no token passes without an identity, a token is checked.
        let answer = decide(&authz, convention, "GET", "/v2/carts/c1", &[]).await;
        assert_allowed(&answer, None);
        let answer = decide(&authz, convention, "POST", "/v2/orders", &with_token).await;
        assert_allowed(&answer, Some((&account, &member)));

        assert_eq!(proxy.logout(&token).await.status, StatusCode::NO_CONTENT);
        let answer = decide(&authz, convention, "GET", &own, &with_token).await;
        assert_refused(&answer, StatusCode::UNAUTHORIZED, "token_revoked");
    }

    let metrics = gateway.metrics().await;
    assert!(
        common::sample(
            &metrics,
            "account_gate_requests_total{code_class=\"2xx\",route=\"authz\"}"
        ) >= 12.0
    );
    assert!(
        common::sample(
            &metrics,
            "account_gate_requests_total{code_class=\"4xx\",route=\"authz\"}"
        ) >= 12.0
    );
    assert!(metrics.contains("account_gate_connections_open{listener=\"authz\"}"));
    assert!(metrics.contains("account_gate_request_duration_seconds_count{route=\"authz\"}"));
    gateway.shutdown().await;
}

#[tokio::test]
async fn an_unknown_token_goes_on_without_an_identity_when_the_upstream_judges_unknown_tokens() {
    let (_emulator, gateway, proxy, authz) = stack(|_| {}).await;
    let (_, tokens) = issued(&proxy.tokens(signup_data("ann@example.com", "pw-ann")).await);
    let (account, token) = tokens[0].clone();
    let deferred =
        "account_gate_token_validations_total{outcome=\"deferred\",reason=\"token_unknown\"}";
    let before = gateway.sample(deferred).await;
    let forged = tampered(&token);
    let answer = decide(
        &authz,
        Convention::Forwarded,
        "GET",
        &format!("/v2/accounts/{account}"),
        &[(ACCOUNT_TOKEN, &forged), ("x-account-id", &account)],
    )
    .await;
    // `unknown = "upstream"`: the ingress forwards it and the upstream, which checks every
    // token itself, judges it; nothing here vouches for it, so no identity is given.
    assert_allowed(&answer, None);
    assert_eq!(gateway.sample(deferred).await, before + 1.0);
    // The upstream's answer is never seen here, so nothing is learnt: asked again, it is
    // deferred again rather than accepted.
    let again = decide(
        &authz,
        Convention::Forwarded,
        "GET",
        &format!("/v2/accounts/{account}"),
        &[(ACCOUNT_TOKEN, &forged)],
    )
    .await;
    assert_allowed(&again, None);
    assert_eq!(gateway.sample(deferred).await, before + 2.0);
    // A token that is not a JWT at all is refused here, as on the proxy.
    let answer = decide(
        &authz,
        Convention::Forwarded,
        "GET",
        &format!("/v2/accounts/{account}"),
        &[(ACCOUNT_TOKEN, "not-a-jwt")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    gateway.shutdown().await;
}

#[tokio::test]
async fn malformed_or_ambiguous_calls_are_refused_and_never_guessed() {
    let (_emulator, gateway, proxy, authz) =
        stack(|c| c.tokens.unknown = UnknownTokens::Reject).await;
    let (member, tokens) = issued(&proxy.tokens(signup_data("ann@example.com", "pw-ann")).await);
    let (account, token) = tokens[0].clone();
    let (_, other) = issued(&proxy.tokens(signup_data("bob@example.com", "pw-bob")).await);
    let other_account = other[0].0.clone();
    let own = format!("/v2/accounts/{account}");
    let theirs = format!("/v2/accounts/{other_account}");
    let t = (ACCOUNT_TOKEN, token.as_str());
    let send = |headers: Vec<(&'static str, String)>| {
        let authz = &authz;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            authz.send(Method::GET, "/", &headers, "").await
        }
    };
    let token_header = || (ACCOUNT_TOKEN, token.clone());

    // Both conventions: the one the gateway picked could be the one the ingress did not set.
    let answer = send(vec![
        token_header(),
        ("x-forwarded-method", "GET".into()),
        ("x-forwarded-uri", own.clone()),
        ("x-original-method", "GET".into()),
        ("x-original-uri", theirs.clone()),
    ])
    .await;
    assert_refused(&answer, StatusCode::BAD_REQUEST, "target_ambiguous");
    // One header twice.
    let answer = send(vec![
        token_header(),
        ("x-forwarded-method", "GET".into()),
        ("x-forwarded-uri", own.clone()),
        ("x-forwarded-uri", theirs.clone()),
    ])
    .await;
    assert_refused(&answer, StatusCode::BAD_REQUEST, "target_ambiguous");
    // The call's `Connection` is the ingress's own: a header it names is still read, never
    // dropped for the call's own path to be judged instead.
    let answer = send(vec![
        token_header(),
        ("connection", "x-forwarded-uri, x-forwarded-method".into()),
        ("x-forwarded-method", "GET".into()),
        ("x-forwarded-uri", theirs.clone()),
    ])
    .await;
    assert_refused(&answer, StatusCode::FORBIDDEN, "scope_mismatch");
    // Half a pair: never the call's own method or path in its place.
    for (name, value) in [
        ("x-forwarded-uri", own.clone()),
        ("x-original-uri", own.clone()),
        ("x-forwarded-method", "GET".to_owned()),
        ("x-original-method", "GET".to_owned()),
    ] {
        let answer = send(vec![token_header(), (name, value)]).await;
        assert_refused(&answer, StatusCode::BAD_REQUEST, "target_header_missing");
    }
    // Targets that are no URI, and methods that are no method.
    for target in ["/v2/accounts/a b", "http://[::1/v2", "/v2/accounts/\tx", ""] {
        let answer = send(vec![
            token_header(),
            ("x-forwarded-method", "GET".into()),
            ("x-forwarded-uri", target.to_owned()),
        ])
        .await;
        assert_refused(&answer, StatusCode::BAD_REQUEST, "target_header_invalid");
    }
    let answer = send(vec![
        token_header(),
        ("x-original-method", "G(E)T".into()),
        ("x-original-uri", own.clone()),
    ])
    .await;
    assert_refused(&answer, StatusCode::BAD_REQUEST, "target_header_invalid");
    // Targets the proxy refuses, refused the same: dot segments, encoded separators, relative.
    for target in [
        format!("/v2/accounts/{other_account}/../{account}"),
        format!("/v2/accounts/{account}/%2e%2e/{other_account}"),
        format!("/v2/accounts/{account}%2F..%2F{other_account}"),
        format!("/v2//accounts/{account}"),
        format!("v2/accounts/{account}"),
        "example.com:443".to_owned(),
    ] {
        let answer = decide(&authz, Convention::Original, "GET", &target, &[t]).await;
        assert!(
            answer.status == StatusCode::BAD_REQUEST,
            "{target}: {}",
            answer.status
        );
        let code = answer.error_code_and_pointer().0;
        assert!(
            code == "path_not_normalized" || code == "target_header_invalid",
            "{target}: {code}"
        );
    }
    // Spellings the canonical form settles: judged on the path that is meant.
    for target in [
        format!("http://evil.example{theirs}"),
        format!("/V2/ACCOUNTS/{other_account}"),
        format!("/v2/%61ccounts/{other_account}"),
    ] {
        let answer = decide(&authz, Convention::Forwarded, "GET", &target, &[t]).await;
        assert_refused(&answer, StatusCode::FORBIDDEN, "scope_mismatch");
    }
    let answer = decide(
        &authz,
        Convention::Forwarded,
        "GET",
        &format!("http://evil.example{own}"),
        &[t],
    )
    .await;
    assert_allowed(&answer, Some((&account, &member)));
    // The caller's identity headers are never echoed as if they had been validated.
    let answer = decide(
        &authz,
        Convention::Forwarded,
        "GET",
        "/v2/catalog",
        &[
            ("x-account-id", &other_account),
            ("x-account-member-id", "m"),
        ],
    )
    .await;
    assert_allowed(&answer, None);
    let answer = decide(
        &authz,
        Convention::Forwarded,
        "GET",
        &own,
        &[
            t,
            ("x-account-id", &other_account),
            ("x-account-member-id", "m"),
        ],
    )
    .await;
    assert_allowed(&answer, Some((&account, &member)));
    // A call outside the path prefix, with no target header.
    let answer = authz.send(Method::GET, &own, &[t], "").await;
    assert_refused(&answer, StatusCode::BAD_REQUEST, "path_prefix_mismatch");
    let answer = authz
        .send(Method::GET, &format!("{PREFIX}x{own}"), &[t], "")
        .await;
    assert_refused(&answer, StatusCode::BAD_REQUEST, "path_prefix_mismatch");
    // Token requests and logout belong to the proxy; their CORS preflight is let through.
    for method in ["POST", "DELETE"] {
        let answer = decide(&authz, Convention::Forwarded, method, TOKENS, &[t]).await;
        assert_refused(
            &answer,
            StatusCode::MISDIRECTED_REQUEST,
            "token_endpoint_on_proxy",
        );
    }
    let preflight = [
        ("origin", "https://shop.example"),
        ("access-control-request-method", "POST"),
    ];
    let answer = decide(&authz, Convention::Original, "OPTIONS", TOKENS, &preflight).await;
    assert_allowed(&answer, None);
    let answer = decide(&authz, Convention::Own, "OPTIONS", &theirs, &preflight).await;
    assert_allowed(&answer, None);
    // CONNECT is no request the proxy would forward.
    let answer = decide(&authz, Convention::Original, "CONNECT", &own, &[t]).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    // Nothing above was a server error.
    let metrics = gateway.metrics().await;
    assert_eq!(
        common::sample(
            &metrics,
            "account_gate_requests_total{code_class=\"5xx\",route=\"authz\"}"
        ),
        0.0
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn the_authz_listener_is_off_unless_configured() {
    let emulator = Emulator::spawn(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions::default(),
    )
    .await
    .expect("emulator");
    let gateway = TestGateway::new(&emulator.url()).start().await;
    assert!(gateway.authz_addr.is_none());
    gateway.shutdown().await;
}

#[tokio::test]
async fn the_authz_listener_speaks_h2c_and_counts_its_connections() {
    let (_emulator, gateway, proxy, _authz) = stack(|_| {}).await;
    let (member, tokens) = issued(&proxy.tokens(signup_data("ann@example.com", "pw-ann")).await);
    let (account, token) = tokens[0].clone();
    let addr = gateway.authz_addr.expect("authz listener");
    // Envoy may call its ext_authz cluster over HTTP/2.
    let request = http::Request::get(format!("http://{addr}{PREFIX}/v2/accounts/{account}"))
        .header(ACCOUNT_TOKEN, token.as_str())
        .body(http_body_util::Full::default())
        .expect("request");
    let client = common::h2_client();
    let response = client.request(request).await.expect("h2c answer");
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-account-id"], account.as_str());
    assert_eq!(response.headers()["x-account-member-id"], member.as_str());
    // The pooled connection is open, and counted on the authz listener.
    let open = "account_gate_connections_open{listener=\"authz\"}";
    assert_eq!(gateway.sample(open).await, 1.0);
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_pinned_source_is_read_alone_and_the_others_are_ignored() {
    use account_gate::config::TargetFrom;
    for (from, convention) in [
        (TargetFrom::Forwarded, Convention::Forwarded),
        (TargetFrom::Original, Convention::Original),
        (TargetFrom::Path, Convention::Own),
    ] {
        let (_emulator, gateway, proxy, authz) = stack(|c| c.authz.target_from = from).await;
        let (member, tokens) =
            issued(&proxy.tokens(signup_data("ann@example.com", "pw-ann")).await);
        let (account, token) = tokens[0].clone();
        let (_, other) = issued(&proxy.tokens(signup_data("bob@example.com", "pw-bob")).await);
        let theirs = format!("/v2/accounts/{}", other[0].0);
        let own = format!("/v2/accounts/{account}");
        // Every other source names another account: ignored, never ambiguous.
        let mut headers = vec![(ACCOUNT_TOKEN, token.as_str())];
        for (name, value) in [
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", theirs.as_str()),
            ("x-original-method", "GET"),
            ("x-original-uri", theirs.as_str()),
        ] {
            let pinned = match from {
                TargetFrom::Forwarded => name.starts_with("x-forwarded"),
                TargetFrom::Original => name.starts_with("x-original"),
                _ => false,
            };
            if !pinned {
                headers.push((name, value));
            }
        }
        let answer = decide(&authz, convention, "GET", &own, &headers).await;
        assert_allowed(&answer, Some((&account, &member)));
        // The pinned source missing is refused, never replaced by another.
        if from != TargetFrom::Path {
            let answer = authz
                .send(Method::GET, &own, &[(ACCOUNT_TOKEN, token.as_str())], "")
                .await;
            assert_refused(&answer, StatusCode::BAD_REQUEST, "target_header_missing");
        }
        gateway.shutdown().await;
    }
}
