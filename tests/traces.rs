//! Traces: the gateway binary exporting to an OTLP/HTTP receiver started here, continuing the
//! caller's W3C trace context to a recording upstream, and naming the trace in its access log.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use serde_json::Value;
use tokio::net::TcpListener;

use common::keys::{claims, TestKey};
use common::process::Process;
use common::upstream::TestUpstream;

const SECRET: &str = "hs256-secret-for-the-trace-tests-Q7w8e9";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// One exported span, flattened with its resource's attributes.
#[derive(Debug, Clone)]
struct Exported {
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
    resource: HashMap<String, String>,
    error: bool,
}

impl Exported {
    fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

/// An OTLP/HTTP receiver: decodes every `POST /v1/traces` (protobuf) and keeps its spans.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Exported>>>,
    /// Every attribute value and name it received, for the secret check.
    raw: Arc<Mutex<Vec<u8>>>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let (kept, kept_raw) = (spans.clone(), raw.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (kept, kept_raw) = (kept.clone(), kept_raw.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (kept, kept_raw) = (kept.clone(), kept_raw.clone());
                        async move {
                            let path_ok = request.uri().path() == "/v1/traces";
                            let protobuf = request
                                .headers()
                                .get(http::header::CONTENT_TYPE)
                                .is_some_and(|v| v == "application/x-protobuf");
                            let body = request.into_body().collect().await;
                            let status = match body {
                                Ok(body) if path_ok && protobuf => {
                                    let bytes = body.to_bytes();
                                    kept_raw.lock().expect("lock").extend_from_slice(&bytes);
                                    match ExportTraceServiceRequest::decode(bytes) {
                                        Ok(export) => {
                                            kept.lock().expect("lock").extend(flatten(export));
                                            StatusCode::OK
                                        }
                                        Err(_) => StatusCode::BAD_REQUEST,
                                    }
                                }
                                _ => StatusCode::BAD_REQUEST,
                            };
                            let mut answer = Response::new(Full::new(Bytes::new()));
                            *answer.status_mut() = status;
                            answer.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/x-protobuf"),
                            );
                            Ok::<_, Infallible>(answer)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            url: format!("http://{addr}"),
            spans,
            raw,
        }
    }

    /// Asserts that none of `secrets` appears anywhere in what was exported.
    fn assert_never_exported(&self, secrets: &[&str]) {
        let raw = self.raw.lock().expect("lock").clone();
        for secret in secrets {
            assert!(
                !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret:?} was exported"
            );
        }
    }

    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().expect("lock").clone()
    }

    /// Waits (at most 20 s) until the request span of `trace_id` is in, then returns every span
    /// of that trace.
    async fn trace(&self, trace_id: &str) -> Vec<Exported> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let trace: Vec<_> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            // The request span ends last: once it is there, its children are too.
            if trace.iter().any(|s| s.kind == SpanKind::Server as i32) {
                return trace;
            }
            assert!(
                Instant::now() < deadline,
                "no request span of trace {trace_id} within 20 s; got {:?}",
                self.spans()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn flatten(export: ExportTraceServiceRequest) -> Vec<Exported> {
    let mut out = Vec::new();
    for resource_spans in export.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(Exported {
                    name: span.name.clone(),
                    kind: span.kind,
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    attributes: attributes(&span.attributes),
                    resource: resource.clone(),
                    // STATUS_CODE_ERROR
                    error: span.status.as_ref().is_some_and(|s| s.code == 2),
                });
            }
        }
    }
    out
}

/// The gateway binary with JSON logs, its access lines on a channel.
struct Gateway {
    process: Process,
    listen: String,
    /// The external-authorization listener's address.
    authz: String,
    _files: Vec<tempfile::NamedTempFile>,
}

impl Gateway {
    /// Starts the binary in front of `upstream` in `signature` mode (HS256 with [`SECRET`]),
    /// with `env` added to its environment and no other tracing variable.
    fn start(upstream: &str, env: &[(&str, &str)]) -> Self {
        Self::start_with(upstream, "", env)
    }

