//! What the controller writes to a claim's holder: a Job resumed when its claim is granted,
//! a Pod or a Job's pods evicted when a grant is lost on a lock that asks for it. Each write
//! is conditional on the copy of the holder the decision was made on (its UID, and for a
//! resume its resourceVersion), so a controller acting on an old view — paused, cut off, or
//! just behind its watch — gets a conflict instead of changing a holder that has moved on.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::context::Context;
use crate::resources::{HolderKind, LockClaim};

/// Whether the holder took the write.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Yes,
    /// The holder changed since it was read, or is gone: decide again on its newer copy.
    HolderChanged,
}

/// Resumes the claim's holder Job, as the Job cache has it (or the API, when the cache does
/// not have it yet): only that Job (its UID), and only if it has not changed since.
pub async fn resume_job(ctx: &Context, claim: &LockClaim) -> Result<Applied, kube::Error> {
    let jobs: Api<Job> = ctx.api_beside(claim);
    let name = &claim.spec.holder.name;
    let job = match ctx.cached_holder_job(claim) {
        Some(job) => job.as_ref().clone(),
        None => match jobs.get_opt(name).await? {
            Some(job) => job,
            None => return Ok(Applied::HolderChanged),
        },
    };
    let patch = json!({
        "metadata": {"uid": job.uid(), "resourceVersion": job.resource_version()},
        "spec": {"suspend": false},
    });
    match jobs
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(Applied::Yes),
        Err(err) if is_precondition_failure(&err) => Ok(Applied::HolderChanged),
        Err(err) => Err(err),
    }
}

/// Deletes the holder Pod, or the holder Job's pods, so an old holder stops working; each
/// pod by its UID, so a pod of the same name made since is left alone. True once every pod
/// is deleted (terminating) or gone; a failure is logged, and answers false: the caller keeps
/// the lock from the next holder until an eviction goes through.
pub async fn evict_holder(ctx: &Context, claim: &LockClaim) -> bool {
    let pods: Api<Pod> = ctx.api_beside(claim);
    let name = &claim.spec.holder.name;
    let victims = match claim.spec.holder.kind {
        HolderKind::Pod => pods
            .get_opt(name)
            .await
            .map(|pod| pod.into_iter().collect()),
        HolderKind::Job => pods
            .list(&ListParams::default().labels(&format!("job-name={name}")))
            .await
            .map(|list| list.items),
        HolderKind::Lease => Ok(Vec::new()),
    };
    let victims: Vec<Pod> = match victims {
        Ok(victims) => victims,
        Err(err) => {
            tracing::warn!(claim = %claim.name_any(), %err, "could not find the old holder to evict");
            return false;
        }
    };
    let mut evicted = true;
    for pod in victims {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.meta().uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(&pod.name_any(), &params).await {
            Ok(_) => {}
            Err(err) if is_precondition_failure(&err) => {}
            Err(err) => {
                tracing::warn!(claim = %claim.name_any(), pod = %pod.name_any(), %err, "could not evict the old holder");
                evicted = false;
            }
        }
    }
    evicted
}

/// 409 (a resourceVersion or UID precondition failed) or 404 (the object is gone).
fn is_precondition_failure(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409 || status.code == 404)
}
