//! memkube spoken to by kube-rs: CRUD, conflicts, patches, the status subresource, CRDs,
//! finalizers, garbage collection, selectors, paging, tables, and watches that survive faults.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use memkube::{ErrorRule, MemKube};
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(20);

fn config_map(name: &str, labels: &[(&str, &str)], data: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>()},
        "data": {"value": data},
    }))
    .unwrap()
}

fn api_error(err: kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(status) => (status.code, status.reason),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn crud_conflicts_patches_and_selectors() {
    let server = MemKube::start().await.unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let created = maps
        .create(
            &PostParams::default(),
            &config_map("a", &[("app", "web")], "1"),
        )
        .await
        .unwrap();
    maps.create(
        &PostParams::default(),
        &config_map("b", &[("app", "api")], "2"),
    )
    .await
    .unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(
        api_error(
            maps.create(&PostParams::default(), &config_map("a", &[], "x"))
                .await
                .unwrap_err()
        ),
        (409, "AlreadyExists".into())
    );
    assert_eq!(
        api_error(maps.get("missing").await.unwrap_err()),
        (404, "NotFound".into())
    );

    let web = maps
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(web.items.len(), 1);
    let named = maps
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .unwrap();
    assert_eq!(named.items[0].metadata.name.as_deref(), Some("b"));
    let page = maps.list(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let rest = maps
        .list(&ListParams::default().continue_token(page.metadata.continue_.as_deref().unwrap()))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);

    let mut changed = created.clone();
    changed.data = Some([("value".to_string(), "2".to_string())].into());
    let replaced = maps
        .replace("a", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(
        api_error(
            maps.replace("a", &PostParams::default(), &changed)
                .await
                .unwrap_err()
        ),
        (409, "Conflict".into())
    );

    let merged = maps
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"extra": "yes"}})),
        )
        .await
        .unwrap();
    assert_eq!(merged.data.unwrap()["extra"], "yes");
    let patched = maps
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::<()>::Json(
                serde_json::from_value(
                    json!([{"op": "replace", "path": "/data/value", "value": "3"}]),
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["value"], "3");
    let applied = maps
        .patch("c", &PatchParams::apply("memkube-test").force(), &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"value": "applied"}})))
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["value"], "applied");
    let dry = maps
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &config_map("dry", &[], "x"),
        )
        .await
        .unwrap();
    assert_eq!(dry.metadata.name.as_deref(), Some("dry"));
    assert!(
        maps.get_opt("dry").await.unwrap().is_none(),
        "dry runs store nothing"
    );

    maps.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(maps.get_opt("a").await.unwrap().is_none());
}

#[tokio::test]
async fn status_subresource_generation_finalizers_and_garbage_collection() {
    let server = MemKube::start().await.unwrap();
    let jobs: Api<Job> = Api::namespaced(server.client(), "default");
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    let job: Job = serde_json::from_value(json!({"metadata": {"name": "j", "finalizers": ["test/keep"]}, "spec": {"suspend": true, "template": {"spec": {"containers": []}}}})).unwrap();
    let job = jobs.create(&PostParams::default(), &job).await.unwrap();
    let status = jobs
        .patch_status(
            "j",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"active": 1}, "spec": {"suspend": false}})),
        )
        .await
        .unwrap();
    assert_eq!(status.status.unwrap().active, Some(1));
    assert_eq!(
        status.spec.unwrap().suspend,
        Some(true),
        "a status write leaves spec alone"
    );
    let resumed = jobs
        .patch(
            "j",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": false}})),
        )
        .await
        .unwrap();
    assert_eq!(resumed.metadata.generation, Some(2));

    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "owned", "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": job.metadata.uid}]}})).unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    jobs.delete("j", &DeleteParams::default()).await.unwrap();
    let pending = jobs.get("j").await.unwrap();
    assert!(
        pending.metadata.deletion_timestamp.is_some(),
        "a pending finalizer only marks the job"
    );
    jobs.patch(
        "j",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(
        jobs.get_opt("j").await.unwrap().is_none(),
        "removing the last finalizer deletes it"
    );
    assert!(
        pods.get_opt("owned").await.unwrap().is_none(),
        "its pod was garbage-collected"
    );
}

