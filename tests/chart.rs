//! The Helm chart `charts/lockkeeper`: `helm lint` and `helm template` with the default
//! values and with every other option (the files in charts/lockkeeper/ci/), bad values
//! refused at install time with the field named, and the rendered manifests applied to the
//! real control plane (or the `KUBECONFIG` cluster) with kubectl, after which the controller
//! runs exactly as the rendered Deployment starts it and grants a lock.
//!
//! `helm` is `$HELM`, or `.tools/helm` where `make deps` installs it.

mod cluster;

use std::process::{Command, Output};

use cluster::{Cluster, PATIENCE, helm_binary, http_get, output_text as text, repo};
use k8s_openapi::api::core::v1::Secret;
use lockkeeper_testkit::zookeeper_server::free_port;
use serde_json::Value;

const CHART: &str = "charts/lockkeeper";

fn helm(args: &[&str]) -> Output {
    Command::new(helm_binary())
        .args(args)
        .current_dir(repo())
        .output()
        .expect("helm runs")
}

/// `helm template RELEASE charts/lockkeeper -n NAMESPACE ARGS…`: the YAML, or helm's error.
fn template(release: &str, namespace: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["template", release, CHART, "--namespace", namespace];
    all.extend(args);
    let output = helm(&all);
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).unwrap())
    } else {
        Err(text(&output))
    }
}

fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|document| Value::deserialize(document).expect("helm renders valid YAML"))
        .filter(|document| !document.is_null())
        .collect()
}

fn rendered(release: &str, namespace: &str, args: &[&str]) -> Vec<Value> {
    let yaml = template(release, namespace, args).unwrap_or_else(|err| panic!("{err}"));
    documents(&yaml)
}

fn kinds(documents: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = documents
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect();
    kinds.sort();
    kinds
}

fn one<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = documents.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} expected in the render");
    found[0]
}

fn controller_container(documents: &[Value]) -> &Value {
    &one(documents, "Deployment")["spec"]["template"]["spec"]["containers"][0]
}

/// The container's environment: name → plain value, or the source it is read from.
fn env_of(container: &Value) -> Vec<(String, Value)> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = e.get("value").or(e.get("valueFrom")).unwrap().clone();
            (e["name"].as_str().unwrap().to_string(), value)
        })
        .collect()
}

fn env_value(container: &Value, name: &str) -> Option<Value> {
    env_of(container)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

/// (apiGroup, resource) → verbs, from a Role or ClusterRole.
fn rules(role: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut rules = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        let verbs: Vec<String> = rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                rules.push((
                    group.as_str().unwrap().to_string(),
                    resource.as_str().unwrap().to_string(),
                    verbs.clone(),
                ));
            }
        }
    }
    rules.sort();
    rules
}

/// What the controller does, and nothing more (see the comment in templates/rbac.yaml).
const CONTROLLER_RULES: &[(&str, &str, &[&str])] = &[
    (
        "",
        "pods",
        &["get", "list", "watch", "delete", "deletecollection"],
    ),
    ("batch", "jobs", &["get", "list", "watch", "patch"]),
    ("events.k8s.io", "events", &["create", "patch"]),
    (
        "lockkeeper.dev",
        "distributedlocks",
        &["get", "list", "watch"],
    ),
    (
        "lockkeeper.dev",
        "distributedlocks/status",
        &["get", "patch"],
    ),
    (
        "lockkeeper.dev",
        "lockclaims",
        &["get", "list", "watch", "patch"],
    ),
    ("lockkeeper.dev", "lockclaims/status", &["get", "patch"]),
];

fn controller_rules() -> Vec<(String, String, Vec<String>)> {
    let mut rules: Vec<_> = CONTROLLER_RULES
        .iter()
        .map(|(group, resource, verbs)| {
            let verbs = verbs.iter().map(|v| v.to_string()).collect();
            (group.to_string(), resource.to_string(), verbs)
        })
        .collect();
    rules.sort();
    rules
}

