//! What every reconcile works with, kept by lifetime: the process's connections (Kubernetes,
//! the lock engine, metrics), the term's watch caches, and what the term keeps of its own work
//! (the contenders it queued, fences after lost grants, its throttles and retries).

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::claim_index::ClaimIndex;
use super::contenders::{Contenders, Tracked};
use super::fast_lane::{FastLane, Turns};
use super::retries::Retries;
use super::stale_copies::StaleCopies;
use super::telemetry::Metrics;
use crate::claim_lifecycle::{self, HeldBack, Node};
use crate::lock_rules::Mode;
use crate::resources::{DistributedLock, HolderKind, Installation, LockClaim};
use crate::zookeeper::znode_name::{ContenderId, ContenderNode};
use crate::zookeeper::{Contender, EngineError, LockEngine, LockSpec, SessionStatus};

/// The claim's holder, by name in the claim's namespace.
fn holder_ref<K: kube::Resource<DynamicType = ()>>(claim: &LockClaim) -> ObjectRef<K> {
    ObjectRef::new(&claim.spec.holder.name).within(&claim.namespace().unwrap_or_default())
}

/// What a reconcile works with, by lifetime: the process's connections, the term's watch
/// caches, and what the term keeps of its own work.
pub struct Context {
    pub process: Arc<Process>,
    pub caches: Caches,
    pub term: Term,
}

/// What lives as long as the process.
pub struct Process {
    pub client: Client,
    pub engine: LockEngine,
    /// Where locks live in ZooKeeper: the root of default lock paths
    /// (`<root>/<namespace>/<name>`), and the prefixes allowed beyond a namespace's own part
    /// (every lock's path is resolved and checked by `DistributedLock::lock_spec` with it).
    pub root: crate::lock_paths::LockPaths,
    /// This installation, as locks record the one that serves them.
    pub installation: Installation,
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
}

/// What the term's watches keep; filled anew each term.
pub struct Caches {
    pub locks: Store<DistributedLock>,
    pub pods: Store<Pod>,
    pub jobs: Store<Job>,
    pub claims: Store<LockClaim>,
    /// The cached claims by lock and by holder.
    pub index: ClaimIndex,
}

/// What one term keeps of its own work; it goes with the term (the ZooKeeper session its
/// contenders lived in is gone then).
pub struct Term {
    /// The contenders this term queued, by claim UID.
    pub contenders: Contenders,
    /// Locks a grant of which ended abnormally: nobody is granted them before their time.
    pub fences: Mutex<Fences>,
    /// Locks whose claims an earlier term had queued wait out a fence before they are queued
    /// again in their old order: their claims are not queued meanwhile (see [`super::resume`]).
    pub requeues_pending: Mutex<HashSet<ObjectRef<DistributedLock>>>,
    /// Claims whose nodes went on their own (another ZooKeeper client deleted them), by lock,
    /// until their claim's end is written (and its holder evicted): nobody is granted the lock
    /// meanwhile, lock-delay or not.
    pub ends_pending: Mutex<HashMap<ObjectRef<DistributedLock>, HashSet<String>>>,
    /// When each Lease holder was last seen renewing, on this controller's clock.
    pub lease_renewals: crate::claim_lifecycle::holders::LeaseRenewals,
    /// Cached claim versions this term's writes replaced (see [`StaleCopies`]).
    pub stale_claims: StaleCopies,
    /// How soon each claim whose reconcile failed is tried again.
    pub claim_retries: Retries<ObjectRef<LockClaim>>,
    /// Asks the lock controller to refresh a lock's status.
    pub lock_changed: mpsc::UnboundedSender<ObjectRef<DistributedLock>>,
    /// The ZooKeeper session this term leads in.
    pub session_id: Option<i64>,
    /// Cancelled when the term ends: work it spawned stops with it.
    pub ended: CancellationToken,
    /// True once the watch caches are filled and the claims an earlier term had queued are
    /// queued again (see [`super::resume`]); reconciles wait for it, so that they decide on
    /// complete caches and keep the old order.
    pub resumed: watch::Sender<bool>,
    /// Claims whose reconcile is on a handoff's critical path go here (see [`FastLane`]).
    pub fast_lane: FastLane,
    /// One reconcile at a time per claim, whichever path runs it.
    pub turns: Turns,
    /// Grants of claims deleted while they held, for their locks' history.
    pub departed_grants: super::departed_grants::DepartedGrants,
    /// Deadlocks found among the claims, by claim.
    pub deadlocks: super::deadlocks::Deadlocks,
}

