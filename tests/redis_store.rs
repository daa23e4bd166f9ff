//! The Redis backend against the [`TokenStore`] contract, with its own `redis-server`: two store
//! handles stand for two replicas.

mod common;

use std::time::{Duration, Instant, SystemTime};

use account_gate::store::{
    Fingerprint, RedisStore, RedisStoreOptions, Store, StoreError, TokenRecord, TokenStore,
};
use common::redis::TestRedis;
use common::wait_until;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn store(redis: &TestRedis, cluster: bool) -> RedisStore {
    RedisStore::new(RedisStoreOptions {
        cluster,
        command_timeout: Duration::from_millis(100),
        l1_ttl: Duration::from_secs(60),
        ..RedisStoreOptions::new(&redis.url())
    })
    .expect("store")
}

fn record(token: &str, member: &str, account: &str, ttl: Duration) -> TokenRecord {
    TokenRecord {
        fingerprint: Fingerprint::of(token),
        member_id: member.to_owned(),
        account_id: account.to_owned(),
        account_name: Some(format!("{account} name")),
        // Whole milliseconds, as Redis keeps them.
        expires_at: SystemTime::UNIX_EPOCH
            + Duration::from_millis(
                (SystemTime::now() + ttl)
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64,
            ),
        learned: false,
    }
}

async fn subscribed(stores: &[&RedisStore]) {
    wait_until("subscribed to revocations", || async {
        stores.iter().all(|s| s.is_subscribed())
    })
    .await;
}

/// The contract, run on a node or a cluster.
async fn contract(redis: &TestRedis, cluster: bool) {
    let (a, b) = (store(redis, cluster), store(redis, cluster));
    subscribed(&[&a, &b]).await;
    let mut events = b.revocation_events();
    let r1 = record("tok-1", "m1", "acc-b", DAY);
    let r2 = record("tok-2", "m1", "acc-a", DAY);
    a.record(r1.clone()).await.unwrap();
    a.record(r1.clone()).await.unwrap(); // idempotent
    a.record(r2.clone()).await.unwrap();
    // B learns from Redis and keeps it in its L1.
    assert_eq!(b.lookup(&r1.fingerprint).await.unwrap(), Some(r1.clone()));
    assert!(!b.is_revoked(&r1.fingerprint).await.unwrap());
    assert_eq!(
        b.list_member("m1").await.unwrap(),
        vec![r2.clone(), r1.clone()]
    );
    assert_eq!(b.lookup(&Fingerprint::of("nope")).await.unwrap(), None);

    // Revocation on A reaches B's L1 and its event stream.
    assert!(a
        .revoke(&r1.fingerprint, r1.expires_at, None)
        .await
        .unwrap());
    assert!(!a
        .revoke(&r1.fingerprint, r1.expires_at, None)
        .await
        .unwrap()); // already
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("event in time")
        .expect("event");
    assert_eq!(event, r1.fingerprint);
    assert!(b.is_revoked(&r1.fingerprint).await.unwrap());
    assert_eq!(b.lookup(&r1.fingerprint).await.unwrap(), None);
    // Revocation wins: recording it again (a late tee, a replay) does not bring it back.
    b.record(r1.clone()).await.unwrap();
    assert_eq!(a.lookup(&r1.fingerprint).await.unwrap(), None);
    assert_eq!(b.list_member("m1").await.unwrap(), vec![r2.clone()]);

    // A token never recorded (signature mode) can be revoked too.
    let sig = Fingerprint::of("signed-only");
    assert!(b.revoke(&sig, SystemTime::now() + DAY, None).await.unwrap());
    assert!(a.is_revoked(&sig).await.unwrap());

    // Logout of a member: every token, on every replica.
    assert_eq!(b.revoke_member("m1").await.unwrap(), vec![r2.clone()]);
    assert!(a.revoke_member("m1").await.unwrap().is_empty());
    assert!(a.is_revoked(&r2.fingerprint).await.unwrap());
    assert!(a.list_member("m1").await.unwrap().is_empty());
    assert!(b.revoke_member("nobody").await.unwrap().is_empty());

    // Expired tokens are not recorded.
    let old = record("old", "m2", "acc", Duration::ZERO);
    a.record(old.clone()).await.unwrap();
    assert_eq!(a.lookup(&old.fingerprint).await.unwrap(), None);
}

#[tokio::test]
async fn the_contract_holds_across_two_replicas() {
    let redis = TestRedis::start().await;
    contract(&redis, false).await;
    let store = store(&redis, false);
    wait_until("the record count", || async { store.count() == 0 }).await;
    let store: Store = store.into();
    assert_eq!(store.backend(), "redis");
    assert!(store.ping().await.is_ok());
}

#[tokio::test]
async fn the_contract_holds_on_a_redis_cluster() {
    let redis = TestRedis::start_cluster().await;
    contract(&redis, true).await;
}

