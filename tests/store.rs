//! The issued-token store as its callers see it: through [`Store`] and the [`TokenStore`] trait.

use std::time::{Duration, SystemTime};

use account_gate::store::{
    Fingerprint, MemoryStore, MemoryStoreOptions, Store, TokenRecord, TokenStore,
};
use proptest::prelude::*;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn store(max_entries: u64) -> Store {
    MemoryStore::new(MemoryStoreOptions::with_max_entries(max_entries)).into()
}

/// A store whose deny entries end exactly with their tokens.
fn store_without_grace() -> Store {
    MemoryStore::new(MemoryStoreOptions {
        revoked_grace: Duration::ZERO,
        ..MemoryStoreOptions::with_max_entries(100)
    })
    .into()
}

/// A record of `token` for `member` on `account`, expiring `ttl` from now.
fn record(token: &str, member: &str, account: &str, ttl: Duration) -> TokenRecord {
    TokenRecord {
        fingerprint: Fingerprint::of(token),
        member_id: member.to_owned(),
        account_id: account.to_owned(),
        account_name: Some(format!("{account} name")),
        expires_at: SystemTime::now() + ttl,
        learned: false,
    }
}

/// Polls `done` every 10 ms until it holds, failing after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn record_then_lookup() {
    let store = store(100);
    let r = record("tok-1", "m1", "a1", DAY);
    store.record(r.clone()).await.unwrap();
    assert_eq!(store.lookup(&r.fingerprint).await.unwrap(), Some(r));
    assert_eq!(store.lookup(&Fingerprint::of("other")).await.unwrap(), None);
    assert!(!store.is_revoked(&Fingerprint::of("tok-1")).await.unwrap());
    assert_eq!(store.count(), 1);
    assert_eq!(store.backend(), "memory");
}

#[tokio::test]
async fn recording_again_replaces_the_record() {
    let store = store(100);
    store.record(record("t", "m", "a", DAY)).await.unwrap();
    let newer = record("t", "m", "a", 2 * DAY);
    store.record(newer.clone()).await.unwrap();
    assert_eq!(
        store.lookup(&newer.fingerprint).await.unwrap(),
        Some(newer.clone())
    );
    assert_eq!(store.list_member("m").await.unwrap(), vec![newer]);
    assert_eq!(store.count(), 1);
}

#[tokio::test]
async fn an_already_expired_record_is_ignored() {
    let store = store(100);
    let mut r = record("old", "m", "a", DAY);
    r.expires_at = SystemTime::now() - Duration::from_secs(1);
    store.record(r.clone()).await.unwrap();
    assert_eq!(store.lookup(&r.fingerprint).await.unwrap(), None);
    assert!(store.list_member("m").await.unwrap().is_empty());
    assert_eq!(store.count(), 0);
}

#[tokio::test]
async fn a_member_with_three_accounts_lists_three_records_each_with_its_account() {
    let store = store(100);
    for account in ["acct-c", "acct-a", "acct-b"] {
        store
            .record(record(
                &format!("token-{account}"),
                "member-1",
                account,
                DAY,
            ))
            .await
            .unwrap();
    }
    store
        .record(record("someone-else", "member-2", "acct-a", DAY))
        .await
        .unwrap();

    let listed = store.list_member("member-1").await.unwrap();
    let accounts: Vec<_> = listed.iter().map(|r| r.account_id.as_str()).collect();
    assert_eq!(accounts, ["acct-a", "acct-b", "acct-c"]);
    for r in &listed {
        assert_eq!(r.member_id, "member-1");
        assert_eq!(
            r.fingerprint,
            Fingerprint::of(&format!("token-{}", r.account_id))
        );
        assert_eq!(
            r.account_name.as_deref(),
            Some(format!("{} name", r.account_id).as_str())
        );
    }
    assert!(store.list_member("nobody").await.unwrap().is_empty());
}

#[tokio::test]
async fn revoking_one_token_leaves_the_members_others() {
    let store = store(100);
    let a = record("ta", "m", "a", DAY);
    let b = record("tb", "m", "b", DAY);
    store.record(a.clone()).await.unwrap();
    store.record(b.clone()).await.unwrap();

    assert!(store
        .revoke(&a.fingerprint, a.expires_at, None)
        .await
        .unwrap());
    assert!(
        !store
            .revoke(&a.fingerprint, a.expires_at, None)
            .await
            .unwrap(),
        "second revoke is not new"
    );

    assert_eq!(store.lookup(&a.fingerprint).await.unwrap(), None);
    assert!(store.is_revoked(&a.fingerprint).await.unwrap());
    assert_eq!(store.lookup(&b.fingerprint).await.unwrap(), Some(b.clone()));
    assert!(!store.is_revoked(&b.fingerprint).await.unwrap());
    assert_eq!(store.list_member("m").await.unwrap(), vec![b]);
    assert_eq!(store.count(), 1);
}

