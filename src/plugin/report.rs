//! What `kubectl lock` prints (pure): the locks table, a claim's reasons to wait, and a lock's
//! history, from resources already read.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::resources::{
    ClaimPhase, DistributedLock, GrantOutcome, HolderKind, HolderRef, LockClaim, LockType,
};

/// Columns padded to their widest cell, two spaces apart, as kubectl prints tables (a few
/// lines: no table crate needed for plain text).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

/// A duration as kubectl shows ages: `45s`, `3m12s`, `2h5m`, `3d4h`.
pub fn short(duration: Duration) -> String {
    let s = duration.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

fn since(at: Timestamp, now: Timestamp) -> Duration {
    now.duration_since(at).unsigned_abs()
}

fn lock_type(lock: &DistributedLock) -> String {
    match lock.spec.lock_type {
        LockType::Mutex => "Mutex".into(),
        LockType::ReadWrite => "ReadWrite".into(),
        LockType::Semaphore => format!("Semaphore({})", lock.spec.permits.unwrap_or(0)),
    }
}

fn holder_text(holder: &HolderRef) -> String {
    format!("{:?} {}", holder.kind, holder.name)
}

/// `kubectl lock list`: each lock's type, holders, queue length, oldest wait and longest hold
/// (the waits from its claims; outside clients count in WAITING and HOLDERS).
pub fn lock_list(
    locks: &[DistributedLock],
    claims: &[LockClaim],
    all_namespaces: bool,
    now: Timestamp,
) -> String {
    // When each lock's longest-waiting claim was made, from one pass over the claims.
    let mut oldest_waits: HashMap<(String, String), Timestamp> = HashMap::new();
    for claim in claims {
        let phase = claim.status.as_ref().map(|s| s.phase).unwrap_or_default();
        let waits = matches!(
            phase,
            ClaimPhase::Pending | ClaimPhase::Waiting | ClaimPhase::Lost
        );
        if let (true, Some(made)) = (waits, claim.metadata.creation_timestamp.as_ref()) {
            let key = (
                claim.namespace().unwrap_or_default(),
                claim.spec.lock.clone(),
            );
            let oldest = oldest_waits.entry(key).or_insert(made.0);
            *oldest = (*oldest).min(made.0);
        }
    }
    let mut rows = Vec::new();
    for lock in locks {
        let namespace = lock.namespace().unwrap_or_default();
        let status = lock.status.clone().unwrap_or_default();
        let mut holders: Vec<String> = status.holders.iter().map(|h| h.claim.clone()).collect();
        if status.external_holders > 0 {
            holders.push(format!("{} outside", status.external_holders));
        }
        let oldest_wait = oldest_waits
            .get(&(namespace.clone(), lock.name_any()))
            .map(|made| since(*made, now));
        let longest_hold = status
            .holders
            .iter()
            .filter_map(|h| h.granted_at.as_ref())
            .map(|at| since(at.0, now))
            .max();
        let mut row = vec![
            lock.name_any(),
            lock_type(lock),
            if holders.is_empty() {
                "-".into()
            } else {
                holders.join(",")
            },
            status.waiting.to_string(),
            oldest_wait.map(short).unwrap_or_else(|| "-".into()),
            longest_hold.map(short).unwrap_or_else(|| "-".into()),
        ];
        if all_namespaces {
            row.insert(0, namespace);
        }
        rows.push(row);
    }
    let mut header = vec![
        "NAME",
        "TYPE",
        "HOLDERS",
        "WAITING",
        "OLDEST WAIT",
        "LONGEST HOLD",
    ];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    table(&header, &rows)
}

/// `kubectl lock history LOCK`: its last grants, oldest first.
pub fn history(lock: &DistributedLock, now: Timestamp) -> String {
    let status = lock.status.clone().unwrap_or_default();
    if status.history.is_empty() {
        return format!(
            "lock {} has no grants on record (it keeps the last {})\n",
            lock.name_any(),
            lock.spec
                .history_limit
                .unwrap_or(crate::resources::DEFAULT_HISTORY_LIMIT)
        );
    }
    let rows: Vec<Vec<String>> = status
        .history
        .iter()
        .map(|record| {
            let granted = record.granted_at.as_ref().map(|t| t.0);
            let held = match (granted, &record.released_at) {
                (Some(from), Some(to)) => short(since(from, to.0)),
                (Some(from), None) => format!("{} so far", short(since(from, now))),
                _ => "-".into(),
            };
            vec![
                granted.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                record.claim.clone(),
                holder_text(&record.holder),
                format!("{:?}", record.mode),
                record.fencing_token.to_string(),
                held,
                record
                    .outcome
                    .map(outcome_text)
                    .unwrap_or_else(|| "holds".into()),
            ]
        })
        .collect();
    table(
        &[
            "GRANTED", "CLAIM", "HOLDER", "MODE", "TOKEN", "HELD", "OUTCOME",
        ],
        &rows,
    )
}

fn outcome_text(outcome: GrantOutcome) -> String {
    format!("{outcome:?}")
}

/// Whether a holder Pod or Job still runs, as `kubectl lock why` found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Still running (or not started yet): the phase or state, in words.
    Alive(String),
    /// Ended: the controller releases its grant shortly.
    Ended(String),
    Missing,
    /// Could not be read (no permission, say).
    Unknown(String),
}

