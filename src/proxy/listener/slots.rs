//! The connection limit of one listener, as places a connection holds while it is open.
//!
//! At the limit, a newcomer takes the place of the idlest connection: the one with no request
//! in flight for the longest, a connection that never sent a complete head counting as idle
//! since accept. A flood of silent or slow sockets therefore cannot lock honest clients out
//! until its header timeouts fire (it only evicts its own), while connections busy with a
//! request are never cut for a newcomer: when all of them are, the newcomer is refused.
//!
//! Finding the idlest is a walk over the open connections, done only at the limit; the lock is
//! taken once per accept and once per close, never per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::connection::Tracker;
use crate::sync::lock;

/// The open connections of one listener, up to a limit.
pub(super) struct Slots {
    max: usize,
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    open: HashMap<u64, Arc<Tracker>>,
    next_id: u64,
}

/// A connection's place; dropping it frees the place (if eviction has not already).
pub(super) struct Slot {
    id: u64,
    inner: Arc<Mutex<Inner>>,
}

impl Slots {
    pub(super) fn new(max: usize) -> Self {
        Slots {
            max,
            inner: Arc::new(Mutex::new(Inner {
                open: HashMap::with_capacity(max.min(1024)),
                next_id: 0,
            })),
        }
    }

    /// Connections holding a place.
    pub(super) fn len(&self) -> usize {
        lock(&self.inner).open.len()
    }

    /// A place for `tracker`'s connection, made by evicting the idlest connection if the limit
    /// is reached; `None` when every connection has a request in flight.
    pub(super) fn admit(&self, tracker: &Arc<Tracker>) -> Option<Slot> {
        let mut inner = lock(&self.inner);
        if inner.open.len() >= self.max {
            let idlest = inner
                .open
                .iter()
                .filter_map(|(id, t)| Some((t.idle_since()?, *id)))
                .min()
                .map(|(_, id)| id)?;
            if let Some(evicted) = inner.open.remove(&idlest) {
                evicted.evict();
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.open.insert(id, tracker.clone());
        Some(Slot {
            id,
            inner: self.inner.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.inner).open.remove(&self.id);
    }
}
