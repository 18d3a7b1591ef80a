//! `DistributedLock`: a named lock in a namespace, its rules (type, permits, hold limit,
//! lock-delay) and, in status, who holds it and how many wait.

use clap::ValueEnum;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::lock_claim::{ClaimMode, HolderRef};
use crate::lock_paths::{LockPaths, PathRefused};
use crate::lock_rules::{LockKind, RuleError};
use crate::zookeeper::{EngineError, LockSpec};

/// The lock's rules: its type, permits, hold limit, lock-delay, ZooKeeper path, deadlock
/// policy and history length.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lockkeeper.dev",
    version = "v1alpha1",
    kind = "DistributedLock",
    plural = "distributedlocks",
    singular = "distributedlock",
    shortname = "lock",
    shortname = "locks",
    shortname = "dlock",
    category = "lockkeeper",
    namespaced,
    doc = "A lock in a namespace: its type and rules, and who holds it.",
    status = "DistributedLockStatus",
    printcolumn = r#"{"name": "Type", "type": "string", "jsonPath": ".spec.type"}"#,
    printcolumn = r#"{"name": "Holders", "type": "string", "jsonPath": ".status.heldBy"}"#,
    printcolumn = r#"{"name": "Waiting", "type": "integer", "jsonPath": ".status.waiting"}"#,
    printcolumn = r#"{"name": "Path", "type": "string", "priority": 1, "jsonPath": ".status.zookeeperPath"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self.type == 'Semaphore' || !has(self.permits)").message("permits is only for Semaphore locks"))]
#[x_kube(validation = Rule::new("self.type != 'Semaphore' || has(self.permits)").message("a Semaphore lock needs permits"))]
#[x_kube(validation = Rule::new("self.type == oldSelf.type").message("type cannot change; create a new lock"))]
// Holders granted under more permits would not fit fewer, and the lock's queue in ZooKeeper is
// judged by one number at a time: a new number is a new lock.
#[x_kube(validation = Rule::new("!has(oldSelf.permits) || !has(self.permits) || self.permits == oldSelf.permits").message("permits cannot change while the lock exists (its holders were granted under the old number); create a new lock"))]
// A conditional, not `has(…) == has(…)`: kube-apiserver estimates every rule's cost, and
// the comparison of two has() results priced the rule far over the budget of older servers.
#[x_kube(validation = Rule::new("has(oldSelf.zookeeper) ? has(self.zookeeper) && self.zookeeper.path == oldSelf.zookeeper.path : !has(self.zookeeper)").message("zookeeper.path cannot change; create a new lock"))]
#[serde(rename_all = "camelCase")]
pub struct DistributedLockSpec {
    /// Mutex (one holder), ReadWrite (many Shared holders or one Exclusive) or Semaphore
    /// (up to `permits` holders).
    #[serde(default, rename = "type")]
    pub lock_type: LockType,
    /// Semaphore only: how many claims may hold the lock at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub permits: Option<u32>,
    /// A grant held longer than this is revoked (the claim ends `Expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_hold_seconds: Option<u64>,
    /// After a grant is lost abnormally (the controller's ZooKeeper session expired), the
    /// lock is granted again only after this many seconds, so that an old holder that may
    /// still be working has time to notice and stop (Chubby's lock-delay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub lock_delay_seconds: Option<u64>,
    /// When a grant is lost abnormally, delete the holder Pod (or the Job's pods) before
    /// anyone else is granted the lock.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub evict_on_loss: bool,
    /// Where the lock lives in ZooKeeper, for clients outside Kubernetes (Curator, kazoo)
    /// that share it. Default: `<root>/<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zookeeper: Option<ZooKeeperLocation>,
    /// What to do when a deadlock goes through this lock (holders each waiting for a lock the
    /// next one holds): `Report` it on the claims (the default), or `ExpireYoungest`: expire
    /// the youngest waiting claim of the cycle, breaking it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadlock_policy: Option<DeadlockPolicy>,
    /// How many of the last grants `status.history` keeps (default 10; 0 keeps none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub history_limit: Option<u32>,
}

