//! The one place where a refusal or failure becomes the HTTP answer a client sees.
//!
//! Every module reports problems as its own typed error; [`GatewayError`] gathers them and
//! [`GatewayError::into_response`] writes the JSON:API error body, so every synthetic answer of
//! the gateway has the same shape: `{"errors":[{"status":"502","title":…,"code":…,"detail":…}]}`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

use crate::proxy::{full_body, Body, UpstreamError};

/// Everything the data plane can answer by itself instead of forwarding.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The upstream could not be reached, failed, or was too slow.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// One JSON:API error object, as the Commerce API writes them.
#[derive(Debug, Serialize)]
struct ErrorObject<'a> {
    status: &'a str,
    title: &'a str,
    code: &'a str,
    detail: String,
}

#[derive(Debug, Serialize)]
struct ErrorDocument<'a> {
    errors: [ErrorObject<'a>; 1],
}

impl GatewayError {
    /// The status, machine-readable code and human detail of this error.
    fn parts(&self) -> (StatusCode, &'static str, String) {
        match self {
            GatewayError::Upstream(err) => {
                let status = match err {
                    UpstreamError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::BAD_GATEWAY,
                };
                (status, err.code(), err.to_string())
            }
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// Writes the JSON:API answer for this error.
    pub fn into_response(self) -> Response<Body> {
        let (status, code, detail) = self.parts();
        json_api_error(status, code, detail)
    }
}

/// A JSON:API error answer with one error object.
pub fn json_api_error(status: StatusCode, code: &str, detail: String) -> Response<Body> {
    let status_text = status.as_str().to_owned();
    let doc = ErrorDocument {
        errors: [ErrorObject {
            status: &status_text,
            title: status.canonical_reason().unwrap_or("Error"),
            code,
            detail,
        }],
    };
    // Serialising a struct of strings cannot fail; fall back to a fixed body rather than panic.
    let body = serde_json::to_vec(&doc).unwrap_or_else(|_| b"{\"errors\":[]}".to_vec());
    let mut response = Response::new(full_body(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
