//! `LockClaim`: one holder's request for a lock — which lock, in which mode, for which Pod,
//! Job or Lease — and, in status, where it stands in line and the fencing token of its grant.

use clap::ValueEnum;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use kube::runtime::reflector::ObjectRef;
use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::lock_rules::Mode;

/// What the claim asks for: a lock, a mode, and the holder that keeps it once granted.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lockkeeper.dev",
    version = "v1alpha1",
    kind = "LockClaim",
    plural = "lockclaims",
    singular = "lockclaim",
    shortname = "claim",
    shortname = "claims",
    shortname = "lc",
    category = "lockkeeper",
    namespaced,
    doc = "A request by one holder (Pod, Job or Lease) for a DistributedLock.",
    status = "LockClaimStatus",
    printcolumn = r#"{"name": "Lock", "type": "string", "jsonPath": ".spec.lock"}"#,
    printcolumn = r#"{"name": "Mode", "type": "string", "jsonPath": ".spec.mode"}"#,
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Position", "type": "integer", "jsonPath": ".status.position"}"#,
    printcolumn = r#"{"name": "Holder", "type": "string", "jsonPath": ".spec.holder.name"}"#,
    printcolumn = r#"{"name": "Token", "type": "integer", "priority": 1, "jsonPath": ".status.fencingToken"}"#,
    printcolumn = r#"{"name": "Message", "type": "string", "priority": 1, "jsonPath": ".status.message"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.holder.kind == 'Lease' || !has(self.leaseDurationSeconds)").message("leaseDurationSeconds is only for Lease holders"))]
#[x_kube(validation = Rule::new("self.holder.kind != 'Lease' || has(self.leaseDurationSeconds)").message("a Lease holder needs leaseDurationSeconds"))]
#[x_kube(validation = Rule::new("self.lock == oldSelf.lock && self.mode == oldSelf.mode && self.holder == oldSelf.holder").message("lock, mode and holder cannot change; create a new claim"))]
#[serde(rename_all = "camelCase")]
pub struct LockClaimSpec {
    /// The name of a DistributedLock in the claim's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub lock: String,
    /// Exclusive, or Shared (ReadWrite locks only).
    #[serde(default)]
    pub mode: ClaimMode,
    /// Who holds the lock once it is granted; the grant ends when the holder ends.
    pub holder: HolderRef,
    /// Lease holders: the grant ends when `renewTime` is older than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub lease_duration_seconds: Option<u32>,
    /// Lease holders: renewed by the holder (`lockkeeper run` does it) while it lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_time: Option<MicroTime>,
    /// Give up after waiting this long (the claim ends `Expired`). 0 is a try-lock: granted
    /// at once or not at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub wait_timeout_seconds: Option<u64>,
}

impl LockClaim {
    /// The DistributedLock the claim asks for: `spec.lock` in the claim's namespace.
    pub fn lock_ref(&self) -> ObjectRef<super::DistributedLock> {
        ObjectRef::new(&self.spec.lock).within(&self.namespace().unwrap_or_default())
    }
}

// How a claim wants its lock; also `--mode` of `lockkeeper gate` and `run` (a plain comment:
// a doc comment would enter the CRD schema).
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum,
)]
pub enum ClaimMode {
    #[default]
    #[value(name = "Exclusive")]
    Exclusive,
    #[value(name = "Shared")]
    Shared,
}

impl From<ClaimMode> for Mode {
    fn from(mode: ClaimMode) -> Self {
        match mode {
            ClaimMode::Exclusive => Mode::Exclusive,
            ClaimMode::Shared => Mode::Shared,
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HolderRef {
    pub kind: HolderKind,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HolderKind {
    Pod,
    Job,
    Lease,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ClaimPhase {
    /// Seen, not queued yet.
    #[default]
    Pending,
    /// Queued in ZooKeeper, `position` contenders ahead.
    Waiting,
    /// Holds the lock; `fencingToken` is set.
    Granted,
    /// The grant or the wait ended normally (holder ended, claim withdrawn).
    Released,
    /// Waited longer than `waitTimeoutSeconds`, or held longer than the lock's
    /// `maxHoldSeconds`.
    Expired,
    /// The grant was revoked by a backend failure (ZooKeeper session lost); the claim is
    /// queued again after the lock's lock-delay if its holder still runs.
    Lost,
    /// The claim cannot be served as it is: `message` says why.
    Invalid,
    /// Released by hand (`kubectl lock release`): `message` says why and who asked. A grant
    /// it held ends as on a loss: the lock is held back for its lock-delay, and the holder
    /// evicted where the lock asks for it.
    Revoked,
}

impl ClaimPhase {
    /// Phases a claim never leaves.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ClaimPhase::Released | ClaimPhase::Expired | ClaimPhase::Revoked
        )
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LockClaimStatus {
    #[serde(default)]
    pub phase: ClaimPhase,
    /// Contenders ahead in the queue (Waiting only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    /// The sequence number of the claim's znode (its place in line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<i64>,
    /// The grant's fencing token (the znode's creation zxid); it only grows from grant to
    /// grant. Pass it to the resource the lock protects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<i64>,
    /// The claim's znode (its path) while it is in line or holds the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub znode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<Time>,
    /// A grant this claim held ended abnormally (a lapsed lease, an expiry, a revoke, a lost
    /// node or session) on a lock with a lock-delay: nobody is granted the lock before this
    /// time, whichever controller replica leads by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_back_until: Option<Time>,
    /// The UID of the holder Pod or Job the claim was queued for. A new object of the same name
    /// is another holder: it neither inherits the grant nor is resumed or evicted for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl LockClaimStatus {
    /// The reason of the `Granted` condition: how the claim's grant (or wait) last changed,
    /// such as `Granted`, `HolderSucceeded`, `LeaseLapsed` or `Revoked`.
    pub fn granted_reason(&self) -> Option<&str> {
        self.conditions
            .iter()
            .find(|c| c.type_ == "Granted")
            .map(|c| c.reason.as_str())
    }
}
