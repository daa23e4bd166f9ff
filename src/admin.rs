//! The admin listener: `/metrics` for Prometheus, `/healthz` and `/readyz` for Kubernetes.
//!
//! It is a separate port so that it is never exposed together with the data plane.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use arc_swap::ArcSwap;

use crate::answer::json_api_error;
use crate::config::UnknownTokens;
use crate::generation::Generation;
use crate::metrics::Metrics;
use crate::proxy::{full_body, Body};
use crate::store::{Store, TokenStore};

/// Whether the gateway should receive traffic. Starts not ready; turns ready once every
/// listener is up and turns unready for good at the first shutdown signal.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    /// Marks the gateway ready, unless shutdown has begun.
    pub fn set_ready(&self) {
        if !self.draining.load(Ordering::SeqCst) {
            self.ready.store(true, Ordering::SeqCst);
        }
    }

    /// Marks the gateway as shutting down: readiness is false from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.ready.store(false, Ordering::SeqCst);
    }

    /// `None` when ready, else why not.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::SeqCst) {
            Some("shutting_down")
        } else if !self.ready.load(Ordering::SeqCst) {
            Some("starting")
        } else {
            None
        }
    }
}

/// What the admin endpoints read.
pub struct Admin {
    /// Exported at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Reported at `/readyz`.
    pub health: Arc<Health>,
    /// The current generation: its verifier keeps the verified-cache counters that `/metrics`
    /// exports, and its admin API (when an admin token is configured) answers `/members/…`.
    pub current: Arc<ArcSwap<Generation>>,
    /// Pinged for `/readyz`'s body and the `store_up` gauge (never for readiness itself); with
    /// Redis, the first load of its deny-list replica is part of readiness
    /// (`Admin::not_ready_reason`).
    pub store: Arc<Store>,
}

impl Admin {
    /// Answers one admin request.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let generation = self.current.load_full();
        if let Some(api) = &generation.api {
            if let Some(response) = api.answer(&request).await {
                return Ok(response);
            }
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return Ok(json_api_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the admin endpoints answer GET".to_owned(),
            ));
        }
        let response = match request.uri().path() {
            "/metrics" => {
                // Counted here, not per request: the memory store's count takes every stripe
                // lock and sweeps the stripes where something expired.
                self.metrics
                    .store_entries
                    .set(i64::try_from(self.store.count()).unwrap_or(i64::MAX));
                self.store_up().await;
                if let Some(verifier) = &generation.verifier {
                    self.metrics
                        .sync_verified_cache(verifier.cache_hits(), verifier.cache_misses());
                    self.metrics
                        .sync_jwks(verifier.jwks_fetch_errors(), verifier.jwks_last_success());
                }
                self.metrics.sync_log_drops(crate::logging::dropped_lines());
                self.metrics
                    .revocations_held
                    .set(i64::try_from(self.store.revocations_held()).unwrap_or(i64::MAX));
                if let Store::Redis(store) = &*self.store {
                    self.metrics
                        .revocation_subscription_up
                        .set(i64::from(store.is_subscribed()));
                }
                let mut response = Response::new(full_body(self.metrics.encode()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#.to_owned()),
            "/readyz" => {
                // The store's health is reported, never followed: a Redis outage narrows what
                // the gateway can decide, but it must not take every replica out of service.
                let up = self.store_up().await;
                let store = if up { "up" } else { "down" };
                match self.not_ready_reason(&generation, up) {
                    None => json(
                        StatusCode::OK,
                        format!(r#"{{"status":"ready","store":"{store}"}}"#),
                    ),
                    Some(reason) => json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            r#"{{"status":"not_ready","reason":"{reason}","store":"{store}"}}"#
                        ),
                    ),
                }
            }
            _ => json_api_error(
                StatusCode::NOT_FOUND,
                "not_found",
                "the admin listener serves /metrics, /healthz and /readyz".to_owned(),
            ),
        };
        Ok(response)
    }
}

impl Admin {
    /// `None` when ready, else why not: the gateway's own state ([`Health`]), then whether
    /// this replica, with the Redis store, is still loading its copy of the deny-list.
    ///
    /// Until its first load a replica lacks the members' folded revocations, so it answers 503
    /// `store_unavailable` to every token whose signature or deferral needs them (after waiting
    /// `command_timeout` for the load): tokens a loaded replica decides. While Redis answers,
    /// that load is seconds of this pod's own start-up, like binding its listeners, and traffic
    /// is better sent elsewhere until it is done. While Redis does not answer, there is nothing
    /// to wait for that this pod controls: as for any outage, the store is reported and
    /// readiness does not follow it (a fleet restarted during an outage, or a sidecar's
    /// storefront, must not be kept out of service by it). Once loaded, the copy is never
    /// dropped, so this never makes a pod unready again. In `issued` mode with `unknown =
    /// "reject"` nothing reads the folded revocations, and an unloaded replica asks Redis about
    /// revocations: it decides as a loaded one does, and is not held back.
    fn not_ready_reason(&self, generation: &Generation, store_up: bool) -> Option<&'static str> {
        if let Some(reason) = self.health.not_ready_reason() {
            return Some(reason);
        }
        let tokens = &generation.config.tokens;
        let reads_folded =
            tokens.mode.checks_signatures() || tokens.unknown == UnknownTokens::Upstream;
        match &*self.store {
            Store::Redis(store) if reads_folded && store_up && !store.revocations_loaded() => {
                Some("revocations_loading")
            }
            _ => None,
        }
    }

    /// Whether the token store answers now (a bounded ping), also set as `store_up`.
    async fn store_up(&self) -> bool {
        let up = self.store.ping().await.is_ok();
        self.metrics.store_up.set(i64::from(up));
        up
    }
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(full_body(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