/// Creates widget "w" of `size` in "default" (the widget CRD must exist) and returns its API.
async fn create_widget(client: &kube::Client, size: i64) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.dev", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let widget: DynamicObject = serde_json::from_value(
        json!({"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": size}}),
    )
    .unwrap();
    widgets
        .create(&PostParams::default(), &widget)
        .await
        .unwrap();
    widgets
}

fn widget_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.dev"},
        "spec": {
            "group": "example.dev", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            }],
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn a_crd_serves_its_resources_at_once_and_takes_them_away_when_deleted() {
    let server = MemKube::start().await.unwrap();
    let client = server.client();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &widget_crd())
        .await
        .unwrap();
    let established = crds.get("widgets.example.dev").await.unwrap();
    let conditions = established.status.unwrap().conditions.unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );

    let widgets = create_widget(&client, 3).await;
    widgets
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": true}})),
        )
        .await
        .unwrap();
    let stored = widgets.get("w").await.unwrap();
    assert_eq!(stored.data["status"]["ready"], true);
    assert_eq!(
        stored.metadata.generation,
        Some(1),
        "status writes do not bump generation"
    );

    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .unwrap();
    let (found, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("example.dev", "v1", "Widget"))
        .expect("discovered");
    assert_eq!(found.plural, "widgets");
    assert!(
        caps.subresources
            .iter()
            .any(|(sub, _)| sub.plural == "widgets/status" || sub.plural == "status")
    );

    crds.delete("widgets.example.dev", &DeleteParams::default())
        .await
        .unwrap();
    let gone = widgets.get("w").await.unwrap_err();
    assert_eq!(api_error(gone).0, 404);
}

#[tokio::test]
async fn a_watcher_sees_every_change_across_dropped_watches_errors_and_410() {
    let server = MemKube::start().await.unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let (reader, writer) = kube::runtime::reflector::store::<ConfigMap>();
    let stream =
        kube::runtime::reflector(writer, watcher(maps.clone(), watcher::Config::default()))
            .applied_objects();
    let watching = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while stream.next().await.is_some() {}
    });
    for round in 0..60 {
        let name = format!("cm-{}", round % 20);
        match maps.get_opt(&name).await.unwrap() {
            None => {
                maps.create(
                    &PostParams::default(),
                    &config_map(&name, &[], &round.to_string()),
                )
                .await
                .unwrap();
            }
            Some(_) => {
                maps.patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"value": round.to_string()}})),
                )
                .await
                .unwrap();
            }
        }
        match round {
            15 => server.faults().close_watches(),
            30 => {
                server.store().compact();
                server.faults().close_watches();
            }
            45 => {
                server.faults().inject(ErrorRule {
                    code: 500,
                    count: 2,
                    verb: Some("watch".into()),
                    resource: None,
                });
                server.faults().inject(ErrorRule {
                    code: 429,
                    count: 1,
                    verb: Some("list".into()),
                    resource: None,
                });
                server.faults().close_watches();
            }
            _ => {}
        }
    }
    maps.delete("cm-0", &DeleteParams::default()).await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let state = reader.state();
        let values: BTreeMap<String, String> = state
            .iter()
            .map(|cm| {
                (
                    cm.metadata.name.clone().unwrap(),
                    cm.data.as_ref().unwrap()["value"].clone(),
                )
            })
            .collect();
        let expected: BTreeMap<String, String> = (1..20)
            .map(|i| (format!("cm-{i}"), (40 + i).to_string()))
            .collect();
        if values == expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watcher's view never caught up: {values:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watching.abort();
}

