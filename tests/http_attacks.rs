//! Attacks on the HTTP layer itself, written byte for byte on raw TCP connections: request
//! smuggling, oversized heads, slowloris, and ten thousand idle connections. The upstream is a
//! naive server that trusts `Content-Length` over `Transfer-Encoding` and logs every request
//! line it parses, so a request the gateway did not check would show up in its log.

mod common;

use std::time::{Duration, Instant};

use common::raw::{LoggingUpstream, RawClient};
use common::{RunningGateway, TestGateway};

/// The account path a smuggled request aims at; requires a token, so the gateway never forwards
/// it without one.
const VICTIM: &str = "/v2/accounts/victim-account/addresses";
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

fn smuggled() -> String {
    format!("GET {VICTIM} HTTP/1.1\r\nHost: x\r\n\r\n")
}

/// What became of one attack.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Refused with 400 (by hyper's parser or the gateway).
    Rejected,
    /// Re-framed by the gateway and forwarded as one request.
    Normalised,
}

async fn gateway(upstream: &LoggingUpstream) -> RunningGateway {
    TestGateway::new(&upstream.url).start().await
}

/// Sends `request` on a fresh connection, reads every answer until the connection is idle or
/// closed, and judges the first.
async fn attack(gateway: &RunningGateway, request: &[u8]) -> (Outcome, Vec<u16>) {
    let mut client = RawClient::connect(gateway.addr).await;
    client.send(request).await;
    let mut statuses = Vec::new();
    let mut within = ANSWER_WITHIN;
    while let Some(answer) = client.answer(within).await {
        statuses.push(answer.status);
        // Later answers, if any, come right after the first.
        within = Duration::from_millis(300);
    }
    let outcome = match statuses.first() {
        Some(400) => Outcome::Rejected,
        Some(200) => Outcome::Normalised,
        other => panic!(
            "unexpected answer {other:?} to {:?}",
            String::from_utf8_lossy(request)
        ),
    };
    (outcome, statuses)
}

