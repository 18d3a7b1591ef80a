//! What happens next to a LockClaim, given what is known of it, its lock, its holder and its
//! place in the ZooKeeper queue. Pure: the claim controller gathers the inputs, calls
//! [`decide`], and carries out the [`Step`] (queue, status, Job resume, eviction, event).

#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
mod holder_set_model;
pub mod holders;

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::resources::conditions;
use crate::resources::{
    ClaimMode, ClaimPhase, DistributedLock, HolderKind, LockClaim, LockClaimSpec, LockClaimStatus,
    LockType, Revocation, revocation,
};

/// The lock as the claim needs it; `None` when it does not exist.
#[derive(Clone, Debug, PartialEq)]
pub struct LockFacts {
    pub lock_type: LockType,
    pub max_hold: Option<Duration>,
    /// Delete the holder when its grant is lost.
    pub evict_on_loss: bool,
    /// After an abnormal end of a grant, hold the lock this long before the next grant.
    pub lock_delay: Option<Duration>,
    /// A hold-back in force: a grant of the lock ended abnormally, and nobody is granted it
    /// before the lock-delay has passed. Read by the controller from its claims' statuses and
    /// its own fences, not from the lock's spec.
    pub held_back: Option<HeldBack>,
    /// Why this installation cannot serve the lock (its ZooKeeper path is not one its
    /// namespace may use, say), from the controller; its claims are invalid until that changes.
    pub unservable: Option<String>,
}

/// A lock nobody is granted before `until`: a grant of it ended abnormally (`why`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldBack {
    pub until: Timestamp,
    pub why: String,
}

impl LockFacts {
    /// What `lock`'s spec says.
    pub fn of(lock: &DistributedLock) -> Self {
        LockFacts {
            lock_type: lock.spec.lock_type,
            max_hold: lock.spec.max_hold_seconds.map(Duration::from_secs),
            evict_on_loss: lock.spec.evict_on_loss,
            lock_delay: lock.spec.lock_delay_seconds.map(Duration::from_secs),
            held_back: None,
            unservable: None,
        }
    }
}

/// The holder, as observed in Kubernetes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HolderState {
    /// Not found. For a claim never queued this is a mistake to report; for a queued one it
    /// means the holder was deleted.
    Missing,
    /// A Job that waits, suspended, for the grant.
    SuspendedJob,
    Running,
    /// The holder succeeded (a Pod) or completed (a Job): the grant (or the wait) ends, the
    /// text says why, e.g. "Pod web-0 Succeeded".
    Ended(String),
    /// The holder failed: the grant (or the wait) ends, e.g. "Job nightly Failed".
    Failed(String),
    /// A Lease holder that stopped renewing: it may still be working, so a grant it held is
    /// held back from the next claim for the lock's lock-delay.
    Lapsed(String),
    /// A suspended Job that lockkeeper may not resume (it does not declare its locks, or
    /// another queue manages it): the text says why and what to change.
    NotResumable(String),
}

/// The claim's contender in ZooKeeper, as this controller knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueState {
    NotQueued,
    Waiting {
        position: u32,
        node: Node,
    },
    Granted {
        fencing_token: i64,
        node: Node,
    },
    /// The node went without a dequeue, on its own (deleted by someone else, or with its
    /// lock's directory).
    Lost(String),
    /// The node went with the controller's ZooKeeper session. The term ends with it: its end
    /// marks the lost grants and fences their locks, and the next term queues the claims
    /// again. A claim that only waited loses nothing.
    SessionEnded,
}

/// The claim's znode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Its sequence number: its place in line.
    pub sequence: i64,
    /// Its path.
    pub path: String,
}

/// The part of the claim's status the decision reads.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ClaimFacts {
    pub phase: ClaimPhase,
    pub created: Option<Timestamp>,
    pub granted_at: Option<Timestamp>,
    /// `status.message`: a lost claim keeps saying why while it waits to be granted again.
    pub message: Option<String>,
    pub released_at: Option<Timestamp>,
    /// `status.fencingToken`: the token of the grant the status shows.
    pub fencing_token: Option<i64>,
    /// `status.heldBackUntil`: a grant the claim held ended abnormally, and its lock is held
    /// back until then.
    pub held_back_until: Option<Timestamp>,
    /// A grant the claim held ended abnormally (see [`ABNORMAL_ENDS`]).
    pub ended_abnormally: bool,
    /// A request to revoke the claim (`kubectl lock release`), from its annotations.
    pub revocation: Option<Revocation>,
    /// A deadlock the claim is in (found by the controller, see [`crate::deadlock`]).
    pub deadlock: Option<InDeadlock>,
    /// The holder's other claims (none for a holder with one lock).
    pub holder_set: HolderSet,
}

/// A deadlock a claim is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InDeadlock {
    /// The cycle, in words.
    pub description: String,
    /// This waiting claim is expired to break the cycle (a lock on it asks for that).
    pub victim: bool,
}

/// The condition a claim in a deadlock shows: `Deadlocked`, naming the cycle.
pub const DEADLOCKED: &str = "Deadlocked";

/// `status` with the `Deadlocked` condition while the claim is in a deadlock (and not ended),
/// without it otherwise.
pub fn with_deadlock(
    mut status: LockClaimStatus,
    deadlock: Option<&InDeadlock>,
    current: &LockClaimStatus,
    now: Timestamp,
) -> LockClaimStatus {
    status.conditions.retain(|c| c.type_ != DEADLOCKED);
    if let Some(deadlock) = deadlock.filter(|_| !status.phase.is_final()) {
        status.conditions.push(conditions::condition(
            DEADLOCKED,
            "True",
            "WaitForCycle",
            deadlock.description.clone(),
            &current.conditions,
            status.observed_generation,
            now,
        ));
    }
    status
}

/// What the holder's other claims say: a holder may ask for several locks (a claim each), and
/// starts only once it holds all of them. Its claims are queued one after another in one
/// order — by lock name, then claim name — each once those before it are granted, so two
/// holders that need the same locks never each hold one and wait for the other.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HolderSet {
    /// The holder's claims before this one in that order, not granted yet, as "claim (lock
    /// name)": this one is queued after them.
    pub earlier_not_granted: Vec<String>,
    /// How many of the holder's other claims are not granted (in any order), or not made yet
    /// (locks its [`crate::resources::LOCKS_ANNOTATION`] names, claimed by none of its
    /// claims): its Job is resumed once none is left.
    pub others_not_granted: usize,
    /// A claim of the holder that expired (or was revoked) before it was ever granted: the
    /// holder gives up the whole set.
    pub given_up: Option<String>,
    /// A claim of the holder whose grant ended abnormally for good (revoked, or held past
    /// `maxHoldSeconds`): its Job may have been stopped for it, and is not resumed again on
    /// the rest of its locks.
    pub stopped: Option<String>,
}

