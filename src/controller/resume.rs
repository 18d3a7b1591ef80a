//! Taking over: the claims a previous leader (another process, or this one before its
//! session was lost) had queued are queued again in their old order — holders first, then
//! waiters by their old sequence — so holders keep their grants and waiters their places.
//! Locks whose grants were lost abnormally are fenced: nobody is granted them again before
//! their lock-delay has passed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use super::claims;
use super::context::{Context, Fences, add_fence};
use super::installation::{self, Serving};
use crate::claim_lifecycle::{self, HeldBack};
use crate::resources::{ClaimPhase, DistributedLock, LockClaim};

/// The order claims of one lock are queued again in.
fn resume_order(claim: &LockClaim) -> (u8, i64, String) {
    let status = claim.status.clone().unwrap_or_default();
    let rank = match status.phase {
        ClaimPhase::Granted => 0,
        ClaimPhase::Lost => 1,
        _ => 2,
    };
    let created = claim
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    (rank, status.sequence.unwrap_or(i64::MAX), created)
}

fn was_queued(claim: &LockClaim) -> bool {
    matches!(
        claim.status.as_ref().map(|s| s.phase),
        Some(ClaimPhase::Granted | ClaimPhase::Waiting | ClaimPhase::Lost)
    ) && claim.metadata.deletion_timestamp.is_none()
}

/// Queues every previously queued claim again, lock by lock in order, once the claim and
/// lock caches are filled (they fill while the queues are rebuilt: a term's reconciles wait
/// for [`Context::term_resumed`], its watches do not). `fenced` names the locks whose grants
/// this process lost with its session; a lock is fenced too until the latest `heldBackUntil`
/// its claims show, in any phase, whichever replica wrote it: a lapsed lease, an expiry, a
/// revoke or a loss holds the lock back across a change of leader, a graceful one (whose
/// closing session deleted the held-back node) as well. `None` when the caches closed first
/// (the term is ending).
pub async fn resume(
    ctx: &Arc<Context>,
    claims: &Store<LockClaim>,
    fenced: Fences,
) -> Option<usize> {
    if !caches_filled(ctx, claims).await {
        return None;
    }
    let all_locks: HashMap<ObjectRef<DistributedLock>, Arc<DistributedLock>> = ctx
        .caches
        .locks
        .state()
        .into_iter()
        .map(|lock| (ObjectRef::from_obj(lock.as_ref()), lock))
        .collect();
    let mut by_lock: HashMap<ObjectRef<DistributedLock>, Vec<Arc<LockClaim>>> = HashMap::new();
    let mut fences = fenced;
    let started = Timestamp::now();
    for claim in claims.state() {
        let lock_ref = claim.lock_ref();
        if let Some(lock) = all_locks.get(&lock_ref)
            && let Some(held_back) = held_back_shown(lock, &claim)
            && held_back.until > started
        {
            add_fence(&mut fences, lock_ref.clone(), held_back);
        }
        if was_queued(&claim) {
            by_lock.entry(lock_ref).or_default().push(claim);
        }
    }
    // Every fence holds from now on, also on locks with no claim to queue again: a claim made
    // later is not granted before it has passed either.
    fences.retain(|_, fence| fence.until > started);
    ctx.term
        .fences
        .lock()
        .expect("fences lock")
        .extend(fences.clone());
    let mut queued = 0;
    let mut now = Vec::new();
    for (lock_ref, mut lock_claims) in by_lock {
        let Some(lock) = all_locks.get(&lock_ref) else {
            continue; // the claim reconciler reports the missing lock
        };
        if let Serving::Elsewhere(_) = installation::serving(&ctx.process.installation, lock) {
            continue;
        }
        lock_claims.sort_by_key(|claim| resume_order(claim));
        queued += lock_claims.len();
        match fences.get(&lock_ref) {
            Some(fence) => {
                requeue_after_fence(ctx, lock_ref, fence.until, lock.clone(), lock_claims)
            }
            None => now.push((lock, lock_claims)),
        }
    }
    // Order matters within a lock only: locks are queued again side by side.
    futures::stream::iter(now)
        .for_each_concurrent(RESUME_CONCURRENCY, |(lock, lock_claims)| async move {
            requeue_in_order(ctx, lock, &lock_claims).await
        })
        .await;
    Some(queued)
}

