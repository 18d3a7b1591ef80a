//! `lockkeeper run --lock NAME [--lock NAME…] -- COMMAND…`: hold one or several locks while a
//! command runs, from anywhere with a kubeconfig. The claims' holder is a Lease that this
//! process renews; if the process dies without cleanup, the controller releases the locks
//! once the lease runs out. The claims are made in lock-name order ([`lock_set`]) and the
//! command starts once all are granted. On exit or signal the claims are deleted (released)
//! and the command's exit code is passed through.

use std::process::ExitStatus;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::{Client, ResourceExt};
use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};

use crate::client::claim_client::{self, ClaimError, ClaimUpdate, ClaimWatch, Outcome};
use crate::client::lock_set::{self, WantedLock};
use crate::deadlock::RUNS_IN_POD_ANNOTATION;
use crate::resources::{ClaimPhase, HolderKind, HolderRef, LockClaim, LockClaimSpec};

#[derive(Clone, Debug)]
pub struct RunRequest {
    /// In lock-name order, each once ([`lock_set::wanted_locks`]).
    pub locks: Vec<WantedLock>,
    pub namespace: String,
    /// The lock is released this long after the last renewal if this process dies.
    pub lease_duration: Duration,
    /// Give up after waiting this long (0: try once); the command then does not run.
    pub timeout: Option<Duration>,
    pub command: Vec<String>,
    /// The pod this run runs in (`NAMESPACE/NAME`, from `POD_NAMESPACE` and `POD_NAME`): its
    /// claims say so, and the controller counts them as the pod's when it looks for deadlocks.
    pub runs_in_pod: Option<String>,
}

/// `NAMESPACE/NAME` of the pod the process runs in, if the downward API says.
pub fn runs_in_pod_from_env() -> Option<String> {
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    Some(format!("{}/{}", var("POD_NAMESPACE")?, var("POD_NAME")?))
}

/// Exit code when the grant ended while the command ran (lost, expired, the claim deleted):
/// the command was told to stop, and part of it may have run without the lock, whatever code
/// it exited with. Sysexits' EX_PROTOCOL, next to EX_TEMPFAIL (75, not granted).
pub const EXIT_GRANT_LOST: u8 = 76;

/// How long a command that was told to stop (lock lost) gets before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for the controller to take a deleted claim out of the queue.
const RELEASE_PATIENCE: Duration = Duration::from_secs(10);

/// `<host>-<pid>`: who holds the lease, as `kubectl get claims` shows it.
pub fn holder_name() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    let host: String = host
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(200)
        .collect();
    format!("{}-{}", host.trim_matches(['-', '.']), std::process::id())
}

/// The run's claims, one per lock in the request's order, named `<lock>-run-<suffix>` with
/// one random suffix for the run. Named here rather than by the server (generateName): a
/// create retried after an error that hid its success then finds its own claim instead of
/// making a second one.
pub fn claims_for(request: &RunRequest, holder: &str, now: Timestamp) -> Vec<LockClaim> {
    let lease_seconds = claim_client::whole_seconds(request.lease_duration).max(1) as u32;
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    request
        .locks
        .iter()
        .map(|wanted| {
            let mut claim = LockClaim::new(
                "",
                LockClaimSpec {
                    lock: wanted.lock.clone(),
                    mode: wanted.mode,
                    holder: HolderRef {
                        kind: HolderKind::Lease,
                        name: holder.to_string(),
                    },
                    lease_duration_seconds: Some(lease_seconds),
                    renew_time: Some(MicroTime(now)),
                    wait_timeout_seconds: request.timeout.map(claim_client::whole_seconds),
                },
            );
            let prefix: String = wanted.lock.chars().take(200).collect();
            claim.metadata = ObjectMeta {
                name: Some(format!(
                    "{}-run-{suffix}",
                    prefix.trim_end_matches(['-', '.'])
                )),
                annotations: request
                    .runs_in_pod
                    .as_ref()
                    .map(|pod| [(RUNS_IN_POD_ANNOTATION.to_string(), pod.clone())].into()),
                ..claim_client::client_metadata(&request.namespace, "lockkeeper-run")
            };
            claim
        })
        .collect()
}

/// The exit code a shell would report: the command's, or 128 + the signal that ended it.
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => (128 + signal) as u8,
        (None, None) => 1,
    }
}

/// Takes the locks, runs the command while holding them all, releases them, and returns the
/// command's exit code.
pub async fn run(client: Client, request: RunRequest) -> Result<u8, ClaimError> {
    let api: Api<LockClaim> = Api::namespaced(client, &request.namespace);
    let holder = holder_name();
    let mut claims = Vec::new();
    let outcome = make_claims_and_run(&api, &request, &holder, &mut claims).await;
    claim_client::release_all(&api, &claims, RELEASE_PATIENCE).await?;
    outcome
}

