//! One canonical request: the corpus of hostile request targets (`tests/corpus/paths/`) sent
//! byte for byte to gateways in front of a deliberately lenient upstream, and a property test
//! that the gateway either refuses a target or names the same account or member as that
//! upstream does.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use account_gate::config::{TokenMode, UnknownTokens};
use account_gate::scope::{Binding, RouteKind, Rules};
use common::keys::b64;
use common::lenient::{self, LenientUpstream, Received, Resolved, User};
use common::raw::RawClient;
use common::{RunningGateway, TestGateway};
use proptest::prelude::*;
use serde::Deserialize;
use serde_json::Value;

const TOKEN_HEADER: &str = "ep-account-management-authentication-token";

/// One file of the corpus.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Family {
    description: String,
    targets: Vec<String>,
    #[serde(default = "get")]
    methods: Vec<String>,
    token: TokenKind,
    #[serde(default = "no_headers")]
    headers: Vec<Vec<(String, String)>>,
    #[serde(default)]
    body: BodyKind,
    expect: Option<u16>,
}

fn get() -> Vec<String> {
    vec!["GET".to_owned()]
}

fn no_headers() -> Vec<Vec<(String, String)>> {
    vec![Vec::new()]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum TokenKind {
    /// A's valid token.
    A,
    None,
    /// A's token with its payload changed to B's ids (the signature no longer matches).
    ForgedB,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum BodyKind {
    #[default]
    None,
    Login,
    LoginWithoutPassword,
}

/// The two shoppers.
struct Shoppers {
    a: User,
    b: User,
}

impl Shoppers {
    fn new() -> Self {
        let user = |name: &str| User {
            username: format!("{name}@example.com"),
            account_id: uuid::Uuid::new_v4().to_string(),
            member_id: uuid::Uuid::new_v4().to_string(),
        };
        Shoppers {
            a: user("a"),
            b: user("b"),
        }
    }

    fn fill(&self, template: &str) -> String {
        template
            .replace("{A}", &self.a.account_id)
            .replace("{B}", &self.b.account_id)
            .replace("{MA}", &self.a.member_id)
            .replace("{MB}", &self.b.member_id)
    }

    fn body(&self, kind: BodyKind) -> String {
        let mut data = serde_json::json!({
            "type": "account_management_authentication_token",
            "authentication_mechanism": "password",
            "password_profile_id": "c5687352-d102-46fd-b85e-256f10574019",
            "username": self.a.username,
            "password": "correct horse battery staple",
        });
        match kind {
            BodyKind::None => return String::new(),
            BodyKind::Login => {}
            BodyKind::LoginWithoutPassword => {
                data.as_object_mut().map(|d| d.remove("password"));
            }
        }
        serde_json::json!({ "data": data }).to_string()
    }
}

/// How the gateway under test vouches for tokens, and so what the upstream may receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// Issued mode, `unknown = "reject"`: the gateway alone vouches for every token.
    Issued,
    /// Signature mode (HS256): the gateway alone vouches for every token.
    Signature,
    /// Issued mode with the default `unknown = "upstream"`: a token the gateway does not know is
    /// shown to the upstream once, by design, for it to judge. Such a token must still be
    /// scoped to what the upstream resolves, but its signature is the upstream's business.
    IssuedDeferring,
}

async fn gateway(setup: Setup, upstream: &LenientUpstream, dir: &Path) -> RunningGateway {
    let secret = dir.join(format!("{setup:?}.secret"));
    std::fs::write(&secret, lenient::SECRET).expect("secret file");
    TestGateway::new(&upstream.url)
        .configure(|c| {
            // Many logins by one user from one address in a few seconds.
            c.rate_limit.login_per_ip = 0;
            c.rate_limit.login_per_username = 0;
            match setup {
                Setup::Issued => c.tokens.unknown = UnknownTokens::Reject,
                Setup::IssuedDeferring => {}
                Setup::Signature => {
                    c.tokens.mode = TokenMode::Signature;
                    c.tokens.signature.algorithms = vec!["HS256".to_owned()];
                    c.tokens.signature.hs256_secret_file = Some(secret);
                }
            }
        })
        .start()
        .await
}

/// Writes one request exactly as given and reads the answer.
async fn send(
    gateway: &RunningGateway,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &str,
) -> u16 {
    let mut request = format!("{method} {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        request.push_str("Host: storefront.example\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let mut client = RawClient::connect(gateway.addr).await;
    client.send(request.as_bytes()).await;
    match client.answer(Duration::from_secs(10)).await {
        Some(answer) => answer.status,
        None => panic!("no answer to {method} {target}"),
    }
}

/// A's token with the payload changed to name B: well-formed, wrongly signed.
fn forged(token: &str, shoppers: &Shoppers) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let payload = serde_json::json!({
        "sub": shoppers.b.member_id,
        "scope": shoppers.b.account_id,
        "iat": common::keys::now(),
        "exp": common::keys::now() + 3600,
        "store_id": "lenient-store",
    });
    format!("{}.{}.{}", parts[0], b64(payload.to_string()), parts[2])
}

/// What a token presented to the upstream may open, by its (unverified) claims.
fn claims(token: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    Some((
        claims["scope"].as_str()?.to_owned(),
        claims["sub"].as_str()?.to_owned(),
    ))
}

/// Every rule the upstream's view of one request must satisfy; the violations.
fn violations(
    setup: Setup,
    received: &Received,
    shoppers: &Shoppers,
    a_token: &str,
) -> Vec<String> {
    let mut found = Vec::new();
    let header = |name: &str| {
        received
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let token = header(TOKEN_HEADER);
    let preflight = received.method == http::Method::OPTIONS
        && received
            .headers
            .contains_key("access-control-request-method");
    // Who the token presented may act as: A's own token always; any other only where the
    // gateway lets the upstream judge unknown tokens, and then only as its claims say.
    let vouched = match token.as_deref() {
        Some(t) if t == a_token => {
            Some((shoppers.a.account_id.clone(), shoppers.a.member_id.clone()))
        }
        Some(t) if setup == Setup::IssuedDeferring => claims(t),
        _ => None,
    };
    match &received.resolved {
        Resolved::Account(id) | Resolved::Member(id) if preflight => {
            if token.is_some() || !received.body.is_empty() {
                found.push(format!(
                    "preflight to {id} forwarded with a token or a body"
                ));
            }
        }
        Resolved::Account(id) => match &vouched {
            Some((account, _)) if account == id => {}
            _ => found.push(format!("account {id} reached without a token for it")),
        },
        Resolved::Member(id) => match &vouched {
            Some((_, member)) if member == id => {}
            _ => found.push(format!("member {id} reached without a token for it")),
        },
        Resolved::TokenEndpoint => {
            let body: Value = serde_json::from_slice(&received.body).unwrap_or(Value::Null);
            let complete = ["password_profile_id", "username", "password"]
                .iter()
                .all(|field| body["data"][field].is_string());
            let method = &received.method;
            if !(method == http::Method::POST && complete || preflight && received.body.is_empty())
            {
                found.push(format!(
                    "{method} token request reached the upstream unchecked"
                ));
            }
        }
        Resolved::Other => {}
    }
    // Identity headers come from the gateway alone, and only for a token it vouches for (or,
    // deferring, one the upstream accepted before and the gateway learnt): never a client's.
    for (name, ours) in [
        ("x-account-id", vouched.as_ref().map(|(account, _)| account)),
        (
            "x-account-member-id",
            vouched.as_ref().map(|(_, member)| member),
        ),
    ] {
        let values: Vec<_> = received.headers.get_all(name).iter().collect();
        let valid = values.is_empty()
            || (values.len() == 1 && Some(values[0].as_bytes()) == ours.map(|s| s.as_bytes()));
        if !valid {
            found.push(format!("{name}: {values:?} arrived"));
        }
    }
    for name in [
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        if received.headers.contains_key(name) {
            found.push(format!("{name} arrived"));
        }
    }
    found
}

async fn run_corpus(setup: Setup) {
    let shoppers = Shoppers::new();
    let upstream = LenientUpstream::start(vec![shoppers.a.clone(), shoppers.b.clone()]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = gateway(setup, &upstream, dir.path()).await;

    // A logs in through the gateway, which learns (or can verify) the token.
    let a_token = login_token(&gateway, &shoppers).await;
    let json = vec![("Content-Type".to_owned(), "application/json".to_owned())];

    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/paths");
    for entry in std::fs::read_dir(&corpus).expect("corpus directory") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).expect("read");
            let family: Family =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            families.insert(path.display().to_string(), family);
        }
    }

    let mut cases = 0;
    let mut failures = Vec::new();
    for (file, family) in &families {
        let token = match family.token {
            TokenKind::A => Some(a_token.clone()),
            TokenKind::None => None,
            TokenKind::ForgedB => Some(forged(&a_token, &shoppers)),
        };
        for target in &family.targets {
            let target = shoppers.fill(target);
            for method in &family.methods {
                for header_set in &family.headers {
                    cases += 1;
                    let mut headers: Vec<(String, String)> = header_set
                        .iter()
                        .map(|(n, v)| (n.clone(), shoppers.fill(v)))
                        .collect();
                    if let Some(token) = &token {
                        headers.push((TOKEN_HEADER.to_owned(), token.clone()));
                    }
                    let before = upstream.received().len();
                    let body = shoppers.body(family.body);
                    let status = send(&gateway, method, &target, &headers, &body).await;
                    let case = format!("{setup:?} {method} {target} {header_set:?} ({file})");
                    let checked =
                        !(setup == Setup::IssuedDeferring && family.token == TokenKind::ForgedB);
                    match family.expect {
                        Some(expected) if checked && status != expected => {
                            failures.push(format!("{case}: status {status}, expected {expected}"))
                        }
                        _ if status >= 500 => failures.push(format!("{case}: status {status}")),
                        _ => {}
                    }
                    for received in &upstream.received()[before..] {
                        for violation in violations(setup, received, &shoppers, &a_token) {
                            failures.push(format!("{case}: {violation} (as {})", received.target));
                        }
                    }
                }
            }
        }
    }
    assert!(cases >= 60, "the corpus has {cases} cases");

    // What is forwarded is exactly the canonical form the decision was made on.
    let token = vec![(TOKEN_HEADER.to_owned(), a_token.clone())];
    for (sent, method, headers, body, forwarded) in [
        (
            "/V2/%61ccounts/{A}/x%c3%a9?q=%2f;..",
            "GET",
            &token,
            BodyKind::None,
            "/v2/accounts/{A}/x%C3%A9?q=%2f;..",
        ),
        (
            "http://evil.example/v2/Account-Members/{MA}/",
            "GET",
            &token,
            BodyKind::None,
            "/v2/account-members/{MA}/",
        ),
        (
            "/V2/account%2Dmembers/Tokens/",
            "POST",
            &json,
            BodyKind::Login,
            "/v2/account-members/tokens/",
        ),
    ] {
        let status = send(
            &gateway,
            method,
            &shoppers.fill(sent),
            headers,
            &shoppers.body(body),
        )
        .await;
        assert!(status == 200 || status == 201, "{sent}: {status}");
        let received = upstream.received().pop().expect("forwarded");
        assert_eq!(received.target, shoppers.fill(forwarded), "{sent}");
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let families_without_description = families.values().filter(|f| f.description.is_empty());
    assert_eq!(families_without_description.count(), 0);
    gateway.shutdown().await;
}

/// Logs A in through the gateway and returns the token from the `201`.
async fn login_token(gateway: &RunningGateway, shoppers: &Shoppers) -> String {
    let body = shoppers.body(BodyKind::Login);
    let request = http::Request::post(gateway.url("/v2/account-members/tokens"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("request");
    let (response, body) = common::send(request).await;
    assert_eq!(response.status(), 201);
    common::json(&body)["data"][0]["token"]
        .as_str()
        .expect("token")
        .to_owned()
}

#[tokio::test]
async fn the_path_corpus_leaks_nothing_in_issued_mode() {
    run_corpus(Setup::Issued).await;
}

#[tokio::test]
async fn the_path_corpus_leaks_nothing_in_signature_mode() {
    run_corpus(Setup::Signature).await;
}

#[tokio::test]
async fn the_path_corpus_leaks_nothing_when_unknown_tokens_are_deferred() {
    run_corpus(Setup::IssuedDeferring).await;
}

/// The pieces random targets are made of: the dangerous alphabet and its encodings, the route
/// literals in several cases, and the ids.
const PIECES: &[&str] = &[
    "v2",
    "V2",
    "%76%32",
    "accounts",
    "ACCOUNTS",
    "%61ccounts",
    "account-members",
    "Account-Members",
    "account%2Dmembers",
    "tokens",
    "TOKENS",
    "A",
    "B",
    "MA",
    "MB",
    "a",
    "b",
    "/",
    "//",
    ".",
    "..",
    "%2e",
    "%2E",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "\\",
    ";",
    ";x",
    "%3B",
    "%25",
    "%2561",
    "%00",
    "%41",
    "%61",
    "%2D",
    "-",
    "%",
    "%4",
    "x",
    "0",
    "Z",
];

fn target() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 0..10).prop_map(|pieces| {
        let mut target = String::from("/");
        let mut previous_was_separator = true;
        for piece in pieces {
            // Mostly whole segments, sometimes pieces glued into one.
            if !previous_was_separator && !piece.starts_with(['/', ';', '%', '.', '\\', '-']) {
                target.push('/');
            }
            target.push_str(piece);
            previous_was_separator = piece.ends_with('/');
        }
        target
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// For random targets over the dangerous alphabet, the gateway refuses the target or names
    /// the same account, member or token endpoint as the lenient upstream does with what the
    /// gateway forwards.
    #[test]
    fn the_gateway_refuses_or_agrees_with_a_lenient_upstream(target in target()) {
        let rules = Rules::new(Vec::new(), "/v2/account-members/tokens");
        let Ok(uri) = target.parse::<http::Uri>() else {
            // Not a request target hyper would accept either.
            return Ok(());
        };
        let Ok(route) = rules.route(&uri) else {
            return Ok(()); // refused: 400 path_not_normalized
        };
        let gateway = match (route.kind, route.binding()) {
            (RouteKind::TokenEndpoint, _) => Resolved::TokenEndpoint,
            (_, Some((Binding::Account, id))) => Resolved::Account(lenient::percent_decode_once(id)),
            (_, Some((Binding::Member, id))) => Resolved::Member(lenient::percent_decode_once(id)),
            (_, None) => Resolved::Other,
        };
        let forwarded = route.target.path();
        let upstream = lenient::resolve(forwarded);
        prop_assert_eq!(&gateway, &upstream, "{} forwarded as {}", target, forwarded);
        // And the lenient upstream reads the client's own spelling no differently: the
        // canonical form changes the spelling, never the meaning.
        prop_assert_eq!(&lenient::resolve(uri.path()), &upstream, "{}", target);
    }
}
