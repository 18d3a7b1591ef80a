//! Writes held to one per interval per object, leading edge first: the first write goes at
//! once, a later one waits out what is left of the interval. Hand-made because
//! kube-runtime's debounce is trailing-edge (it would hold back the first write too).
//! And a [`Budget`]: writes of one kind across all objects held to a rate; and a [`Pacer`],
//! both at once.

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
        let wait = self.ready(key);
        if wait.is_none() {
            self.written(key.clone());
        }
        wait
    }

    /// How long until `key` may write again; `None` when it may now (nothing is counted).
    pub fn ready(&self, key: &K) -> Option<Duration> {
        let last = self.last.lock().expect("throttle lock");
        let since = Instant::now().duration_since(*last.get(key)?);
        (since < self.interval).then(|| self.interval - since)
    }

    /// Counts a write of `key` as made now (one made before this process knew of it).
    pub fn written(&self, key: K) {
        let mut last = self.last.lock().expect("throttle lock");
        let now = Instant::now();
        last.insert(key, now);
        if last.len() > FORGET_ABOVE {
            last.retain(|_, at| now.duration_since(*at) < self.interval);
        }
    }

    /// `key` is gone: its next write, if any, goes at once.
    pub fn forget(&self, key: &K) {
        self.last.lock().expect("throttle lock").remove(key);
    }
}

/// Writes of one kind, across all objects, held to a rate with bursts up to `burst` (a token
/// bucket, kept as the time the next write is due: GCRA). Hand-made on tokio's clock, which
/// paused-time tests drive; rate-limiter crates keep a clock of their own.
pub struct Budget {
    per_write: Duration,
    burst: u32,
    /// When the bucket is empty again if no write comes: each write moves it `per_write` on.
    due: Mutex<Instant>,
}

impl Budget {
    pub fn new(per_second: u32, burst: u32) -> Self {
        Budget {
            per_write: Duration::from_secs(1) / per_second.max(1),
            burst: burst.max(1),
            due: Mutex::new(Instant::now()),
        }
    }

    /// The time one write takes of the budget.
    pub fn per_write(&self) -> Duration {
        self.per_write
    }

    /// `None` when a write may go now (and it is counted); otherwise how long until one may.
    pub fn take(&self) -> Option<Duration> {
        let mut due = self.due.lock().expect("budget lock");
        let now = Instant::now();
        let from = (*due).max(now);
        let slack = self.per_write * (self.burst - 1);
        let ahead = from.duration_since(now);
        if ahead > slack {
            return Some(ahead - slack);
        }
        *due = from + self.per_write;
        None
    }

    /// Counts a write and says when it may go: now (`None`), or after the returned wait. Each
    /// write told to wait has a time of its own, so writers kept waiting come back one by
    /// one instead of all at once.
    pub fn reserve(&self) -> Option<Duration> {
        let mut due = self.due.lock().expect("budget lock");
        let now = Instant::now();
        *due = (*due).max(now) + self.per_write;
        let at = due.checked_sub(self.per_write * self.burst).unwrap_or(now);
        (at > now).then(|| at - now)
    }
}

/// Writes held to one per interval per object ([`Throttle`]) and to a [`Budget`] across
/// objects: an object whose interval is over reserves its time in the budget, and writes
/// when that time comes (however often it is looked at meanwhile).
pub struct Pacer<K> {
    throttle: Throttle<K>,
    budget: Budget,
    /// When each object waiting for the budget may write.
    reserved: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq + Clone> Pacer<K> {
    pub fn new(interval: Duration, per_second: u32) -> Self {
        Pacer {
            throttle: Throttle::new(interval),
            budget: Budget::new(per_second, per_second),
            reserved: Mutex::default(),
        }
    }

    /// How long until `key` may write; `None` when it may now (and the write is counted).
    pub fn wait(&self, key: &K) -> Option<Duration> {
        let mut reserved = self.reserved.lock().expect("pacer lock");
        let now = Instant::now();
        match reserved.get(key) {
            Some(at) if *at > now => return Some(*at - now),
            Some(_) => {
                reserved.remove(key);
            }
            None => {
                if let Some(wait) = self.throttle.ready(key) {
                    return Some(wait);
                }
                if let Some(wait) = self.budget.reserve() {
                    reserved.insert(key.clone(), now + wait);
                    return Some(wait);
                }
            }
        }
        self.throttle.written(key.clone());
        None
    }

    /// `key`'s last write did not happen (or `key` is gone): its next goes as soon as the
    /// budget allows.
    pub fn forget(&self, key: &K) {
        self.throttle.forget(key);
        self.reserved.lock().expect("pacer lock").remove(key);
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

    #[tokio::test(start_paused = true)]
    async fn a_budget_lets_a_burst_through_then_one_write_per_share_of_a_second() {
        let budget = Budget::new(10, 3);
        for _ in 0..3 {
            assert_eq!(budget.take(), None);
        }
        assert_eq!(budget.take(), Some(Duration::from_millis(100)));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(budget.take(), None);
        assert_eq!(budget.take(), Some(Duration::from_millis(100)));
        // Unused, the budget fills up to its burst again, no further.
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..3 {
            assert_eq!(budget.take(), None);
        }
        assert!(budget.take().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_reserves_a_time_of_its_own_for_each_write_past_its_burst() {
        let budget = Budget::new(10, 2);
        assert_eq!(budget.reserve(), None);
        assert_eq!(budget.reserve(), None);
        assert_eq!(budget.reserve(), Some(Duration::from_millis(100)));
        assert_eq!(budget.reserve(), Some(Duration::from_millis(200)));
        // Reserved times count: a plain take waits behind them.
        assert_eq!(budget.take(), Some(Duration::from_millis(300)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pacer_holds_each_key_to_its_interval_and_all_keys_to_the_budget() {
        let pacer = Pacer::new(Duration::from_secs(1), 2);
        assert_eq!(pacer.wait(&"a"), None);
        assert_eq!(pacer.wait(&"b"), None);
        // "a" waits out its interval; "c" and "d" each get their own time in the budget.
        assert_eq!(pacer.wait(&"a"), Some(Duration::from_secs(1)));
        assert_eq!(pacer.wait(&"c"), Some(Duration::from_millis(500)));
        assert_eq!(pacer.wait(&"d"), Some(Duration::from_secs(1)));
        // Looked at again before its time, "c" keeps it (and takes no other).
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(pacer.wait(&"c"), Some(Duration::from_millis(300)));
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(pacer.wait(&"c"), None);
        assert_eq!(pacer.wait(&"c"), Some(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(pacer.wait(&"d"), None);
        // A write that did not happen is forgotten: the next goes when the budget allows.
        pacer.forget(&"d");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(pacer.wait(&"d"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn ready_looks_without_counting_a_write() {
        let throttle = Throttle::new(Duration::from_secs(1));
        assert_eq!(throttle.ready(&"a"), None);
        assert_eq!(throttle.ready(&"a"), None);
        throttle.written("a");
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(throttle.ready(&"a"), Some(Duration::from_millis(600)));
    }
}
