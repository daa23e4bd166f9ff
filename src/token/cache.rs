//! The verified-token cache: a token whose signature and claims checked out is remembered under
//! its [`Fingerprint`] until its `exp` (plus leeway), so an RS256 token costs one RSA operation,
//! not one per request. Bounded (moka, TinyLFU), keyed by a hash (never the token), and
//! single-flight: concurrent first uses of one token run one verification and share its outcome.
//!
//! Storage is `moka::sync` so that [`VerifiedCache::invalidate`] is synchronous (a revocation
//! takes effect before the call returns); the single flight is a small in-flight map of
//! `watch` channels, because the verification itself is async (it may wait for a JWKS fetch).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;
use tokio::sync::watch;

use super::error::TokenError;
use super::validate::unix_now;
use super::verify::VerifiedToken;
use crate::store::Fingerprint;

/// Longest an entry lives whatever its `exp`: a long-lived token is simply verified again, which
/// bounds how long any state the cache holds can outlive a change around it.
const MAX_TTL: Duration = Duration::from_secs(3600);

/// A verified token as the cache keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    pub token: VerifiedToken,
    /// `exp` in unix seconds, re-checked on every hit.
    pub exp: i64,
}

/// What one verification concluded, as shared with the callers that waited for it.
pub(crate) type Outcome = Result<Arc<Verified>, TokenError>;

/// Entries expire at `exp + leeway` (never later than [`MAX_TTL`]).
struct UntilExpiry {
    leeway: i64,
}

impl Expiry<Fingerprint, Arc<Verified>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &Fingerprint,
        value: &Arc<Verified>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let remaining = value
            .exp
            .saturating_add(self.leeway)
            .saturating_sub(unix_now());
        let remaining = Duration::from_secs(u64::try_from(remaining).unwrap_or(0));
        Some(remaining.min(MAX_TTL))
    }
}

/// The cache and its hit/miss counters.
pub(crate) struct VerifiedCache {
    entries: Cache<Fingerprint, Arc<Verified>>,
    /// Verifications in progress, so that a second caller waits instead of verifying again.
    inflight: Mutex<HashMap<Fingerprint, watch::Receiver<Option<Outcome>>>>,
    /// Calls answered without running a verification (from the cache or a shared flight).
    hits: AtomicU64,
    /// Verifications run.
    misses: AtomicU64,
}

enum Role {
    Leader(watch::Sender<Option<Outcome>>),
    Follower(watch::Receiver<Option<Outcome>>),
}

/// Removes the leader's in-flight entry however the leader ends (done or cancelled), so that
/// followers of a cancelled leader retry instead of waiting forever.
struct InflightGuard<'a> {
    cache: &'a VerifiedCache,
    fingerprint: Fingerprint,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.cache.inflight().remove(&self.fingerprint);
    }
}

