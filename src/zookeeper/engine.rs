//! The lock engine: one ZooKeeper session that queues many contenders on many locks.
//!
//! ```text
//! let engine = LockEngine::connect(EngineConfig::new("127.0.0.1:2181")).await?;
//! let lock = LockSpec::new("/lockkeeper/default/migrations", LockKind::Mutex)?;
//! let mut contender = engine.enqueue(&lock, &ContenderId::new(claim_uid)?, Mode::Exclusive, b"").await?;
//! let token = contender.wait_granted(Duration::from_secs(30)).await?;  // or watch engine.events()
//! engine.dequeue(&lock, &contender.id).await?;
//! ```
//!
//! A supervisor follows the session. When it expires, or the connection stays down for the
//! session timeout, every contender of that session is reported `Lost` (never silently kept)
//! and a new session is opened for later enqueues.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zookeeper_client::{Acls, Client, CreateMode, SessionInfo, SessionState};

use super::contender::{Contender, ContenderEvent, EventSink, FencingToken};
use super::error::{EngineError, LossReason};
use super::lock_watch::{Command, LockHandle, LockWatch, Registry};
use backon::{ExponentialBuilder, Retryable};

use super::session::{self, AclPolicy, EngineConfig, RetryError, retry_on_connection_loss};
use crate::lock_rules::{LockKind, Mode, Verdict, judge};
use crate::zookeeper::znode_name::{ContenderId, LockPath, contender_dir, queue_order};

/// A lock as the engine needs it: where it lives and what rules apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockSpec {
    pub path: LockPath,
    pub kind: LockKind,
}

impl LockSpec {
    pub fn new(path: &str, kind: LockKind) -> Result<Self, EngineError> {
        Ok(LockSpec {
            path: LockPath::new(path)?,
            kind,
        })
    }

    /// The znode directory its contenders queue in.
    pub fn dir(&self) -> String {
        contender_dir(self.kind, &self.path)
    }
}

/// The engine's ZooKeeper session as the outside world should know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionStatus {
    Connected {
        session_id: i64,
    },
    /// Grants still stand while ZooKeeper keeps the session, but a holder cannot know whether
    /// it still does: treat them as suspect.
    Disconnected {
        since: Instant,
    },
    /// The session was lost; a new one is being opened.
    Reconnecting,
    /// ZooKeeper refused the credentials; the engine stops.
    AuthFailed,
    Closed,
}

/// One contender in a snapshot of a lock's queue, whoever created it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueEntry {
    pub node: String,
    pub sequence: i64,
    pub mode: Mode,
    /// The id in a protected name: a claim UID for lockkeeper's contenders.
    pub owner: Option<String>,
    pub verdict: Verdict,
    /// Holders only: the fencing token of their grant.
    pub fencing_token: Option<FencingToken>,
}

/// Everything queued on one lock, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockQueue {
    pub entries: Vec<QueueEntry>,
}

impl LockQueue {
    pub fn holders(&self) -> impl Iterator<Item = &QueueEntry> {
        self.entries.iter().filter(|entry| entry.verdict.holds())
    }

    pub fn waiting(&self) -> usize {
        self.entries.len() - self.holders().count()
    }
}

/// See the module documentation. Cheap to clone; all clones share one session.
#[derive(Clone)]
pub struct LockEngine {
    inner: Arc<Inner>,
}

struct Inner {
    config: EngineConfig,
    acls: Arc<AclPolicy>,
    /// `None` while a lost session is being replaced.
    client: RwLock<Option<Client>>,
    registry: Registry,
    serials: AtomicU64,
    events: EventSink,
    status: watch::Sender<SessionStatus>,
    shutdown: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
        // Dropping the command senders ends every lock watch task.
        self.registry.lock().expect("registry lock").clear();
    }
}

impl LockEngine {
    /// Opens a session (resuming `config.resume` if given) and starts following it.
    pub async fn connect(config: EngineConfig) -> Result<Self, EngineError> {
        let client = session::open(&config, config.resume.clone()).await?;
        let (status, _) = watch::channel(SessionStatus::Connected {
            session_id: client.session_id().0,
        });
        let inner = Arc::new(Inner {
            acls: Arc::new(AclPolicy::new(config.credentials.is_some())),
            config,
            client: RwLock::new(Some(client.clone())),
            registry: Arc::new(Mutex::new(HashMap::new())),
            serials: AtomicU64::new(0),
            events: EventSink::default(),
            status,
            shutdown: CancellationToken::new(),
        });
        tokio::spawn(supervise(
            Arc::downgrade(&inner),
            client,
            inner.shutdown.clone(),
        ));
        Ok(LockEngine { inner })
    }