impl HolderSet {
    /// The set `claim` belongs to, from the holder's other claims (`siblings`; the claim
    /// itself, if among them, is left out by its UID) and the locks the holder declares.
    pub fn of(claim: &LockClaim, siblings: &[&LockClaim], declared: &[String]) -> Self {
        let order = |c: &LockClaim| (c.spec.lock.clone(), c.metadata.name.clone());
        let own = order(claim);
        let mut set = HolderSet::default();
        for lock in declared {
            let claimed = *lock == claim.spec.lock || siblings.iter().any(|s| s.spec.lock == *lock);
            if claimed {
                continue;
            }
            set.others_not_granted += 1;
            if *lock < claim.spec.lock {
                set.earlier_not_granted
                    .push(format!("a claim on lock {lock} (not made yet)"));
            }
        }
        for sibling in siblings
            .iter()
            .filter(|s| s.metadata.uid != claim.metadata.uid)
            .filter(|s| s.metadata.deletion_timestamp.is_none())
        {
            let status = sibling.status.clone().unwrap_or_default();
            let name = format!(
                "{} (lock {})",
                sibling.metadata.name.as_deref().unwrap_or_default(),
                sibling.spec.lock
            );
            match status.phase {
                ClaimPhase::Granted => continue,
                // The holder ended: every claim of it is released in turn.
                ClaimPhase::Released => continue,
                ClaimPhase::Expired | ClaimPhase::Revoked if status.granted_at.is_none() => {
                    set.given_up.get_or_insert(name.clone());
                }
                // Ended abnormally after its grant: the holder runs on with the rest if it still
                // runs, but a Job stopped for it is not started again without that lock.
                ClaimPhase::Expired | ClaimPhase::Revoked => {
                    set.stopped.get_or_insert(name);
                    continue;
                }
                _ => {}
            }
            set.others_not_granted += 1;
            if order(sibling) < own {
                set.earlier_not_granted.push(name);
            }
        }
        set.earlier_not_granted.sort();
        set
    }
}

impl ClaimFacts {
    /// What `claim`'s metadata and status say.
    pub fn of(claim: &LockClaim) -> Self {
        let status = claim.status.clone().unwrap_or_default();
        let ended_abnormally = status.granted_at.is_some()
            && status
                .granted_reason()
                .is_some_and(|reason| ABNORMAL_ENDS.contains(&reason));
        ClaimFacts {
            phase: status.phase,
            created: claim.metadata.creation_timestamp.as_ref().map(|t| t.0),
            granted_at: status.granted_at.map(|t| t.0),
            message: status.message,
            released_at: status.released_at.map(|t| t.0),
            fencing_token: status.fencing_token,
            held_back_until: status.held_back_until.as_ref().map(|t| t.0),
            ended_abnormally,
            revocation: revocation(claim),
            deadlock: None,
            holder_set: HolderSet::default(),
        }
    }
}

/// Changes to the ZooKeeper queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueAction {
    Keep,
    Enqueue,
    Dequeue,
}

/// What the claim's status becomes.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub phase: ClaimPhase,
    pub position: Option<u32>,
    pub sequence: Option<i64>,
    /// The claim's znode, while it is in line or holds.
    pub znode: Option<String>,
    pub fencing_token: Option<i64>,
    /// Why, in a sentence, for `status.message` and the event.
    pub message: String,
    /// The Kubernetes event reason when this is a transition worth an event.
    pub reason: &'static str,
    /// A grant ended abnormally: its lock is held back until then (`status.heldBackUntil`).
    pub held_back_until: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub queue: QueueAction,
    /// `None`: leave the status as it is (the claim waits for its queue answer).
    pub outcome: Option<Outcome>,
    pub resume_job: bool,
    /// Delete the holder Pod (or the Job's pods): its grant was lost and the lock asks for
    /// old holders to be stopped.
    pub evict_holder: bool,
    /// Look again after this long (a deadline: wait timeout, hold limit, lease expiry).
    pub requeue_after: Option<Duration>,
}

impl Step {
    /// Nothing to do but look again when something changes.
    fn nothing(queue: QueueAction) -> Self {
        Step {
            queue,
            outcome: None,
            resume_job: false,
            evict_holder: false,
            requeue_after: None,
        }
    }

    /// The status becomes `outcome`; nothing else moves.
    fn show(outcome: Outcome) -> Self {
        Step {
            outcome: Some(outcome),
            ..Step::nothing(QueueAction::Keep)
        }
    }

    /// The claim ends in `phase`, and leaves the queue if it is in it.
    fn end(phase: ClaimPhase, reason: &'static str, message: String, queued: bool) -> Self {
        Step {
            queue: leave_if(queued),
            ..Step::show(Outcome {
                phase,
                position: None,
                sequence: None,
                znode: None,
                fencing_token: None,
                message,
                reason,
                held_back_until: None,
            })
        }
    }

    fn then_look_again(self, after: Option<Duration>) -> Self {
        Step {
            requeue_after: after,
            ..self
        }
    }
}

fn leave_if(queued: bool) -> QueueAction {
    if queued {
        QueueAction::Dequeue
    } else {
        QueueAction::Keep
    }
}

/// Time from `from` to `to`; zero if `to` is earlier (clocks disagree).
pub fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    to.duration_since(from).try_into().unwrap_or_default()
}

/// Checks what the schema cannot: the claim against its lock.
pub fn validate(spec: &LockClaimSpec, lock: Option<&LockFacts>) -> Result<(), String> {
    let Some(lock) = lock else {
        return Err(format!(
            "DistributedLock {:?} does not exist in this namespace; the claim is queued once it does",
            spec.lock
        ));
    };
    if let Some(why) = &lock.unservable {
        return Err(format!(
            "DistributedLock {:?} cannot be served: {why}",
            spec.lock
        ));
    }
    if spec.mode == ClaimMode::Shared && lock.lock_type != LockType::ReadWrite {
        return Err(format!(
            "mode Shared needs a ReadWrite lock; {:?} is a {:?} lock",
            spec.lock, lock.lock_type
        ));
    }
    Ok(())
}

fn kind_name(kind: HolderKind) -> &'static str {
    match kind {
        HolderKind::Pod => "Pod",
        HolderKind::Job => "Job",
        HolderKind::Lease => "Lease",
    }
}

/// The next step for a claim that is not being deleted.
pub fn decide(
    spec: &LockClaimSpec,
    claim: &ClaimFacts,
    lock: Option<&LockFacts>,
    holder: &HolderState,
    queue: &QueueState,
    now: Timestamp,
) -> Step {
    let queued = matches!(
        queue,
        QueueState::Waiting { .. } | QueueState::Granted { .. }
    );
    if claim.phase.is_final() {
        return ended(claim, lock, queued, now);
    }
    if let Some(revocation) = &claim.revocation {
        let message = format!(
            "revoked by {}: {}",
            revocation.requested_by, revocation.reason
        );
        let end = AbnormalEnd::new(ClaimPhase::Revoked, REVOKED, message);
        return abnormal_end(end, claim, lock, queue, now);
    }
    if lock.is_none() && claim.phase == ClaimPhase::Granted {
        return held_without_lock(spec, holder, queued);
    }
    if let Err(message) = validate(spec, lock) {
        return Step::end(ClaimPhase::Invalid, "Invalid", message, queued);
    }
    let holder_name = format!("{} {}", kind_name(spec.holder.kind), spec.holder.name);
    let ever_queued = !matches!(claim.phase, ClaimPhase::Pending | ClaimPhase::Invalid);
    let (phase, reason, message) = match holder {
        HolderState::Missing if !ever_queued => (
            ClaimPhase::Invalid,
            "HolderNotFound",
            format!("{holder_name} does not exist; the claim is queued once it does"),
        ),
        HolderState::Missing => (
            ClaimPhase::Released,
            HOLDER_DELETED,
            format!("{holder_name} was deleted"),
        ),
        HolderState::Ended(why) => (ClaimPhase::Released, HOLDER_SUCCEEDED, why.clone()),
        HolderState::Failed(why) => (ClaimPhase::Released, HOLDER_FAILED, why.clone()),
        HolderState::NotResumable(why) => (ClaimPhase::Invalid, JOB_NOT_RESUMABLE, why.clone()),
        HolderState::Lapsed(why) => {
            let end = AbnormalEnd::new(ClaimPhase::Released, LEASE_LAPSED, why.clone());
            return abnormal_end(end, claim, lock, queue, now);
        }
        HolderState::SuspendedJob | HolderState::Running => {
            let lock = lock.expect("validated");
            if let Some(expired) = &claim.holder_set.given_up {
                let message = format!(
                    "its holder's claim {expired} ended before it was granted: the holder gives up every lock it asked for"
                );
                return Step::end(ClaimPhase::Expired, "Expired", message, queued);
            }
            return match queue {
                QueueState::NotQueued if !claim.holder_set.earlier_not_granted.is_empty() => {
                    after_earlier_claims(spec, claim, now)
                }
                QueueState::NotQueued => Step::nothing(QueueAction::Enqueue),
                QueueState::SessionEnded => Step::nothing(QueueAction::Keep),
                QueueState::Lost(why) => lost_node(why, claim, lock, queue, now),
                QueueState::Waiting { position, node } => {
                    waiting(spec, claim, lock, *position, node, now)
                }
                QueueState::Granted {
                    fencing_token,
                    node,
                } => granted(
                    &holder_name,
                    holder,
                    claim,
                    lock,
                    *fencing_token,
                    node,
                    queue,
                    now,
                ),
            };
        }
    };
    Step::end(phase, reason, message, queued)
}

