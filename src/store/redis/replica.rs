//! The local replica of the deny-list: every revocation Redis holds, also held in this process,
//! so that a revocation check never waits on Redis and holds through an outage.
//!
//! # How it is kept current
//!
//! - **Loaded** from the `revocations` sorted set (see `entry.rs`), page by page with `ZSCAN`,
//!   after the subscriber is subscribed, so that whatever is revoked after the load began
//!   arrives as a message and whatever was revoked before is in the set (every replica writes
//!   the set *before* it publishes).
//! - **Kept current** by the messages of the `revocations` channel ([`Replica::apply`]), and by
//!   this replica's own revocations, applied as they are made (not when their echo arrives).
//! - **Re-synced** after every (re)subscription, because messages published while a replica was
//!   not listening are lost, and every `store.revocation_resync` besides, in case a message was
//!   lost without the subscription dropping. A failed load is retried sooner, with a backoff.
//!
//! Loads only ever add: an entry leaves the replica at its own end, never because Redis lost it
//! (a Redis restarted empty, an eviction under a wrong `maxmemory-policy`).
//!
//! # When the replica answers alone
//!
//! Only once a load that began while subscribed, and stayed subscribed throughout, has
//! completed ([`Replica::is_loaded`]): before that (a pod started while Redis is down) it may
//! lack revocations, and the store asks Redis instead, failing closed when it cannot.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use redis::AsyncCommands;
use tokio::sync::{watch, Notify};

use super::conn::Pool;
use super::entry::DenyEntry;
use super::keys::unix_ms;
use crate::store::{DenyList, StoreError};

/// Entries read per command of a load (a hint to `ZSCAN`): large enough that a million take
/// about a thousand round trips, small enough that one page never holds Redis (single-threaded)
/// for long.
const PAGE: usize = 1_000;
/// First wait before retrying a failed load; doubled per failure.
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest wait before retrying a failed load (or `store.revocation_resync`, if shorter).
const RETRY_MAX: Duration = Duration::from_secs(10);
/// `store_errors_total{op}` of a failed load.
const OP: &str = "resync";

/// The deny-list held in this process and what is known about how complete it is.
pub(super) struct Replica {
    /// The entries.
    deny: DenyList,
    /// Whether a complete load has finished (see the module docs); `watch` so that a caller
    /// arriving just before it can wait a moment instead of failing.
    loaded: watch::Sender<bool>,
    /// Asks the resync task for a load now.
    resync: Notify,
    /// Subscriptions established so far: a load during which this moved may have missed
    /// messages, so it does not count as complete.
    sessions: AtomicU64,
    /// Whether the subscription is live (shared with the subscriber).
    subscribed: Arc<AtomicBool>,
}

impl Replica {
    /// An empty replica folding a member past `max_per_member` entries.
    pub(super) fn new(max_per_member: usize, subscribed: Arc<AtomicBool>) -> Self {
        Replica {
            deny: DenyList::new(max_per_member),
            loaded: watch::Sender::new(false),
            resync: Notify::new(),
            sessions: AtomicU64::new(0),
            subscribed,
        }
    }

    /// The entries.
    pub(super) fn deny(&self) -> &DenyList {
        &self.deny
    }

