//! Checks of a token request (`POST /v2/account-members/tokens`) before it may cost the
//! upstream anything: media type, JSON shape, mechanism, required fields, e-mail shape and
//! password policy. A request that fails here is answered 400/415 and never forwarded.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{Mechanism, SignupError, SignupPolicy, Text};

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
    let document = serde_json::from_slice::<Document>(body).map_err(|e| {
        SignupError::invalid(
            "malformed_json",
            "",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let data = match document {
        Document::Object(Some(Member::Object(data))) => data,
        Document::Object(Some(Member::Other)) => {
            return Err(SignupError::invalid(
                "invalid_field",
                "/data",
                "`data` must be an object",
            ))
        }
        Document::Object(None) => {
            return Err(SignupError::invalid(
                "missing_field",
                "/data",
                "`data` is required",
            ))
        }
        Document::Other => {
            return Err(SignupError::invalid(
                "invalid_body",
                "",
                "the body must be a JSON object",
            ))
        }
    };

    match data.get("type") {
        Some(Field::Str(kind)) if kind == TOKEN_TYPE => {}
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
        Some(Field::Str(name)) => Mechanism::parse(name).ok_or_else(|| {
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
        required_string(&data, field)?;
    }
    for field in mechanism.optional_fields() {
        if let Some(value) = data.get(field) {
            if matches!(value, Field::Other) {
                return Err(SignupError::invalid(
                    "invalid_field",
                    format!("/data/{field}"),
                    format!("`{field}` must be a string"),
                ));
            }
        }
    }
    if let Some(email) = data.get("email").and_then(Field::as_str) {
        if !looks_like_email(email) {
            return Err(SignupError::invalid(
                "invalid_field",
                "/data/email",
                "`email` must be an e-mail address",
            ));
        }
    }
    let username = data.get("username").and_then(Field::as_str);
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
            .and_then(Field::as_str)
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

fn required_string(data: &Fields, field: &str) -> Result<(), SignupError> {
    let (code, problem) = match data.get(field) {
        Some(Field::Str(s)) if !s.trim().is_empty() => return Ok(()),
        None | Some(Field::Null) => ("missing_field", "is required"),
        Some(Field::Str(_)) => ("missing_field", "must not be empty"),
        Some(Field::Other) => ("invalid_field", "must be a string"),
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

// The body is read in one pass that keeps only what the checks look at (the members of `data`
// that are strings, borrowed from the body unless escaped) and refuses duplicate object keys at
// any depth: parsers disagree on which duplicate wins, so a body with duplicates could be
// checked with one value and acted on by the upstream with another.

/// A token request body: an object (with its `data` member, if any) or anything else.
enum Document<'a> {
    Object(Option<Member<'a>>),
    Other,
}

/// The `data` member: an object's members, or anything else.
enum Member<'a> {
    Object(Fields<'a>),
    Other,
}

/// The members of `data`, in body order.
struct Fields<'a>(Vec<(Cow<'a, str>, Field<'a>)>);

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Field<'_>> {
        self.0.iter().find(|(key, _)| key == name).map(|(_, v)| v)
    }
}

/// One member of `data`, as far as the checks care.
enum Field<'a> {
    Str(Cow<'a, str>),
    Null,
    /// A number, boolean, array or object.
    Other,
}

impl Field<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Field::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Refuses an object whose keys repeat, or differ only in case (`username` and `USERNAME`):
/// some upstream parsers match keys case-insensitively, and then the last one wins. Pairwise
/// for the handful of keys real bodies have, sorted beyond that, so that a body of thousands of
/// keys does not cost a quadratic scan. (Order does not matter once the keys are known to be
/// unique.)
fn unique_keys<E: de::Error, T>(items: &mut [T], key: impl Fn(&T) -> &str) -> Result<(), E> {
    let repeated = if items.len() <= 16 {
        (1..items.len()).find_map(|i| {
            let k = key(&items[i]);
            items[..i]
                .iter()
                .find(|other| same_key(key(other), k))
                .map(|other| (key(other), k))
        })
    } else {
        items.sort_by_cached_key(|item| folded(key(item)).into_owned());
        (1..items.len())
            .find(|&i| same_key(key(&items[i - 1]), key(&items[i])))
            .map(|i| (key(&items[i - 1]), key(&items[i])))
    };
    match repeated {
        Some((first, second)) if first == second => {
            Err(E::custom(format_args!("duplicate key `{first}`")))
        }
        Some((first, second)) => Err(E::custom(format_args!(
            "keys `{first}` and `{second}` differ only in case"
        ))),
        None => Ok(()),
    }
}

/// Whether two keys are the same to a parser that ignores case.
fn same_key(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        a.eq_ignore_ascii_case(b)
    } else {
        folded(a) == folded(b)
    }
}

/// A key folded the ways case-insensitive parsers fold: upper-cased then lower-cased, so that
/// `ſ` (which upper-cases to `S`) and the Kelvin sign (which lower-cases to `k`) meet their
/// ASCII letters.
fn folded(key: &str) -> Cow<'_, str> {
    if key.is_ascii() {
        if key.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(key.to_ascii_lowercase())
        } else {
            Cow::Borrowed(key)
        }
    } else {
        Cow::Owned(key.to_uppercase().to_lowercase())
    }
}

/// The shape of a JSON value, read by [`Shape`]: what is kept of it depends on where it is.
trait Keep<'de>: Sized {
    /// A number, boolean or array (already walked), and by default anything but an object.
    fn other() -> Self;
    /// A string (borrowed when the body holds it unescaped).
    fn string(_: Cow<'de, str>) -> Self {
        Self::other()
    }
    fn null() -> Self {
        Self::other()
    }
    /// An object: each key and value in turn (duplicates are refused by the caller).
    fn object<A: MapAccess<'de>>(
        map: &mut A,
        keys: &mut Vec<Cow<'de, str>>,
    ) -> Result<Self, A::Error>;
}

