//! Traces: OpenTelemetry spans for the request, the token check, the upstream call and store
//! operations, exported over OTLP/HTTP (protobuf), and W3C trace context continued to the
//! upstream.
//!
//! - **Off costs nothing measurable.** Without an endpoint no tracer exists and no layer takes
//!   spans, so every span's callsite is disabled for good: creating one is an atomic load, and
//!   the proxy skips the trace-context work behind [`enabled`]. An incoming `traceparent` then
//!   passes through untouched, and the access log still names its trace id.
//! - **On**, an incoming `traceparent`/`tracestate` is continued: the request span is its child,
//!   and the upstream receives the same trace id with the gateway's upstream span as its parent.
//!   Without one, a sampled request starts a trace. Span attributes never hold a token, a
//!   header value or a query string.
//! - Spans are queued by the SDK's batch processor, which exports from a thread of its own;
//!   a full queue drops spans, never blocks a request.
//!
//! The exporter's HTTP client is written here, a few lines over hyper-util's client with the
//! gateway's rustls settings, rather than taken from `opentelemetry-otlp`: its reqwest clients
//! would bring a second HTTP stack and TLS library (and, blocking, a runtime thread of their
//! own), and its hyper client needs a tokio runtime on the exporting thread, which the batch
//! processor's thread is not. This one hands each export to the gateway's runtime.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::config::{TraceSampler, TracingConfig};

/// The target of every span the gateway makes; only these are exported.
pub const TARGET: &str = "account_gate::trace";

/// Largest answer read from the collector (its answer is a few bytes of protobuf).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The W3C trace-context header, named once so that looking it up parses nothing.
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Whether traces are being made: set once, when the tracer is installed.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are being made. One relaxed load: the proxy asks it before any trace work.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Awaits `$future` inside the span `$span` when tracing is on, and as it is when off (the span
/// is then not even made). Not `.instrument()` in both cases: the wrapper moves the future once
/// more, which cost about 1 000 instructions a proxied GET in copies with tracing off
/// (callgrind; `benches/README.md`). `$future` is written twice and evaluated once.
macro_rules! traced {
    ($span:expr, $future:expr) => {
        if $crate::telemetry::enabled() {
            ::tracing::Instrument::instrument($future, $span).await
        } else {
            $future.await
        }
    };
}
pub(crate) use traced;

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("tracing.ca_file: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("tracing.resource_attributes: {0}")]
    Resource(String),
}

/// The running tracer: keeps the provider alive, and flushes its queue at shutdown.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// The tracer `config` describes, exporting through `runtime`; `None` when tracing is off
    /// (no endpoint, or `exporter = "none"`).
    pub fn start(
        config: &TracingConfig,
        runtime: tokio::runtime::Handle,
    ) -> Result<Option<Self>, TelemetryError> {
        let Some(url) = config.export_url() else {
            return Ok(None);
        };
        let client = ExportClient::new(config, runtime)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(config.timeout)
            .build()?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(config.batch.max_queue_size)
            .with_max_export_batch_size(config.batch.max_export_batch_size)
            .with_scheduled_delay(config.batch.schedule_delay)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let attributes = config
            .resource_pairs()
            .map_err(TelemetryError::Resource)?
            .into_iter()
            .map(|(key, value)| KeyValue::new(key, value));
        // Built empty: the SDK's default detectors would read OTEL_SERVICE_NAME and
        // OTEL_RESOURCE_ATTRIBUTES a second time, behind the configuration's back.
        let resource = Resource::builder_empty()
            .with_attributes(attributes)
            .with_service_name(config.service_name.clone())
            .with_attribute(KeyValue::new("service.version", crate::VERSION))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler(config))
            .with_resource(resource)
            .build();
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Some(Telemetry { provider }))
    }

    /// The `tracing` layer that turns the gateway's spans (and nothing else) into OpenTelemetry
    /// spans.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let tracer = self.provider.tracer("account-gate");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // Source locations, thread names, levels and busy/idle times say nothing an
            // operator following a request needs, and each costs work per span.
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(
                tracing_subscriber::filter::filter_fn(|meta| {
                    meta.is_span() && meta.target() == TARGET
                })
                // The gateway's spans are INFO: nothing below it needs looking at.
                .with_max_level_hint(tracing_subscriber::filter::LevelFilter::INFO),
            )
    }

    /// Exports what is queued and stops the exporter, within the batch's export timeout. Runs on
    /// a blocking thread: the export itself needs the runtime this is called from, which may
    /// have only one thread.
    pub async fn shutdown(self) {
        let provider = self.provider;
        ENABLED.store(false, Ordering::Relaxed);
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "flushing the last spans failed"),
            Err(error) => tracing::warn!(%error, "flushing the last spans failed"),
        }
    }
}

