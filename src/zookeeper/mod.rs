//! The ZooKeeper lock engine: queues contenders as ephemeral-sequential znodes named the way
//! Curator names them, decides grants with [`crate::lock_rules`], and reports every change,
//! loss included. Nothing here knows about Kubernetes.

mod contender;
mod engine;
mod error;
mod lock_watch;
mod session;
pub mod znode_name;

pub use contender::{Contender, ContenderEvent, ContenderState, FencingToken};
pub use engine::{LockEngine, LockQueue, LockSpec, QueueEntry, SessionStatus};
pub use error::{EngineError, LossReason};
pub use session::{Credentials, EngineConfig};
pub use zookeeper_client::SessionInfo;
