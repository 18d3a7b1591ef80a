//! The end-to-end harness: a real ZooKeeper, a real Kubernetes control plane (one per test
//! binary, shared by its tests; or the cluster that `KUBECONFIG` points at), the CRDs, and
//! `lockkeeper controller` on a namespace of its own per test. Tests play the kubelet only:
//! they move pods' phases, and the real Job controller completes Jobs from their pods.
#![allow(dead_code)]

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use lockkeeper::controller::{self, Config};
use lockkeeper::resources::{ClaimPhase, DistributedLock, LockClaim};
use lockkeeper::zookeeper::EngineConfig;
use lockkeeper_testkit::{ApiFaultProxy, ControlPlane, ZooKeeperServer};
use serde_json::{Value, json};

pub const PATIENCE: Duration = Duration::from_secs(30);

/// The ServiceAccount of `examples/gated-pod/rbac.yaml`.
pub const GATE_ACCOUNT: &str = "lockkeeper-gate";

/// The controller's ServiceAccount, as the chart (release `lockkeeper`) names it.
pub const CONTROLLER_ACCOUNT: &str = "lockkeeper";

/// The kubeconfig of the cluster `KUBECONFIG` names, or else of the real control plane this
/// test binary starts once and shares between its tests (envtest's pattern).
pub fn shared_kubeconfig() -> std::ffi::OsString {
    match std::env::var_os("KUBECONFIG") {
        Some(path) => path,
        None => ControlPlane::shared()
            .expect("the control plane starts (`make deps` builds it)")
            .kubeconfig()
            .into_os_string(),
    }
}

/// A client from a kubeconfig file.
pub async fn client_from(kubeconfig: &std::ffi::OsStr) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).expect("read the kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("a client configuration from the kubeconfig");
    Client::try_from(config).expect("a client")
}

pub struct Cluster {
    pub client: Client,
    pub namespace: String,
    pub zk: ZooKeeperServer,
    pub root: String,
    /// The fault proxy the controller talks to the API server through, in clusters started
    /// with faults.
    proxy: Option<std::sync::Arc<ApiFaultProxy>>,
    /// The admin's kubeconfig for processes the test starts: the control plane's, or the
    /// `KUBECONFIG` cluster's.
    kubeconfig: std::ffi::OsString,
    /// Files the test's processes need (kubeconfigs), removed with the cluster.
    scratch: tempfile::TempDir,
    controller: Option<Controller>,
}

pub enum Controller {
    InProcess {
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    },
    /// The `lockkeeper controller` binary, for tests that kill it.
    Process(std::process::Child),
}

impl Cluster {
    /// ZooKeeper, the API server, a namespace, the CRDs and an in-process controller.
    pub async fn start() -> Self {
        let mut cluster = Self::start_without_controller().await;
        cluster.start_controller();
        cluster
    }

    /// ZooKeeper, the API server, a namespace, the CRDs, and a controller that talks to the
    /// API server through a fault proxy ([`Cluster::faults`]): for the scenarios that break
    /// the controller's API traffic. The test's own requests go straight to the server.
    pub async fn start_with_faults() -> Self {
        Self::start_with_faults_on(shared_kubeconfig()).await
    }

    /// [`Cluster::start_with_faults`] on the cluster of an admin's `kubeconfig` (a control
    /// plane the test started).
    pub async fn start_with_faults_on(kubeconfig: std::ffi::OsString) -> Self {
        let mut cluster = Self::start_on(kubeconfig).await;
        let proxy = ApiFaultProxy::in_front_of(cluster.kubeconfig.as_ref())
            .await
            .expect("the API fault proxy starts");
        cluster.proxy = Some(std::sync::Arc::new(proxy));
        cluster.start_controller();
        cluster
    }

    /// Everything but the controller (tests that start it their own way).
    pub async fn start_without_controller() -> Self {
        Self::start_on(shared_kubeconfig()).await
    }

