//! Claims that are gone leave the queue.
//!
//! Claims carry no finalizer. A claim's contender lives in the leading controller's ZooKeeper
//! session, so a claim deleted while no controller leads has nothing queued once the next one
//! starts (it queues again only the claims it finds). While a controller leads, the claims
//! watch tells it of each deleted claim; after a relist, which may have missed deletes, every
//! contender whose claim is no longer listed leaves too. A finalizer would instead cost two
//! writes per claim, and it would leave claims, and so their namespace, stuck `Terminating`
//! whenever the controller may no longer write them — as when its RoleBinding is in the
//! namespace being deleted.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::claims;
use super::context::Context;
use crate::claim_lifecycle::{self, HeldBack};
use crate::lock_history;
use crate::resources::{DistributedLock, GrantRecord, LockClaim};

/// What the claims watch said about claims going.
pub enum Departure {
    /// The claim of this UID, on this lock, was deleted; if it showed a grant, that grant
    /// ended then (for the lock's history).
    Deleted {
        uid: String,
        lock: ObjectRef<DistributedLock>,
        grant: Option<Box<GrantRecord>>,
        /// The claim's grant ended abnormally and holds its lock back until then
        /// (`status.heldBackUntil`): deleting the claim does not shorten that.
        held_back: Option<HeldBack>,
    },
    /// The watch listed every claim again.
    Relisted,
}

impl Departure {
    /// The departure an event of the claims watch tells of, if any.
    pub fn of(event: &watcher::Event<LockClaim>) -> Option<Departure> {
        match event {
            watcher::Event::Delete(claim) => Some(Departure::Deleted {
                uid: claim.uid().unwrap_or_default(),
                lock: claim.lock_ref(),
                grant: lock_history::deleted_grant(claim, k8s_openapi::jiff::Timestamp::now())
                    .map(Box::new),
                held_back: claim
                    .status
                    .as_ref()
                    .and_then(|status| status.held_back_until.as_ref())
                    .map(|until| HeldBack {
                        until: until.0,
                        why: format!("claim {}'s grant ended abnormally", claim.name_any()),
                    }),
            }),
            watcher::Event::InitDone => Some(Departure::Relisted),
            _ => None,
        }
    }
}

/// Takes the contenders of departed claims out of the queue, from the moment the term's
/// claims are queued again until `departures` closes (the claims watch ended) or `stopping`
/// is cancelled.
pub async fn follow(
    ctx: Arc<Context>,
    mut departures: mpsc::UnboundedReceiver<Departure>,
    stopping: CancellationToken,
) {
    tokio::select! {
        () = ctx.term_resumed() => {}
        () = stopping.cancelled() => return,
    }
    // Claims deleted while the earlier term's claims were being queued again.
    leave_unlisted(&ctx).await;
    loop {
        let departure = tokio::select! {
            departure = departures.recv() => departure,
            () = stopping.cancelled() => None,
        };
        match departure {
            Some(Departure::Deleted {
                uid,
                lock,
                grant,
                held_back,
            }) => {
                if let Some(grant) = grant {
                    ctx.term.departed_grants.add(lock.clone(), *grant);
                }
                match held_back.filter(|h| h.until > Timestamp::now()) {
                    Some(held_back) => leave_after_hold_back(&ctx, uid, lock, held_back),
                    None => leave(&ctx, &uid, &lock).await,
                }
            }
            Some(Departure::Relisted) => leave_unlisted(&ctx).await,
            None => return,
        }
    }
}

async fn leave(ctx: &Context, uid: &str, lock: &ObjectRef<DistributedLock>) {
    // The engine waits for a lost connection to come back; an error here means the session
    // is over, and the contender's node went with it.
    if let Err(err) = claims::leave_for_good(ctx, uid, lock).await {
        tracing::warn!(claim_uid = uid, lock = %lock.name, %err, "a deleted claim could not leave the queue");
    }
}

/// A claim deleted while its lock is held back after its grant's abnormal end: the lock stays
/// fenced, and the claim's node (which keeps clients outside Kubernetes waiting too) stays in
/// the queue, until the hold-back has passed.
fn leave_after_hold_back(
    ctx: &Arc<Context>,
    uid: String,
    lock: ObjectRef<DistributedLock>,
    held_back: HeldBack,
) {
    let wait = claim_lifecycle::elapsed(Timestamp::now(), held_back.until);
    ctx.fence(lock.clone(), held_back);
    let ctx = ctx.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(wait) => leave(&ctx, &uid, &lock).await,
            // The term's session, and the node with it, is gone.
            () = ctx.term.ended.cancelled() => {}
        }
    });
}

/// Every tracked contender whose claim the cache no longer holds leaves the queue.
async fn leave_unlisted(ctx: &Context) {
    let listed: HashSet<String> = ctx
        .caches
        .claims
        .state()
        .iter()
        .filter_map(|c| c.uid())
        .collect();
    for (uid, lock) in unlisted(ctx.term.contenders.locks_by_uid(), &listed) {
        leave(ctx, &uid, &lock).await;
    }
}

/// The tracked contenders (claim UID, lock) whose claim is not listed.
fn unlisted(
    tracked: Vec<(String, ObjectRef<DistributedLock>)>,
    listed: &HashSet<String>,
) -> Vec<(String, ObjectRef<DistributedLock>)> {
    tracked
        .into_iter()
        .filter(|(uid, _)| !listed.contains(uid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(uid: &str) -> LockClaim {
        serde_json::from_value(json!({
            "apiVersion": "lockkeeper.dev/v1alpha1", "kind": "LockClaim",
            "metadata": {"name": "c", "namespace": "team", "uid": uid},
            "spec": {"lock": "db", "holder": {"kind": "Pod", "name": "p"}},
        }))
        .unwrap()
    }

    #[test]
    fn deletes_and_completed_relists_are_departures() {
        let deleted = Departure::of(&watcher::Event::Delete(claim("u1")));
        assert!(
            matches!(deleted, Some(Departure::Deleted { uid, lock, grant: None, held_back: None })
            if uid == "u1" && lock == ObjectRef::new("db").within("team"))
        );
        assert!(matches!(
            Departure::of(&watcher::Event::InitDone),
            Some(Departure::Relisted)
        ));
        // A relist still under way, and claims made or changed, are not.
        assert!(Departure::of(&watcher::Event::Init).is_none());
        assert!(Departure::of(&watcher::Event::InitApply(claim("u1"))).is_none());
        assert!(Departure::of(&watcher::Event::Apply(claim("u1"))).is_none());
    }

    #[test]
    fn contenders_of_claims_no_longer_listed_leave() {
        let db = ObjectRef::new("db").within("team");
        let cache = ObjectRef::new("cache").within("team");
        let tracked = [("kept", &db), ("deleted", &cache), ("remade", &db)]
            .map(|(uid, lock)| (uid.to_string(), lock.clone()))
            .to_vec();
        // "remade" was deleted and made again by its name: the new claim has a new UID.
        let listed: HashSet<String> = ["kept", "remade-2"].map(String::from).into();
        let mut gone = unlisted(tracked, &listed);
        gone.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            gone,
            [("deleted".to_string(), cache), ("remade".to_string(), db)]
        );
    }
}
