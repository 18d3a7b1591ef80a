//! The LockClaim reconciler: gathers what [`crate::claim_lifecycle::decide`] needs (lock, holder,
//! queue), then carries out its step — ZooKeeper queue, status (a merge patch), Job
//! resume, events. A deleted claim leaves the queue through [`super::departures`].

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::context::Context;
use super::error::{During, Error, Step};
use super::finalizer::{self, Patched};
use super::holder_writes::{self, Applied};
use super::installation::{self, Serving};
use super::status;
use crate::claim_lifecycle::holders;
use crate::claim_lifecycle::{
    self, ClaimFacts, HolderSet, HolderState, LockFacts, QueueAction, QueueState,
};
use crate::resources::{
    ClaimPhase, DistributedLock, HolderKind, LockClaim, LockClaimStatus, declared_locks,
};
use crate::zookeeper::EngineError;
use crate::zookeeper::znode_name::ContenderId;

/// The finalizer claims made by lockkeeper 0.1 carry. Claims need none now (see
/// [`super::departures`]); the controller takes it off.
pub const LEGACY_FINALIZER: &str = "lockkeeper.dev/release";

pub async fn reconcile(claim: Arc<LockClaim>, ctx: Arc<Context>) -> Result<Action, Error> {
    // kube-runtime never runs two reconciles of a claim at once, but the fast lane runs some
    // beside it.
    let _turn = ctx.term.turns.take(&uid(&claim)).await;
    let _timing = ctx.process.metrics.reconcile_started(CONTROLLER);
    let result = reconcile_claim(&claim, &ctx).await;
    if result.is_ok() {
        ctx.term
            .claim_retries
            .succeeded(&ObjectRef::from_obj(claim.as_ref()));
    }
    result
}

/// The controller's name in metrics.
const CONTROLLER: &str = "LockClaim";

async fn reconcile_claim(claim: &Arc<LockClaim>, ctx: &Arc<Context>) -> Result<Action, Error> {
    // Decide on complete caches only (a holder missing from a cache still filling is not a
    // deleted holder), and after the earlier term's claims are queued again in order.
    ctx.term_resumed().await;
    let version = claim.resource_version();
    if ctx
        .term
        .stale_claims
        .is_stale(&uid(claim), version.as_deref())
    {
        // This controller wrote a newer version; its watch event reconciles the claim.
        return Ok(Action::await_change());
    }
    if claim.meta().deletion_timestamp.is_some() {
        // Held up by a finalizer: the claim leaves the queue now.
        leave_for_good(ctx, &uid(claim), &claim.lock_ref()).await?;
    }
    if claim.finalizers().iter().any(|f| f == LEGACY_FINALIZER) {
        let api: Api<LockClaim> = ctx.api_beside(claim.as_ref());
        return Ok(
            match finalizer::remove(&api, claim.as_ref(), LEGACY_FINALIZER)
                .await
                .during(Step::RemoveFinalizer)?
            {
                // The change's watch event reconciles the claim again.
                Patched::Applied => Action::await_change(),
                Patched::Stale => Action::requeue(CONFLICT_RETRY),
            },
        );
    }
    if claim.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    advance(claim, ctx).await
}

pub fn error_policy(claim: Arc<LockClaim>, error: &Error, ctx: Arc<Context>) -> Action {
    let retry = ctx
        .term
        .claim_retries
        .after_failure(ObjectRef::from_obj(claim.as_ref()));
    tracing::warn!(claim = %claim.name_any(), %error, ?retry, "reconcile failed; retrying");
    ctx.process.metrics.reconcile_failed(CONTROLLER, error.step);
    Action::requeue(retry)
}

fn uid(claim: &LockClaim) -> String {
    claim.uid().unwrap_or_default()
}

/// A claim that is gone, or going, leaves the queue for good; a grant it held counts as
/// released.
pub async fn leave_for_good(
    ctx: &Context,
    uid: &str,
    lock: &ObjectRef<DistributedLock>,
) -> Result<(), Error> {
    if leave_queue(ctx, uid, ctx.caches.locks.get(lock).as_deref()).await? {
        ctx.process.metrics.released(&lock.name);
    }
    ctx.end_written(lock, uid);
    ctx.term.lease_renewals.forget(uid);
    ctx.term.stale_claims.forget(uid);
    let _ = ctx.term.lock_changed.send(lock.clone());
    Ok(())
}

