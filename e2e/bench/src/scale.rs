//! Scale and recovery: `locks` Mutex locks, each held by a client outside Kubernetes (the raw
//! engine, as a Curator or kazoo service would hold it), with `per_lock` claims waiting on
//! each.
//!
//! 1. Queue: every claim made (a pod and a claim each); timed until every claim reads
//!    `Waiting` at its right place (positions 1..=per_lock in sequence order), the
//!    controller's memory sampled as the claims grow.
//! 2. Watches: from ZooKeeper's `wchc`, every waiter's predecessor node is watched by the
//!    controller's session, and nothing else in the queues is (no herd effect).
//! 3. Recovery: the outside holders leave, the first claim of every lock is granted; the
//!    controller is restarted (SIGTERM, as a rolling upgrade does) while some holders end;
//!    timed from the new process's start to its first grant and to the grants due.
//! 4. Drain: every holder pod ends as soon as its claim is granted, until all are released.
//!
//! Throughout, every grant is checked against the previous holder of its lock (it must have
//! ended first), and at the end the `Granted` events show each claim granted exactly once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use lockkeeper::resources::{ClaimPhase, LockClaim};
use lockkeeper::zookeeper::{LockEngine, LockSpec};
use lockkeeper_testkit::ZooKeeperServer;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::operator::{CONCURRENCY, Memory, Operator, lock_specs};
use crate::outside::OutsideHolders;

const NAMESPACE: &str = "scale";
use crate::ROOT;
/// Longest wait for the next claim change before the run is declared stuck.
const PATIENCE: Duration = Duration::from_secs(120);
/// Holders that end while the controller is down, in the recovery step.
const ENDED_DURING_RESTART: usize = 100;

#[derive(Debug, Serialize)]
pub struct ScaleResults {
    pub locks: usize,
    pub claims: usize,
    /// From the first create to every claim `Waiting` at its right place.
    pub all_waiting_s: f64,
    /// From the first create to the last holder pod and claim made (the bench's own writes,
    /// which the controller's share the API server with).
    pub creates_s: f64,
    pub memory_all_waiting: Memory,
    /// Memory of the controller, kube-apiserver and etcd as the claims are made.
    pub memory_by_claims: Vec<MemorySample>,
    /// The cost to the cluster: before the first claim, and with every claim waiting.
    pub cluster_before: ClusterCost,
    pub cluster_all_waiting: ClusterCost,
    /// One waiting claim as the API server returns it (JSON, managed fields included).
    pub claim_object_bytes: usize,
    pub watches: Watches,
    pub recovery: Recovery,
    /// From the first release to the last claim released.
    pub drain_s: f64,
    pub drain_grants_per_s: f64,
    pub memory_end: Memory,
    /// Grants seen while the previous holder of the lock had not been ended (must be 0).
    pub grants_before_previous_holder_ended: usize,
    /// Claims whose `Granted` events count more than one grant (must be 0).
    pub claims_granted_more_than_once: usize,
    pub claims_granted_once: usize,
}

/// Resident memory in MiB, when `claims` claims had been made.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct MemorySample {
    pub claims: usize,
    pub controller_mib: f64,
    pub apiserver_mib: f64,
    pub etcd_mib: f64,
}

/// What the control plane holds for lockkeeper's objects.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ClusterCost {
    pub apiserver_rss_mib: f64,
    pub etcd_rss_mib: f64,
    /// etcd's database file (`dbSize`).
    pub etcd_db_bytes: u64,
}

fn cluster_cost(op: &Operator) -> Result<ClusterCost> {
    Ok(ClusterCost {
        apiserver_rss_mib: op.control_plane_memory("kube-apiserver")?.rss_mib,
        etcd_rss_mib: op.control_plane_memory("etcd")?.rss_mib,
        etcd_db_bytes: op.plane.etcd_db_size()?,
    })
}

fn memory_sample(op: &Operator, claims: usize) -> Result<MemorySample> {
    Ok(MemorySample {
        claims,
        controller_mib: op.controller_memory()?.rss_mib,
        apiserver_mib: op.control_plane_memory("kube-apiserver")?.rss_mib,
        etcd_mib: op.control_plane_memory("etcd")?.rss_mib,
    })
}

#[derive(Debug, Serialize)]
pub struct Watches {
    /// `wchs`: every watch on the server.
    pub server_total: u64,
    pub waiters: usize,
    /// Watches of the controller's session on nodes and directories of the queues.
    pub controller_on_queues: usize,
    /// Waiters whose predecessor node the controller watches.
    pub waiters_watching_predecessor: usize,
    /// Queue directories watched for children (a herd-prone pattern; 0 expected).
    pub directory_watches: usize,
}

