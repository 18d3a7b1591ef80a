//! Curator (Java) and kazoo (Python) lock clients run as child processes, so that tests can
//! show lockkeeper's nodes and theirs exclude each other on one ZooKeeper path.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

use crate::KitError;
use crate::zookeeper_server::{NETTY_JARS, java_class_path};

const PEERS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers");

/// Jars a Curator 5.4 client needs at run time (Debian's libcurator-recipes-java).
const CURATOR_JARS: &[&str] = &[
    "curator-recipes.jar",
    "curator-framework.jar",
    "curator-client.jar",
    "zookeeper.jar",
    "zookeeper-jute.jar",
    "guava.jar",
    "slf4j-api.jar",
    "slf4j-nop.jar",
];

/// Debian's python3-kazoo is installed for this interpreter, not for a pyenv one on PATH.
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerLibrary {
    Curator,
    Kazoo,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    Mutex,
    Read,
    Write,
    /// Curator only (InterProcessSemaphoreV2).
    Semaphore(u32),
}

impl PeerKind {
    fn arg(self) -> String {
        match self {
            PeerKind::Mutex => "mutex".into(),
            PeerKind::Read => "read".into(),
            PeerKind::Write => "write".into(),
            PeerKind::Semaphore(permits) => format!("semaphore:{permits}"),
        }
    }
}

/// Class path for running the compiled Curator peer; compiles it once per test process.
fn curator_class_path() -> Result<String, KitError> {
    static COMPILED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let compiled = COMPILED.get_or_init(|| compile_curator_peer().map_err(|err| err.to_string()));
    let dir = compiled.clone().map_err(KitError::Missing)?;
    Ok(format!(
        "{}:{}",
        dir.display(),
        java_class_path(&[CURATOR_JARS, NETTY_JARS].concat())?
    ))
}

fn compile_curator_peer() -> Result<PathBuf, KitError> {
    let out = std::env::temp_dir().join(format!("lockkeeper-curator-peer-{}", std::process::id()));
    std::fs::create_dir_all(&out)?;
    let output = Command::new("javac")
        .args(["-nowarn", "-d"])
        .arg(&out)
        .args([
            "-cp",
            &java_class_path(&[CURATOR_JARS, NETTY_JARS].concat())?,
        ])
        .arg(Path::new(PEERS_DIR).join("LockPeer.java"))
        .output()
        .map_err(|err| KitError::Missing(format!("javac ({err})")))?;
    if !output.status.success() {
        return Err(KitError::Missing(format!(
            "compiling LockPeer.java failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(out)
}

/// Which peer to run, against which ZooKeeper and lock path, and under what name.
#[derive(Clone, Debug)]
pub struct PeerSpec {
    pub library: PeerLibrary,
    pub connect: String,
    pub path: String,
    pub kind: PeerKind,
    pub name: String,
}

fn peer_command(spec: &PeerSpec) -> Result<Command, KitError> {
    let mut command = match spec.library {
        PeerLibrary::Curator => {
            let mut command = Command::new("java");
            command.args([
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-cp",
                &curator_class_path()?,
                "LockPeer",
            ]);
            command
        }
        PeerLibrary::Kazoo => {
            if matches!(spec.kind, PeerKind::Semaphore(_)) {
                return Err(KitError::Missing("the kazoo peer has no semaphore".into()));
            }
            let mut command = Command::new(SYSTEM_PYTHON);
            command.arg(Path::new(PEERS_DIR).join("kazoo_peer.py"));
            command
        }
    };
    command.args([&spec.connect, &spec.path, &spec.kind.arg(), &spec.name]);
    Ok(command)
}

/// Runs a peer that takes the lock `count` times for `hold` each, logging its holds to `log`
/// (see [`crate::HoldLog`]). Wait on the returned child.
pub fn spawn_loop(
    spec: &PeerSpec,
    count: u32,
    hold: Duration,
    log: &Path,
) -> Result<Child, KitError> {
    let mut command = peer_command(spec)?;
    command
        .args(["loop", &count.to_string(), &hold.as_millis().to_string()])
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    Ok(command.spawn()?)
}

/// A peer the test drives step by step: acquire, then release, like a person at a prompt.
pub struct PeerProcess {
    name: String,
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl PeerProcess {
    pub fn spawn(spec: &PeerSpec) -> Result<Self, KitError> {
        let mut command = peer_command(spec)?;
        command
            .arg("hold")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(PeerProcess {
            name: spec.name.clone(),
            child,
            stdin,
            lines,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Asks the peer to take the lock; it answers once it holds it (see [`Self::wait_acquired`]).
    pub fn start_acquire(&mut self) -> Result<(), KitError> {
        self.send("acquire")
    }

    /// Waits up to `timeout` for the peer to hold the lock; `Ok(false)` if it does not yet.
    pub fn wait_acquired(&mut self, timeout: Duration) -> Result<bool, KitError> {
        self.expect("acquired", timeout)
    }

    pub fn release(&mut self, timeout: Duration) -> Result<(), KitError> {
        self.send("release")?;
        if self.expect("released", timeout)? {
            Ok(())
        } else {
            Err(self.error(format!("did not release within {timeout:?}")))
        }
    }

    fn send(&mut self, command: &str) -> Result<(), KitError> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        Ok(())
    }

    fn expect(&mut self, answer: &str, timeout: Duration) -> Result<bool, KitError> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) if line == answer => Ok(true),
            Ok(line) => Err(self.error(format!("answered {line:?}, expected {answer:?}"))),
            Err(RecvTimeoutError::Timeout) => Ok(false),
            Err(RecvTimeoutError::Disconnected) => Err(self.error("exited".into())),
        }
    }

    fn error(&self, message: String) -> KitError {
        KitError::Peer {
            name: self.name.clone(),
            message,
        }
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
