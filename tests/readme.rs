//! README.md's shell commands: each one is listed here with the test that runs it, and the
//! ones no other test runs are run here (the quick start, troubleshooting, the Helm install
//! into the real API server).

mod cluster;

use std::process::Command;

use cluster::{Cluster, helm_binary, repo};
use lockkeeper::resources::ClaimPhase;

const HELM_INSTALL: &str = "helm install lockkeeper charts/lockkeeper --namespace lockkeeper --create-namespace --set zookeeper.connect=zookeeper.lockkeeper.svc:2181";

/// Every command of README.md's `sh` blocks, and where it is run.
const COMMANDS: &[(&str, &str)] = &[
    (
        "make sandbox",
        "tests/sandbox.rs (runs e2e/sandbox/up.sh as make does)",
    ),
    ("make test", ".ci/run"),
    (HELM_INSTALL, "the_readme_helm_install_installs_the_chart"),
    (
        "kubectl get deployments,services -n lockkeeper",
        "the_readme_helm_install_installs_the_chart",
    ),
    (
        "kubectl apply -f crds/",
        "tests/chart.rs the_readme_install_with_plain_kubectl_applies",
    ),
    (
        "kubectl create namespace lockkeeper",
        "tests/chart.rs the_readme_install_with_plain_kubectl_applies",
    ),
    (
        "kubectl apply -f deploy/lockkeeper.yaml",
        "tests/chart.rs the_readme_install_with_plain_kubectl_applies",
    ),
    (
        "kubectl apply -f examples/job-with-claim/",
        "the_quick_start_and_troubleshooting_commands_show_the_queue",
    ),
    (
        "kubectl get locks",
        "the_quick_start_and_troubleshooting_commands_show_the_queue",
    ),
    (
        "kubectl get claims -o wide",
        "the_quick_start_and_troubleshooting_commands_show_the_queue",
    ),
    (
        "kubectl describe claim migrate-billing",
        "the_quick_start_and_troubleshooting_commands_show_the_queue",
    ),
    (
        "kubectl get events --field-selector involvedObject.kind=LockClaim",
        "the_quick_start_and_troubleshooting_commands_show_the_queue",
    ),
    (
        "lockkeeper queue --zookeeper 127.0.0.1:2181 --path /lockkeeper/lockkeeper-demo/schema-migrations",
        "the_quick_start_and_troubleshooting_commands_show_the_queue (with the test's ZooKeeper and root)",
    ),
    (
        "lockkeeper controller --zookeeper 127.0.0.1:2181 [--zookeeper-root /lockkeeper] [--allowed-lock-path NAMESPACE=PREFIX ...] [--namespace NS] [--metrics-addr 127.0.0.1:8080] [--session-timeout 10s] [--concurrent-reconciles 32]",
        "a synopsis; tests/scenarios.rs starts it with every flag (Cluster::start_controller_process)",
    ),
    (
        "lockkeeper crd | kubectl apply -f -",
        "the_crd_command_applies_with_kubectl",
    ),
    (
        "lockkeeper gate --lock report-writer [--mode Shared] [--timeout 30m] [--token-file /lock/token]",
        "a synopsis; tests/gate_and_run.rs runs gate with each flag",
    ),
    (
        "lockkeeper run --lock schema-migrations [-n NS] [--mode Shared] [--lease-duration 15s] [--timeout 0s] -- ./migrate.sh",
        "a synopsis; tests/gate_and_run.rs runs run with each flag",
    ),
    (
        "lockkeeper run --lock orders-db --lock search-index:Shared -- ./reindex.sh",
        "a synopsis; tests/gate_and_run.rs runs run and gate with several locks and modes",
    ),
    (
        "PATH=$PWD/target/debug:$PATH kubectl lock list [-A]",
        "tests/kubectl_lock.rs runs kubectl lock list and list -A with the plugin's directory on the PATH",
    ),
    (
        "kubectl lock why CLAIM | claim/NAME | pod/NAME | job/NAME",
        "a synopsis; tests/kubectl_lock.rs runs each form",
    ),
    (
        "kubectl lock history LOCK",
        "a synopsis; tests/kubectl_lock.rs",
    ),
    (
        "kubectl lock release CLAIM [--reason TEXT] [--yes]",
        "a synopsis; tests/kubectl_lock.rs, asked and with --yes",
    ),
    (
        "kubectl lock run --lock NAME[:MODE] [...] -- COMMAND",
        "a synopsis; tests/kubectl_lock.rs",
    ),
    (
        "make controlplane",
        "tests/sandbox.rs (up.sh starts the same controlplane launcher)",
    ),
    (
        "KUBECONFIG=.controlplane/kubeconfig kubectl version",
        "the_control_plane_reports_its_version",
    ),
];

