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
pub mod contenders;
pub mod context;
pub mod deadlocks;
pub mod departed_grants;
pub mod departures;
pub mod error;
pub mod fast_lane;
pub mod finalizer;
pub mod holder_writes;
pub mod installation;
pub mod leader;
pub mod locks;
pub mod losses;
pub mod resume;
pub mod retries;
pub mod slim;
pub mod stale_copies;
pub mod status;
pub mod telemetry;
pub mod term;
pub mod throttle;
pub mod watches;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::api::Api;
use kube::runtime::events::Reporter;
use tokio_util::sync::CancellationToken;

use self::context::{Fences, Process};
use self::leader::Leadership;
use self::telemetry::Metrics;
use crate::lock_paths::{AllowedPrefix, LockPaths};
use crate::resources::Installation;
use crate::zookeeper::znode_name::ContenderId;
use crate::zookeeper::{EngineConfig, EngineError, LockEngine, SessionStatus};

/// How the controller is set up (from `lockkeeper controller`'s flags).
pub struct Config {
    pub engine: EngineConfig,
    /// Default lock paths are `<root>/<namespace>/<name>`.
    pub root: String,
    /// Prefixes a namespace's locks may use beyond `<root>/<namespace>/` (see [`crate::lock_paths`]).
    pub allowed_lock_paths: Vec<AllowedPrefix>,
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
    serve_metrics(&config, metrics.clone()).await?;
    let engine = LockEngine::connect(config.engine.clone()).await?;
    follow_session(&engine, metrics.clone());
    let process = Arc::new(Process {
        client,
        engine: engine.clone(),
        root: LockPaths::new(&config.root, config.allowed_lock_paths.clone()),
        installation: this_installation(&engine, &config).await?,
        reporter: reporter(&config),
        metrics: metrics.clone(),
    });
    // One stream of contender events for the engine's life, read by each term in turn.
    let mut events = engine
        .events()
        .expect("the engine's events are read here only");
    let election_id = ContenderId::random();
    let mut fenced = Fences::new();
    tokio::pin!(shutdown);
    loop {
        metrics.set_ready(true);
        let mut leadership = tokio::select! {
            leadership = Leadership::campaign(&engine, &config.root, &election_id, &config.identity) => leadership?,
            _ = &mut shutdown => break,
        };
        tracing::info!(identity = %config.identity, "leading");
        metrics.leader(true);
        let (ctx, inputs) = term::begin(process.clone());
        let stopping = CancellationToken::new();
        let term = term::lead(
            ctx.clone(),
            inputs,
            &mut events,
            &config,
            std::mem::take(&mut fenced),
            stopping.clone(),
        );
        let ended = term_end(term, &mut leadership, &mut shutdown, stopping).await;
        ctx.term.ended.cancel();
        metrics.leader(false);
        if ended == TermEnd::Stop {
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

async fn serve_metrics(config: &Config, metrics: Arc<Metrics>) -> Result<(), Error> {
    let address = telemetry::serve(config.metrics_addr, metrics)
        .await
        .map_err(|source| Error::Metrics {
            address: config.metrics_addr,
            source,
        })?;
    tracing::info!(%address, "serving /metrics, /healthz and /readyz");
    Ok(())
}

/// Who posts the controller's events: lockkeeper, as this replica.
fn reporter(config: &Config) -> Reporter {
    Reporter {
        controller: "lockkeeper".into(),
        instance: Some(config.identity.clone()),
    }
}

/// This installation: the id kept under the root, and where the root is.
async fn this_installation(engine: &LockEngine, config: &Config) -> Result<Installation, Error> {
    let installation = Installation {
        id: engine.installation_id(&config.root).await?,
        zookeeper: format!(
            "{}{}",
            config.engine.connect,
            config.root.trim_end_matches('/')
        ),
    };
    tracing::info!(installation = %installation.id, "this installation");
    Ok(installation)
}

/// How a term ended: the controller stops (SIGTERM, or the term ended by itself), or the
/// ZooKeeper session was lost and it campaigns again.
#[derive(Debug, PartialEq, Eq)]
enum TermEnd {
    Stop,
    SessionLost,
}

async fn term_end(
    term: impl std::future::Future<Output = ()>,
    leadership: &mut Leadership,
    shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
    stopping: CancellationToken,
) -> TermEnd {
    tokio::pin!(term);
    tokio::select! {
        () = &mut term => TermEnd::Stop,
        _ = leadership.lost() => TermEnd::SessionLost,
        _ = shutdown => {
            // Reconciles under way finish (a release written, its event posted) before
            // the session closes; new ones do not start.
            stopping.cancel();
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut term).await.is_err() {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "reconciles still running at shutdown were cut off");
            }
            TermEnd::Stop
        }
    }
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
