//! Discovery documents: what `kube::discovery` and kubectl read to learn
//! which resources the server has.
//!
//! Both the legacy documents (`/api`, `/apis`, `/api/v1`, `/apis/<g>/<v>`)
//! and aggregated discovery (`apidiscovery.k8s.io/v2`, served when the
//! client's `Accept` asks for it, as kubectl and
//! `Discovery::run_aggregated` do) are generated from the registered types,
//! so a CRD shows up the moment it is registered. A minimal OpenAPI v3
//! index tells kubectl the server validates fields itself. The rule it keeps: **every
//! served type is listed with the verbs the fake really implements**.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::resource::ResourceType;

/// The verbs every stored resource supports.
const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The verbs of a `/status` subresource.
const STATUS_VERBS: [&str; 3] = ["get", "patch", "update"];

/// `Content-Type` of an aggregated discovery answer.
pub(crate) const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the client asked for aggregated discovery.
pub(crate) fn wants_aggregated(accept: &str) -> bool {
    accept.contains("as=APIGroupDiscoveryList")
}

/// `GET /version`.
pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `GET /api`.
pub(crate) fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// `GET /apis`.
pub(crate) fn group_list(types: &[ResourceType]) -> Value {
    let groups: Vec<Value> = groups(types)
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, versions)| group(&g, &versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>`, if the group exists.
pub(crate) fn api_group(types: &[ResourceType], name: &str) -> Option<Value> {
    groups(types)
        .into_iter()
        .find(|(g, _)| g == name && !g.is_empty())
        .map(|(g, versions)| {
            let mut doc = group(&g, &versions);
            doc["kind"] = json!("APIGroup");
            doc["apiVersion"] = json!("v1");
            doc
        })
}

/// `GET /api/v1` or `/apis/<group>/<version>`, if that version is served.
pub(crate) fn resource_list(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let served: Vec<&ResourceType> = types
        .iter()
        .filter(|t| t.group == group && t.serves(version))
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for t in served {
        resources.push(json!({
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": VERBS,
            "shortNames": t.short_names,
        }));
        if t.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": STATUS_VERBS,
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// Aggregated discovery of the core group (`core`) or of all named groups.
pub(crate) fn aggregated(types: &[ResourceType], core: bool) -> Value {
    let items: Vec<Value> = groups(types)
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = types
                        .iter()
                        .filter(|t| t.group == g && t.serves(v))
                        .map(|t| aggregated_resource(t, v))
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g}, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

/// `GET /openapi/v3[/<api path>]`: just enough OpenAPI v3 for clients
/// that probe it. kubectl looks up each kind's PATCH operation there to learn
/// that the server accepts `fieldValidation` (it then leaves validation to
/// the server instead of downloading the protobuf OpenAPI v2 document), so
/// every served type gets a PATCH path carrying its group-version-kind and
/// that parameter; there are no schemas. `None` for an unknown path.
pub(crate) fn openapi_v3(types: &[ResourceType], path: &str) -> Option<Value> {
    let rest = path.strip_prefix("/openapi/v3")?.trim_matches('/');
    let all = groups(types);
    if rest.is_empty() {
        // The hash lets clients cache a document until the types change.
        let hash = fnv1a(&format!("{types:?}"));
        let mut paths = serde_json::Map::new();
        for (g, versions) in &all {
            for v in versions {
                let key = api_path(g, v);
                paths.insert(
                    key.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash:016X}")}),
                );
            }
        }
        return Some(json!({"paths": paths}));
    }
    let (group, version) = match rest.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => (String::new(), (*v).to_owned()),
        ["apis", g, v] => ((*g).to_owned(), (*v).to_owned()),
        _ => return None,
    };
    let served: Vec<&ResourceType> = types
        .iter()
        .filter(|t| t.group == group && t.serves(&version))
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    for t in served {
        let scope = if t.namespaced {
            "namespaces/{namespace}/"
        } else {
            ""
        };
        let object_path = format!(
            "/{}/{scope}{}/{{name}}",
            api_path(&group, &version),
            t.plural
        );
        let patch = json!({
            "operationId": format!("patch{}", t.kind),
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": t.kind},
            "parameters": [
                {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                {"name": "force", "in": "query", "schema": {"type": "boolean"}},
            ],
            "responses": {"200": {"description": "OK"}},
        });
        paths.insert(object_path, json!({"patch": patch}));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "fake-kube", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// `Content-Type` of the protobuf OpenAPI v2 document.
pub(crate) const OPENAPI_V2_PROTOBUF: &str =
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// `GET /openapi/v2` as JSON: a valid Swagger 2.0 document with no paths
/// and no definitions. (Asked for as protobuf, the server answers an empty
/// body, which is the protobuf encoding of an empty document.) Older
/// kubectl versions validate against it and skip kinds it does not
/// describe, which is every kind.
pub(crate) fn openapi_v2() -> Value {
    json!({
        "swagger": "2.0",
        "info": {"title": "fake-kube", "version": "v1.33.0"},
        "paths": {},
        "definitions": {},
    })
}

/// `api/v1` or `apis/<group>/<version>`.
fn api_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A small stable hash (FNV-1a), for cache-busting URLs.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn aggregated_resource(t: &ResourceType, version: &str) -> Value {
    let kind = json!({"group": t.group, "version": version, "kind": t.kind});
    let subresources: Vec<Value> = if t.status_subresource {
        vec![json!({"subresource": "status", "responseKind": kind, "verbs": STATUS_VERBS})]
    } else {
        Vec::new()
    };
    json!({
        "resource": t.plural,
        "responseKind": kind,
        "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": t.singular,
        "verbs": VERBS,
        "shortNames": t.short_names,
        "subresources": subresources,
    })
}

/// Groups in registration order of first appearance, each with its
/// versions, preferred first.
fn groups(types: &[ResourceType]) -> Vec<(String, Vec<String>)> {
    let mut order: Vec<String> = Vec::new();
    let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in types {
        if !versions.contains_key(&t.group) {
            order.push(t.group.clone());
        }
        let vs = versions.entry(t.group.clone()).or_default();
        for v in &t.versions {
            if !vs.contains(v) {
                vs.push(v.clone());
            }
        }
    }
    order
        .into_iter()
        .map(|g| {
            let vs = versions.remove(&g).unwrap_or_default();
            (g, vs)
        })
        .collect()
}

fn group(name: &str, versions: &[String]) -> Value {
    let list: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    let preferred = list.first().cloned().unwrap_or(Value::Null);
    json!({"name": name, "versions": list, "preferredVersion": preferred})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::resource::builtin_types;

    #[test]
    fn core_resource_list_has_status_subresources() {
        let doc = resource_list(&builtin_types(), "", "v1").unwrap();
        let names: Vec<&str> = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"configmaps"));
        assert!(names.contains(&"pods/status"));
        assert!(resource_list(&builtin_types(), "", "v2").is_none());
    }

    #[test]
    fn openapi_v3_advertises_field_validation_on_each_kind() {
        let types = builtin_types();
        let root = openapi_v3(&types, "/openapi/v3").unwrap();
        let url = root["paths"]["apis/coordination.k8s.io/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("/openapi/v3/apis/coordination.k8s.io/v1?hash="));
        let doc = openapi_v3(&types, "/openapi/v3/apis/coordination.k8s.io/v1").unwrap();
        let patch = &doc["paths"]["/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"]
            ["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Lease");
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        assert!(openapi_v3(&types, "/openapi/v3/apis/nope/v1").is_none());
    }

    #[test]
    fn group_list_names_coordination() {
        let doc = group_list(&builtin_types());
        assert!(
            doc["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["name"] == "coordination.k8s.io"
                    && g["preferredVersion"]["groupVersion"] == "coordination.k8s.io/v1")
        );
    }
}