/// A claim that holds a lock deleted meanwhile: its holder may be working, and the lock may be
/// made again under its name (a GitOps prune and re-apply), so the grant, and its node, stay
/// until the holder ends; its status is left as it is.
fn held_without_lock(spec: &LockClaimSpec, holder: &HolderState, queued: bool) -> Step {
    let holder_name = format!("{} {}", kind_name(spec.holder.kind), spec.holder.name);
    let (reason, message) = match holder {
        HolderState::Missing => (HOLDER_DELETED, format!("{holder_name} was deleted")),
        HolderState::Ended(why) => (HOLDER_SUCCEEDED, why.clone()),
        HolderState::Failed(why) => (HOLDER_FAILED, why.clone()),
        // Without its lock there is no lock-delay to keep: the lease's end is the grant's.
        HolderState::Lapsed(why) => (LEASE_LAPSED, why.clone()),
        HolderState::SuspendedJob | HolderState::NotResumable(_) => (
            LOCK_DELETED,
            format!("the lock was deleted while {holder_name} was suspended"),
        ),
        HolderState::Running => return Step::nothing(QueueAction::Keep),
    };
    Step::end(ClaimPhase::Released, reason, message, queued)
}

/// A claim whose holder has earlier claims not granted yet: it is queued after them (see
/// [`HolderSet`]), unless its wait times out first.
fn after_earlier_claims(spec: &LockClaimSpec, claim: &ClaimFacts, now: Timestamp) -> Step {
    match wait_left(spec, claim, now) {
        Err(why) => Step::end(ClaimPhase::Expired, "Expired", why, false),
        Ok(left) => Step::show(Outcome {
            phase: ClaimPhase::Pending,
            position: None,
            sequence: None,
            znode: None,
            fencing_token: None,
            message: format!(
                "queued once its holder's earlier claims are granted: {}",
                claim.holder_set.earlier_not_granted.join(", ")
            ),
            reason: "AfterEarlierClaims",
            held_back_until: None,
        })
        .then_look_again(left),
    }
}

/// The `Granted` condition's reason when a grant's lock was deleted while its Job was suspended.
pub const LOCK_DELETED: &str = "LockDeleted";
/// The `Granted` condition's reason when the holder is a suspended Job lockkeeper may not resume.
pub const JOB_NOT_RESUMABLE: &str = "JobNotResumable";
/// The `Granted` condition's reason when a Lease holder stopped renewing.
pub const LEASE_LAPSED: &str = "LeaseLapsed";
/// The `Granted` condition's reason when the claim was revoked by hand.
pub const REVOKED: &str = "Revoked";
/// The `Granted` condition's reason when the holder Pod succeeded or the Job completed.
pub const HOLDER_SUCCEEDED: &str = "HolderSucceeded";
/// The `Granted` condition's reason when the holder Pod or Job failed.
pub const HOLDER_FAILED: &str = "HolderFailed";
/// The `Granted` condition's reason when the holder Pod or Job was deleted.
pub const HOLDER_DELETED: &str = "HolderDeleted";

/// The `Granted` condition's reason when a grant was held longer than the lock's
/// `maxHoldSeconds`.
pub const HOLD_EXPIRED: &str = "HoldExpired";
/// The `Granted` condition's reason when a grant was lost (its node deleted by someone else,
/// or gone with the controller's ZooKeeper session).
pub const LOST: &str = "Lost";
/// The reasons a grant ends abnormally: its holder may still be working.
pub const ABNORMAL_ENDS: [&str; 4] = [LEASE_LAPSED, REVOKED, HOLD_EXPIRED, LOST];

/// How a claim ends abnormally: its phase, the `Granted` condition's reason, and why.
pub struct AbnormalEnd {
    pub phase: ClaimPhase,
    pub reason: &'static str,
    pub message: String,
}

impl AbnormalEnd {
    pub fn new(phase: ClaimPhase, reason: &'static str, message: String) -> Self {
        AbnormalEnd {
            phase,
            reason,
            message,
        }
    }
}

/// When a lock whose grant ends abnormally at `now` is held back until: `now` plus its
/// lock-delay, rounded up to the whole second (`heldBackUntil` is written in whole seconds, and
/// must never show an earlier time than the one kept). `None` without a lock-delay.
pub fn held_back_until(lock: Option<&LockFacts>, now: Timestamp) -> Option<Timestamp> {
    let delay = lock?.lock_delay.filter(|d| !d.is_zero())?;
    let until = now.checked_add(delay).ok()?;
    let whole = Timestamp::from_second(until.as_second()).ok()?;
    Some(match whole < until {
        true => Timestamp::from_second(until.as_second() + 1).ok()?,
        false => whole,
    })
}

/// Every way a grant ends other than its holder ending — its lease lapsed, it was held past
/// `maxHoldSeconds`, it was revoked, its node went without a dequeue — gets the same fence,
/// here: the claim ends as `end` says; a grant it held has its holder evicted where the lock
/// asks for it, and, where the lock has a lock-delay, nobody is granted the lock before that
/// has passed (`heldBackUntil`, which the next leader reads too). Meanwhile a node still queued
/// stays, so clients outside Kubernetes wait too. Without a lock-delay the node leaves the
/// queue once the end is written and the holder evicted. A claim that only waited loses
/// nothing to fence.
fn abnormal_end(
    end: AbnormalEnd,
    claim: &ClaimFacts,
    lock: Option<&LockFacts>,
    queue: &QueueState,
    now: Timestamp,
) -> Step {
    let node_queued = matches!(
        queue,
        QueueState::Waiting { .. } | QueueState::Granted { .. }
    );
    // Its holder was told it holds (whatever became of the node: gone on its own, or not queued
    // again yet by a new leader). A node granted in ZooKeeper but not told yet has a holder that
    // has not started: a gate, a run and a suspended Job wait for the `Granted` status.
    let held = claim.phase == ClaimPhase::Granted;
    let until = held_back_until(lock, now).filter(|_| held);
    let message = match (until, lock.and_then(|lock| lock.lock_delay)) {
        (Some(_), Some(delay)) => format!(
            "{}; the lock is held back for its lockDelaySeconds ({}s)",
            end.message,
            delay.as_secs()
        ),
        _ => end.message,
    };
    // A node of its own that went (`Lost`) is no longer in line, but the claim still is, to
    // this term: it leaves that line too.
    let leaves = match until {
        Some(_) if node_queued => QueueAction::Keep,
        _ if matches!(queue, QueueState::Lost(_)) => QueueAction::Dequeue,
        _ => leave_if(node_queued),
    };
    let step = Step::end(end.phase, end.reason, message, false);
    Step {
        queue: leaves,
        evict_holder: held && lock.is_some_and(|lock| lock.evict_on_loss),
        outcome: step.outcome.map(|outcome| Outcome {
            held_back_until: until,
            fencing_token: claim.fencing_token,
            ..outcome
        }),
        ..step
    }
    .then_look_again(until.map(|until| elapsed(now, until)))
}

