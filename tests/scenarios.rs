//! The operator end to end (issue 4's scenarios): real ZooKeeper, the real control plane
//! (or the cluster `KUBECONFIG` points at), `lockkeeper controller` in-process. Each test
//! asserts what a user sees through the API. The scenarios that break the controller's API
//! traffic put a fault proxy between it and the API server.

mod cluster;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster::Cluster;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use lockkeeper::resources::ClaimPhase;
use lockkeeper::resources::{DistributedLock, GrantOutcome, LockClaim};
use lockkeeper_testkit::api_fault_proxy::ErrorRule;
use lockkeeper_testkit::{
    ControlPlane, ControlPlaneOptions, KubernetesVersion, PeerKind, PeerLibrary, PeerProcess,
    PeerSpec, ZooKeeperServer,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_jobs_run_one_at_a_time_in_claim_order() {
    let cluster = Cluster::start().await;
    cluster.lock("migrations", json!({"type": "Mutex"})).await;
    for i in 1..=3 {
        cluster
            .suspended_job(&format!("migrate-{i}"), &["migrations"])
            .await;
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
            let waiter = format!("migrate-{later}");
            // A waiter's new place is written at most once a second (POSITION_REFRESH).
            cluster
                .eventually(
                    &format!("{waiter} waits with {} ahead, in claim order", later - i),
                    || async {
                        let status = cluster.claim_status(&waiter).await;
                        assert_eq!(status.phase, ClaimPhase::Waiting);
                        status.position == Some((later - i) as u32)
                    },
                )
                .await;
        }
        cluster.complete_job(&name).await;
        cluster.wait_phase(&name, ClaimPhase::Released).await;
    }
    cluster.stop().await;
}

/// Two suspended Jobs that each need locks `a` and `b` (and declare both,
/// `lockkeeper.dev/locks`), their claims made in opposite orders and interleaved in four ways,
/// after the Jobs or before them: each Job is resumed only once it holds both locks, and
/// neither waits forever for the other (a holder's claims are queued in lock order, each once
/// those before it are granted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_needing_the_same_two_locks_start_only_with_both_and_never_deadlock() {
    let cluster = Cluster::start().await;
    for lock in ["a", "b"] {
        cluster.lock(lock, json!({"type": "Mutex"})).await;
    }
    // (job, lock) in the order the claims are made.
    let orders = [
        [("x", "a"), ("y", "b"), ("x", "b"), ("y", "a")],
        [("y", "b"), ("x", "a"), ("y", "a"), ("x", "b")],
        [("x", "b"), ("x", "a"), ("y", "a"), ("y", "b")],
        [("y", "b"), ("y", "a"), ("x", "b"), ("x", "a")],
    ];
    for (round, order) in orders.iter().enumerate() {
        let job = |j: &str| format!("{j}-{round}");
        let jobs_first = round % 2 == 0;
        let make_jobs = || async {
            for j in ["x", "y"] {
                let annotations = json!({"lockkeeper.dev/locks": "a, b"});
                cluster
                    .create::<Job>(json!({
                        "apiVersion": "batch/v1", "kind": "Job",
                        "metadata": {"name": job(j), "annotations": annotations},
                        "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never",
                            "containers": [{"name": "main", "image": "busybox"}]}}},
                    }))
                    .await;
            }
        };
        if jobs_first {
            make_jobs().await;
        }
        for (j, lock) in order {
            let holder = job(j);
            cluster
                .claim(
                    &format!("{holder}-{lock}"),
                    json!({"lock": lock, "holder": {"kind": "Job", "name": holder}}),
                )
                .await;
        }
        if !jobs_first {
            make_jobs().await;
        }
        two_jobs_run_one_at_a_time_each_with_a_and_b(&cluster, &format!("round {round}")).await;
    }
    cluster.stop().await;
}

/// Waits while two Jobs, each holding claims `<job>-a` and `<job>-b`, run one after the other:
/// never both at once, each only with both locks; completes each (playing the kubelet).
async fn two_jobs_run_one_at_a_time_each_with_a_and_b(cluster: &Cluster, what: &str) {
    let mut completed = Vec::new();
    while completed.len() < 2 {
        cluster
            .eventually(&format!("{what}: one more Job runs"), || async {
                !cluster.running_jobs().await.is_empty()
            })
            .await;
        let running = cluster.running_jobs().await;
        assert_eq!(
            running.len(),
            1,
            "{what}: both Jobs run at once: {running:?}"
        );
        let holder = running[0].clone();
        for lock in ["a", "b"] {
            assert_eq!(
                cluster.phase(&format!("{holder}-{lock}")).await,
                ClaimPhase::Granted,
                "{what}: {holder} runs without lock {lock}"
            );
        }
        cluster.complete_job(&holder).await;
        for lock in ["a", "b"] {
            cluster
                .wait_phase(&format!("{holder}-{lock}"), ClaimPhase::Released)
                .await;
        }
        completed.push(holder);
    }
}

/// Issue 24, holes 12 and 13, as seen on the sandbox: two suspended Jobs that do not declare
/// their locks, each applied before its claims on `a` and `b` (in opposite orders, as `kubectl
/// apply -f` of a file with the Job on top does), both ran, each holding one lock. Now neither
/// is resumed: their claims are `Invalid` and say which annotation to add; once it is added,
/// each Job runs alone with both locks. A Job that Kueue manages is never resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_jobs_start_only_when_they_declare_their_locks_and_no_other_queue_manages_them() {
    let cluster = Cluster::start().await;
    for lock in ["a", "b", "gpu"] {
        cluster.lock(lock, json!({})).await;
    }
    let job = |name: &str, metadata: serde_json::Value| {
        let mut metadata = metadata;
        metadata["name"] = json!(name);
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata,
            "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "main", "image": "busybox"}]}}}})
    };
    for (name, locks) in [("jx", ["a", "b"]), ("jy", ["b", "a"])] {
        cluster.create::<Job>(job(name, json!({}))).await;
        for lock in locks {
            cluster
                .claim(
                    &format!("{name}-{lock}"),
                    json!({"lock": lock, "holder": {"kind": "Job", "name": name}}),
                )
                .await;
        }
    }
    let queued = json!({"labels": {"kueue.x-k8s.io/queue-name": "research"},
        "annotations": {"lockkeeper.dev/locks": "gpu"}});
    cluster.create::<Job>(job("train", queued)).await;
    cluster
        .claim(
            "train",
            json!({"lock": "gpu", "holder": {"kind": "Job", "name": "train"}}),
        )
        .await;
    for claim in ["jx-a", "jx-b", "jy-a", "jy-b", "train"] {
        cluster.wait_phase(claim, ClaimPhase::Invalid).await;
    }
    let undeclared = cluster.claim_status("jx-a").await;
    assert!(
        undeclared.message.as_deref().is_some_and(
            |m| m.contains("does not declare") && m.contains("lockkeeper.dev/locks: \"a\"")
        ),
        "{undeclared:?}"
    );
    let kueue = cluster.claim_status("train").await;
    assert!(
        kueue
            .message
            .as_deref()
            .is_some_and(|m| m.contains("managed by Kueue")),
        "{kueue:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        cluster.running_jobs().await.is_empty(),
        "a Job was resumed: {:?}",
        cluster.running_jobs().await
    );

    let declare = json!({"metadata": {"annotations": {"lockkeeper.dev/locks": "a,b"}}});
    for name in ["jx", "jy"] {
        cluster
            .api::<Job>()
            .patch(name, &PatchParams::default(), &Patch::Merge(&declare))
            .await
            .unwrap();
    }
    two_jobs_run_one_at_a_time_each_with_a_and_b(&cluster, "declared").await;
    assert_eq!(cluster.phase("train").await, ClaimPhase::Invalid);
    let train = cluster.api::<Job>().get("train").await.unwrap();
    assert_eq!(
        train.spec.unwrap().suspend,
        Some(true),
        "Kueue's Job was resumed"
    );
    cluster.stop().await;
}

