//! The live JWKS key set: fetched at start, refreshed on an interval, refetched when a token
//! names a `kid` nobody knows — at most once per cooldown and single-flight, so a flood of
//! made-up `kid`s costs the JWKS server one request, not one per token. A failed or garbage
//! fetch keeps the last good key set.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::fetch::Fetcher;
use super::jwks;
use super::keys::VerifyingKey;

/// A snapshot of the JWKS keys, with the generation it belongs to.
pub(crate) type Snapshot = (Arc<Vec<VerifyingKey>>, u64);

/// What a fetch did to the key set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refresh {
    /// A new set is in use; `dropped` says whether a key of the old set is gone from it.
    Replaced { dropped: bool },
    /// The fetch failed or the document was refused; the last good set stays.
    Kept,
    /// Nothing was fetched: another task refreshed meanwhile, or the cooldown holds.
    Skipped,
}

/// The JWKS keys and the machinery that keeps them fresh.
pub(crate) struct JwksSource {
    fetcher: Fetcher,
    pinned: Vec<Algorithm>,
    /// The current keys. A std lock: it is held only to clone the `Arc`, never across an await.
    keys: RwLock<Arc<Vec<VerifyingKey>>>,
    /// Bumped on every successful replacement; lets a waiter see that someone else refreshed.
    generation: AtomicU64,
    /// Serialises fetches (the single flight) and remembers when the last one started.
    last_fetch: Mutex<Option<Instant>>,
    cooldown: Duration,
    /// HTTP requests made, for tests and metrics.
    fetches: AtomicU64,
    /// Fetches that failed or brought a document that was refused (`jwks_fetch_errors_total`).
    failures: AtomicU64,
    /// Unix seconds of the last fetch whose keys were taken; 0 before the first
    /// (`jwks_last_success_timestamp_seconds`).
    last_success: AtomicU64,
}

impl JwksSource {
    /// A source with no keys yet.
    pub(crate) fn new(fetcher: Fetcher, pinned: Vec<Algorithm>, cooldown: Duration) -> Self {
        JwksSource {
            fetcher,
            pinned,
            keys: RwLock::new(Arc::new(Vec::new())),
            generation: AtomicU64::new(0),
            last_fetch: Mutex::new(None),
            cooldown,
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_success: AtomicU64::new(0),
        }
    }

    /// The keys in use now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        // A poisoned lock only means a panic elsewhere while cloning an Arc; the data is whole.
        let keys = match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        (keys, self.generation.load(Ordering::Acquire))
    }

    /// How many HTTP requests have been made.
    pub(crate) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Fetches that failed or whose document was refused.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Unix seconds of the last fetch whose keys were taken; 0 before the first.
    pub(crate) fn last_success(&self) -> u64 {
        self.last_success.load(Ordering::Relaxed)
    }

    /// Fetches now (start-up and the refresh interval), waiting for a fetch in flight first.
    pub(crate) async fn refresh(&self) -> Refresh {
        let mut last = self.last_fetch.lock().await;
        *last = Some(Instant::now());
        self.fetch_and_swap().await
    }

    /// Fetches because a token named a key we do not have — unless a fetch finished since the
    /// caller took `seen` (its keys are worth a second look first) or the cooldown holds.
    pub(crate) async fn refresh_for_unknown_kid(&self, seen: u64) -> Refresh {
        let mut last = self.last_fetch.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return Refresh::Skipped;
        }
        if last.is_some_and(|at| at.elapsed() < self.cooldown) {
            return Refresh::Skipped;
        }
        *last = Some(Instant::now());
        self.fetch_and_swap().await
    }

    /// Called with `last_fetch` held, so at most one runs at a time.
    async fn fetch_and_swap(&self) -> Refresh {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let body = match self.fetcher.fetch().await {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!(%error, "JWKS fetch failed; keeping the last good keys");
                self.failures.fetch_add(1, Ordering::Relaxed);
                return Refresh::Kept;
            }
        };
        let keys = match jwks::parse(&body, &self.pinned) {
            Ok(keys) => keys,
            Err(error) => {
                tracing::warn!(%error, "JWKS refused; keeping the last good keys");
                self.failures.fetch_add(1, Ordering::Relaxed);
                return Refresh::Kept;
            }
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_success.store(now, Ordering::Relaxed);
        let kids: Vec<&str> = keys
            .iter()
            .map(|key| key.kid.as_deref().unwrap_or("-"))
            .collect();
        tracing::debug!(?kids, "JWKS loaded");
        let new = Arc::new(keys);
        let old = {
            let mut current = match self.keys.write() {
                Ok(current) => current,
                Err(poisoned) => poisoned.into_inner(),
            };
            std::mem::replace(&mut *current, new.clone())
        };
        self.generation.fetch_add(1, Ordering::AcqRel);
        let dropped = old
            .iter()
            .any(|gone| !new.iter().any(|key| key.id == gone.id));
        Refresh::Replaced { dropped }
    }
}