/// The hold-back a claim shows on its lock: its `heldBackUntil`, or, on a claim marked `Lost`
/// by a lockkeeper that did not write one, its lock's lock-delay from its `releasedAt` (whole
/// seconds: a second is added, as the release may have come up to a second later).
fn held_back_shown(lock: &DistributedLock, claim: &LockClaim) -> Option<HeldBack> {
    let status = claim.status.as_ref()?;
    let until = match (&status.held_back_until, status.phase) {
        // Written with another replica's clock, maybe: a margin for the skew between them.
        (Some(until), _) => until.0.checked_add(REPLICA_CLOCK_MARGIN).ok()?,
        (None, ClaimPhase::Lost) => {
            let delay = Duration::from_secs(lock.spec.lock_delay_seconds? + 1);
            status.released_at.as_ref()?.0.checked_add(delay).ok()?
        }
        _ => return None,
    };
    let why = format!(
        "claim {}'s grant ended {} ({:?})",
        claim.name_any(),
        status.granted_reason().unwrap_or("abnormally"),
        status.phase
    );
    Some(HeldBack { until, why })
}

/// How far the clocks of two replicas may be apart, as a hold-back written by one and honoured
/// by the other allows for.
const REPLICA_CLOCK_MARGIN: Duration = Duration::from_secs(1);

/// Queues a fenced lock's claims again once its fence has passed (`until`), in order, and
/// lifts the fence then.
fn requeue_after_fence(
    ctx: &Arc<Context>,
    lock_ref: ObjectRef<DistributedLock>,
    until: Timestamp,
    lock: Arc<DistributedLock>,
    claims: Vec<Arc<LockClaim>>,
) {
    ctx.term
        .requeues_pending
        .lock()
        .expect("requeues lock")
        .insert(lock_ref.clone());
    let ctx = ctx.clone();
    let wait = claim_lifecycle::elapsed(Timestamp::now(), until);
    tokio::spawn(async move {
        // A term that ends meanwhile (its session lost) has no queue to put them in: the next
        // term resumes them from what the claims show.
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = ctx.term.ended.cancelled() => return,
        }
        // The claims as they are now: one deleted or ended during the fence is not queued.
        let claims: Vec<Arc<LockClaim>> = claims
            .iter()
            .filter_map(|claim| ctx.caches.claims.get(&ObjectRef::from_obj(claim.as_ref())))
            .filter(|now| was_queued(now))
            .collect();
        requeue_in_order(&ctx, &lock, &claims).await;
        for claim in &claims {
            let cached = ctx.caches.claims.get(&ObjectRef::from_obj(claim.as_ref()));
            if cached.is_none_or(|cached| cached.uid() != claim.uid()) {
                // Deleted while it was being queued: its departure may have found nothing.
                let uid = claim.uid().unwrap_or_default();
                if let Err(err) = claims::leave_for_good(&ctx, &uid, &claim.lock_ref()).await {
                    tracing::warn!(claim = %claim.name_any(), %err, "could not take a deleted claim out of the queue");
                }
            }
        }
        ctx.term
            .requeues_pending
            .lock()
            .expect("requeues lock")
            .remove(&lock_ref);
    });
}

/// Waits until the watch caches are filled; false if they are gone. This is their one
/// waiter: kube-runtime's `DelayedInit` wakes only the last poller of a store.
async fn caches_filled(ctx: &Context, claims: &Store<LockClaim>) -> bool {
    claims.wait_until_ready().await.is_ok()
        && ctx.caches.locks.wait_until_ready().await.is_ok()
        && ctx.caches.pods.wait_until_ready().await.is_ok()
        && ctx.caches.jobs.wait_until_ready().await.is_ok()
}

