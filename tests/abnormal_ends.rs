//! Issue 24: every way a grant ends other than its holder ending gets the same fence, on the
//! real control plane and ZooKeeper. The next claim is not granted before the lock-delay has
//! passed, whichever replica leads by then; the holder is evicted first where the lock asks;
//! and the old grant's end is written before the next grant.

mod cluster;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster::Cluster;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use lockkeeper::resources::{ClaimPhase, LockClaim};
use lockkeeper_testkit::api_fault_proxy::ErrorRule;
use serde_json::json;

/// What a watch saw, in the API server's order: (object name, what happened, resourceVersion).
type Seen = Arc<Mutex<Vec<(String, String, u64)>>>;

fn resource_version(meta: &impl ResourceExt) -> u64 {
    meta.resource_version()
        .and_then(|rv| rv.parse().ok())
        .expect("a numeric resourceVersion")
}

/// Records each claim's phase changes, with the resourceVersion that showed them (etcd's
/// revision: one order for claims and pods alike).
fn watch_claim_phases(cluster: &Cluster, seen: Seen) -> tokio::task::JoinHandle<()> {
    let stream = watcher(cluster.api::<LockClaim>(), watcher::Config::default()).touched_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut last = std::collections::HashMap::new();
        while let Some(event) = stream.next().await {
            let Ok(claim) = event else { continue };
            let phase = format!("{:?}", claim.status.clone().unwrap_or_default().phase);
            if last.insert(claim.name_any(), phase.clone()).as_ref() != Some(&phase) {
                seen.lock()
                    .unwrap()
                    .push((claim.name_any(), phase, resource_version(&claim)));
            }
        }
    })
}

/// Records each pod's deletion (the revision that marked it deleted or terminating).
fn watch_pod_deletions(cluster: &Cluster, seen: Seen) -> tokio::task::JoinHandle<()> {
    let stream = watcher(cluster.api::<Pod>(), watcher::Config::default());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let (pod, what) = match event {
                Ok(watcher::Event::Delete(pod)) => (pod, "Deleted"),
                Ok(watcher::Event::Apply(pod)) if pod.metadata.deletion_timestamp.is_some() => {
                    (pod, "Terminating")
                }
                _ => continue,
            };
            seen.lock()
                .unwrap()
                .push((pod.name_any(), what.into(), resource_version(&pod)));
        }
    })
}

/// The first revision at which `name` showed `what`.
fn first(seen: &Seen, name: &str, what: &str) -> Option<u64> {
    seen.lock()
        .unwrap()
        .iter()
        .find(|(n, w, _)| n == name && w == what)
        .map(|(_, _, rv)| *rv)
}

/// A Lease claim whose holder renewed once, now, and never again.
async fn lease_claim(cluster: &Cluster, name: &str, lock: &str, lease_seconds: u64) {
    let renewed = Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    cluster
        .claim(
            name,
            json!({"lock": lock, "holder": {"kind": "Lease", "name": name},
                   "leaseDurationSeconds": lease_seconds, "renewTime": renewed}),
        )
        .await;
}

/// Waits until claim `name` is granted; when its status says it was.
async fn granted_at(cluster: &Cluster, name: &str) -> Timestamp {
    cluster.wait_phase(name, ClaimPhase::Granted).await;
    cluster
        .claim_status(name)
        .await
        .granted_at
        .expect("granted")
        .0
}

/// A ZooKeeper client of the test's ensemble: another client of the lock's path.
async fn foreign_client(cluster: &Cluster) -> zookeeper_client::Client {
    zookeeper_client::Client::connect(&cluster.zk.connect_string())
        .await
        .expect("a ZooKeeper client")
}

/// Deletes the znode claim `name` shows, as another ZooKeeper client may.
async fn delete_node_of(cluster: &Cluster, name: &str) {
    let znode = cluster.claim_status(name).await.znode.expect("a node");
    let zk = foreign_client(cluster).await;
    zk.delete(&znode, None).await.expect("delete the node");
}

