//! Runs tests/kubectl.sh: the real kubectl against a memkube started here.

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_kubectl_works_against_memkube() {
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        panic!("kubectl is not installed");
    }
    let server = memkube::MemKube::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kubectl.sh");
    let output = tokio::task::spawn_blocking({
        let (kubeconfig, tmp) = (kubeconfig.clone(), dir.path().to_path_buf());
        move || {
            Command::new("bash")
                .arg(script)
                .env("KUBECONFIG", kubeconfig)
                .env("TMPDIR", &tmp)
                .env("HOME", &tmp)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "kubectl.sh failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("kubectl checks passed"));
}
