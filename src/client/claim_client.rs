//! What `lockkeeper gate` and `lockkeeper run` share: they make a LockClaim for their holder
//! and follow it through a watch until the controller decides it. They talk to the
//! Kubernetes API only; ZooKeeper is the controller's business.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use futures::stream::{BoxStream, SelectAll};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

use crate::resources::{ClaimPhase, LockClaim, LockClaimStatus};

/// Exit code when the lock was not granted (wait timeout, try-lock on a held lock, grant
/// ended before use): sysexits' EX_TEMPFAIL, "try again later".
pub const EXIT_NOT_GRANTED: u8 = 75;

/// Whether an API call that failed this way may succeed if tried again: the server failed
/// (5xx), asked to slow down (429), or the connection to it failed.
pub fn is_transient(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// How an API call that failed for now is tried again: from 200 ms, exponentially later (with
/// jitter), at most 5 s apart, for about `within` in all.
pub fn api_retries(within: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .with_total_delay(Some(within))
}

/// How long a client keeps trying an API call that fails for now before it gives up.
pub const API_PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The command line asks for something that cannot be done (exit 2, as clap does).
    #[error("{0}")]
    Usage(String),
    #[error("{0} is not set; an init container gets it from the downward API (see examples/)")]
    MissingEnv(&'static str),
    #[error("{locks} not granted: {reason}")]
    NotGranted { locks: String, reason: String },
    #[error("claim {0} was deleted before it was granted")]
    Deleted(String),
    #[error("claim {name} already exists and is not this holder's: {why}")]
    Foreign { name: String, why: String },
    #[error("cannot write the token file {path}: {source}")]
    TokenFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {command:?}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
}

impl ClaimError {
    /// The process exit code: 75 when the lock was not granted, 127 when the command could
    /// not start (as shells do), 2 for a bad command line (as clap does), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClaimError::NotGranted { .. } => EXIT_NOT_GRANTED,
            ClaimError::Spawn { .. } => 127,
            ClaimError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// Extra time given to the controller to write `Expired` when a wait timeout passes, before
/// a client gives up by itself (the controller may be down: no client waits forever on it).
pub const EXPIRY_GRACE: Duration = Duration::from_secs(5);

/// The metadata every claim a client makes carries: its namespace, and who made it in the
/// `app.kubernetes.io/managed-by` label (`lockkeeper-gate`, `lockkeeper-run`).
pub fn client_metadata(namespace: &str, managed_by: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(namespace.to_string()),
        labels: Some(
            [(
                "app.kubernetes.io/managed-by".to_string(),
                managed_by.to_string(),
            )]
            .into(),
        ),
        ..ObjectMeta::default()
    }
}

/// A duration as the whole seconds a claim's spec takes, rounded up.
pub fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs_f64().ceil() as u64
}

/// What the watch says about the claim.
#[derive(Debug)]
pub enum ClaimUpdate {
    Changed(Box<LockClaim>),
    Deleted,
}

/// What one claim's watch yields, `None` once it ended.
type WatchItem = Option<Result<Option<LockClaim>, watcher::Error>>;

/// A holder's claims, each followed through kube-runtime's `watch_object` on its name, which
/// reports a claim that disappeared while the watch was down as deleted. Dropped watches, API
/// errors and relists are retried with kube-runtime's backoff.
pub struct ClaimWatch {
    stream: SelectAll<BoxStream<'static, (usize, WatchItem)>>,
}

impl ClaimWatch {
    pub fn new(api: &Api<LockClaim>, names: &[String]) -> Self {
        let streams = names.iter().enumerate().map(|(index, name)| {
            watcher::watch_object(api.clone(), name)
                .default_backoff()
                .map(Some)
                // A watch that ends (it should not) reports its claim as gone.
                .chain(futures::stream::once(async { None }))
                .map(move |item| (index, item))
                .boxed()
        });
        ClaimWatch {
            stream: futures::stream::select_all(streams),
        }
    }

    /// The next change of one of the claims, with its place in the names watched.
    pub async fn next(&mut self) -> (usize, ClaimUpdate) {
        loop {
            match self.stream.next().await {
                Some((index, Some(Ok(Some(claim))))) => {
                    return (index, ClaimUpdate::Changed(Box::new(claim)));
                }
                Some((index, Some(Ok(None)) | None)) => return (index, ClaimUpdate::Deleted),
                Some((_, Some(Err(err)))) => {
                    tracing::warn!(error = %err, "watching the claim; retrying")
                }
                // Every watch ended, each reported as a deletion first.
                None => return (0, ClaimUpdate::Deleted),
            }
        }
    }
}

/// How the wait for one claim's grant ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Granted {
        fencing_token: i64,
    },
    /// The claim ended without a grant to use (Expired, Released): the reason says why.
    Refused(String),
}