/// Locks whose claims are queued again at the same time when a term starts.
const RESUME_CONCURRENCY: usize = 256;

async fn requeue_in_order(ctx: &Context, lock: &DistributedLock, claims: &[Arc<LockClaim>]) {
    let spec = match lock.lock_spec(&ctx.process.root) {
        Ok(spec) => spec,
        Err(err) => {
            tracing::warn!(lock = %lock.name_any(), %err, "cannot queue this lock's claims");
            return;
        }
    };
    let answers = ctx.queue_claims_in_order(&spec, claims).await;
    for (claim, answer) in claims.iter().zip(answers) {
        if let Err(err) = answer {
            // The claim reconciler queues it (out of order) when it comes to it.
            tracing::warn!(claim = %claim.name_any(), %err, "could not queue a claim again in order");
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::resources::{DistributedLockSpec, LockClaimStatus};

    fn claim(phase: ClaimPhase, released_at: Option<Timestamp>) -> Arc<LockClaim> {
        let mut claim: LockClaim = serde_json::from_value(serde_json::json!({
            "apiVersion": "lockkeeper.dev/v1alpha1", "kind": "LockClaim",
            "metadata": {"name": "c", "namespace": "team"},
            "spec": {"lock": "db", "holder": {"kind": "Pod", "name": "p"}},
        }))
        .expect("a claim");
        claim.status = Some(LockClaimStatus {
            phase,
            released_at: released_at.map(Time),
            ..Default::default()
        });
        Arc::new(claim)
    }

    fn lock(lock_delay_seconds: Option<u64>) -> DistributedLock {
        let spec: DistributedLockSpec =
            serde_json::from_value(serde_json::json!({"type": "Mutex"})).expect("a lock spec");
        DistributedLock::new(
            "db",
            DistributedLockSpec {
                lock_delay_seconds,
                ..spec
            },
        )
    }

    #[test]
    fn a_leader_taking_over_keeps_every_hold_back_its_claims_show() {
        let now: Timestamp = "2026-11-26T10:00:10Z".parse().expect("a time");
        let at = |second: i64| {
            now.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(second - 10))
                .expect("a time")
        };
        let held_back = |phase, reason: &str, until: Option<Timestamp>| {
            let mut claim = claim(phase, Some(at(4)));
            let status = Arc::make_mut(&mut claim).status.as_mut().unwrap();
            status.held_back_until = until.map(Time);
            status.conditions = vec![crate::resources::conditions::condition(
                "Granted",
                "False",
                reason,
                String::new(),
                &[],
                None,
                now,
            )];
            claim
        };
        let lock = lock(Some(5));
        // A lapsed lease, a revoke, an expiry: each held back until its heldBackUntil, in any
        // phase, whoever wrote it.
        for (phase, reason) in [
            (ClaimPhase::Released, "LeaseLapsed"),
            (ClaimPhase::Revoked, "Revoked"),
            (ClaimPhase::Expired, "HoldExpired"),
            (ClaimPhase::Lost, "Lost"),
        ] {
            let shown = held_back_shown(&lock, &held_back(phase, reason, Some(at(12))));
            // A second more, for the clocks of two replicas.
            assert_eq!(shown.map(|h| h.until), Some(at(13)), "{phase:?}");
        }
        // A claim marked Lost by a lockkeeper that wrote no heldBackUntil: its releasedAt plus
        // the lock-delay, and a second for its whole seconds.
        let old_loss = claim(ClaimPhase::Lost, Some(at(4)));
        assert_eq!(
            held_back_shown(&lock, &old_loss).map(|h| h.until),
            Some(at(10))
        );
        // A routine release holds nothing back.
        assert_eq!(
            held_back_shown(&lock, &claim(ClaimPhase::Released, Some(at(9)))),
            None
        );
    }
}
