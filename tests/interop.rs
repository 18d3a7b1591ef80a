//! Apache Curator (Java) and kazoo (Python) clients contend on the same ZooKeeper paths as
//! the engine, and each side observes the exclusion by its own means.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use lockkeeper::lock_rules::{LockKind, Mode};
use lockkeeper::zookeeper::{LockEngine, LockSpec};
use lockkeeper_testkit::peer::spawn_loop;
use lockkeeper_testkit::{HoldLog, PeerKind, PeerLibrary, PeerProcess, PeerSpec, ZooKeeperServer};

/// Long enough for a peer that wrongly ignored a holder to have taken the lock.
const SETTLE: Duration = Duration::from_millis(1500);
const PEER_START: Duration = Duration::from_secs(60);

fn peer(
    library: PeerLibrary,
    zk: &ZooKeeperServer,
    lock: &LockSpec,
    kind: PeerKind,
    name: &str,
) -> PeerProcess {
    PeerProcess::spawn(&spec(library, zk, lock, kind, name)).expect("peer starts")
}

fn spec(
    library: PeerLibrary,
    zk: &ZooKeeperServer,
    lock: &LockSpec,
    kind: PeerKind,
    name: &str,
) -> PeerSpec {
    PeerSpec {
        library,
        connect: zk.connect_string(),
        path: lock.path.to_string(),
        kind,
        name: name.to_string(),
    }
}