/// The decision a status carries, if any. `Lost` and `Invalid` are not decisions: the
/// controller queues a lost claim again, and an invalid one once it is fixed (e.g. when
/// its lock is created).
pub fn decision(status: &LockClaimStatus) -> Option<Decision> {
    let reason = || {
        let message = status.message.as_deref().unwrap_or("no reason given");
        format!("the claim is {:?}: {message}", status.phase)
    };
    match status.phase {
        ClaimPhase::Granted => status
            .fencing_token
            .map(|fencing_token| Decision::Granted { fencing_token }),
        ClaimPhase::Expired | ClaimPhase::Released | ClaimPhase::Revoked => {
            Some(Decision::Refused(reason()))
        }
        ClaimPhase::Pending | ClaimPhase::Waiting | ClaimPhase::Lost | ClaimPhase::Invalid => None,
    }
}

/// A line for the user when the claim's standing changed, e.g. "waiting, 2 ahead".
pub fn progress(status: &LockClaimStatus) -> String {
    let mut line = match (status.phase, status.position) {
        (ClaimPhase::Waiting, Some(ahead)) => format!("waiting, {ahead} ahead"),
        (phase, _) => format!("{phase:?}").to_lowercase(),
    };
    if !matches!(status.phase, ClaimPhase::Waiting | ClaimPhase::Granted)
        && let Some(message) = &status.message
    {
        line.push_str(": ");
        line.push_str(message);
    }
    line
}

/// How the wait for all of a holder's claims ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every claim is granted: their fencing tokens, in the order of the names watched.
    Granted(Vec<i64>),
    /// The claim at this place ended without a grant; the holder gives up the whole set.
    Refused { index: usize, reason: String },
}

/// Follows the claims until all are granted at once or one is refused, printing each change
/// of a claim's standing on stderr. A grant that is lost again while others wait (the
/// controller queues it anew) counts as not granted.
pub async fn wait_for_grants(
    watch: &mut ClaimWatch,
    names: &[String],
) -> Result<Outcome, ClaimError> {
    let mut tokens: Vec<Option<i64>> = vec![None; names.len()];
    let mut last_lines = vec![String::new(); names.len()];
    loop {
        let (index, update) = watch.next().await;
        let claim = match update {
            ClaimUpdate::Changed(claim) => claim,
            ClaimUpdate::Deleted => return Err(ClaimError::Deleted(names[index].clone())),
        };
        let status = claim.status.unwrap_or_default();
        let line = progress(&status);
        if line != last_lines[index] {
            eprintln!("lockkeeper: claim {}: {line}", names[index]);
            last_lines[index] = line;
        }
        tokens[index] = match decision(&status) {
            Some(Decision::Granted { fencing_token }) => Some(fencing_token),
            Some(Decision::Refused(reason)) => return Ok(Outcome::Refused { index, reason }),
            None => None,
        };
        if tokens.iter().all(Option::is_some) {
            return Ok(Outcome::Granted(tokens.into_iter().flatten().collect()));
        }
    }
}

/// [`wait_for_grants`], given up `timeout` + [`EXPIRY_GRACE`] from now: `Ok(None)` then.
pub async fn wait_for_grants_within(
    watch: &mut ClaimWatch,
    names: &[String],
    timeout: Option<Duration>,
) -> Result<Option<Outcome>, ClaimError> {
    let wait = wait_for_grants(watch, names);
    match timeout {
        None => wait.await.map(Some),
        Some(timeout) => match tokio::time::timeout(timeout + EXPIRY_GRACE, wait).await {
            Ok(decided) => decided.map(Some),
            Err(_) => Ok(None),
        },
    }
}

/// Deletes each of a holder's claims in turn ([`delete_claim`]): releases what it holds and
/// takes it out of the queues.
pub async fn release_all<'a>(
    api: &Api<LockClaim>,
    claims: impl IntoIterator<Item = &'a LockClaim>,
    patience: Duration,
) -> Result<(), ClaimError> {
    for claim in claims {
        let uid = claim.meta().uid.clone().unwrap_or_default();
        delete_claim(api, &claim.name_any(), &uid, patience).await?;
    }
    Ok(())
}

/// Deletes the claim (the controller then takes it out of the ZooKeeper queue) and waits up
/// to `patience` until it is gone. `uid` guards against deleting a newer claim of that name.
pub async fn delete_claim(
    api: &Api<LockClaim>,
    name: &str,
    uid: &str,
    patience: Duration,
) -> Result<(), ClaimError> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let delete = || api.delete(name, &params);
    let deleted = delete
        .retry(api_retries(API_PATIENCE))
        .when(is_transient)
        .notify(|err, wait| tracing::warn!(claim = name, %err, ?wait, "releasing the claim failed; retrying"))
        .await;
    match deleted {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_not_found() || status.is_conflict() => {
            return Ok(());
        }
        Err(err) => return Err(err.into()),
    }
    let gone = kube::runtime::wait::await_condition(
        api.clone(),
        name,
        kube::runtime::wait::conditions::is_deleted(uid),
    );
    if tokio::time::timeout(patience, gone).await.is_err() {
        tracing::warn!(
            claim = name,
            "the claim is still being deleted (is the controller running?)"
        );
    }
    Ok(())
}

