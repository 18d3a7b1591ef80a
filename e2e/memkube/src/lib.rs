//! memkube: an in-memory Kubernetes API server for lockkeeper's end-to-end tests and local
//! sandbox. Real HTTP, spoken to by kube-rs and kubectl, with the API semantics the operator
//! relies on. Test and sandbox infrastructure only, never a production component.
//!
//! - [`store`]: objects, versions, conflicts, finalizers, garbage collection, watch history.
//! - [`resources`]: what is served (built-ins and CRD-defined resources).
//! - [`http`]: routing, discovery, CRUD, patches, watches.
//! - [`table`]: server-side tables for `kubectl get`.
//! - [`faults`]: injected errors, latency, dropped watches, compaction.
//! - [`api_error`]: errors as Kubernetes `Status` objects.

pub mod api_error;
pub mod faults;
pub mod field_managers;
pub mod http;
pub mod openapi;
pub mod protobuf;
pub mod resources;
pub mod schema;
pub mod selectors;
pub mod store;
pub mod table;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub use faults::ErrorRule;
use http::Server;

/// Events kept for watches to resume from; older resumes get 410 Gone.
pub const DEFAULT_HISTORY: usize = 100_000;

/// A running memkube, in this process.
pub struct MemKube {
    address: SocketAddr,
    server: Arc<Server>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl MemKube {
    /// Serves on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("loopback address")).await
    }

    pub async fn start_on(address: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let server = Arc::new(Server::new(DEFAULT_HISTORY));
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = http::router(server.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(MemKube {
            address,
            server,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A kube-rs client for this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().expect("server URL"));
        kube::Client::try_from(config).expect("kube client")
    }

    /// A kubeconfig (context, cluster, user) for kubectl and `Client::try_default()`.
    pub fn kubeconfig(&self) -> String {
        kubeconfig_for(&self.url())
    }

    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Fault injection; the handle may outlive this borrow (e.g. in a task).
    pub fn faults(&self) -> Arc<faults::Faults> {
        self.server.faults.clone()
    }

    /// Resource requests served so far, by verb, resource, subresource and response code.
    pub fn requests(&self) -> std::collections::BTreeMap<http::RequestKind, u64> {
        self.server.requests.lock().expect("requests lock").clone()
    }

    pub fn store(&self) -> &store::Store {
        &self.server.store
    }

    /// Stops serving; open watches end.
    pub async fn stop(mut self) {
        self.server.faults.stop_watches();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MemKube {
    fn drop(&mut self) {
        self.server.faults.stop_watches();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

pub fn kubeconfig_for(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: memkube\n  cluster:\n    server: {url}\n\
         contexts:\n- name: memkube\n  context:\n    cluster: memkube\n    user: memkube\n    namespace: default\n\
         current-context: memkube\nusers:\n- name: memkube\n  user: {{}}\n"
    )
}
