//! One installation per lock. Two lockkeeper installations on different ZooKeeper ensembles
//! (or roots) that watch the same namespace would each queue its claims in their own
//! ZooKeeper and grant them twice. So a lock records the installation that serves it
//! (`status.servedBy`, taken by the lock reconciler with a write guarded by the lock's
//! resourceVersion: of two installations, one wins), and every other installation leaves the
//! lock and its claims alone.

use crate::resources::{DistributedLock, Installation};

/// Who serves a lock, as this installation sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum Serving<'a> {
    /// This installation.
    Here,
    /// Nobody yet: the first installation whose lock reconciler records itself serves it.
    Unclaimed,
    /// Another installation: this one leaves the lock alone.
    Elsewhere(&'a Installation),
}

/// Who serves `lock`, by the installation its status records.
pub fn serving<'a>(here: &Installation, lock: &'a DistributedLock) -> Serving<'a> {
    match lock.status.as_ref().and_then(|s| s.served_by.as_ref()) {
        None => Serving::Unclaimed,
        Some(recorded) if recorded.id == here.id => Serving::Here,
        Some(recorded) => Serving::Elsewhere(recorded),
    }
}

/// What a warning event on a lock served elsewhere says.
pub fn elsewhere_note(here: &Installation, other: &Installation) -> String {
    format!(
        "served by another lockkeeper installation ({} at {}); this one ({} at {}) leaves the lock \
         and its claims alone. Two installations must not watch one namespace. If the other is \
         gone for good, clear the record: kubectl patch distributedlock NAME --subresource=status \
         --type=merge -p '{{\"status\":{{\"servedBy\":null}}}}'",
        other.id, other.zookeeper, here.id, here.zookeeper
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn installation(id: &str) -> Installation {
        Installation {
            id: id.into(),
            zookeeper: format!("zk-{id}:2181/lockkeeper"),
        }
    }

    fn lock(served_by: Option<&str>) -> DistributedLock {
        let mut lock: DistributedLock = serde_json::from_value(json!({
            "apiVersion": "lockkeeper.dev/v1alpha1", "kind": "DistributedLock",
            "metadata": {"name": "db", "namespace": "team"}, "spec": {},
        }))
        .unwrap();
        if let Some(id) = served_by {
            lock.status = Some(crate::resources::DistributedLockStatus {
                served_by: Some(installation(id)),
                ..Default::default()
            });
        }
        lock
    }

    #[test]
    fn a_lock_is_served_where_its_status_says() {
        let here = installation("a");
        assert_eq!(serving(&here, &lock(None)), Serving::Unclaimed);
        assert_eq!(serving(&here, &lock(Some("a"))), Serving::Here);
        let elsewhere = lock(Some("b"));
        assert_eq!(
            serving(&here, &elsewhere),
            Serving::Elsewhere(&installation("b"))
        );
    }

    #[test]
    fn the_warning_names_both_installations_and_the_way_out() {
        let note = elsewhere_note(&installation("a"), &installation("b"));
        assert!(note.contains("b at zk-b:2181/lockkeeper"), "{note}");
        assert!(note.contains("a at zk-a:2181/lockkeeper"), "{note}");
        assert!(note.contains("\"servedBy\":null"), "{note}");
    }
}
