//! `make sandbox` and `make sandbox-down`, as README.md describes them, in a fresh directory on
//! free ports: the demo runs to its end and shows the grants, the user can go on with kubectl
//! and `lockkeeper run`, and sandbox-down stops every process.
//!
//! The scripts start the workspace's binaries from target/debug (`make test` and `make
//! sandbox` build them all first).

mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cluster::{output_text as text, repo};
use lockkeeper_testkit::zookeeper_server::free_port;

fn script(name: &str, args: &[String]) -> Output {
    Command::new("bash")
        .arg(repo().join("e2e/sandbox").join(name))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("bash runs")
}

fn port_open(port: &str) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_ok()
}

/// Stops the sandbox even when an assertion failed.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = script("down.sh", &[self.0.display().to_string()]);
    }
}

#[test]
fn the_sandbox_comes_up_runs_its_demo_and_goes_down() {
    let binaries = repo().join("target/debug");
    for binary in ["controlplane", "zookeeper-sandbox", "lockkeeper"] {
        assert!(
            binaries.join(binary).exists(),
            "{binary} is not built: run `cargo build --workspace --bins` (make test does)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("sandbox");
    let _down = Down(state.clone());
    let ports: Vec<String> = (0..3).map(|_| free_port().unwrap().to_string()).collect();
    let mut args = vec![state.display().to_string()];
    args.extend(ports.iter().cloned());

    let up = script("up.sh", &args);
    let shown = text(&up);
    assert!(up.status.success(), "make sandbox failed:\n{shown}");
    for line in [
        "==> demo done",
        "migrate-orders holds the lock and runs (spec.suspend: false)",
        "report-2: its init container exited 0 with fencing token",
        "$ kubectl get claims -o wide",
    ] {
        assert!(shown.contains(line), "{line:?} missing from:\n{shown}");
    }
    let granted_rows = shown
        .lines()
        .filter(|l| l.contains(" Granted ") && l.contains("fencing token"))
        .count();
    assert!(
        granted_rows >= 5,
        "each claim shown granted in turn:\n{shown}"
    );
    let kubeconfig = state.join("kubeconfig");
    assert!(shown.contains(&format!("export KUBECONFIG={}", kubeconfig.display())));

    // The user keeps exploring, as the last lines suggest.
    let kubectl = |args: &[&str]| {
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap()
    };
    let claims = kubectl(&["get", "claims", "-n", "lockkeeper-demo"]);
    let claims = text(&claims);
    assert_eq!(claims.matches("Released").count(), 5, "{claims}");
    let described = text(&kubectl(&[
        "describe",
        "claim",
        "-n",
        "lockkeeper-demo",
        "migrate-orders",
    ]));
    for line in [
        "Phase:",
        "Released",
        "Granted",
        "granted to Job migrate-orders",
    ] {
        assert!(described.contains(line), "{line:?} missing:\n{described}");
    }
    // The grant is an event; the release is in the status and the Granted condition.
    let events = described.split("Events:").nth(1).unwrap_or_default();
    assert!(
        events.contains("Granted") && events.contains("lockkeeper"),
        "the controller's events are listed:\n{described}"
    );
    // What users try on any cluster works here too: it is one.
    let ok = |args: &[&str]| {
        let output = kubectl(args);
        assert!(
            output.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            text(&output)
        );
        text(&output)
    };
    let explained = ok(&["explain", "lockclaim.spec"]);
    for field in ["holder", "lock", "mode", "waitTimeoutSeconds"] {
        assert!(explained.contains(field), "{field}:\n{explained}");
    }
    ok(&["create", "namespace", "tryout"]);
    ok(&["create", "job", "x", "--image=busybox", "-n", "tryout"]);
    ok(&[
        "create",
        "configmap",
        "settings",
        "--from-literal=a=1",
        "-n",
        "tryout",
    ]);
    let edit = Command::new("kubectl")
        .args(["edit", "configmap", "settings", "-n", "tryout"])
        .env("KUBECONFIG", &kubeconfig)
        .env("KUBE_EDITOR", r#"sed -i 's/a: "1"/a: "2"/'"#)
        .output()
        .unwrap();
    assert!(edit.status.success(), "kubectl edit: {}", text(&edit));
    let value = ok(&[
        "get",
        "configmap",
        "settings",
        "-n",
        "tryout",
        "-o",
        "jsonpath={.data.a}",
    ]);
    assert_eq!(value, "2", "kubectl edit changed the ConfigMap");
    let described = ok(&["describe", "job", "x", "-n", "tryout"]);
    assert!(described.contains("Pod Template"), "{described}");
    ok(&[
        "wait",
        "--for=create",
        "pod",
        "-l",
        "job-name=x",
        "-n",
        "tryout",
        "--timeout=30s",
    ]);
    ok(&[
        "delete",
        "namespace",
        "tryout",
        "--wait=true",
        "--timeout=60s",
    ]);

    let run = Command::new(Path::new(&binaries).join("lockkeeper"))
        .args([
            "run",
            "--lock",
            "schema-migrations",
            "-n",
            "lockkeeper-demo",
            "--",
        ])
        .args(["sh", "-c", "echo token=$LOCKKEEPER_FENCING_TOKEN"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run));
    assert!(String::from_utf8_lossy(&run.stdout).starts_with("token="));

    // Running it again finds everything up and runs the demo anew.
    let again = script("up.sh", &args);
    let shown = text(&again);
    assert!(again.status.success(), "{shown}");
    assert!(
        shown.contains("the Kubernetes control plane already serves"),
        "{shown}"
    );
    assert!(shown.contains("==> demo done"), "{shown}");

    let down = script("down.sh", &[state.display().to_string()]);
    let shown = text(&down);
    assert!(down.status.success(), "{shown}");
    assert!(shown.contains("lockkeeper controller stopped"), "{shown}");
    for port in &ports {
        assert!(
            !port_open(port),
            "port {port} still open after sandbox-down"
        );
    }
    assert!(
        state.join("controller/controller.log").exists(),
        "the logs stay after sandbox-down"
    );
}
