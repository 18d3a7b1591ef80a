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

use super::error::Step;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LockLabel {
    lock: String,
}

/// A controller: `LockClaim` or `DistributedLock`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: String,
}

/// A controller, and the step of its reconcile that failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabel {
    controller: String,
    step: String,
}

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 4.0, 12))
}

type Seconds<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds<L: Clone + std::hash::Hash + Eq>() -> Seconds<L> {
    Family::new_with_constructor(seconds_histogram as fn() -> Histogram)
}

/// Registers `metric` (a cheap handle onto shared values) and returns it.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// What happens to claims, per lock.
struct LockMetrics {
    grants: Family<LockLabel, Counter>,
    releases: Family<LockLabel, Counter>,
    expiries: Family<LockLabel, Counter>,
    losses: Family<LockLabel, Counter>,
    wait_seconds: Seconds<LockLabel>,
    hold_seconds: Seconds<LockLabel>,
    queue_length: Family<LockLabel, Gauge>,
    holders: Family<LockLabel, Gauge>,
    oldest_wait_started: Family<LockLabel, Gauge>,
    oldest_grant_started: Family<LockLabel, Gauge>,
    deadlocks: Counter,
}

impl LockMetrics {
    fn register(r: &mut Registry) -> Self {
        let family = Family::default;
        LockMetrics {
            grants: registered(r, "grants", "Claims granted", family()),
            releases: registered(
                r,
                "releases",
                "Grants released by their holder's end or the claim's deletion",
                family(),
            ),
            expiries: registered(
                r,
                "expiries",
                "Claims expired (wait timeout or maxHoldSeconds)",
                family(),
            ),
            losses: registered(r, "losses", "Grants lost to a backend failure", family()),
            wait_seconds: registered(
                r,
                "wait_seconds",
                "Time from claim creation to grant",
                seconds(),
            ),
            hold_seconds: registered(r, "hold_seconds", "Time from grant to release", seconds()),
            queue_length: registered(
                r,
                "queue_length",
                "Contenders waiting on a lock",
                Family::default(),
            ),
            holders: registered(
                r,
                "holders",
                "Holders of a lock, claims and outside clients",
                Family::default(),
            ),
            oldest_wait_started: registered(
                r,
                "oldest_wait_started_timestamp_seconds",
                "When the lock's longest-waiting claim was made (Unix time); absent when none waits",
                Family::default(),
            ),
            deadlocks: registered(
                r,
                "deadlocks",
                "Deadlocks found among the claims (cycles of holders each waiting for the next)",
                Counter::default(),
            ),
            oldest_grant_started: registered(
                r,
                "oldest_grant_started_timestamp_seconds",
                "When the lock's longest-held current grant began (Unix time); absent when none holds",
                Family::default(),
            ),
        }
    }
}

/// How each controller's reconciles go.
struct ReconcileMetrics {
    runs: Family<ControllerLabel, Counter>,
    seconds: Seconds<ControllerLabel>,
    failures: Family<FailureLabel, Counter>,
}

impl ReconcileMetrics {
    fn register(r: &mut Registry) -> Self {
        ReconcileMetrics {
            runs: registered(
                r,
                "reconciles",
                "Reconciles run, per controller",
                Family::default(),
            ),
            seconds: registered(
                r,
                "reconcile_duration_seconds",
                "How long reconciles take, per controller",
                seconds(),
            ),
            failures: registered(
                r,
                "reconcile_errors",
                "Failed reconciles, per controller and failing step",
                Family::default(),
            ),
        }
    }
}

/// Counts a reconcile and, when dropped, how long it took.
pub struct ReconcileTiming {
    seconds: Histogram,
    started: std::time::Instant,
}

impl Drop for ReconcileTiming {
    fn drop(&mut self) {
        self.seconds.observe(self.started.elapsed().as_secs_f64());
    }
}

pub struct Metrics {
    registry: Registry,
    locks: LockMetrics,
    reconciles: ReconcileMetrics,
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
            locks: LockMetrics::register(r),
            reconciles: ReconcileMetrics::register(r),
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
        self.locks.grants.get_or_create(&Self::lock(lock)).inc();
    }
    pub fn released(&self, lock: &str) {
        self.locks.releases.get_or_create(&Self::lock(lock)).inc();
    }
    pub fn expired(&self, lock: &str) {
        self.locks.expiries.get_or_create(&Self::lock(lock)).inc();
    }
    pub fn lost(&self, lock: &str) {
        self.locks.losses.get_or_create(&Self::lock(lock)).inc();
    }
    pub fn waited(&self, lock: &str, waited: Duration) {
        self.locks
            .wait_seconds
            .get_or_create(&Self::lock(lock))
            .observe(waited.as_secs_f64());
    }
    pub fn held(&self, lock: &str, held: Duration) {
        self.locks
            .hold_seconds
            .get_or_create(&Self::lock(lock))
            .observe(held.as_secs_f64());
    }
    pub fn queue_length(&self, lock: &str, waiting: u32) {
        self.locks
            .queue_length
            .get_or_create(&Self::lock(lock))
            .set(waiting.into());
    }
    pub fn deadlock_found(&self) {
        self.locks.deadlocks.inc();
    }
    /// What a lock's refresh saw: its holders, and since when its longest wait and longest
    /// hold have lasted (timestamps, so that an alert on `time() - …` needs no refresh).
    pub fn lock_summary(
        &self,
        lock: &str,
        holders: u32,
        oldest_wait: Option<k8s_openapi::jiff::Timestamp>,
        oldest_grant: Option<k8s_openapi::jiff::Timestamp>,
    ) {
        let label = Self::lock(lock);
        self.locks.holders.get_or_create(&label).set(holders.into());
        for (family, since) in [
            (&self.locks.oldest_wait_started, oldest_wait),
            (&self.locks.oldest_grant_started, oldest_grant),
        ] {
            match since {
                Some(at) => {
                    family.get_or_create(&label).set(at.as_second());
                }
                None => {
                    family.remove(&label);
                }
            }
        }
    }
    /// A reconcile of `controller` starts: counted now, timed until the guard drops.
    pub fn reconcile_started(&self, controller: &str) -> ReconcileTiming {
        let label = ControllerLabel {
            controller: controller.to_string(),
        };
        self.reconciles.runs.get_or_create(&label).inc();
        ReconcileTiming {
            seconds: self.reconciles.seconds.get_or_create(&label).clone(),
            started: std::time::Instant::now(),
        }
    }
    pub fn reconcile_failed(&self, controller: &str, step: Step) {
        let label = FailureLabel {
            controller: controller.to_string(),
            step: step.label().to_string(),
        };
        self.reconciles.failures.get_or_create(&label).inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_are_counted_and_timed_per_controller_and_failures_name_their_step() {
        let metrics = Metrics::new();
        drop(metrics.reconcile_started("LockClaim"));
        drop(metrics.reconcile_started("LockClaim"));
        drop(metrics.reconcile_started("DistributedLock"));
        metrics.reconcile_failed("LockClaim", Step::WriteClaimStatus);
        let text = metrics.render();
        for line in [
            r#"lockkeeper_reconciles_total{controller="LockClaim"} 2"#,
            r#"lockkeeper_reconciles_total{controller="DistributedLock"} 1"#,
            r#"lockkeeper_reconcile_duration_seconds_count{controller="LockClaim"} 2"#,
            r#"lockkeeper_reconcile_errors_total{controller="LockClaim",step="write_claim_status"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
