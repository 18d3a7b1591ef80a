//! `/metrics` (Prometheus text), `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LockLabel {
    lock: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 4.0, 12))
}

/// Registers `metric` (a cheap handle onto shared values) and returns it.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

pub struct Metrics {
    registry: Registry,
    grants: Family<LockLabel, Counter>,
    releases: Family<LockLabel, Counter>,
    expiries: Family<LockLabel, Counter>,
    losses: Family<LockLabel, Counter>,
    wait_seconds: Family<LockLabel, Histogram, fn() -> Histogram>,
    hold_seconds: Family<LockLabel, Histogram, fn() -> Histogram>,
    queue_length: Family<LockLabel, Gauge>,
    reconcile_errors: Family<KindLabel, Counter>,
    /// 1 while the ZooKeeper session is connected.
    session_connected: Gauge,
    /// 1 while this replica is the leader.
    leader: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lockkeeper");
        let r = &mut registry;
        Metrics {
            grants: registered(r, "grants", "Claims granted", Family::default()),
            releases: registered(
                r,
                "releases",
                "Grants released by their holder's end or the claim's deletion",
                Family::default(),
            ),
            expiries: registered(
                r,
                "expiries",
                "Claims expired (wait timeout or maxHoldSeconds)",
                Family::default(),
            ),
            losses: registered(
                r,
                "losses",
                "Grants lost to a backend failure",
                Family::default(),
            ),
            wait_seconds: registered(
                r,
                "wait_seconds",
                "Time from claim creation to grant",
                Family::new_with_constructor(seconds_histogram as fn() -> Histogram),
            ),
            hold_seconds: registered(
                r,
                "hold_seconds",
                "Time from grant to release",
                Family::new_with_constructor(seconds_histogram as fn() -> Histogram),
            ),
            queue_length: registered(
                r,
                "queue_length",
                "Contenders waiting on a lock",
                Family::default(),
            ),
            reconcile_errors: registered(
                r,
                "reconcile_errors",
                "Failed reconciles by resource kind",
                Family::default(),
            ),
            session_connected: registered(
                r,
                "zookeeper_session_connected",
                "1 while the ZooKeeper session is connected",
                Gauge::default(),
            ),
            leader: registered(
                r,
                "leader",
                "1 while this replica drives grants",
                Gauge::default(),
            ),
            ready: AtomicBool::new(false),
            registry,
        }
    }

    fn lock(lock: &str) -> LockLabel {
        LockLabel {
            lock: lock.to_string(),
        }
    }

    pub fn granted(&self, lock: &str) {
        self.grants.get_or_create(&Self::lock(lock)).inc();
    }
    pub fn released(&self, lock: &str) {
        self.releases.get_or_create(&Self::lock(lock)).inc();
    }
    pub fn expired(&self, lock: &str) {
        self.expiries.get_or_create(&Self::lock(lock)).inc();
    }
    pub fn lost(&self, lock: &str) {
        self.losses.get_or_create(&Self::lock(lock)).inc();
    }
    pub fn waited(&self, lock: &str, waited: Duration) {
        self.wait_seconds
            .get_or_create(&Self::lock(lock))
            .observe(waited.as_secs_f64());
    }
    pub fn held(&self, lock: &str, held: Duration) {
        self.hold_seconds
            .get_or_create(&Self::lock(lock))
            .observe(held.as_secs_f64());
    }
    pub fn queue_length(&self, lock: &str, waiting: u32) {
        self.queue_length
            .get_or_create(&Self::lock(lock))
            .set(waiting.into());
    }
    pub fn reconcile_error(&self, kind: &str) {
        self.reconcile_errors
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }
    pub fn session_connected(&self, connected: bool) {
        self.session_connected.set(connected.into());
    }
    pub fn leader(&self, leading: bool) {
        self.leader.set(leading.into());
    }
    /// Ready once the ZooKeeper session is open and the replica campaigns (a standby is ready:
    /// it takes over when the leader goes); not ready once it stops. A leader's caches may
    /// still be filling: its reconciles wait for them.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("metrics encode to a String");
        text
    }
}

async fn serve_metrics(
    State(metrics): State<Arc<Metrics>>,
) -> ([(&'static str, &'static str); 1], String) {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}

async fn serve_ready(State(metrics): State<Arc<Metrics>>) -> (StatusCode, &'static str) {
    if metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Serves the endpoints until the process ends; returns the address bound.
pub async fn serve(address: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(serve_ready))
        .with_state(metrics);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "the metrics server stopped");
        }
    });
    Ok(bound)
}