async fn wait_queue_len(engine: &LockEngine, lock: &LockSpec, len: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while engine.queue(lock).await.unwrap().entries.len() != len {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue never reached {len}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn mutex_interop(library: PeerLibrary) {
    let zk = zookeeper();
    let engine = engine(&zk).await;
    let lock = mutex("/interop/mutex");

    // The peer holds: the engine waits until it releases.
    let mut peer = peer(library, &zk, &lock, PeerKind::Mutex, "peer");
    peer.start_acquire().unwrap();
    assert!(
        peer.wait_acquired(PEER_START).unwrap(),
        "the peer takes the free lock"
    );
    let mut first = enqueue(&engine, &lock, "first", Mode::Exclusive).await;
    assert!(
        is_waiting(&first.state()),
        "the engine sees the peer's node as the holder"
    );
    tokio::time::sleep(SETTLE).await;
    assert!(is_waiting(&first.state()));
    peer.release(PATIENCE).unwrap();
    first.wait_granted(PATIENCE).await.unwrap();

    // The engine holds: the peer waits. A second engine contender queues behind the peer,
    // and the lock passes engine → peer → engine in queue order.
    peer.start_acquire().unwrap();
    wait_queue_len(&engine, &lock, 2).await;
    assert!(
        !peer.wait_acquired(SETTLE).unwrap(),
        "the peer must not take a lock the engine holds"
    );
    let mut second = enqueue(&engine, &lock, "second", Mode::Exclusive).await;
    assert!(matches!(
        second.state(),
        lockkeeper::zookeeper::ContenderState::Waiting { position: 2, .. }
    ));
    engine.dequeue(&lock, &first.id).await.unwrap();
    assert!(
        peer.wait_acquired(PATIENCE).unwrap(),
        "the peer was next in line"
    );
    tokio::time::sleep(SETTLE).await;
    assert!(
        is_waiting(&second.state()),
        "the engine's later contender waits for the peer"
    );
    peer.release(PATIENCE).unwrap();
    second.wait_granted(PATIENCE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_mutex_and_engine_exclude_each_other_in_queue_order() {
    mutex_interop(PeerLibrary::Curator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_lock_and_engine_exclude_each_other_in_queue_order() {
    mutex_interop(PeerLibrary::Kazoo).await;
}

async fn read_write_interop(library: PeerLibrary) {
    let zk = zookeeper();
    let engine = engine(&zk).await;
    let lock = LockSpec::new("/interop/read-write", LockKind::ReadWrite).unwrap();

    let mut peer_reader = peer(library, &zk, &lock, PeerKind::Read, "peer-reader");
    peer_reader.start_acquire().unwrap();
    assert!(peer_reader.wait_acquired(PEER_START).unwrap());
    let shared = enqueue(&engine, &lock, "shared", Mode::Shared).await;
    assert!(is_granted(&shared.state()), "readers of both sides share");
    let mut exclusive = enqueue(&engine, &lock, "exclusive", Mode::Exclusive).await;
    assert!(
        is_waiting(&exclusive.state()),
        "the engine's writer waits for the peer's reader"
    );

    let mut peer_writer = peer(library, &zk, &lock, PeerKind::Write, "peer-writer");
    peer_writer.start_acquire().unwrap();
    wait_queue_len(&engine, &lock, 4).await;
    let mut late_reader = peer(library, &zk, &lock, PeerKind::Read, "late-reader");
    late_reader.start_acquire().unwrap();
    wait_queue_len(&engine, &lock, 5).await;
    assert!(
        !peer_writer.wait_acquired(SETTLE).unwrap(),
        "the peer's writer waits for everyone ahead"
    );
    assert!(
        !late_reader.wait_acquired(Duration::ZERO).unwrap(),
        "a reader behind waiting writers waits"
    );

    peer_reader.release(PATIENCE).unwrap();
    tokio::time::sleep(SETTLE).await;
    assert!(
        is_waiting(&exclusive.state()),
        "the engine's own reader still holds"
    );
    engine.dequeue(&lock, &shared.id).await.unwrap();
    exclusive.wait_granted(PATIENCE).await.unwrap();
    assert!(
        !peer_writer.wait_acquired(SETTLE).unwrap(),
        "the engine's writer excludes the peer's"
    );

    engine.dequeue(&lock, &exclusive.id).await.unwrap();
    assert!(peer_writer.wait_acquired(PATIENCE).unwrap());
    assert!(
        !late_reader.wait_acquired(SETTLE).unwrap(),
        "the peer's writer excludes the late reader"
    );
    let mut blocked = enqueue(&engine, &lock, "blocked-reader", Mode::Shared).await;
    assert!(is_waiting(&blocked.state()), "and the engine's readers");
    peer_writer.release(PATIENCE).unwrap();
    assert!(late_reader.wait_acquired(PATIENCE).unwrap());
    blocked.wait_granted(PATIENCE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_read_write_lock_and_engine_obey_read_write_rules_together() {
    read_write_interop(PeerLibrary::Curator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_read_and_write_locks_and_engine_obey_read_write_rules_together() {
    read_write_interop(PeerLibrary::Kazoo).await;
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The engine's side of a logged run: same log format as the peers.
async fn engine_loop(
    engine: LockEngine,
    lock: LockSpec,
    name: String,
    count: u32,
    hold: Duration,
    log: std::path::PathBuf,
) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    for round in 0..count {
        let mut contender =
            enqueue(&engine, &lock, &format!("{name}-{round}"), Mode::Exclusive).await;
        contender
            .wait_granted(Duration::from_secs(120))
            .await
            .unwrap();
        writeln!(file, "enter {name} {}", now_micros()).unwrap();
        tokio::time::sleep(hold).await;
        writeln!(file, "leave {name} {}", now_micros()).unwrap();
        engine.dequeue(&lock, &contender.id).await.unwrap();
    }
}

async fn logged_run(lock: LockSpec, peers: &[(PeerLibrary, PeerKind)], most_at_once: usize) {
    let zk = zookeeper();
    let dir = tempfile::tempdir().unwrap();
    let rounds = 25;
    let hold = Duration::from_millis(3);
    let mut logs = Vec::new();
    let mut children = Vec::new();
    for (i, (library, kind)) in peers.iter().enumerate() {
        let log = dir.path().join(format!("peer-{i}.log"));
        let name = format!("{library:?}-{i}");
        let spec = spec(*library, &zk, &lock, *kind, &name);
        children.push(spawn_loop(&spec, rounds, hold, &log).unwrap());
        logs.push(log);
    }
    let mut tasks = Vec::new();
    for i in 0..2 {
        let log = dir.path().join(format!("engine-{i}.log"));
        let engine = engine(&zk).await;
        tasks.push(tokio::spawn(engine_loop(
            engine,
            lock.clone(),
            format!("engine-{i}"),
            rounds,
            hold,
            log.clone(),
        )));
        logs.push(log);
    }
    for task in tasks {
        task.await.unwrap();
    }
    for mut child in children {
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "a peer failed: {status}");
    }
    let log = HoldLog::read(&logs.iter().map(|p| p.as_path()).collect::<Vec<&Path>>()).unwrap();
    assert_eq!(
        log.intervals.len(),
        rounds as usize * (peers.len() + 2),
        "every hold was logged"
    );
    assert!(
        log.max_concurrent() <= most_at_once,
        "{} holders at once: {:?}",
        log.max_concurrent(),
        log.overlapping_pairs().first()
    );
}

// Curator and kazoo are each paired with the engine, not with each other: Curator's
// InterProcessMutex sorts kazoo's `__lock__` names by their whole text, so those two
// libraries do not exclude each other on one path (lockkeeper cannot change that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_mutexes_and_engine_never_hold_one_mutex_at_once() {
    let peers = [
        (PeerLibrary::Curator, PeerKind::Mutex),
        (PeerLibrary::Curator, PeerKind::Mutex),
    ];
    logged_run(mutex("/interop/logged-mutex"), &peers, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_locks_and_engine_never_hold_one_mutex_at_once() {
    let peers = [
        (PeerLibrary::Kazoo, PeerKind::Mutex),
        (PeerLibrary::Kazoo, PeerKind::Mutex),
    ];
    logged_run(mutex("/interop/logged-mutex"), &peers, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_semaphore_and_engine_share_the_permits() {
    let lock = LockSpec::new("/interop/logged-semaphore", LockKind::semaphore(2).unwrap()).unwrap();
    let peers = [
        (PeerLibrary::Curator, PeerKind::Semaphore(2)),
        (PeerLibrary::Curator, PeerKind::Semaphore(2)),
    ];
    logged_run(lock, &peers, 2).await;
}