/// Revokes claim `name`, as `kubectl lock release` does.
async fn revoke(cluster: &Cluster, name: &str) {
    let revoke = json!({"metadata": {"annotations": {
        "lockkeeper.dev/revoke": "stuck", "lockkeeper.dev/revoke-requested-by": "test"}}});
    cluster
        .api::<LockClaim>()
        .patch(name, &PatchParams::default(), &Patch::Merge(revoke))
        .await
        .unwrap();
}

/// Whole seconds from `from` to `to` (timestamps in status have whole seconds).
fn seconds_between(from: Timestamp, to: Timestamp) -> i64 {
    to.as_second() - from.as_second()
}

/// Holes 1 and 7: a lapsed lease's hold-back is state the next leader reads. The leader that
/// saw the lapse is stopped gracefully (a rolling update: closing its session deletes the node
/// it kept for the lock-delay); the next one must still not grant the lock before the
/// lock-delay has passed since the lapse. Before `heldBackUntil`, the waiter was granted as
/// soon as the new leader had queued it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_leases_hold_back_outlives_a_graceful_change_of_leader() {
    const LOCK_DELAY: i64 = 15;
    let mut cluster = Cluster::start().await;
    cluster
        .lock("db", json!({"lockDelaySeconds": LOCK_DELAY}))
        .await;
    lease_claim(&cluster, "cron", "db", 2).await;
    cluster.wait_phase("cron", ClaimPhase::Granted).await;
    cluster.pod_with_claim("next", "db").await;
    cluster.wait_phase("cron", ClaimPhase::Released).await;
    let lapsed = cluster.claim_status("cron").await;
    let lapsed_at = lapsed.released_at.expect("the lapse is recorded").0;
    let until = lapsed.held_back_until.expect("the hold-back is recorded").0;
    assert!(
        seconds_between(lapsed_at, until) >= LOCK_DELAY,
        "held back until {until}, lapsed at {lapsed_at}"
    );
    assert_eq!(cluster.phase("next").await, ClaimPhase::Waiting);

    cluster.stop_controller().await;
    cluster.start_controller();
    let granted_at = granted_at(&cluster, "next").await;
    assert!(
        granted_at >= until,
        "granted at {granted_at}, before the hold-back ended at {until} (lapsed at {lapsed_at})"
    );
    cluster.stop().await;
}

/// Hole 2: a grant held past `maxHoldSeconds` is an abnormal end like any other: its holder is
/// evicted where the lock asks, and nobody is granted the lock before the lock-delay has
/// passed. Before, the expired claim was dequeued at once and the next claim granted in the
/// same second, its holder still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_held_past_max_hold_is_fenced_and_its_holder_evicted() {
    const LOCK_DELAY: i64 = 8;
    let cluster = Cluster::start().await;
    cluster
        .lock(
            "db",
            json!({"maxHoldSeconds": 2, "lockDelaySeconds": LOCK_DELAY, "evictOnLoss": true}),
        )
        .await;
    cluster.pod_with_claim("greedy", "db").await;
    cluster.wait_phase("greedy", ClaimPhase::Granted).await;
    cluster.pod_with_claim("next", "db").await;
    cluster.wait_phase("greedy", ClaimPhase::Expired).await;
    let expired = cluster.claim_status("greedy").await;
    let expired_at = expired
        .released_at
        .clone()
        .expect("the expiry is recorded")
        .0;
    assert_eq!(expired.conditions[0].reason, "HoldExpired", "{expired:?}");
    cluster
        .eventually("the expired holder's pod is evicted", || async {
            cluster
                .api::<Pod>()
                .get_opt("greedy")
                .await
                .unwrap()
                .is_none_or(|pod| pod.metadata.deletion_timestamp.is_some())
        })
        .await;
    let granted_at = granted_at(&cluster, "next").await;
    assert!(
        seconds_between(expired_at, granted_at) >= LOCK_DELAY,
        "granted at {granted_at}, {} s after the expiry at {expired_at}: the lock-delay ({LOCK_DELAY} s) was not kept",
        seconds_between(expired_at, granted_at)
    );
    cluster.stop().await;
}