/// Waits until every store has subscribed and completed its first load of revocations.
async fn loaded(stores: &[&RedisStore]) {
    wait_until("revocations loaded", || async {
        stores
            .iter()
            .all(|s| s.is_subscribed() && s.revocations_loaded())
    })
    .await;
}

#[tokio::test]
async fn calls_fail_fast_and_answer_from_l1_and_the_deny_list_while_redis_is_down() {
    let mut redis = TestRedis::start().await;
    let store = store(&redis, false);
    loaded(&[&store]).await;
    let known = record("known", "m", "acc", DAY);
    store.record(known.clone()).await.unwrap();
    let revoked = Fingerprint::of("revoked");
    assert!(store
        .revoke(&revoked, SystemTime::now() + DAY, Some("m2"))
        .await
        .unwrap());
    redis.stop();
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(
            store.lookup(&known.fingerprint).await.unwrap(),
            Some(known.clone())
        );
        // Revocation checks are answered by the local deny-list alone.
        assert!(store.is_revoked(&revoked).await.unwrap());
        assert!(!store.is_revoked(&Fingerprint::of("unknown")).await.unwrap());
        assert!(!store.member_revoked("m2", None).await.unwrap());
        // What needs Redis fails, fast.
        let unknown = store.lookup(&Fingerprint::of("unknown")).await;
        assert!(matches!(
            unknown,
            Err(StoreError::Unavailable {
                backend: "redis",
                op: "lookup",
                ..
            })
        ));
        let write = store.record(record("new", "m", "acc", DAY)).await;
        assert!(write.is_err());
        assert!(store.revoke_member("m").await.is_err());
        // Bounded by the 100 ms command timeout (with slack for a loaded machine).
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    // A logout during the outage cannot reach Redis, but this replica keeps it.
    let during = Fingerprint::of("revoked during the outage");
    assert!(store
        .revoke(&during, SystemTime::now() + DAY, None)
        .await
        .is_err());
    assert!(store.is_revoked(&during).await.unwrap());
    redis.restart().await;
    wait_until("Redis answers again", || async {
        store.ping().await.is_ok()
    })
    .await;
    // The subscription came back and cleared the L1: Redis (empty now) is asked again.
    wait_until("L1 cleared on resubscribe", || async {
        store.is_subscribed() && matches!(store.lookup(&known.fingerprint).await, Ok(None))
    })
    .await;
    // Redis restarted empty; the replica still holds what it held (additive resyncs).
    assert!(store.is_revoked(&revoked).await.unwrap());
    assert!(store.is_revoked(&during).await.unwrap());
}

#[tokio::test]
async fn a_replica_started_while_redis_is_down_fails_closed_until_its_first_load() {
    let mut redis = TestRedis::start().await;
    let before = store(&redis, false);
    let revoked = Fingerprint::of("revoked before the outage");
    before
        .revoke(&revoked, SystemTime::now() + DAY, None)
        .await
        .unwrap();
    redis.stop();
    let store = store(&redis, false);
    assert!(matches!(
        store.is_revoked(&Fingerprint::of("any")).await,
        Err(StoreError::Unavailable {
            op: "is_revoked",
            ..
        })
    ));
    assert!(matches!(
        store.member_revoked("m", None).await,
        Err(StoreError::Unavailable {
            op: "member_revoked",
            ..
        })
    ));
    assert!(!store.revocations_loaded());
    redis.restart().await;
    loaded(&[&store]).await;
    assert!(!store.is_revoked(&Fingerprint::of("any")).await.unwrap());
    assert!(!store.member_revoked("m", None).await.unwrap());
}

#[test]
fn the_redis_backend_needs_a_url_without_a_password() {
    use account_gate::config::from_toml_str;
    let base = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[store]\nbackend = \"redis\"\n";
    let errors = from_toml_str(base, &[]).unwrap_err().to_string();
    assert!(errors.contains("store.redis_url"), "{errors}");
    let with_password = format!("{base}redis_url = \"redis://:hunter2@h:6379\"\n");
    let errors = from_toml_str(&with_password, &[]).unwrap_err().to_string();
    assert!(errors.contains("redis_password_env"), "{errors}");
    assert!(!errors.contains("hunter2"), "{errors}");
    let ok = format!("{base}redis_url = \"rediss://h:6380/1\"\nl1_ttl = \"2s\"\n");
    let loaded = from_toml_str(&ok, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.config.store.l1_ttl, Duration::from_secs(2));
    let bad =
        format!("{base}redis_url = \"redis://h\"\nkey_prefix = \"a{{b}}\"\nredis_pool_size = 0\n");
    let errors = from_toml_str(&bad, &[]).unwrap_err().to_string();
    assert!(
        errors.contains("store.key_prefix") && errors.contains("store.redis_pool_size"),
        "{errors}"
    );
}
