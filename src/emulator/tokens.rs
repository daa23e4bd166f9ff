//! `POST /v2/account-members/tokens` for every authentication mechanism, and the OTP request
//! that passwordless login needs. The 201 answer is built in exactly the seed's shape: one
//! token per account of the member, with `meta.page`, `meta.results`, `meta.account_member_id`
//! and `links`.

use hyper::{HeaderMap, Response, StatusCode};
use serde_json::{json, Value};

use super::error::{json_response, ApiError, Body};
use super::jwt::{self, format_expires};
use super::request::{access_grant, account_token, parse_data, required_str, Data};
use super::state::State;

/// JSON:API type of a token request and of each issued token.
const TOKEN_TYPE: &str = "account_management_authentication_token";
/// JSON:API type of an OTP request.
const OTP_REQUEST_TYPE: &str = "one_time_password_token_request";
/// The only OTP purpose the emulator serves.
const PASSWORDLESS_PURPOSE: &str = "passwordless_authentication";
/// Page size the real API reports for token lists.
const PAGE_LIMIT: u64 = 20;

/// Authenticates (or signs up) a member and returns a token for each of their accounts.
pub(crate) fn issue(
    state: &State,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    access_grant(state, headers)?;
    let data = parse_data(body, TOKEN_TYPE)?;
    let mechanism = required_str(&data, "authentication_mechanism")?;
    let member_id = match mechanism {
        "self_signup" => self_signup(state, &data)?,
        "password" => {
            let username = required_str(&data, "username")?;
            let password = required_str(&data, "password")?;
            check_profile(state, &data)?;
            state.check_password(username, password)?
        }
        "passwordless" => {
            let username = required_str(&data, "username")?;
            let otp = required_str(&data, "one_time_password_token")?;
            check_profile(state, &data)?;
            state.redeem_otp(username, otp)?
        }
        "oidc" => {
            let code = required_str(&data, "oauth_authorization_code")?;
            required_str(&data, "oauth_redirect_uri")?;
            required_str(&data, "oauth_code_verifier")?;
            state.oidc_member(code)?
        }
        TOKEN_TYPE => {
            let identity = account_token(state, headers)?;
            // A validly signed token for a member this emulator never created is refused, as
            // the real API refuses tokens of deleted members.
            state
                .member(&identity.sub)
                .map(|member| member.id)
                .ok_or_else(|| {
                    ApiError::Unauthorized("the account member no longer exists".to_owned())
                })?
        }
        other => {
            return Err(ApiError::invalid(
                "/data/authentication_mechanism",
                format!("unknown authentication_mechanism {other}"),
            ))
        }
    };
    token_response(state, &member_id)
}

fn self_signup(state: &State, data: &Data) -> Result<String, ApiError> {
    let username = required_str(data, "username")?;
    let password = required_str(data, "password")?;
    let name = required_str(data, "name")?;
    let email = required_str(data, "email")?;
    check_profile(state, data)?;
    state.sign_up(username, password, name, email)
}

/// Requires `password_profile_id` and that it names the configured profile.
fn check_profile(state: &State, data: &Data) -> Result<(), ApiError> {
    let profile = required_str(data, "password_profile_id")?;
    if profile == state.opts.password_profile_id {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "password profile {profile} not found"
        )))
    }
}

/// The 201 answer: a freshly signed token for every account of `member_id`.
fn token_response(state: &State, member_id: &str) -> Result<Response<Body>, ApiError> {
    let accounts = state
        .member_accounts(member_id)
        .ok_or_else(|| ApiError::Unauthorized("the account member no longer exists".to_owned()))?;
    let lifetime = i64::try_from(state.opts.token_lifetime.as_secs()).unwrap_or(i64::MAX);
    let data = accounts
        .iter()
        .map(|(account_id, account_name)| {
            let signed = jwt::sign(&state.opts, member_id, account_id, lifetime)
                .map_err(|err| ApiError::Internal(format!("signing a token failed: {err}")))?;
            Ok(json!({
                "account_name": account_name,
                "account_id": account_id,
                "token": signed.token,
                "type": TOKEN_TYPE,
                "expires": format_expires(signed.exp),
            }))
        })
        .collect::<Result<Vec<Value>, ApiError>>()?;
    let page_url = format!(
        "{}/v2/account-members/tokens?page[offset]=0&page[limit]={PAGE_LIMIT}",
        state.base_url
    );
    let body = json!({
        "meta": {
            "page": { "limit": PAGE_LIMIT, "offset": 0, "current": 1, "total": 1 },
            "results": { "total": data.len() },
            "account_member_id": member_id,
        },
        "data": data,
        "links": {
            "current": page_url,
            "first": page_url,
            "last": page_url,
            "next": null,
            "prev": null,
        },
    });
    Ok(json_response(StatusCode::CREATED, &body))
}

/// `POST /v2/authentication-realms/{realm}/password-profiles/{profile}/one-time-password-token-request`.
///
/// Answers 202 whether or not the username exists, as the real API does, and creates an OTP
/// only for known members; tests read it with `EmulatorHandle::last_otp`.
pub(crate) fn request_otp(
    state: &State,
    headers: &HeaderMap,
    realm_id: &str,
    profile_id: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    access_grant(state, headers)?;
    if realm_id != state.opts.realm_id {
        return Err(ApiError::NotFound(format!(
            "authentication realm {realm_id} not found"
        )));
    }
    if profile_id != state.opts.password_profile_id {
        return Err(ApiError::NotFound(format!(
            "password profile {profile_id} not found"
        )));
    }
    let data = parse_data(body, OTP_REQUEST_TYPE)?;
    let username = required_str(&data, "username")?;
    let purpose = required_str(&data, "purpose")?;
    if purpose != PASSWORDLESS_PURPOSE {
        return Err(ApiError::invalid(
            "/data/purpose",
            format!("purpose must be {PASSWORDLESS_PURPOSE}"),
        ));
    }
    state.request_otp(username)?;
    // The real API answers 202 with no body: the OTP travels by email, not in the response.
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::ACCEPTED;
    Ok(response)
}
