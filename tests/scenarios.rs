//! The operator end to end (issue 4's scenarios): real ZooKeeper, memkube (or the cluster
//! `KUBECONFIG` points at), `lockkeeper controller` in-process. Each test asserts what a
//! user sees through the API.

mod cluster;

use cluster::Cluster;
use lockkeeper::resources::ClaimPhase;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_jobs_run_one_at_a_time_in_claim_order() {
    let cluster = Cluster::start().await;
    cluster.lock("migrations", json!({"type": "Mutex"})).await;
    for i in 1..=3 {
        cluster.suspended_job(&format!("migrate-{i}")).await;
        cluster
            .claim(&format!("migrate-{i}"), json!({"lock": "migrations", "holder": {"kind": "Job", "name": format!("migrate-{i}")}}))
            .await;
        // Claim order is creation order: let each claim queue before the next is made.
        cluster
            .eventually("the claim is queued", || async {
                matches!(
                    cluster.phase(&format!("migrate-{i}")).await,
                    ClaimPhase::Waiting | ClaimPhase::Granted
                )
            })
            .await;
    }
    for i in 1..=3 {
        let name = format!("migrate-{i}");
        cluster.wait_phase(&name, ClaimPhase::Granted).await;
        cluster
            .eventually(&format!("only {name} runs"), || async {
                cluster.running_jobs().await == vec![name.clone()]
            })
            .await;
        for later in i + 1..=3 {
            let status = cluster.claim_status(&format!("migrate-{later}")).await;
            assert_eq!(status.phase, ClaimPhase::Waiting);
            assert_eq!(
                status.position,
                Some((later - i) as u32),
                "contenders ahead, in claim order"
            );
        }
        cluster.complete_job(&name).await;
        cluster.wait_phase(&name, ClaimPhase::Released).await;
    }
    cluster.stop().await;
}
