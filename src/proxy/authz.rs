//! The external-authorization listener: an ingress (nginx `auth_request`, Caddy `forward_auth`,
//! Traefik `forwardAuth`, Envoy or Istio `ext_authz` over HTTP) asks whether one request may go
//! on, and gets the proxy's decision without the proxy's hop. Nothing is forwarded.
//!
//! The judged request is read from the call: its method and target from `X-Forwarded-Method` and
//! `X-Forwarded-Uri` (Traefik, Caddy), else `X-Original-Method` and `X-Original-URI` (nginx),
//! else the call's own method and path with `authz.path_prefix` removed (Envoy), or from the one
//! source `authz.target_from` pins; its token and `Origin` are the call's own headers. The
//! target goes through the same canonical form and route rules as on the proxy, and the token
//! through the same [`Validator`]. The answer is `200` with the identity headers for the ingress
//! to copy upstream, or the proxy's own refusal.
//!
//! An unknown token the proxy would forward once for the upstream to judge
//! (`tokens.unknown = "upstream"`) is allowed without identity headers: the ingress sends it to
//! the same upstream, which judges it, exactly as the operator chose. With `unknown = "reject"`
//! the validator refuses it, as on the proxy.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;

use tracing::Span;

use super::{finish, full_body, headers, is_preflight, Body, ALLOW_ANY, X_REQUEST_ID};
use crate::answer::GatewayError;
use crate::config::{AuthzConfig, TargetFrom};
use crate::logging::access::{self, AccessLine};
use crate::metrics::{Metrics, AUTHZ_ROUTE};
use crate::scope::RouteKind;
use crate::telemetry::{self, traced};
use crate::validator::{Validator, Verdict};

/// Traefik's and Caddy's headers naming the judged request.
pub const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
/// See [`X_FORWARDED_METHOD`].
pub const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
/// nginx's convention (set in its `auth_request` location) for the judged request.
pub const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
/// See [`X_ORIGINAL_METHOD`].
pub const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");

/// Why a call names no request that can be judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    /// Both header conventions, or one header twice: which one the ingress meant is a guess.
    #[error(
        "the call names the judged request more than once (X-Forwarded-Method/-Uri and \
         X-Original-Method/-URI, or one of them twice); send one pair"
    )]
    Ambiguous,
    /// One header of a pair without the other.
    #[error("{0} is missing: the judged request's method and target come together")]
    Missing(&'static str),
    /// A method or target header that does not parse.
    #[error("{0} is not a valid {1}")]
    Invalid(&'static str, &'static str),
    /// A call with no target header whose path does not start with `authz.path_prefix`.
    #[error("the call's path does not start with authz.path_prefix and names no target header")]
    OutsidePrefix,
    /// Token requests and logout are the proxy listener's: only there are sign-ups checked,
    /// issued tokens learnt, and logout answered.
    #[error(
        "token requests and logout go to the gateway's proxy listener; route the token \
         endpoint there, not through the decision"
    )]
    TokenEndpoint,
}

