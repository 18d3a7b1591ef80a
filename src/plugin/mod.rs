//! `kubectl lock`: the kubectl plugin, built as `kubectl-lock` beside `lockkeeper` (and the
//! `lockkeeper` binary answers to that name too). It reads and writes the resources with the
//! user's kubeconfig and rights; what it prints is made in [`report`].

pub mod report;

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use crate::claim_lifecycle::HolderState;
use crate::claim_lifecycle::holders;
use crate::resources::{
    ClaimPhase, DistributedLock, HolderKind, LockClaim, REVOKE_ANNOTATION,
    REVOKE_REQUESTED_BY_ANNOTATION,
};
use report::Liveness;

#[derive(Debug, Parser)]
#[command(
    name = "kubectl lock",
    bin_name = "kubectl lock",
    version,
    about = "lockkeeper's locks, from kubectl: who holds them, why a claim waits, who held them, and releasing one by hand"
)]
pub struct PluginCli {
    /// The namespace (default: the kubeconfig context's).
    #[arg(long, short = 'n', global = true)]
    pub namespace: Option<String>,
    /// The kubeconfig context to use (default: the current one).
    #[arg(long, global = true)]
    pub context: Option<String>,
    #[command(subcommand)]
    pub command: PluginCommand,
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Locks with their type, holders, queue length, oldest wait and longest hold.
    List {
        /// Every namespace.
        #[arg(long, short = 'A')]
        all_namespaces: bool,
    },
    /// Why a claim waits: CLAIM, claim/NAME, pod/NAME or job/NAME (the claims it holds).
    Why { target: String },
    /// A lock's last grants: who held it, with which token, for how long, how it ended.
    History { lock: String },
    /// Revoke a claim's grant (or its place in line) from anywhere: it ends `Revoked`.
    Release {
        claim: String,
        /// Why, for the claim's status and event.
        #[arg(long, default_value = "released by hand")]
        reason: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Hold locks while a command runs: the same as `lockkeeper run`.
    Run(crate::cli::RunArgs),
}

/// A plugin command that failed, said plainly.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("no {kind} {name:?} in namespace {namespace}")]
    NotFound {
        kind: &'static str,
        name: String,
        namespace: String,
    },
    #[error(
        "this cluster has no lockkeeper CRDs (lockkeeper.dev): install them with `kubectl apply -f crds/` or the Helm chart"
    )]
    NoCrds,
    #[error("not allowed to {what}: {message}")]
    Forbidden { what: String, message: String },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Refused(String),
    #[error("Kubernetes API ({what}): {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// `kubectl lock …` (or `kubectl-lock …`).
pub async fn main() -> ExitCode {
    let cli = PluginCli::parse();
    crate::cli::init_logging(crate::cli::LogFormat::Text);
    if let PluginCommand::Run(mut args) = cli.command {
        args.namespace = args.namespace.or(cli.namespace);
        return crate::cli::run_command(args).await;
    }
    match plugin(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn plugin(cli: PluginCli) -> Result<(), PluginError> {
    let client = client(cli.context.as_deref()).await?;
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let session = Session { client, namespace };
    let out = match cli.command {
        PluginCommand::List { all_namespaces } => session.list(all_namespaces).await?,
        PluginCommand::Why { target } => session.why(&target).await?,
        PluginCommand::History { lock } => session.history(&lock).await?,
        PluginCommand::Release { claim, reason, yes } => {
            session.release(&claim, &reason, yes).await?
        }
        PluginCommand::Run(_) => unreachable!("handled before"),
    };
    print!("{out}");
    Ok(())
}

async fn client(context: Option<&str>) -> Result<Client, PluginError> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(String::from),
        ..Default::default()
    };
    let config = match context {
        Some(_) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|err| {
                PluginError::Usage(format!("cannot use kubeconfig context {context:?}: {err}"))
            })?,
        None => kube::Config::infer()
            .await
            .map_err(|err| PluginError::Usage(format!("no usable kubeconfig: {err}")))?,
    };
    Client::try_from(config).map_err(|source| PluginError::Kube {
        what: "connecting".into(),
        source,
    })
}

