//! The DistributedLock reconciler: writes who holds the lock and how many wait, read from the
//! lock's ZooKeeper queue (so clients outside Kubernetes count too).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::context::Context;
use super::error::{During, Error, Step};
use super::installation::{self, Serving};
use super::retries::Retries;
use super::status;
use super::throttle::Pacer;
use crate::lock_status::{LockFacts, WantedStatus, lock_status};
use crate::resources::{
    ClaimPhase, DEFAULT_HISTORY_LIMIT, DistributedLock, DistributedLockStatus, Installation,
    LockClaim, LockSpecError,
};
use crate::zookeeper::LockQueue;

/// The lock controller's context: the claim controller's, and what only the lock controller
/// keeps for the term.
pub struct LockContext {
    pub shared: Arc<Context>,
    /// Each lock's status refreshes, held to one per [`REFRESH_INTERVAL`], and all of them
    /// to [`REFRESHES_PER_SECOND`].
    pub refreshes: Pacer<ObjectRef<DistributedLock>>,
    /// Locks served by another installation that this term has warned about.
    pub left_alone: Mutex<HashSet<ObjectRef<DistributedLock>>>,
    /// How soon each lock whose refresh failed is tried again.
    pub retries: Retries<ObjectRef<DistributedLock>>,
}

/// A lock's status is refreshed at most this often: on a busy lock every grant, release and
/// new waiter changes it, and the changes of one second are written together (as a claim's
/// place in line is: right within a second, and about one lock write per grant at most).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// How many lock statuses the controller refreshes per second, across all locks (and as many
/// at once). Within it every lock is refreshed within [`REFRESH_INTERVAL`]; past it (many
/// busy locks at once) each waits its turn, so a drain of hundreds of locks spends the API
/// server on grants and releases, which claims show at once, rather than on lock summaries.
pub const REFRESHES_PER_SECOND: u32 = 20;

impl LockContext {
    /// The cached claims of `lock`.
    fn claims_of(&self, lock: &DistributedLock) -> Vec<Arc<LockClaim>> {
        self.shared
            .caches
            .index
            .of_lock(&lock.namespace().unwrap_or_default(), &lock.name_any())
            .iter()
            .filter_map(|claim_ref| self.shared.caches.claims.get(claim_ref))
            .collect()
    }

    /// Leaves a lock served by `other` alone, saying so once per term.
    async fn leave_alone(&self, lock: &DistributedLock, other: &Installation) {
        let first = self
            .left_alone
            .lock()
            .expect("left-alone lock")
            .insert(ObjectRef::from_obj(lock));
        if first {
            let note = installation::elsewhere_note(&self.shared.process.installation, other);
            tracing::warn!(lock = %lock.name_any(), "{note}");
            status::publish(
                &self.shared,
                lock,
                true,
                "ServedElsewhere",
                "LeaveAlone",
                note,
            )
            .await;
        }
    }
}

/// How soon a lock whose status write met a newer version is looked at again (its watch
/// event usually comes first).
const CHANGED_RETRY: Duration = Duration::from_millis(250);

pub async fn reconcile(lock: Arc<DistributedLock>, ctx: Arc<LockContext>) -> Result<Action, Error> {
    let _timing = ctx.shared.process.metrics.reconcile_started(CONTROLLER);
    let result = refresh(&lock, &ctx).await;
    if result.is_ok() {
        ctx.retries.succeeded(&ObjectRef::from_obj(lock.as_ref()));
    }
    result
}

/// The controller's name in metrics.
const CONTROLLER: &str = "DistributedLock";

