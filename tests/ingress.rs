//! account-gate behind a real ingress: nginx (`auth_request`) and Caddy (`forward_auth`), each
//! run from the configuration shipped under `deploy/ingress/`, in front of the emulator. Token
//! requests and logout go through the gateway's proxy listener; every other request is judged
//! by its authz listener and, when allowed, reaches the upstream (a recorder in front of the
//! emulator) with the identity the gateway vouched for, and only that.
//!
//! Each test starts its own nginx or Caddy on a free port, and skips loudly where the server is
//! not installed, except in CI (`CI=true`), where `.ci/run` installs both.

mod common;

use std::path::Path;

use account_gate::config::{TargetFrom, UnknownTokens};
use account_gate::emulator::{Emulator, EmulatorHandle, EmulatorOptions};
use common::commerce::{issued, signup_data, Answer, Commerce, ACCOUNT_TOKEN};
use common::ingress::{free_port, shipped, tool, Ingress, Recorder};
use common::{RunningGateway, TestGateway};
use http::{Method, StatusCode};

/// The emulator, the recorder in front of it, and a gateway whose proxy forwards to the
/// emulator, with its authz listener on, reading the judged request from `target_from` (as
/// deploy/ingress/README.md recommends for each ingress). `unknown = "reject"`: behind the
/// shipped configurations every token is issued through the gateway's proxy and so is known.
async fn stack(target_from: TargetFrom) -> (EmulatorHandle, Recorder, RunningGateway) {
    let emulator = Emulator::spawn(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions::default(),
    )
    .await
    .expect("emulator");
    let recorder = Recorder::start(&emulator.url()).await;
    let gateway = TestGateway::new(&emulator.url())
        .configure(|c| {
            c.authz.listen = Some("127.0.0.1:0".parse().expect("addr"));
            c.tokens.unknown = UnknownTokens::Reject;
            c.authz.target_from = target_from;
        })
        .start()
        .await;
    (emulator, recorder, gateway)
}

fn addrs(gateway: &RunningGateway) -> (String, String) {
    (
        gateway.addr.to_string(),
        gateway.authz_addr.expect("authz listener").to_string(),
    )
}

/// The token with one character of its signature changed.
fn tampered(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let i = token.rfind('.').expect("signature") + 3;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("ascii")
}

fn status(answer: &Answer, expected: StatusCode, ingress: &Ingress) {
    assert_eq!(
        answer.status,
        expected,
        "{}\n--- ingress log ---\n{}",
        String::from_utf8_lossy(&answer.body),
        ingress.log()
    );
}

/// The walk every ingress must pass: sign-up through the proxy, own account 200 with the
/// identity at the upstream, another account 403, a tampered token 401, no token 401, logout
/// then 401; refusals never reach the upstream, and a client's own identity headers never do.
async fn walk(ingress: &Ingress, recorder: &Recorder, gateway: &RunningGateway) {
    let api = Commerce::new(&ingress.url());
    let (member, tokens) = issued(&api.tokens(signup_data("ann@example.com", "pw-ann")).await);
    let (account, token) = tokens[0].clone();
    let (bob, other) = issued(&api.tokens(signup_data("bob@example.com", "pw-bob")).await);
    let other_account = other[0].0.clone();
    // Learnt by the gateway: the sign-up went through its proxy.
    assert!(gateway.sample("account_gate_tokens_issued_total").await >= 2.0);

    let own = format!("/v2/accounts/{account}");
    let answer = api.scoped_get(&own, &token).await;
    status(&answer, StatusCode::OK, ingress);
    assert_eq!(answer.json()["data"]["id"], account.as_str());
    let seen = recorder.last(&own);
    assert_eq!(seen.headers["x-account-id"], account.as_str());
    assert_eq!(seen.headers["x-account-member-id"], member.as_str());

    // A client's own identity headers are replaced by the vouched ones…
    let bearer = format!("Bearer {}", api.implicit().await);
    let answer = api
        .send(
            Method::GET,
            &own,
            &[
                ("authorization", &bearer),
                (ACCOUNT_TOKEN, &token),
                ("x-account-id", &other_account),
                ("x-account-member-id", &bob),
            ],
            "",
        )
        .await;
    status(&answer, StatusCode::OK, ingress);
    let seen = recorder.last(&own);
    let values = |name: &str| seen.headers.get_all(name).iter().count();
    assert_eq!(values("x-account-id"), 1);
    assert_eq!(seen.headers["x-account-id"], account.as_str());
    assert_eq!(values("x-account-member-id"), 1);
    assert_eq!(seen.headers["x-account-member-id"], member.as_str());
    // …and removed where nothing was vouched for.
    let answer = api
        .send(
            Method::GET,
            "/v2/catalog/products",
            &[
                ("authorization", &bearer),
                ("x-account-id", &other_account),
                ("x-account-member-id", &bob),
            ],
            "",
        )
        .await;
    assert_ne!(answer.status, StatusCode::UNAUTHORIZED);
    let seen = recorder.last("/v2/catalog/products");
    for name in ["x-account-id", "x-account-member-id"] {
        let value = seen.headers.get(name).map(|v| v.as_bytes().to_vec());
        assert!(
            value.as_deref().is_none_or(<[u8]>::is_empty),
            "{name} reached the upstream: {value:?}"
        );
    }

    let before = recorder.received().len();
    let answer = api
        .scoped_get(&format!("/v2/accounts/{other_account}"), &token)
        .await;
    status(&answer, StatusCode::FORBIDDEN, ingress);
    let answer = api.scoped_get(&own, &tampered(&token)).await;
    status(&answer, StatusCode::UNAUTHORIZED, ingress);
    assert!(answer.headers.contains_key("www-authenticate"));
    let answer = api
        .send(Method::GET, &own, &[("authorization", &bearer)], "")
        .await;
    status(&answer, StatusCode::UNAUTHORIZED, ingress);
    // `scoped_get` asks the upstream for an access token first (allowed, no account token):
    // only those three requests reached it, none of the refused ones.
    let after = recorder.received();
    assert!(
        after[before..]
            .iter()
            .all(|r| r.path == "/oauth/access_token"),
        "a refused request reached the upstream: {:?}",
        after[before..].iter().map(|r| &r.path).collect::<Vec<_>>()
    );

    let logout = api.logout(&token).await;
    status(&logout, StatusCode::NO_CONTENT, ingress);
    let answer = api.scoped_get(&own, &token).await;
    status(&answer, StatusCode::UNAUTHORIZED, ingress);

    let metrics = gateway.metrics().await;
    let authz = |class: &str| {
        common::sample(
            &metrics,
            &format!("account_gate_requests_total{{code_class=\"{class}\",route=\"authz\"}}"),
        )
    };
    assert!(authz("2xx") >= 3.0);
    assert!(authz("4xx") >= 4.0);
    assert_eq!(authz("5xx"), 0.0);
}

