//! The memory token store: lookup hit / miss and record throughput (criterion), and the resident
//! memory that 1,000,000 records and 1,000,000 revocations cost (printed first, measured in a
//! fresh child process per configuration so that one measurement's freed memory cannot hide
//! another's growth).
//!
//! `cargo bench --bench store_memory`

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, SystemTime};

use account_gate::store::{
    DenyList, Fingerprint, MemoryStore, MemoryStoreOptions, TokenRecord, TokenStore,
};
use criterion::{criterion_group, Criterion, Throughput};

mod common;

use common::ready;

/// Set in the child process: `<max_entries>:<accounts per member>` to measure.
const CHILD_ENV: &str = "STORE_MEMORY_BENCH_CHILD";
/// Records inserted in each memory measurement.
const INSERTS: u64 = 1_000_000;
/// Records per member in the throughput benches (a member with several accounts).
const ACCOUNTS_PER_MEMBER: u64 = 3;

/// A realistic record: UUID-sized ids, a short account name, a 24 h expiry.
fn record_for(i: u64, fingerprint: Fingerprint, per_member: u64) -> TokenRecord {
    let member = i / per_member.max(1);
    TokenRecord {
        fingerprint,
        member_id: format!("{member:08x}-0000-4000-8000-{member:012x}"),
        account_id: format!("{i:08x}-1111-4000-8000-{i:012x}"),
        account_name: Some(format!("Account {i}")),
        expires_at: SystemTime::now() + Duration::from_secs(24 * 60 * 60),
        learned: false,
    }
}

fn fingerprint(i: u64) -> Fingerprint {
    Fingerprint::of(&format!("token-{i}"))
}

/// Resident set size of this process in bytes, from `/proc/self/status`.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Child side: insert [`INSERTS`] records into a store bounded at `max_entries`, print one line.
fn memory_child(max_entries: u64, per_member: u64) {
    let before = rss_bytes().unwrap_or(0);
    let store = MemoryStore::new(MemoryStoreOptions::with_max_entries(max_entries));
    for i in 0..INSERTS {
        if ready(store.record(record_for(i, fingerprint(i), per_member))).is_err() {
            unreachable!("the memory store never fails");
        }
    }
    let count = store.count();
    let after = rss_bytes().unwrap_or(0);
    let growth = after.saturating_sub(before);
    // The worst case of a metrics scrape: every stripe swept end to end.
    let started = std::time::Instant::now();
    store.reclaim_expired();
    let sweep = started.elapsed();
    println!(
        "max_entries {max_entries:>9}, {per_member} account(s)/member: inserted {INSERTS}, count {count:>9} (≤ max_entries: {}), \
         RSS +{:.1} MiB, {} bytes per live entry; full sweep {:.1} ms",
        count <= max_entries,
        growth as f64 / (1024.0 * 1024.0),
        growth / count.max(1),
        sweep.as_secs_f64() * 1e3,
    );
    black_box(store);
}

/// Child side: deny [`INSERTS`] tokens, `per_member` per member (UUID member ids), print one line.
fn deny_child(per_member: u64) {
    let before = rss_bytes().unwrap_or(0);
    let list = DenyList::new(32);
    let until = SystemTime::now() + Duration::from_secs(24 * 60 * 60);
    for i in 0..INSERTS {
        let member = i / per_member;
        let member = format!("{member:08x}-0000-4000-8000-{member:012x}");
        list.deny(fingerprint(i), until, Some(&member));
    }
    let held = list.len();
    let growth = rss_bytes().unwrap_or(0).saturating_sub(before);
    println!(
        "deny-list, {per_member} revocation(s)/member: {held} held, RSS +{:.1} MiB, {} bytes per revocation",
        growth as f64 / (1024.0 * 1024.0),
        growth / held.max(1),
    );
    black_box(list);
}