#[tokio::test]
async fn smuggling_attempts_are_refused_or_reframed_and_never_reach_the_upstream_unchecked() {
    let upstream = LoggingUpstream::start().await;
    let gateway = gateway(&upstream).await;
    let smuggled = smuggled();
    // (name, request, expected outcome). hyper decodes a message with both Transfer-Encoding
    // and Content-Length as chunked and closes the connection after answering (RFC 9112 §6.3),
    // so CL.TE and TE.CL are re-framed, never split; every other ambiguity is a 400.
    let chunked_body = format!("0\r\n\r\n{smuggled}");
    let te_cl_body = format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len());
    let head = |headers: &str, body: &str| {
        format!("POST /public/echo HTTP/1.1\r\nHost: shop.example\r\n{headers}\r\n{body}")
    };
    let attacks: Vec<(&str, String, Outcome)> = vec![
        (
            "CL.TE: Content-Length and Transfer-Encoding",
            head(
                "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                &chunked_body,
            ),
            Outcome::Normalised,
        ),
        (
            "TE.CL: chunked body hiding a request, short Content-Length",
            head(
                "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                &te_cl_body,
            ),
            Outcome::Normalised,
        ),
        (
            "Transfer-Encoding: chunked, identity",
            head(
                &format!(
                    "Transfer-Encoding: chunked, identity\r\nContent-Length: {}\r\n",
                    chunked_body.len()
                ),
                &chunked_body,
            ),
            Outcome::Rejected,
        ),
        (
            "Transfer-Encoding: <tab>chunked (tab is optional whitespace)",
            head(
                "Transfer-Encoding:\tchunked\r\nContent-Length: 6\r\n",
                &chunked_body,
            ),
            Outcome::Normalised,
        ),
        (
            "Transfer-Encoding: xchunked",
            head(
                "Transfer-Encoding: xchunked\r\nContent-Length: 6\r\n",
                &chunked_body,
            ),
            Outcome::Rejected,
        ),
        (
            "Transfer-Encoding: CHUNKED (codings are case-insensitive)",
            head(
                "Transfer-Encoding: CHUNKED\r\nContent-Length: 6\r\n",
                &chunked_body,
            ),
            Outcome::Normalised,
        ),
        (
            "space before the colon of Transfer-Encoding",
            head(
                "Transfer-Encoding : chunked\r\nContent-Length: 6\r\n",
                &chunked_body,
            ),
            Outcome::Rejected,
        ),
        (
            "two Transfer-Encoding headers",
            head(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                &chunked_body,
            ),
            Outcome::Rejected,
        ),
        (
            "Transfer-Encoding only, chunked: the smuggled bytes are a pipelined request",
            head("Transfer-Encoding: chunked\r\n", &chunked_body),
            Outcome::Normalised,
        ),
        (
            "two differing Content-Length headers",
            head(
                &format!(
                    "Content-Length: 0\r\nContent-Length: {}\r\n",
                    smuggled.len()
                ),
                &smuggled,
            ),
            Outcome::Rejected,
        ),
        (
            "Content-Length: 0, 44 in one header",
            head(
                &format!("Content-Length: 0, {}\r\n", smuggled.len()),
                &smuggled,
            ),
            Outcome::Rejected,
        ),
        (
            "bare CR inside a header value",
            head("X-Note: a\rTransfer-Encoding: chunked\r\n", &chunked_body),
            Outcome::Rejected,
        ),
        (
            // httparse reads a bare LF as a line end (RFC 9112 §2.2 allows it); the message
            // is then CL.TE, decoded as chunked and written upstream with CRLFs of our own.
            "bare LF ending the line before Transfer-Encoding",
            head(
                "X-Note: a\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n",
                &chunked_body,
            ),
            Outcome::Normalised,
        ),
        (
            "obsolete line folding",
            head(
                "X-Note: a\r\n Transfer-Encoding: chunked\r\n",
                &chunked_body,
            ),
            Outcome::Rejected,
        ),
        (
            "NUL in a header value",
            head("X-Note: a\0b\r\nContent-Length: 0\r\n", ""),
            Outcome::Rejected,
        ),
        (
            "GET with a body that is a request",
            format!(
                "GET /public/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
            Outcome::Normalised,
        ),
    ];
    let mut report = Vec::new();
    let mut mismatches = Vec::new();
    for (name, request, expected) in attacks {
        let before = upstream.lines().len();
        let (outcome, statuses) = attack(&gateway, request.as_bytes()).await;
        let lines = upstream.lines()[before..].to_vec();
        report.push(format!(
            "{name}: {outcome:?} {statuses:?} upstream saw {lines:?}"
        ));
        if outcome != expected {
            mismatches.push(format!(
                "{name}: expected {expected:?}, got {outcome:?} {statuses:?}"
            ));
            continue;
        }
        assert!(
            lines.iter().all(|line| !line.contains("victim")),
            "{name}: the upstream saw a request the gateway did not check: {lines:?}"
        );
        match outcome {
            Outcome::Rejected => assert!(lines.is_empty(), "{name}: {lines:?}"),
            Outcome::Normalised => {
                assert_eq!(
                    lines,
                    ["POST /public/echo HTTP/1.1"].map(|l| l.replace(
                        "POST",
                        if request.starts_with("GET") {
                            "GET"
                        } else {
                            "POST"
                        }
                    ))
                );
                // A pipelined smuggled request is the gateway's to check, and it refuses it.
                assert!(
                    statuses.len() == 1 || statuses[1] == 401,
                    "{name}: {statuses:?}"
                );
            }
        }
    }
    println!("{}", report.join("\n"));
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_pipelined_second_request_is_checked_like_the_first() {
    let upstream = LoggingUpstream::start().await;
    let gateway = gateway(&upstream).await;
    let mut client = RawClient::connect(gateway.addr).await;
    let pipelined = format!("GET /public/a HTTP/1.1\r\nHost: x\r\n\r\n{}", smuggled());
    client.send(pipelined.as_bytes()).await;
    let first = client.answer(ANSWER_WITHIN).await.expect("first answer");
    let second = client.answer(ANSWER_WITHIN).await.expect("second answer");
    assert_eq!((first.status, second.status), (200, 401));
    assert_eq!(second.code(), "token_missing");
    assert_eq!(upstream.lines(), ["GET /public/a HTTP/1.1"]);
    gateway.shutdown().await;
}

#[tokio::test]
async fn oversized_heads_get_431_and_reach_nobody() {
    let upstream = LoggingUpstream::start().await;
    let gateway = gateway(&upstream).await;
    let many_small: String = (0..150).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    let many_long: String = (0..200)
        .map(|i| format!("X-H{i}: {}\r\n", "v".repeat(100)))
        .collect();
    let cases = [
        (
            "150 small headers (more than the parser's 100 slots)",
            many_small,
        ),
        (
            "200 headers of 100 bytes (20 KB over the 16 KiB limit)",
            many_long,
        ),
        (
            "one 64 KiB cookie",
            format!("Cookie: {}\r\n", "c".repeat(64 * 1024)),
        ),
        (
            "a 64 KiB account token on the token endpoint",
            format!(
                "EP-Account-Management-Authentication-Token: {}\r\n",
                "t".repeat(64 * 1024)
            ),
        ),
    ];
    for (name, headers) in cases {
        let request =
            format!("GET /v2/account-members/tokens HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        let mut client = RawClient::connect(gateway.addr).await;
        client.send(request.as_bytes()).await;
        let answer = client.answer(ANSWER_WITHIN).await.expect(name);
        assert_eq!(answer.status, 431, "{name}");
    }
    assert!(upstream.lines().is_empty(), "{:?}", upstream.lines());
    gateway.shutdown().await;
}

#[tokio::test]
async fn slowloris_is_cut_off_at_the_header_read_timeout() {
    let upstream = LoggingUpstream::start().await;
    let gateway = TestGateway::new(&upstream.url)
        .configure(|c| c.server.header_read_timeout = Duration::from_millis(500))
        .start()
        .await;
    let mut client = RawClient::connect(gateway.addr).await;
    let started = Instant::now();
    client.send(b"GET /public HTTP/1.1\r\nHost: x\r\n").await;
    // Trickle a header line every 100 ms for up to 10 s; the gateway must hang up long before.
    let trickle = async {
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if client
                .stream
                .try_write(format!("X-Slow-{i}: 1\r\n").as_bytes())
                .is_err()
            {
                break;
            }
        }
    };
    let mut probe = RawClient::connect(gateway.addr).await;
    let closed = async {
        // Meanwhile an honest client is served at once.
        probe
            .send(b"GET /public/honest HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let honest = probe.answer(ANSWER_WITHIN).await.expect("honest answer");
        assert_eq!(honest.status, 200);
        assert!(started.elapsed() < Duration::from_millis(500));
    };
    tokio::join!(trickle, closed);
    let closed_at = started.elapsed();
    // The trickle stopped because writes failed (the gateway closed the connection) ...
    assert!(
        client.closed_within(Duration::from_secs(1)).await,
        "still open after {closed_at:?}"
    );
    // ... after the timeout, not after the attacker gave up.
    assert!(
        closed_at >= Duration::from_millis(450) && closed_at < Duration::from_secs(3),
        "closed after {closed_at:?}"
    );
    assert_eq!(upstream.lines(), ["GET /public/honest HTTP/1.1"]);
    gateway.shutdown().await;
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The soft limit on open files of this process.
fn open_files_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_cost_bounded_memory_and_new_requests_are_served() {
    // Both ends of every connection live in this process: two descriptors each, plus a margin
    // for the runtime, the listeners and the test harness.
    let wanted = 10_000;
    let limit = open_files_limit();
    let count = wanted.min(limit.saturating_sub(512) / 2);
    if count < wanted {
        println!(
            "note: open-files soft limit is {limit}; opening {count} idle connections, not {wanted}"
        );
    }
    let upstream = LoggingUpstream::start().await;
    let gateway = TestGateway::new(&upstream.url)
        .configure(|c| {
            // Long enough that none is closed by the header timeout while we measure.
            c.server.header_read_timeout = Duration::from_secs(120);
        })
        .start()
        .await;
    // Warm up the allocator and the gateway's paths before the baseline.
    let mut warm = RawClient::connect(gateway.addr).await;
    warm.send(b"GET /public/warm HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert_eq!(warm.answer(ANSWER_WITHIN).await.expect("warm").status, 200);
    let before = rss_kib();

    let mut idle = Vec::with_capacity(count);
    let mut pending = tokio::task::JoinSet::new();
    for _ in 0..count {
        let addr = gateway.addr;
        pending.spawn(async move { tokio::net::TcpStream::connect(addr).await });
        if pending.len() >= 256 {
            idle.push(
                pending
                    .join_next()
                    .await
                    .expect("task")
                    .expect("join")
                    .expect("connect"),
            );
        }
    }
    while let Some(stream) = pending.join_next().await {
        idle.push(stream.expect("join").expect("connect"));
    }
    // Connections are accepted in order: once a newer one is answered, all of them are held.
    let started = Instant::now();
    let mut fresh = RawClient::connect(gateway.addr).await;
    fresh
        .send(b"GET /public/fresh HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let answer = fresh
        .answer(Duration::from_secs(20))
        .await
        .expect("fresh answer");
    assert_eq!(answer.status, 200);
    let served_in = started.elapsed();
    let after = rss_kib();
    let per_connection = after.saturating_sub(before) * 1024 / count as u64;
    println!(
        "{count} idle connections: RSS {before} KiB -> {after} KiB, {per_connection} bytes each \
         (both ends); a new request served in {served_in:?}"
    );
    // Both ends of an idle connection (the gateway's hyper connection and task, and this test's
    // socket) cost a few KiB; 32 KiB each would mean buffers grow per idle client.
    assert!(
        per_connection < 32 * 1024,
        "{per_connection} bytes per idle connection"
    );
    assert_eq!(idle.len(), count);
    drop(idle);
    gateway.shutdown().await;
}