#[tokio::test]
async fn nginx_auth_request_in_front_of_the_emulator() {
    let Some(nginx) = tool("nginx", &["/usr/sbin/nginx"], "nginx") else {
        return;
    };
    let (_emulator, recorder, gateway) = stack(TargetFrom::Original).await;
    let (proxy, authz) = addrs(&gateway);
    let port = free_port();
    let listen = format!("listen 127.0.0.1:{port};");
    let server = shipped(
        "nginx/account-gate.conf",
        &[
            ("account-gate:8080", &proxy),
            ("account-gate:8081", &authz),
            ("https://useast.api.elasticpath.com", &recorder.url()),
            ("listen 80;", &listen),
        ],
    );
    let ingress = Ingress::nginx(Path::new(&nginx), &server, port).await;
    walk(&ingress, &recorder, &gateway).await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn caddy_forward_auth_in_front_of_the_emulator() {
    let Some(caddy) = tool("caddy", &[], "caddy") else {
        return;
    };
    let (_emulator, recorder, gateway) = stack(TargetFrom::Forwarded).await;
    let (proxy, authz) = addrs(&gateway);
    let port = free_port();
    let site = format!("http://127.0.0.1:{port}");
    let caddyfile = shipped(
        "caddy/Caddyfile",
        &[
            ("account-gate:8080", &proxy),
            ("account-gate:8081", &authz),
            ("https://useast.api.elasticpath.com", &recorder.url()),
            ("shop.example.com {", &format!("{site} {{")),
        ],
    );
    let ingress = Ingress::caddy(Path::new(&caddy), &caddyfile, port).await;
    walk(&ingress, &recorder, &gateway).await;
    gateway.shutdown().await;
}

/// The untested configurations at least name what the gateway expects: the token endpoint, the
/// identity headers, the path prefix the documentation tells to set, and the removal of a
/// client's identity headers before the decision.
#[test]
fn every_shipped_configuration_names_the_gateways_paths_and_headers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/ingress");
    for file in [
        "nginx/account-gate.conf",
        "caddy/Caddyfile",
        "traefik/account-gate.yaml",
        "envoy/envoy.yaml",
        "istio/authorization-policy.yaml",
    ] {
        let text = std::fs::read_to_string(dir.join(file)).expect("shipped");
        assert!(text.contains("/v2/account-members/tokens"), "{file}");
        if file.ends_with(".yaml") {
            let docs: Vec<serde_norway::Value> = serde_norway::Deserializer::from_str(&text)
                .map(|doc| serde::Deserialize::deserialize(doc).expect("YAML"))
                .collect();
            assert!(!docs.is_empty(), "{file}");
        }
    }
    for file in [
        "nginx/account-gate.conf",
        "caddy/Caddyfile",
        "traefik/account-gate.yaml",
        "envoy/envoy.yaml",
        "istio/mesh-config.yaml",
    ] {
        let text = std::fs::read_to_string(dir.join(file))
            .expect("shipped")
            .to_lowercase();
        assert!(text.contains("x-account-id"), "{file}");
        assert!(text.contains("x-account-member-id"), "{file}");
    }
    for file in ["envoy/envoy.yaml", "istio/mesh-config.yaml"] {
        let text = std::fs::read_to_string(dir.join(file)).expect("shipped");
        let prefix = text
            .lines()
            .find_map(|line| {
                let line = line.trim();
                line.strip_prefix("path_prefix:")
                    .or_else(|| line.strip_prefix("pathPrefix:"))
            })
            .unwrap_or_else(|| panic!("{file} has no path prefix"))
            .trim();
        assert_eq!(prefix, "/authz", "{file}");
        // The value the README tells to set is one the gateway accepts.
        let config = format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[authz]\npath_prefix = \"{prefix}\"\n"
        );
        assert!(account_gate::config::from_toml_str(&config, &[]).is_ok());
    }
    for file in ["envoy/envoy.yaml", "istio/authorization-policy.yaml"] {
        let text = std::fs::read_to_string(dir.join(file)).expect("shipped");
        assert!(text.contains("- remove: x-account-id"), "{file}");
    }
}
