//! The memory backend's per-member index: member id → the fingerprints of its live records.
//!
//! Each fingerprint carries the *generation* of the record write that put it there. The records
//! cache's eviction listener removes `(member, fingerprint)` only if the generation still matches
//! the evicted value's, so the removal notice for a record that has since been replaced (same
//! token recorded again) cannot delete the entry of its live successor, whatever order the
//! notice and the new write arrive in. Writes of one fingerprint are serialised by moka's key
//! lock (see `memory.rs`), so the index's generation for a fingerprint is always the one of the
//! last write that reached the cache.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::Fingerprint;

/// Lock stripes; a power of two well above the core count keeps contention negligible.
const SHARDS: usize = 64;

type Members = HashMap<String, Fingerprints>;

/// One member's fingerprints → generations. Most members hold one token at a time (one account,
/// one session), so that case is kept inline: a map would cost ~200 bytes per member.
enum Fingerprints {
    One(Fingerprint, u64),
    Many(HashMap<Fingerprint, u64>),
}

impl Fingerprints {
    fn generation(&self, fp: &Fingerprint) -> Option<u64> {
        match self {
            Fingerprints::One(f, g) => (f == fp).then_some(*g),
            Fingerprints::Many(map) => map.get(fp).copied(),
        }
    }
}

/// Member id → {fingerprint → generation}, striped over [`SHARDS`] mutexes by member id.
pub(crate) struct MemberIndex {
    shards: Box<[Mutex<Members>]>,
    /// Picks a member's shard; random per process so member ids cannot be chosen to collide.
    hasher: RandomState,
}

impl MemberIndex {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Members::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, member_id: &str) -> MutexGuard<'_, Members> {
        // The index mask keeps the value below SHARDS, so the cast cannot truncate meaningfully.
        let slot = (self.hasher.hash_one(member_id) as usize) & (SHARDS - 1);
        // A panic while holding the lock cannot leave a map half-updated (each critical section
        // is one std map operation), so a poisoned lock is still safe to use.
        self.shards[slot]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that `fp` now belongs to `member_id`, written by generation `generation`.
    pub(crate) fn insert(&self, member_id: &str, fp: Fingerprint, generation: u64) {
        let mut shard = self.shard(member_id);
        let Some(fps) = shard.get_mut(member_id) else {
            shard.insert(member_id.to_owned(), Fingerprints::One(fp, generation));
            return;
        };
        match fps {
            Fingerprints::One(f, g) if *f == fp => *g = generation,
            Fingerprints::One(f, g) => {
                *fps = Fingerprints::Many(HashMap::from([(*f, *g), (fp, generation)]));
            }
            Fingerprints::Many(map) => {
                map.insert(fp, generation);
            }
        }
    }

    /// Forgets `fp` under `member_id` if it is still the entry of `generation`; drops the member
    /// when its set becomes empty.
    pub(crate) fn remove_if(&self, member_id: &str, fp: &Fingerprint, generation: u64) {
        let mut shard = self.shard(member_id);
        let Some(fps) = shard.get_mut(member_id) else {
            return;
        };
        if fps.generation(fp) != Some(generation) {
            return;
        }
        let Fingerprints::Many(map) = fps else {
            shard.remove(member_id);
            return;
        };
        map.remove(fp);
        if map.len() == 1 {
            if let Some((f, g)) = map.iter().next().map(|(f, g)| (*f, *g)) {
                *fps = Fingerprints::One(f, g);
            }
        } else if map.capacity() > 8 && map.len() < map.capacity() / 4 {
            // A member that once held many tokens should not keep their slots forever.
            map.shrink_to_fit();
        }
    }

    /// The fingerprints currently indexed under `member_id` (copied; the lock is not held while
    /// the caller consults the records).
    pub(crate) fn fingerprints(&self, member_id: &str) -> Vec<Fingerprint> {
        self.shard(member_id)
            .get(member_id)
            .map(|fps| match fps {
                Fingerprints::One(f, _) => vec![*f],
                Fingerprints::Many(map) => map.keys().copied().collect(),
            })
            .unwrap_or_default()
    }

    /// Total indexed fingerprints and members (for tests; takes every lock).
    #[cfg(test)]
    pub(crate) fn len(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(fps, members), shard| {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            (
                fps + shard
                    .values()
                    .map(|f| match f {
                        Fingerprints::One(..) => 1,
                        Fingerprints::Many(map) => map.len(),
                    })
                    .sum::<usize>(),
                members + shard.len(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_generation_does_not_remove_and_empty_members_are_dropped() {
        let index = MemberIndex::new();
        let fp = Fingerprint::of("t");
        index.insert("m", fp, 1);
        index.insert("m", fp, 2); // the same token recorded again
        index.remove_if("m", &fp, 1); // late notice about the first write
        assert_eq!(index.fingerprints("m"), vec![fp]);
        index.remove_if("m", &fp, 2);
        assert!(index.fingerprints("m").is_empty());
        assert_eq!(index.len(), (0, 0));
    }

    #[test]
    fn a_member_grows_from_one_to_many_and_back() {
        let index = MemberIndex::new();
        let fps: Vec<_> = (0..5).map(|i| Fingerprint::of(&i.to_string())).collect();
        for (g, fp) in fps.iter().enumerate() {
            index.insert("m", *fp, g as u64);
        }
        assert_eq!(index.len(), (5, 1));
        for (g, fp) in fps.iter().enumerate().skip(1) {
            index.remove_if("m", fp, g as u64);
        }
        assert_eq!(index.fingerprints("m"), vec![fps[0]]);
        index.remove_if("m", &fps[0], 1); // stale
        assert_eq!(index.len(), (1, 1));
        index.remove_if("m", &fps[0], 0);
        assert_eq!(index.len(), (0, 0));
    }
}
