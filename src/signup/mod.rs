//! The token endpoint (`POST /v2/account-members/tokens`): check a request before it may cost
//! the upstream anything, rate-limit it, forward it, and learn every token the upstream issues.
//!
//! [`Signup::admit`] reads and checks the request; the gateway forwards what it admits, and wraps
//! a `201` answer in a [`TeeBody`] whose copy [`Learner`] parses into store records.

mod learn;
mod ratelimit;
mod request;
mod tee;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::metrics::Metrics;
use crate::store::{Store, TokenStore};

pub use learn::{records, LearnError};
pub use ratelimit::{Limit, RateLimiter, RateLimits};
pub use request::{check_body, is_json_media_type, looks_like_email, CheckedRequest};
pub use tee::{Incomplete, TeeBody, TeeSink};

/// The five ways to ask for an account token (docs/design.md, "Token requests").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    SelfSignup,
    Password,
    Passwordless,
    Oidc,
    /// Switch account: the current token is in the token header.
    #[serde(rename = "account_management_authentication_token")]
    SwitchAccount,
}

impl Mechanism {
    /// Every mechanism.
    pub const ALL: [Mechanism; 5] = [
        Mechanism::SelfSignup,
        Mechanism::Password,
        Mechanism::Passwordless,
        Mechanism::Oidc,
        Mechanism::SwitchAccount,
    ];

    /// The mechanism named by `authentication_mechanism`.
    pub fn parse(name: &str) -> Option<Self> {
        Mechanism::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// The `authentication_mechanism` value, also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::SelfSignup => "self_signup",
            Mechanism::Password => "password",
            Mechanism::Passwordless => "passwordless",
            Mechanism::Oidc => "oidc",
            Mechanism::SwitchAccount => "account_management_authentication_token",
        }
    }

    /// Fields that must be present as non-empty strings, besides `type`.
    pub fn required_fields(self) -> &'static [&'static str] {
        match self {
            Mechanism::SelfSignup => &[
                "password_profile_id",
                "username",
                "password",
                "name",
                "email",
            ],
            Mechanism::Password => &["password_profile_id", "username", "password"],
            Mechanism::Passwordless => {
                &["password_profile_id", "username", "one_time_password_token"]
            }
            Mechanism::Oidc => &[
                "oauth_authorization_code",
                "oauth_redirect_uri",
                "oauth_code_verifier",
            ],
            Mechanism::SwitchAccount => &[],
        }
    }

    /// Fields that, when present, must be strings.
    pub fn optional_fields(self) -> &'static [&'static str] {
        match self {
            Mechanism::SelfSignup => &["given_name", "middle_name", "family_name"],
            _ => &[],
        }
    }

    /// Whether this creates a member (sign-up) rather than logging one in, for rate limits.
    pub fn is_signup(self) -> bool {
        self == Mechanism::SelfSignup
    }
}

/// What a token request must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignupPolicy {
    /// Mechanisms accepted; the others are answered 400 `mechanism_disabled`.
    pub mechanisms: Vec<Mechanism>,
    /// Whether `username` must look like an e-mail address (as the password profile may require).
    pub username_must_be_email: bool,
    /// Minimum `password` length for `self_signup`, in characters; 0 turns the check off.
    pub min_password_length: usize,
}

impl Default for SignupPolicy {
    fn default() -> Self {
        SignupPolicy {
            mechanisms: Mechanism::ALL.to_vec(),
            username_must_be_email: false,
            min_password_length: 0,
        }
    }
}

/// Why a token request was refused before it reached the upstream.
#[derive(Debug, thiserror::Error)]
pub enum SignupError {
    /// Not JSON.
    #[error("the body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// Over `server.max_body_bytes`.
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The client stopped sending, or sent a broken body.
    #[error("the request body could not be read")]
    BodyRead,
    /// The body was not complete within `server.body_read_timeout` of the head.
    #[error("the request body was not complete within {} s", after.as_secs_f64())]
    BodyTimeout { after: Duration },
    /// The body is not a valid token request.
    #[error("{detail}")]
    Invalid {
        code: &'static str,
        pointer: String,
        detail: String,
    },
    /// Over a rate limit.
    #[error("too many token requests; retry in {} s", retry_after.as_secs().max(1))]
    RateLimited { limit: Limit, retry_after: Duration },
}

impl SignupError {
    fn invalid(code: &'static str, pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        SignupError::Invalid {
            code,
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }
}

