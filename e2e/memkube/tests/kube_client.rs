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
