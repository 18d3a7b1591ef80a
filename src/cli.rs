//! The `lockkeeper` command line.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::claim_client::ClaimError;
use crate::client::lock_set::{self, LockArg};
use crate::lock_paths::AllowedPrefix;
use crate::lock_rules::{Verdict, WaitTarget};
use crate::resources::{ClaimMode, LockType};
use crate::zookeeper::{EngineConfig, EngineError, LockEngine, LockQueue, LockSpec};

#[derive(Debug, Parser)]
#[command(
    name = "lockkeeper",
    version,
    about = "Distributed locks for Kubernetes workloads, kept in ZooKeeper"
)]
pub struct Cli {
    #[command(flatten)]
    pub logging: LoggingArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct LoggingArgs {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "LOCKKEEPER_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ZooKeeperArgs {
    /// ZooKeeper ensemble, `HOST:PORT[,HOST:PORT…]`.
    #[arg(long = "zookeeper", env = "LOCKKEEPER_ZOOKEEPER")]
    pub connect: String,
    /// Session timeout asked of ZooKeeper.
    #[arg(
        long,
        default_value = "10s",
        value_parser = humantime::parse_duration,
        env = "LOCKKEEPER_SESSION_TIMEOUT"
    )]
    pub session_timeout: Duration,
}

impl ZooKeeperArgs {
    /// The lock engine's settings these arguments give.
    pub fn engine_config(&self) -> EngineConfig {
        let mut config = EngineConfig::new(&self.connect);
        config.session_timeout = self.session_timeout;
        config
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show who holds a ZooKeeper lock path and who waits, whichever client queued them
    /// (lockkeeper, Curator, kazoo).
    Queue(QueueArgs),
    /// Print the CustomResourceDefinitions (what `crds/` holds), to `kubectl apply -f -`.
    Crd(CrdArgs),
    /// Run the operator: reconcile DistributedLocks and LockClaims against ZooKeeper.
    Controller(ControllerArgs),
    /// Init container: wait until this pod's claim on a lock is granted, write the fencing
    /// token, exit 0. The lock is held until the pod ends.
    Gate(GateArgs),
    /// Hold a lock while a command runs (the lock is released when it exits).
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct GateArgs {
    /// A DistributedLock in the pod's namespace, as NAME or NAME:MODE; repeat it for several
    /// locks: the pod starts once all are granted.
    #[arg(long, required = true)]
    pub lock: Vec<LockArg>,
    /// The mode of every --lock that names none.
    #[arg(long, value_enum, ignore_case = true, default_value_t = ClaimMode::Exclusive)]
    pub mode: ClaimMode,
    /// Give up after waiting this long for all the locks (exit 75); the claims expire too
    /// and those granted are released. Default: wait.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Write the fencing token here (e.g. on an emptyDir shared with the main containers);
    /// with several locks, a `LOCK=TOKEN` line for each.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A DistributedLock, as NAME or NAME:MODE; repeat it for several locks: the command
    /// runs once all are granted.
    #[arg(long, required = true)]
    pub lock: Vec<LockArg>,
    /// The locks' namespace (default: the kubeconfig context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The mode of every --lock that names none.
    #[arg(long, value_enum, ignore_case = true, default_value_t = ClaimMode::Exclusive)]
    pub mode: ClaimMode,
    /// If this process dies without releasing, the lock is released this long after its
    /// last renewal.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// Give up after waiting this long (exit 75, the command does not run); 0s tries once.
    /// Exit 76 if the grant ends while the command runs (the command gets SIGTERM).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// The command and its arguments. Its environment has LOCKKEEPER_FENCING_TOKENS
    /// (LOCK=TOKEN,…) and LOCKKEEPER_FENCING_TOKEN_<LOCK> for each lock (the name in capitals,
    /// `-` and `.` as `_`), and LOCKKEEPER_FENCING_TOKEN when there is one lock.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub zookeeper: ZooKeeperArgs,
    /// Default lock paths are `<root>/<namespace>/<name>`.
    #[arg(long, default_value = "/lockkeeper", env = "LOCKKEEPER_ZOOKEEPER_ROOT")]
    pub zookeeper_root: String,
    /// Let the locks of NAMESPACE (`*`: of every namespace) use `spec.zookeeper.path`s at or
    /// under PREFIX (whole segments), besides their namespace's own `<root>/<namespace>/…`;
    /// repeatable (the environment variable takes a comma-separated list).
    #[arg(
        long = "allowed-lock-path",
        value_name = "NAMESPACE=PREFIX",
        env = "LOCKKEEPER_ALLOWED_LOCK_PATHS",
        value_delimiter = ','
    )]
    pub allowed_lock_paths: Vec<AllowedPrefix>,
    /// ZooKeeper digest user (with --zookeeper-password): the controller's nodes are then
    /// deletable only by this identity.
    #[arg(
        long,
        env = "LOCKKEEPER_ZOOKEEPER_USER",
        requires = "zookeeper_password"
    )]
    pub zookeeper_user: Option<String>,
    #[arg(long, env = "LOCKKEEPER_ZOOKEEPER_PASSWORD", hide_env_values = true)]
    pub zookeeper_password: Option<String>,
    /// Serves /metrics, /healthz and /readyz.
    #[arg(
        long,
        default_value = "127.0.0.1:8080",
        env = "LOCKKEEPER_METRICS_ADDR"
    )]
    pub metrics_addr: std::net::SocketAddr,
    /// Watch this namespace only (default: all namespaces).
    #[arg(long, env = "LOCKKEEPER_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// This replica's name in the leader election (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Reconciles running at the same time, per resource kind.
    #[arg(long, default_value_t = crate::controller::CONCURRENT_RECONCILES, value_parser = clap::value_parser!(u16).range(1..), env = "LOCKKEEPER_CONCURRENT_RECONCILES")]
    pub concurrent_reconciles: u16,
}