async fn make_claims_and_run(
    api: &Api<LockClaim>,
    request: &RunRequest,
    holder: &str,
    claims: &mut Vec<LockClaim>,
) -> Result<u8, ClaimError> {
    // One after another in lock order: the controller then sees each claim's earlier ones.
    for wanted in claims_for(request, holder, Timestamp::now()) {
        let claim = claim_client::create_or_adopt(api, &wanted, |existing| {
            if existing.spec.holder == wanted.spec.holder {
                claim_client::Adoption::Adopt
            } else {
                claim_client::Adoption::Foreign(format!(
                    "held by {:?} {}",
                    existing.spec.holder.kind, existing.spec.holder.name
                ))
            }
        })
        .await?;
        eprintln!(
            "lockkeeper: {holder} waits for lock {}/{} ({:?}) with claim {}",
            request.namespace,
            claim.spec.lock,
            claim.spec.mode,
            claim.name_any()
        );
        claims.push(claim);
    }
    let names: Vec<String> = claims.iter().map(ResourceExt::name_any).collect();
    let renewal = tokio::spawn(renew(api.clone(), names.clone(), request.lease_duration));
    let outcome = hold_and_run(api, &names, request).await;
    renewal.abort();
    outcome
}

/// Stops waiting or stops the command on SIGINT, SIGTERM and SIGHUP.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::SIGINT,
            _ = self.terminate.recv() => Signal::SIGTERM,
            _ = self.hangup.recv() => Signal::SIGHUP,
        }
    }
}

async fn hold_and_run(
    api: &Api<LockClaim>,
    names: &[String],
    request: &RunRequest,
) -> Result<u8, ClaimError> {
    let mut signals = Signals::new().map_err(|source| ClaimError::Spawn {
        command: "signal handlers".into(),
        source,
    })?;
    let mut watch = ClaimWatch::new(api, names);
    let refused = |locks: &[WantedLock], reason: String| ClaimError::NotGranted {
        locks: lock_set::describe(locks),
        reason,
    };
    let tokens = {
        let wait = claim_client::wait_for_grants_within(&mut watch, names, request.timeout);
        tokio::select! {
            decided = wait => match decided? {
                Some(Outcome::Granted(tokens)) => tokens,
                Some(Outcome::Refused { index, reason }) => {
                    return Err(refused(&request.locks[index..=index], reason))
                }
                None => return Err(refused(&request.locks, "the wait timed out".into())),
            },
            signal = signals.recv() => return Ok(128 + signal as u8),
        }
    };
    eprintln!(
        "lockkeeper: {} granted (fencing tokens {tokens:?}); running {:?}",
        lock_set::describe(&request.locks),
        request.command
    );
    let mut child = tokio::process::Command::new(&request.command[0])
        .args(&request.command[1..])
        .envs(workload_env(&request.locks, names, &tokens))
        .spawn()
        .map_err(|source| ClaimError::Spawn {
            command: request.command.join(" "),
            source,
        })?;
    let pid = child.id().map(|id| nix::unistd::Pid::from_raw(id as i32));
    let send = |signal: Signal| {
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(pid, signal);
        }
    };
    let mut lost_at: Option<tokio::time::Instant> = None;
    let mut lost = false;
    loop {
        let kill_deadline = async {
            match lost_at {
                Some(at) => tokio::time::sleep_until(at + STOP_GRACE).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|source| ClaimError::Spawn { command: request.command.join(" "), source })?;
                if lost {
                    eprintln!(
                        "lockkeeper: the command ended (exit {}) after the lock was lost; exiting {EXIT_GRANT_LOST}",
                        exit_code(status)
                    );
                    return Ok(EXIT_GRANT_LOST);
                }
                return Ok(exit_code(status));
            }
            (index, update) = watch.next(), if lost_at.is_none() => {
                let lock = &request.locks[index].lock;
                let reason = match update {
                    ClaimUpdate::Deleted => Some("the claim was deleted".to_string()),
                    ClaimUpdate::Changed(claim) => {
                        let status = claim.status.unwrap_or_default();
                        (status.phase != ClaimPhase::Granted).then(|| claim_client::progress(&status))
                    }
                };
                if let Some(reason) = reason {
                    eprintln!("lockkeeper: lock {lock} is no longer held ({reason}); stopping the command");
                    send(Signal::SIGTERM);
                    lost_at = Some(tokio::time::Instant::now());
                    lost = true;
                }
            }
            () = kill_deadline => {
                eprintln!("lockkeeper: the command did not stop within {}s; killing it", STOP_GRACE.as_secs());
                send(Signal::SIGKILL);
                lost_at = None;
            }
            signal = signals.recv() => send(signal),
        }
    }
}

