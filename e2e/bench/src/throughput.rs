//! Grants per second through lockkeeper: `locks` Mutex locks × `per_lock` claims held by
//! pods, each pod set Succeeded as soon as its claim is seen `Granted`. Timed from the first
//! create to the last grant seen.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use kube::ResourceExt;
use lockkeeper::resources::ClaimPhase;

use crate::operator::Operator;

/// Concurrent API calls of the workload (creates and pod updates).
const CONCURRENCY: usize = 32;

pub async fn lockkeeper_throughput(
    op: &Operator,
    namespace: &str,
    locks: usize,
    per_lock: usize,
) -> Result<f64> {
    futures::stream::iter(0..locks)
        .map(|i| async move { op.mutex(namespace, &format!("lock-{i}")).await })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>>>()?;
    let mut claims = op.watch_claims(namespace);
    let total = locks * per_lock;
    let start = Instant::now();
    let creating = futures::stream::iter(0..total)
        .map(|n| async move {
            op.pod_with_claim(namespace, &format!("c-{n}"), &format!("lock-{}", n % locks))
                .await
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>();
    tokio::pin!(creating);
    let mut created = None;
    let mut granted = HashSet::new();
    let mut releasing = futures::stream::FuturesUnordered::new();
    let mut last_grant = start;
    while granted.len() < total {
        tokio::select! {
            results = &mut creating, if created.is_none() => {
                results.into_iter().collect::<Result<Vec<()>>>()?;
                created = Some(Instant::now());
            }
            Some(result) = releasing.next(), if !releasing.is_empty() => {
                let () = result?;
            }
            event = tokio::time::timeout(Duration::from_secs(60), claims.recv()) => {
                let (seen, claim) = event.context("no claim change for 60 s")?.context("the claim watch ended")?;
                if claim.status.as_ref().map(|s| s.phase) == Some(ClaimPhase::Granted) && granted.insert(claim.name_any()) {
                    last_grant = seen;
                    let name = claim.name_any();
                    releasing.push(async move { op.pod_succeeded(namespace, &name).await });
                }
            }
        }
    }
    Ok(total as f64 / (last_grant - start).as_secs_f64())
}