#[tokio::test]
async fn revoking_a_member_revokes_and_returns_all_its_tokens() {
    let store = store(100);
    let mine: Vec<_> = ["a1", "a2", "a3"]
        .iter()
        .map(|acct| record(&format!("tok-{acct}"), "m", acct, DAY))
        .collect();
    for r in &mine {
        store.record(r.clone()).await.unwrap();
    }
    let other = record("tok-other", "m2", "a1", DAY);
    store.record(other.clone()).await.unwrap();

    let revoked = store.revoke_member("m").await.unwrap();
    assert_eq!(revoked, mine);
    for r in &mine {
        assert_eq!(store.lookup(&r.fingerprint).await.unwrap(), None);
        assert!(store.is_revoked(&r.fingerprint).await.unwrap());
    }
    assert!(store.list_member("m").await.unwrap().is_empty());
    assert_eq!(store.lookup(&other.fingerprint).await.unwrap(), Some(other));
    assert!(
        store.revoke_member("m").await.unwrap().is_empty(),
        "idempotent"
    );
    assert!(store.revoke_member("unknown").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_revoked_fingerprint_cannot_be_recorded_again() {
    let store = store(100);
    let r = record("tok", "m", "a", DAY);
    store.record(r.clone()).await.unwrap();
    store.revoke_member("m").await.unwrap();

    // A late sign-up tee, or `unknown = upstream` learning, tries to bring it back.
    store.record(r.clone()).await.unwrap();
    assert_eq!(store.lookup(&r.fingerprint).await.unwrap(), None);
    assert!(store.list_member("m").await.unwrap().is_empty());
    assert_eq!(store.count(), 0);
}

#[tokio::test]
async fn a_never_recorded_fingerprint_can_be_denied() {
    // A `signature`-mode token: valid, but the store never saw it issued.
    let store = store(100);
    let fp = Fingerprint::of("signed-elsewhere");
    let exp = SystemTime::now() + DAY;
    assert!(store.revoke(&fp, exp, None).await.unwrap());
    assert!(store.is_revoked(&fp).await.unwrap());
    assert!(!store.revoke(&fp, exp, None).await.unwrap());

    store
        .record(record("signed-elsewhere", "m", "a", DAY))
        .await
        .unwrap();
    assert_eq!(store.lookup(&fp).await.unwrap(), None);

    // A token that expired longer ago than the grace needs no deny entry.
    let expired = Fingerprint::of("expired");
    let past = SystemTime::now() - Duration::from_secs(3600);
    assert!(!store.revoke(&expired, past, None).await.unwrap());
    assert!(!store.is_revoked(&expired).await.unwrap());
}

#[tokio::test]
async fn entries_disappear_at_expiry_from_lookup_and_list_member() {
    let store = store_without_grace();
    let short = record("short", "m", "a", Duration::from_secs(1));
    let long = record("long", "m", "b", DAY);
    store.record(short.clone()).await.unwrap();
    store.record(long.clone()).await.unwrap();
    let denied = Fingerprint::of("denied-briefly");
    store.revoke(&denied, short.expires_at, None).await.unwrap();

    assert_eq!(store.list_member("m").await.unwrap().len(), 2);
    assert!(store.is_revoked(&denied).await.unwrap());

    eventually(
        Duration::from_secs(3),
        "short-lived token expires",
        || async { store.lookup(&short.fingerprint).await.unwrap().is_none() },
    )
    .await;
    assert!(
        SystemTime::now() >= short.expires_at,
        "gone before its expiry"
    );
    assert_eq!(store.list_member("m").await.unwrap(), vec![long]);
    assert!(
        !store.is_revoked(&denied).await.unwrap(),
        "deny entry ends with the token"
    );
    // Reads honour the expiry at once; the trait lets `count` lag a little behind (the memory
    // backend's is exact: it sweeps what has expired first).
    eventually(
        Duration::from_secs(3),
        "expired entry reclaimed",
        || async { store.count() == 1 },
    )
    .await;
}

#[tokio::test]
async fn a_deny_entry_outlives_its_token_by_the_grace() {
    // A validator with an `exp` leeway still accepts the token for a while after its expiry.
    let grace = Duration::from_millis(500);
    let store: Store = MemoryStore::new(MemoryStoreOptions {
        revoked_grace: grace,
        ..MemoryStoreOptions::default()
    })
    .into();
    let fp = Fingerprint::of("leeway");
    let expires_at = SystemTime::now() + Duration::from_millis(300);
    assert!(store.revoke(&fp, expires_at, None).await.unwrap());

    eventually(Duration::from_secs(3), "deny entry ends", || async {
        !store.is_revoked(&fp).await.unwrap()
    })
    .await;
    assert!(
        SystemTime::now() >= expires_at + grace,
        "deny entry ended before the grace"
    );
}

#[tokio::test]
async fn the_bound_holds_and_every_listed_record_can_be_looked_up() {
    const MAX: u64 = 200;
    let store = store(MAX);
    let members: Vec<String> = (0..37).map(|m| format!("member-{m}")).collect();
    for i in 0..5 * MAX {
        let member = &members[(i % 37) as usize];
        store
            .record(record(
                &format!("tok-{i}"),
                member,
                &format!("acct-{i}"),
                DAY,
            ))
            .await
            .unwrap();
    }
    let count = store.count();
    assert!(count <= MAX, "{count} records, bound {MAX}");
    assert!(count > 0);

    let mut listed = 0;
    for member in &members {
        for r in store.list_member(member).await.unwrap() {
            assert_eq!(
                store.lookup(&r.fingerprint).await.unwrap().as_ref(),
                Some(&r)
            );
            listed += 1;
        }
    }
    // After `count()` ran the pending maintenance, index and records agree exactly.
    assert_eq!(listed, count);
}

#[test]
fn fingerprint_debug_and_display_never_show_the_full_hash() {
    let fp = Fingerprint::of("a very secret token");
    let hex = fp.to_hex();
    let r = record("a very secret token", "m", "a", DAY);
    for shown in [
        format!("{fp:?}"),
        format!("{fp}"),
        format!("{r:?}"),
        format!("{r:#?}"),
    ] {
        assert!(shown.contains(&fp.prefix()), "{shown}");
        assert!(
            !shown.contains(&hex[..16]),
            "{shown} shows too much of the hash"
        );
        assert!(!shown.contains("a very secret token"));
    }
    assert_eq!(fp.prefix().len(), 12);
}

proptest! {
    #[test]
    fn fingerprint_hex_round_trips(bytes in any::<[u8; 32]>()) {
        let fp = Fingerprint::from_bytes(bytes);
        let hex = fp.to_hex();
        prop_assert_eq!(hex.len(), 64);
        prop_assert_eq!(Fingerprint::from_hex(&hex), Some(fp));
        prop_assert_eq!(Fingerprint::from_hex(&hex.to_uppercase()), Some(fp));
        prop_assert!(hex.starts_with(&fp.prefix()));
    }

    #[test]
    fn fingerprint_from_hex_accepts_only_64_hex_digits(s in "\\PC{0,70}") {
        match Fingerprint::from_hex(&s) {
            Some(fp) => prop_assert_eq!(fp.to_hex(), s.to_lowercase()),
            None => prop_assert!(s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_record_and_lookup_from_many_tasks() {
    const TASKS: usize = 32;
    const PER_TASK: usize = 200;
    let store = std::sync::Arc::new(store(1_000_000));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = std::sync::Arc::clone(&store);
            tokio::spawn(async move {
                let member = format!("member-{t}");
                for i in 0..PER_TASK {
                    let r = record(&format!("tok-{t}-{i}"), &member, &format!("acct-{i}"), DAY);
                    store.record(r.clone()).await.unwrap();
                    assert_eq!(store.lookup(&r.fingerprint).await.unwrap(), Some(r));
                    // Look up a neighbour's token too: present or not yet, never wrong.
                    let other = Fingerprint::of(&format!("tok-{}-{i}", (t + 1) % TASKS));
                    if let Some(found) = store.lookup(&other).await.unwrap() {
                        assert_eq!(found.member_id, format!("member-{}", (t + 1) % TASKS));
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(store.count(), (TASKS * PER_TASK) as u64);
    for t in 0..TASKS {
        assert_eq!(
            store
                .list_member(&format!("member-{t}"))
                .await
                .unwrap()
                .len(),
            PER_TASK
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_racing_a_revoke_never_resurrects_the_token() {
    let store = std::sync::Arc::new(store(100_000));
    for i in 0..500 {
        let r = record(&format!("race-{i}"), &format!("m-{i}"), "a", DAY);
        let fp = r.fingerprint;
        let exp = r.expires_at;
        let (s1, s2) = (std::sync::Arc::clone(&store), std::sync::Arc::clone(&store));
        let recording = tokio::spawn(async move { s1.record(r).await });
        let revoking = tokio::spawn(async move { s2.revoke(&fp, exp, None).await });
        recording.await.unwrap().unwrap();
        assert!(revoking.await.unwrap().unwrap());
        assert_eq!(store.lookup(&fp).await.unwrap(), None, "iteration {i}");
        assert!(store
            .list_member(&format!("m-{i}"))
            .await
            .unwrap()
            .is_empty());
    }
    assert_eq!(store.count(), 0);
}