/// Hole 4: a holder's node deleted by another ZooKeeper client (the lock's directory lets any
/// client delete) is an abnormal end: the claim shows `Lost` at once, the next claim is not
/// granted before the lock-delay has passed, and the lost claim lines up again instead of
/// staying `Lost` for the rest of the term. Before, the waiter was granted at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holders_node_deleted_by_another_client_is_fenced_then_queued_again() {
    const LOCK_DELAY: i64 = 8;
    let cluster = Cluster::start().await;
    cluster
        .lock("db", json!({"lockDelaySeconds": LOCK_DELAY}))
        .await;
    cluster.pod_with_claim("holder", "db").await;
    cluster.wait_phase("holder", ClaimPhase::Granted).await;
    cluster.pod_with_claim("next", "db").await;
    cluster.wait_phase("next", ClaimPhase::Waiting).await;
    delete_node_of(&cluster, "holder").await;

    cluster.wait_phase("holder", ClaimPhase::Lost).await;
    let lost = cluster.claim_status("holder").await;
    let lost_at = lost.released_at.clone().expect("the loss is recorded").0;
    assert!(lost.held_back_until.is_some(), "{lost:?}");
    let granted_at = granted_at(&cluster, "next").await;
    assert!(
        seconds_between(lost_at, granted_at) >= LOCK_DELAY,
        "granted {} s after the loss: the lock-delay ({LOCK_DELAY} s) was not kept",
        seconds_between(lost_at, granted_at)
    );
    // The lost claim is in line again, behind the new holder, and gets the lock back once the
    // new holder ends.
    cluster
        .eventually("the lost claim is in line again", || async {
            cluster.claim_status("holder").await.position == Some(1)
        })
        .await;
    cluster.set_pod_phase("next", "Succeeded").await;
    cluster.wait_phase("holder", ClaimPhase::Granted).await;
    cluster.stop().await;
}

/// The same on a lock without a lock-delay: the holder's end (`Lost`) is written, and its pod
/// evicted, before the claim behind it is told `Granted`: the API never shows two holders of
/// the Mutex. Before, the next grant went out at once, the loss after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holders_node_deleted_without_a_lock_delay_is_ended_before_the_next_grant() {
    let cluster = Cluster::start().await;
    cluster.lock("db", json!({"evictOnLoss": true})).await;
    let seen: Seen = Arc::default();
    let claims_watch = watch_claim_phases(&cluster, seen.clone());
    let pods_watch = watch_pod_deletions(&cluster, seen.clone());
    cluster.pod_with_claim("holder", "db").await;
    cluster.wait_phase("holder", ClaimPhase::Granted).await;
    cluster.pod_with_claim("next", "db").await;
    cluster.wait_phase("next", ClaimPhase::Waiting).await;
    delete_node_of(&cluster, "holder").await;
    cluster.wait_phase("next", ClaimPhase::Granted).await;
    cluster.wait_phase("holder", ClaimPhase::Lost).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    claims_watch.abort();
    pods_watch.abort();
    let granted = first(&seen, "next", "Granted").expect("granted");
    let lost = first(&seen, "holder", "Lost").expect("lost");
    let evicted = [
        first(&seen, "holder", "Terminating"),
        first(&seen, "holder", "Deleted"),
    ]
    .into_iter()
    .flatten()
    .min()
    .expect("the holder's pod was evicted");
    assert!(
        lost < granted && evicted < granted,
        "next granted at revision {granted}, the holder lost at {lost}, evicted at {evicted}: {:?}",
        seen.lock().unwrap()
    );
    cluster.stop().await;
}

