//! The custom resources, group `lockkeeper.dev`, version `v1alpha1`: their types, schemas
//! (with CEL rules) and printer columns. `lockkeeper crd` prints them; `crds/` holds that output.

pub mod conditions;
pub mod distributed_lock;
pub mod lock_claim;

pub use distributed_lock::{
    DEFAULT_HISTORY_LIMIT, DeadlockPolicy, DistributedLock, DistributedLockSpec,
    DistributedLockStatus, GrantOutcome, GrantRecord, Installation, LockHolder, LockSpecError,
    LockType, ZooKeeperLocation,
};
pub use lock_claim::{
    ClaimMode, ClaimPhase, HolderKind, HolderRef, LockClaim, LockClaimSpec, LockClaimStatus,
};

use kube::CustomResourceExt;

/// The annotation of a suspended holder Job that asks lockkeeper to resume it: the locks it
/// waits for, comma-separated (`lockkeeper.dev/locks: "a,b"`). The Job is resumed once it holds
/// every one of them. Without it a suspended Job is never resumed (its claims say so): a claim
/// made after the Job would come too late to hold it back.
pub const LOCKS_ANNOTATION: &str = "lockkeeper.dev/locks";

/// The lock names a holder's [`LOCKS_ANNOTATION`] lists.
pub fn declared_locks(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Vec<String> {
    annotations
        .and_then(|a| a.get(LOCKS_ANNOTATION))
        .map(|locks| {
            locks
                .split(',')
                .map(str::trim)
                .filter(|lock| !lock.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The annotation that asks the controller to revoke a claim (`kubectl lock release` sets
/// it): the reason, in words. The claim then ends `Revoked`.
pub const REVOKE_ANNOTATION: &str = "lockkeeper.dev/revoke";
/// Who asked for the revocation, as the API server named them to `kubectl lock release`.
pub const REVOKE_REQUESTED_BY_ANNOTATION: &str = "lockkeeper.dev/revoke-requested-by";

/// A request to revoke a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub reason: String,
    pub requested_by: String,
}

/// The revocation the claim's annotations ask for, if any.
pub fn revocation(claim: &LockClaim) -> Option<Revocation> {
    let annotations = claim.metadata.annotations.as_ref()?;
    let reason = annotations.get(REVOKE_ANNOTATION)?;
    Some(Revocation {
        reason: match reason.trim() {
            "" => "no reason given".to_string(),
            reason => reason.to_string(),
        },
        requested_by: annotations
            .get(REVOKE_REQUESTED_BY_ANNOTATION)
            .map(|by| by.trim())
            .filter(|by| !by.is_empty())
            .unwrap_or("someone unnamed")
            .to_string(),
    })
}

/// The file names in `crds/` and the YAML of each CRD, as `lockkeeper crd` prints them.
pub fn crd_documents() -> Vec<(&'static str, String)> {
    let yaml = |crd| {
        let mut crd = serde_json::to_value(crd).expect("a CRD serializes");
        with_kubernetes_formats(&mut crd);
        serde_yaml::to_string(&crd).expect("a CRD serializes to YAML")
    };
    vec![
        (
            "distributedlocks.lockkeeper.dev.yaml",
            yaml(DistributedLock::crd()),
        ),
        ("lockclaims.lockkeeper.dev.yaml", yaml(LockClaim::crd())),
    ]
}

/// Rewrites the integer formats schemars gives Rust's unsigned types (`uint32`, `uint64`),
/// which kube-apiserver does not know and warns about on every apply, to the `int64` it
/// stores them as; their `minimum: 0` stays.
fn with_kubernetes_formats(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(format) = map.get_mut("format")
                && matches!(format.as_str(), Some("uint32" | "uint64"))
            {
                *format = "int64".into();
            }
            map.values_mut().for_each(with_kubernetes_formats);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(with_kubernetes_formats),
        _ => {}
    }
}

/// All CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> String {
    crd_documents()
        .into_iter()
        .map(|(_, yaml)| format!("---\n{yaml}"))
        .collect()
}
