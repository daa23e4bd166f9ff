//! A dense vector of items plus a hash index of their positions: the storage under every map of
//! the memory backend.
//!
//! Why not a `HashMap<K, V>`: a hash table's buckets come in powers of two and are at most 7/8
//! full, so a map of large entries wastes between 1/8 and 9/16 of its memory in empty buckets.
//! Here the empty buckets hold a 4-byte position (plus hashbrown's control byte), and the items
//! themselves sit in a `Vec` grown to the exact bound, with no holes: removal moves the last item
//! into the gap (`swap_remove`) and repoints its index entry. The dense vector also makes a random
//! sample (for eviction) and a sweep (for expiry) a walk over positions.

use hashbrown::HashTable;

/// Items of type `T`, findable by a hash the caller computes (the slab does not know keys).
pub(super) struct Slab<T> {
    items: Vec<T>,
    /// Positions in `items`; an item's entry sits under the hash the caller gives for it.
    index: HashTable<u32>,
}

impl<T> Slab<T> {
    pub(super) fn new() -> Self {
        Self {
            items: Vec::new(),
            index: HashTable::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    #[cfg(test)]
    pub(super) fn items(&self) -> &[T] {
        &self.items
    }

    pub(super) fn get(&self, pos: usize) -> &T {
        &self.items[pos]
    }

    pub(super) fn get_mut(&mut self, pos: usize) -> &mut T {
        &mut self.items[pos]
    }

    /// Position of the item under `hash` that satisfies `is`.
    pub(super) fn find(&self, hash: u64, is: impl Fn(&T) -> bool) -> Option<usize> {
        let items = &self.items;
        self.index
            .find(hash, |&pos| is(&items[pos as usize]))
            .map(|&pos| pos as usize)
    }

    /// Appends `item` (which must not be present) under `hash`, growing the vector by at most
    /// doubling and never past `bound` items' worth of capacity. `hash_of` recomputes an item's
    /// hash when the index grows.
    pub(super) fn push(
        &mut self,
        hash: u64,
        item: T,
        bound: usize,
        hash_of: impl Fn(&T) -> u64,
    ) -> usize {
        let pos = self.items.len();
        if pos == self.items.capacity() {
            let target = pos.saturating_mul(2).max(4).min(bound).max(pos + 1);
            self.items.reserve_exact(target - pos);
        }
        let Ok(slot) = u32::try_from(pos) else {
            unreachable!("the store's bounds keep a slab below 2^32 items");
        };
        self.items.push(item);
        let items = &self.items;
        self.index
            .insert_unique(hash, slot, |&p| hash_of(&items[p as usize]));
        pos
    }

    /// Removes the item at `pos`, whose hash is `hash`; the last item takes its place.
    pub(super) fn swap_remove(&mut self, pos: usize, hash: u64, hash_of: impl Fn(&T) -> u64) -> T {
        match self.index.find_entry(hash, |&p| p as usize == pos) {
            Ok(entry) => {
                entry.remove();
            }
            Err(_) => unreachable!("every slab item has its index entry"),
        }
        let last = self.items.len() - 1;
        if pos != last {
            let moved = hash_of(&self.items[last]);
            match self.index.find_mut(moved, |&p| p as usize == last) {
                Some(slot) => *slot = pos as u32,
                None => unreachable!("every slab item has its index entry"),
            }
        }
        self.items.swap_remove(pos)
    }

    /// Gives memory back after a large part of the items went away.
    pub(super) fn shrink(&mut self, hash_of: impl Fn(&T) -> u64) {
        let len = self.items.len();
        if self.items.capacity() > 64 && len < self.items.capacity() / 4 {
            self.items.shrink_to(len * 2);
            let items = &self.items;
            self.index
                .shrink_to(len * 2, |&p| hash_of(&items[p as usize]));
        }
    }

    /// Bytes held on the heap by the vector and the index (not by what the items point to).
    #[cfg(test)]
    pub(super) fn allocated(&self) -> usize {
        self.items.capacity() * std::mem::size_of::<T>() + self.index.allocation_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: &u64) -> u64 {
        x.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    #[test]
    fn removal_keeps_every_other_item_findable() {
        let mut slab = Slab::new();
        for x in 0..100u64 {
            slab.push(h(&x), x, 100, h);
        }
        assert_eq!(
            slab.items.capacity(),
            100,
            "grown to the bound, not past it"
        );
        for x in (0..100u64).step_by(3) {
            let pos = slab.find(h(&x), |&y| y == x).unwrap();
            assert_eq!(slab.swap_remove(pos, h(&x), h), x);
        }
        for x in 0..100u64 {
            let found = slab.find(h(&x), |&y| y == x).map(|p| *slab.get(p));
            assert_eq!(found, (x % 3 != 0).then_some(x));
        }
        assert_eq!(slab.len(), 66);
    }

    #[test]
    fn shrinks_after_mass_removal() {
        let mut slab = Slab::new();
        for x in 0..1000u64 {
            slab.push(h(&x), x, usize::MAX, h);
        }
        let full = slab.allocated();
        while slab.len() > 10 {
            let x = *slab.get(0);
            slab.swap_remove(0, h(&x), h);
        }
        slab.shrink(h);
        assert!(
            slab.allocated() < full / 8,
            "{} of {full}",
            slab.allocated()
        );
        for &x in slab.items() {
            assert!(slab.find(h(&x), |&y| y == x).is_some());
        }
    }
}
