//! `lockkeeper gate` and `lockkeeper run` as users run them: real processes talking to the
//! real control plane (or the `KUBECONFIG` cluster), a controller on real ZooKeeper.
//! Issue 4's scenarios 2 and 6.

mod cluster;

use std::path::Path;
use std::process::{Child, ExitStatus};

use cluster::Cluster;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::ListParams;
use lockkeeper::resources::{ClaimPhase, LockClaim};
use serde_json::json;

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The exit status of whichever of `children` has exited, if any.
fn exited(children: &mut [(String, Child)]) -> Vec<(usize, ExitStatus)> {
    children
        .iter_mut()
        .enumerate()
        .filter_map(|(index, (_, child))| {
            child
                .try_wait()
                .expect("poll a process")
                .map(|s| (index, s))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gated_pods_start_one_at_a_time_with_growing_fencing_tokens() {
    let cluster = Cluster::start().await;
    cluster.apply_gate_rbac();
    cluster.lock("reports", json!({"type": "Mutex"})).await;
    let dir = tempfile::tempdir().unwrap();
    let mut gates: Vec<(String, Child)> = Vec::new();
    for i in 0..5 {
        let name = format!("report-{i}");
        let pod: Pod = cluster.gated_pod(&name).await;
        let token_file = dir.path().join(format!("{name}.token"));
        let log = dir.path().join(format!("{name}.log"));
        let gate = cluster.gate(
            &pod,
            &[
                "--lock",
                "reports",
                "--token-file",
                token_file.to_str().unwrap(),
            ],
            &log,
        );
        gates.push((name.clone(), gate));
        // The gate makes the pod's claim, owned by the pod; queue them in pod order.
        let claim = format!("{name}-reports");
        cluster
            .eventually(&format!("{name}'s gate queued its claim"), || async {
                matches!(
                    cluster.phase_if_exists(&claim).await,
                    Some(ClaimPhase::Waiting | ClaimPhase::Granted)
                )
            })
            .await;
        let made = cluster.api::<LockClaim>().get(&claim).await.unwrap();
        assert_eq!(
            made.owner_references()[0].uid,
            pod.uid().unwrap(),
            "owned by its pod"
        );
    }

    let mut last_token = 0;
    for round in 0..5 {
        let name = format!("report-{round}");
        let mut done = Vec::new();
        cluster
            .eventually(&format!("{name}'s gate exits"), || {
                done = exited(&mut gates);
                let any = !done.is_empty();
                async move { any }
            })
            .await;
        assert_eq!(done.len(), 1, "one gate exits at a time: {done:?}");
        let (index, status) = done[0];
        let (exited_name, _) = gates.remove(index);
        let log = log_of(&dir.path().join(format!("{exited_name}.log")));
        assert_eq!(exited_name, name, "gates open in claim order; log: {log}");
        assert!(status.success(), "{name}'s gate: {status}; log: {log}");
        for (waiting, _) in &gates {
            assert_eq!(
                cluster.phase(&format!("{waiting}-reports")).await,
                ClaimPhase::Waiting
            );
        }

        let token: i64 = std::fs::read_to_string(dir.path().join(format!("{name}.token")))
            .expect("the gate wrote the token file")
            .trim()
            .parse()
            .expect("a number");
        let status = cluster.claim_status(&format!("{name}-reports")).await;
        assert_eq!(
            status.fencing_token,
            Some(token),
            "the file holds the grant's token"
        );
        assert!(
            token > last_token,
            "fencing tokens grow: {token} after {last_token}"
        );
        last_token = token;

        // The pod's main containers ran; it ends one way or the other.
        if round % 2 == 0 {
            cluster.set_pod_phase(&name, "Succeeded").await;
            cluster
                .wait_phase(&format!("{name}-reports"), ClaimPhase::Released)
                .await;
        } else {
            cluster
                .api::<Pod>()
                .delete(&name, &Default::default())
                .await
                .unwrap();
        }
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_restarted_after_its_grant_adopts_the_claim_and_a_gate_that_times_out_leaves_the_queue()
 {
    let cluster = Cluster::start().await;
    cluster.apply_gate_rbac();
    cluster.lock("cache", json!({"type": "Mutex"})).await;
    let dir = tempfile::tempdir().unwrap();
    let holder = cluster.gated_pod("holder").await;
    let token_file = dir.path().join("holder.token");
    let args = [
        "--lock",
        "cache",
        "--token-file",
        token_file.to_str().unwrap(),
    ];
    let gate_succeeds = |attempt: &str| {
        let log = dir.path().join(format!("{attempt}.log"));
        let status = cluster.gate(&holder, &args, &log).wait().unwrap();
        assert!(status.success(), "{attempt}: {}", log_of(&log));
    };
    gate_succeeds("first");
    let token = std::fs::read_to_string(&token_file).unwrap();
    // The kubelet runs the init container again (pod sandbox restarted): same claim, same token.
    gate_succeeds("again");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), token);
    let claims = cluster
        .api::<LockClaim>()
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(
        claims.items.len(),
        1,
        "the restarted gate adopted its claim"
    );

    // A pod that may wait only 1 s gives up with exit code 75 and its claim leaves the queue.
    let impatient = cluster.gated_pod("impatient").await;
    let log = dir.path().join("impatient.log");
    let gave_up = cluster
        .gate(&impatient, &["--lock", "cache", "--timeout", "1s"], &log)
        .wait_with_output()
        .unwrap();
    assert_eq!(gave_up.status.code(), Some(75), "{}", log_of(&log));
    assert!(
        log_of(&log).contains("lock cache not granted"),
        "{}",
        log_of(&log)
    );
    assert_eq!(cluster.phase("impatient-cache").await, ClaimPhase::Expired);

    // Without the downward-API variables the gate says what is missing.
    let bare = cluster
        .lockkeeper()
        .args(["gate", "--lock", "cache"])
        .env_remove("POD_NAME")
        .output()
        .unwrap();
    assert_eq!(bare.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bare.stderr).contains("POD_NAME is not set"));
    cluster.stop().await;
}

/// Several locks through `lockkeeper gate` and `lockkeeper run`: each takes its locks in name
/// order (whatever order they are given in), starts only when all are granted, gets every
/// token, and a gate that gives up releases the lock it already holds. A run and a gate that
/// ask for `a` and `b` in opposite orders do not deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_and_run_take_several_locks_in_one_order_and_start_only_with_all() {
    let cluster = Cluster::start().await;
    cluster.apply_gate_rbac();
    cluster.lock("a", json!({"type": "Mutex"})).await;
    cluster.lock("b", json!({"type": "ReadWrite"})).await;
    let dir = tempfile::tempdir().unwrap();
    let ns = cluster.namespace.clone();
    // `lockkeeper run -n NS --lock L… OPTIONS -- sh -c SCRIPT` in the test's directory.
    let lockkeeper_run = |locks: &[&str], options: &[&str], script: &str, log: &str| {
        let mut run = cluster.lockkeeper();
        run.args(["run", "-n", &ns]);
        for lock in locks {
            run.args(["--lock", lock]);
        }
        run.args(options)
            .args(["--", "sh", "-c", script])
            .current_dir(dir.path())
            .stderr(std::fs::File::create(dir.path().join(log)).unwrap());
        run
    };
    let until_file = |name: &str| format!("while [ ! -e {name} ]; do sleep 0.05; done");
    // A run holds b until told to stop.
    let mut b_holder = lockkeeper_run(&["b"], &[], &until_file("stop-b"), "b-holder.log")
        .spawn()
        .unwrap();
    let held_b = run_claim_on(&cluster, "b", &[]).await;
    cluster.wait_phase(&held_b, ClaimPhase::Granted).await;

    // A gate asks for b (shared) and a: it takes a, waits for b, and the pod does not start.
    let pod = cluster.gated_pod("both").await;
    let token_file = dir.path().join("both.token");
    let gate_log = dir.path().join("both-gate.log");
    let mut gate = cluster.gate(
        &pod,
        &[
            "--lock",
            "b:shared",
            "--lock",
            "a",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        &gate_log,
    );
    cluster.wait_phase("both-a", ClaimPhase::Granted).await;
    cluster.wait_phase("both-b", ClaimPhase::Waiting).await;

    // A run asks for b and a the other way round. It queues on a (behind the pod) and holds
    // its claim on b back until a is granted: it never holds b while the pod waits for it.
    let mut crossed = lockkeeper_run(
        &["b", "a"],
        &[],
        "echo $LOCKKEEPER_FENCING_TOKENS > crossed.tokens",
        "crossed.log",
    )
    .spawn()
    .unwrap();
    let crossed_a = run_claim_on(&cluster, "a", &[]).await;
    let crossed_b = run_claim_on(&cluster, "b", std::slice::from_ref(&held_b)).await;
    cluster.wait_phase(&crossed_a, ClaimPhase::Waiting).await;
    cluster.wait_phase(&crossed_b, ClaimPhase::Pending).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(
        gate.try_wait().unwrap().is_none(),
        "the pod starts only with both locks: {}",
        log_of(&gate_log)
    );

    std::fs::write(dir.path().join("stop-b"), "").unwrap();
    assert!(b_holder.wait().unwrap().success());
    let status = gate.wait().unwrap();
    assert!(status.success(), "{}", log_of(&gate_log));
    let (a, b) = (
        cluster.claim_status("both-a").await,
        cluster.claim_status("both-b").await,
    );
    assert_eq!(
        (a.phase, b.phase),
        (ClaimPhase::Granted, ClaimPhase::Granted)
    );
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap(),
        format!(
            "a={}\nb={}\n",
            a.fencing_token.unwrap(),
            b.fencing_token.unwrap()
        ),
        "a line per lock, in lock order"
    );
    assert!(
        !dir.path().join("crossed.tokens").exists(),
        "the crossed run waits while the pod holds both"
    );

    // The pod ends: both locks go to the crossed run, which runs with both tokens.
    cluster.set_pod_phase("both", "Succeeded").await;
    let status = crossed.wait().unwrap();
    assert!(
        status.success(),
        "{}",
        log_of(&dir.path().join("crossed.log"))
    );
    let tokens = std::fs::read_to_string(dir.path().join("crossed.tokens")).unwrap();
    let tokens: Vec<(String, i64)> = tokens
        .trim()
        .split(',')
        .map(|pair| {
            let (lock, token) = pair.split_once('=').expect("LOCK=TOKEN");
            (lock.to_string(), token.parse().expect("a token"))
        })
        .collect();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert_eq!((tokens[0].0.as_str(), tokens[1].0.as_str()), ("a", "b"));
    assert!(
        tokens[0].1 > a.fencing_token.unwrap() && tokens[1].1 > b.fencing_token.unwrap(),
        "tokens grow past the pod's: {tokens:?}"
    );
    assert!(run_claims(&cluster).await.is_empty(), "both runs released");

    // A pod that may wait 2 s for a and b while b is held gives up, and lets go of a.
    let mut b_holder = lockkeeper_run(&["b"], &[], &until_file("stop-b-again"), "b-again.log")
        .spawn()
        .unwrap();
    let held_b = run_claim_on(&cluster, "b", &[]).await;
    cluster.wait_phase(&held_b, ClaimPhase::Granted).await;
    let impatient = cluster.gated_pod("impatient").await;
    let log = dir.path().join("impatient.log");
    let gave_up = cluster
        .gate(
            &impatient,
            &["--lock", "a", "--lock", "b", "--timeout", "2s"],
            &log,
        )
        .wait()
        .unwrap();
    assert_eq!(gave_up.code(), Some(75), "{}", log_of(&log));
    assert!(
        log_of(&log).contains("lock b not granted"),
        "{}",
        log_of(&log)
    );
    assert_eq!(cluster.phase("impatient-b").await, ClaimPhase::Expired);
    assert_eq!(
        cluster.phase_if_exists("impatient-a").await,
        None,
        "the claim on a was released"
    );
    let try_a = lockkeeper_run(&["a"], &["--timeout", "0s"], "true", "try-a.log")
        .status()
        .unwrap();
    assert!(
        try_a.success(),
        "a is free again: {}",
        log_of(&dir.path().join("try-a.log"))
    );
    std::fs::write(dir.path().join("stop-b-again"), "").unwrap();
    assert!(b_holder.wait().unwrap().success());

    // Bad input: the same lock twice, a mode that is none.
    for (args, says) in [
        (
            &["--lock", "a", "--lock", "a:shared"][..],
            "lock a is asked for twice",
        ),
        (&["--lock", "a:read"][..], "a:Shared"),
    ] {
        let refused = cluster
            .lockkeeper()
            .args(["run", "-n", &ns])
            .args(args)
            .args(["--", "true"])
            .output()
            .unwrap();
        assert_eq!(refused.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    cluster.stop().await;
}

/// A deadlock outside the one-order path: pod p1 is gated on `a` and its container runs
/// `lockkeeper run --lock b`, pod p2 the other way round. The controller reports it on every
/// claim of the cycle (a `Deadlocked` condition naming it, a Warning event, the
/// `lockkeeper_deadlocks_total` metric); once lock `a` asks for it (`deadlockPolicy:
/// ExpireYoungest`) the youngest waiting claim expires, its run gives up, and the other run
/// goes on once p2 ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_built_with_gate_and_run_is_reported_and_broken_when_the_lock_asks() {
    let mut cluster = Cluster::start_without_controller().await;
    let metrics_port = cluster.start_controller_process_serving_metrics();
    cluster.apply_gate_rbac();
    cluster.lock("a", json!({"type": "Mutex"})).await;
    cluster.lock("b", json!({"type": "Mutex"})).await;
    let dir = tempfile::tempdir().unwrap();
    let ns = cluster.namespace.clone();
    let mut pods = Vec::new();
    for (pod, lock) in [("p1", "a"), ("p2", "b")] {
        let made = cluster.gated_pod(pod).await;
        let log = dir.path().join(format!("{pod}-gate.log"));
        let gated = cluster.gate(&made, &["--lock", lock], &log).wait().unwrap();
        assert!(gated.success(), "{}", log_of(&log));
        pods.push(made);
    }
    // Each pod's container runs `lockkeeper run` on the other pod's lock.
    let run_in = |pod: &str, lock: &str| {
        let log = dir.path().join(format!("{pod}-run.log"));
        let child = cluster
            .lockkeeper()
            .args(["run", "-n", &ns, "--lock", lock, "--", "true"])
            .env("POD_NAME", pod)
            .env("POD_NAMESPACE", &ns)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        (child, log)
    };
    let (mut first, first_log) = run_in("p1", "b");
    let first_claim = run_claim_on(&cluster, "b", &[]).await;
    cluster.wait_phase(&first_claim, ClaimPhase::Waiting).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (mut second, second_log) = run_in("p2", "a");
    let second_claim = run_claim_on(&cluster, "a", &[]).await;

    let members = ["p1-a", "p2-b", first_claim.as_str(), second_claim.as_str()];
    for claim in members {
        let status = cluster
            .poll(
                std::time::Duration::from_secs(30),
                &format!("claim {claim} shows the deadlock"),
                || cluster.claim_status(claim),
                |s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Deadlocked" && c.status == "True")
                },
            )
            .await;
        let condition = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Deadlocked")
            .unwrap();
        for named in [
            format!(
                "Pod {ns}/p1 waits (claim {first_claim}) for lock {ns}/b held by Pod {ns}/p2 (claim p2-b)"
            ),
            format!(
                "Pod {ns}/p2 waits (claim {second_claim}) for lock {ns}/a held by Pod {ns}/p1 (claim p1-a)"
            ),
        ] {
            assert!(
                condition.message.contains(&named),
                "{claim}: {named:?} missing: {}",
                condition.message
            );
        }
    }
    let events: kube::Api<k8s_openapi::api::events::v1::Event> = cluster.api();
    cluster
        .eventually("a Warning event on each claim of the cycle", || async {
            let list = events.list(&Default::default()).await.unwrap().items;
            members.iter().all(|claim| {
                list.iter().any(|e| {
                    e.reason.as_deref() == Some("Deadlocked")
                        && e.type_.as_deref() == Some("Warning")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(claim)
                })
            })
        })
        .await;
    let (status_line, body) = cluster::http_get(metrics_port, "/metrics").expect("/metrics");
    assert!(status_line.contains("200"), "{status_line}");
    assert!(body.contains("lockkeeper_deadlocks_total 1"), "{body}");
    // Reported only: both runs still wait.
    assert!(first.try_wait().unwrap().is_none() && second.try_wait().unwrap().is_none());

    // Lock a asks to break it: the youngest waiter (the second run's claim) expires.
    cluster
        .api::<lockkeeper::resources::DistributedLock>()
        .patch(
            "a",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"deadlockPolicy": "ExpireYoungest"}})),
        )
        .await
        .unwrap();
    let gave_up = second.wait().unwrap();
    assert_eq!(gave_up.code(), Some(75), "{}", log_of(&second_log));
    assert!(
        log_of(&second_log).contains("to break a deadlock"),
        "{}",
        log_of(&second_log)
    );
    cluster
        .poll(
            std::time::Duration::from_secs(30),
            "the first run's claim no longer shows the deadlock",
            || cluster.claim_status(&first_claim),
            |s| {
                s.phase == ClaimPhase::Waiting
                    && !s.conditions.iter().any(|c| c.type_ == "Deadlocked")
            },
        )
        .await;
    cluster.set_pod_phase("p2", "Succeeded").await;
    let done = first.wait().unwrap();
    assert!(done.success(), "{}", log_of(&first_log));
    cluster.stop().await;
}

