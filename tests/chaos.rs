//! The chaos suite (issue 15): lockkeeper judged the way lock services are. Two controller
//! replicas (processes, with leader election) on the real control plane and a three-node
//! ZooKeeper ensemble serve a Mutex, a Semaphore (2 permits) and a ReadWrite lock to holders
//! of every kind — `lockkeeper run`, gated pods and suspended Jobs — while faults come on a
//! seeded schedule: the leading controller killed, paused past its session or stopped
//! gracefully (a rolling update) while a grant is held back, cut off from ZooKeeper or from
//! the API server, the ZooKeeper leader killed (alone, or while the leading controller is
//! paused), a holder paused past its lease, API faults (error storms, latency, dropped
//! watches, an etcd compaction), and the ends users and admins cause: `maxHoldSeconds`
//! expiries, revokes, a foreign ZooKeeper client deleting a holder's node, a holder Job
//! replaced under its name.
//!
//! Every holder's workload (`fenced-worker`) records `enter` and `leave` with its fencing
//! token and makes requests to a fenced resource; told to stop (SIGTERM), it works on for a
//! while, so that a grant handed on without its fence shows as an overlap. The test plays the
//! kubelet: a deleted pod stays `Terminating` while its worker works on. The test records
//! requests, releases, the claims' phases, exit codes and faults. The history goes to
//! `historycheck`, which checks it with Porcupine against a model of a lock guarding a fenced
//! resource and counts the invariants; this test fails unless it is linearizable, every count
//! of harm is zero and no replaced holder Job ever ran.
//!
//! Settings (environment): LOCKKEEPER_CHAOS_SEED (printed; pass it to replay a schedule),
//! LOCKKEEPER_CHAOS_SECONDS (how long faults come; `make test` runs the short default),
//! LOCKKEEPER_CHAOS_OUT (where the history, logs and summary go; default target/chaos),
//! LOCKKEEPER_CHAOS_FAULTS (a comma-separated list of fault names, to replay some only).

mod cluster;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster::Cluster;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::runtime::{WatchStreamExt, watcher};
use lockkeeper::resources::{
    ClaimPhase, DistributedLock, LockClaim, REVOKE_ANNOTATION, REVOKE_REQUESTED_BY_ANNOTATION,
};
use lockkeeper_testkit::api_fault_proxy::ErrorRule;
use lockkeeper_testkit::{
    ApiFaultProxy, ControlPlane, ControlPlaneOptions, CuttingProxy, FencedResource,
    KubernetesVersion, ZooKeeperEnsemble, monotonic_nanos,
};
use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// The ZooKeeper session of each controller replica, and the lease of each `lockkeeper run`.
const SESSION: &str = "3s";
const LEASE: &str = "3s";
/// Every lock's lock-delay: longer than a paused holder's pause past its lease.
const LOCK_DELAY_SECONDS: u64 = 3;
/// How long a holder's workload works on once told to stop (SIGTERM): a holder slow to stop,
/// so that a grant handed on without its fence shows as an overlap. Within the lock-delay,
/// with room left for a holder paused past its lease to notice (see `Fault::PauseHolder`).
const TERM_GRACE: Duration = Duration::from_millis(1000);
/// The lock whose holders are evicted when their grant ends abnormally (`evictOnLoss`).
const EVICTING_LOCK: &str = "mutex";
/// The finalizer of every pod the run makes: the test plays the kubelet, which keeps a
/// deleted pod (`Terminating`) until its container has stopped.
const KUBELET_FINALIZER: &str = "chaos.lockkeeper.dev/kubelet";
/// The requests of a short and of a long workload, 50 ms apart (a long one takes about 2 s):
/// revokes, expiries and foreign deletes catch long holders at work. A long one is well
/// within the lock-delay: on a lock without `evictOnLoss` nothing stops a pod holder whose
/// grant ended abnormally, and the lock-delay alone must cover the rest of its work.
const SHORT_WORK: u32 = 4;
const LONG_WORK: u32 = 20;
/// A lock's `maxHoldSeconds` during a max-hold fault, and how long the fault lasts.
const MAX_HOLD_SECONDS: u64 = 1;
const MAX_HOLD_FOR: Duration = Duration::from_secs(8);
/// How long a holder waits for its grant, and the run for its claims to settle, once the
/// faults have healed, before a claim counts as stuck.
const SETTLE: Duration = Duration::from_secs(120);

struct Settings {
    seed: u64,
    seconds: u64,
    out: PathBuf,
    faults: Vec<Fault>,
}

