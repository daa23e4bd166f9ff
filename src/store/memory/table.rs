//! Fingerprint-keyed tables whose entries each carry an expiry, striped over mutexes: the records
//! (value: the packed strings) and the deny-list (no value).
//!
//! Expiry is lazy: readers compare an entry's expiry with the clock and ignore a dead entry; the
//! memory is reclaimed by three means, none of them a timer per entry:
//!
//! - each insert first examines the next [`SWEEP_STEP`] entries of its shard at a cursor that
//!   walks the shard round and round, and removes the dead ones — while tokens are issued, the
//!   sweep keeps pace with expiry at no extra cost;
//! - [`ExpiringTable::sweep_all`], run by `MemoryStore::count` (the metrics scrape) on a shard only
//!   once the earliest expiry the shard may hold has passed;
//! - eviction: a full shard removes an already dead entry of a random sample of [`SAMPLE`] if the
//!   sample holds one, else the sample's lowest-ranked entry by the caller's ranking (Redis'
//!   approximated policies): least recently used for records, soonest-expiring for deny entries.

use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::slab::Slab;
use crate::store::Fingerprint;
use crate::sync::lock;

/// Entries examined by the amortised sweep on each insert.
pub(super) const SWEEP_STEP: usize = 4;

/// Entries sampled to choose an eviction victim.
const SAMPLE: usize = 8;

/// Most mutex stripes of one table (a power of two, well above the core count).
const MAX_SHARDS: usize = 64;

/// Fewest entries a stripe is sized for: below this, the random spread of fingerprints over
/// stripes would leave some full (and evicting) while the table as a whole has room.
const MIN_PER_SHARD: u64 = 1024;

/// Nanoseconds since the Unix epoch, saturating: 0 before 1970, `u64::MAX` after 2554.
pub(super) fn nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The instant [`nanos`] encoded.
pub(super) fn instant(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// The current time as [`nanos`].
pub(super) fn now() -> u64 {
    nanos(SystemTime::now())
}

/// One entry: the key, the instant (as [`nanos`]) from which it is dead, and its value.
pub(super) struct Entry<T> {
    pub(super) fp: Fingerprint,
    pub(super) expires: u64,
    pub(super) value: T,
}

/// The position of a fingerprint inside a table: SHA-256 output is already uniform, so a keyed
/// mix of its first 8 bytes is enough (the stripe is chosen from the next 8, independently).
fn hash(key: u64, fp: &Fingerprint) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&fp.as_bytes()[..8]);
    let wide = u128::from(u64::from_le_bytes(head) ^ key) * 0x9e37_79b9_7f4a_7c15;
    (wide as u64) ^ ((wide >> 64) as u64)
}

/// One stripe: a bounded slab of entries, its sweep cursor and its eviction sampler.
pub(super) struct ExpiringTable<T> {
    slab: Slab<Entry<T>>,
    /// Most entries this stripe holds (its share of the store's bound).
    bound: usize,
    /// Per-process random key of [`hash`].
    key: u64,
    /// Next position the amortised sweep examines.
    cursor: usize,
    /// No entry expires before this instant (a lower bound, exact after `sweep_all`); tells
    /// `count` whether the stripe needs a full sweep.
    earliest: u64,
    /// xorshift state of the eviction sampler.
    rng: u64,
}