/// A lock keeps its last grants in `status.history`, each with its holder, token, times and
/// how it ended, after the claims are gone; `historyLimit` bounds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locks_history_keeps_its_last_grants_and_how_each_ended() {
    let cluster = Cluster::start().await;
    cluster
        .lock("audited", json!({"type": "Mutex", "historyLimit": 4}))
        .await;
    let mut tokens = Vec::new();
    // Five holders in turn, each ending another way; the last still holds.
    for (name, end) in [
        ("first", "pod succeeds"),
        ("second", "pod fails"),
        ("third", "claim deleted"),
        ("fourth", "pod deleted"),
        ("fifth", "holds"),
    ] {
        cluster.pod_with_claim(name, "audited").await;
        cluster.wait_phase(name, ClaimPhase::Granted).await;
        tokens.push(cluster.claim_status(name).await.fencing_token.unwrap());
        let claims = cluster.api::<LockClaim>();
        match end {
            "pod succeeds" => cluster.set_pod_phase(name, "Succeeded").await,
            "pod fails" => cluster.set_pod_phase(name, "Failed").await,
            "claim deleted" => {
                claims.delete(name, &Default::default()).await.unwrap();
            }
            "pod deleted" => {
                cluster
                    .api::<Pod>()
                    .delete(name, &Default::default())
                    .await
                    .unwrap();
            }
            _ => {}
        }
        if end == "pod succeeds" || end == "pod fails" {
            cluster.wait_phase(name, ClaimPhase::Released).await;
        }
    }
    let locks = cluster.api::<DistributedLock>();
    let history = cluster
        .poll(
            Duration::from_secs(30),
            "the history shows how the four ended grants ended",
            || async {
                let lock = locks.get("audited").await.unwrap();
                lock.status.unwrap_or_default().history
            },
            |history| history.len() == 4 && history[..3].iter().all(|r| r.outcome.is_some()),
        )
        .await;
    let seen: Vec<(&str, i64, Option<GrantOutcome>)> = history
        .iter()
        .map(|r| (r.claim.as_str(), r.fencing_token, r.outcome))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("second", tokens[1], Some(GrantOutcome::Failed)),
            ("third", tokens[2], Some(GrantOutcome::ClaimDeleted)),
            ("fourth", tokens[3], Some(GrantOutcome::HolderDeleted)),
            ("fifth", tokens[4], None),
        ],
        "the last 4 grants, oldest first; the first one dropped"
    );
    for record in &history {
        assert_eq!(record.holder.name, record.claim);
        let granted = record.granted_at.as_ref().expect("grantedAt").0;
        match &record.released_at {
            Some(released) => assert!(released.0 >= granted, "{record:?}"),
            None => assert!(record.outcome.is_none(), "{record:?}"),
        }
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_claims_hold_together_and_an_exclusive_claim_blocks_later_readers() {
    let cluster = Cluster::start().await;
    cluster.lock("catalog", json!({"type": "ReadWrite"})).await;
    let claim = |name: &str, mode: &str| json!({"lock": "catalog", "mode": mode, "holder": {"kind": "Pod", "name": name}});
    for reader in ["reader-1", "reader-2"] {
        cluster.pod(reader).await;
        cluster.claim(reader, claim(reader, "Shared")).await;
        cluster.wait_phase(reader, ClaimPhase::Granted).await;
    }
    cluster.pod("writer").await;
    cluster.claim("writer", claim("writer", "Exclusive")).await;
    cluster.wait_phase("writer", ClaimPhase::Waiting).await;
    cluster.pod("reader-3").await;
    cluster.claim("reader-3", claim("reader-3", "Shared")).await;
    cluster.wait_phase("reader-3", ClaimPhase::Waiting).await;
    assert_eq!(
        cluster.claim_status("reader-3").await.position,
        Some(3),
        "behind the writer: no writer starvation"
    );

    for reader in ["reader-1", "reader-2"] {
        cluster.set_pod_phase(reader, "Succeeded").await;
    }
    cluster.wait_phase("writer", ClaimPhase::Granted).await;
    assert_eq!(cluster.phase("reader-3").await, ClaimPhase::Waiting);
    cluster.set_pod_phase("writer", "Failed").await;
    cluster.wait_phase("reader-3", ClaimPhase::Granted).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_never_has_more_holders_than_permits() {
    let cluster = Cluster::start().await;
    cluster
        .lock("pool", json!({"type": "Semaphore", "permits": 2}))
        .await;
    for i in 1..=4 {
        let name = format!("worker-{i}");
        cluster.pod_with_claim(&name, "pool").await;
    }
    let holders = || async {
        let mut held = Vec::new();
        for i in 1..=4 {
            if cluster.phase(&format!("worker-{i}")).await == ClaimPhase::Granted {
                held.push(i);
            }
        }
        held
    };
    cluster
        .eventually("two workers hold the semaphore", || async {
            holders().await.len() == 2
        })
        .await;
    let lock_holders = || async {
        let lock = cluster
            .api::<lockkeeper::resources::DistributedLock>()
            .get("pool")
            .await
            .unwrap();
        let status = lock.status.unwrap_or_default();
        (status.holders.len(), status.waiting)
    };
    cluster
        .eventually(
            "the lock's status lists both holders and two waiters",
            || async { lock_holders().await == (2, 2) },
        )
        .await;
    let (ok, table, err) = cluster.kubectl(&["get", "locks"], "");
    assert!(ok, "{err}");
    let held = holders().await;
    let row = table.lines().find(|l| l.starts_with("pool")).expect(&table);
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(columns[1], "Semaphore", "{table}");
    let shown: Vec<&str> = columns[2].split(',').collect();
    assert_eq!(shown.len(), 2, "both holders shown: {table}");
    for i in held {
        assert!(shown.contains(&format!("worker-{i}").as_str()), "{table}");
    }
    assert_eq!(columns[3], "2", "two waiting: {table}");
    // Each release lets exactly one waiter in: two holders, never three.
    for _ in 0..2 {
        let first = holders().await[0];
        cluster
            .set_pod_phase(&format!("worker-{first}"), "Succeeded")
            .await;
        cluster
            .wait_phase(&format!("worker-{first}"), ClaimPhase::Released)
            .await;
        cluster
            .eventually("a waiter takes the freed permit", || async {
                let held = holders().await;
                assert!(held.len() <= 2, "more holders than permits: {held:?}");
                held.len() == 2 && !held.contains(&first)
            })
            .await;
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_deleted_while_waiting_leaves_the_queue() {
    let cluster = Cluster::start().await;
    cluster.lock("report", json!({})).await;
    for name in ["first", "second", "third"] {
        cluster.pod_with_claim(name, "report").await;
        cluster
            .eventually("queued", || async {
                cluster.phase(name).await != ClaimPhase::Pending
            })
            .await;
    }
    cluster.wait_phase("third", ClaimPhase::Waiting).await;
    assert_eq!(cluster.claim_status("third").await.position, Some(2));
    cluster
        .api::<lockkeeper::resources::LockClaim>()
        .delete("second", &Default::default())
        .await
        .unwrap();
    cluster
        .eventually("the deleted claim is gone", || async {
            cluster
                .api::<lockkeeper::resources::LockClaim>()
                .get_opt("second")
                .await
                .unwrap()
                .is_none()
        })
        .await;
    cluster
        .eventually("the claim behind moved up", || async {
            cluster.claim_status("third").await.position == Some(1)
        })
        .await;
    cluster.set_pod_phase("first", "Succeeded").await;
    cluster.wait_phase("third", ClaimPhase::Granted).await;
    cluster.stop().await;
}

/// Lock `db`, held by claim `a`, with claim `b` waiting: the lock's ZooKeeper path, and a
/// client of the test's ZooKeeper, where both contenders are queued.
async fn a_holder_and_a_waiter(cluster: &Cluster) -> (String, zookeeper_client::Client) {
    cluster.lock("db", json!({})).await;
    cluster.pod_with_claim("a", "db").await;
    cluster.wait_phase("a", ClaimPhase::Granted).await;
    cluster.pod_with_claim("b", "db").await;
    cluster.wait_phase("b", ClaimPhase::Waiting).await;
    let path = cluster.zookeeper_path("db").await;
    let zk = zookeeper_client::Client::connect(&cluster.zk.connect_string())
        .await
        .expect("connect to ZooKeeper");
    assert_eq!(zk.list_children(&path).await.unwrap().len(), 2);
    let znode = cluster.claim_status("a").await.znode;
    assert!(
        znode
            .as_deref()
            .is_some_and(|znode| znode.starts_with(&format!("{path}/"))),
        "the granted claim shows its znode: {znode:?} in {path}"
    );
    (path, zk)
}

/// Deleting a namespace deletes its claims at once (they carry no finalizer), even though the
/// controller's RoleBinding, deleted with the namespace, no longer lets it write them; the
/// controller takes their contenders out of ZooKeeper as the claims go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_namespace_goes_at_once_and_its_claims_leave_zookeeper() {
    let cluster = Cluster::start().await;
    let (path, zk) = a_holder_and_a_waiter(&cluster).await;
    let namespaces: kube::Api<Namespace> = kube::Api::all(cluster.client.clone());
    namespaces
        .delete(&cluster.namespace, &Default::default())
        .await
        .expect("delete the namespace");
    cluster
        .eventually("the namespace is gone", || async {
            namespaces
                .get_opt(&cluster.namespace)
                .await
                .unwrap()
                .is_none()
        })
        .await;
    cluster
        .eventually("the claims' contenders left ZooKeeper", || async {
            // The lock's directory is a container node: ZooKeeper removes it once empty.
            zk.list_children(&path).await.unwrap_or_default().is_empty()
        })
        .await;
    cluster.stop().await;
}

/// Claims made while lockkeeper 0.1 ran carry its finalizer; the controller takes it off, so
/// such a claim can still be deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_finalizer_of_lockkeeper_0_1_comes_off_claims() {
    let cluster = Cluster::start().await;
    cluster.lock("db", json!({})).await;
    cluster.pod("old").await;
    cluster
        .create::<LockClaim>(json!({
            "apiVersion": "lockkeeper.dev/v1alpha1", "kind": "LockClaim",
            "metadata": {"name": "old", "finalizers": ["lockkeeper.dev/release"]},
            "spec": {"lock": "db", "holder": {"kind": "Pod", "name": "old"}},
        }))
        .await;
    cluster.wait_phase("old", ClaimPhase::Granted).await;
    let claims = cluster.api::<LockClaim>();
    cluster
        .eventually("the old finalizer is off", || async {
            claims
                .get("old")
                .await
                .unwrap()
                .metadata
                .finalizers
                .is_none()
        })
        .await;
    claims.delete("old", &Default::default()).await.unwrap();
    assert!(
        claims.get_opt("old").await.unwrap().is_none(),
        "a claim without finalizers goes at once"
    );
    cluster.pod_with_claim("next", "db").await;
    cluster.wait_phase("next", ClaimPhase::Granted).await;
    cluster.stop().await;
}

/// The controller's pod cache can lag behind the API server (a slow or broken watch). A
/// queued claim whose holder pod is missing from that cache is not released: the controller
/// asks the API server first, and releases only what is really gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_missing_from_a_lagging_pod_cache_keeps_its_claim() {
    let cluster = Cluster::start_with_faults().await;
    let faults = cluster.faults();
    cluster.lock("ledger", json!({})).await;
    cluster.pod_with_claim("holder", "ledger").await;
    cluster.wait_phase("holder", ClaimPhase::Granted).await;
    // From now on the controller's pod cache sees no new pod.
    for verb in ["list", "watch"] {
        faults.inject(ErrorRule {
            code: 500,
            count: u32::MAX,
            verb: Some(verb.into()),
            resource: Some("pods".into()),
        });
    }
    faults.close_watches();
    cluster.pod_with_claim("late", "ledger").await;
    cluster.wait_phase("late", ClaimPhase::Waiting).await;
    // A spec change makes the controller reconcile the queued claim (observedGeneration 2)
    // while its pod is still missing from the cache.
    cluster
        .api::<lockkeeper::resources::LockClaim>()
        .patch(
            "late",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"waitTimeoutSeconds": 3600}})),
        )
        .await
        .expect("change the claim's spec");
    let status = cluster
        .poll(
            cluster::PATIENCE,
            "the controller observed generation 2 of claim late",
            || cluster.claim_status("late"),
            |status| status.observed_generation == Some(2),
        )
        .await;
    assert_eq!(status.phase, ClaimPhase::Waiting, "{status:?}");
    assert_eq!(status.position, Some(1));
    assert!(
        faults.errors_answered() > 0,
        "the controller's pod list and watch were refused"
    );
    faults.reset();
    faults.close_watches();
    cluster.set_pod_phase("holder", "Succeeded").await;
    cluster.wait_phase("late", ClaimPhase::Granted).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_lock_expires_at_once_on_a_held_lock_and_is_granted_on_a_free_one() {
    let cluster = Cluster::start().await;
    cluster.lock("nightly", json!({})).await;
    cluster.pod_with_claim("holder", "nightly").await;
    cluster.wait_phase("holder", ClaimPhase::Granted).await;
    cluster.suspended_job("skipped", &["nightly"]).await;
    cluster
        .claim("skipped", json!({"lock": "nightly", "waitTimeoutSeconds": 0, "holder": {"kind": "Job", "name": "skipped"}}))
        .await;
    cluster.wait_phase("skipped", ClaimPhase::Expired).await;
    assert!(
        cluster.running_jobs().await.is_empty(),
        "the try-lock's Job was never resumed"
    );

    cluster.lock("free", json!({})).await;
    cluster.suspended_job("lucky", &["free"]).await;
    cluster.claim("lucky", json!({"lock": "free", "waitTimeoutSeconds": 0, "holder": {"kind": "Job", "name": "lucky"}})).await;
    cluster.wait_phase("lucky", ClaimPhase::Granted).await;
    cluster
        .eventually("its Job runs", || async {
            cluster.running_jobs().await == vec!["lucky".to_string()]
        })
        .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_claims_are_reported_and_served_once_fixed() {
    let cluster = Cluster::start().await;
    cluster.pod("p").await;
    cluster
        .claim(
            "early",
            json!({"lock": "later", "holder": {"kind": "Pod", "name": "p"}}),
        )
        .await;
    cluster.wait_phase("early", ClaimPhase::Invalid).await;
    let message = cluster
        .claim_status("early")
        .await
        .message
        .unwrap_or_default();
    assert!(message.contains("\"later\" does not exist"), "{message}");
    cluster.lock("later", json!({})).await;
    cluster.wait_phase("early", ClaimPhase::Granted).await;

    cluster
        .claim(
            "ghost",
            json!({"lock": "later", "holder": {"kind": "Pod", "name": "nobody"}}),
        )
        .await;
    cluster.wait_phase("ghost", ClaimPhase::Invalid).await;
    let message = cluster
        .claim_status("ghost")
        .await
        .message
        .unwrap_or_default();
    assert!(message.contains("Pod nobody does not exist"), "{message}");

    cluster
        .claim(
            "reader",
            json!({"lock": "later", "mode": "Shared", "holder": {"kind": "Pod", "name": "p"}}),
        )
        .await;
    cluster.wait_phase("reader", ClaimPhase::Invalid).await;
    assert!(
        cluster
            .claim_status("reader")
            .await
            .message
            .unwrap_or_default()
            .contains("needs a ReadWrite lock")
    );

    // kubectl apply refuses what the schema and its CEL rules forbid, with the rule's message.
    let refusals = [
        (
            "kind: DistributedLock\nmetadata: {name: bad}\nspec: {type: Mutex, permits: 3}",
            "permits is only for Semaphore locks",
        ),
        (
            "kind: DistributedLock\nmetadata: {name: bad}\nspec: {type: Semaphore}",
            "a Semaphore lock needs permits",
        ),
        (
            "kind: DistributedLock\nmetadata: {name: bad}\nspec: {type: Spinlock}",
            "Unsupported value: \"Spinlock\"",
        ),
        (
            "kind: LockClaim\nmetadata: {name: bad}\nspec: {lock: later, holder: {kind: Lease, name: cli}}",
            "a Lease holder needs leaseDurationSeconds",
        ),
        (
            "kind: LockClaim\nmetadata: {name: bad}\nspec: {lock: later, holder: {kind: Pod, name: p}, waitTimeoutSeconds: -1}",
            "spec.waitTimeoutSeconds",
        ),
    ];
    for (object, message) in refusals {
        let manifest = format!("apiVersion: lockkeeper.dev/v1alpha1\n{object}\n");
        let (ok, _, err) = cluster.kubectl(&["apply", "-f", "-"], &manifest);
        assert!(!ok && err.contains(message), "{manifest}: {err}");
    }
    let moved = "apiVersion: lockkeeper.dev/v1alpha1\nkind: LockClaim\nmetadata: {name: early}\nspec: {lock: other, holder: {kind: Pod, name: p}}\n";
    let (ok, _, err) = cluster.kubectl(&["apply", "-f", "-"], moved);
    assert!(
        !ok && err.contains("lock, mode and holder cannot change"),
        "{err}"
    );

    // The schema's CEL rules refuse what the controller would never accept.
    let refused = cluster
        .api::<lockkeeper::resources::DistributedLock>()
        .create(
            &Default::default(),
            &serde_json::from_value(
                json!({"apiVersion": "lockkeeper.dev/v1alpha1", "kind": "DistributedLock",
                "metadata": {"name": "bad"}, "spec": {"type": "Mutex", "permits": 3}}),
            )
            .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("permits is only for Semaphore locks"),
        "{refused}"
    );
    cluster.stop().await;
}

/// The notes of the events with `reason` about `claim`.
async fn event_notes(cluster: &Cluster, claim: &str, reason: &str) -> Vec<String> {
    let events: kube::Api<k8s_openapi::api::events::v1::Event> = cluster.api();
    let list = events.list(&Default::default()).await.unwrap().items;
    list.into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(claim))
        .filter_map(|e| e.note)
        .collect()
}

