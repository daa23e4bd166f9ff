//! Every metric of the gateway, declared once, on one non-global registry.
//!
//! Names and labels are a contract with dashboards and alerts (docs/design.md, "Metrics"):
//! prefix `account_gate_`, units in the name, label values from small fixed sets only.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::proxy::CloseReason;
use crate::signup::{Limit, Mechanism, Outcome};
use crate::store;
use crate::validator::Rejection;

/// Route classes: the only values the `route` label takes. `authz` counts the decisions of the
/// external-authorization listener, which forwards nothing.
pub const ROUTES: [&str; 4] = ["signup", "scoped", "passthrough", "authz"];
/// The position of `authz` in [`ROUTES`].
pub const AUTHZ_ROUTE: usize = 3;
/// Status classes: the only values the `code_class` label takes.
pub const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Upstream failure kinds: the only values the `upstream_errors_total{kind}` label takes.
pub const UPSTREAM_ERROR_KINDS: [&str; 3] = ["connect", "timeout", "failed"];
/// Why a token was accepted: the `reason` values of `token_validations_total{outcome="accepted"}`.
pub const ACCEPTED_REASONS: [&str; 5] = [
    "issued",
    "signature",
    "issued_and_signature",
    "no_token",
    "learned",
];

/// Listeners: the only values the `listener` label takes.
pub const LISTENERS: [&str; 3] = ["data", "admin", "authz"];

/// Latency buckets from 100 µs to 30 s, roughly ×2.5 apart.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// The gateway's metrics. Cheap to share behind an `Arc`; every handle is lock-free.
pub struct Metrics {
    registry: Registry,
    /// `requests_total{route,code_class}`: every answered request, forwarded or not.
    pub requests_total: IntCounterVec,
    /// `request_duration_seconds{route}`: from request head to response head, as the client sees it.
    pub request_duration_seconds: HistogramVec,
    /// `upstream_duration_seconds{route}`: from forwarding to the upstream's response head.
    pub upstream_duration_seconds: HistogramVec,
    /// `upstream_errors_total{kind}`: requests that got no usable answer from the upstream.
    pub upstream_errors_total: IntCounterVec,
    /// `signups_total{mechanism,outcome}`: token requests by mechanism and what became of them.
    pub signups_total: IntCounterVec,
    /// `tokens_issued_total`: account tokens learnt from the upstream's answers.
    pub tokens_issued_total: IntCounter,
    /// `store_entries`: live records in the token store.
    pub store_entries: IntGauge,
    /// `store_up`: 1 while the token store answers, 0 while it cannot be reached; the store's
    /// health, which readiness deliberately does not follow.
    pub store_up: IntGauge,
    /// `store_errors_total{backend,op}`: token-store calls that failed (Redis down or slow).
    pub store_errors_total: IntCounterVec,
    /// `rate_limited_total{limit}`: token requests refused by each rate limit.
    pub rate_limited_total: IntCounterVec,
    /// `token_validations_total{outcome,reason}`: account-token decisions.
    pub token_validations_total: IntCounterVec,
    /// `verified_cache_hits_total`: signature checks answered from the verified-token cache.
    pub verified_cache_hits_total: IntCounter,
    /// `verified_cache_misses_total`: signatures actually verified.
    pub verified_cache_misses_total: IntCounter,
    /// `jwks_fetch_errors_total`: JWKS fetches that failed or brought a refused document.
    pub jwks_fetch_errors_total: IntCounter,
    /// `jwks_last_success_timestamp_seconds`: when the JWKS keys were last refreshed (only
    /// with a `jwks_url`).
    pub jwks_last_success_timestamp_seconds: IntGauge,
    /// `revocation_subscription_up`: 1 while revocations from other replicas arrive (the Redis
    /// store's pub/sub subscription; always 1 for the memory store, which has none to lose).
    pub revocation_subscription_up: IntGauge,
    /// `tokens_revoked_total`: tokens put on the deny-list (logout, admin API).
    pub tokens_revoked_total: IntCounter,
    /// `revocations_held`: deny entries held in this process (tokens, and members whose
    /// revocations were folded into one), set at each scrape.
    pub revocations_held: IntGauge,
    /// `config_reloads_total{outcome}`: configuration reloads, `success` or `failure`.
    pub config_reloads_total: IntCounterVec,
    /// `config_restart_required`: 1 once a reload changed a key only a restart applies (the
    /// running value was kept), until the process restarts.
    pub config_restart_required: IntGauge,
    /// `log_lines_dropped_total`: log lines dropped because the output could not keep up (read
    /// from the log writer at scrape time).
    pub log_lines_dropped_total: IntCounter,
    /// `connections_open{listener}`: client connections open now.
    pub connections_open: IntGaugeVec,
    /// `connections_closed_total{listener,reason}`: client connections ended, by why.
    pub connections_closed_total: IntCounterVec,
    /// `requests_in_flight`: data-plane requests whose answer is not yet fully written.
    pub requests_in_flight: IntGauge,
    /// Per route class (in [`ROUTES`] order), the handles every request updates, resolved once so
    /// the hot path does no label lookup.
    routes: [RouteHandles; ROUTES.len()],
    /// `signups_total{mechanism,outcome}`, resolved once: row 0 is the unknown mechanism, then
    /// `Mechanism::ALL`; columns follow `Outcome::ALL`.
    signups: [[IntCounter; Outcome::ALL.len()]; Mechanism::ALL.len() + 1],
    /// `token_validations_total{outcome="accepted"}` per reason of [`ACCEPTED_REASONS`], resolved
    /// once: every validated request counts one.
    accepted: [IntCounter; ACCEPTED_REASONS.len()],
    /// Serialises [`Metrics::sync_verified_cache`], which copies counters kept elsewhere.
    verified_sync: std::sync::Mutex<()>,
}

