//! The store's API semantics, without HTTP.

use memkube::resources::{ResourceInfo, builtins};
use memkube::store::{DeleteOptions, EventType, Propagation, Store, Target};
use serde_json::{Value, json};

fn info(plural: &str) -> ResourceInfo {
    builtins()
        .into_iter()
        .find(|r| r.id.plural == plural && (r.id.group.is_empty() || plural == "jobs"))
        .unwrap()
}

fn pod(name: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "main", "image": "busybox"}]}})
}

/// Job "owner" in "default".
fn create_owner_job(store: &Store) -> Value {
    store
        .create(
            &info("jobs"),
            Some("default"),
            json!({"metadata": {"name": "owner"}}),
            false,
        )
        .unwrap()
}

/// A pod whose owner is `job`.
fn owned_by(name: &str, job: &Value) -> Value {
    let mut owned = pod(name);
    owned["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "owner", "uid": job["metadata"]["uid"]}]);
    owned
}

fn rv(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn create_sets_system_metadata_and_versions_grow() {
    let store = Store::new(1000);
    let pods = info("pods");
    let a = store
        .create(&pods, Some("default"), pod("a"), false)
        .unwrap();
    let b = store
        .create(&pods, Some("default"), pod("b"), false)
        .unwrap();
    assert_eq!(a["kind"], "Pod");
    assert_eq!(a["metadata"]["namespace"], "default");
    assert_eq!(a["metadata"]["generation"], 1);
    assert!(a["metadata"]["uid"].as_str().unwrap().len() == 36);
    assert!(
        a["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert!(rv(&b) > rv(&a));
    let again = store
        .create(&pods, Some("default"), pod("a"), false)
        .unwrap_err();
    assert_eq!((again.code, again.reason), (409, "AlreadyExists"));
    let missing = store
        .create(&pods, Some("nowhere"), pod("c"), false)
        .unwrap_err();
    assert_eq!(
        (missing.code, missing.message.as_str()),
        (404, "namespaces \"nowhere\" not found")
    );
    let generated = store
        .create(
            &pods,
            Some("default"),
            json!({"metadata": {"generateName": "web-"}}),
            false,
        )
        .unwrap();
    assert!(
        generated["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("web-")
    );
    let nameless = store
        .create(&pods, Some("default"), json!({"metadata": {}}), false)
        .unwrap_err();
    assert_eq!(nameless.code, 422);
    let dry = store
        .create(&pods, Some("default"), pod("dry"), true)
        .unwrap();
    assert_eq!(dry["metadata"]["name"], "dry");
    assert_eq!(
        store.get(&pods, Some("default"), "dry").unwrap_err().code,
        404
    );
}

#[test]
fn stale_writes_conflict_and_the_status_subresource_is_separate() {
    let store = Store::new(1000);
    let jobs = info("jobs");
    let job = store
        .create(
            &jobs,
            Some("default"),
            json!({"metadata": {"name": "j"}, "spec": {"suspend": true}}),
            false,
        )
        .unwrap();
    let mut resumed = job.clone();
    resumed["spec"]["suspend"] = json!(false);
    resumed["status"] = json!({"active": 1});
    let updated = store
        .update(&jobs, Some("default"), "j", resumed, Target::Main, false)
        .unwrap();
    assert_eq!(updated["spec"]["suspend"], false);
    assert!(
        updated.get("status").is_none(),
        "a main write ignores status"
    );
    assert_eq!(
        updated["metadata"]["generation"], 2,
        "a spec change bumps generation"
    );
    let stale = store
        .update(
            &jobs,
            Some("default"),
            "j",
            job.clone(),
            Target::Main,
            false,
        )
        .unwrap_err();
    assert_eq!((stale.code, stale.reason), (409, "Conflict"));

    let mut status = updated.clone();
    status["status"] = json!({"succeeded": 1});
    status["spec"]["suspend"] = json!(true);
    let written = store
        .update(&jobs, Some("default"), "j", status, Target::Status, false)
        .unwrap();
    assert_eq!(written["status"]["succeeded"], 1);
    assert_eq!(
        written["spec"]["suspend"], false,
        "a status write ignores spec"
    );
    assert_eq!(
        written["metadata"]["generation"], 2,
        "status does not bump generation"
    );
    let unchanged = store
        .update(
            &jobs,
            Some("default"),
            "j",
            written.clone(),
            Target::Status,
            false,
        )
        .unwrap();
    assert_eq!(
        rv(&unchanged),
        rv(&written),
        "a write that changes nothing is not a new version"
    );
}

#[test]
fn finalizers_hold_deletion_until_the_last_one_is_removed() {
    let store = Store::new(1000);
    let pods = info("pods");
    let mut held = pod("held");
    held["metadata"]["finalizers"] = json!(["lockkeeper.dev/release"]);
    store.create(&pods, Some("default"), held, false).unwrap();
    let marked = store
        .delete(&pods, Some("default"), "held", &DeleteOptions::default())
        .unwrap();
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert!(
        store.get(&pods, Some("default"), "held").is_ok(),
        "still there while a finalizer is pending"
    );
    let mut released = marked.clone();
    released["metadata"]["finalizers"] = json!([]);
    store
        .update(
            &pods,
            Some("default"),
            "held",
            released,
            Target::Main,
            false,
        )
        .unwrap();
    assert_eq!(
        store.get(&pods, Some("default"), "held").unwrap_err().code,
        404
    );
}

#[test]
fn owners_take_their_dependents_with_them_unless_orphaned() {
    let store = Store::new(1000);
    let (pods, jobs) = (info("pods"), info("jobs"));
    let job = create_owner_job(&store);
    store
        .create(&pods, Some("default"), owned_by("child", &job), false)
        .unwrap();
    store
        .delete(&jobs, Some("default"), "owner", &DeleteOptions::default())
        .unwrap();
    assert_eq!(
        store.get(&pods, Some("default"), "child").unwrap_err().code,
        404
    );

    let job = create_owner_job(&store);
    let orphan = owned_by("orphan", &job);
    store.create(&pods, Some("default"), orphan, false).unwrap();
    let options = DeleteOptions {
        propagation: Propagation::Orphan,
        ..Default::default()
    };
    store
        .delete(&jobs, Some("default"), "owner", &options)
        .unwrap();
    let kept = store.get(&pods, Some("default"), "orphan").unwrap();
    assert_eq!(kept["metadata"]["ownerReferences"], json!([]));
}

#[test]
fn foreground_deletion_waits_for_dependents() {
    let store = Store::new(1000);
    let (pods, jobs) = (info("pods"), info("jobs"));
    let job = create_owner_job(&store);
    let mut child = owned_by("child", &job);
    child["metadata"]["finalizers"] = json!(["test/hold"]);
    store.create(&pods, Some("default"), child, false).unwrap();
    let options = DeleteOptions {
        propagation: Propagation::Foreground,
        ..Default::default()
    };
    let owner = store
        .delete(&jobs, Some("default"), "owner", &options)
        .unwrap();
    assert_eq!(
        owner["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );
    let child = store.get(&pods, Some("default"), "child").unwrap();
    assert!(child["metadata"]["deletionTimestamp"].is_string());
    let mut released = child.clone();
    released["metadata"]["finalizers"] = json!([]);
    store
        .update(
            &pods,
            Some("default"),
            "child",
            released,
            Target::Main,
            false,
        )
        .unwrap();
    assert_eq!(
        store.get(&jobs, Some("default"), "owner").unwrap_err().code,
        404,
        "the owner goes once its dependents are gone"
    );
}

#[test]
fn deleting_a_namespace_deletes_what_is_in_it() {
    let store = Store::new(1000);
    let (pods, namespaces) = (info("pods"), info("namespaces"));
    store
        .create(
            &namespaces,
            None,
            json!({"metadata": {"name": "team"}}),
            false,
        )
        .unwrap();
    store.create(&pods, Some("team"), pod("p"), false).unwrap();
    store
        .delete(&namespaces, None, "team", &DeleteOptions::default())
        .unwrap();
    assert_eq!(store.get(&pods, Some("team"), "p").unwrap_err().code, 404);
    assert_eq!(store.get(&namespaces, None, "team").unwrap_err().code, 404);
}

#[test]
fn watches_resume_from_a_version_and_get_410_past_the_history() {
    let store = Store::new(3);
    let pods = info("pods");
    let first = store
        .create(&pods, Some("default"), pod("a"), false)
        .unwrap();
    store
        .create(&pods, Some("default"), pod("b"), false)
        .unwrap();
    let resumed = store.watch(&pods.id, Some(rv(&first))).unwrap();
    let names: Vec<&str> = resumed
        .backlog
        .iter()
        .map(|e| e.object["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["b"]);
    let mut live = resumed.live;
    store
        .delete(&pods, Some("default"), "a", &DeleteOptions::default())
        .unwrap();
    let event = live.try_recv().unwrap();
    assert_eq!(
        (event.kind, event.object["metadata"]["name"].as_str()),
        (EventType::Deleted, Some("a"))
    );

    for i in 0..5 {
        store
            .create(&pods, Some("default"), pod(&format!("p{i}")), false)
            .unwrap();
    }
    let gone = store.watch(&pods.id, Some(rv(&first))).err().unwrap();
    assert_eq!((gone.code, gone.reason), (410, "Expired"));
    let fresh = store.watch(&pods.id, None).unwrap();
    assert_eq!(
        fresh.backlog.len(),
        6,
        "a watch without a version starts with every object"
    );
    store.compact();
    assert_eq!(
        store
            .watch(&pods.id, Some(store.revision() - 1))
            .err()
            .unwrap()
            .code,
        410
    );
}

#[test]
fn lists_page_with_a_continue_key() {
    let store = Store::new(1000);
    let pods = info("pods");
    for i in 0..5 {
        store
            .create(&pods, Some("default"), pod(&format!("p{i}")), false)
            .unwrap();
    }
    let (page, _, next) = store.list(&pods, Some("default"), &|_| true, None, Some(2));
    assert_eq!(page.len(), 2);
    let (rest, _, end) = store.list(&pods, Some("default"), &|_| true, next.as_deref(), None);
    assert_eq!(rest.len(), 3);
    assert!(end.is_none());
}