    /// The stream of every contender's state change from now on. There is one stream: the
    /// first call opens it, later calls get `None`. Events are not kept before it is opened.
    pub fn events(&self) -> Option<mpsc::UnboundedReceiver<ContenderEvent>> {
        self.inner.events.subscribe()
    }

    pub fn session_status(&self) -> watch::Receiver<SessionStatus> {
        self.inner.status.subscribe()
    }

    /// The current session, to resume it later through [`EngineConfig::resume`].
    pub fn session(&self) -> Result<SessionInfo, EngineError> {
        Ok(self.client()?.session().clone())
    }

    pub fn session_timeout(&self) -> Result<Duration, EngineError> {
        Ok(self.client()?.session_timeout())
    }

    fn client(&self) -> Result<Client, EngineError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(EngineError::Closed);
        }
        self.inner
            .client
            .read()
            .expect("client lock")
            .clone()
            .ok_or(EngineError::Reconnecting)
    }

    /// Queues a contender on `lock`, or finds it queued already (by this session: same node,
    /// same grant). `data` is stored in its node for other clients to read. The returned
    /// contender's state has already been decided against the queue.
    pub async fn enqueue(
        &self,
        lock: &LockSpec,
        id: &ContenderId,
        mode: Mode,
        data: &[u8],
    ) -> Result<Contender, EngineError> {
        let answer = self.send_enqueue(lock, id.clone(), mode, data.to_vec())?;
        answered(answer).await
    }

    /// Queues several contenders on `lock`, in the given order (their sequence numbers follow
    /// it), as [`LockEngine::enqueue`] does each: the lock's task takes them as one burst,
    /// with one listing and one read of the queue. Answers in the same order.
    pub async fn enqueue_in_order(
        &self,
        lock: &LockSpec,
        contenders: impl IntoIterator<Item = (ContenderId, Mode, Vec<u8>)>,
    ) -> Vec<Result<Contender, EngineError>> {
        // Every command is sent before any answer is awaited: that makes the burst.
        let sent: Vec<_> = contenders
            .into_iter()
            .map(|(id, mode, data)| self.send_enqueue(lock, id, mode, data))
            .collect();
        let mut answers = Vec::with_capacity(sent.len());
        for answer in sent {
            answers.push(match answer {
                Ok(answer) => answered(answer).await,
                Err(err) => Err(err),
            });
        }
        answers
    }

    /// Hands an enqueue to the lock's task; its answer comes on the returned channel.
    fn send_enqueue(
        &self,
        lock: &LockSpec,
        id: ContenderId,
        mode: Mode,
        data: Vec<u8>,
    ) -> Result<oneshot::Receiver<Result<Contender, EngineError>>, EngineError> {
        lock.kind.admits(mode)?;
        let (reply, answer) = oneshot::channel();
        self.send(
            lock,
            Command::Enqueue {
                id,
                mode,
                data,
                reply,
            },
        )?;
        Ok(answer)
    }

    /// Deletes the contender's node: releases its grant, or leaves the queue. Works for a
    /// contender queued by an earlier session too (found by its id).
    pub async fn dequeue(&self, lock: &LockSpec, id: &ContenderId) -> Result<(), EngineError> {
        let (reply, answer) = oneshot::channel();
        self.send(
            lock,
            Command::Dequeue {
                id: id.clone(),
                reply,
            },
        )?;
        answered(answer).await
    }

    fn send(&self, lock: &LockSpec, command: Command) -> Result<(), EngineError> {
        let client = self.client()?;
        let dir = lock.dir();
        let mut registry = self.inner.registry.lock().expect("registry lock");
        if let Some(handle) = registry.get(&dir)
            && !handle.commands.is_closed()
        {
            if handle.kind != lock.kind {
                return Err(EngineError::KindMismatch {
                    dir,
                    existing: handle.kind,
                    requested: lock.kind,
                });
            }
            return handle
                .commands
                .send(command)
                .map_err(|_| EngineError::SessionExpired);
        }
        let serial = self.inner.serials.fetch_add(1, Ordering::Relaxed);
        let (commands, receiver) = mpsc::unbounded_channel();
        let watch = LockWatch::new(
            serial,
            client,
            dir.clone(),
            lock.kind,
            self.inner.acls.clone(),
            self.inner.events.clone(),
            self.inner.registry.clone(),
        );
        let task = tokio::spawn(watch.run(receiver));
        commands
            .send(command)
            .map_err(|_| EngineError::SessionExpired)?;
        registry.insert(
            dir,
            LockHandle {
                serial,
                kind: lock.kind,
                commands,
                task,
            },
        );
        Ok(())
    }

    /// A snapshot of everything queued on `lock` (lockkeeper's contenders and any Curator or
    /// kazoo ones), with the holders' fencing tokens.
    pub async fn queue(&self, lock: &LockSpec) -> Result<LockQueue, EngineError> {
        let client = self.client()?;
        let dir = lock.dir();
        let patience = client.session_timeout();
        let children = match retry_on_connection_loss(&client, patience, || {
            client.list_children(&dir)
        })
        .await
        {
            Ok(children) => children,
            Err(RetryError::ZooKeeper(zookeeper_client::Error::NoNode)) => {
                return Ok(LockQueue::default());
            }
            Err(err) => return Err(err.into_engine_error("list", &dir, patience)),
        };
        let nodes = queue_order(&children);
        let verdicts = judge(
            lock.kind,
            &nodes.iter().map(|node| node.mode).collect::<Vec<_>>(),
        );
        let mut entries = Vec::with_capacity(nodes.len());
        for (node, verdict) in nodes.into_iter().zip(verdicts) {
            let fencing_token = if verdict.holds() {
                let path = format!("{dir}/{}", node.name);
                retry_on_connection_loss(&client, patience, || client.check_stat(&path))
                    .await
                    .map_err(|err| err.into_engine_error("stat", &path, patience))?
                    .map(|stat| FencingToken(stat.czxid))
            } else {
                None
            };
            entries.push(QueueEntry {
                node: node.name,
                sequence: node.sequence,
                mode: node.mode,
                owner: node.owner,
                verdict,
                fencing_token,
            });
        }
        Ok(LockQueue { entries })
    }

    /// The id of the lockkeeper installation that keeps its queues under `root` of this
    /// ensemble: a UUID in `<root>/_installation` (no namespace can be named that), made by
    /// the first controller to ask. Replicas of one installation share it; an installation on
    /// another ensemble, or under another root, has its own.
    pub async fn installation_id(&self, root: &str) -> Result<String, EngineError> {
        let client = self.client()?;
        let root = root.trim_end_matches('/');
        let path = format!("{root}/_installation");
        let patience = client.session_timeout();
        loop {
            match retry_on_connection_loss(&client, patience, || client.get_data(&path)).await {
                Ok((data, _)) => return Ok(String::from_utf8_lossy(&data).into_owned()),
                Err(RetryError::ZooKeeper(zookeeper_client::Error::NoNode)) => {}
                Err(err) => return Err(err.into_engine_error("get", &path, patience)),
            }
            if !root.is_empty() {
                let directory =
                    CreateMode::Persistent.with_acls(Acls::new(&self.inner.acls.directory));
                match retry_on_connection_loss(&client, patience, || client.mkdir(root, &directory))
                    .await
                {
                    Ok(()) | Err(RetryError::ZooKeeper(zookeeper_client::Error::NodeExists)) => {}
                    Err(err) => return Err(err.into_engine_error("create", root, patience)),
                }
            }
            let id = uuid::Uuid::new_v4().to_string();
            let node = CreateMode::Persistent.with_acls(Acls::new(&self.inner.acls.contender));
            // A create whose answer was lost is found by the next read, as is another
            // replica's id when it made the node first.
            match client.create(&path, id.as_bytes(), &node).await {
                Ok(_) => return Ok(id),
                Err(err)
                    if err == zookeeper_client::Error::NodeExists
                        || session::is_connection_loss(&err) => {}
                Err(err) => return Err(EngineError::zookeeper("create", &path, err)),
            }
        }
    }

    /// Ends every lock watch and closes the session, which makes ZooKeeper delete all of this
    /// engine's nodes at once (unless `keep_session_on_drop`, which leaves the session to
    /// expire). Contenders still queued end `Lost(EngineClosed)`.
    pub async fn close(self) {
        self.inner.shutdown.cancel();
        let handles: Vec<LockHandle> = self
            .inner
            .registry
            .lock()
            .expect("registry lock")
            .drain()
            .map(|(_, h)| h)
            .collect();
        for handle in handles {
            drop(handle.commands);
            let _ = handle.task.await;
        }
        let client = self.inner.client.write().expect("client lock").take();
        if let Some(client) = client
            && !self.inner.config.keep_session_on_drop
        {
            // The session closes once its last handle is gone (the supervisor lets go of
            // its own on shutdown). Wait for ZooKeeper to confirm, so that the nodes are gone
            // when this returns, even if the process exits right after.
            let mut state = client.state_watcher();
            drop(client);
            let closed = async {
                while !matches!(
                    state.changed().await,
                    SessionState::Closed | SessionState::Expired
                ) {}
            };
            if tokio::time::timeout(CLOSE_PATIENCE, closed).await.is_err() {
                tracing::warn!(
                    "ZooKeeper did not confirm closing the session; its nodes go when it expires"
                );
            }
        }
        self.inner.status.send_replace(SessionStatus::Closed);
    }
}

