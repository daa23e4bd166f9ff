//! The hostile-token corpus: every file in `tests/corpus/tokens/` is one account token (given
//! verbatim, or as a recipe built here because it needs a key or the current time) and the
//! answer each named gateway must give it. Every case runs against real gateways — issued mode
//! in front of the emulator (with `unknown` at its default `upstream`, and at `reject`) and
//! signature mode in front of a counting upstream (HS256 + RS256 keys, RS256 only, and with
//! `issuer`/`audience` configured) — and none may reach an upstream.
//!
//! A case file (TOML):
//!
//! ```toml
//! description = "what it is and why it must be refused"
//! # The token: one of `literal` (verbatim), `base = "genuine"` (the gateway's own valid token)
//! # or a recipe: `header` and `claims` (JSON text; `{account}`, `{member}`, `{other}`,
//! # `{now}`, `{now+N}`, `{now-N}` are filled in), `key` (how it is signed), `pad_claim`.
//! header = '{"alg":"none","typ":"JWT"}'
//! key = "none"
//! tamper = ["suffix:2:xyz"]       # applied in order to the finished token (see `tamper`)
//! path = "/v2/accounts/{account}" # the default
//! copies = 1                      # how many token headers the request carries
//!
//! [[expect]]
//! gateway = "signature"           # issued | issued-strict | signature | signature-rs256 | signature-iss-aud
//! status = 401
//! code = "algorithm_not_allowed"
//! ```

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use account_gate::config::{Config, TokenMode, UnknownTokens};
use account_gate::emulator::{Emulator, EmulatorHandle, EmulatorOptions, DEMO_SIGNING_SECRET};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use common::commerce::{issued, password_data, signup_data, Commerce, ACCOUNT_TOKEN};
use common::keys::{RSA_A_KEY, RSA_A_PUB, RSA_B_KEY};
use common::upstream::TestUpstream;
use common::{RunningGateway, TestGateway};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde::Deserialize;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus/tokens");
const ISSUER: &str = "https://issuer.test/stores/7c1d5c4e";
const AUDIENCE: &str = "account-gate";
const GATEWAYS: [&str; 5] = [
    "issued",
    "issued-strict",
    "signature",
    "signature-rs256",
    "signature-iss-aud",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    description: String,
    literal: Option<String>,
    base: Option<String>,
    header: Option<String>,
    claims: Option<String>,
    key: Option<String>,
    /// Adds a `pad` claim of this many characters before signing (a huge but genuine token).
    pad_claim: Option<usize>,
    #[serde(default)]
    tamper: Vec<String>,
    path: Option<String>,
    copies: Option<usize>,
    expect: Vec<Expect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    gateway: String,
    status: u16,
    code: String,
}