/// The commands of README.md's `sh` blocks: comments dropped, continuation lines joined,
/// whitespace collapsed.
fn readme_commands() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut commands = Vec::new();
    let mut in_shell = false;
    let mut pending = String::new();
    for line in text.lines() {
        if let Some(fence) = line.strip_prefix("```") {
            in_shell = fence == "sh";
            continue;
        }
        if !in_shell {
            continue;
        }
        let line = match line.find(" #") {
            Some(at) => &line[..at],
            None if line.trim_start().starts_with('#') => "",
            None => line,
        };
        if let Some(continued) = line.trim_end().strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let command = pending.split_whitespace().collect::<Vec<_>>().join(" ");
        pending.clear();
        if !command.is_empty() {
            commands.push(command);
        }
    }
    commands
}

#[test]
fn every_command_in_the_readme_is_run_by_a_test() {
    let commands = readme_commands();
    for command in &commands {
        assert!(
            COMMANDS.iter().any(|(listed, _)| listed == command),
            "README.md shows `{command}`, which no test is listed as running"
        );
    }
    for (listed, _) in COMMANDS {
        assert!(
            commands.iter().any(|c| c == listed),
            "`{listed}` is no longer in README.md: drop it from this list"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_and_troubleshooting_commands_show_the_queue() {
    let cluster = Cluster::start().await;
    cluster.kubectl_line("kubectl apply -f examples/job-with-claim/");
    let claims = ["migrate-billing", "migrate-orders", "migrate-search"];
    let phases = cluster
        .poll(
            cluster::PATIENCE,
            "one migration holds and two wait",
            || async {
                let mut phases = Vec::new();
                for claim in claims {
                    phases.push((claim, cluster.phase_if_exists(claim).await));
                }
                phases
            },
            |phases| {
                let count = |p| phases.iter().filter(|(_, q)| *q == Some(p)).count();
                count(ClaimPhase::Granted) == 1 && count(ClaimPhase::Waiting) == 2
            },
        )
        .await;
    let holder = phases
        .iter()
        .find(|(_, p)| *p == Some(ClaimPhase::Granted))
        .unwrap()
        .0;

    cluster
        .get_locks_until("schema-migrations", |row| {
            row[1..4] == ["Mutex", holder, "2"]
        })
        .await;

    let table = cluster.kubectl_line("kubectl get claims -o wide");
    let mut positions = Vec::new();
    for claim in claims {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("{claim} ")))
            .unwrap_or_else(|| panic!("{table}"));
        if claim == holder {
            let token = cluster.claim_status(claim).await.fencing_token.unwrap();
            assert!(
                row.contains(" Granted ") && row.contains(&format!("fencing token {token}")),
                "{table}"
            );
        } else {
            assert!(
                row.contains(" Waiting ") && row.contains("ahead in the queue"),
                "{table}"
            );
            positions.push(cluster.claim_status(claim).await.position.unwrap());
        }
    }
    positions.sort();
    assert_eq!(positions, [1, 2]);

    let described = cluster.kubectl_line("kubectl describe claim migrate-billing");
    let billing = cluster.claim_status("migrate-billing").await;
    assert!(
        described.lines().any(|l| {
            l.trim_start().starts_with("Phase:") && l.ends_with(&format!("{:?}", billing.phase))
        }),
        "describe shows the phase:\n{described}"
    );
    assert!(
        described.contains(billing.message.as_deref().unwrap()),
        "describe shows the message:\n{described}"
    );

    let events = cluster
        .poll(
            cluster::PATIENCE,
            "the Granted event is listed",
            || async {
                cluster.kubectl_line(
                    "kubectl get events --field-selector involvedObject.kind=LockClaim",
                )
            },
            |events| {
                events
                    .lines()
                    .any(|l| l.contains("Granted") && l.contains(holder))
            },
        )
        .await;
    assert!(events.contains("lockclaim/"), "{events}");

    // The README's ZooKeeper address and root are the sandbox's; here, the test's.
    let path = format!("{}/{}/schema-migrations", cluster.root, cluster.namespace);
    let queue = Command::new(env!("CARGO_BIN_EXE_lockkeeper"))
        .args([
            "queue",
            "--zookeeper",
            &cluster.zk.connect_string(),
            "--path",
            &path,
        ])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&queue.stdout);
    assert!(
        queue.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&queue.stderr)
    );
    assert_eq!(
        shown.lines().filter(|l| l.contains("hold")).count(),
        1,
        "one holder:\n{shown}"
    );
    assert_eq!(
        shown.lines().filter(|l| l.contains("wait")).count(),
        2,
        "two waiting:\n{shown}"
    );
    cluster.stop().await;
}

