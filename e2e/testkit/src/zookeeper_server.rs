//! A real ZooKeeper server (Debian's `zookeeper` package) started for one test on a free
//! loopback port with its own temporary data directory, and stopped when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::KitError;

/// Jars of Debian's `zookeeper` package that the standalone server needs. A short class path
/// starts the JVM much faster than `/usr/share/java/*`.
const SERVER_JARS: &[&str] = &[
    "zookeeper.jar",
    "zookeeper-jute.jar",
    "slf4j-api.jar",
    "slf4j-simple.jar",
    "commons-cli.jar",
    "commons-io.jar",
    "metrics-core.jar",
    "snappy-java.jar",
];

/// Netty jars every ZooKeeper 3.8 process needs, server or client.
pub const NETTY_JARS: &[&str] = &[
    "netty-handler.jar",
    "netty-common.jar",
    "netty-buffer.jar",
    "netty-transport.jar",
    "netty-codec.jar",
    "netty-resolver.jar",
    "netty-transport-native-epoll.jar",
    "netty-transport-native-unix-common.jar",
];

pub const JAVA_LIB_DIR: &str = "/usr/share/java";
const START_DEADLINE: Duration = Duration::from_secs(60);

/// Class path made of the named jars under [`JAVA_LIB_DIR`]; fails naming the first one missing.
pub fn java_class_path(jars: &[&str]) -> Result<String, KitError> {
    let mut parts = Vec::with_capacity(jars.len());
    for jar in jars {
        let path = Path::new(JAVA_LIB_DIR).join(jar);
        if !path.exists() {
            return Err(KitError::Missing(format!(
                "{} (install Debian's zookeeper and libcurator-recipes-java: `make deps`)",
                path.display()
            )));
        }
        parts.push(path.display().to_string());
    }
    Ok(parts.join(":"))
}

/// Settings of a test server. Short ticks let tests use short session timeouts.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub tick: Duration,
    pub min_session_timeout: Duration,
    pub max_session_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            tick: Duration::from_millis(100),
            min_session_timeout: Duration::from_millis(200),
            max_session_timeout: Duration::from_secs(60),
        }
    }
}

/// One standalone ZooKeeper server process.
pub struct ZooKeeperServer {
    dir: tempfile::TempDir,
    port: u16,
    options: ServerOptions,
    process: Option<Child>,
}

impl ZooKeeperServer {
    /// Starts a server on a free loopback port and waits until it answers `ruok`.
    pub fn start() -> Result<Self, KitError> {
        Self::start_with(ServerOptions::default())
    }

    pub fn start_with(options: ServerOptions) -> Result<Self, KitError> {
        let dir = tempfile::Builder::new()
            .prefix("lockkeeper-zk-")
            .tempdir()?;
        let port = free_port()?;
        let mut server = ZooKeeperServer {
            dir,
            port,
            options,
            process: None,
        };
        server.write_config()?;
        server.launch()?;
        Ok(server)
    }

    /// `127.0.0.1:PORT`, the connect string for clients.
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Path of the server's log file (stdout and stderr of the JVM).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Stops the process (SIGKILL: nothing is flushed beyond what ZooKeeper already synced).
    /// The data directory is kept, so [`ZooKeeperServer::restart`] brings back the same state.
    pub fn stop(&mut self) -> Result<(), KitError> {
        if let Some(mut child) = self.process.take() {
            child.kill().ok();
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the server again on the same port with the same data.
    pub fn restart(&mut self) -> Result<(), KitError> {
        self.stop()?;
        self.launch()
    }

    /// Sends a four-letter command (`ruok`, `wchs`, `wchc`, `cons`, `mntr`, …) and returns the answer.
    pub fn four_letter(&self, command: &str) -> Result<String, KitError> {
        four_letter(SocketAddr::from(([127, 0, 0, 1], self.port)), command)
    }

    fn write_config(&self) -> Result<(), KitError> {
        write_config(self.dir.path(), self.port, &self.options)
    }

    fn launch(&mut self) -> Result<(), KitError> {
        let mut child = spawn_server(server_command(self.dir.path())?, &self.log_path())?;
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let ready = || four_letter(address, "ruok").is_ok_and(|answer| answer == "imok");
        let started = wait_until_ready(&mut child, &self.log_path(), ready);
        self.process = Some(child);
        started
    }
}

/// Starts a server JVM with its output appended to `log`.
pub(crate) fn spawn_server(mut command: Command, log: &Path) -> Result<Child, KitError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .map_err(|err| KitError::Missing(format!("java ({err}); is a JDK installed?")))
}

/// Waits until `ready` says the server serves; fails, naming its log, if it exits first or
/// takes longer than a minute.
pub(crate) fn wait_until_ready(
    child: &mut Child,
    log: &Path,
    ready: impl Fn() -> bool,
) -> Result<(), KitError> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if ready() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            return Err(KitError::ServerExited(
                status.to_string(),
                log.to_path_buf(),
            ));
        }
        if Instant::now() > deadline {
            return Err(KitError::StartTimeout(START_DEADLINE, log.to_path_buf()));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

impl Drop for ZooKeeperServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Writes `dir/zoo.cfg` for a standalone server on 127.0.0.1:`port` keeping its data in `dir/data`.
pub fn write_config(dir: &Path, port: u16, options: &ServerOptions) -> Result<(), KitError> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let config = format!(
        "tickTime={}\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
         admin.enableServer=false\n4lw.commands.whitelist=*\nminSessionTimeout={}\n\
         maxSessionTimeout={}\nmaxClientCnxns=0\n",
        options.tick.as_millis(),
        data.display(),
        options.min_session_timeout.as_millis(),
        options.max_session_timeout.as_millis(),
    );
    std::fs::write(dir.join("zoo.cfg"), config)?;
    Ok(())
}

/// The JVM command that runs a standalone server from `dir/zoo.cfg`.
pub fn server_command(dir: &Path) -> Result<Command, KitError> {
    java_server(dir, "org.apache.zookeeper.server.ZooKeeperServerMain")
}

/// The JVM command that runs `main_class` of ZooKeeper's server on `dir/zoo.cfg`.
pub(crate) fn java_server(dir: &Path, main_class: &str) -> Result<Command, KitError> {
    let mut command = Command::new("java");
    command
        .args([
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-cp",
            &java_class_path(&[SERVER_JARS, NETTY_JARS].concat())?,
        ])
        .arg(main_class)
        .arg(dir.join("zoo.cfg"));
    Ok(command)
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16, KitError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn four_letter(address: SocketAddr, command: &str) -> Result<String, KitError> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(command.as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}
