//! The resource types FakeKube serves: built-in kinds and registered CRDs.
//!
//! A [`ResourceType`] is everything the server needs to route, store and
//! describe one kind: group, versions, plural, kind, scope, and which
//! subresources it has. The rule it keeps: **one stored copy per (group,
//! plural)**, whatever version a client asks for (the fake performs no
//! version conversion; it only rewrites `apiVersion`).

use serde_json::Value;

/// One kind of object the fake API server stores and serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group (`""` for the core group).
    pub group: String,
    /// Served versions; the first is the preferred (storage) version.
    pub versions: Vec<String>,
    /// Lower-case plural used in URLs (`leases`).
    pub plural: String,
    /// Lower-case singular (`lease`).
    pub singular: String,
    /// Kind (`Lease`).
    pub kind: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Short names kubectl accepts (`cm` for configmaps).
    pub short_names: Vec<String>,
    /// Whether the type has a `/status` subresource. Writes to the main
    /// resource then keep the stored status, and `/status` writes change
    /// nothing but status.
    pub status_subresource: bool,
    /// Whether `metadata.generation` is tracked (set to 1 on create, bumped
    /// when anything but metadata and status changes).
    pub tracks_generation: bool,
    /// Extra field paths accepted by field selectors besides
    /// `metadata.name` and `metadata.namespace` (`status.phase`).
    pub selectable_fields: Vec<String>,
    /// Added by [`crate::kube::FakeKube::register_crd`] or a posted CRD
    /// (custom resources keep every field they are given).
    pub custom: bool,
}

impl ResourceType {
    /// A type with no short names, no status subresource and no generation.
    pub fn new(
        group: impl Into<String>,
        version: impl Into<String>,
        plural: impl Into<String>,
        kind: impl Into<String>,
        namespaced: bool,
    ) -> Self {
        let kind = kind.into();
        Self {
            group: group.into(),
            versions: vec![version.into()],
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind,
            namespaced,
            short_names: Vec::new(),
            status_subresource: false,
            tracks_generation: false,
            selectable_fields: Vec::new(),
            custom: false,
        }
    }

    /// `group/version` for a version of this type (`v1` for the core group).
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// The preferred version (the first served one).
    pub fn preferred_version(&self) -> &str {
        self.versions.first().map_or("v1", String::as_str)
    }

    /// Whether `version` is served.
    pub fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }

    /// `plural.group`, the name the API server uses in error messages
    /// (`leases.coordination.k8s.io`, or `configmaps` for the core group).
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Reads a `CustomResourceDefinition` (as JSON) into a type.
    pub(crate) fn from_crd(crd: &Value) -> Result<Self, String> {
        let spec = crd.get("spec").ok_or("CRD has no spec")?;
        let text = |v: Option<&Value>, what: &str| -> Result<String, String> {
            v.and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("CRD has no {what}"))
        };
        let group = text(spec.get("group"), "spec.group")?;
        let names = spec.get("names").ok_or("CRD has no spec.names")?;
        let plural = text(names.get("plural"), "spec.names.plural")?;
        let kind = text(names.get("kind"), "spec.names.kind")?;
        let singular = names
            .get("singular")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map_or_else(|| kind.to_lowercase(), str::to_owned);
        let short_names = string_list(names.get("shortNames"));
        let namespaced = match spec.get("scope").and_then(Value::as_str) {
            Some("Namespaced") | None => true,
            Some("Cluster") => false,
            Some(other) => return Err(format!("CRD has an unknown scope {other:?}")),
        };
        let all_versions = spec
            .get("versions")
            .and_then(Value::as_array)
            .filter(|v| !v.is_empty())
            .ok_or("CRD has no spec.versions")?;
        // Storage version first, so it is the preferred one.
        let mut served: Vec<&Value> = all_versions
            .iter()
            .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(true))
            .collect();
        served.sort_by_key(|v| !v.get("storage").and_then(Value::as_bool).unwrap_or(false));
        let versions = served
            .iter()
            .map(|v| text(v.get("name"), "spec.versions[].name"))
            .collect::<Result<Vec<_>, _>>()?;
        if versions.is_empty() {
            return Err("CRD serves no version".to_owned());
        }
        let status_subresource = served.iter().any(|v| {
            v.get("subresources")
                .and_then(|s| s.get("status"))
                .is_some()
        });
        let selectable_fields = served
            .iter()
            .filter_map(|v| v.get("selectableFields").and_then(Value::as_array))
            .flatten()
            .filter_map(|f| f.get("jsonPath").and_then(Value::as_str))
            .map(|p| p.trim_start_matches('.').to_owned())
            .collect();
        Ok(Self {
            group,
            versions,
            plural,
            singular,
            kind,
            namespaced,
            short_names,
            status_subresource,
            tracks_generation: true,
            selectable_fields,
            custom: true,
        })
    }
}