/// The README's `helm install`, run as typed against the real API server; then what it
/// installed, as the README lists it. It takes the README's `lockkeeper` namespace and
/// removes it afterwards (on a cluster that already has one, the install fails the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_helm_install_installs_the_chart() {
    let cluster = Cluster::start_without_controller().await;
    let helm_home = tempfile::tempdir().unwrap();
    let helm = |args: &[&str]| {
        let output = Command::new(helm_binary())
            .args(args)
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("HELM_CACHE_HOME", helm_home.path().join("cache"))
            .env("HELM_CONFIG_HOME", helm_home.path().join("config"))
            .env("HELM_DATA_HOME", helm_home.path().join("data"))
            .current_dir(repo())
            .output()
            .expect("helm runs (make deps installs it)");
        let shown = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "helm {}: {shown}", args.join(" "));
        shown
    };
    let args: Vec<&str> = HELM_INSTALL.split_whitespace().skip(1).collect();
    let installed = helm(&args);
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    let typed = |line: &str| {
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        cluster.kubectl_as_typed_ok(&args, "")
    };
    let listed = typed("kubectl get deployments,services -n lockkeeper");
    for name in ["deployment.apps/lockkeeper", "service/lockkeeper-metrics"] {
        assert!(listed.contains(name), "{name}:\n{listed}");
    }
    let replicas =
        typed("kubectl get deployment lockkeeper -n lockkeeper -o jsonpath={.spec.replicas}");
    assert_eq!(replicas, "2", "a leader and a standby");
    let rest = typed(
        "kubectl get serviceaccounts,roles,rolebindings,poddisruptionbudgets -n lockkeeper -o name",
    );
    for name in [
        "serviceaccount/lockkeeper",
        "role.rbac.authorization.k8s.io/lockkeeper",
        "rolebinding.rbac.authorization.k8s.io/lockkeeper",
        "poddisruptionbudget.policy/lockkeeper",
    ] {
        assert!(rest.lines().any(|l| l == name), "{name}:\n{rest}");
    }
    helm(&["uninstall", "lockkeeper", "--namespace", "lockkeeper"]);
    typed("kubectl delete namespace lockkeeper --wait=false");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_command_applies_with_kubectl() {
    let cluster = Cluster::start_without_controller().await;
    let crd = Command::new(env!("CARGO_BIN_EXE_lockkeeper"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(crd.status.success());
    let applied = cluster.kubectl_ok(&["apply", "-f", "-"], &String::from_utf8_lossy(&crd.stdout));
    for name in [
        "customresourcedefinition.apiextensions.k8s.io/distributedlocks.lockkeeper.dev",
        "customresourcedefinition.apiextensions.k8s.io/lockclaims.lockkeeper.dev",
    ] {
        assert!(applied.contains(name), "{applied}");
    }
    cluster.stop().await;
}

/// `kubectl version` against the test ground reports the Kubernetes version it was built at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_reports_its_version() {
    let cluster = Cluster::start_without_controller().await;
    let shown = cluster.kubectl_as_typed_ok(&["version"], "");
    let expected = match std::env::var_os("KUBECONFIG") {
        Some(_) => "Server Version: v1.".to_string(),
        None => format!(
            "Server Version: {}",
            lockkeeper_testkit::KubernetesVersion::from_env()
                .resolve()
                .unwrap()
        ),
    };
    assert!(shown.contains(&expected), "{expected}:\n{shown}");
    cluster.stop().await;
}