/// How long [`LockEngine::close`] waits for ZooKeeper to confirm the session is closed.
const CLOSE_PATIENCE: Duration = Duration::from_secs(3);

/// Follows the session; on its loss reports every contender lost and opens a new one.
async fn supervise(inner: std::sync::Weak<Inner>, mut client: Client, shutdown: CancellationToken) {
    loop {
        let reason = tokio::select! {
            reason = watch_until_lost(&inner, &client) => reason,
            _ = shutdown.cancelled() => return,
        };
        let Some(reason) = reason else { return };
        let Some(engine) = inner.upgrade() else {
            return;
        };
        tracing::warn!(%reason, session = %client.session_id(), "ZooKeeper session lost; its contenders are lost");
        engine.client.write().expect("client lock").take();
        engine.status.send_replace(SessionStatus::Reconnecting);
        for (_, handle) in engine.registry.lock().expect("registry lock").drain() {
            let _ = handle.commands.send(Command::SessionLost(reason.clone()));
        }
        let config = engine.config.clone();
        drop(engine);
        client = tokio::select! {
            client = reopen(&config) => client,
            _ = shutdown.cancelled() => return,
        };
        let Some(engine) = inner.upgrade() else {
            return;
        };
        tracing::info!(session = %client.session_id(), "new ZooKeeper session");
        *engine.client.write().expect("client lock") = Some(client.clone());
        engine.status.send_replace(SessionStatus::Connected {
            session_id: client.session_id().0,
        });
    }
}