impl<T> ExpiringTable<T> {
    fn new(bound: usize, key: u64, seed: u64) -> Self {
        Self {
            slab: Slab::new(),
            bound,
            key,
            cursor: 0,
            earliest: u64::MAX,
            rng: seed | 1,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.slab.len()
    }

    fn hash_of(&self) -> impl Fn(&Entry<T>) -> u64 {
        let key = self.key;
        move |entry| hash(key, &entry.fp)
    }

    /// Position of `fp`, dead or alive.
    pub(super) fn position(&self, fp: &Fingerprint) -> Option<usize> {
        self.slab.find(hash(self.key, fp), |entry| entry.fp == *fp)
    }

    pub(super) fn at(&self, pos: usize) -> &Entry<T> {
        self.slab.get(pos)
    }

    /// The entry of `fp` if it is alive at `now`, which is only asked for when there is an entry
    /// (a miss does not read the clock).
    pub(super) fn get_live(
        &self,
        fp: &Fingerprint,
        now: impl FnOnce() -> u64,
    ) -> Option<&Entry<T>> {
        self.position(fp)
            .map(|pos| self.slab.get(pos))
            .filter(|entry| entry.expires > now())
    }

    /// As [`get_live`](Self::get_live), mutably (to note a use), with the time it read.
    pub(super) fn get_live_mut(
        &mut self,
        fp: &Fingerprint,
        now: impl FnOnce() -> u64,
    ) -> Option<(&mut Entry<T>, u64)> {
        let pos = self.position(fp)?;
        let now = now();
        let entry = self.slab.get_mut(pos);
        (entry.expires > now).then_some((entry, now))
    }

    /// Sets the expiry and value of the entry at `pos`, returning the old value.
    pub(super) fn replace(&mut self, pos: usize, expires: u64, value: T) -> T {
        self.earliest = self.earliest.min(expires);
        let entry = self.slab.get_mut(pos);
        entry.expires = expires;
        std::mem::replace(&mut entry.value, value)
    }

    /// Adds `fp`, which must be absent, after [`make_room`](Self::make_room) said there is room.
    pub(super) fn insert(&mut self, fp: Fingerprint, expires: u64, value: T) {
        debug_assert!(self.position(&fp).is_none() && self.len() < self.bound);
        self.earliest = self.earliest.min(expires);
        let hash_of = self.hash_of();
        self.slab.push(
            hash(self.key, &fp),
            Entry { fp, expires, value },
            self.bound,
            hash_of,
        );
    }

    pub(super) fn remove_at(&mut self, pos: usize) -> Entry<T> {
        let hash_of = self.hash_of();
        let hash = hash_of(self.slab.get(pos));
        // The last entry moves into `pos`; if that is behind the sweep cursor it waits for the
        // cursor's next round.
        self.slab.swap_remove(pos, hash, hash_of)
    }

    /// Examines up to `budget` entries at the cursor and removes (handing each to `removed`) the
    /// ones dead at `now`.
    pub(super) fn sweep_some(
        &mut self,
        now: u64,
        budget: usize,
        mut removed: impl FnMut(Entry<T>),
    ) {
        for _ in 0..budget {
            if self.cursor >= self.slab.len() {
                self.cursor = 0;
                if self.slab.len() == 0 {
                    return;
                }
            }
            if self.slab.get(self.cursor).expires <= now {
                // The last entry moves into the cursor's position: examined next.
                removed(self.remove_at(self.cursor));
            } else {
                self.cursor += 1;
            }
        }
    }

    /// Whether an entry may be dead at `now` (cheap; `count` sweeps only such stripes).
    pub(super) fn needs_sweep(&self, now: u64) -> bool {
        self.earliest <= now
    }

    /// Removes every entry dead at `now`, learns the exact earliest expiry of the rest, and gives
    /// memory back if the stripe shrank a lot.
    pub(super) fn sweep_all(&mut self, now: u64, mut removed: impl FnMut(Entry<T>)) {
        let mut earliest = u64::MAX;
        let mut pos = 0;
        while pos < self.slab.len() {
            let expires = self.slab.get(pos).expires;
            if expires <= now {
                removed(self.remove_at(pos));
            } else {
                earliest = earliest.min(expires);
                pos += 1;
            }
        }
        self.earliest = earliest;
        self.cursor = 0;
        let hash_of = self.hash_of();
        self.slab.shrink(hash_of);
    }

    /// Makes room for one more entry: sweeps a step, then, if the stripe is still full, evicts
    /// from a random sample a dead entry if there is one, else the entry `rank` puts lowest.
    /// Every removed entry goes to `removed` (one that is still alive at `now` was evicted before
    /// its time). `false` if the bound is 0.
    pub(super) fn make_room<K: Ord>(
        &mut self,
        now: u64,
        rank: impl Fn(&Entry<T>) -> K,
        mut removed: impl FnMut(Entry<T>),
    ) -> bool {
        self.sweep_some(now, SWEEP_STEP, &mut removed);
        while self.slab.len() >= self.bound {
            if self.slab.len() == 0 {
                return false;
            }
            // Dead entries (`false`) order before live ones, then the caller's ranking.
            let key = |entry: &Entry<T>| (entry.expires > now, rank(entry));
            let len = self.slab.len();
            let mut victim = self.random_below(len);
            let mut lowest = key(self.slab.get(victim));
            for _ in 1..SAMPLE {
                let pos = self.random_below(len);
                let candidate = key(self.slab.get(pos));
                if candidate < lowest {
                    victim = pos;
                    lowest = candidate;
                }
            }
            removed(self.remove_at(victim));
        }
        true
    }

    fn random_below(&mut self, n: usize) -> usize {
        // xorshift64*: statistical quality is plenty for picking a sample.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        ((u128::from(r) * n as u128) >> 64) as usize
    }
}

/// An [`ExpiringTable`] striped over mutexes by fingerprint, the stripes sharing the bound.
pub(super) struct Sharded<T> {
    shards: Box<[Mutex<ExpiringTable<T>>]>,
}

impl<T> Sharded<T> {
    /// Stripes holding at most `bound` entries together (each stripe its exact share).
    pub(super) fn new(bound: u64) -> Self {
        let wanted = (bound / MIN_PER_SHARD).clamp(1, MAX_SHARDS as u64) as usize;
        // The largest power of two not above `wanted`, so that a mask picks the stripe.
        let count = 1usize << (usize::BITS - 1 - wanted.leading_zeros());
        let random = RandomState::new();
        let shards = (0..count)
            .map(|i| {
                let share = bound / count as u64 + u64::from((i as u64) < bound % count as u64);
                let share = usize::try_from(share)
                    .unwrap_or(usize::MAX)
                    .min(u32::MAX as usize);
                let key = random.hash_one((i, 0u8));
                let seed = random.hash_one((i, 1u8));
                Mutex::new(ExpiringTable::new(share, key, seed))
            })
            .collect();
        Self { shards }
    }

