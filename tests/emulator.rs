//! The Commerce emulator over real sockets: every mechanism's happy path and refusals, the
//! exact 201 shape, multi-account members, scoped reads, HTTP/2 and the request counters.

use std::net::SocketAddr;

use account_gate::emulator::{
    mint_token, Emulator, EmulatorHandle, EmulatorOptions, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET,
    DEMO_PASSWORD_PROFILE_ID, DEMO_REALM_ID, DEMO_SIGNING_SECRET, DEMO_STORE_ID,
};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

const ACCOUNT_TOKEN: &str = "EP-Account-Management-Authentication-Token";
const TOKEN_TYPE: &str = "account_management_authentication_token";

/// A running emulator and a client for it.
struct Api {
    emulator: EmulatorHandle,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// One answer: status, HTTP version, Content-Type and the JSON body (`Null` when empty).
struct Answer {
    status: StatusCode,
    version: Version,
    content_type: Option<String>,
    body: Value,
}

impl Api {
    async fn start() -> Self {
        Self::with(EmulatorOptions::default()).await
    }

    async fn with(opts: EmulatorOptions) -> Self {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let emulator = Emulator::spawn(addr, opts).await.unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self { emulator, client }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        send_with(
            &self.client,
            &self.emulator.url(),
            method,
            path,
            headers,
            body,
        )
        .await
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.send(Method::GET, path, headers, Bytes::new()).await
    }

    async fn post_json(&self, path: &str, headers: &[(&str, &str)], body: Value) -> Answer {
        self.send(Method::POST, path, headers, body.to_string())
            .await
    }

    async fn access_token(&self, form: &str) -> Answer {
        self.send(Method::POST, "/oauth/access_token", &[], form.to_owned())
            .await
    }

    async fn implicit(&self) -> String {
        let answer = self
            .access_token(&format!("grant_type=implicit&client_id={DEMO_CLIENT_ID}"))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.body["access_token"].as_str().unwrap().to_owned()
    }

    async fn client_credentials(&self) -> String {
        let form = format!(
            "grant_type=client_credentials&client_id={DEMO_CLIENT_ID}&client_secret={DEMO_CLIENT_SECRET}"
        );
        let answer = self.access_token(&form).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.body["access_token"].as_str().unwrap().to_owned()
    }

    /// `POST /v2/account-members/tokens` with an implicit token and `data` as given.
    async fn tokens(&self, data: Value) -> Answer {
        let bearer = format!("Bearer {}", self.implicit().await);
        self.post_json(
            "/v2/account-members/tokens",
            &[("authorization", &bearer)],
            json!({ "data": data }),
        )
        .await
    }

    async fn sign_up(&self, username: &str, password: &str) -> Answer {
        self.tokens(signup_data(username, password)).await
    }

    async fn password_login(&self, username: &str, password: &str) -> Answer {
        self.tokens(json!({
            "type": TOKEN_TYPE,
            "authentication_mechanism": "password",
            "password_profile_id": DEMO_PASSWORD_PROFILE_ID,
            "username": username,
            "password": password,
        }))
        .await
    }

    /// A GET with a fresh implicit token and, if given, an account token.
    async fn scoped_get(&self, path: &str, account_token: Option<&str>) -> Answer {
        let bearer = format!("Bearer {}", self.implicit().await);
        let mut headers = vec![("authorization", bearer.as_str())];
        if let Some(token) = account_token {
            headers.push((ACCOUNT_TOKEN, token));
        }
        self.get(path, &headers).await
    }
}

async fn send_with(
    client: &Client<HttpConnector, Full<Bytes>>,
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.into())).unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let version = response.version();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    Answer {
        status,
        version,
        content_type,
        body,
    }
}

fn signup_data(username: &str, password: &str) -> Value {
    json!({
        "type": TOKEN_TYPE,
        "authentication_mechanism": "self_signup",
        "password_profile_id": DEMO_PASSWORD_PROFILE_ID,
        "username": username,
        "password": password,
        "name": format!("{username} name"),
        "email": username,
    })
}