impl AuthzError {
    /// The machine-readable code of the JSON:API answer.
    pub fn code(self) -> &'static str {
        match self {
            AuthzError::Ambiguous => "target_ambiguous",
            AuthzError::Missing(_) => "target_header_missing",
            AuthzError::Invalid(..) => "target_header_invalid",
            AuthzError::OutsidePrefix => "path_prefix_mismatch",
            AuthzError::TokenEndpoint => "token_endpoint_on_proxy",
        }
    }

    /// The status of the answer: 421 for the token endpoint (the call was sent to the wrong
    /// place), 400 for the rest.
    pub fn status(self) -> StatusCode {
        match self {
            AuthzError::TokenEndpoint => StatusCode::MISDIRECTED_REQUEST,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// The decision service of one configuration generation.
pub struct Decisions {
    validator: Arc<Validator>,
    /// `authz.path_prefix`; empty removes nothing.
    path_prefix: String,
    /// `authz.target_from`.
    target_from: TargetFrom,
    metrics: Arc<Metrics>,
}

/// What was decided, for the access log.
struct Decided {
    method: Option<Method>,
    outcome: &'static str,
    reason: &'static str,
}

impl Decisions {
    /// Decisions by `validator` (the proxy's own), reading the judged request as `config`
    /// (`[authz]`) says.
    pub fn new(validator: Arc<Validator>, config: &AuthzConfig, metrics: Arc<Metrics>) -> Self {
        Decisions {
            validator,
            path_prefix: config.path_prefix.clone(),
            target_from: config.target_from,
            metrics,
        }
    }

    /// Answers one call from `peer`. Never fails: every problem becomes an HTTP answer.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, Infallible> {
        // The body is never read: the decision is made on the head alone.
        let (parts, _body) = request.into_parts();
        Ok(self.answer(&parts, peer.ip()).await)
    }

    /// The answer to a call whose head is `call`, from `client`: the whole decision, counted
    /// and logged.
    pub async fn answer(&self, call: &Parts, client: IpAddr) -> Response<Body> {
        let started = Instant::now();
        // Unlike the proxy, nothing a `Connection` header names is removed: the call's
        // `Connection` is the ingress's own, and removing the headers it names could only take
        // away the ones naming the judged request, leaving a guess in their place.
        let request_id = headers::request_id(&call.headers);
        let mut decided = Decided {
            method: None,
            outcome: "allowed",
            reason: "-",
        };
        // An ingress that traces sends its `traceparent` along: the decision joins its trace.
        let traced = telemetry::enabled();
        let logged = access::enabled();
        let (span, incoming_trace) = if traced {
            (decision_span(call, client, &request_id), None)
        } else if logged {
            (Span::none(), telemetry::incoming_trace_id(&call.headers))
        } else {
            (Span::none(), None)
        };
        let mut response = match traced!(span.clone(), self.decide(call, &mut decided)) {
            Ok(response) => response,
            Err(error) => {
                decided.outcome = "denied";
                decided.reason = error.status_and_code().1;
                error.into_response()
            }
        };
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        let elapsed = started.elapsed();
        let status = response.status();
        self.metrics.observe_request(AUTHZ_ROUTE, status, elapsed);
        // One line per decision, as on the proxy.
        if logged || traced {
            let line = AccessLine {
                request_id: request_id.to_str().unwrap_or("-"),
                method: decided.method.as_ref().map_or("-", Method::as_str),
                route: "authz",
                status,
                outcome: decided.outcome,
                reason: decided.reason,
                elapsed,
                upstream: None,
                client,
                trace_id: None,
            };
            finish(line, traced.then_some(&span), incoming_trace);
        }
        response
    }

    async fn decide(
        &self,
        call: &Parts,
        decided: &mut Decided,
    ) -> Result<Response<Body>, GatewayError> {
        let (method, target) = self.judged(call)?;
        decided.method = Some(method.clone());
        if method == Method::CONNECT {
            return Err(GatewayError::MethodNotAllowed {
                method,
                allow: ALLOW_ANY,
            });
        }
        // The same canonical form and rules as the proxy: a target the proxy would refuse is
        // refused here, whichever spelling the ingress passed on.
        let route = self.validator.route(&target)?;
        let preflight = is_preflight(&method, &call.headers);
        let mut allowed = Response::new(full_body(Bytes::new()));
        *allowed.status_mut() = StatusCode::OK;
        match route.kind {
            // The proxy forwards preflights unchecked (browsers send no credentials with them).
            _ if preflight => decided.reason = "preflight",
            RouteKind::TokenEndpoint => return Err(AuthzError::TokenEndpoint.into()),
            RouteKind::Rule(_) => match self.validator.check(&route, &call.headers).await {
                Verdict::Untouched => decided.reason = "unchecked",
                Verdict::Forward(None) => decided.reason = "no_token",
                Verdict::Forward(Some(identity)) => {
                    decided.reason = "token_valid";
                    self.validator
                        .identity_headers()
                        .set(allowed.headers_mut(), &identity);
                }
                // Nothing here can vouch for it and nothing is forwarded to learn from: the
                // ingress sends it on without an identity, and the upstream judges it.
                Verdict::Defer(_) => decided.reason = "token_unknown_deferred",
                Verdict::Reject(rejection) => return Err(rejection.into()),
            },
        }
        Ok(allowed)
    }

    /// The judged request's method and target, from the source `authz.target_from` names.
    fn judged(&self, call: &Parts) -> Result<(Method, Uri), AuthzError> {
        let forwarded = || pair(&call.headers, &X_FORWARDED_METHOD, &X_FORWARDED_URI);
        let original = || pair(&call.headers, &X_ORIGINAL_METHOD, &X_ORIGINAL_URI);
        let (method, target, names) = match self.target_from {
            TargetFrom::Path => return self.own(call),
            TargetFrom::Forwarded => match forwarded()? {
                Some((method, target)) => (method, target, FORWARDED_NAMES),
                None => return Err(AuthzError::Missing("X-Forwarded-Method/-Uri")),
            },
            TargetFrom::Original => match original()? {
                Some((method, target)) => (method, target, ORIGINAL_NAMES),
                None => return Err(AuthzError::Missing("X-Original-Method/-URI")),
            },
            TargetFrom::Any => match (forwarded()?, original()?) {
                (Some(_), Some(_)) => return Err(AuthzError::Ambiguous),
                (Some((method, target)), None) => (method, target, FORWARDED_NAMES),
                (None, Some((method, target))) => (method, target, ORIGINAL_NAMES),
                (None, None) => return self.own(call),
            },
        };
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| AuthzError::Invalid(names.0, "method"))?;
        let target = Uri::try_from(target.as_bytes())
            .map_err(|_| AuthzError::Invalid(names.1, "request target"))?;
        Ok((method, target))
    }

    /// The call's own method and target, `path_prefix` removed (Envoy's HTTP `ext_authz`).
    fn own(&self, call: &Parts) -> Result<(Method, Uri), AuthzError> {
        if self.path_prefix.is_empty() {
            return Ok((call.method.clone(), call.uri.clone()));
        }
        let Some(path_and_query) = call.uri.path_and_query() else {
            return Err(AuthzError::OutsidePrefix);
        };
        let rest = path_and_query
            .as_str()
            .strip_prefix(self.path_prefix.as_str())
            .filter(|rest| rest.starts_with('/'))
            .ok_or(AuthzError::OutsidePrefix)?;
        let target = Uri::try_from(rest)
            .map_err(|_| AuthzError::Invalid("the call's path", "request target"))?;
        Ok((call.method.clone(), target))
    }
}