/// What `kubectl lock why` knows around one claim.
pub struct WhyFacts<'a> {
    pub claim: &'a LockClaim,
    /// The claim's lock, if it exists.
    pub lock: Option<&'a DistributedLock>,
    /// Every claim of that lock.
    pub lock_claims: &'a [LockClaim],
    /// Pods and Jobs named as holders, by kind and name.
    pub liveness: &'a HashMap<(HolderKind, String), Liveness>,
    pub now: Timestamp,
}

/// Why the claim waits (or that it does not), in plain language.
pub fn why(facts: &WhyFacts) -> String {
    let claim = facts.claim;
    let status = claim.status.clone().unwrap_or_default();
    let name = claim.name_any();
    let lock_name = &claim.spec.lock;
    let message = status.message.clone().unwrap_or_default();
    let mut out = Vec::new();
    let lock = match facts.lock {
        Some(lock) => lock,
        None => {
            out.push(format!(
                "claim {name} waits for lock {lock_name}, which does not exist: create the DistributedLock {lock_name} in this namespace."
            ));
            return lines(out);
        }
    };
    let kind = lock_type(lock);
    let mode = format!("{:?}", claim.spec.mode);
    match status.phase {
        ClaimPhase::Granted => {
            let held = status
                .granted_at
                .as_ref()
                .map(|t| format!(" for {}", short(since(t.0, facts.now))))
                .unwrap_or_default();
            out.push(format!(
                "claim {name} holds lock {lock_name} ({kind}, {mode}){held}, fencing token {}: it waits for nothing.",
                status.fencing_token.map(|t| t.to_string()).unwrap_or_else(|| "-".into())
            ));
            if message.contains("other claim") {
                out.push(format!("Its holder starts once its other claims are granted too: {message}."));
            }
            if let Some(deadlock) = deadlocked(claim) {
                out.push(format!("Its holder is in a {deadlock}."));
            }
            return lines(out);
        }
        ClaimPhase::Released | ClaimPhase::Expired | ClaimPhase::Revoked => {
            let when = status
                .released_at
                .as_ref()
                .map(|t| format!(" {} ago", short(since(t.0, facts.now))))
                .unwrap_or_default();
            out.push(format!(
                "claim {name} ended {:?}{when} ({message}): it waits for nothing.",
                status.phase
            ));
            return lines(out);
        }
        ClaimPhase::Invalid => {
            out.push(format!(
                "claim {name} cannot be served as it is: {message}. It waits until that is fixed."
            ));
            return lines(out);
        }
        ClaimPhase::Pending => {
            if message.is_empty() {
                out.push(format!(
                    "claim {name} is not queued yet: the controller has not seen it (is it running?)."
                ));
            } else {
                out.push(format!("claim {name} is not queued yet: {message}."));
            }
        }
        ClaimPhase::Waiting => out.push(format!(
            "claim {name} waits for lock {lock_name} ({kind}, {mode}): {} ahead of it in line.",
            status.position.unwrap_or_default()
        )),
        ClaimPhase::Lost => out.push(format!(
            "claim {name} lost its grant of lock {lock_name} and waits to be granted again: {message}."
        )),
    }
    let lock_status = lock.status.clone().unwrap_or_default();
    if lock_status.holders.is_empty() && lock_status.external_holders == 0 {
        out.push("Nobody holds the lock now.".into());
    } else {
        out.push("Holding the lock now:".into());
    }
    for holder in &lock_status.holders {
        let held = holder
            .granted_at
            .as_ref()
            .map(|t| format!(", held for {}", short(since(t.0, facts.now))))
            .unwrap_or_default();
        let holder_claim = facts
            .lock_claims
            .iter()
            .find(|c| c.name_any() == holder.claim);
        let ended = holder_claim
            .and_then(|c| c.status.as_ref())
            .filter(|s| s.phase.is_final());
        let standing = match ended {
            Some(status) => format!(
                "its claim ended {:?}, and its place is kept until the lock-delay has passed",
                status.phase
            ),
            None => alive(&holder.holder, holder_claim, facts),
        };
        out.push(format!(
            "  - claim {}: {}{held}, fencing token {}; {standing}",
            holder.claim,
            holder_text(&holder.holder),
            holder.fencing_token,
        ));
    }
    if lock_status.external_holders > 0 {
        out.push(format!(
            "  - {} client(s) outside Kubernetes (Curator, kazoo) on {}",
            lock_status.external_holders,
            lock_status
                .zookeeper_path
                .as_deref()
                .unwrap_or("the lock's path")
        ));
    }
    if let Some(own) = status.sequence {
        let mut ahead: Vec<&LockClaim> = facts
            .lock_claims
            .iter()
            .filter(|c| {
                let s = c.status.clone().unwrap_or_default();
                matches!(s.phase, ClaimPhase::Waiting | ClaimPhase::Lost)
                    && s.sequence.is_some_and(|seq| seq < own)
            })
            .collect();
        ahead.sort_by_key(|c| c.status.as_ref().and_then(|s| s.sequence));
        if !ahead.is_empty() {
            out.push("Waiting ahead of it:".into());
        }
        for other in ahead {
            let waited = other
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| format!(", waiting for {}", short(since(t.0, facts.now))))
                .unwrap_or_default();
            out.push(format!(
                "  - claim {}: {}{waited}; {}",
                other.name_any(),
                holder_text(&other.spec.holder),
                alive(&other.spec.holder, Some(other), facts)
            ));
        }
    }
    if let Some(fence) = lock_delay(lock, facts) {
        out.push(fence);
    }
    if let Some(deadlock) = deadlocked(claim) {
        out.push(format!(
            "It will wait forever unless the cycle is broken: {deadlock}."
        ));
    }
    lines(out)
}