/// Two installations on different ZooKeeper ensembles watch one namespace. Each lock is
/// served by one of them, recorded on the lock; the other leaves the lock and its claims alone
/// with a warning event, so no claim is granted twice and only one ensemble queues them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_installation_on_another_ensemble_leaves_a_served_lock_alone() {
    let cluster = Cluster::start().await;
    let other_zk = ZooKeeperServer::start().expect("a second ZooKeeper starts");
    let mut other_config = cluster.controller_config();
    other_config.engine.connect = other_zk.connect_string();
    let other = cluster.spawn_controller(other_config);

    cluster.lock("ledger", json!({})).await;
    cluster.pod_with_claim("a", "ledger").await;
    cluster.wait_phase("a", ClaimPhase::Granted).await;
    cluster.pod_with_claim("b", "ledger").await;
    cluster.wait_phase("b", ClaimPhase::Waiting).await;
    let lock = cluster
        .api::<DistributedLock>()
        .get("ledger")
        .await
        .unwrap();
    let served_by = lock
        .status
        .unwrap()
        .served_by
        .expect("the lock records its installation");
    cluster
        .eventually(
            "the other installation warned that it leaves the lock alone",
            || async {
                event_notes(&cluster, "ledger", "ServedElsewhere")
                    .await
                    .iter()
                    .any(|note| note.contains(&served_by.id))
            },
        )
        .await;
    // Only the serving installation's ensemble queues the claims.
    let path = cluster.zookeeper_path("ledger").await;
    let mut queued = Vec::new();
    for zk in [&cluster.zk, &other_zk] {
        let client = zookeeper_client::Client::connect(&zk.connect_string())
            .await
            .expect("connect to ZooKeeper");
        queued.push(client.list_children(&path).await.unwrap_or_default().len());
    }
    queued.sort();
    assert_eq!(queued, [0, 2], "contenders per ensemble");

    cluster.set_pod_phase("a", "Succeeded").await;
    cluster.wait_phase("b", ClaimPhase::Granted).await;
    cluster.wait_phase("a", ClaimPhase::Released).await;
    // A grant's event follows its status write.
    let granted = cluster
        .poll(
            cluster::PATIENCE,
            "both grants have their event",
            || events_by_claim(&cluster, "Granted"),
            |granted| granted.len() == 2,
        )
        .await;
    assert_eq!(
        granted,
        BTreeMap::from([("a".to_string(), 1), ("b".to_string(), 1)]),
        "each claim granted once"
    );
    other.stop().await;
    cluster.stop().await;
}

