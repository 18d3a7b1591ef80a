//! `lockkeeper gate`: the init container. It makes (or adopts, after a restart) the pod's
//! claims, one per lock and owned by the pod so that they go with it, in lock-name order (see
//! [`crate::client::lock_set`]), waits on watches until all are granted, writes the fencing
//! tokens for the main containers and exits 0. The locks are then held until the pod ends:
//! the controller follows the pod, not this process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ObjectMeta};
use kube::{Client, ResourceExt};

use crate::client::claim_client::{self, Adoption, ClaimError, ClaimWatch, Outcome};
use crate::client::lock_set::{self, WantedLock};
use crate::resources::{HolderKind, HolderRef, LockClaim, LockClaimSpec};

/// The pod the gate runs in, from the downward API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

impl PodIdentity {
    pub fn from_env() -> Result<Self, ClaimError> {
        let var = |name: &'static str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or(ClaimError::MissingEnv(name))
        };
        Ok(PodIdentity {
            name: var("POD_NAME")?,
            namespace: var("POD_NAMESPACE")?,
            uid: var("POD_UID")?,
        })
    }
}

#[derive(Clone, Debug)]
pub struct GateRequest {
    /// In lock-name order, each once ([`lock_set::wanted_locks`]).
    pub locks: Vec<WantedLock>,
    /// Give up (exit non-zero) after waiting this long for all the locks; the claims expire
    /// at the same time.
    pub timeout: Option<Duration>,
    pub token_file: Option<PathBuf>,
}

/// `<pod>-<lock>`, cut to the 253 characters a name may have (then made unique by the pod's
/// uid): one claim per pod and lock, found again when the init container restarts.
pub fn claim_name(pod: &PodIdentity, lock: &str) -> String {
    let name = format!("{}-{}", pod.name, lock);
    if name.len() <= 253 {
        return name;
    }
    let uid: String = pod
        .uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    let keep = 253 - uid.len() - 1;
    let head = name[..keep].trim_end_matches(['-', '.']);
    format!("{head}-{uid}")
}

pub fn claim_for(pod: &PodIdentity, wanted: &WantedLock, timeout: Option<Duration>) -> LockClaim {
    let mut claim = LockClaim::new(
        &claim_name(pod, &wanted.lock),
        LockClaimSpec {
            lock: wanted.lock.clone(),
            mode: wanted.mode,
            holder: HolderRef {
                kind: HolderKind::Pod,
                name: pod.name.clone(),
            },
            lease_duration_seconds: None,
            renew_time: None,
            wait_timeout_seconds: timeout.map(claim_client::whole_seconds),
        },
    );
    claim.metadata = ObjectMeta {
        name: claim.metadata.name.take(),
        owner_references: Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            ..OwnerReference::default()
        }]),
        ..claim_client::client_metadata(&pod.namespace, "lockkeeper-gate")
    };
    claim
}

/// Whether an existing claim of the gate's name is this pod's.
pub fn adoption(pod: &PodIdentity, wanted: &WantedLock, existing: &LockClaim) -> Adoption {
    let owner_uids: Vec<&str> = existing
        .owner_references()
        .iter()
        .filter(|o| o.kind == "Pod")
        .map(|o| o.uid.as_str())
        .collect();
    let ours =
        existing.spec.holder.kind == HolderKind::Pod && existing.spec.holder.name == pod.name;
    if !ours {
        return Adoption::Foreign(format!(
            "its holder is {:?} {}",
            existing.spec.holder.kind, existing.spec.holder.name
        ));
    }
    if !owner_uids.contains(&pod.uid.as_str()) {
        return Adoption::Replace;
    }
    if existing.spec.lock != wanted.lock || existing.spec.mode != wanted.mode {
        return Adoption::Foreign(format!(
            "it asks for lock {} in mode {:?}",
            existing.spec.lock, existing.spec.mode
        ));
    }
    Adoption::Adopt
}

