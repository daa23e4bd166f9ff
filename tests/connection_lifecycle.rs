//! No client can hold a listener: silent sockets, half an HTTP/2 preface, trickled bodies,
//! HTTP/2 stream floods, a flooded admin port and a full connection table, each on real sockets
//! against a gateway with small limits. Every case checks that a new client is still served
//! within the relevant timeout plus a margin, and that the connection metrics say what happened.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::RawClient;
use common::upstream::TestUpstream;
use common::{eventually, RunningGateway, TestGateway};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

const HEADER_TIMEOUT: Duration = Duration::from_millis(500);
/// What a deadline may overrun by on a loaded test machine.
const MARGIN: Duration = Duration::from_secs(2);
const MAX_CONNECTIONS: usize = 50;

/// A gateway with 50 places and a 500 ms header deadline, in front of an echoing upstream.
async fn gateway(upstream: &TestUpstream) -> RunningGateway {
    TestGateway::new(&upstream.url)
        .configure(|c| {
            c.server.max_connections = MAX_CONNECTIONS;
            c.server.header_read_timeout = HEADER_TIMEOUT;
        })
        .start()
        .await
}

fn closed(listener: &str, reason: &str) -> String {
    format!("account_gate_connections_closed_total{{listener=\"{listener}\",reason=\"{reason}\"}}")
}

fn open(listener: &str) -> String {
    format!("account_gate_connections_open{{listener=\"{listener}\"}}")
}

/// `GET path` on a fresh HTTP/1.1 connection: its status, and how long it took.
async fn fresh_get(addr: std::net::SocketAddr, path: &str) -> (Option<u16>, Duration) {
    let started = Instant::now();
    let mut client = RawClient::connect(addr).await;
    client
        .send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    let answer = client.answer(HEADER_TIMEOUT + MARGIN).await;
    (answer.map(|a| a.status), started.elapsed())
}

/// `GET path` on a new connection kept open after the answer.
async fn get_and_keep(addr: std::net::SocketAddr, path: &str) -> RawClient {
    let mut client = RawClient::connect(addr).await;
    client
        .send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    assert_eq!(client.answer(MARGIN).await.map(|a| a.status), Some(200));
    client
}

/// Opens `count` connections that each send `bytes` (maybe nothing) and then stay silent.
async fn hold(addr: std::net::SocketAddr, count: usize, bytes: &[u8]) -> Vec<RawClient> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let mut client = RawClient::connect(addr).await;
        client.send(bytes).await;
        held.push(client);
    }
    held
}

