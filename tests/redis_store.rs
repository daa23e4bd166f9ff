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
    assert!(b.is_revoked(&sig).await.unwrap());
    // Another replica answers from its own deny-list: it holds the entry once the message is in.
    wait_until("A hears of B's revocation", || async {
        a.is_revoked(&sig).await.unwrap()
    })
    .await;

    // Logout of a member: every token, on every replica.
    assert_eq!(b.revoke_member("m1").await.unwrap(), vec![r2.clone()]);
    assert!(a.revoke_member("m1").await.unwrap().is_empty());
    wait_until("A hears of B's logout", || async {
        a.is_revoked(&r2.fingerprint).await.unwrap()
    })
    .await;
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

/// Options of a store on `redis` with `change` applied.
fn store_with(redis: &TestRedis, change: impl FnOnce(&mut RedisStoreOptions)) -> RedisStore {
    let mut options = RedisStoreOptions {
        command_timeout: Duration::from_millis(100),
        l1_ttl: Duration::from_secs(60),
        ..RedisStoreOptions::new(&redis.url())
    };
    change(&mut options);
    RedisStore::new(options).expect("store")
}

/// Writes a revocation into Redis as a replica would, but announces it on no channel: one
/// whose message was lost.
async fn revoke_silently(redis: &TestRedis, token: &str, member: &str) -> Fingerprint {
    let fp = Fingerprint::of(token);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    let (now_ms, end_ms) = (now.as_millis() as u64, (now + DAY).as_millis() as u64);
    let mut conn = redis.connection().await;
    let _: () = redis::pipe()
        .cmd("ZADD")
        .arg("account-gate:revocations")
        .arg(end_ms)
        .arg(format!("t:{}:{now_ms}:{member}", fp.to_hex()))
        .ignore()
        .cmd("SET")
        .arg(format!("account-gate:{{{}}}:r", fp.to_hex()))
        .arg(end_ms)
        .arg("PX")
        .arg(DAY.as_millis() as u64)
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    fp
}

#[tokio::test]
async fn revocations_present_before_a_replica_starts_are_loaded() {
    let redis = TestRedis::start().await;
    let a = store(&redis, false);
    // More than a page of the scan, all with the same end.
    let until = SystemTime::now() + DAY;
    let fps: Vec<Fingerprint> = (0..2_500)
        .map(|i| Fingerprint::of(&format!("t{i}")))
        .collect();
    for chunk in fps.chunks(250) {
        let revocations = chunk
            .iter()
            .map(|fp| async { a.revoke(fp, until, Some("m")).await.unwrap() });
        futures_util::future::join_all(revocations).await;
    }
    // A dead entry is trimmed by the next load.
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("ZADD")
        .arg("account-gate:revocations")
        .arg(1)
        .arg(format!("t:{}:0:", Fingerprint::of("dead").to_hex()))
        .query_async(&mut conn)
        .await
        .unwrap();

    let b = store_with(&redis, |o| o.max_revoked_per_member = 10_000);
    loaded(&[&b]).await;
    assert_eq!(b.revocations_held(), 2_500);
    for fp in &fps {
        assert!(b.is_revoked(fp).await.unwrap());
    }
    let left: u64 = redis::cmd("ZCARD")
        .arg("account-gate:revocations")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 2_500, "the dead entry is trimmed");
}

#[tokio::test]
async fn a_revocation_whose_message_was_missed_is_caught_by_a_resync() {
    let redis = TestRedis::start().await;
    let b = store(&redis, false);
    let periodic = store_with(&redis, |o| o.revocation_resync = Duration::from_secs(1));
    loaded(&[&b, &periodic]).await;

    // After a resubscription (the subscription was cut).
    let missed = revoke_silently(&redis, "missed", "m").await;
    assert!(!b.is_revoked(&missed).await.unwrap(), "answered locally");
    let mut conn = redis.connection().await;
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    wait_until("B re-synced after resubscribing", || async {
        b.is_revoked(&missed).await.unwrap()
    })
    .await;

    // Periodically, without the subscription dropping.
    let lost = revoke_silently(&redis, "lost", "m").await;
    wait_until("the periodic resync", || async {
        periodic.is_revoked(&lost).await.unwrap()
    })
    .await;
}

