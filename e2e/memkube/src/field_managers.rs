//! Field ownership for server-side apply, kept in `metadata.managedFields` (FieldsV1) as a
//! real API server keeps it:
//!
//! - an apply by manager M sets the fields in M's configuration; a field owned by another
//!   manager with a different value is a conflict (409) unless `force` takes it over;
//! - a field M applied before and leaves out now is removed, unless another manager owns it;
//! - other writes (create, update, patch) hand the fields they change to their manager.
//!
//! Lists are atomic (the default for CRD lists): a list is one field, owned and replaced whole.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// A field: the keys leading to it from the root of the object.
type Field = Vec<String>;

const APPLY: &str = "Apply";
const UPDATE: &str = "Update";

/// A field owned by another manager that an apply would change.
#[derive(Debug, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub field: String,
}

impl Conflict {
    /// The message of the 409, as kube-apiserver words it.
    pub fn message(conflicts: &[Conflict]) -> String {
        let listed: Vec<String> = conflicts
            .iter()
            .map(|c| format!("conflict with \"{}\": {}", c.manager, c.field))
            .collect();
        format!(
            "Apply failed with {} conflict{}: {}",
            conflicts.len(),
            if conflicts.len() == 1 { "" } else { "s" },
            listed.join("; ")
        )
    }
}

/// The 409 a refused apply gets.
impl From<Vec<Conflict>> for crate::api_error::ApiError {
    fn from(conflicts: Vec<Conflict>) -> Self {
        crate::api_error::ApiError::apply_conflict(&Conflict::message(&conflicts))
    }
}

/// The fields a configuration sets. `metadata` contributes only labels and annotations.
fn fields_of(config: &Value) -> BTreeSet<Field> {
    let mut found = BTreeSet::new();
    if let Some(top) = config.as_object() {
        for (key, value) in top {
            match key.as_str() {
                "apiVersion" | "kind" => {}
                "metadata" => {
                    for part in ["labels", "annotations"] {
                        collect(
                            &value[part],
                            vec!["metadata".into(), part.into()],
                            &mut found,
                        );
                    }
                }
                _ => collect(value, vec![key.clone()], &mut found),
            }
        }
    }
    found.retain(|field| !field.is_empty());
    found
}

fn collect(value: &Value, at: Field, found: &mut BTreeSet<Field>) {
    match value {
        // An empty object sets nothing; a null asks for nothing either.
        Value::Null => {}
        Value::Object(children) => {
            for (key, child) in children {
                let mut next = at.clone();
                next.push(key.clone());
                collect(child, next, found);
            }
        }
        _ => {
            found.insert(at);
        }
    }
}

fn value_at<'a>(object: &'a Value, field: &[String]) -> Option<&'a Value> {
    field.iter().try_fold(object, |node, key| node.get(key))
}

fn remove_at(object: &mut Value, field: &[String]) {
    let Some((last, parents)) = field.split_last() else {
        return;
    };
    let mut node = object;
    for key in parents {
        match node.get_mut(key) {
            Some(child) => node = child,
            None => return,
        }
    }
    if let Some(map) = node.as_object_mut() {
        map.remove(last);
    }
}

fn set_at(object: &mut Value, field: &[String], value: Value) {
    let Some((last, parents)) = field.split_last() else {
        return;
    };
    let mut node = object;
    for key in parents {
        if !node[key.as_str()].is_object() {
            node[key.as_str()] = json!({});
        }
        node = node.get_mut(key).expect("just made");
    }
    node[last.as_str()] = value;
}

fn dotted(field: &[String]) -> String {
    field.iter().map(|k| format!(".{k}")).collect()
}

/// FieldsV1: `{"f:spec": {"f:size": {}}}`.
fn to_fields_v1(fields: &BTreeSet<Field>) -> Value {
    let mut root = json!({});
    for field in fields {
        let mut node = &mut root;
        for key in field {
            let slot = format!("f:{key}");
            if !node[&slot].is_object() {
                node[&slot] = json!({});
            }
            node = node.get_mut(&slot).expect("just made");
        }
    }
    root
}

