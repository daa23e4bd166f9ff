//! The admin API on the admin listener, behind `Authorization: Bearer <admin token>`:
//! `GET /members/{member_id}/tokens` lists a member's live tokens (account, expiry and a
//! fingerprint prefix — never a token) and `DELETE /members/{member_id}/tokens` revokes them.
//! Absent (404) when no admin token is configured.

use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::answer::json_api_error;
use crate::config::Secret;
use crate::proxy::{full_body, Body};
use crate::store::{Store, TokenStore};
use crate::validator::Validator;

/// The member-token endpoints.
pub struct AdminApi {
    /// SHA-256 of the admin token: compared in constant time, and the token itself is not kept.
    token_digest: [u8; 32],
    store: Arc<Store>,
    validator: Arc<Validator>,
}

#[derive(Serialize)]
struct TokenEntry {
    #[serde(rename = "type")]
    kind: &'static str,
    account_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_name: Option<String>,
    expires: String,
    fingerprint_prefix: String,
}

impl AdminApi {
    /// The API guarded by `token`.
    pub fn new(token: &Secret, store: Arc<Store>, validator: Arc<Validator>) -> Self {
        AdminApi {
            token_digest: Sha256::digest(token.expose().as_bytes()).into(),
            store,
            validator,
        }
    }

    /// The answer to `request` if it is for this API (`/members/…`), else `None`.
    pub async fn answer<B>(&self, request: &Request<B>) -> Option<Response<Body>> {
        let member = request
            .uri()
            .path()
            .strip_prefix("/members/")?
            .strip_suffix("/tokens")?;
        if !self.authorized(request) {
            let mut response = json_api_error(
                StatusCode::UNAUTHORIZED,
                "admin_token_invalid",
                "the admin API needs Authorization: Bearer <admin token>".to_owned(),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"account-gate-admin\""),
            );
            return Some(response);
        }
        if member.is_empty() || member.contains('/') {
            return Some(json_api_error(
                StatusCode::NOT_FOUND,
                "not_found",
                "expected /members/{member_id}/tokens".to_owned(),
            ));
        }
        Some(match *request.method() {
            Method::GET => self.list(member).await,
            Method::DELETE => self.revoke(member).await,
            _ => json_api_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "member tokens answer GET and DELETE".to_owned(),
            ),
        })
    }

    fn authorized<B>(&self, request: &Request<B>) -> bool {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match presented {
            Some(token) => {
                let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                bool::from(digest.ct_eq(&self.token_digest))
            }
            None => false,
        }
    }

    async fn list(&self, member: &str) -> Response<Body> {
        let records = match self.store.list_member(member).await {
            Ok(records) => records,
            Err(error) => return unavailable(&error),
        };
        let data: Vec<TokenEntry> = records
            .into_iter()
            .map(|record| TokenEntry {
                kind: "account_management_authentication_token",
                account_id: record.account_id,
                account_name: record.account_name,
                expires: humantime::format_rfc3339_millis(record.expires_at).to_string(),
                fingerprint_prefix: record.fingerprint.prefix(),
            })
            .collect();
        let total = data.len();
        let body = serde_json::json!({
            "data": data,
            "meta": { "member_id": member, "results": { "total": total } },
        });
        let mut response = Response::new(full_body(body.to_string()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }

    async fn revoke(&self, member: &str) -> Response<Body> {
        match self.validator.revoke_member(member).await {
            Ok(revoked) => {
                tracing::info!(member, revoked, "member tokens revoked by the admin API");
                let mut response = Response::new(full_body(Vec::new()));
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            }
            Err(rejection) => json_api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                rejection.code(),
                rejection.to_string(),
            ),
        }
    }
}

fn unavailable(error: &dyn std::fmt::Display) -> Response<Body> {
    json_api_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        error.to_string(),
    )
}
