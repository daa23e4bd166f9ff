//! The emulator's failures and the one place that turns them into JSON:API error answers,
//! shaped like the real API's: `{"errors":[{"status":"400","title":"Bad Request","detail":…}]}`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

/// The body type of every emulator answer; answers are small and built whole.
pub(crate) type Body = Full<Bytes>;

/// Why a request was refused; `into_response` is the only mapping to HTTP.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// The request is malformed; `pointer` names the offending JSON member when known.
    #[error("{detail}")]
    BadRequest {
        detail: String,
        pointer: Option<String>,
    },
    /// Credentials are missing, unknown, wrong or expired.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials that do not grant this resource.
    #[error("{0}")]
    Forbidden(String),
    /// No such route or resource.
    #[error("{0}")]
    NotFound(String),
    /// The resource already exists.
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the configured cap.
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// An in-memory table is at its cap; refusing keeps the emulator bounded.
    #[error("emulator {what} capacity of {limit} reached")]
    Full { what: &'static str, limit: usize },
    /// A failure of the emulator itself, never of the request.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 without a pointer.
    pub(crate) fn bad_request(detail: impl Into<String>) -> Self {
        Self::BadRequest {
            detail: detail.into(),
            pointer: None,
        }
    }

    /// A 400 about the member at JSON pointer `pointer`.
    pub(crate) fn invalid(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::BadRequest {
            detail: detail.into(),
            pointer: Some(pointer.into()),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Full { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON:API answer for this error.
    pub(crate) fn into_response(self) -> Response<Body> {
        let status = self.status();
        let mut error = json!({
            "status": status.as_str(),
            "title": status.canonical_reason().unwrap_or("Error"),
            "detail": self.to_string(),
        });
        if let Self::BadRequest {
            pointer: Some(pointer),
            ..
        } = &self
        {
            error["source"] = json!({ "pointer": pointer });
        }
        json_response(status, &json!({ "errors": [error] }))
    }
}

/// A JSON answer with the given status.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    // Serialising a `Value` cannot fail: its keys are strings and it holds no foreign types.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn status_is_a_string_and_pointer_is_a_source() {
        let response = ApiError::invalid("/data/username", "username is required").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["errors"][0]["status"], "400");
        assert_eq!(value["errors"][0]["title"], "Bad Request");
        assert_eq!(value["errors"][0]["source"]["pointer"], "/data/username");
    }
}