// What a deadlock through the lock brings: `spec.deadlockPolicy` (a plain comment: a doc
// comment would enter the CRD schema).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadlockPolicy {
    Report,
    ExpireYoungest,
}

/// Grants `status.history` keeps when `historyLimit` is not set.
pub const DEFAULT_HISTORY_LIMIT: u32 = 10;

// What kind of lock: `spec.type`; also `--type` of `lockkeeper queue` (a plain comment: a doc
// comment would enter the CRD schema).
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum,
)]
pub enum LockType {
    #[default]
    #[value(name = "mutex")]
    Mutex,
    #[value(name = "readwrite", alias = "read-write")]
    ReadWrite,
    #[value(name = "semaphore")]
    Semaphore,
}

impl LockType {
    /// The grant rules of a lock of this type (`permits` counts for a semaphore only).
    pub fn lock_kind(self, permits: Option<u32>) -> Result<LockKind, RuleError> {
        match self {
            LockType::Mutex => Ok(LockKind::Mutex),
            LockType::ReadWrite => Ok(LockKind::ReadWrite),
            LockType::Semaphore => LockKind::semaphore(permits.unwrap_or(0)),
        }
    }
}

impl DistributedLock {
    /// The engine's view of the lock: its ZooKeeper path (`spec.zookeeper.path`, else
    /// `<root>/<namespace>/<name>`) and grant rules. A path named in the spec must be one the
    /// installation lets the lock's namespace use ([`LockPaths::check`]).
    pub fn lock_spec(&self, paths: &LockPaths) -> Result<LockSpec, LockSpecError> {
        let namespace = self.namespace().unwrap_or_default();
        let kind = self
            .spec
            .lock_type
            .lock_kind(self.spec.permits)
            .map_err(EngineError::from)?;
        Ok(match &self.spec.zookeeper {
            Some(location) => {
                let spec = LockSpec::new(&location.path, kind)?;
                paths.check(&namespace, &location.path)?;
                spec
            }
            None => LockSpec::new(&paths.default_path(&namespace, &self.name_any()), kind)?,
        })
    }
}