/// One gateway of the corpus run, with what its genuine tokens look like.
struct Target {
    gateway: RunningGateway,
    /// Who its genuine token belongs to.
    account: String,
    member: String,
    /// A token it accepts, for `base = "genuine"` and the positive control.
    genuine: String,
    /// The key its genuine recipes are signed with.
    trusted_key: &'static str,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Fills `{account}`, `{member}`, `{other}` and `{now±N}` in a JSON template.
fn fill(template: &str, target: &Target) -> String {
    let mut text = template
        .replace("{account}", &target.account)
        .replace("{member}", &target.member)
        .replace("{other}", "another-account-0000");
    while let Some(start) = text.find("{now") {
        let end = start + text[start..].find('}').expect("closing brace of {now…}");
        let offset: i64 = match &text[start + 4..end] {
            "" => 0,
            signed => signed.trim_start_matches('+').parse().expect("{now±N}"),
        };
        text.replace_range(start..=end, &(now() + offset).to_string());
    }
    text
}

/// The algorithm and key a `key` name stands for; `None` for an unsigned token.
fn key(name: &str) -> Option<(Algorithm, EncodingKey)> {
    let hs = |secret: &[u8]| EncodingKey::from_secret(secret);
    let rsa = |pem: &[u8]| EncodingKey::from_rsa_pem(pem).expect("rsa key");
    Some(match name {
        "hs-demo" => (Algorithm::HS256, hs(DEMO_SIGNING_SECRET)),
        "hs512-demo" => (Algorithm::HS512, hs(DEMO_SIGNING_SECRET)),
        "hs-other" => (Algorithm::HS256, hs(b"an attacker's own secret")),
        // The classic `kid: ../../dev/null` attack signs with the empty file's contents.
        "hs-empty" => (Algorithm::HS256, hs(b"")),
        // Algorithm confusion: the RSA *public* key used as an HMAC secret.
        "hs-rsa-a-public" => (Algorithm::HS256, hs(RSA_A_PUB)),
        "rsa-a" => (Algorithm::RS256, rsa(RSA_A_KEY)),
        "rsa-b" => (Algorithm::RS256, rsa(RSA_B_KEY)),
        "none" => return None,
        other => panic!("unknown key {other:?}"),
    })
}

fn default_header(key_name: &str) -> String {
    let alg = key(key_name).map_or_else(
        || "none".to_owned(),
        |(alg, _)| {
            serde_json::to_value(alg)
                .expect("alg")
                .as_str()
                .expect("alg name")
                .to_owned()
        },
    );
    format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#)
}

/// Claims like the upstream's, plus the `iss`/`aud` the strictest gateway asks for.
const GENUINE_CLAIMS: &str = r#"{"sub":"{member}","scope":"{account}","exp":{now+3600},"iat":{now},"store_id":"7c1d5c4e","realm_id":"2f9e4a7b","iss":"https://issuer.test/stores/7c1d5c4e","aud":"account-gate"}"#;

/// Signs `header.claims` (both verbatim JSON text) with the named key.
fn signed(header: &str, claims: &str, key_name: &str) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let signature = match key(key_name) {
        None => String::new(),
        Some((alg, key)) => {
            jsonwebtoken::crypto::sign(input.as_bytes(), &key, alg).expect("signing")
        }
    };
    format!("{input}.{signature}")
}

/// Builds the case's token for `target`, tampered as the case says.
fn token(case: &Case, target: &Target) -> Vec<u8> {
    let token = if let Some(literal) = &case.literal {
        literal.clone()
    } else if case.base.as_deref() == Some("genuine") {
        target.genuine.clone()
    } else {
        let key_name = case.key.as_deref().unwrap_or(target.trusted_key);
        let header = case
            .header
            .as_deref()
            .map_or_else(|| default_header(key_name), |h| fill(h, target));
        let mut claims = fill(case.claims.as_deref().unwrap_or(GENUINE_CLAIMS), target);
        if let Some(pad) = case.pad_claim {
            let mut object: serde_json::Value = serde_json::from_str(&claims).expect("claims");
            object["pad"] = "a".repeat(pad).into();
            claims = object.to_string();
        }
        signed(&header, &claims, key_name)
    };
    let mut token = token.into_bytes();
    for op in &case.tamper {
        token = tamper(token, op, target);
    }
    token
}

/// One tamper operation on a finished token:
/// `flip:I` changes the middle character of segment I; `set:I:TEXT` replaces segment I;
/// `suffix:I:TEXT` appends to segment I; `drop:I` removes segment I; `append:TEXT`,
/// `prepend:TEXT`; `truncate:N` keeps N bytes; `append_hex:HEX` appends raw bytes;
/// `header:JSON` / `payload:JSON` replace the first / second segment with the encoded JSON
/// (templates filled), keeping the signature.
fn tamper(token: Vec<u8>, op: &str, target: &Target) -> Vec<u8> {
    let (name, arg) = op.split_once(':').unwrap_or((op, ""));
    let text = || String::from_utf8(token.clone()).expect("tamper a text token");
    let segments = || -> Vec<String> { text().split('.').map(str::to_owned).collect() };
    let index_and = |arg: &str| -> (usize, String) {
        let (i, rest) = arg.split_once(':').unwrap_or((arg, ""));
        (i.parse().expect("segment index"), rest.to_owned())
    };
    match name {
        "flip" => {
            let mut parts = segments();
            let (i, _) = index_and(arg);
            let mut chars: Vec<char> = parts[i].chars().collect();
            let mid = chars.len() / 2;
            chars[mid] = if chars[mid] == 'A' { 'B' } else { 'A' };
            parts[i] = chars.into_iter().collect();
            parts.join(".").into_bytes()
        }
        "set" | "suffix" => {
            let mut parts = segments();
            let (i, value) = index_and(arg);
            if name == "set" {
                parts[i] = value;
            } else {
                parts[i].push_str(&value);
            }
            parts.join(".").into_bytes()
        }
        "header" | "payload" => {
            let mut parts = segments();
            parts[usize::from(name == "payload")] = b64(fill(arg, target));
            parts.join(".").into_bytes()
        }
        "drop" => {
            let mut parts = segments();
            parts.remove(arg.parse().expect("segment index"));
            parts.join(".").into_bytes()
        }
        "append" => [token, arg.as_bytes().to_vec()].concat(),
        "prepend" => [arg.as_bytes().to_vec(), token].concat(),
        "truncate" => token[..arg.parse::<usize>().expect("length")].to_vec(),
        "append_hex" => [token, hex::decode(arg).expect("hex")].concat(),
        other => panic!("unknown tamper op {other:?}"),
    }
}