/// Waits until the session is lost and says why; `None` when it ended for good (closed,
/// refused credentials).
async fn watch_until_lost(inner: &std::sync::Weak<Inner>, client: &Client) -> Option<LossReason> {
    let timeout = client.session_timeout();
    let mut watcher = client.state_watcher();
    let mut state = client.state();
    let mut disconnected_at: Option<Instant> = None;
    loop {
        let status = match state {
            SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                disconnected_at = None;
                SessionStatus::Connected {
                    session_id: client.session_id().0,
                }
            }
            SessionState::Disconnected => SessionStatus::Disconnected {
                since: *disconnected_at.get_or_insert_with(Instant::now),
            },
            SessionState::Expired => return Some(LossReason::SessionExpired),
            SessionState::AuthFailed => {
                inner
                    .upgrade()?
                    .status
                    .send_replace(SessionStatus::AuthFailed);
                return None;
            }
            SessionState::Closed => return None,
        };
        inner.upgrade()?.status.send_replace(status);
        state = match disconnected_at {
            // ZooKeeper expires the session once it has not heard from us for the timeout;
            // past that, holders must not assume they still hold anything.
            Some(since) => {
                match tokio::time::timeout_at(since + timeout, watcher.changed()).await {
                    Ok(state) => state,
                    Err(_) => return Some(LossReason::SessionPresumedExpired(timeout)),
                }
            }
            None => watcher.changed().await,
        };
    }
}

/// Opens a new session, retrying exponentially later (from 100 ms, at most 5 s apart, with
/// jitter) until it succeeds.
async fn reopen(config: &EngineConfig) -> Client {
    let retries = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times();
    (|| session::open(config, None))
        .retry(retries)
        .notify(|err, wait| tracing::warn!(%err, ?wait, "cannot open a new ZooKeeper session yet"))
        .await
        .expect("retried until it succeeds")
}

/// The answer of a lock's task; a task that ended without answering went with its session.
async fn answered<T>(answer: oneshot::Receiver<Result<T, EngineError>>) -> Result<T, EngineError> {
    answer.await.unwrap_or(Err(EngineError::SessionExpired))
}
