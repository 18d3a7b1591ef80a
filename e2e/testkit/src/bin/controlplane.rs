//! Runs a Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) in the
//! foreground until SIGTERM or SIGINT: `controlplane DIR [API_PORT] [VERSION]`. The sandbox
//! and `make controlplane` use it; DIR/kubeconfig is the admin's kubeconfig, written once the
//! API server is ready. VERSION is `newest` (default), `oldest` or a pinned minor like `1.33`.

use std::path::PathBuf;

use lockkeeper_testkit::{ControlPlane, ControlPlaneOptions, KubernetesVersion};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: controlplane DIR [API_PORT] [newest|oldest|1.MINOR]");
        std::process::exit(2);
    };
    let api_port = match args.next().map(|p| p.parse::<u16>()) {
        None => 0,
        Some(Ok(port)) => port,
        Some(Err(err)) => {
            eprintln!("controlplane: API_PORT: {err}");
            std::process::exit(2);
        }
    };
    let version = KubernetesVersion::parse(&args.next().unwrap_or_default());
    // Block the stop signals before any child starts, then wait for one of them here.
    let signals = stop_signals();
    let options = ControlPlaneOptions {
        version,
        dir: PathBuf::from(dir),
        api_port,
        watch_cache: true,
    };
    let mut plane = match ControlPlane::start(options) {
        Ok(plane) => plane,
        Err(err) => {
            eprintln!("controlplane: {err}");
            std::process::exit(1);
        }
    };
    println!(
        "Kubernetes {} serves on {}; kubeconfig: {}",
        plane.version(),
        plane.server(),
        plane.kubeconfig().display()
    );
    let mut received = 0;
    // SAFETY: sigwait on a set this thread has blocked; `received` is a valid out-pointer.
    unsafe { libc::sigwait(&signals, &mut received) };
    plane.stop();
}

/// SIGTERM and SIGINT, blocked in this thread (and so in every thread it starts).
fn stop_signals() -> libc::sigset_t {
    // SAFETY: the set is initialised by sigemptyset before it is read.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}
