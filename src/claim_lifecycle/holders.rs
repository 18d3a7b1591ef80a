//! Holder liveness: what a claim's Pod, Job or Lease says about its grant. The functions
//! on objects are pure; the controller looks the objects up in its watch caches.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use super::HolderState;
use crate::resources::{HolderKind, LOCKS_ANNOTATION, LockClaim, LockClaimSpec, declared_locks};

/// The state of `claim`'s holder, from its Pod or Job as found (`None`: not found; the one
/// of the other kind is ignored), or from the claim itself for a Lease holder — renewed last
/// at `lease_renewed`, on the controller's clock (see [`LeaseRenewals`]); and when to look
/// again (a Lease's expiry).
pub fn holder_state(
    claim: &LockClaim,
    pod: Option<&Pod>,
    job: Option<&Job>,
    lease_renewed: Option<Timestamp>,
    now: Timestamp,
) -> (HolderState, Option<Duration>) {
    let name = &claim.spec.holder.name;
    let pod = pod.filter(|pod| is_bound_holder(claim, &pod.metadata));
    let job = job.filter(|job| is_bound_holder(claim, &job.metadata));
    match claim.spec.holder.kind {
        HolderKind::Pod => (pod_state(name, pod), None),
        HolderKind::Job => (resumable(claim, job_state(name, job), job), None),
        HolderKind::Lease => {
            let created = claim.metadata.creation_timestamp.as_ref().map(|t| t.0);
            let renewed = lease_renewed.or(claim.spec.renew_time.as_ref().map(|t| t.0));
            lease_state(name, &claim.spec, renewed.or(created), now)
        }
    }
}

/// Whether `holder` (its metadata) is the object the claim holds for: a claim binds to its
/// holder's UID (`status.holderUid`) once granted; before that, any object of the name.
pub fn is_bound_holder(
    claim: &LockClaim,
    holder: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> bool {
    let status = claim.status.as_ref();
    let bound = status
        .filter(|s| s.granted_at.is_some())
        .and_then(|s| s.holder_uid.as_deref());
    bound.is_none_or(|bound| holder.uid.as_deref() == Some(bound))
}

/// The Job that made `pod` (its controller), if a Job did.
pub fn owner_job(
    pod: &Pod,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true) && owner.kind == "Job")
}

/// The UID of the Job that made `pod`: its controller's, or, once orphaned, the Job
/// controller's label's.
pub fn job_uid_of(pod: &Pod) -> Option<&str> {
    owner_job(pod).map(|owner| owner.uid.as_str()).or_else(|| {
        pod.metadata
            .labels
            .as_ref()?
            .get(JOB_UID_LABEL)
            .map(String::as_str)
    })
}

/// The name of the Job that made `pod`: its controller's, or, once the pod is orphaned, the
/// Job controller's label's.
pub fn job_name_of(pod: &Pod) -> Option<&str> {
    owner_job(pod).map(|owner| owner.name.as_str()).or_else(|| {
        pod.metadata
            .labels
            .as_ref()?
            .get(JOB_NAME_LABEL)
            .map(String::as_str)
    })
}

/// Whether any of `pods` is one the claim's holder Job made (the bound one, by UID, once the
/// claim is bound) and has not ended: it may still be working after its Job was deleted.
pub fn job_pods_running<'a>(claim: &LockClaim, pods: impl IntoIterator<Item = &'a Pod>) -> bool {
    let bound = claim.status.as_ref().and_then(|s| s.holder_uid.as_deref());
    pods.into_iter().any(|pod| {
        let owned = owner_job(pod).is_some_and(|owner| {
            owner.name == claim.spec.holder.name && bound.is_none_or(|uid| owner.uid == uid)
        });
        // A pod orphaned when its Job was deleted keeps the label, not the owner.
        let labelled = bound.is_some()
            && pod
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(JOB_UID_LABEL))
                .map(String::as_str)
                == bound;
        (owned || labelled) && pod_state("", Some(pod)) == HolderState::Running
    })
}

/// The label the Job controller puts on a Job's pods: the Job's UID.
pub const JOB_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// The label the Job controller puts on a Job's pods: the Job's name.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

