//! A deliberately lenient upstream, as many web frameworks are: it decodes `%XX` once, reads `\`
//! as `/`, drops `;parameters`, resolves dot segments, merges slashes and matches its routes
//! case-insensitively. It trusts whatever reaches it (it checks no token) and records, for every
//! request, which account, member or route it resolved the path to, so a test can tell whether
//! the gateway let through a request that names someone other than the token's owner.
//!
//! It issues account tokens itself (HS256 with [`SECRET`]) for the users it was started with, so
//! a gateway in issued mode learns them from its `201`s and one in signature mode verifies them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::keys::{now, TestKey};

/// The HS256 secret of the tokens this upstream issues.
pub const SECRET: &[u8] = b"lenient-upstream-hs256-secret-of-32-bytes!";

/// What a lenient server makes of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The token endpoint (`/v2/account-members/tokens`).
    TokenEndpoint,
    /// `/v2/accounts/{id}` and below.
    Account(String),
    /// `/v2/account-members/{id}` and below.
    Member(String),
    /// Anything else.
    Other,
}

/// Resolves a path the lenient way: decode once, `\` is `/`, drop `;params`, resolve dots, merge
/// slashes, match literals case-insensitively.
pub fn resolve(path: &str) -> Resolved {
    let decoded = percent_decode_once(path).replace('\\', "/");
    let mut segments: Vec<String> = Vec::new();
    for segment in decoded.split('/') {
        let segment = segment.split(';').next().unwrap_or("");
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s.to_owned()),
        }
    }
    let is = |i: usize, literal: &str| {
        segments
            .get(i)
            .is_some_and(|s| s.eq_ignore_ascii_case(literal))
    };
    if !is(0, "v2") {
        return Resolved::Other;
    }
    if is(1, "account-members") && is(2, "tokens") && segments.len() == 3 {
        return Resolved::TokenEndpoint;
    }
    match (segments.get(2), is(1, "accounts"), is(1, "account-members")) {
        (Some(id), true, _) => Resolved::Account(id.clone()),
        (Some(id), _, true) => Resolved::Member(id.clone()),
        _ => Resolved::Other,
    }
}

/// `%XX` decoded once, bytes that are not UTF-8 replaced; a `%` without two hex digits kept.
pub fn percent_decode_once(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) if hex(hi).is_some() && hex(lo).is_some() => {
                out.push((hex(hi).unwrap_or(0) * 16 + hex(lo).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A user the upstream can log in.
#[derive(Debug, Clone)]
pub struct User {
    pub username: String,
    pub account_id: String,
    pub member_id: String,
}

/// One request as the upstream received it, and what it made of it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    /// The target exactly as it arrived.
    pub target: String,
    pub resolved: Resolved,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A running lenient upstream; dropping it stops it.
pub struct LenientUpstream {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    _stop: oneshot::Sender<()>,
}

impl LenientUpstream {
    /// Starts one that logs in `users` (any password).
    pub async fn start(users: Vec<User>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let users = Arc::new(users);
        let (stop, mut stopped) = oneshot::channel::<()>();
        let log = received.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    _ = &mut stopped => return,
                };
                let (log, users) = (log.clone(), users.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (log, users) = (log.clone(), users.clone());
                        async move { Ok::<_, Infallible>(answer(request, &log, &users).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        LenientUpstream {
            url: format!("http://{addr}"),
            received,
            _stop: stop,
        }
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}

async fn answer(
    request: Request<Incoming>,
    log: &Mutex<Vec<Received>>,
    users: &[User],
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.to_string(), |pq| pq.as_str().to_owned());
    let resolved = resolve(parts.uri.path());
    log.lock().expect("lock").push(Received {
        method: parts.method.clone(),
        target,
        resolved: resolved.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let (status, document) = match (&resolved, &parts.method) {
        (Resolved::TokenEndpoint, &Method::POST) => issue(&body, users),
        (Resolved::Account(id), _) => (
            StatusCode::OK,
            json!({"data": {"type": "account", "id": id}}),
        ),
        (Resolved::Member(id), _) => (
            StatusCode::OK,
            json!({"data": {"type": "account_member", "id": id}}),
        ),
        _ => (StatusCode::OK, json!({"data": []})),
    };
    let mut response = Response::new(Full::new(Bytes::from(document.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("value"));
    response
}

/// A Commerce-shaped `201` for a known username, else 401.
fn issue(body: &[u8], users: &[User]) -> (StatusCode, Value) {
    let username = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["data"]["username"].as_str().map(str::to_owned));
    let Some(user) = users
        .iter()
        .find(|u| Some(u.username.as_str()) == username.as_deref())
    else {
        return (
            StatusCode::UNAUTHORIZED,
            json!({"errors": [{"status": "401"}]}),
        );
    };
    (StatusCode::CREATED, token_answer(user))
}

/// The `201` body issuing `user` a fresh token.
pub fn token_answer(user: &User) -> Value {
    let token = token_for(user);
    json!({
        "data": [{
            "type": "account_management_authentication_token",
            "account_id": user.account_id,
            "account_name": "lenient",
            "token": token,
            "expires": "2099-01-01T00:00:00.000Z",
        }],
        "meta": {
            "account_member_id": user.member_id,
            "results": {"total": 1},
        },
    })
}

/// A valid token for `user`, signed with [`SECRET`].
pub fn token_for(user: &User) -> String {
    TestKey::hmac(SECRET).sign(
        json!({}),
        json!({
            "sub": user.member_id,
            "scope": user.account_id,
            "iat": now(),
            "exp": now() + 3600,
            "store_id": "lenient-store",
        }),
    )
}