const FORWARDED_NAMES: (&str, &str) = ("X-Forwarded-Method", "X-Forwarded-Uri");
const ORIGINAL_NAMES: (&str, &str) = ("X-Original-Method", "X-Original-URI");

/// The method and target headers of one convention: both or neither, each at most once.
fn pair<'h>(
    headers: &'h HeaderMap,
    method: &HeaderName,
    target: &HeaderName,
) -> Result<Option<(&'h HeaderValue, &'h HeaderValue)>, AuthzError> {
    let once = |name: &HeaderName| {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(_), Some(_)) => Err(AuthzError::Ambiguous),
            (value, _) => Ok(value),
        }
    };
    let names = if method == X_FORWARDED_METHOD {
        FORWARDED_NAMES
    } else {
        ORIGINAL_NAMES
    };
    match (once(method)?, once(target)?) {
        (None, None) => Ok(None),
        (Some(method), Some(target)) => Ok(Some((method, target))),
        (None, Some(_)) => Err(AuthzError::Missing(names.0)),
        (Some(_), None) => Err(AuthzError::Missing(names.1)),
    }
}

/// The span of one decision, continuing the ingress's trace if its call names one. Like the
/// access line, it names the call, never the judged target's query or a header value.
fn decision_span(call: &Parts, client: IpAddr, request_id: &HeaderValue) -> Span {
    let span = tracing::info_span!(
        target: telemetry::TARGET,
        "decision",
        otel.name = "authz",
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        client.address = %client,
        http.response.status_code = tracing::field::Empty,
        account_gate.request_id = request_id.to_str().unwrap_or("-"),
        account_gate.route = "authz",
        account_gate.outcome = tracing::field::Empty,
        account_gate.reason = tracing::field::Empty,
    );
    telemetry::continue_trace(&span, &call.headers);
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                (*name).clone(),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    #[test]
    fn a_pair_is_both_or_neither_and_each_once() {
        let none = headers(&[]);
        assert_eq!(
            pair(&none, &X_FORWARDED_METHOD, &X_FORWARDED_URI).map(|p| p.is_some()),
            Ok(false)
        );
        let alone = headers(&[(&X_FORWARDED_URI, "/v2/accounts/a")]);
        assert_eq!(
            pair(&alone, &X_FORWARDED_METHOD, &X_FORWARDED_URI).map(|p| p.is_some()),
            Err(AuthzError::Missing("X-Forwarded-Method"))
        );
        let twice = headers(&[
            (&X_ORIGINAL_METHOD, "GET"),
            (&X_ORIGINAL_URI, "/a"),
            (&X_ORIGINAL_URI, "/b"),
        ]);
        assert_eq!(
            pair(&twice, &X_ORIGINAL_METHOD, &X_ORIGINAL_URI).map(|p| p.is_some()),
            Err(AuthzError::Ambiguous)
        );
    }
}