/// Holes 3 and 14: the old holder's end is written, and its pods asked to stop where the lock
/// asks, before the next claim is granted. Revoked by hand on a lock without a lock-delay
/// (and routine ends) — the revision order the API server gave the writes is the proof. The
/// first write of each end is answered 500, as an API server under load may: a controller
/// that took the node out of the queue first has the next claim granted while the old one
/// still shows `Granted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_grant_is_written_and_its_holder_evicted_before_the_next_grant() {
    let cluster = Cluster::start_with_faults().await;
    let fail_next_status_write = || {
        cluster.faults().inject(ErrorRule {
            code: 500,
            count: 1,
            verb: Some("patch".into()),
            resource: Some("lockclaims/status".into()),
        })
    };
    cluster.lock("db", json!({"evictOnLoss": true})).await;
    let seen: Seen = Arc::default();
    let claims_watch = watch_claim_phases(&cluster, seen.clone());
    let pods_watch = watch_pod_deletions(&cluster, seen.clone());
    let names: Vec<String> = (0..5).map(|i| format!("c{i}")).collect();
    for name in &names {
        cluster.pod_with_claim(name, "db").await;
    }
    // c0 is revoked; c1..c3 end as their pods succeed; c4 holds at the end.
    cluster.wait_phase("c0", ClaimPhase::Granted).await;
    for name in &names[1..] {
        cluster.wait_phase(name, ClaimPhase::Waiting).await;
    }
    // The waiters' places are written a second after their queueing: then the next status
    // write is the revoked claim's.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fail_next_status_write();
    revoke(&cluster, "c0").await;
    for name in &names[1..4] {
        cluster.wait_phase(name, ClaimPhase::Granted).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        fail_next_status_write();
        cluster.set_pod_phase(name, "Succeeded").await;
    }
    cluster.wait_phase("c4", ClaimPhase::Granted).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    claims_watch.abort();
    pods_watch.abort();
    let evicted = first(&seen, "c0", "Terminating")
        .into_iter()
        .chain(first(&seen, "c0", "Deleted"))
        .min()
        .expect("the revoked holder's pod was evicted");
    let granted = |name: &str| first(&seen, name, "Granted").expect("granted");
    assert!(
        evicted < granted("c1"),
        "c1 was granted (revision {}) before the revoked holder's pod was evicted ({evicted}): {:?}",
        granted("c1"),
        seen.lock().unwrap()
    );
    let revoked = first(&seen, "c0", "Revoked").expect("c0 revoked");
    assert!(revoked < granted("c1"), "{:?}", seen.lock().unwrap());
    for pair in names[1..].windows(2) {
        let released = first(&seen, &pair[0], "Released").expect("released");
        assert!(
            released < granted(&pair[1]),
            "{} was granted before {}'s end was written: {:?}",
            pair[1],
            pair[0],
            seen.lock().unwrap()
        );
    }
    cluster.stop().await;
}

/// The same hold-back across a change of leader, for a grant revoked by hand: the claim shows
/// `Revoked` with the time the lock is held back until, and the next leader honours it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grants_hold_back_outlives_a_graceful_change_of_leader() {
    const LOCK_DELAY: i64 = 12;
    let mut cluster = Cluster::start().await;
    cluster
        .lock("db", json!({"lockDelaySeconds": LOCK_DELAY}))
        .await;
    cluster.pod_with_claim("stuck", "db").await;
    cluster.wait_phase("stuck", ClaimPhase::Granted).await;
    cluster.pod_with_claim("next", "db").await;
    revoke(&cluster, "stuck").await;
    cluster.wait_phase("stuck", ClaimPhase::Revoked).await;
    let until = cluster
        .claim_status("stuck")
        .await
        .held_back_until
        .expect("the hold-back is recorded")
        .0;
    cluster.stop_controller().await;
    cluster.start_controller();
    let granted_at = granted_at(&cluster, "next").await;
    assert!(
        granted_at >= until,
        "granted at {granted_at}, before the hold-back ended at {until}"
    );
    assert!(
        granted_at
            .duration_since(until)
            .abs()
            .le(&SignedDuration::from_secs(LOCK_DELAY)),
        "granted long after the hold-back: {granted_at} vs {until}"
    );
    cluster.stop().await;
}

