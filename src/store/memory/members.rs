//! The per-member index: member id → the fingerprints of its records.
//!
//! Exact, not a hint: it is changed only by the record operations, in the same critical section
//! (under the lock of the record's stripe) as the record itself, so a fingerprint is listed under
//! a member exactly while the records hold it for that member — dead-but-not-yet-swept records
//! included, which is why listings still check the records' expiry. It is striped over mutexes by
//! member id; such a mutex is only ever taken inside a record stripe's lock or alone, and nothing
//! is locked inside it.

use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard};

use super::codec::{IdBuf, IdRef};
use super::slab::Slab;
use crate::store::Fingerprint;
use crate::sync::lock;

/// One member: 64 bytes, no further allocation for the usual single token.
struct Member {
    id: IdBuf,
    fps: Fps,
}

/// A member's fingerprints: most members hold one token at a time (one account, one session).
enum Fps {
    One(Fingerprint),
    /// Two or more, exactly sized (members with many tokens are rare; their pushes may realloc).
    Many(Vec<Fingerprint>),
}

/// Member id → fingerprints, striped over mutexes by a keyed hash of the member id.
pub(super) struct MemberIndex {
    stripes: Box<[Mutex<Slab<Member>>]>,
    /// Random per process, so member ids cannot be chosen to collide.
    hasher: RandomState,
}

impl MemberIndex {
    /// An empty index over `stripes` mutexes (a power of two).
    pub(super) fn new(stripes: usize) -> Self {
        debug_assert!(stripes.is_power_of_two());
        Self {
            stripes: (0..stripes).map(|_| Mutex::new(Slab::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// The member's hash and its stripe, locked.
    fn stripe(&self, member: IdRef<'_>) -> (u64, MutexGuard<'_, Slab<Member>>) {
        let hash = self.hasher.hash_one(member);
        // Bits the table does not use for its buckets (low) or its tags (top 7).
        let slot = (hash >> 40) as usize & (self.stripes.len() - 1);
        let guard = lock(&self.stripes[slot]);
        (hash, guard)
    }

    /// Notes that `fp` is recorded for `member`.
    pub(super) fn insert(&self, member: IdRef<'_>, fp: Fingerprint) {
        let (hash, mut stripe) = self.stripe(member);
        let Some(pos) = stripe.find(hash, |m| m.id.as_id() == member) else {
            let hasher = &self.hasher;
            stripe.push(
                hash,
                Member {
                    id: member.to_owned_id(),
                    fps: Fps::One(fp),
                },
                usize::MAX,
                |m| hasher.hash_one(&m.id),
            );
            return;
        };
        let fps = &mut stripe.get_mut(pos).fps;
        match fps {
            Fps::One(one) if *one == fp => {}
            Fps::One(one) => *fps = Fps::Many(vec![*one, fp]),
            Fps::Many(many) if many.contains(&fp) => {}
            Fps::Many(many) => {
                many.reserve_exact(1);
                many.push(fp);
            }
        }
    }

    /// Forgets `fp` under `member`; drops the member when it has no fingerprint left.
    pub(super) fn remove(&self, member: IdRef<'_>, fp: &Fingerprint) {
        let (hash, mut stripe) = self.stripe(member);
        let Some(pos) = stripe.find(hash, |m| m.id.as_id() == member) else {
            return;
        };
        let fps = &mut stripe.get_mut(pos).fps;
        match fps {
            Fps::One(one) if one == fp => {
                let hasher = &self.hasher;
                stripe.swap_remove(pos, hash, |m| hasher.hash_one(&m.id));
            }
            Fps::One(_) => {}
            Fps::Many(many) => {
                many.retain(|f| f != fp);
                if let [last] = many.as_slice() {
                    *fps = Fps::One(*last);
                } else if many.capacity() > 2 * many.len() {
                    many.shrink_to_fit();
                }
            }
        }
    }

    /// The fingerprints indexed under `member` (copied: the caller consults the records without
    /// this lock).
    pub(super) fn fingerprints(&self, member: IdRef<'_>) -> Vec<Fingerprint> {
        let (hash, stripe) = self.stripe(member);
        stripe
            .find(hash, |m| m.id.as_id() == member)
            .map(|pos| match &stripe.get(pos).fps {
                Fps::One(fp) => vec![*fp],
                Fps::Many(many) => many.clone(),
            })
            .unwrap_or_default()
    }

    /// Total indexed fingerprints and members (for tests; takes every lock).
    #[cfg(test)]
    pub(super) fn len(&self) -> (usize, usize) {
        self.stripes.iter().fold((0, 0), |(fps, members), stripe| {
            let stripe = lock(stripe);
            let here: usize = stripe
                .items()
                .iter()
                .map(|m| match &m.fps {
                    Fps::One(_) => 1,
                    Fps::Many(many) => many.len(),
                })
                .sum();
            (fps + here, members + stripe.len())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_grows_from_one_to_many_and_back_and_is_dropped_when_empty() {
        let index = MemberIndex::new(4);
        let m = IdRef::Text("m");
        let fps: Vec<_> = (0..5).map(|i| Fingerprint::of(&i.to_string())).collect();
        for fp in &fps {
            index.insert(m, *fp);
            index.insert(m, *fp); // idempotent
        }
        assert_eq!(index.len(), (5, 1));
        index.remove(IdRef::Text("other"), &fps[0]);
        index.remove(m, &Fingerprint::of("unknown"));
        assert_eq!(index.len(), (5, 1));
        for fp in &fps[1..] {
            index.remove(m, fp);
        }
        assert_eq!(index.fingerprints(m), vec![fps[0]]);
        index.remove(m, &fps[0]);
        assert_eq!(index.len(), (0, 0));
        assert!(index.fingerprints(m).is_empty());
    }

    #[test]
    fn many_members_stay_findable_through_removals() {
        let index = MemberIndex::new(2);
        let ids: Vec<String> = (0..2000).map(|i| format!("member-{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            index.insert(IdRef::parse(id), Fingerprint::of(id));
            if i % 2 == 0 {
                index.insert(IdRef::parse(id), Fingerprint::of(&format!("{id}-2")));
            }
        }
        for id in ids.iter().step_by(3) {
            index.remove(IdRef::parse(id), &Fingerprint::of(id));
        }
        for (i, id) in ids.iter().enumerate() {
            let mut expected = Vec::new();
            if i % 3 != 0 {
                expected.push(Fingerprint::of(id));
            }
            if i % 2 == 0 {
                expected.push(Fingerprint::of(&format!("{id}-2")));
            }
            let mut found = index.fingerprints(IdRef::parse(id));
            found.sort_by_key(|fp| fp.to_hex());
            expected.sort_by_key(|fp| fp.to_hex());
            assert_eq!(found, expected, "{id}");
        }
    }
}
