//! The lock rules: given the contenders of one lock in queue (sequence) order, who holds it,
//! and what each waiter waits for. Pure functions, no I/O; the ZooKeeper engine and the
//! controller both build on them.
//!
//! - Exclusive contenders hold when nobody is ahead of them; shared contenders hold when no
//!   exclusive contender is ahead of them (so a waiting writer blocks later readers: no
//!   writer starvation). A mutex is a lock whose contenders are all exclusive.
//! - A semaphore's first `permits` contenders hold, whatever their mode.

use std::fmt;
use std::num::NonZeroU32;

/// How a contender wants the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    #[default]
    Exclusive,
    Shared,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Exclusive => "Exclusive",
            Mode::Shared => "Shared",
        })
    }
}

/// What kind of lock a path holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockKind {
    Mutex,
    ReadWrite,
    Semaphore { permits: NonZeroU32 },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("a semaphore needs at least 1 permit, got {0}")]
    NoPermits(u32),
    #[error(
        "{mode} contenders are not allowed on a {kind} lock; only ReadWrite locks take Shared contenders"
    )]
    ModeNotAllowed { kind: LockKind, mode: Mode },
}

impl LockKind {
    pub fn semaphore(permits: u32) -> Result<Self, RuleError> {
        NonZeroU32::new(permits)
            .map(|permits| LockKind::Semaphore { permits })
            .ok_or(RuleError::NoPermits(permits))
    }

    /// Checks that a contender of `mode` may join a lock of this kind.
    pub fn admits(self, mode: Mode) -> Result<(), RuleError> {
        match (self, mode) {
            (LockKind::Mutex | LockKind::Semaphore { .. }, Mode::Shared) => {
                Err(RuleError::ModeNotAllowed { kind: self, mode })
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for LockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockKind::Mutex => f.write_str("Mutex"),
            LockKind::ReadWrite => f.write_str("ReadWrite"),
            LockKind::Semaphore { permits } => write!(f, "Semaphore({permits})"),
        }
    }
}

/// What a contender must wait for before it can hold the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitTarget {
    /// The contender at this index in the queue must go first: watch that one node only.
    Node(usize),
    /// Any holder leaving may be the one that lets this contender in (semaphores: with N
    /// permits no single node decides it), so watch the lock's list of contenders. Only
    /// the first waiter needs to: the others follow once it holds.
    AnyHolder,
}

/// The rules' answer for one contender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Holds,
    /// `position` counts the contenders ahead of it in the queue (at least 1).
    Waits {
        position: usize,
        target: WaitTarget,
    },
}

impl Verdict {
    pub fn holds(self) -> bool {
        self == Verdict::Holds
    }
}

/// The verdict on every contender of one lock. `queue` gives each contender's mode in sequence
/// order (lowest sequence first), whichever client created it.
pub fn judge(kind: LockKind, queue: &[Mode]) -> Vec<Verdict> {
    match kind {
        LockKind::Semaphore { permits } => decide_semaphore(permits.get() as usize, queue.len()),
        LockKind::Mutex | LockKind::ReadWrite => decide_read_write(queue),
    }
}

fn decide_semaphore(permits: usize, len: usize) -> Vec<Verdict> {
    (0..len)
        .map(|index| {
            if index < permits {
                Verdict::Holds
            } else {
                Verdict::Waits {
                    position: index,
                    target: WaitTarget::AnyHolder,
                }
            }
        })
        .collect()
}

fn decide_read_write(queue: &[Mode]) -> Vec<Verdict> {
    let mut last_exclusive: Option<usize> = None;
    let mut verdicts = Vec::with_capacity(queue.len());
    for (index, mode) in queue.iter().enumerate() {
        let verdict = match mode {
            Mode::Exclusive if index == 0 => Verdict::Holds,
            // Only the node just ahead decides when this one's turn comes.
            Mode::Exclusive => Verdict::Waits {
                position: index,
                target: WaitTarget::Node(index - 1),
            },
            Mode::Shared => match last_exclusive {
                None => Verdict::Holds,
                // The last exclusive ahead leaves last (FIFO), so it is the one to watch.
                Some(exclusive) => Verdict::Waits {
                    position: index,
                    target: WaitTarget::Node(exclusive),
                },
            },
        };
        if *mode == Mode::Exclusive {
            last_exclusive = Some(index);
        }
        verdicts.push(verdict);
    }
    verdicts
}

#[cfg(test)]
mod tests {
    use super::*;
    use Mode::{Exclusive as X, Shared as S};
    use proptest::prelude::*;

