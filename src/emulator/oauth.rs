//! `POST /oauth/access_token`: store access tokens for the `implicit` and
//! `client_credentials` grants, form-encoded like the real endpoint.

use std::collections::HashMap;

use hyper::{Response, StatusCode};
use serde_json::json;

use super::error::{json_response, ApiError, Body};
use super::state::{GrantKind, State};

/// Issues an access token for a form-encoded grant request.
pub(crate) fn access_token(state: &State, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let form = parse_form(body)?;
    let field = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let grant_type =
        field("grant_type").ok_or_else(|| ApiError::bad_request("grant_type is required"))?;
    let client_id =
        field("client_id").ok_or_else(|| ApiError::bad_request("client_id is required"))?;
    let kind = match grant_type {
        "implicit" => GrantKind::Implicit,
        "client_credentials" => GrantKind::ClientCredentials,
        other => {
            return Err(ApiError::bad_request(format!(
                "unsupported grant_type {other}"
            )))
        }
    };
    if kind == GrantKind::ClientCredentials && field("client_secret").is_none() {
        return Err(ApiError::bad_request("client_secret is required"));
    }
    let secret_ok = kind == GrantKind::Implicit
        || field("client_secret") == Some(state.opts.client_secret.as_str());
    if client_id != state.opts.client_id || !secret_ok {
        return Err(ApiError::Unauthorized(
            "invalid client credentials".to_owned(),
        ));
    }
    let (token, expires) = state.issue_access_token(kind)?;
    let body = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": state.opts.access_token_lifetime.as_secs(),
        "expires": expires,
        "identifier": kind.identifier(),
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// Decodes `application/x-www-form-urlencoded`; the last of repeated keys wins.
fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("request body must be UTF-8 form data"))?;
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(key)?, percent_decode(value)?))
        })
        .collect()
}

fn percent_decode(encoded: &str) -> Result<String, ApiError> {
    let malformed = || ApiError::bad_request("malformed percent-encoding in form data");
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                // from_str_radix alone would accept a sign ("%+1"), so check the digits first.
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .ok_or_else(malformed)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| malformed())?);
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| malformed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let form = parse_form(b"a=1&b=x+y%21&c&=z").unwrap();
        assert_eq!(form["a"], "1");
        assert_eq!(form["b"], "x y!");
        assert_eq!(form["c"], "");
        assert_eq!(form[""], "z");
    }

    #[test]
    fn malformed_forms_are_errors_not_panics() {
        for bad in [
            &b"a=%"[..],
            b"a=%4",
            b"a=%zz",
            b"a=%ff",
            b"\xff=1",
            b"a=%\xc3\xa9",
            b"a=%+1",
        ] {
            assert!(parse_form(bad).is_err(), "{bad:?}");
        }
    }
}