/// How many events with `reason` each claim got (a repeated event counts its series).
async fn events_by_claim(cluster: &Cluster, reason: &str) -> BTreeMap<String, i32> {
    let events: kube::Api<k8s_openapi::api::events::v1::Event> = cluster.api();
    let mut counts = BTreeMap::new();
    for event in events.list(&Default::default()).await.unwrap().items {
        if event.reason.as_deref() == Some(reason) {
            let claim = event.regarding.and_then(|r| r.name).unwrap_or_default();
            *counts.entry(claim).or_insert(0) += event.series.map_or(1, |s| s.count);
        }
    }
    counts
}

/// The zombie leader: a controller paused past its ZooKeeper session (SIGSTOP) while a standby
/// takes over and grants the claim anew must not, once resumed, mark the new leader's grant
/// `Lost`. Only a grant it made itself went with its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_resumed_after_a_pause_leaves_the_new_leaders_grants_alone() {
    use nix::sys::signal::Signal;
    let mut cluster = Cluster::start_without_controller().await;
    cluster.start_controller_process();
    cluster.lock("db", json!({"lockDelaySeconds": 1})).await;
    cluster.pod_with_claim("holder", "db").await;
    cluster.wait_phase("holder", ClaimPhase::Granted).await;
    let first_grant = cluster.claim_status("holder").await;
    let standby = cluster.spawn_controller(cluster.controller_config());

    // The leader stops past its session (4 s); the standby leads and grants the claim again.
    cluster.signal_controller_process(Signal::SIGSTOP);
    let regranted = cluster
        .poll(
            cluster::PATIENCE,
            "the new leader grants the claim again",
            || cluster.claim_status("holder"),
            |status| status.phase == ClaimPhase::Granted && status.znode != first_grant.znode,
        )
        .await;
    let (phases, watch) = watch_phases(&cluster, "holder");

    // The old leader resumes, finds its session gone, and ends its term.
    cluster.signal_controller_process(Signal::SIGCONT);
    tokio::time::sleep(Duration::from_secs(8)).await;
    watch.abort();
    let seen = phases.lock().unwrap().clone();
    assert!(
        !seen.contains(&ClaimPhase::Lost),
        "the resumed old leader marked the new leader's grant Lost: {seen:?}"
    );
    let now = cluster.claim_status("holder").await;
    assert_eq!(
        (now.phase, now.fencing_token, now.znode),
        (
            ClaimPhase::Granted,
            regranted.fencing_token,
            regranted.znode
        ),
        "the new leader's grant stands"
    );
    assert_eq!(events_by_claim(&cluster, "Lost").await.get("holder"), None);
    standby.stop().await;
    cluster.kill_controller_process();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_controller_restarts_without_granting_twice_or_losing_a_claim() {
    let mut cluster = Cluster::start().await;
    cluster.stop_controller().await;
    cluster.start_controller_process();
    cluster.lock("db", json!({})).await;
    for i in 1..=3 {
        let name = format!("job-{i}");
        cluster.suspended_job(&name, &["db"]).await;
        cluster
            .claim(
                &name,
                json!({"lock": "db", "holder": {"kind": "Job", "name": name}}),
            )
            .await;
        cluster
            .eventually("queued", || async {
                cluster.phase(&name).await != ClaimPhase::Pending
            })
            .await;
    }
    cluster.wait_phase("job-1", ClaimPhase::Granted).await;
    cluster.wait_phase("job-3", ClaimPhase::Waiting).await;
    // kill -9: no cleanup; the old session lives until ZooKeeper expires it.
    cluster.kill_controller_process();
    cluster.start_controller_process();
    // The new leader takes over once the old session has expired (4 s), then queues the
    // claims again: the holder first, the waiters in their order.
    cluster
        .eventually("the new leader has queued the claims again", || async {
            cluster.claim_status("job-3").await.position == Some(2)
                && cluster
                    .claim_status("job-3")
                    .await
                    .observed_generation
                    .is_some()
        })
        .await;
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert_eq!(
        cluster.phase("job-1").await,
        ClaimPhase::Granted,
        "the holder kept its grant"
    );
    assert_eq!(cluster.running_jobs().await, vec!["job-1".to_string()]);
    for i in 1..=3 {
        let name = format!("job-{i}");
        cluster.wait_phase(&name, ClaimPhase::Granted).await;
        // The Job is resumed right after its grant is written: only this one runs.
        cluster
            .eventually("the granted Job alone runs", || async {
                cluster.running_jobs().await == vec![name.clone()]
            })
            .await;
        cluster.complete_job(&name).await;
        cluster.wait_phase(&name, ClaimPhase::Released).await;
    }
    let grants = events_by_claim(&cluster, "Granted").await;
    assert_eq!(
        grants.values().copied().collect::<Vec<_>>(),
        vec![1, 1, 1],
        "each claim granted once: {grants:?}"
    );
    cluster.stop().await;
}

