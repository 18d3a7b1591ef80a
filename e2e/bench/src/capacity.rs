//! The API server's own capacity for what every grant costs: LockClaim status writes per
//! second that a plain client sustains with [`CONCURRENCY`] writes in flight, in the same run
//! and on the same control plane as lockkeeper. A grant needs at least two of them (`Granted`,
//! then `Released`), so no operator that shows its grants on the claims can grant faster than
//! half of this: the limit lockkeeper's throughput is set against.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use lockkeeper::resources::LockClaim;
use serde::Serialize;
use serde_json::json;

use crate::operator::{CONCURRENCY, Operator};

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Capacity {
    /// Through the proxy the controller's requests go through (the limit's basis).
    pub status_writes_per_s: f64,
    /// Straight to kube-apiserver, to show what the proxy costs.
    pub direct_status_writes_per_s: f64,
    /// Through the proxy, written with server-side apply instead of a merge patch.
    pub apply_status_writes_per_s: f64,
    pub concurrency: usize,
}

impl Capacity {
    /// Grants per second no operator can pass: two status writes each.
    pub fn limit_grants_per_s(&self) -> f64 {
        self.status_writes_per_s / 2.0
    }
}

/// Makes `claims` claims in `namespace` (served by no controller) and measures status writes
/// per second over `period`, through the proxy and then straight to the API server.
pub async fn measure(
    op: &Operator,
    namespace: &str,
    claims: usize,
    period: Duration,
) -> Result<Capacity> {
    op.namespace(namespace).await?;
    let names: Vec<String> = (0..claims).map(|n| format!("capacity-{n}")).collect();
    futures::stream::iter(&names)
        .map(|name| {
            op.create::<LockClaim>(
                namespace,
                json!({"apiVersion": "lockkeeper.dev/v1alpha1", "kind": "LockClaim",
                    "metadata": {"name": name},
                    "spec": {"lock": "capacity", "holder": {"kind": "Pod", "name": name}}}),
            )
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let through_proxy = op.client_through_proxy().await?;
    let status_writes_per_s = writes_per_s(
        through_proxy.clone(),
        namespace,
        &names,
        period,
        Write::Merge,
    )
    .await?;
    let direct_status_writes_per_s =
        writes_per_s(op.client.clone(), namespace, &names, period, Write::Merge).await?;
    let apply_status_writes_per_s =
        writes_per_s(through_proxy, namespace, &names, period, Write::Apply).await?;
    Ok(Capacity {
        status_writes_per_s,
        direct_status_writes_per_s,
        apply_status_writes_per_s,
        concurrency: CONCURRENCY,
    })
}

/// How a status write is sent.
#[derive(Clone, Copy)]
enum Write {
    /// A JSON merge patch.
    Merge,
    /// Server-side apply, forced, by one field manager.
    Apply,
}

/// [`CONCURRENCY`] writers, each patching the status of the claims in turn with a new
/// position every time (a write that changes nothing would not reach etcd), for `period`.
async fn writes_per_s(
    client: Client,
    namespace: &str,
    names: &[String],
    period: Duration,
    how: Write,
) -> Result<f64> {
    let api: Api<LockClaim> = Api::namespaced(client, namespace);
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let writer = || async {
        let mut written = 0usize;
        while start.elapsed() < period {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let name = &names[n % names.len()];
            // The pass over the claims: each write of a claim shows a position its last did not.
            let pass = n / names.len();
            let status = json!({"phase": "Waiting", "position": pass % 1000 + 1});
            match how {
                Write::Merge => {
                    api.patch_status(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": status})),
                    )
                    .await?
                }
                Write::Apply => {
                    let patch = json!({"apiVersion": "lockkeeper.dev/v1alpha1",
                        "kind": "LockClaim", "status": status});
                    api.patch_status(
                        name,
                        &PatchParams::apply("capacity").force(),
                        &Patch::Apply(patch),
                    )
                    .await?
                }
            };
            written += 1;
        }
        anyhow::Ok(written)
    };
    let written: usize = futures::future::try_join_all((0..CONCURRENCY).map(|_| writer()))
        .await?
        .into_iter()
        .sum();
    Ok(written as f64 / start.elapsed().as_secs_f64())
}
