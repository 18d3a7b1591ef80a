//! Opening a ZooKeeper session for the engine, waiting out connection losses, and the ACLs
//! the engine's nodes get.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use zookeeper_client::{Acl, AuthId, Client, Permission, SessionInfo, SessionState};

use super::error::EngineError;

/// Digest credentials (`user:password`) identifying the engine to ZooKeeper.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// How the engine reaches ZooKeeper.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// `host:port[,host:port…][/chroot]`.
    pub connect: String,
    /// Asked of the server, which bounds it by its min/max session timeouts.
    pub session_timeout: Duration,
    /// How long opening a session may take before the ensemble counts as unreachable.
    pub connect_timeout: Duration,
    pub credentials: Option<Credentials>,
    /// An existing session to resume (see [`super::LockEngine::session`]): its nodes,
    /// grants included, are adopted by the enqueues that name them again.
    pub resume: Option<SessionInfo>,
    /// Keep the session open when the engine is dropped without [`super::LockEngine::close`],
    /// so that a successor in this process can resume it within the session timeout.
    pub keep_session_on_drop: bool,
}

impl EngineConfig {
    pub fn new(connect: impl Into<String>) -> Self {
        EngineConfig {
            connect: connect.into(),
            session_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(15),
            credentials: None,
            resume: None,
            keep_session_on_drop: false,
        }
    }
}

pub(crate) async fn open(
    config: &EngineConfig,
    resume: Option<SessionInfo>,
) -> Result<Client, EngineError> {
    let mut connector = Client::connector()
        .with_session_timeout(config.session_timeout)
        .with_connection_timeout(config.connect_timeout.min(Duration::from_secs(5)));
    if let Some(credentials) = &config.credentials {
        connector = connector.with_auth(
            "digest",
            format!("{}:{}", credentials.user, credentials.password).as_bytes(),
        );
    }
    if let Some(session) = resume {
        connector = connector.with_session(session);
    }
    if config.keep_session_on_drop {
        connector = connector.with_detached();
    }
    let unreachable = || EngineError::Unreachable {
        connect: config.connect.clone(),
        waited: config.connect_timeout,
    };
    match tokio::time::timeout(config.connect_timeout, connector.connect(&config.connect)).await {
        Err(_) | Ok(Err(zookeeper_client::Error::Timeout)) => Err(unreachable()),
        Ok(Ok(client)) => Ok(client),
        Ok(Err(zookeeper_client::Error::BadArguments(message))) => {
            Err(EngineError::BadConnectString {
                connect: config.connect.clone(),
                message: message.to_string(),
            })
        }
        Ok(Err(zookeeper_client::Error::NoHosts)) => Err(EngineError::BadConnectString {
            connect: config.connect.clone(),
            message: "no hosts in it".into(),
        }),
        Ok(Err(err)) => Err(EngineError::zookeeper("connect", &config.connect, err)),
    }
}

/// ACLs of what the engine creates. Deleting a znode is governed by the DELETE permission on
/// its *parent* in ZooKeeper, so lock directories let peers (Curator, kazoo) create and delete
/// their own contenders, while each contender node is readable by all and writable (data,
/// ACL) only by the engine's identity.
#[derive(Clone, Debug)]
pub(crate) struct AclPolicy {
    pub contender: Vec<Acl>,
    pub directory: Vec<Acl>,
}

impl AclPolicy {
    pub fn new(authenticated: bool) -> Self {
        let anyone = AuthId::anyone();
        if authenticated {
            let creator = Acl::new(Permission::ALL, AuthId::authed());
            AclPolicy {
                contender: vec![Acl::new(Permission::READ, anyone.clone()), creator.clone()],
                directory: vec![
                    Acl::new(
                        Permission::READ | Permission::CREATE | Permission::DELETE,
                        anyone,
                    ),
                    creator,
                ],
            }
        } else {
            AclPolicy {
                contender: vec![Acl::new(Permission::ALL, anyone.clone())],
                directory: vec![Acl::new(Permission::ALL, anyone)],
            }
        }
    }
}

/// Runs `operation`, and after a connection loss runs it again once the session is back,
/// for up to `patience` in all. Retry only operations that are safe to repeat.
pub(crate) async fn retry_on_connection_loss<T, F, Fut>(
    client: &Client,
    patience: Duration,
    mut operation: F,
) -> Result<T, RetryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, zookeeper_client::Error>>,
{
    let deadline = Instant::now() + patience;
    loop {
        match operation().await {
            Err(err) if is_connection_loss(&err) => {
                // The state may not say "disconnected" yet: do not spin on a stale "connected".
                tokio::time::sleep(Duration::from_millis(10)).await;
                wait_connected(client, deadline).await?
            }
            Err(err) => return Err(RetryError::ZooKeeper(err)),
            Ok(value) => return Ok(value),
        }
    }
}

/// A request that failed because the connection broke: it may or may not have been applied.
/// zookeeper-client 0.11 reports most such failures as `ConnectionLoss`, but a request
/// written into a socket as it breaks comes back as a `Custom` error wrapping the I/O error
/// (its other source, SASL, is not used here).
pub(crate) fn is_connection_loss(err: &zookeeper_client::Error) -> bool {
    matches!(
        err,
        zookeeper_client::Error::ConnectionLoss | zookeeper_client::Error::Custom(_)
    )
}

#[derive(Debug)]
pub(crate) enum RetryError {
    /// Still disconnected at the deadline.
    Disconnected,
    ZooKeeper(zookeeper_client::Error),
}

impl RetryError {
    /// The caller's error for `operation` on `path`, having waited `patience` for a reconnect.
    pub(crate) fn into_engine_error(
        self,
        operation: &'static str,
        path: &str,
        patience: Duration,
    ) -> EngineError {
        match self {
            RetryError::Disconnected => EngineError::Disconnected(patience),
            RetryError::ZooKeeper(err) => EngineError::zookeeper(operation, path, err),
        }
    }
}

/// Waits until the session is connected again, or fails at `deadline` or when it ends.
pub(crate) async fn wait_connected(client: &Client, deadline: Instant) -> Result<(), RetryError> {
    let mut watcher = client.state_watcher();
    let mut state = client.state();
    loop {
        match state {
            SessionState::SyncConnected | SessionState::ConnectedReadOnly => return Ok(()),
            SessionState::Expired => {
                return Err(RetryError::ZooKeeper(
                    zookeeper_client::Error::SessionExpired,
                ));
            }
            SessionState::AuthFailed => {
                return Err(RetryError::ZooKeeper(zookeeper_client::Error::AuthFailed));
            }
            SessionState::Closed => {
                return Err(RetryError::ZooKeeper(zookeeper_client::Error::ClientClosed));
            }
            SessionState::Disconnected => {}
        }
        state = match tokio::time::timeout_at(deadline, watcher.changed()).await {
            Ok(state) => state,
            Err(_) => return Err(RetryError::Disconnected),
        };
    }
}
