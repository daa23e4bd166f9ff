//! Accounts and members: the admin routes that build a member with several accounts
//! (`client_credentials` only), and the account-scoped reads that check the account token
//! the way the real API does — 401 for a bad token, 403 for someone else's resource.

use hyper::{HeaderMap, Response, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use super::error::{json_response, ApiError, Body};
use super::jwt::{format_expires, unix_now};
use super::request::{access_grant, account_token, client_credentials, parse_data, required_str};
use super::state::{AccountView, State};

/// Page size reported by the (always empty) collections.
const PAGE_LIMIT: u64 = 25;

/// `POST /v2/accounts`.
pub(crate) fn create(
    state: &State,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    client_credentials(state, headers)?;
    let data = parse_data(body, "account")?;
    let name = required_str(&data, "name")?;
    let legal_name = required_str(&data, "legal_name")?;
    let account = state.create_account(name, legal_name)?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({ "data": account_json(state, &account) }),
    ))
}

/// `POST /v2/accounts/{account_id}/account-memberships`.
pub(crate) fn add_membership(
    state: &State,
    headers: &HeaderMap,
    account_id: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    client_credentials(state, headers)?;
    let data = parse_data(body, "account_membership")?;
    let member_id = required_str(&data, "account_member_id")?;
    state.add_membership(account_id, member_id)?;
    let now = format_expires(unix_now());
    let body = json!({
        "data": {
            "id": Uuid::new_v4().to_string(),
            "type": "account_membership",
            "relationships": {
                "account_member": { "data": { "id": member_id, "type": "account_member" } }
            },
            "meta": { "timestamps": { "created_at": now, "updated_at": now } },
        }
    });
    Ok(json_response(StatusCode::CREATED, &body))
}

/// Checks both credentials and that the account token is scoped to `account_id`.
fn scoped_to_account(
    state: &State,
    headers: &HeaderMap,
    account_id: &str,
) -> Result<AccountView, ApiError> {
    access_grant(state, headers)?;
    let identity = account_token(state, headers)?;
    if identity.scope != account_id {
        return Err(ApiError::Forbidden(
            "the account management authentication token is not scoped to this account".to_owned(),
        ));
    }
    state
        .account(account_id)
        .ok_or_else(|| ApiError::NotFound(format!("account {account_id} not found")))
}

/// `GET /v2/accounts/{account_id}`.
pub(crate) fn get(
    state: &State,
    headers: &HeaderMap,
    account_id: &str,
) -> Result<Response<Body>, ApiError> {
    let account = scoped_to_account(state, headers, account_id)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "data": account_json(state, &account) }),
    ))
}

/// `GET /v2/accounts/{account_id}/addresses`: the emulator stores no addresses.
pub(crate) fn addresses(
    state: &State,
    headers: &HeaderMap,
    account_id: &str,
) -> Result<Response<Body>, ApiError> {
    scoped_to_account(state, headers, account_id)?;
    let path = format!("/v2/accounts/{account_id}/addresses");
    Ok(json_response(
        StatusCode::OK,
        &empty_collection(state, &path),
    ))
}

/// `GET /v2/account-members/{member_id}`: only the member themself may read it.
pub(crate) fn member(
    state: &State,
    headers: &HeaderMap,
    member_id: &str,
) -> Result<Response<Body>, ApiError> {
    access_grant(state, headers)?;
    let identity = account_token(state, headers)?;
    if identity.sub != member_id {
        return Err(ApiError::Forbidden(
            "the account management authentication token belongs to another member".to_owned(),
        ));
    }
    let member = state
        .member(member_id)
        .ok_or_else(|| ApiError::NotFound(format!("account member {member_id} not found")))?;
    let body = json!({
        "data": {
            "id": member.id,
            "type": "account_member",
            "name": member.name,
            "email": member.email,
            "links": { "self": format!("{}/v2/account-members/{}", state.base_url, member.id) },
        }
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// `GET /v2/carts`, `GET /v2/orders`: the token's account has none in the emulator.
pub(crate) fn account_collection(
    state: &State,
    headers: &HeaderMap,
    path: &str,
) -> Result<Response<Body>, ApiError> {
    access_grant(state, headers)?;
    account_token(state, headers)?;
    Ok(json_response(
        StatusCode::OK,
        &empty_collection(state, path),
    ))
}

fn account_json(state: &State, account: &AccountView) -> Value {
    json!({
        "id": account.id,
        "type": "account",
        "name": account.name,
        "legal_name": account.legal_name,
        "meta": {
            "timestamps": { "created_at": account.created_at, "updated_at": account.created_at }
        },
        "links": { "self": format!("{}/v2/accounts/{}", state.base_url, account.id) },
    })
}

fn empty_collection(state: &State, path: &str) -> Value {
    let page_url = format!(
        "{}{path}?page[offset]=0&page[limit]={PAGE_LIMIT}",
        state.base_url
    );
    json!({
        "data": [],
        "meta": {
            "page": { "limit": PAGE_LIMIT, "offset": 0, "current": 1, "total": 0 },
            "results": { "total": 0 },
        },
        "links": {
            "current": page_url,
            "first": page_url,
            "last": page_url,
            "next": null,
            "prev": null,
        },
    })
}
