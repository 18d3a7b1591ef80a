//! One term of leadership, wired: the watches fill the caches, the earlier leader's claims
//! are queued again, and the LockClaim and DistributedLock controllers run on kube-runtime,
//! the claims one driven also by the lock engine's events and by the claims that go.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;

use super::claim_index::ClaimIndex;
use super::context::{Caches, Context, Fences, Process, Term};
use super::fast_lane::{self, FastLane};
use super::throttle::Pacer;
use super::{Config, api, claims, departures, locks, losses, resume, watches};
use crate::claim_lifecycle::holders;
use crate::resources::{DistributedLock, HolderKind, LockClaim};
use crate::zookeeper::{ContenderEvent, ContenderState, SessionStatus};

/// The watch caches' writers and the lock-refresh queue of one term, consumed by [`lead`].
pub struct TermInputs {
    locks: Writer<DistributedLock>,
    pods: Writer<Pod>,
    jobs: Writer<Job>,
    claims: Writer<LockClaim>,
    lock_changes: mpsc::UnboundedReceiver<ObjectRef<DistributedLock>>,
    fast_lane: mpsc::UnboundedReceiver<ObjectRef<LockClaim>>,
}

/// A new term's context, with empty caches, and the inputs that fill them.
pub fn begin(process: Arc<Process>) -> (Arc<Context>, TermInputs) {
    let (lock_changed, lock_changes) = mpsc::unbounded_channel();
    let (locks, locks_writer) = reflector::store();
    let (pods, pods_writer) = reflector::store();
    let (jobs, jobs_writer) = reflector::store();
    let (claims, claims_writer) = reflector::store();
    let (fast_lane, fast_lane_requests) = FastLane::new();
    let session_id = match *process.engine.session_status().borrow() {
        SessionStatus::Connected { session_id } => Some(session_id),
        _ => None,
    };
    let ctx = Arc::new(Context {
        process,
        caches: Caches {
            locks,
            pods,
            jobs,
            claims,
            index: ClaimIndex::default(),
        },
        term: Term {
            contenders: Default::default(),
            fences: Mutex::new(HashMap::new()),
            requeues_pending: Mutex::default(),
            ends_pending: Mutex::default(),
            lease_renewals: Default::default(),
            stale_claims: Default::default(),
            claim_retries: Default::default(),
            lock_changed,
            session_id,
            ended: CancellationToken::new(),
            resumed: tokio::sync::watch::channel(false).0,
            fast_lane,
            turns: Default::default(),
            departed_grants: Default::default(),
            deadlocks: Default::default(),
        },
    });
    let inputs = TermInputs {
        locks: locks_writer,
        pods: pods_writer,
        jobs: jobs_writer,
        claims: claims_writer,
        lock_changes,
        fast_lane: fast_lane_requests,
    };
    (ctx, inputs)
}

/// Runs the term: both controllers, whose reconciles wait until the previous leader's claims
/// are queued again in order; until the term is ended from outside, or `stopping` is
/// cancelled and the reconciles under way have finished.
pub async fn lead(
    ctx: Arc<Context>,
    inputs: TermInputs,
    events: &mut mpsc::UnboundedReceiver<ContenderEvent>,
    config: &Config,
    fenced: Fences,
    stopping: CancellationToken,
) {
    let runner = controller::Config::default().concurrency(config.concurrent_reconciles);
    let namespace = config.namespace.as_deref();
    let (claim_triggers, triggered) = mpsc::unbounded_channel();
    let (departed, departures) = mpsc::unbounded_channel();
    let claims_run = claims_controller(
        &ctx,
        ClaimInputs {
            claims: inputs.claims,
            departed,
            locks: inputs.locks,
            pods: inputs.pods,
            jobs: inputs.jobs,
            triggered,
            siblings: claim_triggers.clone(),
        },
        namespace,
        runner.clone(),
        &stopping,
    );
    let locks_run = locks_controller(&ctx, inputs.lock_changes, namespace, runner, &stopping);
    let departures_run = departures::follow(ctx.clone(), departures, stopping.clone());
    let resumed = resume_term(&ctx, fenced, &stopping);
    let fast_lane_run = fast_lane::run(
        ctx.clone(),
        inputs.fast_lane,
        claim_triggers.clone(),
        config.concurrent_reconciles.into(),
        stopping.clone(),
    );
    tokio::select! {
        _ = futures::future::join5(claims_run, locks_run, resumed, departures_run, fast_lane_run) => {}
        () = forward_engine_events(&ctx, events, claim_triggers) => {
            tracing::error!("the lock engine's event stream ended")
        }
    }
}

/// Engine events (grants, losses, places) reconcile the claim they concern; a grant at once,
/// in the fast lane.
async fn forward_engine_events(
    ctx: &Context,
    events: &mut mpsc::UnboundedReceiver<ContenderEvent>,
    claim_triggers: mpsc::UnboundedSender<ObjectRef<LockClaim>>,
) {
    while let Some(event) = events.recv().await {
        if let Some(claim) = ctx.term.contenders.claim_of(event.id.as_str()) {
            if let ContenderState::Lost(reason) = &event.state
                && !reason.ends_session()
            {
                // Before the grant that follows it (the engine tells losses first).
                losses::fence_lost_node(ctx, &claim, event.id.as_str());
            }
            if matches!(event.state, ContenderState::Granted { .. }) {
                ctx.term.fast_lane.reconcile(claim);
            } else {
                let _ = claim_triggers.send(claim);
            }
        }
    }
}

