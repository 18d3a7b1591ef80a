//! Many contenders, several sessions, several locks, thousands of grants: every hold is
//! recorded and checked for overlaps, semaphore occupancy and fencing-token order.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lockkeeper::lock_rules::{LockKind, Mode};
use lockkeeper::zookeeper::{FencingToken, LockEngine, LockSpec};
use lockkeeper_testkit::{HoldInterval, HoldLog};

const SESSIONS: usize = 4;
const CONTENDERS_PER_LOCK: usize = 6;
const GRANTS_PER_CONTENDER: usize = 90;
const SEMAPHORE_PERMITS: u32 = 3;

#[derive(Clone, Debug)]
struct Hold {
    lock: String,
    mode: Mode,
    token: FencingToken,
    interval: HoldInterval,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_grants_never_overlap_and_tokens_grow() {
    let zk = zookeeper();
    let mut engines = Vec::new();
    for _ in 0..SESSIONS {
        engines.push(engine(&zk).await);
    }
    let locks = [
        LockSpec::new("/stress/mutex-a", LockKind::Mutex).unwrap(),
        LockSpec::new("/stress/mutex-b", LockKind::Mutex).unwrap(),
        LockSpec::new("/stress/read-write", LockKind::ReadWrite).unwrap(),
        LockSpec::new(
            "/stress/semaphore",
            LockKind::semaphore(SEMAPHORE_PERMITS).unwrap(),
        )
        .unwrap(),
    ];
    let holds: Arc<Mutex<Vec<Hold>>> = Arc::default();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (l, lock) in locks.iter().enumerate() {
        for c in 0..CONTENDERS_PER_LOCK {
            let engine = engines[(l * CONTENDERS_PER_LOCK + c) % SESSIONS].clone();
            let (lock, holds) = (lock.clone(), holds.clone());
            tasks.push(tokio::spawn(contend(
                engine,
                lock,
                format!("l{l}c{c}"),
                holds,
                start,
            )));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let holds = holds.lock().unwrap().clone();
    let total = holds.len();
    assert!(total >= 2000, "{total} grants");
    assert_eq!(
        locks.len() * CONTENDERS_PER_LOCK,
        24,
        "at least 20 contenders"
    );

    let mut by_lock: HashMap<String, Vec<Hold>> = HashMap::new();
    for hold in holds {
        by_lock.entry(hold.lock.clone()).or_default().push(hold);
    }
    for (lock, mut holds) in by_lock {
        holds.sort_by_key(|hold| hold.interval.enter_micros);
        let log = |holds: &[Hold]| HoldLog {
            intervals: holds.iter().map(|h| h.interval.clone()).collect(),
        };
        if lock.contains("semaphore") {
            let most = log(&holds).max_concurrent();
            assert!(
                most <= SEMAPHORE_PERMITS as usize,
                "{lock}: {most} holders at once"
            );
            continue;
        }
        // Exclusive holds overlap nothing; shared ones may overlap each other only.
        for (first, second) in log(&holds).overlapping_pairs() {
            let mode_of = |i: &HoldInterval| holds.iter().find(|h| h.interval == *i).unwrap().mode;
            assert!(
                mode_of(&first) == Mode::Shared && mode_of(&second) == Mode::Shared,
                "{lock}: exclusive hold overlapped: {first:?} and {second:?}"
            );
        }
        let exclusive: Vec<&Hold> = holds.iter().filter(|h| h.mode == Mode::Exclusive).collect();
        for pair in exclusive.windows(2) {
            assert!(
                pair[1].token > pair[0].token,
                "{lock}: token {} after {}",
                pair[1].token,
                pair[0].token
            );
        }
    }
    println!("{total} grants checked in {:?}", start.elapsed());
}

async fn contend(
    engine: LockEngine,
    lock: LockSpec,
    name: String,
    holds: Arc<Mutex<Vec<Hold>>>,
    start: Instant,
) {
    for round in 0..GRANTS_PER_CONTENDER {
        let mode = if lock.kind == LockKind::ReadWrite && round % 2 == 1 {
            Mode::Shared
        } else {
            Mode::Exclusive
        };
        let contender_name = format!("{name}-{round}");
        let mut contender = enqueue(&engine, &lock, &contender_name, mode).await;
        let token = contender
            .wait_granted(Duration::from_secs(60))
            .await
            .expect("granted");
        let enter_micros = start.elapsed().as_micros() as u64;
        if round % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else {
            tokio::task::yield_now().await;
        }
        let leave_micros = start.elapsed().as_micros() as u64;
        holds.lock().unwrap().push(Hold {
            lock: lock.path.to_string(),
            mode,
            token,
            interval: HoldInterval {
                holder: contender_name,
                enter_micros,
                leave_micros,
            },
        });
        engine.dequeue(&lock, &contender.id).await.expect("dequeue");
    }
}