/// A claim whose node went without a dequeue (deleted by another ZooKeeper client, or with
/// its lock's directory). A grant it held ends `Lost` as every abnormal end does, and the
/// claim is queued again once the lock-delay has passed. A claim that only waited lines up
/// again at once: it had no grant to lose.
fn lost_node(
    why: &str,
    claim: &ClaimFacts,
    lock: &LockFacts,
    queue: &QueueState,
    now: Timestamp,
) -> Step {
    if claim.phase != ClaimPhase::Granted {
        return Step::nothing(QueueAction::Dequeue).then_look_again(Some(LINE_UP_AGAIN));
    }
    let message = format!("the grant was lost: {why}; queued again");
    let end = AbnormalEnd::new(ClaimPhase::Lost, LOST, message);
    abnormal_end(end, claim, Some(lock), queue, now)
}

/// How soon a claim whose node went lines up again.
const LINE_UP_AGAIN: Duration = Duration::from_millis(50);

/// A claim that ended: its node leaves the queue, unless the lock is still held back after its
/// grant ended abnormally. A holder that ended abnormally is evicted (again: its Job may have
/// made new pods) before its node goes, where the lock asks for it.
fn ended(claim: &ClaimFacts, lock: Option<&LockFacts>, queued: bool, now: Timestamp) -> Step {
    if !queued {
        return Step::nothing(QueueAction::Keep);
    }
    let left = claim
        .held_back_until
        .map(|until| elapsed(now, until))
        .filter(|left| !left.is_zero());
    if let Some(left) = left {
        return Step::nothing(QueueAction::Keep).then_look_again(Some(left));
    }
    Step {
        evict_holder: claim.ended_abnormally && lock.is_some_and(|lock| lock.evict_on_loss),
        ..Step::nothing(QueueAction::Dequeue)
    }
}

/// A claim in line: its place, unless it has waited too long for a first grant. A claim
/// granted before and found behind someone now lost its grant.
fn waiting(
    spec: &LockClaimSpec,
    claim: &ClaimFacts,
    lock: &LockFacts,
    position: u32,
    node: &Node,
    now: Timestamp,
) -> Step {
    let wait_left = match wait_left(spec, claim, now) {
        Ok(left) => left,
        Err(why) => return Step::end(ClaimPhase::Expired, "Expired", why, true),
    };
    if let Some(deadlock) = claim.deadlock.as_ref().filter(|d| d.victim) {
        let why = format!(
            "expired to break a deadlock, as a lock in it asks (deadlockPolicy: ExpireYoungest); {}",
            deadlock.description
        );
        return Step::end(ClaimPhase::Expired, DEADLOCKED, why, true);
    }
    let in_line = |phase, reason, message| Outcome {
        phase,
        position: Some(position),
        sequence: Some(node.sequence),
        znode: Some(node.path.clone()),
        fencing_token: None,
        message,
        reason,
        held_back_until: None,
    };
    let step = match claim.phase {
        // Granted before, behind someone now: while the controller was away (restart, session
        // expiry) its node went and another client took the lock. The holder must learn it
        // lost the grant; the claim keeps its new place in line.
        ClaimPhase::Granted => {
            let message = "the grant was lost while the controller was away and the lock was \
                           taken by another client; queued again"
                .to_string();
            let end = AbnormalEnd::new(ClaimPhase::Lost, LOST, message);
            let step = abnormal_end(end, claim, Some(lock), &QueueState::NotQueued, now);
            let shown = step.outcome.map(|outcome| {
                let place = in_line(ClaimPhase::Lost, LOST, outcome.message.clone());
                Outcome {
                    held_back_until: outcome.held_back_until,
                    fencing_token: claim.fencing_token,
                    ..place
                }
            });
            let look_again = [wait_left, step.requeue_after].into_iter().flatten().min();
            return Step {
                queue: QueueAction::Keep,
                outcome: shown,
                ..step
            }
            .then_look_again(look_again);
        }
        // A lost claim stays Lost, saying why, until it is granted again.
        ClaimPhase::Lost => Step::show(in_line(
            ClaimPhase::Lost,
            "Lost",
            claim
                .message
                .clone()
                .unwrap_or_else(|| "the grant was lost; queued again".into()),
        )),
        _ => Step::show(in_line(
            ClaimPhase::Waiting,
            "Waiting",
            format!("{position} ahead in the queue"),
        )),
    };
    step.then_look_again(wait_left)
}

/// How much longer a claim in line may wait (`None`: as long as it takes), or, once its
/// wait timed out, why it expires. The wait timeout is for a first grant; a claim
/// granted once waits to get it back.
fn wait_left(
    spec: &LockClaimSpec,
    claim: &ClaimFacts,
    now: Timestamp,
) -> Result<Option<Duration>, String> {
    let Some(limit) = spec
        .wait_timeout_seconds
        .map(Duration::from_secs)
        .filter(|_| claim.granted_at.is_none())
    else {
        return Ok(None);
    };
    let waited = claim
        .created
        .map(|created| elapsed(created, now))
        .unwrap_or_default();
    if waited < limit {
        return Ok(Some(limit - waited));
    }
    let message = if limit.is_zero() {
        "the lock is held and the claim asked not to wait (waitTimeoutSeconds: 0)".to_string()
    } else {
        format!(
            "not granted within waitTimeoutSeconds ({}s)",
            limit.as_secs()
        )
    };
    Err(message)
}