#[tokio::test]
async fn tables_render_printer_columns() {
    let server = MemKube::start().await.unwrap();
    let client = server.client();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &widget_crd())
        .await
        .unwrap();
    create_widget(&client, 7).await;
    // As kubectl asks for it.
    let request = http::Request::get("/apis/example.dev/v1/namespaces/default/widgets")
        .header(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .body(Vec::new())
        .unwrap();
    let table: serde_json::Value = client.request(request).await.unwrap();
    let names: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["Name", "Size", "Age"]);
    assert_eq!(table["rows"][0]["cells"][0], "w");
    assert_eq!(table["rows"][0]["cells"][1], 7);
}

fn gadget_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.dev"},
        "spec": {
            "group": "example.dev", "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                    "type": "object", "required": ["mode"],
                    "properties": {
                        "mode": {"type": "string", "enum": ["Solo", "Shared"]},
                        "slots": {"type": "integer", "minimum": 1},
                        "retries": {"type": "integer", "default": 3},
                    },
                    "x-kubernetes-validations": [{"rule": "self.mode == 'Shared' || !has(self.slots)", "message": "slots only with mode Shared"}],
                }}}},
            }],
        },
    }))
    .unwrap()
}

#[tokio::test]
async fn crd_schemas_default_prune_and_refuse_bad_objects_naming_the_field() {
    let server = MemKube::start().await.unwrap();
    let client = server.client();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &gadget_crd())
        .await
        .unwrap();
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.dev", "v1", "Gadget"),
        "gadgets",
    );
    let gadgets: Api<DynamicObject> = Api::namespaced_with(client, "default", &resource);
    let gadget = |name: &str, spec: serde_json::Value| -> DynamicObject {
        serde_json::from_value(json!({"apiVersion": "example.dev/v1", "kind": "Gadget", "metadata": {"name": name}, "spec": spec})).unwrap()
    };

    let stored = gadgets
        .create(
            &PostParams::default(),
            &gadget("ok", json!({"mode": "Shared", "slots": 2, "colour": "red"})),
        )
        .await
        .unwrap();
    assert_eq!(stored.data["spec"]["retries"], 3, "default filled in");
    assert!(
        stored.data["spec"].get("colour").is_none(),
        "unknown field pruned"
    );

    let refused = [
        (json!({"slots": 2}), "spec.mode: Required value"),
        (
            json!({"mode": "Duo"}),
            "spec.mode: Unsupported value: \"Duo\"",
        ),
        (
            json!({"mode": "Shared", "slots": 0}),
            "spec.slots in body should be greater than or equal to 1",
        ),
        (
            json!({"mode": "Solo", "slots": 2}),
            "slots only with mode Shared",
        ),
    ];
    for (spec, expected) in refused {
        let err = gadgets
            .create(&PostParams::default(), &gadget("bad", spec.clone()))
            .await
            .unwrap_err();
        let kube::Error::Api(status) = err else {
            panic!("expected an API error for {spec}")
        };
        assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
        assert!(
            status.message.contains(expected),
            "{spec}: {:?} should say {expected:?}",
            status.message
        );
    }
    // A patch that breaks the schema is refused too, and leaves the object as it was.
    let err = gadgets
        .patch(
            "ok",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"slots": "many"}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (422, "Invalid".into()));
    assert_eq!(gadgets.get("ok").await.unwrap().data["spec"]["slots"], 2);
    // fieldValidation=Strict turns an unknown field into a 400 naming it.
    let err = gadgets
        .patch(
            "ok",
            &PatchParams::default().validation_strict(),
            &Patch::Merge(json!({"spec": {"colour": "blue"}})),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error")
    };
    assert_eq!(status.code, 400);
    assert!(status.message.contains("unknown field \"spec.colour\""));
}