fn load_corpus() -> Vec<(String, Case)> {
    common::load_corpus(CORPUS)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(bytes))
        .expect("write key file");
    path
}

async fn emulator() -> EmulatorHandle {
    Emulator::spawn(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions::default(),
    )
    .await
    .expect("emulator")
}

/// Gateway settings every target shares: heads large enough that a 64 KiB token reaches the
/// token checks instead of being stopped as a 431.
fn common_settings(c: &mut Config) {
    c.server.max_header_bytes = 256 * 1024;
}

/// An issued-mode gateway in front of the emulator, with a token it learnt by forwarding a
/// sign-up (or a login of the member made through the other gateway).
async fn issued_target(
    emulator: &EmulatorHandle,
    unknown: UnknownTokens,
    username: &str,
    sign_up: bool,
) -> Target {
    let gateway = TestGateway::new(&emulator.url())
        .configure(|c| {
            common_settings(c);
            c.tokens.unknown = unknown;
        })
        .start()
        .await;
    let api = Commerce::new(&gateway.url(""));
    let data = if sign_up {
        signup_data(username, "correct horse battery")
    } else {
        password_data(username, "correct horse battery")
    };
    let (member, tokens) = issued(&api.tokens(data).await);
    let (account, genuine) = tokens.into_iter().next().expect("a token");
    Target {
        gateway,
        account,
        member,
        genuine,
        trusted_key: "hs-demo",
    }
}

/// A signature-mode gateway in front of `upstream`.
async fn signature_target(
    upstream: &TestUpstream,
    keys: &Path,
    algorithms: &[&str],
    claims_checked: bool,
) -> Target {
    let secret = write(keys, "hs256.secret", DEMO_SIGNING_SECRET);
    let public = write(keys, "rsa-a.pem", RSA_A_PUB);
    let hs = algorithms.contains(&"HS256");
    let gateway = TestGateway::new(&upstream.url)
        .configure(|c| {
            common_settings(c);
            c.tokens.mode = TokenMode::Signature;
            let signature = &mut c.tokens.signature;
            signature.algorithms = algorithms.iter().map(|a| a.to_string()).collect();
            signature.public_key_file = Some(public);
            signature.hs256_secret_file = hs.then_some(secret);
            if claims_checked {
                signature.issuer = Some(ISSUER.to_owned());
                signature.audience = Some(AUDIENCE.to_owned());
            }
        })
        .start()
        .await;
    let trusted_key = if hs { "hs-demo" } else { "rsa-a" };
    let mut target = Target {
        gateway,
        account: "account-1".to_owned(),
        member: "member-1".to_owned(),
        genuine: String::new(),
        trusted_key,
    };
    target.genuine = signed(
        &default_header(trusted_key),
        &fill(GENUINE_CLAIMS, &target),
        trusted_key,
    );
    target
}

/// Sends `GET path` with `copies` token headers; the status and JSON body (if any).
async fn send(
    target: &Target,
    path: &str,
    token: &[u8],
    copies: usize,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let mut request = Request::get(target.gateway.url(path));
    for _ in 0..copies {
        let value = HeaderValue::from_bytes(token).expect("a token the client can send");
        request = request.header(ACCOUNT_TOKEN, value);
    }
    let request = request.body(Full::default()).expect("request");
    let (response, body) = common::send(request).await;
    (response.status(), response.headers().clone(), body)
}

