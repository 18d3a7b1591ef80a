//! Errors of the ZooKeeper lock engine, and why a contender can lose its place.

use std::fmt;
use std::time::Duration;

use crate::lock_rules::{LockKind, RuleError};
use crate::zookeeper::znode_name::NameError;

/// Why a queued or granted contender is gone from ZooKeeper without having been dequeued.
/// Whoever holds a grant that was lost must stop using the protected resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LossReason {
    /// The engine's session expired: ZooKeeper deleted every node of that session.
    SessionExpired,
    /// The engine lost its connection for longer than the session timeout, so ZooKeeper
    /// has expired, or is about to expire, the session; the engine gave it up.
    SessionPresumedExpired(Duration),
    /// Someone else deleted the contender's node.
    NodeDeleted,
    /// The lock's directory was deleted with the contender in it.
    LockDeleted,
    /// ZooKeeper refused an operation the contender needed.
    Backend(String),
    /// The engine was closed or dropped; nobody follows this contender any more.
    EngineClosed,
}

impl LossReason {
    /// Whether the engine's whole session went (every contender of it is lost at once),
    /// rather than this one contender.
    pub fn ends_session(&self) -> bool {
        matches!(
            self,
            LossReason::SessionExpired
                | LossReason::SessionPresumedExpired(_)
                | LossReason::EngineClosed
        )
    }
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LossReason::SessionExpired => f.write_str("the ZooKeeper session expired"),
            LossReason::SessionPresumedExpired(after) => {
                write!(
                    f,
                    "the connection to ZooKeeper was lost for {after:?}, the session timeout, so the session was given up"
                )
            }
            LossReason::NodeDeleted => f.write_str("its znode was deleted by another client"),
            LossReason::LockDeleted => f.write_str("the lock's znode was deleted"),
            LossReason::Backend(message) => write!(f, "ZooKeeper failed: {message}"),
            LossReason::EngineClosed => f.write_str("the lock engine was closed"),
        }
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error(
        "ZooKeeper at {connect} did not open a session within {waited:?}: is it running and reachable?"
    )]
    Unreachable { connect: String, waited: Duration },
    #[error("invalid ZooKeeper connect string {connect:?}: {message}")]
    BadConnectString { connect: String, message: String },
    #[error("the connection to ZooKeeper was lost and not restored within {0:?}")]
    Disconnected(Duration),
    #[error("the ZooKeeper session expired: every grant it held is lost")]
    SessionExpired,
    #[error("ZooKeeper rejected the engine's credentials")]
    AuthFailed,
    #[error("the lock engine is closed")]
    Closed,
    #[error("{dir} is already used as a {existing} lock; it cannot also be a {requested} lock")]
    KindMismatch {
        dir: String,
        existing: LockKind,
        requested: LockKind,
    },
    #[error(
        "contender {id} is already queued on {dir} as {mode}; dequeue it first to change its mode"
    )]
    AlreadyQueued {
        id: String,
        dir: String,
        mode: crate::lock_rules::Mode,
    },
    #[error("the ZooKeeper session was lost and a new one is not open yet; try again")]
    Reconnecting,
    #[error("contender {id} is not queued on {dir}")]
    NotQueued { id: String, dir: String },
    #[error("contender {id} lost its place on {dir}: {reason}")]
    Lost {
        id: String,
        dir: String,
        reason: LossReason,
    },
    #[error("contender {id} was not granted {dir} within {waited:?}")]
    WaitTimeout {
        id: String,
        dir: String,
        waited: Duration,
    },
    #[error("ZooKeeper {operation} of {path} failed: {source}")]
    ZooKeeper {
        operation: &'static str,
        path: String,
        #[source]
        source: zookeeper_client::Error,
    },
}

impl EngineError {
    /// Errors that pass once ZooKeeper is back or a new session is open: worth retrying.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            EngineError::Unreachable { .. }
                | EngineError::Disconnected(_)
                | EngineError::SessionExpired
                | EngineError::Reconnecting
                | EngineError::ZooKeeper { .. }
        )
    }

    /// Maps a ZooKeeper error of one operation, keeping the session-level ones distinct.
    pub(crate) fn zookeeper(
        operation: &'static str,
        path: &str,
        source: zookeeper_client::Error,
    ) -> Self {
        match source {
            zookeeper_client::Error::SessionExpired | zookeeper_client::Error::ClientClosed => {
                EngineError::SessionExpired
            }
            zookeeper_client::Error::AuthFailed => EngineError::AuthFailed,
            source => EngineError::ZooKeeper {
                operation,
                path: path.to_string(),
                source,
            },
        }
    }
}