/// Outcome labels of `signups_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Refused by the checks (400/401/413/415), including an invalid current token on an
    /// account switch.
    Rejected,
    /// Refused by a rate limit (429).
    RateLimited,
    /// `201` and every issued token recorded.
    Issued,
    /// `201` the gateway could not learn from (shape, size, cut off).
    Unrecorded,
    /// The upstream said no (wrong password, duplicate user, ...).
    Refused,
    /// The upstream failed (502/504 by the gateway, or a 5xx).
    UpstreamError,
}

impl Outcome {
    /// Every outcome, for pre-initialising metric labels.
    pub const ALL: [Outcome; 6] = [
        Outcome::Rejected,
        Outcome::RateLimited,
        Outcome::Issued,
        Outcome::Unrecorded,
        Outcome::Refused,
        Outcome::UpstreamError,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Rejected => "rejected",
            Outcome::RateLimited => "rate_limited",
            Outcome::Issued => "issued",
            Outcome::Unrecorded => "unrecorded",
            Outcome::Refused => "refused",
            Outcome::UpstreamError => "upstream_error",
        }
    }
}

/// The sign-up path's settings and shared state.
pub struct Signup {
    policy: SignupPolicy,
    limiter: Arc<RateLimiter>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// Largest request body read.
    max_body_bytes: usize,
    /// Time the whole body may take to arrive.
    body_read_timeout: Duration,
    /// Largest `201` body copied for learning.
    max_response_bytes: usize,
}

/// Settings of [`Signup`], from the configuration.
pub struct SignupSettings {
    pub policy: SignupPolicy,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
    pub max_response_bytes: usize,
}

impl Signup {
    /// The sign-up path counting against `limiter` and recording into `store`.
    pub fn new(
        settings: SignupSettings,
        limiter: Arc<RateLimiter>,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Signup {
            policy: settings.policy,
            limiter,
            store,
            metrics,
            max_body_bytes: settings.max_body_bytes,
            body_read_timeout: settings.body_read_timeout,
            max_response_bytes: settings.max_response_bytes,
        }
    }

    /// Reads and checks a token request from `client`. On success, the body to forward
    /// (unchanged) and what was learnt of it.
    pub async fn admit(
        &self,
        headers: &HeaderMap,
        body: Incoming,
        client: IpAddr,
    ) -> Result<(Bytes, CheckedRequest), (Option<Mechanism>, SignupError)> {
        // Content-Type is a singleton: with two, the body would be checked as one type and
        // could be read upstream as the other.
        let mut content_types = headers.get_all(header::CONTENT_TYPE).iter();
        let content_type = match (content_types.next(), content_types.next()) {
            (Some(value), None) => value.to_str().ok(),
            _ => None,
        };
        if !is_json_media_type(content_type) {
            return Err((None, SignupError::UnsupportedMediaType));
        }
        let too_large = SignupError::TooLarge {
            limit: self.max_body_bytes,
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // Refused before a byte of the body is read: the client may not even be sending it.
        if declared.is_some_and(|len| len > self.max_body_bytes as u64) {
            linger(headers, body);
            return Err((None, too_large));
        }
        // A whole-body deadline, not a per-chunk one: a byte a second must not hold the request
        // (and its connection) open for as long as the client cares to trickle.
        let deadline = tokio::time::Instant::now() + self.body_read_timeout;
        let read = read_at_most(body, self.max_body_bytes);
        let bytes = match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(Ok(bytes))) => bytes,
            Ok(Ok(Err(rest))) => {
                linger(headers, rest);
                return Err((None, too_large));
            }
            Ok(Err(_)) => return Err((None, SignupError::BodyRead)),
            Err(_) => {
                let after = self.body_read_timeout;
                return Err((None, SignupError::BodyTimeout { after }));
            }
        };
        let checked = check_body(&bytes, &self.policy).map_err(|e| (None, e))?;
        let mechanism = Some(checked.mechanism);
        self.limiter
            .check(
                checked.mechanism.is_signup(),
                client,
                checked.username.as_deref(),
            )
            .map_err(|(limit, retry_after)| {
                (mechanism, SignupError::RateLimited { limit, retry_after })
            })?;
        Ok((bytes, checked))
    }

    /// The sink that records the tokens of a `201` answer to a `mechanism` request.
    pub fn learner(&self, mechanism: Mechanism) -> Box<dyn TeeSink> {
        Box::new(Learner {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            mechanism,
        })
    }

    /// The cap on the copy of a `201` body.
    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }

    /// Counts one token request's outcome.
    pub fn count(&self, mechanism: Option<Mechanism>, outcome: Outcome) {
        self.metrics.count_signup(mechanism, outcome);
    }

    /// Counts a logout from `client` against its limit, and `member`'s once the token names one
    /// (a refusal is counted in `rate_limited_total`).
    pub fn admit_logout(&self, client: IpAddr, member: Option<&str>) -> Result<(), SignupError> {
        let checked = match member {
            None => self.limiter.check_logout_ip(client),
            Some(member) => self.limiter.check_logout_member(member),
        };
        checked.map_err(|(limit, retry_after)| {
            self.count_rate_limited(limit);
            SignupError::RateLimited { limit, retry_after }
        })
    }

    /// Counts a request refused by a rate limit.
    pub fn count_rate_limited(&self, limit: Limit) {
        self.metrics
            .rate_limited_total
            .with_label_values(&[limit.as_str()])
            .inc();
    }
}

