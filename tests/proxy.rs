//! The forwarding core: pass-through, headers, upstream failures, limits, graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::upstream::{refused_addr, silent_upstream, TestUpstream};
use common::{get, h2_client, json, send, wait_until, TestGateway};
use http::{Method, Request, StatusCode, Version};
use http_body_util::Full;

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<_>>()
        .into()
}

/// Sends every method with an empty and a 1 MiB body through the gateway, checks that each
/// reached the upstream (over `version`) and came back byte-exact.
async fn assert_passthrough(
    upstream: &TestUpstream,
    gateway: &common::RunningGateway,
    version: Version,
) {
    let mut expected_calls = upstream.calls();
    for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
        for len in [0usize, 1024 * 1024] {
            let body = pattern(len);
            let request = Request::builder()
                .method(method.clone())
                .uri(gateway.url("/v2/anything?x=1&y=%20"))
                .body(Full::new(body.clone()))
                .expect("request");
            let (response, echoed) = send(request).await;
            assert_eq!(response.status(), StatusCode::OK, "{method} {len}");
            assert_eq!(response.headers()["x-upstream-method"], method.as_str());
            assert!(
                echoed == body,
                "{method} with {len} bytes came back altered"
            );
            expected_calls += 1;
            let seen = upstream.seen().pop().expect("upstream saw it");
            assert_eq!(seen.method, method);
            assert_eq!(seen.version, version);
            assert_eq!(
                seen.uri.path_and_query().map(|p| p.as_str()),
                Some("/v2/anything?x=1&y=%20")
            );
            assert!(seen.body == body);
        }
    }
    assert_eq!(upstream.calls(), expected_calls);
}

#[tokio::test]
async fn passes_every_method_and_body_size_byte_exact_over_http() {
    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url).start().await;
    assert_passthrough(&upstream, &gateway, Version::HTTP_11).await;
    // Sequential requests reuse a pooled connection: eight requests, one connection, or two
    // when a request came in the moment between the client reading the last byte of a 1 MiB
    // answer and the upstream connection's own task marking it ready again (hyper does that
    // after handing on the last frame), where the pool has none ready and opens another.
    let connections = upstream.connections();
    assert!(
        (1..=2).contains(&connections),
        "{connections} upstream connections for 8 sequential requests"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn pools_upstream_connections_up_to_the_configured_number() {
    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url)
        .configure(|c| c.upstream.pool_max_idle_per_host = 4)
        .start()
        .await;
    // 16 requests at once, each held by the upstream for a while, need 16 connections.
    let slow = gateway.url("/slow?ms=200");
    let burst = (0..16).map(|_| get(&slow));
    for (status, _) in futures_util::future::join_all(burst).await {
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(upstream.connections(), 16);
    // Four stay pooled: sequential requests after the burst open no new connection.
    for _ in 0..20 {
        assert_eq!(get(&gateway.url("/v2/carts")).await.0, StatusCode::OK);
    }
    assert_eq!(upstream.connections(), 16);
    assert_eq!(upstream.calls(), 36);
    gateway.shutdown().await;
}

#[tokio::test]
async fn idle_upstream_connections_close_after_the_idle_timeout() {
    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url)
        .configure(|c| c.upstream.pool_idle_timeout = Duration::from_millis(300))
        .start()
        .await;
    assert_eq!(get(&gateway.url("/v2/carts")).await.0, StatusCode::OK);
    assert_eq!(upstream.open_connections(), 1);
    // Nothing else is asked: the pool's timer closes it.
    wait_until("the idle upstream connection closed", || async {
        upstream.open_connections() == 0
    })
    .await;
    assert_eq!(get(&gateway.url("/v2/carts")).await.0, StatusCode::OK);
    assert_eq!(upstream.connections(), 2);
    gateway.shutdown().await;
}

#[tokio::test]
async fn passes_through_to_an_https_upstream_with_a_test_ca() {
    let upstream = TestUpstream::https().await;
    let ca = upstream.ca_file.clone();
    let gateway = TestGateway::new(&upstream.url)
        .configure(|c| c.upstream.ca_file = ca)
        .start()
        .await;
    // The test upstream offers HTTP/2 over TLS (ALPN), and the gateway takes it.
    assert_passthrough(&upstream, &gateway, Version::HTTP_2).await;
    assert_eq!(upstream.connections(), 1);
    gateway.shutdown().await;
}