/// The `Deadlocked` condition's message, if the claim is in a deadlock.
fn deadlocked(claim: &LockClaim) -> Option<String> {
    claim
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == crate::claim_lifecycle::DEADLOCKED && c.status == "True")
        .map(|c| c.message.clone())
}

/// Whether the lock is held back after a grant that ended abnormally: what its claims'
/// `heldBackUntil` say, the time the controller honours too.
fn lock_delay(lock: &DistributedLock, facts: &WhyFacts) -> Option<String> {
    let delay = lock.spec.lock_delay_seconds.filter(|d| *d > 0)?;
    facts
        .lock_claims
        .iter()
        .filter_map(|c| {
            let status = c.status.as_ref()?;
            let until = status.held_back_until.as_ref()?.0;
            (until > facts.now).then_some((until, c, status))
        })
        .max_by_key(|(until, _, _)| *until)
        .map(|(until, c, status)| {
            format!(
                "The lock is held back for its lock-delay ({delay}s) after claim {}'s grant ended {}: {} left.",
                c.name_any(),
                status.granted_reason().unwrap_or("abnormally"),
                short(since(facts.now, until))
            )
        })
}

fn alive(holder: &HolderRef, claim: Option<&LockClaim>, facts: &WhyFacts) -> String {
    if holder.kind == HolderKind::Lease {
        let Some(claim) = claim else {
            return "its lease is not known".into();
        };
        let lease = claim.spec.lease_duration_seconds.unwrap_or_default();
        let renewed = claim.spec.renew_time.as_ref().map(|t| t.0).or(claim
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0));
        return match renewed {
            Some(at) if since(at, facts.now).as_secs() <= u64::from(lease) => format!(
                "the lease was renewed {} ago (lease {lease}s): alive",
                short(since(at, facts.now))
            ),
            Some(at) => format!(
                "the lease was last renewed {} ago (lease {lease}s): its holder stopped renewing",
                short(since(at, facts.now))
            ),
            None => "the lease was never renewed".into(),
        };
    }
    match facts.liveness.get(&(holder.kind, holder.name.clone())) {
        Some(Liveness::Alive(state)) => format!("the {:?} is {state}", holder.kind),
        Some(Liveness::Ended(state)) => format!(
            "the {:?} ended ({state}): the controller releases its claim shortly",
            holder.kind
        ),
        Some(Liveness::Missing) => format!(
            "the {:?} no longer exists: the controller releases its claim shortly",
            holder.kind
        ),
        Some(Liveness::Unknown(why)) => {
            format!("whether the {:?} runs is unknown ({why})", holder.kind)
        }
        None => format!("whether the {:?} runs was not read", holder.kind),
    }
}

fn lines(out: Vec<String>) -> String {
    out.into_iter().map(|l| l + "\n").collect()
}