/// The name of a claim that a `lockkeeper run` made on `lock`, other than those in `not`.
async fn run_claim_on(cluster: &Cluster, lock: &str, not: &[String]) -> String {
    let found = cluster
        .poll(
            std::time::Duration::from_secs(30),
            &format!("a run made a claim on {lock}"),
            || async {
                run_claims(cluster)
                    .await
                    .into_iter()
                    .map(|c| c.name_any())
                    .filter(|name| !not.contains(name))
                    .find(|name| name.starts_with(&format!("{lock}-run-")))
            },
            Option::is_some,
        )
        .await;
    found.expect("polled until found")
}

/// The claims `lockkeeper run` made, by name.
async fn run_claims(cluster: &Cluster) -> Vec<LockClaim> {
    let params = ListParams::default().labels("app.kubernetes.io/managed-by=lockkeeper-run");
    cluster
        .api::<LockClaim>()
        .list(&params)
        .await
        .unwrap()
        .items
}

/// Waits until a `lockkeeper run` holds lock `nightly`, then queues claim `next` behind it.
async fn a_run_holds_and_next_waits(cluster: &Cluster) {
    cluster
        .eventually("a run holds the lock", || async {
            run_claims(cluster).await.iter().any(|c| {
                c.status
                    .as_ref()
                    .is_some_and(|s| s.phase == ClaimPhase::Granted)
            })
        })
        .await;
    cluster.pod_with_claim("next", "nightly").await;
    cluster.wait_phase("next", ClaimPhase::Waiting).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockkeeper_run_holds_the_lock_while_its_command_runs_and_a_killed_run_lets_its_lease_lapse()
 {
    let cluster = Cluster::start().await;
    cluster.lock("nightly", json!({"type": "Mutex"})).await;
    let dir = tempfile::tempdir().unwrap();
    let ns = cluster.namespace.clone();
    let script =
        "echo $LOCKKEEPER_FENCING_TOKEN > token; while [ ! -e done ]; do sleep 0.05; done; exit 3";
    // `lockkeeper run --lock nightly -n NS OPTIONS -- COMMAND`, in the test's directory.
    let lockkeeper_run = |options: &[&str], command: &[&str]| {
        let mut run = cluster.lockkeeper();
        run.args(["run", "--lock", "nightly", "-n", &ns])
            .args(options)
            .arg("--")
            .args(command)
            .current_dir(dir.path());
        run
    };
    let mut run = lockkeeper_run(&[], &["sh", "-c", script]).spawn().unwrap();
    let token_file = dir.path().join("token");
    cluster
        .eventually("the command runs", || async { token_file.exists() })
        .await;
    let claims = run_claims(&cluster).await;
    assert_eq!(claims.len(), 1);
    let held = claims[0].status.clone().unwrap();
    assert_eq!(
        held.phase,
        ClaimPhase::Granted,
        "the command runs only once granted"
    );
    let token: i64 = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        held.fencing_token,
        Some(token),
        "LOCKKEEPER_FENCING_TOKEN is the grant's token"
    );

    cluster.pod_with_claim("waiter", "nightly").await;
    cluster.wait_phase("waiter", ClaimPhase::Waiting).await;

    // A try-lock on the held lock: exit 75, the command never runs.
    let tried = lockkeeper_run(&["--timeout", "0s"], &["touch", "ran"])
        .output()
        .unwrap();
    assert_eq!(
        tried.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&tried.stderr)
    );
    assert!(!dir.path().join("ran").exists());

    std::fs::write(dir.path().join("done"), "").unwrap();
    let status = run.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(3),
        "the command's exit code passes through"
    );
    assert!(
        run_claims(&cluster).await.is_empty(),
        "released on exit: the claim is gone"
    );
    cluster.wait_phase("waiter", ClaimPhase::Granted).await;
    cluster.set_pod_phase("waiter", "Succeeded").await;

    // Killed without cleanup (with its command): the lease lapses and the lock moves on.
    let mut killed = {
        use std::os::unix::process::CommandExt;
        lockkeeper_run(&["--lease-duration", "2s"], &["sleep", "600"])
            .process_group(0)
            .spawn()
            .unwrap()
    };
    a_run_holds_and_next_waits(&cluster).await;
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(killed.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    killed.wait().unwrap();
    cluster.wait_phase("next", ClaimPhase::Granted).await;
    let lapsed = run_claims(&cluster).await;
    let status = lapsed[0].status.clone().unwrap();
    assert_eq!(status.phase, ClaimPhase::Released);
    assert!(
        status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("stopped renewing"),
        "{status:?}"
    );
    cluster.stop().await;
}

