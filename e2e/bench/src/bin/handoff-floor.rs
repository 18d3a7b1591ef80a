//! `handoff-floor`: the least work any ZooKeeper-backed operator must do to hand a lock from
//! a holder pod to the next claim (issue 16), so that the benchmark can set lockkeeper's
//! handoff against it. It is built from the libraries lockkeeper uses (kube-runtime's watcher,
//! zookeeper-client) and nothing of lockkeeper's controller:
//!
//! - a LockClaim seen without a status gets an ephemeral-sequential node in its lock's queue
//!   (`<root>/<lock>`); a claim behind others is written `Waiting` and watches the node just
//!   ahead of its own;
//! - a pod seen `Succeeded` has the node of the claim of the same name deleted;
//! - a claim whose node is first in its queue is written `Granted`, with its node's creation
//!   zxid as the fencing token.
//!
//! Nothing else: no validation, no retries, no events, no lock status, no finalizers, no
//! leader election. A failure ends the program with the error on stderr. Its kubeconfig
//! comes from KUBECONFIG.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use lockkeeper::resources::LockClaim;
use serde_json::json;
use zookeeper_client::{Acls, CreateMode};

#[derive(Debug, Parser)]
#[command(about = "The least work of a pod → claim handoff, for the benchmark's floor")]
struct Args {
    /// ZooKeeper connect string.
    #[arg(long)]
    zookeeper: String,
    /// ZooKeeper path under which each lock's queue is made.
    #[arg(long)]
    root: String,
    /// The namespace whose claims and pods are watched.
    #[arg(long)]
    namespace: String,
}

/// The node of each claim queued so far, by claim name (also the holder pod's name).
type Nodes = Arc<Mutex<HashMap<String, String>>>;

enum Seen {
    Claim(Box<LockClaim>),
    Pod(Box<Pod>),
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let kube = Client::try_default().await.context("a kubeconfig")?;
    let zk = zookeeper_client::Client::connect(&args.zookeeper)
        .await
        .with_context(|| format!("ZooKeeper at {}", args.zookeeper))?;
    let directory = CreateMode::Persistent.with_acls(Acls::anyone_all());
    zk.mkdir(&args.root, &directory).await?;
    let claims: Api<LockClaim> = Api::namespaced(kube.clone(), &args.namespace);
    let pods: Api<Pod> = Api::namespaced(kube, &args.namespace);
    let claim_changes = watcher(claims.clone(), watcher::Config::default())
        .applied_objects()
        .map_ok(|claim| Seen::Claim(Box::new(claim)))
        .boxed();
    let pod_changes = watcher(pods, watcher::Config::default())
        .applied_objects()
        .map_ok(|pod| Seen::Pod(Box::new(pod)))
        .boxed();
    let mut changes = futures::stream::select(claim_changes, pod_changes);
    let nodes: Nodes = Arc::default();
    let (failed, mut failure) = tokio::sync::mpsc::unbounded_channel::<anyhow::Error>();
    loop {
        let seen = tokio::select! {
            seen = changes.try_next() => seen?.context("the watches ended")?,
            Some(error) = failure.recv() => return Err(error),
        };
        match seen {
            Seen::Claim(claim) if claim.status.is_none() => {
                let name = claim.name_any();
                if nodes.lock().expect("nodes").contains_key(&name) {
                    continue;
                }
                nodes
                    .lock()
                    .expect("nodes")
                    .insert(name.clone(), String::new());
                let queue = format!("{}/{}", args.root, claim.spec.lock);
                let (zk, claims, nodes, failed) =
                    (zk.clone(), claims.clone(), nodes.clone(), failed.clone());
                tokio::spawn(async move {
                    if let Err(error) = contend(&zk, &claims, &nodes, &queue, &name).await {
                        let _ = failed.send(error.context(format!("claim {name}")));
                    }
                });
            }
            Seen::Claim(_) => {}
            Seen::Pod(pod) => {
                let ended =
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded");
                if !ended {
                    continue;
                }
                let node = nodes.lock().expect("nodes").remove(&pod.name_any());
                if let Some(node) = node.filter(|node| !node.is_empty()) {
                    let (zk, failed) = (zk.clone(), failed.clone());
                    tokio::spawn(async move {
                        if let Err(error) = zk.delete(&node, None).await {
                            let _ = failed.send(anyhow::Error::from(error).context(node));
                        }
                    });
                }
            }
        }
    }
}

/// Queues claim `name` in `queue` and writes it `Waiting` (when others are ahead), then
/// `Granted` once its node is first.
async fn contend(
    zk: &zookeeper_client::Client,
    claims: &Api<LockClaim>,
    nodes: &Nodes,
    queue: &str,
    name: &str,
) -> Result<()> {
    zk.mkdir(queue, &CreateMode::Persistent.with_acls(Acls::anyone_all()))
        .await?;
    let contender = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    let (stat, sequence) = zk
        .create(&format!("{queue}/n-"), name.as_bytes(), &contender)
        .await?;
    let own = format!("n-{sequence}");
    let path = format!("{queue}/{own}");
    nodes
        .lock()
        .expect("nodes")
        .insert(name.to_string(), path.clone());
    let mut written_waiting = false;
    loop {
        let mut children = zk.list_children(queue).await?;
        // Every node is `n-` and a 10-digit sequence: the names sort in queue order.
        children.sort();
        let place = children
            .iter()
            .position(|child| *child == own)
            .context("the claim's node is gone")?;
        if place == 0 {
            let status = json!({"phase": "Granted", "fencingToken": stat.czxid, "znode": path});
            return write_status(claims, name, status).await;
        }
        if !written_waiting {
            let status = json!({"phase": "Waiting", "position": place,
                "sequence": sequence.into_i64(), "znode": path});
            write_status(claims, name, status).await?;
            written_waiting = true;
        }
        let ahead = format!("{queue}/{}", children[place - 1]);
        let (found, watcher) = zk.check_and_watch_stat(&ahead).await?;
        if found.is_some() {
            watcher.changed().await;
        }
    }
}

async fn write_status(
    claims: &Api<LockClaim>,
    name: &str,
    status: serde_json::Value,
) -> Result<()> {
    claims
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
    Ok(())
}
