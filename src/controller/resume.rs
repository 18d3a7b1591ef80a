//! Taking over: the claims a previous leader (another process, or this one before its
//! session was lost) had queued are queued again in their old order — holders first, then
//! waiters by their old sequence — so holders keep their grants and waiters their places.
//! Locks whose grants were lost abnormally are fenced: nobody is granted them again before
//! their lock-delay has passed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::ObjectRef;
use tokio::time::Instant;

use super::context::Context;
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

/// Whether an API error may pass by itself (server errors, throttling, the connection).
pub fn is_transient(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// [`resume`], retried with backoff (0.2 s doubling to 10 s) while the API answers with
/// transient errors: a term starts once the API lets it, without giving up leadership.
pub async fn resume_with_retries(
    ctx: &Arc<Context>,
    claims: &Api<LockClaim>,
    locks: &Api<DistributedLock>,
    fenced: HashMap<ObjectRef<DistributedLock>, Duration>,
) -> Result<usize, kube::Error> {
    let mut pause = Duration::from_millis(200);
    loop {
        match resume(ctx, claims, locks, fenced.clone()).await {
            Err(err) if is_transient(&err) => {
                tracing::warn!(%err, retry_in = ?pause, "listing claims and locks to resume failed");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
            }
            result => return result,
        }
    }
}

/// Queues every previously queued claim again, lock by lock in order. `fenced` names the
/// locks (with their lock-delay) whose grants this process lost with its session.
pub async fn resume(
    ctx: &Arc<Context>,
    claims: &Api<LockClaim>,
    locks: &Api<DistributedLock>,
    fenced: HashMap<ObjectRef<DistributedLock>, Duration>,
) -> Result<usize, kube::Error> {
    let all_locks: HashMap<ObjectRef<DistributedLock>, DistributedLock> = locks
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|lock| (ObjectRef::from_obj(&lock), lock))
        .collect();
    let mut by_lock: HashMap<ObjectRef<DistributedLock>, Vec<LockClaim>> = HashMap::new();
    for claim in claims.list(&ListParams::default()).await?.items {
        if was_queued(&claim) {
            let lock =
                ObjectRef::new(&claim.spec.lock).within(&claim.namespace().unwrap_or_default());
            by_lock.entry(lock).or_default().push(claim);
        }
    }
    let mut queued = 0;
    let mut now = Vec::new();
    for (lock_ref, mut lock_claims) in by_lock {
        let Some(lock) = all_locks.get(&lock_ref) else {
            continue; // the claim reconciler reports the missing lock
        };
        lock_claims.sort_by_key(resume_order);
        queued += lock_claims.len();
        match fenced.get(&lock_ref) {
            Some(delay) => {
                ctx.fences
                    .lock()
                    .expect("fences lock")
                    .insert(lock_ref.clone(), Instant::now() + *delay);
                let (ctx, lock) = (ctx.clone(), lock.clone());
                let delay = *delay;
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    requeue_in_order(&ctx, &lock, &lock_claims).await;
                    ctx.fences.lock().expect("fences lock").remove(&lock_ref);
                });
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
    Ok(queued)
}

/// Locks whose claims are queued again at the same time when a term starts.
const RESUME_CONCURRENCY: usize = 64;

async fn requeue_in_order(ctx: &Context, lock: &DistributedLock, claims: &[LockClaim]) {
    let spec = match ctx.lock_spec(lock) {
        Ok(spec) => spec,
        Err(err) => {
            tracing::warn!(lock = %lock.name_any(), %err, "cannot queue this lock's claims");
            return;
        }
    };
    for claim in claims {
        if let Err(err) = ctx.queue_claim(&spec, claim).await {
            // The claim reconciler queues it (out of order) when it comes to it.
            tracing::warn!(claim = %claim.name_any(), %err, "could not queue a claim again in order");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..Default::default()
        }))
    }

    #[test]
    fn server_errors_and_throttling_are_retried_refusals_are_not() {
        assert!(is_transient(&api_error(500)));
        assert!(is_transient(&api_error(503)));
        assert!(is_transient(&api_error(429)));
        assert!(
            !is_transient(&api_error(403)),
            "RBAC will not change by itself"
        );
        assert!(!is_transient(&api_error(404)));
    }
}
