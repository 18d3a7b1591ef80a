//! Deadlock detection (pure): the wait-for graph of the Kubernetes holders the controller
//! knows, searched from one lock's waiting claims.
//!
//! A node is a process: a claim's holder, or the pod a `lockkeeper run` runs in (its claims
//! carry [`RUNS_IN_POD_ANNOTATION`]), so that a pod gated on one lock whose container runs
//! `lockkeeper run` on another is one node. An edge goes from a process with a claim waiting
//! for a lock to each other process holding that lock. A process waiting with several claims
//! goes on only once all are granted (a gate, a run or a Job starts with all its locks). What
//! one waiting claim needs depends on its lock:
//!
//! - Mutex, and ReadWrite in either mode: every holder to leave (an AND-wait). A Shared waiter
//!   waits while an Exclusive claim holds, or while one is queued ahead of it (no writer
//!   starvation), and that one needs every Shared holder gone: either way, all of them.
//! - Semaphore: any one holder to leave (an OR-wait), and only while its claims hold every
//!   permit (a permit free, held back by a lock-delay, or held by a client outside
//!   Kubernetes is no deadlock).
//!
//! A cycle alone is not a deadlock: a Semaphore waiter on a cycle through one holder goes on
//! when another holder, off the cycle, leaves. A deadlock is a set of processes none of which
//! anyone outside it can let go on (a knot of the AND-OR model): each waits with a claim
//! whose lock, if an AND-wait, a process of the set holds, and if an OR-wait, only processes
//! of the set hold. The search finds it by reduction: a process that waits for nothing runs
//! and lets go in time, which releases the AND-waits whose last holder it was and the OR-waits
//! it holds; a process whose waits are all released goes on too; those that never do are
//! deadlocked. Only a lock's current holders are counted, not claims queued ahead (a
//! Semaphore waiter behind another needs two to leave): a wait that becomes a deadlock once
//! one ahead of it is granted is found when that grant is made.
//!
//! A deadlock is reported as a cycle of it through the searched claim. Only those are looked
//! for: a new deadlock closes with a new edge, which starts at a claim that just began to wait
//! on a lock or ends at a grant just made of one, and both make that lock's waiters searched
//! again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kube::ResourceExt;

use crate::lock_rules::LockKind;
use crate::resources::{ClaimMode, ClaimPhase, HolderKind, LockClaim};

/// The annotation `lockkeeper run` puts on its claims when it runs in a pod (`POD_NAMESPACE`
/// and `POD_NAME` set, as the downward API sets them): `NAMESPACE/NAME`.
pub const RUNS_IN_POD_ANNOTATION: &str = "lockkeeper.dev/runs-in-pod";

/// Who waits and holds: a holder, or the pod a run runs in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Process {
    pub kind: HolderKind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// The process a claim belongs to.
pub fn process_of(claim: &LockClaim) -> Process {
    let runs_in = claim
        .annotations()
        .get(RUNS_IN_POD_ANNOTATION)
        .and_then(|at| at.split_once('/'))
        .filter(|(namespace, name)| !namespace.is_empty() && !name.is_empty());
    match runs_in {
        Some((namespace, name)) => Process {
            kind: HolderKind::Pod,
            namespace: namespace.to_string(),
            name: name.to_string(),
        },
        None => Process {
            kind: claim.spec.holder.kind,
            namespace: claim.namespace().unwrap_or_default(),
            name: claim.spec.holder.name.clone(),
        },
    }
}

/// Where the search finds claims: by the process they belong to, and by their lock; and the
/// locks' kinds.
pub trait Claims {
    fn of_process(&self, process: &Process) -> Vec<Arc<LockClaim>>;
    fn of_lock(&self, namespace: &str, lock: &str) -> Vec<Arc<LockClaim>>;
    /// The lock's kind (a Semaphore with its permits), if the lock is known.
    fn lock_kind(&self, namespace: &str, lock: &str) -> Option<LockKind>;
}

/// One step of a cycle: `waiter` (a claim of `from`) waits for `lock`, which `held_by` (a
/// claim of `to`) holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    pub from: Process,
    pub waiter: ClaimId,
    pub lock: String,
    pub held_by: ClaimId,
    pub to: Process,
    /// A Semaphore's waiter (any holder leaving lets it in): the lock's other holding claims
    /// of other processes, all in the deadlock too. Empty for a Mutex or ReadWrite.
    pub also_held_by: Vec<ClaimId>,
}

