//! Test infrastructure for lockkeeper: a real Kubernetes control plane, a real ZooKeeper server per test, Curator and kazoo
//! peer processes, and the hold-interval checks that prove mutual exclusion across them.
//! Never part of a production binary.

pub mod api_fault_proxy;
pub mod control_plane;
pub mod cutting_proxy;
pub mod fenced_resource;
pub mod hold_log;
pub mod peer;
pub mod zookeeper_ensemble;
pub mod zookeeper_server;

pub use api_fault_proxy::ApiFaultProxy;
pub use control_plane::{ControlPlane, ControlPlaneOptions, KubernetesVersion};
pub use cutting_proxy::CuttingProxy;
pub use fenced_resource::{FencedResource, ResourceClient, monotonic_nanos};
pub use hold_log::{HoldInterval, HoldLog};
pub use peer::{PeerKind, PeerLibrary, PeerProcess, PeerSpec};
pub use zookeeper_ensemble::ZooKeeperEnsemble;
pub use zookeeper_server::{ServerOptions, ZooKeeperServer};

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum KitError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("missing: {0}")]
    Missing(String),
    #[error("ZooKeeper exited during start ({0}); see {1}")]
    ServerExited(String, PathBuf),
    #[error("ZooKeeper did not start serving within {0:?}; see {1}")]
    StartTimeout(Duration, PathBuf),
    #[error("{0}; see {1}")]
    ControlPlane(String, PathBuf),
    #[error("peer {name}: {message}")]
    Peer { name: String, message: String },
    #[error("hold log: {0}")]
    HoldLog(String),
}
