//! `lockkeeper gate`: the init container. It makes (or adopts, after a restart) the pod's
//! claim, owned by the pod so that it goes with it, waits on a watch until the claim is
//! granted, writes the fencing token for the main containers and exits 0. The lock is then
//! held until the pod ends: the controller follows the pod, not this process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ObjectMeta};
use kube::{Client, Resource, ResourceExt};

use crate::client::claim_client::{self, Adoption, ClaimError, ClaimWatch, Decision};
use crate::resources::{ClaimMode, HolderKind, HolderRef, LockClaim, LockClaimSpec};

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
    pub lock: String,
    pub mode: ClaimMode,
    /// Give up (exit non-zero) after waiting this long; the claim expires at the same time.
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

pub fn claim_for(pod: &PodIdentity, request: &GateRequest) -> LockClaim {
    let mut claim = LockClaim::new(
        &claim_name(pod, &request.lock),
        LockClaimSpec {
            lock: request.lock.clone(),
            mode: request.mode,
            holder: HolderRef {
                kind: HolderKind::Pod,
                name: pod.name.clone(),
            },
            lease_duration_seconds: None,
            renew_time: None,
            wait_timeout_seconds: request.timeout.map(claim_client::whole_seconds),
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
pub fn adoption(pod: &PodIdentity, request: &GateRequest, existing: &LockClaim) -> Adoption {
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
    if existing.spec.lock != request.lock || existing.spec.mode != request.mode {
        return Adoption::Foreign(format!(
            "it asks for lock {} in mode {:?}",
            existing.spec.lock, existing.spec.mode
        ));
    }
    Adoption::Adopt
}

/// Waits until the pod's claim is granted and returns its fencing token, written to the
/// token file when one is asked for.
pub async fn gate(
    client: Client,
    pod: PodIdentity,
    request: GateRequest,
) -> Result<i64, ClaimError> {
    let api: Api<LockClaim> = Api::namespaced(client, &pod.namespace);
    let wanted = claim_for(&pod, &request);
    let claim =
        claim_client::create_or_adopt(&api, &wanted, |existing| adoption(&pod, &request, existing))
            .await?;
    let name = claim.name_any();
    eprintln!(
        "lockkeeper: pod {}/{} waits for lock {} ({:?}) with claim {name}",
        pod.namespace, pod.name, request.lock, request.mode
    );
    let mut watch = ClaimWatch::new(api.clone(), &name);
    let decided =
        match claim_client::wait_for_decision_within(&mut watch, &name, request.timeout).await? {
            Some(decided) => decided,
            None => {
                // Leave the queue, so the lock is never granted to a pod that gave up.
                let uid = claim.meta().uid.clone().unwrap_or_default();
                claim_client::delete_claim(&api, &name, &uid, Duration::from_secs(10)).await?;
                let waited = request.timeout.unwrap_or_default();
                Decision::Refused(format!(
                    "not granted within {}",
                    humantime::format_duration(waited)
                ))
            }
        };
    match decided {
        Decision::Granted { fencing_token } => {
            if let Some(path) = &request.token_file {
                write_token(path, fencing_token)?;
            }
            println!("{fencing_token}");
            eprintln!(
                "lockkeeper: lock {} granted to pod {} (fencing token {fencing_token})",
                request.lock, pod.name
            );
            Ok(fencing_token)
        }
        Decision::Refused(reason) => Err(ClaimError::NotGranted {
            lock: request.lock,
            reason,
        }),
    }
}

/// Writes the token and a newline, atomically (a reader never sees half a token).
pub fn write_token(path: &Path, token: i64) -> Result<(), ClaimError> {
    let error = |source| ClaimError::TokenFile {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(error)?;
    }
    let partial = path.with_extension("partial");
    std::fs::write(&partial, format!("{token}\n")).map_err(error)?;
    std::fs::rename(&partial, path).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, uid: &str) -> PodIdentity {
        PodIdentity {
            name: name.into(),
            namespace: "ns".into(),
            uid: uid.into(),
        }
    }

    fn request(lock: &str) -> GateRequest {
        GateRequest {
            lock: lock.into(),
            mode: ClaimMode::Exclusive,
            timeout: Some(Duration::from_millis(1500)),
            token_file: None,
        }
    }

    #[test]
    fn one_claim_per_pod_and_lock_with_a_valid_name() {
        assert_eq!(claim_name(&pod("web-0", "u"), "db"), "web-0-db");
        let long = claim_name(&pod(&"p".repeat(200), "0f3c9a1e-77"), &"l".repeat(100));
        assert_eq!(long.len(), 253);
        assert!(long.ends_with("-0f3c9a1e"), "{long}");
    }

    #[test]
    fn the_claim_is_owned_by_the_pod_and_expires_with_the_gate() {
        let claim = claim_for(&pod("web-0", "uid-1"), &request("db"));
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
        let ours = claim_for(&pod("web-0", "uid-1"), &request("db"));
        assert_eq!(
            adoption(&pod("web-0", "uid-1"), &request("db"), &ours),
            Adoption::Adopt
        );
        // The pod was made again under the same name (StatefulSet): the old claim goes.
        assert_eq!(
            adoption(&pod("web-0", "uid-2"), &request("db"), &ours),
            Adoption::Replace
        );
        let other = claim_for(&pod("batch", "uid-9"), &request("db"));
        assert!(matches!(
            adoption(&pod("web-0", "uid-1"), &request("db"), &other),
            Adoption::Foreign(why) if why.contains("batch")
        ));
        let mut shared = request("db");
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
        write_token(&path, 4294967301).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4294967301\n");
        write_token(&path, 4294967400).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4294967400\n");
    }
}