struct Session {
    client: Client,
    namespace: String,
}

impl Session {
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// A failed API call, said plainly: a missing object or CRD, a missing permission.
    async fn failed(
        &self,
        what: &str,
        kind: &'static str,
        name: &str,
        err: kube::Error,
    ) -> PluginError {
        match &err {
            kube::Error::Api(status) if status.code == 403 => PluginError::Forbidden {
                what: what.to_string(),
                message: status.message.clone(),
            },
            kube::Error::Api(status) if status.code == 404 => {
                if self.crds_missing().await {
                    PluginError::NoCrds
                } else {
                    PluginError::NotFound {
                        kind,
                        name: name.to_string(),
                        namespace: self.namespace.clone(),
                    }
                }
            }
            _ => PluginError::Kube {
                what: what.to_string(),
                source: err,
            },
        }
    }

    async fn crds_missing(&self) -> bool {
        kube::discovery::group(&self.client, "lockkeeper.dev")
            .await
            .is_err()
    }

    async fn list(&self, all_namespaces: bool) -> Result<String, PluginError> {
        let (locks, claims): (Api<DistributedLock>, Api<LockClaim>) = match all_namespaces {
            true => (Api::all(self.client.clone()), Api::all(self.client.clone())),
            false => (self.api(), self.api()),
        };
        let params = ListParams::default();
        let locks = match locks.list(&params).await {
            Ok(list) => list.items,
            Err(err) => {
                return Err(self
                    .failed("list DistributedLocks", "DistributedLock", "", err)
                    .await);
            }
        };
        let claims = match claims.list(&params).await {
            Ok(list) => list.items,
            Err(err) => return Err(self.failed("list LockClaims", "LockClaim", "", err).await),
        };
        if locks.is_empty() {
            return Ok(match all_namespaces {
                true => "No locks found.\n".into(),
                false => format!("No locks found in namespace {}.\n", self.namespace),
            });
        }
        Ok(report::lock_list(
            &locks,
            &claims,
            all_namespaces,
            Timestamp::now(),
        ))
    }

