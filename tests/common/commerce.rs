//! A small Commerce API client for tests, aimed at the emulator directly or through a gateway.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use account_gate::emulator::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_PASSWORD_PROFILE_ID};

/// The account token header of the Commerce API.
pub const ACCOUNT_TOKEN: &str = "EP-Account-Management-Authentication-Token";
/// The token endpoint.
pub const TOKENS: &str = "/v2/account-members/tokens";
/// The JSON:API type of token requests.
pub const TOKEN_TYPE: &str = "account_management_authentication_token";

/// One answer as the client saw it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The first JSON:API error's `code` (the gateway's) and `source.pointer`.
    pub fn error_code_and_pointer(&self) -> (String, String) {
        let body = self.json();
        let error = &body["errors"][0];
        (
            error["code"].as_str().unwrap_or_default().to_owned(),
            error["source"]["pointer"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    }

    /// Asserts a refusal the gateway wrote itself: `status`, a JSON:API error with `code`, and
    /// the bearer challenge on a 401.
    pub fn assert_refused(&self, status: StatusCode, code: &str) {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.error_code_and_pointer().0, code);
        assert_eq!(self.json()["errors"][0]["status"], status.as_str());
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(
                self.headers["www-authenticate"],
                "Bearer realm=\"account-gate\", error=\"invalid_token\""
            );
        }
    }
}

/// A client of one base URL.
pub struct Commerce {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Commerce {
    /// A client of `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str) -> Self {
        Commerce {
            base: base.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends a request and collects the answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body.into())).expect("request");
        let response = self.client.request(request).await.expect("answer");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// Logout (`DELETE` on the token endpoint) with `token`, as a storefront sends it: with its
    /// own access token beside the account token.
    pub async fn logout(&self, token: &str) -> Answer {
        let bearer = format!("Bearer {}", self.implicit().await);
        self.send(
            Method::DELETE,
            TOKENS,
            &[("authorization", &bearer), (ACCOUNT_TOKEN, token)],
            "",
        )
        .await
    }

    /// An implicit-grant access token.
    pub async fn implicit(&self) -> String {
        self.access_token(format!("grant_type=implicit&client_id={DEMO_CLIENT_ID}"))
            .await
    }

    /// A client-credentials access token.
    pub async fn client_credentials(&self) -> String {
        self.access_token(format!(
            "grant_type=client_credentials&client_id={DEMO_CLIENT_ID}&client_secret={DEMO_CLIENT_SECRET}"
        ))
        .await
    }

    /// The access token `/oauth/access_token` answers to `form`.
    async fn access_token(&self, form: String) -> String {
        let answer = self
            .send(Method::POST, "/oauth/access_token", &[], form)
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        answer.json()["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// `POST` a raw body to the token endpoint with `Authorization` and the given content type.
    pub async fn tokens_raw(&self, content_type: &str, body: impl Into<Bytes>) -> Answer {
        let headers = [
            ("authorization", "Bearer test-access-token"),
            ("content-type", content_type),
        ];
        self.send(Method::POST, TOKENS, &headers, body).await
    }

    /// `POST {"data": data}` to the token endpoint with a fresh implicit token.
    pub async fn tokens(&self, data: Value) -> Answer {
        self.tokens_with(data, &[]).await
    }

    /// Like [`Commerce::tokens`], with extra headers.
    pub async fn tokens_with(&self, data: Value, extra: &[(&str, &str)]) -> Answer {
        let bearer = format!("Bearer {}", self.implicit().await);
        let mut headers = vec![
            ("authorization", bearer.as_str()),
            ("content-type", "application/json"),
        ];
        headers.extend_from_slice(extra);
        let body = json!({ "data": data }).to_string();
        self.send(Method::POST, TOKENS, &headers, body).await
    }

    /// `GET path` with a fresh implicit token and the account token.
    pub async fn scoped_get(&self, path: &str, account_token: &str) -> Answer {
        let bearer = format!("Bearer {}", self.implicit().await);
        let headers = [
            ("authorization", bearer.as_str()),
            (ACCOUNT_TOKEN, account_token),
        ];
        self.send(Method::GET, path, &headers, Bytes::new()).await
    }
}

/// A `self_signup` request's `data`.
pub fn signup_data(username: &str, password: &str) -> Value {
    json!({
        "type": TOKEN_TYPE,
        "authentication_mechanism": "self_signup",
        "password_profile_id": DEMO_PASSWORD_PROFILE_ID,
        "username": username,
        "password": password,
        "name": "Test Shopper",
        "email": username,
    })
}

/// A `password` login's `data`.
pub fn password_data(username: &str, password: &str) -> Value {
    json!({
        "type": TOKEN_TYPE,
        "authentication_mechanism": "password",
        "password_profile_id": DEMO_PASSWORD_PROFILE_ID,
        "username": username,
        "password": password,
    })
}

/// The member id and `(account_id, token)` pairs of a `201` token answer.
pub fn issued(answer: &Answer) -> (String, Vec<(String, String)>) {
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
    let body = answer.json();
    let member = body["meta"]["account_member_id"]
        .as_str()
        .expect("member id")
        .to_owned();
    let tokens = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|entry| {
            (
                entry["account_id"].as_str().expect("account").to_owned(),
                entry["token"].as_str().expect("token").to_owned(),
            )
        })
        .collect();
    (member, tokens)
}
