//! A contender of this engine as its caller sees it: where it queues, its fencing token, and
//! its state as the lock's queue changes.

use std::fmt;
use std::time::Duration;

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use super::error::{EngineError, LossReason};
use crate::lock_rules::Mode;
use crate::zookeeper::znode_name::ContenderId;

/// The creation zxid (czxid) of a contender's znode. ZooKeeper's zxids only grow, across
/// sessions, restarts and re-created lock directories, so each exclusive grant of a lock
/// carries a larger token than the one before; a protected resource rejects any write
/// bearing a token smaller than the largest it has seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub i64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContenderState {
    /// The node exists; the queue has not been read since.
    Queued,
    /// `position` contenders are ahead; `waits_on` names the one node whose deletion wakes
    /// this contender (`None` for semaphores, which watch the lock's children).
    Waiting {
        position: usize,
        waits_on: Option<String>,
    },
    Granted {
        fencing_token: FencingToken,
    },
    /// Dequeued by its owner: the node is deleted.
    Released,
    /// Gone without a dequeue: a grant that ended this way must be treated as revoked.
    Lost(LossReason),
}

impl ContenderState {
    pub fn is_final(&self) -> bool {
        matches!(self, ContenderState::Released | ContenderState::Lost(_))
    }
}

/// A change of one contender's state, on the engine-wide stream ([`super::LockEngine::events`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContenderEvent {
    pub dir: String,
    pub id: ContenderId,
    pub state: ContenderState,
}

/// Where contender events go: nowhere until someone subscribes, so an engine whose events
/// nobody reads does not pile them up.
#[derive(Clone, Default)]
pub(crate) struct EventSink(Arc<Mutex<Option<mpsc::UnboundedSender<ContenderEvent>>>>);

impl EventSink {
    pub fn send(&self, event: ContenderEvent) {
        if let Some(sender) = self.0.lock().expect("event sink lock").as_ref() {
            let _ = sender.send(event);
        }
    }

    /// The one stream of events: the first call opens it, later calls get `None`.
    pub fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<ContenderEvent>> {
        let mut sender = self.0.lock().expect("event sink lock");
        if sender.is_some() {
            return None;
        }
        let (new_sender, receiver) = mpsc::unbounded_channel();
        *sender = Some(new_sender);
        Some(receiver)
    }
}

/// A queued contender. Dropping it does not dequeue it: call [`super::LockEngine::dequeue`].
#[derive(Debug)]
pub struct Contender {
    pub id: ContenderId,
    /// The znode directory it queues in.
    pub dir: String,
    /// Its znode's name in `dir`.
    pub node: String,
    pub mode: Mode,
    pub fencing_token: FencingToken,
    /// True when an existing node of this session was found and kept (a repeated enqueue,
    /// a resumed session, or a create whose answer was lost with the connection).
    pub adopted: bool,
    /// Nodes with this contender's id left by other sessions, deleted by this enqueue.
    pub replaced_stale: usize,
    pub(crate) state: watch::Receiver<ContenderState>,
}

impl Contender {
    pub fn path(&self) -> String {
        format!("{}/{}", self.dir, self.node)
    }

    pub fn state(&self) -> ContenderState {
        self.state.borrow().clone()
    }

    /// Waits for the next change of state and returns it; returns the current state at once
    /// when it is final.
    /// A receiver of this contender's states, for whoever follows it elsewhere.
    pub fn watch_state(&self) -> watch::Receiver<ContenderState> {
        self.state.clone()
    }

    pub async fn changed(&mut self) -> ContenderState {
        if !self.state().is_final() {
            let _ = self.state.changed().await;
        }
        self.state()
    }

    /// Waits up to `timeout` for the grant; the fencing token once granted.
    pub async fn wait_granted(&mut self, timeout: Duration) -> Result<FencingToken, EngineError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.state() {
                ContenderState::Granted { fencing_token } => return Ok(fencing_token),
                ContenderState::Lost(reason) => {
                    return Err(EngineError::Lost {
                        id: self.id.to_string(),
                        dir: self.dir.clone(),
                        reason,
                    });
                }
                ContenderState::Released => {
                    return Err(EngineError::NotQueued {
                        id: self.id.to_string(),
                        dir: self.dir.clone(),
                    });
                }
                ContenderState::Queued | ContenderState::Waiting { .. } => {}
            }
            match tokio::time::timeout_at(deadline, self.state.changed()).await {
                Err(_) => {
                    return Err(EngineError::WaitTimeout {
                        id: self.id.to_string(),
                        dir: self.dir.clone(),
                        waited: timeout,
                    });
                }
                Ok(Err(_)) if !self.state().is_final() => return Err(EngineError::Closed),
                Ok(_) => {}
            }
        }
    }
}
