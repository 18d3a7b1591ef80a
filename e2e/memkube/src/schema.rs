//! CRD structural schemas applied on write, as a real API server applies them: defaults filled
//! in, unknown fields pruned, then types, required fields, enums, bounds, lengths, patterns and
//! CEL rules (`x-kubernetes-validations`) checked. Errors name the field the way kube-apiserver
//! does (`spec.permits: Invalid value: 0: spec.permits in body should be greater than or equal
//! to 1`).
//!
//! `apiVersion`, `kind` and `metadata` at the root are the server's business and are left alone.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use serde_json::{Map, Value};

/// One field error: the field path and what is wrong with it.
pub type FieldError = (String, String);

const SERVER_OWNED: [&str; 3] = ["apiVersion", "kind", "metadata"];

/// Defaults, prunes and validates `object` against the root schema of its CRD version.
/// `old` is the stored object on updates (for CEL transition rules using `oldSelf`).
pub fn admit(
    schema: &Value,
    mut object: Value,
    old: Option<&Value>,
) -> Result<Value, Vec<FieldError>> {
    apply_defaults(schema, &mut object, true);
    prune(schema, &mut object, true);
    let mut errors = Vec::new();
    validate(schema, &object, old, "", true, &mut errors);
    if errors.is_empty() {
        Ok(object)
    } else {
        Err(errors)
    }
}

/// The paths of fields in `object` that the schema does not declare (they would be pruned).
/// Used for `fieldValidation=Strict` (reject) and `Warn` (warn); works on partial objects
/// such as merge patches too.
pub fn unknown_fields(schema: &Value, object: &Value) -> Vec<String> {
    let mut found = Vec::new();
    collect_unknown(schema, object, "", true, &mut found);
    found
}

fn preserves_unknown(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true)
}

fn child_path(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// The schema that governs the value under `key` of an object with schema `schema`, if any.
fn property_schema<'a>(schema: &'a Value, key: &str) -> Option<&'a Value> {
    if let Some(property) = schema["properties"].get(key) {
        return Some(property);
    }
    match &schema["additionalProperties"] {
        additional @ Value::Object(_) => Some(additional),
        Value::Bool(true) => Some(&Value::Null),
        _ => None,
    }
}

fn collect_unknown(schema: &Value, value: &Value, path: &str, root: bool, found: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            if preserves_unknown(schema) && schema.get("properties").is_none() {
                return;
            }
            for (key, child) in fields {
                if root && SERVER_OWNED.contains(&key.as_str()) {
                    continue;
                }
                let child_at = child_path(path, key);
                match property_schema(schema, key) {
                    Some(Value::Null) => {}
                    Some(child_schema) => {
                        collect_unknown(child_schema, child, &child_at, false, found)
                    }
                    None if preserves_unknown(schema) => {}
                    None => found.push(child_at),
                }
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                collect_unknown(
                    &schema["items"],
                    item,
                    &format!("{path}[{index}]"),
                    false,
                    found,
                );
            }
        }
        _ => {}
    }
}

