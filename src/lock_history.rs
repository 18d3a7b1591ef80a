//! A lock's last grants (pure): `status.history` of a DistributedLock, carried from one lock
//! status to the next. A grant enters when the lock's queue shows its claim holding the lock
//! (or, if it began and ended between two refreshes, when its claim shows it ended) and is
//! closed with its outcome when its claim ends, changes grant, or is deleted.

use std::collections::HashMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::claim_lifecycle::{HOLDER_DELETED, HOLDER_FAILED, HOLDER_SUCCEEDED, LEASE_LAPSED};
use crate::resources::{ClaimPhase, GrantOutcome, GrantRecord, LockClaim, LockHolder};

/// The history after this refresh, and whether a grant in it has ended in the queue but not
/// yet on its claim (the claim's status write is on its way: look again shortly, to record
/// how it ended).
#[derive(Debug, PartialEq)]
pub struct History {
    pub records: Vec<GrantRecord>,
    pub unsettled: bool,
}

/// The grant a claim showed when it was deleted, ended then: kept by the controller for the
/// lock's history (the claim is gone from the cache by the lock's next refresh).
pub fn deleted_grant(claim: &LockClaim, now: Timestamp) -> Option<GrantRecord> {
    let status = claim.status.as_ref()?;
    if status.phase != ClaimPhase::Granted {
        return None;
    }
    Some(GrantRecord {
        claim: claim.metadata.name.clone()?,
        holder: claim.spec.holder.clone(),
        mode: claim.spec.mode,
        fencing_token: status.fencing_token?,
        granted_at: status.granted_at.clone(),
        released_at: Some(Time(now)),
        outcome: Some(GrantOutcome::ClaimDeleted),
    })
}

/// `previous` brought up to date with the lock's holders now (from its queue), its cached
/// claims (by UID) and the grants of claims deleted since (`departed`, ended), keeping the
/// last `limit` grants.
pub fn history(
    previous: &[GrantRecord],
    holders: &[LockHolder],
    claims: &HashMap<String, &LockClaim>,
    departed: &[GrantRecord],
    limit: usize,
    now: Timestamp,
) -> History {
    let by_name: HashMap<&str, &LockClaim> = claims
        .values()
        .filter_map(|claim| Some((claim.metadata.name.as_deref()?, *claim)))
        .collect();
    let mut records = previous.to_vec();
    let known = |records: &[GrantRecord], claim: &str, token: i64| {
        records
            .iter()
            .any(|r| r.claim == claim && r.fencing_token == token)
    };
    for holder in holders {
        if !known(&records, &holder.claim, holder.fencing_token) {
            records.push(GrantRecord {
                claim: holder.claim.clone(),
                holder: holder.holder.clone(),
                mode: holder.mode,
                fencing_token: holder.fencing_token,
                granted_at: holder.granted_at.clone().or(Some(Time(now))),
                released_at: None,
                outcome: None,
            });
        }
    }
    for gone in departed {
        match records
            .iter_mut()
            .find(|r| r.claim == gone.claim && r.fencing_token == gone.fencing_token)
        {
            Some(open) if open.outcome.is_none() => {
                open.outcome = gone.outcome;
                open.released_at = gone.released_at.clone();
            }
            Some(_) => {}
            None => records.push(gone.clone()),
        }
    }
    // Grants that began and ended between two refreshes: their claims show them ended.
    for claim in by_name.values() {
        let status = claim.status.clone().unwrap_or_default();
        let name = claim.metadata.name.clone().unwrap_or_default();
        if let (Some(token), Some(granted_at), Some(outcome)) = (
            status.fencing_token,
            status.granted_at.clone(),
            ended_as(claim),
        ) && !known(&records, &name, token)
        {
            records.push(GrantRecord {
                claim: name,
                holder: claim.spec.holder.clone(),
                mode: claim.spec.mode,
                fencing_token: token,
                granted_at: Some(granted_at),
                released_at: status.released_at.clone().or(Some(Time(now))),
                outcome: Some(outcome),
            });
        }
    }
    let mut unsettled = false;
    for record in records.iter_mut().filter(|r| r.outcome.is_none()) {
        let holds = holders
            .iter()
            .any(|h| h.claim == record.claim && h.fencing_token == record.fencing_token);
        if holds {
            continue;
        }
        let claim = by_name.get(record.claim.as_str()).copied();
        let (outcome, released_at) = match claim {
            None => (GrantOutcome::ClaimDeleted, None),
            // A claim of the same name made after this grant: this grant's claim was deleted.
            Some(claim) if made_after(claim, record) => (GrantOutcome::ClaimDeleted, None),
            Some(claim) => {
                let status = claim.status.clone().unwrap_or_default();
                if status.fencing_token != Some(record.fencing_token) {
                    // Granted again with another token, or queued again: this grant was lost.
                    (GrantOutcome::Lost, None)
                } else if let Some(outcome) = ended_as(claim) {
                    (outcome, status.released_at.clone())
                } else {
                    // Gone from the queue, its claim not written yet.
                    unsettled = true;
                    continue;
                }
            }
        };
        record.outcome = Some(outcome);
        record.released_at = released_at.or(Some(Time(now)));
    }
    records.sort_by(|a, b| {
        let at = |r: &GrantRecord| r.granted_at.as_ref().map(|t| t.0);
        at(a)
            .cmp(&at(b))
            .then(a.fencing_token.cmp(&b.fencing_token))
    });
    let excess = records.len().saturating_sub(limit);
    records.drain(..excess);
    History { records, unsettled }
}

