//! Helpers shared by the engine's integration tests: each test starts its own ZooKeeper.
#![allow(dead_code)]

use std::time::Duration;

use lockkeeper::lock_rules::{LockKind, Mode};
use lockkeeper::zookeeper::znode_name::ContenderId;
use lockkeeper::zookeeper::{Contender, ContenderState, EngineConfig, LockEngine, LockSpec};
use lockkeeper_testkit::ZooKeeperServer;

pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn zookeeper() -> ZooKeeperServer {
    ZooKeeperServer::start().expect("start ZooKeeper (make deps installs it)")
}

pub fn config(zk: &ZooKeeperServer) -> EngineConfig {
    let mut config = EngineConfig::new(zk.connect_string());
    config.session_timeout = Duration::from_secs(4);
    config
}

pub async fn engine(zk: &ZooKeeperServer) -> LockEngine {
    LockEngine::connect(config(zk))
        .await
        .expect("engine connects")
}

pub fn mutex(path: &str) -> LockSpec {
    LockSpec::new(path, LockKind::Mutex).unwrap()
}

pub fn id(name: &str) -> ContenderId {
    ContenderId::new(name).unwrap()
}

pub async fn enqueue(engine: &LockEngine, lock: &LockSpec, name: &str, mode: Mode) -> Contender {
    engine
        .enqueue(lock, &id(name), mode, name.as_bytes())
        .await
        .expect("enqueue")
}

/// Waits until the contender's state satisfies `done`, failing the test after PATIENCE.
pub async fn wait_for(
    contender: &mut Contender,
    what: &str,
    done: impl Fn(&ContenderState) -> bool,
) -> ContenderState {
    let result = tokio::time::timeout(PATIENCE, async {
        loop {
            let state = contender.state();
            if done(&state) {
                return state;
            }
            contender.changed().await;
        }
    })
    .await;
    result.unwrap_or_else(|_| {
        panic!(
            "{} never became {what}; it is {:?}",
            contender.id,
            contender.state()
        )
    })
}

pub fn is_granted(state: &ContenderState) -> bool {
    matches!(state, ContenderState::Granted { .. })
}

pub fn is_waiting(state: &ContenderState) -> bool {
    matches!(state, ContenderState::Waiting { .. })
}

/// Polls `check` (a blocking probe such as a ZooKeeper listing) until it holds.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
