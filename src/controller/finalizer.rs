//! Taking a finalizer off (the one claims of lockkeeper 0.1 carry) with a merge patch guarded
//! by the resourceVersion the reconcile read.
//!
//! A reconcile often runs on a cached copy older than the object (a pod or lock event
//! triggers it before the claim's own watch event arrived). A guarded write then gets 409:
//! the object changed since that copy, so its watch event is on the way and reconciles it
//! again. That is not an error to log, and nothing is written from the old copy (such as a
//! finalizer list without another controller's entry).
//!
//! Not `kube::runtime::finalizer`: that helper adds a finalizer and runs a cleanup behind it;
//! here a finalizer only comes off, and claims get none.

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

/// What a finalizer write did.
pub enum Patched {
    /// The finalizer is off (or was never there).
    Applied,
    /// The copy was stale: a newer version is on its way through the watch.
    Stale,
}

fn has(object: &impl Resource, finalizer: &str) -> bool {
    object.finalizers().iter().any(|f| f == finalizer)
}

/// Removes `finalizer` (the object goes once its last finalizer is gone).
pub async fn remove<K>(api: &Api<K>, object: &K, finalizer: &str) -> Result<Patched, kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if !has(object, finalizer) {
        return Ok(Patched::Applied);
    }
    let finalizers: Vec<String> = object
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .cloned()
        .collect();
    match write(api, object, finalizers).await {
        // Gone once its last finalizer went.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Patched::Stale),
        other => other,
    }
}

async fn write<K>(api: &Api<K>, object: &K, finalizers: Vec<String>) -> Result<Patched, kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"metadata": {
        "resourceVersion": object.resource_version(),
        "finalizers": finalizers,
    }});
    match api
        .patch(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(Patched::Applied),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Patched::Stale),
        Err(err) => Err(err),
    }
}
