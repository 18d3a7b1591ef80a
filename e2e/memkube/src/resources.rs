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
        ResourceInfo::builtin("", "v1", "Service", "services", &["svc"], true, true),
        ResourceInfo::builtin("batch", "v1", "Job", "jobs", &[], true, true),
        ResourceInfo::builtin("batch", "v1", "CronJob", "cronjobs", &["cj"], true, true),
        ResourceInfo::builtin(
            "apps",
            "v1",
            "Deployment",
            "deployments",
            &["deploy"],
            true,
            true,
        ),
        ResourceInfo::builtin(
            "apps",
            "v1",
            "StatefulSet",
            "statefulsets",
            &["sts"],
            true,
            true,
        ),
        ResourceInfo::builtin(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            &["pdb"],
            true,
            true,
        ),
        ResourceInfo::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "Role",
            "roles",
            &[],
            true,
            false,
        ),
        ResourceInfo::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            &[],
            true,
            false,
        ),
        ResourceInfo::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            &[],
            false,
            false,
        ),
        ResourceInfo::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            &[],
            false,
            false,
        ),
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

/// Everything served right now.
#[derive(Clone, Debug)]
pub struct Registry {
    resources: Vec<ResourceInfo>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            resources: builtins(),
        }
    }
}

impl Registry {
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceInfo> {
        self.resources
            .iter()
            .find(|r| r.id.group == group && r.version == version && r.id.plural == plural)
    }

    pub fn all(&self) -> &[ResourceInfo] {
        &self.resources
    }

    /// Groups with their versions, core group excluded, in first-seen order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for resource in self.resources.iter().filter(|r| !r.id.group.is_empty()) {
            match groups
                .iter_mut()
                .find(|(group, _)| *group == resource.id.group)
            {
                Some((_, versions)) if !versions.contains(&resource.version) => {
                    versions.push(resource.version.clone())
                }
                Some(_) => {}
                None => groups.push((resource.id.group.clone(), vec![resource.version.clone()])),
            }
        }
        groups
    }

    /// Serves the resources a CustomResourceDefinition defines (replacing what it defined before).
    pub fn define(&mut self, crd: &Value) {
        let defined = from_crd(crd);
        if let Some(first) = defined.first() {
            let id = first.id.clone();
            self.resources.retain(|r| r.id != id);
        }
        self.resources.extend(defined);
    }

    /// Stops serving what a CRD defined.
    pub fn undefine(&mut self, crd: &Value) {
        if let Some(first) = from_crd(crd).first() {
            let id = first.id.clone();
            self.resources.retain(|r| r.id != id);
        }
    }
}

/// The resources of a CRD's served versions.
pub fn from_crd(crd: &Value) -> Vec<ResourceInfo> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (Some(group), Some(plural), Some(kind)) = (
        spec["group"].as_str(),
        names["plural"].as_str(),
        names["kind"].as_str(),
    ) else {
        return Vec::new();
    };
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|version| version["served"].as_bool().unwrap_or(true))
        .filter_map(|version| {
            Some(ResourceInfo {
                id: ResourceId::new(group, plural),
                version: version["name"].as_str()?.to_string(),
                kind: kind.to_string(),
                list_kind: names["listKind"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{kind}List")),
                singular: names["singular"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| kind.to_lowercase()),
                short_names: strings(&names["shortNames"]),
                categories: strings(&names["categories"]),
                namespaced: spec["scope"].as_str() != Some("Cluster"),
                has_status: version["subresources"]["status"].is_object(),
                printer_columns: version["additionalPrinterColumns"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
                schema: version["schema"]["openAPIV3Schema"]
                    .as_object()
                    .map(|s| Value::Object(s.clone())),
            })
        })
        .collect()
}