/// Records the tokens of one `201` answer.
struct Learner {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    mechanism: Mechanism,
}

/// How much of a refused body is read and thrown away after the `413` has gone out, and for how
/// long. Closing a connection with unread bytes in it makes the kernel reset it, and a reset can
/// destroy the answer before the client has read it: a client still sending would get a broken
/// connection instead of its `413`. So the answer goes out at once and the rest of the body is
/// read in the background, as nginx's lingering close does; past either bound the connection is
/// simply closed.
const DRAIN_AT_MOST: usize = 4 * 1024 * 1024;
const LINGER_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// Drains what is left of a refused `body` in the background (see [`DRAIN_AT_MOST`]), unless
/// the client waits for `100 Continue` and so has sent nothing.
fn linger(headers: &HeaderMap, body: Incoming) {
    if headers.contains_key(header::EXPECT) {
        return;
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(LINGER_FOR, drain(body)).await;
    });
}

/// The whole of `body` when it holds at most `limit` bytes; else what is left of it, past the
/// chunk that went over. One chunk is returned as it came, without a copy.
async fn read_at_most(
    mut body: Incoming,
    limit: usize,
) -> Result<Result<Bytes, Incoming>, hyper::Error> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        len += data.len();
        if len > limit {
            return Ok(Err(body));
        }
        chunks.push(data);
    }
    Ok(Ok(match chunks.len() {
        1 => chunks.swap_remove(0),
        _ => chunks.concat().into(),
    }))
}

/// Reads and discards what is left of `body`, at most [`DRAIN_AT_MOST`] bytes.
async fn drain(mut body: Incoming) {
    let mut left = DRAIN_AT_MOST;
    while let Some(Ok(frame)) = body.frame().await {
        let len = frame.data_ref().map_or(0, Bytes::len);
        match left.checked_sub(len) {
            Some(rest) => left = rest,
            None => return,
        }
    }
}

impl TeeSink for Learner {
    fn complete(self: Box<Self>, body: Bytes) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let records = match records(&body) {
                Ok(records) => records,
                Err(error) => {
                    tracing::warn!(%error, mechanism = self.mechanism.as_str(), "201 not learnt");
                    self.metrics
                        .count_signup(Some(self.mechanism), Outcome::Unrecorded);
                    return;
                }
            };
            let (mut recorded, total) = (0u64, records.len());
            for record in records {
                match self.store.record(record).await {
                    Ok(()) => recorded += 1,
                    Err(error) => tracing::warn!(%error, "recording an issued token failed"),
                }
            }
            self.metrics.tokens_issued_total.inc_by(recorded);
            // A token that was not written is one no replica will recognise: the sign-up did
            // not do what `issued` promises.
            let outcome = if recorded == total as u64 {
                Outcome::Issued
            } else {
                Outcome::Unrecorded
            };
            self.metrics.count_signup(Some(self.mechanism), outcome);
        })
    }

    fn incomplete(self: Box<Self>, why: Incomplete) {
        tracing::warn!(?why, mechanism = self.mechanism.as_str(), "201 not learnt");
        self.metrics
            .count_signup(Some(self.mechanism), Outcome::Unrecorded);
    }
}

/// A string of a JSON body (a value or an object key), borrowed from the body unless it holds
/// escapes. serde borrows a `Cow<str>` field only when it is not inside an `Option` or a map
/// key, so the request's keys and the `201`'s optional fields read through this.
struct Text<'a>(std::borrow::Cow<'a, str>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> serde::de::Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(std::borrow::Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(std::borrow::Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}