    /// Whether the replica answers revocation checks alone.
    pub(super) fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// Waits at most `within` for the first complete load; whether it has happened.
    pub(super) async fn wait_loaded(&self, within: Duration) -> bool {
        let mut loaded = self.loaded.subscribe();
        let waited = tokio::time::timeout(within, loaded.wait_for(|loaded| *loaded)).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Called by the subscriber each time it is subscribed (again): messages may have been
    /// missed, so a load is due.
    pub(super) fn subscribed_again(&self) {
        self.sessions.fetch_add(1, Ordering::SeqCst);
        self.resync.notify_one();
    }

    /// Adds `entry` (from a load, a message or this replica's own revocation).
    ///
    /// An entry whose member's watermark already covers it (it was revoked at or before the
    /// watermark's cutoff, so its token was issued before) is held as a token entry without its
    /// member: applied with its member, it would fold the member again *now*, and every resync
    /// would move the watermark forward past tokens the member was issued since, refusing them.
    ///
    /// Returns whether the replica held nothing covering the entry before.
    pub(super) fn apply(&self, entry: &DenyEntry) -> bool {
        let member = entry.member.as_deref();
        let folded = member.is_some_and(|m| self.deny.member_denied(m, Some(entry.revoked_at)));
        let held = folded || self.deny.is_denied(&entry.fp);
        self.deny
            .deny(entry.fp, entry.end, member.filter(|_| !folded));
        !held
    }
}

/// The task that loads the replica: at each (re)subscription, every `every`, and sooner after a
/// failure.
pub(super) struct Resync {
    pub(super) replica: Arc<Replica>,
    pub(super) pool: Arc<Pool>,
    /// The `revocations` sorted set.
    pub(super) key: String,
    /// `store.revocation_resync`.
    pub(super) every: Duration,
}

impl Resync {
    /// Loads until the task is aborted.
    pub(super) async fn run(self) {
        let mut wait = self.every;
        let mut failures: u32 = 0;
        loop {
            tokio::select! {
                () = self.replica.resync.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
            let session = self.replica.sessions.load(Ordering::SeqCst);
            let subscribed = self.replica.subscribed.load(Ordering::SeqCst);
            let started = Instant::now();
            match self.load().await {
                Ok((read, missed)) => {
                    wait = self.every;
                    failures = 0;
                    if missed > 0 && self.replica.is_loaded() {
                        tracing::info!(
                            missed,
                            "re-sync found revocations this replica had not heard of (messages lost while it was cut off, or from an earlier version)"
                        );
                    }
                    let complete = subscribed
                        && self.replica.subscribed.load(Ordering::SeqCst)
                        && self.replica.sessions.load(Ordering::SeqCst) == session;
                    if complete && !self.replica.is_loaded() {
                        self.replica.loaded.send_replace(true);
                        tracing::info!(
                            entries = read,
                            took_ms = started.elapsed().as_millis() as u64,
                            "revocations loaded from Redis; revocation checks are answered locally from now on"
                        );
                    } else {
                        tracing::debug!(
                            entries = read,
                            complete,
                            "revocations re-synced from Redis"
                        );
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    wait = RETRY_MIN
                        .saturating_mul(2u32.saturating_pow(failures.min(16)))
                        .min(RETRY_MAX.min(self.every));
                    if failures == 1 {
                        tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "could not load revocations from Redis; retrying");
                    } else {
                        tracing::debug!(%error, failures, "could not load revocations from Redis");
                    }
                }
            }
        }
    }

    /// Trims ended entries, then reads the rest with `ZSCAN` and applies them. A load needs
    /// every entry, in no order, and a scan's cursor costs the same for every page whatever the
    /// scores. Paging by score did not: entries sharing an end (a burst of tokens issued in the
    /// same millisecond, then revoked) made each page skip all the equal ones before it — a
    /// million equal ends took 105 s to load, against seconds now. An entry added or trimmed
    /// meanwhile may be missed (its message brings it) or read twice (harmless). Returns the
    /// entries read, and how many of them the replica did not hold yet.
    async fn load(&self) -> Result<(usize, usize), StoreError> {
        let now = unix_ms(SystemTime::now());
        let key = self.key.clone();
        self.pool
            .run(OP, |mut c| async move {
                c.zrembyscore::<_, _, _, i64>(key, "-inf", now).await
            })
            .await?;
        let (mut cursor, mut read, mut missed) = (0u64, 0usize, 0usize);
        loop {
            let key = self.key.clone();
            let (next, page): (u64, Vec<(String, f64)>) = self
                .pool
                .run(OP, |mut c| async move {
                    redis::cmd("ZSCAN")
                        .arg(key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(PAGE)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            for (member, score) in &page {
                // Scores are whole milliseconds, exact in an f64.
                let end = *score as u64;
                if end <= now {
                    continue;
                }
                if let Some(entry) = DenyEntry::from_set_member(member, end) {
                    missed += usize::from(self.replica.apply(&entry));
                    read += 1;
                }
            }
            if next == 0 {
                return Ok((read, missed));
            }
            cursor = next;
        }
    }
}

/// Learns `fp`'s deny entry from its key `key` (the token's expiry in unix ms), for a
/// revocation announced in the old format (a bare fingerprint, from a replica of an earlier
/// version during a rolling upgrade), which names no end. Such revocations are not in the
/// sorted set, so this is the only way the replica hears of them.
pub(super) async fn learn_old_revocation(
    replica: Arc<Replica>,
    pool: Arc<Pool>,
    key: String,
    fp: crate::store::Fingerprint,
    grace: Duration,
) {
    let value: Result<Option<u64>, StoreError> = pool
        .run("is_revoked", |mut c| async move { c.get(key).await })
        .await;
    if let Ok(Some(until)) = value {
        let end = super::keys::from_unix_ms(until) + grace;
        replica.apply(&DenyEntry::new(fp, end, SystemTime::now(), None));
    }
}
