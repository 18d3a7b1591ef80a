//! Writing status the same way everywhere: merge patches on the version read, with the
//! controller's one field manager, events, and what a claim's phase change counts and tells.

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::context::Context;
use crate::claim_lifecycle::{Notice, Tally};
use crate::resources::LockClaim;

/// The field manager of everything the controller writes.
pub const MANAGER: &str = "lockkeeper";

/// Writes `wanted` over the status the object had when it was read (`current`) with a JSON
/// merge patch of what differs, carrying the object's resourceVersion: the write gets 409 if
/// the object changed since it was read, so what is derived from the transition (events,
/// metrics) happens once, from the latest object. A merge patch, not server-side apply: the
/// controller is the only writer of status, and kube-apiserver takes about a fifth more
/// merge patches than applies per second (the bench's capacity figures).
pub async fn write<K, S>(
    api: &Api<K>,
    object: &K,
    current: Option<&S>,
    wanted: &S,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch = status_patch(
        object.meta().resource_version.as_deref(),
        current.map(to_value).as_ref(),
        &to_value(wanted),
    );
    api.patch_status(
        &object.name_any(),
        &PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        },
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

fn to_value(status: &impl Serialize) -> Value {
    serde_json::to_value(status).expect("a status serializes to JSON")
}

/// The merge patch that turns status `current` (none yet: `None`) into `wanted`, on the
/// object's resourceVersion.
fn status_patch(resource_version: Option<&str>, current: Option<&Value>, wanted: &Value) -> Value {
    let status = match current {
        Some(current) => merge_diff(current, wanted).unwrap_or_else(|| json!({})),
        None => wanted.clone(),
    };
    let mut patch = json!({"status": status});
    if let Some(version) = resource_version {
        patch["metadata"] = json!({"resourceVersion": version});
    }
    patch
}

/// The JSON merge patch (RFC 7386) that turns `from` into `to`: members changed or added are
/// set, members gone are set to null, anything else (arrays among them) is replaced whole;
/// `None` when nothing differs. Hand-written: json-patch, which kube uses, applies merge
/// patches but does not make them.
fn merge_diff(from: &Value, to: &Value) -> Option<Value> {
    match (from, to) {
        (Value::Object(from), Value::Object(to)) => {
            let mut patch = Map::new();
            for key in from.keys().filter(|key| !to.contains_key(*key)) {
                patch.insert(key.clone(), Value::Null);
            }
            for (key, new) in to {
                let change = match from.get(key) {
                    Some(old) => merge_diff(old, new),
                    None => Some(new.clone()),
                };
                if let Some(change) = change {
                    patch.insert(key.clone(), change);
                }
            }
            (!patch.is_empty()).then_some(Value::Object(patch))
        }
        _ if from == to => None,
        _ => Some(to.clone()),
    }
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
    use super::{merge_diff, namespace_terminating, status_patch};
    use serde_json::json;

    #[test]
    fn a_status_patch_sets_what_changed_and_removes_what_is_gone() {
        let waiting = json!({"phase": "Waiting", "position": 2, "sequence": 7,
            "conditions": [{"type": "Granted", "status": "False"}]});
        let granted = json!({"phase": "Granted", "sequence": 7, "fencingToken": 9,
            "conditions": [{"type": "Granted", "status": "True"}]});
        assert_eq!(
            status_patch(Some("41"), Some(&waiting), &granted),
            json!({"metadata": {"resourceVersion": "41"},
                "status": {"phase": "Granted", "position": null, "fencingToken": 9,
                    "conditions": [{"type": "Granted", "status": "True"}]}})
        );
        // No status yet: all of it.
        assert_eq!(
            status_patch(Some("3"), None, &waiting),
            json!({"metadata": {"resourceVersion": "3"}, "status": waiting})
        );
        // Nothing changed: the write still checks the version, and changes nothing.
        assert_eq!(
            status_patch(None, Some(&waiting), &waiting),
            json!({"status": {}})
        );
    }

    #[test]
    fn a_merge_diff_goes_into_nested_objects_and_replaces_arrays_whole() {
        let from = json!({"holders": [1, 2], "queue": {"waiting": 3, "outside": 1}});
        let to = json!({"holders": [2], "queue": {"waiting": 3, "oldest": "t"}});
        assert_eq!(
            merge_diff(&from, &to),
            Some(json!({"holders": [2], "queue": {"outside": null, "oldest": "t"}}))
        );
        assert_eq!(merge_diff(&from, &from), None);
        assert_eq!(
            merge_diff(&json!(1), &json!({"a": 1})),
            Some(json!({"a": 1}))
        );
    }

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