pub fn pod_state(name: &str, pod: Option<&Pod>) -> HolderState {
    let Some(pod) = pod else {
        return HolderState::Missing;
    };
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => HolderState::Ended(format!("Pod {name} Succeeded")),
        Some("Failed") => HolderState::Failed(format!("Pod {name} Failed")),
        _ => HolderState::Running,
    }
}

pub fn job_state(name: &str, job: Option<&Job>) -> HolderState {
    let Some(job) = job else {
        return HolderState::Missing;
    };
    let finished = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|conditions| {
            conditions
                .iter()
                .find(|c| c.status == "True" && matches!(c.type_.as_str(), "Complete" | "Failed"))
        });
    if let Some(condition) = finished {
        let why = format!("Job {name} {}", condition.type_);
        return match condition.type_.as_str() {
            "Complete" => HolderState::Ended(why),
            _ => HolderState::Failed(why),
        };
    }
    if job.spec.as_ref().and_then(|s| s.suspend) == Some(true) {
        HolderState::SuspendedJob
    } else {
        HolderState::Running
    }
}

/// A suspended Job is resumed by lockkeeper only when it asks for that, and only for the locks
/// it names: its [`LOCKS_ANNOTATION`] lists every lock it waits for, this claim's among them —
/// so its whole lock set is known before it starts, however its claims are applied — and no
/// other queue manages it ([`KUEUE_QUEUE_LABEL`]: Kueue suspends Jobs until it admits them).
/// Otherwise the claim says what to change.
fn resumable(claim: &LockClaim, state: HolderState, job: Option<&Job>) -> HolderState {
    let (HolderState::SuspendedJob, Some(job)) = (&state, job) else {
        return state;
    };
    let name = &claim.spec.holder.name;
    let labels = job.metadata.labels.as_ref();
    if let Some(queue) = labels.and_then(|labels| labels.get(KUEUE_QUEUE_LABEL)) {
        return HolderState::NotResumable(format!(
            "Job {name} is managed by Kueue (label {KUEUE_QUEUE_LABEL}: {queue}), which suspends \
             it until it admits it: lockkeeper does not resume Jobs another queue manages. Gate \
             its pods with lockkeeper gate instead"
        ));
    }
    let declared = declared_locks(job.metadata.annotations.as_ref());
    if declared.contains(&claim.spec.lock) {
        return state;
    }
    let mut locks = declared;
    locks.push(claim.spec.lock.clone());
    let fix = format!("{LOCKS_ANNOTATION}: \"{}\"", locks.join(","));
    let why = match locks.len() {
        1 => "does not declare the locks it waits for".to_string(),
        _ => format!("does not declare lock {}", claim.spec.lock),
    };
    HolderState::NotResumable(format!(
        "Job {name} is suspended and {why}: add the annotation {fix} (every lock it claims), \
         and lockkeeper resumes it once it holds all of them"
    ))
}

/// When each Lease holder was last seen renewing, on the controller's clock: a holder writes
/// `renewTime` with its own clock, which may be ahead (a dead holder would seem alive) or behind
/// (a healthy one would seem lapsed). As client-go's leader election does, a renewal is a change
/// of `renewTime`, timed when the controller sees it; a holder first seen (a new claim, or a
/// new leader) gets a whole lease from then.
#[derive(Default)]
pub struct LeaseRenewals {
    seen: std::sync::Mutex<std::collections::HashMap<String, (Option<Timestamp>, Timestamp)>>,
}

impl LeaseRenewals {
    /// When the holder of claim `uid`, whose `renewTime` now says `renew_time`, last renewed.
    pub fn observe(&self, uid: &str, renew_time: Option<Timestamp>, now: Timestamp) -> Timestamp {
        let mut seen = self.seen.lock().expect("lease renewals lock");
        match seen.get(uid) {
            Some((last, at)) if *last == renew_time => *at,
            _ => {
                seen.insert(uid.to_string(), (renew_time, now));
                now
            }
        }
    }

    /// The claim is gone.
    pub fn forget(&self, uid: &str) {
        self.seen.lock().expect("lease renewals lock").remove(uid);
    }
}

/// The label Kueue puts on the Jobs it queues.
pub const KUEUE_QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";

