//! Locking shared by every module that keeps state behind a `std::sync::Mutex`.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, ignoring poisoning. A panic inside one of the gateway's critical sections can
/// only come from a broken invariant or allocation failure, and leaves the data no worse than
/// stale; serving on beats turning one bug into a lock that fails every later request.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
