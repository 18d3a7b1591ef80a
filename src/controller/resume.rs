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
use tokio::time::Instant;

use super::context::{Context, Fences};
use super::installation::{self, Serving};
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
/// for [`Context::term_resumed`], its watches do not). `fenced` names the locks (with their
/// lock-delay) whose grants this process lost with its session; a lock is fenced too for
/// what is left of its lock-delay after the grants its claims show `Lost`, whoever marked
/// them. `None` when the caches closed first (the term is ending).
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
    for claim in claims.state() {
        if was_queued(&claim) {
            by_lock.entry(claim.lock_ref()).or_default().push(claim);
        }
    }
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
        let shown = lock_delay_shown(lock, &lock_claims, Timestamp::now())
            .map(|left| Instant::now() + left);
        match fenced
            .get(&lock_ref)
            .copied()
            .max(shown)
            .filter(|until| *until > Instant::now())
        {
            Some(until) => requeue_after_fence(ctx, lock_ref, until, lock.clone(), lock_claims),
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

/// How much of the lock's lock-delay is left after the grants its claims show `Lost` (each
/// from its `releasedAt`). Whichever replica marked them, the delay holds on after a change
/// of leader: the replica taking over reads it from the claims.
fn lock_delay_shown(
    lock: &DistributedLock,
    claims: &[Arc<LockClaim>],
    now: Timestamp,
) -> Option<Duration> {
    let delay = Duration::from_secs(lock.spec.lock_delay_seconds?);
    claims
        .iter()
        .filter_map(|claim| claim.status.as_ref())
        .filter(|status| status.phase == ClaimPhase::Lost)
        .filter_map(|status| status.released_at.as_ref())
        .filter_map(|lost| {
            let since = now.duration_since(lost.0).try_into().unwrap_or_default();
            delay.checked_sub(since).filter(|left| !left.is_zero())
        })
        .max()
}

/// Fences a lock until `until`, and queues its claims again then, in order.
fn requeue_after_fence(
    ctx: &Arc<Context>,
    lock_ref: ObjectRef<DistributedLock>,
    until: Instant,
    lock: Arc<DistributedLock>,
    claims: Vec<Arc<LockClaim>>,
) {
    ctx.term
        .fences
        .lock()
        .expect("fences lock")
        .insert(lock_ref.clone(), until);
    let ctx = ctx.clone();
    tokio::spawn(async move {
        // A term that ends meanwhile (its session lost) has no queue to put them in: the next
        // term resumes them from what the claims show.
        tokio::select! {
            () = tokio::time::sleep_until(until) => {}
            () = ctx.term.ended.cancelled() => return,
        }
        requeue_in_order(&ctx, &lock, &claims).await;
        ctx.term
            .fences
            .lock()
            .expect("fences lock")
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
    fn a_leader_taking_over_keeps_the_lock_delay_of_grants_shown_lost() {
        let now: Timestamp = "2026-11-26T10:00:10Z".parse().expect("a time");
        let at = |second: i64| {
            now.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(second - 10))
                .expect("a time")
        };
        let claims = [
            claim(ClaimPhase::Lost, Some(at(4))),
            claim(ClaimPhase::Lost, Some(at(7))),
            claim(ClaimPhase::Released, Some(at(9))),
            claim(ClaimPhase::Waiting, None),
        ];
        // Lost at 4 s and 7 s with a 5 s delay: fenced until 12 s, 2 s from now; a release is
        // no loss.
        assert_eq!(
            lock_delay_shown(&lock(Some(5)), &claims, now),
            Some(Duration::from_secs(2))
        );
        // Past the delay, or no delay: no fence.
        assert_eq!(lock_delay_shown(&lock(Some(3)), &claims, now), None);
        assert_eq!(lock_delay_shown(&lock(None), &claims, now), None);
    }
}