/// How soon a claim held back by an end not written yet looks again, should nothing else wake it.
const END_PENDING_RECHECK: Duration = Duration::from_secs(1);

/// Locks nobody is granted before a time: a grant of each ended abnormally, and its old holder
/// gets the lock's lock-delay to notice.
pub type Fences = HashMap<ObjectRef<DistributedLock>, HeldBack>;

/// Adds a fence on `lock` until `held_back.until`, keeping a later one already there.
pub fn add_fence(fences: &mut Fences, lock: ObjectRef<DistributedLock>, held_back: HeldBack) {
    match fences.get(&lock) {
        Some(fence) if fence.until >= held_back.until => {}
        _ => {
            fences.insert(lock, held_back);
        }
    }
}

impl Context {
    /// The claim's holder Pod, as the pod cache has it (none for other holder kinds).
    pub fn cached_holder_pod(&self, claim: &LockClaim) -> Option<Arc<Pod>> {
        (claim.spec.holder.kind == HolderKind::Pod)
            .then(|| self.caches.pods.get(&holder_ref(claim)))
            .flatten()
    }

    /// The claim's holder Job, as the Job cache has it (none for other holder kinds).
    pub fn cached_holder_job(&self, claim: &LockClaim) -> Option<Arc<Job>> {
        (claim.spec.holder.kind == HolderKind::Job)
            .then(|| self.caches.jobs.get(&holder_ref(claim)))
            .flatten()
    }

