//! The in-process backend on moka: right for one replica (DESIGN.md "Scale-out").
//!
//! # Structure
//!
//! - `records`: fingerprint → record, a moka cache bounded by `max_entries` (LRU, so a fresh
//!   sign-up is always admitted and the least recently used token makes room), each entry expiring
//!   at its record's `expires_at` (moka [`Expiry`]).
//! - `index`: member id → fingerprints, kept in step by the records cache's eviction listener,
//!   which moka calls for every removal — expiry, size eviction, replacement, revocation — and
//!   which drops a fingerprint from its member's set (see `member_index.rs` for the generation
//!   check that makes replacement safe). A member's set therefore never holds more than its
//!   records in the cache; `list_member` still re-reads each record, so it never shows a dead one.
//! - `revoked`: the deny-list, fingerprint → expiry, bounded by `max_revoked`, each entry expiring
//!   `revoked_grace` after its token (so a validator's `exp` leeway cannot reopen the window). A deny entry evicted for room before its token expired is logged as a warning:
//!   that token could be accepted again, so `max_revoked` must be sized for the revocation rate.
//!
//! # Races
//!
//! `record` and `revoke` of one fingerprint both run inside moka's `and_compute_with`, which
//! holds a per-key lock: `record` checks the deny-list and updates the index under it, `revoke`
//! has already written the deny entry before it takes it and removes the record under it. So
//! either the record lands first and is removed, or it sees the deny entry. Lock order is always
//! moka key lock → index shard mutex (the listener runs under the key lock too); no moka call is
//! made while an index mutex is held.
//!
//! # Lag
//!
//! moka's sync cache has no background thread: expired and over-bound entries are reclaimed (and
//! the listener run) during later writes, or by [`MemoryStore::run_pending_tasks`]. Reads never
//! see them anyway (expiry is checked on every read). [`MemoryStore::count`] runs the pending
//! work first, so the gauge it feeds is exact but for entries whose expiry passed within moka's
//! last timer tick (tens of milliseconds; they are reclaimed at the next one).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use moka::notification::RemovalCause;
use moka::ops::compute::{CompResult, Op};
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use moka::Expiry;

use super::member_index::MemberIndex;
use super::{Fingerprint, StoreError, TokenRecord, TokenStore};

/// The backend's name in metrics labels and logs.
pub(crate) const BACKEND: &str = "memory";

/// Longest time an entry is kept, whatever expiry the upstream announced: far beyond any account
/// token's life (24 h by default), and well inside moka's timer range.
const MAX_KEEP: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Default [`MemoryStoreOptions::revoked_grace`]: above any sensible clock-skew leeway.
const DEFAULT_REVOKED_GRACE: Duration = Duration::from_secs(5 * 60);

/// Bounds of a [`MemoryStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryStoreOptions {
    /// Most records kept (`store.max_entries`); the least recently used go first. Default
    /// 1,000,000. Each live record costs about 0.85–0.95 KiB resident, index included (`cargo
    /// bench --bench store_memory`), so the default allows ~900 MiB; size it to the pod.
    pub max_entries: u64,
    /// Most deny-list entries kept (revoked, not yet expired tokens). Default = `max_entries`.
    pub max_revoked: u64,
    /// How long a deny entry outlives its token's expiry. A validator that accepts a token for a
    /// `leeway` past its `exp` must not see the deny entry go first, so this must be at least the
    /// configured `tokens.leeway`. Default 5 minutes.
    pub revoked_grace: Duration,
}

impl MemoryStoreOptions {
    /// Both bounds at `max_entries`.
    pub fn with_max_entries(max_entries: u64) -> Self {
        Self {
            max_entries,
            max_revoked: max_entries,
            revoked_grace: DEFAULT_REVOKED_GRACE,
        }
    }
}

impl Default for MemoryStoreOptions {
    fn default() -> Self {
        Self::with_max_entries(1_000_000)
    }
}

/// A record as cached: shared (cheap to clone out of moka) and tagged with the write generation
/// that the member index compares against.
#[derive(Clone)]
struct Live {
    record: Arc<TokenRecord>,
    generation: u64,
}