    /// [`Gateway::start`] with `extra` TOML at the end of the configuration.
    fn start_with(upstream: &str, extra: &str, env: &[(&str, &str)]) -> Self {
        let mut secret = tempfile::NamedTempFile::new().expect("secret");
        secret.write_all(SECRET.as_bytes()).expect("write secret");
        let mut config = tempfile::NamedTempFile::new().expect("config");
        write!(
            config,
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             shutdown_delay = \"0s\"\n[upstream]\nurl = \"{upstream}\"\n[tokens]\n\
             mode = \"signature\"\n[tokens.signature]\nhs256_secret_file = \"{}\"\n\
             [authz]\nlisten = \"127.0.0.1:0\"\n{extra}\n",
            secret.path().display()
        )
        .expect("write config");
        let unset = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""),
            ("OTEL_SDK_DISABLED", ""),
            ("OTEL_TRACES_EXPORTER", ""),
        ];
        let config_path = config.path().to_str().expect("a UTF-8 path").to_owned();
        let process = Process::spawn_with_env(
            &["run", "--log-format", "json", "--config", &config_path],
            &[&unset[..], env].concat(),
        );
        let ready = Process::wait_for_line(&process.stderr, "account-gate ready");
        let ready: Value = serde_json::from_str(&ready).expect("a JSON log line");
        let listen = ready["listen"].as_str().expect("listen").to_owned();
        let authz = ready["authz"].as_str().expect("authz").to_owned();
        Gateway {
            process,
            listen,
            authz,
            _files: vec![secret, config],
        }
    }

    /// GET `path` with the given headers.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> StatusCode {
        self.get_from(&self.listen, path, headers).await
    }

    /// GET `path` on the listener at `addr` with the given headers.
    async fn get_from(&self, addr: &str, path: &str, headers: &[(&str, &str)]) -> StatusCode {
        let mut request = Request::get(format!("http://{addr}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::new())).expect("request");
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Full<Bytes>>();
        client.request(request).await.expect("answer").status()
    }

    /// GET `path` with `token` and, if given, a `traceparent`.
    async fn get_with_token(
        &self,
        path: &str,
        token: &str,
        traceparent: Option<&str>,
    ) -> StatusCode {
        let mut headers = vec![("EP-Account-Management-Authentication-Token", token)];
        headers.extend(traceparent.map(|t| ("traceparent", t)));
        self.get(path, &headers).await
    }

    /// The next access line (JSON), within 20 s.
    fn access_line(&self) -> Value {
        let line = Process::wait_for_line(&self.process.stderr, "\"target\":\"access\"");
        serde_json::from_str(&line).expect("a JSON access line")
    }
}

/// A receiver, an upstream, and the gateway in front of it exporting to the receiver.
async fn traced() -> (Receiver, TestUpstream, Gateway) {
    let receiver = Receiver::start().await;
    let upstream = TestUpstream::http().await;
    let env = traced_env(&receiver);
    let gateway = Gateway::start(&upstream.url, &as_pairs(&env));
    (receiver, upstream, gateway)
}

fn token() -> String {
    TestKey::hmac(SECRET.as_bytes()).sign(serde_json::json!({}), claims())
}

fn traced_env(receiver: &Receiver) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
        ("OTEL_SERVICE_NAME", "gateway-under-test".to_owned()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test,team=a%2Cb".to_owned(),
        ),
    ]
}

fn as_pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn span<'a>(trace: &'a [Exported], name: &str) -> &'a Exported {
    trace
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {trace:#?}"))
}

/// The one span of `kind` (the request is the server span, the upstream call the client span).
fn of_kind(trace: &[Exported], kind: SpanKind) -> &Exported {
    let mut found = trace.iter().filter(|s| s.kind == kind as i32);
    let span = found
        .next()
        .unwrap_or_else(|| panic!("no {kind:?} span in {trace:#?}"));
    assert!(found.next().is_none(), "two {kind:?} spans in {trace:#?}");
    span
}

