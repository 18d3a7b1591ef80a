//! The contenders this term queued, by claim UID. The engine knows each contender's znode and
//! state; only the controller knows which claim (and lock) it belongs to, and a term's
//! contenders go with its session. Queueing adds an entry, leaving the queue takes it out;
//! everything else reads through the methods here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use tokio::sync::watch;

use super::claims::{PLACE_WRITES_PER_SECOND, POSITION_REFRESH};
use super::throttle::{Budget, Throttle};
use crate::claim_lifecycle::{Node, QueueState};
use crate::resources::{DistributedLock, LockClaim};
use crate::zookeeper::{ContenderState, LockSpec};

/// A claim's contender as queued by this controller.
pub struct Tracked {
    pub lock: LockSpec,
    /// The contender's znode.
    pub node: Node,
    pub state: watch::Receiver<ContenderState>,
    /// The claim this contender belongs to (to map engine events back to it).
    pub claim: ObjectRef<LockClaim>,
    /// The claim's lock (for a claim that is gone, whose spec is gone with it).
    pub lock_ref: ObjectRef<DistributedLock>,
}

impl Tracked {
    fn holds(&self) -> bool {
        matches!(*self.state.borrow(), ContenderState::Granted { .. })
    }
}

/// A contender that went with the term's session.
pub struct Lost {
    pub claim: ObjectRef<LockClaim>,
    pub node: Node,
    pub reason: String,
}

pub struct Contenders {
    by_uid: Mutex<HashMap<String, Tracked>>,
    /// Writes of each tracked claim's place in line; an entry goes with its contender.
    place_writes: Throttle<String>,
    /// Writes of places in line across all claims.
    place_budget: Budget,
}

impl Default for Contenders {
    fn default() -> Self {
        Contenders {
            by_uid: Mutex::default(),
            place_writes: Throttle::new(POSITION_REFRESH),
            place_budget: Budget::new(PLACE_WRITES_PER_SECOND, PLACE_WRITES_PER_SECOND),
        }
    }
}

impl Contenders {
    fn by_uid(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        self.by_uid.lock().expect("contenders lock")
    }

    /// Tracks the claim's contender. The status written as it is queued shows its first place
    /// (or, queued again by a new term, the claim already shows one): its next place write
    /// waits out [`POSITION_REFRESH`], so places move in writes of their own, never in the
    /// moment of a handoff, whose grant and release they would slow down.
    pub fn track(&self, uid: String, tracked: Tracked) {
        self.place_writes.written(uid.clone());
        self.by_uid().insert(uid, tracked);
    }

    /// Stops tracking the claim's contender: its lock, and whether it held the lock.
    pub fn untrack(&self, uid: &str) -> Option<(LockSpec, bool)> {
        self.place_writes.forget(&uid.to_string());
        let tracked = self.by_uid().remove(uid)?;
        let held = tracked.holds();
        Some((tracked.lock, held))
    }

    /// How long the claim's new place in line (`position`) must wait before it is written
    /// (see [`POSITION_REFRESH`] and [`PLACE_WRITES_PER_SECOND`]); `None` when it may be
    /// written now. Out of budget, a claim nearer the front is looked at again sooner.
    pub fn place_write_wait(&self, uid: &str, position: u32) -> Option<Duration> {
        let uid = uid.to_string();
        if let Some(wait) = self.place_writes.ready(&uid) {
            return Some(wait);
        }
        if let Some(wait) = self.place_budget.take() {
            return Some(wait.max(self.place_budget.per_write() * position));
        }
        self.place_writes.written(uid);
        None
    }

    pub fn is_tracked(&self, uid: &str) -> bool {
        self.by_uid().contains_key(uid)
    }

    /// The claim whose contender this is.
    pub fn claim_of(&self, uid: &str) -> Option<ObjectRef<LockClaim>> {
        self.by_uid().get(uid).map(|tracked| tracked.claim.clone())
    }

    /// The claim's place in its queue, as the decision reads it.
    pub fn queue_state(&self, uid: &str) -> QueueState {
        let by_uid = self.by_uid();
        let Some(tracked) = by_uid.get(uid) else {
            return QueueState::NotQueued;
        };
        let node = tracked.node.clone();
        match &*tracked.state.borrow() {
            ContenderState::Queued | ContenderState::Released => QueueState::NotQueued,
            ContenderState::Waiting { position, .. } => QueueState::Waiting {
                position: *position as u32,
                node,
            },
            ContenderState::Granted { fencing_token } => QueueState::Granted {
                fencing_token: fencing_token.0,
                node,
            },
            ContenderState::Lost(reason) if reason.ends_session() => QueueState::SessionEnded,
            ContenderState::Lost(reason) => QueueState::Lost(reason.to_string()),
        }
    }

    /// Every tracked contender: its claim's UID and lock.
    pub fn locks_by_uid(&self) -> Vec<(String, ObjectRef<DistributedLock>)> {
        self.by_uid()
            .iter()
            .map(|(uid, tracked)| (uid.clone(), tracked.lock_ref.clone()))
            .collect()
    }

    /// Every contender not released: its claim, its znode, and why it is lost. Read when the
    /// term's session is gone: every contender went with it, even one the engine has not
    /// reported yet.
    pub fn lost(&self) -> Vec<Lost> {
        self.by_uid()
            .values()
            .filter_map(|tracked| {
                let reason = match &*tracked.state.borrow() {
                    ContenderState::Released => return None,
                    ContenderState::Lost(reason) => reason.to_string(),
                    _ => "the ZooKeeper session was lost".to_string(),
                };
                Some(Lost {
                    claim: tracked.claim.clone(),
                    node: tracked.node.clone(),
                    reason,
                })
            })
            .collect()
    }
}
