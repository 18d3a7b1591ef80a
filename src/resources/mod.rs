//! The custom resources, group `lockkeeper.dev`, version `v1alpha1`: their types, schemas
//! (with CEL rules) and printer columns. `lockkeeper crd` prints them; `crds/` holds that output.

pub mod distributed_lock;
pub mod lock_claim;

pub use distributed_lock::{
    DistributedLock, DistributedLockSpec, DistributedLockStatus, LockHolder, LockType,
    ZooKeeperLocation,
};
pub use lock_claim::{
    ClaimMode, ClaimPhase, HolderKind, HolderRef, LockClaim, LockClaimSpec, LockClaimStatus,
};

use kube::CustomResourceExt;

/// The file names in `crds/` and the YAML of each CRD, as `lockkeeper crd` prints them.
pub fn crd_documents() -> Vec<(&'static str, String)> {
    let yaml = |crd| serde_yaml::to_string(&crd).expect("a CRD serializes to YAML");
    vec![
        (
            "distributedlocks.lockkeeper.dev.yaml",
            yaml(DistributedLock::crd()),
        ),
        ("lockclaims.lockkeeper.dev.yaml", yaml(LockClaim::crd())),
    ]
}

/// All CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> String {
    crd_documents()
        .into_iter()
        .map(|(_, yaml)| format!("---\n{yaml}"))
        .collect()
}