#[tokio::test]
async fn a_selective_watch_sees_objects_enter_and_leave_its_selection() {
    let server = MemKube::start().await.unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let events = maps
        .watch(&kube::api::WatchParams::default().labels("app=web"), "0")
        .await
        .unwrap()
        .boxed();
    maps.create(
        &PostParams::default(),
        &config_map("m", &[("app", "api")], "1"),
    )
    .await
    .unwrap();
    let relabel = |app: &str| Patch::Merge(json!({"metadata": {"labels": {"app": app}}}));
    maps.patch("m", &PatchParams::default(), &relabel("web"))
        .await
        .unwrap();
    maps.patch(
        "m",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"value": "2"}})),
    )
    .await
    .unwrap();
    maps.patch("m", &PatchParams::default(), &relabel("api"))
        .await
        .unwrap();
    let described = events.filter_map(|event| async move {
        let (kind, map) = match event.unwrap() {
            kube::api::WatchEvent::Added(map) => ("ADDED", map),
            kube::api::WatchEvent::Modified(map) => ("MODIFIED", map),
            kube::api::WatchEvent::Deleted(map) => ("DELETED", map),
            kube::api::WatchEvent::Bookmark(_) => return None,
            kube::api::WatchEvent::Error(err) => panic!("watch error {err:?}"),
        };
        Some(format!("{kind} {}", map.data.unwrap()["value"]))
    });
    let seen: Vec<String> = tokio::time::timeout(PATIENCE, described.take(3).collect())
        .await
        .expect("three watch events in time");
    assert_eq!(seen, ["ADDED 1", "MODIFIED 2", "DELETED 2"]);

    let refused = server
        .client()
        .request_text(
            http::Request::get("/api/v1/configmaps?watch=1&sendInitialEvents=true")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(refused).0, 422, "watch-list streams are refused");
}

/// What the controller below saw: per ConfigMap, its value and the phases of its owned pods.
type Seen = std::sync::Arc<std::sync::Mutex<BTreeMap<String, (String, Vec<String>)>>>;

#[tokio::test]
async fn a_controller_keeps_reconciling_across_a_watch_drop_and_a_410() {
    use kube::runtime::controller::{Action, Controller};
    use kube::{Resource, ResourceExt};
    use std::sync::Arc;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Failure(#[from] kube::Error);

    struct Context {
        pods: Api<Pod>,
        seen: Seen,
    }

    async fn reconcile(map: Arc<ConfigMap>, context: Arc<Context>) -> Result<Action, Failure> {
        let owned = context
            .pods
            .list(&ListParams::default().labels(&format!("owner={}", map.name_any())))
            .await?;
        let phases = owned
            .items
            .iter()
            .map(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default()
            })
            .collect();
        let value = map.data.as_ref().unwrap()["value"].clone();
        context
            .seen
            .lock()
            .unwrap()
            .insert(map.name_any(), (value, phases));
        Ok(Action::await_change())
    }

    fn retry(_: Arc<ConfigMap>, _: &Failure, _: Arc<Context>) -> Action {
        Action::requeue(Duration::from_millis(100))
    }

    let server = MemKube::start().await.unwrap();
    let client = server.client();
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let seen = Seen::default();
    let context = Arc::new(Context {
        pods: pods.clone(),
        seen: seen.clone(),
    });
    let controller = tokio::spawn(
        Controller::new(maps.clone(), watcher::Config::default())
            .owns(pods.clone(), watcher::Config::default())
            .run(reconcile, retry, context)
            .for_each(|_| async {}),
    );
    let wait_for = |expected: BTreeMap<String, (String, Vec<String>)>| {
        let seen = seen.clone();
        async move {
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while *seen.lock().unwrap() != expected {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the controller never saw {expected:?}; it saw {:?}",
                    seen.lock().unwrap()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let entry = |name: &str, value: &str, phases: &[&str]| {
        (
            name.to_string(),
            (
                value.to_string(),
                phases.iter().map(|p| p.to_string()).collect(),
            ),
        )
    };

    let a = maps
        .create(&PostParams::default(), &config_map("a", &[], "1"))
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "a-worker", "labels": {"owner": "a"}, "ownerReferences": [a.controller_owner_ref(&()).unwrap()]},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
        "status": {"phase": "Pending"},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    wait_for(BTreeMap::from([entry("a", "1", &["Pending"])])).await;

    // Every watch is cut; changes made meanwhile still reach the controller.
    server.faults().close_watches();
    let set_phase = |phase: &str| Patch::Merge(json!({"status": {"phase": phase}}));
    pods.patch_status("a-worker", &PatchParams::default(), &set_phase("Running"))
        .await
        .unwrap();
    maps.create(&PostParams::default(), &config_map("b", &[], "1"))
        .await
        .unwrap();
    wait_for(BTreeMap::from([
        entry("a", "1", &["Running"]),
        entry("b", "1", &[]),
    ]))
    .await;

    // History compacted and watches cut: the resumes get 410 and the controller relists.
    server.store().compact();
    server.faults().close_watches();
    pods.patch_status("a-worker", &PatchParams::default(), &set_phase("Succeeded"))
        .await
        .unwrap();
    maps.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"value": "2"}})),
    )
    .await
    .unwrap();
    wait_for(BTreeMap::from([
        entry("a", "1", &["Succeeded"]),
        entry("b", "2", &[]),
    ]))
    .await;
    controller.abort();
}

