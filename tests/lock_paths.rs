//! A lock's ZooKeeper path stays in its namespace's part of ZooKeeper unless the installation
//! allows more (issue 24, item 11): on the real control plane, two namespaces, a user who may
//! make locks, claims and pods in one of them only, and one `lockkeeper controller` process
//! serving both, with the chart's cluster-wide RBAC.

mod cluster;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster::{Cluster, PATIENCE, helm_binary, output_text, repo};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use lockkeeper::lock_rules::LockKind;
use lockkeeper::resources::{ClaimPhase, DistributedLock, LockClaim};
use lockkeeper::zookeeper::{EngineConfig, LockEngine, LockSpec};
use serde_json::{Value, json};

/// The user of namespace A: a ServiceAccount there, with a Role that lets it make locks,
/// claims and pods in A, and nothing else.
const USER: &str = "lock-user";

const USER_RBAC: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: lock-user}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: lock-user}
rules:
  - apiGroups: [lockkeeper.dev]
    resources: [distributedlocks, lockclaims]
    verbs: [get, list, watch, create, delete]
  - apiGroups: [""]
    resources: [pods]
    verbs: [get, list, watch, create, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: lock-user}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: lock-user}
subjects:
  - {kind: ServiceAccount, name: lock-user}
"#;

/// How long a claim that must not be queued is watched for, once its lock was refused.
const SETTLE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_pointed_at_another_namespaces_path_is_refused_until_the_installation_allows_it() {
    let mut cluster = Cluster::start_without_controller().await;
    let a = cluster.namespace.clone();
    let b = format!("{a}-b");
    let admin = cluster.client.clone();
    create_namespace(&cluster, &b).await;
    let controller = ControllerAccount::apply(&cluster);
    let log = cluster_scratch_log(&a);
    start_controller(&mut cluster, &controller.kubeconfig, &[], &log);

    // Namespace B: its lock `prod` at its default path, held by one claim, another waiting.
    let in_b = |kind: &str, name: &str, spec: Value| {
        json!({"apiVersion": api_version(kind), "kind": kind,
            "metadata": {"name": name, "namespace": b}, "spec": spec})
    };
    create(
        &admin,
        &b,
        in_b("DistributedLock", "prod", json!({"type": "Mutex"})),
    )
    .await;
    for name in ["b-holder", "b-waiter"] {
        create(&admin, &b, pod(name, &b)).await;
        create(
            &admin,
            &b,
            in_b(
                "LockClaim",
                name,
                json!({"lock": "prod", "holder": {"kind": "Pod", "name": name}}),
            ),
        )
        .await;
        wait_claim(&cluster, &admin, &b, name, |s| {
            s.phase != ClaimPhase::Pending
        })
        .await;
    }
    let b_path = format!("{}/{b}/prod", cluster.root);
    let b_locks: Api<DistributedLock> = Api::namespaced(admin.clone(), &b);
    cluster
        .eventually("B's lock counts its waiting claim", || async {
            let lock = b_locks.get("prod").await.unwrap();
            lock.status.is_some_and(|s| {
                s.held_by.as_deref() == Some("b-holder")
                    && s.waiting == 1
                    && s.zookeeper_path.as_deref() == Some(b_path.as_str())
            })
        })
        .await;
    let b_uids = claim_uids(&admin, &b).await;

    // The user of A: not an administrator, and nothing in B.
    cluster.kubectl_ok(&["apply", "-f", "-"], USER_RBAC);
    let user = cluster::client_from(cluster.service_account_kubeconfig(USER).as_os_str()).await;
    let refused = Api::<DistributedLock>::namespaced(user.clone(), &b)
        .create(
            &PostParams::default(),
            &serde_json::from_value(in_b("DistributedLock", "mine", json!({}))).unwrap(),
        )
        .await
        .expect_err("the user may not make locks in B");
    assert!(
        matches!(&refused, kube::Error::Api(status) if status.code == 403),
        "{refused}"
    );

    // In A, the user points a lock at B's default path and claims it.
    let in_a = |kind: &str, name: &str, spec: Value| {
        json!({"apiVersion": api_version(kind), "kind": kind,
            "metadata": {"name": name, "namespace": a}, "spec": spec})
    };
    create(&user, &a, pod("a-intruder", &a)).await;
    create(
        &user,
        &a,
        in_a(
            "DistributedLock",
            "prod",
            json!({"type": "Mutex", "zookeeper": {"path": b_path}}),
        ),
    )
    .await;
    create(
        &user,
        &a,
        in_a(
            "LockClaim",
            "a-intruder",
            json!({"lock": "prod", "holder": {"kind": "Pod", "name": "a-intruder"}}),
        ),
    )
    .await;

    // Refused, with the reason on the lock's status and a Warning event.
    let expected = format!(
        "spec.zookeeper.path {b_path} is not allowed: it is outside namespace {a}'s part of \
         ZooKeeper ({root}/{a}/…) and is under no prefix allowed to it; an administrator may \
         allow a prefix with the controller's --allowed-lock-path {a}=PREFIX (Helm value \
         zookeeper.allowedLockPaths)",
        root = cluster.root
    );
    let a_locks: Api<DistributedLock> = Api::namespaced(admin.clone(), &a);
    let lock = cluster
        .poll(
            PATIENCE,
            "A's lock says why it is refused",
            || async { a_locks.get("prod").await.unwrap() },
            |lock| ready(lock).is_some_and(|c| c.status == "False"),
        )
        .await;
    let condition = ready(&lock).unwrap();
    assert_eq!(
        (condition.reason.as_str(), condition.message.as_str()),
        ("PathNotAllowed", expected.as_str())
    );
    let status = lock.status.clone().unwrap();
    assert_eq!((status.zookeeper_path, status.waiting), (None, 0));
    let events: Api<Event> = Api::namespaced(admin.clone(), &a);
    cluster
        .eventually("a Warning event on A's lock says why", || async {
            events
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .iter()
                .any(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.reason.as_deref() == Some("PathNotAllowed")
                        && e.note.as_deref() == Some(expected.as_str())
                        && e.regarding.as_ref().and_then(|r| r.kind.as_deref())
                            == Some("DistributedLock")
                })
        })
        .await;

    // A's claim never joins B's queue, says why it is not served, and B's lock counts B's
    // claims only.
    tokio::time::sleep(SETTLE).await;
    let a_claims: Api<LockClaim> = Api::namespaced(admin.clone(), &a);
    let intruder = a_claims.get("a-intruder").await.unwrap();
    let claim_status = intruder.status.clone().unwrap_or_default();
    assert!(
        claim_status.phase == ClaimPhase::Invalid
            && claim_status.message.as_deref().is_some_and(|m| {
                m.contains("cannot be served") && m.contains("--allowed-lock-path")
            })
            && claim_status.znode.is_none()
            && claim_status.sequence.is_none(),
        "{claim_status:?}"
    );
    let queued = queue_owners(&cluster, &b_path).await;
    assert_eq!(queued, b_uids, "B's queue holds B's claims only");
    let b_lock = b_locks.get("prod").await.unwrap().status.unwrap();
    assert_eq!(
        (b_lock.held_by.as_deref(), b_lock.waiting),
        (Some("b-holder"), 1)
    );
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!(
        "what the controller logs of the claim:\n{}",
        logged
            .lines()
            .filter(|line| line.contains("a-intruder"))
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The installation allows A that prefix: the same lock is served, its claim queued on
    // B's path behind B's claims, and B's lock counts it.
    cluster.stop_controller().await;
    let allowed = format!("{a}={}/{b}", cluster.root);
    start_controller(&mut cluster, &controller.kubeconfig, &[&allowed], &log);
    let lock = cluster
        .poll(
            PATIENCE,
            "A's lock is served once allowed",
            || async { a_locks.get("prod").await.unwrap() },
            |lock| ready(lock).is_some_and(|c| c.status == "True"),
        )
        .await;
    assert_eq!(ready(&lock).unwrap().reason, "Serving");
    assert_eq!(
        lock.status.unwrap().zookeeper_path.as_deref(),
        Some(b_path.as_str())
    );
    let intruder = wait_claim(&cluster, &admin, &a, "a-intruder", |s| {
        s.phase == ClaimPhase::Waiting
    })
    .await;
    assert_eq!(intruder.position, Some(2), "behind B's two claims");
    cluster
        .eventually("B's lock counts A's claim too", || async {
            let lock = b_locks.get("prod").await.unwrap();
            lock.status.is_some_and(|s| s.waiting == 2)
        })
        .await;
    let mut everyone = b_uids.clone();
    everyone.push(a_claims.get("a-intruder").await.unwrap().uid().unwrap());
    assert_eq!(queue_owners(&cluster, &b_path).await, everyone);

    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let _ = namespaces.delete(&b, &Default::default()).await;
    cluster.stop().await;
    controller.remove(&admin).await;
    let _ = std::fs::remove_file(&log);
}

