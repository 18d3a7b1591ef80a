//! The slice of OpenAPI v3 that kubectl reads before `apply`: per group-version documents
//! whose PATCH operations name their kind and accept `fieldValidation`, so kubectl leaves
//! validation to the server (which memkube does from CRD schemas) instead of downloading
//! full schemas. No type schemas are served.

use serde_json::{Value, json};

use crate::api_error::ApiError;
use crate::resources::Registry;

/// `api/v1`, `apis/group/version` for every served group-version.
fn group_versions(registry: &Registry) -> Vec<(String, String, String)> {
    let mut seen: Vec<(String, String, String)> = Vec::new();
    for resource in registry.all() {
        let key = if resource.id.group.is_empty() {
            format!("api/{}", resource.version)
        } else {
            format!("apis/{}/{}", resource.id.group, resource.version)
        };
        if !seen.iter().any(|(k, _, _)| *k == key) {
            seen.push((key, resource.id.group.clone(), resource.version.clone()));
        }
    }
    seen
}

/// `GET /openapi/v3`: where each group-version's document is.
pub fn index(registry: &Registry) -> Value {
    let paths: serde_json::Map<String, Value> = group_versions(registry)
        .into_iter()
        .map(|(key, _, _)| {
            (
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}")}),
            )
        })
        .collect();
    json!({ "paths": paths })
}

/// `GET /openapi/v3/{api/v1 | apis/group/version}`.
pub fn document(registry: &Registry, key: &str) -> Result<Value, ApiError> {
    let (_, group, version) = group_versions(registry)
        .into_iter()
        .find(|(k, _, _)| k == key)
        .ok_or_else(|| ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("no OpenAPI document for {key}"),
            details: None,
        })?;
    let mut paths = serde_json::Map::new();
    for resource in registry
        .all()
        .iter()
        .filter(|r| r.id.group == group && r.version == version)
    {
        let scope = if resource.namespaced {
            "namespaces/{namespace}/"
        } else {
            ""
        };
        let path = format!("/{key}/{scope}{}/{{name}}", resource.id.plural);
        paths.insert(
            path,
            json!({"patch": {
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": resource.kind},
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}],
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    Ok(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0-memkube"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
