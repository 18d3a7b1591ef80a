//! Deadlock detection (pure): the wait-for graph of the Kubernetes holders the controller
//! knows, searched from one waiting claim.
//!
//! A node is a process: a claim's holder, or the pod a `lockkeeper run` runs in (its claims
//! carry [`RUNS_IN_POD_ANNOTATION`]), so that a pod gated on one lock whose container runs
//! `lockkeeper run` on another is one node. An edge goes from a process with a claim waiting
//! for a lock to each process holding that lock. A cycle is a deadlock: each waits for the
//! next, and none lets go. Only the cycles through the searched claim are looked for: a new
//! cycle closes with a new edge, which starts at a claim that just began to wait on a lock or
//! ends at a grant just made of one, and both make that lock's waiters searched again.

use std::collections::HashSet;
use std::sync::Arc;

use kube::ResourceExt;

use crate::resources::{ClaimPhase, HolderKind, LockClaim};

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

/// Where the search finds claims: by the process they belong to, and by their lock.
pub trait Claims {
    fn of_process(&self, process: &Process) -> Vec<Arc<LockClaim>>;
    fn of_lock(&self, namespace: &str, lock: &str) -> Vec<Arc<LockClaim>>;
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

/// A deadlock: processes each waiting for a lock the next one holds, back to the first.
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
                format!(
                    "{} waits (claim {}) for lock {} held by {} (claim {})",
                    e.from, e.waiter.name, e.lock, e.to, e.held_by.name
                )
            })
            .collect();
        format!("deadlock: {}", steps.join("; "))
    }

    /// Every claim on the cycle: those that wait and those that hold.
    pub fn claims(&self) -> Vec<ClaimId> {
        let mut claims: Vec<ClaimId> = self
            .edges
            .iter()
            .flat_map(|e| [e.waiter.clone(), e.held_by.clone()])
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

/// How deep the search goes: cycles longer than this are not looked for.
const MAX_DEPTH: usize = 32;

/// The cycles through the waiting claims of one lock (`waiters`), each found once. Cheap
/// when there are none: one walk of the graph from the lock's holders, whatever the length
/// of its queue; only a waiter whose process that walk reaches is in a cycle.
pub fn cycles_through(waiters: &[Arc<LockClaim>], claims: &impl Claims) -> Vec<Cycle> {
    let Some(first) = waiters.first() else {
        return Vec::new();
    };
    let namespace = first.namespace().unwrap_or_default();
    let mut reached: HashSet<Process> = HashSet::new();
    let mut next: Vec<Process> = claims
        .of_lock(&namespace, &first.spec.lock)
        .iter()
        .filter(|c| holds(c))
        .map(|c| process_of(c))
        .collect();
    while let Some(process) = next.pop() {
        if reached.insert(process.clone()) {
            next.extend(out_edges(&process, claims).into_iter().map(|e| e.to));
        }
    }
    let mut cycles: Vec<Cycle> = Vec::new();
    for waiter in waiters.iter().filter(|w| reached.contains(&process_of(w))) {
        if let Some(cycle) = find_cycle(waiter, claims)
            && !cycles.contains(&cycle)
        {
            cycles.push(cycle);
        }
    }
    cycles
}

/// A cycle through `start` (a waiting claim), if the graph has one.
pub fn find_cycle(start: &LockClaim, claims: &impl Claims) -> Option<Cycle> {
    if !waits(start) {
        return None;
    }
    let origin = process_of(start);
    let mut visited: HashSet<Process> = HashSet::from([origin.clone()]);
    let mut path: Vec<Edge> = Vec::new();
    let first = out_edges_of_claim(start, &origin, claims);
    search(&origin, first, claims, &mut visited, &mut path).map(|edges| Cycle { edges }.canonical())
}

fn search(
    origin: &Process,
    edges: Vec<Edge>,
    claims: &impl Claims,
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
        let next = out_edges(&edge.to, claims);
        path.push(edge);
        if let Some(cycle) = search(origin, next, claims, visited, path) {
            return Some(cycle);
        }
        path.pop();
    }
    None
}

/// The edges out of `process`: for each of its waiting claims, to each other process holding
/// that lock.
fn out_edges(process: &Process, claims: &impl Claims) -> Vec<Edge> {
    claims
        .of_process(process)
        .iter()
        .filter(|c| waits(c))
        .flat_map(|waiter| out_edges_of_claim(waiter, process, claims))
        .collect()
}

fn out_edges_of_claim(waiter: &LockClaim, from: &Process, claims: &impl Claims) -> Vec<Edge> {
    let namespace = waiter.namespace().unwrap_or_default();
    claims
        .of_lock(&namespace, &waiter.spec.lock)
        .iter()
        .filter(|holder| holds(holder))
        .filter_map(|holder| {
            let to = process_of(holder);
            (to != *from).then(|| Edge {
                from: from.clone(),
                waiter: ClaimId::of(waiter),
                lock: format!("{namespace}/{}", waiter.spec.lock),
                held_by: ClaimId::of(holder),
                to,
            })
        })
        .collect()
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

    struct All(Vec<Arc<LockClaim>>);

    fn all(claims: Vec<LockClaim>) -> All {
        All(claims.into_iter().map(Arc::new).collect())
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
}
