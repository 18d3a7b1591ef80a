//! Grants whose claims were deleted while they held, kept per lock until the lock's written
//! status shows them in its history: the deleted claim is gone from the cache by the lock's
//! next refresh, and a grant that began and ended between two refreshes would go unrecorded.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::runtime::reflector::ObjectRef;

use crate::resources::{DistributedLock, GrantRecord};

/// Records kept per lock at most: a history keeps no more.
const KEPT_PER_LOCK: usize = 100;

#[derive(Default)]
pub struct DepartedGrants(Mutex<HashMap<ObjectRef<DistributedLock>, Vec<GrantRecord>>>);

impl DepartedGrants {
    pub fn add(&self, lock: ObjectRef<DistributedLock>, grant: GrantRecord) {
        let mut kept = self.0.lock().expect("departed grants lock");
        let records = kept.entry(lock).or_default();
        records.push(grant);
        let excess = records.len().saturating_sub(KEPT_PER_LOCK);
        records.drain(..excess);
    }

    /// Forgets the lock's departed grants (its history keeps none).
    pub fn forget(&self, lock: &ObjectRef<DistributedLock>) {
        self.0.lock().expect("departed grants lock").remove(lock);
    }

    /// The lock's departed grants that its status (`shown`) does not hold ended yet; those it
    /// does are forgotten.
    pub fn of(&self, lock: &ObjectRef<DistributedLock>, shown: &[GrantRecord]) -> Vec<GrantRecord> {
        let mut kept = self.0.lock().expect("departed grants lock");
        let Some(records) = kept.get_mut(lock) else {
            return Vec::new();
        };
        records.retain(|gone| {
            !shown.iter().any(|r| {
                r.claim == gone.claim
                    && r.fencing_token == gone.fencing_token
                    && r.outcome.is_some()
            })
        });
        let left = records.clone();
        if left.is_empty() {
            kept.remove(lock);
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{ClaimMode, GrantOutcome, HolderKind, HolderRef};

    fn record(claim: &str, token: i64, outcome: Option<GrantOutcome>) -> GrantRecord {
        GrantRecord {
            claim: claim.into(),
            holder: HolderRef {
                kind: HolderKind::Lease,
                name: "h".into(),
            },
            mode: ClaimMode::Exclusive,
            fencing_token: token,
            granted_at: None,
            released_at: None,
            outcome,
        }
    }

    #[test]
    fn kept_until_the_locks_status_shows_them_ended() {
        let grants = DepartedGrants::default();
        let db = ObjectRef::new("db").within("team");
        grants.add(db.clone(), record("a", 1, Some(GrantOutcome::ClaimDeleted)));
        grants.add(db.clone(), record("b", 2, Some(GrantOutcome::ClaimDeleted)));
        // Shown open (written before the delete was seen): still kept.
        let shown = [record("a", 1, None)];
        assert_eq!(grants.of(&db, &shown).len(), 2);
        let shown = [record("a", 1, Some(GrantOutcome::ClaimDeleted))];
        assert_eq!(
            grants.of(&db, &shown),
            vec![record("b", 2, Some(GrantOutcome::ClaimDeleted))]
        );
        assert!(
            grants
                .of(&ObjectRef::new("other").within("team"), &[])
                .is_empty()
        );
    }
}
