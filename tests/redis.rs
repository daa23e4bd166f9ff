//! The Redis store shared by several gateways: every test starts its own
//! `redis-server` on a free port and two gateways in this process.

mod common;

use std::time::{Duration, Instant};

use account_gate::emulator::{Emulator, EmulatorHandle, EmulatorOptions};
use account_gate::store::{Fingerprint, TokenStore};
use common::commerce::{issued, signup_data, Answer, Commerce, ACCOUNT_TOKEN};
use common::redis::TestRedis;
use common::{get, wait_until, RunningGateway, TestGateway};
use http::{Method, StatusCode};

async fn emulator(options: EmulatorOptions) -> EmulatorHandle {
    Emulator::spawn("127.0.0.1:0".parse().expect("addr"), options)
        .await
        .expect("emulator")
}

/// A gateway in front of `upstream` sharing `redis`, with `configure` applied last.
async fn gateway(
    upstream: &EmulatorHandle,
    redis: &TestRedis,
    configure: impl FnOnce(&mut account_gate::config::Config),
) -> RunningGateway {
    TestGateway::new(&upstream.url())
        .configure(|config| {
            redis.configure(config);
            configure(config);
        })
        .start()
        .await
}

/// Signs `user` up through `api`: (member, account, token).
async fn sign_up(api: &Commerce, user: &str) -> (String, String, String) {
    let (member, tokens) = issued(&api.tokens(signup_data(user, "pw-secret-1")).await);
    let (account, token) = tokens[0].clone();
    (member, account, token)
}

fn code(answer: &Answer) -> String {
    answer.error_code_and_pointer().0
}

/// `store_errors_total{backend="redis",op=…}` summed over every op, from `/metrics`.
fn store_errors(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("account_gate_store_errors_total{backend=\"redis\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_token_issued_through_one_gateway_is_accepted_by_another() {
    let redis = TestRedis::start().await;
    let upstream = emulator(EmulatorOptions::default()).await;
    let a = gateway(&upstream, &redis, |_| {}).await;
    let b = gateway(&upstream, &redis, |_| {}).await;
    let (api_a, api_b) = (Commerce::new(&a.url("")), Commerce::new(&b.url("")));

    let (member, account, token) = sign_up(&api_a, "ann@example.com").await;
    let on_b = api_b
        .scoped_get(&format!("/v2/accounts/{account}"), &token)
        .await;
    assert_eq!(on_b.status, StatusCode::OK, "{:?}", on_b.body);
    assert_eq!(b.store.backend(), "redis");
    let records = b.store.list_member(&member).await.expect("list");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].account_id, account);

    // A token nobody issued through a gateway: only the store could vouch, and it does not.
    let (_, direct) = issued(
        &Commerce::new(&upstream.url())
            .tokens(signup_data("bob@example.com", "pw-secret-2"))
            .await,
    );
    let unknown = api_b
        .scoped_get(&format!("/v2/accounts/{}", direct[0].0), &direct[0].1)
        .await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&unknown), "token_unknown");

    // Only fingerprints are in Redis, never a token.
    let mut conn = redis.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let fp = Fingerprint::of(&token).to_hex();
    assert!(
        keys.iter()
            .any(|k| k == &format!("account-gate:{{{fp}}}:t")),
        "{keys:?}"
    );
    for key in &keys {
        let dump: Vec<u8> = redis::cmd("DUMP")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!String::from_utf8_lossy(&dump).contains(&token), "{key}");
    }
}