    /// The API of kind `K` in the namespace of `object` (a claim's holder, its lock, itself).
    pub fn api_beside<K>(&self, object: &impl ResourceExt) -> kube::Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        kube::Api::namespaced(
            self.process.client.clone(),
            &object.namespace().unwrap_or_default(),
        )
    }

    /// Whether this term may act on what it knows of ZooKeeper: its session is connected. While
    /// the connection is down, ZooKeeper may already have expired the session and another
    /// replica may lead and grant; a write decided on this term's queues could undo its work
    /// (mark its grant `Lost`, say). The client notices a dead connection within two thirds
    /// of the session timeout, before ZooKeeper can expire the session, so a term that
    /// writes only while connected never writes after another replica took over.
    pub fn zookeeper_connected(&self) -> bool {
        match *self.process.engine.session_status().borrow() {
            SessionStatus::Connected { session_id } => self.term.session_id == Some(session_id),
            _ => false,
        }
    }

    /// Waits until the claims of the earlier term are queued again.
    pub async fn term_resumed(&self) {
        // The sender lives in this context, so the channel cannot close while waiting.
        let _ = self
            .term
            .resumed
            .subscribe()
            .wait_for(|resumed| *resumed)
            .await;
    }

    pub fn recorder(&self) -> Recorder {
        Recorder::new(self.process.client.clone(), self.process.reporter.clone())
    }

    /// How long to wait before queueing a claim of this lock, if the claims an earlier term had
    /// queued on it are still to be queued again, in order, once its fence has passed.
    pub fn fenced_for(&self, lock: &ObjectRef<DistributedLock>) -> Option<Duration> {
        if !self
            .term
            .requeues_pending
            .lock()
            .expect("requeues lock")
            .contains(lock)
        {
            return None;
        }
        let fences = self.term.fences.lock().expect("fences lock");
        let left = fences
            .get(lock)
            .map(|fence| claim_lifecycle::elapsed(Timestamp::now(), fence.until))
            .unwrap_or_default();
        Some(left.max(Duration::from_millis(100)))
    }

    /// The hold-back in force on this lock, if any: nobody is granted it before then.
    pub fn held_back(&self, lock: &ObjectRef<DistributedLock>) -> Option<HeldBack> {
        let now = Timestamp::now();
        let pending = self.term.ends_pending.lock().expect("ends lock");
        if pending.get(lock).is_some_and(|uids| !uids.is_empty()) {
            // Lifted when the end is written, which looks at the lock's claims again; the
            // time is only a fallback.
            return Some(HeldBack {
                until: now
                    .checked_add(END_PENDING_RECHECK)
                    .expect("a time a second away"),
                why: "a node of it was deleted by another client, and its claim's end is not \
                      written yet"
                    .into(),
            });
        }
        drop(pending);
        let fences = self.term.fences.lock().expect("fences lock");
        fences.get(lock).filter(|fence| fence.until > now).cloned()
    }

    /// Holds `lock` back until the end of claim `uid`, whose node went on its own, is written.
    pub fn end_pending(&self, lock: ObjectRef<DistributedLock>, uid: String) {
        let mut pending = self.term.ends_pending.lock().expect("ends lock");
        pending.entry(lock).or_default().insert(uid);
    }

    /// The end of claim `uid` is written: the lock is no longer held back for it, and the
    /// claims of the lock that lead their queue are looked at again.
    pub fn end_written(&self, lock: &ObjectRef<DistributedLock>, uid: &str) {
        let lifted = {
            let mut pending = self.term.ends_pending.lock().expect("ends lock");
            let lifted = pending.get_mut(lock).is_some_and(|uids| uids.remove(uid));
            if pending.get(lock).is_some_and(HashSet::is_empty) {
                pending.remove(lock);
            }
            lifted
        };
        if !lifted {
            return;
        }
        let namespace = lock.namespace.as_deref().unwrap_or_default();
        for claim in self.caches.index.of_lock(namespace, &lock.name) {
            let Some(cached) = self.caches.claims.get(&claim) else {
                continue;
            };
            let uid = cached.uid().unwrap_or_default();
            if matches!(
                self.term.contenders.queue_state(&uid),
                claim_lifecycle::QueueState::Granted { .. }
            ) {
                self.term.fast_lane.reconcile(claim);
            }
        }
    }

    /// Fences `lock` until `held_back.until` (a grant of it ended abnormally).
    pub fn fence(&self, lock: ObjectRef<DistributedLock>, held_back: HeldBack) {
        let mut fences = self.term.fences.lock().expect("fences lock");
        add_fence(&mut fences, lock, held_back);
    }

    /// Queues a claim's contender (or finds it queued) and tracks it.
    pub async fn queue_claim(&self, lock: &LockSpec, claim: &LockClaim) -> Result<(), EngineError> {
        self.queue_claims_in_order(lock, std::slice::from_ref(claim))
            .await
            .pop()
            .expect("one answer per claim")
    }

    /// Queues the contenders of several claims of one lock in the given order (one burst
    /// for the lock's task) and tracks each; answers in the same order.
    pub async fn queue_claims_in_order<C: Borrow<LockClaim>>(
        &self,
        lock: &LockSpec,
        claims: &[C],
    ) -> Vec<Result<(), EngineError>> {
        let requests: Vec<_> = claims
            .iter()
            .map(|claim| contender_request(claim.borrow()))
            .collect();
        let valid = requests.iter().filter_map(|request| request.as_ref().ok());
        let mut queued = self
            .process
            .engine
            .enqueue_in_order(lock, valid.cloned())
            .await
            .into_iter();
        claims
            .iter()
            .zip(requests)
            .map(|(claim, request)| {
                request?;
                let contender = queued.next().expect("one answer per request")?;
                self.track(lock, claim.borrow(), &contender);
                Ok(())
            })
            .collect()
    }

    fn track(&self, lock: &LockSpec, claim: &LockClaim, contender: &Contender) {
        let node = Node {
            sequence: ContenderNode::parse(&contender.node)
                .map(|node| node.sequence)
                .unwrap_or_default(),
            path: format!("{}/{}", lock.dir(), contender.node),
        };
        self.term.contenders.track(
            claim.uid().unwrap_or_default(),
            Tracked {
                lock: lock.clone(),
                node,
                state: contender.watch_state(),
                claim: ObjectRef::from_obj(claim),
                lock_ref: claim.lock_ref(),
            },
        );
    }
}

/// A claim's contender: its id (the claim's UID), mode, and the node's data (other clients
/// of the path can read whose node it is).
fn contender_request(claim: &LockClaim) -> Result<(ContenderId, Mode, Vec<u8>), EngineError> {
    let id = ContenderId::new(claim.uid().unwrap_or_default())?;
    let mode = Mode::from(claim.spec.mode);
    let data = serde_json::json!({
        "namespace": claim.namespace(), "claim": claim.name_any(),
        "holder": {"kind": claim.spec.holder.kind, "name": claim.spec.holder.name},
    });
    Ok((id, mode, data.to_string().into_bytes()))
}
