//! API errors as Kubernetes `Status` objects, with the reasons and codes a real API server uses.

use serde_json::{Value, json};

use crate::resources::ResourceId;

#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String) -> Self {
        ApiError {
            code,
            reason,
            message,
            details: None,
        }
    }

    fn about(mut self, resource: &ResourceId, name: &str) -> Self {
        self.details =
            Some(json!({ "name": name, "group": resource.group, "kind": resource.plural }));
        self
    }

    pub fn not_found(resource: &ResourceId, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", resource.qualified()),
        )
        .about(resource, name)
    }

    pub fn already_exists(resource: &ResourceId, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", resource.qualified()),
        )
        .about(resource, name)
    }

    pub fn conflict(resource: &ResourceId, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                resource.qualified()
            ),
        )
        .about(resource, name)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into())
    }

    /// 422 with one cause per field, as `kubectl apply` prints them.
    pub fn invalid(
        kind: &str,
        resource: &ResourceId,
        name: &str,
        causes: &[(String, String)],
    ) -> Self {
        let listed: Vec<String> = causes
            .iter()
            .map(|(field, message)| format!("{field}: {message}"))
            .collect();
        let qualified = if resource.group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{}", resource.group)
        };
        let mut error = Self::new(
            422,
            "Invalid",
            format!("{qualified} \"{name}\" is invalid: {}", listed.join(", ")),
        );
        error.details = Some(json!({
            "name": name,
            "group": resource.group,
            "kind": kind,
            "causes": causes.iter().map(|(field, message)| json!({"reason": "FieldValueInvalid", "message": message, "field": field})).collect::<Vec<_>>(),
        }));
        error
    }

    /// 422 about the request rather than a field of the object.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message.into())
    }

    /// 409 for a server-side apply that would change fields another manager owns.
    pub fn apply_conflict(message: &str) -> Self {
        Self::new(409, "Conflict", message.to_string())
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message.into())
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message.into())
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message.into())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message.into())
    }

    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(429, "TooManyRequests", message.into())
    }

    /// The `Status` object a client receives.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}
