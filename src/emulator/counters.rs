//! Request counters, so tests can assert what reached the upstream ("never called",
//! "called once per login") without instrumenting the gateway.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::sync::lock;

/// Distinct paths remembered per path; beyond it only the total stays exact.
const MAX_COUNTED_PATHS: usize = 65_536;
/// Longest path kept; prefix queries shorter than this stay exact.
const MAX_COUNTED_PATH_LEN: usize = 512;

/// Total and per-path request counts, bounded in the number of distinct paths.
#[derive(Default)]
pub(crate) struct RequestCounters {
    total: AtomicU64,
    /// Counts by path (query excluded); prefix sums are computed on read, which is rare.
    by_path: Mutex<HashMap<String, u64>>,
}

impl RequestCounters {
    /// Counts one request to `path`.
    pub(crate) fn count(&self, path: &str) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut end = path.len().min(MAX_COUNTED_PATH_LEN);
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        let key = &path[..end];
        let mut by_path = lock(&self.by_path);
        if let Some(count) = by_path.get_mut(key) {
            *count += 1;
        } else if by_path.len() < MAX_COUNTED_PATHS {
            by_path.insert(key.to_owned(), 1);
        }
    }

    /// Requests counted so far.
    pub(crate) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Requests counted so far whose path starts with `prefix`.
    pub(crate) fn with_prefix(&self, prefix: &str) -> u64 {
        lock(&self.by_path)
            .iter()
            .filter(|(path, _)| path.starts_with(prefix))
            .map(|(_, count)| count)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_sum_over_paths() {
        let counters = RequestCounters::default();
        counters.count("/v2/accounts/a");
        counters.count("/v2/accounts/a/addresses");
        counters.count("/v2/carts");
        assert_eq!(counters.total(), 3);
        assert_eq!(counters.with_prefix("/v2/accounts/"), 2);
        assert_eq!(counters.with_prefix("/v2/"), 3);
        assert_eq!(counters.with_prefix("/oauth"), 0);
    }

    #[test]
    fn long_multibyte_paths_are_truncated_on_a_char_boundary() {
        let counters = RequestCounters::default();
        let path = format!("/{}", "é".repeat(MAX_COUNTED_PATH_LEN));
        counters.count(&path);
        assert_eq!(counters.with_prefix("/é"), 1);
    }
}