    fn holders(verdicts: &[Verdict]) -> Vec<usize> {
        verdicts
            .iter()
            .enumerate()
            .filter(|(_, v)| v.holds())
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn empty_queue_has_no_verdicts() {
        assert!(judge(LockKind::Mutex, &[]).is_empty());
    }

    #[test]
    fn mutex_grants_the_head_and_each_waiter_watches_its_predecessor() {
        let verdicts = judge(LockKind::Mutex, &[X, X, X]);
        assert_eq!(
            verdicts,
            vec![
                Verdict::Holds,
                Verdict::Waits {
                    position: 1,
                    target: WaitTarget::Node(0)
                },
                Verdict::Waits {
                    position: 2,
                    target: WaitTarget::Node(1)
                },
            ]
        );
    }

    #[test]
    fn readers_share_until_a_writer_and_later_readers_wait_for_that_writer() {
        let verdicts = judge(LockKind::ReadWrite, &[S, S, X, S, S, X, S]);
        assert_eq!(holders(&verdicts), vec![0, 1]);
        let waits = |position, on| Verdict::Waits {
            position,
            target: WaitTarget::Node(on),
        };
        // The writer waits on the reader just ahead; readers behind it wait on the writer.
        assert_eq!(
            verdicts[2..],
            [
                waits(2, 1),
                waits(3, 2),
                waits(4, 2),
                waits(5, 4),
                waits(6, 5)
            ]
        );
    }

    #[test]
    fn a_writer_at_the_head_excludes_every_reader() {
        assert_eq!(holders(&judge(LockKind::ReadWrite, &[X, S, S])), vec![0]);
    }

    #[test]
    fn semaphore_grants_the_first_permits_whatever_their_mode() {
        let kind = LockKind::semaphore(2).unwrap();
        let verdicts = judge(kind, &[X, X, X, X]);
        assert_eq!(holders(&verdicts), vec![0, 1]);
        assert_eq!(
            verdicts[3],
            Verdict::Waits {
                position: 3,
                target: WaitTarget::AnyHolder
            }
        );
    }

    #[test]
    fn zero_permits_is_an_error_not_a_lock_nobody_can_take() {
        assert_eq!(LockKind::semaphore(0), Err(RuleError::NoPermits(0)));
    }

    #[test]
    fn shared_contenders_only_on_read_write_locks() {
        assert!(LockKind::ReadWrite.admits(S).is_ok());
        assert!(LockKind::Mutex.admits(X).is_ok());
        let err = LockKind::Mutex.admits(S).unwrap_err();
        assert!(
            err.to_string().contains("only ReadWrite locks take Shared"),
            "{err}"
        );
        assert!(LockKind::semaphore(3).unwrap().admits(S).is_err());
    }

    fn any_mode() -> impl Strategy<Value = Mode> {
        prop_oneof![Just(X), Just(S)]
    }

    fn any_kind() -> impl Strategy<Value = LockKind> {
        prop_oneof![
            Just(LockKind::Mutex),
            Just(LockKind::ReadWrite),
            (1u32..6).prop_map(|p| LockKind::semaphore(p).unwrap())
        ]
    }

    /// What the rules must never allow, for any queue.
    fn check_safety(
        kind: LockKind,
        queue: &[Mode],
        verdicts: &[Verdict],
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(verdicts.len(), queue.len());
        let held = holders(verdicts);
        if !queue.is_empty() {
            prop_assert!(held.contains(&0), "the head of a queue always holds");
        }
        match kind {
            LockKind::Semaphore { permits } => prop_assert!(held.len() <= permits.get() as usize),
            LockKind::Mutex | LockKind::ReadWrite => {
                let exclusive = held.iter().filter(|&&i| queue[i] == X).count();
                prop_assert!(exclusive <= 1, "two exclusive holders");
                if exclusive == 1 {
                    prop_assert_eq!(held.len(), 1, "an exclusive holder shares with nobody");
                }
            }
        }
        // Holders form a prefix of the queue: nobody overtakes a waiter (FIFO, no starvation).
        for (i, &h) in held.iter().enumerate() {
            prop_assert_eq!(h, i);
        }
        for (index, verdict) in verdicts.iter().enumerate() {
            if let Verdict::Waits { position, target } = *verdict {
                prop_assert_eq!(position, index);
                if let WaitTarget::Node(on) = target {
                    prop_assert!(on < index, "a waiter watches a node ahead of it");
                    prop_assert!(
                        queue[on] == X || queue[index] == X,
                        "a reader never waits on another reader"
                    );
                }
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn no_queue_breaks_exclusion(kind in any_kind(), queue in prop::collection::vec(any_mode(), 0..40)) {
            let queue: Vec<Mode> = if kind == LockKind::Mutex { vec![X; queue.len()] } else { queue };
            check_safety(kind, &queue, &judge(kind, &queue))?;
        }

        /// Releasing holders in any order, then adding newcomers, never breaks the rules and
        /// eventually grants every contender exactly once (liveness).
        #[test]
        fn every_contender_is_granted_once_as_holders_leave(
            kind in any_kind(),
            initial in prop::collection::vec(any_mode(), 1..25),
            leave_picks in prop::collection::vec(any::<prop::sample::Index>(), 1..80),
            arrivals in prop::collection::vec(prop::option::of(any_mode()), 1..80),
        ) {
            let normalise = |m: Mode| if kind == LockKind::Mutex { X } else { m };
            let mut next_id = 0usize;
            let mut queue: Vec<(usize, Mode)> = Vec::new();
            for mode in initial {
                queue.push((next_id, normalise(mode)));
                next_id += 1;
            }
            let mut granted_once = std::collections::HashSet::new();
            let mut step = 0;
            while !queue.is_empty() {
                let modes: Vec<Mode> = queue.iter().map(|(_, m)| *m).collect();
                let verdicts = judge(kind, &modes);
                check_safety(kind, &modes, &verdicts)?;
                for (i, v) in verdicts.iter().enumerate() {
                    if v.holds() {
                        granted_once.insert(queue[i].0);
                    }
                }
                let held = holders(&verdicts);
                let pick = leave_picks[step % leave_picks.len()].index(held.len());
                queue.remove(held[pick]);
                if let Some(Some(mode)) = arrivals.get(step) {
                    queue.push((next_id, normalise(*mode)));
                    next_id += 1;
                }
                step += 1;
            }
            prop_assert_eq!(granted_once.len(), next_id);
        }
    }
}