/// The raw JSON payload of a JWT, so tests see claim types exactly as sent.
fn jwt_payload(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Asserts a JSON:API error answer with `status`, and returns its `detail`.
fn assert_error(answer: &Answer, status: StatusCode) -> String {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.content_type.as_deref(), Some("application/json"));
    let error = &answer.body["errors"][0];
    assert_eq!(
        error["status"],
        json!(status.as_str()),
        "status is a string"
    );
    assert_eq!(error["title"], json!(status.canonical_reason().unwrap()));
    error["detail"].as_str().unwrap().to_owned()
}

fn member_id(answer: &Answer) -> String {
    answer.body["meta"]["account_member_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn first_token(answer: &Answer) -> (String, String) {
    let entry = &answer.body["data"][0];
    (
        entry["account_id"].as_str().unwrap().to_owned(),
        entry["token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn access_tokens_for_both_grants() {
    let api = Api::start().await;
    let implicit = api
        .access_token(&format!("grant_type=implicit&client_id={DEMO_CLIENT_ID}"))
        .await;
    assert_eq!(implicit.status, StatusCode::OK);
    assert_eq!(implicit.body["token_type"], "Bearer");
    assert_eq!(implicit.body["identifier"], "implicit");
    assert_eq!(implicit.body["expires_in"], 3600);
    assert!(implicit.body["expires"].is_u64());
    assert!(implicit.body["access_token"].as_str().unwrap().len() >= 32);

    let form = format!(
        "grant_type=client_credentials&client_id={DEMO_CLIENT_ID}&client_secret={DEMO_CLIENT_SECRET}"
    );
    let credentials = api.access_token(&form).await;
    assert_eq!(credentials.status, StatusCode::OK);
    assert_eq!(credentials.body["identifier"], "client_credentials");
    assert_ne!(
        credentials.body["access_token"],
        implicit.body["access_token"]
    );
}

#[tokio::test]
async fn access_token_refusals() {
    let api = Api::start().await;
    let cases = [
        (
            "grant_type=implicit&client_id=someone-else",
            StatusCode::UNAUTHORIZED,
        ),
        (
            "grant_type=client_credentials&client_id=demo-client-id&client_secret=wrong",
            StatusCode::UNAUTHORIZED,
        ),
        (
            "grant_type=client_credentials&client_id=demo-client-id",
            StatusCode::BAD_REQUEST,
        ),
        ("client_id=demo-client-id", StatusCode::BAD_REQUEST),
        ("grant_type=implicit", StatusCode::BAD_REQUEST),
        (
            "grant_type=password&client_id=demo-client-id",
            StatusCode::BAD_REQUEST,
        ),
        ("grant_type=implicit&client_id=%zz", StatusCode::BAD_REQUEST),
        ("", StatusCode::BAD_REQUEST),
    ];
    for (form, status) in cases {
        let answer = api.access_token(form).await;
        assert_error(&answer, status);
    }
}

#[tokio::test]
async fn self_signup_answers_in_the_seed_shape() {
    let api = Api::start().await;
    let answer = api.sign_up("ron@swanson.com", "pa$$word").await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(answer.content_type.as_deref(), Some("application/json"));
    let body = &answer.body;

    assert_eq!(
        body["meta"]["page"],
        json!({"limit": 20, "offset": 0, "current": 1, "total": 1})
    );
    assert_eq!(body["meta"]["results"]["total"], 1);
    let member = member_id(&answer);
    assert!(uuid::Uuid::parse_str(&member).is_ok());

    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    let entry = &data[0];
    assert_eq!(entry["account_name"], "ron@swanson.com name");
    assert!(uuid::Uuid::parse_str(entry["account_id"].as_str().unwrap()).is_ok());
    assert_eq!(entry["type"], TOKEN_TYPE);

    let token = entry["token"].as_str().unwrap();
    let claims = jwt_payload(token);
    assert!(claims["exp"].is_i64(), "exp is a number: {claims}");
    assert!(claims["iat"].is_i64(), "iat is a number: {claims}");
    let (exp, iat) = (
        claims["exp"].as_i64().unwrap(),
        claims["iat"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 24 * 60 * 60);
    assert_eq!(claims["sub"], json!(member));
    assert_eq!(claims["scope"], entry["account_id"]);
    assert_eq!(claims["store_id"], DEMO_STORE_ID);
    assert_eq!(claims["realm_id"], DEMO_REALM_ID);

    let expires = entry["expires"].as_str().unwrap();
    let expires_at = humantime::parse_rfc3339(expires).unwrap();
    let expires_secs = expires_at.duration_since(std::time::UNIX_EPOCH).unwrap();
    assert_eq!(expires_secs.as_secs() as i64, exp);
    assert!(expires.ends_with(".000Z"), "millis and Z: {expires}");

    // The signature is an HS256 over the emulator's secret.
    let key = jsonwebtoken::DecodingKey::from_secret(DEMO_SIGNING_SECRET);
    let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap();

    let links = &body["links"];
    let page = format!(
        "{}/v2/account-members/tokens?page[offset]=0&page[limit]=20",
        api.emulator.url()
    );
    for name in ["current", "first", "last"] {
        assert_eq!(links[name], json!(page));
    }
    assert!(links["next"].is_null());
    assert!(links["prev"].is_null());
}

#[tokio::test]
async fn duplicate_signup_conflicts() {
    let api = Api::start().await;
    assert_eq!(
        api.sign_up("dup@example.com", "one").await.status,
        StatusCode::CREATED
    );
    let again = api.sign_up("dup@example.com", "two").await;
    assert_error(&again, StatusCode::CONFLICT);
    // The first password still works and the member still has one account.
    let login = api.password_login("dup@example.com", "one").await;
    assert_eq!(login.status, StatusCode::CREATED);
    assert_eq!(login.body["meta"]["results"]["total"], 1);
}

#[tokio::test]
async fn signup_validation() {
    let api = Api::start().await;
    for field in [
        "password_profile_id",
        "username",
        "password",
        "name",
        "email",
    ] {
        let mut data = signup_data("v@example.com", "pw");
        data.as_object_mut().unwrap().remove(field);
        let answer = api.tokens(data).await;
        assert_error(&answer, StatusCode::BAD_REQUEST);
        let pointer = &answer.body["errors"][0]["source"]["pointer"];
        assert_eq!(pointer, &json!(format!("/data/{field}")), "{field}");

        let mut data = signup_data("v@example.com", "pw");
        data[field] = json!(42);
        assert_error(&api.tokens(data).await, StatusCode::BAD_REQUEST);
    }

    let mut wrong_type = signup_data("v@example.com", "pw");
    wrong_type["type"] = json!("token");
    assert_error(&api.tokens(wrong_type).await, StatusCode::BAD_REQUEST);

    let mut unknown = signup_data("v@example.com", "pw");
    unknown["authentication_mechanism"] = json!("magic");
    assert_error(&api.tokens(unknown).await, StatusCode::BAD_REQUEST);

    let mut other_profile = signup_data("v@example.com", "pw");
    other_profile["password_profile_id"] = json!("00000000-0000-4000-8000-000000000000");
    assert_error(&api.tokens(other_profile).await, StatusCode::NOT_FOUND);

    let bearer = format!("Bearer {}", api.implicit().await);
    for body in ["not json", "[]", r#"{"data":"x"}"#, "{}"] {
        let answer = api
            .send(
                Method::POST,
                "/v2/account-members/tokens",
                &[("authorization", &bearer)],
                body,
            )
            .await;
        assert_error(&answer, StatusCode::BAD_REQUEST);
    }

    // Without a valid store access token nothing is created.
    let body = json!({ "data": signup_data("v@example.com", "pw") });
    for headers in [
        vec![],
        vec![("authorization", "Bearer nope")],
        vec![("authorization", "Basic x")],
    ] {
        let answer = api
            .post_json("/v2/account-members/tokens", &headers, body.clone())
            .await;
        assert_error(&answer, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        api.sign_up("v@example.com", "pw").await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn password_login() {
    let api = Api::start().await;
    let signup = api.sign_up("pw@example.com", "secret").await;
    let login = api.password_login("pw@example.com", "secret").await;
    assert_eq!(login.status, StatusCode::CREATED, "{}", login.body);
    assert_eq!(member_id(&login), member_id(&signup));
    assert_eq!(first_token(&login).0, first_token(&signup).0);

    assert_error(
        &api.password_login("pw@example.com", "wrong").await,
        StatusCode::UNAUTHORIZED,
    );
    assert_error(
        &api.password_login("nobody@example.com", "secret").await,
        StatusCode::UNAUTHORIZED,
    );
    let missing = api
        .tokens(
            json!({"type": TOKEN_TYPE, "authentication_mechanism": "password",
            "password_profile_id": DEMO_PASSWORD_PROFILE_ID, "username": "pw@example.com"}),
        )
        .await;
    assert_error(&missing, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn passwordless_login_with_single_use_otp() {
    let api = Api::start().await;
    let signup = api.sign_up("otp@example.com", "unused").await;
    let bearer = format!("Bearer {}", api.implicit().await);
    let otp_path = |realm: &str, profile: &str| {
        format!(
            "/v2/authentication-realms/{realm}/password-profiles/{profile}/one-time-password-token-request"
        )
    };
    let request = |username: &str, purpose: &str| json!({"data": {"type": "one_time_password_token_request", "username": username, "purpose": purpose}});
    let path = otp_path(DEMO_REALM_ID, DEMO_PASSWORD_PROFILE_ID);
    let auth = [("authorization", bearer.as_str())];

    let accepted = api
        .post_json(
            &path,
            &auth,
            request("otp@example.com", "passwordless_authentication"),
        )
        .await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED);
    let otp = api.emulator.last_otp("otp@example.com").unwrap();

    let login = |code: String| {
        api.tokens(json!({
            "type": TOKEN_TYPE,
            "authentication_mechanism": "passwordless",
            "password_profile_id": DEMO_PASSWORD_PROFILE_ID,
            "username": "otp@example.com",
            "one_time_password_token": code,
        }))
    };
    assert_error(
        &login("not-the-otp".to_owned()).await,
        StatusCode::UNAUTHORIZED,
    );
    let ok = login(otp.clone()).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    assert_eq!(member_id(&ok), member_id(&signup));
    assert_error(&login(otp).await, StatusCode::UNAUTHORIZED);
    assert_eq!(api.emulator.last_otp("otp@example.com"), None);

    // Unknown users are accepted (no enumeration) but get no OTP.
    let unknown = api
        .post_json(
            &path,
            &auth,
            request("ghost@example.com", "passwordless_authentication"),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::ACCEPTED);
    assert_eq!(api.emulator.last_otp("ghost@example.com"), None);

    let bad_purpose = api
        .post_json(&path, &auth, request("otp@example.com", "fun"))
        .await;
    assert_error(&bad_purpose, StatusCode::BAD_REQUEST);
    let wrong_realm = otp_path("other-realm", DEMO_PASSWORD_PROFILE_ID);
    let answer = api
        .post_json(
            &wrong_realm,
            &auth,
            request("otp@example.com", "passwordless_authentication"),
        )
        .await;
    assert_error(&answer, StatusCode::NOT_FOUND);
    let wrong_profile = otp_path(DEMO_REALM_ID, "other-profile");
    let answer = api
        .post_json(
            &wrong_profile,
            &auth,
            request("otp@example.com", "passwordless_authentication"),
        )
        .await;
    assert_error(&answer, StatusCode::NOT_FOUND);
    let unauthenticated = api
        .post_json(
            &path,
            &[],
            request("otp@example.com", "passwordless_authentication"),
        )
        .await;
    assert_error(&unauthenticated, StatusCode::UNAUTHORIZED);
}

fn oidc_data(code: &str) -> Value {
    json!({
        "type": TOKEN_TYPE,
        "authentication_mechanism": "oidc",
        "oauth_authorization_code": code,
        "oauth_redirect_uri": "https://shop.example/callback",
        "oauth_code_verifier": "verifier-0123456789",
    })
}

#[tokio::test]
async fn oidc_maps_a_code_to_the_same_member() {
    let api = Api::start().await;
    let alice = api.tokens(oidc_data("alice")).await;
    assert_eq!(alice.status, StatusCode::CREATED, "{}", alice.body);
    assert_eq!(alice.body["meta"]["results"]["total"], 1);
    let again = api.tokens(oidc_data("alice")).await;
    assert_eq!(member_id(&again), member_id(&alice));
    assert_eq!(first_token(&again).0, first_token(&alice).0);
    let bob = api.tokens(oidc_data("bob")).await;
    assert_ne!(member_id(&bob), member_id(&alice));

    for field in [
        "oauth_authorization_code",
        "oauth_redirect_uri",
        "oauth_code_verifier",
    ] {
        let mut data = oidc_data("alice");
        data[field] = json!("");
        assert_error(&api.tokens(data).await, StatusCode::BAD_REQUEST);
        let mut data = oidc_data("alice");
        data.as_object_mut().unwrap().remove(field);
        assert_error(&api.tokens(data).await, StatusCode::BAD_REQUEST);
    }
}

/// Signs up `username` and adds two more accounts; returns the member id.
async fn member_with_three_accounts(api: &Api, username: &str) -> String {
    let member = member_id(&api.sign_up(username, "pw").await);
    let admin = format!("Bearer {}", api.client_credentials().await);
    let auth = [("authorization", admin.as_str())];
    for name in ["second", "third"] {
        let created = api
            .post_json(
                "/v2/accounts",
                &auth,
                json!({"data": {"type": "account", "name": name, "legal_name": format!("{name} Ltd")}}),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        assert_eq!(created.body["data"]["type"], "account");
        assert_eq!(created.body["data"]["name"], name);
        let account_id = created.body["data"]["id"].as_str().unwrap();
        let membership = api
            .post_json(
                &format!("/v2/accounts/{account_id}/account-memberships"),
                &auth,
                json!({"data": {"type": "account_membership", "account_member_id": member}}),
            )
            .await;
        assert_eq!(
            membership.status,
            StatusCode::CREATED,
            "{}",
            membership.body
        );
        assert_eq!(membership.body["data"]["type"], "account_membership");
    }
    member
}

#[tokio::test]
async fn three_accounts_give_three_tokens() {
    let api = Api::start().await;
    let member = member_with_three_accounts(&api, "three@example.com").await;
    let login = api.password_login("three@example.com", "pw").await;
    assert_eq!(login.status, StatusCode::CREATED);
    assert_eq!(login.body["meta"]["results"]["total"], 3);
    let data = login.body["data"].as_array().unwrap();
    let names: Vec<&str> = data
        .iter()
        .map(|e| e["account_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["three@example.com name", "second", "third"]);
    let mut scopes = Vec::new();
    for entry in data {
        let claims = jwt_payload(entry["token"].as_str().unwrap());
        assert_eq!(claims["sub"], json!(member));
        assert_eq!(claims["scope"], entry["account_id"]);
        scopes.push(claims["scope"].as_str().unwrap().to_owned());
    }
    scopes.sort();
    scopes.dedup();
    assert_eq!(scopes.len(), 3);
}

#[tokio::test]
async fn account_admin_refusals() {
    let api = Api::start().await;
    let member = member_id(&api.sign_up("admin@example.com", "pw").await);
    let admin = format!("Bearer {}", api.client_credentials().await);
    let implicit = format!("Bearer {}", api.implicit().await);
    let account = json!({"data": {"type": "account", "name": "n", "legal_name": "l"}});

    let forbidden = api
        .post_json(
            "/v2/accounts",
            &[("authorization", &implicit)],
            account.clone(),
        )
        .await;
    assert_error(&forbidden, StatusCode::FORBIDDEN);
    assert_error(
        &api.post_json("/v2/accounts", &[], account.clone()).await,
        StatusCode::UNAUTHORIZED,
    );
    let no_legal = json!({"data": {"type": "account", "name": "n"}});
    let answer = api
        .post_json("/v2/accounts", &[("authorization", &admin)], no_legal)
        .await;
    assert_error(&answer, StatusCode::BAD_REQUEST);

    let membership = json!({"data": {"type": "account_membership", "account_member_id": member}});
    let unknown = api
        .post_json(
            "/v2/accounts/00000000-0000-4000-8000-000000000000/account-memberships",
            &[("authorization", &admin)],
            membership.clone(),
        )
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND);

    // The sign-up account already has this member: a second membership conflicts.
    let login = api.password_login("admin@example.com", "pw").await;
    let (account_id, _) = first_token(&login);
    let duplicate = api
        .post_json(
            &format!("/v2/accounts/{account_id}/account-memberships"),
            &[("authorization", &admin)],
            membership,
        )
        .await;
    assert_error(&duplicate, StatusCode::CONFLICT);
}

#[tokio::test]
async fn scoped_reads_check_the_account_token() {
    let api = Api::start().await;
    let signup = api.sign_up("reader@example.com", "pw").await;
    let member = member_id(&signup);
    let (account, token) = first_token(&signup);
    let other = api.sign_up("other@example.com", "pw").await;
    let (other_account, other_token) = first_token(&other);
    let opts = api.emulator.options().clone();

    let own = api
        .scoped_get(&format!("/v2/accounts/{account}"), Some(&token))
        .await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    assert_eq!(own.body["data"]["id"], json!(account));
    assert_eq!(own.body["data"]["type"], "account");
    assert_eq!(own.body["data"]["name"], "reader@example.com name");
    assert_eq!(own.body["data"]["legal_name"], "reader@example.com name");

    let addresses = api
        .scoped_get(&format!("/v2/accounts/{account}/addresses"), Some(&token))
        .await;
    assert_eq!(addresses.status, StatusCode::OK);
    assert_eq!(addresses.body["data"], json!([]));
    assert_eq!(addresses.body["meta"]["results"]["total"], 0);

    let me = api
        .scoped_get(&format!("/v2/account-members/{member}"), Some(&token))
        .await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["data"]["type"], "account_member");
    assert_eq!(me.body["data"]["email"], "reader@example.com");
    assert_eq!(me.body["data"]["name"], "reader@example.com name");

    let carts = api.scoped_get("/v2/carts", Some(&token)).await;
    assert_eq!(carts.status, StatusCode::OK);
    assert_eq!(carts.body["data"], json!([]));

    // Someone else's account or member: 403.
    for path in [
        format!("/v2/accounts/{other_account}"),
        format!("/v2/accounts/{other_account}/addresses"),
        format!("/v2/account-members/{}", member_id(&other)),
    ] {
        assert_error(
            &api.scoped_get(&path, Some(&token)).await,
            StatusCode::FORBIDDEN,
        );
    }
    assert_error(
        &api.scoped_get(&format!("/v2/accounts/{account}"), Some(&other_token))
            .await,
        StatusCode::FORBIDDEN,
    );

    // Missing, expired, forged or garbage tokens: 401.
    let expired = mint_token(&opts, &member, &account, -10);
    let foreign_opts = EmulatorOptions {
        signing_secret: b"another store".to_vec(),
        ..opts.clone()
    };
    let forged = mint_token(&foreign_opts, &member, &account, 3600);
    for path in [
        format!("/v2/accounts/{account}"),
        format!("/v2/account-members/{member}"),
        "/v2/carts".to_owned(),
    ] {
        assert_error(&api.scoped_get(&path, None).await, StatusCode::UNAUTHORIZED);
        for bad in [expired.as_str(), forged.as_str(), "garbage"] {
            assert_error(
                &api.scoped_get(&path, Some(bad)).await,
                StatusCode::UNAUTHORIZED,
            );
        }
        let no_bearer = api.get(&path, &[(ACCOUNT_TOKEN, &token)]).await;
        assert_error(&no_bearer, StatusCode::UNAUTHORIZED);
    }

    // A valid token for an account that does not exist: 404.
    let ghost = "00000000-0000-4000-8000-000000000000";
    let minted = mint_token(&opts, &member, ghost, 3600);
    assert_error(
        &api.scoped_get(&format!("/v2/accounts/{ghost}"), Some(&minted))
            .await,
        StatusCode::NOT_FOUND,
    );
    assert_error(
        &api.scoped_get("/v2/nothing-here", Some(&token)).await,
        StatusCode::NOT_FOUND,
    );
    assert_error(&api.get("/", &[]).await, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn switch_account_reissues_tokens_for_every_account() {
    let api = Api::start().await;
    let member = member_with_three_accounts(&api, "switch@example.com").await;
    let login = api.password_login("switch@example.com", "pw").await;
    let (_, token) = first_token(&login);
    let bearer = format!("Bearer {}", api.implicit().await);
    let switch = json!({"data": {"type": TOKEN_TYPE, "authentication_mechanism": TOKEN_TYPE}});

    let switched = api
        .post_json(
            "/v2/account-members/tokens",
            &[("authorization", &bearer), (ACCOUNT_TOKEN, &token)],
            switch.clone(),
        )
        .await;
    assert_eq!(switched.status, StatusCode::CREATED, "{}", switched.body);
    assert_eq!(member_id(&switched), member);
    assert_eq!(switched.body["meta"]["results"]["total"], 3);
    let accounts = |answer: &Answer| -> Vec<Value> {
        let data = answer.body["data"].as_array().unwrap();
        data.iter()
            .map(|entry| entry["account_id"].clone())
            .collect()
    };
    assert_eq!(accounts(&switched), accounts(&login));

    let opts = api.emulator.options().clone();
    let expired = mint_token(&opts, &member, "any", -10);
    let stranger = mint_token(&opts, "00000000-0000-4000-8000-000000000000", "any", 3600);
    for headers in [
        vec![("authorization", bearer.as_str())],
        vec![
            ("authorization", bearer.as_str()),
            (ACCOUNT_TOKEN, expired.as_str()),
        ],
        vec![
            ("authorization", bearer.as_str()),
            (ACCOUNT_TOKEN, stranger.as_str()),
        ],
        vec![(ACCOUNT_TOKEN, token.as_str())],
    ] {
        let answer = api
            .post_json("/v2/account-members/tokens", &headers, switch.clone())
            .await;
        assert_error(&answer, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn http2_prior_knowledge() {
    let api = Api::start().await;
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(true);
    let h2: Client<HttpConnector, Full<Bytes>> = builder.build_http();
    let form = format!("grant_type=implicit&client_id={DEMO_CLIENT_ID}");
    let url = api.emulator.url();
    let answer = send_with(&h2, &url, Method::POST, "/oauth/access_token", &[], form).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.version, Version::HTTP_2);
    let missing = send_with(&h2, &url, Method::GET, "/v2/carts", &[], Bytes::new()).await;
    assert_eq!(missing.version, Version::HTTP_2);
    assert_error(&missing, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn request_counters() {
    let api = Api::start().await;
    assert_eq!(api.emulator.requests(), 0);
    let signup = api.sign_up("count@example.com", "pw").await; // access token + tokens
    let (account, token) = first_token(&signup);
    api.scoped_get(&format!("/v2/accounts/{account}"), Some(&token))
        .await; // + access token
    api.get("/v2/accounts/unknown/addresses?page[limit]=1", &[])
        .await;
    assert_eq!(api.emulator.requests(), 5);
    assert_eq!(api.emulator.requests_to("/oauth/access_token"), 2);
    assert_eq!(api.emulator.requests_to("/v2/account-members/tokens"), 1);
    assert_eq!(api.emulator.requests_to("/v2/accounts/"), 2);
    assert_eq!(
        api.emulator.requests_to("/v2/accounts/unknown/addresses"),
        1
    );
    assert_eq!(api.emulator.requests_to("/v2/carts"), 0);
    assert_eq!(api.emulator.requests_to("/"), 5);
}

#[tokio::test]
async fn bodies_over_the_cap_are_refused() {
    let api = Api::with(EmulatorOptions {
        max_body_bytes: 1024,
        ..EmulatorOptions::default()
    })
    .await;
    let bearer = format!("Bearer {}", api.implicit().await);
    let mut data = signup_data("big@example.com", "pw");
    data["name"] = json!("x".repeat(4096));
    let answer = api
        .post_json(
            "/v2/account-members/tokens",
            &[("authorization", &bearer)],
            json!({"data": data}),
        )
        .await;
    assert_error(&answer, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn full_tables_answer_503() {
    let api = Api::with(EmulatorOptions {
        max_members: 1,
        max_access_tokens: 3,
        ..EmulatorOptions::default()
    })
    .await;
    assert_eq!(
        api.sign_up("first@example.com", "pw").await.status,
        StatusCode::CREATED
    );
    // Second sign-up: its access token is the 2nd of 3; the member table is full.
    assert_error(
        &api.sign_up("second@example.com", "pw").await,
        StatusCode::SERVICE_UNAVAILABLE,
    );
    assert_error(
        &api.tokens(oidc_data("carol")).await,
        StatusCode::SERVICE_UNAVAILABLE,
    );
    // All three access tokens are live now, so a fourth is refused rather than grown.
    let form = format!("grant_type=implicit&client_id={DEMO_CLIENT_ID}");
    assert_error(
        &api.access_token(&form).await,
        StatusCode::SERVICE_UNAVAILABLE,
    );
}

#[tokio::test]
async fn serve_on_a_bound_listener_until_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(Emulator::serve(
        listener,
        EmulatorOptions::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let answer = send_with(
        &client,
        &format!("http://{addr}"),
        Method::GET,
        "/v2/carts",
        &[],
        Bytes::new(),
    )
    .await;
    assert_error(&answer, StatusCode::UNAUTHORIZED);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn handle_shutdown_closes_the_port() {
    let api = Api::start().await;
    let addr = api.emulator.addr();
    assert!(api.emulator.url().ends_with(&format!(":{}", addr.port())));
    api.emulator.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn expired_access_tokens_are_refused() {
    // A zero lifetime expires the token at issue, so expiry is tested without waiting.
    let api = Api::with(EmulatorOptions {
        access_token_lifetime: std::time::Duration::ZERO,
        ..EmulatorOptions::default()
    })
    .await;
    assert_error(
        &api.sign_up("late@example.com", "pw").await,
        StatusCode::UNAUTHORIZED,
    );
}

#[tokio::test]
async fn expired_otps_are_refused() {
    let api = Api::with(EmulatorOptions {
        otp_lifetime: std::time::Duration::ZERO,
        ..EmulatorOptions::default()
    })
    .await;
    api.sign_up("slow@example.com", "pw").await;
    let bearer = format!("Bearer {}", api.implicit().await);
    let path = format!(
        "/v2/authentication-realms/{DEMO_REALM_ID}/password-profiles/{DEMO_PASSWORD_PROFILE_ID}/one-time-password-token-request"
    );
    let request = json!({"data": {"type": "one_time_password_token_request",
        "username": "slow@example.com", "purpose": "passwordless_authentication"}});
    let accepted = api
        .post_json(&path, &[("authorization", &bearer)], request)
        .await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED);
    let otp = api.emulator.last_otp("slow@example.com").unwrap();
    let login = api
        .tokens(json!({
            "type": TOKEN_TYPE,
            "authentication_mechanism": "passwordless",
            "password_profile_id": DEMO_PASSWORD_PROFILE_ID,
            "username": "slow@example.com",
            "one_time_password_token": otp,
        }))
        .await;
    assert_error(&login, StatusCode::UNAUTHORIZED);
}
