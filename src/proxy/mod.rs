//! The data plane: the listener, the per-request handler and the forwarding client.
//!
//! A request enters [`Gateway::handle`], is classified into a route class, and (for now every
//! class) forwarded to the upstream with its headers rewritten; the answer streams back.

mod headers;
mod listener;
mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::answer::GatewayError;
use crate::metrics::{code_class, Metrics};

pub use headers::{strip_hop_by_hop, X_REQUEST_ID};
pub use listener::{serve, ListenerSettings};
pub use upstream::{Upstream, UpstreamError, UpstreamSetupError};

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

/// Wraps a body that streams from a socket into [`Body`].
fn streamed(body: Incoming) -> Body {
    body.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()
}

/// The token endpoint (DESIGN.md): its requests are the "signup" route class.
const SIGNUP_PATH: &str = "/v2/account-members/tokens";

/// Which kind of request this is; the `route` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// `POST` to the token endpoint: sign-up, login, account switch.
    Signup,
    /// Everything else, forwarded untouched.
    Passthrough,
}

impl RouteClass {
    /// Classifies a request by method and path.
    pub fn of(method: &Method, path: &str) -> Self {
        if *method == Method::POST && path == SIGNUP_PATH {
            RouteClass::Signup
        } else {
            RouteClass::Passthrough
        }
    }

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Signup => "signup",
            RouteClass::Passthrough => "passthrough",
        }
    }
}

/// State shared by every connection of the data plane.
pub struct Gateway {
    upstream: Upstream,
    metrics: Arc<Metrics>,
}

impl Gateway {
    /// A gateway forwarding to `upstream` and counting into `metrics`.
    pub fn new(upstream: Upstream, metrics: Arc<Metrics>) -> Self {
        Gateway { upstream, metrics }
    }

    /// Answers one request from `peer`. Never fails: every problem becomes an HTTP answer.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, Infallible> {
        let started = Instant::now();
        let request_id = headers::request_id(request.headers());
        let route = RouteClass::of(request.method(), request.uri().path());
        let method = request.method().clone();

        let mut response = match self.forward(request, peer, &request_id, route).await {
            Ok(response) => response,
            Err(error) => {
                self.count_error(&error);
                tracing::warn!(request_id = ?request_id, %error, "answered by the gateway");
                error.into_response()
            }
        };
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id.clone());

        let elapsed = started.elapsed();
        let status = response.status();
        self.metrics
            .requests_total
            .with_label_values(&[route.as_str(), code_class(status)])
            .inc();
        self.metrics
            .request_duration_seconds
            .with_label_values(&[route.as_str()])
            .observe(elapsed.as_secs_f64());
        tracing::info!(
            target: "access",
            request_id = request_id.to_str().unwrap_or("-"),
            %method,
            route = route.as_str(),
            status = status.as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            client = %peer.ip(),
        );
        Ok(response)
    }

    /// Sends the request upstream with its headers rewritten and returns the streaming answer.
    async fn forward(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        request_id: &HeaderValue,
        route: RouteClass,
    ) -> Result<Response<Body>, GatewayError> {
        let (mut parts, body) = request.into_parts();
        // HTTP/2 clients send `:authority` instead of `Host`.
        let host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::set_forwarded(&mut parts.headers, peer.ip(), host);
        parts
            .headers
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        let mut outbound = Request::from_parts(parts, streamed(body));
        self.upstream.retarget(&mut outbound);

        let sent = Instant::now();
        let answer = self.upstream.send(outbound).await;
        self.metrics
            .upstream_duration_seconds
            .with_label_values(&[route.as_str()])
            .observe(sent.elapsed().as_secs_f64());
        let (mut parts, body) = answer?.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, streamed(body)))
    }

    fn count_error(&self, error: &GatewayError) {
        match error {
            GatewayError::Upstream(e) => {
                let kind = match e {
                    UpstreamError::Connect(_) => "connect",
                    UpstreamError::Timeout(_) => "timeout",
                    UpstreamError::Failed(_) => "failed",
                };
                self.metrics
                    .upstream_errors_total
                    .with_label_values(&[kind])
                    .inc();
            }
        }
    }
}
