//! Reading what a request carries — its body, its credentials, its JSON:API `data` — with
//! the same refusals the real API gives, so handlers only see checked values.

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::HeaderMap;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::jwt::{self, TokenIdentity};
use super::state::{GrantKind, State};

/// Header carrying the account token on account-scoped calls.
pub(crate) const ACCOUNT_TOKEN_HEADER: &str = "ep-account-management-authentication-token";

/// Longest string field accepted; keeps a capped table of members capped in bytes too.
pub(crate) const MAX_FIELD_BYTES: usize = 1024;

/// The JSON object under `data`.
pub(crate) type Data = Map<String, Value>;

/// Reads the whole body, refusing it with 413 once it passes the configured cap.
pub(crate) async fn read_body(state: &State, body: Incoming) -> Result<Bytes, ApiError> {
    let limit = state.opts.max_body_bytes;
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Err(err) => Err(ApiError::bad_request(format!(
            "could not read request body: {err}"
        ))),
    }
}

/// The grant of the store access token in `Authorization: Bearer …`.
pub(crate) fn access_grant(state: &State, headers: &HeaderMap) -> Result<GrantKind, ApiError> {
    let value = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| ApiError::Unauthorized("an Authorization header is required".to_owned()))?;
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthorized("the Authorization header must be a Bearer token".to_owned())
        })?;
    state
        .access_grant(token)
        .ok_or_else(|| ApiError::Unauthorized("the access token is invalid or expired".to_owned()))
}

/// Like [`access_grant`], but the admin routes need a `client_credentials` token.
pub(crate) fn client_credentials(state: &State, headers: &HeaderMap) -> Result<(), ApiError> {
    match access_grant(state, headers)? {
        GrantKind::ClientCredentials => Ok(()),
        GrantKind::Implicit => Err(ApiError::Forbidden(
            "this endpoint requires a client_credentials access token".to_owned(),
        )),
    }
}

/// The verified account token in `EP-Account-Management-Authentication-Token`.
pub(crate) fn account_token(state: &State, headers: &HeaderMap) -> Result<TokenIdentity, ApiError> {
    let token = headers
        .get(ACCOUNT_TOKEN_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "an EP-Account-Management-Authentication-Token header is required".to_owned(),
            )
        })?;
    jwt::verify(&state.opts, token)
}

/// Parses `{"data":{"type": expected_type, …}}` and returns the `data` object.
pub(crate) fn parse_data(body: &[u8], expected_type: &str) -> Result<Data, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| ApiError::bad_request(format!("request body is not valid JSON: {err}")))?;
    let Value::Object(mut root) = value else {
        return Err(ApiError::invalid("", "request body must be a JSON object"));
    };
    let Some(Value::Object(data)) = root.remove("data") else {
        return Err(ApiError::invalid(
            "/data",
            "data is required and must be an object",
        ));
    };
    match data.get("type") {
        Some(Value::String(kind)) if kind == expected_type => Ok(data),
        Some(_) => Err(ApiError::invalid(
            "/data/type",
            format!("type must be {expected_type}"),
        )),
        None => Err(ApiError::invalid("/data/type", "type is required")),
    }
}

/// The non-empty string field `name` of `data`.
pub(crate) fn required_str<'a>(data: &'a Data, name: &str) -> Result<&'a str, ApiError> {
    let pointer = || format!("/data/{name}");
    match data.get(name) {
        Some(Value::String(value)) if value.is_empty() => Err(ApiError::invalid(
            pointer(),
            format!("{name} must not be empty"),
        )),
        Some(Value::String(value)) if value.len() > MAX_FIELD_BYTES => Err(ApiError::invalid(
            pointer(),
            format!("{name} must be at most {MAX_FIELD_BYTES} bytes"),
        )),
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(ApiError::invalid(
            pointer(),
            format!("{name} must be a string"),
        )),
        None => Err(ApiError::invalid(pointer(), format!("{name} is required"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_and_type_are_checked() {
        assert!(parse_data(b"nope", "t").is_err());
        assert!(parse_data(b"[]", "t").is_err());
        assert!(parse_data(br#"{"data":[]}"#, "t").is_err());
        assert!(parse_data(br#"{"data":{}}"#, "t").is_err());
        assert!(parse_data(br#"{"data":{"type":"u"}}"#, "t").is_err());
        assert!(parse_data(br#"{"data":{"type":"t"}}"#, "t").is_ok());
    }

    #[test]
    fn fields_must_be_bounded_non_empty_strings() {
        let long = "x".repeat(MAX_FIELD_BYTES + 1);
        let body = serde_json::json!({"data":{"type":"t","a":"ok","b":"","c":3,"d":long}});
        let data = parse_data(body.to_string().as_bytes(), "t").unwrap();
        assert_eq!(required_str(&data, "a").unwrap(), "ok");
        for name in ["b", "c", "d", "missing"] {
            assert!(required_str(&data, name).is_err(), "{name}");
        }
    }
}
