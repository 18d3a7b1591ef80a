//! Leader election in ZooKeeper: the replicas queue on `<root>/_leader` (a mutex; no
//! namespace can be named `_leader`) and the holder drives grants. Leadership lives in the
//! same session as the claims' znodes, so a replica that lost its session has lost both at
//! once: two replicas can never both drive a lock, which a Kubernetes Lease cannot promise
//! (its holder may keep a ZooKeeper session, and nodes, after its Lease has passed on).

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::lock_rules::{LockKind, Mode};
use crate::zookeeper::znode_name::ContenderId;
use crate::zookeeper::{Contender, ContenderState, EngineError, LockEngine, LockSpec};

/// How a campaign that cannot queue yet (ZooKeeper away, a new session being opened) tries
/// again: from 200 ms, exponentially later, at most 5 s apart.
fn campaign_retries() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

pub struct Leadership {
    contender: Contender,
}

impl Leadership {
    /// Waits until this replica leads. `identity` (the pod name) is stored in the node.
    pub async fn campaign(
        engine: &LockEngine,
        root: &str,
        id: &ContenderId,
        identity: &str,
    ) -> Result<Self, EngineError> {
        let lock = election_lock(root)?;
        loop {
            let mut contender =
                (|| engine.enqueue(&lock, id, Mode::Exclusive, identity.as_bytes()))
                    .retry(campaign_retries())
                    .when(EngineError::is_transient)
                    .notify(
                        |err, wait| tracing::warn!(%err, ?wait, "cannot campaign yet; retrying"),
                    )
                    .await?;
            loop {
                match contender.state() {
                    ContenderState::Granted { .. } => return Ok(Leadership { contender }),
                    ContenderState::Lost(reason) => {
                        tracing::warn!(%reason, "lost the election queue; queueing again");
                        break;
                    }
                    _ => {
                        contender.changed().await;
                    }
                }
            }
        }
    }

    /// Resolves when leadership ends (the session was lost).
    pub async fn lost(&mut self) {
        while !self.contender.state().is_final() {
            self.contender.changed().await;
        }
    }
}

fn election_lock(root: &str) -> Result<LockSpec, EngineError> {
    LockSpec::new(
        &format!("{}/_leader", root.trim_end_matches('/')),
        LockKind::Mutex,
    )
}