    /// The stripe of `fp`, locked.
    pub(super) fn lock(&self, fp: &Fingerprint) -> MutexGuard<'_, ExpiringTable<T>> {
        let mut middle = [0u8; 8];
        middle.copy_from_slice(&fp.as_bytes()[8..16]);
        let slot = u64::from_le_bytes(middle) as usize & (self.shards.len() - 1);
        lock(&self.shards[slot])
    }

    /// Every stripe in turn, each locked while the caller holds it.
    pub(super) fn each(&self) -> impl Iterator<Item = MutexGuard<'_, ExpiringTable<T>>> {
        self.shards.iter().map(lock)
    }

    /// Entries held, dead ones included (takes every stripe lock in turn).
    pub(super) fn len(&self) -> usize {
        self.each().map(|stripe| stripe.len()).sum()
    }

    /// Number of stripes.
    pub(super) fn stripes(&self) -> usize {
        self.shards.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(i: u32) -> Fingerprint {
        Fingerprint::of(&i.to_string())
    }

    #[test]
    fn bounds_are_shared_exactly_and_small_stores_use_one_stripe() {
        for (bound, stripes) in [(0, 1), (50, 1), (5000, 4), (100_000, 64), (1_000_000, 64)] {
            let table: Sharded<()> = Sharded::new(bound);
            assert_eq!(table.stripes(), stripes, "bound {bound}");
            let total: usize = table.each().map(|t| t.bound).sum();
            assert_eq!(total as u64, bound);
        }
    }

    fn by_expiry(entry: &Entry<()>) -> u64 {
        entry.expires
    }

    #[test]
    fn eviction_prefers_the_dead_and_the_soonest_expiring() {
        let mut table = ExpiringTable::new(100, 7, 9);
        for i in 0..100 {
            // One dead entry among live ones that expire later the higher their number.
            let expires = if i == 42 { 5 } else { 1_000 + u64::from(i) };
            table.insert(fp(i), expires, ());
        }
        let mut evicted = Vec::new();
        assert!(table.make_room(10, by_expiry, |e| evicted.push(e.expires)));
        // Either the sweep step or a sample found something; never the latest entries.
        assert_eq!(evicted.len(), 1);
        assert!(table.len() == 99);
        let mut later = Vec::new();
        for i in 100..200 {
            assert!(table.make_room(10, by_expiry, |e| later.push(e.expires)));
            table.insert(fp(i), 10_000, ());
        }
        // 100 evictions, each the soonest-expiring of 8 samples: the old entries (expiring
        // 1000..1099) went first, a new one (10_000) only when a sample held no old one.
        let new_evicted = later.iter().filter(|&&e| e == 10_000).count();
        assert!(new_evicted < 40, "{new_evicted} new entries evicted");
        assert_eq!(table.len(), 100);
    }

    #[test]
    fn sweeps_reclaim_dead_entries_and_learn_the_earliest_expiry() {
        let mut table = ExpiringTable::new(1000, 1, 2);
        for i in 0..1000 {
            table.insert(fp(i), u64::from(i % 10) + 1, ());
        }
        assert!(!table.needs_sweep(0));
        assert!(table.needs_sweep(1));
        let mut gone = 0;
        table.sweep_some(5, 1000, |_| gone += 1);
        assert_eq!(gone, 500);
        table.sweep_all(5, |_| gone += 1);
        assert_eq!(gone, 500, "sweep_some covered the whole table");
        assert!(!table.needs_sweep(5));
        assert!(table.needs_sweep(6));
        for i in 0..1000 {
            assert_eq!(table.get_live(&fp(i), || 5).is_some(), i % 10 >= 5);
        }
    }

    #[test]
    fn a_zero_bound_admits_nothing() {
        let mut table: ExpiringTable<()> = ExpiringTable::new(0, 1, 2);
        assert!(!table.make_room(0, by_expiry, |_| {}));
    }

    #[test]
    fn a_dead_entry_goes_first_whatever_its_rank() {
        // Every live entry ranks below the dead one (position 12, beyond the first sweep step),
        // which is still the one evicted whenever the sample holds it.
        let mut dead_evicted = 0;
        for round in 0..200 {
            let mut table = ExpiringTable::new(16, 3, 4 + round);
            for i in 0..16 {
                let dead = i == 12;
                table.insert(fp(i), if dead { 5 } else { 1_000 }, u64::from(dead));
            }
            assert!(table.make_room(
                10,
                |e| e.value,
                |e| {
                    dead_evicted += usize::from(e.expires == 5);
                }
            ));
        }
        // A sample of 8 (with replacement) out of 16 holds a given entry 40 % of the time; ranked
        // highest, the dead entry would never be chosen by rank alone.
        assert!(
            dead_evicted > 40,
            "dead entry evicted {dead_evicted} times of 200"
        );
    }

    #[test]
    fn times_round_trip_at_nanosecond_precision() {
        let t = SystemTime::now() + Duration::from_nanos(123);
        assert_eq!(instant(nanos(t)), t);
        assert_eq!(nanos(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