fn api_version(kind: &str) -> &'static str {
    match kind {
        "Pod" => "v1",
        _ => "lockkeeper.dev/v1alpha1",
    }
}

fn pod(name: &str, namespace: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]}})
}

/// Creates `object` in `namespace` as `client`'s user.
async fn create(client: &Client, namespace: &str, object: Value) {
    let kind = object["kind"].as_str().unwrap().to_string();
    let params = PostParams::default();
    let created = match kind.as_str() {
        "Pod" => Api::<Pod>::namespaced(client.clone(), namespace)
            .create(&params, &serde_json::from_value(object).unwrap())
            .await
            .map(|_| ()),
        "DistributedLock" => Api::<DistributedLock>::namespaced(client.clone(), namespace)
            .create(&params, &serde_json::from_value(object).unwrap())
            .await
            .map(|_| ()),
        "LockClaim" => Api::<LockClaim>::namespaced(client.clone(), namespace)
            .create(&params, &serde_json::from_value(object).unwrap())
            .await
            .map(|_| ()),
        other => panic!("no {other} here"),
    };
    created.unwrap_or_else(|err| panic!("create a {kind} in {namespace}: {err}"));
}

async fn create_namespace(cluster: &Cluster, name: &str) {
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
        )
        .await
        .expect("create namespace B");
    // ServiceAccount admission refuses pods until the namespace's `default` account exists.
    let accounts: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), name);
    cluster
        .eventually("B's default ServiceAccount exists", || async {
            accounts.get_opt("default").await.ok().flatten().is_some()
        })
        .await;
}