    /// One object of `kind` by name, or why not.
    async fn get<K>(&self, kind: &'static str, name: &str) -> Result<K, PluginError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        match self.api::<K>().get(name).await {
            Ok(object) => Ok(object),
            Err(err) => Err(self
                .failed(&format!("get the {kind}"), kind, name, err)
                .await),
        }
    }

    /// The namespace's claims.
    async fn claims(&self) -> Result<Vec<LockClaim>, PluginError> {
        match self.api::<LockClaim>().list(&ListParams::default()).await {
            Ok(list) => Ok(list.items),
            Err(err) => Err(self.failed("list LockClaims", "LockClaim", "", err).await),
        }
    }

    async fn why(&self, target: &str) -> Result<String, PluginError> {
        // The namespace's claims, read once: the targets and their locks' queues are among them.
        let claims = self.claims().await?;
        let mut out = String::new();
        for claim in self.targets(target, &claims)? {
            let lock = match self
                .api::<DistributedLock>()
                .get_opt(&claim.spec.lock)
                .await
            {
                Ok(lock) => lock,
                Err(err) => {
                    return Err(self
                        .failed(
                            "get the DistributedLock",
                            "DistributedLock",
                            &claim.spec.lock,
                            err,
                        )
                        .await);
                }
            };
            let lock_claims: Vec<LockClaim> = claims
                .iter()
                .filter(|c| c.spec.lock == claim.spec.lock)
                .cloned()
                .collect();
            let liveness = self.liveness(&lock_claims).await;
            out.push_str(&report::why(&report::WhyFacts {
                claim,
                lock: lock.as_ref(),
                lock_claims: &lock_claims,
                liveness: &liveness,
                now: Timestamp::now(),
            }));
        }
        Ok(out)
    }

    /// The claims `why` asks about, among the namespace's `claims`: one claim by name, or those
    /// a Pod or Job holds.
    fn targets<'c>(
        &self,
        target: &str,
        claims: &'c [LockClaim],
    ) -> Result<Vec<&'c LockClaim>, PluginError> {
        let by_name = |name: &str| {
            claims
                .iter()
                .find(|c| c.name_any() == name)
                .map(|c| vec![c])
                .ok_or_else(|| PluginError::NotFound {
                    kind: "LockClaim",
                    name: name.to_string(),
                    namespace: self.namespace.clone(),
                })
        };
        let (kind, name) = match target.split_once('/') {
            None => return by_name(target),
            Some((kind, name)) => (kind.to_ascii_lowercase(), name),
        };
        let holder_kind = match kind.as_str() {
            "claim" | "claims" | "lockclaim" | "lockclaims" => return by_name(name),
            "pod" | "pods" | "po" => HolderKind::Pod,
            "job" | "jobs" => HolderKind::Job,
            _ => {
                return Err(PluginError::Usage(format!(
                    "{target:?}: give a claim's name, claim/NAME, pod/NAME or job/NAME"
                )));
            }
        };
        let held: Vec<&LockClaim> = claims
            .iter()
            .filter(|c| c.spec.holder.kind == holder_kind && c.spec.holder.name == name)
            .collect();
        if held.is_empty() {
            return Err(PluginError::Refused(format!(
                "{kind}/{name} has no LockClaims in namespace {}: it waits for no lock",
                self.namespace
            )));
        }
        Ok(held)
    }

    /// Whether the Pods and Jobs holding or waiting with these claims still run.
    async fn liveness(&self, claims: &[LockClaim]) -> HashMap<(HolderKind, String), Liveness> {
        let mut found = HashMap::new();
        for claim in claims {
            let holder = &claim.spec.holder;
            let key = (holder.kind, holder.name.clone());
            if found.contains_key(&key) {
                continue;
            }
            let liveness = match holder.kind {
                HolderKind::Pod => match self.api::<Pod>().get_opt(&holder.name).await {
                    Ok(pod) => {
                        let phase = pod
                            .as_ref()
                            .and_then(|p| p.status.as_ref())
                            .and_then(|s| s.phase.clone())
                            .unwrap_or_else(|| "Pending".into());
                        liveness_of(holders::pod_state(&holder.name, pod.as_ref()), phase)
                    }
                    Err(err) => unknown(holder.kind, err),
                },
                HolderKind::Job => match self.api::<Job>().get_opt(&holder.name).await {
                    Ok(job) => liveness_of(
                        holders::job_state(&holder.name, job.as_ref()),
                        "running".into(),
                    ),
                    Err(err) => unknown(holder.kind, err),
                },
                HolderKind::Lease => continue,
            };
            found.insert(key, liveness);
        }
        found
    }

    async fn history(&self, lock: &str) -> Result<String, PluginError> {
        let lock: DistributedLock = self.get("DistributedLock", lock).await?;
        Ok(report::history(&lock, Timestamp::now()))
    }

    async fn release(&self, name: &str, reason: &str, yes: bool) -> Result<String, PluginError> {
        let claim: LockClaim = self.get("LockClaim", name).await?;
        let status = claim.status.clone().unwrap_or_default();
        if status.phase.is_final() {
            return Err(PluginError::Refused(format!(
                "claim {name} already ended {:?}: nothing to release",
                status.phase
            )));
        }
        let what = match status.phase {
            ClaimPhase::Granted => format!(
                "the grant of lock {} to {:?} {} (fencing token {})",
                claim.spec.lock,
                claim.spec.holder.kind,
                claim.spec.holder.name,
                status
                    .fencing_token
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "-".into())
            ),
            phase => format!(
                "claim {name} ({phase:?}) on lock {} of {:?} {}",
                claim.spec.lock, claim.spec.holder.kind, claim.spec.holder.name
            ),
        };
        if !yes
            && !confirmed(&format!(
                "Revoke {what}? The holder is treated as having lost it. [y/N] "
            ))
        {
            return Err(PluginError::Refused(
                "not confirmed: nothing was changed (pass --yes to skip the question)".into(),
            ));
        }
        let requested_by = self.user().await;
        // Guarded by the UID (the claim confirmed, not one made again under its name); its
        // status may move meanwhile (a place in line), which changes nothing asked.
        let patch = serde_json::json!({"metadata": {
            "uid": claim.uid(),
            "annotations": {REVOKE_ANNOTATION: reason, REVOKE_REQUESTED_BY_ANNOTATION: requested_by},
        }});
        if let Err(err) = self
            .api::<LockClaim>()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            return Err(match err {
                kube::Error::Api(status) if status.code == 409 || status.code == 422 => {
                    PluginError::Refused(format!(
                        "claim {name} was made again while you were asked; run the command again"
                    ))
                }
                err => {
                    self.failed("patch the LockClaim", "LockClaim", name, err)
                        .await
                }
            });
        }
        let revoked = kube::runtime::wait::await_condition(
            self.api::<LockClaim>(),
            name,
            |claim: Option<&LockClaim>| {
                claim.is_none_or(|c| c.status.as_ref().is_some_and(|s| s.phase.is_final()))
            },
        );
        match tokio::time::timeout(RELEASE_PATIENCE, revoked).await {
            Ok(Ok(Some(claim))) => {
                let status = claim.status.unwrap_or_default();
                Ok(format!(
                    "claim {name} {:?}: {}\n",
                    status.phase,
                    status.message.unwrap_or_default()
                ))
            }
            Ok(Ok(None)) => Ok(format!(
                "claim {name} was deleted meanwhile: it holds nothing\n"
            )),
            Ok(Err(err)) => Err(PluginError::Refused(format!(
                "the revocation of claim {name} was asked for, but following it failed: {err}"
            ))),
            Err(_) => Err(PluginError::Refused(format!(
                "the revocation of claim {name} was asked for, but the controller has not carried it out within {}s: is it running?",
                RELEASE_PATIENCE.as_secs()
            ))),
        }
    }

    /// Who the API server says the user is; the revocation records it.
    async fn user(&self) -> String {
        let api: Api<SelfSubjectReview> = Api::all(self.client.clone());
        let review = SelfSubjectReview::default();
        match api.create(&PostParams::default(), &review).await {
            Ok(review) => review
                .status
                .and_then(|s| s.user_info)
                .and_then(|u| u.username)
                .unwrap_or_else(|| "an unnamed user".into()),
            Err(err) => {
                tracing::warn!(%err, "could not ask the API server who you are");
                "a user the API server did not name".into()
            }
        }
    }
}