/// A claim that holds the lock, unless it has held it longer than the lock allows, or the lock
/// is held back after an abnormal end: then it is told only once the hold-back has passed.
#[allow(clippy::too_many_arguments)]
fn granted(
    holder_name: &str,
    holder: &HolderState,
    claim: &ClaimFacts,
    lock: &LockFacts,
    fencing_token: i64,
    node: &Node,
    queue: &QueueState,
    now: Timestamp,
) -> Step {
    // Tokens only grow: a status showing a larger one than this contender's was written by a
    // newer leader (this one was away, and does not know yet). Its view is older: leave it.
    if claim
        .fencing_token
        .is_some_and(|shown| shown > fencing_token)
    {
        return Step::nothing(QueueAction::Keep);
    }
    // A grant told before runs on; a claim granted again (after a loss) starts a new hold.
    let held = claim
        .granted_at
        .filter(|_| claim.phase == ClaimPhase::Granted)
        .map(|granted| elapsed(granted, now))
        .unwrap_or_default();
    if claim.phase != ClaimPhase::Granted
        && let Some(held_back) = lock.held_back.as_ref().filter(|h| h.until > now)
    {
        return held_back_grant(claim, held_back, node, now);
    }
    if let Some(limit) = lock.max_hold
        && held >= limit
    {
        let message = format!(
            "held longer than the lock's maxHoldSeconds ({}s)",
            limit.as_secs()
        );
        let end = AbnormalEnd::new(ClaimPhase::Expired, HOLD_EXPIRED, message);
        return abnormal_end(end, claim, Some(lock), queue, now);
    }
    let others = claim.holder_set.others_not_granted;
    let stopped = claim.holder_set.stopped.as_ref();
    let message = match (others, stopped) {
        (_, Some(stopped)) if *holder == HolderState::SuspendedJob => format!(
            "granted to {holder_name}, fencing token {fencing_token}; it is not started again: its claim {stopped} ended abnormally after its grant"
        ),
        (0, _) => format!("granted to {holder_name}, fencing token {fencing_token}"),
        _ => format!(
            "granted to {holder_name}, fencing token {fencing_token}; it starts once its {others} other claim(s) are granted too"
        ),
    };
    Step {
        resume_job: *holder == HolderState::SuspendedJob && others == 0 && stopped.is_none(),
        ..Step::show(Outcome {
            phase: ClaimPhase::Granted,
            position: None,
            sequence: Some(node.sequence),
            znode: Some(node.path.clone()),
            fencing_token: Some(fencing_token),
            message,
            reason: "Granted",
            held_back_until: None,
        })
    }
    .then_look_again(lock.max_hold.map(|limit| limit - held))
}

/// A claim first in line while its lock is held back: it is not told it holds the lock until
/// the hold-back has passed (a claim lost keeps saying so meanwhile).
fn held_back_grant(claim: &ClaimFacts, held_back: &HeldBack, node: &Node, now: Timestamp) -> Step {
    let phase = match claim.phase {
        ClaimPhase::Lost => ClaimPhase::Lost,
        _ => ClaimPhase::Waiting,
    };
    Step::show(Outcome {
        phase,
        position: Some(0),
        sequence: Some(node.sequence),
        znode: Some(node.path.clone()),
        fencing_token: None,
        message: format!(
            "next in line; the lock is held back until {}: {}",
            held_back.until, held_back.why
        ),
        reason: HELD_BACK,
        held_back_until: None,
    })
    .then_look_again(Some(elapsed(now, held_back.until)))
}

/// The `Granted` condition's reason while a claim first in line waits out its lock's
/// hold-back.
pub const HELD_BACK: &str = "HeldBack";

/// The claim's whole status once `outcome` holds at `now`: `grantedAt` set by a grant and kept
/// after it, `releasedAt` set when the claim ends, and the `Granted` condition.
pub fn status_after(
    current: &LockClaimStatus,
    outcome: &Outcome,
    generation: Option<i64>,
    now: Timestamp,
) -> LockClaimStatus {
    let granted_at = match (outcome.phase, current.phase) {
        (ClaimPhase::Granted, ClaimPhase::Granted) => {
            current.granted_at.clone().or(Some(Time(now)))
        }
        (ClaimPhase::Granted, _) => Some(Time(now)),
        _ => current.granted_at.clone(),
    };
    let ended = matches!(
        outcome.phase,
        ClaimPhase::Released | ClaimPhase::Expired | ClaimPhase::Lost | ClaimPhase::Revoked
    );
    let released_at = match ended {
        true if current.phase != outcome.phase => Some(Time(now)),
        true => current.released_at.clone(),
        false => None,
    };
    let granted = if outcome.phase == ClaimPhase::Granted {
        "True"
    } else {
        "False"
    };
    // An ended grant keeps its token on the claim: the lock's history reads it from there
    // when the grant began and ended between two of the lock's refreshes.
    let fencing_token = match ended {
        true => outcome.fencing_token.or(current.fencing_token),
        false => outcome.fencing_token,
    };
    LockClaimStatus {
        phase: outcome.phase,
        position: outcome.position,
        sequence: outcome.sequence,
        fencing_token,
        znode: outcome.znode.clone(),
        granted_at,
        released_at,
        held_back_until: outcome
            .held_back_until
            .map(Time)
            .or_else(|| current.held_back_until.clone()),
        holder_uid: current.holder_uid.clone(),
        message: Some(outcome.message.clone()),
        conditions: vec![conditions::condition(
            "Granted",
            granted,
            outcome.reason,
            outcome.message.clone(),
            &current.conditions,
            generation,
            now,
        )],
        observed_generation: generation,
    }
}

/// A metric a phase change counts.
#[derive(Clone, Debug, PartialEq)]
pub enum Tally {
    Granted,
    /// From the claim's creation to its grant.
    Waited(Duration),
    Released,
    Expired,
    Lost,
    /// From the grant to its end.
    Held(Duration),
}

/// An event about the claim.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub action: String,
    pub note: String,
}

/// What the claim's phase moving from `before` to `outcome` at `now` counts, and the event it
/// brings; nothing while the phase stays.
pub fn transition(
    before: &LockClaimStatus,
    outcome: &Outcome,
    created: Option<Timestamp>,
    now: Timestamp,
) -> (Vec<Tally>, Option<Notice>) {
    if before.phase == outcome.phase {
        return (Vec::new(), None);
    }
    let mut tallies = match outcome.phase {
        ClaimPhase::Granted => {
            let waited = created.map(|created| Tally::Waited(elapsed(created, now)));
            [Some(Tally::Granted), waited]
                .into_iter()
                .flatten()
                .collect()
        }
        ClaimPhase::Released | ClaimPhase::Revoked if before.phase == ClaimPhase::Granted => {
            vec![Tally::Released]
        }
        ClaimPhase::Expired => vec![Tally::Expired],
        ClaimPhase::Lost => vec![Tally::Lost],
        _ => Vec::new(),
    };
    if before.phase == ClaimPhase::Granted
        && let Some(granted) = &before.granted_at
    {
        tallies.push(Tally::Held(elapsed(granted.0, now)));
    }
    let notice = worth_an_event(outcome).then(|| Notice {
        warning: matches!(
            outcome.phase,
            ClaimPhase::Lost | ClaimPhase::Invalid | ClaimPhase::Expired | ClaimPhase::Revoked
        ) || ABNORMAL_ENDS.contains(&outcome.reason),
        reason: outcome.reason,
        action: format!("{:?}", outcome.phase),
        note: outcome.message.clone(),
    });
    (tallies, notice)
}