/// A rolling upgrade stops the controller with SIGTERM: it closes its ZooKeeper session before
/// it exits, so its nodes are gone at once and the next leader does not wait for the session
/// to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_stopped_with_sigterm_leaves_no_node_in_zookeeper() {
    let mut cluster = Cluster::start().await;
    cluster.stop_controller().await;
    cluster.start_controller_process();
    let (path, zk) = a_holder_and_a_waiter(&cluster).await;
    cluster.stop_controller().await;
    assert_eq!(
        zk.list_children(&path).await.unwrap(),
        Vec::<String>::new(),
        "the stopped controller's nodes are gone"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_zookeeper_session_marks_grants_lost_then_grants_again_in_order() {
    let mut cluster = Cluster::start().await;
    cluster.lock("db", json!({"lockDelaySeconds": 1})).await;
    for name in ["a", "b", "c"] {
        cluster.pod_with_claim(name, "db").await;
        cluster
            .eventually("queued", || async {
                cluster.phase(name).await != ClaimPhase::Pending
            })
            .await;
    }
    cluster.wait_phase("a", ClaimPhase::Granted).await;
    let token_before = cluster.claim_status("a").await.fencing_token.unwrap();
    // ZooKeeper away for longer than the session timeout (4 s).
    cluster.zk.stop().expect("ZooKeeper stops");
    cluster.wait_phase("a", ClaimPhase::Lost).await;
    let lost = cluster.claim_status("a").await;
    assert!(lost.message.unwrap_or_default().contains("lost"));
    // Whichever path marked it (the claim's reconcile, or the term's end), the claim keeps
    // its Granted condition, turned False.
    let condition = lost
        .conditions
        .iter()
        .find(|c| c.type_ == "Granted")
        .expect("the lost claim has its Granted condition");
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "Lost")
    );
    cluster.zk.restart().expect("ZooKeeper restarts");
    cluster.wait_phase("a", ClaimPhase::Granted).await;
    let token_after = cluster.claim_status("a").await.fencing_token.unwrap();
    assert!(
        token_after > token_before,
        "a new grant has a larger fencing token"
    );
    assert_eq!(cluster.claim_status("b").await.position, Some(1));
    assert_eq!(cluster.claim_status("c").await.position, Some(2));
    for (name, next) in [("a", "b"), ("b", "c")] {
        cluster.set_pod_phase(name, "Succeeded").await;
        cluster.wait_phase(next, ClaimPhase::Granted).await;
    }
    cluster.stop().await;
}

/// The lock-delay of a grant lost with a replica's session holds under whichever replica
/// leads next: a replica cut off from ZooKeeper marks its grant `Lost`, and the standby that
/// takes over reads the loss from the claim and grants the lock again only once the
/// lock-delay has passed since then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_delay_set_by_a_replica_cut_off_from_zookeeper_holds_under_the_next_leader() {
    let mut cluster = Cluster::start_without_controller().await;
    let cut = lockkeeper_testkit::CuttingProxy::start(cluster.zk.port()).unwrap();
    cluster.start_controller_process_via(&cut.connect_string());
    cluster.lock("db", json!({"lockDelaySeconds": 8})).await;
    cluster.pod_with_claim("holder", "db").await;
    cluster.wait_phase("holder", ClaimPhase::Granted).await;
    cut.set_refusing(true);
    cut.cut_all();
    cluster.wait_phase("holder", ClaimPhase::Lost).await;
    let lost_at = cluster.claim_status("holder").await.released_at.unwrap().0;
    let standby = cluster.spawn_controller(cluster.controller_config());
    cluster.wait_phase("holder", ClaimPhase::Granted).await;
    let granted_at = cluster.claim_status("holder").await.granted_at.unwrap().0;
    // Timestamps have whole seconds.
    assert!(
        granted_at.duration_since(lost_at) >= k8s_openapi::jiff::SignedDuration::from_secs(7),
        "granted again at {granted_at}, lost at {lost_at}: the lock-delay (8 s) was not kept"
    );
    standby.stop().await;
    cluster.kill_controller_process();
    cluster.stop().await;
}