/// Queues the earlier term's claims again; meanwhile the watches fill the caches, and
/// reconciles wait until both are done.
async fn resume_term(ctx: &Arc<Context>, fenced: Fences, stopping: &CancellationToken) {
    tokio::select! {
        queued = resume::resume(ctx, &ctx.caches.claims, fenced) => if let Some(queued) = queued {
            tracing::info!(queued, "claims of the previous leader queued again in order");
            ctx.term.resumed.send_replace(true);
        },
        _ = stopping.cancelled() => {}
    }
}

/// What reconciles claims: their own watch (which tells of claims that go), their locks,
/// their holders, and the engine's events.
struct ClaimInputs {
    claims: Writer<LockClaim>,
    departed: mpsc::UnboundedSender<departures::Departure>,
    locks: Writer<DistributedLock>,
    pods: Writer<Pod>,
    jobs: Writer<Job>,
    triggered: mpsc::UnboundedReceiver<ObjectRef<LockClaim>>,
    /// Where a changed claim's siblings (its holder's other claims) are sent.
    siblings: mpsc::UnboundedSender<ObjectRef<LockClaim>>,
}

fn claims_controller(
    ctx: &Arc<Context>,
    inputs: ClaimInputs,
    namespace: Option<&str>,
    runner: controller::Config,
    stopping: &CancellationToken,
) -> impl Future<Output = ()> + use<> {
    let client = &ctx.process.client;
    let claim_watch = watches::claims(
        api(client, namespace),
        inputs.claims,
        ctx.caches.index.clone(),
        inputs.departed,
        inputs.siblings,
    );
    let lock_watch = watches::locks(
        api(client, namespace),
        inputs.locks,
        ctx.caches.locks.clone(),
    );
    let pod_watch = watches::pods(api(client, namespace), inputs.pods);
    let job_watch = watches::jobs(api(client, namespace), inputs.jobs);
    let (by_lock, by_pod, by_job) = (
        ctx.caches.index.clone(),
        ctx.caches.index.clone(),
        ctx.caches.index.clone(),
    );
    let (pod_lane, job_lane) = (ctx.term.fast_lane.clone(), ctx.term.fast_lane.clone());
    let cached_jobs = ctx.caches.jobs.clone();
    Controller::for_stream(claim_watch, ctx.caches.claims.clone())
        .with_config(runner)
        .trigger_backoff(watches::NoSharedPause)
        .graceful_shutdown_on(stopping.clone().cancelled_owned())
        .watches_stream(lock_watch, move |lock: DistributedLock| {
            by_lock.of_lock(&lock.namespace().unwrap_or_default(), &lock.name_any())
        })
        .watches_stream(pod_watch, move |pod: Pod| {
            let namespace = pod.namespace().unwrap_or_default();
            let mut claims = by_pod.of_holder(&namespace, HolderKind::Pod, &pod.name_any());
            pod_lane.holder_changed(&holders::pod_state(&pod.name_any(), Some(&pod)), &claims);
            // A Job's pods hold its lock after the Job is deleted, until they are gone: while
            // their Job is gone (or replaced by a new one of its name), their changes reconcile
            // its claims.
            if let Some(job) = holders::job_name_of(&pod)
                && cached_jobs
                    .get(&ObjectRef::new(job).within(&namespace))
                    .is_none_or(|cached| {
                        cached.metadata.uid.as_deref() != holders::job_uid_of(&pod)
                    })
            {
                claims.extend(by_pod.of_holder(&namespace, HolderKind::Job, job));
            }
            claims
        })
        .watches_stream(job_watch, move |job: Job| {
            let namespace = job.namespace().unwrap_or_default();
            let claims = by_job.of_holder(&namespace, HolderKind::Job, &job.name_any());
            job_lane.holder_changed(&holders::job_state(&job.name_any(), Some(&job)), &claims);
            claims
        })
        .reconcile_on(UnboundedReceiverStream::new(inputs.triggered))
        .run(claims::reconcile, claims::error_policy, ctx.clone())
        .for_each(watches::report_errors)
}

fn locks_controller(
    ctx: &Arc<Context>,
    lock_changes: mpsc::UnboundedReceiver<ObjectRef<DistributedLock>>,
    namespace: Option<&str>,
    runner: controller::Config,
    stopping: &CancellationToken,
) -> impl Future<Output = ()> + use<> {
    let lock_ctx = Arc::new(locks::LockContext {
        shared: ctx.clone(),
        refreshes: Pacer::new(locks::REFRESH_INTERVAL, locks::REFRESHES_PER_SECOND),
        left_alone: Default::default(),
        retries: Default::default(),
    });
    let (cached, cache): (Store<DistributedLock>, _) = reflector::store();
    let lock_watch = watches::locks_to_refresh(api(&ctx.process.client, namespace), cache);
    Controller::for_stream(lock_watch, cached)
        .with_config(runner)
        .trigger_backoff(watches::NoSharedPause)
        .graceful_shutdown_on(stopping.clone().cancelled_owned())
        .reconcile_on(UnboundedReceiverStream::new(lock_changes))
        .run(locks::reconcile, locks::error_policy, lock_ctx)
        .for_each(watches::report_errors)
}
