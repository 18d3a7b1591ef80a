//! Deadlocks found in the term: searched from a lock's waiting claims when its status is
//! refreshed (a new edge of the wait-for graph always touches that lock), kept per claim
//! until the deadlock no longer holds (checked again, as the search decides one, each time a
//! claim of it is reconciled), and shown on every claim of it by the claim reconciler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::context::Context;
use crate::claim_lifecycle::InDeadlock;
use crate::deadlock::{self, Cycle, Process};
use crate::lock_rules::LockKind;
use crate::resources::{DeadlockPolicy, DistributedLock, LockClaim};

/// A cycle found.
#[derive(Debug)]
pub struct Found {
    pub cycle: Cycle,
}

#[derive(Default)]
pub struct Deadlocks {
    by_claim: Mutex<HashMap<String, Arc<Found>>>,
}

impl Deadlocks {
    /// Records a cycle; false if every claim of it was known in it already.
    fn register(&self, found: Found) -> bool {
        let found = Arc::new(found);
        let mut by_claim = self.by_claim.lock().expect("deadlocks lock");
        let mut new = false;
        for claim in found.cycle.claims() {
            let known = by_claim
                .get(&claim.uid)
                .is_some_and(|f| f.cycle == found.cycle);
            if !known {
                by_claim.insert(claim.uid.clone(), found.clone());
                new = true;
            }
        }
        new
    }

    fn of(&self, uid: &str) -> Option<Arc<Found>> {
        self.by_claim
            .lock()
            .expect("deadlocks lock")
            .get(uid)
            .cloned()
    }

    fn forget(&self, cycle: &Cycle) {
        let mut by_claim = self.by_claim.lock().expect("deadlocks lock");
        for claim in cycle.claims() {
            if by_claim.get(&claim.uid).is_some_and(|f| f.cycle == *cycle) {
                by_claim.remove(&claim.uid);
            }
        }
    }

    fn is_known(&self, uid: &str) -> bool {
        self.by_claim
            .lock()
            .expect("deadlocks lock")
            .contains_key(uid)
    }
}

/// The cached claims, for the search.
struct Cached<'a>(&'a Context);

impl deadlock::Claims for Cached<'_> {
    fn of_process(&self, process: &Process) -> Vec<Arc<LockClaim>> {
        self.get_all(self.0.caches.index.of_process(process))
    }
    fn of_lock(&self, namespace: &str, lock: &str) -> Vec<Arc<LockClaim>> {
        self.get_all(self.0.caches.index.of_lock(namespace, lock))
    }
    fn lock_kind(&self, namespace: &str, lock: &str) -> Option<LockKind> {
        let lock = self
            .0
            .caches
            .locks
            .get(&ObjectRef::<DistributedLock>::new(lock).within(namespace))?;
        lock.spec.lock_type.lock_kind(lock.spec.permits).ok()
    }
}

impl Cached<'_> {
    fn get_all(&self, refs: Vec<ObjectRef<LockClaim>>) -> Vec<Arc<LockClaim>> {
        refs.iter()
            .filter_map(|r| self.0.caches.claims.get(r))
            .collect()
    }
}

/// The cached claims, but one claim as given: the one reconciled now (the cache may lag
/// behind it).
struct AsGiven<'a> {
    cached: Cached<'a>,
    claim: Arc<LockClaim>,
}

impl AsGiven<'_> {
    fn swapped(&self, claims: Vec<Arc<LockClaim>>) -> Vec<Arc<LockClaim>> {
        claims
            .into_iter()
            .map(|c| match c.uid() == self.claim.uid() {
                true => self.claim.clone(),
                false => c,
            })
            .collect()
    }
}

impl deadlock::Claims for AsGiven<'_> {
    fn of_process(&self, process: &Process) -> Vec<Arc<LockClaim>> {
        self.swapped(self.cached.of_process(process))
    }
    fn of_lock(&self, namespace: &str, lock: &str) -> Vec<Arc<LockClaim>> {
        self.swapped(self.cached.of_lock(namespace, lock))
    }
    fn lock_kind(&self, namespace: &str, lock: &str) -> Option<LockKind> {
        self.cached.lock_kind(namespace, lock)
    }
}

/// Searches for a deadlock through each waiting claim of a lock not known to be in one; a new
/// one is counted, and its claims reconciled to show it (and to break it, where a lock in it
/// asks for that: see [`of_claim`]).
pub fn search_from(ctx: &Context, waiting: &[Arc<LockClaim>]) {
    let unknown: Vec<Arc<LockClaim>> = waiting
        .iter()
        .filter(|c| !ctx.term.deadlocks.is_known(&c.uid().unwrap_or_default()))
        .cloned()
        .collect();
    for cycle in deadlock::cycles_through(&unknown, &Cached(ctx)) {
        let members = cycle.claims();
        tracing::warn!(cycle = %cycle.describe(), "deadlock found");
        if ctx.term.deadlocks.register(Found { cycle }) {
            ctx.process.metrics.deadlock_found();
            for member in members {
                ctx.term
                    .fast_lane
                    .reconcile(ObjectRef::new(&member.name).within(&member.namespace));
            }
        }
    }
}

/// The deadlock `claim` is in, if it still holds; one that no longer does (a claim of its
/// cycle granted, released or gone, or a holder of a Semaphore on it free to go on: a process
/// of it may be let go by one outside) is forgotten, and its other claims reconciled to drop
/// it. Only while it holds is its youngest waiter a victim.
pub fn of_claim(ctx: &Context, claim: &LockClaim) -> Option<InDeadlock> {
    let uid = claim.uid().unwrap_or_default();
    let found = ctx.term.deadlocks.of(&uid)?;
    let claims = AsGiven {
        cached: Cached(ctx),
        claim: Arc::new(claim.clone()),
    };
    if !deadlock::still_holds(&found.cycle, &claims) {
        ctx.term.deadlocks.forget(&found.cycle);
        for member in found.cycle.claims().into_iter().filter(|m| m.uid != uid) {
            ctx.term
                .fast_lane
                .reconcile(ObjectRef::new(&member.name).within(&member.namespace));
        }
        return None;
    }
    Some(InDeadlock {
        description: found.cycle.describe(),
        victim: found.cycle.youngest_waiter().uid == uid && breaks(ctx, &found.cycle),
    })
}

/// Whether a lock on the cycle asks to break it (read now: a policy set after the cycle was
/// found counts; the lock's change reconciles its claims).
fn breaks(ctx: &Context, cycle: &Cycle) -> bool {
    cycle.edges.iter().any(|edge| {
        let (namespace, name) = edge.lock.split_once('/').unwrap_or_default();
        ctx.caches
            .locks
            .get(&ObjectRef::<DistributedLock>::new(name).within(namespace))
            .is_some_and(|lock| lock.spec.deadlock_policy == Some(DeadlockPolicy::ExpireYoungest))
    })
}
