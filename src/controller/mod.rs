//! `lockkeeper controller`: the operator.
//!
//! A replica connects to Kubernetes and ZooKeeper, serves `/metrics`, and campaigns for
//! leadership ([`leader`]). While it leads a term runs: the LockClaim controller ([`claims`])
//! and the DistributedLock controller ([`locks`]) run on kube-runtime, driven by watches on
//! claims, locks, holder Pods and Jobs, and by the lock engine's events; their reconciles
//! start once the claims queued by an earlier leader are queued again in order ([`resume`]),
//! from the caches the watches filled. When the ZooKeeper session
//! is lost the term ends: grants it held are marked `Lost`, their locks fenced for their
//! lock-delay, and the replica campaigns again.

pub mod claim_index;
pub mod claims;
pub mod context;
pub mod departures;
pub mod finalizer;
pub mod holders;
pub mod installation;
pub mod leader;
pub mod locks;
pub mod losses;
pub mod resume;
pub mod slim;
pub mod stale_copies;
pub mod status;
pub mod telemetry;
pub mod watches;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;

use self::claim_index::ClaimIndex;
use self::context::Context;
use self::leader::Leadership;
use self::telemetry::Metrics;
use crate::resources::{DistributedLock, HolderKind, Installation, LockClaim};
use crate::znode_name::ContenderId;
use crate::zookeeper::{ContenderEvent, EngineConfig, EngineError, LockEngine, SessionStatus};

/// How the controller is set up (from `lockkeeper controller`'s flags).
pub struct Config {
    pub engine: EngineConfig,
    /// Default lock paths are `<root>/<namespace>/<name>`.
    pub root: String,
    pub metrics_addr: SocketAddr,
    /// Watch one namespace only; `None` for all.
    pub namespace: Option<String>,
    /// This replica's name (the pod name in a cluster).
    pub identity: String,
    /// Reconciles running at the same time, per controller.
    pub concurrent_reconciles: u16,
}

