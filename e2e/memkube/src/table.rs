//! Server-side tables (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), so that
//! `kubectl get` shows a CRD's printer columns as it would on a real cluster.

use axum::http::{HeaderMap, header};
use serde_json::{Value, json};

use crate::resources::ResourceInfo;

pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("as=Table"))
}

/// Evaluates the JSONPath subset printer columns use: `.a.b`, `.a[0].b`, `.a[*].b`.
pub fn json_path(object: &Value, path: &str) -> Vec<Value> {
    let mut current = vec![object.clone()];
    let path = path
        .trim()
        .trim_start_matches('$')
        .trim_start_matches('{')
        .trim_end_matches('}');
    for step in path.split('.').filter(|s| !s.is_empty()) {
        let (field, index) = match step.split_once('[') {
            Some((field, rest)) => (field, Some(rest.trim_end_matches(']'))),
            None => (step, None),
        };
        current = current
            .into_iter()
            .flat_map(|node| {
                let value = if field.is_empty() {
                    node
                } else {
                    node.get(field).cloned().unwrap_or(Value::Null)
                };
                match (index, value) {
                    (None, value) => vec![value],
                    (Some("*"), Value::Array(items)) => items,
                    (Some(i), Value::Array(items)) => i
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| items.get(i).cloned())
                        .into_iter()
                        .collect(),
                    (Some(_), _) => Vec::new(),
                }
            })
            .filter(|v| !v.is_null())
            .collect();
    }
    current
}

fn cell(values: &[Value], column_type: &str) -> Value {
    let text: Vec<String> = values
        .iter()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    match (values, column_type) {
        ([], _) => json!(null),
        ([Value::Number(n)], "integer" | "number") => json!(n),
        _ => json!(text.join(",")),
    }
}

fn age(created: Option<&str>) -> String {
    let Some(created) = created.and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok()) else {
        return "<unknown>".into();
    };
    let seconds = (chrono::Utc::now() - created.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A `meta.k8s.io/v1` Table of `objects`: Name, the resource's printer columns, Age.
pub fn render(info: &ResourceInfo, objects: &[Value], revision: Option<u64>) -> Value {
    let mut definitions = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name of the object", "priority": 0}),
    ];
    let mut has_age_column = false;
    for column in &info.printer_columns {
        has_age_column |= column["jsonPath"].as_str() == Some(".metadata.creationTimestamp");
        definitions.push(json!({
            "name": column["name"], "type": column["type"].as_str().unwrap_or("string"),
            "format": column["format"].as_str().unwrap_or(""), "description": column["description"].as_str().unwrap_or(""),
            "priority": column["priority"].as_i64().unwrap_or(0),
        }));
    }
    if !has_age_column {
        definitions.push(json!({"name": "Age", "type": "string", "format": "", "description": "Time since creation", "priority": 0}));
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|object| {
            let mut cells = vec![object["metadata"]["name"].clone()];
            for column in &info.printer_columns {
                let path = column["jsonPath"].as_str().unwrap_or_default();
                let values = json_path(object, path);
                cells.push(if column["type"].as_str() == Some("date") {
                    values.first().and_then(|v| v.as_str()).map(|c| json!(age(Some(c)))).unwrap_or(json!(null))
                } else {
                    cell(&values, column["type"].as_str().unwrap_or("string"))
                });
            }
            if !has_age_column {
                cells.push(json!(age(object["metadata"]["creationTimestamp"].as_str())));
            }
            let partial = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]});
            json!({"cells": cells, "object": partial})
        })
        .collect();
    let mut metadata = json!({});
    if let Some(revision) = revision {
        metadata["resourceVersion"] = json!(revision.to_string());
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": definitions, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_path_handles_the_printer_column_subset() {
        let object = json!({"spec": {"type": "Mutex"}, "status": {"holders": [{"claim": "a"}, {"claim": "b"}], "waiting": 3}});
        assert_eq!(json_path(&object, ".spec.type"), vec![json!("Mutex")]);
        assert_eq!(
            json_path(&object, ".status.holders[*].claim"),
            vec![json!("a"), json!("b")]
        );
        assert_eq!(
            json_path(&object, ".status.holders[1].claim"),
            vec![json!("b")]
        );
        assert_eq!(json_path(&object, ".status.missing"), Vec::<Value>::new());
        assert_eq!(
            cell(&json_path(&object, ".status.waiting"), "integer"),
            json!(3)
        );
        assert_eq!(
            cell(&json_path(&object, ".status.holders[*].claim"), "string"),
            json!("a,b")
        );
    }
}