impl VerifiedCache {
    /// A cache of at most `max_entries` tokens.
    pub(crate) fn new(max_entries: u64, leeway: i64) -> Self {
        VerifiedCache {
            entries: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(UntilExpiry { leeway })
                .build(),
            inflight: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn inflight(&self) -> MutexGuard<'_, HashMap<Fingerprint, watch::Receiver<Option<Outcome>>>> {
        // Poisoning would need a panic while holding the lock, around a HashMap call.
        self.inflight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached verification of `fingerprint`, or the outcome of `verify` (run at most once
    /// across concurrent callers). Only successes are stored.
    pub(crate) async fn get_or_verify<F, Fut>(&self, fingerprint: Fingerprint, verify: F) -> Outcome
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Verified, TokenError>>,
    {
        let sender = loop {
            if let Some(verified) = self.entries.get(&fingerprint) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(verified);
            }
            let role = {
                let mut inflight = self.inflight();
                match inflight.get(&fingerprint) {
                    Some(receiver) => Role::Follower(receiver.clone()),
                    None => {
                        // A leader stores its success before it leaves the in-flight map, so a
                        // flight that ended between the lookup above and this lock is in the
                        // cache now: look once more before verifying again.
                        if let Some(verified) = self.entries.get(&fingerprint) {
                            self.hits.fetch_add(1, Ordering::Relaxed);
                            return Ok(verified);
                        }
                        let (sender, receiver) = watch::channel(None);
                        inflight.insert(fingerprint, receiver);
                        Role::Leader(sender)
                    }
                }
            };
            match role {
                Role::Leader(sender) => break sender,
                Role::Follower(mut receiver) => {
                    // Err: the leader was cancelled before it finished; go round again.
                    if let Ok(outcome) = receiver.wait_for(Option::is_some).await {
                        if let Some(outcome) = outcome.clone() {
                            self.hits.fetch_add(1, Ordering::Relaxed);
                            return outcome;
                        }
                    }
                }
            }
        };
        let guard = InflightGuard {
            cache: self,
            fingerprint,
        };
        self.misses.fetch_add(1, Ordering::Relaxed);
        // Boxed: a verification (which may wait for a JWKS fetch) is a kilobyte of future that
        // cache hits, the common case, should not carry.
        let outcome = Box::pin(verify()).await.map(Arc::new);
        if let Ok(verified) = &outcome {
            self.entries.insert(fingerprint, verified.clone());
        }
        drop(guard);
        sender.send_replace(Some(outcome.clone()));
        outcome
    }

    /// Drops one token's entry; its next use is verified again.
    pub(crate) fn invalidate(&self, fingerprint: &Fingerprint) {
        self.entries.invalidate(fingerprint);
    }

    /// Drops every entry (a key was withdrawn from the JWKS).
    pub(crate) fn clear(&self) {
        self.entries.invalidate_all();
    }

    /// Calls answered without a verification.
    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Verifications run.
    pub(crate) fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn verified(exp: i64) -> Verified {
        Verified {
            token: VerifiedToken {
                member_id: Some("m".into()),
                account_id: None,
                expires_at: SystemTime::UNIX_EPOCH,
                issued_at: None,
            },
            exp,
        }
    }

    #[tokio::test]
    async fn concurrent_first_uses_verify_once() {
        let cache = Arc::new(VerifiedCache::new(100, 0));
        let fp = Fingerprint::of("t");
        let exp = unix_now() + 60;
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    cache
                        .get_or_verify(fp, || async {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Ok(verified(exp))
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap().is_ok());
        }
        assert_eq!(cache.misses(), 1);
        assert_eq!(cache.hits(), 19);
    }

    /// A flight that ends between a caller's cache lookup and its in-flight lookup must not
    /// start a second verification: with an instant verification and callers on four threads
    /// that window is hit within a few hundred rounds (without the second look, every run of
    /// this test verified a few tokens twice; CI's fifty-caller RS256 test had caught it once).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_flight_ending_between_the_two_lookups_is_not_repeated() {
        let cache = Arc::new(VerifiedCache::new(10_000, 0));
        let exp = unix_now() + 60;
        let rounds = 2_000;
        for round in 0..rounds {
            let fp = Fingerprint::of(&round.to_string());
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let cache = cache.clone();
                    tokio::spawn(async move {
                        cache
                            .get_or_verify(fp, || async { Ok(verified(exp)) })
                            .await
                    })
                })
                .collect();
            for task in tasks {
                assert!(task.await.unwrap().is_ok());
            }
        }
        assert_eq!(cache.misses(), rounds);
        assert_eq!(cache.hits(), rounds * 7);
    }

    #[tokio::test]
    async fn failures_are_shared_but_not_stored() {
        let cache = VerifiedCache::new(100, 0);
        let fp = Fingerprint::of("t");
        let fail = || async { Err(TokenError::BadSignature) };
        assert_eq!(
            cache.get_or_verify(fp, fail).await,
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            cache.get_or_verify(fp, fail).await,
            Err(TokenError::BadSignature)
        );
        assert_eq!(cache.misses(), 2);
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_over() {
        let cache = Arc::new(VerifiedCache::new(100, 0));
        let fp = Fingerprint::of("t");
        let exp = unix_now() + 60;
        let leader = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_verify(fp, || {
                        std::future::pending::<Result<Verified, TokenError>>()
                    })
                    .await
            })
        };
        tokio::task::yield_now().await;
        leader.abort();
        let outcome = cache
            .get_or_verify(fp, || async { Ok(verified(exp)) })
            .await;
        assert!(outcome.is_ok());
    }

    #[tokio::test]
    async fn invalidate_forces_a_new_verification() {
        let cache = VerifiedCache::new(100, 0);
        let fp = Fingerprint::of("t");
        let exp = unix_now() + 60;
        let ok = || async { Ok(verified(exp)) };
        cache.get_or_verify(fp, ok).await.unwrap();
        cache.get_or_verify(fp, ok).await.unwrap();
        assert_eq!((cache.hits(), cache.misses()), (1, 1));
        cache.invalidate(&fp);
        cache.get_or_verify(fp, ok).await.unwrap();
        assert_eq!(cache.misses(), 2);
    }
}
