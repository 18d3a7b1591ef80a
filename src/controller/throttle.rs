//! Writes held to one per interval per object, leading edge first: the first write goes at
//! once, a later one waits out what is left of the interval. Hand-made because
//! kube-runtime's debounce is trailing-edge (it would hold back the first write too).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Entries kept before those past their interval (of objects gone, among others) are dropped.
const FORGET_ABOVE: usize = 1024;

pub struct Throttle<K> {
    interval: Duration,
    last: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq + Clone> Throttle<K> {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Mutex::default(),
        }
    }

    /// How long until `key` may write again; `None` when it may now (and the write is
    /// counted as made now).
    pub fn wait(&self, key: &K) -> Option<Duration> {
        let mut last = self.last.lock().expect("throttle lock");
        let now = Instant::now();
        if let Some(since) = last.get(key).map(|at| now.duration_since(*at))
            && since < self.interval
        {
            return Some(self.interval - since);
        }
        last.insert(key.clone(), now);
        if last.len() > FORGET_ABOVE {
            last.retain(|_, at| now.duration_since(*at) < self.interval);
        }
        None
    }

    /// Counts a write of `key` as made now (one made before this process knew of it).
    pub fn written(&self, key: K) {
        self.last
            .lock()
            .expect("throttle lock")
            .insert(key, Instant::now());
    }

    /// `key` is gone: its next write, if any, goes at once.
    pub fn forget(&self, key: &K) {
        self.last.lock().expect("throttle lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_write_goes_at_once_and_later_ones_wait_out_the_interval() {
        let throttle = Throttle::new(Duration::from_secs(1));
        assert_eq!(throttle.wait(&"a"), None);
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(throttle.wait(&"a"), Some(Duration::from_millis(700)));
        // Another key has its own interval.
        assert_eq!(throttle.wait(&"b"), None);
        tokio::time::advance(Duration::from_millis(700)).await;
        assert_eq!(throttle.wait(&"a"), None);
        throttle.forget(&"a");
        assert_eq!(throttle.wait(&"a"), None);
        throttle.written("c");
        assert_eq!(throttle.wait(&"c"), Some(Duration::from_secs(1)));
    }
}