/// A leader cut off from ZooKeeper writes nothing while its connection is down: by then
/// ZooKeeper may have expired its session and another replica may lead and grant. Found by the
/// chaos suite (seed 100): the cut-off leader, still counting its session alive, marked the
/// new leader's grant `Lost` from its own stale queue, which still had the claim waiting, and
/// the two replicas wrote `Lost` and `Granted` in turn. Here the test plays the new leader: it
/// shows the waiter granted on a node of its own; the old leader must leave that alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_zookeeper_does_not_act_on_its_stale_view() {
    let mut cluster = Cluster::start_without_controller().await;
    let cut = lockkeeper_testkit::CuttingProxy::start(cluster.zk.port()).unwrap();
    cluster.start_controller_process_via(&cut.connect_string());
    cluster.lock("db", json!({})).await;
    cluster.pod_with_claim("holder", "db").await;
    cluster.wait_phase("holder", ClaimPhase::Granted).await;
    cluster.pod_with_claim("waiter", "db").await;
    cluster.wait_phase("waiter", ClaimPhase::Waiting).await;
    cut.set_refusing(true);
    cut.cut_all();
    let (phases, watch) = watch_phases(&cluster, "waiter");
    let newer_grant = json!({"status": {"phase": "Granted", "fencingToken": 1_000_000,
        "znode": "/another-leaders-session/db/_c_waiter-lock-0000000009", "sequence": 9,
        "message": "granted by the replica that leads now"}});
    cluster
        .api::<LockClaim>()
        .patch_status(
            "waiter",
            &PatchParams::default(),
            &Patch::Merge(newer_grant),
        )
        .await
        .unwrap();
    // Within the session timeout (4 s) the old leader still counts its session alive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    watch.abort();
    let status = cluster.claim_status("waiter").await;
    assert_eq!(
        (status.phase, status.fencing_token),
        (ClaimPhase::Granted, Some(1_000_000)),
        "the newer grant was overwritten: {status:?}; phases seen {:?}",
        phases.lock().unwrap()
    );
    assert!(
        !phases.lock().unwrap().contains(&ClaimPhase::Lost),
        "{:?}",
        phases.lock().unwrap()
    );
    cluster.kill_controller_process();
    cluster.stop().await;
}

/// When the controller's ZooKeeper session is lost, the holder is told `Lost`, and its lock is
/// granted again only once the lock's `lockDelaySeconds` have passed since then, whichever
/// path marked the claim (the claim's own reconcile sees its contender lost too). A claim
/// that was only waiting had no grant to lose: it never shows `Lost`, and keeps its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_lost_with_the_session_waits_out_the_lock_delay_and_waiters_lose_nothing() {
    const LOCK_DELAY: i64 = 8;
    let mut cluster = Cluster::start().await;
    cluster
        .lock("db", json!({"lockDelaySeconds": LOCK_DELAY}))
        .await;
    cluster.pod_with_claim("holder", "db").await;
    cluster.wait_phase("holder", ClaimPhase::Granted).await;
    cluster.pod_with_claim("waiter", "db").await;
    cluster.wait_phase("waiter", ClaimPhase::Waiting).await;
    let (waiter_phases, watch) = watch_phases(&cluster, "waiter");

    // ZooKeeper away for longer than the session timeout (4 s).
    cluster.zk.stop().expect("ZooKeeper stops");
    cluster.wait_phase("holder", ClaimPhase::Lost).await;
    let lost = cluster.claim_status("holder").await;
    let lost_at = lost.released_at.expect("the loss is recorded").0;
    cluster.zk.restart().expect("ZooKeeper restarts");
    cluster.wait_phase("holder", ClaimPhase::Granted).await;
    let granted_at = cluster
        .claim_status("holder")
        .await
        .granted_at
        .expect("granted again")
        .0;
    // Whole seconds on both sides: a true gap of LOCK_DELAY never shows as less.
    let gap = granted_at.as_second() - lost_at.as_second();
    assert!(
        gap >= LOCK_DELAY,
        "granted again {gap} s after the holder was told Lost, before the lock-delay of \
         {LOCK_DELAY} s"
    );
    assert_eq!(cluster.claim_status("waiter").await.position, Some(1));
    watch.abort();
    let phases = waiter_phases.lock().unwrap().clone();
    assert!(
        !phases.contains(&ClaimPhase::Lost),
        "the waiter had no grant to lose, yet showed Lost: {phases:?}"
    );
    cluster.stop().await;
}

/// Records every phase claim `name` shows, in order, until the returned task is aborted.
fn watch_phases(
    cluster: &Cluster,
    name: &str,
) -> (Arc<Mutex<Vec<ClaimPhase>>>, tokio::task::JoinHandle<()>) {
    let phases = Arc::new(Mutex::new(Vec::new()));
    let seen = phases.clone();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(cluster.api::<LockClaim>(), config).applied_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(claim)) = stream.next().await {
            if let Some(status) = claim.status {
                seen.lock().unwrap().push(status.phase);
            }
        }
    });
    (phases, task)
}

/// What a watcher saw: each claim's phases in order (repeats folded), and the grants in
/// order as (lock, sequence).
#[derive(Default)]
struct Observed {
    phases: HashMap<String, Vec<ClaimPhase>>,
    grants: Vec<(String, i64)>,
}

type Seen = Arc<Mutex<Observed>>;

/// Watches every claim of the test namespace, recording phases; plays the kubelet by ending
/// a holder pod as soon as its claim is granted.
fn observe_and_release(cluster: &Cluster, seen: Seen) -> tokio::task::JoinHandle<()> {
    let claims = cluster.api::<LockClaim>();
    let pods = cluster.api::<Pod>();
    tokio::spawn(async move {
        let mut stream = watcher(claims, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(claim) = stream.next().await {
            let Ok(claim) = claim else { continue };
            let status = claim.status.clone().unwrap_or_default();
            let phase = status.phase;
            let name = kube::ResourceExt::name_any(&claim);
            let fresh = {
                let mut seen = seen.lock().unwrap();
                let phases = seen.phases.entry(name).or_default();
                let fresh = phases.last() != Some(&phase);
                if fresh {
                    phases.push(phase);
                }
                if fresh && phase == ClaimPhase::Granted {
                    let sequence = status.sequence.expect("a granted claim has its sequence");
                    seen.grants.push((claim.spec.lock.clone(), sequence));
                }
                fresh
            };
            if fresh && phase == ClaimPhase::Granted {
                let pods = pods.clone();
                let holder = claim.spec.holder.name.clone();
                tokio::spawn(async move {
                    let succeeded = serde_json::json!({"status": {"phase": "Succeeded"}});
                    let patch = kube::api::Patch::Merge(&succeeded);
                    while pods
                        .patch_status(&holder, &Default::default(), &patch)
                        .await
                        .is_err()
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                });
            }
        }
    })
}

/// A claim deleted while the controller's claims watch is down, and whose delete falls out of
/// the API server's history (etcd compacted it), is never reported as deleted: the watch's
/// resume gets `410 Gone` and the controller lists the claims again. Every contender whose
/// claim that list lacks leaves the queue, so the claim behind is granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_deleted_out_of_the_watch_history_leaves_the_queue_after_the_relist() {
    // A control plane of the test's own, without kube-apiserver's watch cache, which would
    // serve the resume from its own history however etcd was compacted. Started on the
    // test's thread: its processes end with it.
    let scratch = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(ControlPlaneOptions {
        version: KubernetesVersion::from_env(),
        dir: scratch.path().to_path_buf(),
        api_port: 0,
        watch_cache: false,
    })
    .expect("a control plane without the watch cache starts");
    let cluster = Cluster::start_with_faults_on(plane.kubeconfig().into_os_string()).await;
    let faults = cluster.faults();
    cluster.lock("db", json!({})).await;
    cluster.pod_with_claim("first", "db").await;
    cluster.wait_phase("first", ClaimPhase::Granted).await;
    cluster.pod_with_claim("second", "db").await;
    cluster.wait_phase("second", ClaimPhase::Waiting).await;

    // The controller's claims watch ends and cannot start again.
    faults.inject(ErrorRule {
        code: 500,
        count: u32::MAX,
        verb: Some("watch".into()),
        resource: Some("lockclaims".into()),
    });
    faults.close_watches();
    let claim_lists = || {
        faults
            .request_counts()
            .iter()
            .filter(|(kind, _)| kind.verb == "list" && kind.resource == "lockclaims")
            .map(|(_, count)| *count)
            .sum::<u64>()
    };
    let lists_before = claim_lists();
    cluster
        .api::<LockClaim>()
        .delete("first", &Default::default())
        .await
        .unwrap();
    plane.compact_etcd().expect("etcd compacts its history");
    faults.reset();

    cluster.wait_phase("second", ClaimPhase::Granted).await;
    assert!(
        claim_lists() > lists_before,
        "the controller listed the claims again (its resume got 410 Gone)"
    );
    cluster.stop().await;
}