fn code_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_token_is_refused_locally_with_its_code() {
    let cases = load_corpus();
    assert!(cases.len() >= 40, "only {} token cases", cases.len());

    let emulator = emulator().await;
    let upstream = TestUpstream::http().await;
    let keys = tempfile::tempdir().expect("tempdir");
    let mut targets: BTreeMap<&str, Target> = BTreeMap::new();
    targets.insert(
        "issued",
        issued_target(
            &emulator,
            UnknownTokens::Upstream,
            "corpus@example.com",
            true,
        )
        .await,
    );
    targets.insert(
        "issued-strict",
        issued_target(
            &emulator,
            UnknownTokens::Reject,
            "corpus@example.com",
            false,
        )
        .await,
    );
    targets.insert(
        "signature",
        signature_target(&upstream, keys.path(), &["HS256", "RS256"], false).await,
    );
    targets.insert(
        "signature-rs256",
        signature_target(&upstream, keys.path(), &["RS256"], false).await,
    );
    targets.insert(
        "signature-iss-aud",
        signature_target(&upstream, keys.path(), &["HS256", "RS256"], true).await,
    );

    // Positive control: each gateway's genuine token reaches its upstream, so a zero count
    // below means "refused", not "never could have arrived".
    for (name, target) in &targets {
        let (emulator_before, upstream_before) = (emulator.requests(), upstream.calls());
        let path = format!("/v2/accounts/{}", target.account);
        let (status, _, body) = send(target, &path, target.genuine.as_bytes(), 1).await;
        // The emulator answers 401 itself without an access token; what matters is that the
        // gateway let the request through, without a refusal code of its own.
        assert_eq!(
            code_of(&body),
            "",
            "{name}: genuine token refused: {status} {}",
            String::from_utf8_lossy(&body)
        );
        let reached = emulator.requests() - emulator_before + upstream.calls() as u64
            - upstream_before as u64;
        assert_eq!(reached, 1, "{name}: the genuine token was forwarded once");
    }

    let (emulator_before, upstream_before) = (emulator.requests(), upstream.calls());
    let mut failures = Vec::new();
    let mut runs = 0;
    let mut used = std::collections::BTreeSet::new();
    for (name, case) in &cases {
        assert!(!case.expect.is_empty(), "{name}: no expectation");
        assert!(!case.description.is_empty(), "{name}: no description");
        for expect in &case.expect {
            let target = targets
                .get(expect.gateway.as_str())
                .unwrap_or_else(|| panic!("{name}: unknown gateway {:?}", expect.gateway));
            used.insert(expect.gateway.as_str());
            let token = token(case, target);
            let path = fill(
                case.path.as_deref().unwrap_or("/v2/accounts/{account}"),
                target,
            );
            let (status, headers, body) =
                send(target, &path, &token, case.copies.unwrap_or(1)).await;
            runs += 1;
            assert!(
                !status.is_server_error(),
                "{name} on {}: {status}",
                expect.gateway
            );
            let code = code_of(&body);
            if status == StatusCode::UNAUTHORIZED {
                assert_eq!(
                    headers.get("www-authenticate").map(|v| v.as_bytes()),
                    Some(&b"Bearer realm=\"account-gate\", error=\"invalid_token\""[..]),
                    "{name} on {}",
                    expect.gateway
                );
            }
            if (status.as_u16(), code.as_str()) != (expect.status, expect.code.as_str()) {
                failures.push(format!(
                    "{name} on {}: expected {} {}, got {} {} ({})",
                    expect.gateway,
                    expect.status,
                    expect.code,
                    status.as_u16(),
                    code,
                    case.description
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(used.len(), GATEWAYS.len(), "every gateway is exercised");
    assert_eq!(
        emulator.requests() - emulator_before,
        0,
        "the emulator saw a hostile token"
    );
    assert_eq!(
        upstream.calls() - upstream_before,
        0,
        "the upstream saw a hostile token: {:?}",
        upstream.seen().last().map(|s| s.uri.clone())
    );
    println!("{} token cases, {runs} runs", cases.len());

    for (_, target) in targets {
        target.gateway.shutdown().await;
    }
}
