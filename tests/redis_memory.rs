//! What a million revocations cost: in each replica's local deny-list, and in Redis. Ignored by
//! default (it takes a minute or two); run it alone, so that nothing else grows this process:
//!
//! `cargo test --test redis_memory -- --ignored --nocapture` (memory is the same in a debug
//! build; the times are not, add `--release` for those)
//!
//! Each revocation is a distinct token of its own member (a UUID, as Commerce member ids are),
//! expiring in 24 h: the worst case for memory, since no member is folded into a watermark.

mod common;

use std::time::{Duration, Instant, SystemTime};

use account_gate::store::{DenyList, Fingerprint, RedisStore, RedisStoreOptions, TokenStore};
use common::eventually;
use common::redis::TestRedis;
use futures_util::future::join_all;

/// The gateway binary's allocator, so that memory is measured as it runs.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const REVOCATIONS: usize = 1_000_000;
/// Revocations sent to Redis at once.
const CONCURRENT: usize = 512;

/// Resident set size of this process in bytes, from `/proc/self/status`.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn member(i: usize) -> String {
    uuid::Uuid::from_u128(0x4000_8000_0000_0000_0000_0000_0000_0000 | i as u128).to_string()
}

fn fingerprint(i: usize) -> Fingerprint {
    Fingerprint::of(&format!("token-{i}"))
}

async fn used_memory(redis: &TestRedis) -> u64 {
    let mut conn = redis.connection().await;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .expect("INFO memory");
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run alone with --ignored --nocapture"]
async fn memory_per_million_revocations() {
    // The local replica alone: a deny-list as each replica holds it.
    let until = SystemTime::now() + Duration::from_secs(24 * 60 * 60);
    let before = rss_bytes();
    let list = DenyList::new(64);
    for i in 0..REVOCATIONS {
        list.deny(fingerprint(i), until, Some(&member(i)));
    }
    let local = rss_bytes().saturating_sub(before);
    assert_eq!(list.len(), REVOCATIONS as u64);
    println!(
        "local deny-list: {:.1} MiB RSS per {REVOCATIONS} revocations ({} bytes each)",
        mib(local),
        local / REVOCATIONS as u64
    );
    drop(list);

    // Redis: the deny keys and the revocations set, written through the store.
    let Some(redis) = TestRedis::try_start().await else {
        return;
    };
    let options = RedisStoreOptions {
        command_timeout: Duration::from_secs(5),
        ..RedisStoreOptions::new(&redis.url())
    };
    let writer = RedisStore::new(options.clone()).expect("store");
    let redis_before = used_memory(&redis).await;
    let started = Instant::now();
    for chunk in (0..REVOCATIONS).collect::<Vec<_>>().chunks(CONCURRENT) {
        let revocations = chunk.iter().map(|&i| {
            let (writer, member) = (&writer, member(i));
            async move {
                writer
                    .revoke(&fingerprint(i), until, Some(&member))
                    .await
                    .expect("revoke")
            }
        });
        join_all(revocations).await;
    }
    let wrote = started.elapsed();
    let in_redis = used_memory(&redis).await.saturating_sub(redis_before);
    println!(
        "Redis: {:.1} MiB used_memory per {REVOCATIONS} revocations ({} bytes each); written in {wrote:?}",
        mib(in_redis),
        in_redis / REVOCATIONS as u64
    );
    println!(
        "the writing replica holds {} revocations locally",
        writer.revocations_held()
    );
    drop(writer);

    // A replica starting now loads them all.
    let started = Instant::now();
    let reader = RedisStore::new(options).expect("store");
    let within = Duration::from_secs(600);
    eventually("the new replica's first load", within, || async {
        reader.revocations_loaded()
    })
    .await;
    println!(
        "a starting replica loaded {} revocations in {:?}",
        reader.revocations_held(),
        started.elapsed()
    );
}
