//! A model check of [`HolderSet`]'s ordering rule: holders that each need several Mutex locks,
//! their claims made in every order and interleaved every way with the queueing, the grants
//! and the holders' runs. In every reachable state some step is possible until every holder
//! has run (no deadlock), and a holder runs only while it holds every lock it needs. The
//! queueing rule and the start rule are the real ones ([`HolderSet::of`]); the queue is a
//! FIFO per lock, as the engine's Mutex is.

use std::collections::HashSet;

use serde_json::json;

use super::HolderSet;
use crate::resources::LockClaim;

/// How the holders' Jobs learn of their locks.
#[derive(Clone, Copy, Debug)]
enum Declared {
    /// Each Job exists from the start and names its locks (`lockkeeper.dev/locks`).
    ByAnnotation,
    /// Each Job is made after its claims, and names no locks.
    ByClaimsMadeFirst,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    /// Claims made so far per holder (a prefix of its order).
    made: Vec<usize>,
    job_exists: Vec<bool>,
    /// Per lock, the holders queued on it, first in line first.
    queues: Vec<Vec<usize>>,
    done: Vec<bool>,
}

struct Model {
    /// Per holder, the indexes of the locks it needs, in the order its claims are made.
    needs: Vec<Vec<usize>>,
    locks: Vec<&'static str>,
    declared: Declared,
}

impl Model {
    fn claim(&self, state: &State, holder: usize, lock: usize) -> LockClaim {
        let queue = &state.queues[lock];
        let phase = match queue.iter().position(|h| *h == holder) {
            Some(0) => "Granted",
            Some(_) => "Waiting",
            None => "Pending",
        };
        serde_json::from_value(json!({
            "apiVersion": "lockkeeper.dev/v1alpha1", "kind": "LockClaim",
            "metadata": {"name": format!("h{holder}-{}", self.locks[lock]), "namespace": "m",
                "uid": format!("{holder}/{lock}")},
            "spec": {"lock": self.locks[lock], "holder": {"kind": "Job", "name": format!("h{holder}")}},
            "status": {"phase": phase},
        }))
        .expect("a claim")
    }

    fn made_claims(&self, state: &State, holder: usize) -> Vec<LockClaim> {
        self.needs[holder][..state.made[holder]]
            .iter()
            .map(|lock| self.claim(state, holder, *lock))
            .collect()
    }

    fn declared_locks(&self, holder: usize) -> Vec<String> {
        match self.declared {
            Declared::ByAnnotation => self.needs[holder]
                .iter()
                .map(|lock| self.locks[*lock].to_string())
                .collect(),
            Declared::ByClaimsMadeFirst => Vec::new(),
        }
    }

    fn set_of(&self, state: &State, holder: usize, lock: usize) -> HolderSet {
        let claims = self.made_claims(state, holder);
        let siblings: Vec<&LockClaim> = claims.iter().collect();
        HolderSet::of(
            &self.claim(state, holder, lock),
            &siblings,
            &self.declared_locks(holder),
        )
    }

    fn initial(&self) -> State {
        let holders = self.needs.len();
        State {
            made: vec![0; holders],
            job_exists: vec![matches!(self.declared, Declared::ByAnnotation); holders],
            queues: vec![Vec::new(); self.locks.len()],
            done: vec![false; holders],
        }
    }

    /// Every state one step leads to; a holder that runs is checked to hold all its locks.
    fn next(&self, state: &State) -> Vec<State> {
        let mut next = Vec::new();
        for holder in 0..self.needs.len() {
            if state.done[holder] {
                continue;
            }
            let needs = &self.needs[holder];
            if state.made[holder] < needs.len() {
                let mut s = state.clone();
                s.made[holder] += 1;
                next.push(s);
            } else if !state.job_exists[holder] {
                let mut s = state.clone();
                s.job_exists[holder] = true;
                next.push(s);
            }
            if !state.job_exists[holder] {
                continue;
            }
            // The controller queues a made claim once its holder's earlier claims are granted.
            for &lock in &needs[..state.made[holder]] {
                let queued = state.queues[lock].contains(&holder);
                if !queued
                    && self
                        .set_of(state, holder, lock)
                        .earlier_not_granted
                        .is_empty()
                {
                    let mut s = state.clone();
                    s.queues[lock].push(holder);
                    next.push(s);
                }
            }
            // The Job is resumed by a granted claim with nothing else left to grant; it runs,
            // completes, and its claims leave the queues.
            let starts = needs[..state.made[holder]].iter().any(|&lock| {
                state.queues[lock].first() == Some(&holder)
                    && self.set_of(state, holder, lock).others_not_granted == 0
            });
            if starts {
                for &lock in needs {
                    assert_eq!(
                        state.queues[lock].first(),
                        Some(&holder),
                        "h{holder} started without lock {} in {state:?}",
                        self.locks[lock]
                    );
                }
                let mut s = state.clone();
                for queue in &mut s.queues {
                    queue.retain(|h| *h != holder);
                }
                s.done[holder] = true;
                next.push(s);
            }
        }
        next
    }

    /// Explores every reachable state; returns how many there were.
    fn check(&self) -> usize {
        let mut seen = HashSet::new();
        let mut stack = vec![self.initial()];
        while let Some(state) = stack.pop() {
            if !seen.insert(state.clone()) {
                continue;
            }
            let next = self.next(&state);
            assert!(
                !next.is_empty() || state.done.iter().all(|d| *d),
                "deadlock: no step is possible in {state:?} ({:?}, {:?})",
                self.needs,
                self.declared
            );
            stack.extend(next);
        }
        seen.len()
    }
}

/// Every order in which `locks` can be claimed.
fn orders(locks: &[usize]) -> Vec<Vec<usize>> {
    if locks.len() <= 1 {
        return vec![locks.to_vec()];
    }
    let mut all = Vec::new();
    for (i, first) in locks.iter().enumerate() {
        let mut rest = locks.to_vec();
        rest.remove(i);
        for mut tail in orders(&rest) {
            tail.insert(0, *first);
            all.push(tail);
        }
    }
    all
}

#[test]
fn holders_that_need_the_same_locks_never_deadlock_in_any_order_or_interleaving() {
    let locks = vec!["a", "b", "c"];
    let mut states = 0;
    for declared in [Declared::ByAnnotation, Declared::ByClaimsMadeFirst] {
        // Two holders needing a and b; then three needing two or three of a, b, c, so that
        // their sets overlap in a cycle (a-b, b-c, c-a) or all at once.
        let pairs: Vec<Vec<Vec<usize>>> = vec![vec![vec![0, 1], vec![0, 1]]];
        let triples: Vec<Vec<Vec<usize>>> = vec![
            vec![vec![0, 1], vec![1, 2], vec![2, 0]],
            vec![vec![0, 1, 2], vec![0, 1, 2], vec![0, 1]],
        ];
        for needs in pairs.into_iter().chain(triples) {
            let per_holder: Vec<Vec<Vec<usize>>> = needs.iter().map(|n| orders(n)).collect();
            let mut choice = vec![0; needs.len()];
            loop {
                let model = Model {
                    needs: (0..needs.len())
                        .map(|h| per_holder[h][choice[h]].clone())
                        .collect(),
                    locks: locks.clone(),
                    declared,
                };
                states += model.check();
                // The next combination of claim orders.
                let mut h = 0;
                while h < choice.len() {
                    choice[h] += 1;
                    if choice[h] < per_holder[h].len() {
                        break;
                    }
                    choice[h] = 0;
                    h += 1;
                }
                if h == choice.len() {
                    break;
                }
            }
        }
    }
    assert!(states > 10_000, "only {states} states were explored");
}