/// What a holder's state says of whether it runs; `running` says how, in words.
fn liveness_of(state: HolderState, running: String) -> Liveness {
    match state {
        HolderState::Missing => Liveness::Missing,
        HolderState::Ended(why) | HolderState::Failed(why) => Liveness::Ended(why),
        HolderState::SuspendedJob => Liveness::Alive("suspended, waiting for its locks".into()),
        HolderState::NotResumable(why) => Liveness::Alive(format!("suspended: {why}")),
        HolderState::Running | HolderState::Lapsed(_) => Liveness::Alive(running),
    }
}

fn unknown(kind: HolderKind, err: kube::Error) -> Liveness {
    match err {
        kube::Error::Api(status) if status.code == 403 => Liveness::Unknown(format!(
            "no permission to read {}s",
            format!("{kind:?}").to_lowercase()
        )),
        err => Liveness::Unknown(err.to_string()),
    }
}

/// How long `release` waits for the controller to end the claim.
const RELEASE_PATIENCE: Duration = Duration::from_secs(30);

/// Asks on stderr and reads a line from stdin: yes only for "y" or "yes".
fn confirmed(question: &str) -> bool {
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    match std::io::stdin().lock().read_line(&mut answer) {
        Ok(_) => matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
        Err(_) => false,
    }
}