/// A `lockkeeper run` paused past its lease (SIGSTOP, its command still inside) is released,
/// but the lock is held back for its `lockDelaySeconds` before the next claim is granted: the
/// old holder may still be working, and on a semaphore no fencing token could tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_paused_past_its_lease_holds_the_lock_back_for_the_lock_delay() {
    use std::os::unix::process::CommandExt;
    const LOCK_DELAY: i64 = 4;
    let cluster = Cluster::start().await;
    cluster
        .lock(
            "nightly",
            json!({"type": "Semaphore", "permits": 1, "lockDelaySeconds": LOCK_DELAY}),
        )
        .await;
    let mut paused = cluster
        .lockkeeper()
        .args(["run", "--lock", "nightly", "-n", &cluster.namespace])
        .args(["--lease-duration", "2s", "--", "sleep", "600"])
        .process_group(0)
        .spawn()
        .unwrap();
    let group = nix::unistd::Pid::from_raw(paused.id() as i32);
    a_run_holds_and_next_waits(&cluster).await;

    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGSTOP).unwrap();
    cluster.wait_phase("next", ClaimPhase::Granted).await;
    let released = run_claims(&cluster).await[0].status.clone().unwrap();
    assert_eq!(released.phase, ClaimPhase::Released);
    assert!(
        released
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("held back for its lockDelaySeconds"),
        "{released:?}"
    );
    let released_at = released.released_at.expect("released").0.as_second();
    let granted_at = cluster
        .claim_status("next")
        .await
        .granted_at
        .expect("granted")
        .0
        .as_second();
    assert!(
        granted_at - released_at >= LOCK_DELAY,
        "the next claim was granted {} s after the lapse, before the lock-delay of {LOCK_DELAY} s",
        granted_at - released_at
    );
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL).unwrap();
    paused.wait().unwrap();
    cluster.stop().await;
}