/// Parent side: one child per configuration.
fn memory_report() {
    println!("store_memory: resident memory growth for {INSERTS} inserts");
    let Ok(exe) = std::env::current_exe() else {
        println!("  (cannot find own executable; skipped)");
        return;
    };
    for (max_entries, per_member) in [(1_000_000u64, 3u64), (100_000, 3), (1_000_000, 1)] {
        match Command::new(&exe)
            .env(CHILD_ENV, format!("{max_entries}:{per_member}"))
            .output()
        {
            Ok(out) => print!("  {}", String::from_utf8_lossy(&out.stdout)),
            Err(e) => println!("  max_entries {max_entries}: child failed: {e}"),
        }
    }
    for per_member in [1u64, 3] {
        match Command::new(&exe)
            .env(CHILD_ENV, format!("deny:{per_member}"))
            .output()
        {
            Ok(out) => print!("  {}", String::from_utf8_lossy(&out.stdout)),
            Err(e) => println!("  deny-list: child failed: {e}"),
        }
    }
}

fn throughput(c: &mut Criterion) {
    const LIVE: u64 = 100_000;
    let store = MemoryStore::new(MemoryStoreOptions::with_max_entries(LIVE));
    let known: Vec<Fingerprint> = (0..LIVE).map(fingerprint).collect();
    for (i, fp) in known.iter().enumerate() {
        if ready(store.record(record_for(i as u64, *fp, ACCOUNTS_PER_MEMBER))).is_err() {
            unreachable!("the memory store never fails");
        }
    }
    store.reclaim_expired();
    let unknown: Vec<Fingerprint> = (LIVE..2 * LIVE).map(fingerprint).collect();

    let mut group = c.benchmark_group("store_memory");
    group.throughput(Throughput::Elements(1));

    let mut i = 0usize;
    group.bench_function("lookup_hit", |b| {
        b.iter(|| {
            i = (i + 1) % known.len();
            black_box(ready(store.lookup(&known[i])))
        })
    });
    let mut i = 0usize;
    group.bench_function("lookup_miss", |b| {
        b.iter(|| {
            i = (i + 1) % unknown.len();
            black_box(ready(store.lookup(&unknown[i])))
        })
    });
    let mut i = 0usize;
    group.bench_function("is_revoked", |b| {
        b.iter(|| {
            i = (i + 1) % known.len();
            black_box(ready(store.is_revoked(&known[i])))
        })
    });
    // Steady state of a full store: every record evicts one close to its expiry. Includes
    // building the record (three small strings), as the sign-up tee does; not the SHA-256.
    let fresh: Vec<Fingerprint> = (2 * LIVE..3 * LIVE).map(fingerprint).collect();
    let mut i = 0usize;
    group.bench_function("record_full_store", |b| {
        b.iter(|| {
            i = (i + 1) % fresh.len();
            black_box(ready(store.record(record_for(
                i as u64,
                fresh[i],
                ACCOUNTS_PER_MEMBER,
            ))))
        })
    });
    let jwt = format!("eyJhbGciOiJIUzI1NiJ9.{}.sig", "x".repeat(600));
    group.bench_function("fingerprint_of_jwt", |b| {
        b.iter(|| black_box(Fingerprint::of(black_box(&jwt))))
    });
    group.finish();
}

criterion_group!(benches, throughput);

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        if let Some(per_member) = spec.strip_prefix("deny:").and_then(|n| n.parse().ok()) {
            deny_child(per_member);
            return;
        }
        let parsed = spec
            .split_once(':')
            .and_then(|(max, per)| Some((max.parse().ok()?, per.parse().ok()?)));
        match parsed {
            Some((max_entries, per_member)) => memory_child(max_entries, per_member),
            None => println!("bad {CHILD_ENV}={spec}"),
        }
        return;
    }
    // `cargo test --benches` runs this binary with `--test`: keep that quick.
    let quick = std::env::args().any(|a| a == "--test" || a == "--list");
    if !quick {
        memory_report();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
