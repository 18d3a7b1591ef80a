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

/// A column computed from the whole object, as kube-apiserver's printers do for built-ins.
struct BuiltinColumn {
    name: &'static str,
    column_type: &'static str,
    cell: fn(&Value) -> Value,
}

fn pod_ready(pod: &Value) -> Value {
    let total = pod["spec"]["containers"].as_array().map_or(0, Vec::len);
    let statuses = pod["status"]["containerStatuses"].as_array();
    let ready = statuses.map_or(0, |s| s.iter().filter(|c| c["ready"] == true).count());
    json!(format!("{ready}/{total}"))
}

fn pod_status(pod: &Value) -> Value {
    if pod["metadata"]["deletionTimestamp"].is_string() {
        return json!("Terminating");
    }
    let status = &pod["status"];
    json!(
        status["reason"]
            .as_str()
            .or(status["phase"].as_str())
            .unwrap_or("Pending")
    )
}

fn pod_restarts(pod: &Value) -> Value {
    let statuses = pod["status"]["containerStatuses"].as_array();
    json!(statuses.map_or(0, |s| {
        s.iter()
            .filter_map(|c| c["restartCount"].as_i64())
            .sum::<i64>()
    }))
}

fn job_status(job: &Value) -> Value {
    let condition = |kind: &str| {
        job["status"]["conditions"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["type"] == kind && c["status"] == "True"))
    };
    json!(if condition("Complete") {
        "Complete"
    } else if condition("Failed") {
        "Failed"
    } else if job["spec"]["suspend"] == true {
        "Suspended"
    } else {
        "Running"
    })
}

fn job_completions(job: &Value) -> Value {
    let wanted = job["spec"]["completions"].as_i64().unwrap_or(1);
    json!(format!(
        "{}/{wanted}",
        job["status"]["succeeded"].as_i64().unwrap_or(0)
    ))
}

fn job_duration(job: &Value) -> Value {
    let time = |field: &str| {
        job["status"][field]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    match (time("startTime"), time("completionTime")) {
        (Some(start), Some(end)) => json!(duration((end - start).num_seconds())),
        (Some(start), None) => json!(duration(
            (chrono::Utc::now() - start.with_timezone(&chrono::Utc)).num_seconds()
        )),
        _ => json!(""),
    }
}

fn event_object(event: &Value) -> Value {
    let object = if event["involvedObject"].is_object() {
        &event["involvedObject"]
    } else {
        &event["regarding"]
    };
    json!(format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or_default().to_lowercase(),
        object["name"].as_str().unwrap_or_default()
    ))
}

fn event_last_seen(event: &Value) -> Value {
    let seen = ["lastTimestamp", "eventTime", "firstTimestamp"]
        .iter()
        .find_map(|field| event[*field].as_str())
        .or(event["metadata"]["creationTimestamp"].as_str());
    json!(age(seen))
}

/// The default columns of the built-ins the project shows with `kubectl get`.
fn builtin_columns(info: &ResourceInfo) -> Option<Vec<BuiltinColumn>> {
    let column = |name, column_type, cell| BuiltinColumn {
        name,
        column_type,
        cell,
    };
    let columns = match (info.id.group.as_str(), info.id.plural.as_str()) {
        ("", "pods") => vec![
            column("Ready", "string", pod_ready as fn(&Value) -> Value),
            column("Status", "string", pod_status),
            column("Restarts", "integer", pod_restarts),
        ],
        ("batch", "jobs") => vec![
            column("Status", "string", job_status as fn(&Value) -> Value),
            column("Completions", "string", job_completions),
            column("Duration", "string", job_duration),
        ],
        ("", "namespaces") => vec![column("Status", "string", |ns: &Value| {
            json!(ns["status"]["phase"].as_str().unwrap_or("Active"))
        })],
        ("coordination.k8s.io", "leases") => vec![column("Holder", "string", |lease: &Value| {
            json!(lease["spec"]["holderIdentity"].as_str().unwrap_or_default())
        })],
        ("", "events") | ("events.k8s.io", "events") => vec![
            column(
                "Last Seen",
                "string",
                event_last_seen as fn(&Value) -> Value,
            ),
            column("Type", "string", |e: &Value| e["type"].clone()),
            column("Reason", "string", |e: &Value| e["reason"].clone()),
            column("Object", "string", event_object),
            column("Message", "string", |e: &Value| {
                json!(
                    e["message"]
                        .as_str()
                        .or(e["note"].as_str())
                        .unwrap_or_default()
                )
            }),
        ],
        _ => return None,
    };
    Some(columns)
}

fn duration(seconds: i64) -> String {
    match seconds.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

fn definition(
    name: &Value,
    column_type: &str,
    format: &str,
    description: &str,
    priority: i64,
) -> Value {
    json!({"name": name, "type": column_type, "format": format, "description": description, "priority": priority})
}

/// A `meta.k8s.io/v1` Table of `objects`: Name, the resource's printer columns (a CRD's
/// `additionalPrinterColumns`, or a built-in's default columns), Age.
pub fn render(info: &ResourceInfo, objects: &[Value], revision: Option<u64>) -> Value {
    let builtin = builtin_columns(info).unwrap_or_default();
    let mut definitions = vec![definition(
        &json!("Name"),
        "string",
        "name",
        "Name of the object",
        0,
    )];
    let mut has_age_column = info.id.plural == "events";
    for column in &info.printer_columns {
        has_age_column |= column["jsonPath"].as_str() == Some(".metadata.creationTimestamp");
        definitions.push(definition(
            &column["name"],
            column["type"].as_str().unwrap_or("string"),
            column["format"].as_str().unwrap_or(""),
            column["description"].as_str().unwrap_or(""),
            column["priority"].as_i64().unwrap_or(0),
        ));
    }
    for column in &builtin {
        definitions.push(definition(
            &json!(column.name),
            column.column_type,
            "",
            "",
            0,
        ));
    }
    if !has_age_column {
        definitions.push(definition(
            &json!("Age"),
            "string",
            "",
            "Time since creation",
            0,
        ));
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
            cells.extend(builtin.iter().map(|column| (column.cell)(object)));
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
    fn built_ins_get_their_default_columns() {
        let builtins = crate::resources::builtins();
        let find = |plural: &str| {
            builtins
                .iter()
                .find(|r| r.id.plural == plural)
                .expect("served")
        };
        let pods = find("pods");
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "containerStatuses": [{"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1}]}});
        let table = render(pods, &[pod], None);
        let names: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Name", "Ready", "Status", "Restarts", "Age"]);
        assert_eq!(
            table["rows"][0]["cells"],
            json!(["p", "1/2", "Running", 3, age(Some("2020-01-01T00:00:00Z"))])
        );
        let jobs = find("jobs");
        let job = json!({"metadata": {"name": "j"}, "spec": {"suspend": true}});
        let cells = render(jobs, &[job], None)["rows"][0]["cells"].clone();
        assert_eq!(
            cells.as_array().unwrap()[1..4],
            [json!("Suspended"), json!("0/1"), json!("")]
        );
    }

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
