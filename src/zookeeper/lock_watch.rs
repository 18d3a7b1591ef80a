//! One task per lock directory holding contenders of this engine. It creates and deletes
//! their nodes, reads the queue, applies [`crate::lock_rules`], publishes each contender's
//! state, and keeps exactly the watches the rules ask for: a waiter watches the one node it
//! waits on, a holder watches its own node (so that a deletion by someone else is noticed),
//! and a semaphore with waiters watches its children. Several of this engine's waiters that
//! wake on one change share a single read of the queue.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use zookeeper_client::{Acls, Client, CreateMode, SessionState};

use super::contender::{Contender, ContenderEvent, ContenderState, EventSink, FencingToken};
use super::error::{EngineError, LossReason};
use super::session::{
    AclPolicy, RetryError, is_connection_loss, retry_on_connection_loss, wait_connected,
};
use crate::lock_rules::{LockKind, Mode, Verdict, WaitTarget, judge};
use crate::zookeeper::znode_name::{ContenderId, ContenderNode, contender_prefix, queue_order};

/// Lock watch tasks by contender directory.
pub(crate) type Registry = Arc<Mutex<HashMap<String, LockHandle>>>;

pub(crate) struct LockHandle {
    /// Tells this task's registration from a successor's for the same directory.
    pub serial: u64,
    pub kind: LockKind,
    pub commands: mpsc::UnboundedSender<Command>,
    pub task: tokio::task::JoinHandle<()>,
}

pub(crate) enum Command {
    Enqueue {
        id: ContenderId,
        mode: Mode,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Contender, EngineError>>,
    },
    Dequeue {
        id: ContenderId,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    SessionLost(LossReason),
}

/// Most times a create may find its directory deleted under it (ZooKeeper removes empty
/// container nodes) before the enqueue gives up.
const MAX_DIRECTORY_RACES: usize = 5;

struct OwnContender {
    node: String,
    mode: Mode,
    token: FencingToken,
    state: watch::Sender<ContenderState>,
}

pub(crate) struct LockWatch {
    serial: u64,
    client: Client,
    dir: String,
    kind: LockKind,
    acls: Arc<AclPolicy>,
    /// How long an operation waits for a lost connection to come back: the session timeout.
    patience: Duration,
    contenders: HashMap<ContenderId, OwnContender>,
    last_children: Vec<String>,
    events: EventSink,
    registry: Registry,
}

/// Why the queue could not be read.
enum Failure {
    Disconnected,
    SessionEnded,
    LockDeleted,
    Other(String),
}

impl LockWatch {
    pub(crate) fn new(
        serial: u64,
        client: Client,
        dir: String,
        kind: LockKind,
        acls: Arc<AclPolicy>,
        events: EventSink,
        registry: Registry,
    ) -> Self {
        let patience = client.session_timeout();
        LockWatch {
            serial,
            client,
            dir,
            kind,
            acls,
            patience,
            contenders: HashMap::new(),
            last_children: Vec::new(),
            events,
            registry,
        }
    }

    pub(crate) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut watches: FuturesUnordered<BoxFuture<'static, String>> = FuturesUnordered::new();
        let mut armed: HashSet<String> = HashSet::new();
        let mut session = self.client.state_watcher();
        let mut replies: Vec<(oneshot::Sender<Result<Contender, EngineError>>, Contender)> =
            Vec::new();
        let mut dirty = false;
        let mut stalled = false;
        loop {
            while dirty {
                dirty = false;
                stalled = false;
                match self.evaluate().await {
                    Ok(targets) => {
                        for target in targets {
                            if armed.contains(&target) {
                                continue;
                            }
                            match self.arm(&target).await {
                                Ok(Some(watch)) => {
                                    armed.insert(target);
                                    watches.push(watch);
                                }
                                Ok(None) => dirty = true,
                                // The rest waits until the queue can be read again.
                                Err(failure) => {
                                    if self.fail(failure, &mut stalled) {
                                        return;
                                    }
                                    break;
                                }
                            }
                        }
                    }
                    Err(failure) => {
                        if self.fail(failure, &mut stalled) {
                            return;
                        }
                    }
                }
            }
            for (reply, contender) in replies.drain(..) {
                let _ = reply.send(Ok(contender));
            }
            if self.contenders.is_empty() && self.retire(&commands) {
                return;
            }
            tokio::select! {
                command = commands.recv() => match command {
                    None => {
                        self.lose_all(LossReason::EngineClosed);
                        return;
                    }
                    Some(command) => {
                        if self.take_commands(command, &mut commands, &mut replies).await {
                            return;
                        }
                        dirty = true;
                    }
                },
                Some(target) = watches.next() => {
                    armed.remove(&target);
                    dirty = true;
                }
                state = session.changed(), if stalled => {
                    if matches!(state, SessionState::SyncConnected | SessionState::ConnectedReadOnly | SessionState::Expired | SessionState::Closed) {
                        dirty = true;
                    }
                }
            }
        }
    }