fn from_fields_v1(value: &Value) -> BTreeSet<Field> {
    fn walk(value: &Value, at: &mut Field, found: &mut BTreeSet<Field>) {
        let children: Vec<(&String, &Value)> = value
            .as_object()
            .map(|m| m.iter().filter(|(k, _)| k.starts_with("f:")).collect())
            .unwrap_or_default();
        if children.is_empty() {
            if !at.is_empty() {
                found.insert(at.clone());
            }
            return;
        }
        for (key, child) in children {
            at.push(key["f:".len()..].to_string());
            walk(child, at, found);
            at.pop();
        }
    }
    let mut found = BTreeSet::new();
    walk(value, &mut Vec::new(), &mut found);
    found
}

/// One `managedFields` entry, decoded.
struct Entry {
    manager: String,
    operation: String,
    subresource: String,
    fields: BTreeSet<Field>,
    raw: Map<String, Value>,
}

fn entries(object: &Value) -> Vec<Entry> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let raw = entry.as_object()?.clone();
            Some(Entry {
                manager: entry["manager"].as_str().unwrap_or_default().to_string(),
                operation: entry["operation"].as_str().unwrap_or(UPDATE).to_string(),
                subresource: entry["subresource"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                fields: from_fields_v1(&entry["fieldsV1"]),
                raw,
            })
        })
        .collect()
}

fn store_entries(object: &mut Value, entries: Vec<Entry>, api_version: &str) {
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let encoded: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut raw = e.raw;
            raw.insert("manager".into(), json!(e.manager));
            raw.insert("operation".into(), json!(e.operation));
            raw.entry("apiVersion").or_insert(json!(api_version));
            raw.entry("time").or_insert(json!(now));
            raw.insert("fieldsType".into(), json!("FieldsV1"));
            raw.insert("fieldsV1".into(), to_fields_v1(&e.fields));
            if e.subresource.is_empty() {
                raw.remove("subresource");
            } else {
                raw.insert("subresource".into(), json!(e.subresource));
            }
            Value::Object(raw)
        })
        .collect();
    if encoded.is_empty() {
        if let Some(metadata) = object["metadata"].as_object_mut() {
            metadata.remove("managedFields");
        }
    } else {
        object["metadata"]["managedFields"] = Value::Array(encoded);
    }
}

/// Who makes a write and how.
pub struct Writer<'a> {
    pub manager: &'a str,
    /// "" for the main resource, "status" for the status subresource.
    pub subresource: &'a str,
    pub api_version: String,
}