impl Metrics {
    /// Creates and registers every metric, with each label set used by dashboards at 0.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("account_gate".to_owned()), None)?;
        let requests_total = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Requests answered, by route class and status class.",
            ),
            &["route", "code_class"],
        )?;
        let request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from request head to response head, by route class.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let upstream_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "upstream_duration_seconds",
                "Time the upstream took to send its response head, by route class.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let upstream_errors_total = IntCounterVec::new(
            Opts::new(
                "upstream_errors_total",
                "Requests the upstream failed to answer, by kind.",
            ),
            &["kind"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "build_info",
                "Always 1; the version and revision labels name the running build.",
            ),
            &["version", "revision"],
        )?;
        let signups_total = IntCounterVec::new(
            Opts::new(
                "signups_total",
                "Token requests (sign-up, login, switch) by mechanism and outcome.",
            ),
            &["mechanism", "outcome"],
        )?;
        let tokens_issued_total = IntCounter::new(
            "tokens_issued_total",
            "Account tokens issued by the upstream and recorded.",
        )?;
        let store_entries = IntGauge::new("store_entries", "Live records in the token store.")?;
        let store_up = IntGauge::new(
            "store_up",
            "1 while the token store answers (the memory store always does), 0 while it cannot be reached.",
        )?;
        store_up.set(1);
        let store_errors_total = IntCounterVec::new(
            Opts::new(
                "store_errors_total",
                "Token-store calls that failed or timed out, by backend and operation.",
            ),
            &["backend", "op"],
        )?;
        let rate_limited_total = IntCounterVec::new(
            Opts::new(
                "rate_limited_total",
                "Token requests refused by a rate limit, by limit.",
            ),
            &["limit"],
        )?;
        let token_validations_total = IntCounterVec::new(
            Opts::new(
                "token_validations_total",
                "Account-token decisions by outcome (accepted, deferred, rejected) and reason.",
            ),
            &["outcome", "reason"],
        )?;
        let verified_cache_hits_total = IntCounter::new(
            "verified_cache_hits_total",
            "Signature checks answered from the verified-token cache.",
        )?;
        let verified_cache_misses_total = IntCounter::new(
            "verified_cache_misses_total",
            "Token signatures actually verified (verified-token cache misses).",
        )?;
        let jwks_fetch_errors_total = IntCounter::new(
            "jwks_fetch_errors_total",
            "JWKS fetches that failed or whose document was refused (the last good keys stay in use).",
        )?;
        let jwks_last_success_timestamp_seconds = IntGauge::new(
            "jwks_last_success_timestamp_seconds",
            "Unix time of the last JWKS fetch whose keys were taken.",
        )?;
        let revocation_subscription_up = IntGauge::new(
            "revocation_subscription_up",
            "1 while revocations published by other replicas are received, 0 while the subscription is lost.",
        )?;
        revocation_subscription_up.set(1);
        let revocations_held = IntGauge::new(
            "revocations_held",
            "Revocations held in this process: revoked tokens not yet expired, plus members whose revocations were folded into one.",
        )?;
        let tokens_revoked_total = IntCounter::new(
            "tokens_revoked_total",
            "Account tokens revoked (logout, admin API).",
        )?;
        let config_reloads_total = IntCounterVec::new(
            Opts::new("config_reloads_total", "Configuration reloads by outcome."),
            &["outcome"],
        )?;
        let connections_open = IntGaugeVec::new(
            Opts::new("connections_open", "Client connections open, by listener."),
            &["listener"],
        )?;
        let connections_closed_total = IntCounterVec::new(
            Opts::new(
                "connections_closed_total",
                "Client connections ended, by listener and reason.",
            ),
            &["listener", "reason"],
        )?;
        let requests_in_flight = IntGauge::new(
            "requests_in_flight",
            "Data-plane requests whose answer is not yet fully written.",
        )?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_closed_total.clone()))?;
        registry.register(Box::new(requests_in_flight.clone()))?;
        for listener in LISTENERS {
            connections_open.with_label_values(&[listener]);
            for reason in CloseReason::ALL {
                connections_closed_total.with_label_values(&[listener, reason.as_str()]);
            }
        }
        registry.register(Box::new(config_reloads_total.clone()))?;
        let config_restart_required = IntGauge::new(
            "config_restart_required",
            "1 once a reload changed a setting that only a restart applies (its running value is kept and logged), until the process restarts.",
        )?;
        registry.register(Box::new(config_restart_required.clone()))?;
        let log_lines_dropped_total = IntCounter::new(
            "log_lines_dropped_total",
            "Log lines (access lines included) dropped because stderr could not take them as fast as they came; requests never wait for their line.",
        )?;
        registry.register(Box::new(log_lines_dropped_total.clone()))?;
        registry.register(Box::new(token_validations_total.clone()))?;
        registry.register(Box::new(verified_cache_hits_total.clone()))?;
        registry.register(Box::new(verified_cache_misses_total.clone()))?;
        registry.register(Box::new(jwks_fetch_errors_total.clone()))?;
        registry.register(Box::new(jwks_last_success_timestamp_seconds.clone()))?;
        registry.register(Box::new(revocation_subscription_up.clone()))?;
        registry.register(Box::new(revocations_held.clone()))?;
        registry.register(Box::new(tokens_revoked_total.clone()))?;
        registry.register(Box::new(signups_total.clone()))?;
        registry.register(Box::new(tokens_issued_total.clone()))?;
        registry.register(Box::new(store_entries.clone()))?;
        registry.register(Box::new(store_up.clone()))?;
        registry.register(Box::new(store_errors_total.clone()))?;
        registry.register(Box::new(rate_limited_total.clone()))?;
        registry.register(Box::new(requests_total.clone()))?;
        registry.register(Box::new(request_duration_seconds.clone()))?;
        registry.register(Box::new(upstream_duration_seconds.clone()))?;
        registry.register(Box::new(upstream_errors_total.clone()))?;
        registry.register(Box::new(build_info.clone()))?;
        #[cfg(target_os = "linux")]
        // No namespace of its own: the registry's prefix makes `account_gate_process_*`.
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        build_info
            .with_label_values(&[crate::VERSION, crate::REVISION])
            .set(1);
        for route in ROUTES {
            request_duration_seconds.with_label_values(&[route]);
            upstream_duration_seconds.with_label_values(&[route]);
            for class in CODE_CLASSES {
                requests_total.with_label_values(&[route, class]);
            }
        }
        for kind in UPSTREAM_ERROR_KINDS {
            upstream_errors_total.with_label_values(&[kind]);
        }
        // Row 0 is `mechanism="unknown"` (refused before the mechanism was read), then
        // `Mechanism::ALL` in order.
        let signups = std::array::from_fn(|row| {
            let mechanism = row
                .checked_sub(1)
                .and_then(|i| Mechanism::ALL.get(i))
                .map_or("unknown", |m| m.as_str());
            Outcome::ALL
                .map(|outcome| signups_total.with_label_values(&[mechanism, outcome.as_str()]))
        });
        for backend in store::BACKENDS {
            for op in store::OPS {
                store_errors_total.with_label_values(&[backend, op]);
            }
        }
        for limit in Limit::ALL {
            rate_limited_total.with_label_values(&[limit.as_str()]);
        }
        let accepted = ACCEPTED_REASONS
            .map(|reason| token_validations_total.with_label_values(&["accepted", reason]));
        token_validations_total.with_label_values(&["deferred", "token_unknown"]);
        for outcome in ["success", "failure"] {
            config_reloads_total.with_label_values(&[outcome]);
        }
        for reason in Rejection::REASONS.iter().chain(&["upstream_refused"]) {
            token_validations_total.with_label_values(&["rejected", reason]);
        }
        let routes = ROUTES.map(|route| RouteHandles {
            requests: CODE_CLASSES.map(|class| requests_total.with_label_values(&[route, class])),
            duration: request_duration_seconds.with_label_values(&[route]),
            upstream: upstream_duration_seconds.with_label_values(&[route]),
        });
        Ok(Metrics {
            routes,
            signups,
            accepted,
            registry,
            requests_total,
            request_duration_seconds,
            upstream_duration_seconds,
            upstream_errors_total,
            signups_total,
            tokens_issued_total,
            store_entries,
            store_up,
            store_errors_total,
            rate_limited_total,
            token_validations_total,
            verified_cache_hits_total,
            verified_cache_misses_total,
            jwks_fetch_errors_total,
            jwks_last_success_timestamp_seconds,
            revocation_subscription_up,
            revocations_held,
            tokens_revoked_total,
            config_reloads_total,
            config_restart_required,
            log_lines_dropped_total,
            connections_open,
            connections_closed_total,
            requests_in_flight,
            verified_sync: std::sync::Mutex::new(()),
        })
    }

    /// The handles one listener updates (`listener` is one of [`LISTENERS`]); requests in
    /// flight are counted on the data listener only, so scrapes do not count themselves.
    pub fn listener(&self, listener: &'static str) -> ListenerMetrics {
        ListenerMetrics {
            open: self.connections_open.with_label_values(&[listener]),
            closed: CloseReason::ALL.map(|reason| {
                self.connections_closed_total
                    .with_label_values(&[listener, reason.as_str()])
            }),
            in_flight: (listener == "data").then(|| self.requests_in_flight.clone()),
        }
    }

    /// Counts one answered request of route class `route` (an index into [`ROUTES`]).
    pub fn observe_request(&self, route: usize, status: http::StatusCode, elapsed: Duration) {
        if let Some(handles) = self.routes.get(route) {
            let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
            handles.requests[class].inc();
            handles.duration.observe(elapsed.as_secs_f64());
        }
    }

    /// Counts one token request's outcome in `signups_total{mechanism,outcome}`; `None` is a
    /// request refused before its mechanism was known.
    pub fn count_signup(&self, mechanism: Option<Mechanism>, outcome: Outcome) {
        let row = mechanism.map_or(Some(0), |m| {
            Mechanism::ALL
                .iter()
                .position(|known| *known == m)
                .map(|i| i + 1)
        });
        let column = Outcome::ALL.iter().position(|known| *known == outcome);
        if let (Some(row), Some(column)) = (row, column) {
            self.signups[row][column].inc();
        }
    }

    /// Counts one token decision in `token_validations_total{outcome,reason}`.
    pub fn count_validation(&self, outcome: &str, reason: &str) {
        if outcome == "accepted" {
            if let Some(i) = ACCEPTED_REASONS.iter().position(|known| *known == reason) {
                self.accepted[i].inc();
                return;
            }
        }
        self.token_validations_total
            .with_label_values(&[outcome, reason])
            .inc();
    }

    /// Records how long the upstream took for a request of route class `route`.
    pub fn observe_upstream(&self, route: usize, took: Duration) {
        if let Some(handles) = self.routes.get(route) {
            handles.upstream.observe(took.as_secs_f64());
        }
    }

    /// Brings the verified-cache counters up to the totals the verifier keeps itself.
    pub fn sync_verified_cache(&self, hits: u64, misses: u64) {
        let _guard = self.verified_sync.lock();
        for (counter, total) in [
            (&self.verified_cache_hits_total, hits),
            (&self.verified_cache_misses_total, misses),
        ] {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// Brings the JWKS metrics up to the verifier's counts (read at scrape time, like the
    /// verified-cache counters). The timestamp stays 0 until a JWKS was fetched, and without a
    /// `jwks_url` (alerts compare it only when it is above 0).
    pub fn sync_jwks(&self, fetch_errors: u64, last_success: Option<u64>) {
        let _guard = self.verified_sync.lock();
        let counter = &self.jwks_fetch_errors_total;
        counter.inc_by(fetch_errors.saturating_sub(counter.get()));
        if let Some(at) = last_success.filter(|at| *at > 0) {
            self.jwks_last_success_timestamp_seconds
                .set(i64::try_from(at).unwrap_or(i64::MAX));
        }
    }

    /// Brings `log_lines_dropped_total` up to the log writer's count (read at scrape time).
    pub fn sync_log_drops(&self, dropped: u64) {
        let _guard = self.verified_sync.lock();
        let counter = &self.log_lines_dropped_total;
        counter.inc_by(dropped.saturating_sub(counter.get()));
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec only fails for malformed metric families, which `new` rules out.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(%error, "encoding metrics failed");
        }
        out
    }
}

