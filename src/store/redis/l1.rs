//! The L1: what this replica learnt from Redis lately, so a hot token costs no round trip.
//!
//! Each entry is what Redis said about one fingerprint — its record, that it is revoked, or that
//! it is unknown — and lives at most `l1_ttl` (a revocation: until its deny entry ends, since a
//! deny entry never goes away early). Staleness is what matters here, and it is handled three
//! ways:
//!
//! - Every revocation is published; each replica's subscriber drops the fingerprint on receipt
//!   (milliseconds), and clears the whole L1 whenever its subscription (re)connects, since it may
//!   have missed messages.
//! - A fill races with an invalidation (read Redis, an invalidation arrives, then the stale answer
//!   is cached): every invalidation bumps a generation, and [`L1::fill`] undoes its own insert if
//!   the generation moved while Redis was being read.
//! - What is left — a replica cut off from pub/sub but not yet aware of it — is bounded by the
//!   short `l1_ttl`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use moka::sync::Cache;
use moka::Expiry;

use crate::store::{Fingerprint, TokenRecord};

/// What Redis said about a fingerprint.
#[derive(Debug, Clone)]
pub(super) enum Known {
    /// A live record.
    Live(Arc<TokenRecord>),
    /// On the deny-list until this instant.
    Revoked(SystemTime),
    /// Neither recorded nor revoked.
    Absent,
}

/// The bounded cache; cloning yields a handle to the same cache.
#[derive(Clone)]
pub(super) struct L1 {
    /// `None` when `l1_ttl` is zero: every call goes to Redis.
    cache: Option<Cache<Fingerprint, Known>>,
    /// Bumped by every invalidation; see [`L1::fill`].
    generation: Arc<AtomicU64>,
}

/// Entry lifetimes: at most the TTL, never past the record's expiry; a deny entry its own life.
struct Lifetime(Duration);

impl Expiry<Fingerprint, Known> for Lifetime {
    fn expire_after_create(&self, _: &Fingerprint, known: &Known, _: Instant) -> Option<Duration> {
        let left = |t: SystemTime| t.duration_since(SystemTime::now()).unwrap_or_default();
        Some(match known {
            Known::Live(record) => left(record.expires_at).min(self.0),
            Known::Revoked(until) => left(*until),
            Known::Absent => self.0,
        })
    }
}

impl L1 {
    /// An L1 of at most `max_entries`, each reused for at most `ttl` (zero: no L1).
    pub(super) fn new(max_entries: u64, ttl: Duration) -> Self {
        let cache = (!ttl.is_zero()).then(|| {
            Cache::builder()
                .name("account-gate-l1")
                .max_capacity(max_entries)
                .expire_after(Lifetime(ttl))
                .build()
        });
        L1 {
            cache,
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The cached answer for `fp`, if still good (a record past its expiry is not).
    pub(super) fn get(&self, fp: &Fingerprint) -> Option<Known> {
        let known = self.cache.as_ref()?.get(fp)?;
        match &known {
            Known::Live(record) if record.expires_at <= SystemTime::now() => Some(Known::Absent),
            Known::Revoked(until) if *until <= SystemTime::now() => None,
            _ => Some(known),
        }
    }

    /// The generation to pass to [`fill`](Self::fill): read it before asking Redis.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Caches what Redis answered, unless an invalidation happened since `generation` was read
    /// (the answer may predate it). The check follows the insert, so an invalidation landing
    /// between the two is caught as well.
    pub(super) fn fill(&self, fp: Fingerprint, known: Known, generation: u64) {
        let Some(cache) = &self.cache else {
            return;
        };
        cache.insert(fp, known);
        if self.generation() != generation {
            cache.invalidate(&fp);
        }
    }

    /// Caches what this replica itself just wrote (Redis already holds it).
    pub(super) fn put(&self, fp: Fingerprint, known: Known) {
        if let Some(cache) = &self.cache {
            cache.insert(fp, known);
        }
    }

    /// Forgets `fp` (a revocation was published).
    pub(super) fn invalidate(&self, fp: &Fingerprint) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(cache) = &self.cache {
            cache.invalidate(fp);
        }
    }

    /// Forgets everything (the subscription was lost: revocations may have been missed).
    pub(super) fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(cache) = &self.cache {
            cache.invalidate_all();
        }
    }

    /// Entries held (after pending maintenance), for tests.
    #[cfg(test)]
    pub(super) fn len(&self) -> u64 {
        self.cache.as_ref().map_or(0, |cache| {
            cache.run_pending_tasks();
            cache.entry_count()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(ttl: Duration) -> Known {
        Known::Live(Arc::new(TokenRecord {
            fingerprint: Fingerprint::of("t"),
            member_id: "m".into(),
            account_id: "a".into(),
            account_name: None,
            expires_at: SystemTime::now() + ttl,
            learned: false,
        }))
    }

    #[test]
    fn a_fill_racing_an_invalidation_is_not_kept() {
        let l1 = L1::new(100, Duration::from_secs(5));
        let fp = Fingerprint::of("t");
        let before = l1.generation();
        l1.invalidate(&fp); // a revocation arrives while Redis is being read
        l1.fill(fp, live(Duration::from_secs(60)), before);
        assert!(l1.get(&fp).is_none());
        l1.fill(fp, live(Duration::from_secs(60)), l1.generation());
        assert!(matches!(l1.get(&fp), Some(Known::Live(_))));
        l1.clear();
        assert!(l1.get(&fp).is_none());
        assert_eq!(l1.len(), 0);
    }

    #[test]
    fn an_expired_record_reads_as_absent_and_zero_ttl_disables() {
        let l1 = L1::new(100, Duration::from_secs(5));
        let fp = Fingerprint::of("t");
        l1.put(fp, live(Duration::ZERO));
        assert!(matches!(l1.get(&fp), None | Some(Known::Absent)));
        let off = L1::new(100, Duration::ZERO);
        off.put(fp, live(Duration::from_secs(60)));
        assert!(off.get(&fp).is_none());
    }
}