#[tokio::test]
async fn an_https_upstream_with_an_unknown_ca_is_a_502() {
    let upstream = TestUpstream::https().await;
    let gateway = TestGateway::new(&upstream.url).start().await;
    let (status, body) = get(&gateway.url("/v2/carts")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(json(&body)["errors"][0]["status"], "502");
    assert_eq!(upstream.calls(), 0);
    gateway.shutdown().await;
}

#[tokio::test]
async fn streams_a_chunked_request_body() {
    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url).start().await;
    let chunks: Vec<Bytes> = (0..64).map(|i| pattern(1000 + i * 7)).collect();
    let expected: Bytes = chunks.concat().into();
    let request = Request::post(gateway.url("/stream"))
        .body(futures_stream(chunks))
        .expect("request");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let response = client.request(request).await.expect("response");
    let (parts, body) = common::collect(response).await;
    assert_eq!(parts.status(), StatusCode::OK);
    assert_eq!(parts.headers()["x-upstream-chunked"], "yes");
    assert!(body == expected, "chunked body altered");
    gateway.shutdown().await;
}

/// A body that yields `chunks` one frame at a time, without a known length.
fn futures_stream(chunks: Vec<Bytes>) -> http_body_util::channel::Channel<Bytes> {
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(4);
    tokio::spawn(async move {
        for chunk in chunks {
            if tx.send_data(chunk).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    });
    body
}

#[tokio::test]
async fn serves_http2_clients() {
    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url).start().await;
    let body = pattern(300_000);
    let request = Request::put(gateway.url("/v2/carts/x"))
        .body(Full::new(body.clone()))
        .expect("request");
    let response = h2_client().request(request).await.expect("h2 response");
    assert_eq!(response.version(), Version::HTTP_2);
    let (parts, echoed) = common::collect(response).await;
    assert_eq!(parts.status(), StatusCode::OK);
    assert!(echoed == body);
    let seen = upstream.seen().pop().expect("seen");
    assert_eq!(seen.headers["host"], upstream.addr.to_string());
    assert_eq!(seen.headers["x-forwarded-host"], gateway.addr.to_string());
    gateway.shutdown().await;
}

#[tokio::test]
async fn routing_override_headers_are_removed_as_configured() {
    let upstream = TestUpstream::http().await;
    let request = |gateway: &common::RunningGateway| {
        Request::get(gateway.url("/v2/products"))
            .header("x-original-url", "/v2/accounts/other")
            .header("X-HTTP-Method-Override", "DELETE")
            .header("x-route-by", "/admin")
            .body(Full::default())
            .expect("request")
    };
    // The defaults.
    let gateway = TestGateway::new(&upstream.url).start().await;
    assert_eq!(send(request(&gateway)).await.0.status(), StatusCode::OK);
    let seen = upstream.seen().pop().expect("seen");
    assert!(!seen.headers.contains_key("x-original-url"));
    assert!(!seen.headers.contains_key("x-http-method-override"));
    assert_eq!(seen.headers["x-route-by"], "/admin");
    gateway.shutdown().await;
    // A list of one's own replaces them.
    let gateway = TestGateway::new(&upstream.url)
        .configure(|c| c.server.strip_request_headers = vec!["X-Route-By".to_owned()])
        .start()
        .await;
    assert_eq!(send(request(&gateway)).await.0.status(), StatusCode::OK);
    let seen = upstream.seen().pop().expect("seen");
    assert!(!seen.headers.contains_key("x-route-by"));
    assert_eq!(seen.headers["x-original-url"], "/v2/accounts/other");
    gateway.shutdown().await;
}

#[tokio::test]
async fn strips_hop_by_hop_headers_both_ways() {
    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url).start().await;
    let request = Request::get(gateway.url("/hop"))
        .header("connection", "keep-alive, x-private-hop")
        .header("x-private-hop", "secret")
        .header("keep-alive", "timeout=30")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("upgrade", "websocket")
        .header("x-end-to-end", "kept")
        .body(Full::default())
        .expect("request");
    let (response, _) = send(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen = upstream.seen().pop().expect("seen");
    for name in [
        "x-private-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
    ] {
        assert!(
            !seen.headers.contains_key(name),
            "{name} reached the upstream"
        );
    }
    assert_eq!(seen.headers["x-end-to-end"], "kept");
    assert!(!response.headers().contains_key("x-hop-secret"));
    assert!(!response.headers().contains_key("keep-alive"));
    assert_eq!(response.headers()["x-end-to-end"], "1");
    gateway.shutdown().await;
}