/// Waits until all the pod's claims are granted and returns their fencing tokens (in the
/// request's lock order), written to the token file when one is asked for. A gate that gives
/// up (a claim expired, or the wait timed out) releases the claims it holds.
pub async fn gate(
    client: Client,
    pod: PodIdentity,
    request: GateRequest,
) -> Result<Vec<i64>, ClaimError> {
    let api: Api<LockClaim> = Api::namespaced(client, &pod.namespace);
    // One after another in lock order: the controller then sees each claim's earlier ones.
    let mut claims = Vec::new();
    for wanted in &request.locks {
        let claim = claim_client::create_or_adopt(
            &api,
            &claim_for(&pod, wanted, request.timeout),
            |existing| adoption(&pod, wanted, existing),
        )
        .await?;
        eprintln!(
            "lockkeeper: pod {}/{} waits for lock {} ({:?}) with claim {}",
            pod.namespace,
            pod.name,
            wanted.lock,
            wanted.mode,
            claim.name_any()
        );
        claims.push(claim);
    }
    let names: Vec<String> = claims.iter().map(ResourceExt::name_any).collect();
    let mut watch = ClaimWatch::new(&api, &names);
    let outcome = claim_client::wait_for_grants_within(&mut watch, &names, request.timeout).await?;
    let (refused, locks, reason) = match outcome {
        Some(Outcome::Granted(tokens)) => {
            let granted: Vec<(&str, i64)> = request
                .locks
                .iter()
                .map(|w| w.lock.as_str())
                .zip(tokens.iter().copied())
                .collect();
            let lines = lock_set::token_lines(&granted);
            if let Some(path) = &request.token_file {
                write_tokens(path, &lines)?;
            }
            print!("{lines}");
            eprintln!(
                "lockkeeper: {} granted to pod {} (fencing tokens {tokens:?})",
                lock_set::describe(&request.locks),
                pod.name
            );
            return Ok(tokens);
        }
        Some(Outcome::Refused { index, reason }) => (
            Some(index),
            lock_set::describe(&request.locks[index..=index]),
            reason,
        ),
        None => (
            None,
            lock_set::describe(&request.locks),
            format!(
                "not granted within {}",
                humantime::format_duration(request.timeout.unwrap_or_default())
            ),
        ),
    };
    // Leave the queues, so no lock is held or granted for a pod that gave up. The refused
    // claim stays: its status says why.
    let others = claims
        .iter()
        .enumerate()
        .filter(|(index, _)| Some(*index) != refused)
        .map(|(_, claim)| claim);
    claim_client::release_all(&api, others, Duration::from_secs(10)).await?;
    Err(ClaimError::NotGranted { locks, reason })
}

/// Writes the token lines ([`lock_set::token_lines`]) atomically: a reader never sees half.
pub fn write_tokens(path: &Path, lines: &str) -> Result<(), ClaimError> {
    let error = |source| ClaimError::TokenFile {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(error)?;
    }
    let partial = path.with_extension("partial");
    std::fs::write(&partial, lines).map_err(error)?;
    std::fs::rename(&partial, path).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::ClaimMode;

    fn pod(name: &str, uid: &str) -> PodIdentity {
        PodIdentity {
            name: name.into(),
            namespace: "ns".into(),
            uid: uid.into(),
        }
    }

    fn wanted(lock: &str) -> WantedLock {
        WantedLock {
            lock: lock.into(),
            mode: ClaimMode::Exclusive,
        }
    }

    const TIMEOUT: Option<Duration> = Some(Duration::from_millis(1500));

    #[test]
    fn one_claim_per_pod_and_lock_with_a_valid_name() {
        assert_eq!(claim_name(&pod("web-0", "u"), "db"), "web-0-db");
        let long = claim_name(&pod(&"p".repeat(200), "0f3c9a1e-77"), &"l".repeat(100));
        assert_eq!(long.len(), 253);
        assert!(long.ends_with("-0f3c9a1e"), "{long}");
    }

    #[test]
    fn the_claim_is_owned_by_the_pod_and_expires_with_the_gate() {
        let claim = claim_for(&pod("web-0", "uid-1"), &wanted("db"), TIMEOUT);
        assert_eq!(
            claim.spec.holder,
            HolderRef {
                kind: HolderKind::Pod,
                name: "web-0".into()
            }
        );
        assert_eq!(claim.spec.wait_timeout_seconds, Some(2), "rounded up");
        let owner = &claim.owner_references()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Pod", "uid-1"));
        assert_eq!(claim.metadata.namespace.as_deref(), Some("ns"));
    }

    #[test]
    fn a_restarted_gate_adopts_its_claim_and_replaces_an_earlier_pods() {
        let ours = claim_for(&pod("web-0", "uid-1"), &wanted("db"), TIMEOUT);
        assert_eq!(
            adoption(&pod("web-0", "uid-1"), &wanted("db"), &ours),
            Adoption::Adopt
        );
        // The pod was made again under the same name (StatefulSet): the old claim goes.
        assert_eq!(
            adoption(&pod("web-0", "uid-2"), &wanted("db"), &ours),
            Adoption::Replace
        );
        let other = claim_for(&pod("batch", "uid-9"), &wanted("db"), TIMEOUT);
        assert!(matches!(
            adoption(&pod("web-0", "uid-1"), &wanted("db"), &other),
            Adoption::Foreign(why) if why.contains("batch")
        ));
        let mut shared = wanted("db");
        shared.mode = ClaimMode::Shared;
        assert!(matches!(
            adoption(&pod("web-0", "uid-1"), &shared, &ours),
            Adoption::Foreign(_)
        ));
    }

    #[test]
    fn the_token_file_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock/token");
        write_tokens(&path, "4294967301\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4294967301\n");
        write_tokens(&path, "a=4294967400\nb=7\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "a=4294967400\nb=7\n"
        );
    }
}