/// The connection metrics of one listener, resolved once.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    /// `connections_open{listener}`.
    pub open: IntGauge,
    /// `connections_closed_total{listener,reason}`, in [`CloseReason::ALL`] order.
    closed: [IntCounter; CloseReason::ALL.len()],
    /// `requests_in_flight`, on the data listener.
    pub in_flight: Option<IntGauge>,
}

impl ListenerMetrics {
    /// Counts one connection closed for `reason`.
    pub fn closed(&self, reason: CloseReason) {
        self.closed[reason.index()].inc();
    }
}

/// The per-route handles of the request metrics.
struct RouteHandles {
    requests: [IntCounter; 5],
    duration: Histogram,
    upstream: Histogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authz_route_index_names_it() {
        assert_eq!(ROUTES[AUTHZ_ROUTE], "authz");
    }

    #[test]
    fn resolved_counters_count_under_their_own_labels() {
        let metrics = Metrics::new().expect("metrics");
        let mechanisms = || std::iter::once(None).chain(Mechanism::ALL.map(Some));
        // Each pair is counted a different number of times, so a mixed-up row or column shows.
        let times = |row: usize, column: usize| (row * Outcome::ALL.len() + column + 1) as u64;
        for (row, mechanism) in mechanisms().enumerate() {
            for (column, outcome) in Outcome::ALL.into_iter().enumerate() {
                for _ in 0..times(row, column) {
                    metrics.count_signup(mechanism, outcome);
                }
            }
        }
        for (row, mechanism) in mechanisms().enumerate() {
            let label = mechanism.map_or("unknown", Mechanism::as_str);
            for (column, outcome) in Outcome::ALL.into_iter().enumerate() {
                let counted = metrics
                    .signups_total
                    .with_label_values(&[label, outcome.as_str()])
                    .get();
                assert_eq!(counted, times(row, column), "{label} {}", outcome.as_str());
            }
        }

        for (i, reason) in ACCEPTED_REASONS.into_iter().enumerate() {
            for _ in 0..=i {
                metrics.count_validation("accepted", reason);
            }
        }
        metrics.count_validation("rejected", "token_expired");
        let validations = |outcome, reason| {
            metrics
                .token_validations_total
                .with_label_values(&[outcome, reason])
                .get()
        };
        for (i, reason) in ACCEPTED_REASONS.into_iter().enumerate() {
            assert_eq!(validations("accepted", reason), i as u64 + 1, "{reason}");
        }
        assert_eq!(validations("rejected", "token_expired"), 1);
    }
}
