//! Least privilege, checked against what the code really calls: the
//! permissions a shipped `Role` grants, the permissions a run's
//! [`RequestLog`](super::RequestLog) shows were used, and the difference.
//!
//! The rule it keeps: a grant is exactly one (API group, resource with its
//! subresource, verb) triple, the unit Kubernetes' RBAC authorizer checks,
//! so "missing" means a call the API server would answer 403 and "unused"
//! means a right an attacker holding the token would have for nothing.
//! Wildcards are refused, not expanded: a `*` can never be least privilege.
//!
//! ```
//! use testkit::kube::rbac::{Permission, RbacDiff, role_permissions};
//!
//! let yaml = "
//! apiVersion: rbac.authorization.k8s.io/v1
//! kind: Role
//! metadata: {name: reader}
//! rules:
//!   - apiGroups: ['']
//!     resources: [configmaps]
//!     verbs: [get, list]
//! ";
//! let granted = role_permissions(yaml, "reader").unwrap();
//! let used = [Permission::new("", "configmaps", "get")].into_iter().collect();
//! let diff = RbacDiff::between(&granted, &used);
//! assert!(diff.missing.is_empty());
//! assert_eq!(diff.unused.len(), 1, "list is granted and never used");
//! ```

use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;
use serde_yaml::Value;

use super::RequestRecord;

/// Resources the request log records that are not RBAC resources: discovery
/// and the server's own endpoints, which every authenticated client may read
/// (the `system:discovery` and `system:public-info-viewer` ClusterRoles).
const NON_RESOURCE: [&str; 5] = ["discovery", "version", "openapi", "healthz", "unknown"];

/// One right: `verb` on `resource` (with `/subresource`) of API `group`
/// (`""`: the core group).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Permission {
    /// The API group (`""`, `coordination.k8s.io`, …).
    pub group: String,
    /// The resource plural, with `/subresource` (`coderuns/status`).
    pub resource: String,
    /// The verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, …).
    pub verb: String,
}

impl Permission {
    /// `verb` on `resource` of `group`.
    pub fn new(group: &str, resource: &str, verb: &str) -> Self {
        Self {
            group: group.to_owned(),
            resource: resource.to_owned(),
            verb: verb.to_owned(),
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {} ({group})", self.verb, self.resource)
    }
}

/// A Role or a manifest that cannot be read as one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RbacError {
    /// The text is not YAML.
    #[error("not YAML: {0}")]
    Yaml(String),
    /// No `Role` or `ClusterRole` of that name is in the manifest.
    #[error("no Role or ClusterRole named {0:?} in the manifest")]
    NoSuchRole(String),
    /// A rule is not the shape `rbac.authorization.k8s.io/v1` defines.
    #[error("role {role:?}: {reason}")]
    Malformed {
        /// The role.
        role: String,
        /// What is wrong.
        reason: String,
    },
}

/// The permissions the `Role` (or `ClusterRole`) named `name` in the
/// (multi-document) manifest `yaml` grants.
///
/// Errors: [`RbacError::NoSuchRole`], and [`RbacError::Malformed`] for a
/// rule with a wildcard, `resourceNames`, `nonResourceURLs` or a missing
/// list — rights this check could not compare exactly.
pub fn role_permissions(yaml: &str, name: &str) -> Result<BTreeSet<Permission>, RbacError> {
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value = Value::deserialize(document).map_err(|e| RbacError::Yaml(e.to_string()))?;
        let kind = value.get("kind").and_then(Value::as_str);
        let this = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str);
        if matches!(kind, Some("Role" | "ClusterRole")) && this == Some(name) {
            return rules_of(&value, name);
        }
    }
    Err(RbacError::NoSuchRole(name.to_owned()))
}

/// The permissions `records` used: one per distinct (group, resource,
/// verb), discovery and the server's own endpoints left out.
pub fn used_permissions<'a>(
    records: impl IntoIterator<Item = &'a RequestRecord>,
) -> BTreeSet<Permission> {
    records
        .into_iter()
        .filter(|r| !NON_RESOURCE.contains(&r.resource.as_str()))
        .map(|r| Permission::new(&r.group, &r.resource, &r.verb))
        .collect()
}

/// How granted and used permissions differ.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RbacDiff {
    /// Used but not granted: the API server would refuse these calls.
    pub missing: BTreeSet<Permission>,
    /// Granted but never used: more privilege than the code needs.
    pub unused: BTreeSet<Permission>,
}