/// Creates the claim, or returns an existing one of that name that `adopt` accepts. An
/// existing claim that is over (Released, Expired) or that `adopt` calls stale is deleted and
/// made again.
pub async fn create_or_adopt(
    api: &Api<LockClaim>,
    claim: &LockClaim,
    adopt: impl Fn(&LockClaim) -> Adoption,
) -> Result<LockClaim, ClaimError> {
    let name = claim.name_any();
    loop {
        let look = || api.get_opt(&name);
        let found = look
            .retry(api_retries(API_PATIENCE))
            .when(is_transient)
            .notify(|err, wait| tracing::warn!(claim = %name, %err, ?wait, "reading the claim failed; retrying"))
            .await?;
        if let Some(existing) = found {
            let over = existing.status.as_ref().is_some_and(|s| s.phase.is_final());
            match adopt(&existing) {
                Adoption::Foreign(why) => return Err(ClaimError::Foreign { name, why }),
                Adoption::Adopt if !over => return Ok(existing),
                Adoption::Adopt | Adoption::Replace => {
                    eprintln!(
                        "lockkeeper: claim {name} is left from an earlier attempt; making it anew"
                    );
                    let uid = existing.meta().uid.clone().unwrap_or_default();
                    delete_claim(api, &name, &uid, Duration::from_secs(60)).await?;
                    continue;
                }
            }
        }
        let params = PostParams::default();
        let create = || api.create(&params, claim);
        let created = create
            .retry(api_retries(API_PATIENCE))
            .when(is_transient)
            .notify(|err, wait| tracing::warn!(claim = %name, %err, ?wait, "making the claim failed; retrying"))
            .await;
        match created {
            Ok(created) => return Ok(created),
            // Made meanwhile (a restarted init container racing its predecessor): look again.
            Err(kube::Error::Api(status)) if status.is_already_exists() => continue,
            Err(err) => return Err(err.into()),
        }
    }
}

/// What to do with a claim that already has the name a holder wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Adoption {
    /// It is this holder's: go on with it.
    Adopt,
    /// It was an earlier holder's of the same name (e.g. a StatefulSet pod made again).
    Replace,
    /// Someone else's: refuse, saying why.
    Foreign(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(
        phase: ClaimPhase,
        position: Option<u32>,
        token: Option<i64>,
        message: Option<&str>,
    ) -> LockClaimStatus {
        LockClaimStatus {
            phase,
            position,
            fencing_token: token,
            message: message.map(str::to_string),
            ..LockClaimStatus::default()
        }
    }

    #[test]
    fn only_a_grant_with_a_token_or_an_end_decides_the_wait() {
        assert_eq!(
            decision(&status(ClaimPhase::Granted, None, Some(42), None)),
            Some(Decision::Granted { fencing_token: 42 })
        );
        assert_eq!(
            decision(&status(ClaimPhase::Granted, None, None, None)),
            None
        );
        assert_eq!(
            decision(&status(ClaimPhase::Expired, None, None, Some("waited 5s"))),
            Some(Decision::Refused("the claim is Expired: waited 5s".into()))
        );
        for phase in [
            ClaimPhase::Pending,
            ClaimPhase::Waiting,
            ClaimPhase::Lost,
            ClaimPhase::Invalid,
        ] {
            assert_eq!(
                decision(&status(phase, None, None, Some("x"))),
                None,
                "{phase:?}"
            );
        }
    }

    #[test]
    fn progress_lines_say_where_the_claim_stands() {
        assert_eq!(
            progress(&status(ClaimPhase::Waiting, Some(2), None, Some("queued"))),
            "waiting, 2 ahead"
        );
        assert_eq!(
            progress(&status(
                ClaimPhase::Invalid,
                None,
                None,
                Some("DistributedLock \"db\" does not exist")
            )),
            "invalid: DistributedLock \"db\" does not exist"
        );
        assert_eq!(
            progress(&status(ClaimPhase::Granted, None, Some(7), Some("granted"))),
            "granted"
        );
    }

    #[test]
    fn exit_codes_tell_a_refusal_from_a_failure() {
        let refused = ClaimError::NotGranted {
            locks: "lock db".into(),
            reason: "timeout".into(),
        };
        assert_eq!(refused.exit_code(), EXIT_NOT_GRANTED);
        assert_eq!(ClaimError::MissingEnv("POD_UID").exit_code(), 1);
    }
}