/// `(trace id, parent span id, flags)` of a `traceparent` the upstream received.
fn parsed_traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    (
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

fn upstream_traceparent(upstream: &TestUpstream) -> (String, Option<String>) {
    let seen = upstream.seen();
    let last = seen.last().expect("the upstream was called");
    let header = |name: &str| {
        last.headers
            .get(name)
            .map(|v| v.to_str().expect("text").to_owned())
    };
    (
        header("traceparent").expect("a traceparent upstream"),
        header("tracestate"),
    )
}

#[tokio::test]
async fn an_incoming_trace_is_continued_upstream_and_exported_with_its_attributes() {
    let (receiver, upstream, gateway) = traced().await;
    let token = token();
    let incoming = format!("00-{TRACE_ID}-{PARENT_ID}-01");

    let status = gateway
        .get(
            "/v2/accounts/account-1/addresses?page=1",
            &[
                ("EP-Account-Management-Authentication-Token", &token),
                ("traceparent", &incoming),
                ("tracestate", "vendor=opaque"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let access = gateway.access_line();
    assert_eq!(access["trace_id"], TRACE_ID, "{access}");

    let trace = receiver.trace(TRACE_ID).await;
    let request = of_kind(&trace, SpanKind::Server);
    let check = span(&trace, "token check");
    let call = of_kind(&trace, SpanKind::Client);
    assert_eq!((request.name.as_str(), call.name.as_str()), ("GET", "GET"));

    // The request continues the caller's span; the token check and the call are its children.
    assert_eq!(request.parent_span_id, PARENT_ID);
    assert_eq!(check.parent_span_id, request.span_id);
    assert_eq!(call.parent_span_id, request.span_id);
    // The memory store's work takes less than a span would: it has none.
    assert_eq!(
        trace.len(),
        3,
        "request, token check, upstream call: {trace:#?}"
    );

    // The upstream continues the trace from the gateway's call, with the caller's tracestate.
    let (traceparent, tracestate) = upstream_traceparent(&upstream);
    let (trace_id, parent, flags) = parsed_traceparent(&traceparent);
    assert_eq!(trace_id, TRACE_ID);
    assert_eq!(parent, call.span_id);
    assert_eq!(flags, "01");
    assert_eq!(tracestate.as_deref(), Some("vendor=opaque"));

    // The documented attributes.
    assert_eq!(request.attr("http.request.method"), "GET");
    assert_eq!(request.attr("url.path"), "/v2/accounts/account-1/addresses");
    assert_eq!(request.attr("http.response.status_code"), "200");
    assert_eq!(request.attr("client.address"), "127.0.0.1");
    assert_eq!(request.attr("account_gate.route"), "scoped");
    assert_eq!(request.attr("account_gate.outcome"), "forwarded");
    assert_eq!(request.attr("account_gate.reason"), "token_valid");
    assert!(!request.attr("account_gate.request_id").is_empty());
    assert_eq!(check.attr("account_gate.token.outcome"), "accepted");
    assert_eq!(check.attr("account_gate.token.reason"), "signature");
    assert_eq!(call.attr("http.response.status_code"), "200");
    assert_eq!(call.attr("server.address"), "127.0.0.1");
    assert!(!request.error && !call.error);
    assert_eq!(request.resource["service.name"], "gateway-under-test");
    assert_eq!(request.resource["deployment.environment"], "test");
    assert_eq!(request.resource["team"], "a,b");
    assert_eq!(
        request.resource["service.version"],
        env!("CARGO_PKG_VERSION")
    );

    // Nothing exported holds the token, its signature, the secret or the query string.
    let signature = token.rsplit('.').next().expect("signature");
    receiver.assert_never_exported(&[token.as_str(), signature, SECRET, "page=1"]);
}

#[tokio::test]
async fn without_trace_context_a_sampled_request_starts_a_trace_and_refusals_are_named() {
    let (receiver, upstream, gateway) = traced().await;
    let token = token();

    let status = gateway
        .get_with_token("/v2/accounts/account-1", &token, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let access = gateway.access_line();
    let trace_id = access["trace_id"].as_str().expect("a trace id").to_owned();
    assert_eq!(trace_id.len(), 32, "{access}");
    let (traceparent, tracestate) = upstream_traceparent(&upstream);
    assert_eq!(parsed_traceparent(&traceparent).0, trace_id);
    assert_eq!(tracestate, None, "no empty tracestate is invented");
    let trace = receiver.trace(&trace_id).await;
    let root = of_kind(&trace, SpanKind::Server);
    assert!(root.parent_span_id.is_empty(), "{root:?}");

    // Another account's path: refused by the gateway, named on both spans, not an error of
    // the gateway's (a client's mistake), and never forwarded.
    let calls = upstream.calls();
    let status = gateway
        .get_with_token("/v2/accounts/account-2", &token, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(upstream.calls(), calls);
    let access = gateway.access_line();
    let trace_id = access["trace_id"].as_str().expect("a trace id").to_owned();
    let trace = receiver.trace(&trace_id).await;
    let request = of_kind(&trace, SpanKind::Server);
    let check = span(&trace, "token check");
    assert_eq!(request.attr("http.response.status_code"), "403");
    assert_eq!(request.attr("account_gate.outcome"), "rejected");
    assert_eq!(check.attr("account_gate.token.outcome"), "rejected");
    assert!(!check.attr("account_gate.token.reason").is_empty());
    assert!(!request.error, "a 4xx is not the gateway's error");
    assert!(!trace.iter().any(|s| s.kind == SpanKind::Client as i32));

    // A caller's decision not to sample is kept: the upstream hears of the trace, unsampled,
    // and nothing of it is exported.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let status = gateway
        .get_with_token(
            "/v2/accounts/account-1",
            &token,
            Some(&format!("00-{unsampled}-b7ad6b7169203331-00")),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (traceparent, _) = upstream_traceparent(&upstream);
    let (trace_id, _, flags) = parsed_traceparent(&traceparent);
    assert_eq!((trace_id.as_str(), flags.as_str()), (unsampled, "00"));
    assert_eq!(gateway.access_line()["trace_id"], unsampled);
    // A sampled request after it: once its spans are in, the unsampled one's would be too.
    gateway
        .get_with_token(
            "/v2/accounts/account-1",
            &token,
            Some(&format!("00-{TRACE_ID}-{PARENT_ID}-01")),
        )
        .await;
    receiver.trace(TRACE_ID).await;
    assert!(
        !receiver.spans().iter().any(|s| s.trace_id == unsampled),
        "an unsampled trace was exported"
    );
}

#[tokio::test]
async fn with_tracing_off_the_trace_context_passes_untouched_and_is_logged() {
    let upstream = TestUpstream::http().await;
    let gateway = Gateway::start(&upstream.url, &[]);
    let incoming = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    let status = gateway
        .get(
            "/v2/accounts/account-1",
            &[
                ("EP-Account-Management-Authentication-Token", &token()),
                ("traceparent", &incoming),
                ("tracestate", "vendor=opaque"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (traceparent, tracestate) = upstream_traceparent(&upstream);
    assert_eq!(traceparent, incoming);
    assert_eq!(tracestate.as_deref(), Some("vendor=opaque"));
    assert_eq!(gateway.access_line()["trace_id"], TRACE_ID);

    // No context, or a malformed one: `-`, and a malformed one still passes untouched.
    gateway.get("/v2/catalog", &[]).await;
    assert_eq!(gateway.access_line()["trace_id"], "-");
    gateway
        .get("/v2/catalog", &[("traceparent", "00-not-a-trace-01")])
        .await;
    assert_eq!(gateway.access_line()["trace_id"], "-");
    assert_eq!(upstream_traceparent(&upstream).0, "00-not-a-trace-01");
}

/// A collector that is down loses spans, never requests: the gateway answers as before.
#[tokio::test]
async fn an_unreachable_collector_costs_no_request() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let upstream = TestUpstream::http().await;
    let endpoint = format!("http://{closed}");
    let gateway = Gateway::start(
        &upstream.url,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "10"),
        ],
    );
    let token = token();
    for _ in 0..50 {
        let status = gateway
            .get_with_token("/v2/accounts/account-1", &token, None)
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(upstream.calls(), 50);
}

/// With the Redis store, each round trip to Redis is a span of the request it serves.
#[tokio::test]
async fn redis_round_trips_are_spans_of_their_request() {
    let Some(redis) = common::redis::TestRedis::try_start().await else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "redis-server is required in CI"
        );
        eprintln!("SKIPPED: redis-server is not installed");
        return;
    };
    let receiver = Receiver::start().await;
    let upstream = TestUpstream::http().await;
    let env = traced_env(&receiver);
    let store = format!(
        "[store]\nbackend = \"redis\"\nredis_url = \"{}\"\n",
        redis.url()
    );
    let gateway = Gateway::start_with(&upstream.url, &store, &as_pairs(&env));
    let token = token();
    let incoming = format!("00-{TRACE_ID}-{PARENT_ID}-01");

    // Logout revokes the token in Redis, within the request.
    let request = Request::delete(format!(
        "http://{}/v2/account-members/tokens",
        gateway.listen
    ))
    .header("EP-Account-Management-Authentication-Token", &token)
    .header("traceparent", &incoming)
    .body(Full::new(Bytes::new()))
    .expect("request");
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let answer = client.request(request).await.expect("answer");
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);

    let trace = receiver.trace(TRACE_ID).await;
    let request = of_kind(&trace, SpanKind::Server);
    let round_trips: Vec<_> = trace
        .iter()
        .filter(|s| s.attr("db.system.name") == "redis")
        .collect();
    assert!(!round_trips.is_empty(), "no Redis span in {trace:#?}");
    // Beneath the request: the revocation itself, or the token check's lookups.
    let check = span(&trace, "token check");
    assert_eq!(check.parent_span_id, request.span_id);
    for span in &round_trips {
        assert_eq!(span.kind, SpanKind::Client as i32);
        assert!(
            [&request.span_id, &check.span_id].contains(&&span.parent_span_id),
            "{span:?}"
        );
    }
    assert!(
        round_trips
            .iter()
            .any(|s| s.parent_span_id == request.span_id),
        "the revocation's round trips: {trace:#?}"
    );
    assert_eq!(request.attr("account_gate.reason"), "logout");
    // Background work (the deny-list's load, counting) makes no trace of its own.
    let spans = receiver.spans();
    assert!(
        spans.iter().all(|s| s.trace_id == TRACE_ID),
        "a span outside the request's trace: {spans:#?}"
    );
}

#[tokio::test]
async fn an_ingress_decision_joins_the_ingress_trace() {
    let (receiver, upstream, gateway) = traced().await;
    let token = token();
    let incoming = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    let status = gateway
        .get_from(
            &gateway.authz,
            "/auth",
            &[
                ("X-Original-Method", "GET"),
                ("X-Original-URI", "/v2/accounts/account-1?secret=query"),
                ("EP-Account-Management-Authentication-Token", &token),
                ("traceparent", &incoming),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(upstream.calls(), 0, "a decision forwards nothing");
    assert_eq!(gateway.access_line()["trace_id"], TRACE_ID);
    let trace = receiver.trace(TRACE_ID).await;
    let decision = of_kind(&trace, SpanKind::Server);
    assert_eq!(decision.name, "authz");
    assert_eq!(decision.parent_span_id, PARENT_ID);
    assert_eq!(decision.attr("account_gate.outcome"), "allowed");
    assert_eq!(decision.attr("http.response.status_code"), "200");
    let check = span(&trace, "token check");
    assert_eq!(check.parent_span_id, decision.span_id);
    assert_eq!(check.attr("account_gate.token.outcome"), "accepted");
    receiver.assert_never_exported(&[token.as_str(), "secret=query"]);
}
