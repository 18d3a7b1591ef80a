//! Holders outside Kubernetes: one ZooKeeper session (the raw engine, as a Curator or kazoo
//! service would hold a lock) that holds a set of locks, so that claims queue behind them;
//! closing it releases every lock at once.

use std::time::Duration;

use anyhow::{Result, bail};
use futures::StreamExt;
use lockkeeper::lock_rules::Mode;
use lockkeeper::zookeeper::znode_name::ContenderId;
use lockkeeper::zookeeper::{EngineConfig, LockEngine, LockSpec, SessionStatus};
use lockkeeper_testkit::ZooKeeperServer;

use crate::operator::CONCURRENCY;

pub struct OutsideHolders {
    pub engine: LockEngine,
    pub session_id: i64,
}

impl OutsideHolders {
    /// Takes every lock of `specs` (granted before this returns).
    pub async fn hold(zk: &ZooKeeperServer, specs: &[LockSpec]) -> Result<Self> {
        let engine = LockEngine::connect(EngineConfig::new(zk.connect_string())).await?;
        let session_id = match *engine.session_status().borrow() {
            SessionStatus::Connected { session_id } => session_id,
            ref other => bail!("the outside holders' session is {other:?}"),
        };
        futures::stream::iter(specs.to_vec())
            .map(|spec| {
                let engine = engine.clone();
                async move {
                    let mut contender = engine
                        .enqueue(&spec, &ContenderId::random(), Mode::Exclusive, b"outside")
                        .await?;
                    contender.wait_granted(Duration::from_secs(60)).await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<()>>>()?;
        Ok(OutsideHolders { engine, session_id })
    }

    /// Releases every lock at once (closing the session deletes its nodes).
    pub async fn release(self) {
        self.engine.close().await;
    }
}