fn apply_defaults(schema: &Value, value: &mut Value, root: bool) {
    match value {
        Value::Object(fields) => {
            if let Some(properties) = schema["properties"].as_object() {
                for (key, property) in properties {
                    if root && SERVER_OWNED.contains(&key.as_str()) {
                        continue;
                    }
                    let missing = fields.get(key).is_none_or(|v| {
                        v.is_null() && property["nullable"].as_bool() != Some(true)
                    });
                    if missing && let Some(default) = property.get("default") {
                        fields.insert(key.clone(), default.clone());
                    }
                }
            }
            for (key, child) in fields.iter_mut() {
                if root && SERVER_OWNED.contains(&key.as_str()) {
                    continue;
                }
                if let Some(child_schema) = property_schema(schema, key) {
                    apply_defaults(child_schema, child, false);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                apply_defaults(&schema["items"], item, false);
            }
        }
        _ => {}
    }
}

fn prune(schema: &Value, value: &mut Value, root: bool) {
    match value {
        Value::Object(fields) => {
            let preserve = preserves_unknown(schema);
            if preserve
                && schema.get("properties").is_none()
                && schema.get("additionalProperties").is_none()
            {
                return;
            }
            fields.retain(|key, child| {
                if root && SERVER_OWNED.contains(&key.as_str()) {
                    return true;
                }
                match property_schema(schema, key) {
                    // A null for a field that is not nullable is dropped, as the API server does.
                    Some(child_schema) => {
                        !(child.is_null() && child_schema["nullable"].as_bool() != Some(true))
                    }
                    None => preserve,
                }
            });
            for (key, child) in fields.iter_mut() {
                if root && SERVER_OWNED.contains(&key.as_str()) {
                    continue;
                }
                if let Some(child_schema) = property_schema(schema, key) {
                    prune(child_schema, child, false);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                prune(&schema["items"], item, false);
            }
        }
        _ => {}
    }
}

/// How kube-apiserver shows a value in "Invalid value: ..." messages.
fn shown(value: &Value) -> String {
    match value {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(value: &Value, wanted: &str, int_or_string: bool) -> bool {
    if int_or_string {
        return matches!(type_name(value), "integer" | "string");
    }
    match (wanted, type_name(value)) {
        ("", _) => true,
        ("number", "integer" | "number") => true,
        (wanted, actual) => wanted == actual,
    }
}

fn validate(
    schema: &Value,
    value: &Value,
    old: Option<&Value>,
    path: &str,
    root: bool,
    errors: &mut Vec<FieldError>,
) {
    let invalid = |errors: &mut Vec<FieldError>, message: String| {
        errors.push((
            path.to_string(),
            format!("Invalid value: {}: {message}", shown(value)),
        ));
    };
    let wanted = schema["type"].as_str().unwrap_or_default();
    let int_or_string = schema["x-kubernetes-int-or-string"].as_bool() == Some(true);
    if value.is_null() && schema["nullable"].as_bool() == Some(true) {
        return;
    }
    if !has_type(value, wanted, int_or_string) {
        let expected = if int_or_string {
            "integer,string"
        } else {
            wanted
        };
        invalid(
            errors,
            format!(
                "{path} in body must be of type {expected}: \"{}\"",
                type_name(value)
            ),
        );
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let listed: Vec<String> = allowed.iter().map(Value::to_string).collect();
        errors.push((
            path.to_string(),
            format!(
                "Unsupported value: {}: supported values: {}",
                shown(value),
                listed.join(", ")
            ),
        ));
    }
    check_bounds(schema, value, path, errors);
    match value {
        Value::Object(fields) => validate_object(schema, fields, old, path, root, errors),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let old_item = old.and_then(|o| o.get(index));
                validate(
                    &schema["items"],
                    item,
                    old_item,
                    &format!("{path}[{index}]"),
                    false,
                    errors,
                );
            }
        }
        _ => {}
    }
    check_rules(schema, value, old, path, errors);
}

fn validate_object(
    schema: &Value,
    fields: &Map<String, Value>,
    old: Option<&Value>,
    path: &str,
    root: bool,
    errors: &mut Vec<FieldError>,
) {
    for required in schema["required"].as_array().into_iter().flatten() {
        if let Some(required) = required.as_str()
            && !(root && SERVER_OWNED.contains(&required))
            && !fields.contains_key(required)
        {
            errors.push((child_path(path, required), "Required value".into()));
        }
    }
    for (key, child) in fields {
        if root && SERVER_OWNED.contains(&key.as_str()) {
            continue;
        }
        let old_child = old.and_then(|o| o.get(key));
        match (
            schema["properties"].get(key),
            &schema["additionalProperties"],
        ) {
            (Some(property), _) => validate(
                property,
                child,
                old_child,
                &child_path(path, key),
                false,
                errors,
            ),
            (None, additional @ Value::Object(_)) => validate(
                additional,
                child,
                old_child,
                &format!("{path}[{key}]"),
                false,
                errors,
            ),
            _ => {}
        }
    }
}

fn check_bounds(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let invalid = |errors: &mut Vec<FieldError>, message: String| {
        errors.push((
            path.to_string(),
            format!("Invalid value: {}: {path} in body {message}", shown(value)),
        ));
    };
    if let Some(number) = value.as_f64().filter(|_| value.is_number()) {
        let exclusive_min = schema["exclusiveMinimum"].as_bool() == Some(true);
        let exclusive_max = schema["exclusiveMaximum"].as_bool() == Some(true);
        if let Some(minimum) = schema["minimum"].as_f64() {
            if exclusive_min && number <= minimum {
                invalid(
                    errors,
                    format!("should be greater than {}", bound(&schema["minimum"])),
                );
            } else if number < minimum {
                invalid(
                    errors,
                    format!(
                        "should be greater than or equal to {}",
                        bound(&schema["minimum"])
                    ),
                );
            }
        }
        if let Some(maximum) = schema["maximum"].as_f64() {
            if exclusive_max && number >= maximum {
                invalid(
                    errors,
                    format!("should be less than {}", bound(&schema["maximum"])),
                );
            } else if number > maximum {
                invalid(
                    errors,
                    format!(
                        "should be less than or equal to {}",
                        bound(&schema["maximum"])
                    ),
                );
            }
        }
    }
    if let Some(text) = value.as_str() {
        let length = text.chars().count() as u64;
        if let Some(min) = schema["minLength"].as_u64().filter(|&min| length < min) {
            invalid(errors, format!("should be at least {min} chars long"));
        }
        if let Some(max) = schema["maxLength"].as_u64().filter(|&max| length > max) {
            errors.push((
                path.to_string(),
                format!("Too long: may not be more than {max} bytes"),
            ));
        }
        if let Some(pattern) = schema["pattern"].as_str() {
            match regex::Regex::new(pattern) {
                Ok(re) if !re.is_match(text) => {
                    invalid(errors, format!("should match '{pattern}'"))
                }
                Ok(_) => {}
                Err(err) => invalid(
                    errors,
                    format!("has a pattern the server cannot compile ({err})"),
                ),
            }
        }
    }
    if let Some(items) = value.as_array() {
        let count = items.len() as u64;
        if let Some(min) = schema["minItems"].as_u64().filter(|&min| count < min) {
            invalid(errors, format!("should have at least {min} items"));
        }
        if let Some(max) = schema["maxItems"].as_u64().filter(|&max| count > max) {
            errors.push((
                path.to_string(),
                format!("Too many: {count}: must have at most {max} items"),
            ));
        }
    }
    if let Some(fields) = value.as_object() {
        let count = fields.len() as u64;
        if let Some(min) = schema["minProperties"].as_u64().filter(|&min| count < min) {
            invalid(errors, format!("should have at least {min} properties"));
        }
        if let Some(max) = schema["maxProperties"].as_u64().filter(|&max| count > max) {
            errors.push((
                path.to_string(),
                format!("Too many: {count}: must have at most {max} items"),
            ));
        }
    }
}

/// A bound as kube-apiserver prints it: `1`, not `1.0` (generators often write floats).
fn bound(value: &Value) -> String {
    match value.as_f64() {
        Some(number) if number.fract() == 0.0 && number.abs() < 1e15 => {
            format!("{}", number as i64)
        }
        _ => value.to_string(),
    }
}

/// `x-kubernetes-validations`: each rule is a CEL expression over `self` (and `oldSelf` on
/// updates, where transition rules only run when the old value exists, as in Kubernetes).
fn check_rules(
    schema: &Value,
    value: &Value,
    old: Option<&Value>,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let Some(expression) = rule["rule"].as_str() else {
            continue;
        };
        let transition = expression.contains("oldSelf");
        if transition && old.is_none() {
            continue;
        }
        let field = match rule["fieldPath"].as_str() {
            Some(extra) => format!("{path}{extra}"),
            None => path.to_string(),
        };
        let message = rule["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("failed rule: {expression}"));
        match evaluate(expression, value, old) {
            Ok(true) => {}
            Ok(false) => {
                errors.push((field, format!("Invalid value: {}: {message}", shown(value))))
            }
            Err(problem) => errors.push((
                field,
                format!(
                    "Invalid value: {}: rule {expression:?} cannot be evaluated: {problem}",
                    shown(value)
                ),
            )),
        }
    }
}

thread_local! {
    /// The CEL standard library and every rule compiled so far, per thread: building them is
    /// most of what a validation costs, and the rules of a CRD rarely change.
    static CEL_ROOT: cel::Context<'static, 'static> = cel::Context::default();
    static CEL_PROGRAMS: RefCell<HashMap<String, Rc<Result<cel::Program, String>>>> =
        RefCell::default();
}

fn compiled(expression: &str) -> Rc<Result<cel::Program, String>> {
    CEL_PROGRAMS.with(|programs| {
        programs
            .borrow_mut()
            .entry(expression.to_string())
            .or_insert_with(|| {
                Rc::new(cel::Program::compile(expression).map_err(|err| err.to_string()))
            })
            .clone()
    })
}

fn evaluate(expression: &str, value: &Value, old: Option<&Value>) -> Result<bool, String> {
    let program = compiled(expression);
    let program = program.as_ref().as_ref().map_err(Clone::clone)?;
    CEL_ROOT.with(|root| {
        let mut context = root.new_inner_scope();
        context
            .add_variable("self", value.clone())
            .map_err(|err| err.to_string())?;
        if let Some(old) = old {
            context
                .add_variable("oldSelf", old.clone())
                .map_err(|err| err.to_string())?;
        }
        match program.execute(&context).map_err(|err| err.to_string())? {
            cel::Value::Bool(result) => Ok(result),
            other => Err(format!("it returned {other:?}, not a boolean")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lock_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["type"],
                    "properties": {
                        "type": {"type": "string", "enum": ["Mutex", "ReadWrite", "Semaphore"]},
                        "permits": {"type": "integer", "minimum": 1, "maximum": 100},
                        "lockDelaySeconds": {"type": "integer", "default": 0},
                        "owner": {"type": "string", "minLength": 1, "maxLength": 5, "pattern": "^[a-z]+$"},
                        "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    },
                    "x-kubernetes-validations": [
                        {"rule": "self.type == 'Semaphore' || !has(self.permits)", "message": "permits only on Semaphore locks"},
                        {"rule": "self.type == oldSelf.type", "message": "type is immutable"},
                    ],
                },
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            },
        })
    }

    fn errors_of(object: Value, old: Option<&Value>) -> Vec<String> {
        match admit(&lock_schema(), object, old) {
            Ok(_) => Vec::new(),
            Err(errors) => errors
                .into_iter()
                .map(|(field, message)| format!("{field}: {message}"))
                .collect(),
        }
    }

    #[test]
    fn fills_defaults_and_prunes_unknown_fields() {
        let object = json!({"apiVersion": "x/v1", "kind": "Lock", "metadata": {"name": "a", "labels": {"k": "v"}},
            "spec": {"type": "Mutex", "bogus": 1, "free": {"anything": {"goes": true}}}, "extra": "x"});
        let admitted = admit(&lock_schema(), object.clone(), None).expect("valid");
        assert_eq!(admitted["spec"]["lockDelaySeconds"], 0);
        assert!(admitted["spec"].get("bogus").is_none());
        assert!(admitted.get("extra").is_none());
        assert_eq!(admitted["spec"]["free"]["anything"]["goes"], true);
        assert_eq!(
            admitted["metadata"]["labels"]["k"], "v",
            "metadata is the server's, untouched"
        );
        assert_eq!(
            unknown_fields(&lock_schema(), &object),
            vec!["extra".to_string(), "spec.bogus".to_string()]
        );
    }

    #[test]
    fn names_each_bad_field_as_the_api_server_does() {
        let cases = [
            (json!({"spec": {}}), "spec.type: Required value"),
            (
                json!({"spec": {"type": "Lease"}}),
                "spec.type: Unsupported value: \"Lease\": supported values: \"Mutex\", \"ReadWrite\", \"Semaphore\"",
            ),
            (
                json!({"spec": {"type": "Semaphore", "permits": "two"}}),
                "spec.permits: Invalid value: \"two\": spec.permits in body must be of type integer: \"string\"",
            ),
            (
                json!({"spec": {"type": "Semaphore", "permits": 0}}),
                "spec.permits: Invalid value: 0: spec.permits in body should be greater than or equal to 1",
            ),
            (
                json!({"spec": {"type": "Semaphore", "permits": 101}}),
                "spec.permits: Invalid value: 101: spec.permits in body should be less than or equal to 100",
            ),
            (
                json!({"spec": {"type": "Mutex", "owner": "toolong"}}),
                "spec.owner: Too long: may not be more than 5 bytes",
            ),
            (
                json!({"spec": {"type": "Mutex", "owner": "AB"}}),
                "spec.owner: Invalid value: \"AB\": spec.owner in body should match '^[a-z]+$'",
            ),
            (
                json!({"spec": {"type": "Mutex", "tags": ["a", "b", "c"]}}),
                "spec.tags: Too many: 3: must have at most 2 items",
            ),
            (
                json!({"spec": {"type": "Mutex", "tags": [1]}}),
                "spec.tags[0]: Invalid value: 1: spec.tags[0] in body must be of type string: \"integer\"",
            ),
            (
                json!({"spec": {"type": "Mutex", "labels": {"a": 1}}}),
                "spec.labels[a]: Invalid value: 1: spec.labels[a] in body must be of type string: \"integer\"",
            ),
            (
                json!({"spec": {"type": "Mutex", "permits": 2}}),
                "spec: Invalid value: \"object\": permits only on Semaphore locks",
            ),
        ];
        for (object, expected) in cases {
            assert_eq!(
                errors_of(object.clone(), None),
                vec![expected.to_string()],
                "for {object}"
            );
        }
    }

    #[test]
    fn transition_rules_run_on_updates_only() {
        let old = json!({"spec": {"type": "Mutex"}});
        assert!(errors_of(json!({"spec": {"type": "ReadWrite"}}), None).is_empty());
        assert_eq!(
            errors_of(json!({"spec": {"type": "ReadWrite"}}), Some(&old)),
            vec!["spec: Invalid value: \"object\": type is immutable".to_string()]
        );
    }
}
