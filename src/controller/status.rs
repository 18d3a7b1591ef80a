//! Writing status the same way everywhere: server-side apply with the controller's one field
//! manager, events, and what a claim's phase change counts and tells.

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;

use super::context::Context;
use crate::claim_lifecycle::{Notice, Tally};
use crate::resources::LockClaim;

/// The field manager of everything the controller writes.
pub const MANAGER: &str = "lockkeeper";

/// Server-side applies `status` to the object's status subresource (forced: the controller
/// is the only writer of status). With `if_unchanged`, the write carries the object's
/// resourceVersion and gets 409 if the object changed since it was read: what is derived
/// from the transition (events, metrics) then happens once, from the latest object.
pub async fn apply<K>(
    api: &Api<K>,
    object: &K,
    status: &impl Serialize,
    if_unchanged: bool,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut patch =
        json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
    if if_unchanged && let Some(version) = &object.meta().resource_version {
        patch["metadata"] = json!({"resourceVersion": version});
    }
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Records an event about `object`; a failure is logged, never fatal.
pub async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    object: &K,
    warning: bool,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(err) = ctx
        .recorder()
        .publish(&event, &object.object_ref(&()))
        .await
    {
        if namespace_terminating(&err) {
            tracing::debug!(object = ?object.meta().name, %err, "no event: the namespace is being deleted");
        } else {
            tracing::warn!(object = ?object.meta().name, %err, "could not record an event");
        }
    }
}

/// Counts a phase change in the metrics and posts its event.
pub async fn record_transition(
    ctx: &Context,
    claim: &LockClaim,
    (tallies, notice): (Vec<Tally>, Option<Notice>),
) {
    let lock = &claim.spec.lock;
    for tally in tallies {
        match tally {
            Tally::Granted => ctx.process.metrics.granted(lock),
            Tally::Waited(waited) => ctx.process.metrics.waited(lock, waited),
            Tally::Released => ctx.process.metrics.released(lock),
            Tally::Expired => ctx.process.metrics.expired(lock),
            Tally::Lost => ctx.process.metrics.lost(lock),
            Tally::Held(held) => ctx.process.metrics.held(lock, held),
        }
    }
    if let Some(notice) = notice {
        publish(
            ctx,
            claim,
            notice.warning,
            notice.reason,
            &notice.action,
            notice.note,
        )
        .await;
    }
}

/// Whether the API server refused a write because the namespace is being deleted (403 with
/// the cause `NamespaceTerminating`): expected for the events of claims released there.
fn namespace_terminating(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status
        .details
        .as_ref()
        .is_some_and(|details| details.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
}

#[cfg(test)]
mod tests {
    use super::namespace_terminating;

    /// The answer kube-apiserver's namespace lifecycle admission gives a create in a
    /// namespace that is being deleted.
    fn refusal(cause: &str) -> kube::Error {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
            "code": 403,
            "message": "events.events.k8s.io \"x\" is forbidden: unable to create new content in namespace e2e because it is being terminated",
            "details": {"name": "x", "group": "events.k8s.io", "kind": "events",
                "causes": [{"reason": cause, "message": "namespace e2e is being terminated", "field": "metadata.namespace"}]},
        }))
        .unwrap();
        kube::Error::Api(Box::new(status))
    }

    #[test]
    fn an_event_refused_in_a_terminating_namespace_is_expected() {
        assert!(namespace_terminating(&refusal("NamespaceTerminating")));
        assert!(!namespace_terminating(&refusal("FieldValueInvalid")));
    }
}
