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
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
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
            json_patch::patch(&mut doc, &ops).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
        }
    }
    Ok(doc)
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
    fn apply_body_may_be_yaml() {
        let v = parse_body(PatchKind::Apply, b"metadata:\n  name: x\n").unwrap();
        assert_eq!(v, json!({"metadata": {"name": "x"}}));
        assert!(parse_body(PatchKind::Merge, b"metadata:\n  name: x\n").is_err());
    }
}
