//! The DistributedLock reconciler: writes who holds the lock and how many wait, read from the
//! lock's ZooKeeper queue (so clients outside Kubernetes count too).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::claims::MANAGER;
use super::context::Context;
use crate::resources::{ClaimPhase, DistributedLock, DistributedLockStatus, LockClaim, LockHolder};
use crate::zookeeper::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("ZooKeeper: {0}")]
    Engine(#[from] EngineError),
}

pub struct LockContext {
    pub shared: Arc<Context>,
    pub claims: Store<LockClaim>,
}

pub async fn reconcile(lock: Arc<DistributedLock>, ctx: Arc<LockContext>) -> Result<Action, Error> {
    if lock.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = lock.namespace().unwrap_or_default();
    let current = lock.status.clone().unwrap_or_default();
    let generation = lock.meta().generation;
    let condition = |status: &str, reason: &str, message: String| {
        let since = current
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready" && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(k8s_openapi::jiff::Timestamp::now()));
        Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: since,
            observed_generation: generation,
        }
    };
    let wanted = match ctx.shared.lock_spec(&lock) {
        Err(err) => DistributedLockStatus {
            conditions: vec![condition("False", "InvalidSpec", err.to_string())],
            observed_generation: generation,
            ..Default::default()
        },
        Ok(spec) => {
            let queue = ctx.shared.engine.queue(&spec).await?;
            // Claims of this lock by UID, to name the holders.
            let claims: HashMap<String, Arc<LockClaim>> = ctx
                .claims
                .state()
                .into_iter()
                .filter(|c| {
                    c.namespace().as_deref() == Some(namespace.as_str())
                        && c.spec.lock == lock.name_any()
                })
                .filter_map(|c| Some((c.uid()?, c)))
                .collect();
            let mut holders = Vec::new();
            let mut external = 0;
            for entry in queue.holders() {
                match entry.owner.as_ref().and_then(|owner| claims.get(owner)) {
                    Some(claim) => {
                        let status = claim.status.clone().unwrap_or_default();
                        holders.push(LockHolder {
                            claim: claim.name_any(),
                            holder: claim.spec.holder.clone(),
                            mode: claim.spec.mode,
                            fencing_token: entry.fencing_token.map(|t| t.0).unwrap_or_default(),
                            granted_at: status
                                .granted_at
                                .filter(|_| status.phase == ClaimPhase::Granted),
                        });
                    }
                    None => external += 1,
                }
            }
            let waiting = queue.waiting() as u32;
            ctx.shared.metrics.queue_length(&lock.name_any(), waiting);
            DistributedLockStatus {
                holders,
                waiting,
                external_holders: external,
                zookeeper_path: Some(spec.dir()),
                conditions: vec![condition("True", "Serving", "queued in ZooKeeper".into())],
                observed_generation: generation,
            }
        }
    };
    if wanted != current {
        let api: Api<DistributedLock> = Api::namespaced(ctx.shared.client.clone(), &namespace);
        let patch = json!({"apiVersion": "lockkeeper.dev/v1alpha1", "kind": "DistributedLock", "status": wanted});
        api.patch_status(
            &lock.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    Ok(Action::await_change())
}

pub fn error_policy(lock: Arc<DistributedLock>, error: &Error, ctx: Arc<LockContext>) -> Action {
    tracing::warn!(lock = %lock.name_any(), %error, "lock status refresh failed; retrying");
    ctx.shared.metrics.reconcile_error("DistributedLock");
    Action::requeue(Duration::from_secs(1))
}
