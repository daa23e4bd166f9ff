//! The data plane: the listener, the per-request handler and the forwarding client.
//!
//! A request enters [`Gateway::handle`] and is classified. A token request (`POST` on the
//! sign-up path) is read and checked by [`Signup`] first and its `201` answer teed so the issued
//! tokens are learnt; `DELETE` on the same path is the logout the Commerce API lacks, answered
//! here. Every other request goes to the [`Validator`], which forwards it (with the validated
//! identity), forwards it once for the upstream to judge an unknown token, or refuses it. The
//! headers are rewritten on the way out and the answer streams back.

mod authz;
mod headers;
mod listener;
mod stall;
mod upstream;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use opentelemetry::trace::TraceId;
use tracing::Span;

use crate::answer::GatewayError;
use crate::logging::access::{self, AccessLine};
use crate::metrics::Metrics;
use crate::scope::{Route, RouteKind};
use crate::signup::{Mechanism, Outcome, Signup, SignupError, TeeBody};
use crate::telemetry::{self, traced};
use crate::validator::{Validator, Verdict};

pub use authz::{AuthzError, Decisions};

thread_local! {
    /// Which serving thread this is (see `crate::server`): 0 for the first, and for any thread
    /// that is not one.
    static SERVING_THREAD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as serving thread `index`, whose requests use the upstream
/// connections of their own thread.
pub fn set_serving_thread(index: usize) {
    SERVING_THREAD.set(index);
}

fn serving_thread() -> usize {
    SERVING_THREAD.get()
}
pub use headers::{strip_hop_by_hop, X_REQUEST_ID};
pub use listener::{serve, CloseAfter, CloseReason, InFlight, ListenerSettings, Places};
pub use upstream::{ConnectError, Upstream, UpstreamError, UpstreamSetupError};

/// The error type of every body the gateway sends or forwards.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response the gateway handles: streamed bodies from either
/// side and small bodies the gateway writes itself.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`, written by the gateway itself.
pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// `Allow` of the token endpoint: token requests, logout and CORS preflights.
const ALLOW_TOKEN_ENDPOINT: &str = "POST, DELETE, OPTIONS";
/// `Allow` of every other route (a `CONNECT` is refused: the gateway is no tunnel).
const ALLOW_ANY: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Whether a request is a CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`. Any other `OPTIONS` is judged like every request.
fn is_preflight(method: &Method, headers: &http::HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Which kind of request this is; the `route` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// The token endpoint: sign-up, login, switch (`POST`) and logout (`DELETE`).
    Signup,
    /// A request whose account token was checked.
    Scoped,
    /// Everything else, forwarded untouched.
    Passthrough,
}

impl RouteClass {
    /// The position of this class in [`crate::metrics::ROUTES`].
    pub fn index(self) -> usize {
        match self {
            RouteClass::Signup => 0,
            RouteClass::Scoped => 1,
            RouteClass::Passthrough => 2,
        }
    }

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Signup => "signup",
            RouteClass::Scoped => "scoped",
            RouteClass::Passthrough => "passthrough",
        }
    }
}

/// What became of one request, for its access-log line and metrics.
#[derive(Debug, Clone, Copy)]
struct Exchange {
    route: RouteClass,
    /// `forwarded`, `rejected` (refused by the gateway), `failed` (upstream) or `answered`.
    outcome: &'static str,
    /// A code from a fixed set: the refusal's `code`, or how a forwarded request was judged.
    reason: &'static str,
    /// How long the upstream took to answer, when it was asked.
    upstream: Option<Duration>,
    /// When the upstream's answer head arrived, while nothing has been awaited since: then the
    /// request's duration ends there, a few microseconds before the answer leaves the handler,
    /// and the clock is not read again for it.
    answered: Option<Instant>,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange {
            route: RouteClass::Passthrough,
            outcome: "forwarded",
            reason: "-",
            upstream: None,
            answered: None,
        }
    }
}

/// State shared by every connection of the data plane.
pub struct Gateway {
    upstream: Arc<Upstream>,
    signup: Signup,
    validator: Arc<Validator>,
    /// Headers removed from every request as it arrives: the identity headers (only the
    /// gateway may set them) and `server.strip_request_headers`.
    removed: headers::Removed,
    /// `server.trusted_hops`, for the client IP of rate limits.
    trusted_hops: usize,
    metrics: Arc<Metrics>,
}

impl Gateway {
    /// A gateway forwarding to `upstream`, checking token requests with `signup` and account
    /// tokens with `validator`, removing `strip_request_headers` from every request, and
    /// counting into `metrics`.
    pub fn new(
        upstream: Arc<Upstream>,
        signup: Signup,
        validator: Arc<Validator>,
        strip_request_headers: &[String],
        trusted_hops: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let configured = strip_request_headers
            .iter()
            .filter_map(|name| http::HeaderName::from_bytes(name.as_bytes()).ok());
        let removed = headers::Removed::new(
            validator
                .identity_headers()
                .names()
                .cloned()
                .chain(configured),
        );
        Gateway {
            upstream,
            signup,
            validator,
            removed,
            trusted_hops,
            metrics,
        }
    }

    /// A body streaming from either side, cut if it pauses for `upstream.body_timeout`.
    fn streamed(&self, body: Incoming) -> Body {
        stall::Stalled::new(body, self.upstream.body_timeout()).boxed_unsync()
    }

    /// The upstream client, with its pool of connections.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// Answers one request from `peer`. Never fails: every problem becomes an HTTP answer.
    pub async fn handle(
        self: Arc<Self>,
        mut request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, Infallible> {
        let started = Instant::now();
        // Hop-by-hop headers go before anything reads or adds one: what is checked is what is
        // forwarded, and a `Connection` header cannot name the headers the gateway adds (its
        // identity and forwarding headers) and so have them removed on the way out.
        headers::strip_hop_by_hop(request.headers_mut());
        // So are the identity headers, whatever the route, method or verdict (only a validation
        // sets them), and the headers some frameworks route by instead of the request line.
        self.removed.strip(request.headers_mut());
        let request_id = headers::request_id(request.headers());
        let method = request.method().clone();
        let client = headers::client_ip(peer.ip(), request.headers(), self.trusted_hops);
        let mut exchange = Exchange::default();
        let traced = telemetry::enabled();
        let logged = access::enabled();
        // Without traces of its own, the gateway still names the caller's trace in its log.
        let (span, incoming_trace) = if traced {
            (request_span(&request, client, &request_id), None)
        } else if logged {
            (
                Span::none(),
                telemetry::incoming_trace_id(request.headers()),
            )
        } else {
            (Span::none(), None)
        };

        let answer = traced!(
            span.clone(),
            self.dispatch(request, peer, client, &request_id, &mut exchange)
        );
        let mut response = match answer {
            Ok(response) => response,
            Err(error) => {
                self.count_error(&error);
                let (_, code) = error.status_and_code();
                exchange.outcome = match error {
                    GatewayError::Upstream(_) => "failed",
                    _ => "rejected",
                };
                exchange.reason = code;
                error.into_response()
            }
        };
        let route = exchange.route;
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id.clone());

        let elapsed = match exchange.answered {
            Some(answered) => answered.saturating_duration_since(started),
            None => started.elapsed(),
        };
        let status = response.status();
        self.metrics.observe_request(route.index(), status, elapsed);
        if logged || traced {
            let line = AccessLine {
                request_id: request_id.to_str().unwrap_or("-"),
                method: method.as_str(),
                route: route.as_str(),
                status,
                outcome: exchange.outcome,
                reason: exchange.reason,
                elapsed,
                upstream: exchange.upstream,
                client,
                trace_id: None,
            };
            finish(line, traced.then_some(&span), incoming_trace);
        }
        Ok(response)
    }

    /// Routes a request on its canonical target, which replaces what the client sent: every
    /// decision is made on that form, and exactly that form is forwarded.
    async fn dispatch(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
        client: IpAddr,
        request_id: &HeaderValue,
        exchange: &mut Exchange,
    ) -> Result<Response<Body>, GatewayError> {
        let method = request.method().clone();
        if method == Method::CONNECT {
            return Err(GatewayError::MethodNotAllowed {
                method,
                allow: ALLOW_ANY,
            });
        }
        let route = self.validator.route(request.uri())?;
        if let Some(uri) = route.target.rewritten_uri() {
            // An absolute-form target (and every HTTP/2 request) names the host the client
            // asked for; it is kept as `Host`, which it overrides (RFC 9112 §3.2.2), for
            // `X-Forwarded-Host`.
            if let Some(authority) = request.uri().authority() {
                if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                    request.headers_mut().insert(header::HOST, host);
                }
            }
            *request.uri_mut() = uri;
        }
        let preflight = is_preflight(&method, request.headers());
        match route.kind {
            RouteKind::TokenEndpoint => {
                exchange.route = RouteClass::Signup;
                match method {
                    Method::POST => {
                        self.token_request(request, peer, client, request_id, exchange)
                            .await
                    }
                    Method::DELETE => self.logout(request, client, exchange).await,
                    _ if preflight => self.preflight(request, peer, request_id, exchange).await,
                    method => Err(GatewayError::MethodNotAllowed {
                        method,
                        allow: ALLOW_TOKEN_ENDPOINT,
                    }),
                }
            }
            RouteKind::Rule(_) if preflight => {
                self.preflight(request, peer, request_id, exchange).await
            }
            RouteKind::Rule(_) => {
                self.account_request(request, &route, peer, request_id, exchange)
                    .await
            }
        }
    }

    /// A CORS preflight: browsers never attach credentials to one, and it asks only which
    /// methods and headers are allowed, so it is forwarded unchecked, but without the token
    /// header (a preflight that carries one is not a browser's) and without a body.
    async fn preflight(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        request_id: &HeaderValue,
        exchange: &mut Exchange,
    ) -> Result<Response<Body>, GatewayError> {
        exchange.reason = "preflight";
        let (mut parts, _body) = request.into_parts();
        parts.headers.remove(self.validator.token_header());
        parts.headers.remove(header::CONTENT_LENGTH);
        let response = self
            .forward(parts, full_body(Bytes::new()), peer, request_id, exchange)
            .await?;
        Ok(response.map(|body| self.streamed(body)))
    }

    /// Validates the account token of a request (as the route rules require) and forwards it,
    /// or refuses it.
    async fn account_request(
        &self,
        request: Request<Incoming>,
        route: &Route,
        peer: SocketAddr,
        request_id: &HeaderValue,
        exchange: &mut Exchange,
    ) -> Result<Response<Body>, GatewayError> {
        let verdict = self.validator.check(route, request.headers()).await;
        let (mut parts, body) = request.into_parts();
        let deferred = match verdict {
            Verdict::Untouched => {
                exchange.reason = "unchecked";
                None
            }
            Verdict::Forward(None) => {
                exchange.reason = "no_token";
                None
            }
            Verdict::Forward(Some(identity)) => {
                self.validator
                    .identity_headers()
                    .set(&mut parts.headers, &identity);
                exchange.route = RouteClass::Scoped;
                exchange.reason = "token_valid";
                None
            }
            Verdict::Defer(unknown) => {
                exchange.route = RouteClass::Scoped;
                exchange.reason = "token_unknown_deferred";
                Some(unknown)
            }
            Verdict::Reject(rejection) => {
                exchange.route = RouteClass::Scoped;
                return Err(rejection.into());
            }
        };
        let response = self
            .forward(parts, self.streamed(body), peer, request_id, exchange)
            .await?;
        if let Some(unknown) = deferred {
            self.validator.settle(unknown, response.status()).await;
            // Settling may wait on the store: the request's duration counts it.
            exchange.answered = None;
        }
        Ok(response.map(|body| self.streamed(body)))
    }

    /// `DELETE` on the token endpoint: revokes every token of the presented token's member, or
    /// only the presented token when nobody here can vouch for it. Rate-limited per client
    /// before the token is looked at and per member after: each logout leaves deny entries.
    async fn logout(
        &self,
        request: Request<Incoming>,
        client: IpAddr,
        exchange: &mut Exchange,
    ) -> Result<Response<Body>, GatewayError> {
        self.signup.admit_logout(client, None)?;
        let logout = self.validator.check_logout(request.headers()).await?;
        if let Some(member) = logout.member() {
            self.signup.admit_logout(client, Some(member))?;
        }
        exchange.outcome = "answered";
        exchange.reason = "logout";
        let revoked = self.validator.revoke(&logout).await?;
        tracing::info!(member = logout.member().unwrap_or("-"), revoked, "logout");
        let mut response = Response::new(full_body(Bytes::new()));
        *response.status_mut() = StatusCode::NO_CONTENT;
        Ok(response)
    }

    /// Checks a token request, forwards it, and tees a `201` answer to learn its tokens.
    async fn token_request(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        client: IpAddr,
        request_id: &HeaderValue,
        exchange: &mut Exchange,
    ) -> Result<Response<Body>, GatewayError> {
        let (mut parts, body) = request.into_parts();
        let (bytes, checked) = match self.signup.admit(&parts.headers, body, client).await {
            Ok(admitted) => admitted,
            Err((mechanism, error)) => {
                let outcome = match &error {
                    SignupError::RateLimited { limit, .. } => {
                        self.signup.count_rate_limited(*limit);
                        Outcome::RateLimited
                    }
                    _ => Outcome::Rejected,
                };
                self.signup.count(mechanism, outcome);
                return Err(error.into());
            }
        };
        let mechanism = Some(checked.mechanism);
        exchange.reason = checked.mechanism.as_str();
        if checked.mechanism == Mechanism::SwitchAccount {
            // Switching accounts needs a valid current token, like any account request.
            if let Err(rejection) = self.validator.check_token(&parts.headers).await {
                self.signup.count(mechanism, Outcome::Rejected);
                return Err(rejection.into());
            }
        }
        // The answer must arrive in a form the gateway can read to learn the tokens; token
        // answers are a few KiB, so asking for them uncompressed costs nothing.
        parts.headers.remove(header::ACCEPT_ENCODING);
        let response = self
            .forward(parts, full_body(bytes), peer, request_id, exchange)
            .await
            .inspect_err(|_| self.signup.count(mechanism, Outcome::UpstreamError))?;
        let status = response.status();
        if status == StatusCode::CREATED {
            let cap = self.signup.max_response_bytes();
            let learner = self.signup.learner(checked.mechanism);
            return Ok(response.map(|body| {
                let body = stall::Stalled::new(body, self.upstream.body_timeout());
                TeeBody::new(body, cap, learner).boxed_unsync()
            }));
        }
        let outcome = if status.is_server_error() {
            Outcome::UpstreamError
        } else {
            Outcome::Refused
        };
        self.signup.count(mechanism, outcome);
        Ok(response.map(|body| self.streamed(body)))
    }

    /// Sends a request upstream with its headers rewritten and returns the answer, whose body is
    /// still streaming.
    async fn forward(
        &self,
        mut parts: Parts,
        body: Body,
        peer: SocketAddr,
        request_id: &HeaderValue,
        exchange: &mut Exchange,
    ) -> Result<Response<Incoming>, GatewayError> {
        // HTTP/2 clients send `:authority` instead of `Host`.
        let host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        headers::set_forwarded(&mut parts.headers, peer.ip(), host);
        parts
            .headers
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        let mut outbound = Request::from_parts(parts, body);
        self.upstream.retarget(&mut outbound);
        let span = if telemetry::enabled() {
            let span = upstream_span(outbound.method(), self.upstream.address());
            // The upstream continues the trace from the gateway's call, not from the client's.
            telemetry::inject(&span, outbound.headers_mut());
            span
        } else {
            Span::none()
        };

        let sent = Instant::now();
        let answer = traced!(span.clone(), self.upstream.send(outbound, sent));
        let took = match &answer {
            Ok((_, arrived)) => {
                exchange.answered = Some(*arrived);
                arrived.saturating_duration_since(sent)
            }
            Err(_) => sent.elapsed(),
        };
        exchange.upstream = Some(took);
        self.metrics.observe_upstream(exchange.route.index(), took);
        if !span.is_disabled() {
            match &answer {
                Ok((response, _)) => {
                    span.record("http.response.status_code", response.status().as_u16());
                }
                Err(error) => {
                    span.record("error.type", error.kind());
                    span.record("otel.status_code", "error");
                }
            }
        }
        let (mut response, _) = answer?;
        headers::strip_hop_by_hop(response.headers_mut());
        Ok(response)
    }

    fn count_error(&self, error: &GatewayError) {
        match error {
            GatewayError::Signup(_)
            | GatewayError::Token(_)
            | GatewayError::Path(_)
            | GatewayError::Authz(_)
            | GatewayError::MethodNotAllowed { .. } => {}
            GatewayError::Upstream(e) => {
                self.metrics
                    .upstream_errors_total
                    .with_label_values(&[e.kind()])
                    .inc();
            }
        }
    }
}

/// The span of one request, continuing the caller's trace if it names one. Its attributes are
/// the access log's, never a header value, a body or a query string.
fn request_span(request: &Request<Incoming>, client: IpAddr, request_id: &HeaderValue) -> Span {
    let method = request.method().as_str();
    let span = tracing::info_span!(
        target: telemetry::TARGET,
        "request",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        url.path = request.uri().path(),
        client.address = %client,
        http.response.status_code = tracing::field::Empty,
        account_gate.request_id = request_id.to_str().unwrap_or("-"),
        account_gate.route = tracing::field::Empty,
        account_gate.outcome = tracing::field::Empty,
        account_gate.reason = tracing::field::Empty,
    );
    telemetry::continue_trace(&span, request.headers());
    span
}

/// Names the outcome on `span` (when tracing is on) and writes the access line with the trace
/// id: the span's, or else the caller's (`incoming`, read only when access lines are on). A 5xx
/// is an error of the gateway's (or its upstream's) and marks the span; a 4xx is the client's,
/// and does not.
fn finish(mut line: AccessLine<'_>, span: Option<&Span>, incoming: Option<TraceId>) {
    line.trace_id = match span {
        Some(span) => {
            span.record("http.response.status_code", line.status.as_u16());
            span.record("account_gate.route", line.route);
            span.record("account_gate.outcome", line.outcome);
            span.record("account_gate.reason", line.reason);
            if line.status.is_server_error() {
                span.record("otel.status_code", "error");
            }
            telemetry::trace_id_of(span)
        }
        None => incoming,
    };
    line.write();
}

/// The span of the call upstream: the client side of the exchange, whose context the upstream
/// receives in `traceparent`.
fn upstream_span(method: &Method, (host, port): (&str, u16)) -> Span {
    let method = method.as_str();
    tracing::info_span!(
        target: telemetry::TARGET,
        "upstream",
        otel.name = method,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        server.address = host,
        server.port = port,
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

#[cfg(test)]
mod tests {
    use super::RouteClass;
    use crate::metrics::ROUTES;

    #[test]
    fn route_indexes_match_the_metric_labels() {
        for route in [
            RouteClass::Signup,
            RouteClass::Scoped,
            RouteClass::Passthrough,
        ] {
            assert_eq!(ROUTES[route.index()], route.as_str());
        }
    }
}