/// `lockkeeper run` rides out API server errors: a 500 on its claim's creation and two on its
/// deletion are retried, the command's exit code passes through, and the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockkeeper_run_retries_its_claims_creation_and_release_through_500s() {
    use lockkeeper_testkit::api_fault_proxy::{ApiFaultProxy, ErrorRule};
    let cluster = Cluster::start().await;
    cluster.lock("nightly", json!({})).await;
    let proxy = ApiFaultProxy::in_front_of(Path::new(cluster.kubeconfig()))
        .await
        .expect("the API fault proxy starts");
    let dir = tempfile::tempdir().unwrap();
    let through_proxy = dir.path().join("kubeconfig");
    proxy
        .write_kubeconfig_through(Path::new(cluster.kubeconfig()), &through_proxy)
        .unwrap();
    for (verb, count) in [("create", 1), ("delete", 2)] {
        proxy.inject(ErrorRule {
            code: 500,
            count,
            verb: Some(verb.into()),
            resource: Some("lockclaims".into()),
        });
    }
    let ran = cluster
        .lockkeeper()
        .env("KUBECONFIG", &through_proxy)
        .args(["run", "--lock", "nightly", "-n", &cluster.namespace])
        .args(["--", "sh", "-c", "exit 0"])
        .output()
        .unwrap();
    assert_eq!(
        ran.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert_eq!(proxy.errors_answered(), 3, "every injected error was met");
    assert!(
        run_claims(&cluster).await.is_empty(),
        "released: the claim is gone"
    );
    cluster.stop().await;
}

