//! Revocations held on every replica: through real gateways, a `redis-server` killed
//! with SIGKILL under load and restarted on its port, in every `tokens.mode`; a replica cut off
//! from Redis while another revokes; a replica started after a revocation. Every test starts
//! its own `redis-server` on a free port (and skips loudly where none is installed, except in
//! CI).

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use account_gate::config::{Config, TokenMode, UnknownTokens};
use account_gate::emulator::{mint_token, Emulator, EmulatorHandle, EmulatorOptions};
use account_gate::store::Store;
use common::commerce::{issued, signup_data, Answer, Commerce};
use common::cut::CutProxy;
use common::redis::TestRedis;
use common::{get, wait_until, RunningGateway, TestGateway};
use http::StatusCode;

const SECRET: &[u8] = b"an-hs256-secret-of-thirty-two-bytes!";

/// The emulator, signing with [`SECRET`].
async fn emulator() -> EmulatorHandle {
    let options = EmulatorOptions {
        signing_secret: SECRET.to_vec(),
        ..EmulatorOptions::default()
    };
    Emulator::spawn("127.0.0.1:0".parse().expect("addr"), options)
        .await
        .expect("emulator")
}

/// The HS256 secret as a file for `tokens.signature.hs256_secret_file`.
fn secret_file() -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp");
    file.write_all(SECRET).expect("write");
    file
}

/// A gateway on `redis_url` in `mode`, with a long L1 and a short command timeout.
async fn gateway(
    upstream: &EmulatorHandle,
    redis: &TestRedis,
    redis_url: &str,
    mode: TokenMode,
    unknown: UnknownTokens,
    secret: &tempfile::NamedTempFile,
) -> RunningGateway {
    let gateway = TestGateway::new(&upstream.url())
        .configure(|c: &mut Config| {
            redis.configure(c);
            c.store.redis_url = Some(redis_url.to_owned());
            c.store.l1_ttl = std::time::Duration::from_secs(60);
            c.store.command_timeout = std::time::Duration::from_millis(100);
            c.tokens.mode = mode;
            c.tokens.unknown = unknown;
            if mode != TokenMode::Issued {
                c.tokens.signature.hs256_secret_file = Some(secret.path().to_owned());
            }
        })
        .start()
        .await;
    wait_until("the gateway has loaded the revocations", || async {
        redis_store(&gateway).revocations_loaded()
    })
    .await;
    gateway
}

