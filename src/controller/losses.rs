//! Grants lost with the ZooKeeper session. When a term ends that way, every claim it had
//! granted is marked `Lost` (the same status and event as any other transition, from
//! [`claim_lifecycle::status_after`] and [`claim_lifecycle::transition`]), its holder is
//! evicted where the lock asks for it, and its lock is fenced for the lock's lock-delay before
//! anyone is granted it again.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::contenders::Lost;
use super::context::{Context, Fences, add_fence};
use super::holder_writes;
use super::status;
use crate::claim_lifecycle::{self, HeldBack, LockFacts, Node, Outcome};
use crate::resources::{ClaimPhase, LockClaim, LockClaimStatus};

/// Marks the term's lost grants `Lost` (with an event), evicts their holders where their
/// lock asks for it; answers the locks to fence, each until its lock-delay has passed since
/// its holder was told.
pub async fn fence_lost_grants(ctx: &Arc<Context>) -> Fences {
    let mut fenced = Fences::new();
    for Lost {
        claim: claim_ref,
        node,
        reason,
    } in ctx.term.contenders.lost()
    {
        let claims: Api<LockClaim> = Api::namespaced(
            ctx.process.client.clone(),
            claim_ref.namespace.as_deref().unwrap_or_default(),
        );
        // The status as the API server has it now: the term's cache may be behind.
        let Ok(Some(claim)) = claims.get_opt(&claim_ref.name).await else {
            continue;
        };
        let current = claim.status.clone().unwrap_or_default();
        // Only a grant this term made went with its session. Another leader may have taken
        // over while this one was away (paused, cut off) and granted the claim anew.
        if current.phase != ClaimPhase::Granted || !shows_grant_of(&current, &node) {
            continue;
        }
        // The term's lock cache still holds what the locks said when the term ended.
        let lock = ctx.caches.locks.get(&claim.lock_ref());
        let now = Timestamp::now();
        let lock_facts = lock.as_deref().map(LockFacts::of);
        let held_back_until = claim_lifecycle::held_back_until(lock_facts.as_ref(), now);
        let message = format!("the grant was lost: {reason}; queued again after the lock-delay");
        let outcome = Outcome {
            phase: ClaimPhase::Lost,
            position: None,
            sequence: current.sequence,
            znode: None,
            fencing_token: None,
            message: message.clone(),
            reason: claim_lifecycle::LOST,
            held_back_until,
        };
        let wanted =
            claim_lifecycle::status_after(&current, &outcome, claim.meta().generation, now);
        match status::write(&claims, &claim, claim.status.as_ref(), &wanted).await {
            Ok(()) => {
                let created = claim.meta().creation_timestamp.as_ref().map(|t| t.0);
                let transition = claim_lifecycle::transition(&current, &outcome, created, now);
                status::record_transition(ctx, &claim, transition).await;
            }
            // The claim changed since it was read: another leader has taken it on.
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(err) => {
                tracing::warn!(claim = %claim.name_any(), %err, "could not mark a lost grant")
            }
        }
        if lock.as_ref().is_some_and(|l| l.spec.evict_on_loss)
            && let Err(err) = holder_writes::evict_holder(ctx, &claim).await
        {
            tracing::warn!(claim = %claim.name_any(), %err, "could not evict the holder of a lost grant");
        }
        // Without a lock-delay the fence lasts until the claims are queued again in order.
        let until = held_back_until.unwrap_or(now);
        let why = format!("claim {}'s grant was lost", claim.name_any());
        add_fence(&mut fenced, claim.lock_ref(), HeldBack { until, why });
    }
    fenced
}

/// A claim's node went on its own (deleted by another ZooKeeper client): its holder may still
/// be working, and the lock is held back at once, before the claim next in line is decided on,
/// until the claim's own reconcile has written its end and evicted its holder (see
/// [`claim_lifecycle::decide`]), which then fences the lock for its lock-delay.
pub fn fence_lost_node(ctx: &Context, claim: &ObjectRef<LockClaim>, uid: &str) {
    if let Some(claim) = ctx.caches.claims.get(claim) {
        ctx.end_pending(claim.lock_ref(), uid.to_string());
    }
}

/// Whether the status shows the grant of the contender at `node`: its znode (or, on a status
/// written before znodes were shown, its sequence).
fn shows_grant_of(status: &LockClaimStatus, node: &Node) -> bool {
    match &status.znode {
        Some(znode) => *znode == node.path,
        None => status.sequence == Some(node.sequence),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_grant_of_this_terms_node_is_taken_for_its_own() {
        let node = Node {
            sequence: 7,
            path: "/lockkeeper/team/db/_c_u-lock-0000000007".into(),
        };
        let shown = |znode: Option<&str>, sequence: Option<i64>| LockClaimStatus {
            phase: ClaimPhase::Granted,
            znode: znode.map(String::from),
            sequence,
            ..Default::default()
        };
        assert!(shows_grant_of(&shown(Some(&node.path), Some(7)), &node));
        // Another leader granted the claim anew, with a node of its own session.
        let newer = "/lockkeeper/team/db/_c_u-lock-0000000009";
        assert!(!shows_grant_of(&shown(Some(newer), Some(9)), &node));
        // A status written before znodes were shown: the sequence tells.
        assert!(shows_grant_of(&shown(None, Some(7)), &node));
        assert!(!shows_grant_of(&shown(None, Some(9)), &node));
    }
}
