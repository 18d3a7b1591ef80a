//! Reconciles on a handoff's critical path, run at once.
//!
//! kube-runtime's scheduler passes every reconcile request through tokio-util's `DelayQueue`,
//! which rounds each deadline up to the next millisecond tick of its timer wheel: a request
//! made for "now" waits 1–2 ms (seen in the controller's traces). A handoff takes two such
//! hops — the holder ended, so its claim is released; the next contender was granted, so its
//! claim shows it — against a floor of a few milliseconds for the whole handoff. The fast
//! lane runs those two reconciles itself, at once. Every other trigger, and whatever retry a
//! fast-lane reconcile asks for, goes through kube-runtime as before. Reconciles of one claim
//! never overlap: each first takes the claim's turn ([`Turns`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{OwnedMutexGuard, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::claims;
use super::context::Context;
use crate::claim_lifecycle::HolderState;
use crate::resources::LockClaim;

/// Where the claims to reconcile at once are sent.
#[derive(Clone)]
pub struct FastLane {
    requests: mpsc::UnboundedSender<ObjectRef<LockClaim>>,
}

impl FastLane {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<ObjectRef<LockClaim>>) {
        let (requests, received) = mpsc::unbounded_channel();
        (FastLane { requests }, received)
    }

    /// Reconciles `claim` now (the fast lane stops with its term: then nothing happens).
    pub fn reconcile(&self, claim: ObjectRef<LockClaim>) {
        let _ = self.requests.send(claim);
    }

    /// Reconciles the claims of a holder that ended now: they release their grants.
    pub fn holder_changed(&self, holder: &HolderState, claims: &[ObjectRef<LockClaim>]) {
        if matches!(holder, HolderState::Ended(_) | HolderState::Failed(_)) {
            for claim in claims {
                self.reconcile(claim.clone());
            }
        }
    }
}

/// Runs the fast lane's reconciles, at most `concurrency` at once, until `stopping` is
/// cancelled, then lets those under way finish. A claim already ended (a pod that ended long
/// ago, seen again when the watch lists) is left to kube-runtime. A reconcile that failed, or
/// asks to be looked at again, is handed to kube-runtime (`claim_triggers`), which runs it
/// again and keeps its retries and requeues.
pub async fn run(
    ctx: Arc<Context>,
    mut requests: mpsc::UnboundedReceiver<ObjectRef<LockClaim>>,
    claim_triggers: mpsc::UnboundedSender<ObjectRef<LockClaim>>,
    concurrency: usize,
    stopping: CancellationToken,
) {
    let mut running = JoinSet::new();
    loop {
        tokio::select! {
            Some(claim) = requests.recv(), if running.len() < concurrency.max(1) => {
                let Some(cached) = ctx.caches.claims.get(&claim) else {
                    continue;
                };
                if cached.status.as_ref().is_some_and(|s| s.phase.is_final()) {
                    continue;
                }
                let (ctx, triggers) = (ctx.clone(), claim_triggers.clone());
                running.spawn(async move {
                    let done = matches!(
                        claims::reconcile(cached, ctx).await,
                        Ok(action) if action == Action::await_change()
                    );
                    if !done {
                        let _ = triggers.send(claim);
                    }
                });
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
            () = stopping.cancelled() => break,
        }
    }
    while running.join_next().await.is_some() {}
}

/// One reconcile at a time per claim (by UID), across kube-runtime's runner and the fast
/// lane. Hand-made: a map of async mutexes, each dropped once nobody holds or awaits it.
#[derive(Default)]
pub struct Turns {
    claims: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A claim's turn, held until dropped.
pub struct Turn<'a> {
    turns: &'a Turns,
    uid: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Turns {
    /// Waits until no other reconcile of the claim runs, and takes its turn.
    pub async fn take(&self, uid: &str) -> Turn<'_> {
        let mutex = self
            .claims
            .lock()
            .expect("turns lock")
            .entry(uid.to_string())
            .or_default()
            .clone();
        Turn {
            turns: self,
            uid: uid.to_string(),
            guard: Some(mutex.lock_owned().await),
        }
    }

    /// Claims with a turn held or awaited.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.claims.lock().expect("turns lock").len()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut claims = self.turns.claims.lock().expect("turns lock");
        drop(self.guard.take());
        // Only the map holds it: nobody else holds or awaits this claim's turn.
        if claims
            .get(&self.uid)
            .is_some_and(|mutex| Arc::strong_count(mutex) == 1)
        {
            claims.remove(&self.uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_claims_turn_waits_for_the_reconcile_under_way_and_others_do_not() {
        let turns = Arc::new(Turns::default());
        let first = turns.take("a").await;
        // Another claim takes its turn at once.
        let other = turns.take("b").await;
        drop(other);
        let waiting = {
            let turns = turns.clone();
            tokio::spawn(async move {
                let _turn = turns.take("a").await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a second turn of a claim waits");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the turn is taken once the first is over")
            .unwrap();
        // Nothing is kept for claims nobody reconciles.
        assert_eq!(turns.len(), 0);
    }

    #[test]
    fn only_claims_of_a_holder_that_ended_take_the_fast_lane() {
        let (lane, mut requests) = FastLane::new();
        let claims = [ObjectRef::new("c").within("team")];
        lane.holder_changed(&HolderState::Running, &claims);
        lane.holder_changed(&HolderState::SuspendedJob, &claims);
        assert!(requests.try_recv().is_err());
        lane.holder_changed(&HolderState::Ended("Pod p Succeeded".into()), &claims);
        assert_eq!(requests.try_recv().unwrap(), claims[0]);
    }
}
