//! A real Kubernetes control plane on loopback: etcd, kube-apiserver and
//! kube-controller-manager, built from Go modules by `e2e/controlplane/build.sh` (what envtest
//! would download, built here because nothing can be downloaded). kube-apiserver serves TLS
//! with token authentication, `Node,RBAC` authorization, its default admission plugins and a
//! ServiceAccount signing key; kube-controller-manager runs the controllers a lock's holders
//! need (Job, CronJob, garbage collector, namespace, ServiceAccount and token). There is no
//! kubelet: tests play it by setting pod phases.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::KitError;
use crate::zookeeper_server::free_port;

/// The controllers of kube-controller-manager that lockkeeper's holders and tests rely on.
const CONTROLLERS: &str = "job-controller,cronjob-controller,garbage-collector-controller,\
namespace-controller,serviceaccount-controller,serviceaccount-token-controller,\
root-ca-certificate-publisher-controller,ttl-after-finished-controller";

/// How long the first start may take (etcd, the API server's bootstrap, the controllers).
const START_DEADLINE: Duration = Duration::from_secs(180);

/// Which of the pinned Kubernetes versions (`e2e/controlplane/kubernetes-*/go.mod`) to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubernetesVersion {
    /// The newest minor the Go module proxy serves.
    Newest,
    /// The oldest minor the Rust client library supports.
    Oldest,
    /// A pinned version by its minor, `1.33`, or in full, `v1.33.13`.
    Named(String),
}

impl KubernetesVersion {
    /// `LOCKKEEPER_KUBERNETES` (`newest`, `oldest`, `1.33`, …), newest when unset.
    pub fn from_env() -> Self {
        Self::parse(&std::env::var("LOCKKEEPER_KUBERNETES").unwrap_or_default())
    }

    /// `newest` (or nothing), `oldest`, or a pinned version like `1.33` or `v1.33.13`.
    pub fn parse(name: &str) -> Self {
        match name {
            "" | "newest" => KubernetesVersion::Newest,
            "oldest" => KubernetesVersion::Oldest,
            other => KubernetesVersion::Named(other.to_string()),
        }
    }

    /// The pinned version this names, such as `v1.37.2`.
    pub fn resolve(&self) -> Result<String, KitError> {
        let pinned = pinned_versions()?;
        let found = match self {
            KubernetesVersion::Newest => pinned.last().cloned(),
            KubernetesVersion::Oldest => pinned.first().cloned(),
            KubernetesVersion::Named(name) => {
                let name = name.trim_start_matches('v');
                pinned
                    .iter()
                    .find(|v| {
                        let v = v.trim_start_matches('v');
                        v == name || v.starts_with(&format!("{name}."))
                    })
                    .cloned()
            }
        };
        found.ok_or_else(|| {
            KitError::Missing(format!(
                "Kubernetes {self:?}: the pinned versions are {}",
                pinned.join(", ")
            ))
        })
    }
}

/// The repository this kit belongs to.
pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Kubernetes versions pinned in `e2e/controlplane/kubernetes-*/go.mod`, oldest first.
pub fn pinned_versions() -> Result<Vec<String>, KitError> {
    let dir = repository().join("e2e/controlplane");
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let go_mod = entry?.path().join("go.mod");
        let Ok(text) = std::fs::read_to_string(&go_mod) else {
            continue;
        };
        if let Some(version) = text
            .lines()
            .find_map(|line| line.strip_prefix("require k8s.io/kubernetes "))
        {
            versions.push(version.trim().to_string());
        }
    }
    versions.sort_by_key(|v| {
        v.trim_start_matches('v')
            .split('.')
            .map(|part| part.parse::<u32>().unwrap_or(0))
            .collect::<Vec<_>>()
    });
    Ok(versions)
}

/// Where `build.sh` leaves the binaries: `LOCKKEEPER_CONTROLPLANE_CACHE`, or `.tools/controlplane`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("LOCKKEEPER_CONTROLPLANE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository().join(".tools/controlplane"))
}

