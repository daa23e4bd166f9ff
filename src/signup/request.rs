//! Checks of a token request (`POST /v2/account-members/tokens`) before it may cost the
//! upstream anything: media type, JSON shape, mechanism, required fields, e-mail shape and
//! password policy. A request that fails here is answered 400/415 and never forwarded.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::{Mechanism, SignupError, SignupPolicy};

/// What the rest of the sign-up path needs to know about a request that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRequest {
    /// How the member authenticates.
    pub mechanism: Mechanism,
    /// The username, for the per-username rate limit (hashed before use).
    pub username: Option<String>,
}

/// The JSON:API `type` every token request must carry.
const TOKEN_TYPE: &str = "account_management_authentication_token";

/// Whether a `Content-Type` value is JSON (`application/json`, `application/vnd.api+json`,
/// any `+json`, with or without parameters).
pub fn is_json_media_type(content_type: Option<&str>) -> bool {
    let Some(value) = content_type else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence
            .get(essence.len().saturating_sub(5)..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case("+json"))
            && essence
                .get(..12)
                .is_some_and(|head| head.eq_ignore_ascii_case("application/"))
}

/// Checks a complete request body against the policy.
pub fn check_body(body: &[u8], policy: &SignupPolicy) -> Result<CheckedRequest, SignupError> {
    let Strict(document) = serde_json::from_slice::<Strict>(body).map_err(|e| {
        SignupError::invalid(
            "malformed_json",
            "",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let data = document
        .as_object()
        .ok_or_else(|| SignupError::invalid("invalid_body", "", "the body must be a JSON object"))?
        .get("data")
        .ok_or_else(|| SignupError::invalid("missing_field", "/data", "`data` is required"))?
        .as_object()
        .ok_or_else(|| {
            SignupError::invalid("invalid_field", "/data", "`data` must be an object")
        })?;

    match data.get("type") {
        Some(Value::String(kind)) if kind == TOKEN_TYPE => {}
        None => {
            return Err(SignupError::invalid(
                "missing_field",
                "/data/type",
                "`type` is required",
            ))
        }
        Some(_) => {
            return Err(SignupError::invalid(
                "invalid_type",
                "/data/type",
                format!("`type` must be \"{TOKEN_TYPE}\""),
            ))
        }
    }

    let mechanism = match data.get("authentication_mechanism") {
        None => {
            return Err(SignupError::invalid(
                "missing_field",
                "/data/authentication_mechanism",
                "`authentication_mechanism` is required",
            ))
        }
        Some(Value::String(name)) => Mechanism::parse(name).ok_or_else(|| {
            SignupError::invalid(
                "unknown_mechanism",
                "/data/authentication_mechanism",
                "`authentication_mechanism` must be one of self_signup, password, passwordless, \
                 oidc, account_management_authentication_token",
            )
        })?,
        Some(_) => {
            return Err(SignupError::invalid(
                "invalid_field",
                "/data/authentication_mechanism",
                "`authentication_mechanism` must be a string",
            ))
        }
    };
    if !policy.mechanisms.contains(&mechanism) {
        return Err(SignupError::invalid(
            "mechanism_disabled",
            "/data/authentication_mechanism",
            format!("`{}` is not enabled on this gateway", mechanism.as_str()),
        ));
    }

    for field in mechanism.required_fields() {
        required_string(data, field)?;
    }
    for field in mechanism.optional_fields() {
        if let Some(value) = data.get(*field) {
            if !value.is_string() && !value.is_null() {
                return Err(SignupError::invalid(
                    "invalid_field",
                    format!("/data/{field}"),
                    format!("`{field}` must be a string"),
                ));
            }
        }
    }
    if let Some(email) = data.get("email").and_then(Value::as_str) {
        if !looks_like_email(email) {
            return Err(SignupError::invalid(
                "invalid_field",
                "/data/email",
                "`email` must be an e-mail address",
            ));
        }
    }
    let username = data.get("username").and_then(Value::as_str);
    if let Some(username) = username {
        if policy.username_must_be_email && !looks_like_email(username) {
            return Err(SignupError::invalid(
                "invalid_field",
                "/data/username",
                "`username` must be an e-mail address",
            ));
        }
    }
    if mechanism == Mechanism::SelfSignup {
        let length = data
            .get("password")
            .and_then(Value::as_str)
            .map_or(0, |p| p.chars().count());
        if length < policy.min_password_length {
            return Err(SignupError::invalid(
                "weak_password",
                "/data/password",
                format!(
                    "`password` must be at least {} characters long",
                    policy.min_password_length
                ),
            ));
        }
    }
    Ok(CheckedRequest {
        mechanism,
        username: username.map(str::to_owned),
    })
}

fn required_string(data: &Map<String, Value>, field: &str) -> Result<(), SignupError> {
    let (code, problem) = match data.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => return Ok(()),
        None | Some(Value::Null) => ("missing_field", "is required"),
        Some(Value::String(_)) => ("missing_field", "must not be empty"),
        Some(_) => ("invalid_field", "must be a string"),
    };
    Err(SignupError::invalid(
        code,
        format!("/data/{field}"),
        format!("`{field}` {problem}"),
    ))
}

/// A deliberately simple shape check: `local@domain.tld`, no spaces, at most 254 characters.
/// The upstream owns real validation; this only stops obvious garbage early.
pub fn looks_like_email(value: &str) -> bool {
    if value.len() > 254 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = value.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63)
        && domain.contains('.')
}

/// A JSON value that refuses duplicate object keys at any depth. Parsers disagree on which
/// duplicate wins, so a body with duplicates could be checked with one value and acted on by
/// the upstream with another.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SignupPolicy {
        SignupPolicy::default()
    }

    fn pointer_of(body: &str) -> String {
        match check_body(body.as_bytes(), &policy()) {
            Err(SignupError::Invalid { pointer, .. }) => pointer,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn media_types() {
        assert!(is_json_media_type(Some("application/json")));
        assert!(is_json_media_type(Some("Application/JSON; charset=utf-8")));
        assert!(is_json_media_type(Some("application/vnd.api+json")));
        assert!(!is_json_media_type(Some("text/plain")));
        assert!(!is_json_media_type(Some("text/x+json")));
        assert!(!is_json_media_type(None));
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let body = r#"{"data":{"type":"account_management_authentication_token","type":"x"}}"#;
        assert_eq!(pointer_of(body), "");
        let body = r#"{"data":{"x":{"a":1,"a":2}}}"#;
        assert_eq!(pointer_of(body), "");
    }

    #[test]
    fn deep_nesting_is_a_400_not_a_stack_overflow() {
        let body = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(pointer_of(&body), "");
    }

    #[test]
    fn emails() {
        assert!(looks_like_email("joe@example.com"));
        assert!(!looks_like_email("joe@example"));
        assert!(!looks_like_email("joe example@x.com"));
        assert!(!looks_like_email("@x.com"));
        assert!(!looks_like_email("a@b@c.com"));
        assert!(!looks_like_email("a@.com"));
    }
}
