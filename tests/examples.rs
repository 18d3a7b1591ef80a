//! Every directory of `examples/` applied as its README says, with the README's own
//! commands, on the real control plane, and checked to behave as the README says. The test
//! plays the kubelet only (no node runs pods): it ends pods, and the real Job and CronJob
//! controllers do the rest; `lockkeeper gate` runs as a real process, and the ZooKeeper-service
//! example runs its Python service from its ConfigMap.
//!
//! examples/job-with-claim and examples/gated-pod are driven by `make sandbox`'s demo, which
//! tests/sandbox.rs runs; they are applied here too.

mod cluster;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cluster::{Cluster, PATIENCE};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt;
use lockkeeper::resources::{ClaimPhase, DistributedLock};

/// Long enough for a side that wrongly ignored a hold to have taken the lock.
const SETTLE: Duration = Duration::from_millis(1500);

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples")
}

async fn queued(cluster: &Cluster, claim: &str) {
    cluster
        .eventually(&format!("claim {claim} is queued"), || async {
            matches!(
                cluster.phase_if_exists(claim).await,
                Some(ClaimPhase::Waiting | ClaimPhase::Granted)
            )
        })
        .await;
}

async fn running(cluster: &Cluster) -> BTreeSet<String> {
    cluster.running_jobs().await.into_iter().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_directory_applies_as_is_and_has_a_readme() {
    let cluster = Cluster::start().await;
    let mut directories: Vec<String> = std::fs::read_dir(examples())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    directories.sort();
    assert_eq!(
        directories,
        [
            "cronjob",
            "gated-pod",
            "job-with-claim",
            "read-write",
            "semaphore",
            "zookeeper-service"
        ],
        "a new example needs its behaviour checked in this file"
    );
    for directory in &directories {
        let readme = std::fs::read_to_string(examples().join(directory).join("README.md"))
            .unwrap_or_else(|err| panic!("examples/{directory}/README.md: {err}"));
        assert!(
            readme.contains(&format!("kubectl apply -f examples/{directory}")),
            "examples/{directory}/README.md shows how to apply it"
        );
        // Applied for real, as a user does: a server-side dry run of a directory is not what
        // a user runs, and fails where ServiceAccount admission looks for a ServiceAccount
        // that the same dry run only pretended to create.
        let path = format!("examples/{directory}/");
        let out = cluster.kubectl_ok(&["apply", "-f", &path], "");
        let objects = cluster.kubectl_ok(&["get", "-f", &path, "-o", "name"], "");
        assert_eq!(
            out.lines().count(),
            objects.lines().count(),
            "every object of {path} was applied:\n{out}"
        );
        cluster.kubectl_ok(&["delete", "-f", &path, "--wait=true"], "");
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_readers_share_the_writer_waits_for_them_and_a_late_reader_waits_for_it() {
    let cluster = Cluster::start().await;
    cluster.kubectl_line(
        "kubectl apply -f examples/read-write/lock.yaml -f examples/read-write/readers.yaml",
    );
    for reader in ["export-prices", "export-stock"] {
        cluster.wait_phase(reader, ClaimPhase::Granted).await;
    }
    cluster
        .eventually("both readers run", || async {
            running(&cluster).await == set(&["export-prices", "export-stock"])
        })
        .await;
    cluster.kubectl_line("kubectl apply -f examples/read-write/writer.yaml");
    queued(&cluster, "rebuild-catalog").await;
    cluster.kubectl_line("kubectl apply -f examples/read-write/late-reader.yaml");
    queued(&cluster, "export-search").await;
    let writer = cluster.claim_status("rebuild-catalog").await;
    assert_eq!(
        (writer.phase, writer.position),
        (ClaimPhase::Waiting, Some(2))
    );
    let late = cluster.claim_status("export-search").await;
    assert_eq!(
        (late.phase, late.position),
        (ClaimPhase::Waiting, Some(3)),
        "a reader behind a writer waits even while readers hold"
    );
    cluster
        .get_locks_until("catalog", |row| {
            row[1] == "ReadWrite"
                && row[2].contains("export-prices")
                && row[2].contains("export-stock")
        })
        .await;

    cluster.complete_job("export-prices").await;
    cluster
        .wait_phase("export-prices", ClaimPhase::Released)
        .await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        cluster.phase("rebuild-catalog").await,
        ClaimPhase::Waiting,
        "the writer waits for every reader"
    );
    cluster.complete_job("export-stock").await;
    cluster
        .wait_phase("rebuild-catalog", ClaimPhase::Granted)
        .await;
    cluster
        .eventually("the writer runs alone", || async {
            running(&cluster).await == set(&["rebuild-catalog"])
        })
        .await;
    assert_eq!(cluster.phase("export-search").await, ClaimPhase::Waiting);
    cluster.complete_job("rebuild-catalog").await;
    cluster
        .wait_phase("export-search", ClaimPhase::Granted)
        .await;
    cluster
        .eventually("the late reader runs", || async {
            running(&cluster).await == set(&["export-search"])
        })
        .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_runs_two_of_the_four_syncs_at_a_time() {
    let cluster = Cluster::start().await;
    cluster.kubectl_line("kubectl apply -f examples/semaphore/");
    let syncs: Vec<String> = (1..=4).map(|i| format!("warehouse-sync-{i}")).collect();
    let mut finished = BTreeSet::new();
    while finished.len() < syncs.len() {
        let left = syncs.len() - finished.len();
        let holding = cluster
            .poll(
                PATIENCE,
                "two syncs (or what is left) hold permits and run",
                || async {
                    let mut granted = BTreeSet::new();
                    let mut waiting = BTreeSet::new();
                    for sync in &syncs {
                        match cluster.phase_if_exists(sync).await {
                            Some(ClaimPhase::Granted) => granted.insert(sync.clone()),
                            Some(ClaimPhase::Waiting) => waiting.insert(sync.clone()),
                            _ => false,
                        };
                    }
                    (granted, running(&cluster).await, waiting)
                },
                |(granted, running, waiting)| {
                    granted.len() == left.min(2)
                        && running == granted
                        && waiting.len() == left - granted.len()
                },
            )
            .await
            .0;
        cluster
            .get_locks_until("warehouse-api", |row| {
                row[1] == "Semaphore" && holding.iter().all(|h| row[2].contains(h.as_str()))
            })
            .await;
        let done = holding.iter().next().unwrap().clone();
        cluster.complete_job(&done).await;
        cluster.wait_phase(&done, ClaimPhase::Released).await;
        finished.insert(done);
    }
    cluster.stop().await;
}

/// What the kubelet does with the pod's init container: runs it (here the local
/// `lockkeeper` binary with the container's arguments, the token file moved into `dir`).
fn run_init_container(cluster: &Cluster, pod: &Pod, dir: &Path) -> (Child, PathBuf) {
    let init = &pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    let mut args = init.args.clone().unwrap();
    assert_eq!(args[0], "gate", "the init container runs lockkeeper gate");
    let token = dir.join(format!("{}.token", pod.name_any()));
    let at = args.iter().position(|a| a == "--token-file").unwrap();
    args[at + 1] = token.display().to_string();
    let args: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    let child = cluster.gate(pod, &args, &dir.join(format!("{}.log", pod.name_any())));
    (child, token)
}

fn exited_ok(child: &mut Child) -> Option<bool> {
    child.try_wait().unwrap().map(|status| status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_runs_queue_on_the_lock_and_never_overlap() {
    let cluster = Cluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    cluster.kubectl_line("kubectl apply -f examples/cronjob/");
    // Two runs at once, as the README's `kubectl create job --from=cronjob/…` makes them; the
    // Job controller makes their pods.
    for run in ["billing-close-manual-1", "billing-close-manual-2"] {
        cluster.kubectl_line(&format!(
            "kubectl create job --from=cronjob/billing-close {run}"
        ));
    }
    let first = cluster.job_pod("billing-close-manual-1").await;
    let (mut first_gate, first_token) = run_init_container(&cluster, &first, dir.path());
    let first_claim = format!("{}-billing-close", first.name_any());
    cluster.wait_phase(&first_claim, ClaimPhase::Granted).await;
    let second = cluster.job_pod("billing-close-manual-2").await;
    let (mut second_gate, second_token) = run_init_container(&cluster, &second, dir.path());
    let second_claim = format!("{}-billing-close", second.name_any());
    cluster.wait_phase(&second_claim, ClaimPhase::Waiting).await;
    cluster
        .eventually("the first run's init container exits 0", || {
            let exited = exited_ok(&mut first_gate);
            async move { exited == Some(true) }
        })
        .await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        exited_ok(&mut second_gate),
        None,
        "the second run waits in its init container"
    );
    // The first run's pod ends: the second run starts.
    cluster.set_pod_phase(&first.name_any(), "Succeeded").await;
    cluster
        .eventually("the second run's init container exits 0", || {
            let exited = exited_ok(&mut second_gate);
            async move { exited == Some(true) }
        })
        .await;
    // The first claim's Released status is written right after its release, which may come
    // second to the next grant's write.
    cluster.wait_phase(&first_claim, ClaimPhase::Released).await;
    let token = |path: &Path| -> u64 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert!(
        token(&second_token) > token(&first_token),
        "fencing tokens grow from run to run"
    );
    cluster.stop().await;
}

/// The example's Python service, run from its ConfigMap with Debian's python3-kazoo; its
/// stdout lines arrive on the channel.
struct LedgerService {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl LedgerService {
    fn start(script: &Path, zookeeper: &str) -> Self {
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .env("ZOOKEEPER", zookeeper)
            .env("HOLD_SECONDS", "600")
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the ledger service");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        LedgerService { child, lines }
    }

    /// Waits up to `patience` for a line starting with `prefix`.
    fn says(&self, prefix: &str, patience: Duration) -> bool {
        let deadline = std::time::Instant::now() + patience;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// SIGTERM, as Kubernetes stops the pod; the service releases the lock and exits 0.
    fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        assert!(
            self.child.wait().unwrap().success(),
            "the service exits 0 on SIGTERM"
        );
    }
}

impl Drop for LedgerService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_service_and_the_close_books_job_take_turns_on_the_ledger_lock() {
    const SERVICE_START: Duration = Duration::from_secs(60);
    // The service's path is outside the namespace's part of ZooKeeper: the installation
    // allows it, as the example's README says.
    let mut cluster = Cluster::start_without_controller().await;
    let allowed = format!("{}=/services/billing", cluster.namespace);
    cluster.start_controller_with(|config| {
        config
            .allowed_lock_paths
            .push(allowed.parse().expect("an allowed lock path"))
    });
    cluster.kubectl_line("kubectl apply -f examples/zookeeper-service/lock.yaml -f examples/zookeeper-service/ledger-service.yaml",
    );
    let config: ConfigMap = cluster
        .api::<ConfigMap>()
        .get("ledger-service")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("ledger_service.py");
    std::fs::write(&script, &config.data.unwrap()["ledger_service.py"]).unwrap();

    let service = LedgerService::start(&script, &cluster.zk.connect_string());
    assert!(
        service.says("holding the ledger lock", SERVICE_START),
        "the service takes the free lock"
    );
    cluster.kubectl_line("kubectl apply -f examples/zookeeper-service/close-books.yaml");
    cluster.wait_phase("close-books", ClaimPhase::Waiting).await;
    assert_eq!(cluster.claim_status("close-books").await.position, Some(1));
    cluster
        .eventually(
            "the lock shows the service as an external holder",
            || async {
                let lock: DistributedLock = cluster.api().get("ledger").await.unwrap();
                lock.status.is_some_and(|s| s.external_holders == 1)
            },
        )
        .await;
    assert!(
        running(&cluster).await.is_empty(),
        "the Job stays suspended"
    );
    service.stop();
    cluster.wait_phase("close-books", ClaimPhase::Granted).await;
    assert_eq!(running(&cluster).await, set(&["close-books"]));

    // While the Job holds, the service (restarted) waits for it.
    let service = LedgerService::start(&script, &cluster.zk.connect_string());
    assert!(service.says("waiting for the ledger lock", SERVICE_START));
    assert!(
        !service.says("holding the ledger lock", SETTLE),
        "the service must not write while the Job holds the lock"
    );
    cluster.complete_job("close-books").await;
    assert!(
        service.says("holding the ledger lock", PATIENCE),
        "the service goes on once the Job completed"
    );
    // The controller leaves the queue first, then writes the claim's status.
    cluster
        .wait_phase("close-books", ClaimPhase::Released)
        .await;
    service.stop();
    cluster.stop().await;
}