fn redis_store(gateway: &RunningGateway) -> &account_gate::store::RedisStore {
    match &*gateway.store {
        Store::Redis(store) => store,
        Store::Memory(_) => panic!("a Redis gateway"),
    }
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

/// A client loop: GETs `path` with `token` until stopped, recording every status and code.
fn load(
    base: String,
    path: String,
    token: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(StatusCode, String)>> {
    tokio::spawn(async move {
        let api = Commerce::new(&base);
        let mut seen = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let answer = api.scoped_get(&path, &token).await;
            let code = if answer.status.is_success() {
                String::new()
            } else {
                code(&answer)
            };
            seen.push((answer.status, code));
        }
        seen
    })
}

/// Kills Redis under load and restarts it, with a gateway in `mode`.
async fn outage(mode: TokenMode, unknown: UnknownTokens) {
    let Some(mut redis) = TestRedis::try_start().await else {
        return;
    };
    let (upstream, secret) = (emulator().await, secret_file());
    let url = redis.url();
    let gw = gateway(&upstream, &redis, &url, mode, unknown, &secret).await;
    let api = Commerce::new(&gw.url(""));

    // A token the L1 holds, a revoked one, and a correctly signed one nobody recorded.
    let (member, account, held) = sign_up(&api, "held@example.com").await;
    let held_path = format!("/v2/accounts/{account}");
    assert_eq!(
        api.scoped_get(&held_path, &held).await.status,
        StatusCode::OK
    );
    let (_, gone_account, gone) = sign_up(&api, "gone@example.com").await;
    let gone_path = format!("/v2/accounts/{gone_account}");
    assert_eq!(api.logout(&gone).await.status, StatusCode::NO_CONTENT);
    let signing = EmulatorOptions {
        signing_secret: SECRET.to_vec(),
        ..EmulatorOptions::default()
    };
    let signed = mint_token(&signing, &member, &account, 3_600);

    // Load through the kill: clients using the held and the revoked token, and /readyz.
    let stop = Arc::new(AtomicBool::new(false));
    let held_load = load(gw.url(""), held_path.clone(), held.clone(), stop.clone());
    let gone_load = load(gw.url(""), gone_path.clone(), gone.clone(), stop.clone());
    let ready = Arc::new(Mutex::new(Vec::new()));
    let probe = {
        let (url, stop, ready) = (gw.admin_url("/readyz"), stop.clone(), ready.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let status = get(&url).await.0;
                ready.lock().expect("lock").push(status);
            }
        })
    };
    wait_until("load before the kill", || async {
        ready.lock().expect("lock").len() > 3
    })
    .await;

    redis.stop(); // SIGKILL
    wait_until("the gateway sees the store down", || async {
        let (status, body) = get(&gw.admin_url("/readyz")).await;
        status == StatusCode::OK && String::from_utf8_lossy(&body).contains(r#""store":"down""#)
    })
    .await;

    let revoked = api.scoped_get(&gone_path, &gone).await;
    assert_eq!(revoked.status, StatusCode::UNAUTHORIZED, "{mode:?}");
    assert_eq!(code(&revoked), "token_revoked");
    let held_answer = api.scoped_get(&held_path, &held).await;
    assert_eq!(held_answer.status, StatusCode::OK, "{mode:?}: L1 hit");
    let signed_answer = api.scoped_get(&held_path, &signed).await;
    match (mode, unknown) {
        // Signed is proof enough.
        (TokenMode::Signature | TokenMode::Either, _) => {
            assert_eq!(signed_answer.status, StatusCode::OK, "{mode:?}");
        }
        // Unknown to the L1; the upstream decides.
        (TokenMode::Issued, UnknownTokens::Upstream) => {
            assert_eq!(signed_answer.status, StatusCode::OK, "{mode:?}");
        }
        // Issued is required and only Redis could say: refused, never accepted.
        (TokenMode::Issued | TokenMode::Both, _) => {
            assert_eq!(signed_answer.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(code(&signed_answer), "store_unavailable", "{mode:?}");
        }
    }

    redis.restart().await;
    wait_until("resubscribed and re-synced", || async {
        let store = redis_store(&gw);
        store.is_subscribed() && store.ping().await.is_ok()
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let (held_seen, gone_seen) = (held_load.await.unwrap(), gone_load.await.unwrap());
    probe.await.unwrap();

    // Through the whole outage the revoked token was refused, every time.
    assert!(!gone_seen.is_empty());
    for (status, code) in &gone_seen {
        assert_eq!(
            (*status, code.as_str()),
            (StatusCode::UNAUTHORIZED, "token_revoked"),
            "{mode:?}"
        );
    }
    // The held token was served until Redis came back empty (this Redis persists nothing, so
    // its record is gone once the L1 is cleared on resubscription).
    let served = held_seen
        .iter()
        .take_while(|(status, _)| *status == StatusCode::OK)
        .count();
    assert!(served > 0, "{mode:?}");
    for (status, code) in &held_seen[served..] {
        match mode {
            TokenMode::Signature | TokenMode::Either => unreachable!("{mode:?}: {status} {code}"),
            // Unknown now; unavailable while the connections are being re-made.
            _ => assert!(
                (*status, code.as_str()) == (StatusCode::UNAUTHORIZED, "token_unknown")
                    || (*status, code.as_str())
                        == (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
                "{mode:?}: {status} {code}"
            ),
        }
    }
    println!(
        "{mode:?}: {} requests with the held token, {} with the revoked one, through the outage",
        held_seen.len(),
        gone_seen.len()
    );
    // Ready throughout: a Redis outage never takes the pod out.
    let statuses = ready.lock().expect("lock").clone();
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );

    // Redis lost the revocation; the replica did not.
    let after = api.scoped_get(&gone_path, &gone).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&after), "token_revoked");
    assert!(gw.sample("account_gate_revocations_held").await >= 1.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn redis_killed_under_load_in_issued_mode() {
    outage(TokenMode::Issued, UnknownTokens::Reject).await;
}

#[tokio::test]
async fn redis_killed_under_load_in_issued_mode_with_unknown_upstream() {
    outage(TokenMode::Issued, UnknownTokens::Upstream).await;
}

#[tokio::test]
async fn redis_killed_under_load_in_signature_mode() {
    outage(TokenMode::Signature, UnknownTokens::Reject).await;
}

#[tokio::test]
async fn redis_killed_under_load_in_either_mode() {
    outage(TokenMode::Either, UnknownTokens::Reject).await;
}

#[tokio::test]
async fn redis_killed_under_load_in_both_mode() {
    outage(TokenMode::Both, UnknownTokens::Reject).await;
}

#[tokio::test]
async fn a_revocation_made_while_a_replica_was_cut_off_is_refused_there_once_it_is_back() {
    let Some(redis) = TestRedis::try_start().await else {
        return;
    };
    let (upstream, secret) = (emulator().await, secret_file());
    let proxy = CutProxy::start(redis.addr()).await;
    let mode = TokenMode::Signature;
    let reject = UnknownTokens::Reject;
    let a = gateway(&upstream, &redis, &redis.url(), mode, reject, &secret).await;
    let b = gateway(&upstream, &redis, &proxy.url(), mode, reject, &secret).await;
    let (api_a, api_b) = (Commerce::new(&a.url("")), Commerce::new(&b.url("")));
    let (_, account, token) = sign_up(&api_a, "ann@example.com").await;
    let path = format!("/v2/accounts/{account}");
    assert_eq!(api_b.scoped_get(&path, &token).await.status, StatusCode::OK);

    proxy.cut();
    wait_until("B lost its subscription", || async {
        !redis_store(&b).is_subscribed()
    })
    .await;
    assert_eq!(api_a.logout(&token).await.status, StatusCode::NO_CONTENT);
    // B never heard of it; once it is back, its resync brings it.
    proxy.heal();
    wait_until(
        "B refuses the token revoked while it was cut off",
        || async {
            let answer = api_b.scoped_get(&path, &token).await;
            answer.status == StatusCode::UNAUTHORIZED && code(&answer) == "token_revoked"
        },
    )
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_replica_started_after_a_revocation_refuses_it_even_once_redis_is_gone() {
    let Some(mut redis) = TestRedis::try_start().await else {
        return;
    };
    let (upstream, secret) = (emulator().await, secret_file());
    let mode = TokenMode::Signature;
    let reject = UnknownTokens::Reject;
    let url = redis.url();
    let a = gateway(&upstream, &redis, &url, mode, reject, &secret).await;
    let api_a = Commerce::new(&a.url(""));
    let (_, account, token) = sign_up(&api_a, "ann@example.com").await;
    assert_eq!(api_a.logout(&token).await.status, StatusCode::NO_CONTENT);

    let b = gateway(&upstream, &redis, &url, mode, reject, &secret).await;
    assert!(b.sample("account_gate_revocations_held").await >= 1.0);
    // Only the load at start can have told B: it never asked Redis about this token.
    redis.stop();
    let answer = Commerce::new(&b.url(""))
        .scoped_get(&format!("/v2/accounts/{account}"), &token)
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&answer), "token_revoked");
    a.shutdown().await;
    b.shutdown().await;
}

/// A gateway on `redis_url` in signature mode, spawned without waiting for it to be ready.
async fn spawned(
    upstream: &EmulatorHandle,
    redis: &TestRedis,
    redis_url: &str,
    secret: &tempfile::NamedTempFile,
) -> RunningGateway {
    TestGateway::new(&upstream.url())
        .configure(|c: &mut Config| {
            redis.configure(c);
            c.store.redis_url = Some(redis_url.to_owned());
            c.store.command_timeout = std::time::Duration::from_millis(100);
            c.tokens.mode = TokenMode::Signature;
            c.tokens.signature.hs256_secret_file = Some(secret.path().to_owned());
        })
        .spawn()
        .await
}

/// `/readyz`: its status, its body's `reason` (empty when ready) and `store`.
async fn readiness(gateway: &RunningGateway) -> (StatusCode, String, String) {
    let (status, body) = get(&gateway.admin_url("/readyz")).await;
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let field = |name: &str| body[name].as_str().unwrap_or_default().to_owned();
    (status, field("reason"), field("store"))
}

#[tokio::test]
async fn a_replica_is_not_ready_while_its_revocations_load_but_ready_through_an_outage() {
    let Some(redis) = TestRedis::try_start().await else {
        return;
    };
    // A first load that cannot complete while Redis answers, as a long one would look: the
    // sorted set is a string for now, so every read of it fails (WRONGTYPE) and is retried.
    let set = "account-gate:revocations";
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("SET")
        .arg(set)
        .arg("not a sorted set")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let (upstream, secret) = (emulator().await, secret_file());
    // A token the upstream signed, never seen by a gateway.
    let (_, account, signed) = sign_up(&Commerce::new(&upstream.url()), "ann@example.com").await;
    let path = format!("/v2/accounts/{account}");
    let gw = spawned(&upstream, &redis, &redis.url(), &secret).await;
    let api = Commerce::new(&gw.url(""));

    // Listening and Redis up, but kept out of service: that token would get a 503.
    let loading = (
        StatusCode::SERVICE_UNAVAILABLE,
        "revocations_loading".to_owned(),
        "up".to_owned(),
    );
    wait_until("the gateway reports its revocations loading", || async {
        readiness(&gw).await == loading
    })
    .await;
    assert!(!redis_store(&gw).revocations_loaded());
    let answer = api.scoped_get(&path, &signed).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code(&answer), "store_unavailable");

    // A replica whose Redis does not answer is not waiting on a load of its own: as through
    // any outage, it is ready and reports the store down.
    let refused = format!("redis://{}", common::upstream::refused_addr().await);
    let cut_off = spawned(&upstream, &redis, &refused, &secret).await;
    wait_until("the cut-off gateway is ready, its store down", || async {
        readiness(&cut_off).await == (StatusCode::OK, String::new(), "down".to_owned())
    })
    .await;
    assert!(!redis_store(&cut_off).revocations_loaded());

    // The set is readable again: the next try loads it, and the replica turns ready.
    let _: () = redis::cmd("DEL")
        .arg(set)
        .query_async(&mut conn)
        .await
        .expect("DEL");
    common::eventually(
        "ready once the revocations are loaded",
        std::time::Duration::from_secs(30),
        || async { readiness(&gw).await.0 == StatusCode::OK },
    )
    .await;
    assert!(redis_store(&gw).revocations_loaded());
    assert_eq!(api.scoped_get(&path, &signed).await.status, StatusCode::OK);
    gw.shutdown().await;
    cut_off.shutdown().await;
}
