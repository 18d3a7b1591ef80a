//! The lockkeeper side of the benchmark: the real Kubernetes control plane (the testkit's,
//! one per bench process), the CRDs, and `lockkeeper controller` as a process of its own (so
//! that its memory can be read) whose API requests go through the API fault proxy, which
//! counts them; plus the calls a workload makes: pods, claims, pod phases, and a watch on
//! claims.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use lockkeeper::lock_rules::LockKind;
use lockkeeper::resources::{DistributedLock, LockClaim};
use lockkeeper::zookeeper::LockSpec;
use lockkeeper_testkit::{ApiFaultProxy, ControlPlane};
use serde_json::json;
use tokio::sync::mpsc;

pub struct Operator {
    pub client: Client,
    /// Between the controller and the API server: counts the controller's requests.
    proxy: ApiFaultProxy,
    /// The admin's kubeconfig (the workload's, and `lockkeeper gate`'s).
    pub kubeconfig: PathBuf,
    /// The admin's kubeconfig with the proxy as its server (the controller's).
    controller_kubeconfig: PathBuf,
    zookeeper: String,
    controller: Option<Child>,
    /// `handoff-floor`, when it runs instead of the controller.
    floor: Option<Child>,
    binary: PathBuf,
    pub plane: &'static ControlPlane,
}

/// A process's memory, from /proc/PID/status.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Memory {
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

impl Memory {
    pub fn of_process(pid: u32) -> Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("/proc/{pid}/status"))?;
        let kib = |field: &str| -> Result<f64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(field))
                .with_context(|| format!("{field} in /proc/{pid}/status"))?;
            Ok(line
                .split_whitespace()
                .nth(1)
                .context("a number")?
                .parse::<f64>()?)
        };
        Ok(Memory {
            rss_mib: kib("VmRSS:")? / 1024.0,
            peak_rss_mib: kib("VmHWM:")? / 1024.0,
        })
    }
}

impl Operator {
    pub async fn start(zookeeper: String, dir: &Path) -> Result<Self> {
        let plane = ControlPlane::shared().context("the Kubernetes control plane starts")?;
        let kubeconfig = plane.kubeconfig();
        let proxy = ApiFaultProxy::in_front_of(&kubeconfig).await?;
        let controller_kubeconfig = dir.join("controller.kubeconfig");
        proxy.write_kubeconfig_through(&kubeconfig, &controller_kubeconfig)?;
        let client = client_of(&kubeconfig).await?;
        install_crds(&client).await?;
        Ok(Operator {
            client,
            proxy,
            kubeconfig,
            controller_kubeconfig,
            zookeeper,
            controller: None,
            floor: None,
            binary: beside_the_bench("lockkeeper")?,
            plane,
        })
    }

    /// A client whose requests go through the proxy, as the controller's do.
    pub async fn client_through_proxy(&self) -> Result<Client> {
        client_of(&self.controller_kubeconfig).await
    }

    /// Starts `handoff-floor` on `namespace` (its requests through the proxy, as the
    /// controller's), queueing under ZooKeeper path `root`.
    pub fn start_floor(&mut self, namespace: &str, root: &str) -> Result<()> {
        let child = Command::new(beside_the_bench("handoff-floor")?)
            .env("KUBECONFIG", &self.controller_kubeconfig)
            .args(["--zookeeper", &self.zookeeper, "--root", root])
            .args(["--namespace", namespace])
            .spawn()
            .context("start handoff-floor")?;
        self.floor = Some(child);
        Ok(())
    }

    pub fn stop_floor(&mut self) -> Result<()> {
        terminate(self.floor.take())
    }

    /// The `lockkeeper` binary next to the bench's, with this API server's kubeconfig.
    pub fn lockkeeper(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command.env("KUBECONFIG", &self.kubeconfig);
        command
    }