impl RbacDiff {
    /// The difference between what is `granted` and what was `used`.
    pub fn between(granted: &BTreeSet<Permission>, used: &BTreeSet<Permission>) -> Self {
        Self {
            missing: used.difference(granted).cloned().collect(),
            unused: granted.difference(used).cloned().collect(),
        }
    }

    /// Whether the grant is exactly what was used.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unused.is_empty()
    }
}

impl fmt::Display for RbacDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |set: &BTreeSet<Permission>| {
            set.iter()
                .map(Permission::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.missing.is_empty() {
            writeln!(f, "used but not granted: {}", list(&self.missing))?;
        }
        if !self.unused.is_empty() {
            writeln!(f, "granted but never used: {}", list(&self.unused))?;
        }
        Ok(())
    }
}

// ----- helpers ---------------------------------------------------------------

fn rules_of(role: &Value, name: &str) -> Result<BTreeSet<Permission>, RbacError> {
    let malformed = |reason: String| RbacError::Malformed {
        role: name.to_owned(),
        reason,
    };
    let rules = role
        .get("rules")
        .and_then(Value::as_sequence)
        .ok_or_else(|| malformed("has no rules list".to_owned()))?;
    let mut out = BTreeSet::new();
    for (i, rule) in rules.iter().enumerate() {
        for refused in ["resourceNames", "nonResourceURLs"] {
            if rule.get(refused).is_some() {
                return Err(malformed(format!("rule {i} has {refused}")));
            }
        }
        let list = |key: &str| -> Result<Vec<String>, RbacError> {
            let items = rule
                .get(key)
                .and_then(Value::as_sequence)
                .ok_or_else(|| malformed(format!("rule {i} has no {key} list")))?;
            items
                .iter()
                .map(|item| match item.as_str() {
                    Some("*") => Err(malformed(format!("rule {i} grants every {key} (*)"))),
                    Some(s) => Ok(s.to_owned()),
                    None => Err(malformed(format!("rule {i}: {key} holds a non-string"))),
                })
                .collect()
        };
        for group in list("apiGroups")? {
            for resource in list("resources")? {
                for verb in list("verbs")? {
                    out.insert(Permission::new(&group, &resource, &verb));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const ROLE: &str = "
apiVersion: v1
kind: ServiceAccount
metadata: {name: sensor}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: sensor}
rules:
  - apiGroups: ['', coordination.k8s.io]
    resources: [leases]
    verbs: [get, update]
  - apiGroups: [supersede.dev]
    resources: [coderuns/status]
    verbs: [patch]
";

    #[test]
    fn a_rule_grants_the_product_of_its_groups_resources_and_verbs() {
        let granted = role_permissions(ROLE, "sensor").unwrap();
        let expected: BTreeSet<_> = [
            Permission::new("", "leases", "get"),
            Permission::new("", "leases", "update"),
            Permission::new("coordination.k8s.io", "leases", "get"),
            Permission::new("coordination.k8s.io", "leases", "update"),
            Permission::new("supersede.dev", "coderuns/status", "patch"),
        ]
        .into_iter()
        .collect();
        assert_eq!(granted, expected);
    }

    #[test]
    fn wildcards_and_resource_names_are_refused_not_expanded() {
        let wildcard = ROLE.replace("verbs: [patch]", "verbs: ['*']");
        assert!(matches!(
            role_permissions(&wildcard, "sensor"),
            Err(RbacError::Malformed { .. })
        ));
        let named = ROLE.replace("verbs: [patch]", "verbs: [patch]\n    resourceNames: [x]");
        assert!(matches!(
            role_permissions(&named, "sensor"),
            Err(RbacError::Malformed { .. })
        ));
    }

    #[test]
    fn a_role_not_in_the_manifest_is_an_error() {
        assert_eq!(
            role_permissions(ROLE, "controller"),
            Err(RbacError::NoSuchRole("controller".into()))
        );
    }

    #[test]
    fn the_diff_names_calls_refused_and_rights_unused() {
        let granted = role_permissions(ROLE, "sensor").unwrap();
        let used: BTreeSet<_> = [
            Permission::new("coordination.k8s.io", "leases", "get"),
            Permission::new("coordination.k8s.io", "leases", "create"),
        ]
        .into_iter()
        .collect();
        let diff = RbacDiff::between(&granted, &used);
        assert_eq!(
            diff.missing,
            [Permission::new("coordination.k8s.io", "leases", "create")]
                .into_iter()
                .collect()
        );
        assert_eq!(diff.unused.len(), 4);
        assert!(!diff.is_exact());
        let text = diff.to_string();
        assert!(
            text.contains("used but not granted: create leases (coordination.k8s.io)"),
            "{text}"
        );
    }
}
