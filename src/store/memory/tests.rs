//! The memory backend's index consistency, bounds and compact form; the behaviour seen by callers
//! is tested in `tests/store.rs`.

use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

/// Drives a future of the memory store, which never waits, to completion.
fn now<F: std::future::Future>(f: F) -> F::Output {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(f).poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => unreachable!("the memory store never waits"),
    }
}

fn rec(token: &str, member: &str, ttl: Duration) -> TokenRecord {
    TokenRecord {
        fingerprint: Fingerprint::of(token),
        member_id: member.to_owned(),
        account_id: format!("acct-{token}"),
        account_name: None,
        expires_at: SystemTime::now() + ttl,
        learned: false,
    }
}

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn re_recording_a_token_keeps_it_indexed() {
    let store = MemoryStore::new(MemoryStoreOptions::with_max_entries(100));
    for _ in 0..3 {
        now(store.record(rec("t", "m", HOUR))).unwrap();
    }
    assert_eq!(store.indexed(), (1, 1));
    assert_eq!(now(store.list_member("m")).unwrap().len(), 1);
}

#[test]
fn re_recording_under_another_member_moves_it() {
    let store = MemoryStore::new(MemoryStoreOptions::with_max_entries(100));
    now(store.record(rec("t", "a", HOUR))).unwrap();
    now(store.record(rec("t", "b", HOUR))).unwrap();
    assert_eq!(store.indexed(), (1, 1));
    assert!(now(store.list_member("a")).unwrap().is_empty());
    assert_eq!(now(store.list_member("b")).unwrap().len(), 1);
    // Revoking the old member's tokens leaves the token that is now the new member's alone.
    assert!(now(store.revoke_member("a")).unwrap().is_empty());
    assert!(!now(store.is_revoked(&Fingerprint::of("t"))).unwrap());
    assert_eq!(now(store.list_member("b")).unwrap().len(), 1);
}

#[test]
fn index_follows_size_eviction_revocation_and_expiry() {
    let store = MemoryStore::new(MemoryStoreOptions::with_max_entries(50));
    for i in 0..500 {
        now(store.record(rec(&format!("t{i}"), &format!("m{}", i % 7), HOUR))).unwrap();
    }
    let live = store.count();
    assert_eq!(live, 50, "a full store stays full");
    assert_eq!(store.indexed().0 as u64, live);

    let removed = now(store.revoke_member("m3")).unwrap();
    assert!(!removed.is_empty());
    assert_eq!(store.indexed().0 as u64, live - removed.len() as u64);
    assert_eq!(store.indexed().0 as u64, store.count());

    let short = rec("short", "s", Duration::from_millis(50));
    let deadline = short.expires_at;
    now(store.record(short)).unwrap();
    // Wait exactly until the expiry, not a fixed guess.
    if let Ok(left) = deadline.duration_since(SystemTime::now()) {
        std::thread::sleep(left + Duration::from_millis(1));
    }
    assert!(now(store.list_member("s")).unwrap().is_empty());
    store.reclaim_expired();
    assert_eq!(store.indexed().0 as u64, store.count());
    assert!(store
        .inner
        .members
        .fingerprints(IdRef::Text("s"))
        .is_empty());
}

#[test]
fn count_is_exact_right_after_an_expiry_without_any_write() {
    let store = MemoryStore::new(MemoryStoreOptions::with_max_entries(10_000));
    let deadline = SystemTime::now() + Duration::from_millis(500);
    for i in 0..3000 {
        let mut r = rec(&format!("t{i}"), &format!("m{i}"), HOUR);
        if i % 3 == 0 {
            r.expires_at = deadline;
        }
        now(store.record(r)).unwrap();
    }
    if SystemTime::now() < deadline {
        assert_eq!(store.count(), 3000);
    }
    if let Ok(left) = deadline.duration_since(SystemTime::now()) {
        std::thread::sleep(left);
    }
    assert_eq!(store.count(), 2000);
    assert_eq!(store.indexed(), (2000, 2000));
}

#[test]
fn revoke_extends_the_deny_entry_to_the_records_expiry() {
    let store = MemoryStore::new(MemoryStoreOptions::default());
    let r = rec("t", "m", HOUR);
    now(store.record(r.clone())).unwrap();
    // The caller only knew an expiry in the past; the record knows better.
    assert!(now(store.revoke(&r.fingerprint, SystemTime::UNIX_EPOCH, None)).unwrap());
    assert!(now(store.is_revoked(&r.fingerprint)).unwrap());
    assert!(now(store.lookup(&r.fingerprint)).unwrap().is_none());
    assert_eq!(store.indexed(), (0, 0));
}

#[test]
fn records_read_back_exactly_whatever_the_shape_of_their_ids() {
    let store = MemoryStore::new(MemoryStoreOptions::with_max_entries(100));
    let records = [
        (
            "0f8e7d6c-5b4a-4938-8271-605f4e3d2c1b",
            "1f8e7d6c-5b4a-4938-8271-605f4e3d2c1b",
        ),
        ("0F8E7D6C-5B4A-4938-8271-605F4E3D2C1B", "acct"),
        ("member 🦀", ""),
    ];
    for (i, (member, account)) in records.iter().enumerate() {
        let r = TokenRecord {
            fingerprint: Fingerprint::of(&i.to_string()),
            member_id: (*member).to_owned(),
            account_id: (*account).to_owned(),
            account_name: (i != 1).then(|| format!("Account {i}")),
            expires_at: SystemTime::now() + HOUR + Duration::from_nanos(i as u64 + 1),
            learned: i == 1,
        };
        now(store.record(r.clone())).unwrap();
        assert_eq!(now(store.lookup(&r.fingerprint)).unwrap(), Some(r.clone()));
        assert_eq!(now(store.list_member(member)).unwrap(), vec![r]);
    }
    // The canonical and the upper-case spelling of one UUID are two different members.
    assert_eq!(store.indexed(), (3, 3));
}