fn queue_state(ctx: &Context, claim: &LockClaim) -> QueueState {
    ctx.term.contenders.queue_state(&uid(claim))
}

fn holder_state(
    ctx: &Context,
    claim: &LockClaim,
    now: Timestamp,
) -> (HolderState, Option<Duration>) {
    let pod = ctx.cached_holder_pod(claim);
    let job = ctx.cached_holder_job(claim);
    let renewed = (claim.spec.holder.kind == HolderKind::Lease).then(|| {
        let renew_time = claim.spec.renew_time.as_ref().map(|t| t.0);
        ctx.term
            .lease_renewals
            .observe(&uid(claim), renew_time, now)
    });
    holders::holder_state(claim, pod.as_deref(), job.as_deref(), renewed, now)
}

/// Whether the pods of the claim's deleted holder Job still run, as the pod cache has them.
fn job_pods_running(ctx: &Context, claim: &LockClaim) -> bool {
    let namespace = claim.namespace();
    let pods = ctx.caches.pods.state();
    let in_namespace = pods
        .iter()
        .map(AsRef::as_ref)
        .filter(|pod| pod.namespace() == namespace);
    holders::job_pods_running(claim, in_namespace)
}

/// The holder as the API server has it now (Pods and Jobs; a Lease holder is the claim).
async fn read_holder(ctx: &Context, claim: &LockClaim) -> Result<HolderState, Error> {
    let name = &claim.spec.holder.name;
    Ok(match claim.spec.holder.kind {
        HolderKind::Pod => {
            let pods: Api<Pod> = ctx.api_beside(claim);
            let pod = pods.get_opt(name).await.during(Step::ReadHolder)?;
            let pod = pod.filter(|pod| holders::is_bound_holder(claim, &pod.metadata));
            holders::pod_state(name, pod.as_ref())
        }
        HolderKind::Job => {
            let jobs: Api<Job> = ctx.api_beside(claim);
            let job = jobs.get_opt(name).await.during(Step::ReadHolder)?;
            let job = job.filter(|job| holders::is_bound_holder(claim, &job.metadata));
            holders::job_state(name, job.as_ref())
        }
        HolderKind::Lease => HolderState::Running,
    })
}

/// What `claim`'s status says, and what its holder's other claims, and the locks a holder
/// Job declares, say (see [`HolderSet`]).
fn claim_facts(ctx: &Context, claim: &LockClaim) -> ClaimFacts {
    let mut facts = ClaimFacts::of(claim);
    let namespace = claim.namespace().unwrap_or_default();
    let holder = &claim.spec.holder;
    let siblings: Vec<Arc<LockClaim>> = ctx
        .caches
        .index
        .of_holder(&namespace, holder.kind, &holder.name)
        .iter()
        .filter_map(|sibling| ctx.caches.claims.get(sibling))
        .collect();
    let declared = ctx
        .cached_holder_job(claim)
        .map(|job| declared_locks(job.metadata.annotations.as_ref()))
        .unwrap_or_default();
    if siblings.len() > 1 || !declared.is_empty() {
        let siblings: Vec<&LockClaim> = siblings.iter().map(AsRef::as_ref).collect();
        facts.holder_set = HolderSet::of(claim, &siblings, &declared);
    }
    facts.deadlock = super::deadlocks::of_claim(ctx, claim);
    facts
}

/// What a claim's decision reads besides its queue state: its lock, its holder, itself.
struct Observed {
    lock: Option<Arc<DistributedLock>>,
    lock_facts: Option<LockFacts>,
    holder: HolderState,
    /// The holder Pod's or Job's UID, as found: the claim binds to it when it is queued.
    holder_uid: Option<String>,
    /// When a lease holder's state is to be looked at again.
    holder_check: Option<Duration>,
    facts: ClaimFacts,
    now: Timestamp,
}

