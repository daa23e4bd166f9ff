//! The negative cache: fingerprints of tokens the upstream refused, answered locally for a
//! while so that a flood of one forged token costs the upstream one request.

use std::time::Duration;

use crate::store::Fingerprint;

/// Bounded, each entry living `ttl`.
pub struct NegativeCache {
    cache: moka::sync::Cache<Fingerprint, ()>,
}

impl NegativeCache {
    /// At most `max_entries` fingerprints, each for `ttl`.
    pub fn new(max_entries: u64, ttl: Duration) -> Self {
        NegativeCache {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// Remembers a refused token.
    pub fn insert(&self, fingerprint: Fingerprint) {
        self.cache.insert(fingerprint, ());
    }

    /// Whether the upstream refused this token lately.
    pub fn contains(&self, fingerprint: &Fingerprint) -> bool {
        self.cache.contains_key(fingerprint)
    }
}