#[test]
fn a_full_store_admits_fresh_tokens_and_evicts_unused_ones_closest_to_expiry() {
    let store = MemoryStore::new(MemoryStoreOptions::with_max_entries(1000));
    for i in 0..1000 {
        now(store.record(rec(&format!("old-{i}"), "m", HOUR))).unwrap();
    }
    for i in 0..500 {
        let fresh = rec(&format!("new-{i}"), "n", 24 * HOUR);
        now(store.record(fresh.clone())).unwrap();
        assert!(now(store.lookup(&fresh.fingerprint)).unwrap().is_some());
    }
    assert_eq!(store.count(), 1000);
    let survivors = now(store.list_member("n")).unwrap().len();
    // Nothing is looked up, so the least recently used of 8 samples is an old token whenever the
    // sample holds one (recorded earlier, and sooner to expire), which it nearly always does
    // while half the store is old.
    assert!(survivors > 480, "{survivors} of 500 fresh tokens kept");
}

#[test]
fn a_member_in_use_survives_a_flood_of_sign_ups_into_a_full_store() {
    // The active member's tokens are the oldest and expire first: an eviction by expiry alone
    // would take them before any of the flood's.
    let store = MemoryStore::new(MemoryStoreOptions::with_max_entries(1000));
    let active: Vec<TokenRecord> = (0..10)
        .map(|i| rec(&format!("active-{i}"), "active", HOUR))
        .collect();
    for r in &active {
        now(store.record(r.clone())).unwrap();
    }
    for i in 0..10_000 {
        now(store.record(rec(&format!("flood-{i}"), &format!("m{i}"), 24 * HOUR))).unwrap();
        // The active member uses one of its tokens every few sign-ups.
        if i % 5 == 0 {
            let r = &active[(i / 5) % active.len()];
            assert!(
                now(store.lookup(&r.fingerprint)).unwrap().is_some(),
                "active token {} evicted after {i} sign-ups",
                (i / 5) % active.len()
            );
        }
    }
    assert_eq!(store.count(), 1000);
    assert_eq!(now(store.list_member("active")).unwrap().len(), 10);
}

#[test]
fn no_flood_of_records_or_revocations_pushes_a_revocation_out() {
    let store = MemoryStore::new(MemoryStoreOptions::with_max_entries(100));
    let first = rec("first", "victim", HOUR);
    now(store.record(first.clone())).unwrap();
    assert_eq!(now(store.revoke_member("victim")).unwrap().len(), 1);
    let soon = SystemTime::now() + HOUR;
    for i in 0..1000 {
        let r = rec(&format!("t{i}"), &format!("m{i}"), HOUR);
        now(store.record(r.clone())).unwrap();
        assert!(now(store.revoke(&r.fingerprint, soon, None)).unwrap());
    }
    assert!(now(store.is_revoked(&first.fingerprint)).unwrap());
    assert_eq!(store.revocations_held(), 1001);
}

#[test]
fn a_zero_bound_stores_nothing_and_does_not_panic() {
    let store = MemoryStore::new(MemoryStoreOptions::with_max_entries(0));
    let r = rec("t", "m", HOUR);
    now(store.record(r.clone())).unwrap();
    assert_eq!(now(store.lookup(&r.fingerprint)).unwrap(), None);
    // The deny-list has no such bound: a revocation is held all the same.
    assert!(now(store.revoke(&r.fingerprint, r.expires_at, None)).unwrap());
    assert!(now(store.is_revoked(&r.fingerprint)).unwrap());
    assert_eq!(store.count(), 0);
}

/// Many threads record, re-record under other members, revoke and look up over a store small
/// enough to evict all the time; at rest, index and records agree exactly and nothing revoked is
/// alive.
#[test]
fn index_and_records_agree_after_concurrent_churn() {
    const THREADS: usize = 4;
    const OPS: usize = 5_000;
    let store = MemoryStore::new(MemoryStoreOptions::with_max_entries(4096));
    assert!(store.inner.records.stripes() > 1);
    let resurrected = AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (store, resurrected) = (&store, &resurrected);
            s.spawn(move || {
                for i in 0..OPS {
                    // Tokens shared between threads, so that operations on one token race.
                    let token = format!("tok-{}", (i * 7 + t) % 6000);
                    let member = format!("m-{}", (i + t) % 13);
                    let fp = Fingerprint::of(&token);
                    match i % 10 {
                        0 => {
                            now(store.revoke(&fp, SystemTime::now() + HOUR, None)).unwrap();
                            if now(store.lookup(&fp)).unwrap().is_some() {
                                resurrected.store(true, Ordering::Relaxed);
                            }
                        }
                        1 => {
                            now(store.revoke_member(&member)).unwrap();
                        }
                        2..=4 => {
                            now(store.lookup(&fp)).unwrap();
                        }
                        _ => now(store.record(rec(&token, &member, HOUR))).unwrap(),
                    }
                }
            });
        }
    });
    assert!(
        !resurrected.load(Ordering::Relaxed),
        "a revoked token came back"
    );
    let count = store.count();
    assert!(count <= 4096);
    assert_eq!(store.indexed().0 as u64, count);
    let mut listed = 0;
    for m in 0..13 {
        for r in now(store.list_member(&format!("m-{m}"))).unwrap() {
            assert_eq!(now(store.lookup(&r.fingerprint)).unwrap(), Some(r.clone()));
            assert!(!now(store.is_revoked(&r.fingerprint)).unwrap());
            listed += 1;
        }
    }
    assert_eq!(listed, count);
}