/// A claim deleted while its lapsed grant holds the lock back does not shorten the hold-back:
/// its node stays in ZooKeeper (so Curator and kazoo clients on the path wait too) until
/// `heldBackUntil`, and no claim is granted before then. Before, the delete took the node out
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_deleted_during_its_hold_back_keeps_its_node_until_the_hold_back_ends() {
    let cluster = Cluster::start().await;
    cluster.lock("db", json!({"lockDelaySeconds": 10})).await;
    lease_claim(&cluster, "cron", "db", 2).await;
    cluster.wait_phase("cron", ClaimPhase::Granted).await;
    let znode = cluster.claim_status("cron").await.znode.unwrap();
    cluster.pod_with_claim("next", "db").await;
    cluster.wait_phase("cron", ClaimPhase::Released).await;
    let until = cluster
        .claim_status("cron")
        .await
        .held_back_until
        .expect("held back")
        .0;
    cluster
        .api::<LockClaim>()
        .delete("cron", &Default::default())
        .await
        .unwrap();
    let zk = foreign_client(&cluster).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        Timestamp::now() < until,
        "the test ran too slowly to check the hold-back"
    );
    assert!(
        zk.check_stat(&znode).await.unwrap().is_some(),
        "the deleted claim's node went before its hold-back ended at {until}"
    );
    let granted_at = granted_at(&cluster, "next").await;
    assert!(
        granted_at >= until,
        "granted at {granted_at}, held back until {until}"
    );
    assert!(zk.check_stat(&znode).await.unwrap().is_none());
    cluster.stop().await;
}

/// Hole 7: a Lease holder's renewals are timed on the controller's clock. A holder whose clock
/// is an hour behind keeps its grant while it renews (its `renewTime` alone says it lapsed an
/// hour ago: it lapsed at once), and lapses a lease after its last renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_with_a_clock_an_hour_behind_keeps_its_grant_while_it_renews() {
    let cluster = Cluster::start().await;
    cluster.lock("db", json!({})).await;
    let behind = || {
        (Timestamp::now() - SignedDuration::from_hours(1))
            .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string()
    };
    cluster
        .claim(
            "cli",
            json!({"lock": "db", "holder": {"kind": "Lease", "name": "cli"},
                   "leaseDurationSeconds": 4, "renewTime": behind()}),
        )
        .await;
    cluster.wait_phase("cli", ClaimPhase::Granted).await;
    let claims = cluster.api::<LockClaim>();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let renew = json!({"spec": {"renewTime": behind()}});
        claims
            .patch("cli", &PatchParams::default(), &Patch::Merge(renew))
            .await
            .unwrap();
        assert_eq!(
            cluster.phase("cli").await,
            ClaimPhase::Granted,
            "a renewing holder lost its grant"
        );
    }
    let last = Timestamp::now();
    cluster.wait_phase("cli", ClaimPhase::Released).await;
    let lapsed = cluster.claim_status("cli").await;
    assert_eq!(lapsed.conditions[0].reason, "LeaseLapsed");
    assert!(
        seconds_between(last, lapsed.released_at.unwrap().0) >= 3,
        "lapsed before its lease ran out"
    );
    cluster.stop().await;
}

/// Hole 6: a holder is an object with a UID. A holder Job replaced by a new one of the same
/// name (`kubectl replace --force`, here while the controller restarts, so that it never sees
/// the name without a Job) ends its claim's grant; the new Job inherits nothing: it is not
/// resumed on the old grant, and the lock goes to the next claim. Before, the new Job was
/// resumed holding the old one's grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_job_replaced_under_the_same_name_inherits_nothing() {
    let mut cluster = Cluster::start().await;
    cluster.lock("reports", json!({})).await;
    let old = cluster.job_with_claim("nightly", "reports").await;
    cluster.wait_phase("nightly", ClaimPhase::Granted).await;
    cluster
        .eventually("the Job runs", || async {
            cluster.running_jobs().await == vec!["nightly".to_string()]
        })
        .await;
    cluster.pod_with_claim("next", "reports").await;
    cluster.wait_phase("next", ClaimPhase::Waiting).await;
    assert_eq!(
        cluster.claim_status("nightly").await.holder_uid,
        old.metadata.uid,
        "the claim is bound to its Job"
    );

    let manifest = serde_json::to_string(&json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "nightly", "annotations": {"lockkeeper.dev/locks": "reports"}},
        "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]}}},
    }))
    .unwrap();
    cluster.stop_controller().await;
    cluster.kubectl_ok(&["replace", "--force", "-f", "-"], &manifest);
    cluster.start_controller();
    cluster.wait_phase("nightly", ClaimPhase::Released).await;
    cluster.wait_phase("next", ClaimPhase::Granted).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let new = cluster
        .api::<k8s_openapi::api::batch::v1::Job>()
        .get("nightly")
        .await
        .unwrap();
    assert_ne!(new.metadata.uid, old.metadata.uid, "the Job was replaced");
    assert_eq!(
        new.spec.unwrap().suspend,
        Some(true),
        "the new Job was resumed on the old one's grant"
    );
    cluster.stop().await;
}