fn values_file(name: &str) -> String {
    format!("{CHART}/ci/{name}")
}

#[test]
fn helm_lint_passes_with_every_values_file_and_warns_of_a_missing_zookeeper() {
    for file in [
        "default-values.yaml",
        "cluster-wide-values.yaml",
        "bundled-zookeeper-values.yaml",
    ] {
        let output = helm(&["lint", "--strict", CHART, "--values", &values_file(file)]);
        let shown = text(&output);
        assert!(
            output.status.success() && shown.contains("0 chart(s) failed"),
            "helm lint with {file}:\n{shown}"
        );
    }
    // Lint renders required values leniently: it warns, `helm install` refuses (below).
    let output = helm(&["lint", CHART]);
    assert!(
        text(&output).contains("zookeeper.connect is required"),
        "{}",
        text(&output)
    );
}

#[test]
fn the_chart_crds_are_the_top_level_crds() {
    for (file, _) in lockkeeper::resources::crd_documents() {
        let top = std::fs::read(repo().join("crds").join(file)).unwrap();
        let chart = std::fs::read(repo().join(CHART).join("crds").join(file))
            .unwrap_or_else(|err| panic!("{CHART}/crds/{file}: {err}; run `make crds`"));
        assert!(
            top == chart,
            "{CHART}/crds/{file} differs from crds/{file}: run `make crds`"
        );
    }
}

