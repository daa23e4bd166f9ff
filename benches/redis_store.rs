//! Validations per second with the Redis store: what one account-token validation asks the store
//! (`is_revoked`, then `lookup`), answered from the L1, or from Redis with the L1 off (every
//! check a round trip), one at a time and 64 at once. Starts its own `redis-server` on a free
//! loopback port.
//!
//! `cargo bench --bench redis_store`

use std::hint::black_box;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use account_gate::store::{Fingerprint, RedisStore, RedisStoreOptions, TokenRecord, TokenStore};
use criterion::{criterion_group, Criterion, Throughput};
use futures_util::future::join_all;

mod common;

/// Validations run at once in the concurrent benches.
const CONCURRENT: usize = 64;
/// Distinct recorded tokens the benches cycle through.
const TOKENS: usize = 1_000;

/// The bench's own Redis, killed on drop.
struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(dir: &std::path::Path) -> Redis {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    Redis(child, port)
}

fn store(port: u16, l1_ttl: Duration) -> RedisStore {
    RedisStore::new(RedisStoreOptions {
        l1_ttl,
        command_timeout: Duration::from_secs(2),
        ..RedisStoreOptions::new(&format!("redis://127.0.0.1:{port}"))
    })
    .expect("store")
}

fn fingerprint(i: usize) -> Fingerprint {
    Fingerprint::of(&format!("token-{i}"))
}

/// What the validator asks the store for one token in `issued` mode.
async fn validate(store: &RedisStore, fp: &Fingerprint) -> bool {
    matches!(store.is_revoked(fp).await, Ok(false)) && matches!(store.lookup(fp).await, Ok(Some(_)))
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let redis = start_redis(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (with_l1, without_l1) = rt.block_on(async {
        let with_l1 = store(redis.1, Duration::from_secs(60));
        let without_l1 = store(redis.1, Duration::ZERO);
        // Wait for the server, then record the tokens.
        for _ in 0..500 {
            if with_l1.ping().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for i in 0..TOKENS {
            let record = TokenRecord {
                fingerprint: fingerprint(i),
                member_id: format!("member-{i}"),
                account_id: format!("account-{i}"),
                account_name: None,
                expires_at: SystemTime::now() + Duration::from_secs(3600),
                learned: false,
            };
            with_l1.record(record).await.expect("record");
        }
        for i in 0..TOKENS {
            assert!(validate(&with_l1, &fingerprint(i)).await, "warm L1");
        }
        (with_l1, without_l1)
    });

    let mut group = c.benchmark_group("redis_store");
    group.throughput(Throughput::Elements(1));
    for (name, store) in [("l1_hit", &with_l1), ("l1_miss", &without_l1)] {
        let mut i = 0usize;
        group.bench_function(format!("validate_{name}"), |b| {
            b.iter(|| {
                i = (i + 1) % TOKENS;
                black_box(rt.block_on(validate(store, &fingerprint(i))))
            })
        });
    }
    group.throughput(Throughput::Elements(CONCURRENT as u64));
    for (name, store) in [("l1_hit", &with_l1), ("l1_miss", &without_l1)] {
        let mut i = 0usize;
        group.bench_function(format!("validate_{name}_x{CONCURRENT}"), |b| {
            b.iter(|| {
                i = (i + CONCURRENT) % TOKENS;
                let batch = (i..i + CONCURRENT).map(|j| fingerprint(j % TOKENS));
                let fps: Vec<_> = batch.collect();
                black_box(rt.block_on(join_all(fps.iter().map(|fp| validate(store, fp)))))
            })
        });
    }
    group.finish();
    drop((with_l1, without_l1));
    drop(rt);
    drop(redis);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    targets = bench
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