/// What the command finds in its environment: `LOCKKEEPER_FENCING_TOKENS` (`LOCK=TOKEN,…`) and
/// `LOCKKEEPER_FENCING_TOKEN_<LOCK>` for each lock, `LOCKKEEPER_LOCK` and `LOCKKEEPER_CLAIM`
/// (comma-separated with several), and with one lock `LOCKKEEPER_FENCING_TOKEN`.
pub fn workload_env(
    locks: &[WantedLock],
    claims: &[String],
    tokens: &[i64],
) -> Vec<(String, String)> {
    let join = |items: Vec<String>| items.join(",");
    let mut env = vec![
        (
            "LOCKKEEPER_FENCING_TOKENS".to_string(),
            join(
                locks
                    .iter()
                    .zip(tokens)
                    .map(|(w, token)| format!("{}={token}", w.lock))
                    .collect(),
            ),
        ),
        (
            "LOCKKEEPER_LOCK".to_string(),
            join(locks.iter().map(|w| w.lock.clone()).collect()),
        ),
        ("LOCKKEEPER_CLAIM".to_string(), claims.join(",")),
    ];
    for (wanted, token) in locks.iter().zip(tokens) {
        env.push((lock_set::token_variable(&wanted.lock), token.to_string()));
    }
    if let [token] = tokens {
        env.push(("LOCKKEEPER_FENCING_TOKEN".to_string(), token.to_string()));
    }
    env
}

/// Renews the claims' lease a few times per lease duration, from their creation to their
/// release. A failed renewal is retried at the next tick; if renewals keep failing the
/// controller ends the grants and the watch stops the command.
async fn renew(api: Api<LockClaim>, names: Vec<String>, lease_duration: Duration) {
    let mut ticks = tokio::time::interval((lease_duration / 3).max(Duration::from_millis(200)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let patch = serde_json::json!({"spec": {"renewTime": MicroTime(Timestamp::now())}});
        for name in &names {
            if let Err(err) = api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::warn!(claim = %name, error = %err, "renewing the lease failed; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::resources::ClaimMode;

    fn request() -> RunRequest {
        RunRequest {
            locks: vec![WantedLock {
                lock: "reports".into(),
                mode: ClaimMode::Shared,
            }],
            namespace: "batch".into(),
            lease_duration: Duration::from_millis(2500),
            timeout: Some(Duration::ZERO),
            command: vec!["true".into()],
            runs_in_pod: None,
        }
    }

    #[test]
    fn the_claim_is_a_renewed_lease_with_a_name_of_its_own() {
        let now: Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
        let claim = claims_for(&request(), "build-7-123", now).remove(0);
        let name = claim.metadata.name.clone().unwrap();
        assert!(
            name.starts_with("reports-run-") && name.len() == "reports-run-".len() + 8,
            "{name}"
        );
        assert_ne!(
            claims_for(&request(), "build-7-123", now)[0].metadata.name,
            claim.metadata.name
        );
        assert_eq!(claim.metadata.namespace.as_deref(), Some("batch"));
        assert_eq!(claim.spec.holder.kind, HolderKind::Lease);
        assert_eq!(claim.spec.lease_duration_seconds, Some(3), "rounded up");
        assert_eq!(claim.spec.renew_time, Some(MicroTime(now)));
        assert_eq!(claim.spec.wait_timeout_seconds, Some(0), "a try-lock");
        assert_eq!(claim.spec.mode, ClaimMode::Shared);
    }

    #[test]
    fn several_locks_share_one_holder_and_give_every_token_to_the_command() {
        let mut two = request();
        two.locks.push(WantedLock {
            lock: "schema".into(),
            mode: ClaimMode::Exclusive,
        });
        let claims = claims_for(&two, "build-7-123", "2026-11-21T10:00:00Z".parse().unwrap());
        let names: Vec<String> = claims
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        assert!(names[0].starts_with("reports-run-") && names[1].starts_with("schema-run-"));
        assert_eq!(
            names[0].rsplit('-').next(),
            names[1].rsplit('-').next(),
            "one suffix for the run: {names:?}"
        );
        assert!(claims.iter().all(|c| c.spec.holder.name == "build-7-123"));
        assert!(claims[0].metadata.annotations.is_none(), "not in a pod");
        two.runs_in_pod = Some("batch/report-0".into());
        let in_pod = claims_for(&two, "h", "2026-11-21T10:00:00Z".parse().unwrap());
        assert_eq!(
            crate::deadlock::process_of(&in_pod[1]).to_string(),
            "Pod batch/report-0",
            "counted as the pod's"
        );
        let env = workload_env(&two.locks, &names, &[7, 9]);
        let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        assert_eq!(
            get("LOCKKEEPER_FENCING_TOKENS").unwrap(),
            "reports=7,schema=9"
        );
        assert_eq!(get("LOCKKEEPER_FENCING_TOKEN_SCHEMA").unwrap(), "9");
        assert_eq!(get("LOCKKEEPER_LOCK").unwrap(), "reports,schema");
        assert_eq!(get("LOCKKEEPER_FENCING_TOKEN"), None, "ambiguous with two");
        let one = workload_env(&request().locks, &names[..1], &[7]);
        assert!(one.contains(&("LOCKKEEPER_FENCING_TOKEN".to_string(), "7".to_string())));
    }

    #[test]
    fn the_holder_name_is_a_valid_name_part() {
        let name = holder_name();
        assert!(name.ends_with(&format!("-{}", std::process::id())));
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'),
            "{name}"
        );
    }

    #[test]
    fn exit_codes_pass_through_like_a_shell() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(
            exit_code(ExitStatus::from_raw(15)),
            143,
            "killed by SIGTERM"
        );
    }
}