/// A deny-list entry: revoked until the token's expiry.
#[derive(Clone, Copy)]
struct RevokedUntil(SystemTime);

/// Expires an entry at the wall-clock instant it carries.
struct AtExpiry;

/// Time from now until `at`, zero if it has passed, capped at [`MAX_KEEP`].
fn remaining(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
        .min(MAX_KEEP)
}

impl Expiry<Fingerprint, Live> for AtExpiry {
    fn expire_after_create(&self, _: &Fingerprint, live: &Live, _: Instant) -> Option<Duration> {
        Some(remaining(live.record.expires_at))
    }

    fn expire_after_update(
        &self,
        _: &Fingerprint,
        live: &Live,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(remaining(live.record.expires_at))
    }
}

impl Expiry<Fingerprint, RevokedUntil> for AtExpiry {
    fn expire_after_create(
        &self,
        _: &Fingerprint,
        r: &RevokedUntil,
        _: Instant,
    ) -> Option<Duration> {
        Some(remaining(r.0))
    }

    fn expire_after_update(
        &self,
        _: &Fingerprint,
        r: &RevokedUntil,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(remaining(r.0))
    }
}

/// The in-process token store. Cloning is cheap and yields a handle to the same store.
#[derive(Clone)]
pub struct MemoryStore {
    records: Cache<Fingerprint, Live>,
    revoked: Cache<Fingerprint, RevokedUntil>,
    index: Arc<MemberIndex>,
    /// Source of write generations for the index (see `member_index.rs`).
    generations: Arc<AtomicU64>,
    /// [`MemoryStoreOptions::revoked_grace`].
    revoked_grace: Duration,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("records", &self.records.entry_count())
            .field("revoked", &self.revoked.entry_count())
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store with the given bounds.
    pub fn new(opts: MemoryStoreOptions) -> Self {
        let index = Arc::new(MemberIndex::new());
        let listener_index = Arc::clone(&index);
        let records = Cache::builder()
            .name("account-gate-records")
            .max_capacity(opts.max_entries)
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(AtExpiry)
            .eviction_listener(move |fp: Arc<Fingerprint>, live: Live, _: RemovalCause| {
                listener_index.remove_if(&live.record.member_id, &fp, live.generation);
            })
            .build();
        let revoked = Cache::builder()
            .name("account-gate-revoked")
            .max_capacity(opts.max_revoked)
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(AtExpiry)
            .eviction_listener(|fp: Arc<Fingerprint>, _: RevokedUntil, cause| {
                if cause == RemovalCause::Size {
                    tracing::warn!(
                        fingerprint = %fp,
                        "revocation deny-list full: a revoked token left it before its expiry; raise store.max_revoked"
                    );
                }
            })
            .build();
        Self {
            records,
            revoked,
            index,
            generations: Arc::new(AtomicU64::new(0)),
            revoked_grace: opts.revoked_grace,
        }
    }

    /// Runs moka's deferred maintenance now: reclaims expired and over-bound entries (running the
    /// index listener for them). Otherwise it happens piggy-backed on later writes.
    pub fn run_pending_tasks(&self) {
        self.records.run_pending_tasks();
        self.revoked.run_pending_tasks();
    }

    /// Current number of deny-list entries (after pending maintenance).
    pub fn revoked_count(&self) -> u64 {
        self.revoked.run_pending_tasks();
        self.revoked.entry_count()
    }

    /// The live, unrevoked record of `fp`, whose member is `member` if one is given.
    fn live(&self, fp: &Fingerprint, member: Option<&str>) -> Option<Arc<TokenRecord>> {
        let live = self.records.get(fp)?;
        let record = live.record;
        let alive = record.expires_at > SystemTime::now()
            && member.is_none_or(|m| record.member_id == m)
            // Closes the instant between a revoke's deny write and its removal of the record.
            && !self.revoked.contains_key(fp);
        alive.then_some(record)
    }

    /// Puts `fp` on the deny-list until `expires_at` + grace, or extends its entry; `true` if it
    /// was not on it.
    fn deny(&self, fp: &Fingerprint, expires_at: SystemTime) -> bool {
        let until = expires_at
            .checked_add(self.revoked_grace)
            .unwrap_or(expires_at);
        if until <= SystemTime::now() {
            return false;
        }
        let result = self
            .revoked
            .entry(*fp)
            .and_compute_with(|current| match current {
                Some(entry) if entry.value().0 >= until => Op::Nop,
                _ => Op::Put(RevokedUntil(until)),
            });
        matches!(result, CompResult::Inserted(_))
    }