/// A claim, as the cycle names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClaimId {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Its creation time (RFC 3339), for choosing the youngest.
    pub created: String,
}

impl ClaimId {
    fn of(claim: &LockClaim) -> Self {
        ClaimId {
            namespace: claim.namespace().unwrap_or_default(),
            name: claim.name_any(),
            uid: claim.uid().unwrap_or_default(),
            created: claim
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
        }
    }
}

/// A deadlock, as a cycle of it: processes each waiting for a lock the next one holds, back to
/// the first, where no one outside can let any of them go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cycle {
    pub edges: Vec<Edge>,
}

impl Cycle {
    /// The cycle in words, from its first process around to it again.
    pub fn describe(&self) -> String {
        let steps: Vec<String> = self
            .edges
            .iter()
            .map(|e| {
                let others = match e.also_held_by.as_slice() {
                    [] => String::new(),
                    others => {
                        let names: Vec<&str> = others.iter().map(|c| c.name.as_str()).collect();
                        format!(" and by claims of the deadlock only ({})", names.join(", "))
                    }
                };
                format!(
                    "{} waits (claim {}) for lock {} held by {} (claim {}){others}",
                    e.from, e.waiter.name, e.lock, e.to, e.held_by.name
                )
            })
            .collect();
        format!("deadlock: {}", steps.join("; "))
    }

    /// Every claim of the cycle: those that wait, those that hold, and a Semaphore's other
    /// holders.
    pub fn claims(&self) -> Vec<ClaimId> {
        let mut claims: Vec<ClaimId> = self
            .edges
            .iter()
            .flat_map(|e| [e.waiter.clone(), e.held_by.clone()])
            .chain(self.edges.iter().flat_map(|e| e.also_held_by.clone()))
            .collect();
        claims.sort();
        claims.dedup();
        claims
    }

    /// The waiting claim made last: the one to expire to break the cycle, as databases pick
    /// the youngest transaction.
    pub fn youngest_waiter(&self) -> &ClaimId {
        self.edges
            .iter()
            .map(|e| &e.waiter)
            .max_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)))
            .expect("a cycle has edges")
    }

    /// The same cycle, however it was entered: edges rotated to start at the smallest waiter.
    pub fn canonical(mut self) -> Self {
        if let Some(first) = (0..self.edges.len()).min_by_key(|i| self.edges[*i].waiter.clone()) {
            self.edges.rotate_left(first);
        }
        self
    }
}

/// Whether a claim waits in a queue (and so for the lock's holders).
fn waits(claim: &LockClaim) -> bool {
    let phase = claim.status.as_ref().map(|s| s.phase).unwrap_or_default();
    matches!(phase, ClaimPhase::Waiting | ClaimPhase::Lost)
}

fn holds(claim: &LockClaim) -> bool {
    claim.status.as_ref().map(|s| s.phase) == Some(ClaimPhase::Granted)
}

/// How deep the search goes: processes further than this from where it starts are not looked
/// into (they count as going on), and cycles longer than this are not looked for.
const MAX_DEPTH: usize = 32;

/// The deadlocks through the waiting claims of one lock (`waiters`), each found once as a
/// cycle. Cheap when there are none: one walk of the graph from the lock's holders, whatever
/// the length of its queue, and one reduction of what it reached; only a waiter whose process
/// is left deadlocked is searched for a cycle.
pub fn cycles_through(waiters: &[Arc<LockClaim>], claims: &impl Claims) -> Vec<Cycle> {
    let Some(first) = waiters.first() else {
        return Vec::new();
    };
    let namespace = first.namespace().unwrap_or_default();
    let holders: Vec<Process> = claims
        .of_lock(&namespace, &first.spec.lock)
        .iter()
        .filter(|c| holds(c))
        .map(|c| process_of(c))
        .collect();
    let graph = Graph::walk(holders, claims);
    let deadlocked = graph.deadlocked();
    let mut cycles: Vec<Cycle> = Vec::new();
    if deadlocked.is_empty() {
        return cycles;
    }
    for waiter in waiters.iter().filter(|w| waits(w)) {
        if let Some(cycle) = graph.cycle_through(&process_of(waiter), waiter, &deadlocked)
            && !cycles.contains(&cycle)
        {
            cycles.push(cycle);
        }
    }
    cycles
}