/// The kinds every FakeKube serves from the start.
pub(crate) fn builtin_types() -> Vec<ResourceType> {
    let mut configmaps = ResourceType::new("", "v1", "configmaps", "ConfigMap", true);
    configmaps.short_names = vec!["cm".to_owned()];

    let mut pods = ResourceType::new("", "v1", "pods", "Pod", true);
    pods.short_names = vec!["po".to_owned()];
    pods.status_subresource = true;
    pods.tracks_generation = true;
    pods.selectable_fields = vec![
        "spec.nodeName".to_owned(),
        "spec.restartPolicy".to_owned(),
        "spec.schedulerName".to_owned(),
        "spec.serviceAccountName".to_owned(),
        "status.phase".to_owned(),
        "status.podIP".to_owned(),
        "status.nominatedNodeName".to_owned(),
    ];

    let mut events = ResourceType::new("", "v1", "events", "Event", true);
    events.short_names = vec!["ev".to_owned()];
    events.selectable_fields = [
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();

    let mut namespaces = ResourceType::new("", "v1", "namespaces", "Namespace", false);
    namespaces.short_names = vec!["ns".to_owned()];
    namespaces.status_subresource = true;
    namespaces.selectable_fields = vec!["status.phase".to_owned()];

    let leases = ResourceType::new("coordination.k8s.io", "v1", "leases", "Lease", true);

    // What kube's event `Recorder` writes: the core Events, seen through
    // events.k8s.io (see `events`), with that API's field names.
    let mut new_events = ResourceType::new("events.k8s.io", "v1", "events", "Event", true);
    new_events.short_names = vec!["ev".to_owned()];
    new_events.selectable_fields = [
        "regarding.kind",
        "regarding.namespace",
        "regarding.name",
        "regarding.uid",
        "regarding.apiVersion",
        "regarding.resourceVersion",
        "regarding.fieldPath",
        "reason",
        "reportingController",
        "source",
        "type",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();

    let mut crds = ResourceType::new(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
    );
    crds.short_names = vec!["crd".to_owned(), "crds".to_owned()];
    crds.status_subresource = true;
    crds.tracks_generation = true;

    vec![
        configmaps, pods, events, namespaces, leases, new_events, crds,
    ]
}

/// The strings of a JSON array (`[]` when absent or not an array).
pub(crate) fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crd_json_becomes_a_type_with_storage_version_first() {
        let crd = json!({
            "spec": {
                "group": "supersede.dev",
                "names": {"plural": "coderuns", "kind": "CodeRun", "shortNames": ["cr"]},
                "scope": "Namespaced",
                "versions": [
                    {"name": "v1alpha1", "served": true, "storage": false},
                    {"name": "v1", "served": true, "storage": true,
                     "subresources": {"status": {}},
                     "selectableFields": [{"jsonPath": ".spec.taskId"}]},
                    {"name": "v0", "served": false, "storage": false}
                ]
            }
        });
        let t = ResourceType::from_crd(&crd).unwrap();
        assert_eq!(t.versions, vec!["v1", "v1alpha1"]);
        assert_eq!(t.singular, "coderun");
        assert!(t.status_subresource && t.namespaced && t.custom);
        assert_eq!(t.selectable_fields, vec!["spec.taskId"]);
        assert_eq!(t.qualified_plural(), "coderuns.supersede.dev");
        assert_eq!(t.api_version("v1"), "supersede.dev/v1");
    }

    #[test]
    fn crd_without_names_is_rejected() {
        let crd = json!({"spec": {"group": "g", "versions": [{"name": "v1"}]}});
        assert!(ResourceType::from_crd(&crd).is_err());
    }
}
