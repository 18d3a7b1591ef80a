//! `kubectl lock`, the kubectl plugin, as a user runs it: kubectl finds `kubectl-lock` on the
//! PATH, and it talks to the real control plane with the user's kubeconfig and rights.

mod cluster;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use cluster::Cluster;
use k8s_openapi::api::events::v1::Event;
use lockkeeper::resources::{ClaimPhase, DistributedLock, GrantOutcome};
use lockkeeper_testkit::{ControlPlane, ControlPlaneOptions, KubernetesVersion};
use serde_json::json;

/// `kubectl lock ARGS` as a user types it: kubectl with the plugin's directory on the PATH,
/// `input` on stdin.
fn kubectl_lock(kubeconfig: &std::ffi::OsStr, args: &[&str], input: &str) -> Output {
    let plugin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-lock"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("kubectl")
        .arg("lock")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{}", text(output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn fails_saying(output: &Output, says: &str) {
    assert_eq!(output.status.code(), Some(1), "{}", text(output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(says),
        "{says:?} missing: {}",
        text(output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_lock_lists_explains_releases_and_shows_history() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace.clone();
    let admin = cluster.kubeconfig().to_os_string();
    let lock = |args: &[&str]| {
        let mut all = vec!["-n", &ns];
        all.extend(args);
        kubectl_lock(&admin, &all, "")
    };
    cluster
        .lock("db", json!({"type": "Mutex", "lockDelaySeconds": 2}))
        .await;
    cluster
        .lock("reports", json!({"type": "Semaphore", "permits": 2}))
        .await;
    cluster.pod_with_claim("holder", "db").await;
    cluster.wait_phase("holder", ClaimPhase::Granted).await;
    cluster.pod_with_claim("waiter", "db").await;
    cluster.wait_phase("waiter", ClaimPhase::Waiting).await;
    cluster
        .get_locks_until("db", |row| row[2] == "holder")
        .await;

    // list: a row per lock, holders and the queue; -A adds the namespace.
    let listed = stdout(&lock(&["list"]));
    let db_row: Vec<&str> = listed
        .lines()
        .find(|l| l.starts_with("db "))
        .expect("a row for db")
        .split_whitespace()
        .collect();
    assert_eq!(&db_row[..4], ["db", "Mutex", "holder", "1"], "{listed}");
    assert!(listed.starts_with("NAME"), "{listed}");
    assert!(listed.contains("Semaphore(2)"), "{listed}");
    let everywhere = stdout(&kubectl_lock(&admin, &["list", "-A"], ""));
    assert!(
        everywhere.starts_with("NAMESPACE") && everywhere.contains(&ns),
        "{everywhere}"
    );

    // why: the waiter's place, who holds the lock and that its holder runs.
    for target in ["waiter", "pod/waiter", "claim/waiter"] {
        let why = stdout(&lock(&["why", target]));
        for says in [
            "claim waiter waits for lock db (Mutex, Exclusive): 1 ahead of it in line.",
            "Holding the lock now:",
            "claim holder: Pod holder, held for",
            "the Pod is Pending",
        ] {
            assert!(why.contains(says), "{target}: {says:?} missing:\n{why}");
        }
    }
    let why_holder = stdout(&lock(&["why", "holder"]));
    assert!(why_holder.contains("holds lock db"), "{why_holder}");

    // release: asks first; "n" changes nothing.
    let declined = kubectl_lock(
        &admin,
        &["release", "holder", "--reason", "stuck", "-n", &ns],
        "n\n",
    );
    fails_saying(&declined, "not confirmed");
    assert_eq!(cluster.phase("holder").await, ClaimPhase::Granted);
    let released = stdout(&lock(&[
        "release",
        "holder",
        "--reason",
        "stuck for an hour",
        "--yes",
    ]));
    assert!(released.contains("Revoked"), "{released}");
    let status = cluster.claim_status("holder").await;
    assert_eq!(status.phase, ClaimPhase::Revoked);
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("revoked by ") && message.contains("stuck for an hour"),
        "{message}"
    );
    assert!(
        !message.contains("unnamed"),
        "who asked is named: {message}"
    );
    // Treated as a loss: the waiter is granted only after the lock-delay.
    let why_waiter = stdout(&lock(&["why", "waiter"]));
    assert!(
        why_waiter.contains("held back for its lock-delay") || why_waiter.contains("holds lock db"),
        "{why_waiter}"
    );
    cluster.wait_phase("waiter", ClaimPhase::Granted).await;
    let revoked_at = status.released_at.unwrap().0;
    let granted_at = cluster.claim_status("waiter").await.granted_at.unwrap().0;
    assert!(
        granted_at.duration_since(revoked_at).as_secs_f64() >= 1.0,
        "the lock-delay held: revoked {revoked_at}, granted {granted_at}"
    );
    let events: kube::Api<Event> = cluster.api();
    let warned = cluster
        .poll(
            cluster::PATIENCE,
            "a Warning event says the claim was revoked",
            || async { events.list(&Default::default()).await.unwrap().items },
            |events| {
                events.iter().any(|e| {
                    e.reason.as_deref() == Some("Revoked")
                        && e.type_.as_deref() == Some("Warning")
                        && e.note
                            .as_deref()
                            .unwrap_or_default()
                            .contains("stuck for an hour")
                })
            },
        )
        .await;
    assert!(!warned.is_empty());

    // history: the revoked grant and the one that holds now.
    let locks: kube::Api<DistributedLock> = cluster.api();
    cluster
        .poll(
            cluster::PATIENCE,
            "the history records the revocation",
            || async {
                locks
                    .get("db")
                    .await
                    .unwrap()
                    .status
                    .unwrap_or_default()
                    .history
            },
            |history| history.len() == 2 && history[0].outcome == Some(GrantOutcome::Revoked),
        )
        .await;
    let history = stdout(&lock(&["history", "db"]));
    let rows: Vec<Vec<&str>> = history
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{history}");
    assert_eq!(
        (rows[0][1], rows[0][2], rows[0][3], rows[0].last().copied()),
        ("holder", "Pod", "holder", Some("Revoked")),
        "{history}"
    );
    assert_eq!(
        (rows[1][1], rows[1].last().copied()),
        ("waiter", Some("holds")),
        "{history}"
    );
    let empty = stdout(&lock(&["history", "reports"]));
    assert!(empty.contains("no grants on record"), "{empty}");

    // why job/NAME: the claims a Job holds.
    cluster.job_with_claim("nightly", "reports").await;
    cluster.wait_phase("nightly", ClaimPhase::Granted).await;
    let why_job = stdout(&lock(&["why", "job/nightly"]));
    assert!(
        why_job.contains("claim nightly holds lock reports (Semaphore(2), Exclusive)"),
        "{why_job}"
    );

    // run: the same as lockkeeper run.
    let ran = lock(&[
        "run",
        "--lock",
        "reports",
        "--",
        "sh",
        "-c",
        "test -n \"$LOCKKEEPER_FENCING_TOKEN\"",
    ]);
    assert!(ran.status.success(), "{}", text(&ran));

    // Bad input: a clear message and exit 1 (2 for a command line clap refuses).
    fails_saying(
        &lock(&["why", "nosuch"]),
        "no LockClaim \"nosuch\" in namespace",
    );
    fails_saying(
        &lock(&["history", "nosuch"]),
        "no DistributedLock \"nosuch\"",
    );
    fails_saying(&lock(&["why", "deployment/web"]), "give a claim's name");
    fails_saying(&lock(&["why", "pod/nobody"]), "has no LockClaims");
    fails_saying(
        &lock(&["release", "holder", "--yes"]),
        "already ended Revoked",
    );
    assert_eq!(lock(&["frobnicate"]).status.code(), Some(2));

    // No permission: a ServiceAccount without rights is told so.
    cluster.kubectl_ok(&["create", "serviceaccount", "nobody"], "");
    let nobody = cluster
        .service_account_kubeconfig("nobody")
        .into_os_string();
    fails_saying(
        &kubectl_lock(&nobody, &["list", "-n", &ns], ""),
        "not allowed to list DistributedLocks",
    );
    cluster.stop().await;

    // A cluster without the CRDs.
    let scratch = tempfile::tempdir().unwrap();
    let bare = ControlPlane::start(ControlPlaneOptions {
        version: KubernetesVersion::from_env(),
        dir: scratch.path().to_path_buf(),
        api_port: 0,
        watch_cache: true,
    })
    .expect("a control plane starts");
    fails_saying(
        &kubectl_lock(bare.kubeconfig().as_os_str(), &["list"], ""),
        "this cluster has no lockkeeper CRDs",
    );
}