#[tokio::test]
async fn a_logout_on_one_gateway_is_refused_by_another_within_a_second() {
    let redis = TestRedis::start().await;
    let upstream = emulator(EmulatorOptions::default()).await;
    // A long L1 TTL: only the pub/sub fan-out can make B forget the token in time.
    let long_l1 = |c: &mut account_gate::config::Config| c.store.l1_ttl = Duration::from_secs(60);
    let a = gateway(&upstream, &redis, long_l1).await;
    let b = gateway(&upstream, &redis, long_l1).await;
    let (api_a, api_b) = (Commerce::new(&a.url("")), Commerce::new(&b.url("")));
    let (_, account, token) = sign_up(&api_a, "ann@example.com").await;
    let path = format!("/v2/accounts/{account}");
    // B has the token in its L1 now.
    assert_eq!(api_b.scoped_get(&path, &token).await.status, StatusCode::OK);
    assert_eq!(api_b.scoped_get(&path, &token).await.status, StatusCode::OK);

    let bearer = format!("Bearer {}", api_b.implicit().await);
    let headers = [
        ("authorization", bearer.as_str()),
        (ACCOUNT_TOKEN, token.as_str()),
    ];
    let started = Instant::now();
    assert_eq!(api_a.logout(&token).await.status, StatusCode::NO_CONTENT);
    let mut refused = None;
    while started.elapsed() < Duration::from_secs(5) {
        let answer = api_b.send(Method::GET, &path, &headers, "").await;
        if answer.status == StatusCode::UNAUTHORIZED {
            assert_eq!(code(&answer), "token_revoked");
            refused = Some(started.elapsed());
            break;
        }
        assert_eq!(answer.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = refused.expect("B refuses the logged-out token");
    println!("revocation propagation A -> B: {took:?} (logout request included)");
    assert!(took <= Duration::from_secs(1), "took {took:?}");
}

#[tokio::test]
async fn gateways_ride_out_a_redis_outage_and_recover_without_a_restart() {
    let mut redis = TestRedis::start().await;
    let upstream = emulator(EmulatorOptions::default()).await;
    let settings = |c: &mut account_gate::config::Config| {
        c.store.l1_ttl = Duration::from_secs(60);
        c.store.command_timeout = Duration::from_millis(100);
    };
    let a = gateway(&upstream, &redis, settings).await;
    let b = gateway(&upstream, &redis, settings).await;
    let (api_a, api_b) = (Commerce::new(&a.url("")), Commerce::new(&b.url("")));
    let (_, account, token) = sign_up(&api_a, "ann@example.com").await;
    let path = format!("/v2/accounts/{account}");
    assert_eq!(api_b.scoped_get(&path, &token).await.status, StatusCode::OK);
    let direct = Commerce::new(&upstream.url());
    let (_, other) = issued(
        &direct
            .tokens(signup_data("bob@example.com", "pw-b-1"))
            .await,
    );
    let (other_account, other_token) = other[0].clone();
    let other_path = format!("/v2/accounts/{other_account}");
    let errors_before = store_errors(&b.metrics().await);

    redis.stop();
    for _ in 0..5 {
        // An L1 hit: still served.
        let known = api_b.scoped_get(&path, &token).await;
        assert_eq!(known.status, StatusCode::OK, "{:?}", known.body);
        // Nobody can vouch for this one: fail closed, never a silent accept.
        let unknown = api_b.scoped_get(&other_path, &other_token).await;
        assert_eq!(unknown.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(code(&unknown), "store_unavailable");
        // Requests that need no token pass as ever.
        let public = api_b.send(Method::GET, "/v2/products", &[], "").await;
        assert!(!public.status.is_server_error(), "{}", public.status);
    }
    // A sign-up still works (the token cannot be recorded, which is logged and counted).
    let during = api_a.tokens(signup_data("cy@example.com", "pw-c-1")).await;
    assert_eq!(during.status, StatusCode::CREATED);
    // Counted as unrecorded, not issued: no replica will recognise that token.
    assert!(a
        .metrics()
        .await
        .contains(r#"account_gate_signups_total{mechanism="self_signup",outcome="unrecorded"} 1"#));
    // A logout cannot be recorded: say so rather than pretend.
    let out = api_a.logout(&token).await;
    assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code(&out), "store_unavailable");
    // But the token in hand stops on the gateway that was asked, outage or not.
    let after = api_a.scoped_get(&path, &token).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED, "{:?}", after.body);
    assert_eq!(code(&after), "token_revoked");
    // The store's health is reported within a second (the ping's answer is reused that long),
    // in /readyz's body and the store_up gauge, but readiness does not follow it: a Redis
    // outage must not take every replica (and the storefront pods it sits in) out of service.
    wait_until("B reports the store down and stays ready", || async {
        let (ready, body) = get(&b.admin_url("/readyz")).await;
        ready == StatusCode::OK && String::from_utf8_lossy(&body).contains(r#""store":"down""#)
    })
    .await;
    assert!(b.metrics().await.contains("account_gate_store_up 0"));
    wait_until("B reports its revocation subscription lost", || async {
        b.metrics()
            .await
            .contains("account_gate_revocation_subscription_up 0")
    })
    .await;
    assert!(store_errors(&b.metrics().await) > errors_before);
    assert!(b
        .metrics()
        .await
        .contains("account_gate_store_errors_total{backend=\"redis\",op=\"is_revoked\"}"));

    // Redis comes back (empty: it persisted nothing); the gateways reconnect on their own.
    let down_at = Instant::now();
    redis.restart().await;
    wait_until("B sees the store up again", || async {
        let (ready, body) = get(&b.admin_url("/readyz")).await;
        ready == StatusCode::OK && String::from_utf8_lossy(&body).contains(r#""store":"up""#)
    })
    .await;
    assert!(b.metrics().await.contains("account_gate_store_up 1"));
    wait_until(
        "unknown tokens are unknown again, not unavailable",
        || async {
            let answer = api_b.scoped_get(&other_path, &other_token).await;
            answer.status == StatusCode::UNAUTHORIZED && code(&answer) == "token_unknown"
        },
    )
    .await;
    println!(
        "recovered {:?} after redis-server restarted",
        down_at.elapsed()
    );
    // And the whole path works again, revocation fan-out included.
    let (_, account, token) = sign_up(&api_a, "dee@example.com").await;
    let path = format!("/v2/accounts/{account}");
    assert_eq!(api_b.scoped_get(&path, &token).await.status, StatusCode::OK);
    wait_until("both subscribed again", || async {
        [&a, &b].iter().all(|g| match &*g.store {
            account_gate::store::Store::Redis(store) => store.is_subscribed(),
            _ => false,
        })
    })
    .await;
    assert!(b
        .metrics()
        .await
        .contains("account_gate_revocation_subscription_up 1"));
    assert_eq!(api_a.logout(&token).await.status, StatusCode::NO_CONTENT);
    wait_until("B refuses the logged-out token", || async {
        api_b.scoped_get(&path, &token).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn tokens_expire_in_redis_by_their_ttl() {
    let redis = TestRedis::start().await;
    let upstream = emulator(EmulatorOptions {
        token_lifetime: Duration::from_secs(3),
        ..EmulatorOptions::default()
    })
    .await;
    let a = gateway(&upstream, &redis, |_| {}).await;
    let api = Commerce::new(&a.url(""));
    let (member, _, token) = sign_up(&api, "ann@example.com").await;
    let fp = Fingerprint::of(&token).to_hex();
    let record_key = format!("account-gate:{{{fp}}}:t");
    let member_key = format!("account-gate:member:{member}");
    let mut conn = redis.connection().await;
    for key in [&record_key, &member_key] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 3_000, "{key}: PTTL {ttl}");
    }
    wait_until("Redis drops the expired record and member set", || {
        let mut conn = conn.clone();
        let keys = [record_key.clone(), member_key.clone()];
        async move {
            let n: i64 = redis::cmd("EXISTS")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .unwrap();
            n == 0
        }
    })
    .await;
    let answer = api.scoped_get("/v2/accounts/any", &token).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
}
