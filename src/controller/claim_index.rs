//! Claims by the lock and by the holder they name, kept from the claims watch, so that a pod,
//! job or lock event finds its claims without scanning every claim.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use crate::deadlock::{Process, process_of};
use crate::resources::{HolderKind, LockClaim};

/// What a claim is found by: (namespace, lock name), (namespace, holder kind, holder name),
/// and the process it belongs to when that is not its holder (a run in a pod).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Lock(String, String),
    Holder(String, HolderKind, String),
    RunsIn(Process),
}

fn keys_of(claim: &LockClaim) -> Vec<Key> {
    let namespace = claim.namespace().unwrap_or_default();
    let holder = Key::Holder(
        namespace.clone(),
        claim.spec.holder.kind,
        claim.spec.holder.name.clone(),
    );
    let process = process_of(claim);
    let mut keys = vec![
        Key::Lock(namespace, claim.spec.lock.clone()),
        holder.clone(),
    ];
    if Key::Holder(
        process.namespace.clone(),
        process.kind,
        process.name.clone(),
    ) != holder
    {
        keys.push(Key::RunsIn(process));
    }
    keys
}

#[derive(Default)]
struct Index {
    claims: HashMap<Key, HashSet<ObjectRef<LockClaim>>>,
    /// Each claim's keys, to unlink it when it changes or goes.
    keys: HashMap<ObjectRef<LockClaim>, Vec<Key>>,
}

impl Index {
    fn insert(&mut self, claim: &LockClaim) {
        let claim_ref = ObjectRef::from_obj(claim);
        let keys = keys_of(claim);
        if self.keys.get(&claim_ref) == Some(&keys) {
            return;
        }
        self.remove(&claim_ref);
        for key in &keys {
            self.claims
                .entry(key.clone())
                .or_default()
                .insert(claim_ref.clone());
        }
        self.keys.insert(claim_ref, keys);
    }

    fn remove(&mut self, claim_ref: &ObjectRef<LockClaim>) {
        let Some(keys) = self.keys.remove(claim_ref) else {
            return;
        };
        for key in keys {
            if let Some(claims) = self.claims.get_mut(&key) {
                claims.remove(claim_ref);
                if claims.is_empty() {
                    self.claims.remove(&key);
                }
            }
        }
    }
}

/// Shared by the watch that fills it and the reconcilers that read it.
#[derive(Clone, Default)]
pub struct ClaimIndex {
    inner: Arc<Mutex<Indexes>>,
}

#[derive(Default)]
struct Indexes {
    current: Index,
    /// Filled during a relist; replaces `current` once the relist is complete.
    relisting: Option<Index>,
}

impl ClaimIndex {
    /// Follows one event of the claims watch.
    pub fn observe(&self, event: &watcher::Event<LockClaim>) {
        let mut indexes = self.inner.lock().expect("claim index lock");
        match event {
            watcher::Event::Apply(claim) => indexes.current.insert(claim),
            watcher::Event::Delete(claim) => indexes.current.remove(&ObjectRef::from_obj(claim)),
            watcher::Event::Init => indexes.relisting = Some(Index::default()),
            watcher::Event::InitApply(claim) => indexes
                .relisting
                .get_or_insert_with(Index::default)
                .insert(claim),
            watcher::Event::InitDone => {
                if let Some(index) = indexes.relisting.take() {
                    indexes.current = index;
                }
            }
        }
    }

    fn find(&self, key: &Key) -> Vec<ObjectRef<LockClaim>> {
        let indexes = self.inner.lock().expect("claim index lock");
        indexes
            .current
            .claims
            .get(key)
            .map(|claims| claims.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The claims on lock `name` in `namespace`.
    pub fn of_lock(&self, namespace: &str, name: &str) -> Vec<ObjectRef<LockClaim>> {
        self.find(&Key::Lock(namespace.into(), name.into()))
    }

    /// The claims held by the `kind` named `name` in `namespace`.
    pub fn of_holder(
        &self,
        namespace: &str,
        kind: HolderKind,
        name: &str,
    ) -> Vec<ObjectRef<LockClaim>> {
        self.find(&Key::Holder(namespace.into(), kind, name.into()))
    }

    /// The claims of a process: those its holder holds, and those of runs in it (a pod).
    pub fn of_process(&self, process: &Process) -> Vec<ObjectRef<LockClaim>> {
        let mut claims = self.of_holder(&process.namespace, process.kind, &process.name);
        claims.extend(self.find(&Key::RunsIn(process.clone())));
        claims
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(name: &str, lock: &str, kind: &str, holder: &str) -> LockClaim {
        serde_json::from_value(json!({
            "apiVersion": "lockkeeper.dev/v1alpha1", "kind": "LockClaim",
            "metadata": {"name": name, "namespace": "team"},
            "spec": {"lock": lock, "holder": {"kind": kind, "name": holder}},
        }))
        .unwrap()
    }

    fn names(refs: Vec<ObjectRef<LockClaim>>) -> Vec<String> {
        let mut names: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        names.sort();
        names
    }

    #[test]
    fn finds_claims_by_lock_and_holder_and_follows_changes_and_deletes() {
        let index = ClaimIndex::default();
        index.observe(&watcher::Event::Apply(claim("a", "db", "Pod", "p1")));
        index.observe(&watcher::Event::Apply(claim("b", "db", "Job", "p1")));
        assert_eq!(names(index.of_lock("team", "db")), ["a", "b"]);
        assert_eq!(names(index.of_holder("team", HolderKind::Pod, "p1")), ["a"]);
        assert_eq!(names(index.of_holder("team", HolderKind::Job, "p1")), ["b"]);
        assert!(index.of_lock("other", "db").is_empty());
        // A claim moved to another lock is found there only.
        index.observe(&watcher::Event::Apply(claim("a", "cache", "Pod", "p1")));
        assert_eq!(names(index.of_lock("team", "db")), ["b"]);
        assert_eq!(names(index.of_lock("team", "cache")), ["a"]);
        index.observe(&watcher::Event::Delete(claim("b", "db", "Job", "p1")));
        assert!(index.of_lock("team", "db").is_empty());
        assert!(index.of_holder("team", HolderKind::Job, "p1").is_empty());
    }

    #[test]
    fn a_relist_replaces_the_index_once_complete() {
        let index = ClaimIndex::default();
        index.observe(&watcher::Event::Apply(claim("gone", "db", "Pod", "p1")));
        index.observe(&watcher::Event::Init);
        index.observe(&watcher::Event::InitApply(claim("kept", "db", "Pod", "p2")));
        // Until the relist is complete the previous index answers.
        assert_eq!(names(index.of_lock("team", "db")), ["gone"]);
        index.observe(&watcher::Event::InitDone);
        assert_eq!(names(index.of_lock("team", "db")), ["kept"]);
        assert!(index.of_holder("team", HolderKind::Pod, "p1").is_empty());
    }
}