/// A Lease holder lives while it renews: its last renewal, `renewed` (without one, its
/// `renewTime`), is younger than `leaseDurationSeconds`. Also returns when to look again.
pub fn lease_state(
    name: &str,
    spec: &LockClaimSpec,
    renewed: Option<Timestamp>,
    now: Timestamp,
) -> (HolderState, Option<Duration>) {
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).into());
    let Some(renewed) = renewed.or(spec.renew_time.as_ref().map(|t| t.0)) else {
        return (HolderState::Running, Some(duration));
    };
    let age = crate::claim_lifecycle::elapsed(renewed, now);
    if age >= duration {
        (
            HolderState::Lapsed(format!(
                "Lease holder {name} stopped renewing for {}s",
                duration.as_secs()
            )),
            None,
        )
    } else {
        (HolderState::Running, Some(duration - age))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_and_jobs_end_as_the_design_says() {
        let pod = |phase: &str| -> Pod {
            serde_json::from_value(json!({"status": {"phase": phase}})).unwrap()
        };
        assert_eq!(pod_state("p", None), HolderState::Missing);
        assert_eq!(pod_state("p", Some(&pod("Running"))), HolderState::Running);
        assert_eq!(pod_state("p", Some(&pod("Pending"))), HolderState::Running);
        assert_eq!(
            pod_state("p", Some(&pod("Succeeded"))),
            HolderState::Ended("Pod p Succeeded".into())
        );
        assert_eq!(
            pod_state("p", Some(&pod("Failed"))),
            HolderState::Failed("Pod p Failed".into())
        );

        let job = |value: serde_json::Value| -> Job { serde_json::from_value(value).unwrap() };
        assert_eq!(
            job_state(
                "j",
                Some(&job(json!({"spec": {"suspend": true, "template": {}}})))
            ),
            HolderState::SuspendedJob
        );
        assert_eq!(
            job_state(
                "j",
                Some(&job(json!({"spec": {"suspend": false, "template": {}}})))
            ),
            HolderState::Running
        );
        let done = job(json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}));
        assert_eq!(
            job_state("j", Some(&done)),
            HolderState::Ended("Job j Complete".into())
        );
        let failing =
            job(json!({"status": {"conditions": [{"type": "Failed", "status": "False"}]}}));
        assert_eq!(job_state("j", Some(&failing)), HolderState::Running);
    }

    #[test]
    fn a_lease_holder_lives_while_it_renews() {
        let spec: LockClaimSpec = serde_json::from_value(json!({
            "lock": "l", "holder": {"kind": "Lease", "name": "cli"}, "leaseDurationSeconds": 10,
            "renewTime": "2026-01-01T00:00:00.000000Z",
        }))
        .unwrap();
        let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |s: i64| start + k8s_openapi::jiff::SignedDuration::from_secs(s);
        assert_eq!(
            lease_state("cli", &spec, None, at(4)),
            (HolderState::Running, Some(Duration::from_secs(6)))
        );
        assert!(matches!(
            lease_state("cli", &spec, None, at(10)).0,
            HolderState::Lapsed(_)
        ));
    }

    #[test]
    fn a_lease_is_timed_on_the_controllers_clock_whatever_the_holders_clock_says() {
        let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |s: i64| start + k8s_openapi::jiff::SignedDuration::from_secs(s);
        let renewals = LeaseRenewals::default();
        let spec = |renew: Timestamp| -> LockClaimSpec {
            serde_json::from_value(json!({
                "lock": "l", "holder": {"kind": "Lease", "name": "cli"},
                "leaseDurationSeconds": 10, "renewTime": renew.to_string(),
            }))
            .unwrap()
        };
        let state = |renew: Timestamp, now: Timestamp| {
            let renewed = renewals.observe("u", Some(renew), now);
            lease_state("cli", &spec(renew), Some(renewed), now).0
        };
        // A holder whose clock is an hour behind renews every 4 s: alive throughout (its
        // renewTime alone says it lapsed long ago).
        for s in [0, 4, 8, 12, 16] {
            assert_eq!(state(at(s - 3600), at(s)), HolderState::Running, "{s}");
        }
        // A holder whose clock is an hour ahead stops renewing at 20 s: lapsed 10 s later
        // (its renewTime alone says it lives for another hour).
        assert_eq!(state(at(3620), at(20)), HolderState::Running);
        assert_eq!(state(at(3620), at(29)), HolderState::Running);
        assert!(matches!(state(at(3620), at(30)), HolderState::Lapsed(_)));
    }
}
