//! The four patch types of the Kubernetes API, applied to a stored object.
//!
//! JSON merge patch (RFC 7386) and JSON patch (RFC 6902) are exact. Strategic
//! merge patch is applied as a JSON merge patch (lists are replaced, not
//! merged by key). Server-side apply is not a patch of this module: its
//! merge depends on field ownership (see `managed_fields`). The rule it
//! keeps: **a patch yields a whole new object that then goes through the same
//! checks as an update**, so a `metadata.resourceVersion` in a patch is a
//! precondition, exactly as on the API server.

use serde_json::Value;

use super::status::ApiError;

/// Which patch a request carries, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json` (applied as a merge patch).
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchKind {
    /// Reads the content type; `None` for anything else (answered 415).
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" => Some(Self::Apply),
            _ => None,
        }
    }

    /// The patch types a resource accepts, in the API server's order:
    /// custom resources have no strategic merge patch (they have no Go
    /// struct tags to merge lists by).
    pub fn accepted(custom: bool) -> &'static [&'static str] {
        if custom {
            &[
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/apply-patch+yaml",
            ]
        } else {
            &[
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
                "application/apply-patch+yaml",
            ]
        }
    }
}

/// Parses an apply-patch body (YAML or JSON) or any other patch body (JSON).
pub(crate) fn parse_body(kind: PatchKind, body: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(json_err) if kind == PatchKind::Apply => serde_yaml::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("error decoding YAML: {e} (as JSON: {json_err})"))
        }),
        Err(e) => Err(ApiError::bad_request(format!("error decoding patch: {e}"))),
    }
}

/// Applies `patch` to `current`, returning the patched object. (An apply
/// patch is merged here like a merge patch; the store applies it with field
/// ownership instead.)
pub(crate) fn apply(kind: PatchKind, current: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut doc = current.clone();
    match kind {
        PatchKind::Merge | PatchKind::Strategic | PatchKind::Apply => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "the body of a merge or apply patch must be a JSON object",
                ));
            }
            json_patch::merge(&mut doc, patch);
        }
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            // One operation at a time on a copy: a failing one discards the
            // whole patch, as `json_patch::patch` would.
            for op in ops.iter() {
                if let json_patch::PatchOperation::Test(test) = op
                    && test.value.is_null()
                    && absent_in_existing_parent(&doc, test.path.as_str())
                {
                    // The API server's JSON patch library (evanphx/json-patch)
                    // lets `test` of a missing member against `null` pass;
                    // kube-runtime's `finalizer` relies on it.
                    continue;
                }
                json_patch::patch(&mut doc, std::slice::from_ref(op)).map_err(|e| {
                    ApiError::new(
                        422,
                        "Invalid",
                        format!(
                            "the server rejected our request due to an error in our request: {e}"
                        ),
                    )
                })?;
            }
        }
    }
    Ok(doc)
}

/// Whether the JSON pointer `path` names nothing, in a parent object or
/// array that exists.
fn absent_in_existing_parent(doc: &Value, path: &str) -> bool {
    let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
    !path.is_empty()
        && doc.pointer(path).is_none()
        && doc
            .pointer(parent)
            .is_some_and(|p| p.is_object() || p.is_array())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_types_map_to_patch_kinds() {
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchKind::Merge)
        );
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml"),
            Some(PatchKind::Apply)
        );
        assert_eq!(PatchKind::from_content_type("application/json"), None);
    }

    #[test]
    fn merge_patch_null_deletes_and_json_patch_test_can_fail() {
        let cur = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let merged = apply(
            PatchKind::Merge,
            &cur,
            &json!({"metadata": {"labels": {"a": null}}}),
        )
        .unwrap();
        assert_eq!(merged, json!({"metadata": {"labels": {"b": "2"}}}));

        let failing = json!([{"op": "test", "path": "/metadata/labels/a", "value": "9"}]);
        assert_eq!(
            apply(PatchKind::Json, &cur, &failing).unwrap_err().code,
            422
        );
    }

    #[test]
    fn json_patch_test_of_a_missing_member_against_null_passes_as_on_the_api_server() {
        let cur = json!({"metadata": {"name": "x"}});
        let add = json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["f"]},
        ]);
        let patched = apply(PatchKind::Json, &cur, &add).unwrap();
        assert_eq!(patched["metadata"]["finalizers"], json!(["f"]));
        // A missing parent still fails, and so does a present value.
        let orphan = json!([{"op": "test", "path": "/spec/missing", "value": null}]);
        assert_eq!(apply(PatchKind::Json, &cur, &orphan).unwrap_err().code, 422);
        let present = json!([{"op": "test", "path": "/metadata/name", "value": null}]);
        assert_eq!(
            apply(PatchKind::Json, &cur, &present).unwrap_err().code,
            422
        );
    }

    #[test]
    fn apply_body_may_be_yaml() {
        let v = parse_body(PatchKind::Apply, b"metadata:\n  name: x\n").unwrap();
        assert_eq!(v, json!({"metadata": {"name": "x"}}));
        assert!(parse_body(PatchKind::Merge, b"metadata:\n  name: x\n").is_err());
    }
}