/// Reconciles running at the same time by default, per controller: enough to keep the API
/// server busy, few enough that a burst (a new term's first pass over every claim) does not
/// open a connection per claim.
pub const CONCURRENT_RECONCILES: u16 = 32;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("ZooKeeper: {0}")]
    Engine(#[from] EngineError),
    #[error("metrics server on {address}: {source}")]
    Metrics {
        address: SocketAddr,
        source: std::io::Error,
    },
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// How long reconciles under way may take to finish once SIGTERM / SIGINT came.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs until SIGTERM / SIGINT.
pub async fn run(config: Config) -> Result<(), Error> {
    let client = Client::try_default().await?;
    run_with(client, config, shutdown_signal()).await
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Runs with a given client until `shutdown` resolves (tests run controllers in-process).
pub async fn run_with(
    client: Client,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::new());
    let address = telemetry::serve(config.metrics_addr, metrics.clone())
        .await
        .map_err(|source| Error::Metrics {
            address: config.metrics_addr,
            source,
        })?;
    tracing::info!(%address, "serving /metrics, /healthz and /readyz");
    let engine = LockEngine::connect(config.engine.clone()).await?;
    follow_session(&engine, metrics.clone());
    let installation = Installation {
        id: engine.installation_id(&config.root).await?,
        zookeeper: format!(
            "{}{}",
            config.engine.connect,
            config.root.trim_end_matches('/')
        ),
    };
    tracing::info!(installation = %installation.id, "this installation");
    // One stream of contender events for the engine's life, read by each term in turn.
    let mut events = engine
        .events()
        .expect("the engine's events are read here only");
    let election_id = ContenderId::random();
    let mut fenced = HashMap::new();
    tokio::pin!(shutdown);
    loop {
        metrics.set_ready(true);
        let mut leadership = tokio::select! {
            leadership = Leadership::campaign(&engine, &config.root, &election_id, &config.identity) => leadership?,
            _ = &mut shutdown => break,
        };
        tracing::info!(identity = %config.identity, "leading");
        metrics.leader(true);
        let (ctx, inputs) = term_context(&client, &engine, &installation, &config, metrics.clone());
        let stopping = CancellationToken::new();
        let term = lead(
            ctx.clone(),
            inputs,
            &mut events,
            &config,
            std::mem::take(&mut fenced),
            stopping.clone(),
        );
        tokio::pin!(term);
        // Whether the controller stops (SIGTERM, or the term ended by itself) rather than
        // campaigning again after a lost session.
        let stops = tokio::select! {
            () = &mut term => true,
            _ = leadership.lost() => false,
            _ = &mut shutdown => {
                // Reconciles under way finish (a release written, its event posted) before
                // the session closes; new ones do not start.
                stopping.cancel();
                if tokio::time::timeout(SHUTDOWN_GRACE, &mut term).await.is_err() {
                    tracing::warn!(grace = ?SHUTDOWN_GRACE, "reconciles still running at shutdown were cut off");
                }
                true
            }
        };
        metrics.leader(false);
        if stops {
            break;
        }
        tracing::warn!(
            "the ZooKeeper session was lost: fencing lost grants, then campaigning again"
        );
        fenced = losses::fence_lost_grants(&ctx).await;
    }
    metrics.set_ready(false);
    // Closing the session deletes every node at once: the next leader resumes from
    // Kubernetes without waiting for a session timeout.
    engine.close().await;
    Ok(())
}

fn follow_session(engine: &LockEngine, metrics: Arc<Metrics>) {
    let mut status = engine.session_status();
    tokio::spawn(async move {
        loop {
            let connected = matches!(*status.borrow_and_update(), SessionStatus::Connected { .. });
            metrics.session_connected(connected);
            if status.changed().await.is_err() {
                return;
            }
        }
    });
}

/// The watch caches' writers and the lock-refresh queue of one term, consumed by [`lead`].
struct TermInputs {
    locks: reflector::store::Writer<DistributedLock>,
    pods: reflector::store::Writer<Pod>,
    jobs: reflector::store::Writer<Job>,
    claims: reflector::store::Writer<LockClaim>,
    lock_changes: mpsc::UnboundedReceiver<ObjectRef<DistributedLock>>,
}

fn term_context(
    client: &Client,
    engine: &LockEngine,
    installation: &Installation,
    config: &Config,
    metrics: Arc<Metrics>,
) -> (Arc<Context>, TermInputs) {
    let (lock_changed, lock_changes) = mpsc::unbounded_channel();
    let (locks, locks_writer) = reflector::store();
    let (pods, pods_writer) = reflector::store();
    let (jobs, jobs_writer) = reflector::store();
    let (claims, claims_writer) = reflector::store();
    let ctx = Arc::new(Context {
        client: client.clone(),
        engine: engine.clone(),
        root: config.root.clone(),
        installation: installation.clone(),
        reporter: Reporter {
            controller: "lockkeeper".into(),
            instance: Some(config.identity.clone()),
        },
        locks,
        pods,
        jobs,
        claims,
        index: ClaimIndex::default(),
        contenders: Mutex::new(HashMap::new()),
        fences: Mutex::new(HashMap::new()),
        stale_claims: Default::default(),
        lock_changed,
        metrics,
        resumed: tokio::sync::watch::channel(false).0,
    });
    let inputs = TermInputs {
        locks: locks_writer,
        pods: pods_writer,
        jobs: jobs_writer,
        claims: claims_writer,
        lock_changes,
    };
    (ctx, inputs)
}

/// One term of leadership: both controllers, whose reconciles wait until the previous
/// leader's claims are queued again in order; until the term is ended from outside, or
/// `stopping` is cancelled and the reconciles under way have finished.
async fn lead(
    ctx: Arc<Context>,
    inputs: TermInputs,
    events: &mut mpsc::UnboundedReceiver<ContenderEvent>,
    config: &Config,
    fenced: HashMap<ObjectRef<DistributedLock>, Duration>,
    stopping: CancellationToken,
) {
    let client = &ctx.client;
    let namespace = config.namespace.as_deref();
    let claims_api: Api<LockClaim> = api(client, namespace);
    let locks_api: Api<DistributedLock> = api(client, namespace);
    let lock_stream = watches::locks(locks_api.clone(), inputs.locks, ctx.locks.clone());
    let pod_stream = watches::pods(api(client, namespace), inputs.pods);
    let job_stream = watches::jobs(api(client, namespace), inputs.jobs);

    // Engine events (grants, losses) reconcile the claim they concern.
    let (claim_triggers, claim_trigger_stream) = mpsc::unbounded_channel::<ObjectRef<LockClaim>>();
    let forward_events = async {
        while let Some(event) = events.recv().await {
            let claim = ctx
                .contenders
                .lock()
                .expect("contenders lock")
                .get(event.id.as_str())
                .map(|tracked| tracked.claim.clone());
            if let Some(claim) = claim {
                let _ = claim_triggers.send(claim);
            }
        }
    };

    let claims_store = ctx.claims.clone();
    let resume_claims = claims_store.clone();
    let index = ctx.index.clone();
    let (departed, departures) = mpsc::unbounded_channel();
    let claim_stream = watches::claims(claims_api, inputs.claims, index.clone(), departed);
    let departures_run = departures::follow(ctx.clone(), departures, stopping.clone());
    let (by_lock, by_pod, by_job) = (index.clone(), index.clone(), index.clone());
    let runner =
        kube::runtime::controller::Config::default().concurrency(config.concurrent_reconciles);
    let claims_run = Controller::for_stream(claim_stream, claims_store.clone())
        .with_config(runner.clone())
        .trigger_backoff(watches::NoSharedPause)
        .graceful_shutdown_on(stopping.clone().cancelled_owned())
        .watches_stream(lock_stream, move |lock: DistributedLock| {
            by_lock.of_lock(&lock.namespace().unwrap_or_default(), &lock.name_any())
        })
        .watches_stream(pod_stream, move |pod: Pod| {
            by_pod.of_holder(
                &pod.namespace().unwrap_or_default(),
                HolderKind::Pod,
                &pod.name_any(),
            )
        })
        .watches_stream(job_stream, move |job: Job| {
            by_job.of_holder(
                &job.namespace().unwrap_or_default(),
                HolderKind::Job,
                &job.name_any(),
            )
        })
        .reconcile_on(UnboundedReceiverStream::new(claim_trigger_stream))
        .run(claims::reconcile, claims::error_policy, ctx.clone())
        .for_each(watches::report_errors);

    let lock_ctx = Arc::new(locks::LockContext {
        shared: ctx.clone(),
        claims: claims_store,
        index,
        refreshed: Default::default(),
        left_alone: Default::default(),
    });
    let (locks_to_refresh, locks_cache) = reflector::store();
    let locks_run = Controller::for_stream(
        watches::locks_to_refresh(locks_api, locks_cache),
        locks_to_refresh,
    )
    .with_config(runner)
    .trigger_backoff(watches::NoSharedPause)
    .graceful_shutdown_on(stopping.clone().cancelled_owned())
    .reconcile_on(UnboundedReceiverStream::new(inputs.lock_changes))
    .run(locks::reconcile, locks::error_policy, lock_ctx)
    .for_each(watches::report_errors);

    // The watches fill the caches meanwhile; reconciles wait until it is done.
    let resumed = async {
        tokio::select! {
            queued = resume::resume(&ctx, &resume_claims, fenced) => if let Some(queued) = queued {
                tracing::info!(queued, "claims of the previous leader queued again in order");
                ctx.resumed.send_replace(true);
            },
            _ = stopping.cancelled() => {}
        }
    };

    tokio::select! {
        _ = futures::future::join4(claims_run, locks_run, resumed, departures_run) => {}
        _ = forward_events => tracing::error!("the lock engine's event stream ended"),
    }
}