/// How to start a control plane.
#[derive(Clone, Debug)]
pub struct ControlPlaneOptions {
    pub version: KubernetesVersion,
    /// State and logs: etcd's data, keys, certificates, the kubeconfig, one log per process.
    pub dir: PathBuf,
    /// kube-apiserver's port on 127.0.0.1; 0 picks a free one.
    pub api_port: u16,
    /// kube-apiserver's watch cache (on in every cluster). Without it a watch that resumes
    /// from before an etcd compaction gets `410 Gone`; with it, the cache still serves it.
    pub watch_cache: bool,
}

/// A running control plane. Its processes are stopped when it is dropped, and are killed by
/// the kernel if the thread that started them ends first (`PR_SET_PDEATHSIG`).
pub struct ControlPlane {
    version: String,
    dir: PathBuf,
    api_port: u16,
    etcd_port: u16,
    token: String,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    controller_manager: Option<Child>,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager, and waits until the API server
    /// is ready and the controllers work (the `default` ServiceAccount exists).
    pub fn start(options: ControlPlaneOptions) -> Result<Self, KitError> {
        let version = options.version.resolve()?;
        let binaries = cache_dir().join(format!("kubernetes-{version}"));
        for binary in ["etcd", "kube-apiserver", "kube-controller-manager"] {
            if !binaries.join(binary).exists() {
                return Err(KitError::Missing(format!(
                    "{} is not built: `make deps` (e2e/controlplane/build.sh) builds it",
                    binaries.join(binary).display()
                )));
            }
        }
        let dir = options.dir;
        std::fs::create_dir_all(dir.join("pki"))?;
        let api_port = match options.api_port {
            0 => free_port()?,
            port => port,
        };
        let mut plane = ControlPlane {
            version,
            api_port,
            etcd_port: free_port()?,
            token: random_token()?,
            etcd: None,
            apiserver: None,
            controller_manager: None,
            dir,
        };
        plane.write_credentials()?;
        let deadline = Instant::now() + START_DEADLINE;

        let peer_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{}", plane.etcd_port);
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Command::new(binaries.join("etcd"));
        etcd.args(["--name", "lockkeeper-e2e", "--log-level", "warn"])
            .arg(format!("--data-dir={}", plane.dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=lockkeeper-e2e={peer_url}"))
            .arg("--unsafe-no-fsync");
        plane.etcd = Some(plane.spawn("etcd", &mut etcd)?);
        plane.wait("etcd", deadline, |plane| {
            Ok(TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], plane.etcd_port))).is_ok())
        })?;

        let pki = plane.dir.join("pki");
        let mut apiserver = Command::new(binaries.join("kube-apiserver"));
        apiserver
            .arg(format!("--etcd-servers={etcd_url}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            // No `kubernetes` Service endpoints: nothing runs in the cluster to use them, and
            // newer servers refuse a loopback address there.
            .arg("--endpoint-reconciler-type=none")
            .arg(format!("--secure-port={api_port}"))
            .arg(format!("--cert-dir={}", pki.display()))
            .arg(format!(
                "--token-auth-file={}",
                plane.dir.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=Node,RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!(
                "--service-account-key-file={}",
                pki.join("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.join("sa.key").display()
            ))
            .args([
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
            ])
            .arg(format!("--watch-cache={}", options.watch_cache));
        plane.apiserver = Some(plane.spawn("kube-apiserver", &mut apiserver)?);
        plane.wait("kube-apiserver", deadline, |plane| {
            Ok(plane.ca_file().exists() && plane.kubectl(&["get", "--raw", "/readyz"])?)
        })?;
        plane.write_kubeconfig()?;

        let mut controller_manager = Command::new(binaries.join("kube-controller-manager"));
        controller_manager
            .arg(format!("--kubeconfig={}", plane.kubeconfig().display()))
            .arg(format!("--controllers={CONTROLLERS}"))
            .args(["--leader-elect=false", "--secure-port=0"])
            .arg(format!(
                "--service-account-private-key-file={}",
                pki.join("sa.key").display()
            ))
            .arg(format!("--root-ca-file={}", plane.ca_file().display()));
        plane.controller_manager =
            Some(plane.spawn("kube-controller-manager", &mut controller_manager)?);
        plane.wait("kube-controller-manager", deadline, |plane| {
            plane.kubectl(&["get", "serviceaccount", "default", "--namespace", "default"])
        })?;
        Ok(plane)
    }

    /// One control plane per process, started on first use by a thread that lives as long as
    /// the process, so its servers are killed when the process ends however it ends (a test
    /// binary never drops its statics). `LOCKKEEPER_KUBERNETES` picks the version.
    pub fn shared() -> Result<&'static ControlPlane, KitError> {
        static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
        let started = SHARED.get_or_init(|| {
            let (sender, receiver) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("control-plane".into())
                .spawn(move || {
                    let started = shared_dir().and_then(|dir| {
                        ControlPlane::start(ControlPlaneOptions {
                            version: KubernetesVersion::from_env(),
                            dir,
                            api_port: 0,
                            watch_cache: true,
                        })
                    });
                    let _ = sender.send(started.map_err(|e| e.to_string()));
                    loop {
                        std::thread::park();
                    }
                })
                .expect("a thread for the control plane");
            receiver
                .recv()
                .unwrap_or_else(|_| Err("the control plane's thread ended".into()))
        });
        started
            .as_ref()
            .map_err(|message| KitError::Missing(message.clone()))
    }

    /// The version running, such as `v1.37.2`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// The CA that signed kube-apiserver's serving certificate (with the certificate).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("pki/apiserver.crt")
    }

    /// A kubeconfig for an admin (`system:masters`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The log of one of the processes (`etcd`, `kube-apiserver`, `kube-controller-manager`).
    pub fn log_path(&self, process: &str) -> PathBuf {
        self.dir.join(format!("{process}.log"))
    }

    /// Compacts etcd's history up to its current revision: watches that resume from an
    /// older resourceVersion then get a real `410 Gone` from the API server.
    pub fn compact_etcd(&self) -> Result<(), KitError> {
        let url = format!("127.0.0.1:{}", self.etcd_port);
        let revision = etcd_post(&url, "/v3/kv/range", r#"{"key":"AA=="}"#)?;
        let revision = json_number_after(&revision, "\"revision\":\"")
            .ok_or_else(|| KitError::Missing(format!("etcd's revision in {revision}")))?;
        etcd_post(
            &url,
            "/v3/kv/compaction",
            &format!(r#"{{"revision":"{revision}","physical":true}}"#),
        )?;
        Ok(())
    }

    /// The process id of `etcd`, `kube-apiserver` or `kube-controller-manager`, while it runs.
    pub fn pid(&self, process: &str) -> Option<u32> {
        match process {
            "etcd" => self.etcd.as_ref(),
            "kube-apiserver" => self.apiserver.as_ref(),
            "kube-controller-manager" => self.controller_manager.as_ref(),
            _ => None,
        }
        .map(Child::id)
    }

    /// The size of etcd's database file, in bytes (`dbSize` of etcd's maintenance status).
    pub fn etcd_db_size(&self) -> Result<u64, KitError> {
        let url = format!("127.0.0.1:{}", self.etcd_port);
        let status = etcd_post(&url, "/v3/maintenance/status", "{}")?;
        json_number_after(&status, "\"dbSize\":\"")
            .and_then(|size| size.parse().ok())
            .ok_or_else(|| KitError::Missing(format!("dbSize in etcd's status {status}")))
    }

    /// Stops kube-controller-manager, kube-apiserver and etcd, in that order.
    pub fn stop(&mut self) {
        for child in [
            self.controller_manager.take(),
            self.apiserver.take(),
            self.etcd.take(),
        ]
        .into_iter()
        .flatten()
        {
            stop_child(child);
        }
    }

    fn write_credentials(&self) -> Result<(), KitError> {
        let pki = self.dir.join("pki");
        let key = pki.join("sa.key");
        if !key.exists() {
            run_openssl(&["genrsa", "-out", path_str(&key)?, "2048"])?;
        }
        run_openssl(&[
            "rsa",
            "-in",
            path_str(&key)?,
            "-pubout",
            "-out",
            path_str(&pki.join("sa.pub"))?,
        ])?;
        std::fs::write(
            self.dir.join("tokens.csv"),
            format!(
                "{},lockkeeper-admin,lockkeeper-admin,system:masters\n",
                self.token
            ),
        )?;
        Ok(())
    }

    /// The admin's kubeconfig (a bearer token of `system:masters`).
    fn write_kubeconfig(&self) -> Result<(), KitError> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lockkeeper-e2e\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: lockkeeper-e2e\n  context:\n    cluster: lockkeeper-e2e\n    user: admin\n    namespace: default\ncurrent-context: lockkeeper-e2e\n",
            server = self.server(),
            ca = self.ca_file().display(),
            token = self.token,
        );
        std::fs::write(self.kubeconfig(), text)?;
        Ok(())
    }

    fn spawn(&self, name: &str, command: &mut Command) -> Result<Child, KitError> {
        let log = std::fs::File::create(self.log_path(name))?;
        // SAFETY: only async-signal-safe calls: the child's parent-death signal, and a signal
        // mask cleared of what the launcher blocked (a mask survives exec).
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                Ok(())
            });
        }
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| KitError::Missing(format!("cannot start {name}: {e}")))
    }

    /// Retries `ready` every 100 ms until it holds; fails naming `name`'s log when the
    /// process exits or the deadline passes.
    fn wait(
        &mut self,
        name: &str,
        deadline: Instant,
        ready: impl Fn(&ControlPlane) -> Result<bool, KitError>,
    ) -> Result<(), KitError> {
        loop {
            if ready(self)? {
                return Ok(());
            }
            let child = match name {
                "etcd" => self.etcd.as_mut(),
                "kube-apiserver" => self.apiserver.as_mut(),
                _ => self.controller_manager.as_mut(),
            };
            if let Some(status) = child.and_then(|c| c.try_wait().ok().flatten()) {
                return Err(KitError::ControlPlane(
                    format!("{name} exited during start ({status})"),
                    self.log_path(name),
                ));
            }
            if Instant::now() > deadline {
                return Err(KitError::ControlPlane(
                    format!("{name} did not come up within {START_DEADLINE:?}"),
                    self.log_path(name),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs kubectl as the admin (before the kubeconfig exists: with the token and CA given
    /// as flags); whether it succeeded.
    fn kubectl(&self, args: &[&str]) -> Result<bool, KitError> {
        let status = Command::new("kubectl")
            .arg(format!("--server={}", self.server()))
            .arg(format!("--token={}", self.token))
            .arg(format!(
                "--certificate-authority={}",
                self.ca_file().display()
            ))
            .arg("--request-timeout=5s")
            .env("KUBECONFIG", "/dev/null")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| KitError::Missing(format!("kubectl (it must be installed): {e}")))?;
        Ok(status.success())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The state directory of this process's shared control plane, under the system's temporary
/// directory; directories that earlier test processes left behind are removed.
fn shared_dir() -> Result<PathBuf, KitError> {
    let base = std::env::temp_dir().join("lockkeeper-controlplanes");
    std::fs::create_dir_all(&base)?;
    for entry in std::fs::read_dir(&base)?.flatten() {
        let pid = entry.file_name().to_string_lossy().parse::<i32>().ok();
        // SAFETY: kill with signal 0 only asks whether the process exists.
        if pid.is_some_and(|pid| unsafe { libc::kill(pid, 0) } != 0) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(base.join(std::process::id().to_string()))
}

fn stop_child(mut child: Child) {
    // SAFETY: sends SIGTERM to a child this kit started and has not reaped.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn run_openssl(args: &[&str]) -> Result<(), KitError> {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .map_err(|e| KitError::Missing(format!("openssl (it must be installed): {e}")))?;
    if !output.status.success() {
        return Err(KitError::Missing(format!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(())
}

fn path_str(path: &Path) -> Result<&str, KitError> {
    path.to_str()
        .ok_or_else(|| KitError::Missing(format!("a UTF-8 path instead of {}", path.display())))
}

/// 32 hex digits from the system's random source.
fn random_token() -> Result<String, KitError> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// POSTs a JSON body to etcd's gRPC gateway (plain HTTP on its client port); the answer's body.
fn etcd_post(address: &str, path: &str, body: &str) -> Result<String, KitError> {
    use std::io::Write;
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if !answer.starts_with("HTTP/1.1 200") {
        return Err(KitError::Missing(format!("etcd answered {path}: {answer}")));
    }
    Ok(answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

/// The digits after `marker` in `text`.
fn json_number_after(text: &str, marker: &str) -> Option<String> {
    let start = text.find(marker)? + marker.len();
    let digits: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    (!digits.is_empty()).then_some(digits)
}