#[tokio::test]
async fn revocations_reach_every_replica_in_full_and_in_the_old_format() {
    let redis = TestRedis::start().await;
    let (a, b) = (store(&redis, false), store(&redis, false));
    loaded(&[&a, &b]).await;
    let mut conn = redis.connection().await;

    // In full: the set names the member, the message carries the entry.
    let fp = Fingerprint::of("tok");
    let until = SystemTime::now() + DAY;
    a.revoke(&fp, until, Some("member-1")).await.unwrap();
    assert!(a.is_revoked(&fp).await.unwrap(), "applied at once");
    let entries: Vec<(String, u64)> = redis::cmd("ZRANGE")
        .arg("account-gate:revocations")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let (member, end) = &entries[0];
    assert!(
        member.starts_with(&format!("t:{}:", fp.to_hex())),
        "{member}"
    );
    assert!(member.ends_with(":member-1"), "{member}");
    let grace = RedisStoreOptions::new("redis://x").revoked_grace;
    let expected = (until + grace)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert_eq!(*end, expected);
    wait_until("B holds it", || async { b.revocations_held() == 1 }).await;

    // The old format (a replica of an earlier version): a bare fingerprint on the old channel,
    // its deny key written, no set entry. B drops it from its caches and learns the entry.
    let mut events = b.revocation_events();
    let old = Fingerprint::of("revoked by an old replica");
    let _: () = redis::cmd("SET")
        .arg(format!("account-gate:{{{}}}:r", old.to_hex()))
        .arg(expected)
        .arg("PX")
        .arg(DAY.as_millis() as u64)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg("account-gate:revoked")
        .arg(old.to_hex())
        .query_async(&mut conn)
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("event in time")
        .expect("event");
    assert_eq!(event, old);
    wait_until("B learnt the old-format revocation", || async {
        b.revocations_held() == 2
    })
    .await;
    assert!(b.is_revoked(&old).await.unwrap());
}

#[tokio::test]
async fn a_folded_member_stays_folded_where_it_was_and_resyncs_do_not_move_it() {
    let redis = TestRedis::start().await;
    let options = |o: &mut RedisStoreOptions| {
        o.max_revoked_per_member = 2;
        o.revocation_resync = Duration::from_secs(1);
    };
    let (a, b) = (store_with(&redis, options), store_with(&redis, options));
    loaded(&[&a, &b]).await;
    let issued_before = SystemTime::now() - Duration::from_secs(1);
    for i in 0..3 {
        let fp = Fingerprint::of(&format!("m-token-{i}"));
        a.revoke(&fp, SystemTime::now() + DAY, Some("m"))
            .await
            .unwrap();
    }
    wait_until("B folded the member", || async {
        b.member_revoked("m", Some(issued_before)).await.unwrap()
    })
    .await;
    assert!(a.member_revoked("m", Some(issued_before)).await.unwrap());
    // A token the member was issued after the logouts is not covered, before or after resyncs
    // (a resync that folded the member again would move the watermark past it).
    let issued_after = SystemTime::now() + Duration::from_millis(2);
    wait_until("a moment later", || async {
        SystemTime::now() > issued_after
    })
    .await;
    assert!(!b.member_revoked("m", Some(issued_after)).await.unwrap());
    let marker = revoke_silently(&redis, "marker", "other").await;
    wait_until("a resync after the fold", || async {
        a.is_revoked(&marker).await.unwrap() && b.is_revoked(&marker).await.unwrap()
    })
    .await;
    for store in [&a, &b] {
        assert!(!store.member_revoked("m", Some(issued_after)).await.unwrap());
        assert!(store
            .member_revoked("m", Some(issued_before))
            .await
            .unwrap());
    }
}

#[tokio::test]
async fn the_maxmemory_policy_is_checked_at_start() {
    use account_gate::store::EvictionPolicy;
    let redis = TestRedis::start().await;
    let mut conn = redis.connection().await;
    let policy = |policy: &'static str| {
        let mut conn = conn.clone();
        async move {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory-policy")
                .arg(policy)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    };
    let found = |store: RedisStore, expected: EvictionPolicy| async move {
        wait_until("the policy check", || async {
            store.eviction_policy() != EvictionPolicy::Unchecked
        })
        .await;
        assert_eq!(store.eviction_policy(), expected);
    };
    found(store(&redis, false), EvictionPolicy::Safe).await;
    policy("volatile-lru").await;
    found(
        store(&redis, false),
        EvictionPolicy::Unsafe("volatile-lru".into()),
    )
    .await;
    policy("noeviction").await;
    // A managed Redis that refuses CONFIG: not known, and said so.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("-config")
        .query_async(&mut conn)
        .await
        .unwrap();
    found(store(&redis, false), EvictionPolicy::Unknown).await;
}