    /// Carries out `first` and every command already waiting behind it, in order, before
    /// the queue is read again: a burst (a new term queueing a lock's claims again) costs one
    /// read of the queue, and its enqueues share one listing. True when the task must end.
    async fn take_commands(
        &mut self,
        first: Command,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        replies: &mut Vec<(oneshot::Sender<Result<Contender, EngineError>>, Contender)>,
    ) -> bool {
        let mut listing = None;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Enqueue {
                    id,
                    mode,
                    data,
                    reply,
                } => match self.enqueue(id, mode, &data, &mut listing).await {
                    // Answered once the queue has been read, so the caller sees a verdict.
                    Ok(contender) => replies.push((reply, contender)),
                    Err(err) => {
                        let _ = reply.send(Err(err));
                    }
                },
                Command::Dequeue { id, reply } => {
                    let _ = reply.send(self.dequeue(&id).await);
                }
                Command::SessionLost(reason) => {
                    self.lose_all(reason);
                    return true;
                }
            }
            next = commands.try_recv().ok();
        }
        false
    }

    /// Handles a failed read; true when the task must end (its session is over).
    fn fail(&mut self, failure: Failure, stalled: &mut bool) -> bool {
        match failure {
            // Keep every state: the session may still be alive. Look again once reconnected;
            // the engine gives the session up if it stays away for the session timeout.
            Failure::Disconnected => *stalled = true,
            Failure::SessionEnded => {
                self.lose_all(LossReason::SessionExpired);
                return true;
            }
            Failure::LockDeleted => self.lose_all(LossReason::LockDeleted),
            Failure::Other(message) => {
                tracing::warn!(dir = %self.dir, %message, "cannot read the lock's queue; its contenders are lost");
                for tracked in self.contenders.values() {
                    let client = self.client.clone();
                    let path = format!("{}/{}", self.dir, tracked.node);
                    tokio::spawn(async move { client.delete(&path, None).await });
                }
                self.lose_all(LossReason::Backend(message));
            }
        }
        false
    }

    /// Leaves the registry when nothing more is queued here. Senders hold the registry lock
    /// while sending, so no command can slip in between the check and the removal.
    fn retire(&self, commands: &mpsc::UnboundedReceiver<Command>) -> bool {
        let mut registry = self.registry.lock().expect("registry lock");
        if !commands.is_empty() {
            return false;
        }
        if registry
            .get(&self.dir)
            .is_some_and(|handle| handle.serial == self.serial)
        {
            registry.remove(&self.dir);
        }
        true
    }

    fn path_of(&self, node: &str) -> String {
        format!("{}/{node}", self.dir)
    }

    /// Reads the queue, publishes every state that changed, and returns what to watch.
    async fn evaluate(&mut self) -> Result<BTreeSet<String>, Failure> {
        let children = self
            .list()
            .await
            .map_err(|err| self.classify(err))?
            .ok_or(Failure::LockDeleted)?;
        let queue = queue_order(&children);
        self.last_children = children;
        let modes: Vec<Mode> = queue.iter().map(|node| node.mode).collect();
        let verdicts = judge(self.kind, &modes);
        let index_of: HashMap<&str, usize> = queue
            .iter()
            .enumerate()
            .map(|(i, node)| (node.name.as_str(), i))
            .collect();
        // Contenders whose nodes went on their own are told first: a grant that moves on
        // because a node was deleted by someone else is reported after that loss, so the
        // controller can fence the lock before it tells the next holder.
        let vanished: Vec<ContenderId> = self
            .contenders
            .iter()
            .filter(|(_, tracked)| !index_of.contains_key(tracked.node.as_str()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in vanished {
            if let Some(tracked) = self.contenders.remove(&id) {
                self.publish(&id, &tracked, ContenderState::Lost(LossReason::NodeDeleted));
            }
        }
        let mut targets = BTreeSet::new();
        for (id, tracked) in &self.contenders {
            let Some(&index) = index_of.get(tracked.node.as_str()) else {
                continue;
            };
            let state = match verdicts[index] {
                Verdict::Holds => {
                    targets.insert(self.path_of(&tracked.node));
                    ContenderState::Granted {
                        fencing_token: tracked.token,
                    }
                }
                Verdict::Waits {
                    position,
                    target: WaitTarget::Node(on),
                } => {
                    targets.insert(self.path_of(&queue[on].name));
                    ContenderState::Waiting {
                        position,
                        waits_on: Some(queue[on].name.clone()),
                    }
                }
                Verdict::Waits {
                    position,
                    target: WaitTarget::AnyHolder,
                } => {
                    targets.insert(self.dir.clone());
                    ContenderState::Waiting {
                        position,
                        waits_on: None,
                    }
                }
            };
            self.publish(id, tracked, state);
        }
        Ok(targets)
    }

    /// Sets a watch on `target` (a node, or the directory's children); `None` when the node is
    /// already gone or the children already changed, so the queue must be read again.
    async fn arm(&self, target: &str) -> Result<Option<BoxFuture<'static, String>>, Failure> {
        let owned = target.to_string();
        if target == self.dir {
            let (children, _, watcher) = self
                .retry(|| self.client.get_and_watch_children(target))
                .await
                .map_err(|err| self.classify(err))?;
            if sorted(children) != sorted(self.last_children.clone()) {
                return Ok(None);
            }
            return Ok(Some(Box::pin(async move {
                watcher.changed().await;
                owned
            })));
        }
        match self
            .retry(|| self.client.check_and_watch_stat(target))
            .await
            .map_err(|err| self.classify(err))?
        {
            (Some(_), watcher) => Ok(Some(Box::pin(async move {
                watcher.changed().await;
                owned
            }))),
            (None, _) => Ok(None),
        }
    }

    /// The directory's children, or `None` when the directory does not exist.
    async fn list(&self) -> Result<Option<Vec<String>>, RetryError> {
        match self.retry(|| self.client.list_children(&self.dir)).await {
            Ok(children) => Ok(Some(children)),
            Err(RetryError::ZooKeeper(zookeeper_client::Error::NoNode)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn retry<T, F, Fut>(&self, operation: F) -> Result<T, RetryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, zookeeper_client::Error>>,
    {
        retry_on_connection_loss(&self.client, self.patience, operation).await
    }

    fn classify(&self, err: RetryError) -> Failure {
        match err {
            RetryError::Disconnected => Failure::Disconnected,
            RetryError::ZooKeeper(
                zookeeper_client::Error::SessionExpired | zookeeper_client::Error::ClientClosed,
            ) => Failure::SessionEnded,
            RetryError::ZooKeeper(zookeeper_client::Error::NoNode) => Failure::LockDeleted,
            RetryError::ZooKeeper(err) => Failure::Other(err.to_string()),
        }
    }

    fn publish(&self, id: &ContenderId, tracked: &OwnContender, state: ContenderState) {
        if *tracked.state.borrow() == state {
            return;
        }
        tracing::debug!(dir = %self.dir, %id, ?state, "contender state");
        tracked.state.send_replace(state.clone());
        self.events.send(ContenderEvent {
            dir: self.dir.clone(),
            id: id.clone(),
            state,
        });
    }

    fn lose_all(&mut self, reason: LossReason) {
        for (id, tracked) in std::mem::take(&mut self.contenders) {
            self.publish(&id, &tracked, ContenderState::Lost(reason.clone()));
        }
    }

    fn handle(&self, id: &ContenderId, adopted: bool, replaced_stale: usize) -> Contender {
        let tracked = &self.contenders[id];
        Contender {
            id: id.clone(),
            dir: self.dir.clone(),
            node: tracked.node.clone(),
            mode: tracked.mode,
            fencing_token: tracked.token,
            adopted,
            replaced_stale,
            state: tracked.state.subscribe(),
        }
    }

    fn track(&mut self, id: &ContenderId, node: String, mode: Mode, czxid: i64) {
        let (state, _) = watch::channel(ContenderState::Queued);
        self.contenders.insert(
            id.clone(),
            OwnContender {
                node,
                mode,
                token: FencingToken(czxid),
                state,
            },
        );
    }

    /// Creates the contender's node, or adopts the one this session already has. `listing`
    /// is the queue as read earlier in the same burst of commands, if any: it still tells
    /// this contender's own nodes (only this contender's owner makes nodes with its id), and
    /// it is left for the next enqueue of the burst.
    async fn enqueue(
        &mut self,
        id: ContenderId,
        mode: Mode,
        data: &[u8],
        listing: &mut Option<Vec<String>>,
    ) -> Result<Contender, EngineError> {
        if let Some(tracked) = self.contenders.get(&id) {
            if tracked.mode != mode {
                return Err(EngineError::AlreadyQueued {
                    id: id.to_string(),
                    dir: self.dir.clone(),
                    mode: tracked.mode,
                });
            }
            return Ok(self.handle(&id, true, 0));
        }
        let prefix = format!("{}/{}", self.dir, contender_prefix(self.kind, mode, &id));
        let deadline = Instant::now() + self.patience;
        let mut replaced_stale = 0;
        let mut races = 0;
        loop {
            let children = match listing.take() {
                Some(children) => children,
                None => match self
                    .list()
                    .await
                    .map_err(|err| err.into_engine_error("list", &self.dir, self.patience))?
                {
                    Some(children) => children,
                    None => {
                        self.create_directory().await?;
                        Vec::new()
                    }
                },
            };
            let (adopted, replaced) = self.sort_out_own_nodes(&id, mode, &children).await?;
            replaced_stale += replaced;
            if let Some((node, czxid)) = adopted {
                *listing = Some(children);
                self.track(&id, node, mode, czxid);
                return Ok(self.handle(&id, true, replaced_stale));
            }
            let options =
                CreateMode::EphemeralSequential.with_acls(Acls::new(&self.acls.contender));
            match self.client.create(&prefix, data, &options).await {
                Ok((stat, sequence)) => {
                    *listing = Some(children);
                    let node = format!("{}{sequence}", &prefix[self.dir.len() + 1..]);
                    self.track(&id, node, mode, stat.czxid);
                    return Ok(self.handle(&id, false, replaced_stale));
                }
                // The create may or may not have happened: the next listing tells.
                Err(err) if is_connection_loss(&err) => {
                    wait_connected(&self.client, deadline)
                        .await
                        .map_err(|err| err.into_engine_error("create", &prefix, self.patience))?;
                }
                Err(zookeeper_client::Error::NoNode) if races < MAX_DIRECTORY_RACES => races += 1,
                Err(err) => return Err(EngineError::zookeeper("create", &prefix, err)),
            }
        }
    }

    /// Among `children`, keeps this session's node for `id` (if any) and deletes nodes with
    /// the same id left by other sessions, or queued in another mode.
    async fn sort_out_own_nodes(
        &self,
        id: &ContenderId,
        mode: Mode,
        children: &[String],
    ) -> Result<(Option<(String, i64)>, usize), EngineError> {
        let session_id = self.client.session_id().0;
        let mut adopted = None;
        let mut replaced = 0;
        for node in children
            .iter()
            .filter_map(|name| ContenderNode::parse(name))
        {
            if node.owner.as_deref() != Some(id.as_str()) {
                continue;
            }
            let path = self.path_of(&node.name);
            let stat = self
                .retry(|| self.client.check_stat(&path))
                .await
                .map_err(|err| err.into_engine_error("stat", &path, self.patience))?;
            let Some(stat) = stat else { continue };
            if stat.ephemeral_owner == session_id && node.mode == mode && adopted.is_none() {
                adopted = Some((node.name, stat.czxid));
                continue;
            }
            tracing::info!(dir = %self.dir, %id, node = %node.name, owner = stat.ephemeral_owner, "deleting a stale node of this contender");
            match self.retry(|| self.client.delete(&path, None)).await {
                Ok(()) | Err(RetryError::ZooKeeper(zookeeper_client::Error::NoNode)) => {
                    replaced += 1
                }
                Err(err) => return Err(err.into_engine_error("delete", &path, self.patience)),
            }
        }
        Ok((adopted, replaced))
    }

    async fn create_directory(&self) -> Result<(), EngineError> {
        let options = CreateMode::Container.with_acls(Acls::new(&self.acls.directory));
        self.retry(|| self.client.mkdir(&self.dir, &options))
            .await
            .map_err(|err| err.into_engine_error("create", &self.dir, self.patience))
    }

    /// Deletes the contender's node. A contender this engine does not track (left by a
    /// previous session) is looked up by its id, so a dequeue after a restart still works.
    async fn dequeue(&mut self, id: &ContenderId) -> Result<(), EngineError> {
        let paths: Vec<String> = match self.contenders.get(id) {
            Some(tracked) => vec![self.path_of(&tracked.node)],
            None => {
                let children = self
                    .list()
                    .await
                    .map_err(|err| err.into_engine_error("list", &self.dir, self.patience))?
                    .unwrap_or_default();
                let mine: Vec<String> = children
                    .iter()
                    .filter_map(|name| ContenderNode::parse(name))
                    .filter(|node| node.owner.as_deref() == Some(id.as_str()))
                    .map(|node| self.path_of(&node.name))
                    .collect();
                if mine.is_empty() {
                    return Err(EngineError::NotQueued {
                        id: id.to_string(),
                        dir: self.dir.clone(),
                    });
                }
                mine
            }
        };
        for path in &paths {
            match self.retry(|| self.client.delete(path, None)).await {
                Ok(()) | Err(RetryError::ZooKeeper(zookeeper_client::Error::NoNode)) => {}
                Err(err) => return Err(err.into_engine_error("delete", path, self.patience)),
            }
        }
        if let Some(tracked) = self.contenders.remove(id) {
            self.publish(id, &tracked, ContenderState::Released);
        }
        Ok(())
    }
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort_unstable();
    names
}
