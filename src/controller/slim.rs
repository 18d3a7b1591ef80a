//! What the watch caches keep of each object: only what the controller reads. With
//! thousands of claims and their holder pods, full objects (managed fields, pod specs,
//! container statuses, `kubectl apply` annotations) would be most of the controller's memory.

use k8s_openapi::api::batch::v1::{Job, JobSpec, JobStatus};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::claim_lifecycle::holders::{JOB_NAME_LABEL, JOB_UID_LABEL, KUEUE_QUEUE_LABEL};
use crate::resources::LOCKS_ANNOTATION;

fn metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    // Of the labels, only the one that says another queue manages a Job, and the one that
    // says which Job made a pod, are read.
    meta.labels = meta.labels.take().map(|labels| {
        labels
            .into_iter()
            .filter(|(key, _)| {
                [KUEUE_QUEUE_LABEL, JOB_UID_LABEL, JOB_NAME_LABEL].contains(&key.as_str())
            })
            .collect()
    });
    // Of the annotations, only the locks a holder asks for are read.
    meta.annotations = meta.annotations.take().and_then(|mut annotations| {
        let locks = annotations.remove(LOCKS_ANNOTATION)?;
        Some([(LOCKS_ANNOTATION.to_string(), locks)].into())
    });
}

/// A pod: its name and phase (when it ended).
pub fn pod(pod: &mut Pod) {
    metadata(&mut pod.metadata);
    pod.spec = None;
    pod.status = pod.status.take().map(|status| PodStatus {
        phase: status.phase,
        ..Default::default()
    });
}

/// A job: whether it is suspended, and its conditions (when it ended).
pub fn job(job: &mut Job) {
    metadata(&mut job.metadata);
    job.spec = job.spec.take().map(|spec| JobSpec {
        suspend: spec.suspend,
        ..Default::default()
    });
    job.status = job.status.take().map(|status| JobStatus {
        conditions: status.conditions,
        ..Default::default()
    });
}

/// A lock or claim: everything but its managed fields (their spec and status are read).
pub fn without_managed_fields<K: kube::Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_keeps_its_name_and_phase_and_a_job_its_suspension_and_conditions() {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "n", "uid": "u",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "managedFields": [{"manager": "kubectl"}]},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            "status": {"phase": "Succeeded", "podIP": "10.0.0.1"},
        }))
        .unwrap();
        pod(&mut p);
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "n", "uid": "u"}, "status": {"phase": "Succeeded"}})
        );
        let mut j: Job = serde_json::from_value(json!({
            "metadata": {"name": "j"},
            "spec": {"suspend": true, "template": {"spec": {"containers": [{"name": "main", "image": "busybox"}]}}},
            "status": {"active": 1, "conditions": [{"type": "Complete", "status": "True"}]},
        }))
        .unwrap();
        job(&mut j);
        assert_eq!(
            crate::claim_lifecycle::holders::job_state("j", Some(&j)),
            crate::claim_lifecycle::HolderState::Ended("Job j Complete".into())
        );
        assert_eq!(j.spec.as_ref().unwrap().suspend, Some(true));
        assert!(j.status.as_ref().unwrap().active.is_none());
    }
}