/// Whether a phase change is told by an event: a grant, and every end that is not routine
/// (expiry, loss, a lapsed lease, an invalid claim). Each event is one more write to the API
/// server per claim; a claim queued, or released because its holder ended, says so in its
/// status (phase, message, `releasedAt`) and its `Granted` condition, which `kubectl describe`
/// shows.
fn worth_an_event(outcome: &Outcome) -> bool {
    match outcome.phase {
        ClaimPhase::Pending | ClaimPhase::Waiting => false,
        ClaimPhase::Released => {
            ![HOLDER_SUCCEEDED, HOLDER_FAILED, HOLDER_DELETED].contains(&outcome.reason)
        }
        ClaimPhase::Granted
        | ClaimPhase::Expired
        | ClaimPhase::Lost
        | ClaimPhase::Invalid
        | ClaimPhase::Revoked => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::HolderRef;

    fn spec(mode: ClaimMode, wait: Option<u64>) -> LockClaimSpec {
        LockClaimSpec {
            lock: "db".into(),
            mode,
            holder: HolderRef {
                kind: HolderKind::Job,
                name: "migrate".into(),
            },
            lease_duration_seconds: None,
            renew_time: None,
            wait_timeout_seconds: wait,
        }
    }

    fn mutex(max_hold: Option<u64>) -> LockFacts {
        LockFacts {
            lock_type: LockType::Mutex,
            max_hold: max_hold.map(Duration::from_secs),
            evict_on_loss: false,
            lock_delay: None,
            held_back: None,
            unservable: None,
        }
    }

    fn node(sequence: i64) -> Node {
        Node {
            sequence,
            path: format!("/locks/db/_c_u-lock-{sequence:010}"),
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn facts(phase: ClaimPhase) -> ClaimFacts {
        ClaimFacts {
            phase,
            created: Some(at(0)),
            granted_at: matches!(phase, ClaimPhase::Granted | ClaimPhase::Lost).then(|| at(0)),
            message: None,
            released_at: None,
            fencing_token: None,
            held_back_until: None,
            ended_abnormally: false,
            revocation: None,
            deadlock: None,
            holder_set: HolderSet::default(),
        }
    }

    fn phase_of(step: &Step) -> Option<ClaimPhase> {
        step.outcome.as_ref().map(|o| o.phase)
    }

    #[test]
    fn a_hold_back_is_written_in_whole_seconds_never_earlier_than_kept() {
        let lock = LockFacts {
            lock_delay: Some(Duration::from_secs(15)),
            ..mutex(None)
        };
        let now: Timestamp = "2026-01-01T00:00:03.250Z".parse().unwrap();
        let until = held_back_until(Some(&lock), now).unwrap();
        assert_eq!(until.to_string(), "2026-01-01T00:00:19Z");
        assert_eq!(held_back_until(Some(&mutex(None)), now), None);
        let whole: Timestamp = "2026-01-01T00:00:03Z".parse().unwrap();
        assert_eq!(
            held_back_until(Some(&lock), whole).unwrap().to_string(),
            "2026-01-01T00:00:18Z"
        );
    }

    #[test]
    fn the_znode_shows_while_the_claim_is_in_line_or_holds() {
        let step = |phase, queue: &QueueState, holder: &HolderState| {
            decide(
                &spec(ClaimMode::Exclusive, None),
                &facts(phase),
                Some(&mutex(None)),
                holder,
                queue,
                at(1),
            )
            .outcome
            .and_then(|outcome| outcome.znode)
        };
        let path = node(7).path;
        let waiting = QueueState::Waiting {
            position: 1,
            node: node(7),
        };
        let granted = QueueState::Granted {
            fencing_token: 9,
            node: node(7),
        };
        let running = HolderState::Running;
        assert_eq!(
            step(ClaimPhase::Pending, &waiting, &running),
            Some(path.clone())
        );
        assert_eq!(step(ClaimPhase::Waiting, &granted, &running), Some(path));
        let ended = HolderState::Ended("Pod a Succeeded".into());
        assert_eq!(step(ClaimPhase::Granted, &granted, &ended), None);
    }

    #[test]
    fn a_valid_claim_is_queued_then_follows_its_queue() {
        let waiting = QueueState::Waiting {
            position: 2,
            node: node(7),
        };
        let granted = QueueState::Granted {
            fencing_token: 99,
            node: node(7),
        };
        let cases = [
            (
                HolderState::SuspendedJob,
                QueueState::NotQueued,
                QueueAction::Enqueue,
                None,
                false,
            ),
            (
                HolderState::SuspendedJob,
                waiting.clone(),
                QueueAction::Keep,
                Some(ClaimPhase::Waiting),
                false,
            ),
            (
                HolderState::SuspendedJob,
                granted.clone(),
                QueueAction::Keep,
                Some(ClaimPhase::Granted),
                true,
            ),
            (
                HolderState::Running,
                granted.clone(),
                QueueAction::Keep,
                Some(ClaimPhase::Granted),
                false,
            ),
            (
                HolderState::Ended("Job migrate Complete".into()),
                granted.clone(),
                QueueAction::Dequeue,
                Some(ClaimPhase::Released),
                false,
            ),
            (
                HolderState::Missing,
                waiting.clone(),
                QueueAction::Dequeue,
                Some(ClaimPhase::Released),
                false,
            ),
            // A waiting claim whose node went lines up again: it had no grant to lose.
            (
                HolderState::Running,
                QueueState::Lost("deleted by another client".into()),
                QueueAction::Dequeue,
                None,
                false,
            ),
        ];
        for (holder, queue, action, phase, resume) in cases {
            let step = decide(
                &spec(ClaimMode::Exclusive, None),
                &facts(ClaimPhase::Waiting),
                Some(&mutex(None)),
                &holder,
                &queue,
                at(1),
            );
            assert_eq!(
                (step.queue, phase_of(&step), step.resume_job),
                (action, phase, resume),
                "{holder:?} {queue:?}"
            );
        }
    }

    #[test]
    fn bad_claims_are_invalid_and_never_queued() {
        let pending = facts(ClaimPhase::Pending);
        let no_lock = decide(
            &spec(ClaimMode::Exclusive, None),
            &pending,
            None,
            &HolderState::Running,
            &QueueState::NotQueued,
            at(1),
        );
        assert_eq!(
            (no_lock.queue, phase_of(&no_lock)),
            (QueueAction::Keep, Some(ClaimPhase::Invalid))
        );
        assert!(
            no_lock
                .outcome
                .unwrap()
                .message
                .contains("\"db\" does not exist")
        );
        // A lock this installation may not serve (its path is another namespace's, say).
        let refused = LockFacts {
            unservable: Some("spec.zookeeper.path /lockkeeper/b/prod is not allowed".into()),
            ..mutex(None)
        };
        let unservable = decide(
            &spec(ClaimMode::Exclusive, None),
            &pending,
            Some(&refused),
            &HolderState::Running,
            &QueueState::NotQueued,
            at(1),
        );
        assert_eq!(
            (unservable.queue, phase_of(&unservable)),
            (QueueAction::Keep, Some(ClaimPhase::Invalid))
        );
        assert!(
            unservable.outcome.unwrap().message.contains(
                "cannot be served: spec.zookeeper.path /lockkeeper/b/prod is not allowed"
            )
        );
        let shared = decide(
            &spec(ClaimMode::Shared, None),
            &pending,
            Some(&mutex(None)),
            &HolderState::Running,
            &QueueState::NotQueued,
            at(1),
        );
        assert!(
            shared
                .outcome
                .unwrap()
                .message
                .contains("needs a ReadWrite lock")
        );
        let no_holder = decide(
            &spec(ClaimMode::Exclusive, None),
            &pending,
            Some(&mutex(None)),
            &HolderState::Missing,
            &QueueState::NotQueued,
            at(1),
        );
        assert_eq!(
            (no_holder.queue, phase_of(&no_holder)),
            (QueueAction::Keep, Some(ClaimPhase::Invalid))
        );
        assert_eq!(no_holder.outcome.unwrap().reason, "HolderNotFound");
    }

    #[test]
    fn deadlines_expire_waits_and_holds() {
        let waiting = QueueState::Waiting {
            position: 1,
            node: node(3),
        };
        let try_lock = decide(
            &spec(ClaimMode::Exclusive, Some(0)),
            &facts(ClaimPhase::Pending),
            Some(&mutex(None)),
            &HolderState::SuspendedJob,
            &waiting,
            at(0),
        );
        assert_eq!(
            (try_lock.queue, phase_of(&try_lock)),
            (QueueAction::Dequeue, Some(ClaimPhase::Expired))
        );
        let patient = decide(
            &spec(ClaimMode::Exclusive, Some(60)),
            &facts(ClaimPhase::Waiting),
            Some(&mutex(None)),
            &HolderState::SuspendedJob,
            &waiting,
            at(20),
        );
        assert_eq!(patient.requeue_after, Some(Duration::from_secs(40)));
        let granted = QueueState::Granted {
            fencing_token: 5,
            node: node(3),
        };
        let held = decide(
            &spec(ClaimMode::Exclusive, None),
            &facts(ClaimPhase::Granted),
            Some(&mutex(Some(30))),
            &HolderState::Running,
            &granted,
            at(10),
        );
        assert_eq!(
            (phase_of(&held), held.requeue_after),
            (Some(ClaimPhase::Granted), Some(Duration::from_secs(20)))
        );
        let overheld = decide(
            &spec(ClaimMode::Exclusive, None),
            &facts(ClaimPhase::Granted),
            Some(&mutex(Some(30))),
            &HolderState::Running,
            &granted,
            at(30),
        );
        assert_eq!(
            (overheld.queue, phase_of(&overheld)),
            (QueueAction::Dequeue, Some(ClaimPhase::Expired))
        );
    }

    #[test]
    fn a_grant_found_behind_another_holder_is_lost_and_the_holder_evicted_if_asked() {
        let behind = QueueState::Waiting {
            position: 1,
            node: node(12),
        };
        let mut lock = mutex(None);
        lock.evict_on_loss = true;
        let step = decide(
            &spec(ClaimMode::Exclusive, None),
            &facts(ClaimPhase::Granted),
            Some(&lock),
            &HolderState::Running,
            &behind,
            at(5),
        );
        let outcome = step.outcome.clone().unwrap();
        assert_eq!(
            (outcome.phase, outcome.position),
            (ClaimPhase::Lost, Some(1))
        );
        assert_eq!(outcome.fencing_token, None, "no token to use any more");
        assert_eq!(step.queue, QueueAction::Keep, "it keeps its new place");
        assert!(step.evict_holder);
        // Once reported, the lost claim stays Lost, saying why, until granted again; its
        // wait timeout was for its first grant.
        let mut lost = facts(ClaimPhase::Lost);
        lost.message = Some(outcome.message.clone());
        let next = decide(
            &spec(ClaimMode::Exclusive, Some(1)),
            &lost,
            Some(&lock),
            &HolderState::Running,
            &behind,
            at(60),
        );
        let waiting = next.outcome.clone().unwrap();
        assert_eq!(
            (waiting.phase, waiting.message),
            (ClaimPhase::Lost, outcome.message)
        );
        assert!(!next.evict_holder);
        let regranted = decide(
            &spec(ClaimMode::Exclusive, Some(1)),
            &lost,
            Some(&lock),
            &HolderState::Running,
            &QueueState::Granted {
                fencing_token: 80,
                node: node(12),
            },
            at(61),
        );
        assert_eq!(phase_of(&regranted), Some(ClaimPhase::Granted));
    }

    #[test]
    fn final_claims_only_leave_the_queue() {
        for phase in [ClaimPhase::Released, ClaimPhase::Expired] {
            let step = decide(
                &spec(ClaimMode::Exclusive, None),
                &facts(phase),
                Some(&mutex(None)),
                &HolderState::Running,
                &QueueState::Granted {
                    fencing_token: 1,
                    node: node(1),
                },
                at(1),
            );
            assert_eq!((step.queue, step.outcome), (QueueAction::Dequeue, None));
        }
    }

    fn outcome(phase: ClaimPhase, reason: &'static str, message: &str) -> Outcome {
        Outcome {
            phase,
            position: None,
            sequence: Some(7),
            znode: None,
            fencing_token: (phase == ClaimPhase::Granted).then_some(42),
            message: message.into(),
            reason,
            held_back_until: None,
        }
    }

    #[test]
    fn a_grant_sets_granted_at_and_the_condition_and_its_end_keeps_them_in_history() {
        let waiting = LockClaimStatus {
            phase: ClaimPhase::Waiting,
            ..Default::default()
        };
        let granted = status_after(
            &waiting,
            &outcome(ClaimPhase::Granted, "Granted", "granted to Pod a"),
            Some(1),
            at(10),
        );
        assert_eq!(granted.granted_at, Some(Time(at(10))));
        assert_eq!(granted.released_at, None);
        assert_eq!(
            (granted.fencing_token, granted.sequence),
            (Some(42), Some(7))
        );
        let condition = &granted.conditions[0];
        assert_eq!(
            (
                condition.type_.as_str(),
                condition.status.as_str(),
                condition.reason.as_str()
            ),
            ("Granted", "True", "Granted")
        );
        assert_eq!(condition.last_transition_time, Time(at(10)));
        // Written again while held (a newer generation): nothing moves.
        let again = status_after(
            &granted,
            &outcome(ClaimPhase::Granted, "Granted", "granted to Pod a"),
            Some(2),
            at(20),
        );
        assert_eq!(again.granted_at, Some(Time(at(10))));
        assert_eq!(again.conditions[0].last_transition_time, Time(at(10)));
        assert_eq!(again.observed_generation, Some(2));
        // Lost with the session: grantedAt stays, releasedAt is set, the condition turns.
        let lost = status_after(
            &granted,
            &outcome(ClaimPhase::Lost, "Lost", "the grant was lost"),
            Some(2),
            at(30),
        );
        assert_eq!(lost.granted_at, Some(Time(at(10))));
        assert_eq!(lost.released_at, Some(Time(at(30))));
        assert_eq!(
            lost.fencing_token,
            Some(42),
            "the ended grant's token stays"
        );
        assert_eq!(lost.message.as_deref(), Some("the grant was lost"));
        let condition = &lost.conditions[0];
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("False", "Lost")
        );
        assert_eq!(condition.last_transition_time, Time(at(30)));
    }

    #[test]
    fn a_phase_change_is_counted_once_and_told_when_worth_an_event() {
        let created = Some(at(0));
        let waiting = LockClaimStatus {
            phase: ClaimPhase::Waiting,
            ..Default::default()
        };
        let grant = outcome(ClaimPhase::Granted, "Granted", "granted");
        let (tallies, notice) = transition(&waiting, &grant, created, at(5));
        assert_eq!(
            tallies,
            [Tally::Granted, Tally::Waited(Duration::from_secs(5))]
        );
        let notice = notice.expect("a grant is an event");
        assert_eq!(
            (notice.warning, notice.reason, notice.action.as_str()),
            (false, "Granted", "Granted")
        );
        let granted = status_after(&waiting, &grant, None, at(5));
        // Staying granted is not a transition.
        assert_eq!(
            transition(&granted, &grant, created, at(6)),
            (Vec::new(), None)
        );
        let release = outcome(ClaimPhase::Released, HOLDER_SUCCEEDED, "Pod a Succeeded");
        let (tallies, notice) = transition(&granted, &release, created, at(9));
        assert_eq!(
            tallies,
            [Tally::Released, Tally::Held(Duration::from_secs(4))]
        );
        // A routine release is told by the status alone (an event is a write per claim);
        // a lapsed lease is not routine.
        assert_eq!(notice, None);
        let lapse = outcome(ClaimPhase::Released, LEASE_LAPSED, "stopped renewing");
        let (_, notice) = transition(&granted, &lapse, created, at(9));
        assert!(notice.unwrap().warning, "an abnormal end is a warning");
        // Nor is being queued an event.
        let pending = LockClaimStatus::default();
        let queued = outcome(ClaimPhase::Waiting, "Waiting", "2 ahead in the queue");
        assert_eq!(
            transition(&pending, &queued, created, at(1)),
            (Vec::new(), None)
        );
        let loss = outcome(ClaimPhase::Lost, "Lost", "the grant was lost");
        let (tallies, notice) = transition(&granted, &loss, created, at(9));
        assert_eq!(tallies, [Tally::Lost, Tally::Held(Duration::from_secs(4))]);
        assert!(notice.unwrap().warning);
        // A claim that never held ends without a release or hold time.
        let expiry = outcome(ClaimPhase::Expired, "Expired", "not granted in time");
        let (tallies, notice) = transition(&waiting, &expiry, created, at(9));
        assert_eq!(tallies, [Tally::Expired]);
        assert!(notice.unwrap().warning);
    }

    /// An exclusive claim of a Job on a Mutex without limits.
    fn decide_on_a_mutex(
        facts: &ClaimFacts,
        holder: &HolderState,
        queue: &QueueState,
        now: Timestamp,
    ) -> Step {
        decide(
            &spec(ClaimMode::Exclusive, None),
            facts,
            Some(&mutex(None)),
            holder,
            queue,
            now,
        )
    }

    fn claim_of(name: &str, lock: &str, uid: &str, status: serde_json::Value) -> LockClaim {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "lockkeeper.dev/v1alpha1", "kind": "LockClaim",
            "metadata": {"name": name, "namespace": "team", "uid": uid},
            "spec": {"lock": lock, "holder": {"kind": "Job", "name": "migrate"}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_holders_claims_are_queued_in_lock_order_each_after_the_ones_before_it_are_granted() {
        let a = claim_of("c-a", "a", "1", serde_json::json!({"phase": "Waiting"}));
        let b = claim_of("c-b", "b", "2", serde_json::json!({}));
        let c = claim_of("c-c", "c", "3", serde_json::json!({"phase": "Granted"}));
        let all = [&a, &b, &c];
        let set_b = HolderSet::of(&b, &all, &[]);
        assert_eq!(set_b.earlier_not_granted, ["c-a (lock a)"]);
        assert_eq!(set_b.others_not_granted, 1);
        // The first in the order waits for nobody; a granted claim counts for nobody.
        assert!(HolderSet::of(&a, &all, &[]).earlier_not_granted.is_empty());
        assert_eq!(HolderSet::of(&c, &all, &[]).others_not_granted, 2);
        // A holder that declares locks a, b and d: c-b waits for c-a, and c-c, ahead of d's
        // claim in the order, does not wait for it; nobody starts before it is made.
        let declared = ["a", "b", "d"].map(String::from);
        let set_c = HolderSet::of(&c, &all, &declared);
        assert_eq!(set_c.earlier_not_granted, ["c-a (lock a)", "c-b (lock b)"]);
        assert_eq!(set_c.others_not_granted, 3);
        let alone = HolderSet::of(&b, &[&b], &declared);
        assert_eq!(
            alone.earlier_not_granted,
            ["a claim on lock a (not made yet)"]
        );
        assert_eq!(alone.others_not_granted, 2);

        let mut b_facts = facts(ClaimPhase::Pending);
        b_facts.holder_set = set_b;
        let step = decide_on_a_mutex(
            &b_facts,
            &HolderState::SuspendedJob,
            &QueueState::NotQueued,
            at(1),
        );
        assert_eq!(
            step.queue,
            QueueAction::Keep,
            "not queued before c-a is granted"
        );
        let outcome = step.outcome.expect("says why it waits");
        assert_eq!(outcome.phase, ClaimPhase::Pending);
        assert!(
            outcome.message.contains("c-a (lock a)"),
            "{}",
            outcome.message
        );
        // Once c-a is granted, c-b is queued.
        b_facts.holder_set = HolderSet::default();
        let step = decide_on_a_mutex(
            &b_facts,
            &HolderState::SuspendedJob,
            &QueueState::NotQueued,
            at(2),
        );
        assert_eq!(step.queue, QueueAction::Enqueue);
    }

    #[test]
    fn a_job_with_several_claims_is_resumed_only_by_the_grant_of_the_last() {
        let granted = QueueState::Granted {
            fencing_token: 4,
            node: node(4),
        };
        let mut first = facts(ClaimPhase::Waiting);
        first.holder_set.others_not_granted = 1;
        let step = decide_on_a_mutex(&first, &HolderState::SuspendedJob, &granted, at(1));
        assert_eq!(phase_of(&step), Some(ClaimPhase::Granted));
        assert!(!step.resume_job, "the other claim is not granted yet");
        let last = facts(ClaimPhase::Waiting);
        let step = decide_on_a_mutex(&last, &HolderState::SuspendedJob, &granted, at(1));
        assert!(step.resume_job);
    }

    #[test]
    fn a_holder_whose_claim_expired_ungranted_gives_up_the_claims_it_holds() {
        let expired = claim_of("c-b", "b", "2", serde_json::json!({"phase": "Expired"}));
        let held = claim_of(
            "c-a",
            "a",
            "1",
            serde_json::json!({"phase": "Granted", "grantedAt": "2026-01-01T00:00:00Z"}),
        );
        let mut facts_a = facts(ClaimPhase::Granted);
        facts_a.holder_set = HolderSet::of(&held, &[&held, &expired], &[]);
        let step = decide_on_a_mutex(
            &facts_a,
            &HolderState::SuspendedJob,
            &QueueState::Granted {
                fencing_token: 2,
                node: node(2),
            },
            at(1),
        );
        assert_eq!(phase_of(&step), Some(ClaimPhase::Expired));
        assert_eq!(step.queue, QueueAction::Dequeue, "its grant is given back");
        assert!(!step.resume_job);
    }

    /// A Job holding a and b whose claim on a was revoked (and the Job suspended, evicted for
    /// it): its claim on b, still granted, does not start it again without a.
    #[test]
    fn a_job_stopped_for_one_claims_abnormal_end_is_not_resumed_on_the_others() {
        let revoked = claim_of(
            "c-a",
            "a",
            "1",
            serde_json::json!({"phase": "Revoked", "grantedAt": "2026-01-01T00:00:00Z"}),
        );
        let held = claim_of(
            "c-b",
            "b",
            "2",
            serde_json::json!({"phase": "Granted", "grantedAt": "2026-01-01T00:00:00Z"}),
        );
        let mut facts_b = facts(ClaimPhase::Granted);
        facts_b.holder_set = HolderSet::of(&held, &[&held, &revoked], &[]);
        let granted_b = QueueState::Granted {
            fencing_token: 2,
            node: node(2),
        };
        let step = decide_on_a_mutex(&facts_b, &HolderState::SuspendedJob, &granted_b, at(1));
        assert_eq!(phase_of(&step), Some(ClaimPhase::Granted));
        assert!(
            !step.resume_job,
            "the stopped Job was started again without lock a"
        );
        assert!(
            step.outcome.unwrap().message.contains("not started again"),
            "the claim says why"
        );
        // A Job that still runs is left running with the rest.
        let running = decide_on_a_mutex(&facts_b, &HolderState::Running, &granted_b, at(1));
        assert_eq!(phase_of(&running), Some(ClaimPhase::Granted));
    }
}