/// While every list and watch of the controller fails (an API server being upgraded, say),
/// each watch backs off on its own and none holds up a grant: a claim whose lock an outside
/// client releases is granted at once, from the engine's event and the cached claim, however
/// long the watches have been failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_go_on_while_every_watch_fails() {
    // A grant takes well under a second here; one that takes this long was held up.
    const HELD_UP: Duration = Duration::from_secs(5);
    let cluster = Cluster::start_with_faults().await;
    let faults = cluster.faults();
    cluster.lock("db", json!({})).await;
    let mut service = PeerProcess::spawn(&PeerSpec {
        library: PeerLibrary::Kazoo,
        connect: cluster.zk.connect_string(),
        path: cluster.zookeeper_path("db").await,
        kind: PeerKind::Mutex,
        name: "migration-service".into(),
    })
    .expect("the peer starts");
    service.start_acquire().unwrap();
    assert!(service.wait_acquired(cluster::PATIENCE).unwrap());
    cluster.pod_with_claim("waiter", "db").await;
    cluster.wait_phase("waiter", ClaimPhase::Waiting).await;

    for verb in ["list", "watch"] {
        faults.inject(ErrorRule {
            code: 500,
            count: u32::MAX,
            verb: Some(verb.into()),
            resource: None,
        });
    }
    faults.close_watches();
    // Long enough for a pause shared by every watch, growing with each failure of any of
    // them, to outlast a grant many times over.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let failures = faults.errors_answered();
    service.release(cluster::PATIENCE).unwrap();
    let granted = tokio::time::timeout(HELD_UP, cluster.wait_phase("waiter", ClaimPhase::Granted));
    assert!(
        granted.await.is_ok(),
        "the claim was not granted within {HELD_UP:?} of the lock's release: the failing \
         watches held up the grant"
    );
    assert!(
        failures >= 8,
        "the watches kept failing throughout ({failures} lists and watches refused)"
    );
    faults.reset();
    cluster.stop().await;
}

