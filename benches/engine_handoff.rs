//! Handoff latency on one contended mutex — from "holder releases" to "next holder knows it
//! holds" — of Apache Curator's InterProcessMutex and of the lockkeeper engine, measured in
//! one run on the same ZooKeeper. Run with `make bench-engine`. Prints figures; asserts none.
//!
//! Each system runs two contenders in separate sessions (Curator: two JVMs) that take the
//! lock in turn, holding it for HOLD. Every contender logs "enter" right after it learns it
//! holds and "leave" right before it releases; a handoff is the gap from one contender's
//! leave to the other's enter.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockkeeper::lock_rules::{LockKind, Mode};
use lockkeeper::znode_name::ContenderId;
use lockkeeper::zookeeper::{EngineConfig, LockEngine, LockSpec};
use lockkeeper_testkit::peer::spawn_loop;
use lockkeeper_testkit::{HoldLog, PeerKind, PeerLibrary, PeerSpec, ZooKeeperServer};

const ROUNDS_PER_CONTENDER: u32 = 600;
const HOLD: Duration = Duration::from_millis(1);
/// The first handoffs of each system (JVM warm-up, first connections) are left out.
const WARMUP_HANDOFFS: usize = 100;

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let zk = ZooKeeperServer::start().expect("ZooKeeper starts (make deps installs it)");
    let dir = tempfile::tempdir().expect("temp dir");

    let curator = curator_handoffs(&zk, dir.path());
    let engine = runtime.block_on(engine_handoffs(&zk, dir.path()));

    println!(
        "handoff latency on one mutex, {} handoffs each after {WARMUP_HANDOFFS} warm-up, hold {HOLD:?}",
        curator.len().min(engine.len())
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "system", "p50 ms", "p99 ms", "max ms"
    );
    let curator_stats = Stats::of(&curator);
    let engine_stats = Stats::of(&engine);
    curator_stats.print("Curator InterProcessMutex (Java)");
    engine_stats.print("lockkeeper engine (Rust)");
    println!(
        "ratio engine / Curator: p50 {:.2}, p99 {:.2}, max {:.2}",
        engine_stats.p50 / curator_stats.p50,
        engine_stats.p99 / curator_stats.p99,
        engine_stats.max / curator_stats.max
    );
}

fn curator_handoffs(zk: &ZooKeeperServer, dir: &Path) -> Vec<u64> {
    let logs: Vec<PathBuf> = (0..2)
        .map(|i| dir.join(format!("curator-{i}.log")))
        .collect();
    let children: Vec<_> = logs
        .iter()
        .enumerate()
        .map(|(i, log)| {
            let spec = PeerSpec {
                library: PeerLibrary::Curator,
                connect: zk.connect_string(),
                path: "/bench/curator".into(),
                kind: PeerKind::Mutex,
                name: format!("curator-{i}"),
            };
            spawn_loop(&spec, ROUNDS_PER_CONTENDER, HOLD, log).expect("Curator peer starts")
        })
        .collect();
    for mut child in children {
        assert!(
            child.wait().expect("peer runs").success(),
            "a Curator peer failed"
        );
    }
    handoffs(&logs)
}

async fn engine_handoffs(zk: &ZooKeeperServer, dir: &Path) -> Vec<u64> {
    let lock = LockSpec::new("/bench/engine", LockKind::Mutex).expect("lock path");
    let logs: Vec<PathBuf> = (0..2)
        .map(|i| dir.join(format!("engine-{i}.log")))
        .collect();
    let mut tasks = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let engine = LockEngine::connect(EngineConfig::new(zk.connect_string()))
            .await
            .expect("engine connects");
        tasks.push(tokio::spawn(engine_loop(
            engine,
            lock.clone(),
            format!("engine-{i}"),
            log.clone(),
        )));
    }
    for task in tasks {
        task.await.expect("engine loop");
    }
    handoffs(&logs)
}

async fn engine_loop(engine: LockEngine, lock: LockSpec, name: String, log: PathBuf) {
    let mut file = std::fs::File::create(log).expect("log file");
    for _ in 0..ROUNDS_PER_CONTENDER {
        let id = ContenderId::random();
        let mut contender = engine
            .enqueue(&lock, &id, Mode::Exclusive, b"")
            .await
            .expect("enqueue");
        contender
            .wait_granted(Duration::from_secs(60))
            .await
            .expect("granted");
        writeln!(file, "enter {name} {}", now_micros()).expect("log");
        tokio::time::sleep(HOLD).await;
        writeln!(file, "leave {name} {}", now_micros()).expect("log");
        engine.dequeue(&lock, &id).await.expect("dequeue");
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

/// Gaps between one holder's leave and the next, different, holder's enter.
fn handoffs(logs: &[PathBuf]) -> Vec<u64> {
    let log = HoldLog::read(logs).expect("hold logs");
    assert!(log.overlapping_pairs().is_empty(), "two holders at once");
    log.intervals
        .windows(2)
        .filter(|pair| pair[0].holder != pair[1].holder)
        .map(|pair| pair[1].enter_micros - pair[0].leave_micros)
        .skip(WARMUP_HANDOFFS)
        .collect()
}

struct Stats {
    p50: f64,
    p99: f64,
    max: f64,
    count: usize,
}

impl Stats {
    fn of(gaps: &[u64]) -> Stats {
        let mut sorted = gaps.to_vec();
        sorted.sort_unstable();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        Stats {
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
            count: sorted.len(),
        }
    }

    fn print(&self, name: &str) {
        println!(
            "{name:<34} {:>9.3} {:>9.3} {:>9.3}   ({} handoffs)",
            self.p50, self.p99, self.max, self.count
        );
    }
}
