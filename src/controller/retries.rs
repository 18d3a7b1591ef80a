//! How soon a reconcile that failed runs again: per object, exponentially later (with jitter)
//! with each failure in a row, from [`RETRY_FIRST`] up to [`RETRY_MOST`]; a success forgets
//! the object's failures. One object that keeps failing (an API it may not write, a lock whose
//! ZooKeeper path is refused) backs off alone, and others keep the retry they had.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

pub const RETRY_FIRST: Duration = Duration::from_millis(500);
pub const RETRY_MOST: Duration = Duration::from_secs(60);

pub struct Retries<K> {
    failing: Mutex<HashMap<K, ExponentialBackoff>>,
}

impl<K> Default for Retries<K> {
    fn default() -> Self {
        Self {
            failing: Mutex::default(),
        }
    }
}

impl<K: Hash + Eq> Retries<K> {
    /// The wait before the next try of `key`, which just failed.
    pub fn after_failure(&self, key: K) -> Duration {
        let mut failing = self.failing.lock().expect("retries lock");
        failing
            .entry(key)
            .or_insert_with(|| {
                ExponentialBuilder::default()
                    .with_min_delay(RETRY_FIRST)
                    .with_max_delay(RETRY_MOST)
                    .with_factor(2.0)
                    .with_jitter()
                    .without_max_times()
                    .build()
            })
            .next()
            .unwrap_or(RETRY_MOST)
    }

    /// `key` was reconciled: its next failure waits the least again.
    pub fn succeeded(&self, key: &K) {
        self.failing.lock().expect("retries lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_grow_per_object_up_to_the_most_and_start_over_after_a_success() {
        let retries = Retries::default();
        let waits: Vec<Duration> = (0..12).map(|_| retries.after_failure("a")).collect();
        // With jitter each wait is at least the exponential step (and less than twice it).
        assert!(
            waits[0] >= RETRY_FIRST && waits[0] < 2 * RETRY_FIRST,
            "{waits:?}"
        );
        assert!(waits[3] >= 8 * RETRY_FIRST, "{waits:?}");
        assert!(
            waits.iter().all(|wait| *wait <= 2 * RETRY_MOST),
            "{waits:?}"
        );
        assert!(waits[11] >= RETRY_MOST, "{waits:?}");
        // Another object's failures start at the first wait.
        assert!(retries.after_failure("b") < 2 * RETRY_FIRST);
        retries.succeeded(&"a");
        assert!(retries.after_failure("a") < 2 * RETRY_FIRST);
    }
}
