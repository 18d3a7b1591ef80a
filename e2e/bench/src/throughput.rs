//! Grants per second through lockkeeper: `locks` Mutex locks, each held by an outside
//! client, with `per_lock` claims (held by pods) queued behind it. Timed from the outside
//! holders' release to the last grant, each pod set Succeeded as soon as its claim is seen
//! `Granted`; queueing the claims (pod and claim made → `Waiting`) is timed apart, and the
//! releases after the last grant are waited for untimed.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use kube::ResourceExt;
use lockkeeper::resources::ClaimPhase;
use lockkeeper_testkit::ZooKeeperServer;

use crate::operator::{Operator, lock_specs};
use crate::outside::OutsideHolders;

const PATIENCE: Duration = Duration::from_secs(60);

pub struct Throughput {
    pub grants_per_s: f64,
    /// From the first create to every claim `Waiting`.
    pub queue_s: f64,
}

pub async fn lockkeeper_throughput(
    op: &Operator,
    zk: &ZooKeeperServer,
    namespace: &str,
    root: &str,
    locks: usize,
    per_lock: usize,
) -> Result<Throughput> {
    let outside = OutsideHolders::hold(zk, &lock_specs(root, namespace, locks)?).await?;
    op.mutexes(namespace, locks).await?;
    let mut claims = op.watch_claims(namespace);
    let total = locks * per_lock;
    let queueing = Instant::now();
    op.pods_with_claims(namespace, 0..total, locks).await?;
    let mut waiting = HashSet::new();
    let mut queued_at = queueing;
    while waiting.len() < total {
        let (seen, claim) = tokio::time::timeout(PATIENCE, claims.recv())
            .await
            .context("no claim change for 60 s while queueing")?
            .context("the claim watch ended")?;
        if claim.status.as_ref().map(|s| s.phase) == Some(ClaimPhase::Waiting)
            && waiting.insert(claim.name_any())
        {
            queued_at = seen;
        }
    }
    let queue_s = (queued_at - queueing).as_secs_f64();

    let start = Instant::now();
    outside.release().await;
    let mut granted = HashSet::new();
    let mut released = HashSet::new();
    let mut releasing = futures::stream::FuturesUnordered::new();
    let mut last_grant = start;
    while granted.len() < total {
        tokio::select! {
            Some(result) = releasing.next(), if !releasing.is_empty() => {
                let () = result?;
            }
            event = tokio::time::timeout(PATIENCE, claims.recv()) => {
                let (seen, claim) = event.context("no claim change for 60 s")?.context("the claim watch ended")?;
                if claim.status.as_ref().map(|s| s.phase) == Some(ClaimPhase::Released) {
                    released.insert(claim.name_any());
                }
                if claim.status.as_ref().map(|s| s.phase) == Some(ClaimPhase::Granted) && granted.insert(claim.name_any()) {
                    last_grant = seen;
                    let name = claim.name_any();
                    releasing.push(async move { op.pod_succeeded(namespace, &name).await });
                }
            }
        }
    }
    let grants_per_s = total as f64 / (last_grant - start).as_secs_f64();
    // Untimed: the last holders end and their claims are released, so that the API writes
    // counted afterwards cover each claim's whole lifecycle.
    while let Some(result) = releasing.next().await {
        result?;
    }
    while released.len() < total {
        let (_, claim) = tokio::time::timeout(PATIENCE, claims.recv())
            .await
            .context("no claim released for 60 s after the last grant")?
            .context("the claim watch ended")?;
        if claim.status.as_ref().map(|s| s.phase) == Some(ClaimPhase::Released) {
            released.insert(claim.name_any());
        }
    }
    Ok(Throughput {
        grants_per_s,
        queue_s,
    })
}