/// Why a lock cannot be served.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LockSpecError {
    /// Its path or rules are invalid.
    #[error(transparent)]
    Invalid(#[from] EngineError),
    /// Its path is not one its namespace may use.
    #[error(transparent)]
    PathNotAllowed(#[from] PathRefused),
}

impl LockSpecError {
    /// The reason of the lock's `Ready` condition that says so.
    pub fn reason(&self) -> &'static str {
        match self {
            LockSpecError::Invalid(_) => "InvalidSpec",
            LockSpecError::PathNotAllowed(_) => "PathNotAllowed",
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ZooKeeperLocation {
    /// An absolute znode path, e.g. `/services/billing/locks/nightly`, without empty, `.` or
    /// `..` segments. Outside `<root>/<namespace>/` it must be under a prefix the installation
    /// allows the namespace.
    #[schemars(
        length(min = 2, max = 1024),
        regex(pattern = r"^(/([^/.\x00][^/\x00]*|\.[^/.\x00][^/\x00]*|\.\.[^/\x00]+))+$")
    )]
    pub path: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DistributedLockStatus {
    /// The claims holding the lock now, in grant order.
    #[serde(default)]
    pub holders: Vec<LockHolder>,
    /// The holding claims' names, comma-separated: what `kubectl get locks` shows (a printer
    /// column's JSONPath shows only the first match of `holders[*].claim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by: Option<String>,
    /// How many contenders wait, lockkeeper claims and clients outside Kubernetes alike.
    #[serde(default)]
    pub waiting: u32,
    /// Holders that are not lockkeeper claims (Curator, kazoo clients on the same path).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub external_holders: u32,
    /// The znode directory the lock's contenders queue in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zookeeper_path: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The lockkeeper installation that serves the lock, recorded by the first one to serve
    /// it. Another installation (on another ZooKeeper ensemble, or under another root) leaves
    /// the lock alone, with a warning event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<Installation>,
    /// The last grants of the lock to claims, oldest first (at most `spec.historyLimit`):
    /// who held it, with what token, from when to when, and how each grant ended. Kept after
    /// the claims and their events are gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub history: Vec<GrantRecord>,
}

/// One grant of the lock, in `status.history`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrantRecord {
    /// The LockClaim's name.
    #[schemars(length(max = 253))]
    pub claim: String,
    pub holder: HolderRef,
    pub mode: ClaimMode,
    pub fencing_token: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_at: Option<Time>,
    /// When the grant ended; not set while it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<Time>,
    /// How the grant ended; not set while it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<GrantOutcome>,
}

/// How a grant ended.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantOutcome {
    /// The holder Pod succeeded, or the holder Job completed.
    Succeeded,
    /// The holder Pod or Job failed.
    Failed,
    /// The holder Pod or Job was deleted.
    HolderDeleted,
    /// The claim was deleted (how `lockkeeper run` releases, or by hand).
    ClaimDeleted,
    /// A Lease holder stopped renewing.
    LeaseLapsed,
    /// Held longer than `maxHoldSeconds`, or given up with the holder's other claims.
    Expired,
    /// Lost with the controller's ZooKeeper session, or taken by another client.
    Lost,
    /// Released by hand (`kubectl lock release`).
    Revoked,
    /// Released for another reason.
    Released,
}

/// One lockkeeper installation: its controller replicas, which share a ZooKeeper ensemble and
/// root.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Installation {
    /// The installation's id, kept in its ZooKeeper at `<root>/_installation`.
    #[schemars(length(max = 64))]
    pub id: String,
    /// Where the installation keeps its queues, to find it by: its ZooKeeper connect string
    /// and root.
    #[schemars(length(max = 2048))]
    pub zookeeper: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LockHolder {
    /// The LockClaim's name.
    pub claim: String,
    pub holder: HolderRef,
    pub mode: ClaimMode,
    pub fencing_token: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_at: Option<Time>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(namespace: &str, path: Option<&str>) -> DistributedLock {
        let mut spec = serde_json::json!({"type": "Mutex"});
        if let Some(path) = path {
            spec["zookeeper"] = serde_json::json!({"path": path});
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "lockkeeper.dev/v1alpha1", "kind": "DistributedLock",
            "metadata": {"name": "prod", "namespace": namespace}, "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn a_lock_spec_resolves_its_path_and_refuses_one_its_namespace_may_not_use() {
        let paths = LockPaths::new("/lockkeeper", vec![]);
        let path = |lock: &DistributedLock, paths: &LockPaths| {
            lock.lock_spec(paths).map(|spec| spec.path.to_string())
        };
        assert_eq!(
            path(&lock("a", None), &paths).unwrap(),
            "/lockkeeper/a/prod"
        );
        assert_eq!(
            path(&lock("a", Some("/lockkeeper/a/shared/prod")), &paths).unwrap(),
            "/lockkeeper/a/shared/prod"
        );
        let other = lock("a", Some("/lockkeeper/b/prod"));
        let refused = path(&other, &paths).unwrap_err();
        assert_eq!(refused.reason(), "PathNotAllowed");
        let invalid = path(&lock("a", Some("/lockkeeper/a/x/")), &paths).unwrap_err();
        assert_eq!(invalid.reason(), "InvalidSpec");
        let allowed = LockPaths::new("/lockkeeper", vec!["a=/lockkeeper/b".parse().unwrap()]);
        assert_eq!(path(&other, &allowed).unwrap(), "/lockkeeper/b/prod");
    }
}
