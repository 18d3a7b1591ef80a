//! What a DistributedLock's status says (pure): who holds the lock and how many wait, read
//! from the lock's ZooKeeper queue (so clients outside Kubernetes count too), named by the
//! claims whose contenders hold it.

use std::collections::HashMap;

use k8s_openapi::jiff::Timestamp;

use crate::lock_history::history;
use crate::resources::conditions;
use crate::resources::{
    ClaimPhase, DistributedLockStatus, Installation, LockClaim, LockHolder, LockSpecError,
};
use crate::zookeeper::LockQueue;

/// What the lock reconciler observed of one lock.
pub struct LockFacts<'a> {
    pub current: &'a DistributedLockStatus,
    pub generation: Option<i64>,
    /// The lock's queue and its directory; or why the lock's spec cannot be served.
    pub queue: Result<(&'a str, &'a LockQueue), &'a LockSpecError>,
    /// The cached claims of the lock, by UID.
    pub claims: &'a HashMap<String, &'a LockClaim>,
    /// Grants of the lock's claims deleted while they held, not in its status yet.
    pub departed: &'a [crate::resources::GrantRecord],
    /// How many grants the lock's history keeps.
    pub history_limit: usize,
}

/// What the lock's status should be.
#[derive(Debug, PartialEq)]
pub struct WantedStatus {
    pub status: DistributedLockStatus,
    /// A grant ended in the queue before its claim said how: look again soon to record it.
    pub look_again: bool,
}

/// The lock's status, served by `here`.
pub fn lock_status(facts: &LockFacts, here: &Installation, now: Timestamp) -> WantedStatus {
    let ready = |state: &str, reason: &str, message: String| {
        vec![conditions::condition(
            "Ready",
            state,
            reason,
            message,
            &facts.current.conditions,
            facts.generation,
            now,
        )]
    };
    let (dir, queue) = match &facts.queue {
        Err(problem) => {
            return WantedStatus {
                status: DistributedLockStatus {
                    conditions: ready("False", problem.reason(), problem.to_string()),
                    observed_generation: facts.generation,
                    served_by: Some(here.clone()),
                    history: facts.current.history.clone(),
                    ..Default::default()
                },
                look_again: false,
            };
        }
        Ok(queue) => *queue,
    };
    let (holders, external) = holders(queue, facts.claims);
    let held_by = (!holders.is_empty()).then(|| {
        let names: Vec<&str> = holders.iter().map(|h| h.claim.as_str()).collect();
        names.join(",")
    });
    let history = history(
        &facts.current.history,
        &holders,
        facts.claims,
        facts.departed,
        facts.history_limit,
        now,
    );
    WantedStatus {
        status: DistributedLockStatus {
            held_by,
            holders,
            waiting: queue.waiting() as u32,
            external_holders: external,
            zookeeper_path: Some(dir.to_string()),
            conditions: ready("True", "Serving", "queued in ZooKeeper".into()),
            observed_generation: facts.generation,
            served_by: Some(here.clone()),
            history: history.records,
        },
        look_again: history.unsettled,
    }
}