/// A deadlock through `start` (a waiting claim), as a cycle, if there is one.
pub fn find_cycle(start: &LockClaim, claims: &impl Claims) -> Option<Cycle> {
    if !waits(start) {
        return None;
    }
    let origin = process_of(start);
    let graph = Graph::walk(vec![origin.clone()], claims);
    let deadlocked = graph.deadlocked();
    graph.cycle_through(&origin, start, &deadlocked)
}

/// Whether a cycle found before is a deadlock still: each of its claims waits or holds as
/// then, for the same holders, and none of its processes can go on.
pub fn still_holds(cycle: &Cycle, claims: &impl Claims) -> bool {
    let processes: Vec<Process> = cycle.edges.iter().map(|e| e.from.clone()).collect();
    let graph = Graph::walk(processes, claims);
    let deadlocked = graph.deadlocked();
    !cycle.edges.is_empty()
        && cycle.edges.iter().all(|edge| {
            graph
                .waits
                .get(&edge.from)
                .into_iter()
                .flatten()
                .filter(|w| w.claim.uid == edge.waiter.uid && w.stuck(&deadlocked))
                .any(|w| w.edges(&edge.from, &deadlocked).contains(edge))
        })
}

/// A waiting claim, and the claims of other processes that hold its lock.
struct Wait {
    claim: ClaimId,
    /// `NAMESPACE/NAME`.
    lock: String,
    /// An OR-wait (a Semaphore): any one holder leaving lets it in.
    any: bool,
    /// Whether it waits for `holders` at all: not when none of them is there, nor when a
    /// Semaphore has a permit its claims do not hold.
    blocked: bool,
    holders: Vec<(ClaimId, Process)>,
}

impl Wait {
    fn of(waiter: &LockClaim, from: &Process, claims: &impl Claims) -> Self {
        let namespace = waiter.namespace().unwrap_or_default();
        let held: Vec<Arc<LockClaim>> = claims
            .of_lock(&namespace, &waiter.spec.lock)
            .into_iter()
            .filter(|c| holds(c))
            .collect();
        let kind = claims
            .lock_kind(&namespace, &waiter.spec.lock)
            .unwrap_or_else(|| kind_of_holders(&held));
        let (any, full) = match kind {
            LockKind::Semaphore { permits } => (true, held.len() >= permits.get() as usize),
            LockKind::Mutex | LockKind::ReadWrite => (false, true),
        };
        let holders: Vec<(ClaimId, Process)> = held
            .iter()
            .map(|h| (ClaimId::of(h), process_of(h)))
            .filter(|(_, to)| to != from)
            .collect();
        Wait {
            claim: ClaimId::of(waiter),
            lock: format!("{namespace}/{}", waiter.spec.lock),
            any,
            blocked: full && !holders.is_empty(),
            holders,
        }
    }

    /// Whether it waits for good, `deadlocked` never letting go: an AND-wait for one of them,
    /// an OR-wait for them only.
    fn stuck(&self, deadlocked: &HashSet<Process>) -> bool {
        let mut holders = self.holders.iter().map(|(_, to)| deadlocked.contains(to));
        self.blocked
            && match self.any {
                true => holders.all(|dead| dead),
                false => holders.any(|dead| dead),
            }
    }

    /// The edges to the holders among `deadlocked`.
    fn edges(&self, from: &Process, deadlocked: &HashSet<Process>) -> Vec<Edge> {
        self.holders
            .iter()
            .filter(|(_, to)| deadlocked.contains(to))
            .map(|(held_by, to)| {
                let mut also_held_by: Vec<ClaimId> = match self.any {
                    true => self
                        .holders
                        .iter()
                        .map(|(other, _)| other)
                        .filter(|other| *other != held_by)
                        .cloned()
                        .collect(),
                    false => Vec::new(),
                };
                also_held_by.sort();
                Edge {
                    from: from.clone(),
                    waiter: self.claim.clone(),
                    lock: self.lock.clone(),
                    held_by: held_by.clone(),
                    to: to.clone(),
                    also_held_by,
                }
            })
            .collect()
    }
}

/// A lock's kind as its holders show it, when the lock is not known: only a Semaphore has
/// several Exclusive holders (counted as all its permits); else a wait for all holders.
fn kind_of_holders(held: &[Arc<LockClaim>]) -> LockKind {
    let exclusive = held.iter().all(|h| h.spec.mode == ClaimMode::Exclusive);
    match held.len() {
        n if n > 1 && exclusive => LockKind::semaphore(n as u32).unwrap_or(LockKind::Mutex),
        _ => LockKind::Mutex,
    }
}