    /// Everything but the controller, on the cluster of an admin's `kubeconfig` (a control
    /// plane the test started).
    pub async fn start_on(kubeconfig: std::ffi::OsString) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(lockkeeper::cli::log_filter())
            .with_test_writer()
            .try_init();
        let zk = ZooKeeperServer::start().expect("ZooKeeper starts (make deps installs it)");
        let scratch = tempfile::tempdir().expect("a temporary directory");
        let client = client_from(&kubeconfig).await;
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let namespace = format!("e2e-{suffix}");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap(),
            )
            .await
            .expect("create the test namespace");
        install_crds(&client).await;
        let cluster = Cluster {
            client,
            namespace,
            zk,
            root: format!("/lockkeeper-e2e/{suffix}"),
            proxy: None,
            kubeconfig,
            scratch,
            controller: None,
        };
        // ServiceAccount admission refuses pods until the namespace's `default`
        // ServiceAccount exists; kube-controller-manager makes it.
        let accounts: Api<ServiceAccount> = cluster.api();
        cluster
            .eventually("the namespace's default ServiceAccount exists", || async {
                accounts.get_opt("default").await.ok().flatten().is_some()
            })
            .await;
        cluster
    }

    /// The test controller's configuration. Besides its own part of ZooKeeper
    /// (`<root>/<namespace>/…`), the test namespace's locks may use [`Cluster::shared_prefix`].
    pub fn controller_config(&self) -> Config {
        let mut engine = EngineConfig::new(self.zk.connect_string());
        engine.session_timeout = Duration::from_secs(4);
        Config {
            engine,
            root: self.root.clone(),
            allowed_lock_paths: vec![
                format!("{}={}", self.namespace, self.shared_prefix())
                    .parse()
                    .expect("an allowed lock path"),
            ],
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            namespace: Some(self.namespace.clone()),
            identity: format!("test-{}", uuid::Uuid::new_v4().simple()),
            concurrent_reconciles: lockkeeper::controller::CONCURRENT_RECONCILES,
        }
    }

    pub fn start_controller(&mut self) {
        self.start_controller_with(|_| {});
    }

    /// A ZooKeeper prefix outside the installation's root that the test controller lets the
    /// test namespace's locks use (`--allowed-lock-path`): where tests put locks shared with
    /// services outside Kubernetes.
    pub fn shared_prefix(&self) -> String {
        format!("{}-shared", self.root)
    }

    /// Starts a controller whose configuration `adjust` changed.
    pub fn start_controller_with(&mut self, adjust: impl FnOnce(&mut Config)) {
        let mut config = self.controller_config();
        adjust(&mut config);
        self.controller = Some(self.spawn_controller(config));
    }

    /// Runs a controller with `config` in-process, with the chart's RBAC, until the returned
    /// handle stops it ([`Controller::stop`]); the cluster does not track it.
    pub fn spawn_controller(&self, config: Config) -> Controller {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let kubeconfig = self.controller_kubeconfig();
        let task = tokio::spawn(async move {
            let client = client_from(kubeconfig.as_os_str()).await;
            controller::run_with(client, config, async {
                let _ = stopped.await;
            })
            .await
            .expect("the controller runs");
        });
        Controller::InProcess { stop, task }
    }

    /// The fault proxy between the controller and the API server ([`Cluster::start_with_faults`]).
    pub fn faults(&self) -> std::sync::Arc<ApiFaultProxy> {
        self.proxy
            .clone()
            .expect("a cluster started with faults (Cluster::start_with_faults)")
    }

    /// The admin's kubeconfig of this cluster, for processes the test starts.
    pub fn kubeconfig(&self) -> &std::ffi::OsStr {
        &self.kubeconfig
    }

    /// The kubeconfig the test's controller runs with. On the real control plane it is the
    /// chart's own: its ServiceAccount, Role and RoleBinding (namespace scope, `helm template
    /// --show-only`), applied in the test namespace, and a token of that account, so that the
    /// controller may do only what the chart grants. In a cluster started with faults, its
    /// server is the fault proxy.
    pub fn controller_kubeconfig(&self) -> std::path::PathBuf {
        if !self.account_kubeconfig_path(CONTROLLER_ACCOUNT).exists() {
            // Once per cluster: a controller started again keeps the account.
            self.apply_chart_rbac();
        }
        let direct = self.service_account_kubeconfig(CONTROLLER_ACCOUNT);
        let Some(proxy) = &self.proxy else {
            return direct;
        };
        let path = self
            .scratch
            .path()
            .join("controller-through-proxy.kubeconfig");
        proxy
            .write_kubeconfig_through(&direct, &path)
            .expect("write the kubeconfig");
        path
    }

    /// Where [`Cluster::service_account_kubeconfig`] writes the kubeconfig of `account`.
    fn account_kubeconfig_path(&self, account: &str) -> std::path::PathBuf {
        self.scratch.path().join(format!("{account}.kubeconfig"))
    }

    /// Applies the chart's ServiceAccount, Role and RoleBinding (namespace scope) in the test
    /// namespace.
    fn apply_chart_rbac(&self) {
        let output = std::process::Command::new(helm_binary())
            .args(["template", "lockkeeper", "charts/lockkeeper"])
            .args(["--namespace", &self.namespace])
            .args(["--set", "zookeeper.connect=127.0.0.1:2181"])
            .args(["--show-only", "templates/serviceaccount.yaml"])
            .args(["--show-only", "templates/rbac.yaml"])
            .current_dir(repo())
            .output()
            .expect("helm runs");
        assert!(
            output.status.success(),
            "helm template failed:\n{}",
            output_text(&output)
        );
        let rbac = String::from_utf8(output.stdout).expect("helm prints YAML");
        self.kubectl_ok(&["apply", "-f", "-"], &rbac);
    }

    /// The `lockkeeper` binary, talking to this cluster.
    pub fn lockkeeper(&self) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_lockkeeper"));
        command.env("KUBECONFIG", &self.kubeconfig);
        command
    }

    /// Runs kubectl in the test namespace with `input` on stdin; returns (success, stdout,
    /// stderr).
    pub fn kubectl(&self, args: &[&str], input: &str) -> (bool, String, String) {
        let mut all = vec!["--namespace", &self.namespace];
        all.extend(args);
        self.kubectl_as_typed(&all, input)
    }

    /// Runs kubectl with exactly `args` (the kubeconfig's namespace, `default`, unless they
    /// name one), as a user types a README's command.
    pub fn kubectl_as_typed(&self, args: &[&str], input: &str) -> (bool, String, String) {
        use std::io::Write;
        let mut child = std::process::Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl runs (it is installed on this machine)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Runs kubectl as [`Cluster::kubectl`] does and returns its stdout; fails the test with
    /// kubectl's output when it fails.
    pub fn kubectl_ok(&self, args: &[&str], input: &str) -> String {
        succeeded(args, self.kubectl(args, input))
    }

    /// [`Cluster::kubectl_as_typed`], failing the test when kubectl fails; its stdout.
    pub fn kubectl_as_typed_ok(&self, args: &[&str], input: &str) -> String {
        succeeded(args, self.kubectl_as_typed(args, input))
    }

    /// Runs a README's command line `kubectl ARGS…` in the test's namespace; its stdout.
    pub fn kubectl_line(&self, line: &str) -> String {
        let args: Vec<&str> = line
            .strip_prefix("kubectl ")
            .unwrap_or_else(|| panic!("{line:?} is not a kubectl command"))
            .split_whitespace()
            .collect();
        self.kubectl_ok(&args, "")
    }

    /// Spawns `command` (a `lockkeeper controller` built by the test) as this cluster's
    /// controller: stopped with SIGTERM, killed if the test fails.
    pub fn spawn_controller_process(&mut self, command: &mut std::process::Command) {
        let child = command.spawn().expect("start lockkeeper controller");
        self.controller = Some(Controller::Process(child));
    }

    /// Starts `lockkeeper controller` as a process of its own, on this cluster.
    pub fn start_controller_process(&mut self) {
        self.start_controller_process_via(&self.zk.connect_string());
    }

    /// Starts `lockkeeper controller` as a process of its own that reaches ZooKeeper at
    /// `zookeeper` (a proxy that can cut it off).
    pub fn start_controller_process_via(&mut self, zookeeper: &str) {
        self.start_controller_process_with(zookeeper, "127.0.0.1:0");
    }

    /// Starts `lockkeeper controller` as a process of its own, serving `/metrics` on a free
    /// port, which it returns.
    pub fn start_controller_process_serving_metrics(&mut self) -> u16 {
        let port = lockkeeper_testkit::zookeeper_server::free_port().expect("a free port");
        let zookeeper = self.zk.connect_string();
        self.start_controller_process_with(&zookeeper, &format!("127.0.0.1:{port}"));
        port
    }

    fn start_controller_process_with(&mut self, zookeeper: &str, metrics_addr: &str) {
        let config = self.controller_config();
        let mut command = self.lockkeeper();
        command
            .env("KUBECONFIG", self.controller_kubeconfig())
            .args([
                "controller",
                "--zookeeper",
                zookeeper,
                "--session-timeout",
                "4s",
            ])
            .args([
                "--zookeeper-root",
                &config.root,
                "--namespace",
                &self.namespace,
            ])
            .args([
                "--metrics-addr",
                metrics_addr,
                "--identity",
                &config.identity,
            ])
            .args([
                "--concurrent-reconciles",
                &config.concurrent_reconciles.to_string(),
            ]);
        for allowed in &config.allowed_lock_paths {
            command.args(["--allowed-lock-path", &allowed.to_string()]);
        }
        self.spawn_controller_process(&mut command);
    }

    /// A kubeconfig that authenticates as the ServiceAccount `account` of the test's
    /// namespace, with a token from the TokenRequest API, as a pod of that account would: what
    /// it may do is what RBAC grants that account, nothing more. Written once per account and
    /// test (the token lasts an hour).
    pub fn service_account_kubeconfig(&self, account: &str) -> std::path::PathBuf {
        let path = self.account_kubeconfig_path(account);
        if path.exists() {
            return path;
        }
        let token = self.kubectl_ok(&["create", "token", account, "--duration=1h"], "");
        let config: Value = serde_json::from_str(&succeeded(
            &["config", "view"],
            self.kubectl_as_typed(&["config", "view", "--minify", "--raw", "-o", "json"], ""),
        ))
        .expect("kubectl config view prints JSON");
        let kubeconfig = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": config["clusters"][0]["cluster"]}],
            "users": [{"name": account, "user": {"token": token.trim()}}],
            "contexts": [{"name": account, "context": {"cluster": "cluster", "user": account,
                "namespace": self.namespace}}],
            "current-context": account,
        });
        // Written aside and renamed into place: holders started side by side take the file
        // as soon as it exists, and must never read it half written (seen as a gate's exit 1,
        // "failed to determine current context", at chaos seed 104).
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let aside = path.with_extension(format!("kubeconfig.{write}"));
        std::fs::write(&aside, kubeconfig.to_string()).expect("write the kubeconfig");
        std::fs::rename(&aside, &path).expect("move the kubeconfig into place");
        path
    }

    /// A pod that runs as the ServiceAccount of `examples/gated-pod/rbac.yaml`, which the
    /// test applies first: what a `lockkeeper gate` init container runs with.
    pub async fn gated_pod(&self, name: &str) -> Pod {
        self.create(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"serviceAccountName": GATE_ACCOUNT,
                "containers": [{"name": "main", "image": "busybox"}]},
        }))
        .await
    }

    /// Applies `examples/gated-pod/rbac.yaml`: the ServiceAccount, Role and RoleBinding that
    /// `lockkeeper gate` needs.
    pub fn apply_gate_rbac(&self) {
        let rbac = repo().join("examples/gated-pod/rbac.yaml");
        self.kubectl_ok(&["apply", "-f", rbac.to_str().unwrap()], "");
    }

    /// Starts `lockkeeper gate` as the kubelet would run the init container of `pod`: with
    /// the downward-API variables and the token of the pod's ServiceAccount. Its stderr goes
    /// to `log`.
    pub fn gate(&self, pod: &Pod, args: &[&str], log: &std::path::Path) -> std::process::Child {
        let meta = &pod.metadata;
        let account = pod
            .spec
            .as_ref()
            .and_then(|spec| spec.service_account_name.as_deref())
            .unwrap_or("default");
        self.lockkeeper()
            .env("KUBECONFIG", self.service_account_kubeconfig(account))
            .arg("gate")
            .args(args)
            .env("POD_NAME", meta.name.as_deref().unwrap())
            .env("POD_NAMESPACE", meta.namespace.as_deref().unwrap())
            .env("POD_UID", meta.uid.as_deref().unwrap())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).expect("a log file"))
            .spawn()
            .expect("start lockkeeper gate")
    }

    /// Stops the controller gracefully (its ZooKeeper session closes).
    pub async fn stop_controller(&mut self) {
        if let Some(controller) = self.controller.take() {
            controller.stop().await;
        }
    }

    /// Sends `signal` to the controller process: SIGSTOP pauses it (its ZooKeeper session
    /// expires if the pause lasts), SIGCONT resumes it.
    pub fn signal_controller_process(&self, signal: nix::sys::signal::Signal) {
        let Some(Controller::Process(child)) = &self.controller else {
            panic!("only a controller process can be signalled");
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal the controller");
    }

    /// SIGKILLs a controller process: no cleanup, its ZooKeeper session is left to expire.
    pub fn kill_controller_process(&mut self) {
        match self.controller.take() {
            Some(Controller::Process(mut child)) => {
                child.kill().expect("kill the controller");
                let _ = child.wait();
            }
            other => panic!(
                "only a controller process can be killed (have {})",
                other.is_some()
            ),
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub async fn create<K>(&self, object: Value) -> K
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let object: K = serde_json::from_value(object).expect("a valid object");
        self.api::<K>()
            .create(&PostParams::default(), &object)
            .await
            .expect("create")
    }

    pub async fn lock(&self, name: &str, spec: Value) -> DistributedLock {
        self.create(json!({"apiVersion": "lockkeeper.dev/v1alpha1", "kind": "DistributedLock", "metadata": {"name": name}, "spec": spec}))
            .await
    }

    pub async fn claim(&self, name: &str, spec: Value) -> LockClaim {
        self.create(json!({"apiVersion": "lockkeeper.dev/v1alpha1", "kind": "LockClaim", "metadata": {"name": name}, "spec": spec}))
            .await
    }

    /// The ZooKeeper path of the lock `name`, once its status names it.
    pub async fn zookeeper_path(&self, name: &str) -> String {
        let lock = self
            .poll(
                PATIENCE,
                "the lock's status names its ZooKeeper path",
                || async { self.api::<DistributedLock>().get(name).await.unwrap() },
                |lock| {
                    lock.status
                        .as_ref()
                        .is_some_and(|s| s.zookeeper_path.is_some())
                },
            )
            .await;
        lock.status.unwrap().zookeeper_path.unwrap()
    }

    /// A Job created suspended, as users apply it next to its LockClaims, declaring the locks
    /// it waits for (`lockkeeper.dev/locks`: without it lockkeeper never resumes it).
    pub async fn suspended_job(&self, name: &str, locks: &[&str]) -> Job {
        self.create(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "annotations": {"lockkeeper.dev/locks": locks.join(",")}},
            "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]}}},
        }))
        .await
    }

    pub async fn pod(&self, name: &str) -> Pod {
        self.create(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            "status": {"phase": "Pending"},
        }))
        .await
    }

    /// A suspended Job declaring `lock`, and a claim of the same name on it, held by that Job;
    /// answers the Job.
    pub async fn job_with_claim(&self, name: &str, lock: &str) -> Job {
        let job = self.suspended_job(name, &[lock]).await;
        self.claim(
            name,
            json!({"lock": lock, "holder": {"kind": "Job", "name": name}}),
        )
        .await;
        job
    }

    /// A Pod and a claim of the same name on `lock`, held by that Pod.
    pub async fn pod_with_claim(&self, name: &str, lock: &str) -> LockClaim {
        self.pod(name).await;
        self.claim(
            name,
            json!({"lock": lock, "holder": {"kind": "Pod", "name": name}}),
        )
        .await
    }

    /// Plays the kubelet for the Job `name`: waits for a pod the Job controller made for it
    /// and marks that pod `Succeeded`; the Job controller then completes the Job.
    pub async fn complete_job(&self, name: &str) {
        let pod = self.job_pod(name).await;
        self.set_pod_phase(&pod.name_any(), "Succeeded").await;
        let jobs = self.api::<Job>();
        self.eventually(&format!("Job {name} is Complete"), || async {
            jobs.get(name)
                .await
                .ok()
                .and_then(|j| j.status)
                .and_then(|s| s.conditions)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Complete" && c.status == "True")
                })
        })
        .await;
    }

    /// Waits for a pod that the Job controller made for the Job `name` and that has not
    /// ended yet (`Pending`: no kubelet runs it).
    pub async fn job_pod(&self, name: &str) -> Pod {
        let pods = self.api::<Pod>();
        let selector = format!("batch.kubernetes.io/job-name={name}");
        self.poll(
            PATIENCE,
            &format!("the Job controller made a pod for Job {name}"),
            || async {
                pods.list(&kube::api::ListParams::default().labels(&selector))
                    .await
                    .expect("list the Job's pods")
                    .items
                    .into_iter()
                    .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending"))
            },
            |pod| pod.is_some(),
        )
        .await
        .expect("a pod")
    }

    pub async fn set_pod_phase(&self, name: &str, phase: &str) {
        let status = json!({"status": {"phase": phase}});
        self.api::<Pod>()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .expect("set the pod phase");
    }

    pub async fn claim_status(&self, name: &str) -> lockkeeper::resources::LockClaimStatus {
        self.api::<LockClaim>()
            .get(name)
            .await
            .expect("get claim")
            .status
            .unwrap_or_default()
    }

    /// The claim's phase, or `None` while it does not exist.
    pub async fn phase_if_exists(&self, name: &str) -> Option<ClaimPhase> {
        let claim = self
            .api::<LockClaim>()
            .get_opt(name)
            .await
            .expect("get claim")?;
        Some(claim.status.unwrap_or_default().phase)
    }

    pub async fn phase(&self, name: &str) -> ClaimPhase {
        self.claim_status(name).await.phase
    }

    /// Reads `fetch` every 25 ms until `done` holds for what it read, and returns that; after
    /// `patience` fails the test naming `what` and showing the last value read.
    pub async fn poll<T, F, Fut>(
        &self,
        patience: Duration,
        what: &str,
        mut fetch: F,
        done: impl Fn(&T) -> bool,
    ) -> T
    where
        T: std::fmt::Debug,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let value = fetch().await;
            if done(&value) {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until {what}; last seen: {value:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `kubectl get locks`, read until the row of `lock` (split in columns) satisfies `done`:
    /// a lock's status follows its claims within its refresh interval.
    pub async fn get_locks_until(&self, lock: &str, done: impl Fn(&[&str]) -> bool) -> String {
        self.poll(
            PATIENCE,
            &format!("kubectl get locks shows the expected row of {lock}"),
            || async { self.kubectl_line("kubectl get locks") },
            |table| {
                table.lines().any(|row| {
                    let columns: Vec<&str> = row.split_whitespace().collect();
                    columns.first() == Some(&lock) && done(&columns)
                })
            },
        )
        .await
    }

    /// Waits until `check` holds, or fails the test naming `what`.
    pub async fn eventually<F, Fut>(&self, what: &str, check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        self.poll(PATIENCE, what, check, |ok| *ok).await;
    }

    /// Waits until the claim exists and is in `phase`; on timeout the failure shows the
    /// claim's status.
    pub async fn wait_phase(&self, claim: &str, phase: ClaimPhase) {
        let what = format!("claim {claim} is {phase:?}");
        self.poll(
            PATIENCE,
            &what,
            || async {
                let found = self.api::<LockClaim>().get_opt(claim).await;
                found
                    .expect("get claim")
                    .map(|c| c.status.unwrap_or_default())
            },
            |s| s.as_ref().is_some_and(|s| s.phase == phase),
        )
        .await;
    }

    /// Names of the Jobs that are not suspended.
    pub async fn running_jobs(&self) -> Vec<String> {
        let jobs = self
            .api::<Job>()
            .list(&Default::default())
            .await
            .expect("list jobs");
        jobs.items
            .into_iter()
            .filter(|j| j.spec.as_ref().and_then(|s| s.suspend) != Some(true))
            .filter(|j| {
                !j.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Complete"))
            })
            .map(|j| j.name_any())
            .collect()
    }

    /// Deletes the test's namespace while the controller still runs, so that it releases
    /// the claims there; then stops the controller. Nothing is left `Terminating` on the
    /// shared control plane.
    pub async fn stop(mut self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces
            .delete(&self.namespace, &Default::default())
            .await;
        if self.controller.is_some() {
            let claims = self.api::<LockClaim>();
            self.eventually(
                "the controller released every claim of the deleted namespace",
                || async {
                    claims
                        .list(&Default::default())
                        .await
                        .map(|list| list.items.is_empty())
                        .unwrap_or(true)
                },
            )
            .await;
        }
        self.stop_controller().await;
    }
}

impl Controller {
    /// Stops the controller gracefully: SIGTERM for a process.
    pub async fn stop(self) {
        match self {
            Controller::InProcess { stop, task } => {
                let _ = stop.send(());
                let _ = task.await;
            }
            Controller::Process(mut child) => {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Cluster {
    /// A failed test must not leave a controller behind.
    fn drop(&mut self) {
        match self.controller.take() {
            Some(Controller::Process(mut child)) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Some(Controller::InProcess { task, .. }) => task.abort(),
            None => {}
        }
    }
}

fn succeeded(args: &[&str], (ok, out, err): (bool, String, String)) -> String {
    assert!(ok, "kubectl {} failed:\n{out}{err}", args.join(" "));
    out
}

/// The repository, where tests run commands as a user would from a clone.
pub fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A finished command's stdout and stderr, for failure messages.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `helm`: `$HELM`, or `.tools/helm` where `make deps` installs it.
pub fn helm_binary() -> std::path::PathBuf {
    let binary = std::env::var_os("HELM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/helm"));
    assert!(
        binary.exists(),
        "{} is missing: `make deps` installs helm",
        binary.display()
    );
    binary
}

/// Applies `crds/` (what `lockkeeper crd` prints) and waits until they are served.
pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, yaml) in lockkeeper::resources::crd_documents() {
        let crd: CustomResourceDefinition = serde_yaml::from_str(&yaml).unwrap();
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply("lockkeeper-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply a CRD");
        wait_established(client, &crd.name_any()).await;
    }
}

/// Waits until the CRD `name` is served (its Established condition is True).
pub async fn wait_established(client: &Client, name: &str) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let established = crds
            .get(name)
            .await
            .ok()
            .and_then(|c| c.status)
            .and_then(|s| s.conditions)
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "CRD {name} never established"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET path` on 127.0.0.1:`port` (HTTP/1.0): the status line and the body.
pub fn http_get(port: u16, path: &str) -> Option<(String, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}
