//! Which cached copies of a claim the controller has already replaced by its own writes.
//!
//! After a write, the controller's cache holds the previous version until the write's watch
//! event arrives, and a reconcile started in between (by a pod, lock or engine event) would
//! decide on that old copy: its writes get 409 and its events repeat. A reconcile on a
//! copy this controller replaced waits instead: the watch event of the write is on its way
//! and reconciles the claim again, on the version the write made.

use std::collections::HashMap;
use std::sync::Mutex;

/// Versions replaced per object (by UID), forgotten once a newer copy was seen.
#[derive(Default)]
pub struct StaleCopies {
    replaced: Mutex<HashMap<String, Vec<String>>>,
}

impl StaleCopies {
    /// Records that a write replaced `version` of object `uid`.
    pub fn replaced(&self, uid: &str, version: Option<&str>) {
        let Some(version) = version else { return };
        self.replaced
            .lock()
            .expect("stale copies lock")
            .entry(uid.to_string())
            .or_default()
            .push(version.to_string());
    }

    /// Whether this copy is one a write of this controller replaced. A copy that is not is
    /// at least as new as the last write, so the versions before it are forgotten.
    pub fn is_stale(&self, uid: &str, version: Option<&str>) -> bool {
        let mut replaced = self.replaced.lock().expect("stale copies lock");
        let Some(versions) = replaced.get(uid) else {
            return false;
        };
        if version.is_some_and(|v| versions.iter().any(|r| r == v)) {
            return true;
        }
        replaced.remove(uid);
        false
    }

    /// Forgets an object that is gone.
    pub fn forget(&self, uid: &str) {
        self.replaced.lock().expect("stale copies lock").remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_replaced_by_writes_are_stale_until_a_newer_copy_is_seen() {
        let copies = StaleCopies::default();
        assert!(!copies.is_stale("a", Some("1")));
        // Two writes before the watch caught up: 1 → 2, then 2 → 3.
        copies.replaced("a", Some("1"));
        copies.replaced("a", Some("2"));
        assert!(copies.is_stale("a", Some("1")));
        assert!(copies.is_stale("a", Some("2")));
        assert!(!copies.is_stale("b", Some("2")));
        // The version the last write made arrives: nothing older is remembered.
        assert!(!copies.is_stale("a", Some("3")));
        assert!(!copies.is_stale("a", Some("1")));
    }

    #[test]
    fn a_forgotten_object_has_no_stale_copies() {
        let copies = StaleCopies::default();
        copies.replaced("a", Some("7"));
        copies.forget("a");
        assert!(!copies.is_stale("a", Some("7")));
    }
}