/// The part of the wait-for graph a search reached: each process looked into, with its waits.
struct Graph {
    waits: HashMap<Process, Vec<Wait>>,
}

impl Graph {
    /// The processes within [`MAX_DEPTH`] steps of `roots` along the waits that may block.
    fn walk(roots: Vec<Process>, claims: &impl Claims) -> Self {
        let mut graph: HashMap<Process, Vec<Wait>> = HashMap::new();
        let mut level = roots;
        for _ in 0..MAX_DEPTH {
            let mut next: Vec<Process> = Vec::new();
            for process in level {
                if graph.contains_key(&process) {
                    continue;
                }
                let of: Vec<Wait> = claims
                    .of_process(&process)
                    .iter()
                    .filter(|c| waits(c))
                    .map(|c| Wait::of(c, &process, claims))
                    .collect();
                next.extend(
                    of.iter()
                        .filter(|w| w.blocked)
                        .flat_map(|w| w.holders.iter().map(|(_, to)| to.clone())),
                );
                graph.insert(process, of);
            }
            if next.is_empty() {
                break;
            }
            level = next;
        }
        Graph { waits: graph }
    }

    /// The processes looked into that never go on. Reduction: a process goes on once each of
    /// its waits is released (one waiting for nothing runs, and lets go in time; one not looked
    /// into counts as such); an AND-wait is released once every holder has gone on, an OR-wait
    /// once one has. Each wait and each holder is counted once.
    fn deadlocked(&self) -> HashSet<Process> {
        // Per process, its waits not released yet; per wait, the holders it still needs gone.
        let mut unreleased: HashMap<&Process, usize> = HashMap::new();
        let mut needs: HashMap<(&Process, usize), usize> = HashMap::new();
        let mut waited_on: HashMap<&Process, Vec<(&Process, usize)>> = HashMap::new();
        let mut going_on: Vec<&Process> = Vec::new();
        for (process, waits) in &self.waits {
            let mut blocked = 0;
            for (i, wait) in waits.iter().enumerate().filter(|(_, w)| w.blocked) {
                let holders: HashSet<&Process> = wait.holders.iter().map(|(_, to)| to).collect();
                needs.insert((process, i), if wait.any { 1 } else { holders.len() });
                for holder in holders {
                    waited_on.entry(holder).or_default().push((process, i));
                    if !self.waits.contains_key(holder) {
                        going_on.push(holder);
                    }
                }
                blocked += 1;
            }
            if blocked == 0 {
                going_on.push(process);
            }
            unreleased.insert(process, blocked);
        }
        let mut gone_on: HashSet<&Process> = HashSet::new();
        while let Some(process) = going_on.pop() {
            if !gone_on.insert(process) {
                continue;
            }
            for wait in waited_on.get(process).into_iter().flatten() {
                let Some(needed) = needs.get_mut(wait).filter(|n| **n > 0) else {
                    continue;
                };
                *needed -= 1;
                if *needed == 0
                    && let Some(left) = unreleased.get_mut(wait.0)
                {
                    *left -= 1;
                    if *left == 0 {
                        going_on.push(wait.0);
                    }
                }
            }
        }
        self.waits
            .keys()
            .filter(|p| !gone_on.contains(p))
            .cloned()
            .collect()
    }

    /// A cycle through `start` (a waiting claim of `origin`) along waits stuck for good.
    fn cycle_through(
        &self,
        origin: &Process,
        start: &LockClaim,
        deadlocked: &HashSet<Process>,
    ) -> Option<Cycle> {
        if !deadlocked.contains(origin) {
            return None;
        }
        let uid = start.uid().unwrap_or_default();
        let wait = self
            .waits
            .get(origin)?
            .iter()
            .find(|w| w.claim.uid == uid && w.stuck(deadlocked))?;
        let mut visited: HashSet<Process> = HashSet::from([origin.clone()]);
        let mut path: Vec<Edge> = Vec::new();
        let first = wait.edges(origin, deadlocked);
        self.search(origin, first, deadlocked, &mut visited, &mut path)
            .map(|edges| Cycle { edges }.canonical())
    }