    /// Revokes `fp` until `until` (or the record's later expiry); removes its record if it belongs
    /// to `member` (any member if `None`). Returns (newly denied, removed record).
    fn revoke_one(
        &self,
        fp: &Fingerprint,
        until: SystemTime,
        member: Option<&str>,
    ) -> (bool, Option<Arc<TokenRecord>>) {
        // Deny first: from here on a `record` of `fp` is refused.
        let mut newly = self.deny(fp, until);
        let result = self.records.entry(*fp).and_compute_with(|current| {
            let Some(entry) = current else {
                return Op::Nop;
            };
            let record = &entry.value().record;
            if member.is_some_and(|m| record.member_id != m) {
                return Op::Nop;
            }
            // Under the key lock, so no `record` can slip between this deny and the removal.
            newly |= self.deny(fp, record.expires_at);
            Op::Remove
        });
        let removed = match result {
            CompResult::Removed(entry) => Some(entry.into_value().record),
            _ => None,
        };
        (newly, removed)
    }

    #[cfg(test)]
    fn indexed(&self) -> (usize, usize) {
        self.index.len()
    }
}

impl TokenStore for MemoryStore {
    async fn record(&self, record: TokenRecord) -> Result<(), StoreError> {
        if record.expires_at <= SystemTime::now() {
            tracing::debug!(fingerprint = %record.fingerprint, "not recording an expired token");
            return Ok(());
        }
        let fp = record.fingerprint;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let live = Live {
            record: Arc::new(record),
            generation,
        };
        // Under the key lock: serialised with `revoke_one`'s removal and with other writes of
        // `fp`, so the deny check cannot go stale and the index ends with this write's generation.
        self.records.entry(fp).and_compute_with(|_| {
            if self.revoked.contains_key(&fp) {
                tracing::debug!(fingerprint = %fp, "not recording a revoked token");
                return Op::Nop;
            }
            self.index.insert(&live.record.member_id, fp, generation);
            Op::Put(live)
        });
        Ok(())
    }

    async fn lookup(&self, fp: &Fingerprint) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self.live(fp, None).map(|record| (*record).clone()))
    }

    async fn is_revoked(&self, fp: &Fingerprint) -> Result<bool, StoreError> {
        Ok(self.revoked.contains_key(fp))
    }

    async fn list_member(&self, member_id: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let mut records: Vec<TokenRecord> = self
            .index
            .fingerprints(member_id)
            .iter()
            .filter_map(|fp| self.live(fp, Some(member_id)))
            .map(|record| (*record).clone())
            .collect();
        records.sort_by(|a, b| {
            (&a.account_id, a.expires_at, a.fingerprint.as_bytes()).cmp(&(
                &b.account_id,
                b.expires_at,
                b.fingerprint.as_bytes(),
            ))
        });
        Ok(records)
    }

    async fn revoke(&self, fp: &Fingerprint, expires_at: SystemTime) -> Result<bool, StoreError> {
        Ok(self.revoke_one(fp, expires_at, None).0)
    }

    async fn revoke_member(&self, member_id: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let now = SystemTime::now();
        let mut removed: Vec<TokenRecord> = self
            .index
            .fingerprints(member_id)
            .iter()
            // `now` as the floor: the deny entry takes the record's own expiry under the key lock.
            .filter_map(|fp| self.revoke_one(fp, now, Some(member_id)).1)
            .filter(|record| record.expires_at > now)
            .map(Arc::unwrap_or_clone)
            .collect();
        removed.sort_by(|a, b| a.account_id.cmp(&b.account_id));
        Ok(removed)
    }

    fn count(&self) -> u64 {
        // Without this, entry_count lags writes and still counts expired entries. The maintenance
        // is bounded work and runs at scrape frequency, not per request.
        self.records.run_pending_tasks();
        self.records.entry_count()
    }
}

#[cfg(test)]
mod tests;