#[tokio::test]
async fn server_side_apply_tracks_field_managers() {
    let server = MemKube::start().await.unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let config = |data: serde_json::Value| {
        Patch::Apply(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared"}, "data": data}),
        )
    };
    maps.patch(
        "shared",
        &PatchParams::apply("one"),
        &config(json!({"a": "1", "b": "1"})),
    )
    .await
    .unwrap();
    let err = maps
        .patch(
            "shared",
            &PatchParams::apply("two"),
            &config(json!({"a": "2"})),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected a conflict")
    };
    assert_eq!(status.code, 409);
    assert!(
        status.message.contains("conflict with \"one\": .data.a"),
        "{}",
        status.message
    );
    maps.patch(
        "shared",
        &PatchParams::apply("two").force(),
        &config(json!({"a": "2"})),
    )
    .await
    .unwrap();
    // "one" stops setting both fields: b goes, a stays because "two" owns it now.
    let left = maps
        .patch("shared", &PatchParams::apply("one"), &config(json!({})))
        .await
        .unwrap();
    assert_eq!(
        left.data.unwrap(),
        BTreeMap::from([("a".to_string(), "2".to_string())])
    );
    let managers: Vec<String> = left
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .filter_map(|entry| entry.manager.clone())
        .collect();
    assert_eq!(managers, ["two"]);

    // A resourceVersion in the configuration is a precondition.
    let stale = Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "shared", "resourceVersion": "1"}, "data": {"a": "3"}}));
    let err = maps
        .patch("shared", &PatchParams::apply("two"), &stale)
        .await
        .unwrap_err();
    assert_eq!(api_error(err), (409, "Conflict".into()));
}

#[tokio::test]
async fn events_recorded_through_events_k8s_io_are_core_events_too() {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let server = MemKube::start().await.unwrap();
    let client = server.client();
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let map = maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "settings"}})).unwrap(),
        )
        .await
        .unwrap();
    let recorder = Recorder::new(client.clone(), Reporter::from("memkube-test"));
    let event = Event {
        type_: EventType::Warning,
        reason: "Lost".into(),
        note: Some("the grant was lost".into()),
        action: "Lost".into(),
        secondary: None,
    };
    let reference = kube::Resource::object_ref(&map, &());
    recorder.publish(&event, &reference).await.unwrap();
    // The same event again becomes a series (a patch through events.k8s.io).
    recorder.publish(&event, &reference).await.unwrap();

    // What `kubectl describe configmap settings` asks for.
    let core: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client, "default");
    let selector = "involvedObject.name=settings,involvedObject.kind=ConfigMap";
    let events = core
        .list(&ListParams::default().fields(selector))
        .await
        .unwrap()
        .items;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.reason.as_deref(), Some("Lost"));
    assert_eq!(event.message.as_deref(), Some("the grant was lost"));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.count, Some(2), "the series count");
    assert_eq!(
        event.source.as_ref().and_then(|s| s.component.as_deref()),
        Some("memkube-test")
    );
    server.stop().await;
}