    fn search(
        &self,
        origin: &Process,
        edges: Vec<Edge>,
        deadlocked: &HashSet<Process>,
        visited: &mut HashSet<Process>,
        path: &mut Vec<Edge>,
    ) -> Option<Vec<Edge>> {
        for edge in edges {
            if edge.to == *origin {
                let mut cycle = path.clone();
                cycle.push(edge);
                return Some(cycle);
            }
            if path.len() + 1 >= MAX_DEPTH || !visited.insert(edge.to.clone()) {
                continue;
            }
            let next = self.stuck_edges(&edge.to, deadlocked);
            path.push(edge);
            if let Some(cycle) = self.search(origin, next, deadlocked, visited, path) {
                return Some(cycle);
            }
            path.pop();
        }
        None
    }

    /// The edges out of `process` along its waits stuck for good, to the deadlocked holders.
    fn stuck_edges(&self, process: &Process, deadlocked: &HashSet<Process>) -> Vec<Edge> {
        self.waits
            .get(process)
            .into_iter()
            .flatten()
            .filter(|w| w.stuck(deadlocked))
            .flat_map(|w| w.edges(process, deadlocked))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(
        name: &str,
        lock: &str,
        holder: (&str, &str),
        phase: &str,
        runs_in: Option<&str>,
    ) -> LockClaim {
        let mut annotations = serde_json::Map::new();
        if let Some(pod) = runs_in {
            annotations.insert(RUNS_IN_POD_ANNOTATION.into(), json!(pod));
        }
        serde_json::from_value(json!({
            "apiVersion": "lockkeeper.dev/v1alpha1", "kind": "LockClaim",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                "annotations": annotations,
                "creationTimestamp": format!("2026-01-01T00:00:{:02}Z", name.len())},
            "spec": {"lock": lock, "holder": {"kind": holder.0, "name": holder.1}},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    fn shared(mut claim: LockClaim) -> LockClaim {
        claim.spec.mode = ClaimMode::Shared;
        claim
    }

    /// The claims, and the kinds of the locks known (others unknown: told by their holders).
    struct All(Vec<Arc<LockClaim>>, Vec<(&'static str, LockKind)>);

    fn all(claims: Vec<LockClaim>) -> All {
        All(claims.into_iter().map(Arc::new).collect(), Vec::new())
    }

    fn with_kinds(claims: Vec<LockClaim>, kinds: &[(&'static str, LockKind)]) -> All {
        All(claims.into_iter().map(Arc::new).collect(), kinds.to_vec())
    }

    fn semaphore(permits: u32) -> LockKind {
        LockKind::semaphore(permits).unwrap()
    }

    /// The claim named `name`.
    fn named<'a>(all: &'a All, name: &str) -> &'a LockClaim {
        all.0.iter().find(|c| c.name_any() == name).unwrap()
    }

    /// The (waiter, held by) claim names of a cycle, in order.
    fn steps(cycle: &Cycle) -> Vec<(&str, &str)> {
        cycle
            .edges
            .iter()
            .map(|e| (e.waiter.name.as_str(), e.held_by.name.as_str()))
            .collect()
    }

    impl Claims for All {
        fn of_process(&self, process: &Process) -> Vec<Arc<LockClaim>> {
            self.0
                .iter()
                .filter(|c| process_of(c) == *process)
                .cloned()
                .collect()
        }
        fn of_lock(&self, namespace: &str, lock: &str) -> Vec<Arc<LockClaim>> {
            self.0
                .iter()
                .filter(|c| c.spec.lock == lock && c.namespace().as_deref() == Some(namespace))
                .cloned()
                .collect()
        }
        fn lock_kind(&self, namespace: &str, lock: &str) -> Option<LockKind> {
            let known = self
                .1
                .iter()
                .find(|(name, _)| namespace == "ns" && *name == lock);
            known.map(|(_, kind)| *kind)
        }
    }

    /// Pod p1 is gated on a and runs `lockkeeper run --lock b`; pod p2 the other way round.
    fn gate_and_run_crossed() -> Vec<LockClaim> {
        vec![
            claim("p1-a", "a", ("Pod", "p1"), "Granted", None),
            claim(
                "b-run-1",
                "b",
                ("Lease", "host-1"),
                "Waiting",
                Some("ns/p1"),
            ),
            claim("p2-b", "b", ("Pod", "p2"), "Granted", None),
            claim(
                "a-run-22",
                "a",
                ("Lease", "host-2"),
                "Waiting",
                Some("ns/p2"),
            ),
        ]
    }

    #[test]
    fn a_gate_and_a_run_crossed_in_two_pods_are_a_cycle() {
        let all = all(gate_and_run_crossed());
        let cycle = find_cycle(&all.0[1], &all).expect("a deadlock");
        let names: Vec<(&str, &str)> = cycle
            .edges
            .iter()
            .map(|e| (e.waiter.name.as_str(), e.held_by.name.as_str()))
            .collect();
        assert_eq!(names, [("a-run-22", "p1-a"), ("b-run-1", "p2-b")]);
        assert_eq!(
            cycle.describe(),
            "deadlock: Pod ns/p2 waits (claim a-run-22) for lock ns/a held by Pod ns/p1 (claim p1-a); \
             Pod ns/p1 waits (claim b-run-1) for lock ns/b held by Pod ns/p2 (claim p2-b)"
        );
        assert_eq!(cycle.youngest_waiter().name, "a-run-22", "made last");
        assert_eq!(cycle.claims().len(), 4);
        // Found from either waiter, it is the same cycle.
        assert_eq!(find_cycle(&all.0[3], &all), Some(cycle.clone()));
        // Searched from lock b's waiters: the walk from b's holder (p2) reaches p1.
        assert_eq!(cycles_through(&[all.0[1].clone()], &all), vec![cycle]);
    }

    #[test]
    fn no_cycle_without_the_shared_pod_or_once_a_holder_lets_go() {
        // The runs not known to run in the gated pods: two separate holders each, no cycle.
        let mut apart = gate_and_run_crossed();
        for claim in &mut apart {
            claim.metadata.annotations = None;
        }
        let apart = all(apart);
        assert_eq!(find_cycle(&apart.0[1], &apart), None);
        assert!(cycles_through(&[apart.0[1].clone()], &apart).is_empty());
        // p2 let go of b: b-run-1 is granted next, nothing waits on p2.
        let mut released = gate_and_run_crossed();
        released[2] = claim("p2-b", "b", ("Pod", "p2"), "Released", None);
        let released = all(released);
        assert_eq!(find_cycle(&released.0[1], &released), None);
        // A claim that holds is not searched from.
        let crossed = all(gate_and_run_crossed());
        assert_eq!(find_cycle(&crossed.0[0], &crossed), None);
    }

    #[test]
    fn a_longer_cycle_is_found_and_a_chain_is_not() {
        let ring = |closed: bool| {
            let mut claims = vec![
                claim("j1-a", "a", ("Job", "j1"), "Granted", None),
                claim("j1-b", "b", ("Job", "j1"), "Waiting", None),
                claim("j2-b", "b", ("Job", "j2"), "Granted", None),
                claim("j2-c", "c", ("Job", "j2"), "Waiting", None),
                claim("j3-c", "c", ("Job", "j3"), "Granted", None),
            ];
            if closed {
                claims.push(claim("j3-a", "a", ("Job", "j3"), "Waiting", None));
            }
            all(claims)
        };
        let closed = ring(true);
        let cycle = find_cycle(&closed.0[1], &closed).expect("j1 → j2 → j3 → j1");
        assert_eq!(cycle.edges.len(), 3);
        let open = ring(false);
        assert_eq!(find_cycle(&open.0[1], &open), None);
    }

    /// Semaphore `s` of 2 permits held by Jobs a and c; a waits for mutex `m`, which b holds;
    /// b waits for a permit of `s`. With `c_waits`, c waits for lock `n`, which a holds.
    fn semaphore_behind_a_mutex(c_waits: bool) -> Vec<LockClaim> {
        let mut claims = vec![
            claim("a-s", "s", ("Job", "a"), "Granted", None),
            claim("c-s", "s", ("Job", "c"), "Granted", None),
            claim("a-m", "m", ("Job", "a"), "Waiting", None),
            claim("b-m", "m", ("Job", "b"), "Granted", None),
            claim("b-s-2", "s", ("Job", "b"), "Waiting", None),
        ];
        if c_waits {
            claims.push(claim("a-n", "n", ("Job", "a"), "Granted", None));
            claims.push(claim("c-n-22", "n", ("Job", "c"), "Waiting", None));
        }
        claims
    }

    const KINDS: [(&str, LockKind); 2] = [("m", LockKind::Mutex), ("n", LockKind::Mutex)];

    #[test]
    fn a_semaphore_waiter_is_not_deadlocked_while_a_holder_off_the_cycle_runs() {
        // b → a → b is a cycle, but c runs and will give back its permit of s: b takes it,
        // runs, lets go of m, and a goes on.
        for known in [true, false] {
            let kinds = [KINDS[0], KINDS[1], ("s", semaphore(2))];
            let all = with_kinds(
                semaphore_behind_a_mutex(false),
                &kinds[..known as usize * 3],
            );
            assert_eq!(
                find_cycle(named(&all, "b-s-2"), &all),
                None,
                "known: {known}"
            );
            assert_eq!(find_cycle(named(&all, "a-m"), &all), None, "known: {known}");
            let waiting_on = |lock: &str| -> Vec<Arc<LockClaim>> {
                all.0
                    .iter()
                    .filter(|c| c.spec.lock == lock && waits(c))
                    .cloned()
                    .collect()
            };
            assert!(cycles_through(&waiting_on("s"), &all).is_empty());
            assert!(cycles_through(&waiting_on("m"), &all).is_empty());
        }
    }

    #[test]
    fn a_semaphore_waiter_is_deadlocked_once_every_holder_waits_in_the_set() {
        // c waits for n, which a holds: neither holder of s ever lets go.
        let all = with_kinds(
            semaphore_behind_a_mutex(true),
            &[KINDS[0], KINDS[1], ("s", semaphore(2))],
        );
        let cycle = find_cycle(named(&all, "b-s-2"), &all).expect("a deadlock");
        assert_eq!(steps(&cycle), [("a-m", "b-m"), ("b-s-2", "a-s")]);
        assert_eq!(cycle.edges[1].also_held_by[0].name, "c-s");
        assert_eq!(
            cycle.describe(),
            "deadlock: Job ns/a waits (claim a-m) for lock ns/m held by Job ns/b (claim b-m); \
             Job ns/b waits (claim b-s-2) for lock ns/s held by Job ns/a (claim a-s) and by \
             claims of the deadlock only (c-s)"
        );
        let names: Vec<String> = cycle.claims().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["a-m", "a-s", "b-m", "b-s-2", "c-s"]);
        assert_eq!(cycle.youngest_waiter().name, "b-s-2");
        assert!(still_holds(&cycle, &all));
        let waiting_on_s: Vec<Arc<LockClaim>> = vec![Arc::new(named(&all, "b-s-2").clone())];
        assert_eq!(cycles_through(&waiting_on_s, &all), vec![cycle.clone()]);
        // From c: c → a → b → c, b waiting on s held by c (and a).
        let from_c = find_cycle(named(&all, "c-n-22"), &all).expect("c is in it too");
        assert_eq!(
            steps(&from_c),
            [("a-m", "b-m"), ("b-s-2", "c-s"), ("c-n-22", "a-n")]
        );
        // The same with s unknown: two Exclusive holders make it a Semaphore, all held.
        let unknown = with_kinds(semaphore_behind_a_mutex(true), &[]);
        assert!(find_cycle(named(&unknown, "b-s-2"), &unknown).is_some());

        // c's wait ends (it gave up on n): c runs and will give back its permit. The cycle
        // found no longer holds, though its own claims still wait and hold as they did.
        let mut c_gave_up = semaphore_behind_a_mutex(true);
        c_gave_up[6] = claim("c-n-22", "n", ("Job", "c"), "Expired", None);
        let c_gave_up = with_kinds(c_gave_up, &[KINDS[0], KINDS[1], ("s", semaphore(2))]);
        assert!(!still_holds(&cycle, &c_gave_up));
        assert_eq!(find_cycle(named(&c_gave_up, "b-s-2"), &c_gave_up), None);
    }

    #[test]
    fn a_semaphore_with_a_permit_free_or_a_holder_going_on_later_is_no_deadlock() {
        // Three permits, two held (one free, held back by a lock-delay or by a client outside
        // Kubernetes): b's wait ends without a or c.
        let three = with_kinds(
            semaphore_behind_a_mutex(true),
            &[KINDS[0], KINDS[1], ("s", semaphore(3))],
        );
        assert_eq!(find_cycle(named(&three, "b-s-2"), &three), None);
        // c waits for n, held by d, which runs: c goes on once d lets go, then gives back its
        // permit.
        let mut chain = semaphore_behind_a_mutex(false);
        chain.push(claim("d-n", "n", ("Job", "d"), "Granted", None));
        chain.push(claim("c-n-22", "n", ("Job", "c"), "Waiting", None));
        let chain = with_kinds(chain, &[KINDS[0], KINDS[1], ("s", semaphore(2))]);
        assert_eq!(find_cycle(named(&chain, "b-s-2"), &chain), None);
        // …unless d waits for b too (a Mutex: b holds m): then all four are stuck.
        let mut closed = chain.0.iter().map(|c| (**c).clone()).collect::<Vec<_>>();
        closed.push(claim("d-m", "m", ("Job", "d"), "Waiting", None));
        let closed = with_kinds(closed, &[KINDS[0], KINDS[1], ("s", semaphore(2))]);
        assert!(find_cycle(named(&closed, "b-s-2"), &closed).is_some());
    }

    #[test]
    fn a_plain_mutex_cycle_is_a_deadlock_whoever_else_runs() {
        // j1 → j2 → j1 over two mutexes; j3 holds an unrelated lock and waits for nothing.
        let claims = vec![
            claim("j1-a", "a", ("Job", "j1"), "Granted", None),
            claim("j1-b", "b", ("Job", "j1"), "Waiting", None),
            claim("j2-b", "b", ("Job", "j2"), "Granted", None),
            claim("j2-a-1", "a", ("Job", "j2"), "Waiting", None),
            claim("j3-c", "c", ("Job", "j3"), "Granted", None),
        ];
        let mutexes = with_kinds(
            claims.clone(),
            &[("a", LockKind::Mutex), ("b", LockKind::Mutex)],
        );
        let cycle = find_cycle(named(&mutexes, "j1-b"), &mutexes).expect("a deadlock");
        assert_eq!(steps(&cycle), [("j1-b", "j2-b"), ("j2-a-1", "j1-a")]);
        assert!(cycle.edges.iter().all(|e| e.also_held_by.is_empty()));
        assert!(still_holds(&cycle, &mutexes));
        let unknown = all(claims);
        assert_eq!(find_cycle(named(&unknown, "j1-b"), &unknown), Some(cycle));
    }

    #[test]
    fn a_shared_waiter_behind_a_writer_needs_every_reader_gone() {
        // ReadWrite `rw` held Shared by r1 and r2; w waits Exclusive, s waits Shared behind it
        // (no writer starvation); r1 waits for mutex m, which s holds. r2 runs, but s needs r1
        // gone too (w goes first, after both readers): a deadlock, unlike on a Semaphore.
        let claims = |r1_waits: bool| {
            let mut claims = vec![
                shared(claim("r1-rw", "rw", ("Job", "r1"), "Granted", None)),
                shared(claim("r2-rw", "rw", ("Job", "r2"), "Granted", None)),
                claim("w-rw", "rw", ("Job", "w"), "Waiting", None),
                shared(claim("s-rw", "rw", ("Job", "s"), "Waiting", None)),
                claim("s-m", "m", ("Job", "s"), "Granted", None),
            ];
            if r1_waits {
                claims.push(claim("r1-m", "m", ("Job", "r1"), "Waiting", None));
            }
            claims
        };
        let kinds = [("rw", LockKind::ReadWrite), ("m", LockKind::Mutex)];
        for known in [true, false] {
            let stuck = with_kinds(claims(true), &kinds[..known as usize * 2]);
            let cycle = find_cycle(named(&stuck, "s-rw"), &stuck).expect("a deadlock");
            assert_eq!(steps(&cycle), [("r1-m", "s-m"), ("s-rw", "r1-rw")]);
            assert!(cycle.edges.iter().all(|e| e.also_held_by.is_empty()));
            let waiting_on_rw: Vec<Arc<LockClaim>> = stuck
                .0
                .iter()
                .filter(|c| c.spec.lock == "rw" && waits(c))
                .cloned()
                .collect();
            assert_eq!(cycles_through(&waiting_on_rw, &stuck), vec![cycle]);
            // The writer waits behind the deadlock, but is on no cycle.
            assert_eq!(find_cycle(named(&stuck, "w-rw"), &stuck), None);
        }
        // r1 waits for nothing: both readers go, then w, then s.
        let free = with_kinds(claims(false), &kinds);
        assert_eq!(find_cycle(named(&free, "s-rw"), &free), None);
    }
}
