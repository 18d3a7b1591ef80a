//! The watches of one term: what each keeps in its cache ([`super::slim`]), which of its
//! changes reconcile claims, and how it recovers from errors.
//!
//! Each watch backs off on its own. kube-runtime's controller would also pause all of its
//! inputs together, with one backoff, whenever any one of them fails; that pause grows with
//! every error and resets only after two quiet minutes. A watch that keeps failing — Jobs
//! the controller may not list, a relist after `410 Gone` — would then hold up every grant,
//! engine events included. [`NoSharedPause`] turns that shared pause off.

use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Resource, ResourceExt};
use tokio::sync::mpsc;

use super::claim_index::ClaimIndex;
use super::departures::Departure;
use super::slim;
use crate::resources::{DistributedLock, LockClaim};

/// The objects a watch reports changed, or the error it recovers from next.
pub type Changes<K> = Result<K, watcher::Error>;

fn config() -> watcher::Config {
    watcher::Config::default()
}

/// Failed resumes in a row after which a watch starts over with a list.
const RESUMES_BEFORE_RELIST: u32 = 3;

/// kube-runtime's watcher, started over with a list after [`RESUMES_BEFORE_RELIST`] failures
/// in a row. The watcher resumes a failed watch from the same resourceVersion and lists again
/// only after `410 Gone`; kube-apiserver without its watch cache may answer a resume past an
/// etcd compaction with a 500 instead ("etcd event received with PrevKv=nil"), the same at
/// every retry, and the watch would never recover.
fn watch_or_relist<K>(api: Api<K>) -> impl Stream<Item = Changes<watcher::Event<K>>> + Send
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    futures::stream::repeat_with(move || {
        let mut failed_in_a_row = 0;
        watcher(api.clone(), config()).take_while(move |event| {
            failed_in_a_row = match event {
                Ok(_) => 0,
                Err(_) => failed_in_a_row + 1,
            };
            std::future::ready(failed_in_a_row < RESUMES_BEFORE_RELIST)
        })
    })
    .flatten()
}

/// Locks, for the claims they concern. A claim reads its lock's spec, and of its status only
/// the installation serving it: only a lock made, deleted, with a new spec or served anew
/// reconciles its claims (the lock's other status writes do not).
pub fn locks(
    api: Api<DistributedLock>,
    cache: Writer<DistributedLock>,
    cached: Store<DistributedLock>,
) -> impl Stream<Item = Changes<DistributedLock>> + Send + 'static {
    reflector(
        cache,
        watch_or_relist(api).modify(slim::without_managed_fields::<DistributedLock>),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(
        move |lock: &DistributedLock| {
            let exists = cached.get(&ObjectRef::from_obj(lock)).is_some();
            let deleting = lock.meta().deletion_timestamp.is_some();
            let served_by = lock
                .status
                .as_ref()
                .and_then(|s| s.served_by.as_ref())
                .map(|installation| installation.id.clone());
            Some(hash_of(&(
                lock.meta().generation,
                exists,
                deleting,
                served_by,
            )))
        },
        Default::default(),
    )
}

/// Locks whose own status is to be refreshed: every change, for the lock controller.
pub fn locks_to_refresh(
    api: Api<DistributedLock>,
    cache: Writer<DistributedLock>,
) -> impl Stream<Item = Changes<DistributedLock>> + Send + 'static {
    reflector(
        cache,
        watch_or_relist(api).modify(slim::without_managed_fields::<DistributedLock>),
    )
    .default_backoff()
    .applied_objects()
}

/// Holder pods: their phase.
pub fn pods(
    api: Api<Pod>,
    cache: Writer<Pod>,
) -> impl Stream<Item = Changes<Pod>> + Send + 'static {
    reflector(cache, watch_or_relist(api).modify(slim::pod))
        .default_backoff()
        .touched_objects()
}

/// Holder Jobs: whether they are suspended or ended.
pub fn jobs(
    api: Api<Job>,
    cache: Writer<Job>,
) -> impl Stream<Item = Changes<Job>> + Send + 'static {
    reflector(cache, watch_or_relist(api).modify(slim::job))
        .default_backoff()
        .touched_objects()
}

/// Claims. Besides the cache, the watch keeps the index of claims by lock and by holder that
/// pod, job and lock changes are mapped through, tells of claims that went, and sends the
/// other claims of a changed claim's holder to `siblings` (a holder with several locks is
/// queued for each in turn, and starts with all of them: see [`crate::claim_lifecycle::HolderSet`]).
pub fn claims(
    api: Api<LockClaim>,
    cache: Writer<LockClaim>,
    index: ClaimIndex,
    departed: mpsc::UnboundedSender<Departure>,
    siblings: mpsc::UnboundedSender<ObjectRef<LockClaim>>,
) -> impl Stream<Item = Changes<LockClaim>> + Send + 'static {
    watch_or_relist(api)
        .modify(slim::without_managed_fields::<LockClaim>)
        .default_backoff()
        .reflect(cache)
        .inspect_ok(move |event| {
            index.observe(event);
            if let Some(departure) = Departure::of(event) {
                let _ = departed.send(departure);
            }
            if let watcher::Event::Apply(claim) | watcher::Event::Delete(claim) = event {
                let holder = &claim.spec.holder;
                let namespace = claim.namespace().unwrap_or_default();
                for sibling in index.of_holder(&namespace, holder.kind, &holder.name) {
                    if sibling.name != claim.name_any() {
                        let _ = siblings.send(sibling);
                    }
                }
            }
        })
        .applied_objects()
}

/// The controllers' shared pause on a failed input, turned off (see the module's comment):
/// each watch backs off on its own already. A hand-written type because kube-runtime offers
/// no backoff that never waits.
pub struct NoSharedPause;

impl Iterator for NoSharedPause {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl Backoff for NoSharedPause {
    fn reset(&mut self) {}
}

/// Logs the errors a controller's run reports besides its reconcilers' (which their error
/// policies log): a watch that fails, such as on a namespace the controller may not list,
/// is retried with backoff and says why each time.
pub async fn report_errors<T, R, Q>(result: Result<T, kube::runtime::controller::Error<R, Q>>)
where
    R: std::error::Error,
    Q: std::error::Error,
{
    use kube::runtime::controller::Error as Run;
    if let Err(err @ (Run::QueueError(_) | Run::RunnerError(_))) = result {
        tracing::warn!(%err, "a watch of the controller failed; retrying");
    }
}

fn hash_of(value: &impl std::hash::Hash) -> u64 {
    use std::hash::{DefaultHasher, Hasher};
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_pause_never_waits_and_never_gives_up() {
        let mut pause = NoSharedPause;
        assert!(pause.by_ref().take(1000).all(|wait| wait.is_zero()));
        pause.reset();
        assert_eq!(pause.next(), Some(Duration::ZERO));
    }
}