#[tokio::test]
async fn sets_forwarding_headers_and_request_ids() {
    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url).start().await;

    let request = Request::get(gateway.url("/v2/carts"))
        .header("host", "shop.example.com")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .body(Full::default())
        .expect("request");
    let (response, _) = send(request).await;
    let seen = upstream.seen().pop().expect("seen");
    assert_eq!(seen.headers["host"], upstream.addr.to_string());
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "shop.example.com");
    let generated = response.headers()["x-request-id"].clone();
    assert_eq!(generated.len(), 36, "a UUID is generated");
    assert_eq!(seen.headers["x-request-id"], generated);

    let request = Request::get(gateway.url("/v2/carts"))
        .header("x-request-id", "trace-abc-123")
        .body(Full::default())
        .expect("request");
    let (response, _) = send(request).await;
    assert_eq!(response.headers()["x-request-id"], "trace-abc-123");
    assert_eq!(
        upstream.seen().pop().expect("seen").headers["x-request-id"],
        "trace-abc-123"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_refused_upstream_is_a_502_and_the_gateway_keeps_serving() {
    let addr = refused_addr().await;
    let gateway = TestGateway::new(&format!("http://{addr}")).start().await;
    for _ in 0..3 {
        let (status, body) = get(&gateway.url("/v2/carts/a")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        let body = json(&body);
        assert_eq!(body["errors"][0]["status"], "502");
        assert_eq!(body["errors"][0]["code"], "upstream_unreachable");
    }
    assert_eq!(get(&gateway.admin_url("/healthz")).await.0, StatusCode::OK);
    let (_, metrics) = get(&gateway.admin_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("account_gate_upstream_errors_total{kind=\"connect\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("account_gate_requests_total{code_class=\"5xx\",route=\"passthrough\"} 3")
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_silent_upstream_is_a_504_after_the_response_timeout() {
    let (addr, _keep) = silent_upstream().await;
    let timeout = Duration::from_millis(300);
    let gateway = TestGateway::new(&format!("http://{addr}"))
        .configure(|c| c.upstream.response_timeout = timeout)
        .start()
        .await;
    let started = Instant::now();
    let (status, body) = get(&gateway.url("/v2/carts")).await;
    assert!(started.elapsed() >= timeout);
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let body = json(&body);
    assert_eq!(body["errors"][0]["status"], "504");
    assert_eq!(body["errors"][0]["code"], "upstream_timeout");
    // Still serving: the admin answers and a second request gets the same clean answer.
    assert_eq!(
        get(&gateway.url("/v2/carts")).await.0,
        StatusCode::GATEWAY_TIMEOUT
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url).start().await;
    let request = Request::get(gateway.url("/"))
        .header("x-big", "a".repeat(40 * 1024))
        .body(Full::default())
        .expect("request");
    let (response, _) = send(request).await;
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(upstream.calls(), 0);
    gateway.shutdown().await;
}

#[tokio::test]
async fn shutdown_turns_unready_first_and_lets_in_flight_requests_finish() {
    let upstream = TestUpstream::http().await;
    let mut gateway = TestGateway::new(&upstream.url)
        .configure(|c| c.server.shutdown_delay = Duration::from_millis(400))
        .start()
        .await;
    assert_eq!(get(&gateway.admin_url("/readyz")).await.0, StatusCode::OK);
    let slow_url = gateway.url("/slow?ms=1000");
    let in_flight = tokio::spawn(async move { get(&slow_url).await });
    wait_until("the slow request reached the upstream", || async {
        upstream.calls() == 1
    })
    .await;

    gateway.signal_shutdown();
    let readyz = gateway.admin_url("/readyz");
    wait_until("readiness false", || async {
        get(&readyz).await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    // Still accepting during the delay, so late requests routed here are not lost.
    assert_eq!(get(&gateway.url("/v2/carts")).await.0, StatusCode::OK);

    let (status, _) = in_flight.await.expect("task");
    assert_eq!(status, StatusCode::OK, "the in-flight request completed");
    gateway.join().await;
}

#[tokio::test]
async fn admin_serves_metrics_and_health() {
    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url).start().await;
    let (status, body) = get(&gateway.admin_url("/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["status"], "ok");
    let (status, body) = get(&gateway.admin_url("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("account_gate_build_info{revision=\""));
    assert!(text.contains("account_gate_requests_total{code_class=\"2xx\",route=\"signup\"} 0"));
    assert_eq!(
        get(&gateway.admin_url("/nope")).await.0,
        StatusCode::NOT_FOUND
    );
    gateway.shutdown().await;
}