impl Observed {
    fn decide(&self, claim: &LockClaim, queue: &QueueState) -> claim_lifecycle::Step {
        claim_lifecycle::decide(
            &claim.spec,
            &self.facts,
            self.lock_facts.as_ref(),
            &self.holder,
            queue,
            self.now,
        )
    }
}

/// observe → decide → act: the step [`claim_lifecycle::decide`] picks is carried out on the
/// queue (which may answer with a new state to decide on once more), then on the holder and
/// the claim's status.
async fn advance(claim: &LockClaim, ctx: &Arc<Context>) -> Result<Action, Error> {
    let lock = ctx.caches.locks.get(&claim.lock_ref());
    if let Some(lock) = lock.as_deref()
        && let Some(action) = unless_served_here(ctx, claim, lock).await?
    {
        return Ok(action);
    }
    let observed = observe(ctx, claim, lock).await?;
    let step = observed.decide(claim, &queue_state(ctx, claim));
    match act_on_queue(ctx, claim, &observed, step).await? {
        Queued::GoOn(step) => act(ctx, claim, &step, &observed).await,
        Queued::Instead(action) => Ok(action),
    }
}

/// What to do with a claim of a lock this installation does not serve: wait while the lock
/// is unclaimed (the lock reconciler takes it first, and its watch event brings the claim
/// back); leave the queue when another installation serves it.
async fn unless_served_here(
    ctx: &Context,
    claim: &LockClaim,
    lock: &DistributedLock,
) -> Result<Option<Action>, Error> {
    match installation::serving(&ctx.process.installation, lock) {
        Serving::Here => Ok(None),
        Serving::Unclaimed => Ok(Some(Action::await_change())),
        Serving::Elsewhere(_) => {
            if ctx.term.contenders.is_tracked(&uid(claim)) {
                leave_queue(ctx, &uid(claim), Some(lock)).await?;
            }
            Ok(Some(Action::await_change()))
        }
    }
}

async fn observe(
    ctx: &Context,
    claim: &LockClaim,
    lock: Option<Arc<DistributedLock>>,
) -> Result<Observed, Error> {
    let now = Timestamp::now();
    let lock_facts = lock.as_deref().map(|lock| LockFacts {
        held_back: ctx.held_back(&claim.lock_ref()),
        unservable: lock
            .lock_spec(&ctx.process.root)
            .err()
            .map(|err| err.to_string()),
        ..LockFacts::of(lock)
    });
    let (mut holder, holder_check) = holder_state(ctx, claim, now);
    let holder_uid = match claim.spec.holder.kind {
        HolderKind::Pod => ctx.cached_holder_pod(claim).and_then(|pod| pod.uid()),
        HolderKind::Job => ctx.cached_holder_job(claim).and_then(|job| job.uid()),
        HolderKind::Lease => None,
    };
    let facts = claim_facts(ctx, claim);
    if holder == HolderState::Missing && !facts.phase.is_final() {
        // The pod or job cache may lag behind a holder made just before its claim (and a
        // claim may already be queued by then): ask the API before reporting the holder
        // missing or releasing its claim.
        holder = read_holder(ctx, claim).await?;
    }
    if holder == HolderState::Missing
        && facts.phase == ClaimPhase::Granted
        && claim.spec.holder.kind == HolderKind::Job
        && job_pods_running(ctx, claim)
    {
        // A deleted Job's pods are deleted after it, and may work on meanwhile: the grant
        // holds until they are gone (their changes reconcile the claim).
        holder = HolderState::Running;
    }
    Ok(Observed {
        lock,
        lock_facts,
        holder,
        holder_uid,
        holder_check,
        facts,
        now,
    })
}

/// After the queue action: the step to go on with, or, when the claim is not to be queued yet
/// (its lock fenced, an older claim due first, the claim deleted meanwhile), what to do
/// instead.
enum Queued {
    GoOn(claim_lifecycle::Step),
    Instead(Action),
}