/// A grant that ends while the command runs (here its claim is deleted) makes `lockkeeper run`
/// exit 76, even when the command ignores SIGTERM and finishes with 0: part of it ran without
/// the lock, and the caller must be able to tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockkeeper_run_exits_76_when_its_grant_ends_while_the_command_runs() {
    let cluster = Cluster::start().await;
    cluster.lock("nightly", json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let script = "trap '' TERM; touch started; while [ ! -e done ]; do sleep 0.05; done; exit 0";
    let mut run = cluster
        .lockkeeper()
        .args(["run", "--lock", "nightly", "-n", &cluster.namespace])
        .args(["--", "sh", "-c", script])
        .current_dir(dir.path())
        .spawn()
        .unwrap();
    let started = dir.path().join("started");
    cluster
        .eventually("the command runs", || async { started.exists() })
        .await;
    let claim = run_claims(&cluster).await.remove(0);
    cluster
        .api::<LockClaim>()
        .delete(&claim.name_any(), &Default::default())
        .await
        .unwrap();
    cluster
        .eventually("the claim is gone", || async {
            run_claims(&cluster).await.is_empty()
        })
        .await;
    std::fs::write(dir.path().join("done"), "").unwrap();
    assert_eq!(run.wait().unwrap().code(), Some(76));
    cluster.stop().await;
}