/// Reads one JSON value into `T`, refusing duplicate keys anywhere inside it.
struct Shape<T>(std::marker::PhantomData<T>);

impl<'de, T: Keep<'de>> DeserializeSeed<'de> for Shape<T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, T: Keep<'de>> Visitor<'de> for Shape<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<T, E> {
        Ok(T::other())
    }
    fn visit_i64<E>(self, _: i64) -> Result<T, E> {
        Ok(T::other())
    }
    fn visit_u64<E>(self, _: u64) -> Result<T, E> {
        Ok(T::other())
    }
    fn visit_f64<E>(self, _: f64) -> Result<T, E> {
        Ok(T::other())
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<T, E> {
        Ok(T::string(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<T, E> {
        Ok(T::string(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<T, E> {
        Ok(T::string(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<T, E> {
        Ok(T::null())
    }
    fn visit_none<E>(self) -> Result<T, E> {
        Ok(T::null())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        while seq.next_element_seed(Shape::<Ignored>::new())?.is_some() {}
        Ok(T::other())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut keys = Vec::new();
        let value = T::object(&mut map, &mut keys)?;
        unique_keys(&mut keys, |k| k.as_ref())?;
        Ok(value)
    }
}

impl<T> Shape<T> {
    fn new() -> Self {
        Shape(std::marker::PhantomData)
    }
}

/// A value nothing is kept of (still walked, for its keys).
struct Ignored;

impl<'de> Keep<'de> for Ignored {
    fn other() -> Self {
        Ignored
    }
    fn object<A: MapAccess<'de>>(
        map: &mut A,
        keys: &mut Vec<Cow<'de, str>>,
    ) -> Result<Self, A::Error> {
        while let Some(Text(key)) = map.next_key()? {
            map.next_value_seed(Shape::<Ignored>::new())?;
            keys.push(key);
        }
        Ok(Ignored)
    }
}

impl<'de> Keep<'de> for Field<'de> {
    fn string(s: Cow<'de, str>) -> Self {
        Field::Str(s)
    }
    fn null() -> Self {
        Field::Null
    }
    fn other() -> Self {
        Field::Other
    }
    fn object<A: MapAccess<'de>>(
        map: &mut A,
        keys: &mut Vec<Cow<'de, str>>,
    ) -> Result<Self, A::Error> {
        Ignored::object(map, keys).map(|_| Field::Other)
    }
}

impl<'de> Keep<'de> for Member<'de> {
    fn other() -> Self {
        Member::Other
    }
    fn object<A: MapAccess<'de>>(
        map: &mut A,
        _: &mut Vec<Cow<'de, str>>,
    ) -> Result<Self, A::Error> {
        let mut fields = Vec::new();
        while let Some(Text(key)) = map.next_key()? {
            let value = map.next_value_seed(Shape::<Field>::new())?;
            fields.push((key, value));
        }
        unique_keys(&mut fields, |(k, _)| k.as_ref())?;
        Ok(Member::Object(Fields(fields)))
    }
}

impl<'de> Keep<'de> for Document<'de> {
    fn other() -> Self {
        Document::Other
    }
    fn object<A: MapAccess<'de>>(
        map: &mut A,
        keys: &mut Vec<Cow<'de, str>>,
    ) -> Result<Self, A::Error> {
        let mut data = None;
        while let Some(Text(key)) = map.next_key()? {
            if key == "data" {
                data = Some(map.next_value_seed(Shape::<Member>::new())?);
            } else {
                map.next_value_seed(Shape::<Ignored>::new())?;
            }
            keys.push(key);
        }
        Ok(Document::Object(data))
    }
}

impl<'de> Deserialize<'de> for Document<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Shape::<Document>::new().deserialize(deserializer)
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
        // At the top, inside arrays, through escapes, and among more keys than the pairwise
        // check handles.
        assert_eq!(pointer_of(r#"{"data":{},"data":{}}"#), "");
        assert_eq!(pointer_of(r#"[{"a":1,"a":2}]"#), "");
        assert_eq!(pointer_of(r#"{"data":{"type":1,"typ\u0065":2}}"#), "");
        // Keys that differ only in case, at every level, also through escapes and folding.
        assert_eq!(
            pointer_of(r#"{"data":{"username":"a","USERNAME":"b"}}"#),
            ""
        );
        assert_eq!(pointer_of(r#"{"data":{"x":{"Ab":1,"aB":2}}}"#), "");
        assert_eq!(pointer_of(r#"{"Data":{},"data":{}}"#), "");
        assert_eq!(
            pointer_of(r#"{"data":{"username":"a","u\u017Fername":"b"}}"#),
            ""
        );
        assert_eq!(pointer_of(r#"{"data":{"kind":"a","\u212Aind":"b"}}"#), "");
        let cased: Vec<String> = (0..40)
            .map(|i| format!(r#""{}{}":{i}"#, if i == 39 { "K" } else { "k" }, i % 39))
            .collect();
        assert_eq!(
            pointer_of(&format!(r#"{{"data":{{{}}}}}"#, cased.join(","))),
            ""
        );
        let many: Vec<String> = (0..40).map(|i| format!(r#""k{}":{i}"#, i % 39)).collect();
        assert_eq!(
            pointer_of(&format!(r#"{{"data":{{{}}}}}"#, many.join(","))),
            ""
        );
        assert_eq!(
            pointer_of(&format!(r#"{{"x":{{{}}}}}"#, many.join(","))),
            ""
        );
    }

    #[test]
    fn the_shape_decides_the_answer() {
        let code_of = |body: &str| match check_body(body.as_bytes(), &policy()) {
            Err(SignupError::Invalid { code, pointer, .. }) => (code, pointer),
            other => panic!("expected a 400, got {other:?}"),
        };
        assert_eq!(code_of("[]"), ("invalid_body", String::new()));
        assert_eq!(code_of("{}"), ("missing_field", "/data".to_owned()));
        assert_eq!(
            code_of(r#"{"data":[]}"#),
            ("invalid_field", "/data".to_owned())
        );
        let login = |password: &str| {
            format!(
                r#"{{"data":{{"type":"{TOKEN_TYPE}","authentication_mechanism":"password","password_profile_id":"p","username":"u@example.com","password":{password}}}}}"#
            )
        };
        assert_eq!(
            code_of(&login("null")),
            ("missing_field", "/data/password".to_owned())
        );
        assert_eq!(
            code_of(&login("\" \"")),
            ("missing_field", "/data/password".to_owned())
        );
        assert_eq!(
            code_of(&login("{}")),
            ("invalid_field", "/data/password".to_owned())
        );
        // Escaped strings are read like any other.
        let checked = check_body(login(r#""s\u0065cret""#).as_bytes(), &policy()).unwrap();
        assert_eq!(checked.mechanism, Mechanism::Password);
        assert_eq!(checked.username.as_deref(), Some("u@example.com"));
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
