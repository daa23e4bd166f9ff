//! The memory backend's index consistency; the behaviour seen by callers is tested in `tests/store.rs`.

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
    }
}

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn re_recording_a_token_keeps_it_indexed() {
    let store = MemoryStore::new(MemoryStoreOptions::with_max_entries(100));
    for _ in 0..3 {
        now(store.record(rec("t", "m", HOUR))).unwrap();
        store.run_pending_tasks(); // delivers the `Replaced` notices
    }
    assert_eq!(store.indexed(), (1, 1));
    assert_eq!(now(store.list_member("m")).unwrap().len(), 1);
}

#[test]
fn re_recording_under_another_member_moves_it() {
    let store = MemoryStore::new(MemoryStoreOptions::with_max_entries(100));
    now(store.record(rec("t", "a", HOUR))).unwrap();
    now(store.record(rec("t", "b", HOUR))).unwrap();
    store.run_pending_tasks();
    assert_eq!(store.indexed(), (1, 1));
    assert!(now(store.list_member("a")).unwrap().is_empty());
    assert_eq!(now(store.list_member("b")).unwrap().len(), 1);
}

#[test]
fn index_follows_size_eviction_revocation_and_expiry() {
    let store = MemoryStore::new(MemoryStoreOptions::with_max_entries(50));
    for i in 0..500 {
        now(store.record(rec(&format!("t{i}"), &format!("m{}", i % 7), HOUR))).unwrap();
    }
    let live = store.count();
    assert!(live <= 50, "{live} records");
    assert_eq!(store.indexed().0 as u64, live);

    let removed = now(store.revoke_member("m3")).unwrap();
    store.run_pending_tasks();
    assert_eq!(store.indexed().0 as u64, live - removed.len() as u64);
    assert_eq!(store.indexed().0 as u64, store.count());

    let short = rec("short", "s", Duration::from_millis(50));
    let deadline = short.expires_at;
    now(store.record(short)).unwrap();
    // Wait exactly until the expiry, not a fixed guess.
    if let Ok(left) = deadline.duration_since(SystemTime::now()) {
        std::thread::sleep(left + Duration::from_millis(1));
    }
    store.run_pending_tasks();
    assert!(now(store.list_member("s")).unwrap().is_empty());
    assert_eq!(store.indexed().0 as u64, store.count());
}

#[test]
fn revoke_extends_the_deny_entry_to_the_records_expiry() {
    let store = MemoryStore::new(MemoryStoreOptions::default());
    let r = rec("t", "m", HOUR);
    now(store.record(r.clone())).unwrap();
    // The caller only knew an expiry in the past; the record knows better.
    assert!(now(store.revoke(&r.fingerprint, SystemTime::UNIX_EPOCH)).unwrap());
    assert!(now(store.is_revoked(&r.fingerprint)).unwrap());
    assert!(now(store.lookup(&r.fingerprint)).unwrap().is_none());
}