impl Settings {
    fn from_env() -> Settings {
        let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        let seed = number("LOCKKEEPER_CHAOS_SEED").unwrap_or_else(|| monotonic_nanos() % 1_000_000);
        let out = std::env::var_os("LOCKKEEPER_CHAOS_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo().join("target/chaos"))
            .join(format!("seed-{seed}"));
        let faults =
            match std::env::var("LOCKKEEPER_CHAOS_FAULTS") {
                Ok(names) => names
                    .split(',')
                    .map(|name| {
                        *FAULTS.iter().find(|f| f.name() == name.trim()).unwrap_or_else(|| {
                        panic!("LOCKKEEPER_CHAOS_FAULTS: no fault {name:?}; the faults are {:?}",
                            FAULTS.map(Fault::name))
                    })
                    })
                    .collect(),
                Err(_) => FAULTS.to_vec(),
            };
        Settings {
            seed,
            seconds: number("LOCKKEEPER_CHAOS_SECONDS").unwrap_or(90),
            out,
            faults,
        }
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A binary built beside `lockkeeper` (`cargo build --workspace --bins`, which `make test` runs).
fn sibling_binary(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_lockkeeper")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --workspace --bins` (make test does)",
        path.display()
    );
    path
}

/// The history checker `make deps` builds from e2e/historycheck.
fn historycheck() -> PathBuf {
    let path = std::env::var_os("LOCKKEEPER_HISTORYCHECK")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/historycheck/historycheck"));
    assert!(
        path.exists(),
        "{} is missing: `make deps` builds it (e2e/historycheck/build.sh)",
        path.display()
    );
    path
}

/// The run's history: one JSON object per line, appended by the test and by every worker.
#[derive(Clone)]
struct History {
    path: PathBuf,
    file: Arc<Mutex<std::fs::File>>,
}

impl History {
    fn create(path: PathBuf) -> History {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("create the history file");
        History {
            path,
            file: Arc::new(Mutex::new(file)),
        }
    }

    fn record(&self, event: Value) {
        let line = format!("{event}\n");
        self.file
            .lock()
            .expect("history lock")
            .write_all(line.as_bytes())
            .expect("append to the history");
    }
}

/// The locks under test, with what the checker needs to know of each (each also gets the
/// lock-delay, and [`EVICTING_LOCK`] `evictOnLoss`).
fn locks() -> Vec<(&'static str, Value)> {
    vec![
        ("mutex", json!({"type": "Mutex"})),
        ("semaphore", json!({"type": "Semaphore", "permits": 2})),
        ("readwrite", json!({"type": "ReadWrite"})),
    ]
}

/// One controller replica: a `lockkeeper controller` process that reaches each ensemble
/// member through a proxy of its own (to cut it off from ZooKeeper) and the API server
/// through a fault proxy of its own.
struct Replica {
    identity: String,
    zookeeper: Vec<CuttingProxy>,
    api: ApiFaultProxy,
    kubeconfig: PathBuf,
    log: PathBuf,
    process: Option<Child>,
}

impl Replica {
    async fn new(
        cluster: &Cluster,
        ensemble: &ZooKeeperEnsemble,
        index: usize,
        out: &Path,
    ) -> Self {
        let zookeeper: Vec<CuttingProxy> = ensemble
            .client_ports()
            .into_iter()
            .map(|port| CuttingProxy::start(port).expect("a ZooKeeper proxy starts"))
            .collect();
        let direct = cluster.controller_kubeconfig();
        let api = ApiFaultProxy::in_front_of(&direct)
            .await
            .expect("the API fault proxy starts");
        let kubeconfig = out.join(format!("replica-{index}.kubeconfig"));
        api.write_kubeconfig_through(&direct, &kubeconfig)
            .expect("write the replica's kubeconfig");
        Replica {
            identity: format!("replica-{index}"),
            zookeeper,
            api,
            kubeconfig,
            log: out.join(format!("replica-{index}.log")),
            process: None,
        }
    }

    fn start(&mut self, cluster: &Cluster) {
        let connect: Vec<String> = self.zookeeper.iter().map(|p| p.connect_string()).collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the replica's log");
        let child = Command::new(env!("CARGO_BIN_EXE_lockkeeper"))
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info")
            .args(["controller", "--zookeeper", &connect.join(",")])
            .args([
                "--session-timeout",
                SESSION,
                "--zookeeper-root",
                &cluster.root,
            ])
            .args([
                "--namespace",
                &cluster.namespace,
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .args(["--identity", &self.identity])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start lockkeeper controller");
        self.process = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, signal: Signal) {
        if let Some(child) = &self.process {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
        }
    }

    /// Waits for a replica told to stop (SIGTERM) to exit, as a rolling update does; kills it
    /// after 15 s.
    async fn wait_stopped(&mut self) {
        let Some(mut child) = self.process.take() else {
            return;
        };
        for _ in 0..300 {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "chaos: {} did not stop within 15 s of SIGTERM; killing it",
            self.identity
        );
        let _ = child.kill();
        let _ = child.wait();
    }

    fn cut_from_zookeeper(&self, cut: bool) {
        for proxy in &self.zookeeper {
            proxy.set_refusing(cut);
            if cut {
                proxy.cut_all();
            }
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.signal(Signal::SIGCONT);
        self.kill();
    }
}

/// Everything a chaos run shares between its holders and its fault schedule.
struct Ground {
    cluster: Cluster,
    plane: ControlPlane,
    ensemble: Mutex<ZooKeeperEnsemble>,
    replicas: tokio::sync::Mutex<Vec<Replica>>,
    resource: FencedResource,
    history: History,
    out: PathBuf,
    /// Process groups of the `lockkeeper run` holders running now (to pause one); each is
    /// the pid of its `lockkeeper run`, which names its claims' holder `<host>-<pid>`.
    runs: Mutex<Vec<i32>>,
    /// The claims of pod and Job holders whose worker runs now, with the holder's kind.
    working: Mutex<BTreeMap<String, HolderKind>>,
    /// The test's part of the kubelet.
    kubelet: Mutex<Kubelet>,
    /// When the faults healed: holders then wait at most [`SETTLE`].
    healed_at: Mutex<Option<std::time::Instant>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_stay_safe_under_a_seeded_schedule_of_faults() {
    let settings = Settings::from_env();
    std::fs::create_dir_all(&settings.out).expect("the chaos output directory");
    eprintln!(
        "chaos: seed {} ({} s of faults; replay with LOCKKEEPER_CHAOS_SEED={}); output in {}",
        settings.seed,
        settings.seconds,
        settings.seed,
        settings.out.display()
    );
    let ground = Arc::new(ground(&settings).await);
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let kubelet = tokio::spawn(play_kubelet(ground.clone()));
    let holders = tokio::spawn(drive_holders(ground.clone(), rng.random()));
    run_faults(&ground, &mut rng, &settings).await;
    ground.heal();
    let grants = holders.await.expect("the holders' driver ends");
    record_stuck_claims(&ground).await;
    kubelet.abort();
    let mut summary = check_history(&ground.history.path);
    let replacements_run = ground
        .kubelet
        .lock()
        .expect("kubelet lock")
        .replacements_run
        .len();
    summary["replaced_jobs_run"] = json!(replacements_run);
    let line = format!("chaos seed {}: {summary}", settings.seed);
    eprintln!("{line}");
    std::fs::write(settings.out.join("summary.json"), summary.to_string())
        .expect("write the summary");
    assert!(grants > 0, "no grant in the whole run");
    for (count, what) in [
        (
            "unsafe_overlaps",
            "overlapping exclusive holds the fencing token did not catch",
        ),
        ("token_regressions", "fencing tokens that went back"),
        (
            "fence_window_overlaps",
            "exclusive holds overlapping within lease + lock-delay of an abnormal end",
        ),
        ("permit_violations", "more holders than a lock allows"),
        (
            "api_holder_count_violations",
            "more Granted claims than a lock admits, as the API server showed them",
        ),
        ("granted_twice", "claims granted again after their release"),
        ("stuck_claims", "claims stuck after the faults healed"),
        (
            "undocumented_exits",
            "lockkeeper run exits with an undocumented code",
        ),
        (
            "replaced_jobs_run",
            "Jobs made to replace a holder Job under its name that ran (on the old grant)",
        ),
    ] {
        assert_eq!(summary[count], 0, "{what}: {line}");
    }
    assert_eq!(
        summary["linearizable"], "Ok",
        "the history is not linearizable: {line}"
    );
    let ground = Arc::try_unwrap(ground).unwrap_or_else(|_| panic!("the run's tasks have ended"));
    ground.replicas.lock().await.clear();
    drop(ground.plane);
    ground.cluster.stop().await;
    // A passed run keeps its history, summary and logs; etcd's data goes.
    let _ = std::fs::remove_dir_all(settings.out.join("controlplane"));
}

/// A control plane of the run's own (without the watch cache, so that a compaction makes watch
/// resumes get 410), the ensemble, the locks, the fenced resource and two replicas.
async fn ground(settings: &Settings) -> Ground {
    let plane = ControlPlane::start(ControlPlaneOptions {
        version: KubernetesVersion::from_env(),
        dir: settings.out.join("controlplane"),
        api_port: 0,
        watch_cache: false,
    })
    .expect("the chaos run's control plane starts");
    let cluster = Cluster::start_on(plane.kubeconfig().into_os_string()).await;
    cluster.apply_gate_rbac();
    let ensemble = ZooKeeperEnsemble::start(3).expect("a three-node ZooKeeper ensemble starts");
    let history = History::create(settings.out.join("history.jsonl"));
    for (name, spec) in locks() {
        let mut spec = spec;
        spec["lockDelaySeconds"] = json!(LOCK_DELAY_SECONDS);
        spec["evictOnLoss"] = json!(name == EVICTING_LOCK);
        cluster.lock(name, spec.clone()).await;
        history.record(json!({"ev": "lock", "lock": name, "type": spec["type"],
            "permits": spec.get("permits").cloned().unwrap_or(json!(1)),
            "lockDelayMs": LOCK_DELAY_SECONDS * 1000, "evictOnLoss": spec["evictOnLoss"]}));
    }
    let mut replicas = Vec::new();
    for index in 0..2 {
        let mut replica = Replica::new(&cluster, &ensemble, index, &settings.out).await;
        replica.start(&cluster);
        replicas.push(replica);
    }
    Ground {
        cluster,
        plane,
        ensemble: Mutex::new(ensemble),
        replicas: tokio::sync::Mutex::new(replicas),
        resource: FencedResource::start().expect("the fenced resource starts"),
        history,
        out: settings.out.clone(),
        runs: Mutex::new(Vec::new()),
        working: Mutex::new(BTreeMap::new()),
        kubelet: Mutex::new(Kubelet::default()),
        healed_at: Mutex::new(None),
    }
}

/// What the test knows as the kubelet (there is none): pods run their workers, and a deleted
/// pod stays `Terminating` (its finalizer, [`KUBELET_FINALIZER`]) until its worker, told to
/// stop, has stopped.
#[derive(Default)]
struct Kubelet {
    /// The pid of the worker of each pod whose worker runs now.
    running: BTreeMap<String, u32>,
    /// The pods seen deleted: no worker starts in them.
    deleting: BTreeSet<String>,
    /// The UIDs of the Jobs made to replace a holder Job under its name: none may run.
    replacements: BTreeSet<String>,
    /// The replacement Jobs seen running (resumed, or a pod of theirs made).
    replacements_run: BTreeSet<String>,
}

impl Ground {
    /// The faults are over: no new holder comes, and the last ones have [`SETTLE`] to end.
    fn heal(&self) {
        *self.healed_at.lock().expect("healed lock") = Some(std::time::Instant::now());
    }

    fn healed(&self) -> bool {
        self.healed_at.lock().expect("healed lock").is_some()
    }

    /// Whether the faults healed more than [`SETTLE`] ago: a holder still waiting is stuck.
    fn settled_past(&self) -> bool {
        self.healed_at
            .lock()
            .expect("healed lock")
            .is_some_and(|at| at.elapsed() > SETTLE)
    }

    fn holder_log(&self, id: &str) -> std::fs::File {
        let dir = self.out.join("holders");
        std::fs::create_dir_all(&dir).expect("the holders' log directory");
        std::fs::File::create(dir.join(format!("{id}.log"))).expect("a holder's log")
    }

    /// The `fenced-worker` command line of holder `id` (its token from `lockkeeper run`'s
    /// environment when `token` is `None`).
    fn worker(&self, holder: &Holder, token: Option<i64>) -> Vec<String> {
        let Holder {
            id,
            lock,
            fenced,
            requests,
            ..
        } = *holder;
        let mut args = vec![
            sibling_binary("fenced-worker").display().to_string(),
            self.history.path.display().to_string(),
            self.resource.address().to_string(),
            lock.into(),
            id.into(),
            if fenced { "exclusive" } else { "shared" }.into(),
            requests.to_string(),
            "50".into(),
        ];
        args.extend(token.map(|t| t.to_string()));
        args
    }

    fn record_released(&self, id: &str, lock: &str, abnormal: bool) {
        self.history
            .record(json!({"ev": "released", "holder": id, "lock": lock,
            "at": monotonic_nanos(), "abnormal": abnormal}));
    }

    fn record_stuck(&self, claim: &str, phase: &str) {
        eprintln!("chaos: claim {claim} is stuck ({phase})");
        self.history
            .record(json!({"ev": "stuck", "holder": claim, "phase": phase,
            "at": monotonic_nanos()}));
    }
}

/// The environment variable that has `fenced-worker` work on for [`TERM_GRACE`] once told
/// to stop, and its value.
fn term_grace_env() -> (&'static str, String) {
    (
        "FENCED_WORKER_TERM_GRACE_MS",
        TERM_GRACE.as_millis().to_string(),
    )
}

/// One holder of a chaos run: its id (its claim's name, but for `lockkeeper run`, which
/// names its claim itself), the lock, the claim's mode, whether its requests are fenced
/// writes (exclusive holders) or reads, and how many it makes.
struct Holder<'a> {
    id: &'a str,
    lock: &'a str,
    mode: &'a str,
    fenced: bool,
    requests: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HolderKind {
    Run,
    GatedPod,
    Job,
}

/// Holders at once, spread over the three locks.
const HOLDERS_AT_ONCE: usize = 9;

/// Keeps holders coming on every lock until the faults have healed, then lets the last ones
/// finish; answers how many of them entered.
async fn drive_holders(ground: Arc<Ground>, seed: u64) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let phases = tokio::spawn(record_phases(ground.clone()));
    let slots = Arc::new(Semaphore::new(HOLDERS_AT_ONCE));
    let mut holders = tokio::task::JoinSet::new();
    let locks = locks();
    let mut next = 0;
    while !ground.healed() {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("slots stay open");
        let (lock, _) = locks[next % locks.len()];
        let kind = match rng.random_range(0..10) {
            0..5 => HolderKind::Run,
            5..8 => HolderKind::GatedPod,
            _ => HolderKind::Job,
        };
        // Semaphore holders share the lock with another: their requests are reads, which no
        // token can fence. A ReadWrite lock has writers and readers.
        let (mode, fenced) = match lock {
            "semaphore" => ("Exclusive", false),
            "readwrite" if rng.random_bool(0.7) => ("Shared", false),
            _ => ("Exclusive", true),
        };
        let requests = if rng.random_bool(0.3) {
            LONG_WORK
        } else {
            SHORT_WORK
        };
        let id = format!("{}-{next}", format!("{kind:?}").to_lowercase());
        let ground = ground.clone();
        holders.spawn(async move {
            // Only `lockkeeper run` holds with a lease; pods and Jobs hold while they run.
            let lease_ms = matches!(kind, HolderKind::Run).then(|| {
                humantime::parse_duration(LEASE)
                    .expect("LEASE is a duration")
                    .as_millis()
            });
            ground
                .history
                .record(json!({"ev": "request", "holder": id, "lock": lock,
                "mode": if fenced { "Exclusive" } else { "Shared" }, "leaseMs": lease_ms,
                "at": monotonic_nanos()}));
            let holder = Holder {
                id: &id,
                lock,
                mode,
                fenced,
                requests,
            };
            let entered = match kind {
                HolderKind::Run => hold_with_run(&ground, &holder).await,
                HolderKind::GatedPod => hold_with_gated_pod(&ground, &holder).await,
                HolderKind::Job => hold_with_job(&ground, &holder).await,
            };
            drop(slot);
            entered
        });
        next += 1;
    }
    let mut entered = 0;
    while let Some(holder) = holders.join_next().await {
        entered += usize::from(holder.expect("a holder's task ends"));
    }
    phases.abort();
    entered
}

/// Asks `check` every 25 ms until it answers; once the faults healed more than [`SETTLE`]
/// ago, records `claim` stuck (`why`) and answers `None`.
async fn until_settled<T, F, Fut>(
    ground: &Ground,
    claim: &str,
    why: &str,
    mut check: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    loop {
        if let Some(found) = check().await {
            return Some(found);
        }
        if ground.settled_past() {
            ground.record_stuck(claim, why);
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits for `child` to exit: its exit code (128 + the signal for a process a signal ended,
/// as a shell reports it). Past the settling time it is killed and its claim reported stuck.
async fn wait_child(ground: &Ground, child: &mut Child, claim: &str) -> Option<i32> {
    let exited = until_settled(ground, claim, "still waiting", || {
        let status = child.try_wait().expect("poll a holder process");
        std::future::ready(status.map(|s| s.code().or(s.signal().map(|n| 128 + n)).unwrap_or(-1)))
    })
    .await;
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    exited
}

/// `lockkeeper run` holds the lock while the worker runs; its lease lapses if it is paused.
/// When the grant ends, run tells the worker to stop (SIGTERM), and it works on for
/// [`TERM_GRACE`].
async fn hold_with_run(ground: &Ground, holder: &Holder<'_>) -> bool {
    let Holder { id, lock, mode, .. } = *holder;
    let worker = ground.worker(holder, None);
    let (grace, grace_ms) = term_grace_env();
    let mut run = ground.cluster.lockkeeper();
    run.args([
        "run",
        "--lock",
        lock,
        "--mode",
        mode,
        "--lease-duration",
        LEASE,
    ])
    .args(["--namespace", &ground.cluster.namespace, "--"])
    .args(&worker)
    .env(grace, grace_ms)
    .process_group(0)
    .stdout(Stdio::null())
    .stderr(ground.holder_log(id));
    let mut child = run.spawn().expect("start lockkeeper run");
    let group = child.id() as i32;
    ground.runs.lock().expect("runs lock").push(group);
    let code = wait_child(ground, &mut child, id).await;
    ground
        .runs
        .lock()
        .expect("runs lock")
        .retain(|g| *g != group);
    let Some(code) = code else { return false };
    ground
        .history
        .record(json!({"ev": "exit", "holder": id, "code": code, "at": monotonic_nanos()}));
    // run deleted its claim before it exited: the hold is over.
    ground.record_released(
        id,
        lock,
        code == lockkeeper::client::run::EXIT_GRANT_LOST as i32,
    );
    code == 0 || code == lockkeeper::client::run::EXIT_GRANT_LOST as i32
}

/// A pod whose `lockkeeper gate` init container waits for the grant; the worker is its main
/// container, and the test, as the kubelet, marks the pod Succeeded when it ends.
async fn hold_with_gated_pod(ground: &Ground, holder: &Holder<'_>) -> bool {
    let Holder { id, lock, mode, .. } = *holder;
    let cluster = &ground.cluster;
    let pod: Pod = cluster
        .create(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": id, "finalizers": [KUBELET_FINALIZER]},
            "spec": {"serviceAccountName": cluster::GATE_ACCOUNT,
                "containers": [{"name": "main", "image": "busybox"}]},
        }))
        .await;
    let token_file = ground.out.join("holders").join(format!("{id}.token"));
    let log = ground.out.join("holders").join(format!("{id}.gate.log"));
    drop(ground.holder_log(id));
    let claim = format!("{id}-{lock}");
    let mut gate = cluster.gate(
        &pod,
        &[
            "--lock",
            lock,
            "--mode",
            mode,
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        &log,
    );
    let code = wait_child(ground, &mut gate, &claim).await;
    if let Some(code) = code {
        ground
            .history
            .record(json!({"ev": "exit", "holder": id, "code": code, "at": monotonic_nanos()}));
    }
    let mut entered = false;
    if code == Some(0) {
        let token: i64 = std::fs::read_to_string(&token_file)
            .expect("the gate wrote the token")
            .trim()
            .parse()
            .expect("a fencing token");
        entered = run_worker_then_end_pod(
            ground,
            holder,
            HolderKind::GatedPod,
            token,
            &claim,
            &pod.name_any(),
        )
        .await;
    }
    // Without a worker running, the kubelet lets the deleted pod go at once.
    let _ = cluster
        .api::<Pod>()
        .delete(id, &DeleteParams::default())
        .await;
    entered
}

/// A suspended Job declaring its lock (`lockkeeper.dev/locks`), whose pods carry the
/// kubelet's finalizer: a holder Job, and the Job that replaces one under its name.
fn suspended_job(name: &str, lock: &str) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "annotations": {"lockkeeper.dev/locks": lock}},
        "spec": {"suspend": true, "template": {
            "metadata": {"finalizers": [KUBELET_FINALIZER]},
            "spec": {"restartPolicy": "Never",
                "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]}}},
    })
}

/// A suspended Job with a claim: the controller resumes it once granted, the Job controller
/// makes its pod, and the worker runs as that pod.
async fn hold_with_job(ground: &Ground, holder: &Holder<'_>) -> bool {
    let Holder { id, lock, mode, .. } = *holder;
    let cluster = &ground.cluster;
    let _: Job = cluster.create(suspended_job(id, lock)).await;
    cluster
        .claim(
            id,
            json!({"lock": lock, "mode": mode, "holder": {"kind": "Job", "name": id}}),
        )
        .await;
    let pods = cluster.api::<Pod>();
    let selector = format!("batch.kubernetes.io/job-name={id}");
    let pod = until_settled(ground, id, "its Job never ran", || async {
        let list = pods.list(&ListParams::default().labels(&selector)).await;
        list.ok().and_then(|l| l.items.into_iter().next())
    })
    .await;
    let mut entered = false;
    // A claim that lost its grant since the Job was resumed shows no token: the Job was
    // suspended again and its pod deleted.
    let token = match pod {
        Some(_) => cluster.claim_status(id).await.fencing_token,
        None => None,
    };
    if let (Some(pod), Some(token)) = (pod, token) {
        entered =
            run_worker_then_end_pod(ground, holder, HolderKind::Job, token, id, &pod.name_any())
                .await;
    }
    let jobs = cluster.api::<Job>();
    // A Job made to replace this one under its name never runs: lockkeeper resumed nothing.
    if let Ok(Some(job)) = jobs.get_opt(id).await {
        let mut kubelet = ground.kubelet.lock().expect("kubelet lock");
        let uid = job.uid().unwrap_or_default();
        let suspended = job.spec.and_then(|spec| spec.suspend) == Some(true);
        if kubelet.replacements.contains(&uid) && !suspended {
            eprintln!("chaos: Job {id}, made to replace a holder Job, was resumed");
            kubelet.replacements_run.insert(uid);
        }
    }
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    let _ = jobs.delete(id, &background).await;
    let _ = cluster
        .api::<LockClaim>()
        .delete(id, &DeleteParams::default())
        .await;
    entered
}

/// Runs the worker of a pod holder as the pod's container (unless the pod was deleted
/// first: a kubelet starts no container in a pod being deleted), marks the pod Succeeded as
/// the kubelet would and lets it go if it was deleted meanwhile, and waits until the claim
/// shows the hold over. Answers whether the worker ran.
async fn run_worker_then_end_pod(
    ground: &Ground,
    holder: &Holder<'_>,
    kind: HolderKind,
    token: i64,
    claim: &str,
    pod: &str,
) -> bool {
    let Holder { id, lock, .. } = *holder;
    let args = ground.worker(holder, Some(token));
    let (grace, grace_ms) = term_grace_env();
    let mut worker = Command::new(&args[0]);
    worker
        .args(&args[1..])
        .env(grace, grace_ms)
        .stdout(Stdio::null())
        .stderr(ground.holder_log(&format!("{id}.worker")));
    let Some(mut child) = ground.start_container(pod, &mut worker) else {
        return false;
    };
    ground
        .working
        .lock()
        .expect("working lock")
        .insert(claim.to_string(), kind);
    wait_child(ground, &mut child, claim).await;
    ground.working.lock().expect("working lock").remove(claim);
    ground
        .kubelet
        .lock()
        .expect("kubelet lock")
        .running
        .remove(pod);
    let cluster = &ground.cluster;
    // The grant ended under the worker if the claim no longer shows it.
    let abnormal = cluster.phase_if_exists(claim).await != Some(ClaimPhase::Granted);
    // The pod may be gone (a deleted Job's, once the kubelet let it go).
    let succeeded = json!({"status": {"phase": "Succeeded"}});
    let _ = cluster
        .api::<Pod>()
        .patch_status(pod, &PatchParams::default(), &Patch::Merge(&succeeded))
        .await;
    release_pod(ground, pod).await;
    until_settled(ground, claim, "Granted after its holder ended", || async {
        let phase = cluster.phase_if_exists(claim).await;
        (!matches!(phase, Some(ClaimPhase::Granted | ClaimPhase::Lost))).then_some(())
    })
    .await;
    ground.record_released(id, lock, abnormal);
    true
}

impl Ground {
    /// Starts `worker` as the container of `pod`, as a kubelet would: never in a pod seen
    /// deleted. Under the kubelet's lock, so that a deletion seen meanwhile stops it.
    fn start_container(&self, pod: &str, worker: &mut Command) -> Option<Child> {
        let mut kubelet = self.kubelet.lock().expect("kubelet lock");
        if kubelet.deleting.contains(pod) {
            return None;
        }
        let child = worker.spawn().expect("start the worker");
        kubelet.running.insert(pod.to_string(), child.id());
        Some(child)
    }
}

/// Plays the kubelet's part in a pod's deletion: a deleted pod whose worker runs stays
/// `Terminating` (its finalizer) while the worker, told to stop (SIGTERM), works on for
/// [`TERM_GRACE`]; its holder's wrapper lets it go once the worker has exited. A deleted pod
/// with no worker goes at once. Also notes any pod of a Job made to replace a holder Job.
async fn play_kubelet(ground: Arc<Ground>) {
    let stream = watcher(ground.cluster.api::<Pod>(), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(stream);
    while let Some(pod) = stream.next().await {
        let Ok(pod) = pod else { continue };
        let name = pod.name_any();
        let owner = pod
            .owner_references()
            .iter()
            .find(|owner| owner.kind == "Job")
            .map(|owner| owner.uid.clone());
        let release = {
            let mut kubelet = ground.kubelet.lock().expect("kubelet lock");
            if let Some(uid) = owner.filter(|uid| kubelet.replacements.contains(uid))
                && kubelet.replacements_run.insert(uid.clone())
            {
                eprintln!("chaos: pod {name} of Job {uid}, made to replace a holder Job, was made");
                ground
                    .history
                    .record(json!({"ev": "replacement-ran", "holder": name,
                    "job": uid, "at": monotonic_nanos()}));
            }
            if pod.metadata.deletion_timestamp.is_none()
                || !pod.finalizers().iter().any(|f| f == KUBELET_FINALIZER)
                || !kubelet.deleting.insert(name.clone())
            {
                continue;
            }
            match kubelet.running.get(&name) {
                Some(&pid) => {
                    let pid = nix::unistd::Pid::from_raw(pid as i32);
                    let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
                    false
                }
                None => true,
            }
        };
        if release {
            let ground = ground.clone();
            tokio::spawn(async move { release_pod(&ground, &name).await });
        }
    }
}

/// The kubelet's last word on a pod whose container has stopped: its finalizer goes (a
/// deleted pod then goes too). Retried through conflicts.
async fn release_pod(ground: &Ground, name: &str) {
    let pods = ground.cluster.api::<Pod>();
    for _ in 0..100 {
        match pods.get_opt(name).await {
            Ok(None) => return,
            Ok(Some(pod)) => {
                let finalizers = pod.finalizers();
                if !finalizers.iter().any(|f| f == KUBELET_FINALIZER) {
                    return;
                }
                let kept: Vec<&String> = finalizers
                    .iter()
                    .filter(|f| *f != KUBELET_FINALIZER)
                    .collect();
                let patch = json!({"metadata": {"finalizers": kept,
                    "resourceVersion": pod.resource_version()}});
                if pods
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("chaos: could not remove the kubelet's finalizer from pod {name}");
}

/// Records every change of a claim's phase or token as the API server shows it, and its
/// deletion (phase `Deleted`), with the claim's resourceVersion: the checker replays them in
/// the API server's order.
async fn record_phases(ground: Arc<Ground>) {
    let mut last: BTreeMap<String, (String, Option<i64>)> = BTreeMap::new();
    // The lock and resourceVersion last seen of each claim, and the claims a relist showed.
    let mut versions: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    let mut relisted: Option<std::collections::BTreeSet<String>> = None;
    let stream = watcher(
        ground.cluster.api::<LockClaim>(),
        watcher::Config::default(),
    )
    .default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let (claim, deleted) = match event {
            Ok(watcher::Event::Apply(claim)) => (claim, false),
            Ok(watcher::Event::InitApply(claim)) => {
                relisted.get_or_insert_default().insert(claim.name_any());
                (claim, false)
            }
            Ok(watcher::Event::Delete(claim)) => (claim, true),
            Ok(watcher::Event::Init) => {
                relisted = Some(Default::default());
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                // A relist (after a dropped watch) shows no deletion: a claim it no longer
                // shows was deleted after the version last seen of it, and carries that
                // version: replayed in version order, its grant ends as early as it can have,
                // so a gap in the watch may hide an overlap in it but never makes one up.
                let shown = relisted.take().unwrap_or_default();
                for (name, seen) in &mut last {
                    if seen.0 != "Deleted" && !shown.contains(name) {
                        seen.0 = "Deleted".to_string();
                        let (lock, version) = &versions[name];
                        ground.history.record(json!({"ev": "phase", "holder": name,
                            "lock": lock, "phase": "Deleted", "token": seen.1,
                            "resourceVersion": version, "at": monotonic_nanos()}));
                    }
                }
                continue;
            }
            _ => continue,
        };
        let status = claim.status.clone().unwrap_or_default();
        let phase = match deleted {
            true => "Deleted".to_string(),
            false => format!("{:?}", status.phase),
        };
        let seen = (phase, status.fencing_token);
        let name = claim.metadata.name.clone().unwrap_or_default();
        versions.insert(
            name.clone(),
            (
                claim.spec.lock.clone(),
                claim.metadata.resource_version.clone(),
            ),
        );
        if last.get(&name) != Some(&seen) {
            ground.history.record(
                json!({"ev": "phase", "holder": name, "lock": claim.spec.lock,
                "mode": format!("{:?}", claim.spec.mode), "phase": seen.0, "token": seen.1,
                "resourceVersion": claim.metadata.resource_version, "at": monotonic_nanos()}),
            );
            last.insert(name, seen);
        }
    }
}

/// After every holder has ended and cleaned up, any claim left that is not over is stuck.
async fn record_stuck_claims(ground: &Ground) {
    let claims = ground.cluster.api::<LockClaim>();
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let left: Vec<LockClaim> = claims
            .list(&ListParams::default())
            .await
            .map(|list| list.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|c| !c.status.as_ref().is_some_and(|s| s.phase.is_final()))
            .collect();
        if left.is_empty() {
            return;
        }
        if std::time::Instant::now() > deadline {
            for claim in left {
                let phase = format!("{:?}", claim.status.unwrap_or_default().phase);
                ground.record_stuck(&claim.metadata.name.unwrap_or_default(), &phase);
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs historycheck on the history; its one-line JSON summary.
fn check_history(history: &Path) -> Value {
    let output = Command::new(historycheck())
        .arg(history)
        .output()
        .expect("historycheck runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "historycheck failed: {stderr}");
    if !stderr.is_empty() {
        eprintln!("{stderr}");
    }
    serde_json::from_slice(&output.stdout).expect("historycheck prints a JSON summary")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    KillLeader,
    PauseLeader,
    KillZooKeeperLeader,
    CutLeaderFromZooKeeper,
    CutLeaderFromApi,
    PauseHolder,
    ApiStorm,
    GracefulRestart,
    MaxHold,
    Revoke,
    ForeignDelete,
    ReplaceJob,
    PauseLeaderDuringZooKeeperKill,
}

const FAULTS: [Fault; 13] = [
    Fault::KillLeader,
    Fault::PauseLeader,
    Fault::KillZooKeeperLeader,
    Fault::CutLeaderFromZooKeeper,
    Fault::CutLeaderFromApi,
    Fault::PauseHolder,
    Fault::ApiStorm,
    Fault::GracefulRestart,
    Fault::MaxHold,
    Fault::Revoke,
    Fault::ForeignDelete,
    Fault::ReplaceJob,
    Fault::PauseLeaderDuringZooKeeperKill,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-9-leading-controller",
            Fault::PauseLeader => "pause-leading-controller",
            Fault::KillZooKeeperLeader => "kill-zookeeper-leader",
            Fault::CutLeaderFromZooKeeper => "partition-controller-zookeeper",
            Fault::CutLeaderFromApi => "partition-controller-api",
            Fault::PauseHolder => "pause-holder-past-lease",
            Fault::ApiStorm => "api-errors-latency-dropped-watches-compaction",
            Fault::GracefulRestart => "sigterm-leading-controller-during-hold-back",
            Fault::MaxHold => "max-hold-expiries",
            Fault::Revoke => "revoke-working-grant",
            Fault::ForeignDelete => "foreign-client-deletes-holder-node",
            Fault::ReplaceJob => "replace-holder-job",
            Fault::PauseLeaderDuringZooKeeperKill => {
                "pause-leading-controller-during-zookeeper-leader-kill"
            }
        }
    }
}

/// Faults one after another, each kind in turn (in a seeded order per round) with quiet
/// time between them, for `duration`. Each fault heals before the next begins.
async fn run_faults(ground: &Arc<Ground>, rng: &mut StdRng, settings: &Settings) {
    let duration = Duration::from_secs(settings.seconds);
    use rand::seq::SliceRandom;
    let started = std::time::Instant::now();
    let mut round: Vec<Fault> = Vec::new();
    // Holders first queue and hold without faults for a moment.
    tokio::time::sleep(Duration::from_secs(5)).await;
    while started.elapsed() < duration {
        if round.is_empty() {
            round = settings.faults.clone();
            round.shuffle(rng);
        }
        let fault = round.pop().expect("a fault of the round");
        let begun = monotonic_nanos();
        let detail = inject(ground, fault, rng).await;
        ground
            .history
            .record(json!({"ev": "fault", "kind": fault.name(), "start": begun,
            "end": monotonic_nanos(), "detail": detail}));
        tokio::time::sleep(Duration::from_millis(rng.random_range(1500..4000))).await;
    }
}

/// The replica that leads now: the lowest node under `<root>/_leader` names it.
async fn leading_replica(ground: &Ground) -> usize {
    let connect = ground
        .ensemble
        .lock()
        .expect("ensemble lock")
        .connect_string();
    let root = &ground.cluster.root;
    let find = async {
        let zk = zookeeper_client::Client::connect(&connect).await.ok()?;
        let election = format!("{root}/_leader");
        let nodes = zk.list_children(&election).await.ok()?;
        let lowest = nodes
            .iter()
            .min_by_key(|n| n.rsplit('-').next().map(str::to_owned))?;
        let (data, _) = zk.get_data(&format!("{election}/{lowest}")).await.ok()?;
        String::from_utf8(data)
            .ok()?
            .strip_prefix("replica-")?
            .parse()
            .ok()
    };
    tokio::time::timeout(Duration::from_secs(5), find)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// What a fault did, for its record in the history (which claim, which lock).
type Detail = Option<String>;

async fn inject(ground: &Arc<Ground>, fault: Fault, rng: &mut StdRng) -> Detail {
    let leader = leading_replica(ground).await;
    let sleep = |ms: u64| tokio::time::sleep(Duration::from_millis(ms));
    match fault {
        Fault::KillLeader => {
            ground.replicas.lock().await[leader].kill();
            sleep(1000).await;
            ground.replicas.lock().await[leader].start(&ground.cluster);
        }
        Fault::PauseLeader => {
            // Past its 3 s session: the classic zombie leader once it resumes.
            ground.replicas.lock().await[leader].signal(Signal::SIGSTOP);
            sleep(5000).await;
            ground.replicas.lock().await[leader].signal(Signal::SIGCONT);
        }
        Fault::KillZooKeeperLeader => kill_zookeeper_leader(ground).await,
        Fault::CutLeaderFromZooKeeper => {
            ground.replicas.lock().await[leader].cut_from_zookeeper(true);
            sleep(5000).await;
            ground.replicas.lock().await[leader].cut_from_zookeeper(false);
        }
        Fault::CutLeaderFromApi => {
            let replicas = ground.replicas.lock().await;
            let api = &replicas[leader].api;
            api.inject(ErrorRule {
                code: 503,
                count: u32::MAX,
                verb: None,
                resource: None,
            });
            api.close_watches();
            sleep(5000).await;
            api.reset();
        }
        Fault::PauseHolder => {
            // Past its 3 s lease, and within the lock-delay that follows the lapse, with room
            // for the holder's workload, told to stop once it resumes, to work on for
            // TERM_GRACE: renewed at most 1 s before the pause, its lease lapses 2 s into it,
            // and the lock is held back until 5 s into it.
            let pick = rng.random_range(0..HOLDERS_AT_ONCE);
            let group = {
                let runs = ground.runs.lock().expect("runs lock");
                runs.get(pick % runs.len().max(1)).copied()
            };
            if let Some(group) = group {
                let group = nix::unistd::Pid::from_raw(group);
                let _ = nix::sys::signal::killpg(group, Signal::SIGSTOP);
                sleep(HOLDER_PAUSE.as_millis() as u64).await;
                let _ = nix::sys::signal::killpg(group, Signal::SIGCONT);
            }
        }
        Fault::ApiStorm => {
            let replicas = ground.replicas.lock().await;
            let api = &replicas[leader].api;
            for (code, verb, resource, count) in [
                (500, "patch", "lockclaims/status", 20),
                (409, "patch", "lockclaims/status", 10),
                (500, "list", "lockclaims", 5),
                (429, "create", "events", 10),
            ] {
                api.inject(ErrorRule {
                    code,
                    count,
                    verb: Some(verb.into()),
                    resource: Some(resource.into()),
                });
            }
            api.set_latency(Duration::from_millis(150));
            api.close_watches();
            ground
                .plane
                .compact_etcd()
                .expect("etcd compacts its history");
            sleep(4000).await;
            api.reset();
        }
        Fault::GracefulRestart => {
            return restart_leader_during_hold_back(ground, leader, rng).await;
        }
        Fault::MaxHold => {
            // Grants of the lock held past the limit expire (Expired, HoldExpired) under load,
            // each an abnormal end: fenced, its holder evicted where the lock asks.
            let (lock, _) = locks()[rng.random_range(0..locks().len())];
            let limit = |seconds: Option<u64>| async move {
                let patch = json!({"spec": {"maxHoldSeconds": seconds}});
                ground
                    .cluster
                    .api::<DistributedLock>()
                    .patch(lock, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .expect("patch the lock's maxHoldSeconds");
            };
            limit(Some(MAX_HOLD_SECONDS)).await;
            tokio::time::sleep(MAX_HOLD_FOR).await;
            limit(None).await;
            return Some(format!("{lock}: maxHoldSeconds {MAX_HOLD_SECONDS}"));
        }
        Fault::Revoke => {
            // `kubectl lock release` of a grant whose holder works.
            let claim = working_grant(ground, rng, |_| true).await?;
            revoke(ground, &claim).await;
            let name = claim.name_any();
            wait_until_phase(ground, &name, |phase| phase != ClaimPhase::Granted).await;
            return Some(name);
        }
        Fault::ForeignDelete => {
            // Another ZooKeeper client (the lock's directory lets any client delete) deletes
            // the node of a grant whose holder works: the grant is lost.
            let claim = working_grant(ground, rng, |claim| {
                claim.status.as_ref().is_some_and(|s| s.znode.is_some())
            })
            .await?;
            let znode = claim.status.as_ref()?.znode.clone()?;
            let connect = ground
                .ensemble
                .lock()
                .expect("ensemble lock")
                .connect_string();
            let delete = async {
                let zk = zookeeper_client::Client::connect(&connect).await.ok()?;
                zk.delete(&znode, None).await.ok()
            };
            let deleted = tokio::time::timeout(Duration::from_secs(5), delete)
                .await
                .ok()
                .flatten()
                .is_some();
            let name = claim.name_any();
            if deleted {
                wait_until_phase(ground, &name, |phase| phase != ClaimPhase::Granted).await;
            }
            return Some(format!("{name} {znode} deleted: {deleted}"));
        }
        Fault::ReplaceJob => return replace_holder_job(ground, rng).await,
        Fault::PauseLeaderDuringZooKeeperKill => {
            // Two faults at once: the leading controller paused past its session while the
            // ZooKeeper leader is killed (and restarted 3 s later); then both resume.
            ground.replicas.lock().await[leader].signal(Signal::SIGSTOP);
            let begun = std::time::Instant::now();
            kill_zookeeper_leader(ground).await;
            tokio::time::sleep(Duration::from_secs(5).saturating_sub(begun.elapsed())).await;
            ground.replicas.lock().await[leader].signal(Signal::SIGCONT);
        }
    }
    None
}

/// How long a `lockkeeper run` holder is paused: past its 3 s lease (see `Fault::PauseHolder`).
const HOLDER_PAUSE: Duration = Duration::from_millis(3500);

/// SIGKILLs the ensemble's leader (`srvr`) and restarts it with its data 3 s later.
async fn kill_zookeeper_leader(ground: &Arc<Ground>) {
    let ensemble = ground.clone();
    tokio::task::spawn_blocking(move || {
        let mut members = ensemble.ensemble.lock().expect("ensemble lock");
        let Some(leader) = members.leader() else {
            return;
        };
        members.kill(leader).expect("kill the ZooKeeper leader");
        drop(members);
        std::thread::sleep(Duration::from_secs(3));
        let mut members = ensemble.ensemble.lock().expect("ensemble lock");
        members
            .restart(leader)
            .expect("the ZooKeeper member starts again");
    })
    .await
    .expect("the ensemble fault ends");
}

/// A rolling update of the leader while a grant that ended abnormally is held back: first a
/// working grant is revoked, or a `lockkeeper run` holding a grant is paused until its lease
/// lapses; then the leader gets SIGTERM (its closing session deletes every node, the
/// held-back one too) and starts again once it has stopped. The next leader must honour the
/// ended claim's `heldBackUntil`.
async fn restart_leader_during_hold_back(
    ground: &Arc<Ground>,
    leader: usize,
    rng: &mut StdRng,
) -> Detail {
    let mut paused = None;
    let detail = if rng.random_bool(0.5) {
        match working_grant(ground, rng, |_| true).await {
            Some(claim) => {
                revoke(ground, &claim).await;
                let name = claim.name_any();
                wait_until_phase(ground, &name, |phase| phase != ClaimPhase::Granted).await;
                format!("{name} revoked")
            }
            None => "no grant to revoke".into(),
        }
    } else {
        match pause_run_until_it_lapses(ground, rng).await {
            Some((group, since, name)) => {
                paused = Some((group, since));
                format!("{name} lapsed")
            }
            None => "no run holding a grant".into(),
        }
    };
    ground.replicas.lock().await[leader].signal(Signal::SIGTERM);
    if let Some((group, since)) = paused {
        tokio::time::sleep(HOLDER_PAUSE.saturating_sub(since.elapsed())).await;
        let _ = nix::sys::signal::killpg(group, Signal::SIGCONT);
    }
    let mut replicas = ground.replicas.lock().await;
    replicas[leader].wait_stopped().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    replicas[leader].start(&ground.cluster);
    Some(format!("replica-{leader}; {detail}"))
}

/// Pauses (SIGSTOP) a `lockkeeper run` whose claim is granted, until the claim shows the
/// lease lapsed (or [`HOLDER_PAUSE`] is nearly over): its process group, when it was
/// paused, and its claim; `None` if no run holds a grant.
async fn pause_run_until_it_lapses(
    ground: &Ground,
    rng: &mut StdRng,
) -> Option<(nix::unistd::Pid, std::time::Instant, String)> {
    let runs = ground.runs.lock().expect("runs lock").clone();
    // `lockkeeper run` names its claims' holder `<host>-<pid>`.
    let run_of = |claim: &LockClaim| {
        let pid = claim
            .spec
            .holder
            .name
            .rsplit('-')
            .next()?
            .parse::<i32>()
            .ok()?;
        runs.contains(&pid).then_some(pid)
    };
    let claim = working_grant(ground, rng, |claim| run_of(claim).is_some()).await?;
    let group = nix::unistd::Pid::from_raw(run_of(&claim)?);
    let since = std::time::Instant::now();
    let _ = nix::sys::signal::killpg(group, Signal::SIGSTOP);
    let name = claim.name_any();
    let claims = ground.cluster.api::<LockClaim>();
    while since.elapsed() < HOLDER_PAUSE - Duration::from_millis(300) {
        let phase = claims
            .get_opt(&name)
            .await
            .ok()
            .flatten()
            .map(|c| c.status.unwrap_or_default().phase);
        if phase != Some(ClaimPhase::Granted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Some((group, since, name))
}

/// A claim granted now whose holder works — a `lockkeeper run` (which runs its command while
/// granted), or a pod or Job whose worker runs — and that `fits`, chosen at random; waits up
/// to 5 s for one.
async fn working_grant(
    ground: &Ground,
    rng: &mut StdRng,
    fits: impl Fn(&LockClaim) -> bool,
) -> Option<LockClaim> {
    let claims = ground.cluster.api::<LockClaim>();
    for _ in 0..50 {
        if let Ok(list) = claims.list(&ListParams::default()).await {
            let working = ground.working.lock().expect("working lock").clone();
            let mut found: Vec<LockClaim> = list
                .items
                .into_iter()
                .filter(|claim| {
                    claim
                        .status
                        .as_ref()
                        .is_some_and(|s| s.phase == ClaimPhase::Granted)
                        && (claim.spec.holder.kind == lockkeeper::resources::HolderKind::Lease
                            || working.contains_key(&claim.name_any()))
                        && fits(claim)
                })
                .collect();
            if !found.is_empty() {
                let pick = rng.random_range(0..found.len());
                return Some(found.swap_remove(pick));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Revokes `claim` as `kubectl lock release` does: its annotations, guarded by its UID.
async fn revoke(ground: &Ground, claim: &LockClaim) {
    let patch = json!({"metadata": {"uid": claim.uid(), "annotations": {
        REVOKE_ANNOTATION: "chaos", REVOKE_REQUESTED_BY_ANNOTATION: "chaos"}}});
    let _ = ground
        .cluster
        .api::<LockClaim>()
        .patch(
            &claim.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await;
}

/// Waits up to 5 s for the claim `name` to show a phase that `done` accepts (or to be gone).
async fn wait_until_phase(ground: &Ground, name: &str, done: impl Fn(ClaimPhase) -> bool) {
    for _ in 0..200 {
        match ground.cluster.phase_if_exists(name).await {
            Some(phase) if !done(phase) => {}
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Replaces a holder Job whose worker runs with a new Job of the same name, as
/// `kubectl replace --force` does: the old one deleted (background propagation: its pod,
/// `Terminating`, works on for TERM_GRACE), the new one created suspended, declaring the same
/// lock. The claim is bound to the old Job's UID: the new Job must never run.
async fn replace_holder_job(ground: &Ground, rng: &mut StdRng) -> Detail {
    let mut job = None;
    for _ in 0..50 {
        let working = ground.working.lock().expect("working lock").clone();
        let jobs: Vec<String> = working
            .into_iter()
            .filter(|(_, kind)| *kind == HolderKind::Job)
            .map(|(claim, _)| claim)
            .collect();
        if !jobs.is_empty() {
            job = Some(jobs[rng.random_range(0..jobs.len())].clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let name = job?;
    let lock = ground
        .cluster
        .api::<LockClaim>()
        .get_opt(&name)
        .await
        .ok()
        .flatten()?
        .spec
        .lock;
    let jobs = ground.cluster.api::<Job>();
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    jobs.delete(&name, &background).await.ok()?;
    let manifest: Job = serde_json::from_value(suspended_job(&name, &lock)).expect("a Job");
    for _ in 0..200 {
        match jobs.create(&Default::default(), &manifest).await {
            Ok(new) => {
                let uid = new.uid().unwrap_or_default();
                ground
                    .kubelet
                    .lock()
                    .expect("kubelet lock")
                    .replacements
                    .insert(uid.clone());
                // A few seconds for the new Job to be wrongly resumed.
                tokio::time::sleep(Duration::from_secs(3)).await;
                return Some(format!("{name} replaced by {uid}"));
            }
            // The old Job is still there (being deleted).
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    Some(format!("{name} deleted, not made again"))
}