/// The SDK sampler for `tracing.sampler` and `tracing.sampler_arg`.
fn sampler(config: &TracingConfig) -> Sampler {
    let ratio = config.sampler_arg.0;
    match config.sampler {
        TraceSampler::AlwaysOn => Sampler::AlwaysOn,
        TraceSampler::AlwaysOff => Sampler::AlwaysOff,
        TraceSampler::Traceidratio => Sampler::TraceIdRatioBased(ratio),
        TraceSampler::ParentbasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        TraceSampler::ParentbasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        TraceSampler::ParentbasedTraceidratio => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
    }
}

/// Makes `span` the continuation of the trace named by the request's `traceparent` and
/// `tracestate`, if they name one. Call before the span is entered.
pub fn continue_trace(span: &Span, headers: &HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        // Fails only for a span that is disabled or already started, neither of which can be
        // here; the span then simply starts a trace of its own.
        let _ = span.set_parent(parent);
    }
}

/// Writes `span`'s trace context as `traceparent` (and `tracestate`, when it has one) into the
/// headers of the request going upstream, replacing the client's.
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    let context = span.context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
        // The propagator writes `tracestate` even when it is empty.
        if headers.get("tracestate").is_some_and(|v| v.is_empty()) {
            headers.remove("tracestate");
        }
    }
}

/// The trace id of `span`, when tracing is on and it has one.
pub fn trace_id_of(span: &Span) -> Option<TraceId> {
    let context = span.context();
    let id = context.span().span_context().trace_id();
    (id != TraceId::INVALID).then_some(id)
}

/// The trace id of a request's `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), read without
/// allocating, for the access log when the gateway makes no trace of its own. A malformed or
/// all-zero one is none.
pub fn incoming_trace_id(headers: &HeaderMap) -> Option<TraceId> {
    let value = headers.get(&TRACEPARENT)?.to_str().ok()?.trim();
    let mut parts = value.split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    // Version ff is invalid; a later version may carry more fields, version 00 may not.
    let version_ok =
        hex(version, 2) && version != "ff" && (version != "00" || parts.next().is_none());
    if !version_ok || !hex(trace_id, 32) || !hex(span_id, 16) || !hex(flags, 2) {
        return None;
    }
    let id = TraceId::from_hex(trace_id).ok()?;
    (id != TraceId::INVALID && span_id != "0000000000000000").then_some(id)
}

/// The exporter's HTTP client: hyper-util's pooled client, run on the gateway's runtime.
#[derive(Clone)]
struct ExportClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

impl std::fmt::Debug for ExportClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ExportClient {
    fn new(
        config: &TracingConfig,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, TelemetryError> {
        let client = crate::tls::occasional_client(config.ca_file.as_deref(), config.timeout)?;
        Ok(ExportClient {
            client,
            runtime,
            // The batch processor's thread waits on each export as long as it takes: the
            // export timeout is enforced here, on the one HTTP exchange an export is.
            timeout: config.timeout.min(config.batch.export_timeout),
        })
    }

    async fn exchange(self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let response = self.client.request(request.map(Full::new)).await?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_ANSWER_BYTES).collect().await?;
        Ok(Response::from_parts(parts, body.to_bytes()))
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (this, timeout) = (self.clone(), self.timeout);
        // Spawned on the gateway's runtime and awaited from the exporting thread, which has none.
        let task = self
            .runtime
            .spawn(async move { tokio::time::timeout(timeout, this.exchange(request)).await });
        match task.await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(format!("no answer within {timeout:?}").into()),
            Err(error) => Err(Box::new(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_traceparent(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", value.parse().expect("a header value"));
        headers
    }

    #[test]
    fn an_incoming_trace_id_is_read_only_from_a_well_formed_traceparent() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let good = format!("00-{id}-00f067aa0ba902b7-01");
        assert_eq!(
            incoming_trace_id(&with_traceparent(&good)).map(|t| t.to_string()),
            Some(id.to_owned())
        );
        let later_version = format!("01-{id}-00f067aa0ba902b7-01-extra");
        assert!(incoming_trace_id(&with_traceparent(&later_version)).is_some());
        for bad in [
            format!("00-{id}-00f067aa0ba902b7-01-extra"),
            format!("ff-{id}-00f067aa0ba902b7-01"),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("00-{id}-0000000000000000-01"),
            format!("00-{}-00f067aa0ba902b7-01", id.to_uppercase()),
            format!("00-{id}-00f067aa0ba902b7"),
            format!("00-{id}x-00f067aa0ba902b7-01"),
            "garbage".to_owned(),
        ] {
            assert_eq!(incoming_trace_id(&with_traceparent(&bad)), None, "{bad}");
        }
        assert_eq!(incoming_trace_id(&HeaderMap::new()), None);
    }
}
