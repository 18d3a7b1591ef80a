//! What memkube serves: the built-in resources the operator and kubectl use, and resources
//! defined by CustomResourceDefinitions while the server runs.

use serde_json::Value;

/// Identifies a collection regardless of version: objects are stored once per group and plural.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId {
    /// "" for the core group.
    pub group: String,
    pub plural: String,
}

impl ResourceId {
    pub fn new(group: &str, plural: &str) -> Self {
        ResourceId {
            group: group.to_string(),
            plural: plural.to_string(),
        }
    }

    /// `plural.group` (or `plural` for the core group), as API error messages name it.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// Everything about one served resource that the API, discovery and tables need.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceInfo {
    pub id: ResourceId,
    pub version: String,
    pub kind: String,
    pub list_kind: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    /// Writes to the main resource ignore `status`; `/status` writes change only `status`.
    pub has_status: bool,
    /// CRD `additionalPrinterColumns` (for server-side tables), as given in the CRD.
    pub printer_columns: Vec<Value>,
    /// CRD OpenAPI v3 schema of this version, when it came from a CRD.
    pub schema: Option<Value>,
}

impl ResourceInfo {
    /// `v1` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.id.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.id.group, self.version)
        }
    }

    fn builtin(
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        short: &[&str],
        namespaced: bool,
        has_status: bool,
    ) -> Self {
        ResourceInfo {
            id: ResourceId::new(group, plural),
            version: version.to_string(),
            kind: kind.to_string(),
            list_kind: format!("{kind}List"),
            singular: kind.to_lowercase(),
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: Vec::new(),
            namespaced,
            has_status,
            printer_columns: Vec::new(),
            schema: None,
        }
    }
}

/// The built-in resources memkube serves.
pub fn builtins() -> Vec<ResourceInfo> {
    vec![
        ResourceInfo::builtin("", "v1", "Namespace", "namespaces", &["ns"], false, true),
        ResourceInfo::builtin("", "v1", "Pod", "pods", &["po"], true, true),
        ResourceInfo::builtin("", "v1", "Event", "events", &["ev"], true, false),
        ResourceInfo::builtin("", "v1", "ConfigMap", "configmaps", &["cm"], true, false),
        ResourceInfo::builtin("", "v1", "Secret", "secrets", &[], true, false),
        ResourceInfo::builtin(
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            &["sa"],
            true,
            false,
        ),
        ResourceInfo::builtin("batch", "v1", "Job", "jobs", &[], true, true),
        ResourceInfo::builtin(
            "events.k8s.io",
            "v1",
            "Event",
            "events",
            &["ev"],
            true,
            false,
        ),
        ResourceInfo::builtin(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            &[],
            true,
            false,
        ),
        ResourceInfo::builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            &["crd", "crds"],
            false,
            true,
        ),
    ]
}