#[derive(Debug, Serialize)]
pub struct Recovery {
    /// Claims present when the controller restarted.
    pub claims: usize,
    pub granted_before: usize,
    /// Holders ended while the controller was down: their next claims are due.
    pub due: usize,
    pub first_grant_s: f64,
    pub all_due_granted_s: f64,
    /// Claims granted before the restart whose holders still run and kept the grant.
    pub holders_kept: usize,
    /// Locks with more than one claim `Granted` after the restart (must be 0).
    pub locks_with_two_holders: usize,
}

/// What the bench knows of each claim, from its watch.
#[derive(Default)]
struct Seen {
    claims: HashMap<String, LockClaim>,
    /// Claims by phase, kept as changes come (checking every claim per change would cost
    /// the bench more than the system it measures).
    phases: HashMap<ClaimPhase, usize>,
    /// The claim each lock was last seen granted to.
    holder_of: HashMap<String, String>,
    /// Holders whose pods the bench ended (Succeeded patch sent).
    ended: HashSet<String>,
    granted: HashSet<String>,
    early_grants: usize,
}

fn phase_of(claim: &LockClaim) -> ClaimPhase {
    claim.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

impl Seen {
    /// Takes in one claim change; returns the claim's name if it is a new grant.
    fn observe(&mut self, claim: LockClaim) -> Option<String> {
        let name = claim.name_any();
        let lock = claim.spec.lock.clone();
        let phase = phase_of(&claim);
        if let Some(before) = self.claims.insert(name.clone(), claim)
            && let Some(count) = self.phases.get_mut(&phase_of(&before))
        {
            *count -= 1;
        }
        *self.phases.entry(phase).or_default() += 1;
        if phase != ClaimPhase::Granted || !self.granted.insert(name.clone()) {
            return None;
        }
        if let Some(previous) = self.holder_of.insert(lock, name.clone())
            && !self.ended.contains(&previous)
        {
            self.early_grants += 1;
        }
        Some(name)
    }

    fn count(&self, phase: ClaimPhase) -> usize {
        self.phases.get(&phase).copied().unwrap_or_default()
    }

    fn in_phase(&self, phase: ClaimPhase) -> Vec<&LockClaim> {
        self.claims
            .values()
            .filter(|c| phase_of(c) == phase)
            .collect()
    }

    /// Every claim waiting at its place: per lock, sorted by sequence, positions 1, 2, ….
    fn all_waiting_in_place(&self, total: usize) -> bool {
        if self.count(ClaimPhase::Waiting) < total {
            return false;
        }
        let mut by_lock: HashMap<&str, Vec<(i64, u32)>> = HashMap::new();
        for claim in self.claims.values() {
            let status = claim.status.as_ref().expect("waiting claims have a status");
            by_lock.entry(claim.spec.lock.as_str()).or_default().push((
                status.sequence.unwrap_or_default(),
                status.position.unwrap_or_default(),
            ));
        }
        by_lock.values_mut().all(|queue| {
            queue.sort();
            queue
                .iter()
                .enumerate()
                .all(|(i, (_, position))| *position as usize == i + 1)
        })
    }
}

async fn next_change(
    claims: &mut mpsc::UnboundedReceiver<(Instant, LockClaim)>,
    what: &str,
) -> Result<(Instant, LockClaim)> {
    tokio::time::timeout(PATIENCE, claims.recv())
        .await
        .with_context(|| format!("no claim change for {PATIENCE:?} while {what}"))?
        .context("the claim watch ended")
}

pub async fn run(
    op: &mut Operator,
    zk: &ZooKeeperServer,
    locks: usize,
    per_lock: usize,
) -> Result<ScaleResults> {
    let total = locks * per_lock;
    op.namespace(NAMESPACE).await?;
    op.start_controller(NAMESPACE, ROOT)?;
    let specs = lock_specs(ROOT, NAMESPACE, locks)?;
    // Outside holders: one session holds every lock.
    let outside = OutsideHolders::hold(zk, &specs).await?;
    op.mutexes(NAMESPACE, locks).await?;

    // 1. Queue every claim.
    let mut claims = op.watch_claims(NAMESPACE);
    let mut seen = Seen::default();
    let cluster_before = cluster_cost(op)?;
    let start = Instant::now();
    let mut memory_by_claims = vec![memory_sample(op, 0)?];
    let step = (total / 20).max(1);
    for first in (0..total).step_by(step) {
        op.pods_with_claims(NAMESPACE, first..(first + step).min(total), locks)
            .await?;
        while let Ok(change) = claims.try_recv() {
            seen.observe(change.1);
        }
        memory_by_claims.push(memory_sample(op, (first + step).min(total))?);
    }
    let creates_s = start.elapsed().as_secs_f64();
    let mut last = start;
    while !seen.all_waiting_in_place(total) {
        let (at, claim) = next_change(&mut claims, "waiting for every claim to queue").await?;
        last = at;
        seen.observe(claim);
    }
    let all_waiting_s = (last - start).as_secs_f64();
    let memory_all_waiting = op.controller_memory()?;
    memory_by_claims.push(memory_sample(op, total)?);
    let cluster_all_waiting = cluster_cost(op)?;
    let claim_object_bytes = claim_object_bytes(op, &seen).await?;

    // 2. Watches.
    let watches = count_watches(zk, &outside.engine, &specs, outside.session_id).await?;

    // 3. Recovery. The outside holders leave; the first claim of each lock is granted.
    outside.release().await;
    while seen.count(ClaimPhase::Granted) < locks {
        let (_, claim) =
            next_change(&mut claims, "granting after the outside holders left").await?;
        seen.observe(claim);
    }
    op.stop_controller()?;
    let holders: Vec<(String, String)> = seen
        .in_phase(ClaimPhase::Granted)
        .into_iter()
        .map(|c| (c.spec.lock.clone(), c.name_any()))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect();
    let ending: Vec<String> = holders
        .iter()
        .take(ENDED_DURING_RESTART)
        .map(|(_, claim)| claim.clone())
        .collect();
    for claim in &ending {
        seen.ended.insert(claim.clone());
        op.pod_succeeded(NAMESPACE, claim).await?;
    }
    let restarted = Instant::now();
    op.start_controller(NAMESPACE, ROOT)?;
    let mut first_grant = None;
    let mut due_granted = 0;
    while due_granted < ending.len() {
        let (at, claim) = next_change(&mut claims, "granting after the restart").await?;
        if seen.observe(claim).is_some() {
            first_grant.get_or_insert(at);
            due_granted += 1;
        }
    }
    let all_due_granted_s = restarted.elapsed().as_secs_f64();
    let first_grant_s = (first_grant.expect("grants were seen") - restarted).as_secs_f64();
    let (holders_kept, locks_with_two_holders) = after_restart(op, &holders, &seen.ended).await?;
    let recovery = Recovery {
        claims: total,
        granted_before: holders.len(),
        due: ending.len(),
        first_grant_s,
        all_due_granted_s,
        holders_kept,
        locks_with_two_holders,
    };

    // 4. Drain: every holder ends as soon as it is granted.
    let drain_start = Instant::now();
    let shared = &*op;
    // As many pod updates in flight as the rest of the workload makes (each is a connection).
    let in_flight = tokio::sync::Semaphore::new(CONCURRENCY);
    let in_flight = &in_flight;
    let end = |name: String| async move {
        let _permit = in_flight.acquire().await?;
        shared.pod_succeeded(NAMESPACE, &name).await
    };
    let mut releasing = futures::stream::FuturesUnordered::new();
    let current: Vec<String> = seen
        .in_phase(ClaimPhase::Granted)
        .into_iter()
        .map(|c| c.name_any())
        .filter(|name| !seen.ended.contains(name))
        .collect();
    for name in current {
        seen.ended.insert(name.clone());
        releasing.push(end(name));
    }
    let mut last_release = drain_start;
    let mut drain_grants = 0;
    while seen.count(ClaimPhase::Released) < total {
        tokio::select! {
            Some(result) = releasing.next(), if !releasing.is_empty() => result?,
            change = next_change(&mut claims, "draining") => {
                let (at, claim) = change?;
                if claim.status.as_ref().map(|s| s.phase) == Some(ClaimPhase::Released) {
                    last_release = at;
                }
                if let Some(name) = seen.observe(claim) {
                    drain_grants += 1;
                    seen.ended.insert(name.clone());
                    releasing.push(end(name));
                }
            }
        }
    }
    drop(releasing);
    let drain_s = (last_release - drain_start).as_secs_f64();
    let memory_end = op.controller_memory()?;
    op.stop_controller()?;

    let grants = grants_per_claim(op).await?;
    Ok(ScaleResults {
        locks,
        claims: total,
        all_waiting_s,
        creates_s,
        memory_all_waiting,
        memory_by_claims,
        cluster_before,
        cluster_all_waiting,
        claim_object_bytes,
        watches,
        recovery,
        drain_s,
        drain_grants_per_s: drain_grants as f64 / drain_s,
        memory_end,
        grants_before_previous_holder_ended: seen.early_grants,
        claims_granted_more_than_once: grants.values().filter(|n| **n > 1).count(),
        claims_granted_once: grants.values().filter(|n| **n == 1).count(),
    })
}

/// The size of one waiting claim as a GET returns it in JSON (what a client reads; etcd keeps
/// custom resources as JSON too).
async fn claim_object_bytes(op: &Operator, seen: &Seen) -> Result<usize> {
    let name = seen
        .in_phase(ClaimPhase::Waiting)
        .first()
        .map(|claim| claim.name_any())
        .context("a waiting claim")?;
    let api: Api<LockClaim> = Api::namespaced(op.client.clone(), NAMESPACE);
    Ok(serde_json::to_vec(&api.get(&name).await?)?.len())
}

/// Compares what `wchc` lists for the controller's session with the queues.
async fn count_watches(
    zk: &ZooKeeperServer,
    outside: &LockEngine,
    specs: &[LockSpec],
    outside_session: i64,
) -> Result<Watches> {
    let wchs = zk.four_letter("wchs")?;
    let server_total = wchs
        .lines()
        .find_map(|line| line.strip_prefix("Total watches:"))
        .context("wchs shows the total")?
        .trim()
        .parse()?;
    let outside_hex = format!("0x{outside_session:x}");
    let mut controller_paths = HashSet::new();
    let mut session = String::new();
    for line in zk.four_letter("wchc")?.lines() {
        if let Some(path) = line.strip_prefix('\t') {
            if session != outside_hex && path.starts_with(&format!("{ROOT}/{NAMESPACE}/")) {
                controller_paths.insert(path.to_string());
            }
        } else if !line.trim().is_empty() {
            session = line.trim().to_string();
        }
    }
    let mut waiters = 0;
    let mut waiters_watching_predecessor = 0;
    let mut directory_watches = 0;
    for spec in specs {
        let queue = outside.queue(spec).await?;
        let nodes: Vec<String> = queue
            .entries
            .iter()
            .map(|entry| format!("{}/{}", spec.dir(), entry.node))
            .collect();
        waiters += nodes.len().saturating_sub(1);
        waiters_watching_predecessor += nodes
            .windows(2)
            .filter(|pair| controller_paths.contains(&pair[0]))
            .count();
        directory_watches += usize::from(controller_paths.contains(&spec.dir()));
    }
    ensure!(waiters > 0, "no waiters found in the queues");
    Ok(Watches {
        server_total,
        waiters,
        controller_on_queues: controller_paths.len(),
        waiters_watching_predecessor,
        directory_watches,
    })
}

/// After the restart: the holders that still run kept their grants, and no lock has two.
async fn after_restart(
    op: &Operator,
    holders: &[(String, String)],
    ended: &HashSet<String>,
) -> Result<(usize, usize)> {
    let api: Api<LockClaim> = Api::namespaced(op.client.clone(), NAMESPACE);
    let claims = api.list(&ListParams::default()).await?;
    let mut granted_per_lock: HashMap<String, usize> = HashMap::new();
    let mut granted = HashSet::new();
    for claim in &claims.items {
        if claim.status.as_ref().map(|s| s.phase) == Some(ClaimPhase::Granted) {
            *granted_per_lock.entry(claim.spec.lock.clone()).or_default() += 1;
            granted.insert(claim.name_any());
        }
    }
    let kept = holders
        .iter()
        .filter(|(_, claim)| !ended.contains(claim) && granted.contains(claim))
        .count();
    let doubled = granted_per_lock.values().filter(|n| **n > 1).count();
    Ok((kept, doubled))
}

/// Grants per claim, from the controller's `Granted` events (a repeated event counts each time).
async fn grants_per_claim(op: &Operator) -> Result<HashMap<String, u32>> {
    let api: Api<Event> = Api::namespaced(op.client.clone(), NAMESPACE);
    let mut grants = HashMap::new();
    for event in api.list(&ListParams::default()).await?.items {
        if event.reason.as_deref() != Some("Granted") {
            continue;
        }
        let Some(claim) = event.regarding.as_ref().and_then(|r| r.name.clone()) else {
            continue;
        };
        let times = event
            .series
            .as_ref()
            .map(|series| series.count as u32)
            .unwrap_or(1);
        *grants.entry(claim).or_default() += times;
    }
    Ok(grants)
}