/// Hole 10: deleting a holder Job does not hand its lock on while the pods it made still run
/// (a background deletion removes them after the Job; an orphaning one leaves them): the grant
/// holds until they are gone. Before, the claim was released the moment the Job went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_holder_jobs_lock_waits_until_its_pods_are_gone() {
    let cluster = Cluster::start().await;
    cluster.lock("reports", json!({})).await;
    cluster.job_with_claim("nightly", "reports").await;
    cluster.wait_phase("nightly", ClaimPhase::Granted).await;
    let pod = cluster.job_pod("nightly").await;
    cluster.pod_with_claim("next", "reports").await;
    cluster.wait_phase("next", ClaimPhase::Waiting).await;
    let orphan = kube::api::DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
        ..Default::default()
    };
    cluster
        .api::<k8s_openapi::api::batch::v1::Job>()
        .delete("nightly", &orphan)
        .await
        .unwrap();
    cluster
        .eventually("the Job is gone", || async {
            cluster
                .api::<k8s_openapi::api::batch::v1::Job>()
                .get_opt("nightly")
                .await
                .unwrap()
                .is_none()
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        (cluster.phase("nightly").await, cluster.phase("next").await),
        (ClaimPhase::Granted, ClaimPhase::Waiting),
        "the lock moved on while the deleted Job's pod still runs"
    );
    cluster
        .api::<Pod>()
        .delete(&pod.name_any(), &Default::default())
        .await
        .unwrap();
    cluster.wait_phase("nightly", ClaimPhase::Released).await;
    cluster.wait_phase("next", ClaimPhase::Granted).await;
    cluster.stop().await;
}

/// The same when the deleted Job is replaced at once by a new one of its name (found by the
/// chaos suite, seed 20672): the old Job's pod, still terminating, holds the grant, and its end
/// releases the claim. Before, the new Job's name hid the old pod's end and the claim stayed
/// `Granted` for good, its lock stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_holder_jobs_old_pod_releases_the_lock_when_it_ends() {
    const STILL_RUNNING: &str = "test.lockkeeper.dev/still-running";
    let cluster = Cluster::start().await;
    cluster.lock("reports", json!({})).await;
    cluster.job_with_claim("nightly", "reports").await;
    cluster.wait_phase("nightly", ClaimPhase::Granted).await;
    let pod = cluster.job_pod("nightly").await;
    let pods = cluster.api::<Pod>();
    let hold = json!({"metadata": {"finalizers": [STILL_RUNNING]}});
    pods.patch(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(hold),
    )
    .await
    .unwrap();
    let jobs = cluster.api::<k8s_openapi::api::batch::v1::Job>();
    let background = kube::api::DeleteParams::background();
    jobs.delete("nightly", &background).await.unwrap();
    cluster
        .eventually("the Job is gone and its pod terminating", || async {
            jobs.get_opt("nightly").await.unwrap().is_none()
                && pods
                    .get(&pod.name_any())
                    .await
                    .unwrap()
                    .metadata
                    .deletion_timestamp
                    .is_some()
        })
        .await;
    cluster.suspended_job("nightly", &["reports"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster.phase("nightly").await, ClaimPhase::Granted);
    let done = json!({"metadata": {"finalizers": null}});
    pods.patch(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(done),
    )
    .await
    .unwrap();
    cluster.wait_phase("nightly", ClaimPhase::Released).await;
    cluster.stop().await;
}
