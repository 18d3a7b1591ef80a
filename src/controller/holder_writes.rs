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
use crate::claim_lifecycle::holders;
use crate::resources::{HolderKind, LOCKS_ANNOTATION, LockClaim, declared_locks};

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
    if !holders::is_bound_holder(claim, &job.metadata) {
        return Ok(Applied::HolderChanged);
    }
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

/// Stops an old holder: deletes the holder Pod, or suspends the holder Job (so it makes no
/// new pods) and deletes the pods it made; each object by its UID, so one of the same name made
/// since is left alone. `Ok` once every pod is deleted (terminating) or gone; the caller keeps
/// the lock from the next holder until then.
pub async fn evict_holder(ctx: &Context, claim: &LockClaim) -> Result<(), kube::Error> {
    let pods: Api<Pod> = ctx.api_beside(claim);
    let name = &claim.spec.holder.name;
    let victims: Vec<Pod> = match claim.spec.holder.kind {
        HolderKind::Pod => pods
            .get_opt(name)
            .await?
            .into_iter()
            .filter(|pod| holders::is_bound_holder(claim, &pod.metadata))
            .collect(),
        HolderKind::Job => {
            let job_uid = suspend_job(ctx, claim).await?;
            let made = pods
                .list(&ListParams::default().labels(&format!("job-name={name}")))
                .await?;
            made.items
                .into_iter()
                .filter(|pod| made_by_job(pod, name, job_uid.as_deref()))
                .collect()
        }
        HolderKind::Lease => Vec::new(),
    };
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
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Suspends the claim's holder Job, as the Job cache has it (by its UID): the Job controller
/// makes no new pod for it, and lockkeeper resumes it if its claim is granted again. Answers
/// the Job's UID; `None` when the Job is gone.
async fn suspend_job(ctx: &Context, claim: &LockClaim) -> Result<Option<String>, kube::Error> {
    let jobs: Api<Job> = ctx.api_beside(claim);
    let name = &claim.spec.holder.name;
    let job = match ctx.cached_holder_job(claim) {
        Some(job) => Some(job.as_ref().clone()),
        None => jobs.get_opt(name).await?,
    };
    // A Job of the same name made since is another holder: only the bound one's pods go.
    let bound = claim.status.as_ref().and_then(|s| s.holder_uid.clone());
    let Some(job) = job else {
        return Ok(bound);
    };
    let uid = job.metadata.uid.clone().unwrap_or_default();
    if bound.as_ref().is_some_and(|bound| *bound != uid) {
        return Ok(bound);
    }
    let mut patch = json!({"metadata": {"uid": uid}, "spec": {"suspend": true}});
    if declared_locks(job.metadata.annotations.as_ref()).is_empty() {
        // A Job that ran without declaring its locks (made running, or resumed by an older
        // lockkeeper) is suspended by lockkeeper now: it declares the locks its claims name, so
        // that it is resumed once it holds them again.
        patch["metadata"]["annotations"] = json!({LOCKS_ANNOTATION: claimed_locks(ctx, claim)});
    }
    match jobs
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(Some(uid)),
        Err(err) if is_precondition_failure(&err) => Ok(Some(uid)),
        Err(err) => Err(err),
    }
}

/// The locks the claims of `claim`'s holder name, comma-separated, in order.
fn claimed_locks(ctx: &Context, claim: &LockClaim) -> String {
    let namespace = claim.namespace().unwrap_or_default();
    let holder = &claim.spec.holder;
    let mut locks: Vec<String> = ctx
        .caches
        .index
        .of_holder(&namespace, holder.kind, &holder.name)
        .iter()
        .filter_map(|sibling| ctx.caches.claims.get(sibling))
        .map(|sibling| sibling.spec.lock.clone())
        .chain([claim.spec.lock.clone()])
        .collect();
    locks.sort();
    locks.dedup();
    locks.join(",")
}

/// Whether the Job `name` (with UID `uid`, when known) made `pod`: its controller is that Job,
/// or, orphaned when the Job was deleted, it carries the Job controller's label with that UID.
/// A name label anyone may set is not enough to be deleted.
fn made_by_job(pod: &Pod, name: &str, uid: Option<&str>) -> bool {
    let owned = pod.metadata.owner_references.iter().flatten().any(|owner| {
        owner.controller == Some(true)
            && owner.kind == "Job"
            && owner.name == name
            && uid.is_none_or(|uid| owner.uid == uid)
    });
    let orphaned = uid.is_some()
        && pod
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(holders::JOB_UID_LABEL))
            .map(String::as_str)
            == uid;
    owned || orphaned
}

/// 409 (a resourceVersion or UID precondition failed) or 404 (the object is gone).
fn is_precondition_failure(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409 || status.code == 404)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_pods_the_holder_job_made_are_evicted() {
        let pod = |owner: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p", "ownerReferences": owner}}))
                .unwrap()
        };
        let job = |name: &str, uid: &str| {
            json!([{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid,
                    "controller": true}])
        };
        assert!(made_by_job(
            &pod(job("nightly", "u1")),
            "nightly",
            Some("u1")
        ));
        // A Job of the same name made since, or another Job's pod labelled job-name=nightly.
        assert!(!made_by_job(
            &pod(job("nightly", "u2")),
            "nightly",
            Some("u1")
        ));
        assert!(!made_by_job(
            &pod(job("other", "u1")),
            "nightly",
            Some("u1")
        ));
        // A pod someone else made and labelled like the Job's.
        assert!(!made_by_job(&pod(json!([])), "nightly", None));
        // The Job is gone: its own pods, by name.
        assert!(made_by_job(&pod(job("nightly", "u1")), "nightly", None));
        // Orphaned by the Job's deletion: the Job controller's UID label, with the bound UID.
        let orphan: Pod = serde_json::from_value(json!({"metadata": {"name": "p",
            "labels": {"batch.kubernetes.io/controller-uid": "u1"}}}))
        .unwrap();
        assert!(made_by_job(&orphan, "nightly", Some("u1")));
        assert!(!made_by_job(&orphan, "nightly", Some("u2")));
        assert!(!made_by_job(&orphan, "nightly", None));
    }
}
