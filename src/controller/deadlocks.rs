//! Deadlocks found in the term: searched from a lock's waiting claims when its status is
//! refreshed (a new edge of the wait-for graph always touches that lock), kept per claim
//! until the cycle no longer holds, and shown on every claim of it by the claim reconciler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::context::Context;
use crate::claim_lifecycle::InDeadlock;
use crate::deadlock::{self, ClaimId, Cycle, Process};
use crate::resources::{ClaimPhase, DeadlockPolicy, DistributedLock, LockClaim};

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
}

impl Cached<'_> {
    fn get_all(&self, refs: Vec<ObjectRef<LockClaim>>) -> Vec<Arc<LockClaim>> {
        refs.iter()
            .filter_map(|r| self.0.caches.claims.get(r))
            .collect()
    }

    fn get(&self, claim: &ClaimId) -> Option<Arc<LockClaim>> {
        let found = self
            .0
            .caches
            .claims
            .get(&ObjectRef::new(&claim.name).within(&claim.namespace))?;
        (found.uid().as_deref() == Some(claim.uid.as_str())).then_some(found)
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

/// The deadlock `claim` is in, if the cycle still holds; a cycle that no longer does (a claim
/// of it granted, released or gone) is forgotten, and its other claims reconciled to drop it.
pub fn of_claim(ctx: &Context, claim: &LockClaim) -> Option<InDeadlock> {
    let uid = claim.uid().unwrap_or_default();
    let found = ctx.term.deadlocks.of(&uid)?;
    let cached = Cached(ctx);
    let phase_of = |id: &ClaimId| -> Option<ClaimPhase> {
        // The claim reconciled now is read as given (the cache may lag behind it).
        if id.uid == uid {
            return Some(claim.status.as_ref().map(|s| s.phase).unwrap_or_default());
        }
        cached
            .get(id)
            .map(|c| c.status.as_ref().map(|s| s.phase).unwrap_or_default())
    };
    let holds = found.cycle.edges.iter().all(|edge| {
        matches!(
            phase_of(&edge.waiter),
            Some(ClaimPhase::Waiting | ClaimPhase::Lost)
        ) && phase_of(&edge.held_by) == Some(ClaimPhase::Granted)
    });
    if !holds {
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
