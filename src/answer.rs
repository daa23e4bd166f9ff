//! The one place where a refusal or failure becomes the HTTP answer a client sees.
//!
//! Every module reports problems as its own typed error; [`GatewayError`] gathers them and
//! [`GatewayError::into_response`] writes the JSON:API error body, so every synthetic answer of
//! the gateway has the same shape: `{"errors":[{"status":"502","title":…,"code":…,"detail":…}]}`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

use crate::proxy::{
    full_body, AuthzError, Body, CloseAfter, CloseReason, ConnectError, UpstreamError,
};
use crate::scope::PathError;
use crate::signup::SignupError;
use crate::validator::Rejection;

/// Everything the data plane can answer by itself instead of forwarding.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The upstream could not be reached, failed, or was too slow.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// A token request failed its checks or a rate limit.
    #[error(transparent)]
    Signup(#[from] SignupError),
    /// An account token was refused.
    #[error(transparent)]
    Token(#[from] Rejection),
    /// The request target has no canonical form (400 `path_not_normalized`).
    #[error("{0}; send the path in normal form")]
    Path(#[from] PathError),
    /// A method the route does not take (405 `method_not_allowed` with `Allow`).
    #[error("{method} is not allowed here (allowed: {allow})")]
    MethodNotAllowed {
        method: http::Method,
        allow: &'static str,
    },
    /// A call to the authz listener that names no request it can judge.
    #[error(transparent)]
    Authz(#[from] AuthzError),
}

/// One JSON:API error object, as the Commerce API writes them.
#[derive(Debug, Serialize)]
struct ErrorObject<'a> {
    status: &'a str,
    title: &'a str,
    code: &'a str,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<ErrorSource<'a>>,
}

/// Where in the request the problem is (JSON:API `source`).
#[derive(Debug, Serialize)]
struct ErrorSource<'a> {
    pointer: &'a str,
}

#[derive(Debug, Serialize)]
struct ErrorDocument<'a> {
    errors: [ErrorObject<'a>; 1],
}

impl GatewayError {
    /// The status and machine-readable code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            GatewayError::Upstream(err @ UpstreamError::Timeout(_)) => {
                (StatusCode::GATEWAY_TIMEOUT, err.code())
            }
            GatewayError::Upstream(err @ UpstreamError::Connect(ConnectError::Saturated(_))) => {
                (StatusCode::SERVICE_UNAVAILABLE, err.code())
            }
            GatewayError::Upstream(err) => (StatusCode::BAD_GATEWAY, err.code()),
            GatewayError::Signup(err) => match err {
                SignupError::UnsupportedMediaType => {
                    (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
                }
                SignupError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
                SignupError::BodyRead => (StatusCode::BAD_REQUEST, "body_unreadable"),
                SignupError::BodyTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
                SignupError::Invalid { code, .. } => (StatusCode::BAD_REQUEST, code),
                SignupError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            },
            GatewayError::Token(rejection) => {
                let status = match rejection {
                    Rejection::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                    Rejection::ScopeMismatch | Rejection::MemberMismatch => StatusCode::FORBIDDEN,
                    Rejection::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
                };
                (status, rejection.code())
            }
            GatewayError::Path(_) => (StatusCode::BAD_REQUEST, "path_not_normalized"),
            GatewayError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            GatewayError::Authz(err) => (err.status(), err.code()),
        }
    }

    /// Writes the JSON:API answer for this error, with the headers its status calls for.
    pub fn into_response(self) -> Response<Body> {
        let (status, code) = self.status_and_code();
        let pointer = match &self {
            GatewayError::Signup(SignupError::Invalid { pointer, .. }) => Some(pointer.as_str()),
            _ => None,
        };
        let mut response = error_response(status, code, self.to_string(), pointer);
        let headers = response.headers_mut();
        match &self {
            GatewayError::Signup(SignupError::RateLimited { retry_after, .. }) => {
                // Whole seconds, rounded up: a client retrying on time must not be early.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            GatewayError::MethodNotAllowed { allow, .. } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            GatewayError::Signup(SignupError::BodyTimeout { .. }) => {
                // The rest of the body may still be on its way; the connection cannot be
                // reused (RFC 9110 §15.5.9).
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
                response
                    .extensions_mut()
                    .insert(CloseAfter(CloseReason::BodyTimeout));
            }
            GatewayError::Token(Rejection::Unauthorized(_)) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer realm=\"account-gate\", error=\"invalid_token\"",
                    ),
                );
            }
            _ => {}
        }
        response
    }
}

/// The whole HTTP/1.1 answer, head and body, for a client accepted while every connection has
/// a request in flight: written straight to the socket, before any protocol is spoken.
pub fn overloaded_http1() -> Vec<u8> {
    let body = error_body(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "every connection is busy; retry shortly".to_owned(),
        None,
    );
    let mut answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer
}

/// A JSON:API error answer with one error object.
pub fn json_api_error(status: StatusCode, code: &str, detail: String) -> Response<Body> {
    error_response(status, code, detail, None)
}

fn error_response(
    status: StatusCode,
    code: &str,
    detail: String,
    pointer: Option<&str>,
) -> Response<Body> {
    let body = error_body(status, code, detail, pointer);
    let mut response = Response::new(full_body(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The JSON:API document of one error.
fn error_body(status: StatusCode, code: &str, detail: String, pointer: Option<&str>) -> Vec<u8> {
    let status_text = status.as_str().to_owned();
    let doc = ErrorDocument {
        errors: [ErrorObject {
            status: &status_text,
            title: status.canonical_reason().unwrap_or("Error"),
            code,
            detail,
            source: pointer.map(|pointer| ErrorSource { pointer }),
        }],
    };
    // Serialising a struct of strings cannot fail; fall back to a fixed body rather than panic.
    serde_json::to_vec(&doc).unwrap_or_else(|_| b"{\"errors\":[]}".to_vec())
}