/// The queue's holders that are claims, and how many are clients outside Kubernetes.
fn holders(queue: &LockQueue, claims: &HashMap<String, &LockClaim>) -> (Vec<LockHolder>, u32) {
    let mut holders = Vec::new();
    let mut external = 0;
    for entry in queue.holders() {
        let Some(claim) = entry.owner.as_ref().and_then(|owner| claims.get(owner)) else {
            external += 1;
            continue;
        };
        let status = claim.status.clone().unwrap_or_default();
        holders.push(LockHolder {
            claim: claim.metadata.name.clone().unwrap_or_default(),
            holder: claim.spec.holder.clone(),
            mode: claim.spec.mode,
            fencing_token: entry.fencing_token.map(|t| t.0).unwrap_or_default(),
            granted_at: status
                .granted_at
                .filter(|_| status.phase == ClaimPhase::Granted),
        });
    }
    (holders, external)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock_rules::{Mode, Verdict, WaitTarget};
    use crate::zookeeper::{FencingToken, QueueEntry};

    fn claim(yaml: &str) -> LockClaim {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn entry(sequence: i64, owner: Option<&str>, holds: bool) -> QueueEntry {
        QueueEntry {
            node: format!("_c_{}-lock-{sequence:010}", owner.unwrap_or("x")),
            sequence,
            mode: Mode::Exclusive,
            owner: owner.map(String::from),
            verdict: if holds {
                Verdict::Holds
            } else {
                Verdict::Waits {
                    position: 1,
                    target: WaitTarget::AnyHolder,
                }
            },
            fencing_token: holds.then_some(FencingToken(100 + sequence)),
        }
    }

    fn here() -> Installation {
        Installation {
            id: "i-1".into(),
            zookeeper: "zk:2181/lockkeeper".into(),
        }
    }

    #[test]
    fn holders_are_named_by_their_claims_and_outside_clients_counted() {
        let sync_1 = claim(
            r#"
apiVersion: lockkeeper.dev/v1alpha1
kind: LockClaim
metadata: {name: sync-1, namespace: team, uid: u1}
spec: {lock: api, holder: {kind: Job, name: sync-1}}
status: {phase: Granted, grantedAt: "2026-01-01T00:00:00Z"}
"#,
        );
        let sync_2 = claim(
            r#"
apiVersion: lockkeeper.dev/v1alpha1
kind: LockClaim
metadata: {name: sync-2, namespace: team, uid: u2}
spec: {lock: api, holder: {kind: Job, name: sync-2}}
status: {phase: Waiting}
"#,
        );
        let claims = HashMap::from([("u1".to_string(), &sync_1), ("u2".to_string(), &sync_2)]);
        // A semaphore of 2: sync-1 and a Curator client hold, sync-2 waits.
        let queue = LockQueue {
            entries: vec![
                entry(1, Some("u1"), true),
                entry(2, None, true),
                entry(3, Some("u2"), false),
            ],
        };
        let current = DistributedLockStatus::default();
        let facts = LockFacts {
            current: &current,
            generation: Some(3),
            queue: Ok(("/lockkeeper/team/api", &queue)),
            claims: &claims,
            departed: &[],
            history_limit: 10,
        };
        let status = lock_status(&facts, &here(), Timestamp::UNIX_EPOCH).status;
        assert_eq!(status.held_by.as_deref(), Some("sync-1"));
        assert_eq!(status.holders.len(), 1);
        assert_eq!(status.holders[0].fencing_token, 101);
        assert!(status.holders[0].granted_at.is_some());
        assert_eq!((status.waiting, status.external_holders), (1, 1));
        assert_eq!(
            status.zookeeper_path.as_deref(),
            Some("/lockkeeper/team/api")
        );
        assert_eq!(status.served_by, Some(here()));
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.conditions[0].reason, "Serving");
        let history: Vec<(&str, i64)> = status
            .history
            .iter()
            .map(|r| (r.claim.as_str(), r.fencing_token))
            .collect();
        assert_eq!(
            history,
            vec![("sync-1", 101)],
            "the claim's grant is recorded"
        );
    }

    #[test]
    fn a_lock_that_cannot_be_served_says_why() {
        let claims = HashMap::new();
        let current = DistributedLockStatus::default();
        let invalid = LockSpecError::from(crate::zookeeper::EngineError::from(
            crate::lock_rules::RuleError::NoPermits(0),
        ));
        let refused = LockSpecError::from(
            crate::lock_paths::LockPaths::new("/lockkeeper", vec![])
                .check("team", "/lockkeeper/other/db")
                .unwrap_err(),
        );
        for (problem, reason) in [(&invalid, "InvalidSpec"), (&refused, "PathNotAllowed")] {
            let facts = LockFacts {
                current: &current,
                generation: Some(1),
                queue: Err(problem),
                claims: &claims,
                departed: &[],
                history_limit: 10,
            };
            let status = lock_status(&facts, &here(), Timestamp::UNIX_EPOCH).status;
            let ready = &status.conditions[0];
            assert_eq!(
                (
                    ready.status.as_str(),
                    ready.reason.as_str(),
                    ready.message.clone()
                ),
                ("False", reason, problem.to_string())
            );
            assert_eq!((status.holders.len(), status.zookeeper_path), (0, None));
            assert_eq!(status.served_by, Some(here()));
        }
        assert_eq!(
            invalid.to_string(),
            "a semaphore needs at least 1 permit, got 0"
        );
    }
}