#[test]
fn the_default_render_is_a_hardened_namespaced_controller_with_a_standby() {
    let docs = rendered(
        "locks",
        "platform",
        &["--values", &values_file("default-values.yaml")],
    );
    assert_eq!(
        kinds(&docs),
        [
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    for doc in &docs {
        assert_eq!(doc["metadata"]["namespace"], "platform", "{doc}");
    }
    let deployment = one(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "locks-lockkeeper");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = controller_container(&docs);
    assert_eq!(
        container["image"],
        format!(
            "ghcr.io/lockkeeper/lockkeeper:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(container["args"], serde_json::json!(["controller"]));
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert_eq!(
        env_value(container, "LOCKKEEPER_ZOOKEEPER").unwrap(),
        "zookeeper.zookeeper.svc:2181"
    );
    assert_eq!(
        env_value(container, "LOCKKEEPER_WATCH_NAMESPACE").unwrap(),
        "platform"
    );
    assert_eq!(
        env_value(container, "POD_NAME").unwrap()["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(rules(one(&docs, "Role")), controller_rules());
    let binding = one(&docs, "RoleBinding");
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["subjects"][0]["name"], "locks-lockkeeper");
    let selector = &one(&docs, "Service")["spec"]["selector"];
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (label, value) in selector.as_object().unwrap() {
        assert_eq!(
            &pod_labels[label], value,
            "the metrics Service selects the pods"
        );
    }
    assert_eq!(one(&docs, "PodDisruptionBudget")["spec"]["minAvailable"], 1);
}

#[test]
fn cluster_wide_values_render_a_cluster_role_digest_credentials_and_a_service_monitor() {
    let docs = rendered(
        "locks",
        "platform",
        &["--values", &values_file("cluster-wide-values.yaml")],
    );
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "PrometheusRule",
            "Service",
            "ServiceAccount",
            "ServiceMonitor"
        ]
    );
    assert_eq!(rules(one(&docs, "ClusterRole")), controller_rules());
    assert_eq!(
        one(&docs, "ClusterRoleBinding")["subjects"][0],
        serde_json::json!({"kind": "ServiceAccount", "name": "lock-operator", "namespace": "platform"})
    );
    let container = controller_container(&docs);
    assert_eq!(
        container["image"],
        "registry.example.com/lockkeeper:v0.1.0-rc1"
    );
    assert_eq!(env_value(container, "LOCKKEEPER_WATCH_NAMESPACE"), None);
    assert_eq!(
        container["args"],
        serde_json::json!([
            "controller",
            "--allowed-lock-path=billing=/services/billing",
            "--allowed-lock-path=*=/shared/locks"
        ])
    );
    assert_eq!(
        env_value(container, "LOCKKEEPER_ZOOKEEPER").unwrap(),
        "zk-0.zk:2181,zk-1.zk:2181,zk-2.zk:2181"
    );
    assert_eq!(
        env_value(container, "LOCKKEEPER_ZOOKEEPER_ROOT").unwrap(),
        "/platform/locks"
    );
    assert_eq!(
        env_value(container, "LOCKKEEPER_SESSION_TIMEOUT").unwrap(),
        "20s"
    );
    for (variable, key) in [
        ("LOCKKEEPER_ZOOKEEPER_USER", "user"),
        ("LOCKKEEPER_ZOOKEEPER_PASSWORD", "password"),
    ] {
        assert_eq!(
            env_value(container, variable).unwrap()["secretKeyRef"],
            serde_json::json!({"name": "lockkeeper-zookeeper", "key": key})
        );
    }
    assert_eq!(
        env_value(container, "LOCKKEEPER_METRICS_ADDR").unwrap(),
        "0.0.0.0:9464"
    );
    let monitor = one(&docs, "ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["interval"], "15s");
}

#[test]
fn bundled_zookeeper_values_render_a_three_server_ensemble_the_controller_uses() {
    let docs = rendered(
        "locks",
        "platform",
        &["--values", &values_file("bundled-zookeeper-values.yaml")],
    );
    let statefulset = one(&docs, "StatefulSet");
    assert_eq!(statefulset["spec"]["replicas"], 3);
    assert_eq!(
        statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"],
        "fast-ssd"
    );
    let zookeeper = &statefulset["spec"]["template"]["spec"]["containers"][0];
    let servers = env_value(zookeeper, "ZOO_SERVERS").unwrap();
    let servers: Vec<&str> = servers.as_str().unwrap().split(' ').collect();
    assert_eq!(
        servers,
        (0..3)
            .map(|i| format!(
                "server.{}=locks-lockkeeper-zookeeper-{i}.locks-lockkeeper-zookeeper-headless.platform.svc:2888:3888;2181",
                i + 1
            ))
            .collect::<Vec<_>>()
    );
    let services: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Service").collect();
    assert!(services.iter().any(|s| s["metadata"]["name"]
        == "locks-lockkeeper-zookeeper-headless"
        && s["spec"]["clusterIP"] == "None"));
    assert!(
        services
            .iter()
            .any(|s| s["metadata"]["name"] == "locks-lockkeeper-zookeeper")
    );
    assert_eq!(
        env_value(controller_container(&docs), "LOCKKEEPER_ZOOKEEPER").unwrap(),
        "locks-lockkeeper-zookeeper.platform.svc:2181"
    );
    // The watched namespace gets the Role; the controller runs in the release's.
    let role = one(&docs, "Role");
    assert_eq!(role["metadata"]["namespace"], "batch-jobs");
    assert_eq!(
        one(&docs, "RoleBinding")["subjects"][0]["namespace"],
        "platform"
    );
    let budgets: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "PodDisruptionBudget")
        .collect();
    assert!(
        budgets
            .iter()
            .any(|b| b["metadata"]["name"] == "locks-lockkeeper-zookeeper"
                && b["spec"]["maxUnavailable"] == 1),
        "a budget keeps a ZooKeeper majority"
    );
}

#[test]
fn bad_values_are_refused_at_install_time_naming_the_value() {
    let connect = "zookeeper.connect=zk:2181";
    for (sets, expected) in [
        (vec![], "zookeeper.connect is required"),
        (vec!["zookeeper.connect=zookeeper"], "/zookeeper/connect"),
        (
            vec![connect, "replicas=3"],
            "additional properties 'replicas'",
        ),
        (
            vec![connect, "watch.scope=cluster"],
            "'Namespace', 'Cluster'",
        ),
        (
            vec![connect, "zookeeper.sessionTimeout=ten"],
            "/zookeeper/sessionTimeout",
        ),
        (vec![connect, "zookeeper.root=locks"], "/zookeeper/root"),
        (vec![connect, "replicaCount=0"], "/replicaCount"),
        (vec![connect, "metrics.port=70000"], "/metrics/port"),
        (
            vec![
                "zookeeper.bundled.enabled=true",
                "zookeeper.bundled.replicas=2",
            ],
            "/zookeeper/bundled/replicas",
        ),
        (
            vec![connect, "zookeeper.bundled.enabled=true"],
            "either zookeeper.connect or zookeeper.bundled.enabled=true",
        ),
        (
            vec![connect, "serviceAccount.create=false"],
            "serviceAccount.name is required",
        ),
    ] {
        let mut args = Vec::new();
        for set in &sets {
            args.extend(["--set", set]);
        }
        match template("locks", "platform", &args) {
            Ok(_) => panic!("--set {sets:?} was accepted"),
            Err(err) => assert!(err.contains(expected), "--set {sets:?}: {err}"),
        }
    }
}

#[test]
fn allowed_lock_paths_render_into_the_controllers_arguments() {
    let connect = "zookeeper.connect=zk:2181";
    let docs = rendered(
        "locks",
        "platform",
        &[
            "--set",
            connect,
            "--set",
            "zookeeper.allowedLockPaths[0].namespace=billing",
            "--set",
            "zookeeper.allowedLockPaths[0].prefix=/services/billing",
            "--set",
            "zookeeper.allowedLockPaths[1].namespace=*",
            "--set",
            "zookeeper.allowedLockPaths[1].prefix=/",
        ],
    );
    let args: Vec<&str> = controller_container(&docs)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "controller",
            "--allowed-lock-path=billing=/services/billing",
            "--allowed-lock-path=*=/"
        ]
    );
    // The controller reads them as it is started with them.
    use clap::Parser;
    let cli = lockkeeper::cli::Cli::try_parse_from(
        std::iter::once("lockkeeper")
            .chain(args)
            .chain(["--zookeeper", "zk:2181"]),
    )
    .expect("the controller takes the rendered arguments");
    let lockkeeper::cli::Command::Controller(controller) = cli.command else {
        panic!("not the controller command");
    };
    let allowed: Vec<String> = controller
        .allowed_lock_paths
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(allowed, ["billing=/services/billing", "*=/"]);
    for (namespace, prefix, field) in [
        (
            "billing",
            "/services/../billing",
            "/zookeeper/allowedLockPaths/0/prefix",
        ),
        (
            "billing",
            "/services/billing/",
            "/zookeeper/allowedLockPaths/0/prefix",
        ),
        (
            "billing",
            "services",
            "/zookeeper/allowedLockPaths/0/prefix",
        ),
        (
            "Billing",
            "/services",
            "/zookeeper/allowedLockPaths/0/namespace",
        ),
    ] {
        let namespace = format!("zookeeper.allowedLockPaths[0].namespace={namespace}");
        let prefix = format!("zookeeper.allowedLockPaths[0].prefix={prefix}");
        match template(
            "locks",
            "platform",
            &["--set", connect, "--set", &namespace, "--set", &prefix],
        ) {
            Ok(_) => panic!("{namespace} {prefix} was accepted"),
            Err(err) => assert!(err.contains(field), "{namespace} {prefix}: {err}"),
        }
    }
}

/// Reads `GET path` from 127.0.0.1:port: (status line, body).
/// The value of a rendered env entry as the kubelet would give it: plain, the pod's name,
/// or a Secret's key.
async fn resolve(cluster: &Cluster, pod_name: &str, value: &Value) -> String {
    if let Some(plain) = value.as_str() {
        return plain.to_string();
    }
    if value["fieldRef"]["fieldPath"] == "metadata.name" {
        return pod_name.to_string();
    }
    let reference = &value["secretKeyRef"];
    let secret: Secret = cluster
        .api::<Secret>()
        .get(reference["name"].as_str().unwrap())
        .await
        .expect("the Secret the chart refers to");
    let bytes = &secret.data.unwrap()[reference["key"].as_str().unwrap()];
    String::from_utf8(bytes.0.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_chart_applies_with_kubectl_and_its_controller_grants_locks() {
    let mut cluster = Cluster::start_without_controller().await;
    let namespace = cluster.namespace.clone();
    let port = free_port().unwrap();
    let release = format!("lk-{}", &namespace[4..]);
    let connect = format!("zookeeper.connect={}", cluster.zk.connect_string());
    let root = format!("zookeeper.root={}", cluster.root);
    let metrics = format!("metrics.port={port}");
    let yaml = template(
        &release,
        &namespace,
        &[
            "--set",
            &connect,
            "--set",
            &root,
            "--set",
            &metrics,
            "--set",
            "zookeeper.sessionTimeout=4s",
            "--set",
            "zookeeper.auth.existingSecret=zookeeper-digest",
        ],
    )
    .unwrap_or_else(|err| panic!("{err}"));
    // The Secret the values name, as an administrator would create it.
    cluster.kubectl_ok(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "zookeeper-digest"},
            "data": {"user": "bG9ja2tlZXBlcg==", "password": "czNjcjN0"}}"#,
    );
    let applied = cluster.kubectl_ok(&["apply", "-f", "-"], &yaml);
    for object in [
        format!("serviceaccount/{release}-lockkeeper"),
        format!("role.rbac.authorization.k8s.io/{release}-lockkeeper"),
        format!("rolebinding.rbac.authorization.k8s.io/{release}-lockkeeper"),
        format!("service/{release}-lockkeeper-metrics"),
        format!("deployment.apps/{release}-lockkeeper"),
        format!("poddisruptionbudget.policy/{release}-lockkeeper"),
    ] {
        assert!(
            applied.contains(&format!("{object} created")),
            "{object} not created:\n{applied}"
        );
    }
    let (ok, listed, err) = cluster.kubectl(
        &[
            "get",
            "deployments,services,poddisruptionbudgets",
            "-l",
            &format!("app.kubernetes.io/instance={release}"),
        ],
        "",
    );
    assert!(ok, "{err}");
    assert!(
        listed.contains(&format!("{release}-lockkeeper")),
        "{listed}"
    );

    // The controller, started the way the rendered Deployment starts it. Servers on this
    // machine listen on loopback, so the rendered 0.0.0.0 becomes 127.0.0.1.
    let docs = documents(&yaml);
    let container = controller_container(&docs);
    let mut command = cluster.lockkeeper();
    for argument in container["args"].as_array().unwrap() {
        command.arg(argument.as_str().unwrap());
    }
    for (name, value) in env_of(container) {
        let mut value = resolve(&cluster, &format!("{release}-lockkeeper-0"), &value).await;
        if name == "LOCKKEEPER_METRICS_ADDR" {
            assert_eq!(value, format!("0.0.0.0:{port}"));
            value = format!("127.0.0.1:{port}");
        }
        command.env(name, value);
    }
    // With the rendered ServiceAccount's token: the rendered Role is all it may do.
    command.env(
        "KUBECONFIG",
        cluster.service_account_kubeconfig(&format!("{release}-lockkeeper")),
    );
    cluster.spawn_controller_process(&mut command);
    for probe in ["livenessProbe", "readinessProbe"] {
        let path = container[probe]["httpGet"]["path"].as_str().unwrap();
        cluster
            .poll(
                PATIENCE,
                &format!("the {probe} {path} answers 200"),
                || async { http_get(port, path) },
                |answer| {
                    answer
                        .as_ref()
                        .is_some_and(|(status, _)| status.contains(" 200 "))
                },
            )
            .await;
    }

    cluster.kubectl_ok(&["apply", "-f", "-"],
        "apiVersion: lockkeeper.dev/v1alpha1\nkind: DistributedLock\nmetadata:\n  name: nightly-report\nspec:\n  type: Mutex\n",
    );
    let run = cluster
        .lockkeeper()
        .args(["run", "--lock", "nightly-report", "-n", &namespace])
        .args([
            "--timeout",
            "30s",
            "--",
            "sh",
            "-c",
            "echo token=$LOCKKEEPER_FENCING_TOKEN",
        ])
        .output()
        .expect("lockkeeper run");
    assert!(run.status.success(), "{}", text(&run));
    assert!(
        String::from_utf8_lossy(&run.stdout).starts_with("token="),
        "{}",
        text(&run)
    );
    let (_, metrics) = http_get(port, "/metrics").expect("/metrics answers");
    assert!(metrics.contains("lockkeeper_leader 1"), "{metrics}");
    assert!(
        metrics.contains("lockkeeper_grants_total{lock=\"nightly-report\"} 1"),
        "{metrics}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_wide_and_bundled_renders_apply_with_kubectl() {
    let cluster = Cluster::start_without_controller().await;
    let namespace = cluster.namespace.clone();
    let release = format!("lk-{}", &namespace[4..]);
    // A plain cluster has no Prometheus Operator: the ServiceMonitor's CRD, in its group and
    // kind, so that the rendered ServiceMonitor applies.
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        cluster.kubectl_ok(&["apply", "-f", "-"], &monitoring_crd(kind));
        let name = format!("{}s.monitoring.coreos.com", kind.to_lowercase());
        cluster::wait_established(&cluster.client, &name).await;
    }
    let cluster_wide = template(
        &release,
        &namespace,
        &["--values", &values_file("cluster-wide-values.yaml")],
    )
    .unwrap();
    let applied = cluster.kubectl_ok(&["apply", "-f", "-"], &cluster_wide);
    for object in [
        format!("clusterrole.rbac.authorization.k8s.io/{release}-lockkeeper created"),
        format!("clusterrolebinding.rbac.authorization.k8s.io/{release}-lockkeeper created"),
        format!("servicemonitor.monitoring.coreos.com/{release}-lockkeeper created"),
        format!("prometheusrule.monitoring.coreos.com/{release}-lockkeeper created"),
        format!("configmap/{release}-lockkeeper-dashboard created"),
        format!("deployment.apps/{release}-lockkeeper created"),
    ] {
        assert!(applied.contains(&object), "{object}:\n{applied}");
    }
    let bundled = template(
        &format!("{release}-b"),
        &namespace,
        &[
            "--values",
            &values_file("bundled-zookeeper-values.yaml"),
            "--set",
            &format!("watch.namespace={namespace}"),
        ],
    )
    .unwrap();
    let applied = cluster.kubectl_ok(&["apply", "-f", "-"], &bundled);
    for object in [
        format!("statefulset.apps/{release}-b-lockkeeper-zookeeper created"),
        format!("service/{release}-b-lockkeeper-zookeeper-headless created"),
        format!("poddisruptionbudget.policy/{release}-b-lockkeeper-zookeeper created"),
    ] {
        assert!(applied.contains(&object), "{object}:\n{applied}");
    }
    // Cluster-scoped objects outlive the namespace: remove them.
    let (ok, out, err) = cluster.kubectl(&["delete", "-f", "-"], &cluster_wide);
    assert!(ok, "{out}{err}");
    cluster.stop().await;
}

/// A CRD of the Prometheus Operator's group that takes any object of `kind`: a plain cluster
/// has no Prometheus Operator, and the chart's ServiceMonitor and PrometheusRule need their
/// kinds to apply.
fn monitoring_crd(kind: &str) -> String {
    let plural = format!("{}s", kind.to_lowercase());
    format!(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {plural}.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {{kind: {kind}, plural: {plural}, singular: {singular}, listKind: {kind}List}}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"#,
        singular = kind.to_lowercase()
    )
}

/// The metric names a PromQL expression uses (`lockkeeper_…`), without the `_total`,
/// `_bucket`, `_sum` and `_count` suffixes the exposition adds.
fn metric_families(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("lockkeeper_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name);
        names.push(family.to_string());
    }
    names
}

/// The Grafana dashboard and the PrometheusRule (both off by default): the dashboard's JSON
/// loads and each query and alert uses only metrics the controller exports, and the rules
/// pass `promtool check rules` and `promtool test rules` (each alert fires on a series that
/// should fire it, and not before).
#[test]
fn the_dashboard_and_alerts_use_the_controllers_metrics_and_pass_promtool() {
    let defaults = rendered(
        "locks",
        "platform",
        &["--values", &values_file("default-values.yaml")],
    );
    assert!(
        !kinds(&defaults)
            .iter()
            .any(|k| k == "PrometheusRule" || k == "ConfigMap"),
        "off by default"
    );
    let docs = rendered(
        "locks",
        "platform",
        &["--values", &values_file("cluster-wide-values.yaml")],
    );
    // Every family the controller exports, each with a series (an empty family is not shown).
    let metrics = lockkeeper::controller::telemetry::Metrics::new();
    metrics.granted("db");
    metrics.released("db");
    metrics.expired("db");
    metrics.lost("db");
    metrics.waited("db", std::time::Duration::from_secs(1));
    metrics.held("db", std::time::Duration::from_secs(1));
    metrics.queue_length("db", 1);
    let now = k8s_openapi::jiff::Timestamp::now();
    metrics.lock_summary("db", 1, Some(now), Some(now));
    drop(metrics.reconcile_started("LockClaim"));
    metrics.reconcile_failed(
        "LockClaim",
        lockkeeper::controller::error::Step::WriteClaimStatus,
    );
    let exported = metrics.render();
    let is_exported = |family: &str| exported.contains(&format!("# TYPE {family} "));

    let dashboard_map = one(&docs, "ConfigMap");
    assert_eq!(
        dashboard_map["metadata"]["labels"]["grafana_dashboard"],
        "1"
    );
    assert_eq!(
        dashboard_map["metadata"]["annotations"]["grafana_folder"],
        "Platform"
    );
    let dashboard: Value = serde_json::from_str(
        dashboard_map["data"]["lockkeeper.json"]
            .as_str()
            .expect("the dashboard's JSON"),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for shown in [
        "Holders",
        "Queue length",
        "Wait time",
        "Hold time",
        "losses",
        "ZooKeeper session",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(shown)),
            "{shown}: {titles:?}"
        );
    }
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{panel}");
        for target in targets {
            let expr = target["expr"].as_str().expect("an expression");
            let families = metric_families(expr);
            assert!(!families.is_empty(), "{expr}");
            for family in families {
                assert!(
                    is_exported(&family),
                    "{family} (in {expr:?}) is not exported:\n{exported}"
                );
            }
        }
    }

    let rule = one(&docs, "PrometheusRule");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let groups = &rule["spec"];
    let alerts: Vec<&str> = groups["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let expr = r["expr"].as_str().unwrap();
            for family in metric_families(expr) {
                assert!(
                    is_exported(&family),
                    "{family} (in {expr:?}) is not exported"
                );
            }
            r["alert"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        alerts,
        [
            "LockkeeperClaimWaitingTooLong",
            "LockkeeperGrantHeldTooLong",
            "LockkeeperZooKeeperSessionLost",
            "LockkeeperGrantsLost",
            "LockkeeperDeadlock",
            "LockkeeperNoLeader"
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, serde_yaml::to_string(groups).unwrap()).unwrap();
    let promtool = |args: &[&str]| {
        let output = std::process::Command::new("promtool")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("promtool runs (make deps installs Debian's prometheus package)");
        assert!(
            output.status.success(),
            "promtool {args:?}:\n{}",
            text(&output)
        );
    };
    promtool(&["check", "rules", "rules.yaml"]);
    // The wait alert at 1800 s (the values' threshold): a claim made at time 0 is not waiting
    // too long at 25 min, and is at 35 min. The session alert needs 2 minutes down.
    std::fs::write(
        dir.path().join("tests.yaml"),
        r#"rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'lockkeeper_oldest_wait_started_timestamp_seconds{lock="db"}'
        values: '0x40'
      - series: 'lockkeeper_zookeeper_session_connected{pod="lk-0"}'
        values: '1 0 0 0 0'
      - series: 'lockkeeper_leader{pod="lk-0"}'
        values: '1x40'
    alert_rule_test:
      - eval_time: 25m
        alertname: LockkeeperClaimWaitingTooLong
        exp_alerts: []
      - eval_time: 35m
        alertname: LockkeeperClaimWaitingTooLong
        exp_alerts:
          - exp_labels: {severity: warning, lock: db}
            exp_annotations:
              summary: "A claim on lock db has waited more than 1800s"
              description: "Find out who holds it and why: kubectl lock why <claim>, kubectl lock list -A."
      - eval_time: 2m
        alertname: LockkeeperZooKeeperSessionLost
        exp_alerts: []
      - eval_time: 4m
        alertname: LockkeeperZooKeeperSessionLost
        exp_alerts:
          - exp_labels: {severity: critical, pod: lk-0}
            exp_annotations:
              summary: "lockkeeper replica lk-0 has no ZooKeeper session"
              description: "No grants move while the leader is cut off from ZooKeeper; grants it held are marked Lost."
      - eval_time: 10m
        alertname: LockkeeperNoLeader
        exp_alerts: []
      - eval_time: 10m
        alertname: LockkeeperDeadlock
        exp_alerts: []
"#,
    )
    .unwrap();
    promtool(&["test", "rules", "tests.yaml"]);
}

#[test]
fn the_plain_kubectl_manifest_is_the_charts_default_render() {
    let output = Command::new("bash")
        .arg(repo().join("e2e/tools/render-manifest.sh"))
        .arg(helm_binary())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let committed = std::fs::read_to_string(repo().join("deploy/lockkeeper.yaml")).unwrap();
    assert!(
        committed == String::from_utf8_lossy(&output.stdout),
        "deploy/lockkeeper.yaml is stale: run `make manifest` and commit it"
    );
}

/// The README's install without Helm, command for command. It takes the `lockkeeper`
/// namespace, as the README does, and removes it afterwards: on a cluster that already has
/// one, `kubectl create namespace lockkeeper` fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_install_with_plain_kubectl_applies() {
    let cluster = Cluster::start_without_controller().await;
    let typed = |line: &str| {
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        cluster.kubectl_as_typed_ok(&args, "")
    };
    typed("kubectl apply -f crds/");
    typed("kubectl create namespace lockkeeper");
    let applied = typed("kubectl apply -f deploy/lockkeeper.yaml");
    for object in [
        "deployment.apps/lockkeeper created",
        "role.rbac.authorization.k8s.io/lockkeeper created",
        "rolebinding.rbac.authorization.k8s.io/lockkeeper created",
        "serviceaccount/lockkeeper created",
        "service/lockkeeper-metrics created",
        "poddisruptionbudget.policy/lockkeeper created",
    ] {
        assert!(applied.contains(object), "{object}:\n{applied}");
    }
    let listed = cluster.kubectl_ok(&["get", "deployments", "-n", "lockkeeper"], "");
    assert!(listed.contains("lockkeeper"), "{listed}");
    typed("kubectl delete namespace lockkeeper --wait=false");
    cluster.stop().await;
}