/// How the claim's grant ended, if its status shows an end.
fn ended_as(claim: &LockClaim) -> Option<GrantOutcome> {
    let status = claim.status.as_ref()?;
    let reason = status.granted_reason().unwrap_or_default();
    Some(match status.phase {
        ClaimPhase::Released => match reason {
            HOLDER_SUCCEEDED => GrantOutcome::Succeeded,
            HOLDER_FAILED => GrantOutcome::Failed,
            HOLDER_DELETED => GrantOutcome::HolderDeleted,
            LEASE_LAPSED => GrantOutcome::LeaseLapsed,
            _ => GrantOutcome::Released,
        },
        ClaimPhase::Expired => GrantOutcome::Expired,
        ClaimPhase::Lost => GrantOutcome::Lost,
        ClaimPhase::Revoked => GrantOutcome::Revoked,
        ClaimPhase::Pending | ClaimPhase::Waiting | ClaimPhase::Granted | ClaimPhase::Invalid => {
            return None;
        }
    })
}

fn made_after(claim: &LockClaim, record: &GrantRecord) -> bool {
    match (&claim.metadata.creation_timestamp, &record.granted_at) {
        (Some(made), Some(granted)) => made.0 > granted.0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{ClaimMode, HolderKind, HolderRef};

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    fn claim(name: &str, made: i64, status: serde_json::Value) -> LockClaim {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "lockkeeper.dev/v1alpha1", "kind": "LockClaim",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                "creationTimestamp": Time(at(made))},
            "spec": {"lock": "db", "holder": {"kind": "Job", "name": name}},
            "status": status,
        }))
        .unwrap()
    }

    fn ended(
        phase: &str,
        reason: &str,
        token: i64,
        granted: i64,
        released: i64,
    ) -> serde_json::Value {
        serde_json::json!({"phase": phase, "fencingToken": token,
            "grantedAt": Time(at(granted)), "releasedAt": Time(at(released)),
            "conditions": [{"type": "Granted", "status": "False", "reason": reason, "message": "",
                "lastTransitionTime": Time(at(released))}]})
    }

    fn holder(name: &str, token: i64, granted: i64) -> LockHolder {
        LockHolder {
            claim: name.into(),
            holder: HolderRef {
                kind: HolderKind::Job,
                name: name.into(),
            },
            mode: ClaimMode::Exclusive,
            fencing_token: token,
            granted_at: Some(Time(at(granted))),
        }
    }

    fn by_uid(claims: &[LockClaim]) -> HashMap<String, &LockClaim> {
        claims
            .iter()
            .map(|c| (c.metadata.uid.clone().unwrap(), c))
            .collect()
    }

    fn outcomes(history: &History) -> Vec<(&str, i64, Option<GrantOutcome>)> {
        history
            .records
            .iter()
            .map(|r| (r.claim.as_str(), r.fencing_token, r.outcome))
            .collect()
    }

    #[test]
    fn a_grant_enters_when_held_and_closes_with_how_its_holder_ended() {
        let granted = claim(
            "a",
            0,
            serde_json::json!({"phase": "Granted", "fencingToken": 7}),
        );
        let claims = [granted];
        let held = history(&[], &[holder("a", 7, 1)], &by_uid(&claims), &[], 10, at(2));
        assert_eq!(outcomes(&held), vec![("a", 7, None)]);
        assert!(!held.unsettled);

        // The queue lets go first; the claim's status follows.
        let still_shown = history(&held.records, &[], &by_uid(&claims), &[], 10, at(3));
        assert_eq!(outcomes(&still_shown), vec![("a", 7, None)]);
        assert!(still_shown.unsettled, "look again for the outcome");

        let done = [claim("a", 0, ended("Released", HOLDER_SUCCEEDED, 7, 1, 4))];
        let closed = history(&still_shown.records, &[], &by_uid(&done), &[], 10, at(5));
        assert_eq!(
            outcomes(&closed),
            vec![("a", 7, Some(GrantOutcome::Succeeded))]
        );
        assert_eq!(closed.records[0].released_at, Some(Time(at(4))));
        assert!(!closed.unsettled);
    }

    #[test]
    fn deleted_lost_and_unseen_grants_are_recorded_and_only_the_last_kept() {
        let previous = history(
            &[],
            &[holder("run", 3, 1), holder("job", 4, 2)],
            &HashMap::new(),
            &[],
            10,
            at(2),
        )
        .records;
        // `run` deleted its claim; `job` lost its grant and waits again; `quick` was granted
        // and failed between two refreshes.
        let claims = [
            claim("job", 0, serde_json::json!({"phase": "Waiting"})),
            claim("quick", 3, ended("Released", HOLDER_FAILED, 5, 4, 5)),
        ];
        let now = history(&previous, &[], &by_uid(&claims), &[], 10, at(6));
        assert_eq!(
            outcomes(&now),
            vec![
                ("run", 3, Some(GrantOutcome::ClaimDeleted)),
                ("job", 4, Some(GrantOutcome::Lost)),
                ("quick", 5, Some(GrantOutcome::Failed)),
            ]
        );
        assert_eq!(now.records[0].released_at, Some(Time(at(6))));
        let kept = history(&now.records, &[], &by_uid(&claims), &[], 2, at(7));
        assert_eq!(
            outcomes(&kept),
            vec![
                ("job", 4, Some(GrantOutcome::Lost)),
                ("quick", 5, Some(GrantOutcome::Failed))
            ],
            "the oldest goes first"
        );
        assert!(
            history(&kept.records, &[], &by_uid(&claims), &[], 0, at(8))
                .records
                .is_empty()
        );
    }

    #[test]
    fn a_grant_deleted_between_two_refreshes_is_recorded_from_its_last_copy() {
        let last_copy = claim(
            "run-1",
            0,
            serde_json::json!({"phase": "Granted", "fencingToken": 9, "grantedAt": Time(at(1))}),
        );
        let gone = deleted_grant(&last_copy, at(2)).expect("it held");
        let now = history(
            &[],
            &[],
            &HashMap::new(),
            std::slice::from_ref(&gone),
            10,
            at(3),
        );
        assert_eq!(
            outcomes(&now),
            vec![("run-1", 9, Some(GrantOutcome::ClaimDeleted))]
        );
        assert_eq!(now.records[0].released_at, Some(Time(at(2))));
        let waiting = claim("w", 0, serde_json::json!({"phase": "Waiting"}));
        assert_eq!(deleted_grant(&waiting, at(2)), None);
    }

    #[test]
    fn a_claim_made_again_under_the_same_name_closes_the_old_grant_as_deleted() {
        let previous = history(
            &[],
            &[holder("web-0-db", 3, 1)],
            &HashMap::new(),
            &[],
            10,
            at(1),
        )
        .records;
        let again = [claim(
            "web-0-db",
            5,
            serde_json::json!({"phase": "Waiting"}),
        )];
        let now = history(&previous, &[], &by_uid(&again), &[], 10, at(6));
        assert_eq!(
            outcomes(&now),
            vec![("web-0-db", 3, Some(GrantOutcome::ClaimDeleted))]
        );
    }
}