/// Server-side apply of `config` by `writer` onto `current`: the object to store, or the
/// conflicts that stop it.
pub fn apply(
    current: &Value,
    config: &Value,
    writer: &Writer,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let applied = fields_of(config);
    let mut owners = entries(current);
    let mut conflicts = Vec::new();
    for entry in owners.iter_mut().filter(|e| e.manager != writer.manager) {
        let contested: Vec<Field> = entry
            .fields
            .iter()
            .filter(|field| {
                applied.contains(*field) && value_at(current, field) != value_at(config, field)
            })
            .cloned()
            .collect();
        if force {
            for field in &contested {
                entry.fields.remove(field);
            }
        } else {
            conflicts.extend(contested.iter().map(|field| Conflict {
                manager: entry.manager.clone(),
                field: dotted(field),
            }));
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    let mut next = current.clone();
    let mine = |e: &Entry| {
        e.manager == writer.manager && e.operation == APPLY && e.subresource == writer.subresource
    };
    let previously: BTreeSet<Field> = owners
        .iter()
        .filter(|e| mine(e))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let owned_by_others: BTreeSet<Field> = owners
        .iter()
        .filter(|e| !mine(e))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    for dropped in previously.difference(&applied) {
        if !owned_by_others.contains(dropped) {
            remove_at(&mut next, dropped);
        }
    }
    for field in &applied {
        if let Some(value) = value_at(config, field) {
            set_at(&mut next, field, value.clone());
        }
    }
    owners.retain(|e| !mine(e));
    owners.push(Entry {
        manager: writer.manager.to_string(),
        operation: APPLY.into(),
        subresource: writer.subresource.to_string(),
        fields: applied,
        raw: Map::new(),
    });
    store_entries(&mut next, owners, &writer.api_version);
    Ok(next)
}

/// A create, update or patch: the fields it sets or changes pass to `writer`'s Update entry.
/// `before` is `None` for a create.
pub fn record_update(before: Option<&Value>, after: &mut Value, writer: &Writer) {
    let empty = json!({});
    let old = before.unwrap_or(&empty);
    let changed: BTreeSet<Field> = fields_of(after)
        .into_iter()
        .filter(|field| value_at(old, field) != value_at(after, field))
        .collect();
    let mut owners = entries(before.unwrap_or(after));
    if changed.is_empty() {
        store_entries(after, owners, &writer.api_version);
        return;
    }
    for entry in &mut owners {
        entry.fields.retain(|field| !changed.contains(field));
    }
    let position = owners.iter().position(|e| {
        e.manager == writer.manager && e.operation == UPDATE && e.subresource == writer.subresource
    });
    let entry = match position {
        Some(index) => &mut owners[index],
        None => {
            owners.push(Entry {
                manager: writer.manager.to_string(),
                operation: UPDATE.into(),
                subresource: writer.subresource.to_string(),
                fields: BTreeSet::new(),
                raw: Map::new(),
            });
            owners.last_mut().expect("just pushed")
        }
    };
    entry.fields.extend(changed);
    entry.raw.remove("time");
    store_entries(after, owners, &writer.api_version);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            subresource: "",
            api_version: "v1".into(),
        }
    }

    #[test]
    fn fields_v1_round_trips() {
        let fields = fields_of(
            &json!({"metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"size": 1, "tags": ["x"], "inner": {"on": true}}}),
        );
        let encoded = to_fields_v1(&fields);
        assert_eq!(
            encoded,
            json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {"f:inner": {"f:on": {}}, "f:size": {}, "f:tags": {}}})
        );
        assert_eq!(from_fields_v1(&encoded), fields);
    }

    #[test]
    fn an_apply_removes_what_its_manager_stopped_setting() {
        let object = json!({"metadata": {"name": "x"}, "spec": {"a": 1, "b": 2}});
        let first = apply(
            &object,
            &json!({"spec": {"a": 1, "b": 2}}),
            &writer("ctl"),
            false,
        )
        .unwrap();
        let second = apply(&first, &json!({"spec": {"a": 5}}), &writer("ctl"), false).unwrap();
        assert_eq!(second["spec"], json!({"a": 5}));
    }

    #[test]
    fn a_field_of_another_manager_conflicts_unless_forced() {
        let object = json!({"metadata": {"name": "x"}});
        let mine = apply(&object, &json!({"spec": {"a": 1}}), &writer("one"), false).unwrap();
        let conflicts =
            apply(&mine, &json!({"spec": {"a": 2}}), &writer("two"), false).unwrap_err();
        assert_eq!(
            conflicts,
            [Conflict {
                manager: "one".into(),
                field: ".spec.a".into()
            }]
        );
        assert_eq!(
            Conflict::message(&conflicts),
            "Apply failed with 1 conflict: conflict with \"one\": .spec.a"
        );
        // The same value is shared ownership, not a conflict.
        let shared = apply(&mine, &json!({"spec": {"a": 1}}), &writer("two"), false).unwrap();
        // Forced: two takes a over; when one stops applying it, a stays (two owns it).
        let forced = apply(&shared, &json!({"spec": {"a": 3}}), &writer("two"), true).unwrap();
        let one_leaves = apply(&forced, &json!({}), &writer("one"), false).unwrap();
        assert_eq!(one_leaves["spec"]["a"], 3);
    }

    #[test]
    fn an_update_takes_over_the_fields_it_changes() {
        let object = json!({"metadata": {"name": "x"}});
        let applied = apply(
            &object,
            &json!({"spec": {"a": 1, "b": 1}}),
            &writer("one"),
            false,
        )
        .unwrap();
        let mut updated = applied.clone();
        updated["spec"]["a"] = json!(9);
        record_update(Some(&applied), &mut updated, &writer("kubectl-edit"));
        let conflicts = apply(
            &updated,
            &json!({"spec": {"a": 1, "b": 1}}),
            &writer("one"),
            false,
        )
        .unwrap_err();
        assert_eq!(
            conflicts,
            [Conflict {
                manager: "kubectl-edit".into(),
                field: ".spec.a".into()
            }]
        );
    }
}