/// While `stop` is open: drops every watch, and has the fault proxy answer claim writes and relists
/// with 500s and 409s, a few at a time (errors not met within a round are dropped, so they
/// never pile up into an outage).
fn inject_faults(
    cluster: &Cluster,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let faults = cluster.faults();
    let rule = |code, verb: &str, resource: &str| ErrorRule {
        code,
        count: 2,
        verb: Some(verb.into()),
        resource: Some(resource.into()),
    };
    tokio::spawn(async move {
        for round in 0u32.. {
            if *stop.borrow() {
                return;
            }
            faults.reset();
            match round % 5 {
                0 => faults.close_watches(),
                1 => faults.inject(rule(500, "patch", "lockclaims")),
                2 => faults.inject(rule(409, "patch", "lockclaims")),
                3 => faults.inject(rule(500, "list", "lockclaims")),
                _ => faults.inject(rule(500, "list", "pods")),
            }
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_claims_through_dropped_watches_500s_and_409s_are_each_granted_and_released_once()
 {
    const LOCKS: usize = 4;
    const CLAIMS: usize = 200;
    let cluster = Cluster::start_with_faults().await;
    for lock in 0..LOCKS {
        cluster
            .lock(&format!("batch-{lock}"), json!({"type": "Mutex"}))
            .await;
    }
    let seen = Seen::default();
    let observer = observe_and_release(&cluster, seen.clone());
    let (stop_faults, faults_stopped) = tokio::sync::watch::channel(false);
    let injector = inject_faults(&cluster, faults_stopped);

    for i in 0..CLAIMS {
        let name = format!("work-{i}");
        let lock = format!("batch-{}", i % LOCKS);
        cluster.pod_with_claim(&name, &lock).await;
    }
    // The claims not released yet, with the phases seen of each.
    let unreleased = || {
        let seen = seen.lock().unwrap();
        let pending: Vec<(String, Option<Vec<ClaimPhase>>)> = (0..CLAIMS)
            .map(|i| format!("work-{i}"))
            .map(|name| {
                let phases = seen.phases.get(&name).cloned();
                (name, phases)
            })
            .filter(|(_, phases)| {
                phases.as_ref().and_then(|p| p.last()) != Some(&ClaimPhase::Released)
            })
            .collect();
        async move { pending }
    };
    cluster
        .poll(
            Duration::from_secs(180),
            "every claim is released",
            unreleased,
            Vec::is_empty,
        )
        .await;
    let _ = stop_faults.send(true);
    {
        injector.await.unwrap();
        let faults = cluster.faults();
        faults.reset();
        assert!(
            faults.errors_answered() > 20,
            "faults happened: {}",
            faults.errors_answered()
        );
    }
    observer.abort();

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    for (claim, phases) in &seen.phases {
        let granted = phases.iter().filter(|p| **p == ClaimPhase::Granted).count();
        assert_eq!(granted, 1, "{claim} granted once: {phases:?}");
        let at = phases
            .iter()
            .position(|p| *p == ClaimPhase::Granted)
            .unwrap();
        assert_eq!(
            &phases[at + 1..],
            [ClaimPhase::Released],
            "{claim}: {phases:?}"
        );
        assert!(
            phases[..at]
                .iter()
                .all(|p| matches!(p, ClaimPhase::Pending | ClaimPhase::Waiting)),
            "{claim}: {phases:?}"
        );
    }
    // FIFO per lock: each lock's grants came in sequence order.
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (lock, sequence) in &seen.grants {
        let before = last.insert(lock, *sequence);
        assert!(
            before < Some(*sequence),
            "{lock}: {sequence} granted after {before:?}"
        );
    }
    // Events (not faulted): one Granted per claim. A routine release is told by the claim's
    // status alone: no Released events.
    // A transition's event follows its status write.
    let counts = cluster
        .poll(
            cluster::PATIENCE,
            "Granted events for every claim",
            || events_by_claim(&cluster, "Granted"),
            |counts| counts.len() == CLAIMS,
        )
        .await;
    assert!(
        counts.values().all(|n| *n == 1),
        "Granted once each: {counts:?}"
    );
    for reason in [
        "HolderSucceeded",
        "HolderFailed",
        "HolderDeleted",
        "Released",
    ] {
        let released = events_by_claim(&cluster, reason).await;
        assert!(released.is_empty(), "no {reason} events: {released:?}");
    }
    cluster.stop().await;
}

/// A service outside Kubernetes locking `payments` through ZooKeeper with Curator or kazoo,
/// and LockClaims on a DistributedLock pointed at the same path: they queue together.
async fn an_outside_client_and_claims_share_one_lock(library: PeerLibrary) {
    const PEER_START: Duration = Duration::from_secs(60);
    // Long enough for a side that wrongly ignored the other's hold to have taken the lock.
    const SETTLE: Duration = Duration::from_millis(1500);
    let cluster = Cluster::start().await;
    let path = format!("{}-shared/payments", cluster.root);
    cluster
        .lock(
            "payments",
            json!({"type": "Mutex", "zookeeper": {"path": path}}),
        )
        .await;
    let mut service = PeerProcess::spawn(&PeerSpec {
        library,
        connect: cluster.zk.connect_string(),
        path,
        kind: PeerKind::Mutex,
        name: "billing-service".into(),
    })
    .expect("the peer starts");

    // The outside service holds: the claim waits behind it.
    service.start_acquire().unwrap();
    assert!(
        service.wait_acquired(PEER_START).unwrap(),
        "the service takes the free lock"
    );
    cluster.pod_with_claim("settle-a", "payments").await;
    cluster.wait_phase("settle-a", ClaimPhase::Waiting).await;
    assert_eq!(cluster.claim_status("settle-a").await.position, Some(1));
    cluster
        .eventually("the lock shows the outside holder", || async {
            let lock = cluster
                .api::<DistributedLock>()
                .get("payments")
                .await
                .unwrap();
            lock.status
                .is_some_and(|s| s.external_holders == 1 && s.holders.is_empty())
        })
        .await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(cluster.phase("settle-a").await, ClaimPhase::Waiting);
    service.release(cluster::PATIENCE).unwrap();
    cluster.wait_phase("settle-a", ClaimPhase::Granted).await;

    // The claim holds: the service waits, and a later claim queues behind the service.
    service.start_acquire().unwrap();
    assert!(
        !service.wait_acquired(SETTLE).unwrap(),
        "the service must not take a lock a claim holds"
    );
    cluster.pod_with_claim("settle-b", "payments").await;
    cluster.wait_phase("settle-b", ClaimPhase::Waiting).await;
    assert_eq!(
        cluster.claim_status("settle-b").await.position,
        Some(2),
        "behind the service"
    );
    cluster.set_pod_phase("settle-a", "Succeeded").await;
    assert!(
        service.wait_acquired(cluster::PATIENCE).unwrap(),
        "the service was next in line"
    );
    tokio::time::sleep(SETTLE).await;
    assert_eq!(cluster.phase("settle-b").await, ClaimPhase::Waiting);
    service.release(cluster::PATIENCE).unwrap();
    cluster.wait_phase("settle-b", ClaimPhase::Granted).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_curator_service_and_lock_claims_exclude_each_other() {
    an_outside_client_and_claims_share_one_lock(PeerLibrary::Curator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kazoo_service_and_lock_claims_exclude_each_other() {
    an_outside_client_and_claims_share_one_lock(PeerLibrary::Kazoo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_taken_by_an_outside_client_while_the_controller_was_down_is_reported_lost() {
    let mut cluster = Cluster::start().await;
    cluster.stop_controller().await;
    cluster.start_controller_process();
    let path = format!("{}-shared/reports", cluster.root);
    cluster
        .lock(
            "reports",
            json!({"zookeeper": {"path": path}, "evictOnLoss": true}),
        )
        .await;
    cluster.pod_with_claim("nightly", "reports").await;
    cluster.wait_phase("nightly", ClaimPhase::Granted).await;

    // The controller dies; once its ZooKeeper session expires, a service outside Kubernetes
    // takes the lock before a new controller is up.
    cluster.kill_controller_process();
    let mut service = PeerProcess::spawn(&PeerSpec {
        library: PeerLibrary::Kazoo,
        connect: cluster.zk.connect_string(),
        path,
        kind: PeerKind::Mutex,
        name: "report-service".into(),
    })
    .expect("the peer starts");
    service.start_acquire().unwrap();
    assert!(service.wait_acquired(Duration::from_secs(60)).unwrap());
    cluster.start_controller_process();

    // The claim turns Lost (with a warning event saying why) and, with evictOnLoss, its
    // holder is deleted, which ends the claim.
    cluster
        .eventually("a Lost event for nightly", || async {
            event_notes(&cluster, "nightly", "Lost")
                .await
                .iter()
                .any(|note| note.contains("taken by another client"))
        })
        .await;
    // evictOnLoss: the old holder is stopped, and its claim ends with it.
    cluster
        .eventually("the holder pod is evicted", || async {
            cluster
                .api::<Pod>()
                .get_opt("nightly")
                .await
                .unwrap()
                .is_none()
        })
        .await;
    cluster.wait_phase("nightly", ClaimPhase::Released).await;
    assert_eq!(
        events_by_claim(&cluster, "Lost").await.get("nightly"),
        Some(&1)
    );
    service.release(cluster::PATIENCE).unwrap();
    cluster.stop().await;
}

/// The sequences of `claims`, once every one of them is queued.
async fn sequences(cluster: &Cluster, claims: &[String]) -> Vec<i64> {
    cluster
        .poll(
            cluster::PATIENCE,
            "every claim is queued with its sequence",
            || async {
                let mut sequences = Vec::new();
                for claim in claims {
                    sequences.push(cluster.claim_status(claim).await.sequence);
                }
                sequences
            },
            |sequences| sequences.iter().all(Option::is_some),
        )
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// `kubectl apply -f examples/semaphore/` makes the Jobs' claims before their lock: once the
/// lock exists they are queued in the order they were made (name as the tie-break), not in
/// the order their reconciles happened to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_made_before_their_lock_are_queued_in_creation_order() {
    let cluster = Cluster::start().await;
    let names: Vec<String> = (1..=6).map(|i| format!("sync-{i}")).collect();
    for name in &names {
        cluster.pod_with_claim(name, "pool").await;
    }
    for name in &names {
        cluster.wait_phase(name, ClaimPhase::Invalid).await;
    }
    cluster
        .lock("pool", json!({"type": "Semaphore", "permits": 2}))
        .await;
    let queued = sequences(&cluster, &names).await;
    assert!(
        queued.windows(2).all(|pair| pair[0] < pair[1]),
        "sequences in creation order: {queued:?}"
    );
    cluster.wait_phase("sync-1", ClaimPhase::Granted).await;
    cluster.wait_phase("sync-2", ClaimPhase::Granted).await;
    cluster.stop().await;
}

/// Claims made while no controller runs are queued in creation order when one starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_claims_found_at_start_are_queued_in_creation_order() {
    let mut cluster = Cluster::start_without_controller().await;
    cluster.lock("nightly", json!({})).await;
    let names: Vec<String> = (1..=6).map(|i| format!("run-{i}")).collect();
    for name in &names {
        cluster.pod_with_claim(name, "nightly").await;
    }
    cluster.start_controller();
    let queued = sequences(&cluster, &names).await;
    assert!(
        queued.windows(2).all(|pair| pair[0] < pair[1]),
        "sequences in creation order: {queued:?}"
    );
    cluster.wait_phase("run-1", ClaimPhase::Granted).await;
    cluster.stop().await;
}
