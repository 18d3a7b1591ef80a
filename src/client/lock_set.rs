//! The locks a client (`lockkeeper gate`, `lockkeeper run`) asks for at once: parsed from
//! `--lock NAME[:MODE]`, put in the one order every holder follows (lock name), and the
//! fencing tokens handed to the workload when all are granted.
//!
//! The order is what keeps holders of several locks from deadlocking: a client makes its
//! claims one after another in lock-name order, and the controller queues a claim only once
//! the holder's claims on earlier locks are granted ([`crate::claim_lifecycle::HolderSet`]).

use std::str::FromStr;

use clap::ValueEnum;

use crate::resources::ClaimMode;

/// `--lock NAME` or `--lock NAME:MODE` (MODE `Exclusive` or `Shared`, any case); without a
/// mode the command's `--mode` applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockArg {
    pub lock: String,
    pub mode: Option<ClaimMode>,
}

impl FromStr for LockArg {
    type Err = String;

    fn from_str(arg: &str) -> Result<Self, String> {
        let (lock, mode) = match arg.split_once(':') {
            None => (arg, None),
            Some((lock, mode)) => {
                let mode = ClaimMode::from_str(mode, true).map_err(|_| {
                    format!("{mode:?} is not a mode: write {lock}:Exclusive or {lock}:Shared")
                })?;
                (lock, Some(mode))
            }
        };
        if lock.is_empty() {
            return Err("the lock's name is empty".into());
        }
        Ok(LockArg {
            lock: lock.to_string(),
            mode,
        })
    }
}

/// One lock of the set, with the mode it is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedLock {
    pub lock: String,
    pub mode: ClaimMode,
}

/// The locks asked for, in lock-name order, each once.
pub fn wanted_locks(args: &[LockArg], default_mode: ClaimMode) -> Result<Vec<WantedLock>, String> {
    let mut wanted: Vec<WantedLock> = args
        .iter()
        .map(|arg| WantedLock {
            lock: arg.lock.clone(),
            mode: arg.mode.unwrap_or(default_mode),
        })
        .collect();
    if wanted.is_empty() {
        return Err("no lock is asked for: give --lock NAME".into());
    }
    wanted.sort_by(|a, b| a.lock.cmp(&b.lock));
    if let Some(twice) = wanted.windows(2).find(|pair| pair[0].lock == pair[1].lock) {
        return Err(format!("lock {} is asked for twice", twice[0].lock));
    }
    Ok(wanted)
}

/// "lock a", "locks a and b", "locks a, b and c": the set in a sentence.
pub fn describe(wanted: &[WantedLock]) -> String {
    let names: Vec<&str> = wanted.iter().map(|w| w.lock.as_str()).collect();
    match names.as_slice() {
        [one] => format!("lock {one}"),
        [init @ .., last] => format!("locks {} and {last}", init.join(", ")),
        [] => "no lock".to_string(),
    }
}

/// What the workload is told of its grants: with one lock, the token alone (as before
/// several locks were possible); with several, `LOCK=TOKEN` per lock, in lock order.
pub fn token_lines(granted: &[(&str, i64)]) -> String {
    match granted {
        [(_, token)] => format!("{token}\n"),
        _ => granted
            .iter()
            .map(|(lock, token)| format!("{lock}={token}\n"))
            .collect(),
    }
}

/// `LOCKKEEPER_FENCING_TOKEN_<LOCK>`: the lock's name in capitals, every character that may
/// not be in a variable's name (`-`, `.`) as `_`.
pub fn token_variable(lock: &str) -> String {
    let name: String = lock
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("LOCKKEEPER_FENCING_TOKEN_{name}")
}

/// Refuses a set in which two locks would give the same [`token_variable`] (`a-b`, `a.b`).
pub fn distinct_token_variables(wanted: &[WantedLock]) -> Result<(), String> {
    for (index, first) in wanted.iter().enumerate() {
        if let Some(second) = wanted[index + 1..]
            .iter()
            .find(|w| token_variable(&w.lock) == token_variable(&first.lock))
        {
            return Err(format!(
                "locks {} and {} would both give their token as {}; take them in two runs",
                first.lock,
                second.lock,
                token_variable(&first.lock)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(text: &str) -> LockArg {
        text.parse().unwrap()
    }

    #[test]
    fn a_lock_argument_may_name_its_mode() {
        assert_eq!(
            arg("db"),
            LockArg {
                lock: "db".into(),
                mode: None
            }
        );
        assert_eq!(arg("db:shared").mode, Some(ClaimMode::Shared));
        assert_eq!(arg("db:Exclusive").mode, Some(ClaimMode::Exclusive));
        let bad = "db:read".parse::<LockArg>().unwrap_err();
        assert!(bad.contains("db:Shared"), "{bad}");
        assert!(":shared".parse::<LockArg>().is_err());
    }

    #[test]
    fn locks_are_taken_in_name_order_each_once() {
        let wanted =
            wanted_locks(&[arg("reports"), arg("db:shared")], ClaimMode::Exclusive).unwrap();
        assert_eq!(
            wanted,
            vec![
                WantedLock {
                    lock: "db".into(),
                    mode: ClaimMode::Shared
                },
                WantedLock {
                    lock: "reports".into(),
                    mode: ClaimMode::Exclusive
                },
            ]
        );
        let twice = wanted_locks(&[arg("db"), arg("db:shared")], ClaimMode::Exclusive);
        assert_eq!(twice.unwrap_err(), "lock db is asked for twice");
        assert!(wanted_locks(&[], ClaimMode::Exclusive).is_err());
        assert_eq!(describe(&wanted), "locks db and reports");
        let three = wanted_locks(&[arg("c"), arg("b"), arg("a")], ClaimMode::Shared).unwrap();
        assert_eq!(describe(&three), "locks a, b and c");
        assert_eq!(describe(&three[..1]), "lock a");
    }

    #[test]
    fn one_token_alone_several_by_lock() {
        assert_eq!(token_lines(&[("db", 42)]), "42\n");
        assert_eq!(token_lines(&[("a", 7), ("b", 9)]), "a=7\nb=9\n");
        assert_eq!(
            token_variable("schema-migrations.v2"),
            "LOCKKEEPER_FENCING_TOKEN_SCHEMA_MIGRATIONS_V2"
        );
        let clash = wanted_locks(&[arg("a-b"), arg("a.b")], ClaimMode::Exclusive).unwrap();
        assert!(distinct_token_variables(&clash).is_err());
        let fine = wanted_locks(&[arg("a"), arg("b")], ClaimMode::Exclusive).unwrap();
        assert!(distinct_token_variables(&fine).is_ok());
    }
}