/// observe → decide → act: the lock's status from its ZooKeeper queue and cached claims.
async fn refresh(lock: &Arc<DistributedLock>, ctx: &LockContext) -> Result<Action, Error> {
    // Before, the engine knows only part of the queues.
    ctx.shared.term_resumed().await;
    if lock.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let here = &ctx.shared.process.installation;
    // A lock served here, or unclaimed (the status written takes it).
    if let Serving::Elsewhere(other) = installation::serving(here, lock) {
        ctx.leave_alone(lock, other).await;
        return Ok(Action::await_change());
    }
    if let Some(wait) = ctx.refreshes.wait(&ObjectRef::from_obj(lock.as_ref())) {
        return Ok(Action::requeue(wait));
    }
    // Observe: the lock's queue in ZooKeeper, and the cached claims that name its holders.
    let current = lock.status.clone().unwrap_or_default();
    let queue = read_queue(lock, ctx).await?;
    let claims = ctx.claims_of(lock);
    let history_limit = lock.spec.history_limit.unwrap_or(DEFAULT_HISTORY_LIMIT) as usize;
    let departed_grants = &ctx.shared.term.departed_grants;
    let lock_ref = ObjectRef::from_obj(lock.as_ref());
    if history_limit == 0 {
        departed_grants.forget(&lock_ref);
    }
    let departed = departed_grants.of(&lock_ref, &current.history);
    let by_uid: HashMap<String, &LockClaim> = claims
        .iter()
        .filter_map(|claim| Some((claim.uid()?, claim.as_ref())))
        .collect();
    let facts = LockFacts {
        current: &current,
        generation: lock.meta().generation,
        queue: queue.as_ref().map(|(dir, queue)| (dir.as_str(), queue)),
        claims: &by_uid,
        departed: &departed,
        history_limit,
    };
    // Decide.
    let WantedStatus {
        status: wanted,
        look_again,
    } = lock_status(&facts, here, Timestamp::now());
    let settled = match look_again {
        true => Action::requeue(REFRESH_INTERVAL),
        false => Action::await_change(),
    };
    // Act.
    let phase = |c: &LockClaim| c.status.as_ref().map(|s| s.phase).unwrap_or_default();
    let waiting: Vec<Arc<LockClaim>> = claims
        .iter()
        .filter(|c| matches!(phase(c), ClaimPhase::Waiting | ClaimPhase::Lost))
        .cloned()
        .collect();
    super::deadlocks::search_from(&ctx.shared, &waiting);
    if let Ok((_, queue)) = &queue {
        let metrics = &ctx.shared.process.metrics;
        metrics.queue_length(&lock.name_any(), queue.waiting() as u32);
        let oldest_wait = claims
            .iter()
            .filter(|c| {
                matches!(
                    phase(c),
                    ClaimPhase::Pending | ClaimPhase::Waiting | ClaimPhase::Lost
                )
            })
            .filter_map(|c| c.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .min();
        let oldest_grant = wanted
            .holders
            .iter()
            .filter_map(|h| h.granted_at.as_ref().map(|t| t.0))
            .min();
        metrics.lock_summary(
            &lock.name_any(),
            wanted.holders.len() as u32 + wanted.external_holders,
            oldest_wait,
            oldest_grant,
        );
    }
    if wanted == current {
        return Ok(settled);
    }
    if !ctx.shared.zookeeper_connected() {
        // Read from queues that may be out of date: see Context::zookeeper_connected.
        return Ok(Action::requeue(super::claims::DISCONNECTED_RETRY));
    }
    if let Err(problem) = &queue {
        warn_unserved(ctx, lock, &current, problem).await;
    }
    write_status(lock, ctx, &wanted, settled).await
}

/// A lock that cannot be served (its spec invalid, its path not one its namespace may use)
/// gets a Warning event when its status comes to say so. Its claims are not queued: the claim
/// reconciler resolves the lock's path with the same [`DistributedLock::lock_spec`].
async fn warn_unserved(
    ctx: &LockContext,
    lock: &DistributedLock,
    current: &DistributedLockStatus,
    problem: &LockSpecError,
) {
    let message = problem.to_string();
    let said = current.conditions.iter().any(|c| {
        c.type_ == "Ready"
            && c.status == "False"
            && c.reason == problem.reason()
            && c.message == message
    });
    if said {
        return;
    }
    tracing::warn!(lock = %lock.name_any(), namespace = ?lock.namespace(), %problem, "the lock cannot be served");
    status::publish(&ctx.shared, lock, true, problem.reason(), "Serve", message).await;
}

/// The lock's ZooKeeper directory and queue; or why its spec cannot be served.
async fn read_queue(
    lock: &DistributedLock,
    ctx: &LockContext,
) -> Result<Result<(String, LockQueue), LockSpecError>, Error> {
    Ok(match lock.lock_spec(&ctx.shared.process.root) {
        Ok(spec) => Ok((
            spec.dir(),
            ctx.shared
                .process
                .engine
                .queue(&spec)
                .await
                .during(Step::ReadQueue)?,
        )),
        Err(err) => Err(err),
    })
}

/// Writes the lock's status, on the resourceVersion read: a 409 means the lock changed
/// meanwhile (when taking an unclaimed lock, of two installations one wins, and the other's
/// 409 brings it the winner's record), and the newer copy is refreshed.
async fn write_status(
    lock: &DistributedLock,
    ctx: &LockContext,
    wanted: &DistributedLockStatus,
    then: Action,
) -> Result<Action, Error> {
    let api: Api<DistributedLock> = ctx.shared.api_beside(lock);
    match status::write(&api, lock, lock.status.as_ref(), wanted).await {
        Err(kube::Error::Api(status)) if status.code == 409 => {
            // The refresh made no write: the newer copy may be refreshed at once.
            ctx.refreshes.forget(&ObjectRef::from_obj(lock));
            Ok(Action::requeue(CHANGED_RETRY))
        }
        written => {
            written.during(Step::WriteLockStatus)?;
            Ok(then)
        }
    }
}

pub fn error_policy(lock: Arc<DistributedLock>, error: &Error, ctx: Arc<LockContext>) -> Action {
    let retry = ctx
        .retries
        .after_failure(ObjectRef::from_obj(lock.as_ref()));
    tracing::warn!(lock = %lock.name_any(), %error, ?retry, "lock status refresh failed; retrying");
    ctx.shared
        .process
        .metrics
        .reconcile_failed(CONTROLLER, error.step);
    Action::requeue(retry)
}
