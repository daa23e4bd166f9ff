//! Maps a request to its handler, counts it, and turns any refusal into its JSON:API answer.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};

use super::accounts;
use super::error::{ApiError, Body};
use super::oauth;
use super::request::read_body;
use super::state::State;
use super::tokens;

/// Answers one request; never fails, because every refusal is itself an answer.
pub(crate) async fn handle(state: Arc<State>, request: Request<Incoming>) -> Response<Body> {
    state.counters.count(request.uri().path());
    let method = request.method().clone();
    let response = route(&state, request)
        .await
        .unwrap_or_else(ApiError::into_response);
    tracing::debug!(%method, status = response.status().as_u16(), "emulator answered");
    response
}

async fn route(state: &State, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let headers = &parts.headers;
    match (&parts.method, segments.as_slice()) {
        (&Method::POST, ["oauth", "access_token"]) => {
            oauth::access_token(state, &read_body(state, body).await?)
        }
        (&Method::POST, ["v2", "account-members", "tokens"]) => {
            tokens::issue(state, headers, &read_body(state, body).await?)
        }
        (&Method::GET, ["v2", "account-members", id]) if is_id(id) => {
            accounts::member(state, headers, id)
        }
        (&Method::POST, ["v2", "accounts"]) => {
            accounts::create(state, headers, &read_body(state, body).await?)
        }
        (&Method::GET, ["v2", "accounts", id]) if is_id(id) => accounts::get(state, headers, id),
        (&Method::GET, ["v2", "accounts", id, "addresses"]) if is_id(id) => {
            accounts::addresses(state, headers, id)
        }
        (&Method::POST, ["v2", "accounts", id, "account-memberships"]) if is_id(id) => {
            accounts::add_membership(state, headers, id, &read_body(state, body).await?)
        }
        (&Method::GET, ["v2", "carts" | "orders"]) => {
            accounts::account_collection(state, headers, path)
        }
        (
            &Method::POST,
            ["v2", "authentication-realms", realm, "password-profiles", profile, "one-time-password-token-request"],
        ) => tokens::request_otp(
            state,
            headers,
            realm,
            profile,
            &read_body(state, body).await?,
        ),
        (method, _) => Err(ApiError::NotFound(format!("no route for {method} {path}"))),
    }
}

/// A path segment that can name a resource: not empty, and not the `tokens` sub-route.
fn is_id(segment: &str) -> bool {
    !segment.is_empty() && segment != "tokens"
}
