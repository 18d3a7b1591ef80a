//! The baselines on the same ZooKeeper: Curator's InterProcessMutex (Java, two JVMs) and the
//! project's lock engine used directly (baseline B), for handoff latency and throughput.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use lockkeeper::lock_rules::{LockKind, Mode};
use lockkeeper::zookeeper::znode_name::ContenderId;
use lockkeeper::zookeeper::{ContenderState, EngineConfig, LockEngine, LockSpec};
use lockkeeper_testkit::peer::spawn_loop;
use lockkeeper_testkit::{HoldLog, PeerKind, PeerLibrary, PeerSpec, ZooKeeperServer};

use crate::operator::lock_specs;
use crate::outside::OutsideHolders;

/// Each contender holds this long (so that the other is queued when it releases).
pub const HOLD: Duration = Duration::from_millis(1);

/// Handoffs (leave → the other's enter) of two Curator JVMs taking turns on one mutex.
pub fn curator_handoffs(
    zk: &ZooKeeperServer,
    dir: &Path,
    handoffs: usize,
    warmup: usize,
) -> Result<Vec<Duration>> {
    let rounds = rounds_per_peer(handoffs + warmup) as u32;
    let logs: Vec<PathBuf> = (0..2)
        .map(|i| dir.join(format!("curator-{i}.log")))
        .collect();
    let mut children = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let spec = PeerSpec {
            library: PeerLibrary::Curator,
            connect: zk.connect_string(),
            path: "/bench/curator".into(),
            kind: PeerKind::Mutex,
            name: format!("curator-{i}"),
        };
        children.push(spawn_loop(&spec, rounds, HOLD, log).context("start a Curator peer")?);
    }
    for mut child in children {
        ensure!(child.wait()?.success(), "a Curator peer failed");
    }
    handoffs_from_logs(&logs, warmup, handoffs)
}

/// The same with two lock engines (two sessions) in this process.
pub async fn engine_handoffs(
    zk: &ZooKeeperServer,
    dir: &Path,
    handoffs: usize,
    warmup: usize,
) -> Result<Vec<Duration>> {
    let rounds = rounds_per_peer(handoffs + warmup);
    let lock = LockSpec::new("/bench/engine", LockKind::Mutex)?;
    let logs: Vec<PathBuf> = (0..2)
        .map(|i| dir.join(format!("engine-{i}.log")))
        .collect();
    let mut tasks = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let engine = LockEngine::connect(EngineConfig::new(zk.connect_string())).await?;
        let (lock, log) = (lock.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let mut file = std::fs::File::create(log)?;
            for _ in 0..rounds {
                let id = ContenderId::random();
                let mut contender = engine.enqueue(&lock, &id, Mode::Exclusive, b"").await?;
                contender.wait_granted(Duration::from_secs(60)).await?;
                writeln!(file, "enter engine-{i} {}", now_micros())?;
                tokio::time::sleep(HOLD).await;
                writeln!(file, "leave engine-{i} {}", now_micros())?;
                engine.dequeue(&lock, &id).await?;
            }
            engine.close().await;
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    handoffs_from_logs(&logs, warmup, handoffs)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

/// Gaps between one holder's leave and the next, different, holder's enter: the first
/// `handoffs` after `warmup`.
/// Lock rounds each of two peers runs to see `handoffs` handoffs: half each if they
/// alternated perfectly, plus a quarter, since a peer sometimes takes the lock again before
/// the other has queued (that round is no handoff).
fn rounds_per_peer(handoffs: usize) -> usize {
    handoffs * 5 / 8 + 10
}

fn handoffs_from_logs(logs: &[PathBuf], warmup: usize, handoffs: usize) -> Result<Vec<Duration>> {
    let log = HoldLog::read(logs)?;
    ensure!(log.overlapping_pairs().is_empty(), "two holders at once");
    let gaps: Vec<Duration> = log
        .intervals
        .windows(2)
        .filter(|pair| pair[0].holder != pair[1].holder)
        .map(|pair| {
            Duration::from_micros(pair[1].enter_micros.saturating_sub(pair[0].leave_micros))
        })
        .skip(warmup)
        .take(handoffs)
        .collect();
    ensure!(
        gaps.len() == handoffs,
        "only {} handoffs after the warm-up (the contenders rarely alternated)",
        gaps.len()
    );
    Ok(gaps)
}

/// Grants per second of one engine (one session, as the controller has) with `locks` ×
/// `per_lock` contenders queued behind outside holders, each dequeued as soon as it is
/// granted. Timed from the outside holders' release to the last grant.
pub async fn engine_throughput(zk: &ZooKeeperServer, locks: usize, per_lock: usize) -> Result<f64> {
    let specs = lock_specs("/bench", "throughput", locks)?;
    let outside = OutsideHolders::hold(zk, &specs).await?;
    let engine = LockEngine::connect(EngineConfig::new(zk.connect_string())).await?;
    let mut events = engine.events().context("the engine's events")?;
    let by_dir: HashMap<String, LockSpec> = specs.iter().map(|s| (s.dir(), s.clone())).collect();
    let total = locks * per_lock;
    let _contenders = futures::stream::iter((0..per_lock).flat_map(|_| specs.clone()))
        .map(|spec| {
            let engine = engine.clone();
            async move {
                engine
                    .enqueue(&spec, &ContenderId::random(), Mode::Exclusive, b"")
                    .await
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    outside.release().await;
    let mut granted = 0;
    let mut last_grant = start;
    while granted < total {
        let event = tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .context("no grant for 60 s")?
            .context("the engine's events ended")?;
        if let ContenderState::Granted { .. } = event.state {
            granted += 1;
            last_grant = Instant::now();
            let engine = engine.clone();
            let spec = by_dir[&event.dir].clone();
            tokio::spawn(async move { engine.dequeue(&spec, &event.id).await });
        }
    }
    engine.close().await;
    Ok(total as f64 / (last_grant - start).as_secs_f64())
}