/// Carries out the step's queue action if it is to join the queue; a claim leaves it in
/// [`act`], after its end is written and its holder evicted.
async fn act_on_queue(
    ctx: &Context,
    claim: &LockClaim,
    observed: &Observed,
    step: claim_lifecycle::Step,
) -> Result<Queued, Error> {
    let lock = observed.lock.as_deref();
    match step.queue {
        QueueAction::Keep | QueueAction::Dequeue => Ok(Queued::GoOn(step)),
        QueueAction::Enqueue => {
            let lock = lock.expect("a valid claim has its lock");
            if let Some(wait) = ctx.fenced_for(&claim.lock_ref()) {
                return Ok(Queued::Instead(Action::requeue(wait)));
            }
            if older_claim_due(ctx, claim, observed.lock_facts.as_ref(), observed.now) {
                return Ok(Queued::Instead(Action::requeue(ORDER_RETRY)));
            }
            let queue = enqueue(ctx, claim, lock).await?;
            if !still_cached(ctx, claim) {
                // Deleted while it was being queued: its departure may have found nothing
                // queued yet.
                leave_for_good(ctx, &uid(claim), &claim.lock_ref()).await?;
                return Ok(Queued::Instead(Action::await_change()));
            }
            // The engine answers with the queue already read: decide again on it.
            Ok(Queued::GoOn(observed.decide(claim, &queue)))
        }
    }
}

/// Carries out the rest of the step, in the order that keeps the lock's promise: a hold-back
/// fenced, the status written, then the holder Job resumed or the holder evicted, and last the
/// claim's node taken out of the queue — so the next claim is never granted before the old
/// holder's end is written and, where the lock asks for it, its pods are asked to stop. Then
/// when to look at the claim again.
async fn act(
    ctx: &Context,
    claim: &LockClaim,
    step: &claim_lifecycle::Step,
    observed: &Observed,
) -> Result<Action, Error> {
    if !ctx.zookeeper_connected() {
        // Decided on queues that may be out of date: write nothing until the session is back
        // (or is lost, and the term ends).
        return Ok(Action::requeue(DISCONNECTED_RETRY));
    }
    if let Some(outcome) = &step.outcome
        && let Some(until) = outcome.held_back_until
    {
        // Before the end is written: a claim next in line reconciled meanwhile (its node may
        // already lead, when this one's went on its own) must not be told it holds the lock.
        let why = format!(
            "claim {}'s grant ended ({})",
            claim.name_any(),
            outcome.reason
        );
        ctx.fence(claim.lock_ref(), claim_lifecycle::HeldBack { until, why });
    }
    let mut retry_write = None;
    if let Some(outcome) = &step.outcome {
        if let Some(wait) = place_write_delay(ctx, claim, outcome) {
            retry_write = Some(wait);
        } else if write_status(ctx, claim, outcome, observed).await? == Written::Conflict {
            // The decision was made on an old copy of the claim: nothing more is done on it.
            return Ok(Action::requeue(CONFLICT_RETRY));
        }
    }
    // The holder is written after the claim's status went through, each write conditional
    // on the copy decided on: a stale decision changes neither.
    if step.resume_job
        && holder_writes::resume_job(ctx, claim)
            .await
            .during(Step::ResumeJob)?
            == Applied::HolderChanged
    {
        retry_write = Some(CONFLICT_RETRY);
    }
    if step.evict_holder {
        // The node stays until the old holder is asked to stop (a failure retries the
        // reconcile, with backoff).
        if let Err(err) = holder_writes::evict_holder(ctx, claim).await {
            let note = format!(
                "could not stop the holder of a grant that ended abnormally; the lock stays held \
                 until it can: {err}"
            );
            status::publish(ctx, claim, true, "EvictionFailed", "Evict", note).await;
            return Err(err).during(Step::EvictHolder);
        }
    }
    if step.queue == QueueAction::Dequeue {
        leave_queue(ctx, &uid(claim), observed.lock.as_deref()).await?;
        // A node that went on its own held the lock back until this claim left the line, its
        // end written (a decision made before the node went keeps it queued: no lift).
        ctx.end_written(&claim.lock_ref(), &uid(claim));
    }
    let next = [step.requeue_after, observed.holder_check, retry_write]
        .into_iter()
        .flatten()
        .min();
    Ok(match next {
        Some(after) => Action::requeue(after.max(Duration::from_millis(50))),
        None => Action::await_change(),
    })
}