impl ControllerArgs {
    pub fn config(self) -> crate::controller::Config {
        let mut engine = self.zookeeper.engine_config();
        if let (Some(user), Some(password)) = (self.zookeeper_user, self.zookeeper_password) {
            engine.credentials = Some(crate::zookeeper::Credentials { user, password });
        }
        crate::controller::Config {
            engine,
            root: self.zookeeper_root,
            allowed_lock_paths: self.allowed_lock_paths,
            metrics_addr: self.metrics_addr,
            namespace: self.namespace,
            concurrent_reconciles: self.concurrent_reconciles,
            identity: self
                .identity
                .unwrap_or_else(|| format!("lockkeeper-{}", std::process::id())),
        }
    }
}

#[derive(Debug, Args)]
pub struct CrdArgs {
    /// Write one file per CRD into this directory instead of printing them.
    #[arg(long)]
    pub output_dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    #[command(flatten)]
    pub zookeeper: ZooKeeperArgs,
    /// The lock's ZooKeeper path, e.g. /lockkeeper/default/migrations.
    #[arg(long)]
    pub path: String,
    #[arg(long = "type", value_enum, default_value_t = LockType::Mutex)]
    pub kind: LockType,
    /// Semaphore permits.
    #[arg(long, required_if_eq("kind", "semaphore"))]
    pub permits: Option<u32>,
}

impl QueueArgs {
    fn lock(&self) -> Result<LockSpec, EngineError> {
        LockSpec::new(&self.path, self.kind.lock_kind(self.permits)?)
    }
}

pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.logging.log_format);
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Queue(args) => show_queue(args).await.map_err(Into::into),
        Command::Crd(args) => write_crds(args).map_err(Into::into),
        Command::Controller(args) => crate::controller::run(args.config())
            .await
            .map_err(Into::into),
        Command::Gate(args) => return exit(gate(args).await.map(|_| 0)),
        Command::Run(args) => return run_command(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lockkeeper: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `lockkeeper run` (and `kubectl lock run`): holds the locks while the command runs, and
/// exits with the command's code.
pub async fn run_command(args: RunArgs) -> ExitCode {
    exit(run(args).await)
}

fn exit(result: Result<u8, ClaimError>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("lockkeeper: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

async fn gate(args: GateArgs) -> Result<Vec<i64>, ClaimError> {
    let pod = crate::client::gate::PodIdentity::from_env()?;
    let client = kube::Client::try_default().await?;
    let request = crate::client::gate::GateRequest {
        locks: lock_set::wanted_locks(&args.lock, args.mode).map_err(ClaimError::Usage)?,
        timeout: args.timeout,
        token_file: args.token_file,
    };
    crate::client::gate::gate(client, pod, request).await
}

async fn run(args: RunArgs) -> Result<u8, ClaimError> {
    let locks = lock_set::wanted_locks(&args.lock, args.mode).map_err(ClaimError::Usage)?;
    lock_set::distinct_token_variables(&locks).map_err(ClaimError::Usage)?;
    let client = kube::Client::try_default().await?;
    let request = crate::client::run::RunRequest {
        locks,
        namespace: args
            .namespace
            .unwrap_or_else(|| client.default_namespace().to_string()),
        lease_duration: args.lease_duration,
        timeout: args.timeout,
        command: args.command,
        runs_in_pod: crate::client::run::runs_in_pod_from_env(),
    };
    crate::client::run::run(client, request).await
}

fn write_crds(args: CrdArgs) -> std::io::Result<()> {
    match args.output_dir {
        None => print!("{}", crate::resources::crds_yaml()),
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            for (file, yaml) in crate::resources::crd_documents() {
                std::fs::write(dir.join(file), yaml)?;
            }
        }
    }
    Ok(())
}

/// What is logged: `LOCKKEEPER_LOG` (an `EnvFilter` directive), else warnings (and only
/// errors of the ZooKeeper client, whose reconnects lockkeeper reports itself).
pub fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("LOCKKEEPER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,zookeeper_client=error"))
}

pub fn init_logging(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn show_queue(args: QueueArgs) -> Result<(), EngineError> {
    let lock = args.lock()?;
    let engine = LockEngine::connect(args.zookeeper.engine_config()).await?;
    let queue = engine.queue(&lock).await?;
    print!("{}", render_queue(&queue));
    engine.close().await;
    Ok(())
}

/// One line per contender: place, verdict, mode, fencing token or what it waits on, node.
pub fn render_queue(queue: &LockQueue) -> String {
    if queue.entries.is_empty() {
        return "no contenders\n".to_string();
    }
    let mut out = format!(
        "{:<4} {:<8} {:<10} {:<14} {}\n",
        "#", "STATE", "MODE", "TOKEN/WAITS", "NODE"
    );
    for (index, entry) in queue.entries.iter().enumerate() {
        let (state, detail) = match entry.verdict {
            Verdict::Holds => (
                "holds",
                entry
                    .fencing_token
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "-".into()),
            ),
            Verdict::Waits {
                target: WaitTarget::Node(on),
                ..
            } => ("waits", format!("on #{on}")),
            Verdict::Waits {
                target: WaitTarget::AnyHolder,
                ..
            } => ("waits", "any holder".to_string()),
        };
        out.push_str(&format!(
            "{index:<4} {state:<8} {:<10} {detail:<14} {}\n",
            entry.mode.to_string(),
            entry.node
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller(args: &[&str]) -> Result<ControllerArgs, clap::Error> {
        let mut all = vec!["lockkeeper", "controller", "--zookeeper", "zk:2181"];
        all.extend(args);
        match Cli::try_parse_from(all)?.command {
            Command::Controller(args) => Ok(args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn allowed_lock_paths_repeat_and_take_a_comma_separated_list() {
        let args = controller(&[
            "--allowed-lock-path",
            "team-a=/services/billing",
            "--allowed-lock-path",
            "*=/shared,team-b=/lockkeeper/team-a",
        ])
        .unwrap();
        let allowed: Vec<String> = args
            .config()
            .allowed_lock_paths
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            allowed,
            [
                "team-a=/services/billing",
                "*=/shared",
                "team-b=/lockkeeper/team-a"
            ]
        );
        assert!(controller(&[]).unwrap().allowed_lock_paths.is_empty());
        let refused = controller(&["--allowed-lock-path", "/services"]).unwrap_err();
        assert!(
            refused.to_string().contains("is not NAMESPACE=PREFIX"),
            "{refused}"
        );
    }
}