    pub fn start_controller(&mut self, namespace: &str, root: &str) -> Result<()> {
        let child = self
            .lockkeeper()
            .env("KUBECONFIG", &self.controller_kubeconfig)
            .args([
                "controller",
                "--zookeeper",
                &self.zookeeper,
                "--zookeeper-root",
                root,
            ])
            .args([
                "--namespace",
                namespace,
                "--metrics-addr",
                "127.0.0.1:0",
                "--session-timeout",
                "10s",
            ])
            .env("LOCKKEEPER_LOG_FORMAT", "text")
            .env(
                "LOCKKEEPER_LOG",
                std::env::var("BENCH_CONTROLLER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .spawn()
            .context("start lockkeeper controller")?;
        self.controller = Some(child);
        Ok(())
    }

    /// SIGTERM: the controller closes its ZooKeeper session and exits.
    pub fn stop_controller(&mut self) -> Result<()> {
        terminate(self.controller.take())
    }

    pub fn controller_memory(&self) -> Result<Memory> {
        let child = self.controller.as_ref().context("no controller runs")?;
        Memory::of_process(child.id())
    }

    /// The memory of a process of the control plane (`etcd`, `kube-apiserver`).
    pub fn control_plane_memory(&self, process: &str) -> Result<Memory> {
        Memory::of_process(
            self.plane
                .pid(process)
                .with_context(|| format!("{process} does not run"))?,
        )
    }

    /// The controller's API requests so far, by "verb resource[/subresource]".
    pub fn api_requests(&self) -> BTreeMap<String, u64> {
        self.proxy
            .request_counts()
            .into_iter()
            .map(|(kind, count)| (format!("{} {}", kind.verb, kind.resource), count))
            .collect()
    }

    /// Makes namespace `name` and waits for its `default` ServiceAccount, without which
    /// ServiceAccount admission refuses pods.
    pub async fn namespace(&self, name: &str) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        api.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}}))?,
        )
        .await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), name);
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        while accounts.get_opt("default").await?.is_none() {
            if Instant::now() > deadline {
                bail!("namespace {name} has no default ServiceAccount after 60 s");
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Creates `object` (a namespaced kind `K`) in `namespace`.
    pub async fn create<K>(&self, namespace: &str, object: serde_json::Value) -> Result<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::Serialize
            + serde::de::DeserializeOwned,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let object: K = serde_json::from_value(object)?;
        Ok(api.create(&PostParams::default(), &object).await?)
    }

    pub async fn mutex(&self, namespace: &str, name: &str) -> Result<()> {
        self.create::<DistributedLock>(
            namespace,
            json!({"apiVersion": "lockkeeper.dev/v1alpha1",
            "kind": "DistributedLock", "metadata": {"name": name}, "spec": {"type": "Mutex"}}),
        )
        .await?;
        Ok(())
    }

    /// Mutex locks `lock-0` … `lock-{count - 1}` in `namespace`.
    pub async fn mutexes(&self, namespace: &str, count: usize) -> Result<()> {
        all_of(
            futures::stream::iter(0..count)
                .map(|i| async move { self.mutex(namespace, &format!("lock-{i}")).await }),
        )
        .await
    }

    /// A pod and claim `c-{n}` for each `n` of `claims`, claim `n` on `lock-{n % locks}`.
    pub async fn pods_with_claims(
        &self,
        namespace: &str,
        claims: std::ops::Range<usize>,
        locks: usize,
    ) -> Result<()> {
        all_of(futures::stream::iter(claims).map(|n| async move {
            self.pod_with_claim(namespace, &format!("c-{n}"), &format!("lock-{}", n % locks))
                .await
        }))
        .await
    }

    /// A pending pod and a claim of the same name on `lock`, held by the pod.
    pub async fn pod_with_claim(&self, namespace: &str, name: &str, lock: &str) -> Result<()> {
        self.pod(namespace, name).await?;
        self.create::<LockClaim>(
            namespace,
            json!({"apiVersion": "lockkeeper.dev/v1alpha1",
            "kind": "LockClaim", "metadata": {"name": name},
            "spec": {"lock": lock, "holder": {"kind": "Pod", "name": name}}}),
        )
        .await?;
        Ok(())
    }

    pub async fn pod(&self, namespace: &str, name: &str) -> Result<Pod> {
        self.create::<Pod>(namespace, json!({"metadata": {"name": name},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]}, "status": {"phase": "Pending"}}))
            .await
    }

    /// What the kubelet reports when the pod's containers exited 0.
    pub async fn pod_succeeded(&self, namespace: &str, name: &str) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
        )
        .await?;
        Ok(())
    }

    /// Every claim change in `namespace`, stamped when this client saw it.
    pub fn watch_claims(&self, namespace: &str) -> mpsc::UnboundedReceiver<(Instant, LockClaim)> {
        let api: Api<LockClaim> = Api::namespaced(self.client.clone(), namespace);
        let (send, receive) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            // A watch error (a dropped connection, an expired resourceVersion) is retried
            // with backoff; the watch ends only with the receiver.
            let mut stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = stream.next().await {
                let claims = match event {
                    Ok(watcher::Event::Apply(claim) | watcher::Event::InitApply(claim)) => {
                        vec![claim]
                    }
                    _ => Vec::new(),
                };
                for claim in claims {
                    if send.send((Instant::now(), claim)).is_err() {
                        return;
                    }
                }
            }
        });
        receive
    }

    pub async fn stop(mut self) -> Result<()> {
        self.stop_controller()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        for mut child in [self.controller.take(), self.floor.take()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A client with the credentials and server of `kubeconfig`.
async fn client_of(kubeconfig: &Path) -> Result<Client> {
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig)?,
        &Default::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}

/// SIGTERM, and wait for the exit.
fn terminate(child: Option<Child>) -> Result<()> {
    if let Some(mut child) = child {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        child.wait()?;
    }
    Ok(())
}

/// A binary built beside the bench's own (`cargo build --release --workspace --bins`).
fn beside_the_bench(name: &str) -> Result<PathBuf> {
    let binary = std::env::current_exe()?
        .parent()
        .context("the bench's directory")?
        .join(name);
    if !binary.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release --workspace --bins`",
            binary.display()
        );
    }
    Ok(binary)
}

/// Concurrent API calls of a workload (creates and updates).
pub const CONCURRENCY: usize = 32;

/// Runs `calls`, [`CONCURRENCY`] at a time; the first error fails them all.
async fn all_of(
    calls: impl futures::Stream<Item = impl std::future::Future<Output = Result<()>>>,
) -> Result<()> {
    calls
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// The ZooKeeper queues of locks `lock-0` … in `namespace`, under the controller's `root`.
pub fn lock_specs(root: &str, namespace: &str, count: usize) -> Result<Vec<LockSpec>> {
    Ok((0..count)
        .map(|i| LockSpec::new(&format!("{root}/{namespace}/lock-{i}"), LockKind::Mutex))
        .collect::<Result<_, _>>()?)
}

async fn install_crds(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, yaml) in lockkeeper::resources::crd_documents() {
        let crd: CustomResourceDefinition = serde_yaml::from_str(&yaml)?;
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply("lockkeeper-bench").force(),
            &Patch::Apply(&crd),
        )
        .await?;
    }
    for (file, _) in lockkeeper::resources::crd_documents() {
        let name = file.trim_end_matches(".yaml");
        let established = kube::runtime::wait::await_condition(
            crds.clone(),
            name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(std::time::Duration::from_secs(60), established)
            .await
            .with_context(|| format!("CRD {name} established"))??;
    }
    Ok(())
}