fn ready(lock: &DistributedLock) -> Option<&Condition> {
    lock.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
}

async fn wait_claim(
    cluster: &Cluster,
    client: &Client,
    namespace: &str,
    name: &str,
    done: impl Fn(&lockkeeper::resources::LockClaimStatus) -> bool,
) -> lockkeeper::resources::LockClaimStatus {
    let claims: Api<LockClaim> = Api::namespaced(client.clone(), namespace);
    cluster
        .poll(
            PATIENCE,
            &format!("claim {namespace}/{name} moves on"),
            || async { claims.get(name).await.unwrap().status.unwrap_or_default() },
            done,
        )
        .await
}

/// The UIDs of the claims of `namespace`, oldest first.
async fn claim_uids(client: &Client, namespace: &str) -> Vec<String> {
    let mut claims = Api::<LockClaim>::namespaced(client.clone(), namespace)
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    claims.sort_by_key(|c| c.metadata.creation_timestamp.clone().map(|t| t.0));
    claims.iter().filter_map(|c| c.uid()).collect()
}

/// Whose contenders are queued on the mutex at `path`, in order, read from ZooKeeper.
async fn queue_owners(cluster: &Cluster, path: &str) -> Vec<String> {
    let engine = LockEngine::connect(EngineConfig::new(cluster.zk.connect_string()))
        .await
        .expect("connect to ZooKeeper");
    let queue = engine
        .queue(&LockSpec::new(path, LockKind::Mutex).unwrap())
        .await
        .expect("read the queue");
    engine.close().await;
    queue
        .entries
        .into_iter()
        .map(|entry| entry.owner.unwrap_or(entry.node))
        .collect()
}

/// The controller's ServiceAccount with the chart's cluster-wide RBAC (`watch.scope=Cluster`):
/// a controller that serves every namespace, as an installation serving A and B does.
struct ControllerAccount {
    release: String,
    kubeconfig: PathBuf,
}

impl ControllerAccount {
    fn apply(cluster: &Cluster) -> Self {
        let release = format!("lk-{}", &cluster.namespace[4..]);
        let output = std::process::Command::new(helm_binary())
            .args(["template", &release, "charts/lockkeeper"])
            .args(["--namespace", &cluster.namespace])
            .args(["--set", "zookeeper.connect=127.0.0.1:2181"])
            .args(["--set", "watch.scope=Cluster"])
            .args(["--show-only", "templates/serviceaccount.yaml"])
            .args(["--show-only", "templates/rbac.yaml"])
            .current_dir(repo())
            .output()
            .expect("helm runs");
        assert!(output.status.success(), "{}", output_text(&output));
        let rbac = String::from_utf8(output.stdout).unwrap();
        cluster.kubectl_ok(&["apply", "-f", "-"], &rbac);
        let kubeconfig = cluster.service_account_kubeconfig(&format!("{release}-lockkeeper"));
        ControllerAccount {
            release,
            kubeconfig,
        }
    }

    /// Deletes the ClusterRole and ClusterRoleBinding (the namespace took the account).
    async fn remove(&self, admin: &Client) {
        use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
        let name = format!("{}-lockkeeper", self.release);
        let _ = Api::<ClusterRoleBinding>::all(admin.clone())
            .delete(&name, &Default::default())
            .await;
        let _ = Api::<ClusterRole>::all(admin.clone())
            .delete(&name, &Default::default())
            .await;
    }
}

fn cluster_scratch_log(namespace: &str) -> PathBuf {
    std::env::temp_dir().join(format!("lockkeeper-{namespace}-controller.log"))
}

/// Starts `lockkeeper controller` serving every namespace, with the `--allowed-lock-path`s
/// given, as the chart's ServiceAccount; its log goes to `log`.
fn start_controller(cluster: &mut Cluster, kubeconfig: &Path, allowed: &[&str], log: &Path) {
    let identity = cluster.controller_config().identity;
    let mut command = cluster.lockkeeper();
    command
        .env("KUBECONFIG", kubeconfig)
        .args(["controller", "--zookeeper", &cluster.zk.connect_string()])
        .args(["--session-timeout", "4s", "--zookeeper-root", &cluster.root])
        .args(["--metrics-addr", "127.0.0.1:0", "--identity", &identity]);
    for allowed in allowed {
        command.args(["--allowed-lock-path", allowed]);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("the controller's log");
    command.stderr(log);
    cluster.spawn_controller_process(&mut command);
}