/// How soon a claim decided on while ZooKeeper was away is looked at again.
pub const DISCONNECTED_RETRY: Duration = Duration::from_millis(250);

/// How soon a claim that let an older one go first tries again.
const ORDER_RETRY: Duration = Duration::from_millis(50);

/// The order claims of one lock are queued in: creation, then name (creation timestamps
/// have whole seconds, and `kubectl apply -f` makes a directory's claims within one).
fn creation_order(claim: &LockClaim) -> (Option<Timestamp>, &str) {
    let meta = claim.meta();
    (
        meta.creation_timestamp.as_ref().map(|t| t.0),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// Whether an older claim of the same lock is due to be queued and is not yet: then this
/// claim lets it go first. Reconciles run side by side, so claims applied together, or
/// waiting for their lock to be made, would otherwise enter the queue in whatever order
/// their reconciles reach ZooKeeper. An older claim that cannot be queued (its holder is
/// gone, its spec is invalid) holds up nobody: the same pure decision says so.
fn older_claim_due(
    ctx: &Context,
    claim: &LockClaim,
    lock: Option<&LockFacts>,
    now: Timestamp,
) -> bool {
    let order = creation_order(claim);
    let namespace = claim.namespace().unwrap_or_default();
    ctx.caches
        .index
        .of_lock(&namespace, &claim.spec.lock)
        .iter()
        .filter_map(|other| ctx.caches.claims.get(other))
        .filter(|other| other.meta().deletion_timestamp.is_none())
        .filter(|other| creation_order(other) < order)
        .any(|other| {
            let queue = queue_state(ctx, &other);
            if queue != QueueState::NotQueued {
                return false;
            }
            let (holder, _) = holder_state(ctx, &other, now);
            let step = claim_lifecycle::decide(
                &other.spec,
                &claim_facts(ctx, &other),
                lock,
                &holder,
                &queue,
                now,
            );
            step.queue == QueueAction::Enqueue
        })
}

async fn enqueue(
    ctx: &Context,
    claim: &LockClaim,
    lock: &DistributedLock,
) -> Result<QueueState, Error> {
    let spec = lock.lock_spec(&ctx.process.root).during(Step::Enqueue)?;
    ctx.queue_claim(&spec, claim).await.during(Step::Enqueue)?;
    Ok(queue_state(ctx, claim))
}

/// Whether the claim cache still holds this claim (not deleted, nor made again by that name).
fn still_cached(ctx: &Context, claim: &LockClaim) -> bool {
    ctx.caches
        .claims
        .get(&ObjectRef::from_obj(claim))
        .is_some_and(|cached| cached.uid() == claim.uid())
}

/// Takes the claim's contender out of the queue (releasing a grant), whether this term
/// queued it or an earlier one did; true if it held the lock. Without a tracked contender
/// or a usable lock nothing was queued, so nothing is dequeued.
async fn leave_queue(
    ctx: &Context,
    uid: &str,
    lock: Option<&DistributedLock>,
) -> Result<bool, Error> {
    let tracked = ctx.term.contenders.untrack(uid);
    let (spec, held) = match tracked {
        Some(tracked) => tracked,
        None => match lock.map(|lock| lock.lock_spec(&ctx.process.root)) {
            Some(Ok(spec)) => (spec, false),
            _ => return Ok(false),
        },
    };
    let id = ContenderId::new(uid.to_string())
        .map_err(EngineError::from)
        .during(Step::Dequeue)?;
    match ctx.process.engine.dequeue(&spec, &id).await {
        Ok(()) | Err(EngineError::NotQueued { .. }) => Ok(held),
        Err(err) => Err(err).during(Step::Dequeue),
    }
}

/// A suspended holder Job starts once its claim is granted.
/// Whether a status write went through.
#[derive(Debug, PartialEq, Eq)]
enum Written {
    Yes,
    /// 409: the decision was made on an old copy. The newer copy reconciles again when its
    /// watch event comes; a retry soon after covers a conflict without one.
    Conflict,
}

const CONFLICT_RETRY: Duration = Duration::from_millis(250);

/// How often a waiting claim's place in line (position, sequence) may be written. Each
/// handoff moves every waiter of the lock up one place: writing every move would cost a
/// status write per waiter per handoff, quadratic in the length of the queue.
pub const POSITION_REFRESH: Duration = Duration::from_secs(1);

/// How many places in line the controller writes per second, across all claims (and as many
/// at once). Within it every place is right within [`POSITION_REFRESH`]; past it (long queues
/// that move fast) places catch up at this rate, nearest the front first, and grants and
/// releases, which are never held back, keep the API server's capacity.
pub const PLACE_WRITES_PER_SECOND: u32 = 20;

/// How long to hold back a status write that only changes a waiting claim's place in line
/// (at most one per [`POSITION_REFRESH`], counted from the claim's queueing, within
/// [`PLACE_WRITES_PER_SECOND`]).
fn place_write_delay(
    ctx: &Context,
    claim: &LockClaim,
    outcome: &claim_lifecycle::Outcome,
) -> Option<Duration> {
    let current = claim.status.as_ref()?;
    let place_only = current.phase == ClaimPhase::Waiting
        && outcome.phase == ClaimPhase::Waiting
        && (current.position != outcome.position || current.sequence != outcome.sequence);
    if !place_only {
        return None;
    }
    ctx.term
        .contenders
        .place_write_wait(&uid(claim), outcome.position.unwrap_or_default())
}

/// Writes the claim's status (a merge patch on the resourceVersion the decision read), and
/// an event and metrics when the phase changes.
async fn write_status(
    ctx: &Context,
    claim: &LockClaim,
    outcome: &claim_lifecycle::Outcome,
    observed: &Observed,
) -> Result<Written, Error> {
    let (deadlock, now) = (observed.facts.deadlock.as_ref(), observed.now);
    let current = claim.status.clone().unwrap_or_default();
    let mut wanted = claim_lifecycle::with_deadlock(
        claim_lifecycle::status_after(&current, outcome, claim.meta().generation, now),
        deadlock,
        &current,
        now,
    );
    if wanted.granted_at.is_none() || current.granted_at.is_none() {
        // Until its first grant the claim follows whichever object has its holder's name (one
        // replaced while it waited is still its holder); granted, it binds to that one.
        if matches!(wanted.phase, ClaimPhase::Waiting | ClaimPhase::Granted) {
            wanted.holder_uid = observed.holder_uid.clone();
        }
    }
    if wanted == current {
        return Ok(Written::Yes);
    }
    let api: Api<LockClaim> = ctx.api_beside(claim);
    match status::write(&api, claim, claim.status.as_ref(), &wanted).await {
        Ok(()) => ctx
            .term
            .stale_claims
            .replaced(&uid(claim), claim.meta().resource_version.as_deref()),
        Err(kube::Error::Api(status)) if status.code == 409 => return Ok(Written::Conflict),
        Err(err) => return Err(err).during(Step::WriteClaimStatus),
    }
    let created = claim.meta().creation_timestamp.as_ref().map(|t| t.0);
    let transition = claim_lifecycle::transition(&current, outcome, created, Timestamp::now());
    status::record_transition(ctx, claim, transition).await;
    let deadlocked = |s: &LockClaimStatus| {
        s.conditions
            .iter()
            .any(|c| c.type_ == claim_lifecycle::DEADLOCKED)
    };
    if let Some(deadlock) = deadlock.filter(|_| deadlocked(&wanted) && !deadlocked(&current)) {
        status::publish(
            ctx,
            claim,
            true,
            claim_lifecycle::DEADLOCKED,
            "Wait",
            deadlock.description.clone(),
        )
        .await;
    }
    let _ = ctx.term.lock_changed.send(claim.lock_ref());
    Ok(Written::Yes)
}