/// Whether every one of `clients` sees its connection closed within `within`.
async fn all_closed(clients: &mut [RawClient], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    for client in clients {
        let left = deadline.saturating_duration_since(Instant::now());
        if !client.closed_within(left).await {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn silent_connections_beyond_the_limit_neither_lock_out_nor_outlive_the_header_deadline() {
    let upstream = TestUpstream::http().await;
    let gateway = gateway(&upstream).await;
    let started = Instant::now();
    let mut silent = hold(gateway.addr, MAX_CONNECTIONS + 10, b"").await;

    // The table is full of silent sockets: a newcomer evicts the idlest and is served at once.
    let (status, took) = fresh_get(gateway.addr, "/public/fresh").await;
    assert_eq!(status, Some(200), "a new request is served");
    assert!(took < HEADER_TIMEOUT + MARGIN, "served in {took:?}");

    // None of the silent ones outlives the header deadline counted from its accept.
    assert!(
        all_closed(&mut silent, HEADER_TIMEOUT + MARGIN).await,
        "silent connections still open after {:?}",
        started.elapsed()
    );
    // Counted as each connection's task ends on the gateway's side, maybe just after the
    // client saw it close.
    eventually("every close counted", MARGIN, || async {
        let metrics = gateway.metrics().await;
        let evicted = common::sample(&metrics, &closed("data", "overload"));
        let timed_out = common::sample(&metrics, &closed("data", "header_timeout"));
        evicted >= 10.0 && evicted + timed_out >= 60.0
    })
    .await;
    eventually("the open gauge back to 0", MARGIN, || async {
        gateway.sample(&open("data")).await == 0.0
    })
    .await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn half_an_http2_preface_is_cut_off_at_the_header_deadline() {
    let upstream = TestUpstream::http().await;
    let gateway = gateway(&upstream).await;
    let started = Instant::now();
    // The first line of the preface: enough to leave the protocol undecided.
    let mut stuck = hold(gateway.addr, MAX_CONNECTIONS + 10, b"PRI * HTTP/2.0\r\n").await;

    let (status, took) = fresh_get(gateway.addr, "/public/fresh").await;
    assert_eq!(status, Some(200));
    assert!(took < HEADER_TIMEOUT + MARGIN, "served in {took:?}");
    assert!(all_closed(&mut stuck, HEADER_TIMEOUT + MARGIN).await);
    let closed_after = started.elapsed();
    assert!(
        closed_after >= HEADER_TIMEOUT,
        "closed after {closed_after:?}, before the deadline"
    );
    // Counted when the gateway's side of the connection ends, maybe just after the client's.
    eventually("the close counted", MARGIN, || async {
        gateway.sample(&closed("data", "header_timeout")).await >= 1.0
    })
    .await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_second_http1_head_trickled_after_keep_alive_gets_the_header_deadline_too() {
    let upstream = TestUpstream::http().await;
    let gateway = gateway(&upstream).await;
    let mut client = RawClient::connect(gateway.addr).await;
    client
        .send(b"GET /public/first HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert_eq!(client.answer(MARGIN).await.map(|a| a.status), Some(200));
    let started = Instant::now();
    client.send(b"GET /public/second HTTP/1.1\r\n").await;
    for i in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if client
            .stream
            .try_write(format!("X-Slow-{i}: 1\r\n").as_bytes())
            .is_err()
        {
            break;
        }
    }
    assert!(client.closed_within(MARGIN).await);
    let closed_after = started.elapsed();
    assert!(
        closed_after >= HEADER_TIMEOUT && closed_after < HEADER_TIMEOUT + MARGIN,
        "closed after {closed_after:?}"
    );
    eventually("the close counted", MARGIN, || async {
        gateway.sample(&closed("data", "header_timeout")).await == 1.0
    })
    .await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_close_after_the_idle_timeout_on_both_protocols() {
    let upstream = TestUpstream::http().await;
    let idle = Duration::from_millis(700);
    let gateway = TestGateway::new(&upstream.url)
        .configure(|c| {
            c.server.idle_timeout = idle;
            // Longer than the idle timeout: the idle wait is not a header wait.
            c.server.header_read_timeout = Duration::from_secs(5);
        })
        .start()
        .await;
    let mut http1 = RawClient::connect(gateway.addr).await;
    http1.send(b"GET /public HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(http1.answer(MARGIN).await.map(|a| a.status), Some(200));
    let started = Instant::now();
    assert!(http1.closed_within(idle + MARGIN).await);
    assert!(
        started.elapsed() >= idle,
        "closed after {:?}",
        started.elapsed()
    );

    let (mut sender, connection) = h2_connect(gateway.addr).await;
    let driven = tokio::spawn(connection);
    let answer = sender
        .send_request(h2_get(gateway.addr, "/public/h2"))
        .await
        .expect("h2 answer");
    assert_eq!(answer.status(), StatusCode::OK);
    let _ = answer.into_body().collect().await;
    // The gateway says GOAWAY and closes; the client's connection future ends.
    tokio::time::timeout(idle + MARGIN, driven)
        .await
        .expect("idle h2 connection closed")
        .expect("join");
    eventually("both closes counted", MARGIN, || async {
        gateway.sample(&closed("data", "idle")).await == 2.0
    })
    .await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_trickled_token_request_body_gets_408_at_the_body_deadline_and_the_connection_closes() {
    let upstream = TestUpstream::http().await;
    let body_timeout = Duration::from_millis(800);
    let gateway = TestGateway::new(&upstream.url)
        .configure(|c| c.server.body_read_timeout = body_timeout)
        .start()
        .await;
    let mut client = RawClient::connect(gateway.addr).await;
    let started = Instant::now();
    client
        .send(
            b"POST /v2/account-members/tokens HTTP/1.1\r\nHost: x\r\n\
              Authorization: Bearer t\r\nContent-Type: application/json\r\n\
              Content-Length: 2000\r\n\r\n{",
        )
        .await;
    let trickle = async {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if client.stream.try_write(b" ").is_err() {
                break;
            }
        }
    };
    let answer = async {
        // Read on a clone of the socket while the trickle writes on the other half.
        let clone = TcpStream::from_std(clone_socket(&client.stream)).expect("clone");
        let mut reader = RawClient::from_stream(clone);
        reader.answer(body_timeout + MARGIN).await
    };
    let (_, answer) = tokio::join!(trickle, answer);
    let answer = answer.expect("an answer before the client gives up");
    let took = started.elapsed();
    assert_eq!(answer.status, 408);
    assert_eq!(answer.code(), "body_timeout");
    assert!(
        took >= body_timeout && took < body_timeout + MARGIN,
        "answered after {took:?}"
    );
    assert!(client.closed_within(MARGIN).await);
    assert_eq!(upstream.calls(), 0, "nothing reached the upstream");
    eventually("the close counted", MARGIN, || async {
        gateway.sample(&closed("data", "body_timeout")).await == 1.0
    })
    .await;
    gateway.shutdown().await;
}

/// A second handle on the same socket, so one task can read while another writes.
fn clone_socket(stream: &TcpStream) -> std::net::TcpStream {
    use std::os::fd::AsFd;
    let owned = stream.as_fd().try_clone_to_owned().expect("dup");
    let std = std::net::TcpStream::from(owned);
    std.set_nonblocking(true).expect("nonblocking");
    std
}

type H2Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// An h2c (prior knowledge) connection to `addr`: the sender and the future driving it.
async fn h2_connect(
    addr: std::net::SocketAddr,
) -> (H2Sender, impl std::future::Future<Output = ()> + Send) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    (sender, async move {
        let _ = connection.await;
    })
}

fn h2_get(addr: std::net::SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_flood_is_held_to_max_concurrent_streams_and_others_are_served() {
    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url)
        .configure(|c| {
            c.server.http2.max_concurrent_streams = 100;
            c.upstream.max_connections = 512;
        })
        .start()
        .await;
    let (sender, connection) = h2_connect(gateway.addr).await;
    tokio::spawn(connection);
    // 200 streams that each wait 3 s upstream: the client may only open 100 at once.
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let mut sender = sender.clone();
        let request = h2_get(gateway.addr, "/slow?ms=3000");
        flood.spawn(async move { sender.send_request(request).await.map(|a| a.status()) });
    }
    eventually("100 streams in flight", Duration::from_secs(10), || async {
        gateway.sample("account_gate_requests_in_flight").await == 100.0
    })
    .await;
    let (status, took) = fresh_get(gateway.addr, "/public/fresh").await;
    assert_eq!(status, Some(200));
    assert!(took < MARGIN, "served in {took:?}");
    // Never more than the limit, while the flood lasts.
    for _ in 0..10 {
        assert!(gateway.sample("account_gate_requests_in_flight").await <= 100.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut answered = 0;
    while let Some(result) = flood.join_next().await {
        if result.expect("join").is_ok_and(|s| s == StatusCode::OK) {
            answered += 1;
        }
    }
    assert_eq!(
        answered, 200,
        "the queued streams are served once others finish"
    );
    eventually("nothing in flight", MARGIN, || async {
        gateway.sample("account_gate_requests_in_flight").await == 0.0
    })
    .await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn the_admin_port_keeps_answering_probes_through_a_flood_of_silent_connections() {
    let upstream = TestUpstream::http().await;
    let gateway = gateway(&upstream).await;
    let mut flood = hold(gateway.admin_addr, 200, b"").await;
    let mut slow = hold(gateway.admin_addr, 20, b"GET /healthz HTTP/1.1\r\n").await;
    for _ in 0..5 {
        let (status, took) = fresh_get(gateway.admin_addr, "/healthz").await;
        assert_eq!(status, Some(200), "probe answered");
        assert!(took < MARGIN, "probe answered in {took:?}");
    }
    assert!(all_closed(&mut flood, HEADER_TIMEOUT + MARGIN).await);
    assert!(all_closed(&mut slow, HEADER_TIMEOUT + MARGIN).await);
    eventually("the evictions counted", MARGIN, || async {
        gateway.sample(&closed("admin", "overload")).await >= 150.0
    })
    .await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn at_max_connections_the_idlest_makes_room_and_with_all_busy_a_newcomer_gets_503() {
    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url)
        .configure(|c| {
            c.server.max_connections = 3;
            c.server.header_read_timeout = Duration::from_secs(10);
        })
        .start()
        .await;
    // Two idle connections (one served, one silent) and one busy for 3 s.
    let mut served = get_and_keep(gateway.addr, "/public").await;
    let mut silent = RawClient::connect(gateway.addr).await;
    let busy = |addr| async move {
        let mut client = RawClient::connect(addr).await;
        client
            .send(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        client
    };
    let mut first_busy = busy(gateway.addr).await;
    let in_flight = |n: f64| {
        let gateway = &gateway;
        async move {
            eventually("requests in flight", MARGIN, || async {
                gateway.sample("account_gate_requests_in_flight").await == n
            })
            .await
        }
    };
    in_flight(1.0).await;

    // Full: the longest idle (served, idle since its answer) goes first, then the silent one
    // (idle since accept, but accepted later).
    let mut a = get_and_keep(gateway.addr, "/public/a").await;
    assert!(served.closed_within(MARGIN).await, "the idlest was evicted");
    let mut b = get_and_keep(gateway.addr, "/public/b").await;
    assert!(silent.closed_within(MARGIN).await);
    // Two more busy clients take the places of the two idle ones.
    let _busy = [busy(gateway.addr).await, busy(gateway.addr).await];
    assert!(a.closed_within(MARGIN).await);
    assert!(b.closed_within(MARGIN).await);
    in_flight(3.0).await;

    // Now every place has a request in flight: a newcomer is told so, and closed.
    let mut refused = RawClient::connect(gateway.addr).await;
    refused
        .send(b"GET /public HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let answer = refused.answer(MARGIN).await.expect("an answer");
    assert_eq!(answer.status, 503);
    assert_eq!(answer.code(), "overloaded");
    assert!(refused.closed_within(MARGIN).await);
    // The busy ones were never cut.
    let answer = first_busy.answer(Duration::from_secs(5)).await;
    assert_eq!(answer.map(|a| a.status), Some(200));
    eventually("the refusals counted", MARGIN, || async {
        gateway.sample(&closed("data", "overload")).await == 5.0
    })
    .await;
    gateway.shutdown().await;
}

#[tokio::test]
async fn upstream_connections_are_capped_and_a_request_waits_for_one_then_gets_503() {
    let upstream = TestUpstream::http().await;
    let connect_timeout = Duration::from_millis(600);
    let gateway = TestGateway::new(&upstream.url)
        .configure(|c| {
            c.upstream.max_connections = 2;
            c.upstream.connect_timeout = connect_timeout;
        })
        .start()
        .await;
    let slow = |ms: u64| {
        let url = gateway.url(&format!("/slow?ms={ms}"));
        tokio::spawn(async move { common::get(&url).await.0 })
    };
    // Both connections busy for 3 s: a third request waits connect_timeout, then 503.
    let busy = [slow(3000), slow(3000)];
    eventually("two requests upstream", MARGIN, || async {
        upstream.calls() == 2
    })
    .await;
    let started = Instant::now();
    let (status, body) = common::get(&gateway.url("/public/third")).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(common::json(&body)["errors"][0]["code"], "overloaded");
    assert!(
        took >= connect_timeout && took < connect_timeout + MARGIN,
        "answered after {took:?}"
    );
    for request in busy {
        assert_eq!(request.await.expect("join"), StatusCode::OK);
    }
    // Busy for less than connect_timeout: the third request rides the first to come free.
    let busy = [slow(200), slow(200)];
    eventually("two more requests upstream", MARGIN, || async {
        upstream.calls() == 4
    })
    .await;
    assert_eq!(
        common::get(&gateway.url("/public/fourth")).await.0,
        StatusCode::OK
    );
    for request in busy {
        assert_eq!(request.await.expect("join"), StatusCode::OK);
    }
    assert_eq!(
        upstream.connections(),
        2,
        "never more than two upstream connections"
    );
    gateway.shutdown().await;
}

/// An upstream that answers the head and 10 of 100 announced body bytes, then holds the
/// connection open without another word.
async fn stalling_upstream() -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            if common::raw::read_request(&mut stream).await.is_some() {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                    .await;
                held.push(stream);
            }
        }
    });
    addr
}

#[tokio::test]
async fn a_forwarded_body_that_stalls_either_way_is_cut_at_the_upstream_body_timeout() {
    let stall = Duration::from_millis(500);
    // The upstream's answer stops halfway: the client's connection is cut, not held.
    let stalling = stalling_upstream().await;
    let gateway = TestGateway::new(&format!("http://{stalling}"))
        .configure(|c| c.upstream.body_timeout = stall)
        .start()
        .await;
    let mut client = RawClient::connect(gateway.addr).await;
    let started = Instant::now();
    client
        .send(b"GET /public HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(
        client.answer(stall + MARGIN).await.is_none(),
        "no complete answer"
    );
    let took = started.elapsed();
    assert!(took >= stall && took < stall + MARGIN, "cut after {took:?}");
    gateway.shutdown().await;

    // A client's request body stops halfway: the upstream request is abandoned, the client
    // told 502.
    let upstream = TestUpstream::http().await;
    let gateway = TestGateway::new(&upstream.url)
        .configure(|c| c.upstream.body_timeout = stall)
        .start()
        .await;
    let mut client = RawClient::connect(gateway.addr).await;
    let started = Instant::now();
    client
        .send(b"POST /public HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await;
    let answer = client.answer(stall + MARGIN).await.expect("an answer");
    let took = started.elapsed();
    assert_eq!(answer.status, 502);
    assert!(
        took >= stall && took < stall + MARGIN,
        "answered after {took:?}"
    );
    // The upstream may have begun the request (its head and the first bytes; the echo records
    // a body cut off as empty); it must never get the whole body.
    assert!(
        upstream.seen().iter().all(|seen| seen.body.len() < 100),
        "the upstream never got a whole request"
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_http2_upstream_connection_opens_when_the_first_has_100_requests_waiting() {
    let upstream = TestUpstream::https().await;
    let gateway = TestGateway::new(&upstream.url)
        .configure(|c| c.upstream.ca_file = upstream.ca_file.clone())
        .start()
        .await;
    // The first request learns that the upstream speaks HTTP/2 (a cold burst cannot know).
    assert_eq!(common::get(&gateway.url("/public")).await.0, StatusCode::OK);
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..150 {
        let url = gateway.url("/slow?ms=1500");
        requests.spawn(async move { common::get(&url).await.0 });
    }
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.expect("join"), StatusCode::OK);
    }
    let seen = upstream.seen();
    assert!(seen.iter().all(|s| s.version == http::Version::HTTP_2));
    assert_eq!(
        upstream.connections(),
        2,
        "100 streams on the first, 50 on the second"
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answer_is_disconnected_at_the_body_timeout() {
    let upstream = TestUpstream::http().await;
    let stall = Duration::from_millis(800);
    let gateway = TestGateway::new(&upstream.url)
        .configure(|c| c.upstream.body_timeout = stall)
        .start()
        .await;
    // The echo upstream answers with the request's body: 32 MiB, more than the socket buffers
    // of both ends hold, so the gateway's writes block once the client stops reading.
    let body = vec![b'x'; 32 << 20];
    let mut client = RawClient::connect(gateway.addr).await;
    client
        .send(
            format!(
                "POST /public HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await;
    client.send(&body).await;
    eventually(
        "the gateway blocked on the unread answer",
        Duration::from_secs(10),
        || async { gateway.sample(&closed("data", "send_timeout")).await == 1.0 },
    )
    .await;
    assert_eq!(gateway.sample("account_gate_requests_in_flight").await, 0.0);
    assert!(client.closed_within(MARGIN).await);
    gateway.shutdown().await;
}
